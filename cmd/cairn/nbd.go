package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/control"
	"github.com/cairn-storage/cairn/replication"
)

// startNBD serves the engine's volumes over NBD on a TCP address and on a
// unix socket; each Serve's end is sent on errc. stop shuts the server down:
// in-flight requests finish and every open export is flushed.
// tcpAddr is the TCP listener's address (its port picked when addr's is 0).
func startNBD(exports *control.Exports, addr, socket string, log *slog.Logger, errc chan<- error) (stop func() error, tcpAddr string, err error) {
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("nbd: %w", err)
	}
	// The data dir lock is held, so a socket file left here is a dead
	// daemon's and safe to remove.
	if err := os.Remove(socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		tcp.Close()
		return nil, "", fmt.Errorf("nbd: stale socket: %w", err)
	}
	unix, err := net.Listen("unix", socket)
	if err != nil {
		tcp.Close()
		return nil, "", fmt.Errorf("nbd: %w", err)
	}
	srv := nbd.NewServer(exports, nbd.Config{Logger: log})
	go func() { errc <- srv.Serve(tcp) }()
	go func() { errc <- srv.Serve(unix) }()
	log.Info("nbd listening", "addr", tcp.Addr().String(), "socket", socket)
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), nbdShutdownTimeout)
		defer cancel()
		err := srv.Shutdown(ctx)
		os.Remove(socket)
		if err != nil {
			return fmt.Errorf("nbd shutdown: %w", err)
		}
		return nil
	}, tcp.Addr().String(), nil
}

// serverClosed reports the error a Serve returns after a clean shutdown.
func serverClosed(err error) bool {
	return errors.Is(err, nbd.ErrServerClosed) || errors.Is(err, replication.ErrClosed)
}
