package replication

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/atomicfile"
)

// ReplicaState is where a replica stands relative to the in-sync set.
type ReplicaState int

const (
	// InSync: in the set recorded in the cluster; gets every write and
	// may serve reads.
	InSync ReplicaState = iota
	// OutOfSync: out of the set; misses writes, and the coordinator's
	// region log records which regions.
	OutOfSync
	// Resyncing: out of the set, getting every new write and a copy of
	// the regions it missed; joins the set (an epoch bump) when caught up.
	Resyncing
)

func (s ReplicaState) String() string {
	switch s {
	case InSync:
		return "in-sync"
	case OutOfSync:
		return "out-of-sync"
	case Resyncing:
		return "resyncing"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// MaxReplicas is the most replicas a volume has (repl 3).
const MaxReplicas = 3

// ErrNoReplica is I/O on a volume none of whose replicas is in sync and
// answering: the volume fails I/O (EIO) rather than serve stale data.
var ErrNoReplica = errors.New("replication: no in-sync replica")

// ErrFenced is I/O refused because this coordinator was fenced: a newer
// epoch exists (another node took the volume over), or the node lost its
// cluster lease. Nothing is acknowledged after it.
var ErrFenced = errors.New("replication: coordinator fenced")

// Membership records changes of a volume's in-sync set in the cluster
// (etcd). Each call is one transaction that also raises the volume's epoch,
// and returns the new epoch; the coordinator acts on a change only once its
// call returned nil.
type Membership interface {
	// Evict takes node out of the in-sync set; this coordinator keeps the
	// region log of what it misses.
	Evict(node string) (uint64, error)
	// Join puts node back into the in-sync set.
	Join(node string) (uint64, error)
}

// Dialer connects to node's replica of the volume at epoch (the daemon
// resolves the node's replication address and binds its own data address).
type Dialer func(ctx context.Context, node string, epoch uint64) (*Client, error)

// ReplicaConfig is one replica of the volume as the cluster records it.
type ReplicaConfig struct {
	Node   string
	InSync bool
	// LogValid: an out-of-sync replica whose region log this node has
	// kept since the replica left the set (the cluster records whose log
	// it is). Otherwise it gets a full copy (of the regions that hold data).
	LogValid bool
}

// CoordinatorConfig is what a coordinator needs of the daemon.
type CoordinatorConfig struct {
	Volume   string
	Size     int64
	Self     string // this node's id
	Epoch    uint64 // the epoch the claim of the volume recorded
	Replicas []ReplicaConfig
	// Local is this node's replica, opened at Epoch (nil: none here).
	Local      *Local
	Membership Membership
	Dial       Dialer
	// Unclean: the previous coordinator stopped without releasing the
	// volume (a crash): the logs of replicas it was resyncing are not
	// enough (openLog).
	Unclean bool
	// StateDir holds the region logs (one file per volume and replica).
	StateDir string
	// ResyncRate bounds a resync's copy in bytes per second, so client I/O
	// keeps its latency; 0 = 256 MiB/s.
	ResyncRate int64
	// RetryInterval is how often an out-of-sync replica is tried again;
	// 0 = 2 s.
	RetryInterval time.Duration
	// Clock is what RetryInterval and ResyncRate are measured on; nil =
	// the real clock. (The Dialer sets its Clients' own.)
	Clock  Clock
	Logger *slog.Logger
	// Live, when set, says whether this node may still coordinate (its
	// cluster lease is fresh); it is asked before every read, write and
	// flush, and an error fences the coordinator. A watcher that fences
	// it on a timer is not enough: after a pause longer than the lease
	// (SIGSTOP, a frozen VM) a request can run before the watcher does,
	// and a read of the local replica meets no epoch that would refuse it.
	Live func() error
}

// Coordinator serves one volume from its replicas: it is the only writer of
// every replica while it holds the volume's epoch (see the package doc for
// the epoch rules; DESIGN.md for the whole write path).
//
// The invariants it keeps:
//
//   - A write, trim or write-zeroes is acknowledged only when every replica
//     that was in sync when it started has applied it, or has been taken
//     out of the in-sync set by a Membership call that returned — so every
//     acknowledged write is on every replica of the recorded set. When the
//     set cannot be changed (etcd unreachable, this node's lease gone), the
//     write fails.
//   - A FLUSH is acknowledged only when every in-sync replica has flushed
//     (or been evicted as above), and none is doomed (below): acknowledged
//     writes are then durable on every replica of the recorded set, and
//     the replicas agree on what was flushed.
//   - The last in-sync replica is never evicted, nor the last one that is
//     not doomed: a volume whose replicas all fail fails I/O with EIO, and
//     keeps the replica with the newest data in the set (dialled again
//     until it answers: resync.go).
//   - A replica out of the set has a region log here that holds every
//     region where it may differ: those written since it left, and those
//     written since its last completed flush before it left (it may have
//     lost them in a crash). The log is durable before the write that
//     marked it is acknowledged. While it resyncs it also gets writes its
//     log does not name, which a crash of its node may lose: a mark file
//     says so (resyncMark), and a coordinator that finds it after an
//     unclean stop gives the replica a full copy.
//   - Reads are served only by an in-sync replica — not by one that missed
//     a failed write the others applied while its eviction cannot be
//     recorded (doomed), unless it is the last.
//   - Two writes to overlapping ranges are never in flight together
//     (rangeLock): replicas apply them in the same order.
//   - A write is sent only once its activity extents are in the activity
//     log of every replica receiving writes, and an extent leaves the log
//     only when no replica holds an unflushed write to it (activity.go):
//     after a crash the in-sync replicas' logs name every region where
//     they may differ, and Converge compares only those.
//   - A reply of a newer epoch (a newer coordinator) fences this one: no
//     I/O is acknowledged after. (A refusal for its own older epoch — its
//     own raise overtook the request on the replica — is sent again.)
type Coordinator struct {
	cfg   CoordinatorConfig
	log   *slog.Logger
	locks rangeLock
	act   *activity // the activity log on the replicas (activity.go)
	// converge: the extents where the in-sync replicas may differ after
	// an unclean stop (the union of their activity logs), for Converge.
	converge activitySet
	// lastClientIO: when a client last read or wrote (Clock nanoseconds):
	// a resync yields to client I/O (pacer).
	lastClientIO atomic.Int64

	// fenced is set once: the error every later I/O fails with (Fence,
	// or Close).
	fenced atomic.Pointer[error]

	mu      sync.RWMutex
	epoch   uint64    // REQUIRES mu
	members []*member // REQUIRES mu for state, client, log

	stop chan struct{}
	done chan struct{}
}

// member is one replica as the coordinator drives it.
type member struct {
	node   string
	local  *Local       // this node's replica
	client *Client      // a remote replica's connection; nil while none
	state  ReplicaState // REQUIRES Coordinator.mu
	log    *regionLog   // OutOfSync, Resyncing: what it misses
	// joinPending: Resyncing and caught up, its join of the in-sync set
	// sent but not confirmed (resync.go, join). REQUIRES Coordinator.mu.
	joinPending bool
	// doomed: in the set (or maybe: joinPending), it failed a write that
	// another in-sync replica applied, could not be repaired, and its
	// eviction could not be recorded: it lacks what the others hold, so it
	// serves no read while another in-sync replica can and does not join,
	// and the resync loop tries its eviction again. (Once it is the last
	// in-sync replica it serves: the others failed too.)
	// REQUIRES Coordinator.mu.
	doomed bool
	// missed: while doomed, the regions it may lack — the failed writes'
	// and what it had not flushed when it was doomed — kept apart from
	// written, which a later flush clears: its eviction puts them in its
	// log (keepMissed). REQUIRES Coordinator.mu.
	missed *regions

	// written: regions written since the last flush that reached the
	// replica; flushing: the sets of the flushes in flight; inflight: how
	// many writes to each region are in flight. A replica that fails may
	// have lost all of them (an engine loses unflushed writes in a crash,
	// and a write in flight may have been applied), so eviction puts them
	// in its region log (orUnflushed). A write counts in inflight from before
	// it is sent until it is over, and only then in written: a flush sent
	// while it was in flight does not cover it (a replica applies requests
	// in any order, so the flush may have been applied first).
	fmu      sync.Mutex
	written  *regions
	flushing []*regions // REQUIRES fmu
	inflight []int32    // REQUIRES fmu; per region

	copied, toCopy atomic.Int64 // resync progress, bytes

	// writes and writeNanos: writes this replica answered and the time
	// they took, send to reply (metrics: per-replica write latency).
	writes, writeNanos atomic.Uint64
}

// beginFlush moves the regions written to m so far into the set of a
// flush about to be sent to it, and returns that set.
func (m *member) beginFlush() *regions {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	set := m.written.swap()
	m.flushing = append(m.flushing, set)
	return set
}

// endFlush records that the flush of set completed: m holds those regions
// durably.
func (m *member) endFlush(set *regions) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	if j := slices.Index(m.flushing, set); j >= 0 {
		m.flushing = slices.Delete(m.flushing, j, j+1)
	}
}

// orUnflushed ORs into words the regions m was sent and has not flushed:
// written, being flushed, or being written (its region log's unflushed).
func (m *member) orUnflushed(words []uint64) {
	m.fmu.Lock()
	defer m.fmu.Unlock()
	m.written.orInto(words)
	for _, f := range m.flushing {
		f.orInto(words)
	}
	for i, k := range m.inflight {
		if k > 0 {
			words[i/64] |= 1 << (i % 64)
		}
	}
}

// unflushed returns the regions m may lose in a crash (orUnflushed).
func (m *member) unflushed(size int64) *regions {
	u := newRegions(size)
	m.orUnflushed(u.words)
	return u
}

func newMember(node string, size int64) *member {
	w := newRegions(size)
	return &member{node: node, state: OutOfSync, written: w, inflight: make([]int32, w.n)}
}

// begin counts a write of [off, off+n) to m as in flight; the caller
// calls it before the write is sent, and end once it is over.
func (m *member) begin(off, n int64) {
	first, last := span(off, n)
	m.fmu.Lock()
	for i := first; i <= min(last, len(m.inflight)-1); i++ {
		m.inflight[i]++
	}
	m.fmu.Unlock()
}

// end counts the write as written to m, whatever its outcome (one that
// failed may have been applied): unflushed there until the next flush.
func (m *member) end(off, n int64) {
	first, last := span(off, n)
	m.fmu.Lock()
	for i := first; i <= min(last, len(m.inflight)-1); i++ {
		m.inflight[i]--
	}
	m.written.add(off, n)
	m.fmu.Unlock()
}

// observe counts one write answered by m, begun at start.
func (m *member) observe(start time.Time) {
	m.writes.Add(1)
	m.writeNanos.Add(uint64(time.Since(start)))
}

// NewCoordinator opens the volume's replicas: it dials the in-sync remote
// ones and evicts those that cannot be reached (the claim's epoch fences
// the previous coordinator on each replica it reaches), and loads the
// region logs of the out-of-sync ones. It fails when no replica is in sync
// and reachable.
func NewCoordinator(ctx context.Context, cfg CoordinatorConfig) (*Coordinator, error) {
	if cfg.ResyncRate <= 0 {
		cfg.ResyncRate = 256 << 20
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 2 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if len(cfg.Replicas) == 0 || len(cfg.Replicas) > MaxReplicas {
		return nil, fmt.Errorf("%w: volume %q has %d replicas", ErrInvalid, cfg.Volume, len(cfg.Replicas))
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("replication: region log directory: %w", err)
	}
	c := &Coordinator{cfg: cfg, log: log.With("component", "coordinator", "volume", cfg.Volume), epoch: cfg.Epoch,
		act: newActivity(cfg.Size), converge: activitySet{all: true}, stop: make(chan struct{}), done: make(chan struct{})}
	var unreachable []*member
	for _, rc := range cfg.Replicas {
		m := newMember(rc.Node, cfg.Size)
		if rc.Node == cfg.Self {
			m.local = cfg.Local
		}
		switch {
		case !rc.InSync:
			if err := c.openLog(m, rc.LogValid); err != nil {
				c.closeMembers()
				return nil, err
			}
		case m.local != nil:
			m.state = InSync
		default:
			m.state = InSync
			cl, err := c.dial(ctx, rc.Node, cfg.Epoch)
			if err != nil {
				if errors.Is(err, ErrStaleEpoch) {
					c.members = append(c.members, m)
					c.closeMembers()
					return nil, fmt.Errorf("%w: replica on node %s has a newer epoch than %d: %w", ErrFenced, rc.Node, cfg.Epoch, err)
				}
				c.log.Warn("in-sync replica unreachable; evicting it", "node", rc.Node, "err", err)
				unreachable = append(unreachable, m)
			}
			m.client = cl
		}
		c.members = append(c.members, m)
	}
	for _, m := range unreachable {
		// What it misses is unknown here: the previous coordinator's last
		// writes may have reached some replicas and not others, and it may
		// have lost unflushed ones in a crash (Converge compares only the
		// in-sync replicas). So every region is in its log.
		if err := c.drop(m, fmt.Errorf("unreachable at open"), &[2]int64{0, cfg.Size}); err != nil {
			c.closeMembers()
			return nil, err
		}
	}
	// Likewise what the previous coordinator wrote since a replica's last
	// flush is in no region log here, and a crash of that replica would
	// lose it unseen: each in-sync replica is flushed before this one
	// serves (its hello fenced the older writes first), or evicted.
	for _, m := range slices.Clone(c.members) {
		if m.state != InSync {
			continue
		}
		if err := c.flushMember(m); err != nil {
			if derr := c.drop(m, fmt.Errorf("flush at open: %w", err), &[2]int64{0, cfg.Size}); derr != nil {
				c.closeMembers()
				return nil, derr
			}
		}
	}
	if c.inSync() == 0 {
		c.closeMembers()
		return nil, fmt.Errorf("%w for volume %q", ErrNoReplica, cfg.Volume)
	}
	if cfg.Unclean {
		// The replicas' activity logs say where they may differ; they
		// stay as they are until Converge has made them identical.
		if err := c.loadActivity(ctx); err != nil {
			c.closeMembers()
			return nil, err
		}
	} else {
		c.resetActivity()
	}
	go c.resyncLoop()
	return c, nil
}

// dial connects to node's replica. A replica smaller than the volume (a
// resize that did not reach it) cannot hold its data: it is unreachable.
func (c *Coordinator) dial(ctx context.Context, node string, epoch uint64) (*Client, error) {
	cl, err := c.cfg.Dial(ctx, node, epoch)
	if err == nil && cl.Size() < c.cfg.Size {
		cl.Close()
		return nil, fmt.Errorf("replica on node %s is %d bytes, the volume %d", node, cl.Size(), c.cfg.Size)
	}
	return cl, err
}

func (c *Coordinator) logPath(node string) string {
	return regionLogPath(c.cfg.StateDir, c.cfg.Volume, node)
}

func regionLogPath(stateDir, volume, node string) string {
	return filepath.Join(stateDir, volume+"@"+node+".rgn")
}

// ForgetRegionLog removes, durably, the region log (and resync mark) this
// node's StateDir holds for volume's replica on node. The cluster calls it
// before it records this node as the keeper of that replica's log: a file
// left from an earlier time (this node kept the log once, then another
// coordinator did) is stale, and a claim that crashed before the new
// coordinator rewrote it would leave the next one trusting it. A missing
// log means a full copy.
func ForgetRegionLog(stateDir, volume, node string) error {
	return forgetLogFiles(regionLogPath(stateDir, volume, node))
}

// forgetLogFiles removes, durably, the region log at path and its resync
// mark.
func forgetLogFiles(path string) error {
	return atomicfile.Remove(path, resyncMark(path))
}

// resyncMark is the file that says a replica's resync is under way (see
// resync): its log then lacks what the replica was sent and has not
// flushed.
func resyncMark(logPath string) string { return logPath + ".resyncing" }

// openLog loads m's region log, or starts a full one. A log whose replica
// was resyncing when the previous coordinator stopped uncleanly is not
// enough: the replica may have lost writes it was sent (unflushed, in a
// crash of its node) to regions the log no longer names.
func (c *Coordinator) openLog(m *member, valid bool) error {
	path := c.logPath(m.node)
	if _, err := os.Stat(resyncMark(path)); valid && c.cfg.Unclean && err == nil {
		c.log.Warn("the replica was resyncing when the previous coordinator stopped uncleanly; it gets a full copy", "node", m.node)
		valid = false
	}
	if valid {
		l, err := loadRegionLog(path, c.cfg.Size)
		if err != nil {
			c.log.Warn("region log unreadable; the replica gets a full copy", "node", m.node, "err", err)
		}
		m.log = l
		return nil
	}
	m.log = c.newLog(m)
	m.log.addAll()
	if err := m.log.sync(); err != nil {
		return err
	}
	clearResyncMark(m.log) // the log holds every region
	return nil
}

// newLog starts an empty region log for m.
func (c *Coordinator) newLog(m *member) *regionLog {
	return &regionLog{regions: newRegions(c.cfg.Size), path: c.logPath(m.node), epoch: c.epoch}
}

func (c *Coordinator) inSync() int {
	n := 0
	for _, m := range c.members {
		if m.state == InSync {
			n++
		}
	}
	return n
}

// undoomedInSync counts the in-sync replicas that are not doomed. REQUIRES c.mu.
func (c *Coordinator) undoomedInSync() int {
	n := 0
	for _, m := range c.members {
		if m.state == InSync && !m.doomed {
			n++
		}
	}
	return n
}

// Name, Size and ReadOnly make a Coordinator an NBD export.
func (c *Coordinator) Name() string   { return c.cfg.Volume }
func (c *Coordinator) Size() int64    { return c.cfg.Size }
func (c *Coordinator) ReadOnly() bool { return false }

// Fence stops all I/O from now on with err (wrapped in ErrFenced): the
// daemon calls it when the node's cluster lease is lost.
func (c *Coordinator) Fence(err error) {
	e := fmt.Errorf("%w: %w", ErrFenced, err)
	if c.fenced.CompareAndSwap(nil, &e) {
		c.log.Error("coordinator fenced: I/O stops", "err", err)
	}
}

func (c *Coordinator) fencedErr() error {
	if p := c.fenced.Load(); p != nil {
		return *p
	}
	return nil
}

// admit is fencedErr for a request about to run: it asks cfg.Live too.
func (c *Coordinator) admit() error {
	if err := c.fencedErr(); err != nil {
		return err
	}
	if c.cfg.Live != nil {
		if err := c.cfg.Live(); err != nil {
			c.Fence(err)
			return c.fencedErr()
		}
	}
	return nil
}

// Epoch is the epoch this coordinator holds.
func (c *Coordinator) Epoch() uint64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.epoch
}

// maxEpochRetries bounds how often a request refused for this
// coordinator's own older epoch (see ownStale) is sent again: each time
// needs another change of the in-sync set while it is in flight.
const maxEpochRetries = 8

// ownStale reports whether err refuses a request for an epoch no newer
// than the one this coordinator holds: an eviction or join raised the
// epoch while the request was in flight, and a later request of this
// coordinator reached the replica first (a replica applies requests in any
// order). The request was not applied, and may be sent again at the
// current epoch. A newer coordinator's epoch is above any this one holds
// (the cluster raises it at each claim, and refuses this one's changes
// after).
func (c *Coordinator) ownStale(err error) bool {
	var se *StaleEpochError
	return errors.As(err, &se) && se.Epoch <= c.Epoch()
}

// again sends a request again (op) while it is refused for this
// coordinator's own older epoch; err is the first try's outcome.
func (c *Coordinator) again(err error, op func() error) error {
	for i := 0; i < maxEpochRetries && c.ownStale(err); i++ {
		err = op()
	}
	return err
}

// opKind is a write-like command.
type opKind uint8

const (
	opWrite opKind = iota
	opTrim
	opZeroes
)

type writeOp struct {
	kind        opKind
	p           []byte
	off, n      int64
	fua, noHole bool
	// deferWB: this node's replica leaves the write's write-back to
	// StartWriteback (WriteAtDeferWriteback).
	deferWB bool
}

// target is one replica a request goes to, as it stood when the request
// began.
type target struct {
	m       *member
	state   ReplicaState
	local   *Local
	client  *Client
	pending Pending
	err     error
}

// do sends o to the target and waits for it.
func (t *target) do(o writeOp) error {
	if t.local != nil {
		return localOp(t.local, o)
	}
	return startOp(t.client, o).Wait(context.Background())
}

func (t *target) flush() error {
	if t.local != nil {
		return t.local.Flush()
	}
	return t.client.Flush(context.Background())
}

func (c *Coordinator) WriteAt(p []byte, off int64, fua bool) error {
	return c.write(writeOp{kind: opWrite, p: p, off: off, n: int64(len(p)), fua: fua})
}

// WriteAtDeferWriteback and StartWriteback let the NBD server start the
// write-back of this node's replica once it has answered the write
// (blockdev/nbd.DeferredWriteback), so that the reply does not wait for
// it; the remote replicas' servers do the same on their side.
func (c *Coordinator) WriteAtDeferWriteback(p []byte, off int64, fua bool) error {
	return c.write(writeOp{kind: opWrite, p: p, off: off, n: int64(len(p)), fua: fua, deferWB: true})
}

func (c *Coordinator) StartWriteback(off, n int64) {
	if c.cfg.Local != nil {
		c.cfg.Local.StartWriteback(off, n)
	}
}

func (c *Coordinator) Trim(off, n int64) error {
	return c.write(writeOp{kind: opTrim, off: off, n: n})
}

func (c *Coordinator) WriteZeroes(off, n int64, noHole bool) error {
	return c.write(writeOp{kind: opZeroes, off: off, n: n, noHole: noHole})
}

func (c *Coordinator) write(o writeOp) error {
	if err := c.admit(); err != nil {
		return err
	}
	c.clientIO()
	if o.off < 0 || o.n < 0 || o.off+o.n > c.cfg.Size {
		return fmt.Errorf("%w: [%d, %d) outside the volume's %d bytes", engine.ErrInvalid, o.off, o.off+o.n, c.cfg.Size)
	}
	c.locks.lock(o.off, o.n)
	defer c.locks.unlock(o.off, o.n)
	first, last := extentSpan(o.off, o.n)
	defer c.act.exit(first, last) // after every member.end below
	if !c.act.enter(first, last) {
		if err := c.mark(first, last); err != nil {
			return err
		}
	}

	var ts [MaxReplicas]target
	rng := [2]int64{o.off, o.n}
	n, err := c.targets(&ts, &rng)
	if err != nil {
		return err
	}
	start := time.Now()
	for i := range ts[:n] {
		t := &ts[i]
		if t.local == nil {
			t.pending = startOp(t.client, o)
		}
	}
	for i := range ts[:n] {
		if t := &ts[i]; t.local != nil {
			t.err = localOp(t.local, o)
			t.m.observe(start)
		}
	}
	for i := range ts[:n] {
		if t := &ts[i]; t.local == nil {
			t.err = t.pending.Wait(context.Background())
			t.m.observe(start)
		}
	}
	for i := range ts[:n] {
		t := &ts[i]
		t.err = c.again(t.err, func() error { return t.do(o) })
		t.m.end(o.off, o.n)
	}
	return c.settle(ts[:n], &rng)
}

// targets fills ts with the replicas a request goes to (in sync and
// resyncing) and, for a write of rng, before anything is sent, durably
// marks the range in the region log of every replica that will miss it
// and counts the write in flight to the others (the caller ends it).
func (c *Coordinator) targets(ts *[MaxReplicas]target, rng *[2]int64) (int, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.fencedErr(); err != nil {
		// Checked again under mu: Close drops the connections under it,
		// after it set this; a request must not go to fewer replicas.
		return 0, err
	}
	k := 0
	for _, m := range c.members {
		switch {
		case m.state == OutOfSync:
			if rng == nil {
				continue
			}
			if err := m.log.mark(rng[0], rng[1]); err != nil {
				return 0, fmt.Errorf("%w: replica on node %s is out of sync and its region log cannot be written: %w", engine.ErrIO, m.node, err)
			}
		case m.local != nil || m.client != nil:
			ts[k] = target{m: m, state: m.state, local: m.local, client: m.client}
			k++
		}
	}
	if rng == nil {
		return k, nil
	}
	for i := range ts[:k] {
		ts[i].m.begin(rng[0], rng[1]) // under c.mu: no drop misses it
	}
	return k, nil
}

// settle decides a request's outcome from its targets' errors: a stale
// epoch fences the coordinator; any other failure takes the replica out of
// the set (an eviction recorded in the cluster for an in-sync one) before
// the request is answered. rng is the range a write touched (nil: none).
//
// A write that fails may still have been applied by a resyncing replica
// and not by the in-sync ones (undo).
func (c *Coordinator) settle(ts []target, rng *[2]int64) error {
	err := c.settleTargets(ts, rng)
	if err != nil && rng != nil && c.fencedErr() == nil {
		c.undo(ts, rng, err)
	}
	return err
}

// undo makes each resyncing replica that applied a write which failed
// (cause), and that no in-sync replica applied, hold again what the
// in-sync replicas hold there: else it would join holding data they lack
// — also one whose join is unconfirmed, which cannot be evicted while etcd
// is unreachable. It copies the range from an in-sync replica (the caller
// holds the range lock); when that fails, the replica goes back out of
// sync with the range in its log, or is doomed. (When an in-sync replica
// applied the write, those that did not are evicted or doomed instead.)
func (c *Coordinator) undo(ts []target, rng *[2]int64, cause error) {
	if slices.ContainsFunc(ts, func(t target) bool { return t.state == InSync && t.err == nil }) {
		return
	}
	var src *member
	c.mu.RLock()
	for _, m := range c.members {
		if m.state == InSync && !m.doomed {
			src = m
			break
		}
	}
	c.mu.RUnlock()
	for i := range ts {
		t := &ts[i]
		if t.state != Resyncing || t.err != nil {
			continue
		}
		err := errors.New("no in-sync replica to copy from")
		if src != nil {
			err = c.copyRange(src, t.m, rng[0], rng[1])
		}
		if err == nil {
			continue
		}
		if derr := c.drop(t.m, fmt.Errorf("a write it applied failed (%v) and could not be undone: %w", cause, err), rng); derr != nil {
			c.doom([]*member{t.m}, rng)
		}
	}
}

func (c *Coordinator) settleTargets(ts []target, rng *[2]int64) error {
	ok := 0
	var firstErr, dropErr error
	var stuck []*member
	for i := range ts {
		t := &ts[i]
		if t.err == nil {
			if t.state == InSync {
				ok++
			}
			continue
		}
		if errors.Is(t.err, ErrStaleEpoch) {
			c.Fence(fmt.Errorf("replica on node %s: %w", t.m.node, t.err))
			return c.fencedErr()
		}
		if t.state == InSync && firstErr == nil {
			firstErr = t.err
		}
		if err := c.drop(t.m, t.err, rng); err != nil {
			dropErr = cmp.Or(dropErr, err)
			stuck = append(stuck, t.m)
		}
	}
	if dropErr != nil {
		if ok > 0 {
			c.repair(ts, stuck, rng)
		}
		return dropErr
	}
	if ok == 0 {
		return fmt.Errorf("%w: %w of volume %q completed it: %v", engine.ErrIO, ErrNoReplica, c.cfg.Volume, firstErr)
	}
	return nil
}

// repair copies rng to each of stuck — replicas that failed a write and
// could not be evicted — from an in-sync target that applied it, so that
// they hold what the others do (the caller holds the range lock). One
// that cannot be repaired is doomed.
func (c *Coordinator) repair(ts []target, stuck []*member, rng *[2]int64) {
	var src *member
	for i := range ts {
		if ts[i].state == InSync && ts[i].err == nil {
			src = ts[i].m
			break
		}
	}
	var failed []*member
	for _, m := range stuck {
		if rng == nil || src == nil || c.copyRange(src, m, rng[0], rng[1]) != nil {
			failed = append(failed, m)
		}
	}
	c.doom(failed, rng)
}

// doom marks ms, which failed a write (of rng; nil: a flush) another
// in-sync replica applied and could not be evicted, as doomed (see
// member.doomed), and keeps what each may lack in its missed set.
func (c *Coordinator) doom(ms []*member, rng *[2]int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range ms {
		if m.state == InSync || m.joinPending {
			if m.missed == nil {
				m.missed = newRegions(c.cfg.Size)
			}
			m.missed.union(m.unflushed(c.cfg.Size))
			if rng != nil {
				m.missed.add(rng[0], rng[1])
			}
			m.doomed = true
			c.log.Warn("replica missed a write the others hold and cannot be evicted now; it serves no read until it is", "node", m.node)
		}
	}
}

// drop takes m out of the set after cause, recording rng (when not nil) as
// a region it may miss. An in-sync replica is evicted through Membership —
// and if that fails, so does drop, and the request must fail. The last
// in-sync replica is never evicted (drop fails instead).
func (c *Coordinator) drop(m *member, cause error, rng *[2]int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch m.state {
	case OutOfSync:
		if rng != nil {
			if err := m.log.mark(rng[0], rng[1]); err != nil {
				return fmt.Errorf("%w: region log of the replica on node %s: %w", engine.ErrIO, m.node, err)
			}
		}
		return nil
	case Resyncing:
		if !m.joinPending {
			m.state, m.doomed = OutOfSync, false
			c.log.Warn("replica failed during its resync", "node", m.node, "err", cause)
			c.closeClient(m)
			err := c.keepMissed(m, rng)
			m.missed = nil // in its log now
			return err
		}
		// The cluster may record it in sync: evict it as such.
	}
	if m.state == InSync && (c.inSync() == 1 || !m.doomed && c.undoomedInSync() == 1) {
		// Nor is the last one that is not doomed: evicting it would leave
		// only replicas that lack a write it holds, and the next resync
		// would copy their older data over it.
		return fmt.Errorf("%w: the last in-sync replica, on node %s, failed: %w", engine.ErrIO, m.node, cause)
	}
	if err := c.fencedErr(); err != nil {
		return err // a fenced or closed coordinator changes nothing in the cluster
	}
	// The log first: once the cluster says out of sync, the log must
	// already hold what the replica may miss. The resync mark of a replica
	// whose join is unconfirmed stays until the eviction is recorded, and a
	// failed eviction puts the previous log back in the file: the replica
	// keeps taking writes that the new log does not name, and a coordinator
	// that trusted that file after a crash would skip them.
	prev := m.log
	m.log = c.newLog(m)
	if err := c.saveMissed(m, rng); err != nil {
		c.restoreLog(m, prev)
		return err
	}
	epoch, err := c.cfg.Membership.Evict(m.node)
	if err != nil {
		c.restoreLog(m, prev)
		return fmt.Errorf("%w: replica on node %s failed (%v) and its eviction could not be recorded: %w", engine.ErrIO, m.node, cause, err)
	}
	clearResyncMark(m.log)
	c.log.Warn("replica evicted from the in-sync set", "node", m.node, "epoch", epoch, "err", cause)
	m.state, m.joinPending, m.doomed, m.missed = OutOfSync, false, false, nil
	c.closeClient(m)
	c.setEpoch(epoch)
	return nil
}

// keepMissed adds to m's region log what m may have lost (its unflushed
// writes) and rng, durably. REQUIRES c.mu.
func (c *Coordinator) keepMissed(m *member, rng *[2]int64) error {
	if err := c.saveMissed(m, rng); err != nil {
		return err
	}
	clearResyncMark(m.log)
	return nil
}

// clearResyncMark removes l's resync mark once l holds all its replica may
// miss again. (A mark left by a failed removal costs a full copy after an
// unclean stop, nothing else.)
func clearResyncMark(l *regionLog) { os.Remove(resyncMark(l.path)) }

// restoreLog makes prev m's log again, in memory and in its file (none
// when prev is nil: the replica was in sync), after an eviction that was
// not recorded. If the file cannot be put back, the resync mark (left in
// place) still gives the replica a full copy after an unclean stop.
// REQUIRES c.mu.
func (c *Coordinator) restoreLog(m *member, prev *regionLog) {
	path := m.log.path
	m.log = prev
	var err error
	if prev == nil {
		err = atomicfile.Remove(path) // durably: after a crash it would be trusted
	} else {
		err = prev.rewrite()
	}
	if err != nil {
		c.log.Error("region log not restored after an unrecorded eviction", "node", m.node, "err", err)
	}
}

// saveMissed is keepMissed without clearing the resync mark. REQUIRES c.mu.
func (c *Coordinator) saveMissed(m *member, rng *[2]int64) error {
	m.log.union(m.unflushed(c.cfg.Size))
	if m.missed != nil {
		m.log.union(m.missed)
	}
	if rng != nil {
		m.log.add(rng[0], rng[1])
	}
	if err := m.log.sync(); err != nil {
		return fmt.Errorf("%w: region log of the replica on node %s: %w", engine.ErrIO, m.node, err)
	}
	return nil
}

// closeClient drops m's connection. REQUIRES c.mu.
func (c *Coordinator) closeClient(m *member) {
	if m.client != nil {
		m.client.Close()
		m.client = nil
	}
}

// setEpoch makes every later request carry e. REQUIRES c.mu.
func (c *Coordinator) setEpoch(e uint64) {
	if e <= c.epoch {
		return
	}
	c.epoch = e
	for _, m := range c.members {
		if m.local != nil {
			m.local.SetEpoch(e)
		}
		if m.client != nil {
			m.client.SetEpoch(e)
		}
	}
}

func startOp(cl *Client, o writeOp) Pending {
	switch o.kind {
	case opTrim:
		return cl.StartTrim(o.off, o.n, o.fua)
	case opZeroes:
		return cl.StartWriteZeroes(o.off, o.n, o.noHole, o.fua)
	}
	return cl.StartWriteAt(o.p, o.off, o.fua)
}

func localOp(l *Local, o writeOp) error {
	switch o.kind {
	case opTrim:
		return l.Trim(o.off, o.n, o.fua)
	case opZeroes:
		return l.WriteZeroes(o.off, o.n, o.noHole, o.fua)
	}
	if o.deferWB {
		return l.WriteAtDeferWriteback(o.p, o.off, o.fua)
	}
	return l.WriteAt(o.p, o.off, o.fua)
}

// Flush flushes every in-sync and resyncing replica, and succeeds when
// every in-sync one did (or was evicted).
func (c *Coordinator) Flush() error {
	if err := c.admit(); err != nil {
		return err
	}
	var ts [MaxReplicas]target
	var sets [MaxReplicas]*regions
	n, err := c.targets(&ts, nil)
	if err != nil {
		return err
	}
	for i := range ts[:n] {
		t := &ts[i]
		sets[i] = t.m.beginFlush()
		if t.local == nil {
			t.pending = t.client.StartFlush()
		}
	}
	for i := range ts[:n] {
		if t := &ts[i]; t.local != nil {
			t.err = t.local.Flush()
		}
	}
	for i := range ts[:n] {
		t := &ts[i]
		if t.local == nil {
			t.err = t.pending.Wait(context.Background())
		}
		t.err = c.again(t.err, t.flush)
		if t.err == nil {
			t.m.endFlush(sets[i])
		}
	}
	if err := c.settle(ts[:n], nil); err != nil {
		return err
	}
	return c.doomedErr()
}

// doomedErr fails a flush while an in-sync replica is doomed: it lacks a
// write the others applied (a write that failed), and the cluster still
// records it in sync. A flush acknowledged then would make durable, as the
// volume's content, what one replica of the recorded set does not hold —
// and a later coordinator, which knows nothing of the doom, may converge
// the replicas from that one (found by the simulation: a value read and
// flushed, gone after a takeover). Flushes succeed again once the doomed
// replica's eviction is recorded (resyncLoop retries it) or it is the last.
func (c *Coordinator) doomedErr() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, m := range c.members {
		// A doomed replica whose join is unconfirmed counts too: the
		// cluster may record it in sync.
		others := c.inSync()
		if m.state == InSync {
			others--
		}
		if m.doomed && (m.state == InSync || m.joinPending) && others > 0 {
			return fmt.Errorf("%w: the replica on node %s lacks a write the others hold and its eviction is not recorded yet: flushes fail until it is", engine.ErrIO, m.node)
		}
	}
	return nil
}

