package replication

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/atomicfile"
)

// Resync: an out-of-sync replica whose node answers again is dialled at the
// current epoch and becomes Resyncing — from then on it gets every new
// write — and the regions its log holds are copied to it, one at a time,
// each under the range lock so that no client write to the region is in
// flight while it is copied. Regions are marked in the log only while the
// replica is OutOfSync (before a write is sent, under the coordinator's
// read lock; the switch to Resyncing takes the write lock), so once the log
// is empty the replica holds every acknowledged write. It is then flushed
// and joins the set through Membership (an epoch bump). A failure of the
// replica puts it back to OutOfSync with its log (what was copied is
// cleared from the log, durably every few regions, so a restart of the
// coordinator resumes instead of starting over).

// resyncLoop tries each out-of-sync replica every RetryInterval until
// Close, and dials the last in-sync one again when its connection failed.
func (c *Coordinator) resyncLoop() {
	defer close(c.done)
	ticks, stop := c.cfg.Clock.NewTicker(c.cfg.RetryInterval)
	defer stop()
	for {
		c.mu.RLock()
		var todo []*member
		var rejoin []*member
		var last *member     // the last in-sync replica, its connection failed
		var doomed []*member // to evict (member.doomed)
		for _, m := range c.members {
			switch {
			case m.doomed:
				doomed = append(doomed, m)
			case m.state == OutOfSync:
				todo = append(todo, m)
			case m.state == Resyncing && m.joinPending:
				rejoin = append(rejoin, m)
			case m.state == InSync && m.local == nil && (m.client == nil || m.client.Err() != nil) && c.inSync() == 1:
				last = m
			}
		}
		c.mu.RUnlock()
		for _, m := range doomed {
			c.mu.Lock()
			last := m.state == InSync && c.inSync() == 1
			if last {
				m.doomed, m.missed = false, nil // it holds the newest data there is now
			}
			c.mu.Unlock()
			if last {
				continue
			}
			if err := c.drop(m, errors.New("it missed a write the other in-sync replicas hold"), nil); err != nil && !c.stopping() {
				c.log.Info("eviction not recorded; retrying", "node", m.node, "err", err, "in", c.cfg.RetryInterval)
			}
		}
		if last != nil && (c.fencedErr() != nil || !c.reconnect(last)) {
			todo = nil // no replica to copy from
		}
		for _, m := range rejoin {
			if err := c.join(m, c.cfg.Clock.Now()); err != nil && !c.stopping() {
				c.log.Warn("replica's join not confirmed; retrying", "node", m.node, "err", err, "in", c.cfg.RetryInterval)
			}
		}
		for _, m := range todo {
			if err := c.resync(m); err != nil && !c.stopping() {
				c.log.Info("resync not done; retrying", "node", m.node, "err", err, "in", c.cfg.RetryInterval)
			}
		}
		select {
		case <-c.stop:
			return
		case <-ticks:
		}
	}
}

// reconnect dials m, the last in-sync replica, whose connection failed. It
// cannot be evicted (it holds the newest data there is), so the volume
// fails I/O until it answers again; then it serves as it is. (An in-sync
// replica that is not the last is evicted by the I/O that finds it failed,
// with what it may have lost in a crash in its log, and resyncs.) It
// reports whether m is connected.
func (c *Coordinator) reconnect(m *member) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	cl, err := c.dial(ctx, m.node, c.Epoch())
	cancel()
	if err != nil {
		if errors.Is(err, ErrStaleEpoch) { // a newer coordinator's
			c.Fence(fmt.Errorf("replica on node %s: %w", m.node, err))
		}
		c.log.Debug("last in-sync replica unreachable", "node", m.node, "err", err)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.state != InSync || c.inSync() != 1 || (m.client != nil && m.client.Err() == nil) || c.stopping() {
		cl.Close()
		return m.state == InSync
	}
	if err := c.markLost(m); err != nil {
		cl.Close()
		c.log.Error("last in-sync replica answers again, but the region logs cannot be written", "node", m.node, "err", err)
		return false
	}
	c.closeClient(m)
	cl.SetEpoch(c.epoch)
	m.client = cl
	c.log.Warn("last in-sync replica reconnected; the volume serves again", "node", m.node)
	return true
}

