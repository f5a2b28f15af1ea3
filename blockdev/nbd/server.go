package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/connset"
)

// Export is one volume as the server sees it. *engine.Volume satisfies it.
type Export interface {
	Name() string
	Size() int64
	ReadOnly() bool
	ReadAt(p []byte, off int64) error
	// WriteAt must not keep p once it returns: the server reuses the
	// buffer (for a small WRITE it is the connection's read buffer).
	WriteAt(p []byte, off int64, fua bool) error
	Flush() error
	Trim(off, length int64) error
	WriteZeroes(off, length int64, noHole bool) error
	// Extents returns engine.ExtentData / engine.ExtentHole runs covering
	// [off, off+length), in order.
	Extents(off, length int64) ([]engine.Extent, error)
}

// CachedWriter is implemented by an export that can say its writes land in
// memory (a page cache) and never wait for a device. The server runs the
// plain (non-FUA) writes of such an export on a few workers of their own
// (Config.CachedWriteWorkers): they are CPU work, and with two cores more of
// them at once only spin on the same file's locks. Everything that may wait
// for a device — reads that fault pages in, flushes, FUA writes — keeps the
// full worker pool. WriteWaits counts the writes that had to wait all the
// same (for a commit round: first writes to a thin volume, copy-on-write);
// while it moves, plain writes use the full pool too.
type CachedWriter interface {
	WritesCached() bool
	WriteWaits() uint64
}

// DeferredWriteback is implemented by an export that starts the write-back
// of a write to the device early while the volume sees flushes (the
// engine's write-behind). The server then writes with WriteAtDeferWriteback
// and calls StartWriteback once the write is answered (inline) or handed to
// the writer (a worker), so the reply does not wait for it and the device
// write overlaps the client's round trip to its flush.
type DeferredWriteback interface {
	WriteAtDeferWriteback(p []byte, off int64, fua bool) error
	StartWriteback(off, n int64)
}

// SharedFlusher is implemented by an export that counts its changes, so that
// the server can answer a FLUSH with one already in flight. Every write, trim
// and write-zeroes is counted once complete, before it is answered, so a
// FLUSH that read FlushGen as it arrived is done once every change counted up
// to that value is durable: FlushCovering(gen). A FLUSH that arrives while
// another of the connection's is in flight, with nothing counted since that
// one arrived, needs exactly what it needs and shares its outcome instead of
// taking a worker (conn.shareFlush). A client that flushes in bursts (fio's
// fsync=N at queue depth N sends one flush per free slot until the first
// completes) then costs one worker and one wait per burst, not per flush.
type SharedFlusher interface {
	FlushGen() uint64
	// FlushCovering's arrived is when the FLUSH arrived: a flush answered
	// with another waited from then, and its latency says so.
	FlushCovering(gen uint64, arrived time.Time) error
}

// Exports is the catalogue the server serves from (the daemon implements it
// on top of the engine).
type Exports interface {
	// OpenExport opens the named export for one connection; release() is
	// called once when that connection ends. Unknown names return an error
	// wrapping engine.ErrNotFound.
	OpenExport(name string) (exp Export, release func(), err error)
	ExportNames() []string
}

// Config tunes a Server. The zero value is usable.
type Config struct {
	MaxInFlight int // requests in flight per connection; 0 = 128
	Workers     int // worker goroutines per connection; 0 = min(MaxInFlight, 64)
	// CachedWriteWorkers run the plain writes of a CachedWriter export
	// (in addition to Workers); 0 = 4.
	CachedWriteWorkers int
	Logger             *slog.Logger // nil = slog.Default()
	// HandshakeTimeout bounds option negotiation; 0 = 30 s.
	HandshakeTimeout time.Duration
}

const (
	defaultMaxInFlight = 128
	defaultWorkers     = 64
	// defaultCachedWriteWorkers: fio 4k random writes QD32 through the
	// daemon on a file drive (bench/compare.sh, 2 cores), 2026-11-24:
	// 64 workers for everything 112k IOPS, 8.6 µs of server CPU per request;
	// 8 workers 107k, 8.8 µs; 4 workers 128–130k, 7.5 µs (nbdkit-memory
	// 130–138k in the same runs).
	defaultCachedWriteWorkers = 4
	defaultHandshakeTimeout   = 30 * time.Second
)

// Server serves Exports over NBD on any number of listeners.
//
// Concurrency: conns (internal/connset) holds the listeners and live
// connections behind its own lock, taken only to register and unregister
// them; the data path never touches it.
type Server struct {
	exports Exports
	cfg     Config
	log     *slog.Logger

	conns connset.Set[*conn] // listeners and live connections
}

// NewServer returns a server for exports. Call Serve for each listener.
func NewServer(exports Exports, cfg Config) *Server {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = defaultMaxInFlight
	}
	if cfg.Workers <= 0 {
		cfg.Workers = min(cfg.MaxInFlight, defaultWorkers)
	}
	cfg.Workers = min(cfg.Workers, cfg.MaxInFlight)
	if cfg.CachedWriteWorkers <= 0 {
		cfg.CachedWriteWorkers = defaultCachedWriteWorkers
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = defaultHandshakeTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Server{
		exports: exports,
		cfg:     cfg,
		log:     log.With("component", "nbd"),
	}
}

// Serve accepts connections on l until Shutdown closes it, then returns
// ErrServerClosed. Call it once per listener (TCP and unix both).
func (s *Server) Serve(l net.Listener) error {
	err := s.conns.Serve(l, func(nc net.Conn) *conn { return newConn(s, nc) }, (*conn).serve,
		func(err error, wait time.Duration) { s.log.Warn("accept failed; retrying", "err", err, "in", wait) })
	if errors.Is(err, connset.ErrClosed) {
		return ErrServerClosed
	}
	if err != nil {
		return fmt.Errorf("nbd: %w", err)
	}
	return nil
}

// Shutdown stops accepting, lets every connection finish the requests it has
// already read, flushes every open export and closes the connections.
// Connections still negotiating are closed at once. If ctx ends first, the
// remaining connections are closed hard and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	conns := s.conns.Close()
	for _, c := range conns {
		c.beginShutdown()
	}
	done := make(chan struct{})
	go func() {
		s.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		// Close hard. A connection whose worker is stuck inside the engine
		// finishes (and releases its export) when that call returns; we do
		// not wait for it.
		for _, c := range conns {
			c.nc.Close()
		}
		return ctx.Err()
	}
}
