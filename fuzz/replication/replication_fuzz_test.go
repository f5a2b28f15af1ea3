// Package replicationfuzz fuzzes both ends of the replication protocol with
// arbitrary bytes from the other end: a replica Server fed any request
// stream, and a Client fed any reply stream. Whatever arrives, neither may
// panic or hang, and each must close the connection once the peer's bytes
// run out.
package replicationfuzz

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

var cluster = [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func hello(epoch uint64) []byte {
	return replication.AppendHello(nil, replication.Hello{Version: replication.Version, Cluster: cluster, Epoch: epoch, Node: "fuzz", Volume: "v"})
}

// requestSeeds is one of each request, then a few broken streams.
func requestSeeds() [][]byte {
	p := []byte("abcdefgh")
	s := append(replication.AppendRequest(nil, replication.CmdWrite, replication.FlagFUA, 1, 5, 0, 8, replication.PayloadChecksum(p)), p...)
	s = replication.AppendRequest(s, replication.CmdRead, 0, 2, 5, 0, 4096, 0)
	s = replication.AppendRequest(s, replication.CmdTrim, 0, 3, 5, 4096, 8192, 0)
	s = replication.AppendRequest(s, replication.CmdWriteZeroes, replication.FlagNoHole, 4, 5, 0, 4096, 0)
	s = replication.AppendRequest(s, replication.CmdFlush, 0, 5, 6, 0, 0, 0) // a newer epoch
	s = replication.AppendRequest(s, replication.CmdRead, 0, 6, 4, 0, 16, 0) // a stale one
	s = replication.AppendRequest(s, replication.CmdRead, 0, 7, 6, 1<<40, 16, 0)
	mark := []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0} // an activity set: extent 0
	s = append(replication.AppendRequest(s, replication.CmdMark, 0, 8, 6, 0, uint32(len(mark)), replication.PayloadChecksum(mark)), mark...)
	s = replication.AppendRequest(s, replication.CmdActivity, 0, 9, 6, 0, 64, 0)
	bad := replication.AppendRequest(nil, replication.CmdWrite, 0, 1, 5, 0, 1<<30, 0)
	return [][]byte{s, s[:50], bad, []byte("garbage"), nil}
}

// FuzzRequests sends a valid hello, then the fuzzer's bytes as requests.
func FuzzRequests(f *testing.F) {
	for _, s := range requestSeeds() {
		f.Add(s)
	}
	addr := serve(f)
	f.Fuzz(func(t *testing.T, in []byte) { stream(t, addr, append(hello(5), in...)) })
}

// FuzzHello sends the fuzzer's bytes from the first byte on.
func FuzzHello(f *testing.F) {
	f.Add(hello(1))
	f.Add(append(hello(1), requestSeeds()[0]...))
	f.Add(replication.AppendHello(nil, replication.Hello{Version: 99, Cluster: cluster, Volume: "../v"}))
	f.Add(hello(1)[:30])
	addr := serve(f)
	f.Fuzz(func(t *testing.T, in []byte) { stream(t, addr, in) })
}

// serve runs a replica server on a unix socket for the whole fuzz run.
func serve(f *testing.F) string {
	sock := filepath.Join(f.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	srv, err := replication.NewServer(memVolumes{newMemVolume(1 << 20)}, replication.Config{
		Cluster: cluster, StateDir: f.TempDir(), MaxInFlight: 8,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		f.Fatal(err)
	}
	go srv.Serve(l)
	f.Cleanup(func() { srv.Close() })
	return sock
}

// stream sends in on a new connection and closes the sending half; the
// server must then close the connection.
func stream(t *testing.T, sock string, in []byte) {
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
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("server did not close the connection after the client's %d bytes", len(in))
		}
	}
}

