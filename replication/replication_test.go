package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const volSize = 8 << 20

// TestRoundTrip sends every request type and checks its effect through the
// engine volume itself, not only through the protocol.
func TestRoundTrip(t *testing.T) {
	e := newEngine(t, volSize, "v")
	v := volume(t, e, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{})
	c := dial(t, clientConfig(srv.addr, "v", 1))
	ctx := context.Background()
	if c.Size() != volSize {
		t.Fatalf("Size %d, want %d", c.Size(), volSize)
	}

	engineRead := func(off int64, n int) []byte {
		b := make([]byte, n)
		if err := v.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := pattern(64<<10, 1), pattern(5000, 9)
	if err := c.WriteAt(ctx, a, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteAt(ctx, b, 1<<20+123, true); err != nil { // unaligned, FUA
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(engineRead(0, len(a)), a) || !bytes.Equal(engineRead(1<<20+123, len(b)), b) {
		t.Fatal("engine does not hold what was written")
	}
	got := make([]byte, len(a))
	if err := c.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, a) {
		t.Fatalf("ReadAt: %v, equal %v", err, bytes.Equal(got, a))
	}

	zero := make([]byte, 16<<10)
	if err := c.Trim(ctx, 0, 16<<10, true); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(engineRead(0, 16<<10), zero) || !bytes.Equal(engineRead(16<<10, 1024), a[16<<10:17<<10]) {
		t.Fatal("trim did not zero exactly its range")
	}
	for _, noHole := range []bool{false, true} {
		off := int64(32 << 10)
		if noHole {
			off = 48 << 10
		}
		if err := c.WriteZeroes(ctx, off, 8<<10, noHole, false); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(engineRead(off, 8<<10), zero[:8<<10]) {
			t.Fatalf("write zeroes (noHole %v) left data", noHole)
		}
	}
	if !bytes.Equal(engineRead(56<<10, 8<<10), a[56<<10:]) {
		t.Fatal("write zeroes went past its range")
	}

	// Out of range: an error reply for that request only.
	if err := c.WriteAt(ctx, a[:4096], volSize-100, false); !errors.Is(err, ErrInvalid) {
		t.Fatalf("write past the end: %v, want ErrInvalid", err)
	}
	if err := c.ReadAt(ctx, got[:4096], 1<<62); !errors.Is(err, ErrInvalid) {
		t.Fatalf("read far past the end: %v, want ErrInvalid", err)
	}
	var re *ReplyError
	if err := c.Trim(ctx, volSize, 4096, false); !errors.As(err, &re) || re.Code != CodeInvalid || re.Msg == "" {
		t.Fatalf("trim past the end: %v, want a ReplyError with a message", err)
	}
	if err := c.ReadAt(ctx, got[:10], 5); err != nil {
		t.Fatalf("the connection did not survive error replies: %v", err)
	}
}

// TestPipelinedModel runs many goroutines on one connection, more than it
// has slots, each writing and reading its own blocks (the coordinator never
// has overlapping writes in flight), and checks every read against a model
// and the whole volume at the end.
func TestPipelinedModel(t *testing.T) {
	e := newEngine(t, volSize, "v")
	v := volume(t, e, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{MaxInFlight: 8, Workers: 4})
	cfg := clientConfig(srv.addr, "v", 1)
	cfg.MaxInFlight = 16
	c := dial(t, cfg)
	ctx := context.Background()

	const goroutines, blocksEach, ops = 24, 32, 200
	model := make([]byte, volSize)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			base := int64(g * blocksEach * 4096)
			for i := range ops {
				blk := int64(rng.IntN(blocksEach - 3))
				n := 4096 * (1 + rng.IntN(3))
				off := base + blk*4096
				if rng.IntN(3) > 0 {
					p := pattern(n, byte(g*31+i))
					if err := c.WriteAt(ctx, p, off, rng.IntN(8) == 0); err != nil {
						errs <- err
						return
					}
					copy(model[off:], p) // this goroutine's range only
				} else {
					p := make([]byte, n)
					if err := c.ReadAt(ctx, p, off); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(p, model[off:off+int64(n)]) {
						errs <- fmt.Errorf("goroutine %d op %d: read at %d differs from the model", g, i, off)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, volSize)
	if err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("the volume differs from the model")
	}
}

// TestStaleEpoch: a new coordinator's hello fences the old one; a request
// with a newer epoch moves the replica on; every refusal carries the
// replica's epoch and applies nothing.
func TestStaleEpoch(t *testing.T) {
	e := newEngine(t, volSize, "v")
	v := volume(t, e, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{})
	ctx := context.Background()
	old := dial(t, clientConfig(srv.addr, "v", 1))
	if err := old.WriteAt(ctx, pattern(4096, 1), 0, false); err != nil {
		t.Fatal(err)
	}

	next := dial(t, clientConfig(srv.addr, "v", 2))
	if got := next.ReplicaEpoch(); got != 2 {
		t.Fatalf("replica epoch after the new hello %d, want 2", got)
	}
	err := old.WriteAt(ctx, pattern(4096, 2), 0, false)
	var se *StaleEpochError
	if !errors.As(err, &se) || !errors.Is(err, ErrStaleEpoch) || se.Epoch != 2 || se.Sent != 1 {
		t.Fatalf("old coordinator's write: %v, want a StaleEpochError at epoch 2", err)
	}
	got := make([]byte, 4096)
	v.ReadAt(got, 0)
	if !bytes.Equal(got, pattern(4096, 1)) {
		t.Fatal("a write refused as stale was applied")
	}
	if err := old.Flush(ctx); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("old coordinator's flush: %v, want ErrStaleEpoch", err)
	}

	// The new coordinator evicts some replica and moves on to epoch 3 with
	// its next request: the replica records it before applying it.
	next.SetEpoch(3)
	if err := next.WriteAt(ctx, pattern(4096, 3), 0, false); err != nil {
		t.Fatal(err)
	}
	if ep, _ := srv.Epoch("v"); ep != 3 {
		t.Fatalf("durable epoch %d, want 3", ep)
	}
	if !strings.Contains(epochFile(t, srv.stateDir, "v"), `"epoch":3`) {
		t.Fatalf("state file: %s", epochFile(t, srv.stateDir, "v"))
	}
	// A hello at an older epoch is refused and the connection closed.
	_, err = Dial(ctx, clientConfig(srv.addr, "v", 2))
	if !errors.As(err, &se) || se.Epoch != 3 {
		t.Fatalf("hello at epoch 2: %v, want StaleEpochError at 3", err)
	}
}

// TestEpochSurvivesRestart: a new Server over the same state directory
// refuses what the old one had fenced.
func TestEpochSurvivesRestart(t *testing.T) {
	e := newEngine(t, volSize, "v")
	dir := t.TempDir()
	srv := startServer(t, engineVolumes{e}, dir, Config{})
	c := dial(t, clientConfig(srv.addr, "v", 7))
	if err := c.WriteAt(context.Background(), pattern(4096, 1), 0, true); err != nil {
		t.Fatal(err)
	}
	c.Close()
	srv.Close()

	srv2 := startServer(t, engineVolumes{e}, dir, Config{})
	if ep, err := srv2.Epoch("v"); err != nil || ep != 7 {
		t.Fatalf("epoch after restart %d (%v), want 7", ep, err)
	}
	_, err := Dial(context.Background(), clientConfig(srv2.addr, "v", 6))
	var se *StaleEpochError
	if !errors.As(err, &se) || se.Epoch != 7 || se.Sent != 6 {
		t.Fatalf("hello at epoch 6 after restart: %v, want StaleEpochError at 7", err)
	}
	c2 := dial(t, clientConfig(srv2.addr, "v", 7))
	if err := c2.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedStateRefused: a state file that cannot be read is never taken
// for epoch 0.
func TestDamagedStateRefused(t *testing.T) {
	e := newEngine(t, volSize, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{})
	if err := writeFile(srv.stateDir+"/v.epoch", "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(context.Background(), clientConfig(srv.addr, "v", 1)); !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("hello with a damaged state file: %v, want a refusal naming it", err)
	}
}

func TestHelloRefusals(t *testing.T) {
	e := newEngine(t, volSize, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{})
	ctx := context.Background()

	cfg := clientConfig(srv.addr, "nope", 9)
	if _, err := Dial(ctx, cfg); !errors.Is(err, ErrUnknownVolume) {
		t.Fatalf("unknown volume: %v", err)
	}
	if _, err := os.Stat(filepath.Join(srv.stateDir, "nope.epoch")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a hello for an unknown volume left a state file: %v", err)
	}
	cfg = clientConfig(srv.addr, "v", 1)
	cfg.Cluster[0]++
	if _, err := Dial(ctx, cfg); !errors.Is(err, ErrWrongCluster) {
		t.Fatalf("other cluster: %v", err)
	}
	cfg = clientConfig(srv.addr, "../etc", 1)
	if _, err := Dial(ctx, cfg); !errors.Is(err, ErrInvalid) {
		t.Fatalf("volume name with a path: %v", err)
	}
	// A raw hello with a path as its volume never reaches the file system.
	nc := rawConn(t, srv.addr)
	nc.Write(AppendHello(nil, Hello{Version: Version, Cluster: testCluster, Epoch: 1, Volume: "../x"}))
	expectClosed(t, nc)
	nc = rawConn(t, srv.addr)
	nc.Write(AppendHello(nil, Hello{Version: 99, Cluster: testCluster, Epoch: 1, Volume: "v"}))
	expectClosed(t, nc)
	srv.log.waitLog(t, "unsupported protocol version")
}

// TestLocalAddr: the client's connections come from the address it was
// given (the tests' partitions are rules on address pairs).
func TestLocalAddr(t *testing.T) {
	e := newEngine(t, volSize, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{})
	cfg := clientConfig(srv.addr, "missing", 1)
	cfg.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	if _, err := Dial(context.Background(), cfg); !errors.Is(err, ErrUnknownVolume) {
		t.Fatal(err)
	}
	srv.log.waitLog(t, "remote=127.0.0.2:")
}

// TestMalformed: each kind of bad input closes its connection with a
// logged protocol violation, and the server keeps serving others.
func TestMalformed(t *testing.T) {
	e := newEngine(t, volSize, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{})
	good := dial(t, clientConfig(srv.addr, "v", 1))
	ctx := context.Background()

	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"truncated header", "truncated request header", AppendRequest(nil, CmdFlush, 0, 1, 1, 0, 0, 0)[:20]},
		{"huge length", "limit", AppendRequest(nil, CmdWrite, 0, 1, 1, 0, 1<<31, 0)},
		{"huge read", "limit", AppendRequest(nil, CmdRead, 0, 1, 1, 0, MaxPayload+1, 0)},
		{"bad magic", "bad request magic", append([]byte("GARBAGE!"), make([]byte, 32)...)},
		{"unknown command", "unknown command 9", AppendRequest(nil, 9, 0, 1, 1, 0, 0, 0)},
		{"bad flags", "not valid for command", AppendRequest(nil, CmdRead, FlagFUA, 1, 1, 0, 4096, 0)},
		{"flush with range", "FLUSH with offset", AppendRequest(nil, CmdFlush, 0, 1, 1, 4096, 0, 0)},
		{"truncated payload", "truncated payload of command 1", append(AppendRequest(nil, CmdWrite, 0, 1, 1, 0, 4096, 0), 1, 2, 3)},
		{"checksum without payload", "checksum on command", AppendRequest(nil, CmdTrim, 0, 1, 1, 0, 4096, 77)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc := rawConn(t, srv.addr)
			rawHello(t, nc, "v", 1)
			nc.Write(tc.in)
			nc.(*net.TCPConn).CloseWrite()
			expectClosed(t, nc)
			srv.log.waitLog(t, tc.want)
			if err := good.WriteAt(ctx, pattern(4096, 5), 0, false); err != nil {
				t.Fatalf("another connection failed after %s: %v", tc.name, err)
			}
		})
	}
	// Garbage instead of a hello.
	nc := rawConn(t, srv.addr)
	nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abcdef"))
	expectClosed(t, nc)
	srv.log.waitLog(t, "bad hello magic")
}

