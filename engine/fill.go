package engine

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cairn-storage/cairn/allocator"
	"github.com/cairn-storage/cairn/drive"
)

// Redirect-on-write: how a write to a shared extent costs what any write costs.
//
// The first write to an extent S that another volume also maps (a snapshot,
// a clone) does not copy S. It takes a fresh reserved extent F, maps the
// volume's logical extent to F, and marks F *filling* from base S: a set
// of bits, one per block, says which blocks of F hold their data (held
// inline while there are few, fillblocks.go); every other block of F still
// reads from S. The write goes into F and sets its bits. Reads take
// each block from F when its bit is set, else from the base — which may be
// filling itself (a snapshot taken of a volume with filling extents, then
// written again): a chain, always ending at a complete extent.
//
// The filler (one goroutine per pool) completes an F by copying its clear
// blocks from the base at a throttled rate (Options.FillRate), but only when
// that is worth it (worthFilling): F is at least half filled, so the copy
// costs no more space than was written (space ≤ 2× the bytes changed); or
// the base is held by F alone (the snapshot went away, and completing gives
// the base back); or the fill states take more RAM than the pool's budget
// (fillBudget).
// Once all 256 blocks are filled the state goes away and F's reference on
// the base is dropped: F is an ordinary extent again. A sparsely written F
// stays filling until one of those becomes true.
//
// Invariants (each kept where noted):
//   - A filling F holds one allocator reference on its base for as long as
//     its fill state exists (a redirect hands the writer's reference on S to
//     the state; completion and dropping F give it back after the round that
//     logs them: pendingUnref). A base is never written where F reads it: a
//     base is shared (writers of shared extents redirect) or held by F alone.
//   - A bit is set only after its block's data is in F (writeMapped,
//     fillRun), and bits are never cleared. So a reader needs no lock: a
//     set bit means F holds the block; a clear one, that the base does, and
//     the base stays allocated while the fill state exists and until the
//     round after it ends. An extent is zeroed only after every I/O that
//     began before its release has finished (reclaim's barrier), so a read
//     that looked at a bit just before the last one was set still finds the
//     base's data.
//   - Durability: bits are logged per round, not per write: a round gathers
//     the bits set since the last one (pool.dirtyFills) into one recFilled
//     record per extent before it syncs the data, so a logged bit always
//     describes durable data — or, logged by an unordered round in the same
//     sync as the data, a block recovery reads: a bit whose block is zero
//     goes (round.go); completion logs the last bits just before its
//     recFillDone, in an ordered round. A crash loses unlogged bits: those blocks read their old
//     content from the base, which the contract allows for a write that was
//     not flushed. A writer that finds its blocks set already by a setter
//     not yet through noteFilled notes them itself (endSet), so its flush
//     logs them too. F's unfilled blocks are never read, so what an unlogged
//     write or copy left there is invisible. Fill records are lazy: they
//     never make the background committer run early (lazyRecord), so a
//     volume whose extents fill costs no more syncs than one whose extents
//     are its own; a flush commits them like everything else.
//   - F comes from a durable reservation (recReserve), so a lost recRedirect
//     leaves F to be zeroed by recovery, as for a first write.
//   - Only the filler writes into F besides the volume's writers. A stripe
//     of pool.fillLocks (by F) keeps it off blocks a writer is writing:
//     writers hold it for reading, the filler for writing while it writes a
//     run. p.copierMu keeps it off an F that lost its last reference and is
//     being zeroed (dropFillLocked). Lock order: pool.mu → copierMu → a
//     fillLocks stripe; writers take a stripe alone, and pool.mu only after
//     releasing it. Nothing holds a stripe while it takes another.

const (
	blocksPerExtent = ExtentSize / BlockSize
	// fillRunBlocks is what the filler copies at once while writers of that
	// extent wait: 64 KiB.
	fillRunBlocks = 16
	// DefaultFillRate is the filler's copy rate per pool, bytes per second:
	// a fraction of any disk's sequential rate, so the foreground keeps the
	// rest.
	DefaultFillRate = 64 << 20
	// fillScanInterval: how often the filler looks over every filling extent
	// for one worth completing (writes that make one worth it wake it at once).
	fillScanInterval = time.Second
)

