package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/cairn-storage/cairn/engine"
)

// The simulation: a volume of 2 or 3 replicas served by one coordinator at
// a time over an in-memory network, while a seeded schedule partitions
// links, slows them, crashes and restarts replica nodes (losing their
// unflushed writes), makes their disks fail some I/O (EIO), makes the
// cluster's membership store unreachable or makes its changes time out
// after they were recorded, and replaces the coordinator (crashed, left
// running cut off: a zombie, or released cleanly: Flush, then Close) by a
// new one that claims the volume at a higher epoch. Clients write, read and
// flush small blocks meanwhile; every operation's call and return is
// recorded.
//
// The claims follow control's startCoordinator: a claim is Unclean when
// the previous one was not released cleanly (a crash, a zombie, a failed
// open, or a release whose flush failed), and only then converges; each
// coordinating node (c1, c2, or a replica's) keeps one StateDir across its
// claims, and an out-of-sync replica's region log is trusted (LogValid)
// when the record names this node as its keeper (the node that evicted it
// or last claimed the volume while it was out).
//
// What is checked:
//
//  1. Per block, the history is linearizable (porcupine) against a register
//     that may lose what no flush covered only where a crash allows it:
//     every successful read returns the latest write in some order of the
//     operations consistent with real time; a flushed (or FUA) value is
//     never lost; a failed write may take effect at any point up to the
//     end, or never. Crashes that may lose acknowledged, unflushed writes
//     are a takeover after the coordinator stopped uncleanly, and the last
//     in-sync replica coming back from a crash ("revert" in the history);
//     after a clean release whose flush succeeded, nothing may be lost.
//  2. Epoch fencing: once a new coordinator is open, no write of the one it
//     replaced is acknowledged.
//  3. After the faults heal: every replica back in sync; Verify finds no
//     difference; then, after a last flush, a crash of every replica leaves
//     what the history says (checked in the same history).
//
// Time: the Clients' timeouts and the coordinators' retries run on a fake
// clock the schedule advances (simStep per step), so a partition times
// requests out when the schedule says, not when the machine is slow. The
// goroutines themselves run freely, so a seed reproduces the schedule and
// the clients' choices, not every interleaving; run a failing seed a few
// times (-count) to see it again.
//
//	go test ./replication/ -run Simulation -v                  # the fixed seeds
//	go test ./replication/ -run Simulation -sim.seed=N -v      # the seed a failure printed
//	go test ./replication/ -run Simulation -sim.seed=0 -sim.runs=50 -sim.steps=2000   # new seeds, longer
var (
	simSeed  = flag.Uint64("sim.seed", 1, "first seed of the replication simulation (0: from the time); also $CAIRN_SIM_SEED")
	simRuns  = flag.Int("sim.runs", 10, "simulated runs, with seeds sim.seed, sim.seed+1, ...")
	simSteps = flag.Int("sim.steps", 1000, "fault-schedule steps per run")
	simLog   = flag.Bool("sim.log", false, "print the coordinators' log of every run (always printed on failure)")
)

const (
	simStep        = 10 * time.Millisecond // fake time per step
	simTimeout     = time.Second           // the Clients' request timeout (fake)
	simRetry       = 50 * time.Millisecond // the coordinators' RetryInterval (fake)
	simVolumeSize  = 8 * RegionSize
	simBlock       = 4096
	simSlots       = 3 // blocks per region
	simBlocks      = simVolumeSize / RegionSize * simSlots
	simWorkers     = 4
	simCheckBudget = time.Minute // porcupine's limit per run
	simMaxClaims   = 30          // claims a takeover tries (20 steps apart) after every fault healed before the volume is deemed lost
)

func TestSimulation(t *testing.T) {
	seed := *simSeed
	if env := os.Getenv("CAIRN_SIM_SEED"); env != "" {
		var err error
		if seed, err = strconv.ParseUint(env, 10, 64); err != nil {
			t.Fatalf("CAIRN_SIM_SEED=%q: %v", env, err)
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	steps := *simSteps
	if testing.Short() {
		steps /= 3
	}
	for i := range *simRuns {
		s := seed + uint64(i)
		if !t.Run(fmt.Sprintf("seed=%d", s), func(t *testing.T) { runSim(t, s, steps) }) {
			t.Logf("rerun with: go test ./replication/ -run 'Simulation' -sim.seed=%d -sim.runs=1 -sim.steps=%d -v", s, steps)
			return
		}
	}
}

// fakeClock is a Clock that moves only when Advance is called.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer // REQUIRES mu
}

type fakeTimer struct {
	at     time.Time
	period time.Duration // 0: once
	ch     chan time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) add(d, period time.Duration) *fakeTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), period: period, ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t
	}
	c.timers = append(c.timers, t)
	return t
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time { return c.add(d, 0).ch }

func (c *fakeClock) NewTicker(d time.Duration) (<-chan time.Time, func()) {
	t := c.add(d, d)
	return t.ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.timers = slices.DeleteFunc(c.timers, func(x *fakeTimer) bool { return x == t })
	}
}

// Advance moves the clock by d and fires what fell due (a ticker that
// missed several periods ticks once, as time.Ticker does).
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool {
		if t.at.After(c.now) {
			return false
		}
		select {
		case t.ch <- c.now:
		default:
		}
		if t.period == 0 {
			return true
		}
		for !t.at.After(c.now) {
			t.at = t.at.Add(t.period)
		}
		return false
	})
}

// simNet is the network between the coordinators and the replica nodes:
// net.Pipe connections through links that a partition stalls (as TCP
// does: nothing moves, nothing is lost, until it heals or an end gives
// up) and a delay slows (every write waits that long on the fake clock).
// A partition cuts a node off from every coordinator; a partitioned or
// down node refuses new connections.
type simNet struct {
	clock *fakeClock
	mu    sync.Mutex
	links map[string]*simLink // REQUIRES mu
}

type simLink struct {
	listener    *pipeListener // nil while the node's server is down
	partitioned bool
	delay       time.Duration
	changed     chan struct{} // closed (and replaced) on every change
}

var errPartitioned = errors.New("sim: node unreachable (partitioned)")

func (n *simNet) link(node string) *simLink {
	l := n.links[node]
	if l == nil {
		l = &simLink{changed: make(chan struct{})}
		n.links[node] = l
	}
	return l
}

// set changes node's link under the lock and wakes its stalled writers.
func (n *simNet) set(node string, f func(*simLink)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := n.link(node)
	f(l)
	close(l.changed)
	l.changed = make(chan struct{})
}

func (n *simNet) listen(node string) *pipeListener {
	pl := &pipeListener{name: node, conns: make(chan net.Conn), done: make(chan struct{})}
	n.set(node, func(l *simLink) { l.listener = pl })
	return pl
}

