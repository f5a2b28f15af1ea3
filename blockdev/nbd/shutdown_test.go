package nbd

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd/nbdtest"
	"github.com/cairn-storage/cairn/engine"
)

// memExport is nbdtest's in-memory export (for tests and benchmarks that
// measure the server, not the storage), with what the tests here watch:
// writes can be held at a gate; writes, flushes and releases are counted.
type memExport struct {
	*nbdtest.MemExport
	gate     chan struct{} // when set, WriteAt waits for it to close
	entered  chan struct{} // signalled when a write reaches the gate
	writes   atomic.Int64  // writes done
	flushes  atomic.Int64
	released atomic.Int64
}

func newMemExport(name string, size int) *memExport {
	return &memExport{MemExport: nbdtest.NewMemExport(name, size)}
}

func (m *memExport) WriteAt(p []byte, off int64, fua bool) error {
	if m.gate != nil {
		m.entered <- struct{}{}
		<-m.gate
	}
	err := m.MemExport.WriteAt(p, off, fua)
	m.writes.Add(1)
	return err
}

func (m *memExport) Flush() error { m.flushes.Add(1); return m.MemExport.Flush() }

type memExports struct{ exp *memExport }

func (x memExports) OpenExport(name string) (Export, func(), error) {
	if name != x.exp.Name() {
		return nil, nil, engine.ErrNotFound
	}
	return x.exp, func() { x.exp.released.Add(1) }, nil
}
func (x memExports) ExportNames() []string { return []string{x.exp.Name()} }

// listenUnix listens on a new unix socket, removed when the test ends. Unix
// socket paths are limited to ~108 bytes, and t.TempDir can be longer.
func listenUnix(t testing.TB) (net.Listener, string) {
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return l, sock
}

// Shutdown answers the requests already read, flushes the export, closes the
// connection, releases the export and makes Serve return.
func TestShutdown(t *testing.T) {
	exp := newMemExport("m", 1<<20)
	exp.gate, exp.entered = make(chan struct{}), make(chan struct{}, 8)
	srv := NewServer(memExports{exp}, Config{})
	l, sock := listenUnix(t)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	c := connectRaw(t, sock, "m", false)
	c.request(CmdWrite, 0, 1, 0, 4, []byte("data"))
	<-exp.entered // the write is in the export, held at the gate

	// Shutdown must not return before the write it holds is done: it says
	// how many writes were done when it returned.
	type shutdown struct {
		err    error
		writes int64
	}
	shut := make(chan shutdown, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := srv.Shutdown(ctx)
		shut <- shutdown{err, exp.writes.Load()}
	}()
	// Once the listener is closed, Shutdown is under way: one that did not
	// wait would return now, with the write still held at the gate.
	for deadline := time.Now().Add(10 * time.Second); ; {
		nc, err := net.Dial("unix", sock)
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting 10 s after Shutdown began")
		}
	}
	close(exp.gate)
	if r := c.readReply(0); r.handle != 1 || r.errno != 0 {
		t.Fatalf("in-flight write: %+v", r)
	}
	c.expectClosed()
	if res := <-shut; res.err != nil || res.writes != 1 {
		t.Fatalf("Shutdown returned %v with %d of 1 in-flight writes done", res.err, res.writes)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	if exp.flushes.Load() != 1 || exp.released.Load() != 1 {
		t.Fatalf("flushes %d releases %d, want 1 and 1", exp.flushes.Load(), exp.released.Load())
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Fatalf("still accepting after Shutdown")
	}
	if err := srv.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}
