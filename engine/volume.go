package engine

import (
	"errors"
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
	pool *pool
	id   uint32

	ioMu    sync.RWMutex
	table   *table       // REQUIRES ioMu to read the pointer; replaced under ioMu (write) + pool.mu
	meta    volumeMeta   // REQUIRES pool.mu (name, uid, created never change)
	size    atomic.Int64 // logical size in bytes
	used    atomic.Int64 // extents mapped
	deleted bool         // REQUIRES ioMu (write) to set
	holds   atomic.Int32
	rmw     [16]sync.Mutex // partial-block read-modify-write, striped by block
}

// newVolume builds an empty volume in p (not yet registered).
func (p *pool) newVolume(m volumeMeta) (*Volume, error) {
	if m.size <= 0 || m.size%BlockSize != 0 || m.size > maxVolumeSize {
		return nil, fmt.Errorf("%w: volume %q size %d", ErrCorrupt, m.name, m.size)
	}
	v := &Volume{pool: p, id: m.id, meta: m, table: newTable(m.size)}
	v.size.Store(m.size)
	return v, nil
}

// maxVolumeSize keeps logical extent numbers in 32 bits (4 PiB).
const maxVolumeSize = int64(1<<32-1) * ExtentSize

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
func (v *Volume) Name() string { return v.meta.name }

// Size is the logical size in bytes.
func (v *Volume) Size() int64 { return v.size.Load() }

// ReadOnly reports whether writes are refused (snapshots, later).
func (v *Volume) ReadOnly() bool { return false }

// Hold marks the volume in use (exported, attached) until release is called;
// DeleteVolume refuses a held volume.
func (v *Volume) Hold() (release func()) {
	v.holds.Add(1)
	var once sync.Once
	return func() { once.Do(func() { v.holds.Add(-1) }) }
}

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
	return VolumeInfo{
		ID: fmt.Sprintf("%016x", m.uid), Name: m.name, Size: v.size.Load(), Used: v.used.Load() * ExtentSize,
		Repl: int(m.repl), IOPriority: p.priority, RequestedIOPriority: m.priority, Pool: p.number,
		Sticky: m.sticky, SnapInterval: int(m.snapInterval), BlockSize: int(m.blockSize),
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
		o.ObserveIO(v.meta.name, op, n, time.Since(start), err)
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

// WriteAt writes p at off. With fua, p is durable when WriteAt returns.
func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	start := v.now()
	err := v.checkIO(off, int64(len(p)))
	if err == nil {
		err = v.pool.err()
	}
	if err == nil {
		v.ioMu.RLock()
		err = v.write(p, off)
		v.ioMu.RUnlock()
	}
	if err == nil && fua {
		err = v.pool.commit()
	}
	v.observe(OpWrite, len(p), start, err)
	return err
}

// Flush makes every write acknowledged before the call durable.
func (v *Volume) Flush() error {
	start := v.now()
	err := v.pool.commit()
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
		buf := getBuf(int(hi - lo))
		defer putBuf(buf)
		if err := v.readAligned(buf, lo); err != nil {
			return err
		}
		copy(p, buf[off-lo:])
		return nil
	}
	return v.readAligned(p, off)
}

