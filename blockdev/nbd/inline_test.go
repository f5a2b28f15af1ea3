package nbd

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The reader runs a small READ or WRITE itself when nothing else is in
// flight and hands requests to the workers otherwise. A seeded random mix of
// lone requests (each waited for: the inline path) and bursts (the workers),
// with sizes either side of inlineMaxLength and errors on both paths, must
// read back what a simple model says, with every handle answered once.
func TestInlineAndQueuedMix(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			env := newEnv(t)
			const size = 64 << 20
			env.volume("vol", size)
			c := connectRaw(t, env.sock, "vol", structured)
			model := make([]byte, size)
			rng := rand.New(rand.NewPCG(4, uint64(len(t.Name()))))
			sizes := []int{512, 4096, 64 << 10, inlineMaxLength, inlineMaxLength + 4096, 1 << 20}

			type op struct {
				typ       uint16
				off       uint64
				n         int
				payload   []byte
				undo      []byte // WRITE: the model's bytes before it
				want      []byte // READ: expected data
				wantErrno uint32
			}
			next := func() op {
				n := sizes[rng.IntN(len(sizes))]
				off := uint64(rng.IntN((size-n)/512)) * 512
				switch rng.IntN(10) {
				case 0:
					return op{typ: CmdFlush}
				case 1: // past the end: an error reply, the stream stays in sync
					return op{typ: CmdRead, off: size - 512, n: 4096, wantErrno: ErrnoInval}
				case 2, 3, 4, 5:
					p := make([]byte, n)
					for i := range p {
						p[i] = byte(rng.Uint32())
					}
					undo := bytes.Clone(model[off : off+uint64(n)])
					copy(model[off:], p)
					return op{typ: CmdWrite, off: off, n: n, payload: p, undo: undo}
				default:
					return op{typ: CmdRead, off: off, n: n, want: bytes.Clone(model[off : off+uint64(n)])}
				}
			}
			// A burst is sent whole before its replies are read, and the
			// server may run its requests in any order, so no request in a
			// burst overlaps a write in the same burst.
			var handle uint64
			for round := range 300 {
				c.nc.SetDeadline(time.Now().Add(20 * time.Second)) // per round: -race is slow
				burst := 1
				if round%3 == 2 {
					burst = 2 + rng.IntN(40)
				}
				ops := map[uint64]op{}
				touched := map[uint64]uint16{} // 512-byte sector → CmdWrite or CmdRead
				for try := 0; len(ops) < burst && try < 1000; try++ {
					o := next()
					if o.typ != CmdFlush && o.wantErrno == 0 {
						clash := false
						for s := o.off / 512; s < (o.off+uint64(o.n))/512; s++ {
							k, ok := touched[s]
							clash = clash || k == CmdWrite || (ok && o.typ == CmdWrite)
						}
						if clash {
							if o.typ == CmdWrite {
								copy(model[o.off:], o.undo)
							}
							continue
						}
						for s := o.off / 512; s < (o.off+uint64(o.n))/512; s++ {
							touched[s] = o.typ
						}
					}
					handle++
					ops[handle] = o
					c.request(o.typ, 0, handle, o.off, uint32(o.n), o.payload)
				}
				burst = len(ops)
				for range burst {
					// Simple replies do not say how much data follows: the
					// length comes from the op the handle names, so peek at
					// the header first.
					r := c.readReplyFor(func(h uint64) int {
						if o := ops[h]; o.typ == CmdRead {
							return o.n
						}
						return 0
					})
					o, ok := ops[r.handle]
					if !ok {
						t.Fatalf("round %d: reply for unknown or answered handle %d", round, r.handle)
					}
					delete(ops, r.handle)
					if r.errno != o.wantErrno {
						t.Fatalf("round %d: handle %d (type %d off %d n %d): errno %d, want %d", round, r.handle, o.typ, o.off, o.n, r.errno, o.wantErrno)
					}
					if o.typ == CmdRead && o.wantErrno == 0 && !bytes.Equal(r.data, o.want) {
						t.Fatalf("round %d: READ off %d n %d returned other data", round, o.off, o.n)
					}
				}
			}
		})
	}
}