// FuzzReplies answers a Client's hello, then sends the fuzzer's bytes as
// replies while four calls (one of each kind) are in flight. Every call
// must return; a READ's buffer gets at most its own length.
func FuzzReplies(f *testing.F) {
	ok := helloReply()
	f.Add(ok)
	f.Add(append(ok, replyBytes(0, 1<<32, 0)...))
	f.Add(append(append(ok, replyBytes(0, 1<<32|1, 0)...), replyBytes(0, 1<<32|2, 0)...))
	f.Add(append(ok, "CRPY\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07\xff\xff\xff\xff\x00\x00\x00\x00"...))
	f.Add([]byte("CAIRNRPY\x00\x01\x00\x01\xff\xff\xff\xff"))
	f.Fuzz(runReplies)
}

// runReplies is one FuzzReplies input.
func runReplies(t *testing.T, in []byte) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		defer nc.Close()
		io.ReadFull(nc, make([]byte, len(hello(1))))
		// The hello reply first, then the rest once the calls' requests
		// have arrived, so that replies can match them by handle.
		split := min(len(in), replication.HelloReplyLen)
		nc.Write(in[:split])
		nc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		io.Copy(io.Discard, nc)
		nc.Write(in[split:])
		nc.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		io.Copy(io.Discard, nc)
	}()
	c, err := replication.Dial(context.Background(), replication.ClientConfig{
		Addr: l.Addr().String(), Cluster: cluster, Node: "fuzz", Volume: "v", Epoch: 1, Timeout: 5 * time.Second, MaxInFlight: 4,
	})
	if err != nil {
		return // a refused or broken hello
	}
	defer c.Close()
	ctx := context.Background()
	buf := make([]byte, 16)
	var wg sync.WaitGroup
	for _, call := range []func() error{
		func() error { return c.WriteAt(ctx, []byte("x"), 0, false) },
		func() error { return c.ReadAt(ctx, buf[:8], 0) },
		func() error { return c.Flush(ctx) },
		func() error { return c.Trim(ctx, 0, 4096, false) },
	} {
		wg.Add(1)
		go func() { defer wg.Done(); call() }()
	}
	wg.Wait()
	for _, b := range buf[8:] {
		if b != 0 {
			t.Fatal("a READ reply wrote past its buffer")
		}
	}
}

func helloReply() []byte {
	b := []byte("CAIRNRPY")
	b = append(b, 0, 1, 0, 0, 0, 0, 0, 0)       // version 1, OK, no message
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 1)       // epoch 1
	return append(b, 0, 0, 0, 0, 0, 0x10, 0, 0) // size 1 MiB
}

func replyBytes(code uint32, handle uint64, length uint32) []byte {
	b := []byte("CRPY")
	b = append(b, byte(code>>24), byte(code>>16), byte(code>>8), byte(code))
	for i := 7; i >= 0; i-- {
		b = append(b, byte(handle>>(8*i)))
	}
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 1)
	b = append(b, byte(length>>24), byte(length>>16), byte(length>>8), byte(length))
	return append(b, 0, 0, 0, 0)
}

// memVolume is a flat in-memory replica.
type memVolume struct {
	mu sync.Mutex
	b  []byte
}

func newMemVolume(n int) *memVolume { return &memVolume{b: make([]byte, n)} }

func (m *memVolume) Size() int64 { return int64(len(m.b)) }

func (m *memVolume) check(off, n int64) error {
	if n <= 0 || off < 0 || off > int64(len(m.b))-n {
		return engine.ErrOutOfRange
	}
	return nil
}

func (m *memVolume) ReadAt(p []byte, off int64) error {
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.b[off:])
	return nil
}

func (m *memVolume) WriteAt(p []byte, off int64, _ bool) error {
	if err := m.check(off, int64(len(p))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.b[off:], p)
	return nil
}

func (m *memVolume) Flush() error { return nil }

func (m *memVolume) Trim(off, n int64) error { return m.WriteZeroes(off, n, false) }

func (m *memVolume) WriteZeroes(off, n int64, _ bool) error {
	if err := m.check(off, n); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.b[off : off+n])
	return nil
}

type memVolumes struct{ v *memVolume }

func (x memVolumes) OpenReplica(name string) (replication.Volume, func(), error) {
	if name != "v" {
		return nil, nil, engine.ErrNotFound
	}
	return x.v, func() {}, nil
}