// ReadAt reads from this node's replica when it is in sync, otherwise from
// an in-sync remote one; a replica that fails the read is evicted and the
// read tried on another. It waits for the writes in flight to its range
// (the range lock): a write some replicas have applied and others not yet
// — which may still fail, and be lost with the replica that applied it —
// is never read.
func (c *Coordinator) ReadAt(p []byte, off int64) error {
	c.clientIO()
	c.locks.lock(off, int64(len(p)))
	defer c.locks.unlock(off, int64(len(p)))
	return c.read(p, off)
}

// read is ReadAt for a caller that holds the range lock.
func (c *Coordinator) read(p []byte, off int64) error {
	for retries := 0; ; retries++ {
		if err := c.admit(); err != nil {
			return err
		}
		m, local, cl := c.reader()
		if m == nil {
			return fmt.Errorf("%w: %w for volume %q", engine.ErrIO, ErrNoReplica, c.cfg.Volume)
		}
		var err error
		if local != nil {
			err = local.ReadAt(p, off)
		} else {
			err = cl.ReadAt(context.Background(), p, off)
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, engine.ErrInvalid) || errors.Is(err, ErrInvalid):
			return err // the request's fault, not the replica's
		case retries < maxEpochRetries && c.ownStale(err):
			continue
		case errors.Is(err, ErrStaleEpoch):
			c.Fence(fmt.Errorf("replica on node %s: %w", m.node, err))
			return c.fencedErr()
		}
		if derr := c.drop(m, err, nil); derr != nil {
			return derr
		}
	}
}