// TestChecksumMismatch: a WRITE corrupted in flight is refused, not applied.
func TestChecksumMismatch(t *testing.T) {
	e := newEngine(t, volSize, "v")
	v := volume(t, e, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{})
	nc := rawConn(t, srv.addr)
	rawHello(t, nc, "v", 1)
	p := pattern(4096, 3)
	nc.Write(append(AppendRequest(nil, CmdWrite, 0, 42, 1, 0, 4096, PayloadChecksum(p)+1), p...))
	var h [ReplyHeaderLen]byte
	if _, err := nc.Read(h[:]); err != nil {
		t.Fatal(err)
	}
	r, err := parseReply(&h)
	if err != nil || r.code != CodeIO || r.handle != 42 {
		t.Fatalf("reply %+v, %v; want EIO for handle 42", r, err)
	}
	got := make([]byte, 4096)
	v.ReadAt(got, 0)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("a write with a bad checksum was applied")
	}
}

// blockingVolume is a replica stuck in its I/O (a SIGSTOPped process or a
// hung disk, as the coordinator sees it): writes wait until release.
type blockingVolume struct {
	Volume
	release chan struct{}
	entered chan struct{}
}

func (b *blockingVolume) WriteAt(p []byte, off int64, fua bool) error {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-b.release
	return b.Volume.WriteAt(p, off, fua)
}