// fillState is a filling extent. Lives in pool.fills while F is filling.
// Kept small (32 B, and the map its blocks take past inlineMax of them):
// the pool may hold many (fillBudget).
type fillState struct {
	ext    allocator.Extent // F
	base   allocator.Extent // where F's clear blocks read from
	blocks fillBlocks       // F's blocks that hold their data: its "bits"
	// flags: fillDirty, fillDropped, and in the bits from fillSetting up
	// the count of setters (beginSet); read and counted without locks.
	flags atomic.Uint32
	// done: completed or dropped; no more recFilled records for it.
	// REQUIRES pool.mu.
	done bool
	// queued: in pool.fillQueue. REQUIRES pool.mu.
	queued bool
	// recovered: replayed at load. A crash may have left writes in its
	// clear blocks whose bits were never logged, so recovery cannot take a
	// non-zero block for one its bit describes: its bits are logged by
	// ordered rounds only (round.go). Set before the pool is shared.
	recovered bool
}

const (
	// fillDirty: bits set that may not be logged; fs is in
	// pool.dirtyFills. Changed under pool.mu (noteFilled, logFillsLocked).
	fillDirty uint32 = 1 << iota
	// fillDropped: F lost its last reference and is zeroed; set under
	// copierMu.
	fillDropped
	// fillSetting counts, in the bits above the flags, the setters between
	// their setting of bits and the end of their noteFilled (beginSet,
	// endSet).
	fillSetting uint32 = 1 << 8
)

func (fs *fillState) has(flag uint32) bool { return fs.flags.Load()&flag != 0 }

// fillStateBytes is what a fill state costs without its map.
const fillStateBytes = int64(unsafe.Sizeof(fillState{}))

func (fs *fillState) filled() int    { return fs.blocks.count() }
func (fs *fillState) complete() bool { return fs.filled() == blocksPerExtent }

// ram returns the bytes fs holds (pool.fillRAM counts them).
func (fs *fillState) ram() int64 {
	if fs.blocks.isDense() {
		return fillStateBytes + denseBytes
	}
	return fillStateBytes
}

// fillOf returns F's fill state, or nil when ext is not filling.
func (p *pool) fillOf(ext allocator.Extent) *fillState {
	if p.fillCount.Load() == 0 {
		return nil
	}
	return p.fills.load(ext)
}

// fillTable finds the fill state of an extent without locks: a directory
// of chunks of fillChunkSlots slots, a chunk allocated when one of its
// extents first fills or is a base (12 bytes per extent of the chunks in
// use: at most 12 MiB per TiB of pool). It also counts the references fill
// states hold on each base. Changed only under pool.mu.
type fillTable struct {
	dir    atomic.Pointer[[]atomic.Pointer[fillChunk]]
	chunks atomic.Int64 // allocated (never freed)
}

const fillChunkSlots = 4096

type fillChunk struct {
	states   [fillChunkSlots]atomic.Pointer[fillState]
	baseRefs [fillChunkSlots]int32 // REQUIRES pool.mu; see addBaseRefLocked
}

func (t *fillTable) load(ext allocator.Extent) *fillState {
	d := t.dir.Load()
	if d == nil || int(ext/fillChunkSlots) >= len(*d) {
		return nil
	}
	c := (*d)[ext/fillChunkSlots].Load()
	if c == nil {
		return nil
	}
	return c.states[ext%fillChunkSlots].Load()
}

// store sets ext's fill state (nil clears it). REQUIRES pool.mu.
func (t *fillTable) store(ext allocator.Extent, fs *fillState) {
	if c := t.chunk(ext, fs != nil); c != nil {
		c.states[ext%fillChunkSlots].Store(fs)
	}
}

