package engine

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairn-storage/cairn/allocator"
	"github.com/cairn-storage/cairn/drive"
)

// Volume is a thin volume: a logical address space mapped onto extents of one
// pool. Safe for many goroutines at once.
//
// Locks: ioMu (read) is held by every read and write for its whole duration,
// including the drive I/O; ioMu (write) by anything that gives extents back or
// changes the mapping's shape (trim, write-zeroes, resize, delete), so no I/O is
// in flight to an extent when it is freed. Lock order: ioMu, then pool.mu.
type Volume struct {
	pool   *pool
	id     uint32
	served string // the name it is served under: meta.name, or NAME@poolN (names.go); set before it is published

	ioMu      sync.RWMutex
	table     *table       // REQUIRES ioMu to read the pointer; replaced under ioMu (write) + pool.mu
	meta      volumeMeta   // REQUIRES pool.mu (name, uid, created never change)
	size      atomic.Int64 // logical size in bytes
	used      atomic.Int64 // extents mapped
	deleted   bool         // REQUIRES ioMu (write) to set
	holdMu    sync.Mutex
	holds     holdSet        // REQUIRES holdMu; see hold.go
	exclusive exclusiveCount // REQUIRES pool.mu
	rmw       [16]sync.Mutex // partial-block read-modify-write, striped by block
	cowMu     [16]sync.Mutex // copy-on-write of a shared extent, striped by logical extent
}

// newVolume builds an empty volume in p (not yet registered).
func (p *pool) newVolume(m volumeMeta) (*Volume, error) {
	if m.size <= 0 || m.size%BlockSize != 0 || m.size > maxVolumeSize {
		return nil, fmt.Errorf("%w: volume %q size %d", ErrCorrupt, m.name, m.size)
	}
	v := &Volume{pool: p, id: m.id, served: m.name, meta: m, table: newTable(m.size)}
	v.size.Store(m.size)
	return v, nil
}

// maxVolumeSize is 64 TiB: the chunk slice of the largest volume stays 2 MiB.
const maxVolumeSize = int64(64) << 40

// setSize grows the table. REQUIRES ioMu (write) or exclusive access, and pool.mu.
func (v *Volume) setSize(size int64) {
	v.meta.size = size
	v.table = v.table.grow(size)
	v.size.Store(size)
}

func (v *Volume) checkLext(lext uint32) error {
	if int64(lext)*ExtentSize >= v.meta.size {
		return fmt.Errorf("%w: volume %q extent %d beyond its size %d", ErrCorrupt, v.meta.name, lext, v.meta.size)
	}
	return nil
}

// Name is the volume's name (also its NBD export name).
func (v *Volume) Name() string { return v.served }

// Size is the logical size in bytes.
func (v *Volume) Size() int64 { return v.size.Load() }

// ReadOnly reports whether writes are refused (snapshots).
func (v *Volume) ReadOnly() bool { return v.meta.readOnly }

// WriteWaits counts the writes to the volume's pool that had to wait for a
// commit round (for reserved extents: first writes to a thin volume,
// copy-on-write after a snapshot).
func (v *Volume) WriteWaits() uint64 { return v.pool.writeWaits.Load() }

// WritesCached reports whether every drive of the volume's pool takes writes
// into memory (drive.Drive.Cached): then a write is CPU work that never
// waits for a device, and running many at once only adds lock contention.
func (v *Volume) WritesCached() bool {
	for _, pd := range v.pool.layoutPtr.Load().drives {
		if !pd.d.Cached() {
			return false
		}
	}
	return true
}

// volumeID is how a volume's uid is shown (VolumeInfo.ID, the catalog) and
// looked up.
func volumeID(uid uint64) string { return fmt.Sprintf("%016x", uid) }

// Info describes the volume.
func (v *Volume) Info() VolumeInfo {
	p := v.pool
	p.mu.Lock()
	m := v.meta
	p.mu.Unlock()
	state := "up"
	if err := p.err(); err != nil {
		state = "error: " + err.Error()
	}
	used := v.used.Load() * ExtentSize
	if m.readOnly {
		used = v.exclusiveBytes()
	}
	return VolumeInfo{
		ID: volumeID(m.uid), Name: v.served, Size: v.size.Load(), Used: used,
		Repl: int(m.repl), IOPriority: p.priority, RequestedIOPriority: m.priority, Pool: p.number,
		Sticky: m.sticky, SnapInterval: int(m.snapInterval), SnapKeep: snapKeepOrDefault(m.snapKeep),
		BlockSize: int(m.blockSize), Parent: p.eng.servedParent(p, m), ReadOnly: m.readOnly, Snapshot: m.readOnly,
		State: state, Created: time.Unix(0, m.created).UTC(),
	}
}