// markLost puts the regions m may have lost — its writes no completed
// flush covered, gone if it crashed — in the log of every other replica:
// one that took them while resyncing, or flushed them when m failed to,
// holds data m (the newest there is now) may not, and gets those regions
// copied from m again. A resyncing replica goes back out of sync for it.
// REQUIRES c.mu.
func (c *Coordinator) markLost(m *member) error {
	for _, o := range c.members {
		if o == m || o.state == InSync {
			continue
		}
		if o.state == Resyncing {
			if o.joinPending {
				// The cluster may record it in sync (a join that failed
				// after etcd committed it): record it out first, under the
				// cover of its resync mark (a crash before its log is
				// saved gives it a full copy), or a later coordinator
				// would take it for a replica holding what m holds.
				if err := c.fencedErr(); err != nil {
					return err
				}
				epoch, err := c.cfg.Membership.Evict(o.node)
				if err != nil {
					return fmt.Errorf("%w: replica on node %s, whose join is unconfirmed, could not be recorded out of sync: %w", engine.ErrIO, o.node, err)
				}
				c.setEpoch(epoch)
			}
			o.state, o.joinPending = OutOfSync, false
			c.closeClient(o)
			if err := c.keepMissed(o, nil); err != nil {
				return err
			}
		}
		o.log.union(m.unflushed(c.cfg.Size))
		if err := o.log.sync(); err != nil {
			return fmt.Errorf("%w: region log of the replica on node %s: %w", engine.ErrIO, o.node, err)
		}
	}
	return nil
}

func (c *Coordinator) stopping() bool {
	select {
	case <-c.stop:
		return true
	default:
		return false
	}
}

// resync brings m back into the set; see above.
func (c *Coordinator) resync(m *member) error {
	if c.fencedErr() != nil {
		return c.fencedErr()
	}
	var cl *Client
	if m.local == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var err error
		cl, err = c.dial(ctx, m.node, c.Epoch())
		cancel()
		if err != nil {
			if errors.Is(err, ErrStaleEpoch) { // a newer coordinator's
				c.Fence(fmt.Errorf("replica on node %s: %w", m.node, err))
				return c.fencedErr()
			}
			c.log.Debug("out-of-sync replica unreachable", "node", m.node, "err", err)
			return nil
		}
	}
	// From the switch to Resyncing, the replica gets writes its log will
	// not name: the mark tells a coordinator that restarts after a crash
	// (openLog). Made before the switch, removed once the log holds all it
	// may miss again (join, keepMissed).
	if err := atomicfile.WriteFile(resyncMark(m.log.path), nil, 0o644); err != nil {
		if cl != nil {
			cl.Close()
		}
		return fmt.Errorf("%w: resync mark of the replica on node %s: %w", engine.ErrIO, m.node, err)
	}
	c.mu.Lock()
	if m.state != OutOfSync || c.stopping() || !slices.Contains(c.members, m) {
		c.mu.Unlock()
		if cl != nil {
			cl.Close()
		}
		return nil
	}
	m.client, m.state = cl, Resyncing
	if cl != nil {
		cl.SetEpoch(c.epoch)
	}
	m.fmu.Lock()
	m.written, m.flushing = newRegions(c.cfg.Size), nil // put into its log when it was dropped
	m.fmu.Unlock()
	m.copied.Store(0)
	m.toCopy.Store(int64(m.log.count()) * RegionSize)
	c.mu.Unlock()
	c.log.Info("resync started", "node", m.node, "bytes", m.toCopy.Load())
	start := c.cfg.Clock.Now()

	buf := drive.GetBuffer(RegionSize)
	defer drive.PutBuffer(buf)
	copied := 0
	var pace pacer
	for i := m.log.next(0); i >= 0; i = m.log.next(i + 1) {
		if c.stopping() {
			// The copies since the last flush of m are off its log but
			// not durable on it: they go back in before the log is saved,
			// or a clean stop (whose final flush may have preceded them)
			// followed by a crash of m's node would leave a log that
			// skips regions m lost.
			m.log.union(m.unflushed(c.cfg.Size))
			return m.log.sync()
		}
		wrote, err := c.copyRegion(m, i, buf.B[:RegionSize])
		if err != nil {
			// The target failed (and was dropped) or no in-sync replica
			// could be read: either way it waits out of sync for the next
			// try, rather than resyncing with nothing to copy from.
			if derr := c.drop(m, err, nil); derr != nil {
				return derr
			}
			return err
		}
		m.copied.Add(RegionSize)
		if copied++; copied%64 == 0 {
			// Progress for a restart of the coordinator: the copies are
			// made durable on the target before the log forgets them
			// (until then they are in m.written, which a failure of the
			// target puts back into the log).
			if err := c.flushMember(m); err != nil {
				return c.drop(m, err, nil)
			}
			m.log.sync() // losing it only copies again
		}
		if wrote {
			// Only data moved counts: a thin volume's zero regions cost a
			// read, and the target a deallocation.
			c.throttle(&pace, RegionSize)
		}
	}
	if err := c.flushMember(m); err != nil {
		return c.drop(m, err, nil)
	}
	return c.join(m, start)
}

