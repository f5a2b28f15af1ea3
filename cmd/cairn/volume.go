package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
	"github.com/cairn-storage/cairn/engine"
)

func newVolumeCommand(g *globals) *cobra.Command {
	volume := newGroupCommand("volume", "Create, list, inspect, update and delete volumes; snapshot, clone and restore them")
	volume.AddCommand(
		newVolumeCreateCommand(g),
		newVolumeListCommand(g),
		newVolumeInspectCommand(g),
		newVolumeUpdateCommand(g),
		newVolumeDeleteCommand(g),
		newSnapshotCommand(g),
		newVolumeCloneCommand(g),
		newVolumeRestoreCommand(g),
		newVolumeVerifyCommand(g),
		newVolumeHAUpdateCommand(g),
	)
	return volume
}

func newVolumeCreateCommand(g *globals) *cobra.Command {
	var req control.CreateVolumeRequest
	var size string
	var snapKeep int
	var cs cloudsnapScheduleFlags
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE",
		Short: "Create a thin volume",
		Long: `Create a thin volume. In a cluster, it is placed on an Online node: one
with a pool of the io_priority asked for (else the next lower one), then the
one with the most free space; --nodes, --zones and --racks restrict the
choice. The volume's data lives on that node, which serves it over NBD.`,
		Example: `  cairn volume create db --size 10G
  cairn volume create scratch --size 512M --io_priority high --sticky
  cairn volume create logs --size 20G --zones eu-1a,eu-1b --racks r2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if size == "" {
				return errors.New("volume create: --size is required (e.g. --size 10G)")
			}
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			// The API reads a repl or snap_keep of 0 as "the default", so an
			// explicit 0 is refused here, by the engine's rules.
			if req.Repl < 1 {
				return errors.New(control.Message(engine.ValidateRepl(req.Repl)))
			}
			if cmd.Flags().Changed("snap_keep") {
				if err := engine.ValidateSnapKeep(snapKeep); err != nil {
					return errors.New(control.Message(err))
				}
				req.SnapKeep = snapKeep
			}
			req.Name, req.Size = args[0], n
			req.CloudsnapInterval, req.CloudsnapKeep = cs.create()
			v, err := g.client().CreateVolume(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Volume successfully created: %s\n", v.ID)
			if v.RequestedIOPriority != "" && v.IOPriority != v.RequestedIOPriority {
				fmt.Fprintf(cmd.OutOrStdout(), "no %s pool: created on %s\n", v.RequestedIOPriority, v.IOPriority)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&size, "size", "s", "", "size: 512M, 10G, 1T; a bare number is GiB (required)")
	f.IntVarP(&req.Repl, "repl", "r", 1, "replication factor, 1 to 3 (more than 1 needs a cluster)")
	f.StringVar(&req.IOPriority, "io_priority", "low", "pool class: high, medium or low (falls back to a lower one)")
	f.BoolVar(&req.Sticky, "sticky", false, "refuse deletion until sticky is turned off")
	f.IntVar(&req.SnapInterval, "snap_interval", 0, "snapshot every MIN minutes (0 = off)")
	f.IntVar(&snapKeep, "snap_keep", engine.DefaultSnapKeep, "scheduled snapshots to keep, 1 to 64 (the oldest are deleted)")
	f.IntVar(&req.BlockSize, "block_size", 4096, "block size in bytes (only 4096)")
	f.StringSliceVar(&req.Nodes, "nodes", nil, "create it on one of these nodes (ids, comma-separated)")
	f.StringSliceVar(&req.Zones, "zones", nil, "create it on a node in one of these zones (comma-separated)")
	f.StringSliceVar(&req.Racks, "racks", nil, "create it on a node on one of these racks (comma-separated)")
	cs.add(cmd)
	addJSONFlag(cmd, g)
	return cmd
}

// newVolumeListCommand lists volumes (clones included) but not snapshots,
// as pxctl does: --all adds the snapshots, --snapshot shows only them.
func newVolumeListCommand(g *globals) *cobra.Command {
	var all, snapshots bool
	cmd := &cobra.Command{
		Use:     "list [--all | --snapshot]",
		Aliases: []string{"ls"},
		Short:   "List volumes (snapshots with --all or --snapshot)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if all && snapshots {
				return errors.New("volume list: give --all or --snapshot, not both")
			}
			c := g.client()
			var vols []control.Volume
			var err error
			switch {
			case all:
				vols, err = c.AllVolumes(cmd.Context())
			case snapshots:
				vols, err = c.Snapshots(cmd.Context(), "")
			default:
				vols, err = c.Volumes(cmd.Context())
			}
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), vols)
			}
			if snapshots {
				printSnapshots(cmd.OutOrStdout(), vols)
				return nil
			}
			printVolumes(cmd.OutOrStdout(), vols)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "also list snapshots")
	cmd.Flags().BoolVarP(&snapshots, "snapshot", "s", false, "list only snapshots")
	addJSONFlag(cmd, g)
	return cmd
}

func newVolumeInspectCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show one volume in detail",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := g.client().Volume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			printVolume(cmd.OutOrStdout(), v)
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newVolumeUpdateCommand(g *globals) *cobra.Command {
	var size, sticky string
	var snapInterval, snapKeep int
	var cs cloudsnapScheduleFlags
	cmd := &cobra.Command{
		Use:   "update NAME [--size SIZE] [--sticky on|off] [--snap_interval MIN] [--snap_keep N]",
		Short: "Grow a volume or change its settings",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var req control.UpdateVolumeRequest
			f := cmd.Flags()
			if f.Changed("size") {
				n, err := parseSize(size)
				if err != nil {
					return err
				}
				req.Size = &n
			}
			if f.Changed("sticky") {
				on, err := parseOnOff(sticky)
				if err != nil {
					return fmt.Errorf("--sticky: %w", err)
				}
				req.Sticky = &on
			}
			if f.Changed("snap_interval") {
				req.SnapInterval = &snapInterval
			}
			if f.Changed("snap_keep") {
				req.SnapKeep = &snapKeep
			}
			req.CloudsnapInterval, req.CloudsnapKeep = cs.update()
			if req.Size == nil && req.Sticky == nil && req.SnapInterval == nil && req.SnapKeep == nil && req.CloudsnapInterval == nil && req.CloudsnapKeep == nil {
				return errors.New("volume update: nothing to change: give --size, --sticky, --snap_interval, --snap_keep, --cloudsnap_interval or --cloudsnap_keep")
			}
			v, err := g.client().UpdateVolume(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Update Volume: Volume update successful for volume %s\n", v.Name)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&size, "size", "s", "", "new size (grow only): 512M, 10G, 1T; a bare number is GiB")
	f.StringVar(&sticky, "sticky", "", "on or off")
	f.IntVar(&snapInterval, "snap_interval", 0, "snapshot every MIN minutes (0 = off)")
	f.IntVar(&snapKeep, "snap_keep", engine.DefaultSnapKeep, "scheduled snapshots to keep, 1 to 64")
	cs.add(cmd)
	addJSONFlag(cmd, g)
	return cmd
}

func newVolumeDeleteCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete NAME [--force]",
		Short: "Delete a volume (not a sticky or an in-use one; --force also deletes its snapshots)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if force {
				deleted, err := g.client().DeleteVolumeForce(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if g.json {
					return printJSON(cmd.OutOrStdout(), map[string]any{"deleted": args[0], "snapshots_deleted": deleted[:len(deleted)-1]})
				}
				for _, s := range deleted[:len(deleted)-1] {
					fmt.Fprintf(cmd.OutOrStdout(), "Snapshot %s successfully deleted\n", s)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Volume %s successfully deleted\n", args[0])
				return nil
			}
			if err := g.client().DeleteVolume(cmd.Context(), args[0]); err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"deleted": args[0]})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Volume %s successfully deleted\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete the volume's snapshots first (a sticky volume is still refused)")
	addJSONFlag(cmd, g)
	return cmd
}

func parseOnOff(s string) (bool, error) {
	switch s {
	case "on", "true", "yes":
		return true, nil
	case "off", "false", "no":
		return false, nil
	}
	return false, fmt.Errorf("%q: want on or off", s)
}

func volumeState(v control.Volume) string {
	if strings.HasPrefix(v.State, "unavailable") {
		return v.State
	}
	if v.AttachedOn == "" {
		return v.State + " - detached"
	}
	return v.State + " - attached on " + v.AttachedOn
}

func printVolumes(w io.Writer, vols []control.Volume) {
	if len(vols) == 0 {
		fmt.Fprintln(w, "No volumes found")
		return
	}
	t := newTable(w)
	fmt.Fprintln(t, "ID\tNAME\tSIZE\tUSED\tHA\tIO_PRIORITY\tSTICKY\tSTATUS")
	for _, v := range vols {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", v.ID, v.Name, formatSize(v.Size), formatSize(v.Used), v.Repl, upper(v.IOPriority), yesNo(v.Sticky), volumeState(v))
	}
	t.Flush()
}

func printVolume(w io.Writer, v control.Volume) {
	snap := "off"
	if v.SnapInterval > 0 {
		snap = fmt.Sprintf("every %d min, keep %d", v.SnapInterval, v.SnapKeep)
	}
	used := formatSize(v.Used)
	if v.Snapshot {
		used += " (exclusive to this snapshot)"
		snap = "-"
	}
	fmt.Fprintf(w, "Volume\t:  %s\n", v.ID)
	for _, row := range [][2]string{
		{"Name", v.Name},
		{"Size", formatSize(v.Size)},
		{"Used", used},
		{"HA", fmt.Sprint(v.Repl)},
		{"IO Priority", upper(v.IOPriority)},
		{"Sticky", yesNo(v.Sticky)},
		{"Snap Interval", snap},
		{"Cloudsnap", cloudsnapSchedule(v)},
		{"Snapshot", yesNo(v.Snapshot)},
		{"Parent", orDash(v.Parent)},
		{"Read-only", yesNo(v.ReadOnly)},
		{"Creation time", v.Created},
		{"Status", v.State},
		{"Attached on", orDash(v.AttachedOn)},
		{"Node", nodeOf(v)},
	} {
		fmt.Fprintf(w, "\t%-15s:  %s\n", row[0], row[1])
	}
	printReplicas(w, v)
}

// nodeOf words where a volume's data lives: "ID (ADDR)".
func nodeOf(v control.Volume) string {
	if v.NodeAddr == "" {
		return orDash(v.Node)
	}
	return v.Node + " (" + v.NodeAddr + ")"
}