// checkIO validates a request against the current size.
func (v *Volume) checkIO(off, n int64) error {
	if n <= 0 {
		return fmt.Errorf("%w: %s: zero or negative length %d", ErrInvalid, v.meta.name, n)
	}
	if off < 0 || off > v.size.Load()-n {
		return fmt.Errorf("%w: %s: offset %d length %d, size %d", ErrOutOfRange, v.meta.name, off, n, v.size.Load())
	}
	return nil
}

func (v *Volume) observe(op Op, n int, start time.Time, err error) {
	if o := v.pool.eng.opts.Observer; o != nil {
		o.ObserveIO(v.served, op, n, time.Since(start), err)
	}
}

func (v *Volume) now() time.Time {
	if v.pool.eng.opts.Observer != nil {
		return time.Now()
	}
	return time.Time{}
}

// ReadAt fills p from the volume at off. Never-written and trimmed blocks read
// as zeros.
func (v *Volume) ReadAt(p []byte, off int64) error {
	start := v.now()
	err := v.checkIO(off, int64(len(p)))
	if err == nil {
		v.ioMu.RLock()
		err = v.read(p, off)
		v.ioMu.RUnlock()
	}
	v.observe(OpRead, len(p), start, err)
	return err
}

// exclusiveBytes is the space only this volume references (what deleting
// it gives back). Listings, status, metrics and the snapshot scheduler ask for
// it often, so the count is kept until an extent's references change
// (allocator generation). Takes ioMu (read) and pool.mu.
func (v *Volume) exclusiveBytes() int64 {
	p := v.pool
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	gen := p.alloc.Generation()
	if v.exclusive.valid && v.exclusive.gen == gen && v.exclusive.baseGen == p.baseGen && v.exclusive.table == v.table {
		return v.exclusive.bytes
	}
	baseGen := p.baseGen
	var n, seen int64
	v.table.forEach(func(_ uint32, ext allocator.Extent) {
		if p.alloc.Refs(ext)-int(p.fills.baseRefs(ext)) == 1 {
			n++
		}
		// Let writers that need the pool lock in now and then.
		if seen++; seen%4096 == 0 {
			p.mu.Unlock()
			p.mu.Lock()
		}
	})
	if p.alloc.Generation() != gen || p.baseGen != baseGen {
		// References changed while the lock was let go: the count is a
		// mix of before and after. Good enough to report; not kept.
		return n * ExtentSize
	}
	v.exclusive = exclusiveCount{valid: true, gen: gen, baseGen: baseGen, table: v.table, bytes: n * ExtentSize}
	return n * ExtentSize
}

// exclusiveCount is a remembered exclusiveBytes result. REQUIRES pool.mu.
type exclusiveCount struct {
	valid   bool
	gen     uint64
	baseGen uint64
	table   *table
	bytes   int64
}

// checkWrite validates a modifying request.
func (v *Volume) checkWrite(off, n int64) error {
	if err := v.checkIO(off, n); err != nil {
		return err
	}
	if v.meta.readOnly {
		return fmt.Errorf("%w: %q is a snapshot", ErrReadOnly, v.meta.name)
	}
	return v.pool.err()
}

// WriteAt writes p at off. With fua, p is durable when WriteAt returns.
func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	return v.writeAt(p, off, fua, true)
}

// WriteAtDeferWriteback is WriteAt without the write-behind (see
// pool.writeBehind): the caller starts it with StartWriteback once it has
// answered the write, so that the write's reply does not wait for it. (The
// NBD server does: the device write then overlaps the round trip to the
// client and back, which a database's commit spends before its flush.)
func (v *Volume) WriteAtDeferWriteback(p []byte, off int64, fua bool) error {
	return v.writeAt(p, off, fua, false)
}

func (v *Volume) writeAt(p []byte, off int64, fua, writeBehind bool) error {
	start := v.now()
	err := v.checkWrite(off, int64(len(p)))
	if err == nil {
		v.ioMu.RLock()
		err = v.write(p, off)
		if err == nil && writeBehind && !fua {
			v.startWriteback(off, int64(len(p)))
		}
		v.ioMu.RUnlock()
		v.changed()
	}
	if err == nil && fua {
		err = v.pool.flush()
	}
	v.observe(OpWrite, len(p), start, err)
	return err
}

