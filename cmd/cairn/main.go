// Command cairn is the one cairn binary: `cairn daemon` runs the node's
// control daemon (engine, management API, NBD exports); every other verb is
// a client of that daemon's API, in the manner of Portworx's pxctl.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/cairn-storage/cairn/control"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cairn: "+explain(err))
		os.Exit(1)
	}
}

// explain turns an error into the one line an operator sees.
func explain(err error) string {
	if errors.Is(err, control.ErrDaemonUnreachable) {
		return err.Error() + `: is the daemon running? Start it with "cairn daemon" (or "make run" in a source checkout), or point --host / CAIRN_HOST at a running one`
	}
	return err.Error()
}

// globals are the flags every client verb shares.
type globals struct {
	host string
	json bool
}

func newRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "cairn",
		Short: "cairn: a performance-first block storage engine",
		Long: `cairn turns a node's drives into pools, carves thin volumes out of them and
exports each volume as a block device over NBD.

Run "cairn daemon" on the node; every other verb talks to that daemon
(--host ADDR or CAIRN_HOST, default ` + control.DefaultAPIAddr + `).`,
		SilenceUsage:  true, // errors are one line; --help shows usage
		SilenceErrors: true, // main prints them
	}
	defaultHost := os.Getenv("CAIRN_HOST")
	if defaultHost == "" {
		defaultHost = control.DefaultAPIAddr
	}
	root.PersistentFlags().StringVar(&g.host, "host", defaultHost, "daemon API address host:port (env CAIRN_HOST)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w (see %q)", err, cmd.CommandPath()+" --help")
	})
	root.AddCommand(
		newDaemonCommand(),
		newStatusCommand(g),
		newVolumeCommand(g),
		newServiceCommand(g),
		newHostCommand(g),
		newClusterCommand(g),
		newCredentialsCommand(g),
		newCloudsnapCommand(g),
	)
	return root
}

// newGroupCommand returns a command that only holds subcommands. Unlike
// cobra's default it fails on an unknown subcommand instead of printing help
// and exiting 0, which would hide typos in scripts.
func newGroupCommand(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q for %q (see %q)", args[0], cmd.CommandPath(), cmd.CommandPath()+" --help")
			}
			return cmd.Help()
		},
	}
}

// addJSONFlag gives a client verb its -j/--json flag.
func addJSONFlag(cmd *cobra.Command, g *globals) {
	cmd.Flags().BoolVarP(&g.json, "json", "j", false, "print JSON instead of a table")
}

func (g *globals) client() *control.Client {
	c := control.NewClient(g.host)
	c.Warn = func(msg string) { fmt.Fprintln(os.Stderr, "warning: "+msg) }
	return c
}
