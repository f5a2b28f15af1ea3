package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/sys/unix"
)

// The activity log: what a coordinator crash may leave different.
//
// While a coordinator serves, writes are in flight to every in-sync
// replica at once; if it crashes, some may have reached one replica and not
// another, and writes the replicas applied but did not flush may be lost by
// one and kept by another. The next coordinator must make the in-sync
// replicas identical before it serves (Converge), and to do that without
// comparing the whole volume it must know where they may differ. As DRBD's
// activity log does, each replica keeps that set durably: the coordinator
// marks an activity extent (ActivitySize) in the log of every replica that
// gets writes before it sends the first write to it, and gives an extent
// back only once it is settled. The invariant (kept by Coordinator.cover
// and activity.evict):
//
//	Every region a write was sent to and that some replica receiving writes
//	has not flushed since — written, being flushed, or in flight — lies in
//	an extent marked in the durable activity log of every in-sync replica.
//
// So after an unclean stop, the union of the in-sync replicas' logs holds
// every region where they may differ, and Converge compares only those.
// A replica joining the in-sync set gets the whole set first (join). The
// log is a hot set, not a per-write record: an extent stays marked while it
// is written, and costs one durable update of every replica's log when it
// is first marked; up to activityCap extents stay marked before settled ones
// (flushed everywhere, no write in flight) are given back, least recently
// used first (a CLOCK). A set that cannot shrink (nothing flushed) grows
// past the cap: the bound is then "what was written since the last flush".
//
// On the wire (MARK's payload, ACTIVITY's reply) and in the replica's file
// a set is encoded as
//
//	kind u32 (0: the extents listed, 1: every extent) | count u32 | count × extent u32, increasing
//
// big-endian; a reply is padded with zeros to the length asked for. The
// replica's file (StateDir/VOLUME.activity) is described at activityFile.
// A missing or damaged file means "every extent".

// ActivitySize is the unit of the activity log: 8 regions.
const ActivitySize = 8 * RegionSize

const (
	// activityCap is how many extents stay marked (8 GiB) before settled
	// ones are given back; a coordinator crash then compares at most that
	// much, plus what was written since the last flush.
	activityCap = 1024
	// activityEvictTo is how far an eviction shrinks the set, so that the
	// next marks find room without evicting again.
	activityEvictTo = activityCap * 7 / 8
	// maxActivityPayload bounds an encoded set; a larger one is sent as
	// "every extent".
	maxActivityPayload = 1 << 20

	activityList = 0
	activityAll  = 1

	activityMagic   = "CAIRNACT"
	activityVersion = 1
)

// activitySet is a decoded activity log.
type activitySet struct {
	all  bool
	exts []uint32 // increasing
}

// activityExtents is the number of activity extents of a volume of size bytes.
func activityExtents(size int64) int {
	return int((size + ActivitySize - 1) / ActivitySize)
}

// activityPayloadLen is the length of the largest encoding of a set of a
// volume of size bytes: what a coordinator asks a replica for.
func activityPayloadLen(size int64) int {
	return min(8+4*activityExtents(size), maxActivityPayload)
}

func appendActivity(b []byte, s activitySet) []byte {
	if s.all || 8+4*len(s.exts) > maxActivityPayload {
		b = be.AppendUint32(b, activityAll)
		return be.AppendUint32(b, 0)
	}
	b = be.AppendUint32(b, activityList)
	b = be.AppendUint32(b, uint32(len(s.exts)))
	for _, e := range s.exts {
		b = be.AppendUint32(b, e)
	}
	return b
}

// parseActivity decodes a set of a volume with n activity extents. Bytes
// after the set must be zero (a reply's padding).
func parseActivity(b []byte, n int) (activitySet, error) {
	if len(b) < 8 {
		return activitySet{}, fmt.Errorf("activity set of %d bytes", len(b))
	}
	kind, count := be.Uint32(b), be.Uint32(b[4:])
	rest := b[8:]
	var s activitySet
	switch {
	case kind == activityAll && count == 0:
		s.all = true
	case kind != activityList:
		return s, fmt.Errorf("activity set of unknown kind %d", kind)
	case uint64(count)*4 > uint64(len(rest)):
		return s, fmt.Errorf("activity set of %d extents in %d bytes", count, len(b))
	default:
		s.exts = make([]uint32, count)
		for i := range s.exts {
			e := be.Uint32(rest[4*i:])
			if int64(e) >= int64(n) || i > 0 && e <= s.exts[i-1] {
				return activitySet{}, fmt.Errorf("activity set: extent %d out of order or beyond the volume's %d", e, n)
			}
			s.exts[i] = e
		}
		rest = rest[4*count:]
	}
	if len(bytes.Trim(rest, "\x00")) != 0 {
		return activitySet{}, errors.New("activity set: bytes after the set")
	}
	return s, nil
}