// concurrencyExport wraps an export and records how many WriteAt calls ran
// at once, split by FUA. Each write lingers a little so that writes the
// server runs in parallel do overlap.
type concurrencyExport struct {
	Export
	cached           bool
	mu               sync.Mutex
	plain, fua       int // running now
	maxPlain, maxFUA int
}

func (e *concurrencyExport) WritesCached() bool { return e.cached }
func (e *concurrencyExport) WriteWaits() uint64 { return 0 }

func (e *concurrencyExport) WriteAt(p []byte, off int64, fua bool) error {
	e.mu.Lock()
	if fua {
		e.fua++
		e.maxFUA = max(e.maxFUA, e.fua)
	} else {
		e.plain++
		e.maxPlain = max(e.maxPlain, e.plain)
	}
	e.mu.Unlock()
	time.Sleep(2 * time.Millisecond)
	err := e.Export.WriteAt(p, off, fua)
	e.mu.Lock()
	if fua {
		e.fua--
	} else {
		e.plain--
	}
	e.mu.Unlock()
	return err
}

// Plain writes to an export whose writes are cached run on at most
// CachedWriteWorkers workers; FUA writes (which wait for a commit) and every
// write of other exports use the full pool. Whatever pool ran them, every
// write lands and reads back.
func TestCachedWritesRunOnTheirOwnPool(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 64<<20)
	v, err := env.eng.Volume("vol")
	if err != nil {
		t.Fatal(err)
	}
	if !v.WritesCached() {
		t.Fatal("a volume on a sparse file drive should say its writes are cached")
	}
	for _, cached := range []bool{true, false} {
		exp := &concurrencyExport{Export: v, cached: cached}
		name := fmt.Sprintf("cached-%v", cached)
		env.exps.mu.Lock()
		env.exps.extra[name] = exp
		env.exps.mu.Unlock()
		c := connectRaw(t, env.sock, name, false)
		c.nc.SetDeadline(time.Now().Add(30 * time.Second))
		const n = 48
		want := make(map[uint64][]byte)
		for i := range uint64(n) {
			p := bytes.Repeat([]byte{byte(i + 1), byte(len(name))}, 2048)
			flags := uint16(0)
			if i%4 == 3 {
				flags = CmdFlagFUA
			}
			want[i*8192] = p
			c.request(CmdWrite, flags, i+1, i*8192, uint32(len(p)), p)
		}
		for range n {
			if r := c.readReply(0); r.errno != 0 {
				t.Fatalf("%s: write %d: errno %d %s", name, r.handle, r.errno, r.msg)
			}
		}
		for off, p := range want {
			c.request(CmdRead, 0, 1, off, uint32(len(p)), nil)
			if r := c.readReply(len(p)); r.errno != 0 || !bytes.Equal(r.data, p) {
				t.Fatalf("%s: read at %d: errno %d, data equal %v", name, off, r.errno, bytes.Equal(r.data, p))
			}
		}
		exp.mu.Lock()
		maxPlain, maxFUA := exp.maxPlain, exp.maxFUA
		exp.mu.Unlock()
		t.Logf("%s: at most %d plain and %d FUA writes at once", name, maxPlain, maxFUA)
		if cached && maxPlain > defaultCachedWriteWorkers {
			t.Fatalf("%d plain writes ran at once on a cached export, the pool has %d workers", maxPlain, defaultCachedWriteWorkers)
		}
	}
}

// gatedExport holds each plain write until `need` of them are inside
// WriteAt at once (or 2 s pass), after a first write that says it waited
// (WriteWaits): it tells whether plain writes could run on more than the
// small pool.
type gatedExport struct {
	Export
	mu      sync.Mutex
	slow    bool // the next write waits (counts in waits)
	waits   atomic.Uint64
	armed   bool // writes wait at the gate
	inside  int
	most    int // the most inside at once
	need    int
	opened  chan struct{}
	reached bool
}