// baseRefs returns how many references fill states hold on ext. REQUIRES
// pool.mu.
func (t *fillTable) baseRefs(ext allocator.Extent) int32 {
	if c := t.chunk(ext, false); c != nil {
		return c.baseRefs[ext%fillChunkSlots]
	}
	return 0
}

// addBaseRef counts n more references of fill states on ext. REQUIRES
// pool.mu.
func (t *fillTable) addBaseRef(ext allocator.Extent, n int32) {
	t.chunk(ext, true).baseRefs[ext%fillChunkSlots] += n
}

// chunk returns ext's chunk, made when create says so (else nil if there
// is none). REQUIRES pool.mu to create.
func (t *fillTable) chunk(ext allocator.Extent, create bool) *fillChunk {
	i := int(ext / fillChunkSlots)
	d := t.dir.Load()
	if d == nil || i >= len(*d) {
		if !create {
			return nil
		}
		nd := make([]atomic.Pointer[fillChunk], i+1)
		if d != nil {
			for j := range *d {
				nd[j].Store((*d)[j].Load())
			}
		}
		t.dir.Store(&nd)
		d = &nd
	}
	c := (*d)[i].Load()
	if c == nil && create {
		c = new(fillChunk)
		(*d)[i].Store(c)
		t.chunks.Add(1)
	}
	return c
}

// ram returns the bytes the table's chunks take.
func (t *fillTable) ram() int64 {
	return t.chunks.Load() * int64(unsafe.Sizeof(fillChunk{}))
}

// eachChunk calls fn for every chunk. REQUIRES pool.mu.
func (t *fillTable) eachChunk(fn func(*fillChunk)) {
	if d := t.dir.Load(); d != nil {
		for i := range *d {
			if c := (*d)[i].Load(); c != nil {
				fn(c)
			}
		}
	}
}

// each calls fn for every fill state until it returns false. REQUIRES pool.mu
// for a consistent view.
func (t *fillTable) each(fn func(*fillState) bool) {
	d := t.dir.Load()
	if d == nil {
		return
	}
	for i := range *d {
		c := (*d)[i].Load()
		if c == nil {
			continue
		}
		for j := range c.states {
			if fs := c.states[j].Load(); fs != nil && !fn(fs) {
				return
			}
		}
	}
}

// fillBudget is the RAM the pool's fill states and their table may take
// before the filler completes some whatever their fill, fullest first:
// 28 B per extent of the pool, which with the mapping's own 4 B per extent
// is the 32 MiB per TiB of DESIGN.md. A filling extent costs 32 B while at
// most inlineMax of its blocks are filled, 64 B past that (fillBlocks), and
// the table 12 B per extent of its chunks in use (fillTable); so the budget
// holds, at the least, a filling extent for every other extent of the pool
// while fills are sparse, and one for every fourth once they are dense.
// Past twice the budget (a transient the filler has not caught up with), a
// write to a shared extent copies it whole instead (copyInto). Small pools
// get minFillBudget. Tests set a cap in dense states (Options.fillCap).
func (p *pool) fillBudget() int64 {
	if c := p.eng.opts.fillCap; c > 0 {
		return int64(c) * (fillStateBytes + denseBytes)
	}
	return max(minFillBudget, p.alloc.Total()*fillBytesPerExtent)
}

const (
	fillBytesPerExtent = 28
	minFillBudget      = 128 << 10
)

// fillRAMUsed is what fillBudget bounds: the states' bytes and the table's.
func (p *pool) fillRAMUsed() int64 {
	if p.eng.opts.fillCap > 0 { // tests cap the states alone: a table chunk is 48 KiB
		return p.fillRAM.Load()
	}
	return p.fillRAM.Load() + p.fills.ram()
}

// setFilled marks blocks [first, first+n) of fs filled, after their data is
// in F, and returns how many were not.
func (p *pool) setFilled(fs *fillState, first, n int) int {
	newly, grew := fs.blocks.set(first, n)
	p.unfilled.Add(-int64(newly))
	if grew {
		p.fillRAM.Add(denseBytes)
	}
	return newly
}

