package replication

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

var testCluster = [16]byte{0xca, 0x12, 0x4e, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}

// engineVolumes serves an engine's volumes by name, as the daemon will.
type engineVolumes struct{ e *engine.Engine }

func (x engineVolumes) OpenReplica(name string) (Volume, func(), error) {
	v, err := x.e.Volume(name)
	if err != nil {
		return nil, nil, err
	}
	return v, func() {}, nil
}

// newEngine opens an engine on an in-memory drive with one volume of size
// bytes per name. It is closed when the test ends.
func newEngine(t testing.TB, size int64, names ...string) *engine.Engine {
	t.Helper()
	d := drive.NewMem("mem0", int64(len(names))*size+16<<20)
	e, err := engine.Open(engine.Options{NodeID: "replica", LogAreaSize: 256 << 10, Drives: []engine.DriveSpec{{Path: d.Path(), Drive: d}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	for _, n := range names {
		if _, err := e.CreateVolume(engine.VolumeSpec{Name: n, Size: size}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func volume(t testing.TB, e *engine.Engine, name string) *engine.Volume {
	t.Helper()
	v, err := e.Volume(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// logBuffer collects a server's log lines for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitLog waits for the server to log a line containing want.
func (l *logBuffer) waitLog(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(l.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("server never logged %q; log:\n%s", want, l.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type testServer struct {
	*Server
	addr     string
	stateDir string
	log      *logBuffer
}

// startServer serves vols on 127.0.0.1 with its state in stateDir ("" = a
// new temporary directory). It is closed when the test ends.
func startServer(t testing.TB, vols Volumes, stateDir string, cfg Config) *testServer {
	t.Helper()
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	lb := &logBuffer{}
	cfg.Cluster, cfg.StateDir = testCluster, stateDir
	cfg.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := NewServer(vols, cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-served; !errors.Is(err, ErrClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{Server: s, addr: l.Addr().String(), stateDir: stateDir, log: lb}
}

func clientConfig(addr, volume string, epoch uint64) ClientConfig {
	return ClientConfig{
		Addr: addr, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
		Cluster: testCluster, Node: "coord", Volume: volume, Epoch: epoch,
	}
}

func dial(t testing.TB, cfg ClientConfig) *Client {
	t.Helper()
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawConn is a hand-driven connection for malformed input.
func rawConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	return nc
}

// rawHello says hello on nc and checks the reply is OK.
func rawHello(t *testing.T, nc net.Conn, volume string, epoch uint64) {
	t.Helper()
	if _, err := nc.Write(AppendHello(nil, Hello{Version: Version, Cluster: testCluster, Epoch: epoch, Node: "raw", Volume: volume})); err != nil {
		t.Fatal(err)
	}
	var b [HelloReplyLen]byte
	if _, err := io.ReadFull(nc, b[:]); err != nil {
		t.Fatal(err)
	}
	if st, n := be.Uint16(b[10:]), be.Uint32(b[12:]); st != HelloOK || n != 0 {
		t.Fatalf("hello status %d, message %d bytes", st, n)
	}
}

// expectClosed reads nc until the server closes it.
func expectClosed(t *testing.T, nc net.Conn) {
	t.Helper()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := io.Copy(io.Discard, nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("server did not close the connection")
	}
}

// epochFile reads a replica's state file.
func epochFile(t *testing.T, dir, volume string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, volume+".epoch"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o644) }