// reader picks the replica a read goes to.
func (c *Coordinator) reader() (*member, *Local, *Client) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var remote *member
	for _, m := range c.members {
		if m.state != InSync || (m.doomed && c.inSync() > 1) {
			continue
		}
		if m.local != nil {
			return m, m.local, nil
		}
		if remote == nil && m.client != nil {
			remote = m
		}
	}
	if remote == nil {
		return nil, nil, nil
	}
	return remote, nil, remote.client
}

// extenter is what an engine volume offers for NBD block status.
type extenter interface {
	Extents(off, n int64) ([]engine.Extent, error)
}

// Extents answers NBD block status from this node's replica when it is in
// sync; otherwise every byte is reported as data (always correct).
func (c *Coordinator) Extents(off, n int64) ([]engine.Extent, error) {
	m, local, _ := c.reader()
	if m != nil && local != nil {
		if e, ok := local.Volume().(extenter); ok {
			return e.Extents(off, n)
		}
	}
	return []engine.Extent{{Offset: off, Length: n, Kind: engine.ExtentData}}, nil
}

// ReplicaStatus is one replica as inspect shows it.
type ReplicaStatus struct {
	Node  string
	State ReplicaState
	// Missing is the bytes of regions it misses (out of sync, resyncing);
	// Copied and ToCopy the progress of a resync under way.
	Missing, Copied, ToCopy int64
	// Writes it answered, and their total time from send to reply.
	Writes       uint64
	WriteSeconds float64
}