// startFillLocked makes fresh a filling extent on base. REQUIRES mu.
func (p *pool) startFillLocked(fresh, base allocator.Extent) {
	p.addBaseRefLocked(base, 1)
	p.fills.store(fresh, &fillState{ext: fresh, base: base})
	p.fillCount.Add(1)
	p.fillRAM.Add(fillStateBytes)
	p.unfilled.Add(blocksPerExtent)
}

// endFillLocked forgets F's fill state; its base loses F's reference after
// the next round (pendingUnref). REQUIRES mu.
func (p *pool) endFillLocked(fs *fillState) {
	fs.done = true
	p.fills.store(fs.ext, nil)
	p.fillCount.Add(-1)
	p.unfilled.Add(-int64(blocksPerExtent - fs.filled()))
	p.fillRAM.Add(-fs.ram())
	p.releaseAfterRoundLocked(fs.base)
}

// releaseAfterRoundLocked lets go of a reference on base once the next
// round has logged what ended it (releaseBasesLocked). That round is hurried
// only when the release gives space back; otherwise it waits like a lazy
// record. REQUIRES mu.
func (p *pool) releaseAfterRoundLocked(base allocator.Extent) {
	p.pendingUnref = append(p.pendingUnref, base)
	if p.alloc.Refs(base) == 1 {
		p.urgent = true
	}
}

// dropRefAfterRoundLocked drops a mapping's reference on a shared extent
// once the round that logs the unmap (or delete, or restore) has run. Until
// then the extent keeps it: another volume that maps it would otherwise
// find it its own and write it in place, and a crash that lost the unmap
// would show those writes in the volume that maps it again. Held like a
// fill state's reference on its base, and released with them. REQUIRES mu.
func (p *pool) dropRefAfterRoundLocked(ext allocator.Extent) {
	p.addBaseRefLocked(ext, 1)
	p.releaseAfterRoundLocked(ext)
}

// dropFillLocked forgets the fill state of an extent that lost its last
// reference (it is about to be zeroed), waiting out a filler run that may be
// writing into it. REQUIRES mu.
func (p *pool) dropFillLocked(ext allocator.Extent) {
	fs := p.fillOf(ext)
	if fs == nil {
		return
	}
	p.copierMu.Lock()
	fs.flags.Or(fillDropped)
	p.copierMu.Unlock()
	p.endFillLocked(fs)
}

// releaseBasesLocked gives back the base references of fill states that
// ended before the round that just logged their end: a base still used
// elsewhere loses one reference; one held only by this is condemned (zeroed
// by the filler, then freed). REQUIRES mu; called by a round after its log
// write, with the count of pendingUnref taken before it.
func (p *pool) releaseBasesLocked(n int) error {
	bases := slices.Clone(p.pendingUnref[:n])
	p.pendingUnref = append(p.pendingUnref[:0], p.pendingUnref[n:]...)
	for _, b := range bases {
		p.addBaseRefLocked(b, -1)
		if p.alloc.Refs(b) > 1 {
			if err := p.alloc.Free(b); err != nil {
				return err
			}
			continue
		}
		p.condemned[b] = struct{}{}
		p.reclaimable = append(p.reclaimable, b)
		p.dropFillLocked(b) // b's own base waits for the next round
	}
	if len(bases) > 0 {
		p.wakeFiller()
	}
	return nil
}

// addBaseRefLocked counts a fill state's reference on base (or its
// release). A snapshot's extent whose other references are all fill states'
// is its alone: deleting the snapshot gives it back once they complete.
// REQUIRES mu.
func (p *pool) addBaseRefLocked(base allocator.Extent, n int32) {
	p.baseGen++
	p.fills.addBaseRef(base, n)
}

func (p *pool) wakeFiller() {
	select {
	case p.fillWake <- struct{}{}:
	default:
	}
}