func (n *simNet) dial(node string) (net.Conn, error) {
	n.mu.Lock()
	l := n.link(node)
	pl, part := l.listener, l.partitioned
	n.mu.Unlock()
	switch {
	case pl == nil:
		return nil, fmt.Errorf("sim: dial %s: %w", node, errNodeDown)
	case part:
		return nil, fmt.Errorf("sim: dial %s: %w", node, errPartitioned)
	}
	a, b := net.Pipe()
	p := &pipePair{done: make(chan struct{})}
	ca := &simConn{Conn: a, net: n, node: node, pair: p}
	cb := &simConn{Conn: b, net: n, node: node, pair: p}
	select {
	case pl.conns <- cb:
		return ca, nil
	case <-pl.done:
		return nil, fmt.Errorf("sim: dial %s: %w", node, errNodeDown)
	}
}

type pipePair struct {
	once sync.Once
	done chan struct{} // closed when either end is closed
}

// simConn is one end of a pipe through a link.
type simConn struct {
	net.Conn
	net  *simNet
	node string
	pair *pipePair

	dmu      sync.Mutex
	deadline time.Time // REQUIRES dmu; write deadline (real time, as a socket's)
}

func (c *simConn) Write(b []byte) (int, error) {
	delayed := false
	for {
		c.net.mu.Lock()
		l := c.net.link(c.node)
		part, delay, changed := l.partitioned, l.delay, l.changed
		c.net.mu.Unlock()
		c.dmu.Lock()
		deadline := c.deadline
		c.dmu.Unlock()
		var expired <-chan time.Time
		if !deadline.IsZero() {
			expired = time.After(time.Until(deadline))
		}
		var wait <-chan time.Time
		switch {
		case part:
		case delay > 0 && !delayed:
			wait, delayed = c.net.clock.After(delay), true
		default:
			return c.Conn.Write(b)
		}
		select {
		case <-changed:
		case <-wait:
		case <-c.pair.done:
			return 0, io.ErrClosedPipe
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		}
	}
}

func (c *simConn) SetDeadline(t time.Time) error {
	c.SetWriteDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *simConn) SetWriteDeadline(t time.Time) error {
	c.dmu.Lock()
	c.deadline = t
	c.dmu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *simConn) Close() error {
	c.pair.once.Do(func() { close(c.pair.done) })
	return c.Conn.Close()
}

type pipeListener struct {
	name  string
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return simAddr(l.name) }

type simAddr string

func (a simAddr) Network() string { return "sim" }
func (a simAddr) String() string  { return string(a) }

// simNode is a replica node: its volume and state directory survive its
// process.
type simNode struct {
	name     string
	vol      *memVolume
	stateDir string
	srv      *Server // REQUIRES sim.dmu; nil while down
	served   chan error
	down     chan struct{} // REQUIRES sim.dmu; closed when this process crashes
	// crashes: when it crashed since the coordinator last evicted it or
	// started its resync. If the coordinator reconnects it as its last
	// in-sync replica, the unflushed writes it lost are gone from the
	// volume (a revert in the history); otherwise its log covers them.
	crashes []int64 // REQUIRES sim.mu
}

// simCoord is one coordinator: one claim of the volume.
type simCoord struct {
	c      *Coordinator
	node   string // where it runs ("cN", or a replica node with its local replica)
	local  bool
	claim  int
	opened int64 // history time when it was open and converged
	// crashed: its process is dead (set before its node's volume loses
	// anything): an operation that returns after that is a failure to its
	// client, whose connection broke — a read of its local replica racing
	// the crash must not deliver what the crash left.
	crashed atomic.Bool
}

// sim is one run.
type sim struct {
	t     *testing.T
	seed  uint64
	clock *fakeClock
	net   *simNet
	mem   *fakeMembership
	names []string
	nodes map[string]*simNode
	coord atomic.Pointer[simCoord] // the one clients use
	log   *logBuffer
	stop  chan struct{} // closed when the clients stop

	seq    atomic.Int64 // logical time of the history
	values atomic.Uint64
	claims atomic.Int32
	// fencedWrites: writes a zombie tried after its successor opened.
	fencedWrites atomic.Int32
	// unopenable: a takeover gave up, simMaxClaims claims having failed.
	unopenable atomic.Bool

	mu     sync.Mutex
	ops    []simOp  // REQUIRES mu
	events []string // REQUIRES mu; faults and membership changes, for a failure's report

	// The schedule's state, shared with a takeover under way. Lock order:
	// dmu before mu.
	dmu   sync.Mutex
	step  int             // REQUIRES dmu
	steps int             // the schedule's length
	heals []simHeal       // REQUIRES dmu; faults to undo, and restarts
	busy  map[string]bool // REQUIRES dmu; nodes under a fault, or a coordinator's own

	// What the cluster's record holds beside fakeMembership's in-sync set,
	// as control's startCoordinator and replicationMembership keep it: a
	// claim not released cleanly (the record's Coordinator still set: the
	// next claim is Unclean), and the node whose state directory holds
	// each out-of-sync replica's region log (the record's Log). A claim
	// and a change are each atomic under memMu, as the etcd transactions
	// are. Lock order: memMu before mu.
	memMu     sync.Mutex
	claimHeld bool              // REQUIRES memMu
	logOwner  map[string]string // REQUIRES memMu
	stateDirs map[string]string // REQUIRES memMu; each coordinating node's StateDir, kept across its claims
	// timeouts, while set, makes some membership changes time out, some
	// of them after they were recorded (etcd committed, the reply was lost).
	timeouts atomic.Pointer[simTimeouts]
	// gate: the workers' operations hold it shared; a clean release holds
	// it alone from its Flush to its Close (the daemon releases when the
	// last NBD connection is gone: nothing is written after its flush).
	gate sync.RWMutex
}

// simTimeouts decides which changes time out while etcd is flaky: a third
// before they are recorded, a third after (so the evictions of two
// replicas may fare differently).
type simTimeouts struct {
	mu  sync.Mutex
	rng *rand.Rand
}

// hit says whether a change times out, and if so whether it is recorded.
func (t *simTimeouts) hit() (timeout, recorded bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.rng.IntN(3)
	return r < 2, r == 1
}

// simMembership is the Membership of one claim's coordinator on node: the
// change is recorded (or refused) by fakeMembership, and the record's Log
// follows it as replicationMembership.set keeps it (evicted: this node
// keeps its log; joined: none).
type simMembership struct {
	s     *sim
	inner claimed
	node  string
}

func (m simMembership) Evict(node string) (uint64, error) { return m.change(node, false) }
func (m simMembership) Join(node string) (uint64, error)  { return m.change(node, true) }

