// Package nbdfuzz fuzzes the NBD server with arbitrary client byte streams:
// whatever arrives, the server must neither panic nor hang, and must close
// the connection once the client's bytes run out.
package nbdfuzz

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/engine"
)

func FuzzClientStream(f *testing.F) {
	for _, seed := range seeds() {
		f.Add(seed)
	}
	sock := startServer(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		nc, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			nc.Write(in) // the server may close before reading it all
			nc.(*net.UnixConn).CloseWrite()
		}()
		if _, err := io.Copy(io.Discard, nc); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("server did not close the connection after the client's %d bytes", len(in))
			}
		}
	})
}

func startServer(f *testing.F) string {
	dir, err := os.MkdirTemp("", "nbdfuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	exp := &memExport{data: make([]byte, 1<<20)}
	srv := nbd.NewServer(exports{exp}, nbd.Config{MaxInFlight: 8, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	go srv.Serve(l)
	f.Cleanup(func() { srv.Shutdown(f.Context()) })
	return sock
}

// seeds are a well-formed session (GO with structured replies and
// base:allocation, then one of each command) and a few broken variants.
func seeds() [][]byte {
	be := binary.BigEndian
	opt := func(b []byte, o uint32, data []byte) []byte {
		b = be.AppendUint64(b, 0x49484156454f5054)
		b = be.AppendUint32(b, o)
		b = be.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	str := func(b []byte, s string) []byte { return append(be.AppendUint32(b, uint32(len(s))), s...) }
	req := func(b []byte, flags, typ uint16, off uint64, n uint32) []byte {
		b = be.AppendUint32(b, 0x25609513)
		b = be.AppendUint16(b, flags)
		b = be.AppendUint16(b, typ)
		b = be.AppendUint64(b, 1)
		b = be.AppendUint64(b, off)
		return be.AppendUint32(b, n)
	}
	hs := be.AppendUint32(nil, 3)
	hs = opt(hs, 8, nil)
	meta := be.AppendUint32(str(nil, "x"), 1)
	hs = opt(hs, 10, str(meta, "base:allocation"))
	hs = opt(hs, 3, nil)
	hs = opt(hs, 6, be.AppendUint16(be.AppendUint16(str(nil, "x"), 1), 3))
	hs = opt(hs, 7, be.AppendUint16(str(nil, "x"), 0))
	s := append([]byte{}, hs...)
	s = append(req(s, 1, 1, 0, 8), "abcdefgh"...)
	s = req(s, 0, 0, 0, 4096)
	s = req(s, 0, 7, 0, 1<<20)
	s = req(s, 0, 6, 4096, 8192)
	s = req(s, 0, 4, 0, 4096)
	s = req(s, 0, 5, 0, 4096)
	s = req(s, 0, 3, 0, 0)
	s = req(s, 4, 0, 0, 65536)
	s = req(s, 0, 2, 0, 0)

	old := be.AppendUint32(nil, 1)
	old = opt(old, 1, []byte("x"))
	old = append(req(old, 0, 1, 0, 3), "abc"...)
	old = req(old, 0, 0, 0, 3)

	return [][]byte{s, old, hs, s[:len(hs)+20], []byte("garbage"), opt(be.AppendUint32(nil, 1), 7, []byte{0xff, 0xff, 0xff, 0xff})}
}

type exports struct{ exp *memExport }

func (x exports) OpenExport(name string) (nbd.Export, func(), error) {
	if name != "x" {
		return nil, nil, engine.ErrNotFound
	}
	return x.exp, func() {}, nil
}
func (x exports) ExportNames() []string { return []string{"x"} }

// memExport is a flat in-memory export that reports a hole in its second half.
type memExport struct {
	mu   sync.Mutex
	data []byte
}

func (m *memExport) Name() string   { return "x" }
func (m *memExport) Size() int64    { return int64(len(m.data)) }
func (m *memExport) ReadOnly() bool { return false }
func (m *memExport) ReadAt(p []byte, off int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}
func (m *memExport) WriteAt(p []byte, off int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	return nil
}
func (m *memExport) Flush() error            { return nil }
func (m *memExport) Trim(off, n int64) error { return m.WriteZeroes(off, n, false) }
func (m *memExport) WriteZeroes(off, n int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}
func (m *memExport) Extents(off, n int64) ([]engine.Extent, error) {
	half := m.Size() / 2
	var out []engine.Extent
	if off < half {
		out = append(out, engine.Extent{Offset: off, Length: min(n, half-off), Kind: engine.ExtentData})
	}
	if end := off + n; end > half {
		s := max(off, half)
		out = append(out, engine.Extent{Offset: s, Length: end - s, Kind: engine.ExtentHole})
	}
	return out, nil
}