// readMapped reads from extent ext as its volumes see it: through its fill
// state (and its base's) when it is filling.
func (p *pool) readMapped(ext allocator.Extent, b []byte, in int64) error {
	fs := p.fillOf(ext)
	if fs == nil {
		return p.readExtent(ext, b, in)
	}
	for len(b) > 0 {
		blk := int(in / BlockSize)
		set, n := fs.blocks.runOf(blk, (len(b)+BlockSize-1)/BlockSize)
		c := min(int64(n)*BlockSize-in%BlockSize, int64(len(b)))
		var err error
		if set {
			err = p.readExtent(ext, b[:c], in)
		} else {
			err = p.readMapped(fs.base, b[:c], in)
		}
		if err != nil {
			return err
		}
		b, in = b[c:], in+c
	}
	return nil
}

// writeMapped writes whole blocks into a volume's own extent ext, setting
// their bits when it is filling.
func (p *pool) writeMapped(ext allocator.Extent, b []byte, in int64) error {
	fs := p.fillOf(ext)
	if fs == nil {
		return p.writeExtent(ext, b, in)
	}
	if hasZeroBlock(b) { // recovery cannot tell zeros from "not written" (round.go)
		if err := p.beginZeroFill(); err != nil {
			return err
		}
		defer p.endZeroFill()
	}
	lock := p.fillLock(ext)
	lock.RLock()
	err := p.writeExtent(ext, b, in)
	newly := 0
	fs.beginSet()
	if err == nil {
		newly = p.setFilled(fs, int(in/BlockSize), len(b)/BlockSize)
	}
	lock.RUnlock()
	p.endSet(fs, newly, true)
	return err
}

// beginSet and endSet bracket a setting of bits of fs. A writer whose
// blocks were all set already (newly == 0) still relies on those bits
// being logged before its flush returns. A bit set and already listed for
// the next round (fillDirty) is, and so is one whose setter finished its
// noteFilled; but another setter may have set it and not yet reached
// noteFilled. So a writer that finds another setter between the two
// (fillSetting) notes fs itself: the round its flush waits for then logs
// every bit set by then. forClient says whether the caller answers a
// client (the filler does not).
func (fs *fillState) beginSet() { fs.flags.Add(fillSetting) }

func (p *pool) endSet(fs *fillState, newly int, forClient bool) {
	if newly > 0 {
		if h := p.afterSetHook.Load(); h != nil {
			(*h)(fs)
		}
		p.noteFilled(fs, newly)
	}
	fs.flags.Add(^(fillSetting - 1)) // one setter fewer
	if newly == 0 && forClient && fs.flags.Load() >= fillSetting {
		p.noteFilled(fs, 0) // another setter is between its bits and its note
	}
}

// fillLock is the stripe of pool.fillLocks that guards writes into ext.
func (p *pool) fillLock(ext allocator.Extent) *sync.RWMutex {
	return &p.fillLocks[uint32(ext)%uint32(len(p.fillLocks))]
}

// noteFilled records that newly bits of fs were set: its bits are to be
// logged by the next round, and the filler hears when fs became worth
// completing.
func (p *pool) noteFilled(fs *fillState, newly int) {
	filled := fs.filled()
	crossed := 2*(filled-newly) < blocksPerExtent && 2*filled >= blocksPerExtent || filled == blocksPerExtent
	// fs is marked dirty and listed together, under mu (the round that logs
	// it clears the mark, under mu, before it reads the bits): a writer that
	// sees the mark knows that fs is listed and that the round logging it
	// will read its bit. Marked outside mu, a round could run between
	// another writer's mark and its listing, and miss this writer's bit
	// while its flush waited for that round.
	if fs.has(fillDirty) && !crossed {
		return
	}
	p.mu.Lock()
	if !fs.done {
		if !fs.has(fillDirty) {
			fs.flags.Or(fillDirty)
			p.dirtyFills = append(p.dirtyFills, fs)
		}
		if crossed && !fs.queued {
			fs.queued = true
			p.fillQueue = append(p.fillQueue, fs)
			p.wakeFiller()
		}
	}
	p.mu.Unlock()
}