func (m simMembership) change(node string, in bool) (uint64, error) {
	s := m.s
	s.memMu.Lock()
	defer s.memMu.Unlock()
	op := "evict"
	if in {
		op = "join"
	}
	var timeout, recorded bool
	if t := s.timeouts.Load(); t != nil {
		timeout, recorded = t.hit()
	}
	if timeout && !recorded {
		s.event("%s %s by claim %d: timed out, not recorded", op, node, m.inner.claim)
		return 0, errors.New("sim: etcd request timed out")
	}
	var epoch uint64
	var err error
	if in {
		epoch, err = m.inner.Join(node)
	} else {
		epoch, err = m.inner.Evict(node)
	}
	if err != nil {
		return epoch, err
	}
	if in {
		delete(s.logOwner, node)
	} else {
		s.logOwner[node] = m.node
	}
	if timeout {
		s.event("%s %s by claim %d: recorded, but the coordinator hears a timeout", op, node, m.inner.claim)
		return 0, errors.New("sim: etcd request timed out (the change was committed)")
	}
	return epoch, nil
}

// stateDir is node's coordinator StateDir: the same one each time it
// coordinates. REQUIRES s.memMu.
func (s *sim) stateDir(node string) string {
	d, ok := s.stateDirs[node]
	if !ok {
		d = s.t.TempDir()
		s.stateDirs[node] = d
	}
	return d
}

// simHeal undoes a fault at step at (the schedule runs it, holding dmu).
type simHeal struct {
	at int
	do func()
}

// event notes a fault or a membership change at the history's current time.
func (s *sim) event(format string, args ...any) {
	at := s.now()
	s.mu.Lock()
	s.events = append(s.events, fmt.Sprintf("%6d  %s", at, fmt.Sprintf(format, args...)))
	s.mu.Unlock()
}

type simKind uint8

const (
	simWrite simKind = iota
	simRead
	simFlush
	simRevert // a crash took back what no flush covered
)

// simOp is one operation of the history. block is -1 for flush and revert,
// which act on every block.
type simOp struct {
	client    int
	kind      simKind
	block     int
	value     uint64 // written, or read
	fua       bool
	ok        bool
	call, ret int64
}

func (s *sim) now() int64 { return s.seq.Add(1) }

func (s *sim) record(op simOp) {
	s.mu.Lock()
	s.ops = append(s.ops, op)
	s.mu.Unlock()
}

// revert records that the volume may have lost what no flush covered
// between call and now.
func (s *sim) revert(call int64, why string) {
	at := s.now()
	s.mu.Lock()
	s.ops = append(s.ops, simOp{client: -1, kind: simRevert, block: -1, ok: true, call: call, ret: at})
	s.events = append(s.events, fmt.Sprintf("%6d  revert [%d, %d]: %s", at, call, at, why))
	s.mu.Unlock()
}

func (s *sim) start(n *simNode) {
	srv, err := NewServer(memVolumes{testVolume, n.vol}, Config{Cluster: testCluster, StateDir: n.stateDir, Logger: discardLogger()})
	if err != nil {
		s.t.Fatal(err)
	}
	n.srv, n.served, n.down = srv, make(chan error, 1), make(chan struct{})
	s.event("start %s", n.name)
	l := s.net.listen(n.name)
	go func() { n.served <- srv.Serve(l) }()
}

// crash stops n's process and loses its unflushed writes. REQUIRES s.dmu.
func (s *sim) crash(n *simNode) {
	if n.srv == nil {
		s.t.Errorf("seed %d: sim: node %s crashed while down", s.seed, n.name)
		return
	}
	s.net.set(n.name, func(l *simLink) { l.listener = nil })
	close(n.down) // a write the disk stalls ends now: Close waits for it
	n.srv.Close()
	if err := <-n.served; !errors.Is(err, ErrClosed) {
		s.t.Errorf("node %s: Serve: %v", n.name, err)
	}
	n.srv = nil
	n.vol.crash()
	s.event("crash %s", n.name)
	s.mu.Lock()
	n.crashes = append(n.crashes, s.now())
	s.mu.Unlock()
}

// dialer is sc's Dialer over the simulated network.
func (s *sim) dialer(sc *simCoord) Dialer {
	return func(ctx context.Context, node string, epoch uint64) (*Client, error) {
		start := s.now()
		nc, err := s.net.dial(node)
		if err != nil {
			return nil, err
		}
		cl, err := NewClient(nc, ClientConfig{Addr: node, Cluster: testCluster, Node: sc.node, Volume: testVolume,
			Epoch: epoch, Timeout: simTimeout, Clock: s.clock})
		if err != nil || s.coord.Load() != sc { // (sc.c is set before sc is stored)
			return cl, err // opening: the takeover's revert covers what was lost
		}
		inSync := status(sc.c, node).State == InSync
		s.mu.Lock()
		n := s.nodes[node]
		crashed := len(n.crashes) > 0
		from := int64(0)
		switch {
		case !inSync:
			// A resync starts: what it lost before is in its log.
			n.crashes = slices.DeleteFunc(n.crashes, func(at int64) bool { return at < start })
		case crashed:
			// The last in-sync replica reconnects: if it crashed since it
			// last took a flush, the volume lost those writes.
			from = n.crashes[0]
			n.crashes = nil
		}
		s.mu.Unlock()
		if inSync && crashed {
			s.revert(from, node+" reconnected as the last in-sync replica")
		}
		return cl, nil
	}
}

// seqWriter stamps each line of the coordinators' log with the history's
// time.
type seqWriter struct{ s *sim }

func (w seqWriter) Write(p []byte) (int, error) {
	fmt.Fprintf(w.s.log, "%6d  %s", w.s.seq.Load(), p)
	return len(p), nil
}

// simBlockOff is where block k lives: simSlots blocks in each region.
func simBlockOff(k int) int64 {
	region, slot := k%(simVolumeSize/RegionSize), k/(simVolumeSize/RegionSize)
	return int64(region)*RegionSize + int64(slot)*(RegionSize/simSlots/simBlock)*simBlock
}

func simFill(p []byte, v uint64) {
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], v)
	}
}

// simDecode returns the value a block holds, or false when it is torn.
func simDecode(p []byte) (uint64, bool) {
	v := binary.LittleEndian.Uint64(p)
	for i := 8; i < len(p); i += 8 {
		if binary.LittleEndian.Uint64(p[i:]) != v {
			return 0, false
		}
	}
	return v, true
}