// Status returns every replica's state, in the cluster's order.
func (c *Coordinator) Status() []ReplicaStatus {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]ReplicaStatus, 0, len(c.members))
	for _, m := range c.members {
		st := ReplicaStatus{Node: m.node, State: m.state, Writes: m.writes.Load(), WriteSeconds: time.Duration(m.writeNanos.Load()).Seconds()}
		if m.log != nil && m.state != InSync {
			st.Missing = int64(m.log.count()) * RegionSize
		}
		if m.state == Resyncing {
			st.Copied, st.ToCopy = m.copied.Load(), m.toCopy.Load()
		}
		out = append(out, st)
	}
	return out
}

// Close stops the resync and closes every replica; I/O after fails with
// ErrClosed. It does not flush: the daemon flushes before a clean release.
func (c *Coordinator) Close() error {
	closed := fmt.Errorf("%w: the coordinator of volume %q", ErrClosed, c.cfg.Volume)
	c.fenced.CompareAndSwap(nil, &closed)
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeMembers()
	return nil
}

// closeMembers closes every replica's connection and the local replica.
func (c *Coordinator) closeMembers() {
	for _, m := range c.members {
		c.closeClient(m)
		if m.local != nil {
			m.local.Close()
		}
	}
}

// AddReplica makes node's replica (new and empty, or stale) a member out of
// sync with every region to copy; the resync brings it in. The cluster
// must already record it (out of sync, its log kept here).
func (c *Coordinator) AddReplica(node string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.members) >= MaxReplicas {
		return fmt.Errorf("%w: volume %q has %d replicas already", ErrInvalid, c.cfg.Volume, len(c.members))
	}
	for _, m := range c.members {
		if m.node == node {
			return fmt.Errorf("%w: volume %q has a replica on node %s already", ErrInvalid, c.cfg.Volume, node)
		}
	}
	m := newMember(node, c.cfg.Size)
	if err := c.openLog(m, false); err != nil {
		return err
	}
	c.members = append(c.members, m)
	return nil
}