// activityFile is a replica's durable activity log. It is rewritten in
// place (one pwrite and one fdatasync, no rename: a mark is on the write
// path): a crash in the middle of a rewrite leaves a log whose checksum
// fails, which reads as every extent — a longer comparison, never a
// shorter one. Layout: "CAIRNACT", version u32, the encoded set's length
// u32, the set, the xxhash64 of all before it; whatever follows (a longer
// earlier set) is ignored.
type activityFile struct {
	mu   sync.Mutex // one store at a time; the last one written is the last one stored
	path string
	f    *os.File // REQUIRES mu; opened by the first store
}

func newActivityFile(dir, volume string) *activityFile {
	return &activityFile{path: filepath.Join(dir, volume+".activity")}
}

const activityHead = len(activityMagic) + 8

// store replaces the log with s, durably.
func (f *activityFile) store(s activitySet) error {
	b := append([]byte(activityMagic), 0, 0, 0, activityVersion, 0, 0, 0, 0)
	b = appendActivity(b, s)
	be.PutUint32(b[activityHead-4:], uint32(len(b)-activityHead))
	b = be.AppendUint64(b, xxhash.Sum64(b))
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.open(); err != nil {
		return fmt.Errorf("replication: activity log: %w", err)
	}
	if _, err := f.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("replication: activity log: %w", err)
	}
	if err := unix.Fdatasync(int(f.f.Fd())); err != nil {
		return fmt.Errorf("replication: activity log: sync: %w", err)
	}
	return nil
}

