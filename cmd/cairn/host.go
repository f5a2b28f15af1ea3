package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
)

// The host verbs act on the daemon's own host: the daemon attaches, formats
// and mounts (it runs as root and owns the FUSE mount the loop devices sit
// on), so paths are resolved here, where the operator typed them.
func newHostCommand(g *globals) *cobra.Command {
	host := newGroupCommand("host", "Attach volumes to this host as block devices, mount them")
	host.AddCommand(
		newHostAttachCommand(g),
		newHostDetachCommand(g),
		newHostMountCommand(g),
		newHostUnmountCommand(g),
	)
	return host
}

func newHostAttachCommand(g *globals) *cobra.Command {
	var via string
	cmd := &cobra.Command{
		Use:   "attach VOLUME [--via fuse|nbd]",
		Short: "Attach a volume as a block device; prints the device path",
		Long: `Attach a volume to this host as a block device and print its path.

--via nbd uses the kernel NBD client (/dev/nbdN, needs the nbd module);
--via fuse exports the volume as a file of the daemon's FUSE mount and puts a
loop device on it (/dev/loopN). The default is nbd where /dev/nbd0 exists,
else fuse. Attaching an attached volume prints its device again.`,
		Example: `  cairn host attach db
  cairn host attach db --via fuse`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if via != "" && via != control.ViaFUSE && via != control.ViaNBD {
				return fmt.Errorf("--via %q: want fuse or nbd", via)
			}
			v, err := g.client().Attach(cmd.Context(), args[0], control.AttachRequest{Via: via})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintln(cmd.OutOrStdout(), v.Device)
			return nil
		},
	}
	cmd.Flags().StringVar(&via, "via", "", "fuse or nbd (default: nbd when the kernel has it, else fuse)")
	addJSONFlag(cmd, g)
	return cmd
}

func newHostDetachCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "detach VOLUME",
		Short: "Detach a volume's block device (not while a filesystem on it is mounted)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := g.client().Detach(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Volume %s successfully detached\n", args[0])
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newHostMountCommand(g *globals) *cobra.Command {
	var fsType string
	cmd := &cobra.Command{
		Use:   "mount VOLUME PATH [--fs ext4|xfs]",
		Short: "Mount a volume's filesystem on PATH (attach it, format it only if blank)",
		Long: `Mount the filesystem on a volume at PATH, attaching the volume first if it is
not attached. A blank volume (blkid -p finds no signature) gets a new
filesystem of type --fs (ext4 by default); a volume that holds anything is
never formatted. PATH must be an existing directory with nothing mounted on it.`,
		Example: `  cairn host mount db /mnt/db
  cairn host mount logs /srv/logs --fs xfs`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			v, err := g.client().Mount(cmd.Context(), args[0], control.MountRequest{Path: path, FS: fsType})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Volume %s successfully mounted at %s (%s)\n", args[0], path, v.Device)
			return nil
		},
	}
	cmd.Flags().StringVar(&fsType, "fs", "", "filesystem to make on a blank volume: ext4 or xfs (default ext4)")
	addJSONFlag(cmd, g)
	return cmd
}

func newHostUnmountCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unmount VOLUME PATH",
		Short: "Unmount a volume from PATH (and detach it if host mount attached it)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := filepath.Abs(args[1])
			if err != nil {
				return err
			}
			v, err := g.client().Unmount(cmd.Context(), args[0], control.UnmountRequest{Path: path})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Volume %s successfully unmounted from %s\n", args[0], path)
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}