type oneVolume struct{ v Volume }

func (o oneVolume) OpenReplica(string) (Volume, func(), error) { return o.v, func() {}, nil }

func TestTimeout(t *testing.T) {
	e := newEngine(t, volSize, "v")
	bv := &blockingVolume{Volume: volume(t, e, "v"), release: make(chan struct{}), entered: make(chan struct{}, 1)}
	srv := startServer(t, oneVolume{bv}, "", Config{})
	t.Cleanup(func() { close(bv.release) }) // before the server's Close (cleanups run in reverse)
	cfg := clientConfig(srv.addr, "v", 1)
	cfg.Timeout = 300 * time.Millisecond
	c := dial(t, cfg)
	ctx := context.Background()

	// A read is served while nothing is stuck.
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	start := time.Now()
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.WriteAt(ctx, pattern(4096, byte(i)), int64(i)*4096, false)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	for i, err := range errs {
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("write %d: %v, want ErrTimeout", i, err)
		}
	}
	if took < cfg.Timeout || took > cfg.Timeout+time.Second {
		t.Fatalf("timed out after %v (timeout %v)", took, cfg.Timeout)
	}
	if err := c.Flush(ctx); !errors.Is(err, ErrTimeout) {
		t.Fatalf("a call after the timeout: %v, want the connection's ErrTimeout", err)
	}
}

