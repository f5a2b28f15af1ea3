package engine

import (
	"math/bits"
	"sync/atomic"

	"github.com/cairn-storage/cairn/allocator"
)

// The thin mapping of one volume: logical extent → pool extent, plus which
// 4 KiB blocks of it have been written. A block that was never written (or
// was trimmed) reads as zeros whatever its extent holds on disk, so a reused
// extent never shows a previous owner's data.
//
// Shape: a slice of chunk pointers, one chunk per 1 GiB of logical space,
// allocated on first write in that GiB. An entry costs 16 bytes, so 1 TiB
// written costs 16 MiB; a partially written extent carries a 32-byte bitmap
// until its last block is written.
//
// Concurrency: readers and writers of data load entries with atomics while
// holding the volume's ioMu for reading. Every change to an entry happens with
// the pool's mu held (so a checkpoint taken under mu is consistent), and a
// change that frees an extent also holds ioMu for writing (so no I/O is in
// flight to an extent when it is given back).
const (
	chunkExtents = 1024
	fullFlag     = 1 << 31 // in entry.phys: every block of the extent is written
)

type chunk [chunkExtents]entry

type entry struct {
	phys atomic.Uint32              // 0 = unmapped; else pool extent+1, | fullFlag when full
	bits atomic.Pointer[atomicMask] // written blocks while not full; nil when full or unmapped
}

type atomicMask [blocksPerExtent / 64]atomic.Uint64

// entryState is a snapshot of an entry for the I/O path.
type entryState struct {
	ext    allocator.Extent
	mapped bool
	full   bool
	bits   *atomicMask
}

func (e *entry) load() entryState {
	p := e.phys.Load()
	if p == 0 {
		return entryState{}
	}
	s := entryState{ext: allocator.Extent(p&^fullFlag - 1), mapped: true, full: p&fullFlag != 0}
	if !s.full {
		// Order matters: markFull sets fullFlag before dropping bits, so a nil
		// bits pointer seen after a non-full phys means it just became full.
		if s.bits = e.bits.Load(); s.bits == nil {
			s.full = true
		}
	}
	return s
}

// written reports whether block b of the extent holds data.
func (s *entryState) written(b int) bool {
	return s.full || (s.mapped && s.bits.Load64(b))
}

func (m *atomicMask) Load64(b int) bool { return m[b/64].Load()&(1<<(b%64)) != 0 }

func (m *atomicMask) snapshot() (out blockMask) {
	for i := range m {
		out[i] = m[i].Load()
	}
	return out
}

// maskRange returns a mask with blocks [first, first+n) set.
func maskRange(first, n int) (m blockMask) {
	for b := first; b < first+n; b++ {
		m[b/64] |= 1 << (b % 64)
	}
	return m
}

func (m *blockMask) full() bool {
	for _, w := range m {
		if w != ^uint64(0) {
			return false
		}
	}
	return true
}

func (m *blockMask) empty() bool {
	for _, w := range m {
		if w != 0 {
			return false
		}
	}
	return true
}

func (m *blockMask) count() (n int) {
	for _, w := range m {
		n += bits.OnesCount64(w)
	}
	return n
}

// table is a volume's mapping.
type table struct {
	chunks []atomic.Pointer[chunk]
}

func newTable(size int64) *table {
	return &table{chunks: make([]atomic.Pointer[chunk], chunksFor(size))}
}

func chunksFor(size int64) int {
	ext := (size + ExtentSize - 1) / ExtentSize
	return int((ext + chunkExtents - 1) / chunkExtents)
}

// get returns the entry of a logical extent, or nil when its chunk was never
// written.
func (t *table) get(lext uint32) *entry {
	c := t.chunks[lext/chunkExtents].Load()
	if c == nil {
		return nil
	}
	return &c[lext%chunkExtents]
}

// REQUIRES pool.mu.
func (t *table) getOrCreate(lext uint32) *entry {
	slot := &t.chunks[lext/chunkExtents]
	c := slot.Load()
	if c == nil {
		c = new(chunk)
		slot.Store(c)
	}
	return &c[lext%chunkExtents]
}

// grow returns a table covering size that shares t's chunks. REQUIRES pool.mu
// and the volume's ioMu held for writing.
func (t *table) grow(size int64) *table {
	n := newTable(size)
	for i := range t.chunks {
		n.chunks[i].Store(t.chunks[i].Load())
	}
	return n
}

// forEach visits every mapped entry in logical order. REQUIRES pool.mu.
func (t *table) forEach(fn func(lext uint32, e *entry)) {
	for ci := range t.chunks {
		c := t.chunks[ci].Load()
		if c == nil {
			continue
		}
		for i := range c {
			if c[i].phys.Load() != 0 {
				fn(uint32(ci*chunkExtents+i), &c[i])
			}
		}
	}
}

// Entry mutations. All REQUIRE pool.mu.

func (e *entry) setMapped(ext allocator.Extent) {
	e.bits.Store(new(atomicMask))
	e.phys.Store(uint32(ext) + 1)
}

// setFull maps ext with every block written (checkpoint load).
func (e *entry) setFull(ext allocator.Extent) {
	e.phys.Store((uint32(ext) + 1) | fullFlag)
	e.bits.Store(nil)
}

// orBlocks marks blocks written and returns those that were not already.
func (e *entry) orBlocks(m blockMask) (added blockMask) {
	p := e.phys.Load()
	if p == 0 || p&fullFlag != 0 {
		return added
	}
	bm := e.bits.Load()
	var now blockMask
	for i := range m {
		old := bm[i].Or(m[i])
		added[i] = m[i] &^ old
		now[i] = old | m[i]
	}
	if now.full() {
		e.phys.Store(p | fullFlag)
		e.bits.Store(nil)
	}
	return added
}

// clearBlocks marks blocks unwritten; returns which were written, and whether
// the extent now holds nothing.
func (e *entry) clearBlocks(m blockMask) (cleared blockMask, empty bool) {
	p := e.phys.Load()
	if p == 0 {
		return cleared, true
	}
	bm := e.bits.Load()
	if p&fullFlag != 0 {
		bm = new(atomicMask)
		for i := range bm {
			bm[i].Store(^uint64(0))
		}
		e.bits.Store(bm)
		e.phys.Store(p &^ fullFlag)
	}
	var now blockMask
	for i := range m {
		old := bm[i].And(^m[i])
		cleared[i] = old & m[i]
		now[i] = old &^ m[i]
	}
	return cleared, now.empty()
}

func (e *entry) unmap() {
	e.phys.Store(0)
	e.bits.Store(nil)
}