// logFillsLocked queues a recFilled record for each extent with bits set
// since it was last logged. A round calls it before it takes the queue (and
// so before it syncs the data: every bit set by then describes data already
// written). REQUIRES mu.
func (p *pool) logFillsLocked() {
	for _, fs := range p.dirtyFills {
		fs.flags.And(^fillDirty) // a bit set from now on marks it again
		p.logFillLocked(fs)
	}
	p.dirtyFills = nil // not kept at its largest: a burst of fills is rare
}

// logFillLocked queues a record of the bits of fs (all of them: records
// are OR-ed at replay, so logging a bit twice is harmless, and no per-state
// memory of what was logged is needed). REQUIRES mu.
func (p *pool) logFillLocked(fs *fillState) {
	if fs.done {
		return
	}
	r := record{typ: recFilled, phys: uint32(fs.ext), bitmap: fs.blocks.words()}
	p.enqueue(&r)
	p.needOrdered = p.needOrdered || fs.recovered
}

// worthFilling says whether the filler should complete fs now (see the top
// of this file). REQUIRES mu.
func (p *pool) worthFilling(fs *fillState, overCap bool) bool {
	return overCap || fs.complete() || 2*fs.filled() >= blocksPerExtent || p.alloc.Refs(fs.base) == 1
}

// fillCandidatesLocked returns the fill states the filler should complete
// now: those queued by writers, and with scan (once per fillScanInterval:
// it walks and sorts every filling extent under the pool lock), any other
// worth it, fullest first when the pool is over its budget. REQUIRES mu.
func (p *pool) fillCandidatesLocked(scan bool) []*fillState {
	out := p.fillQueue
	p.fillQueue = nil
	if !scan {
		return out
	}
	type candidate struct {
		fs     *fillState
		filled int // read once: a count walks the state's map
	}
	var all []candidate
	p.fills.each(func(fs *fillState) bool {
		if !fs.queued {
			all = append(all, candidate{fs, fs.filled()})
		}
		return true
	})
	slices.SortFunc(all, func(a, b candidate) int { return b.filled - a.filled })
	over := p.fillRAMUsed() - p.fillBudget()
	for _, c := range all {
		if fs := c.fs; p.worthFilling(fs, over > 0) {
			fs.queued = true
			out = append(out, fs)
			over -= fs.ram()
		}
	}
	return out
}

// filler completes filling extents worth completing, and zeroes the bases
// that completions left unreferenced.
func (p *pool) filler() {
	defer close(p.fillDone)
	t := time.NewTicker(fillScanInterval)
	defer t.Stop()
	pace := newPacer(p.eng.opts.FillRate, p.stop)
	for {
		scan := false
		select {
		case <-p.stop:
			return
		case <-t.C:
			scan = true
		case <-p.fillWake:
		}
		if p.err() != nil {
			continue
		}
		if err := p.fillPass(scan, pace, p.stop); err != nil {
			p.fail(err)
		}
	}
}

// fillPass does one round of the filler's work; stop (when not nil) cuts it short.
func (p *pool) fillPass(scan bool, pace func(int), stop <-chan struct{}) error {
	if err := p.reclaim(false); err != nil {
		return err
	}
	p.mu.Lock()
	cands := p.fillCandidatesLocked(scan)
	p.mu.Unlock()
	for i, fs := range cands {
		select {
		case <-stop:
			p.mu.Lock()
			for _, fs := range cands[i:] {
				fs.queued = false
			}
			p.mu.Unlock()
			return nil
		default:
		}
		if err := p.completeFill(fs, pace, -1); err != nil {
			return err
		}
	}
	return p.reclaim(false)
}

