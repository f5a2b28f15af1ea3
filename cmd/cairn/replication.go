package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

// replicationListener is the node's replica server and the address other
// nodes' coordinators reach it at.
type replicationListener struct {
	Server *replication.Server
	Addr   string
}

// startReplication serves this node's replicas to coordinators on addr;
// Serve's end is sent on errc. stateDir keeps each replica's epoch. stop
// (idempotent) closes the listener and every connection.
func startReplication(eng *engine.Engine, node *control.Node, addr, stateDir string, log *slog.Logger, errc chan<- error) (stop func(), _ replicationListener, _ error) {
	uuid, err := control.ParseClusterUUID(node.ClusterUUID())
	if err != nil {
		return nil, replicationListener{}, fmt.Errorf("replication: %w", err)
	}
	srv, err := replication.NewServer(control.ReplicaVolumes{Engine: eng}, replication.Config{Cluster: uuid, StateDir: stateDir, Logger: log})
	if err != nil {
		return nil, replicationListener{}, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, replicationListener{}, fmt.Errorf("replication: %w (--repl-listen)", err)
	}
	go func() { errc <- srv.Serve(l) }()
	log.Info("replication listening", "addr", l.Addr().String())
	var once sync.Once
	return func() { once.Do(func() { srv.Close() }) }, replicationListener{Server: srv, Addr: l.Addr().String()}, nil
}

// printReplicas adds a replicated volume's replicas to inspect's output.
func printReplicas(w io.Writer, v control.Volume) {
	if len(v.Replicas) == 0 {
		return
	}
	fmt.Fprintf(w, "\t%-15s:  %s\n", "Replication", v.ReplStatus)
	fmt.Fprintf(w, "\t%-15s:  %s\n", "Coordinator", orDash(v.Coordinator))
	fmt.Fprintf(w, "\tReplicas\n")
	for _, r := range v.Replicas {
		state := r.State
		switch {
		case r.ToCopy > 0:
			state += fmt.Sprintf(" %.0f%% (%s of %s)", 100*float64(r.Copied)/float64(r.ToCopy), formatSize(r.Copied), formatSize(r.ToCopy))
		case r.Missing > 0:
			state += fmt.Sprintf(" (%s to copy)", formatSize(r.Missing))
		}
		fmt.Fprintf(w, "\t  node %s  pool %d  %s\n", r.Node, r.Pool, state)
	}
}

func newVolumeVerifyCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify NAME",
		Short: "Compare a replicated volume's in-sync replicas region by region",
		Long: `Compare the in-sync replicas of a replicated volume, 1 MiB region by
region, by checksums computed on each replica's node: a scrub. Client I/O goes
on meanwhile (each region is compared while no write to it is in flight).
Exits non-zero when the replicas differ.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := newProgress(cmd.ErrOrStderr())
			rep, err := g.client().VerifyVolume(cmd.Context(), args[0], func(done, total int64) {
				pct := 100 * float64(done) / float64(max(total, 1))
				p.show(pct, fmt.Sprintf("verify %s: %5.1f%%  %s of %s", args[0], pct, formatSize(done), formatSize(total)), false)
			})
			p.end()
			if err != nil {
				return err
			}
			if g.json {
				if err := printJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "Compared %s of volume %s on %d in-sync replicas (nodes %s)\n", formatSize(rep.Bytes), rep.Volume, len(rep.Replicas), strings.Join(rep.Replicas, ", "))
				for _, d := range rep.Differences {
					var sums []string
					for node, s := range d.Sums {
						sums = append(sums, node+"="+s)
					}
					sort.Strings(sums)
					fmt.Fprintf(w, "  differ at %d (+%s): %s\n", d.Offset, formatSize(d.Length), strings.Join(sums, " "))
				}
				if len(rep.Differences) == 0 {
					fmt.Fprintln(w, "Replicas are identical")
				}
			}
			if n := len(rep.Differences); n > 0 {
				return fmt.Errorf("volume %s: replicas differ in %d region(s)", rep.Volume, n)
			}
			return nil
		},
	}
	addJSONFlag(cmd, g)
	return cmd
}

func newVolumeHAUpdateCommand(g *globals) *cobra.Command {
	var req control.HAUpdateRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "ha-update NAME --repl N [--node ID] [--wait]",
		Short: "Add a replica to a volume (copied in the background) or remove one",
		Long: `Change a volume's replication factor by one: --repl one more than it has adds
