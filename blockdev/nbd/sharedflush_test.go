package nbd

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
)

// gatedFlusher is an export that counts its writes itself (FlushGen) and
// holds every FlushCovering until the gate opens, recording the gens asked
// for; with fail set, FlushCovering fails as a failed round does.
type gatedFlusher struct {
	Export
	writes atomic.Uint64
	gate   chan struct{}
	fail   atomic.Bool

	mu      sync.Mutex
	covered []uint64 // the gens FlushCovering was called with, in call order
}

func (g *gatedFlusher) WriteAt(p []byte, off int64, fua bool) error {
	err := g.Export.WriteAt(p, off, fua)
	g.writes.Add(1) // counted once complete, before the reply
	return err
}

func (g *gatedFlusher) FlushGen() uint64 { return g.writes.Load() }

func (g *gatedFlusher) FlushCovering(gen uint64, _ time.Time) error {
	g.mu.Lock()
	g.covered = append(g.covered, gen)
	gate := g.gate
	g.mu.Unlock()
	<-gate
	if g.fail.Load() {
		return errors.Join(engine.ErrIO, errors.New("test: the round failed"))
	}
	return g.Export.Flush()
}

func (g *gatedFlusher) calls() []uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]uint64(nil), g.covered...)
}

// waitCalls waits until FlushCovering was called n times.
func (g *gatedFlusher) waitCalls(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); len(g.calls()) < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("FlushCovering called %v, want %d calls", g.calls(), n)
		}
	}
}

// A FLUSH that arrives while another is in flight with nothing written
// between their arrivals is answered with it, without a call of its own
// until that one is done; a FLUSH after another write is acknowledged asks
// for a gen that covers that write. Every flush gets its own reply, and a
// failed lead fails the flushes that joined it.
func TestFlushesShareTheFlushInFlight(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 16<<20)
	vol, err := env.eng.Volume("vol")
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedFlusher{Export: vol, gate: make(chan struct{})}
	env.exps.mu.Lock()
	env.exps.extra["gated"] = g
	env.exps.mu.Unlock()
	c := connectRaw(t, env.sock, "gated", false)
	c.nc.SetDeadline(time.Now().Add(30 * time.Second))
	block := make([]byte, 4096)

	c.request(CmdWrite, 0, 1, 0, 4096, block) // waited for: the gen is 1
	if r := c.readReply(0); r.handle != 1 || r.errno != 0 {
		t.Fatalf("write: %+v", r)
	}
	// Two flushes sent together (so neither runs on the reader): the
	// second joins the first.
	c.write(append(AppendRequest(nil, CmdFlush, 0, 2, 0, 0), AppendRequest(nil, CmdFlush, 0, 3, 0, 0)...))
	g.waitCalls(t, 1)
	// A write acknowledged while they wait, then a flush: it needs gen 2,
	// which the one in flight does not cover, so it asks for itself.
	c.request(CmdWrite, 0, 4, 4096, 4096, block)
	if r := c.readReply(0); r.handle != 4 || r.errno != 0 {
		t.Fatalf("write: %+v", r)
	}
	c.request(CmdFlush, 0, 5, 0, 0, nil)
	g.waitCalls(t, 2)
	time.Sleep(20 * time.Millisecond) // a joined flush that asked on its own would show now
	if got := g.calls(); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("FlushCovering calls before the gate opened: %v, want [1 2]", got)
	}
	close(g.gate)
	seen := map[uint64]bool{}
	for range 3 {
		r := c.readReply(0)
		if r.errno != 0 || seen[r.handle] || r.handle < 2 || r.handle == 4 || r.handle > 5 {
			t.Fatalf("flush reply %+v (seen %v)", r, seen)
		}
		seen[r.handle] = true
	}
	if got := g.calls(); len(got) != 3 || got[2] != 1 {
		t.Fatalf("FlushCovering calls: %v, want [1 2 1] (the joined flush asks for its gen once the lead is done)", got)
	}

	// A lead whose round fails fails the flush that joined it.
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
	g.fail.Store(true)
	c.request(CmdWrite, 0, 6, 0, 4096, block)
	if r := c.readReply(0); r.handle != 6 || r.errno != 0 {
		t.Fatalf("write: %+v", r)
	}
	c.write(append(AppendRequest(nil, CmdFlush, 0, 7, 0, 0), AppendRequest(nil, CmdFlush, 0, 8, 0, 0)...))
	g.waitCalls(t, 4)
	time.Sleep(20 * time.Millisecond)
	if got := g.calls(); len(got) != 4 || got[3] != 3 {
		t.Fatalf("FlushCovering calls: %v, want a 4th, for gen 3, alone", got)
	}
	close(g.gate)
	for range 2 {
		if r := c.readReply(0); r.errno != ErrnoIO || (r.handle != 7 && r.handle != 8) {
			t.Fatalf("flush after a failed round: %+v, want EIO for handles 7 and 8", r)
		}
	}

	// A client that leaves while a flush waits with another joined to it:
	// both are still run to the end (the joined one asks for its gen once
	// the lead is done) and the connection ends; the server then shuts
	// down in time (newEnv's cleanup checks).
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
	g.fail.Store(false)
	c.write(append(AppendRequest(nil, CmdFlush, 0, 9, 0, 0), AppendRequest(nil, CmdFlush, 0, 10, 0, 0)...))
	g.waitCalls(t, 6)
	c.nc.Close()
	time.Sleep(20 * time.Millisecond)
	close(g.gate)
	g.waitCalls(t, 7)
}