// completeFill copies fs's clear blocks from its base, then ends its fill
// state. runs >= 0 stops after that many runs (tests: an interrupted copy).
func (p *pool) completeFill(fs *fillState, pace func(int), runs int) error {
	pb := drive.GetBuffer(fillRunBlocks * BlockSize)
	defer drive.PutBuffer(pb)
	for blk := 0; blk < blocksPerExtent; blk += fillRunBlocks {
		if runs == 0 {
			p.mu.Lock()
			fs.queued = false
			p.mu.Unlock()
			return nil
		}
		copied, err := p.fillRun(fs, blk, pb.B)
		if err != nil {
			return err
		}
		if copied < 0 { // dropped: nothing left to do
			return nil
		}
		if copied > 0 {
			runs--
			if pace != nil {
				pace(copied * BlockSize)
			}
		}
	}
	// Every block is filled. Reads that found a bit clear before the last
	// copy may still be reading the base: it is zeroed, if ever, only after
	// reclaim's barrier has waited them out.
	p.mu.Lock()
	if !fs.done {
		p.logFillLocked(fs)
		p.endFillLocked(fs)
		p.enqueue(&record{typ: recFillDone, phys: uint32(fs.ext)})
	}
	fs.queued = false
	p.mu.Unlock()
	return nil
}

// fillRun copies the clear blocks of [blk, blk+fillRunBlocks) of fs from its
// base and marks them filled. The run is written whole, in one write: its
// clear blocks from the base, its set ones re-read from F under the stripe
// lock (no writer can change them meanwhile). Returns the blocks copied, -1
// when fs was dropped.
func (p *pool) fillRun(fs *fillState, blk int, buf []byte) (int, error) {
	if set, n := fs.blocks.runOf(blk, fillRunBlocks); set && n == fillRunBlocks {
		return 0, nil
	}
	off := int64(blk) * BlockSize
	// The base does not change while fs holds it: read it unlocked.
	if err := p.readMapped(fs.base, buf, off); err != nil {
		return 0, err
	}
	p.copierMu.Lock()
	if fs.has(fillDropped) {
		p.copierMu.Unlock()
		return -1, nil
	}
	lock := p.fillLock(fs.ext)
	lock.Lock()
	var err error
	for b := blk; err == nil && b < blk+fillRunBlocks; {
		set, n := fs.blocks.runOf(b, blk+fillRunBlocks-b)
		if set {
			o := (b - blk) * BlockSize
			err = p.readExtent(fs.ext, buf[o:o+n*BlockSize], int64(b)*BlockSize)
		}
		b += n
	}
	if err == nil {
		err = p.writeExtent(fs.ext, buf, off)
	}
	newly := 0
	fs.beginSet()
	if err == nil {
		newly = p.setFilled(fs, blk, fillRunBlocks)
	}
	lock.Unlock()
	p.copierMu.Unlock() // before noteFilled takes pool.mu: the lock order
	p.endSet(fs, newly, false)
	if err != nil {
		return 0, err
	}
	return newly, nil
}

// maxReserveAhead bounds the extents a snapshot reserves ahead (4 GiB):
// past it, redirects reserve in the usual batches.
const maxReserveAhead = 4096

// reserveAhead makes up to n extents (at most maxReserveAhead, at most half
// of what is free) reserved and durable before a snapshot shares a volume's
// extents.
func (p *pool) reserveAhead(n int) error {
	p.mu.Lock()
	have := len(p.reserved) + len(p.reserving)
	want := min(n, maxReserveAhead, int(p.alloc.Total()-p.alloc.Used())/2)
	reserved := want > have && p.reserveNLocked(want-have)
	p.mu.Unlock()
	if !reserved {
		return nil
	}
	return p.commit()
}

