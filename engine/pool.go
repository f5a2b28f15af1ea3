package engine

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/allocator"
	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/wal"
)

// Part of the on-disk format — do not change.
const (
	BlockSize          = 4096
	ExtentSize         = 1 << 20
	minExtents         = 16
	maxExtentsPerDrive = 1 << 26 // 64 TiB of 1 MiB extents; pool extent numbers fit in 31 bits
)

const (
	// commitInterval bounds how long metadata of un-flushed writes waits in
	// memory, and how long trimmed extents wait before they can be reused.
	commitInterval = 200 * time.Millisecond
	// commitSoonBytes of queued records wake the background committer early.
	commitSoonBytes = 1 << 20
	// maxRecordFrame bounds one records frame; rounds split at record boundaries.
	maxRecordFrame = 4 << 20
	// lazyCommitInterval bounds how long lazy records (lazyRecord) wait for
	// a round when nothing else needs one: as long as the kernel keeps
	// dirty data by default (vm.dirty_expire_centisecs), so their rounds
	// sync little that the kernel would not have written by then.
	lazyCommitInterval = 30 * time.Second
)

// lazyRecord reports whether a record may wait for the next round that
// something else needs (a flush, a reservation, lazyCommitInterval):
// losing it in a crash loses only writes that were not flushed, and it
// describes data whose sync the kernel is doing anyway. Fill records
// (fill.go) are lazy, so that extents redirected after a snapshot cost no
// syncs beyond those of extents never shared.
func lazyRecord(typ byte) bool {
	return typ == recRedirect || typ == recFilled || typ == recFillDone
}

