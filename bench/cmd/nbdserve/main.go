// Command nbdserve serves one volume over NBD on a unix socket, for
// benchmarks and profiles of the NBD path without the daemon:
//
//	nbdserve -socket /tmp/s -dir /var/tmp/nbdserve -size 1G [-backend engine|mem] [-workers N] [-cpuprofile cpu.out]
//
// -backend engine (default) opens a real engine on a sparse file drive in
// -dir; -backend mem serves a flat in-memory export, which measures the
// protocol path alone. SIGINT/SIGTERM shut down cleanly (and write the
// profile).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/blockdev/nbd/nbdtest"
	"github.com/cairn-storage/cairn/engine"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nbdserve:", err)
		os.Exit(1)
	}
}

func run() error {
	socket := flag.String("socket", "", "unix socket to listen on (required)")
	dir := flag.String("dir", "", "directory for the engine's drive file (engine backend)")
	sizeStr := flag.String("size", "1G", "volume size")
	driveStr := flag.String("drive-size", "4G", "sparse drive file size (engine backend)")
	name := flag.String("name", "bench", "export name")
	backend := flag.String("backend", "engine", "engine or mem")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here on exit")
	workers := flag.Int("workers", 0, "worker goroutines per connection (0 = the server's default)")
	flag.Parse()
	if *socket == "" {
		return errors.New("-socket is required")
	}
	size, err := parseSize(*sizeStr)
	if err != nil {
		return err
	}

	var exports nbd.Exports
	var closeEngine func() error
	switch *backend {
	case "mem":
		exports = singleExport{memExport{nbdtest.NewMemExport(*name, int(size))}}
		closeEngine = func() error { return nil }
	case "engine":
		if *dir == "" {
			return errors.New("-dir is required for the engine backend")
		}
		driveSize, err := parseSize(*driveStr)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(*dir, 0o755); err != nil {
			return err
		}
		drive := filepath.Join(*dir, "drive0")
		if _, err := os.Stat(drive); errors.Is(err, os.ErrNotExist) {
			f, err := os.Create(drive)
			if err != nil {
				return err
			}
			f.Close()
			if err := os.Truncate(drive, driveSize); err != nil {
				return err
			}
		}
		eng, err := engine.Open(engine.Options{NodeID: "nbdserve", Drives: []engine.DriveSpec{{Path: drive}}})
		if err != nil {
			return err
		}
		closeEngine = eng.Close
		if _, err := eng.CreateVolume(engine.VolumeSpec{Name: *name, Size: size}); err != nil && !errors.Is(err, engine.ErrExists) {
			eng.Close()
			return err
		}
		v, err := eng.Volume(*name)
		if err != nil {
			eng.Close()
			return err
		}
		exports = singleExport{v}
	default:
		return fmt.Errorf("unknown -backend %q", *backend)
	}

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	os.Remove(*socket)
	l, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv := nbd.NewServer(exports, nbd.Config{Logger: log, Workers: *workers})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.Info("serving", "socket", *socket, "export", *name, "size", size, "backend", *backend)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-sig:
	case err := <-served:
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = srv.Shutdown(ctx)
	<-served
	os.Remove(*socket)
	return errors.Join(err, closeEngine())
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult = 1 << 10
	case strings.HasSuffix(s, "M"):
		mult = 1 << 20
	case strings.HasSuffix(s, "G"):
		mult = 1 << 30
	}
	n, err := strconv.ParseInt(strings.TrimRight(s, "KMG"), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

// singleExport serves one export under its own name.
type singleExport struct{ exp nbd.Export }

func (s singleExport) OpenExport(name string) (nbd.Export, func(), error) {
	if name != s.exp.Name() {
		return nil, nil, fmt.Errorf("%w: export %q", engine.ErrNotFound, name)
	}
	return s.exp, func() {}, nil
}

func (s singleExport) ExportNames() []string { return []string{s.exp.Name()} }

// memExport is a flat in-memory export: no holes, no durability.
//
// WritesCached: a write is a copy under a lock, like the engine's writes into
// the page cache, so nbdserve -mem runs writes on the same small pool.
type memExport struct{ *nbdtest.MemExport }

func (memExport) WritesCached() bool { return true }
func (memExport) WriteWaits() uint64 { return 0 }