// do runs one random operation on c as client id and records it. Reads are
// left out when reads is false (a zombie coordinator's: nothing but the
// lease it lost keeps it from reading its own replica, see control's
// watchLease).
func (s *sim) do(sc *simCoord, id int, rng *rand.Rand, buf []byte, reads bool) simOp {
	c := sc.c
	k := rng.IntN(simBlocks)
	off := simBlockOff(k)
	op := simOp{client: id, block: k}
	r := rng.IntN(100)
	if !reads {
		r = rng.IntN(45) + 55*rng.IntN(2) // writes and flushes
	}
	switch {
	case r < 45:
		op.kind = simWrite
		var err error
		op.call = s.now()
		switch z := rng.IntN(10); {
		case z == 0:
			err = c.Trim(off, simBlock)
		case z == 1:
			err = c.WriteZeroes(off, simBlock, rng.IntN(2) == 0)
		default:
			op.value = s.values.Add(1)
			op.fua = rng.IntN(10) == 0
			simFill(buf, op.value)
			err = c.WriteAt(buf, off, op.fua)
		}
		op.ret, op.ok = s.now(), err == nil
	case r < 85:
		op.kind = simRead
		op.call = s.now()
		err := c.ReadAt(buf, off)
		op.ret, op.ok = s.now(), err == nil
		if op.ok {
			op.value = s.decode(buf, k)
		}
	default:
		op.kind, op.block = simFlush, -1
		op.call = s.now()
		err := c.Flush()
		op.ret, op.ok = s.now(), err == nil
	}
	if sc.crashed.Load() {
		op.ok = false
	}
	s.record(op)
	return op
}

// worker issues random operations through the current coordinator, about
// one per step of fake time.
func (s *sim) worker(id int, wg *sync.WaitGroup) {
	defer wg.Done()
	rng := rand.New(rand.NewPCG(s.seed, uint64(id)+1))
	buf := make([]byte, simBlock)
	for {
		select {
		case <-s.stop:
			return
		case <-s.clock.After(time.Duration(rng.IntN(3)) * simStep):
		}
		s.gate.RLock()
		op := s.do(s.coord.Load(), id, rng, buf, true)
		s.gate.RUnlock()
		if !op.ok {
			select { // the volume is down or changing: give it time
			case <-s.stop:
				return
			case <-s.clock.After(10 * simStep):
			}
		}
	}
}

// zombie issues writes and flushes through sc, a coordinator another
// replaces, until stop: no write may succeed once the new one is open
// (replacedAt, its history time; 0 until then).
func (s *sim) zombie(sc *simCoord, replacedAt *atomic.Int64, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	id := 100 + sc.claim
	rng := rand.New(rand.NewPCG(s.seed, uint64(id)))
	buf := make([]byte, simBlock)
	for {
		select {
		case <-stop:
			return
		case <-s.clock.After(time.Duration(rng.IntN(3)) * simStep):
		}
		op := s.do(sc, id, rng, buf, false)
		at := replacedAt.Load()
		if op.kind == simWrite && at != 0 && op.call > at {
			s.fencedWrites.Add(1)
		}
		if op.ok && op.kind == simWrite && at != 0 && op.call > at {
			s.t.Errorf("seed %d: the replaced coordinator %d acknowledged a write at %d, after its successor was open (%d): epoch fencing failed",
				s.seed, sc.claim, op.call, at)
		}
	}
}

func (s *sim) decode(p []byte, k int) uint64 {
	v, ok := simDecode(p)
	if !ok {
		s.t.Errorf("seed %d: block %d is torn", s.seed, k)
	}
	return v
}

func (s *sim) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(seqWriter{s}, &slog.HandlerOptions{Level: slog.LevelInfo,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}))
}

// open claims the volume for a coordinator on node (with its local replica
// when it has one) and converges the in-sync replicas where their activity
// logs say they may differ, as the daemon does after an unclean change.
// It returns nil when the coordinator could not open (no in-sync replica
// reachable, a fault during the convergence).
func (s *sim) open(node string) *simCoord {
	// The claim, as startCoordinator's transaction: Unclean when the
	// previous claim was not released cleanly; an out-of-sync replica's
	// log is valid when this node kept it, and this node keeps it now.
	s.memMu.Lock()
	epoch, mem, replicas := s.mem.claimVolume(s.names)
	unclean := s.claimHeld
	s.claimHeld = true
	var valid []string
	for i := range replicas {
		r := &replicas[i]
		if !r.InSync {
			r.LogValid = s.logOwner[r.Node] == node
			s.logOwner[r.Node] = node
			if r.LogValid {
				valid = append(valid, r.Node)
			}
		}
	}
	stateDir := s.stateDir(node)
	s.memMu.Unlock()
	sc := &simCoord{node: node, claim: mem.claim}
	s.event("claim %d by %s @%d unclean=%v, logs kept here: %v", sc.claim, node, epoch, unclean, valid)
	var loc *Local
	if n := s.nodes[node]; n != nil {
		s.dmu.Lock()
		srv := n.srv
		s.dmu.Unlock()
		var err error
		if loc, err = srv.OpenLocal(testVolume, epoch); err != nil {
			s.event("claim %d: local replica: %v", sc.claim, err)
			return nil
		}
		sc.local = true
	}
	cfg := CoordinatorConfig{Volume: testVolume, Size: simVolumeSize, Self: node, Epoch: epoch, Replicas: replicas, Local: loc,
		Membership: simMembership{s, mem, node}, Dial: s.dialer(sc), StateDir: stateDir, ResyncRate: 64 << 20,
		RetryInterval: simRetry, Clock: s.clock, Logger: s.logger().With("claim", sc.claim), Unclean: unclean}
	c, err := NewCoordinator(context.Background(), cfg)
	if err != nil {
		if loc != nil {
			loc.Close()
		}
		s.event("claim %d: open: %v", sc.claim, err)
		return nil
	}
	sc.c = c
	// Converge compares what the replicas' activity logs name; the daemon
	// does it only after an unclean stop.
	if unclean {
		if _, err := c.Converge(context.Background(), nil); err != nil {
			s.event("claim %d: converge: %v", sc.claim, err)
			c.Close()
			return nil
		}
	}
	sc.opened = s.now()
	return sc
}

// How a takeover stops the coordinator it replaces.
type simStop uint8

const (
	simCrash   simStop = iota // it crashes, with its node when that is a replica's
	simZombie                 // it is cut off and goes on until its lease's fence catches up
	simRelease                // it releases the volume as the daemon does: Flush, then Close
)

// coordNode picks a coordinator node that holds no replica (c1 or c2: each
// keeps its StateDir across its claims), not avoid.
func coordNode(rng *rand.Rand, avoid string) string {
	node := fmt.Sprintf("c%d", 1+rng.IntN(2))
	if node == avoid {
		node = map[string]string{"c1": "c2", "c2": "c1"}[node]
	}
	return node
}