// pool is a set of drives with one io_priority, striped (raid0), with one
// metadata log on drive 0. Every volume lives in exactly one pool.
//
// Commit rounds (wal.Committer) are the only writers of the log. A round:
//  1. under mu, takes the queued records and freed extents (and, when the log
//     is half full, encodes a checkpoint of the whole pool — consistent with
//     the records taken, since both change only under mu);
//  2. syncs every data drive written since the last round — records only say
//     "written" about data that was written before they were queued, so after
//     this sync every record taken describes durable data;
//  3. writes the records (or the checkpoint, into the other log area, then
//     flips drive 0's superblock) and syncs the log;
//     an unordered round (round.go: only records recovery can check against
//     the data) writes its records first and does 2 and 3 in one sync;
//  4. gives the freed extents back to the allocator: only now can no crash
//     bring back a mapping that points at them.
type pool struct {
	eng      *Engine
	number   int
	uuid     [16]byte
	priority IOPriority
	logSize  int64

	committer *wal.Committer
	// changes counts what a client's flush must make durable: every
	// record queued (enqueue) and every write, trim and write-zeroes of a
	// volume once it is complete (Volume.changed). Rounds read it as they
	// begin (wal.Committer.Covering): a flush waits only for a round that
	// began after the changes it covers, and a flush with nothing new
	// since the last round returns at once.
	changes   atomic.Uint64
	layoutPtr atomic.Pointer[poolLayout] // drives for the I/O path; replaced when a drive is added
	failed    atomic.Pointer[error]      // set when a round fails: the pool is read-only-dead
	// writeWaits counts writes that waited for a round (Volume.WriteWaits).
	writeWaits atomic.Uint64
	// lastFlush is when a volume of the pool was last flushed (unix ns):
	// writes start their write-back while flushes come (writeBehind).
	lastFlush atomic.Int64

	// round state: touched only by commit rounds (which never overlap) and Open.
	log     *wal.Writer
	sb0     superblock // drive 0's superblock: names the active log area
	spare   []byte
	spareCs []int
	// logReady: the active log area holds no holes below this offset
	// (relative to its start) from the writer's position on (prepareLog).
	logReady int64
	// mustCheckpoint: recovery took bits out of the log's unordered tail
	// (checkUnorderedTail); the first round writes a checkpoint, so no
	// later replay finds those bits confirmed.
	mustCheckpoint bool
	roundBuf       []byte // a round's records behind its recRound marker
	roundCuts      []int

	mu          sync.Mutex
	drives      []*poolDrive         // REQUIRES mu to change; index = drive index
	alloc       *allocator.Allocator // REQUIRES mu
	vols        map[uint32]*Volume   // REQUIRES mu
	nextVolID   uint32               // REQUIRES mu
	pending     []byte               // REQUIRES mu; encoded records not yet in the log
	cuts        []int                // REQUIRES mu; record boundaries where a frame may end
	pendingFree []allocator.Extent   // REQUIRES mu; freed, reusable after the next round
	reserved    []allocator.Extent   // REQUIRES mu; durably reserved, zero, free for writers to map
	reserving   []allocator.Extent   // REQUIRES mu; reserved by a record not yet durable
	// condemned: extents of deleted volumes not yet zeroed. The delete is
	// logged first and the zeroing follows, so a delete that fails or is cut
	// short by a crash never destroys a volume that survives it; recovery
	// zeroes whatever a logged delete left condemned.
	condemned map[allocator.Extent]struct{} // REQUIRES mu

	// Redirect-on-write (fill.go).
	fills        fillTable                        // the extents filling
	fillCount    atomic.Int64                     // entries in fills; 0 lets the I/O path skip the lookup
	unfilled     atomic.Int64                     // blocks of filling extents not filled: space that holds no data
	fillRAM      atomic.Int64                     // bytes of the fill states (fillBudget)
	afterSetHook atomic.Pointer[func(*fillState)] // tests: runs between a setter's new bits and its noteFilled
	fillQueue    []*fillState                     // REQUIRES mu; worth completing, for the filler
	dirtyFills   []*fillState                     // REQUIRES mu; with bits set that the next round logs
	urgent       bool                             // REQUIRES mu; a record that is not lazy waits for a round
	lastRound    time.Time                        // REQUIRES mu; when the last round took the queue
	pendingUnref []allocator.Extent               // REQUIRES mu; bases of ended fill states, released after the next round
	reclaimable  []allocator.Extent               // REQUIRES mu; condemned bases whose release is durable: the filler zeroes them
	copierMu     sync.Mutex                       // held by the filler while it writes into a filling extent
	fillLocks    [64]sync.RWMutex                 // by extent: writers into a filling extent (read) against the filler (write)
	reclaimMu    sync.Mutex                       // one reclaim at a time (reclaim)
	baseGen      uint64                           // REQUIRES mu; changes with fills' base references (exclusiveBytes' cache)
	fillWake     chan struct{}                    // wakes the filler
	fillDone     chan struct{}                    // closed when the filler has stopped

	// Unordered rounds (round): needOrdered, a queued record that only an
	// ordered round may log (orderFree); lastUnordered, the last round that
	// logged anything was unordered and no ordered round has confirmed it;
	// zeroWriters and zeroFills, writes of zeros into filling extents
	// running, and done since the last round (beginZeroFill).
	needOrdered   bool // REQUIRES mu
	lastUnordered bool // REQUIRES mu
	zeroWriters   int  // REQUIRES mu
	zeroFills     bool // REQUIRES mu

	bgStarted bool          // set once, before the engine is shared
	wake      chan struct{} // background committer
	stop      chan struct{}
	done      chan struct{}
}

type poolDrive struct {
	d     drive.Drive
	sb    superblock  // as read or formatted; never written after the drive is published
	dirty atomic.Bool // written since its last sync
}

func (p *pool) String() string { return fmt.Sprintf("pool %d (%s)", p.number, p.priority) }