// StartWriteback starts the write-back of [off, off+n) now while the
// volume's pool sees flushes; otherwise, and on drives without a page cache,
// it does nothing. It never changes what is durable.
func (v *Volume) StartWriteback(off, n int64) {
	if !v.pool.writeBehindActive() || v.checkIO(off, n) != nil {
		return
	}
	v.ioMu.RLock()
	v.startWriteback(off, n)
	v.ioMu.RUnlock()
}

// Writeback starts the write-back of [off, off+n) now, whether or not the
// volume's pool sees flushes: for a writer that fills a volume and flushes
// it once at the end (a cloudsnap restore). Its flush then finds the data
// mostly written already, and its writes are not stalled midway by the
// kernel writing back a page cache full of their dirty pages. On drives
// without a page cache it does nothing. It never changes what is durable.
func (v *Volume) Writeback(off, n int64) {
	if v.checkIO(off, n) != nil {
		return
	}
	v.ioMu.RLock()
	v.writeback(off, n)
	v.ioMu.RUnlock()
}

// A WritebackRange is one range of a volume for StartWritebacks.
type WritebackRange struct{ Off, N int64 }

// writebackHinter is a drive that takes write-back hints (a cached file).
type writebackHinter interface{ StartWriteback(off, n int64) }

// StartWritebacks is StartWriteback for several ranges at once, as a
// server that answered a burst of writes has them: one write-back call per
// drive, over the span of that drive's ranges (on a cached drive, pages
// in the span that are not dirty cost nothing, and each call is a device
// kick). Ranges checkIO refuses are skipped.
func (v *Volume) StartWritebacks(rs []WritebackRange) {
	if !v.pool.writeBehindActive() {
		return
	}
	type span struct {
		wb     writebackHinter
		lo, hi int64
	}
	var buf [4]span // a pool has few drives
	spans := buf[:0]
	v.ioMu.RLock()
	for _, r := range rs {
		if v.checkIO(r.Off, r.N) != nil {
			continue
		}
		v.writebackPieces(r.Off, r.N, func(wb writebackHinter, off, n int64) {
			for i := range spans {
				if spans[i].wb == wb {
					spans[i].lo, spans[i].hi = min(spans[i].lo, off), max(spans[i].hi, off+n)
					return
				}
			}
			spans = append(spans, span{wb, off, off + n})
		})
	}
	v.ioMu.RUnlock()
	for _, s := range spans {
		s.wb.StartWriteback(s.lo, s.hi-s.lo)
	}
}

// startWriteback: StartWriteback for a range checkIO accepted. REQUIRES ioMu.
func (v *Volume) startWriteback(off, n int64) {
	if v.pool.writeBehindActive() {
		v.writeback(off, n)
	}
}

// writeback starts the write-back of the mapped blocks of a range checkIO
// accepted. REQUIRES ioMu.
func (v *Volume) writeback(off, n int64) {
	v.writebackPieces(off, n, writebackHinter.StartWriteback)
}

// writebackPieces calls fn for each mapped piece of a range checkIO
// accepted that lies on a drive taking write-back hints, with the piece's
// place on that drive; nothing once the volume is deleted. REQUIRES ioMu.
func (v *Volume) writebackPieces(off, n int64, fn func(wb writebackHinter, off, n int64)) {
	if v.deleted {
		return
	}
	lo := off &^ (BlockSize - 1)
	hi := (off + n + BlockSize - 1) &^ (BlockSize - 1)
	for lo < hi {
		in := lo % ExtentSize
		run := min(hi-lo, ExtentSize-in)
		if ext, mapped := v.table.lookup(uint32(lo / ExtentSize)); mapped {
			pd, base := v.pool.locateShared(ext)
			if wb, ok := pd.d.(writebackHinter); ok {
				fn(wb, base+in, run)
			}
		}
		lo += run
	}
}

// changed counts a write, trim or write-zeroes that is complete (even one
// that failed part way: what it did must be flushed) in pool.changes.
func (v *Volume) changed() { v.pool.changes.Add(1) }

// Flush makes every write acknowledged before the call durable.
func (v *Volume) Flush() error { return v.FlushCovering(v.FlushGen(), time.Time{}) }

