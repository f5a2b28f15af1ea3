package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
)

func newStatusCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the node, its pools and drives (like pxctl status)",
		Long: `Show the node, its pools and drives (like pxctl status).

After a restart the node is "starting" until the volumes attached and mounted
before it are attached and mounted again: status prints the node and exits
non-zero until then, so that "cairn status" succeeding means the mounts are in
place. Attachments that could not be restored are listed first; status then
says "degraded" and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := g.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				if err := printJSON(cmd.OutOrStdout(), st); err != nil {
					return err
				}
			} else {
				printStatus(cmd.OutOrStdout(), st)
			}
			return st.Ready()
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func printStatus(w io.Writer, st control.Status) {
	fmt.Fprintf(w, "Status: cairn is %s\n", st.Status)
	if st.Status == control.StatusStarting && st.Restoring > 0 {
		fmt.Fprintf(w, "\tRestoring: %d %s of the previous run\n", st.Restoring, plural(st.Restoring, "attachment"))
	}
	if len(st.RestoreErrors) > 0 {
		fmt.Fprintf(w, "\tNot restored after restart: %d\n", len(st.RestoreErrors))
		indentedTable(w, func(t io.Writer) {
			fmt.Fprintln(t, "VOLUME\tMOUNT\tERROR")
			for _, e := range st.RestoreErrors {
				fmt.Fprintf(t, "%s\t%s\t%s\n", orDash(e.Volume), orDash(e.Path), e.Error)
			}
		})
	}
	fmt.Fprintf(w, "Node ID: %s\n", st.NodeID)
	fmt.Fprintf(w, "Cluster: %s\n", st.Cluster)
	fmt.Fprintf(w, "\tLocal Storage Pool: %d %s\n", len(st.Pools), plural(len(st.Pools), "pool"))
	var size, used int64
	if len(st.Pools) > 0 {
		indentedTable(w, func(t io.Writer) {
			fmt.Fprintln(t, "POOL\tIO_PRIORITY\tRAID_LEVEL\tUSABLE\tUSED\tSTATUS")
			for _, p := range st.Pools {
				fmt.Fprintf(t, "%d\t%s\t%s\t%s\t%s\t%s\n", p.ID, upper(p.IOPriority), p.Raid, formatSize(p.Size), formatSize(p.Used), p.Status)
				size += p.Size
				used += p.Used
			}
		})
	}
	var drives int
	for _, p := range st.Pools {
		drives += len(p.Drives)
	}
	fmt.Fprintf(w, "\tLocal Storage Devices: %d %s\n", drives, plural(drives, "device"))
	if drives > 0 {
		indentedTable(w, func(t io.Writer) {
			fmt.Fprintln(t, "DEVICE\tPATH\tSIZE\tUSED\tSTATUS")
			for _, p := range st.Pools {
				for i, d := range p.Drives {
					fmt.Fprintf(t, "%d:%d\t%s\t%s\t%s\t%s\n", p.ID, i+1, d.Path, formatSize(d.Size), formatSize(d.Used), d.Status)
				}
			}
		})
	}
	if len(st.Pools) == 0 {
		fmt.Fprintln(w, "\tNo storage: this node is storageless (-z) or has no drives.")
	}
	if len(st.RefusedDrives) > 0 {
		fmt.Fprintf(w, "\tRefused Devices: %d %s\n", len(st.RefusedDrives), plural(len(st.RefusedDrives), "device"))
		indentedTable(w, func(t io.Writer) {
			fmt.Fprintln(t, "PATH\tREASON")
			for _, d := range st.RefusedDrives {
				fmt.Fprintf(t, "%s\t%s\n", d.Path, d.Status)
			}
		})
	}
	if st.UnavailableVolumes > 0 {
		fmt.Fprintf(w, "\tUnavailable volumes: %d (their pool is missing; names kept; see volume list --all)\n", st.UnavailableVolumes)
	}
	if st.CatalogError != "" {
		fmt.Fprintf(w, "\tVolume catalog not saved: %s\n", st.CatalogError)
	}
	for _, d := range st.DuplicateVolumes {
		fmt.Fprintf(w, "\tVolume name %q is in more than one pool: served as %s\n", d.Name, strings.Join(d.ServedAs, ", "))
	}
	if n := len(st.SnapshotErrors); n > 0 {
		last := st.SnapshotErrors[n-1]
		fmt.Fprintf(w, "\tScheduled snapshot failures: %d (latest %s %s of %s: %s)\n", n, last.Time, last.Op, orDash(last.Snapshot), last.Error)
	}
	if c := st.ClusterSummary; c != nil {
		printClusterSummary(w, st.Cluster, c)
	}
	fmt.Fprintln(w, "Global Storage Pool")
	fmt.Fprintf(w, "\tTotal Used    \t:  %s\n", formatSize(used))
	fmt.Fprintf(w, "\tTotal Capacity\t:  %s\n", formatSize(size))
}

// printClusterSummary is pxctl status's "Cluster Summary" block.
func printClusterSummary(w io.Writer, name string, c *control.ClusterSummary) {
	fmt.Fprintln(w, "Cluster Summary")
	fmt.Fprintf(w, "\tCluster ID: %s\n", name)
	fmt.Fprintf(w, "\tCluster UUID: %s\n", c.UUID)
	kvdb := strings.Join(c.Kvdb.Endpoints, ",")
	if c.Kvdb.Embedded {
		kvdb += " (embedded in this node)"
	}
	if c.Kvdb.Healthy {
		fmt.Fprintf(w, "\tNodes: %d online of %d\n", c.NodesOnline, c.NodesTotal)
		fmt.Fprintf(w, "\tKVDB: %s, healthy\n", kvdb)
		indentedTable(w, func(t io.Writer) {
			fmt.Fprintln(t, "MGMT ADDR\tID\tZONE\tRACK\tUSED\tCAPACITY\tSTATUS")
			for _, n := range c.Nodes {
				id := n.ID
				if n.ThisNode {
					id += " (this node)"
				}
				fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(n.MgmtAddr), id, orDash(n.Zone), orDash(n.Rack), formatSize(n.Used), formatSize(n.Size), n.Status)
			}
		})
	} else {
		fmt.Fprintln(w, "\tNodes: unknown (kvdb unavailable)")
		fmt.Fprintf(w, "\tKVDB: %s, UNAVAILABLE: %s\n", kvdb, c.Kvdb.Error)
		fmt.Fprintln(w, "\t      volumes being served go on; cluster operations fail until it is back")
	}
	if len(c.ClockSkew) > 0 {
		fmt.Fprintf(w, "\tClock more than 1s off (check NTP): %s\n", strings.Join(c.ClockSkew, ", "))
	}
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