func newUUID() (u [16]byte) {
	if _, err := rand.Read(u[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return u
}

func randomU64() uint64 {
	u := newUUID()
	return binary.LittleEndian.Uint64(u[:]) | 1
}

func uuidString(u [16]byte) string { return hex.EncodeToString(u[:]) }

// err returns the error that failed the pool, if any.
func (p *pool) err() error {
	if e := p.failed.Load(); e != nil {
		return *e
	}
	return nil
}

func (p *pool) fail(err error) error {
	err = fmt.Errorf("%s failed: %w", p, err)
	if p.failed.CompareAndSwap(nil, &err) {
		slog.Error("pool failed; it serves no more writes", "pool", p.number, "err", err)
	}
	return err
}

// enqueue appends a record to the pending queue. REQUIRES mu.
func (p *pool) enqueue(r *record) {
	p.urgent = p.urgent || !lazyRecord(r.typ)
	p.needOrdered = p.needOrdered || !orderFree(r.typ)
	p.pending = appendRecord(p.pending, r)
	p.changes.Add(1)
	if len(p.cuts) == 0 && len(p.pending) >= maxRecordFrame || len(p.cuts) > 0 && len(p.pending)-p.cuts[len(p.cuts)-1] >= maxRecordFrame {
		p.cuts = append(p.cuts, len(p.pending))
	}
	if len(p.pending) >= commitSoonBytes {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// commit makes everything written to the pool before the call durable,
// and runs a round that begins after the call: callers that need a round's
// side effects (reservations, freed extents) get one.
func (p *pool) commit() error {
	if err := p.err(); err != nil {
		return err
	}
	return p.committer.Commit()
}

// flush makes every change counted before the call durable (a client's
// flush or FUA write): the running round may be enough, or none at all.
func (p *pool) flush() error { return p.flushCovering(p.changes.Load()) }

// flushCovering makes durable every change counted up to gen.
func (p *pool) flushCovering(gen uint64) error {
	if err := p.err(); err != nil {
		return err
	}
	return p.committer.Covering(gen)
}

func (p *pool) round() error {
	p.mu.Lock()
	p.logFillsLocked()
	p.urgent, p.lastRound = false, time.Now()
	// The checkpoint (if any) is encoded before anything is taken from the
	// queues, so it describes exactly the state the taken records lead to.
	var snap []byte
	if p.mustCheckpoint || p.log.Used()+int64(len(p.pending))+wal.SectorSize*int64(len(p.cuts)+2) > p.logSize/2 {
		snap = p.encodeCheckpoint()
	}
	recs, cuts := p.pending, p.cuts
	p.pending, p.cuts = p.spare[:0], p.spareCs[:0]
	// Read after logFillsLocked: see beginZeroFill.
	unordered := snap == nil && len(recs) > 0 && !p.needOrdered && !p.zeroFills && p.zeroWriters == 0
	p.needOrdered, p.zeroFills = false, false
	// A round that logs records says first how (recRound); so does an
	// ordered round with nothing else to log that a write of zeros waits
	// for: its frame confirms the unordered round before it (round.go).
	marked := snap == nil && (len(recs) > 0 || p.lastUnordered && p.zeroWriters > 0)
	if unordered {
		p.lastUnordered = true
	}
	// Extents being reserved or freed stay listed in p.reserving and
	// p.pendingFree (Status, Check and checkpoints see them) until this round
	// has logged their records; later ones are appended behind them.
	freed, reserving, unrefs := len(p.pendingFree), len(p.reserving), len(p.pendingUnref)
	p.mu.Unlock()

	logged, cs := recs, cuts
	if marked {
		logged, cs = p.markRound(recs, cuts, unordered)
	}
	var err error
	switch {
	case unordered:
		err = p.syncUnordered(logged, cs)
	case snap != nil:
		if err = p.syncData(); err == nil {
			err = p.rotate(snap)
		}
	default:
		if err = p.syncData(); err == nil && len(logged) > 0 {
			err = p.appendRecords(logged, cs)
		}
	}
	if err != nil {
		return p.fail(err)
	}
	p.mustCheckpoint = false
	p.spare, p.spareCs = recs[:0], cuts[:0]
	if cap(recs) > commitSoonBytes/4 { // a burst: do not keep its buffers
		p.spare, p.roundBuf = nil, nil
	}
	p.prepareLog()
	if !unordered && (marked || snap != nil) || freed > 0 || reserving > 0 || unrefs > 0 {
		p.mu.Lock()
		if !unordered && (marked || snap != nil) {
			p.lastUnordered = false // confirmed: this round's frame is durable
		}
		if err := p.releaseBasesLocked(unrefs); err != nil {
			p.mu.Unlock()
			return p.fail(err)
		}
		p.reserved = append(p.reserved, p.reserving[:reserving]...)
		p.reserving = append(p.reserving[:0], p.reserving[reserving:]...)
		for _, e := range p.pendingFree[:freed] {
			if err := p.alloc.Free(e); err != nil {
				p.mu.Unlock()
				return p.fail(err)
			}
		}
		p.pendingFree = append(p.pendingFree[:0], p.pendingFree[freed:]...)
		p.mu.Unlock()
	}
	return nil
}

func (p *pool) syncData() error {
	for _, pd := range p.drivesSnapshot() {
		if pd.dirty.Swap(false) {
			if err := pd.d.Sync(); err != nil {
				pd.dirty.Store(true)
				return fmt.Errorf("%w: %w", ErrIO, err)
			}
		}
	}
	return nil
}

func (p *pool) drivesSnapshot() []*poolDrive {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.drives
}

func (p *pool) appendRecords(recs []byte, cuts []int) error {
	if err := p.writeRecords(recs, cuts); err != nil {
		return err
	}
	return p.log.Sync()
}

// writeRecords writes recs to the log in frames split at cuts, not synced.
func (p *pool) writeRecords(recs []byte, cuts []int) error {
	start := 0
	for _, c := range append(cuts, len(recs)) {
		if c > start {
			if err := p.log.Append(frameRecords, recs[start:c]); err != nil {
				return err
			}
		}
		start = c
	}
	return p.log.Write()
}

// Log preparation: a frame appended into a hole of a file drive allocates
// its block, and the round's log sync then also commits the filesystem's
// journal: on ext4 here 210–330 µs against ~110 µs for an overwrite
// (bench/RESULTS-snap.md, "The log's holes"). Rounds that log something
// on every flush (fill records after a snapshot, first writes to a thin
// volume) paid it each time. So the area ahead of the writer is kept free
// of holes, a few MiB at a time.
const (
	logPrepareLow   = 1 << 20 // prepare when less than this is ready ahead
	logPrepareChunk = 4 << 20 // and make this much ready ahead
)

// prepareLog fills the holes of the active log area ahead of the writer
// (drive.File.FillHoles), never below its position: everything from there
// on is stale or empty, so zeros there change nothing replay reads as a
// frame. Drives without holes (block devices, Mem) are left alone. It is
// only a speed-up: when the fill fails (the file system under a sparse drive
// is full, say), the log appends into holes as before, and a real fault
// surfaces in the round's own writes and syncs, so its error is dropped
// rather than failing a pool whose round succeeded.
// Round state: called by rounds only.
func (p *pool) prepareLog() {
	pos, size := p.log.Used(), p.log.Region().Size
	if p.logReady-pos >= logPrepareLow || p.logReady >= size {
		return
	}
	from := max(p.logReady, pos)
	to := min(size, pos+logPrepareChunk)
	p.logReady = to
	if fh, ok := p.log.Device().(interface{ FillHoles(off, n int64) error }); ok && to > from {
		_ = fh.FillHoles(p.log.Region().Base+from, to-from)
	}
	// Not marked dirty: zeros past the writer mean nothing to replay; the
	// next log sync takes them to the device with its frames.
}

// rotate writes a checkpoint at the start of the inactive log area, then
// points drive 0's superblock at it. Until the superblock write, a crash
// leaves the old area (and old superblock) in charge, whole.
func (p *pool) rotate(snap []byte) error {
	d0 := p.drives[0].d
	sb := p.sb0
	sb.activeArea = 1 - sb.activeArea
	sb.logID = randomU64()
	sb.logStartSeq = p.log.Position().Seq
	w := wal.NewWriter(d0, logRegion(sb.activeArea, sb.logSize), wal.Start(sb.logID, sb.logStartSeq))
	if err := appendCheckpoint(w, snap); err != nil {
		return err
	}
	if err := w.Write(); err != nil {
		return err
	}
	if err := w.Sync(); err != nil {
		return err
	}
	if err := writeSuperblock(d0, &sb); err != nil {
		return err
	}
	p.sb0, p.log, p.logReady = sb, w, 0
	// drives[0].sb keeps its old log fields: readers on the I/O path use its
	// data layout without locks, and only sb0 says where the log is.
	return nil
}

func appendCheckpoint(w *wal.Writer, snap []byte) error {
	for len(snap) > maxRecordFrame {
		if err := w.Append(frameCheckpoint, snap[:maxRecordFrame]); err != nil {
			return checkpointErr(err)
		}
		snap = snap[maxRecordFrame:]
	}
	return checkpointErr(w.Append(frameCheckpointEnd, snap))
}

func checkpointErr(err error) error {
	if errors.Is(err, wal.ErrFull) {
		return fmt.Errorf("metadata log area too small for the pool's checkpoint: %w", err)
	}
	return err
}

func logRegion(area uint8, logSize int64) wal.Region {
	return wal.Region{Base: 2*superblockSize + int64(area)*logSize, Size: logSize}
}

// background commits queued metadata every commitInterval (or sooner when a
// lot is queued), so un-flushed metadata and freed extents never wait long.
func (p *pool) background() {
	defer close(p.done)
	t := time.NewTicker(commitInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		case <-p.wake:
		}
		p.mu.Lock()
		if len(p.reserved)+len(p.reserving) < p.reserveLow() {
			p.reserveLocked()
		}
		lazy := len(p.pending) > 0 || len(p.dirtyFills) > 0 || len(p.pendingUnref) > 0
		idle := !p.urgent && len(p.pending) < commitSoonBytes && len(p.pendingFree) == 0 && len(p.reserving) == 0 &&
			!(lazy && time.Since(p.lastRound) >= lazyCommitInterval)
		p.mu.Unlock()
		if !idle && p.err() == nil {
			p.commit() // a failure is recorded in p.failed and reported by every later I/O
		}
	}
}

// Extent reservations. A writer maps only extents that a durable record has
// reserved: if the writer's map record is lost in a crash while its data
// landed, recovery still knows the extent may hold data and zeroes it before
// anyone can map it again (see mapping.go for why free extents must read as
// zeros).

func (p *pool) reserveBatch() int { return int(min(64, max(1, p.alloc.Total()/16))) }
func (p *pool) reserveLow() int   { return max(1, p.reserveBatch()/2) }

// reserveLocked takes a batch of free extents into p.reserving and queues the
// record that reserves them; they become usable after the round that logs it.
// Reports whether it reserved anything. REQUIRES mu.
func (p *pool) reserveLocked() bool { return p.reserveNLocked(p.reserveBatch()) }

// reserveNLocked reserves up to n free extents. REQUIRES mu.
func (p *pool) reserveNLocked(n int) bool {
	var r record
	r.typ = recReserve
	for i := 0; i < n; i++ {
		ext, err := p.alloc.Allocate()
		if err != nil {
			break
		}
		p.reserving = append(p.reserving, ext)
		r.exts = append(r.exts, uint32(ext))
	}
	if len(r.exts) == 0 {
		return false
	}
	p.enqueue(&r)
	return true
}

// allocatedLocked counts the extents in use by volumes, snapshots and what
// is being freed: the allocator's, less those reserved for writers (free
// space for everything but the allocator). REQUIRES mu.
func (p *pool) allocatedLocked() int64 {
	return p.alloc.Used() - int64(len(p.reserved)+len(p.reserving))
}

// takeReserved returns a reserved extent for a writer to map, or false when
// none is ready. Wakes the background committer to refill early. REQUIRES mu.
func (p *pool) takeReserved() (allocator.Extent, bool) {
	n := len(p.reserved)
	if n == 0 {
		return 0, false
	}
	ext := p.reserved[n-1]
	p.reserved = p.reserved[:n-1]
	if n-1 < p.reserveLow() && len(p.reserving) == 0 {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
	return ext, true
}

// reclaimCondemned zeroes every condemned extent (the caller has made the
// change that condemned them durable: a delete or restore, under the
// engine's lock, which serializes them) and queues them to be freed by the
// next round.
func (p *pool) reclaimCondemned() error { return p.reclaim(true) }

// reclaim zeroes condemned extents and queues them to be freed: all of them,
// or only the bases the filler may zero (p.reclaimable: released after a
// round, so durably). reclaimMu keeps two reclaims from zeroing one extent
// twice — the second could zero it after the first freed it for reuse.
func (p *pool) reclaim(all bool) error {
	p.reclaimMu.Lock()
	defer p.reclaimMu.Unlock()
	p.mu.Lock()
	var exts []allocator.Extent
	if all {
		exts = slices.Collect(maps.Keys(p.condemned))
	} else {
		for _, x := range p.reclaimable {
			if _, ok := p.condemned[x]; ok {
				exts = append(exts, x)
			}
		}
	}
	p.reclaimable = nil
	vols := slices.Collect(maps.Values(p.vols))
	p.mu.Unlock()
	if len(exts) == 0 {
		return nil
	}
	// A read that looked an extent up before its volume moved off it
	// (redirect, copy) may still be reading it: wait out every I/O that
	// began before now. Later ones cannot reach these extents.
	for _, v := range vols {
		v.ioMu.Lock()
		//lint:ignore SA2001 an empty critical section is the point: a barrier
		v.ioMu.Unlock()
	}
	for _, ext := range exts {
		if err := p.zeroExtent(ext, 0, ExtentSize); err != nil {
			return p.fail(err)
		}
	}
	p.mu.Lock()
	for _, ext := range exts {
		delete(p.condemned, ext)
	}
	p.pendingFree = append(p.pendingFree, exts...)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	return nil
}

// encodeCheckpoint serializes the whole pool. REQUIRES mu.
func (p *pool) encodeCheckpoint() []byte {
	e := enc{}
	e.u32(checkpointMagic)
	e.u32(p.nextVolID)
	e.u32(uint32(len(p.drives)))
	for _, pd := range p.drives {
		e.b = append(e.b, pd.sb.driveUUID[:]...)
		e.u32(pd.sb.extentCount)
	}
	e.u32(uint32(len(p.vols)))
	for _, v := range p.vols {
		e.meta(&v.meta)
		countAt := len(e.b)
		e.u32(0)
		n := uint32(0)
		v.table.forEach(func(lext uint32, ext allocator.Extent) {
			e.u32(lext)
			e.u32(uint32(ext))
			n++
		})
		binary.LittleEndian.PutUint32(e.b[countAt:], n)
	}
	// Extents being reserved are durable once this checkpoint is.
	e.u32(uint32(len(p.reserved) + len(p.reserving)))
	for _, x := range append(slices.Clip(p.reserved), p.reserving...) {
		e.u32(uint32(x))
	}
	// Bases waiting for their release are candidates too: if no one maps
	// them at load, nothing zeroed them yet.
	candidates := maps.Clone(p.condemned)
	for _, x := range p.pendingUnref {
		candidates[x] = struct{}{}
	}
	condemned := slices.Sorted(maps.Keys(candidates))
	e.u32(uint32(len(condemned)))
	for _, x := range condemned {
		e.u32(uint32(x))
	}
	if p.fillCount.Load() > 0 {
		var fills []*fillState
		p.fills.each(func(fs *fillState) bool { fills = append(fills, fs); return true })
		e.u32(uint32(len(fills)))
		for _, fs := range fills {
			e.u32(uint32(fs.ext))
			e.u32(uint32(fs.base))
			for _, w := range fs.blocks.words() {
				e.b = binary.LittleEndian.AppendUint64(e.b, w)
			}
		}
	}
	return e.b
}

// poolState is a checkpoint or log being replayed.
type poolState struct {
	nextVolID uint32
	drives    []driveRef
	vols      map[uint32]*Volume
	reserved  map[allocator.Extent]bool
	condemned map[allocator.Extent]bool // candidates: zeroed at load unless referenced
	fills     map[allocator.Extent]*fillState
	last      *Volume // the volume of the last record applied
	// tailUnordered: the last recRound replayed was unordered; tail, what
	// the recFilled records after it newly set (round.go).
	tailUnordered bool
	tail          []tailFill
}

type driveRef struct {
	uuid    [16]byte
	extents uint32
}

// decodeCheckpoint builds a pool state from checkpoint bytes.
func (p *pool) decodeCheckpoint(b []byte) (*poolState, error) {
	d := dec{b: b}
	if d.u32() != checkpointMagic {
		return nil, fmt.Errorf("%w: checkpoint magic", ErrCorrupt)
	}
	st := &poolState{nextVolID: d.u32(), vols: map[uint32]*Volume{}, reserved: map[allocator.Extent]bool{},
		condemned: map[allocator.Extent]bool{}, fills: map[allocator.Extent]*fillState{}}
	nd := d.count(20)
	for i := 0; i < nd; i++ {
		var r driveRef
		if d.need(16) {
			copy(r.uuid[:], b[d.off:])
			d.off += 16
		}
		r.extents = d.u32()
		st.drives = append(st.drives, r)
	}
	nv := d.count(30)
	for i := 0; i < nv && d.err == nil; i++ {
		m := d.meta()
		if d.err != nil {
			break
		}
		v, err := p.newVolume(m)
		if err != nil {
			return nil, err
		}
		if st.vols[m.id] != nil || m.id >= st.nextVolID {
			return nil, fmt.Errorf("%w: checkpoint volume id %d repeated or beyond %d", ErrCorrupt, m.id, st.nextVolID)
		}
		st.vols[m.id] = v
		nm := d.count(8)
		for j := 0; j < nm && d.err == nil; j++ {
			lext, phys := d.u32(), d.u32()
			if d.err != nil {
				break
			}
			if err := v.checkLext(lext); err != nil {
				return nil, err
			}
			if _, mapped := v.table.lookup(lext); mapped {
				return nil, fmt.Errorf("%w: volume %d extent %d mapped twice in checkpoint", ErrCorrupt, m.id, lext)
			}
			v.table.set(lext, allocator.Extent(phys))
		}
	}
	nr := d.count(4)
	for i := 0; i < nr && d.err == nil; i++ {
		st.reserved[allocator.Extent(d.u32())] = true
	}
	nc := d.count(4)
	for i := 0; i < nc && d.err == nil; i++ {
		st.condemned[allocator.Extent(d.u32())] = true
	}
	if d.err == nil && !d.done() { // the filling section, present only when some extent is filling
		nf := d.count(8 + blocksPerExtent/8)
		for i := 0; i < nf && d.err == nil; i++ {
			fs := &fillState{ext: allocator.Extent(d.u32()), base: allocator.Extent(d.u32())}
			var m [blocksPerExtent / 64]uint64
			for w := range m {
				m[w] = d.u64()
			}
			fs.blocks.reset(m)
			if d.err == nil && (st.fills[fs.ext] != nil || fs.ext == fs.base) {
				return nil, fmt.Errorf("%w: checkpoint fill state of extent %d repeated or its own base", ErrCorrupt, fs.ext)
			}
			st.fills[fs.ext] = fs
		}
	}
	if !d.done() {
		if d.err != nil {
			return nil, d.err
		}
		return nil, fmt.Errorf("%w: %d trailing bytes after checkpoint", ErrCorrupt, len(b)-d.off)
	}
	return st, nil
}

// apply replays one record onto a state.
func (p *pool) apply(st *poolState, r *record) error {
	if r.typ == recAddDrive {
		st.drives = append(st.drives, driveRef{uuid: r.uuid, extents: r.extents})
		return nil
	}
	if r.typ == recReserve {
		for _, x := range r.exts {
			st.reserved[allocator.Extent(x)] = true
			delete(st.condemned, allocator.Extent(x))
			if fs := st.fills[allocator.Extent(x)]; fs != nil {
				// x was free again, so its fill state had ended (dropped
				// with its last mapping); its base may be unreferenced.
				delete(st.fills, fs.ext)
				st.condemned[fs.base] = true
			}
		}
		return nil
	}
	if r.typ == recRound {
		st.tailUnordered, st.tail = r.flags&roundUnordered != 0, st.tail[:0]
		return nil
	}
	if r.typ == recFilled || r.typ == recFillDone {
		fs := st.fills[allocator.Extent(r.phys)]
		switch {
		case fs == nil:
			return fmt.Errorf("%w: record type %d for extent %d, which is not filling", ErrCorrupt, r.typ, r.phys)
		case r.typ == recFilled:
			t := tailFill{bits: fs.blocks.merge(r.bitmap)}
			if st.tailUnordered && t.bits != ([blocksPerExtent / 64]uint64{}) {
				t.ext = fs.ext
				st.tail = append(st.tail, t)
			}
		case !fs.complete():
			return fmt.Errorf("%w: extent %d done filling with %d of %d blocks", ErrCorrupt, r.phys, fs.filled(), blocksPerExtent)
		default:
			delete(st.fills, fs.ext)
			st.condemned[fs.base] = true // if no one else maps it any more
		}
		return nil
	}
	if r.typ == recSnapshot {
		src := st.vols[r.src]
		if src == nil || st.vols[r.vol] != nil || r.meta.size != src.meta.size {
			return fmt.Errorf("%w: snapshot id %d of unknown volume id %d (or id reused, or size differs)", ErrCorrupt, r.vol, r.src)
		}
		v, err := p.newVolume(r.meta)
		if err != nil {
			return err
		}
		v.table.copyFrom(src.table)
		st.vols[r.vol] = v
		st.nextVolID = max(st.nextVolID, r.vol+1)
		return nil
	}
	if r.typ == recCreateVolume {
		if st.vols[r.vol] != nil {
			return fmt.Errorf("%w: volume id %d created twice", ErrCorrupt, r.vol)
		}
		v, err := p.newVolume(r.meta)
		if err != nil {
			return err
		}
		st.vols[r.vol] = v
		st.nextVolID = max(st.nextVolID, r.vol+1)
		return nil
	}
	v := st.last // runs of records for one volume skip the map lookup
	if v == nil || v.id != r.vol {
		v = st.vols[r.vol]
		st.last = v
	}
	if v == nil {
		return fmt.Errorf("%w: record type %d for unknown volume id %d", ErrCorrupt, r.typ, r.vol)
	}
	switch r.typ {
	case recSetAttrs:
		if r.meta.size < v.meta.size || r.meta.size%BlockSize != 0 || r.meta.size > maxVolumeSize {
			return fmt.Errorf("%w: volume id %d resized to %d (from %d)", ErrCorrupt, r.vol, r.meta.size, v.meta.size)
		}
		// Every field recSetAttrs carries (records.go); TestRecordReplay checks.
		v.meta.sticky, v.meta.snapInterval, v.meta.snapKeep = r.meta.sticky, r.meta.snapInterval, r.meta.snapKeep
		v.setSize(r.meta.size)
	case recDeleteVolume:
		// Candidates only: loadPool keeps those no one else maps.
		v.table.forEach(func(_ uint32, ext allocator.Extent) { st.condemned[ext] = true })
		delete(st.vols, r.vol)
		st.last = nil
	case recRestore:
		src := st.vols[r.src]
		if src == nil || src.meta.size > v.meta.size {
			return fmt.Errorf("%w: restore of volume id %d from unknown or larger volume id %d", ErrCorrupt, r.vol, r.src)
		}
		v.table.forEach(func(_ uint32, ext allocator.Extent) { st.condemned[ext] = true })
		v.table.copyFrom(src.table)
	default:
		if err := v.checkLext(r.lext); err != nil {
			return err
		}
		_, mapped := v.table.lookup(r.lext)
		switch {
		case r.typ == recMapExtent && mapped:
			return fmt.Errorf("%w: volume id %d extent %d mapped while mapped", ErrCorrupt, r.vol, r.lext)
		case r.typ == recMapExtent:
			v.table.set(r.lext, allocator.Extent(r.phys))
			delete(st.reserved, allocator.Extent(r.phys))
		case r.typ == recUnmapExtent:
			v.table.unset(r.lext)
		case (r.typ == recRemap || r.typ == recRedirect) && !mapped:
			return fmt.Errorf("%w: volume id %d extent %d remapped while unmapped", ErrCorrupt, r.vol, r.lext)
		case r.typ == recRedirect:
			old, _ := v.table.lookup(r.lext)
			if st.fills[allocator.Extent(r.phys)] != nil || old == allocator.Extent(r.phys) {
				return fmt.Errorf("%w: volume id %d extent %d redirected to extent %d, which is filling already", ErrCorrupt, r.vol, r.lext, r.phys)
			}
			st.fills[allocator.Extent(r.phys)] = &fillState{ext: allocator.Extent(r.phys), base: old}
			v.table.set(r.lext, allocator.Extent(r.phys))
			delete(st.reserved, allocator.Extent(r.phys))
		case r.typ == recRemap:
			old, _ := v.table.lookup(r.lext)
			st.condemned[old] = true // if no one else maps it any more
			v.table.set(r.lext, allocator.Extent(r.phys))
			delete(st.reserved, allocator.Extent(r.phys))
		}
	}
	return nil
}

// dropMapping lets go of every extent t maps: a shared one (a snapshot or
// clone still maps it) loses one reference after the round that logs the
// change (dropRefAfterRoundLocked), an unshared one is condemned —
// zeroed and freed once the change that dropped it is committed
// (reclaimCondemned). REQUIRES: p.mu, and the owning volume's ioMu (write).
func (p *pool) dropMapping(t *table) {
	t.forEach(func(_ uint32, ext allocator.Extent) {
		if p.alloc.Refs(ext) > 1 {
			p.dropRefAfterRoundLocked(ext)
			return
		}
		p.condemned[ext] = struct{}{}
		p.dropFillLocked(ext)
	})
}
