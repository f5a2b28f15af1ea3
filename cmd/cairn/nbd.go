package main

import (
	"log/slog"

	"github.com/cairn-storage/cairn/engine"
)

// startNBD serves the engine's volumes over NBD on TCP and on a unix socket.
//
// NBD NOT WIRED YET: blockdev/nbd is being written; until it builds this
// starts nothing. Replace with nbd.NewServer over control.Exports.
func startNBD(eng *engine.Engine, addr, socket string, log *slog.Logger, errc chan<- error) (stop func() error, err error) {
	log.Warn("NBD exports are not wired yet", "addr", addr, "socket", socket)
	return func() error { return nil }, nil
}