// readAligned reads whole blocks. REQUIRES ioMu.
func (v *Volume) readAligned(p []byte, off int64) error {
	t := v.table
	for len(p) > 0 {
		lext := uint32(off / ExtentSize)
		in := off % ExtentSize
		n := min(int64(len(p)), ExtentSize-in)
		var s entryState
		if e := t.get(lext); e != nil {
			s = e.load()
		}
		switch {
		case !s.mapped:
			clear(p[:n])
		case s.full:
			if err := v.pool.readExtent(s.ext, p[:n], in); err != nil {
				return err
			}
		default:
			// Runs of written blocks are read, runs of unwritten ones zeroed.
			for b := in / BlockSize; b < (in+n)/BlockSize; {
				w := s.written(int(b))
				e := b + 1
				for e < (in+n)/BlockSize && s.written(int(e)) == w {
					e++
				}
				seg := p[(b*BlockSize - in):(e*BlockSize - in)]
				if w {
					if err := v.pool.readExtent(s.ext, seg, b*BlockSize); err != nil {
						return err
					}
				} else {
					clear(seg)
				}
				b = e
			}
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
	buf := getBuf(BlockSize)
	defer putBuf(buf)
	if err := v.readAligned(buf, lo); err != nil {
		return err
	}
	copy(buf[off-lo:], p)
	return v.writeAligned(buf, lo)
}

// writeAligned writes whole blocks, allocating extents on first touch.
// REQUIRES ioMu.
func (v *Volume) writeAligned(p []byte, off int64) error {
	for len(p) > 0 {
		lext := uint32(off / ExtentSize)
		in := off % ExtentSize
		n := min(int64(len(p)), ExtentSize-in)
		e, s, err := v.entryForWrite(lext)
		if err != nil {
			return err
		}
		if err := v.pool.writeExtent(s.ext, p[:n], in); err != nil {
			return err
		}
		if !s.full {
			v.markWritten(lext, e, int(in/BlockSize), int(n/BlockSize))
		}
		p, off = p[n:], off+n
	}
	return nil
}

// entryForWrite returns the entry of lext, mapping a new extent if it has none.
func (v *Volume) entryForWrite(lext uint32) (*entry, entryState, error) {
	if e := v.table.get(lext); e != nil {
		if s := e.load(); s.mapped {
			return e, s, nil
		}
	}
	p := v.pool
	for attempt := 0; ; attempt++ {
		p.mu.Lock()
		e := v.table.getOrCreate(lext)
		if s := e.load(); s.mapped {
			p.mu.Unlock()
			return e, s, nil
		}
		ext, err := p.alloc.Allocate()
		if errors.Is(err, allocator.ErrNoSpace) && len(p.pendingFree) > 0 && attempt == 0 {
			// Trimmed extents become reusable once their unmap is durable.
			p.mu.Unlock()
			if err := p.commit(); err != nil {
				return nil, entryState{}, err
			}
			continue
		}
		if err != nil {
			p.mu.Unlock()
			return nil, entryState{}, fmt.Errorf("%w: %s: volume %q", ErrNoSpace, p, v.meta.name)
		}
		e.setMapped(ext)
		p.enqueue(&record{typ: recMapExtent, vol: v.id, lext: lext, phys: uint32(ext)})
		v.used.Add(1)
		p.mu.Unlock()
		return e, e.load(), nil
	}
}

// markWritten records blocks as written after their data is on the drive
// (never before: a record must not promise data the drive may not have).
func (v *Volume) markWritten(lext uint32, e *entry, first, n int) {
	s := e.load()
	m := maskRange(first, n)
	if s.full || s.bits == nil {
		return
	}
	already := true
	for i := range m {
		if m[i]&^s.bits[i].Load() != 0 {
			already = false
			break
		}
	}
	if already {
		return
	}
	p := v.pool
	p.mu.Lock()
	if added := e.orBlocks(m); !added.empty() {
		p.enqueue(&record{typ: recSetBlocks, vol: v.id, lext: lext, mask: added})
	}
	p.mu.Unlock()
}

// Trim gives back the space of the whole blocks in [off, off+n); they read as
// zeros afterwards. Partial blocks at the edges are left alone (trim is advisory).
func (v *Volume) Trim(off, n int64) error {
	start := v.now()
	err := v.checkIO(off, n)
	if err == nil {
		err = v.pool.err()
	}
	if err == nil {
		v.ioMu.Lock()
		err = v.deallocate(off, n)
		v.ioMu.Unlock()
	}
	v.observe(OpTrim, int(n), start, err)
	return err
}

// WriteZeroes makes [off, off+n) read as zeros. Whole blocks are deallocated
// unless noHole asks for them to stay allocated (then zeros are written).
func (v *Volume) WriteZeroes(off, n int64, noHole bool) error {
	start := v.now()
	err := v.checkIO(off, n)
	if err == nil {
		err = v.pool.err()
	}
	if err == nil {
		err = v.writeZeroes(off, n, noHole)
	}
	v.observe(OpWriteZeroes, int(n), start, err)
	return err
}

func (v *Volume) writeZeroes(off, n int64, noHole bool) error {
	lo := (off + BlockSize - 1) &^ (BlockSize - 1)
	hi := (off + n) &^ (BlockSize - 1)
	v.ioMu.RLock()
	defer v.ioMu.RUnlock()
	zeros := getBuf(ExtentSize)
	defer putBuf(zeros)
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

// deallocate unmarks the whole blocks of [off, off+n) and frees extents left
// empty. REQUIRES ioMu (write).
func (v *Volume) deallocate(off, n int64) error {
	if v.deleted {
		return fmt.Errorf("%w: volume %q was deleted", ErrNotFound, v.meta.name)
	}
	lo := (off + BlockSize - 1) &^ (BlockSize - 1)
	hi := (off + n) &^ (BlockSize - 1)
	p := v.pool
	p.mu.Lock()
	defer p.mu.Unlock()
	for o := lo; o < hi; {
		lext := uint32(o / ExtentSize)
		in := o % ExtentSize
		c := min(hi-o, ExtentSize-in)
		if e := v.table.get(lext); e != nil && e.phys.Load() != 0 {
			s := e.load()
			if in == 0 && c == ExtentSize {
				v.unmapLocked(lext, e, s.ext)
			} else if cleared, empty := e.clearBlocks(maskRange(int(in/BlockSize), int(c/BlockSize))); empty {
				v.unmapLocked(lext, e, s.ext)
			} else if !cleared.empty() {
				p.enqueue(&record{typ: recClearBlocks, vol: v.id, lext: lext, mask: cleared})
			}
		}
		o += c
	}
	return nil
}

// unmapLocked frees a mapped extent: reusable only after the next round makes
// the unmap durable. REQUIRES ioMu (write) and pool.mu.
func (v *Volume) unmapLocked(lext uint32, e *entry, ext allocator.Extent) {
	e.unmap()
	v.used.Add(-1)
	v.pool.enqueue(&record{typ: recUnmapExtent, vol: v.id, lext: lext})
	v.pool.pendingFree = append(v.pool.pendingFree, ext)
}

// Extents reports data and hole runs covering [off, off+n), at block
// granularity (NBD base:allocation).
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
		var s entryState
		if e := v.table.get(lext); e != nil {
			s = e.load()
		}
		if !s.mapped || s.full {
			k := ExtentHole
			if s.mapped {
				k = ExtentData
			}
			add(o, extEnd-o, k)
			o = extEnd
			continue
		}
		for o < extEnd {
			b := int((o % ExtentSize) / BlockSize)
			blockEnd := min((o&^(BlockSize-1))+BlockSize, extEnd)
			k := ExtentHole
			if s.written(b) {
				k = ExtentData
			}
			add(o, blockEnd-o, k)
			o = blockEnd
		}
	}
	return out, nil
}

// Resize grows the volume to size bytes (a multiple of BlockSize).
func (v *Volume) Resize(size int64) error {
	_, err := v.pool.eng.UpdateVolume(v.meta.name, VolumeUpdate{Size: &size})
	return err
}

// Pool extent I/O.

func (p *pool) readExtent(ext allocator.Extent, b []byte, in int64) error {
	pd, base := p.locateShared(ext)
	if err := pd.d.ReadAt(b, base+in); err != nil {
		return fmt.Errorf("%w: %v", ErrIO, err)
	}
	return nil
}

func (p *pool) writeExtent(ext allocator.Extent, b []byte, in int64) error {
	pd, base := p.locateShared(ext)
	if err := pd.d.WriteAt(b, base+in); err != nil {
		return fmt.Errorf("%w: %v", ErrIO, err)
	}
	pd.dirty.Store(true)
	return nil
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

// Buffers for partial blocks and zero runs, reused (the hot path allocates nothing).
var bufPool = sync.Pool{New: func() any { b := drive.AlignedBuffer(ExtentSize); return &b }}

func getBuf(n int) []byte {
	if n > ExtentSize {
		return drive.AlignedBuffer(n)
	}
	return (*bufPool.Get().(*[]byte))[:n]
}

func putBuf(b []byte) {
	if cap(b) == ExtentSize {
		b = b[:cap(b)]
		bufPool.Put(&b)
	}
}