func (e *gatedExport) WritesCached() bool { return true }
func (e *gatedExport) WriteWaits() uint64 { return e.waits.Load() }

func (e *gatedExport) WriteAt(p []byte, off int64, fua bool) error {
	e.mu.Lock()
	if e.slow {
		e.slow = false
		e.mu.Unlock()
		e.waits.Add(1)
		return e.Export.WriteAt(p, off, fua)
	}
	if !e.armed {
		e.mu.Unlock()
		return e.Export.WriteAt(p, off, fua)
	}
	e.inside++
	e.most = max(e.most, e.inside)
	if e.inside == e.need {
		e.reached = true
		close(e.opened)
	}
	opened := e.opened
	e.mu.Unlock()
	select {
	case <-opened:
	case <-time.After(2 * time.Second): // not all of them got in: give up
	}
	e.mu.Lock()
	e.inside--
	e.mu.Unlock()
	return e.Export.WriteAt(p, off, fua)
}

// After a plain write to a cached export waited (its WriteWaits moved),
// plain writes go to the full pool for a while: a small pool whose workers
// all wait would stop the connection's writes.
func TestSlowCachedWriteOpensTheFullPool(t *testing.T) {
	old := cachedWritesBackoff
	cachedWritesBackoff = time.Minute // the burst below surely falls inside it
	t.Cleanup(func() { cachedWritesBackoff = old })
	env := newEnv(t)
	env.volume("vol", 64<<20)
	v, err := env.eng.Volume("vol")
	if err != nil {
		t.Fatal(err)
	}
	const burst = 2 * defaultCachedWriteWorkers
	exp := &gatedExport{Export: v, slow: true, need: burst, opened: make(chan struct{})}
	env.exps.mu.Lock()
	env.exps.extra["gated"] = exp
	env.exps.mu.Unlock()
	c := connectRaw(t, env.sock, "gated", false)
	c.nc.SetDeadline(time.Now().Add(30 * time.Second))
	p := bytes.Repeat([]byte{7}, 4096)
	// Two in one socket write, so that they are queued (a lone write runs
	// inline, on the reader): one of them is the slow one.
	b := append(AppendRequest(nil, CmdWrite, 0, 1, 0, 4096), p...)
	c.write(append(AppendRequest(b, CmdWrite, 0, 2, 4096, 4096), p...))
	for range 2 {
		if r := c.readReply(0); r.errno != 0 {
			t.Fatalf("write %d: errno %d", r.handle, r.errno)
		}
	}
	exp.mu.Lock()
	exp.armed = true
	exp.mu.Unlock()
	// The burst in one socket write too: a first write the reader found
	// alone would run inline, on the reader, and hold back the rest.
	var all []byte
	for i := range uint64(burst) {
		all = append(AppendRequest(all, CmdWrite, 0, 10+i, (2+i)*4096, 4096), p...)
	}
	c.write(all)
	for range burst {
		if r := c.readReply(0); r.errno != 0 {
			t.Fatalf("write %d: errno %d", r.handle, r.errno)
		}
	}
	exp.mu.Lock()
	defer exp.mu.Unlock()
	if !exp.reached {
		t.Fatalf("only %d of %d plain writes ran at once after a slow one; the small pool has %d workers", exp.most, burst, defaultCachedWriteWorkers)
	}
}

// heldFlushExport holds every Flush until release is closed.
type heldFlushExport struct {
	Export
	entered chan struct{} // one send per Flush that started
	release chan struct{}
}

func (e *heldFlushExport) Flush() error {
	e.entered <- struct{}{}
	<-e.release
	return e.Export.Flush()
}

