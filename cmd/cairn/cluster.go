package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
)

func newClusterCommand(g *globals) *cobra.Command {
	cmd := newGroupCommand("cluster", "Show the cluster's nodes (like pxctl cluster)")
	cmd.AddCommand(newClusterListCommand(g), newClusterInspectCommand(g), newClusterDeleteCommand(g))
	return cmd
}

func newClusterListCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the cluster's nodes: addresses, zone, rack, status (Online, Offline), used/size",
		Long: `List every node of the cluster, as the cluster's kvdb (etcd) records it.

A node is Online while it holds its lease in the kvdb; one that died is
Offline within 15 s, one stopped cleanly at once. A clock more than 1 s from
the other nodes' is flagged in the CLOCK column (run NTP). With the kvdb
unavailable this fails at once with "kvdb unavailable".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nodes, err := g.client().ClusterNodes(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), nodes)
			}
			printNodes(cmd.OutOrStdout(), nodes)
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func printNodes(w io.Writer, nodes []control.ClusterNode) {
	t := newTable(w)
	fmt.Fprintln(t, "ID\tHOSTNAME\tMGMT ADDR\tDATA ADDR\tZONE\tRACK\tSTATUS\tUSED\tSIZE\tCLOCK")
	for _, n := range nodes {
		id := n.ID
		if n.ThisNode {
			id += " *"
		}
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, orDash(n.Hostname), orDash(n.MgmtAddr), orDash(n.DataAddr),
			orDash(n.Zone), orDash(n.Rack), n.Status, formatSize(n.Used), formatSize(n.Size), clockWord(n))
	}
	t.Flush()
}

// clockWord is the CLOCK column: "ok", "skew +5.0s", or "-" when not
// measured (Offline, or no heartbeat seen yet).
func clockWord(n control.ClusterNode) string {
	switch {
	case n.Clock == "":
		return "-"
	case n.ClockSkew:
		return fmt.Sprintf("skew %+.1fs", float64(n.ClockOffsetMS)/1000)
	default:
		return "ok"
	}
}

func newClusterInspectCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "inspect NODE",
		Short: "Show one node in detail, with its pools (NODE: id, or a hostname or management address only it has)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := g.client().ClusterNode(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), n)
			}
			printNode(cmd.OutOrStdout(), n)
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newClusterDeleteCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "delete NODE",
		Short: "Remove an Offline node from the cluster for good (--force: also when volumes live on it, which are lost)",
		Long: `Remove an Offline node from the cluster (NODE: id, or a hostname or
management address only it has).

Refused while the node is Online, and while volumes live on it unless
--force, which names the volumes lost with it. A deleted node cannot join
again with its data directory: its daemon refuses to start (give it a fresh
data directory to join as a new node).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := g.client().DeleteNode(cmd.Context(), args[0], force)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), d)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Node %s deleted from the cluster\n", d.ID)
			if d.LostCount > 0 {
				lost := strings.Join(d.LostVolumes, ", ")
				if more := d.LostCount - len(d.LostVolumes); more > 0 {
					lost += fmt.Sprintf(" and %d more", more)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "Volumes lost with it: %s\n", lost)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete even though volumes live on the node (they are lost)")
	addJSONFlag(cmd, g)
	return cmd
}

func printNode(w io.Writer, n control.ClusterNode) {
	t := newTable(w)
	fmt.Fprintf(t, "ID\t:  %s\n", n.ID)
	fmt.Fprintf(t, "Hostname\t:  %s\n", orDash(n.Hostname))
	fmt.Fprintf(t, "Status\t:  %s\n", n.Status)
	fmt.Fprintf(t, "Management address\t:  %s\n", orDash(n.MgmtAddr))
	fmt.Fprintf(t, "Data address\t:  %s\n", orDash(n.DataAddr))
	fmt.Fprintf(t, "Zone\t:  %s\n", orDash(n.Zone))
	fmt.Fprintf(t, "Rack\t:  %s\n", orDash(n.Rack))
	fmt.Fprintf(t, "Version\t:  %s\n", orDash(n.Version))
	fmt.Fprintf(t, "Started\t:  %s\n", orDash(n.Started))
	fmt.Fprintf(t, "Clock\t:  %s\n", clockLine(n))
	fmt.Fprintf(t, "Used / size\t:  %s / %s\n", formatSize(n.Used), formatSize(n.Size))
	fmt.Fprintf(t, "Volumes\t:  %d\n", n.VolumeCount)
	t.Flush()
	fmt.Fprintf(w, "Pools: %d\n", len(n.Pools))
	if len(n.Pools) > 0 {
		indentedTable(w, func(t io.Writer) {
			fmt.Fprintln(t, "POOL\tIO_PRIORITY\tSIZE\tUSED\tSTATUS")
			for _, p := range n.Pools {
				fmt.Fprintf(t, "%d\t%s\t%s\t%s\t%s\n", p.ID, upper(p.IOPriority), formatSize(p.Size), formatSize(p.Used), p.Status)
			}
		})
	}
}

func clockLine(n control.ClusterNode) string {
	if n.Clock == "" {
		return "- (Offline)"
	}
	line := fmt.Sprintf("%s (%+dms from this node)", n.Clock, n.ClockOffsetMS)
	if n.ClockSkew {
		line += ", more than 1s from the other nodes: check NTP"
	}
	return line
}