// RemoveReplica stops sending anything to node's replica and forgets it.
// The last in-sync replica cannot be removed.
func (c *Coordinator) RemoveReplica(node string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if m.node != node {
			continue
		}
		if m.state == InSync && c.inSync() == 1 {
			return fmt.Errorf("%w: the replica on node %s is the volume's last in-sync one", ErrInvalid, node)
		}
		if m.local != nil {
			return fmt.Errorf("%w: the replica on node %s is the coordinator's own; remove it through another node", ErrInvalid, node)
		}
		m.state = OutOfSync // a resync under way stops at its next region
		c.closeClient(m)
		if m.log != nil {
			forgetLogFiles(m.log.path)
		}
		c.members = append(c.members[:i:i], c.members[i+1:]...)
		return nil
	}
	return fmt.Errorf("%w: volume %q has no replica on node %s", ErrInvalid, c.cfg.Volume, node)
}

// Fenced reports whether the coordinator was fenced or closed (it serves
// nothing more).
func (c *Coordinator) Fenced() bool { return c.fencedErr() != nil }

// Quiesce runs fn at one point of the write stream: no write is in flight
// while it runs, and every write acknowledged before has been flushed on
// every in-sync replica. fn gets the nodes of the in-sync replicas (a
// snapshot taken on each of them then holds the same content).
func (c *Coordinator) Quiesce(fn func(inSync []string) error) error {
	c.locks.lock(0, c.cfg.Size)
	defer c.locks.unlock(0, c.cfg.Size)
	if err := c.Flush(); err != nil {
		return err
	}
	c.mu.RLock()
	var nodes []string
	for _, m := range c.members {
		if m.state == InSync {
			nodes = append(nodes, m.node)
		}
	}
	c.mu.RUnlock()
	return fn(nodes)
}