// takeover replaces old by a new coordinator: old crashed (its node too,
// when it ran on a replica's), or old is a zombie that goes on writing
// until its lease's fence catches up with it (the new one is on another
// node), or old released the volume cleanly (Flush, then Close; the next
// claim is clean if that flush succeeded, and often on the same node, as
// when a client reconnects). It runs beside the schedule (which keeps the
// clock going) and tries until a new one opens.
func (s *sim) takeover(old *simCoord, mode simStop, rng *rand.Rand) {
	start := s.now()
	zombie := mode == simZombie
	var zstop chan struct{}
	var zwg sync.WaitGroup
	var replacedAt atomic.Int64
	revert, same := true, false
	switch mode {
	case simRelease:
		s.event("coordinator %d on %s releases the volume", old.claim, old.node)
		s.gate.Lock() // the clients are gone
		ferr := old.c.Flush()
		var behind []string // replicas that were not in sync: a resync may be under way
		for _, n := range s.names {
			if status(old.c, n).State != InSync {
				behind = append(behind, n)
			}
		}
		s.waitSteps(rng.IntN(4)) // (a resync goes on meanwhile)
		old.c.Close()
		s.gate.Unlock()
		if ferr == nil {
			// releaseCoordinator clears the claim only after a
			// successful flush: then nothing acknowledged may be lost.
			s.memMu.Lock()
			s.claimHeld = false
			s.memMu.Unlock()
			revert = false
		}
		s.event("coordinator %d closed (flush: %v)", old.claim, ferr)
		same = rng.IntN(2) == 0
		s.dmu.Lock()
		if !same && s.nodes[old.node] != nil {
			s.busy[old.node] = false
		}
		if rng.IntN(2) == 0 {
			// A replica's node crashes right after the release: what
			// the copies of a resync sent it since its last flush is
			// lost, and the next coordinator's log must name it.
			var free []string
			for _, n := range s.names {
				if s.nodes[n].srv != nil && !s.busy[n] && (len(behind) == 0 || slices.Contains(behind, n)) {
					free = append(free, n)
				}
			}
			if len(free) > 0 {
				n := s.nodes[free[rng.IntN(len(free))]]
				s.busy[n.name] = true
				s.crash(n)
				s.restartLater(n, s.step+3+rng.IntN(50))
			}
		}
		s.dmu.Unlock()
	case simZombie:
		s.event("coordinator %d on %s cut off (a zombie)", old.claim, old.node)
		zstop = make(chan struct{})
		zwg.Add(1)
		go s.zombie(old, &replacedAt, zstop, &zwg)
	default:
		s.event("coordinator %d on %s crashed", old.claim, old.node)
		old.crashed.Store(true)
		old.c.Close() // (it saves the logs of a resync it stops: a crash need not, the resync mark covers them)
		if n := s.nodes[old.node]; n != nil {
			s.dmu.Lock()
			s.crash(n)
			s.restartLater(n, s.step+3+rng.IntN(50))
			s.dmu.Unlock()
		}
	}
	for tries := 0; ; {
		s.dmu.Lock()
		if s.step > s.steps+200 {
			tries++ // every fault has healed
		}
		s.dmu.Unlock()
		if tries == simMaxClaims {
			// A volume that no claim can open once every fault has
			// healed (e.g. the record has no in-sync replica left) is lost.
			s.event("no claim opens the volume: giving up")
			s.unopenable.Store(true)
			break // (a zombie is stopped still)
		}
		s.claims.Add(1)
		avoid := ""
		if zombie {
			avoid = old.node // still running there
		}
		node := coordNode(rng, avoid)
		s.dmu.Lock()
		var free []string // replica nodes up and under no fault
		for _, n := range s.names {
			if s.nodes[n].srv != nil && !s.busy[n] && n != old.node {
				free = append(free, n)
			}
		}
		switch {
		case same:
			node, same = old.node, false // (a replica's node stays busy)
		case len(free) > 0 && rng.IntN(2) == 0:
			node = free[rng.IntN(len(free))]
			s.busy[node] = true // no fault while it opens, nor while it serves
		}
		s.dmu.Unlock()
		sc := s.open(node)
		if sc == nil {
			s.dmu.Lock()
			if s.nodes[node] != nil {
				s.busy[node] = false
			}
			s.dmu.Unlock()
			s.waitSteps(20)
			continue
		}
		replacedAt.Store(sc.opened)
		s.coord.Store(sc)
		if revert {
			s.revert(start, fmt.Sprintf("coordinator %d replaced by %d on %s", old.claim, sc.claim, sc.node))
		}
		s.mu.Lock()
		for _, n := range s.nodes {
			n.crashes = nil // what they lost is in the revert, or their logs
		}
		s.mu.Unlock()
		s.event("coordinator %d open on %s", sc.claim, sc.node)
		break
	}
	if zombie {
		s.waitSteps(5 + rng.IntN(30))
		old.c.Fence(errors.New("sim: the zombie's lease watch fired"))
		close(zstop)
		zwg.Wait()
		old.c.Close()
		s.event("zombie coordinator %d fenced and closed", old.claim)
		if s.nodes[old.node] != nil {
			s.dmu.Lock()
			s.busy[old.node] = false // (a crashed one's restart frees it)
			s.dmu.Unlock()
		}
	}
}