// join records a caught-up replica in the in-sync set. A Join that fails
// may still have been recorded (a timeout after etcd committed): the
// replica then stays Resyncing — getting every write, so it is in sync in
// fact — with joinPending, so that a failure of it goes through an
// eviction as an in-sync replica's does, and the join is tried again.
func (c *Coordinator) join(m *member, start time.Time) error {
	// No mark changes the activity log from here to the join: the
	// replica's log is the others' when it enters the set.
	c.act.mu.Lock()
	defer c.act.mu.Unlock()
	if err := c.sendActivity(m); err != nil {
		err = fmt.Errorf("caught up but could not be given the activity log: %w", err)
		if derr := c.drop(m, err, nil); derr != nil {
			return derr
		}
		return fmt.Errorf("replica on node %s %w", m.node, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.state != Resyncing || m.log.count() != 0 {
		return fmt.Errorf("replica on node %s fell out during its resync", m.node)
	}
	if m.doomed {
		// It missed a write the in-sync replicas applied (a retried join
		// of an unconfirmed one): it is evicted and resyncs first.
		return fmt.Errorf("replica on node %s missed a write and waits for its eviction", m.node)
	}
	epoch, err := c.cfg.Membership.Join(m.node)
	if err != nil {
		m.joinPending = true
		return fmt.Errorf("replica on node %s caught up but its join of the in-sync set was not confirmed: %w", m.node, err)
	}
	m.state, m.joinPending = InSync, false
	c.setEpoch(epoch)
	forgetLogFiles(m.log.path) // in sync: a log left by a failed removal is never read
	m.log = nil
	c.log.Info("replica back in sync", "node", m.node, "epoch", epoch, "copied", m.copied.Load(), "seconds", c.cfg.Clock.Now().Sub(start).Seconds())
	return nil
}

// A resync yields to client I/O, as DRBD's does (its c-min-rate): while a
// client read or wrote within resyncYieldWindow, the copy runs at
// ResyncRate/resyncYieldDivisor, so that it does not take the CPU and the
// target's drive from the client (on small machines a copy into the page
// cache costs milliseconds of CPU per MiB); an idle volume is copied at
// the full rate. (Measured: BENCHMARKS.md, replication, client latency
// during a rebuild.)
const (
	resyncYieldWindow  = 100 * time.Millisecond
	resyncYieldDivisor = 8
)

// clientIO records that a client reads or writes now. It stores only
// when the record is older than a tenth of the window: every request
// reads the shared word, but few write it, so the two cores serving
// requests do not pass its cache line back and forth.
func (c *Coordinator) clientIO() {
	now := c.cfg.Clock.Now().UnixNano()
	if now-c.lastClientIO.Load() >= int64(resyncYieldWindow/10) {
		c.lastClientIO.Store(now)
	}
}

// pacer keeps a copy to its rate: each piece copied moves next on by the
// piece's time at the rate of the moment; a copy that fell behind gets no
// credit for it.
type pacer struct{ next time.Time }

// throttle sleeps after n bytes were copied so that the copy keeps to
// ResyncRate, or to its yield while clients do I/O.
func (c *Coordinator) throttle(p *pacer, n int64) {
	now := c.cfg.Clock.Now()
	rate := c.cfg.ResyncRate
	if now.UnixNano()-c.lastClientIO.Load() < int64(resyncYieldWindow) {
		rate = max(rate/resyncYieldDivisor, 1)
	}
	if p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	if d := p.next.Sub(now); d > 0 {
		select {
		case <-c.cfg.Clock.After(d):
		case <-c.stop:
		}
	}
}

// copyRegion copies region i from an in-sync replica to m under the range
// lock, and takes it off m's log. A region that reads as zeros is written
// as zeros without allocating (thin: a full copy writes only what holds
// data). A failure of the source evicts it and tries another; a failure of
// m drops m.
func (c *Coordinator) copyRegion(m *member, i int, buf []byte) (wrote bool, err error) {
	off := int64(i) * RegionSize
	n := min(RegionSize, c.cfg.Size-off)
	buf = buf[:n]
	c.locks.lock(off, n)
	defer c.locks.unlock(off, n)
	c.mu.RLock()
	state, cl := m.state, m.client
	c.mu.RUnlock()
	if state != Resyncing {
		return false, fmt.Errorf("replica on node %s fell out during its resync", m.node)
	}
	if err := c.read(buf, off); err != nil {
		return false, fmt.Errorf("no in-sync replica could be read to copy from: %w", err)
	}
	zero := isZero(buf)
	put := func() error {
		switch {
		case m.local != nil && zero:
			return m.local.WriteZeroes(off, n, false, false)
		case m.local != nil:
			return m.local.WriteAt(buf, off, false)
		case zero:
			return cl.WriteZeroes(context.Background(), off, n, false, false)
		}
		return cl.WriteAt(context.Background(), buf, off, false)
	}
	m.begin(off, n) // then in m.written: not durable there until it flushes
	err = c.again(put(), put)
	m.end(off, n)
	if err != nil {
		if errors.Is(err, ErrStaleEpoch) {
			c.Fence(fmt.Errorf("replica on node %s: %w", m.node, err))
		}
		if derr := c.drop(m, err, nil); derr != nil {
			return false, derr
		}
		return false, fmt.Errorf("copy to the replica on node %s: %w", m.node, err)
	}
	// Off the log only while m still resyncs: once dropped, its log holds
	// what it may miss (this region among it), and that mark must stay.
	c.mu.RLock()
	still := m.state == Resyncing
	if still {
		m.log.remove(i)
	}
	c.mu.RUnlock()
	if !still {
		return false, fmt.Errorf("replica on node %s fell out during its resync", m.node)
	}
	return !zero, nil
}

// flushMember flushes m (a resyncing replica, or an in-sync one at open):
// what it was sent before is then durable on it, and its log need no
// longer keep it.
func (c *Coordinator) flushMember(m *member) error {
	cl := c.clientOf(m)
	if m.local == nil && cl == nil {
		return fmt.Errorf("replica on node %s fell out during its resync", m.node)
	}
	set := m.beginFlush()
	flush := func() error {
		if m.local != nil {
			return m.local.Flush()
		}
		return cl.Flush(context.Background())
	}
	err := c.again(flush(), flush)
	if err == nil {
		m.endFlush(set)
	}
	return err
}

var zeroRegion = make([]byte, RegionSize)

func isZero(p []byte) bool { return bytes.Equal(p, zeroRegion[:len(p)]) }

// sum is m's checksum of a region (verify, convergence).
func (c *Coordinator) sum(m *member, off, n int64) (s uint64, err error) {
	get := func() error {
		if m.local != nil {
			s, err = m.local.Checksum(off, n)
			return err
		}
		cl := c.clientOf(m)
		if cl == nil {
			return fmt.Errorf("replica on node %s is not connected", m.node)
		}
		s, err = cl.Checksum(context.Background(), off, n)
		return err
	}
	err = c.again(get(), get)
	return s, err
}

// clientOf returns m's connection (nil once it was dropped).
func (c *Coordinator) clientOf(m *member) *Client {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return m.client
}

// readFrom and writeTo move a region between one replica and the buffer.
func (c *Coordinator) readFrom(m *member, p []byte, off int64) error {
	get := func() error {
		if m.local != nil {
			return m.local.ReadAt(p, off)
		}
		cl := c.clientOf(m)
		if cl == nil {
			return fmt.Errorf("replica on node %s is not connected", m.node)
		}
		return cl.ReadAt(context.Background(), p, off)
	}
	return c.again(get(), get)
}

func (c *Coordinator) writeTo(m *member, p []byte, off int64) error {
	put := func() error {
		if m.local != nil {
			return m.local.WriteAt(p, off, false)
		}
		cl := c.clientOf(m)
		if cl == nil {
			return fmt.Errorf("replica on node %s is not connected", m.node)
		}
		return cl.WriteAt(context.Background(), p, off, false)
	}
	m.begin(off, int64(len(p))) // unflushed there until Converge's flush
	err := c.again(put(), put)
	m.end(off, int64(len(p)))
	return err
}

// copyRange copies [off, off+n) from src to dst, a region at a time.
func (c *Coordinator) copyRange(src, dst *member, off, n int64) error {
	buf := drive.GetBuffer(RegionSize)
	defer drive.PutBuffer(buf)
	for end := off + n; off < end; {
		k := min(RegionSize-off%RegionSize, end-off)
		if err := c.readFrom(src, buf.B[:k], off); err != nil {
			return fmt.Errorf("reading node %s: %w", src.node, err)
		}
		if err := c.writeTo(dst, buf.B[:k], off); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// Difference is a region where in-sync replicas differ.
type Difference struct {
	Offset, Length int64
	// Sums: each replica's checksum of the region, by node.
	Sums map[string]uint64
}

// Verify compares the in-sync replicas region by region (checksums computed
// on each replica; each region under the range lock, so client writes go on
// around it) and returns the regions where they differ. progress, when not
// nil, is called with the bytes compared so far.
func (c *Coordinator) Verify(ctx context.Context, progress func(done, total int64)) ([]Difference, error) {
	return c.compare(ctx, activitySet{all: true}, false, progress)
}

// Converge makes the in-sync replicas identical where they differ, copying
// each differing region from the first in-sync replica (this node's when
// it has one): the step after a coordinator crash, when writes since the
// last flush may have reached some replicas and not others. It compares
// only where they may differ: the extents their activity logs name (the
// whole volume when a log was unreadable, or for a coordinator that did
// not start uncleanly). Then the logs start afresh. It returns the regions
// it copied.
func (c *Coordinator) Converge(ctx context.Context, progress func(done, total int64)) ([]Difference, error) {
	diffs, err := c.compare(ctx, c.converge, true, progress)
	if err == nil && len(diffs) > 0 {
		err = c.Flush()
	}
	if err == nil {
		c.converge = activitySet{}
		c.resetActivity()
	}
	return diffs, err
}

// compareWorkers: regions compared at once. Each comparison is a checksum
// request to every replica, each computed on its node: in parallel they
// overlap the round trips and the replicas' reads.
const compareWorkers = 4

func (c *Coordinator) compare(ctx context.Context, only activitySet, repair bool, progress func(done, total int64)) ([]Difference, error) {
	var offs []int64 // the regions to compare
	var total int64
	for e := range c.act.n {
		if !only.contains(e) {
			continue
		}
		for off := int64(e) * ActivitySize; off < min(int64(e+1)*ActivitySize, c.cfg.Size); off += RegionSize {
			offs = append(offs, off)
			total += min(RegionSize, c.cfg.Size-off)
		}
	}
	var (
		mu    sync.Mutex // diffs, done, firstErr, and calls of progress
		diffs []Difference
		done  int64
		first error
		next  atomic.Int64 // the next index in offs
		wg    sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return first != nil
	}
	for range compareWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := drive.GetBuffer(RegionSize)
			defer drive.PutBuffer(buf)
			for !failed() {
				i := next.Add(1) - 1
				if i >= int64(len(offs)) {
					return
				}
				off := offs[i]
				if err := cmp.Or(ctx.Err(), c.fencedErr()); err != nil {
					fail(err)
					return
				}
				n := min(RegionSize, c.cfg.Size-off)
				d, err := c.compareRegion(off, n, repair, buf.B[:n])
				if err != nil {
					fail(err)
					return
				}
				mu.Lock()
				if d != nil {
					diffs = append(diffs, *d)
				}
				done += n
				if progress != nil {
					progress(done, total)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(diffs, func(a, b Difference) int { return cmp.Compare(a.Offset, b.Offset) })
	return diffs, first
}

func (c *Coordinator) compareRegion(off, n int64, repair bool, buf []byte) (*Difference, error) {
	c.locks.lock(off, n)
	defer c.locks.unlock(off, n)
	c.mu.RLock()
	var ms []*member
	for _, m := range c.members {
		if m.state == InSync {
			if m.local != nil {
				ms = append([]*member{m}, ms...) // this node's first: the source
			} else {
				ms = append(ms, m)
			}
		}
	}
	c.mu.RUnlock()
	if len(ms) < 2 {
		return nil, nil
	}
	// A replica that fails while the replicas converge may differ from
	// the others in any region not compared yet: it leaves the set with
	// every region in its log (a full copy of what holds data). Verify's
	// replicas have converged: one that fails there misses only what it
	// did not flush.
	var missed *[2]int64
	if repair {
		missed = &[2]int64{0, c.cfg.Size}
	}
	sums := map[string]uint64{}
	differ := false
	for _, m := range ms {
		s, err := c.sum(m, off, n)
		if err != nil {
			if errors.Is(err, ErrStaleEpoch) { // a newer coordinator's
				c.Fence(fmt.Errorf("replica on node %s: %w", m.node, err))
				return nil, c.fencedErr()
			}
			if derr := c.drop(m, err, missed); derr != nil {
				return nil, derr
			}
			return nil, fmt.Errorf("replica on node %s: %w", m.node, err)
		}
		sums[m.node] = s
		differ = differ || s != sums[ms[0].node]
	}
	if !differ {
		return nil, nil
	}
	d := &Difference{Offset: off, Length: n, Sums: sums}
	if !repair {
		return d, nil
	}
	src := ms[0]
	if err := c.readFrom(src, buf, off); err != nil {
		return nil, fmt.Errorf("%w: converge: reading region at %d from node %s: %w", engine.ErrIO, off, src.node, err)
	}
	for _, m := range ms[1:] {
		if sums[m.node] == sums[src.node] {
			continue
		}
		if werr := c.writeTo(m, buf, off); werr != nil {
			if derr := c.drop(m, werr, missed); derr != nil {
				return nil, derr
			}
		}
	}
	return d, nil
}
