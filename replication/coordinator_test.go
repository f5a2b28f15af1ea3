package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
)

// The coordinator's tests run real Servers on loopback TCP over memVolumes,
// with the cluster's record of the in-sync set kept by fakeMembership.

const (
	testVolume = "v"
	coordSize  = 64 << 20 // 64 regions
)

// fakeMembership is the cluster's record of a volume's in-sync set and
// epoch, in memory. Each change raises the epoch, as the etcd transaction
// does; evictErr and joinErr make the changes fail (etcd unreachable).
// A coordinator that claims the volume (claimVolume) raises the epoch too,
// and the changes of an older claim's coordinator are refused, as the
// transaction's comparison of the claim does.
type fakeMembership struct {
	mu       sync.Mutex
	epoch    uint64
	claim    int // the current claim; 0 = none made (the tests' own coordinator)
	inSync   map[string]bool
	events   []string // "evict n2 @3", "join n2 @4"
	evictErr error
	joinErr  error
	// evictErrFor fails the evictions of one node; committedErr is what a
	// change returns after it was recorded (a timeout after etcd committed).
	evictErrFor  func(node string) error
	committedErr error
	// hooks, run before a change is decided (outside mu).
	onEvict, onJoin func(node string)
	// changed, when set, hears of each change recorded (outside mu).
	changed func(op, node string, epoch uint64)
}

func newFakeMembership(epoch uint64, nodes ...string) *fakeMembership {
	f := &fakeMembership{epoch: epoch, inSync: map[string]bool{}}
	for _, n := range nodes {
		f.inSync[n] = true
	}
	return f
}

func (f *fakeMembership) change(claim int, op, node string, in bool) (uint64, error) {
	f.mu.Lock()
	hook, err := f.onEvict, f.evictErr
	if in {
		hook, err = f.onJoin, f.joinErr
	}
	f.mu.Unlock()
	if hook != nil {
		hook(node)
	}
	f.mu.Lock()
	if err == nil && !in && f.evictErrFor != nil {
		err = f.evictErrFor(node)
	}
	if err == nil && claim != f.claim {
		err = fmt.Errorf("%w: the volume was claimed again (claim %d, not %d)", ErrFenced, f.claim, claim)
	}
	if err == nil && !in && !f.othersInSync(node) {
		// As the daemon's transaction (control's replicationMembership):
		// the record keeps an in-sync replica.
		err = fmt.Errorf("%w: %s is the last in-sync replica in the record", ErrNoReplica, node)
	}
	if err != nil {
		f.events = append(f.events, fmt.Sprintf("%s %s failed", op, node))
		f.mu.Unlock()
		return 0, err
	}
	f.epoch++
	epoch, changed := f.epoch, f.changed
	f.inSync[node] = in
	f.events = append(f.events, fmt.Sprintf("%s %s @%d", op, node, f.epoch))
	committedErr := f.committedErr
	f.mu.Unlock()
	if changed != nil {
		changed(op, node, epoch)
	}
	if committedErr != nil {
		return 0, committedErr
	}
	return epoch, nil
}

// othersInSync reports whether a node other than node is in sync in the
// record. REQUIRES f.mu.
func (f *fakeMembership) othersInSync(node string) bool {
	for n, in := range f.inSync {
		if in && n != node {
			return true
		}
	}
	return false
}

// waitEvent waits (10 s at most) for a change in the history that match
// accepts.
func (f *fakeMembership) waitEvent(t *testing.T, match func(event string) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.ContainsFunc(f.history(), match) {
		if time.Now().After(deadline) {
			t.Fatalf("the awaited change never came: %v", f.history())
		}
		time.Sleep(time.Millisecond)
	}
}

func is(event string) func(string) bool { return func(e string) bool { return e == event } }

func (f *fakeMembership) Evict(node string) (uint64, error) { return f.change(0, "evict", node, false) }
func (f *fakeMembership) Join(node string) (uint64, error)  { return f.change(0, "join", node, true) }

// claimVolume is a new coordinator's claim: a new epoch, and the replicas
// as the record has them. Its Membership is claimed.
func (f *fakeMembership) claimVolume(nodes []string) (epoch uint64, m claimed, replicas []ReplicaConfig) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.claim++
	f.epoch++
	for _, n := range nodes {
		replicas = append(replicas, ReplicaConfig{Node: n, InSync: f.inSync[n]})
	}
	f.events = append(f.events, fmt.Sprintf("claim %d @%d", f.claim, f.epoch))
	return f.epoch, claimed{f, f.claim}, replicas
}

// claimed is the Membership of the coordinator that made one claim.
type claimed struct {
	f     *fakeMembership
	claim int
}

func (c claimed) Evict(node string) (uint64, error) { return c.f.change(c.claim, "evict", node, false) }
func (c claimed) Join(node string) (uint64, error)  { return c.f.change(c.claim, "join", node, true) }

func (f *fakeMembership) setErrs(evict, join error) {
	f.mu.Lock()
	f.evictErr, f.joinErr = evict, join
	f.mu.Unlock()
}

func (f *fakeMembership) in(node string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inSync[node]
}

func (f *fakeMembership) current() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.epoch
}

func (f *fakeMembership) history() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

// replicaNode is one node's replica server over a memVolume. It can be
// stopped (the process goes away) and started again on the same state
// directory, at a new address.
type replicaNode struct {
	name     string
	vol      *memVolume
	stateDir string

	mu     sync.Mutex
	srv    *Server // nil while down
	addr   string
	served chan error
}