// open opens the file, creating it durably (its directory synced) the
// first time. REQUIRES mu.
func (f *activityFile) open() error {
	if f.f != nil {
		return nil
	}
	file, err := os.OpenFile(f.path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		if file, err = os.OpenFile(f.path, os.O_RDWR|os.O_CREATE, 0o644); err == nil {
			err = syncDir(filepath.Dir(f.path))
		}
	}
	if err != nil {
		if file != nil {
			file.Close()
		}
		return err
	}
	f.f = file
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// load reads the log of a volume with n activity extents. A missing file
// (a replica that never had one) is every extent; so is a damaged one,
// with an error saying why.
func (f *activityFile) load(n int) (activitySet, error) {
	f.mu.Lock()
	b, err := os.ReadFile(f.path)
	f.mu.Unlock()
	all := activitySet{all: true}
	if errors.Is(err, fs.ErrNotExist) {
		return all, nil
	}
	if err != nil {
		return all, fmt.Errorf("replication: activity log: %w", err)
	}
	if len(b) < activityHead || string(b[:len(activityMagic)]) != activityMagic || be.Uint32(b[len(activityMagic):]) != activityVersion {
		return all, fmt.Errorf("replication: activity log %s: not a version %d log", f.path, activityVersion)
	}
	end := activityHead + int(be.Uint32(b[activityHead-4:]))
	if end > len(b)-8 || end < activityHead {
		return all, fmt.Errorf("replication: activity log %s: truncated", f.path)
	}
	if xxhash.Sum64(b[:end]) != be.Uint64(b[end:]) {
		return all, fmt.Errorf("replication: activity log %s: checksum mismatch", f.path)
	}
	s, err := parseActivity(b[activityHead:end], n)
	if err != nil {
		return all, fmt.Errorf("replication: activity log %s: %w", f.path, err)
	}
	return s, nil
}

// activity is a coordinator's side of the log: the extents marked on its
// replicas. A write calls cover before it is sent and uncover once it has
// ended on every replica (member.end); cover marks what is not marked yet.
type activity struct {
	// mu serializes marks and evictions; the write path takes it only
	// to mark. Lock order: mu, then Coordinator.mu.
	mu sync.Mutex
	// marked: an extent is in the durable log of every replica receiving
	// writes. Set under mu once its mark is stored everywhere; cleared
	// under mu by evict.
	marked []atomic.Uint64
	// used: CLOCK reference bits, set by writes, cleared by evict's hand.
	used []atomic.Uint64
	// users: writes between cover and uncover, per extent. evict never
	// gives back an extent with users (see evict for the handshake).
	users []atomic.Int32
	count int // marked extents; REQUIRES mu
	hand  int // the CLOCK hand; REQUIRES mu
	n     int // extents in the volume

	// pending: extents writes wait to have marked. The first to get mu
	// marks them all in one update of the logs (a group commit), so
	// writes to many new extents at once do not mark one by one.
	pmu     sync.Mutex
	pending []int // REQUIRES pmu
}

func newActivity(size int64) *activity {
	n := activityExtents(size)
	w := (n + 63) / 64
	return &activity{marked: make([]atomic.Uint64, w), used: make([]atomic.Uint64, w), users: make([]atomic.Int32, n), n: n}
}

func bit(words []atomic.Uint64, e int) bool { return words[e/64].Load()&(1<<(e%64)) != 0 }

// extentSpan returns the activity extents [first, last] that [off, off+n)
// touches.
func extentSpan(off, n int64) (first, last int) {
	if n <= 0 {
		n = 1
	}
	return int(off / ActivitySize), int((off + n - 1) / ActivitySize)
}

// enter counts a write to [first, last] as a user of its extents and
// reports whether all of them are marked. The count is taken before the
// marks are read: see evict.
func (a *activity) enter(first, last int) bool {
	all := true
	for e := first; e <= min(last, a.n-1); e++ {
		a.users[e].Add(1)
		if !bit(a.marked, e) {
			all = false
		} else if !bit(a.used, e) {
			a.used[e/64].Or(1 << (e % 64))
		}
	}
	return all
}

func (a *activity) exit(first, last int) {
	for e := first; e <= min(last, a.n-1); e++ {
		a.users[e].Add(-1)
	}
}

// set returns the marked extents, with extra ones added. REQUIRES mu.
func (a *activity) set(extra []int) activitySet {
	var s activitySet
	for e := 0; e < a.n; e++ {
		if bit(a.marked, e) {
			s.exts = append(s.exts, uint32(e))
		}
	}
	for _, e := range extra {
		s.exts = append(s.exts, uint32(e))
	}
	slices.Sort(s.exts)
	s.exts = slices.Compact(s.exts)
	return s
}

// setMarked marks extents, already stored in every replica's log.
// REQUIRES mu.
func (a *activity) setMarked(exts []int) {
	for _, e := range exts {
		if !bit(a.marked, e) {
			a.marked[e/64].Or(1 << (e % 64))
			a.count++
		}
	}
}

// evict gives back marked extents until count is at most target, least
// recently used first, taking only settled ones: no write between cover
// and uncover (users), and no region that a replica receiving writes has
// not flushed (unflushed, computed by the caller's function after the
// candidates' marks are cleared). REQUIRES mu.
//
// The handshake with enter: a write adds to users and then reads the mark;
// evict clears the mark and then reads users. With Go's sequentially
// consistent atomics one of the two sees the other: the write either sees
// the mark cleared (and marks it again, waiting for mu), or evict sees the
// write and keeps the extent. A write that already uncovered has ended on
// every replica (member.end), so its region is in unflushed when evict
// computes it after clearing the marks.
func (a *activity) evict(target int, unflushed func() []uint64) {
	if a.count <= target {
		return
	}
	var cands []int
	for scanned := 0; scanned < 2*a.n && a.count-len(cands) > target; scanned++ {
		e := a.hand
		a.hand = (a.hand + 1) % a.n
		switch {
		case !bit(a.marked, e):
		case bit(a.used, e):
			a.used[e/64].And(^uint64(1 << (e % 64))) // a second chance
		default:
			a.marked[e/64].And(^uint64(1 << (e % 64)))
			if a.users[e].Load() != 0 {
				a.marked[e/64].Or(1 << (e % 64))
				continue
			}
			cands = append(cands, e)
		}
	}
	if len(cands) == 0 {
		return
	}
	words := unflushed()
	for _, e := range cands {
		lo, hi := e*(ActivitySize/RegionSize), (e+1)*(ActivitySize/RegionSize)
		settled := true
		for r := lo; r < hi && r/64 < len(words); r++ {
			if words[r/64]&(1<<(r%64)) != 0 {
				settled = false
				break
			}
		}
		if settled {
			a.count--
		} else {
			a.marked[e/64].Or(1 << (e % 64))
		}
	}
}

// contains reports whether s holds extent e.
func (s activitySet) contains(e int) bool {
	if s.all {
		return true
	}
	_, ok := slices.BinarySearch(s.exts, uint32(e))
	return ok
}

// union is the set of extents in s or o.
func (s activitySet) union(o activitySet) activitySet {
	if s.all || o.all {
		return activitySet{all: true}
	}
	u := activitySet{exts: append(append([]uint32(nil), s.exts...), o.exts...)}
	slices.Sort(u.exts)
	u.exts = slices.Compact(u.exts)
	return u
}

// mark adds the extents [first, last] that are not marked yet to the
// activity log of every replica receiving writes, giving back settled
// ones first when the log is full. It fails, and nothing may be sent to
// those extents, when an in-sync replica could not store the log and could
// not be evicted (settle).
func (c *Coordinator) mark(first, last int) error {
	a := c.act
	last = min(last, a.n-1)
	a.pmu.Lock()
	for e := first; e <= last; e++ {
		a.pending = append(a.pending, e)
	}
	a.pmu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pmu.Lock()
	waiting := a.pending
	a.pending = nil
	a.pmu.Unlock()
	var need []int
	// Its own extents too: a failed mark consumed the pending ones.
	for e := first; e <= last; e++ {
		waiting = append(waiting, e)
	}
	slices.Sort(waiting)
	for _, e := range slices.Compact(waiting) {
		if !bit(a.marked, e) {
			need = append(need, e)
		}
	}
	if len(need) == 0 {
		return nil // marked by another write meanwhile
	}
	if a.count+len(need) > activityCap {
		a.evict(max(activityEvictTo-len(need), 0), c.unflushedWords)
	}
	if err := c.storeActivity(a.set(need)); err != nil {
		return err
	}
	a.setMarked(need)
	return nil
}

// unflushedWords is the bitmap of the regions some replica receiving
// writes has been sent and not flushed (member.orUnflushed).
func (c *Coordinator) unflushedWords() []uint64 {
	words := make([]uint64, (activityExtents(c.cfg.Size)*(ActivitySize/RegionSize)+63)/64)
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, m := range c.members {
		if m.state != OutOfSync {
			m.orUnflushed(words)
		}
	}
	return words
}

// storeActivity makes s the activity log of every replica receiving
// writes; a replica that fails is taken out of the set (settle), and it
// fails when an in-sync one could not be. REQUIRES act.mu.
func (c *Coordinator) storeActivity(s activitySet) error {
	payload := appendActivity(nil, s)
	var ts [MaxReplicas]target
	n, err := c.targets(&ts, nil)
	if err != nil {
		return err
	}
	for i := range ts[:n] {
		if t := &ts[i]; t.local == nil {
			t.pending = t.client.StartMark(payload)
		}
	}
	for i := range ts[:n] {
		t := &ts[i]
		if t.local != nil {
			t.err = t.local.setActivity(s)
		} else {
			t.err = t.pending.Wait(context.Background())
		}
		t.err = c.again(t.err, func() error { return t.storeActivity(s, payload) })
	}
	return c.settle(ts[:n], nil)
}

func (t *target) storeActivity(s activitySet, payload []byte) error {
	if t.local != nil {
		return t.local.setActivity(s)
	}
	return t.client.StartMark(payload).Wait(context.Background())
}

// sendActivity gives the whole activity log to m, which is about to join
// the in-sync set: while it resynced it got writes to extents marked
// before it started, and once in the set its log must name them too.
// REQUIRES act.mu.
func (c *Coordinator) sendActivity(m *member) error {
	s := c.act.set(nil)
	c.mu.RLock()
	local, cl := m.local, m.client
	c.mu.RUnlock()
	t := target{m: m, local: local, client: cl}
	if local == nil && cl == nil {
		return fmt.Errorf("replica on node %s has no connection", m.node)
	}
	return c.again(t.storeActivity(s, appendActivity(nil, s)), func() error { return t.storeActivity(s, appendActivity(nil, s)) })
}

// resetActivity replaces the replicas' activity logs with this
// coordinator's (empty at first): they may name extents of an earlier
// coordinator's that no longer need comparing — after a clean stop, or
// once Converge made the replicas identical. A failure only leaves a log
// naming more than it must.
func (c *Coordinator) resetActivity() {
	c.act.mu.Lock()
	defer c.act.mu.Unlock()
	if err := c.storeActivity(c.act.set(nil)); err != nil {
		c.log.Warn("could not reset the replicas' activity logs; a crash may compare more of the volume than it must", "err", err)
	}
}

// loadActivity reads every in-sync replica's activity log into
// c.converge: the union is where they may differ. A log that cannot be
// read is every extent.
func (c *Coordinator) loadActivity(ctx context.Context) error {
	u := activitySet{}
	for _, m := range c.members {
		if m.state != InSync {
			continue
		}
		var s activitySet
		var err error
		if m.local != nil {
			s, err = m.local.activity()
		} else if m.client != nil {
			buf := make([]byte, activityPayloadLen(c.cfg.Size))
			if err = m.client.Activity(ctx, buf); err == nil {
				s, err = parseActivity(buf, c.act.n)
			}
		} else {
			continue
		}
		if errors.Is(err, ErrStaleEpoch) {
			return fmt.Errorf("%w: replica on node %s: %w", ErrFenced, m.node, err)
		}
		if err != nil {
			c.log.Warn("activity log of a replica unreadable; its whole volume is compared", "node", m.node, "err", err)
			s = activitySet{all: true}
		}
		u = u.union(s)
	}
	c.converge = u
	return nil
}