// TestCancel: a caller that gives up closes the connection and returns at
// once; its buffer is not written to afterwards.
func TestCancel(t *testing.T) {
	e := newEngine(t, volSize, "v")
	bv := &blockingVolume{Volume: volume(t, e, "v"), release: make(chan struct{}), entered: make(chan struct{}, 1)}
	srv := startServer(t, oneVolume{bv}, "", Config{})
	t.Cleanup(func() { close(bv.release) })
	c := dial(t, clientConfig(srv.addr, "v", 1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.WriteAt(ctx, pattern(4096, 1), 0, false) }()
	select {
	case <-bv.entered:
	case err := <-done:
		t.Fatalf("the write returned %v instead of blocking", err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled write: %v", err)
	}
	if err := c.Flush(context.Background()); err == nil {
		t.Fatal("the connection survived an abandoned request")
	}
}

// TestServerCloseFailsCalls: a replica that goes away fails the calls in
// flight; nothing is reported done that was not answered.
func TestServerCloseFailsCalls(t *testing.T) {
	e := newEngine(t, volSize, "v")
	srv := startServer(t, engineVolumes{e}, "", Config{})
	c := dial(t, clientConfig(srv.addr, "v", 1))
	if err := c.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	if err := c.WriteAt(context.Background(), pattern(4096, 1), 0, false); err == nil {
		t.Fatal("a write to a closed replica succeeded")
	}
}

// TestNewEpochWaitsForOlderRequests: a request of the old epoch that passed
// its check finishes before the new coordinator's hello is answered, so
// nothing of the old epoch lands after the new one is acknowledged.
func TestNewEpochWaitsForOlderRequests(t *testing.T) {
	e := newEngine(t, volSize, "v")
	bv := &blockingVolume{Volume: volume(t, e, "v"), release: make(chan struct{}), entered: make(chan struct{}, 1)}
	srv := startServer(t, oneVolume{bv}, "", Config{})
	released := false
	t.Cleanup(func() {
		if !released {
			close(bv.release)
		}
	})
	old := dial(t, clientConfig(srv.addr, "v", 1))
	oldDone := make(chan error, 1)
	go func() { oldDone <- old.WriteAt(context.Background(), pattern(4096, 1), 0, false) }()
	<-bv.entered

	helloDone := make(chan error, 1)
	go func() {
		c, err := Dial(context.Background(), clientConfig(srv.addr, "v", 2))
		if err == nil {
			c.Close()
		}
		helloDone <- err
	}()
	select {
	case err := <-helloDone:
		t.Fatalf("the new epoch was answered (%v) while a write of the old one was being applied", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(bv.release)
	released = true
	if err := <-oldDone; err != nil {
		t.Fatalf("the old write, admitted before the new epoch: %v", err)
	}
	if err := <-helloDone; err != nil {
		t.Fatalf("the new coordinator's hello: %v", err)
	}
	if err := old.WriteAt(context.Background(), pattern(4096, 2), 0, false); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("old coordinator after the new hello: %v, want ErrStaleEpoch", err)
	}
}