// waitSteps waits for the schedule to take n steps.
func (s *sim) waitSteps(n int) {
	s.dmu.Lock()
	until := s.step + n
	s.dmu.Unlock()
	for {
		s.dmu.Lock()
		done := s.step >= until
		s.dmu.Unlock()
		if done {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// restartLater starts n again at step at. REQUIRES s.dmu.
func (s *sim) restartLater(n *simNode, at int) {
	s.heals = append(s.heals, simHeal{at, func() { s.start(n); s.busy[n.name] = false }})
}

// advance runs the heals due, and moves the clock one step.
func (s *sim) advance() {
	s.dmu.Lock()
	s.heals = slices.DeleteFunc(s.heals, func(h simHeal) bool {
		if h.at <= s.step {
			h.do()
			return true
		}
		return false
	})
	s.step++
	s.dmu.Unlock()
	s.clock.Advance(simStep)
	time.Sleep(200 * time.Microsecond)
}

func runSim(t *testing.T, seed uint64, steps int) {
	began := time.Now()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	repl := 2 + rng.IntN(2)
	clock := newFakeClock()
	s := &sim{t: t, seed: seed, clock: clock, net: &simNet{clock: clock, links: map[string]*simLink{}},
		nodes: map[string]*simNode{}, log: &logBuffer{}, stop: make(chan struct{}), busy: map[string]bool{},
		logOwner: map[string]string{}, stateDirs: map[string]string{}, steps: steps}
	for i := range repl {
		n := &simNode{name: fmt.Sprintf("n%d", i+1), vol: newMemVolume(simVolumeSize), stateDir: t.TempDir()}
		s.nodes[n.name] = n
		s.names = append(s.names, n.name)
		s.start(n)
	}
	s.mem = newFakeMembership(0, s.names...)
	s.mem.changed = func(op, node string, epoch uint64) {
		s.event("%s %s @%d", op, node, epoch)
		if op == "evict" { // what it lost so far is in its log now
			s.mu.Lock()
			s.nodes[node].crashes = nil
			s.mu.Unlock()
		}
	}
	first := "c1"
	if rng.IntN(2) == 0 {
		first = "n1" // with its local replica
		s.busy[first] = true
	}
	sc := s.open(first)
	if sc == nil {
		t.Fatalf("seed %d: the first coordinator did not open", seed)
	}
	s.coord.Store(sc)
	t.Logf("repl %d, first coordinator on %s", repl, first)

	var workers, takeovers sync.WaitGroup
	stopped := false
	stopClients := func() {
		if !stopped {
			stopped = true
			close(s.stop)
		}
		workers.Wait()
	}
	defer func() {
		// On a failure too: nothing of this run goes on into the next.
		// The clock goes on, so that requests stalled on a link time out.
		ticking := make(chan struct{})
		defer close(ticking)
		go func() {
			for {
				select {
				case <-ticking:
					return
				case <-time.After(time.Millisecond):
					clock.Advance(simStep)
				}
			}
		}()
		stopClients()
		takeovers.Wait()
		s.coord.Load().c.Close()
		s.dmu.Lock()
		for _, n := range s.nodes {
			if n.srv != nil {
				n.srv.Close()
			}
		}
		s.dmu.Unlock()
		if t.Failed() || *simLog {
			t.Logf("seed %d; coordinators' log:\n%s", seed, s.log.String())
			s.mu.Lock()
			t.Logf("seed %d; faults and membership changes (history time):\n%s", seed, strings.Join(s.events, "\n"))
			s.mu.Unlock()
		}
	}()
	for w := range simWorkers {
		workers.Add(1)
		go s.worker(w, &workers)
	}

	// The fault schedule.
	outage := false
	var taking atomic.Bool
	var counts struct {
		partitions, crashes, delays, slow, disks, slowDisks, outages, timeouts, takeovers, zombies, releases int
	}
	startTakeover := func(cur *simCoord, mode simStop) {
		taking.Store(true)
		trng := rand.New(rand.NewPCG(rng.Uint64(), 1))
		takeovers.Add(1)
		go func() {
			defer takeovers.Done()
			s.takeover(cur, mode, trng)
			taking.Store(false)
		}()
	}
	for range steps {
		s.dmu.Lock()
		if cur := s.coord.Load(); !taking.Load() && resyncing(cur.c) && rng.IntN(100) < 4 {
			// A release while a replica resyncs: its log is saved with
			// what the copies sent since its last flush.
			counts.takeovers++
			counts.releases++
			startTakeover(cur, simRelease)
		} else if rng.IntN(100) < 6 {
			cur := s.coord.Load()
			var free []string // nodes no fault holds, the coordinator's own neither
			for _, n := range s.names {
				if !s.busy[n] {
					free = append(free, n)
				}
			}
			kind := rng.IntN(16)
			switch {
			case (kind == 13 || kind == 14) && !taking.Load():
				counts.takeovers++
				mode := simRelease
				if kind == 13 {
					mode = simCrash
					if rng.IntN(2) == 0 {
						mode = simZombie
						counts.zombies++
					}
				} else {
					counts.releases++
				}
				startTakeover(cur, mode)
			case kind == 15 && s.timeouts.Load() == nil:
				counts.timeouts++
				s.timeouts.Store(&simTimeouts{rng: rand.New(rand.NewPCG(rng.Uint64(), 2))})
				s.event("membership changes time out after they are recorded")
				s.heals = append(s.heals, simHeal{s.step + 10 + rng.IntN(100), func() {
					s.timeouts.Store(nil)
					s.event("membership replies again")
				}})
			case kind == 12 && !outage:
				counts.outages++
				outage = true
				s.mem.setErrs(errors.New("sim: etcd unreachable"), errors.New("sim: etcd unreachable"))
				s.event("membership outage")
				s.heals = append(s.heals, simHeal{s.step + 5 + rng.IntN(40), func() {
					s.mem.setErrs(nil, nil)
					outage = false
					s.event("membership back")
				}})
			case len(free) == 0 || kind >= 12:
			case kind < 3:
				counts.partitions++
				n := free[rng.IntN(len(free))]
				s.busy[n] = true
				s.net.set(n, func(l *simLink) { l.partitioned = true })
				s.event("partition %s", n)
				s.heals = append(s.heals, simHeal{s.step + 10 + rng.IntN(150), func() {
					s.net.set(n, func(l *simLink) { l.partitioned = false })
					s.event("heal %s", n)
					s.busy[n] = false
				}})
			case kind < 6:
				counts.crashes++
				n := s.nodes[free[rng.IntN(len(free))]]
				s.busy[n.name] = true
				s.crash(n)
				s.restartLater(n, s.step+3+rng.IntN(100))
			case kind == 9:
				// The disk stalls a third of the node's writes a few steps:
				// the replica's workers apply requests out of order.
				counts.slowDisks++
				n := s.nodes[free[rng.IntN(len(free))]]
				s.busy[n.name] = true
				var mu sync.Mutex
				drng := rand.New(rand.NewPCG(rng.Uint64(), 0))
				down := n.down
				n.vol.setBefore(func(op string, _, _ int64) {
					mu.Lock()
					d := time.Duration(drng.IntN(15)) * simStep
					mu.Unlock()
					if op != "read" && op != "flush" && d < 5*simStep {
						select {
						case <-s.clock.After(d):
						case <-down:
						}
					}
				})
				s.event("slow disk on %s", n.name)
				s.heals = append(s.heals, simHeal{s.step + 10 + rng.IntN(100), func() {
					n.vol.setBefore(nil)
					s.event("disk fast on %s", n.name)
					s.busy[n.name] = false
				}})
			case kind > 9:
				// The disk fails a quarter of the node's I/O for a while.
				counts.disks++
				n := s.nodes[free[rng.IntN(len(free))]]
				s.busy[n.name] = true
				var mu sync.Mutex
				drng := rand.New(rand.NewPCG(rng.Uint64(), 0))
				n.vol.setFail(func(op string, off, _ int64) error {
					mu.Lock()
					defer mu.Unlock()
					if drng.IntN(4) == 0 {
						return fmt.Errorf("%w: sim: %s at %d", engine.ErrIO, op, off)
					}
					return nil
				})
				s.event("disk errors on %s", n.name)
				s.heals = append(s.heals, simHeal{s.step + 10 + rng.IntN(100), func() {
					n.vol.setFail(nil)
					s.event("disk fine on %s", n.name)
					s.busy[n.name] = false
				}})
			default:
				counts.delays++
				n := free[rng.IntN(len(free))]
				d := time.Duration(1+rng.IntN(50)) * time.Millisecond
				if rng.IntN(5) == 0 {
					d = simTimeout + simTimeout/2 // slower than the timeout
					counts.slow++
				}
				s.busy[n] = true
				s.net.set(n, func(l *simLink) { l.delay = d })
				s.event("delay %s by %v", n, d)
				s.heals = append(s.heals, simHeal{s.step + 10 + rng.IntN(100), func() {
					s.net.set(n, func(l *simLink) { l.delay = 0 })
					s.event("no delay %s", n)
					s.busy[n] = false
				}})
			}
		}
		s.dmu.Unlock()
		s.advance()
	}
	t.Logf("faults: %d partitions, %d crashes, %d delays (%d past the timeout), %d disks failing, %d slow, %d membership outages, %d with recorded changes timing out, %d coordinator takeovers (%d clean releases, %d with a zombie; it tried %d writes once replaced)",
		counts.partitions, counts.crashes, counts.delays, counts.slow, counts.disks, counts.slowDisks, counts.outages, counts.timeouts,
		counts.takeovers, counts.releases, counts.zombies, s.fencedWrites.Load())

	// Heal everything (a takeover under way finishes first), stop the
	// clients, and let the coordinator catch up.
	for taking.Load() {
		s.advance()
	}
	takeovers.Wait()
	if s.unopenable.Load() {
		t.Fatalf("seed %d: no coordinator could open the volume in %d claims after coordinator %d stopped: %v",
			seed, simMaxClaims, s.coord.Load().claim, s.mem.history())
	}
	s.dmu.Lock()
	for _, h := range s.heals {
		h.do()
	}
	s.heals = nil
	s.dmu.Unlock()
	done := make(chan struct{})
	go func() { stopClients(); close(done) }()
	// Caught up: every replica in sync, and a flush reaches them all with
	// no change of the set (an in-sync replica that crashed and came back
	// while nothing was written still has its broken connection: the
	// flush finds it, and it resyncs).
	c := s.coord.Load().c
	deadline := time.Now().Add(30 * time.Second)
	for caughtUp := false; !caughtUp; {
		s.advance()
		if err := c.fencedErr(); err != nil {
			t.Fatalf("seed %d: the current coordinator was fenced: %v", seed, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("seed %d: not converged 30 s after the faults healed: %+v", seed, c.Status())
		}
		select {
		case <-done:
		default:
			continue
		}
		caughtUp = allInSync(c)
		if caughtUp {
			epoch := c.Epoch()
			caughtUp = c.Flush() == nil && c.Epoch() == epoch && allInSync(c)
		}
	}
	end := s.now()

	// Every replica the same, each block read through the coordinator,
	// a last flush, then a crash of every replica: what is left is what
	// the flush covered.
	diffs, err := c.Verify(context.Background(), nil)
	if err != nil {
		t.Fatalf("seed %d: Verify: %v", seed, err)
	}
	for _, d := range diffs {
		t.Errorf("seed %d: replicas differ in the region at %d: %v", seed, d.Offset, d.Sums)
		s.report(d.Offset)
	}
	buf := make([]byte, simBlock)
	for k := range simBlocks {
		op := simOp{client: simWorkers, kind: simRead, block: k, call: s.now()}
		if err := c.ReadAt(buf, simBlockOff(k)); err != nil {
			t.Fatalf("seed %d: final read of block %d: %v", seed, k, err)
		}
		op.value, op.ok, op.ret = s.decode(buf, k), true, s.now()
		s.record(op)
	}
	fop := simOp{client: simWorkers, kind: simFlush, block: -1, call: s.now()}
	if err := c.Flush(); err != nil {
		t.Fatalf("seed %d: final flush: %v", seed, err)
	}
	fop.ok, fop.ret = true, s.now()
	s.record(fop)
	c.Close()
	s.dmu.Lock()
	for _, name := range s.names {
		n := s.nodes[name]
		s.crash(n)
		for k := range simBlocks {
			op := simOp{client: simWorkers + 1, kind: simRead, block: k, call: s.now()}
			op.value, op.ok, op.ret = s.decode(n.vol.durableAt(simBlockOff(k), simBlock), k), true, s.now()
			s.record(op)
		}
	}
	s.dmu.Unlock()
	s.check(end)
	t.Logf("seed %d: %v", seed, time.Since(began).Round(time.Millisecond))
}

// report logs the history of the blocks of the region at off and what
// each replica holds there.
func (s *sim) report(off int64) {
	s.mu.Lock()
	ops := slices.Clone(s.ops)
	s.mu.Unlock()
	kinds := map[simKind]string{simWrite: "write", simRead: "read", simFlush: "flush", simRevert: "revert"}
	for k := range simBlocks {
		bo := simBlockOff(k)
		if bo/RegionSize != off/RegionSize {
			continue
		}
		var b strings.Builder
		for _, name := range s.names {
			v, _ := simDecode(s.nodes[name].vol.at(bo, simBlock))
			fmt.Fprintf(&b, " %s=%d", name, v)
		}
		s.t.Logf("block %d at %d holds%s; its history:", k, bo, b.String())
		for _, op := range ops {
			if op.block == k || op.kind == simRevert {
				s.t.Logf("  [%6d, %6d] client %d %s %d fua=%v ok=%v", op.call, op.ret, op.client, kinds[op.kind], op.value, op.fua, op.ok)
			}
		}
	}
}

func resyncing(c *Coordinator) bool {
	for _, st := range c.Status() {
		if st.State == Resyncing {
			return true
		}
	}
	return false
}

func allInSync(c *Coordinator) bool {
	for _, st := range c.Status() {
		if st.State != InSync {
			return false
		}
	}
	return true
}

// regInput and regState are the porcupine model of one block: a register
// whose value a revert may take back to any value written since the last
// flush (cands).
type regInput struct {
	kind  simKind
	value uint64
	fua   bool
}

type regState struct {
	cur   uint64
	cands []uint64 // sorted: what a crash may leave
}

func withCand(c []uint64, v uint64) []uint64 {
	i, found := slices.BinarySearch(c, v)
	if found {
		return c
	}
	return slices.Insert(slices.Clone(c), i, v)
}

var registerModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byBlock := map[int][]porcupine.Operation{}
		var global []porcupine.Operation
		for _, op := range history {
			if b := op.Metadata.(int); b >= 0 {
				byBlock[b] = append(byBlock[b], op)
			} else {
				global = append(global, op)
			}
		}
		var out [][]porcupine.Operation
		for _, ops := range byBlock {
			out = append(out, append(ops, global...))
		}
		return out
	},
	Init: func() []any { return []any{regState{cands: []uint64{0}}} },
	Step: func(state, input, output any) []any {
		st, in := state.(regState), input.(regInput)
		switch in.kind {
		case simWrite:
			if in.fua {
				return []any{regState{cur: in.value, cands: []uint64{in.value}}}
			}
			return []any{regState{cur: in.value, cands: withCand(st.cands, in.value)}}
		case simRead:
			if output.(uint64) == st.cur {
				return []any{st}
			}
			return nil
		case simFlush:
			return []any{regState{cur: st.cur, cands: []uint64{st.cur}}}
		}
		out := make([]any, 0, len(st.cands))
		for _, v := range st.cands {
			out = append(out, regState{cur: v, cands: st.cands})
		}
		return out
	},
	Equal: func(a, b any) bool {
		x, y := a.(regState), b.(regState)
		return x.cur == y.cur && slices.Equal(x.cands, y.cands)
	},
	DescribeOperation: func(input, output any) string {
		in := input.(regInput)
		switch in.kind {
		case simWrite:
			return fmt.Sprintf("write(%d, fua %v)", in.value, in.fua)
		case simRead:
			return fmt.Sprintf("read() → %d", output)
		case simFlush:
			return "flush"
		}
		return "revert: unflushed writes lost"
	},
	DescribeState: func(state any) string {
		st := state.(regState)
		return fmt.Sprintf("%d (after a crash: %v)", st.cur, st.cands)
	},
}

// check runs the history through porcupine. A write that failed may have
// happened at any point until end (when the faults had healed and the
// replicas caught up); a failed read or flush says nothing. A failed write
// whose value no read returned is left out (as etcd's robustness tests
// do): had it happened, nothing observed it, so the history is
// linearizable with it if and only if without it — and each one left in
// multiplies the orders the checker tries.
func (s *sim) check(end int64) {
	t := s.t
	s.mu.Lock()
	ops := slices.Clone(s.ops)
	s.mu.Unlock()
	type seen struct {
		block int
		value uint64
	}
	lastRead := map[seen]int64{} // when each value was last returned by a read
	for _, op := range ops {
		if op.kind == simRead && op.ok {
			k := seen{op.block, op.value}
			lastRead[k] = max(lastRead[k], op.ret)
		}
	}
	var hist []porcupine.Operation
	var writes, reads, flushes, failed, pruned, reverts int
	for _, op := range ops {
		in := regInput{kind: op.kind, value: op.value, fua: op.fua}
		var out any
		switch op.kind {
		case simWrite:
			writes++
			if !op.ok {
				failed++
				if lastRead[seen{op.block, op.value}] < op.call {
					pruned++
					continue
				}
				op.ret, in.fua = end, false
			}
		case simRead:
			if !op.ok {
				continue
			}
			reads++
			out = op.value
		case simFlush:
			if !op.ok {
				continue
			}
			flushes++
		case simRevert:
			reverts++
		}
		hist = append(hist, porcupine.Operation{ClientId: op.client, Input: in, Output: out, Call: op.call, Return: op.ret, Metadata: op.block})
	}
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(registerModel.ToModel(), hist, simCheckBudget)
	t.Logf("history: %d writes (%d failed, %d of them never observed), %d reads, %d flushes, %d reverts; checked in %v",
		writes, failed, pruned, reads, flushes, reverts, time.Since(start).Round(time.Millisecond))
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		t.Errorf("seed %d: the linearizability check did not finish within %v", s.seed, simCheckBudget)
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("cairn-sim-%d.html", s.seed))
		if err := porcupine.VisualizePath(registerModel.ToModel(), info, path); err != nil {
			t.Logf("visualization: %v", err)
		}
		t.Errorf("seed %d: the history is not linearizable per block (a read saw a value no order of the writes, flushes and crashes explains); see %s", s.seed, path)
		for _, part := range registerModel.Partition(hist) {
			if porcupine.CheckOperations(registerModel.ToModel(), part) {
				continue
			}
			t.Logf("the first block whose history fails:")
			slices.SortFunc(part, func(a, b porcupine.Operation) int { return int(a.Call - b.Call) })
			for _, op := range part {
				t.Logf("  [%6d, %6d] client %3d block %2d %s", op.Call, op.Return, op.ClientId, op.Metadata,
					registerModel.DescribeOperation(op.Input, op.Output))
			}
			break
		}
	}
}