// FlushGen reads the pool's change count: every write, trim and
// write-zeroes complete before the call is counted at or below it.
func (v *Volume) FlushGen() uint64 { return v.pool.changes.Load() }

// FlushCovering is Flush for a caller that read FlushGen when its flush
// arrived, at arrived: it makes durable every change counted up to gen, so
// every write acknowledged before that moment. When a round has covered gen
// already it returns at once. The flush's latency is observed from arrived
// when it is set (a server that answers several flushes with one round
// waited for each from its own arrival), else from the call.
func (v *Volume) FlushCovering(gen uint64, arrived time.Time) error {
	start := arrived
	if start.IsZero() {
		start = v.now()
	}
	v.pool.lastFlush.Store(time.Now().UnixNano())
	err := v.pool.flushCovering(gen)
	v.observe(OpFlush, 0, start, err)
	return err
}

// REQUIRES ioMu (read or write).
func (v *Volume) read(p []byte, off int64) error {
	if v.deleted {
		return fmt.Errorf("%w: volume %q was deleted", ErrNotFound, v.meta.name)
	}
	if off%BlockSize != 0 || len(p)%BlockSize != 0 {
		lo := off &^ (BlockSize - 1)
		hi := (off + int64(len(p)) + BlockSize - 1) &^ (BlockSize - 1)
		pb := drive.GetBuffer(int(hi - lo))
		defer drive.PutBuffer(pb)
		buf := pb.B
		if err := v.readAligned(buf, lo); err != nil {
			return err
		}
		copy(p, buf[off-lo:])
		return nil
	}
	return v.readAligned(p, off)
}