// newPacer returns a function that sleeps so that the bytes it is told of
// flow at rate per second at most (0 = DefaultFillRate); a sleep ends early
// when stop closes.
func newPacer(rate int64, stop <-chan struct{}) func(int) {
	if rate <= 0 {
		rate = DefaultFillRate
	}
	start, done := time.Now(), int64(0)
	return func(n int) {
		done += int64(n)
		due := start.Add(time.Duration(done * int64(time.Second) / rate))
		if d := time.Until(due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-stop:
				t.Stop()
			}
		} else if d < -time.Second { // idle for a while: no burst to catch up
			start, done = time.Now(), 0
		}
	}
}

// fillCheck verifies the fill states (Check): each F is in use and not
// reserved, its base is in use, chains end, and the unfilled count adds up.
// REQUIRES mu.
func (p *pool) fillCheckLocked(refs map[allocator.Extent]int) error {
	var unfilled, n, ram int64
	var err error
	p.fills.each(func(fs *fillState) bool {
		n++
		unfilled += int64(blocksPerExtent - fs.filled())
		ram += fs.ram()
		refs[fs.base]++
		if p.fills.load(fs.ext) != fs || fs.done {
			err = fmt.Errorf("%s: fill state of extent %d is stale", p, fs.ext)
			return false
		}
		depth := 0
		for b := fs.base; ; depth++ {
			if depth > int(p.fillCount.Load()) {
				err = fmt.Errorf("%s: fill chain from extent %d does not end", p, fs.ext)
				return false
			}
			next := p.fillOf(b)
			if next == nil {
				break
			}
			b = next.base
		}
		return true
	})
	if err != nil {
		return err
	}
	counted := map[allocator.Extent]int32{}
	p.fills.each(func(fs *fillState) bool { counted[fs.base]++; return true })
	for _, b := range p.pendingUnref {
		refs[b]++
		counted[b]++
	}
	for b, n := range counted {
		if got := p.fills.baseRefs(b); got != n {
			return fmt.Errorf("%s: fill states hold %d references on extent %d, counted %d", p, n, b, got)
		}
	}
	var total int32
	p.fills.eachChunk(func(c *fillChunk) {
		for _, n := range c.baseRefs {
			total += n
		}
	})
	if want := int32(len(p.pendingUnref)) + int32(p.fillCount.Load()); total != want {
		return fmt.Errorf("%s: %d base references counted, %d held", p, total, want)
	}
	if ram != p.fillRAM.Load() {
		return fmt.Errorf("%s: fill states take %d B, counted %d", p, ram, p.fillRAM.Load())
	}
	if n != p.fillCount.Load() || unfilled != p.unfilled.Load() {
		return fmt.Errorf("%s: %d fill states with %d unfilled blocks, counted %d and %d", p, n, unfilled, p.fillCount.Load(), p.unfilled.Load())
	}
	return nil
}

// loadFills installs the fill states replayed from the log: a state is live
// while its extent is referenced (mapped, or the base of a live state), and
// a live state references its base. States of unreferenced extents are
// dropped, their extents and bases left as candidates for zeroing.
func (p *pool) loadFills(st *poolState) error {
	live := map[allocator.Extent]bool{}
	for changed := true; changed; {
		changed = false
		for f, fs := range st.fills {
			if live[f] || p.alloc.Refs(f) == 0 {
				continue
			}
			live[f], changed = true, true
			if err := p.alloc.Take(fs.base); err != nil {
				return fmt.Errorf("%w: %s: base of filling extent %d: %w", ErrCorrupt, p, f, err)
			}
		}
	}
	for f, fs := range st.fills {
		if !live[f] {
			st.condemned[f], st.condemned[fs.base] = true, true
			continue
		}
		depth := 0
		for b := fs.base; live[b]; b = st.fills[b].base {
			if depth++; depth > len(live) {
				return fmt.Errorf("%w: %s: fill chain from extent %d does not end", ErrCorrupt, p, f)
			}
		}
		p.addBaseRefLocked(fs.base, 1)
		fs.recovered = true
		p.fills.store(f, fs)
		p.fillCount.Add(1)
		p.unfilled.Add(int64(blocksPerExtent - fs.filled()))
		p.fillRAM.Add(fs.ram())
	}
	return nil
}