// TestRegisterModel: the simulation's model refuses what a block device
// must not do, and accepts what a crash may — so the check can fail.
func TestRegisterModel(t *testing.T) {
	w := func(v uint64, fua bool, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: regInput{kind: simWrite, value: v, fua: fua}, Call: call, Return: ret, Metadata: 0}
	}
	r := func(v uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: regInput{kind: simRead}, Output: v, Call: call, Return: ret, Metadata: 0}
	}
	flush := func(call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: regInput{kind: simFlush}, Call: call, Return: ret, Metadata: -1}
	}
	revert := func(call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: regInput{kind: simRevert}, Call: call, Return: ret, Metadata: -1}
	}
	for _, tt := range []struct {
		name string
		ok   bool
		h    []porcupine.Operation
	}{
		{"read the last write", true, []porcupine.Operation{w(1, false, 1, 2), w(2, false, 3, 4), r(2, 5, 6)}},
		{"stale read", false, []porcupine.Operation{w(1, false, 1, 2), w(2, false, 3, 4), r(1, 5, 6)}},
		{"read of a value never written", false, []porcupine.Operation{w(1, false, 1, 2), r(7, 3, 4)}},
		{"concurrent write either way", true, []porcupine.Operation{w(1, false, 1, 2), w(2, false, 3, 8), r(1, 4, 5), r(2, 6, 7)}},
		{"flip back", false, []porcupine.Operation{w(1, false, 1, 2), w(2, false, 3, 8), r(2, 4, 5), r(1, 6, 7)}},
		{"revert to unflushed", true, []porcupine.Operation{w(1, false, 1, 2), flush(3, 4), w(2, false, 5, 6), revert(7, 8), r(1, 9, 10)}},
		{"revert past a flush", false, []porcupine.Operation{w(1, false, 1, 2), w(2, false, 3, 4), flush(5, 6), revert(7, 8), r(1, 9, 10)}},
		{"revert past FUA", false, []porcupine.Operation{w(1, false, 1, 2), w(2, true, 3, 4), revert(7, 8), r(1, 9, 10)}},
		{"loss without a crash", false, []porcupine.Operation{w(1, false, 1, 2), flush(3, 4), w(2, false, 5, 6), r(1, 9, 10)}},
		{"flush concurrent with the write", true, []porcupine.Operation{w(1, false, 1, 2), flush(3, 6), w(2, false, 4, 5), revert(7, 8), r(1, 9, 10)}},
		{"other block untouched", true, []porcupine.Operation{w(1, false, 1, 2), {Input: regInput{kind: simRead}, Output: uint64(0), Call: 3, Return: 4, Metadata: 1}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(registerModel.ToModel(), tt.h); got != tt.ok {
				t.Fatalf("linearizable %v, want %v", got, tt.ok)
			}
		})
	}
}
