package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
)

// cairn volume snapshot create|list|delete, cairn volume clone, cairn volume
// restore: pxctl's verbs and messages.

func newSnapshotCommand(g *globals) *cobra.Command {
	snap := newGroupCommand("snapshot", "Create, list and delete snapshots of volumes")
	snap.AddCommand(
		newSnapshotCreateCommand(g),
		newSnapshotListCommand(g),
		newSnapshotDeleteCommand(g),
	)
	return snap
}

func newSnapshotCreateCommand(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "create VOLUME [--name SNAPSHOT]",
		Short: "Take a copy-on-write snapshot of a volume (read-only, exported over NBD under its name)",
		Example: `  cairn volume snapshot create db --name db.before-upgrade
  cairn volume snapshot create db        # named db.snap-<UTC timestamp>`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("name") && name == "" {
				return errors.New("volume snapshot create: --name is empty (omit it for the default name)")
			}
			v, err := g.client().CreateSnapshot(cmd.Context(), args[0], name)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Volume snap successful: %s\n", v.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "snapshot name (default VOLUME.snap-<UTC timestamp>)")
	addJSONFlag(cmd, g)
	return cmd
}

func newSnapshotListCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list [VOLUME]",
		Aliases: []string{"ls"},
		Short:   "List the snapshots of a volume (or of every volume), oldest first",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			volume := ""
			if len(args) == 1 {
				volume = args[0]
			}
			snaps, err := g.client().Snapshots(cmd.Context(), volume)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), snaps)
			}
			printSnapshots(cmd.OutOrStdout(), snaps)
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newSnapshotDeleteCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "delete SNAPSHOT",
		Aliases: []string{"rm"},
		Short:   "Delete a snapshot (space no other volume shares goes back to the pool)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().DeleteSnapshot(cmd.Context(), args[0]); err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"deleted": args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Snapshot %s successfully deleted\n", args[0])
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newVolumeCloneCommand(g *globals) *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:     "clone SNAPSHOT --name NEW",
		Short:   "Make a writable volume from a snapshot (shares its extents until written)",
		Example: `  cairn volume clone db.before-upgrade --name db-test`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" {
				return errors.New("volume clone: --name is required (the new volume's name)")
			}
			v, err := g.client().CloneVolume(cmd.Context(), args[0], name)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Volume clone successful: %s\n", v.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the new volume (required)")
	addJSONFlag(cmd, g)
	return cmd
}

func newVolumeRestoreCommand(g *globals) *cobra.Command {
	var snapshot string
	cmd := &cobra.Command{
		Use:   "restore VOLUME --snapshot SNAPSHOT",
		Short: "Make a volume's content its snapshot's (not while it is attached or has NBD clients)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if snapshot == "" {
				return errors.New("volume restore: --snapshot is required (see cairn volume snapshot list " + args[0] + ")")
			}
			v, err := g.client().RestoreVolume(cmd.Context(), args[0], snapshot)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Successfully restored volume %s from snapshot %s\n", args[0], snapshot)
			return nil
		},
	}
	cmd.Flags().StringVarP(&snapshot, "snapshot", "s", "", "snapshot of the volume to restore from (required)")
	addJSONFlag(cmd, g)
	return cmd
}

func printSnapshots(w io.Writer, snaps []control.Volume) {
	if len(snaps) == 0 {
		fmt.Fprintln(w, "No snapshots found")
		return
	}
	t := newTable(w)
	fmt.Fprintln(t, "ID\tNAME\tVOLUME\tSIZE\tEXCLUSIVE\tCREATED\tSTATUS")
	for _, s := range snaps {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Name, s.Parent, formatSize(s.Size), formatSize(s.Used), s.Created, s.State)
	}
	t.Flush()
}