a replica (on --node, or placed like a create: another zone first, then another
rack), copied in the background from the in-sync replicas (only the regions
that hold data); --repl one fewer removes one (the one on --node, else an
out-of-sync one, else the last), and deletes its data on its node.
--wait follows the copy until the new replica is in sync.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("repl") {
				return fmt.Errorf("--repl is required")
			}
			c := g.client()
			// A volume open nowhere is claimed for the copy: --wait
			// waits for it to be given back too, so that what the user
			// runs next (a restore, a resize) finds the volume free.
			before, err := c.Volume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			v, err := c.HAUpdate(cmd.Context(), args[0], req)
			if err != nil {
				return err
			}
			if wait {
				if v, err = waitInSync(cmd.Context(), c, v, before.Coordinator == "", cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Update Volume Replication: Replication update started successfully for volume %s\n", v.Name)
			printReplicas(cmd.OutOrStdout(), v)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&req.Repl, "repl", 0, "the volume's new replication factor: one more or one fewer than it has")
	f.StringVar(&req.Node, "node", "", "node to add the replica on, or to remove it from")
	f.BoolVar(&wait, "wait", false, "wait until every replica is in sync, showing the copy's progress")
	addJSONFlag(cmd, g)
	return cmd
}

// waitStallTimeout: how long ha-update --wait waits for a copy that makes
// no progress before it gives up (a variable for tests).
var waitStallTimeout = 2 * time.Minute

// waitInSync follows a volume's replicas until all are in sync (and, with
// released, until no node coordinates it): a progress bar on a terminal, a
// plain line every few seconds otherwise.
func waitInSync(ctx context.Context, c *control.Client, v control.Volume, released bool, w io.Writer) (control.Volume, error) {
	p := newProgress(w)
	var upSince time.Time
	var lastCopied int64 = -1
	lastProgress := time.Now()
	for {
		var copied, toCopy int64
		up := v.ReplStatus == control.ReplUp
		if up && upSince.IsZero() {
			upSince = time.Now()
		}
		// The release is bounded: one whose final flush failed leaves the
		// claim for the next coordinator to converge.
		done := up && (!released || v.Coordinator == "" || time.Since(upSince) > 10*time.Second)
		for _, r := range v.Replicas {
			copied, toCopy = copied+r.Copied, toCopy+max(r.ToCopy, r.Missing)
		}
		pct := 100.0
		if toCopy > 0 && !done {
			pct = 100 * float64(copied) / float64(toCopy)
		}
		line := fmt.Sprintf("%s %s: %5.1f%%  %s of %s", v.Name, strings.ToLower(v.ReplStatus), pct, formatSize(copied), formatSize(toCopy))
		p.show(pct, line, done)
		if done {
			p.end()
			return v, nil
		}
		if copied != lastCopied || up {
			lastCopied, lastProgress = copied, time.Now()
		} else if time.Since(lastProgress) > waitStallTimeout {
			// A target that went away, or a coordinator that stopped:
			// waiting on would never end. The copy resumes by itself.
			p.end()
			var states []string
			for _, r := range v.Replicas {
				states = append(states, r.Node+" "+r.State)
			}
			return v, fmt.Errorf("volume %s: the copy made no progress for %v (replicas: %s; coordinator %q); it resumes by itself when it can — follow it with `cairn volume inspect %s`",
				v.Name, waitStallTimeout, strings.Join(states, ", "), v.Coordinator, v.Name)
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		var err error
		if v, err = c.Volume(ctx, v.Name); err != nil {
			return v, err
		}
	}
}