// A FLUSH runs on the reader only when the request before it did too (a
// client waiting for each reply); behind pipelined requests it goes to a
// worker, so a slow flush never holds up the reads queued after it.
func TestFlushInlineOnlyAtQueueDepthOne(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 64<<20)
	v, err := env.eng.Volume("vol")
	if err != nil {
		t.Fatal(err)
	}
	p := bytes.Repeat([]byte{9}, 4096)
	for _, tc := range []struct {
		name      string
		pipelined bool // the write before the flush came in a batch of two
		inline    bool
	}{{"after a lone write", false, true}, {"after pipelined writes", true, false}} {
		t.Run(tc.name, func(t *testing.T) {
			exp := &heldFlushExport{Export: v, entered: make(chan struct{}, 1), release: make(chan struct{})}
			name := "held-" + fmt.Sprint(tc.pipelined)
			env.exps.mu.Lock()
			env.exps.extra[name] = exp
			env.exps.mu.Unlock()
			c := connectRaw(t, env.sock, name, false)
			c.nc.SetDeadline(time.Now().Add(20 * time.Second))
			if tc.pipelined {
				b := append(AppendRequest(nil, CmdWrite, 0, 1, 0, 4096), p...)
				c.write(append(AppendRequest(b, CmdWrite, 0, 2, 4096, 4096), p...))
				c.readReply(0)
				c.readReply(0)
			} else {
				c.request(CmdWrite, 0, 1, 0, 4096, p)
				c.readReply(0)
			}
			c.request(CmdFlush, 0, 3, 0, 0, nil)
			<-exp.entered
			c.request(CmdRead, 0, 4, 0, 4096, nil)
			answered := make(chan reply, 2)
			go func() {
				for range 2 {
					answered <- c.readReplyFor(func(h uint64) int {
						if h == 4 {
							return 4096
						}
						return 0
					})
				}
			}()
			wait := 5 * time.Second // the read must come while the flush is held
			if tc.inline {
				wait = 300 * time.Millisecond // nothing may come: the reader is in the flush
			}
			select {
			case r := <-answered:
				if tc.inline {
					t.Fatalf("reply %d came while the flush ran on the reader", r.handle)
				}
				if r.handle != 4 || r.errno != 0 || !bytes.Equal(r.data, p) {
					t.Fatalf("read behind a held flush: handle %d errno %d", r.handle, r.errno)
				}
			case <-time.After(wait):
				if !tc.inline {
					t.Fatal("a read queued behind a flush waited for it")
				}
			}
			close(exp.release)
			for range map[bool]int{true: 2, false: 1}[tc.inline] {
				if r := <-answered; r.errno != 0 {
					t.Fatalf("handle %d: errno %d", r.handle, r.errno)
				}
			}
		})
	}
}

// After a write or flush it ran itself, the reader waits for the next
// request in poll(2) for up to awaitInKernel, then in the netpoller. A
// request that comes at once, one that comes after the bound, and a
// shutdown while the reader waits are all handled.
func TestAwaitRequestAfterInlineWrite(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 64<<20)
	c := connectRaw(t, env.sock, "vol", false)
	c.nc.SetDeadline(time.Now().Add(20 * time.Second))
	p := bytes.Repeat([]byte{7}, 4096)
	for i, pause := range []time.Duration{0, 10 * time.Millisecond, 0, 3 * time.Millisecond} {
		h := uint64(10 * i)
		c.request(CmdWrite, 0, h+1, uint64(i)*4096, 4096, p)
		if r := c.readReply(0); r.handle != h+1 || r.errno != 0 {
			t.Fatalf("write: %+v", r)
		}
		time.Sleep(pause)
		c.request(CmdFlush, 0, h+2, 0, 0, nil)
		if r := c.readReply(0); r.handle != h+2 || r.errno != 0 {
			t.Fatalf("flush: %+v", r)
		}
		time.Sleep(pause)
		c.request(CmdRead, 0, h+3, uint64(i)*4096, 4096, nil)
		if r := c.readReply(4096); r.handle != h+3 || r.errno != 0 || !bytes.Equal(r.data, p) {
			t.Fatalf("read after a pause of %v: handle %d errno %d", pause, r.handle, r.errno)
		}
	}
	c.request(CmdWrite, 0, 99, 0, 4096, p)
	if r := c.readReply(0); r.errno != 0 {
		t.Fatalf("write: %+v", r)
	}
	// The reader now waits in poll(2); a shutdown still ends the connection.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := env.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown while the reader waits in poll: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	c.expectClosed()
}