// readAligned reads whole blocks; unmapped extents read as zeros. REQUIRES ioMu.
func (v *Volume) readAligned(p []byte, off int64) error {
	t := v.table
	for len(p) > 0 {
		lext := uint32(off / ExtentSize)
		in := off % ExtentSize
		n := min(int64(len(p)), ExtentSize-in)
		if ext, mapped := t.lookup(lext); mapped {
			if err := v.pool.readMapped(ext, p[:n], in); err != nil {
				return err
			}
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
	return nil
}

// REQUIRES ioMu (read or write).
func (v *Volume) write(p []byte, off int64) error {
	if v.deleted {
		return fmt.Errorf("%w: volume %q was deleted", ErrNotFound, v.meta.name)
	}
	// A partial head or tail block is read, merged and written whole: the
	// drives only ever see whole, aligned blocks.
	if head := off % BlockSize; head != 0 {
		n := min(int64(len(p)), BlockSize-head)
		if err := v.writePartial(p[:n], off); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	if tail := int64(len(p)) % BlockSize; tail != 0 {
		cut := int64(len(p)) - tail
		if err := v.writePartial(p[cut:], off+cut); err != nil {
			return err
		}
		p = p[:cut]
	}
	if len(p) == 0 {
		return nil
	}
	return v.writeAligned(p, off)
}

// writePartial writes less than a block within one block. REQUIRES ioMu.
func (v *Volume) writePartial(p []byte, off int64) error {
	lo := off &^ (BlockSize - 1)
	mu := &v.rmw[(lo/BlockSize)%int64(len(v.rmw))]
	mu.Lock()
	defer mu.Unlock()
	pb := drive.GetBuffer(BlockSize)
	defer drive.PutBuffer(pb)
	buf := pb.B
	if err := v.readAligned(buf, lo); err != nil {
		return err
	}
	copy(buf[off-lo:], p)
	return v.writeAligned(buf, lo)
}

// writeAligned writes whole blocks, mapping an extent on first touch.
// REQUIRES ioMu.
func (v *Volume) writeAligned(p []byte, off int64) error {
	for len(p) > 0 {
		lext := uint32(off / ExtentSize)
		in := off % ExtentSize
		n := min(int64(len(p)), ExtentSize-in)
		ext, err := v.extentForWrite(lext)
		if err != nil {
			return err
		}
		if err := v.pool.writeMapped(ext, p[:n], in); err != nil {
			return err
		}
		p, off = p[n:], off+n
	}
	return nil
}

// extentForWrite returns the extent mapped at lext, mapping a reserved one
// (which reads as zeros) if there is none. The map record may reach the log
// before the data: the extent then reads zeros where the data did not land,
// which is the old content.
func (v *Volume) extentForWrite(lext uint32) (allocator.Extent, error) {
	if ext, mapped, shared := v.table.lookupShared(lext); mapped {
		if shared {
			return v.redirect(lext)
		}
		return ext, nil
	}
	p := v.pool
	// Each wait is one commit round: it makes a reservation durable, or
	// releases freed extents so that the next pass can reserve them. Other
	// writers may take what a round brought, so this loops until it gets an
	// extent or the pool has none anywhere (ENOSPC only when really full).
	for {
		p.mu.Lock()
		if ext, mapped := v.table.lookup(lext); mapped {
			p.mu.Unlock()
			return ext, nil
		}
		if ext, ok := p.takeReserved(); ok {
			v.table.set(lext, ext)
			p.enqueue(&record{typ: recMapExtent, vol: v.id, lext: lext, phys: uint32(ext)})
			v.used.Add(1)
			p.mu.Unlock()
			return ext, nil
		}
		if err := v.waitReserved("first write"); err != nil {
			return 0, err
		}
	}
}

// redirect gives lext an extent of its own before it is written, without
// copying: a fresh extent filling from the shared one (fill.go). Past twice the
// pool's fill budget (fillBudget) it copies instead (copyInto).
// REQUIRES ioMu (read or write).
func (v *Volume) redirect(lext uint32) (allocator.Extent, error) {
	mu := &v.cowMu[lext%uint32(len(v.cowMu))]
	mu.Lock()
	defer mu.Unlock()
	p := v.pool
	for {
		p.mu.Lock()
		old, mapped, shared := v.table.lookupShared(lext)
		if !mapped || !shared {
			p.mu.Unlock()
			return v.extentForWrite(lext)
		}
		if p.alloc.Refs(old) == 1 { // the others let go: it is ours alone
			v.table.set(lext, old)
			p.mu.Unlock()
			return old, nil
		}
		fresh, ok := p.takeReserved()
		if !ok {
			if err := v.waitReserved("redirect"); err != nil {
				return 0, err
			}
			continue
		}
		if p.fillRAMUsed() >= 2*p.fillBudget() {
			p.mu.Unlock()
			return v.copyInto(lext, old, fresh)
		}
		// The volume's reference on old becomes the fill state's.
		p.startFillLocked(fresh, old)
		v.table.set(lext, fresh)
		p.enqueue(&record{typ: recRedirect, vol: v.id, lext: lext, phys: uint32(fresh)})
		p.mu.Unlock()
		return fresh, nil
	}
}

// waitReserved waits for a round when no reserved extent was ready, or
// fails with ENOSPC when no round can bring one. Called with pool.mu held;
// returns with it released.
func (v *Volume) waitReserved(what string) error {
	p := v.pool
	worthWaiting := len(p.reserving) > 0 || p.reserveLocked() || len(p.pendingFree) > 0
	p.mu.Unlock()
	if !worthWaiting {
		return fmt.Errorf("%w: %s: volume %q (%s)", ErrNoSpace, p, v.meta.name, what)
	}
	p.writeWaits.Add(1)
	return p.commit()
}

// copyInto gives lext the reserved extent fresh holding a whole copy of
// the shared old (the fallback when too many extents are filling). The remap
// record may reach the log before the copy is on the drive: that is safe
// because the round that logs it syncs the data first, and until then a
// crash leaves lext on old. REQUIRES ioMu and lext's cowMu stripe (no write
// to lext can run, so the copy is of stable data).
func (v *Volume) copyInto(lext uint32, old, fresh allocator.Extent) (allocator.Extent, error) {
	p := v.pool
	pb := drive.GetBuffer(ExtentSize)
	buf := pb.B
	err := p.readMapped(old, buf, 0)
	if err == nil {
		err = p.writeExtent(fresh, buf, 0)
	}
	drive.PutBuffer(pb)
	if err != nil {
		// fresh stays reserved on disk, so recovery zeroes it; this pool
		// is done serving writes.
		return 0, p.fail(err)
	}
	p.mu.Lock()
	v.table.set(lext, fresh)
	p.enqueue(&record{typ: recRemap, vol: v.id, lext: lext, phys: uint32(fresh)})
	// This volume's reference on old goes once the remap is durable; if the
	// others let go meanwhile (a snapshot deleted during the copy), old is
	// then zeroed before it is freed (releaseBasesLocked).
	p.dropRefAfterRoundLocked(old)
	p.mu.Unlock()
	return fresh, nil
}

// Trim makes the whole blocks in [off, off+n) read as zeros and gives back
// the space of whole extents. Partial blocks at the edges are left alone
// (trim is advisory). Like a write, it is durable after the next Flush.
func (v *Volume) Trim(off, n int64) error {
	start := v.now()
	err := v.checkWrite(off, n)
	if err == nil {
		v.ioMu.Lock()
		err = v.deallocate(off, n)
		v.ioMu.Unlock()
		v.changed()
	}
	v.observe(OpTrim, int(n), start, err)
	return err
}

// WriteZeroes makes [off, off+n) read as zeros. Whole blocks are deallocated
// unless noHole asks for them to stay allocated (then zeros are written).
func (v *Volume) WriteZeroes(off, n int64, noHole bool) error {
	start := v.now()
	err := v.checkWrite(off, n)
	if err == nil {
		err = v.writeZeroes(off, n, noHole)
		v.changed()
	}
	v.observe(OpWriteZeroes, int(n), start, err)
	return err
}

func (v *Volume) writeZeroes(off, n int64, noHole bool) error {
	lo := (off + BlockSize - 1) &^ (BlockSize - 1)
	hi := (off + n) &^ (BlockSize - 1)
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	pb := drive.GetBuffer(ExtentSize)
	defer drive.PutBuffer(pb)
	zeros := pb.B
	clear(zeros)
	writeZeros := func(from, to int64) error {
		for from < to {
			c := min(to-from, ExtentSize)
			if err := v.write(zeros[:c], from); err != nil {
				return err
			}
			from += c
		}
		return nil
	}
	if noHole || lo >= hi {
		return writeZeros(off, off+n)
	}
	if err := writeZeros(off, lo); err != nil {
		return err
	}
	if err := writeZeros(hi, off+n); err != nil {
		return err
	}
	v.ioMu.RUnlock()
	v.ioMu.Lock()
	err := v.deallocate(lo, hi-lo)
	v.ioMu.Unlock()
	v.ioMu.RLock()
	return err
}

// deallocate makes the whole blocks of [off, off+n) read as zeros: extents
// wholly inside are unmapped (and freed), the blocks of partly covered ones
// are zeroed on the drive — through copy-on-write when the extent is shared.
// REQUIRES ioMu (write).
func (v *Volume) deallocate(off, n int64) error {
	if v.deleted {
		return fmt.Errorf("%w: volume %q was deleted", ErrNotFound, v.meta.name)
	}
	lo := (off + BlockSize - 1) &^ (BlockSize - 1)
	hi := (off + n) &^ (BlockSize - 1)
	p := v.pool
	for o := lo; o < hi; {
		lext := uint32(o / ExtentSize)
		in := o % ExtentSize
		c := min(hi-o, ExtentSize-in)
		if ext, mapped, shared := v.table.lookupShared(lext); mapped {
			var err error
			switch {
			case c == ExtentSize && p.fillOf(ext) != nil:
				// Zeroing a filling extent writes zeros into it (round.go).
				if err = p.beginZeroFill(); err == nil {
					p.mu.Lock()
					err = v.unmapLocked(lext, ext)
					p.mu.Unlock()
					p.endZeroFill()
				}
			case c == ExtentSize:
				p.mu.Lock()
				err = v.unmapLocked(lext, ext)
				p.mu.Unlock()
			case shared || p.fillOf(ext) != nil: // zeros are data a filling extent must mark
				err = v.writeZeroRange(o, c)
			default:
				err = p.zeroExtent(ext, in, c)
			}
			if err != nil {
				return err
			}
		}
		o += c
	}
	return nil
}

// writeZeroRange writes zeros over [off, off+n) (within one extent) through
// the normal write path. REQUIRES ioMu.
func (v *Volume) writeZeroRange(off, n int64) error {
	pb := drive.GetBuffer(int(n))
	defer drive.PutBuffer(pb)
	zeros := pb.B
	clear(zeros)
	return v.writeAligned(zeros, off)
}

// unmapLocked unmaps an extent. A shared one just loses this reference; an
// exclusive one is zeroed and is reusable only after the next round has
// synced the zeros and logged the unmap. REQUIRES ioMu (write) and pool.mu.
func (v *Volume) unmapLocked(lext uint32, ext allocator.Extent) error {
	if v.pool.alloc.Refs(ext) > 1 {
		v.table.unset(lext)
		v.used.Add(-1)
		v.pool.enqueue(&record{typ: recUnmapExtent, vol: v.id, lext: lext})
		v.pool.dropRefAfterRoundLocked(ext)
		return nil
	}
	v.pool.dropFillLocked(ext)
	if err := v.pool.zeroExtent(ext, 0, ExtentSize); err != nil {
		return err
	}
	v.table.unset(lext)
	v.used.Add(-1)
	v.pool.enqueue(&record{typ: recUnmapExtent, vol: v.id, lext: lext})
	v.pool.pendingFree = append(v.pool.pendingFree, ext)
	return nil
}

// Extents reports data and hole runs covering [off, off+n), at extent
// granularity (NBD base:allocation): a hole is never-written space; a data
// run may contain blocks that read as zeros.
func (v *Volume) Extents(off, n int64) ([]Extent, error) {
	if err := v.checkIO(off, n); err != nil {
		return nil, err
	}
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	var out []Extent
	add := func(o, l int64, k ExtentKind) {
		if last := len(out) - 1; last >= 0 && out[last].Kind == k && out[last].Offset+out[last].Length == o {
			out[last].Length += l
			return
		}
		out = append(out, Extent{Offset: o, Length: l, Kind: k})
	}
	for o := off; o < off+n; {
		lext := uint32(o / ExtentSize)
		extEnd := min(int64(lext+1)*ExtentSize, off+n)
		k := ExtentHole
		if _, mapped := v.table.lookup(lext); mapped {
			k = ExtentData
		}
		add(o, extEnd-o, k)
		o = extEnd
	}
	return out, nil
}

// Resize grows the volume to size bytes (a multiple of BlockSize).
func (v *Volume) Resize(size int64) error {
	_, err := v.pool.eng.UpdateVolume(v.served, VolumeUpdate{Size: &size})
	return err
}

// Pool extent I/O.

func (p *pool) readExtent(ext allocator.Extent, b []byte, in int64) error {
	pd, base := p.locateShared(ext)
	if err := pd.d.ReadAt(b, base+in); err != nil {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	return nil
}

func (p *pool) zeroExtent(ext allocator.Extent, in, n int64) error {
	pd, base := p.locateShared(ext)
	if err := pd.d.Zero(base+in, n); err != nil {
		return p.fail(fmt.Errorf("%w: %w", ErrIO, err))
	}
	pd.dirty.Store(true)
	return nil
}

func (p *pool) writeExtent(ext allocator.Extent, b []byte, in int64) error {
	pd, base := p.locateShared(ext)
	if err := pd.d.WriteAt(b, base+in); err != nil {
		// A drive that fails a write holds unknown data: the pool stops
		// taking writes (and says so in status) rather than guess.
		return p.fail(fmt.Errorf("%w: %w", ErrIO, err))
	}
	pd.dirty.Store(true)
	return nil
}

// writeBehindWindow is how recently a flush must have come for writes to
// start their write-back at once (write-behind): a volume seeing flushes (a
// database's commits) gets them cheaper, since the flush then finds its data
// already on the way; writes that are never flushed keep the page cache's
// batching. Write-behind (drive.File.StartWriteback) changes what is on the
// device early, never what is durable: a Flush still syncs.
const writeBehindWindow = 50 * time.Millisecond

// writeBehindActive reports whether the pool saw a flush within
// writeBehindWindow. A write to a pool without recent flushes (the common
// case) pays one atomic load and one clock read for it, nothing more.
func (p *pool) writeBehindActive() bool {
	last := p.lastFlush.Load()
	return last != 0 && time.Now().UnixNano()-last < int64(writeBehindWindow)
}

// locateShared finds an extent's drive without pool.mu: the drive table is
// published by copy-on-write in layoutPtr.
func (p *pool) locateShared(ext allocator.Extent) (*poolDrive, int64) {
	l := p.layoutPtr.Load()
	for i := len(l.bases) - 1; i >= 0; i-- {
		if uint32(ext) >= l.bases[i] {
			pd := l.drives[i]
			return pd, pd.sb.dataOff + int64(uint32(ext)-l.bases[i])*ExtentSize
		}
	}
	panic("engine: extent below every drive") // unreachable: bases[0] == 0
}

// poolLayout is an immutable view of a pool's drives for the I/O path.
type poolLayout struct {
	drives []*poolDrive
	bases  []uint32 // first pool extent of each drive
}
