package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
)

func newServiceCommand(g *globals) *cobra.Command {
	service := newGroupCommand("service", "Node maintenance: drives and pools")
	drive := newGroupCommand("drive", "Show and add drives")
	pool := newGroupCommand("pool", "Show storage pools")
	service.AddCommand(drive, pool)

	driveShow := newPoolsShowCommand(g, "Show each pool's drives (like pxctl service drive show)", printDrives)

	var add control.AddDriveRequest
	driveAdd := &cobra.Command{
		Use:   "add PATH",
		Short: "Add a drive (block device or file) to the node's pools",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The daemon runs on this host; relative paths mean ours.
			path, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			add.Path = path
			st, err := g.client().AddDrive(cmd.Context(), add)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), st.Pools)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Drive add done: %s\n", path)
			return nil
		},
	}
	driveAdd.Flags().StringVar(&add.IOPriority, "io_priority", "", "high, medium or low (default: detect)")
	driveAdd.Flags().BoolVarP(&add.Force, "force", "f", false, "also take a drive with a filesystem or another node's superblock (never one this node uses)")
	addJSONFlag(driveAdd, g)
	drive.AddCommand(driveShow, driveAdd)

	poolShow := newPoolsShowCommand(g, "Show storage pools (like pxctl service pool show)", printPools)
	pool.AddCommand(poolShow)
	return service
}

func printDrives(w io.Writer, pools []control.Pool) {
	fmt.Fprintln(w, "cairn drive configuration:")
	if len(pools) == 0 {
		fmt.Fprintln(w, "No drives: this node is storageless.")
	}
	for _, p := range pools {
		fmt.Fprintf(w, "Pool ID: %d\n", p.ID)
		fmt.Fprintf(w, "\tIO Priority:  %s\n", upper(p.IOPriority))
		fmt.Fprintf(w, "\tSize: %s\n", formatSize(p.Size))
		fmt.Fprintf(w, "\tStatus: %s\n", p.Status)
		if p.Filling > 0 {
			fmt.Fprintf(w, "\tFilling after snapshots: %d extents, their state %s of a %s RAM budget\n",
				p.Filling, formatSize(p.FillRAM), formatSize(p.FillBudget))
		}
		fmt.Fprintln(w, "\tDrives:")
		for i, d := range p.Drives {
			fmt.Fprintf(w, "\t%d: %s, %s allocated of %s, %s\n", i+1, d.Path, formatSize(d.Used), formatSize(d.Size), d.Status)
		}
	}
}

func printPools(w io.Writer, pools []control.Pool) {
	fmt.Fprintln(w, "cairn storage pools:")
	if len(pools) == 0 {
		fmt.Fprintln(w, "No pools: this node is storageless.")
		return
	}
	t := newTable(w)
	fmt.Fprintln(t, "POOL\tIO_PRIORITY\tRAID_LEVEL\tSIZE\tUSED\tSTATUS\tDRIVES")
	for _, p := range pools {
		fmt.Fprintf(t, "%d\t%s\t%s\t%s\t%s\t%s\t%d\n", p.ID, upper(p.IOPriority), p.Raid, formatSize(p.Size), formatSize(p.Used), p.Status, len(p.Drives))
	}
	t.Flush()
}

// newPoolsShowCommand is a "show" verb over the status's pools: JSON with -j,
// else the given table.
func newPoolsShowCommand(g *globals, short string, print func(io.Writer, []control.Pool)) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := g.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), st.Pools)
			}
			print(cmd.OutOrStdout(), st.Pools)
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}