func (n *replicaNode) start(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.srv != nil {
		t.Fatalf("node %s is already up", n.name)
	}
	s, err := NewServer(memVolumes{testVolume, n.vol}, Config{Cluster: testCluster, StateDir: n.stateDir, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.srv, n.addr, n.served = s, l.Addr().String(), make(chan error, 1)
	go func() { n.served <- s.Serve(l) }()
}

// stop closes the server: connections break, requests being applied
// finish with their replies dropped.
func (n *replicaNode) stop(t testing.TB) {
	t.Helper()
	n.mu.Lock()
	s, served := n.srv, n.served
	n.srv, n.addr = nil, ""
	n.mu.Unlock()
	if s == nil {
		return
	}
	s.Close()
	if err := <-served; !errors.Is(err, ErrClosed) {
		t.Errorf("node %s: Serve: %v", n.name, err)
	}
}

// crash stops the server and loses the volume's unflushed writes.
func (n *replicaNode) crash(t testing.TB) {
	n.stop(t)
	n.vol.crash()
}

func (n *replicaNode) server() *Server {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.srv
}

type replCluster struct {
	t     *testing.T
	size  int64
	nodes map[string]*replicaNode
	mem   *fakeMembership
	dir   string // the coordinator's StateDir
	log   *logBuffer
}

// newReplCluster starts a replica of testVolume on each node, all in sync
// at epoch 1.
func newReplCluster(t *testing.T, size int64, nodes ...string) *replCluster {
	tc := &replCluster{t: t, size: size, nodes: map[string]*replicaNode{}, mem: newFakeMembership(1, nodes...), dir: t.TempDir(), log: &logBuffer{}}
	for _, name := range nodes {
		n := &replicaNode{name: name, vol: newMemVolume(size), stateDir: t.TempDir()}
		n.start(t)
		tc.nodes[name] = n
	}
	t.Cleanup(func() {
		for _, n := range tc.nodes {
			n.stop(t)
		}
		if t.Failed() {
			t.Logf("coordinator log:\n%s", tc.log.String())
		}
	})
	return tc
}

func (tc *replCluster) node(name string) *replicaNode { return tc.nodes[name] }

// dial is the coordinator's Dialer: it finds the node's current address.
func (tc *replCluster) dial(ctx context.Context, node string, epoch uint64) (*Client, error) {
	n := tc.nodes[node]
	if n == nil {
		return nil, fmt.Errorf("no node %q", node)
	}
	n.mu.Lock()
	addr := n.addr
	n.mu.Unlock()
	if addr == "" {
		return nil, fmt.Errorf("node %s: %w", node, errNodeDown)
	}
	cfg := clientConfig(addr, testVolume, epoch)
	cfg.Timeout = 2 * time.Second
	return Dial(ctx, cfg)
}

var errNodeDown = errors.New("node is down")

// config is a coordinator of the cluster's volume on node self (with its
// local replica when local is not nil) over the replicas named, all in
// sync at the membership's epoch.
func (tc *replCluster) config(self string, local *Local, replicas ...string) CoordinatorConfig {
	cfg := CoordinatorConfig{
		Volume: testVolume, Size: tc.size, Self: self, Epoch: tc.mem.current(),
		Local: local, Membership: tc.mem, Dial: tc.dial, StateDir: tc.dir,
		ResyncRate: 1 << 40, RetryInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(tc.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, r := range replicas {
		cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Node: r, InSync: true})
	}
	return cfg
}

func (tc *replCluster) open(cfg CoordinatorConfig) *Coordinator {
	tc.t.Helper()
	c, err := NewCoordinator(context.Background(), cfg)
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.t.Cleanup(func() { c.Close() })
	return c
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func status(c *Coordinator, node string) ReplicaStatus {
	for _, s := range c.Status() {
		if s.Node == node {
			return s
		}
	}
	return ReplicaStatus{}
}

// waitInSync waits until every replica is in sync.
func waitInSync(t *testing.T, c *Coordinator) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		all := true
		for _, s := range c.Status() {
			all = all && s.State == InSync
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replicas not in sync after 10 s: %+v", c.Status())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func verifyClean(t *testing.T, c *Coordinator) {
	t.Helper()
	diffs, err := c.Verify(context.Background(), nil)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if len(diffs) > 0 {
		t.Fatalf("Verify: replicas differ in %d regions, first at %d: %v", len(diffs), diffs[0].Offset, diffs[0].Sums)
	}
}

// sameOn checks that every named node's volume holds want at off.
func (tc *replCluster) sameOn(off int64, want []byte, nodes ...string) {
	tc.t.Helper()
	for _, n := range nodes {
		if got := tc.nodes[n].vol.at(off, int64(len(want))); !bytes.Equal(got, want) {
			tc.t.Fatalf("node %s does not hold the %d bytes written at %d", n, len(want), off)
		}
	}
}

func mustWrite(t *testing.T, c *Coordinator, p []byte, off int64) {
	t.Helper()
	if err := c.WriteAt(p, off, false); err != nil {
		t.Fatalf("write at %d: %v", off, err)
	}
}

// TestCoordinatorWritesReachEveryReplica: every kind of write, and flush,
// reaches every replica of repl 2 and 3, remote or local; reads see them.
func TestCoordinatorWritesReachEveryReplica(t *testing.T) {
	for _, tt := range []struct {
		name  string
		nodes []string
		local bool // the coordinator runs on the first node
	}{
		{"repl2", []string{"n1", "n2"}, false},
		{"repl3", []string{"n1", "n2", "n3"}, false},
		{"repl3-local", []string{"n1", "n2", "n3"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc := newReplCluster(t, coordSize, tt.nodes...)
			self := "c0"
			var local *Local
			if tt.local {
				self = tt.nodes[0]
				var err error
				if local, err = tc.node(self).server().OpenLocal(testVolume, 1); err != nil {
					t.Fatal(err)
				}
			}
			c := tc.open(tc.config(self, local, tt.nodes...))

			a := pattern(64<<10, 3)
			b := pattern(3000, 11)
			mustWrite(t, c, a, 0)
			mustWrite(t, c, b, RegionSize-1000) // across a region boundary
			if err := c.WriteAt(a, 5*RegionSize, true); err != nil {
				t.Fatal(err)
			}
			if err := c.Trim(4096, 8192); err != nil {
				t.Fatal(err)
			}
			if err := c.WriteZeroes(32<<10, 4096, true); err != nil {
				t.Fatal(err)
			}
			if err := c.Flush(); err != nil {
				t.Fatal(err)
			}
			want := slices.Clone(a)
			clear(want[4096 : 4096+8192])
			clear(want[32<<10 : 36<<10])
			tc.sameOn(0, want, tt.nodes...)
			tc.sameOn(RegionSize-1000, b, tt.nodes...)
			tc.sameOn(5*RegionSize, a, tt.nodes...)
			for _, n := range tt.nodes {
				if got := tc.node(n).vol.durableAt(0, int64(len(want))); !bytes.Equal(got, want) {
					t.Fatalf("node %s: the flushed write is not durable", n)
				}
			}
			got := make([]byte, len(b))
			if err := c.ReadAt(got, RegionSize-1000); err != nil || !bytes.Equal(got, b) {
				t.Fatalf("ReadAt: %v, equal %v", err, bytes.Equal(got, b))
			}
			if err := c.WriteAt(b, coordSize-100, false); !errors.Is(err, engine.ErrInvalid) {
				t.Fatalf("a write past the end: %v, want ErrInvalid", err)
			}
			verifyClean(t, c)
			if h := tc.mem.history(); len(h) != 0 {
				t.Fatalf("membership changed with every replica healthy: %v", h)
			}
		})
	}
}

// TestCoordinatorEvictAndResync: a replica that goes away in the middle of
// a write is evicted before the write is acknowledged; what it misses is
// logged durably by region; when it comes back only those regions are
// copied, and it rejoins the set.
func TestCoordinatorEvictAndResync(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2", "n3")
	c := tc.open(tc.config("c0", nil, "n1", "n2", "n3"))
	n3 := tc.node("n3")

	// n3 takes the write and stalls in it; then its process goes away.
	entered, release := make(chan struct{}), make(chan struct{})
	n3.vol.setBefore(func(op string, off, n int64) {
		if op == "write" {
			close(entered)
			<-release
		}
	})
	var acked atomic.Bool
	var evictedBeforeAck atomic.Bool
	tc.mem.onEvict = func(string) { evictedBeforeAck.Store(!acked.Load()) }
	done := make(chan error, 1)
	go func() {
		err := c.WriteAt(pattern(8192, 1), 2*RegionSize, false)
		acked.Store(true)
		done <- err
	}()
	<-entered
	stopped := make(chan struct{})
	go func() { n3.stop(t); close(stopped) }()
	for n3.server() != nil {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond) // Close has closed the connections
	close(release)
	<-stopped
	n3.vol.setBefore(nil)
	if err := <-done; err != nil {
		t.Fatalf("the write failed with two replicas healthy: %v", err)
	}
	if !evictedBeforeAck.Load() {
		t.Fatal("the write was acknowledged before the eviction was recorded")
	}
	if tc.mem.in("n3") || c.Epoch() != tc.mem.current() || c.Epoch() != 2 {
		t.Fatalf("after the eviction: membership %v, coordinator epoch %d", tc.mem.history(), c.Epoch())
	}
	if st := status(c, "n3"); st.State != OutOfSync || st.Missing != RegionSize {
		t.Fatalf("n3: %+v, want out of sync missing one region", st)
	}

	// Writes while it is away are logged, durably, by region.
	mustWrite(t, c, pattern(4096, 2), 7*RegionSize+100)
	mustWrite(t, c, pattern(4096, 3), 7*RegionSize+9000) // same region
	mustWrite(t, c, pattern(2*RegionSize, 4), 20*RegionSize)
	if err := c.Trim(40*RegionSize, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	wantRegions := []int{2, 7, 20, 21, 40}
	l, err := loadRegionLog(c.logPath("n3"), coordSize)
	if err != nil {
		t.Fatal(err)
	}
	if got := marked(l.regions); !slices.Equal(got, wantRegions) {
		t.Fatalf("region log on disk holds %v, want %v", got, wantRegions)
	}
	if st := status(c, "n3"); st.Missing != int64(len(wantRegions))*RegionSize {
		t.Fatalf("n3 missing %d bytes, want %d", st.Missing, len(wantRegions)*RegionSize)
	}

	// Back, at a new address: only the logged regions are copied.
	before, _ := n3.vol.written()
	epoch := c.Epoch()
	n3.start(t)
	waitInSync(t, c)
	after, _ := n3.vol.written()
	if copied := after - before; copied != int64(len(wantRegions))*RegionSize {
		t.Fatalf("resync wrote %d bytes to n3, want %d (its logged regions; the volume is %d)", copied, len(wantRegions)*RegionSize, coordSize)
	}
	if !tc.mem.in("n3") || c.Epoch() != epoch+1 || c.Epoch() != tc.mem.current() {
		t.Fatalf("after the resync: membership %v, epoch %d (was %d)", tc.mem.history(), c.Epoch(), epoch)
	}
	if _, err := os.Stat(c.logPath("n3")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the region log of a replica back in sync is still there: %v", err)
	}
	verifyClean(t, c)
	tc.sameOn(20*RegionSize, pattern(2*RegionSize, 4), "n1", "n2", "n3")
	// Its state is what a crash leaves too: the resync flushed it.
	if !bytes.Equal(n3.vol.durableAt(20*RegionSize, 2*RegionSize), pattern(2*RegionSize, 4)) {
		t.Fatal("the resynced regions are not durable on n3")
	}
}

// TestCoordinatorEvictionFailureFailsWrite: when the eviction cannot be
// recorded (etcd unreachable), the write that found the failure is not
// acknowledged, and the replica stays in the recorded set.
func TestCoordinatorEvictionFailureFailsWrite(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	mustWrite(t, c, pattern(4096, 1), 0)
	tc.mem.setErrs(errors.New("etcd unreachable"), nil)
	tc.node("n2").stop(t)
	err := c.WriteAt(pattern(4096, 2), 0, false)
	if !errors.Is(err, engine.ErrIO) {
		t.Fatalf("write with the eviction failing: %v, want EIO", err)
	}
	if st := status(c, "n2"); st.State != InSync || !tc.mem.in("n2") {
		t.Fatalf("n2 %v, in the recorded set %v: an eviction that failed changed the state", st.State, tc.mem.in("n2"))
	}
	if err := c.Flush(); err == nil {
		t.Fatal("a flush was acknowledged with a replica failing and its eviction failing")
	}

	tc.mem.setErrs(nil, nil)
	mustWrite(t, c, pattern(4096, 3), 0)
	if tc.mem.in("n2") || status(c, "n2").State != OutOfSync {
		t.Fatalf("n2 not evicted once the cluster answers: %v", tc.mem.history())
	}
	// The failed write's region is among what n2 misses.
	if st := status(c, "n2"); st.Missing != RegionSize {
		t.Fatalf("n2 missing %d bytes", st.Missing)
	}
}

// TestCoordinatorLastReplicaEIO: the last in-sync replica is never
// evicted: I/O fails with EIO until it answers again.
func TestCoordinatorLastReplicaEIO(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	tc.node("n2").stop(t)
	mustWrite(t, c, pattern(4096, 1), 0) // evicts n2
	tc.node("n1").stop(t)
	if err := c.WriteAt(pattern(4096, 2), 0, false); !errors.Is(err, engine.ErrIO) {
		t.Fatalf("write with no replica left: %v, want EIO", err)
	}
	if err := c.ReadAt(make([]byte, 4096), 0); !errors.Is(err, engine.ErrIO) {
		t.Fatalf("read with no replica left: %v, want EIO", err)
	}
	if err := c.Flush(); !errors.Is(err, engine.ErrIO) {
		t.Fatalf("flush with no replica left: %v, want EIO", err)
	}
	if !tc.mem.in("n1") || status(c, "n1").State != InSync {
		t.Fatalf("the last in-sync replica was evicted: %v", tc.mem.history())
	}
	if h := tc.mem.history(); len(h) != 1 {
		t.Fatalf("membership changes %v, want n2's eviction only", h)
	}

	// It comes back: the volume serves again, and n2 resyncs from it.
	tc.node("n1").start(t)
	deadline := time.Now().Add(10 * time.Second)
	for c.WriteAt(pattern(4096, 3), 0, false) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the volume did not serve again once its last in-sync replica was back")
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := make([]byte, 4096)
	if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, pattern(4096, 3)) {
		t.Fatalf("read after the replica came back: %v", err)
	}
	tc.node("n2").start(t)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorFenced: a newer coordinator's hello fences the older one:
// nothing it sends after is acknowledged, on its local replica too.
func TestCoordinatorFenced(t *testing.T) {
	t.Run("by a new coordinator", func(t *testing.T) {
		tc := newReplCluster(t, coordSize, "n1", "n2")
		local1, err := tc.node("n1").server().OpenLocal(testVolume, 1)
		if err != nil {
			t.Fatal(err)
		}
		old := tc.open(tc.config("n1", local1, "n1", "n2"))
		mustWrite(t, old, pattern(4096, 1), 0)

		// n2 takes the volume over at epoch 5 (its claim in the cluster).
		tc.mem = newFakeMembership(5, "n1", "n2")
		local2, err := tc.node("n2").server().OpenLocal(testVolume, 5)
		if err != nil {
			t.Fatal(err)
		}
		cfg := tc.config("n2", local2, "n1", "n2")
		cfg.StateDir = t.TempDir()
		newer := tc.open(cfg)
		mustWrite(t, newer, pattern(4096, 2), 0)

		if err := old.WriteAt(pattern(4096, 3), 4096, false); !errors.Is(err, ErrFenced) {
			t.Fatalf("old coordinator's write: %v, want ErrFenced", err)
		}
		if err := old.ReadAt(make([]byte, 4096), 0); !errors.Is(err, ErrFenced) {
			t.Fatalf("old coordinator's read: %v, want ErrFenced", err)
		}
		if err := old.Flush(); !errors.Is(err, ErrFenced) {
			t.Fatalf("old coordinator's flush: %v, want ErrFenced", err)
		}
		tc.sameOn(4096, make([]byte, 4096), "n1", "n2")
		tc.sameOn(0, pattern(4096, 2), "n1", "n2")
		if h := tc.mem.history(); len(h) != 0 {
			t.Fatalf("the fenced coordinator changed the in-sync set: %v", h)
		}
		mustWrite(t, newer, pattern(4096, 4), 8192)
		verifyClean(t, newer)
	})
	t.Run("on its local replica only", func(t *testing.T) {
		tc := newReplCluster(t, coordSize, "n1", "n2")
		local1, err := tc.node("n1").server().OpenLocal(testVolume, 1)
		if err != nil {
			t.Fatal(err)
		}
		old := tc.open(tc.config("n1", local1, "n1", "n2"))
		mustWrite(t, old, pattern(4096, 1), 0)
		// A newer coordinator reached only n1, the old one's own node.
		cl := dial(t, clientConfig(tc.node("n1").addr, testVolume, 7))
		if err := cl.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := old.WriteAt(pattern(4096, 3), 0, false); !errors.Is(err, ErrFenced) {
			t.Fatalf("old coordinator's write: %v, want ErrFenced", err)
		}
		if !bytes.Equal(tc.node("n1").vol.at(0, 4096), pattern(4096, 1)) {
			t.Fatal("the fenced local replica applied the write")
		}
		if err := old.WriteAt(pattern(4096, 3), 0, false); !errors.Is(err, ErrFenced) {
			t.Fatalf("a later write: %v, want ErrFenced", err)
		}
		if len(tc.mem.history()) != 0 {
			t.Fatalf("the fenced coordinator changed the in-sync set: %v", tc.mem.history())
		}
	})
}

// TestCoordinatorClosedRefusesIO: I/O after Close fails with ErrClosed and
// reaches no replica, this node's own included, nor changes the in-sync
// set.
func TestCoordinatorClosedRefusesIO(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	local, err := tc.node("n1").server().OpenLocal(testVolume, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := tc.open(tc.config("n1", local, "n1", "n2"))
	mustWrite(t, c, pattern(4096, 1), 0)
	c.Close()
	if err := c.WriteAt(pattern(4096, 2), 0, false); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after Close: %v, want ErrClosed", err)
	}
	if err := c.ReadAt(make([]byte, 4096), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after Close: %v, want ErrClosed", err)
	}
	if err := c.Flush(); !errors.Is(err, ErrClosed) {
		t.Fatalf("flush after Close: %v, want ErrClosed", err)
	}
	tc.sameOn(0, pattern(4096, 1), "n1", "n2")
	if h := tc.mem.history(); len(h) != 0 {
		t.Fatalf("a closed coordinator changed the in-sync set: %v", h)
	}
}

// TestCoordinatorCloseRacingWrite: a write that began before Close and
// waited for its range meanwhile is refused, not sent to the replicas
// Close left (here only this node's own).
func TestCoordinatorCloseRacingWrite(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	n1 := tc.node("n1")
	local, err := n1.server().OpenLocal(testVolume, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := tc.open(tc.config("n1", local, "n1", "n2"))
	entered, release := blockOnce(n1.vol, "write", 0)
	first, second := make(chan error, 1), make(chan error, 1)
	go func() { first <- c.WriteAt(pattern(4096, 1), 0, false) }()
	<-entered
	go func() { second <- c.WriteAt(pattern(4096, 2), 0, false) }()
	time.Sleep(20 * time.Millisecond) // it waits for the first one's range
	c.Close()
	close(release)
	<-first
	if err := <-second; !errors.Is(err, ErrClosed) {
		t.Fatalf("a write that waited through Close: %v, want ErrClosed", err)
	}
	if bytes.Equal(n1.vol.at(0, 4096), pattern(4096, 2)) {
		t.Fatal("the closed coordinator's write reached its own replica")
	}
}

// TestCoordinatorConverge: regions where in-sync replicas differ (writes of
// a coordinator that crashed, reaching some replicas only) are found by
// Verify and copied from the first replica by Converge.
func TestCoordinatorConverge(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2", "n3")
	c := tc.open(tc.config("c0", nil, "n1", "n2", "n3"))
	mustWrite(t, c, pattern(3*RegionSize, 1), 10*RegionSize)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	tc.node("n2").vol.poke(pattern(4096, 9), 11*RegionSize+4096)
	tc.node("n3").vol.poke(pattern(4096, 8), 11*RegionSize)
	tc.node("n3").vol.poke(pattern(100, 7), 30*RegionSize+5)
	diffs, err := c.Verify(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	for _, d := range diffs {
		offs = append(offs, d.Offset)
		if len(d.Sums) != 3 {
			t.Fatalf("difference at %d has %d sums", d.Offset, len(d.Sums))
		}
	}
	if want := []int64{11 * RegionSize, 30 * RegionSize}; !slices.Equal(offs, want) {
		t.Fatalf("Verify found %v, want %v", offs, want)
	}
	var last int64
	conv, err := c.Converge(context.Background(), func(done, total int64) { last = done })
	if err != nil {
		t.Fatal(err)
	}
	if len(conv) != 2 || last != coordSize {
		t.Fatalf("Converge copied %d regions, progress ended at %d", len(conv), last)
	}
	verifyClean(t, c)
	tc.sameOn(10*RegionSize, pattern(3*RegionSize, 1), "n1", "n2", "n3")
	tc.sameOn(30*RegionSize, make([]byte, RegionSize), "n1", "n2", "n3")
	if h := tc.mem.history(); len(h) != 0 {
		t.Fatalf("membership changed: %v", h)
	}
}

// TestRegionLog: the region log round-trips through its file, and any
// damage reads as "every region" (a full copy), never as "nothing".
func TestRegionLog(t *testing.T) {
	const size = 200*RegionSize + 5 // a partial last region, 4 bitmap words
	path := t.TempDir() + "/v@n2.rgn"
	l := &regionLog{regions: newRegions(size), path: path, epoch: 7}
	for _, r := range [][2]int64{{0, 1}, {RegionSize - 1, 2}, {64 * RegionSize, 3 * RegionSize}, {size - 1, 1}} {
		if err := l.mark(r[0], r[1]); err != nil {
			t.Fatal(err)
		}
	}
	want := []int{0, 1, 64, 65, 66, 200}
	got, err := loadRegionLog(path, size)
	if err != nil {
		t.Fatal(err)
	}
	if m := marked(got.regions); !slices.Equal(m, want) || got.epoch != 7 {
		t.Fatalf("loaded %v at epoch %d, want %v at 7", m, got.epoch, want)
	}
	l.remove(64)
	if err := l.sync(); err != nil {
		t.Fatal(err)
	}
	if got, _ := loadRegionLog(path, size); got.count() != len(want)-1 || slices.Contains(marked(got.regions), 64) {
		t.Fatalf("a removal did not reach the file: %v", marked(got.regions))
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	if got, err := loadRegionLog(t.TempDir()+"/missing.rgn", size); err != nil || got.count() != 201 {
		t.Fatalf("missing log: %d regions, %v; want all 201 and no error", got.count(), err)
	}
	for _, tt := range []struct {
		name   string
		damage func([]byte) []byte
		size   int64
	}{
		{"bitmap bit", func(b []byte) []byte { b[30] ^= 4; return b }, size},
		{"checksum", func(b []byte) []byte { b[len(b)-1]++; return b }, size},
		{"magic", func(b []byte) []byte { b[0] = 'X'; return b }, size},
		{"version", func(b []byte) []byte { b[11] = 2; return b }, size},
		{"truncated", func(b []byte) []byte { return b[:len(b)-5] }, size},
		{"longer", func(b []byte) []byte { return append(b, 0) }, size},
		{"empty", func(b []byte) []byte { return nil }, size},
		{"a smaller volume's", func(b []byte) []byte { return b }, size - RegionSize},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := t.TempDir() + "/v@n2.rgn"
			if err := os.WriteFile(p, tt.damage(slices.Clone(good)), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := loadRegionLog(p, tt.size)
			if err == nil {
				t.Fatal("a damaged log loaded without error")
			}
			if n := got.regions.n; got.count() != n {
				t.Fatalf("a damaged log gives %d of %d regions, want all", got.count(), n)
			}
		})
	}
}

// TestCoordinatorRestartUsesLog: a coordinator that starts with a replica
// out of sync resumes from the region log its predecessor on this node
// kept, and falls back to a full copy when that log is damaged.
func TestCoordinatorRestartUsesLog(t *testing.T) {
	for _, damaged := range []bool{false, true} {
		t.Run(fmt.Sprintf("damaged=%v", damaged), func(t *testing.T) {
			tc := newReplCluster(t, coordSize, "n1", "n2")
			tc.mem = newFakeMembership(3, "n1")
			// n1 holds data n2 misses in regions 4 and 9, which the log says.
			tc.node("n1").vol.poke(pattern(4096, 5), 4*RegionSize)
			tc.node("n1").vol.poke(pattern(4096, 6), 9*RegionSize+77)
			cfg := tc.config("c0", nil, "n1")
			cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Node: "n2", InSync: false, LogValid: true})
			path := (&Coordinator{cfg: cfg}).logPath("n2")
			l := &regionLog{regions: newRegions(coordSize), path: path, epoch: 2}
			l.add(4*RegionSize, 1)
			l.add(9*RegionSize, 1)
			if err := l.sync(); err != nil {
				t.Fatal(err)
			}
			if damaged {
				b, _ := os.ReadFile(path)
				b[24] ^= 0xff
				os.WriteFile(path, b, 0o644)
			}
			before, _ := tc.node("n2").vol.written()
			c := tc.open(cfg)
			waitInSync(t, c)
			after, _ := tc.node("n2").vol.written()
			want := int64(2 * RegionSize)
			if damaged {
				want = coordSize
			}
			if after-before != want {
				t.Fatalf("resync wrote %d bytes, want %d", after-before, want)
			}
			// A full copy writes the empty regions as zeros: nothing allocated
			// outside the two regions that hold data.
			if n := tc.node("n2").vol.pagesOutside(4, 9); n != 0 {
				t.Fatalf("n2 holds %d pages outside the regions with data after its resync", n)
			}
			verifyClean(t, c)
			if !tc.mem.in("n2") {
				t.Fatal("n2 did not rejoin")
			}
		})
	}
}

// blockOnce makes the volume's first op at [off, off+RegionSize) stall
// until release is closed; entered is closed when it does.
func blockOnce(v *memVolume, op string, off int64) (entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	v.setBefore(func(o string, at, n int64) {
		if o == op && at >= off && at < off+RegionSize {
			once.Do(func() {
				close(entered)
				<-release
			})
		}
	})
	return entered, release
}

// crashWhileStalled crashes n while one of its requests is stalled by
// blockOnce: the server closes its connections, then the stalled request
// finishes into the volatile layer, which the crash loses.
func crashWhileStalled(t *testing.T, n *replicaNode, release chan struct{}) {
	t.Helper()
	stopped := make(chan struct{})
	go func() { n.stop(t); close(stopped) }()
	for n.server() != nil {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(10 * time.Millisecond)
	close(release)
	<-stopped
	n.vol.setBefore(nil)
	n.vol.crash()
}

// evictFor stops node, writes what is given so that the coordinator
// evicts it, and checks that it did.
func evictFor(t *testing.T, tc *replCluster, c *Coordinator, node string, offs ...int64) {
	t.Helper()
	tc.node(node).stop(t)
	for i, off := range offs {
		mustWrite(t, c, pattern(4096, byte(i+1)), off)
	}
	if status(c, node).State != OutOfSync {
		t.Fatalf("%s not evicted: %+v", node, c.Status())
	}
}

// TestCoordinatorFlushRacingWrite: a write still in flight when a flush
// was sent is not covered by it: a replica that crashes later may have
// lost it, and its resync must copy that region.
func TestCoordinatorFlushRacingWrite(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n2 := tc.node("n2")
	entered, release := blockOnce(n2.vol, "write", 3*RegionSize)
	done := make(chan error, 1)
	go func() { done <- c.WriteAt(pattern(4096, 1), 3*RegionSize, false) }()
	<-entered
	if err := c.Flush(); err != nil { // reaches n2 ahead of the stalled write
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n2.vol.setBefore(nil)
	n2.crash(t) // loses the write: no flush covered it
	mustWrite(t, c, pattern(4096, 2), 5*RegionSize)
	if status(c, "n2").State != OutOfSync {
		t.Fatal("n2 not evicted")
	}
	n2.start(t)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorEvictedWithWriteInFlight: a replica evicted while a
// write to it is in flight (held up by another replica), after a flush
// that reached it ahead of that write, keeps the write's region in its log:
// it applied the write and lost it in a crash, unflushed.
func TestCoordinatorEvictedWithWriteInFlight(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2", "n3")
	c := tc.open(tc.config("c0", nil, "n1", "n2", "n3"))
	n2, n3 := tc.node("n2"), tc.node("n3")
	entered2, release2 := blockOnce(n2.vol, "write", 2*RegionSize)
	entered3, release3 := blockOnce(n3.vol, "write", 2*RegionSize)
	done := make(chan error, 1)
	go func() { done <- c.WriteAt(pattern(4096, 1), 2*RegionSize, false) }()
	<-entered2
	<-entered3
	if err := c.Flush(); err != nil { // reaches n3 ahead of the write
		t.Fatal(err)
	}
	close(release3) // n3 applies the write, unflushed, and answers
	time.Sleep(20 * time.Millisecond)
	n3.vol.setBefore(nil)
	n3.crash(t) // and loses it
	mustWrite(t, c, pattern(4096, 2), 5*RegionSize)
	if status(c, "n3").State != OutOfSync {
		t.Fatal("n3 not evicted")
	}
	close(release2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	n2.vol.setBefore(nil)
	n3.start(t)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorResyncInterruptedByCrash: regions a resync copied before
// the replica crashed (unflushed there) are copied again.
func TestCoordinatorResyncInterruptedByCrash(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n2 := tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize, 6*RegionSize)
	entered, release := blockOnce(n2.vol, "write", 6*RegionSize)
	n2.start(t)
	<-entered // region 3 is copied, region 6 is being copied
	crashWhileStalled(t, n2, release)
	n2.start(t)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorJoinFailureKeepsUnflushed: a replica that caught up but
// whose join was not confirmed keeps getting every write; when it fails
// (here it crashed, losing a write it took after the resync's flush), it
// is evicted as an in-sync one, with what it may have lost in its log.
func TestCoordinatorJoinFailureKeepsUnflushed(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n2 := tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize)

	// The copy of region 3 stalls, so that a client write to region 8 is
	// sent to n2 while it resyncs; that write stalls on n2 until the
	// resync has flushed n2 and is joining.
	copying, releaseCopy := blockOnce(n2.vol, "write", 3*RegionSize)
	tc.mem.setErrs(nil, errors.New("etcd unreachable"))
	n2.start(t)
	<-copying
	entered8, release8 := make(chan struct{}), make(chan struct{})
	var once8 sync.Once
	n2.vol.setBefore(func(op string, off, n int64) {
		if op == "write" && off == 8*RegionSize {
			once8.Do(func() { close(entered8); <-release8 })
		}
	})
	done := make(chan error, 1)
	var once sync.Once
	tc.mem.mu.Lock()
	tc.mem.onJoin = func(string) {
		once.Do(func() {
			close(release8)
			if err := <-done; err != nil {
				t.Errorf("write during the resync: %v", err)
			}
			n2.vol.setBefore(nil)
			n2.crash(t) // loses the write to region 8: it came after n2's flush
		})
	}
	tc.mem.mu.Unlock()
	go func() { done <- c.WriteAt(pattern(4096, 8), 8*RegionSize, false) }()
	<-entered8
	close(releaseCopy) // the resync goes on: flush, then join
	tc.mem.waitEvent(t, is("join n2 failed"))
	// Out of the set only through a recorded eviction (the join's retry
	// cannot give the crashed n2 the activity log, and evicts it).
	evicted := slices.ContainsFunc(tc.mem.history(), func(e string) bool { return strings.HasPrefix(e, "evict n2 @") })
	if st := status(c, "n2"); st.State == OutOfSync && !evicted {
		t.Fatalf("n2 out of sync after a join that may have been recorded, with no eviction recorded: %+v, %v", st, tc.mem.history())
	}
	tc.mem.setErrs(nil, nil)
	// The join may be confirmed meanwhile; either way the next write finds
	// n2's connection broken and evicts it.
	mustWrite(t, c, pattern(4096, 9), 12*RegionSize)
	if st := status(c, "n2"); st.State != OutOfSync || tc.mem.in("n2") {
		t.Fatalf("n2 %+v, in the recorded set %v: not evicted", st, tc.mem.in("n2"))
	}
	n2.start(t)
	waitInSync(t, c)
	verifyClean(t, c)
	tc.sameOn(8*RegionSize, pattern(4096, 8), "n1", "n2")
}

// TestCoordinatorUnreachableAtOpen: an in-sync replica a new coordinator
// cannot reach is evicted with every region in its log: the previous
// coordinator's last writes may have reached some replicas only.
func TestCoordinatorUnreachableAtOpen(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	tc.node("n1").vol.poke(pattern(4096, 1), 5*RegionSize) // reached n1 only
	tc.node("n2").stop(t)
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	if st := status(c, "n2"); st.State != OutOfSync || tc.mem.in("n2") {
		t.Fatalf("n2 %+v, in the recorded set %v", st, tc.mem.in("n2"))
	}
	tc.node("n2").start(t)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorFailedWriteOnResyncingReplica: a write that fails (its
// last in-sync replica refused it) but that a resyncing replica applied
// must not let that replica join with it: the region is copied again.
func TestCoordinatorFailedWriteOnResyncingReplica(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n1, n2 := tc.node("n1"), tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize)
	copying, releaseCopy := blockOnce(n2.vol, "write", 3*RegionSize)
	n2.start(t)
	<-copying
	n1.vol.setFail(func(op string, off, n int64) error {
		if op == "write" && off == 7*RegionSize {
			return fmt.Errorf("%w: bad sector", engine.ErrIO)
		}
		return nil
	})
	if err := c.WriteAt(pattern(4096, 7), 7*RegionSize, false); !errors.Is(err, engine.ErrIO) {
		t.Fatalf("write refused by the last in-sync replica: %v, want EIO", err)
	}
	n1.vol.setFail(nil)
	close(releaseCopy)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorResyncSourceFails: a resync whose source replica fails a
// read is tried again later, not left half done.
func TestCoordinatorResyncSourceFails(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n1, n2 := tc.node("n1"), tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize)
	var failed atomic.Int32
	n1.vol.setFail(func(op string, off, n int64) error {
		if op == "read" {
			failed.Add(1)
			return fmt.Errorf("%w: bad sector", engine.ErrIO)
		}
		return nil
	})
	n2.start(t)
	for failed.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	n1.vol.setFail(nil)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorFailedWriteInSyncDiffer: a write one in-sync replica
// failed, whose eviction cannot be recorded (etcd unreachable), and another
// applied, fails; the replica that lacks it serves no read (a read would
// see the write or not depending on the replica it went to) until its
// eviction goes through, then resyncs.
func TestCoordinatorFailedWriteInSyncDiffer(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	mustWrite(t, c, pattern(4096, 1), 7*RegionSize)
	tc.mem.setErrs(errors.New("etcd unreachable"), nil)
	tc.node("n1").vol.setFail(func(op string, off, n int64) error {
		if op == "write" && off == 7*RegionSize {
			return fmt.Errorf("%w: bad sector", engine.ErrIO)
		}
		return nil
	})
	if err := c.WriteAt(pattern(4096, 2), 7*RegionSize, false); !errors.Is(err, engine.ErrIO) {
		t.Fatalf("write with a replica failing and its eviction failing: %v, want EIO", err)
	}
	tc.node("n1").vol.setFail(nil)
	// Reads see the write n2 applied, then and after n1 leaves the set.
	got := make([]byte, 4096)
	if err := c.ReadAt(got, 7*RegionSize); err != nil || !bytes.Equal(got, pattern(4096, 2)) {
		t.Fatalf("read while n1 cannot be evicted: %v, the failed write seen %v", err, bytes.Equal(got, pattern(4096, 2)))
	}
	// No flush makes the write n1 lacks durable while the cluster records
	// n1 in sync: a coordinator after a crash might converge from n1.
	if err := c.Flush(); !errors.Is(err, engine.ErrIO) || !strings.Contains(err.Error(), "lacks a write") {
		t.Fatalf("flush while n1 cannot be evicted: %v, want EIO naming it", err)
	}
	tc.mem.setErrs(nil, nil)
	deadline := time.Now().Add(10 * time.Second)
	for tc.mem.in("n1") {
		if time.Now().After(deadline) {
			t.Fatalf("n1 not evicted once etcd answers: %v", tc.mem.history())
		}
		time.Sleep(time.Millisecond)
	}
	waitInSync(t, c)
	verifyClean(t, c)
	tc.sameOn(7*RegionSize, pattern(4096, 2), "n1", "n2")
	if err := c.Flush(); err != nil {
		t.Fatalf("flush once n1 was evicted and resynced: %v", err)
	}
}

// TestCoordinatorFailedWriteOnJoiningReplica: a write that fails on the
// in-sync replica but that a caught-up replica whose join is unconfirmed
// applied is undone on it, though it cannot be evicted (etcd unreachable):
// when its join goes through it holds what the in-sync replica holds.
func TestCoordinatorFailedWriteOnJoiningReplica(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n1, n2 := tc.node("n1"), tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize)
	unreachable := errors.New("etcd unreachable")
	tc.mem.setErrs(nil, unreachable)
	n2.start(t)
	tc.mem.waitEvent(t, is("join n2 failed"))
	tc.mem.setErrs(unreachable, unreachable)
	n1.vol.setFail(func(op string, off, n int64) error {
		if op == "write" && off == 7*RegionSize {
			return fmt.Errorf("%w: bad sector", engine.ErrIO)
		}
		return nil
	})
	if err := c.WriteAt(pattern(4096, 7), 7*RegionSize, false); !errors.Is(err, engine.ErrIO) {
		t.Fatalf("write refused by the last in-sync replica: %v, want EIO", err)
	}
	n1.vol.setFail(nil)
	tc.mem.setErrs(nil, nil)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorTakeoverThenReplicaCrash: writes the previous coordinator
// left unflushed are flushed by the new one before it serves, so a crash
// of a replica after the takeover cannot lose what no region log records.
func TestCoordinatorTakeoverThenReplicaCrash(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	old := tc.open(tc.config("c0", nil, "n1", "n2"))
	mustWrite(t, old, pattern(4096, 1), 5*RegionSize) // on both, unflushed
	old.Close()                                       // no flush: it crashed
	cfg := tc.config("c1", nil, "n1", "n2")
	cfg.Epoch = 5 // its claim
	cfg.StateDir = t.TempDir()
	c := tc.open(cfg)
	n2 := tc.node("n2")
	n2.crash(t)
	mustWrite(t, c, pattern(4096, 2), 9*RegionSize) // evicts n2
	if status(c, "n2").State != OutOfSync {
		t.Fatalf("n2 not evicted: %+v", c.Status())
	}
	n2.start(t)
	waitInSync(t, c)
	verifyClean(t, c)
	tc.sameOn(5*RegionSize, pattern(4096, 1), "n1", "n2")
}

// TestCoordinatorResyncDroppedMidCopy: a region whose copy completes after
// the replica was dropped from its resync (a client write failed on it)
// stays in its log — the copy is unflushed there — so that when the node
// and its coordinator crash, the next coordinator copies it again.
func TestCoordinatorResyncDroppedMidCopy(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	tc.mem = newFakeMembership(3, "n1")
	n1, n2 := tc.node("n1"), tc.node("n2")
	n1.vol.poke(pattern(4096, 5), 3*RegionSize)
	n1.vol.poke(pattern(4096, 6), 6*RegionSize)
	// The coordinator runs on n2, whose own replica is out of sync with
	// regions 3 and 6 in the log its predecessor here kept.
	open := func() *Coordinator {
		local, err := n2.server().OpenLocal(testVolume, tc.mem.current())
		if err != nil {
			t.Fatal(err)
		}
		cfg := tc.config("n2", local, "n1")
		cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Node: "n2", InSync: false, LogValid: true})
		return tc.open(cfg)
	}
	l := &regionLog{regions: newRegions(coordSize), path: (&Coordinator{cfg: tc.config("n2", nil)}).logPath("n2")}
	l.add(3*RegionSize, 1)
	l.add(6*RegionSize, 1)
	if err := l.sync(); err != nil {
		t.Fatal(err)
	}
	// The copy of region 3 stalls; every other write to n2 fails, so no
	// resync ends.
	copying, releaseCopy := blockOnce(n2.vol, "write", 3*RegionSize)
	var failed6 atomic.Int32
	n2.vol.setFail(func(op string, off, n int64) error {
		if op == "write" && off != 3*RegionSize {
			if off == 6*RegionSize {
				failed6.Add(1)
			}
			return fmt.Errorf("%w: bad sector", engine.ErrIO)
		}
		return nil
	})
	c := open()
	<-copying
	mustWrite(t, c, pattern(4096, 7), 7*RegionSize) // fails on n2: dropped
	if st := status(c, "n2"); st.State != OutOfSync {
		t.Fatalf("n2 %+v after a write failed on it, want out of sync", st)
	}
	close(releaseCopy) // the copy completes, unflushed
	for failed6.Load() < 2 {
		time.Sleep(time.Millisecond) // a later round saved the log
	}
	// The node crashes, its coordinator with it; the next one here resumes
	// from the log.
	c.Close()
	n2.vol.setBefore(nil)
	n2.vol.setFail(nil)
	n2.crash(t)
	n2.start(t)
	tc.mem.setErrs(nil, nil)
	c = open()
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorEpochChangesUnderLoad: evictions and joins raise the
// epoch while requests of the older one are in flight to the same
// replicas (which apply requests in any order); none of that may look like
// a newer coordinator.
func TestCoordinatorEpochChangesUnderLoad(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2", "n3")
	local, err := tc.node("n1").server().OpenLocal(testVolume, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := tc.open(tc.config("n1", local, "n1", "n2", "n3"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64((w*7919+i*104729)%(coordSize/4096)) * 4096
				var err error
				switch i % 3 {
				case 0, 1:
					err = c.WriteAt(pattern(4096, byte(i)), off, false)
				default:
					err = c.ReadAt(buf, off)
				}
				if i%50 == 0 {
					err = errors.Join(err, c.Flush())
				}
				if errors.Is(err, ErrFenced) {
					errs <- err
					return
				}
			}
		}()
	}
	for cycle := range 10 {
		n := tc.node([]string{"n2", "n3"}[cycle%2])
		n.stop(t)
		for status(c, n.name).State == InSync {
			time.Sleep(time.Millisecond)
		}
		n.start(t)
		waitInSync(t, c)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a coordinator fenced itself by its own epoch changes: %v", err)
	}
	verifyClean(t, c)
}

// TestCoordinatorCleanCloseDuringResync: a coordinator closed cleanly (a
// flush, then Close) while a copy is in flight saves a region log that
// still names what it copied after the flush: a crash of the target's node
// loses that copy, and the next coordinator, a clean start that trusts the
// log, copies the region again.
func TestCoordinatorCleanCloseDuringResync(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n2 := tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize, 6*RegionSize, 9*RegionSize)
	entered, release := blockOnce(n2.vol, "write", 6*RegionSize)
	n2.start(t)
	<-entered // region 3 is copied, region 6 is being copied, 9 is next
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	for !c.Fenced() {
		time.Sleep(time.Millisecond)
	}
	close(release) // the copy of region 6 completes after the flush
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	n2.vol.setBefore(nil)
	n2.crash(t) // and is lost: no flush reached it
	n2.start(t)

	epoch, mem, replicas := tc.mem.claimVolume([]string{"n1", "n2"})
	cfg := tc.config("c1", nil)
	cfg.Epoch, cfg.Membership, cfg.Replicas = epoch, mem, replicas
	cfg.Replicas[1].LogValid = true
	c1 := tc.open(cfg)
	waitInSync(t, c1)
	verifyClean(t, c1)
	tc.sameOn(6*RegionSize, pattern(4096, 2), "n1", "n2")
}

// TestCoordinatorKeepsLastUndoomedReplica: with one in-sync replica doomed
// (it lost a write the other holds, and its eviction could not be
// recorded), a failure of the other does not evict that other: it is the
// only one holding everything, and evicting it would have the doomed one
// copied over it.
func TestCoordinatorKeepsLastUndoomedReplica(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n1, n2 := tc.node("n1"), tc.node("n2")
	w0 := pattern(4096, 7)
	mustWrite(t, c, w0, 5*RegionSize) // on both, unflushed
	tc.mem.setErrs(errors.New("etcd unreachable"), nil)
	n2.crash(t) // loses w0
	if err := c.WriteAt(pattern(4096, 8), 7*RegionSize, false); err == nil {
		t.Fatal("a write acknowledged while the failed replica's eviction could not be recorded")
	}
	// etcd is back, but n2's eviction still fails; n1 fails a write once.
	tc.mem.mu.Lock()
	tc.mem.evictErr = nil
	tc.mem.evictErrFor = func(node string) error {
		if node == "n2" {
			return errors.New("etcd unreachable for this change")
		}
		return nil
	}
	tc.mem.mu.Unlock()
	var failed atomic.Bool
	n1.vol.setFail(func(op string, off, n int64) error {
		if op == "write" && failed.CompareAndSwap(false, true) {
			return errors.New("injected I/O error")
		}
		return nil
	})
	// (In w0's extent: already in every replica's activity log, so the
	// write is sent without a mark, which the broken n2 would fail.)
	if err := c.WriteAt(pattern(4096, 9), 5*RegionSize+4096, false); err == nil {
		t.Fatal("a write that failed on every replica was acknowledged")
	}
	if !failed.Load() {
		t.Fatal("the write never reached n1")
	}
	n1.vol.setFail(nil)
	if st := status(c, "n1"); st.State != InSync || !tc.mem.in("n1") {
		t.Fatalf("n1, the only replica holding every write, was evicted: %+v, %v", st, tc.mem.history())
	}
	tc.mem.mu.Lock()
	tc.mem.evictErrFor = nil
	tc.mem.mu.Unlock()
	tc.mem.waitEvent(t, func(e string) bool { return strings.HasPrefix(e, "evict n2 @") })
	n2.start(t)
	waitInSync(t, c)
	verifyClean(t, c)
	tc.sameOn(5*RegionSize, w0, "n1", "n2")
}

// TestCoordinatorUnconfirmedJoinDemotedThroughEviction: a replica whose
// join the cluster may have recorded (it committed, then reported an
// error) is taken back out of sync when the last in-sync replica
// reconnects only through a recorded eviction: a later coordinator would
// otherwise take it for in sync.
func TestCoordinatorUnconfirmedJoinDemotedThroughEviction(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n1, n2 := tc.node("n1"), tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize)
	tc.mem.mu.Lock()
	tc.mem.committedErr = errors.New("etcd: request timed out")
	tc.mem.mu.Unlock()
	n2.start(t)
	deadline := time.Now().Add(10 * time.Second)
	for !tc.mem.in("n2") {
		if time.Now().After(deadline) {
			t.Fatalf("no join recorded: %v", tc.mem.history())
		}
		time.Sleep(time.Millisecond)
	}
	if st := status(c, "n2"); st.State != Resyncing {
		t.Fatalf("n2 %+v after a join whose outcome was an error", st)
	}
	tc.mem.mu.Lock()
	tc.mem.committedErr = nil
	tc.mem.joinErr = errors.New("etcd unreachable") // no retried join from here
	tc.mem.mu.Unlock()
	joins := len(tc.mem.history())
	n1.stop(t) // the last in-sync replica's connection breaks
	n1.start(t)
	tc.log.waitLog(t, "last in-sync replica reconnected")
	if st := status(c, "n2"); st.State == Resyncing {
		t.Fatalf("n2 still resyncing after the last in-sync replica reconnected: %+v", st)
	}
	if tc.mem.in("n2") {
		t.Fatalf("n2 taken out of sync here but recorded in sync: %v", tc.mem.history()[joins:])
	}
	tc.mem.setErrs(nil, nil)
	waitInSync(t, c)
	verifyClean(t, c)
}

// TestCoordinatorDoomedUnconfirmedJoinFailsFlush: a replica whose join is
// unconfirmed and that missed a write the in-sync one applied fails
// flushes until its eviction is recorded, as a doomed in-sync one does.
func TestCoordinatorDoomedUnconfirmedJoinFailsFlush(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n2 := tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize)
	tc.mem.setErrs(nil, errors.New("etcd unreachable"))
	n2.start(t)
	tc.mem.waitEvent(t, is("join n2 failed"))
	// n2 fails the write, and its repair (a copy from n1), in region 4,
	// and answers everything else: it is doomed, alive.
	tc.mem.setErrs(errors.New("etcd unreachable"), errors.New("etcd unreachable"))
	n2.vol.setFail(func(op string, off, n int64) error {
		if op == "write" && off >= 4*RegionSize && off < 5*RegionSize {
			return errors.New("injected I/O error")
		}
		return nil
	})
	if err := c.WriteAt(pattern(4096, 4), 4*RegionSize, false); err == nil {
		t.Fatal("a write acknowledged while the failed replica's eviction could not be recorded")
	}
	if err := c.Flush(); err == nil {
		t.Fatalf("a flush acknowledged while n2, whose join may be recorded, lacks a write n1 holds: %+v", c.Status())
	}
	n2.vol.setFail(nil)
	tc.mem.setErrs(nil, nil)
	waitInSync(t, c)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	verifyClean(t, c)
}

// TestCoordinatorUnrecordedEvictionKeepsResyncMark: a replica whose join
// is unconfirmed fails a write and its eviction cannot be recorded, so it
// stays and keeps taking writes; its region log file and resync mark must
// still say so, or a coordinator after an unclean stop would trust a log
// that skips those writes (here one its in-sync peer lost in a crash).
func TestCoordinatorUnrecordedEvictionKeepsResyncMark(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	n1, n2 := tc.node("n1"), tc.node("n2")
	evictFor(t, tc, c, "n2", 3*RegionSize)
	tc.mem.setErrs(nil, errors.New("etcd unreachable"))
	n2.start(t)
	tc.mem.waitEvent(t, is("join n2 failed"))
	// n2 fails one write; its eviction fails, and the region is repaired
	// by a copy from n1: n2 stays, unconfirmed, and takes the next write.
	tc.mem.setErrs(errors.New("etcd unreachable"), errors.New("etcd unreachable"))
	var failed atomic.Bool
	n2.vol.setFail(func(op string, off, n int64) error {
		if op == "write" && failed.CompareAndSwap(false, true) {
			return errors.New("injected I/O error")
		}
		return nil
	})
	if err := c.WriteAt(pattern(4096, 5), 5*RegionSize, false); err == nil {
		t.Fatal("a write acknowledged while the failed replica's eviction could not be recorded")
	}
	if st := status(c, "n2"); st.State != Resyncing {
		t.Fatalf("n2 %+v, want still resyncing (repaired, its join unconfirmed)", st)
	}
	mustWrite(t, c, pattern(4096, 7), 7*RegionSize) // on both, unflushed
	c.Close()
	n1.crash(t) // loses the write to region 7; n2 keeps it
	n1.start(t)

	tc.mem.setErrs(nil, nil)
	epoch, mem, replicas := tc.mem.claimVolume([]string{"n1", "n2"})
	cfg := tc.config("c1", nil)
	cfg.Epoch, cfg.Membership, cfg.Replicas, cfg.Unclean = epoch, mem, replicas, true
	cfg.Replicas[1].LogValid = true
	c1 := tc.open(cfg)
	waitInSync(t, c1)
	verifyClean(t, c1)
}

// TestCoordinatorLiveCheckedPerRequest: a coordinator whose node may no
// longer coordinate (Live fails: its lease went stale in a pause no
// watcher saw yet) refuses the very next read, write and flush, and stays
// fenced.
func TestCoordinatorLiveCheckedPerRequest(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	var stale atomic.Bool
	cfg := tc.config("c0", nil, "n1", "n2")
	cfg.Live = func() error {
		if stale.Load() {
			return errors.New("lease not renewed")
		}
		return nil
	}
	c := tc.open(cfg)
	mustWrite(t, c, pattern(4096, 1), 0)
	buf := make([]byte, 4096)
	if err := c.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	stale.Store(true)
	if err := c.ReadAt(buf, 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("read with a stale lease: %v, want ErrFenced", err)
	}
	stale.Store(false) // fenced for good, whatever Live says now
	if err := c.WriteAt(buf, 0, false); !errors.Is(err, ErrFenced) {
		t.Fatalf("write after the fence: %v", err)
	}
	if err := c.Flush(); !errors.Is(err, ErrFenced) {
		t.Fatalf("flush after the fence: %v", err)
	}
}

// TestForgetRegionLog: a region log (and resync mark) forgotten before the
// cluster names this node its keeper again is gone for good: the next
// coordinator that trusts "this node's log" finds none and copies the
// replica whole, instead of trusting a stale file that skips regions.
func TestForgetRegionLog(t *testing.T) {
	tc := newReplCluster(t, coordSize, "n1", "n2")
	tc.mem = newFakeMembership(3, "n1")
	tc.node("n1").vol.poke(pattern(4096, 5), 4*RegionSize)
	tc.node("n1").vol.poke(pattern(4096, 6), 9*RegionSize) // not in the stale log
	cfg := tc.config("c0", nil, "n1")
	cfg.Replicas = append(cfg.Replicas, ReplicaConfig{Node: "n2", InSync: false, LogValid: true})
	path := (&Coordinator{cfg: cfg}).logPath("n2")
	stale := &regionLog{regions: newRegions(coordSize), path: path, epoch: 2}
	stale.add(4*RegionSize, 1)
	if err := stale.sync(); err != nil {
		t.Fatal(err)
	}
	if err := writeFile(resyncMark(path), ""); err != nil {
		t.Fatal(err)
	}
	if err := ForgetRegionLog(tc.dir, testVolume, "n2"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, resyncMark(path)} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still there after ForgetRegionLog: %v", p, err)
		}
	}
	if err := ForgetRegionLog(tc.dir, testVolume, "n2"); err != nil {
		t.Fatalf("forgetting a log that is gone: %v", err)
	}
	c := tc.open(cfg)
	waitInSync(t, c)
	verifyClean(t, c)
	tc.sameOn(9*RegionSize, pattern(4096, 6), "n1", "n2")
}
