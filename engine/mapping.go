package engine

import (
	"sync/atomic"

	"github.com/cairn-storage/cairn/allocator"
)

// The thin mapping of one volume: logical extent → pool extent.
//
// What makes a thin mapping this small safe: an extent that is free reads as
// zeros on its drive, durably. Freed extents are zeroed (a punched hole, or
// BLKZEROOUT) before the round that gives them back to the allocator syncs
// the drives, and new drives are zeroed when formatted. So a newly mapped
// extent reads zeros wherever it was not written — never a previous owner's
// data — and the mapping needs no per-block state: 4 bytes per extent, and a
// first write costs one record per 1 MiB extent, not one per block. The one
// exception is an extent redirected after a snapshot while it fills from the
// shared one (fill.go): 256 bits say which of its blocks hold data, for as
// long as it is filling, in a pool-wide table keyed by the extent — the
// entry here stays 4 bytes.
//
// Shape: two levels allocated on first write: a directory (2 KiB) per 64 GiB
// of logical space holding chunk pointers, a chunk (1 KiB) per 256 MiB holding
// entries. 1 TiB fully written costs about 4 MiB; an empty 64 TiB volume costs
// 8 KiB (so metadata that claims huge volumes cannot make Open allocate much).
//
// Concurrency: the I/O path loads entries atomically while holding the
// volume's ioMu for reading. Every change to an entry happens with the pool's
// mu held (so a checkpoint taken under mu is consistent); a change that frees
// an extent also holds ioMu for writing (so no I/O is in flight to an extent
// when it is given back).
const (
	chunkExtents = 256
	// sharedFlag marks an entry whose extent another volume (a snapshot or
	// clone) may also map, or a fill state reads from: a write to it
	// redirects to a fresh extent first (fill.go). It may be
	// stale in one direction only — set while the extent is no longer shared
	// (the write path then finds one reference and clears it) — never clear
	// while shared.
	sharedFlag = 1 << 31
)

type chunk [chunkExtents]atomic.Uint32 // 0 = unmapped, else (pool extent + 1) | sharedFlag?

const dirChunks = 256

type chunkDir [dirChunks]atomic.Pointer[chunk]

// table is a volume's mapping.
type table struct {
	dirs []atomic.Pointer[chunkDir]
}

func newTable(size int64) *table {
	return &table{dirs: make([]atomic.Pointer[chunkDir], dirsFor(size))}
}

func dirsFor(size int64) int {
	ext := (size + ExtentSize - 1) / ExtentSize
	return int((ext + chunkExtents*dirChunks - 1) / (chunkExtents * dirChunks))
}

// slot returns the entry of lext, or nil when nothing there was ever mapped.
func (t *table) slot(lext uint32) *atomic.Uint32 {
	d := t.dirs[lext/(chunkExtents*dirChunks)].Load()
	if d == nil {
		return nil
	}
	c := d[lext/chunkExtents%dirChunks].Load()
	if c == nil {
		return nil
	}
	return &c[lext%chunkExtents]
}

// lookup returns the pool extent mapped at lext.
func (t *table) lookup(lext uint32) (allocator.Extent, bool) {
	ext, mapped, _ := t.lookupShared(lext)
	return ext, mapped
}

// lookupShared also reports whether the entry is marked shared.
func (t *table) lookupShared(lext uint32) (ext allocator.Extent, mapped, shared bool) {
	e := t.slot(lext)
	if e == nil {
		return 0, false, false
	}
	p := e.Load()
	return allocator.Extent(p&^sharedFlag - 1), p != 0, p&sharedFlag != 0
}

// set maps lext to ext. REQUIRES pool.mu.
func (t *table) set(lext uint32, ext allocator.Extent) { t.setShared(lext, ext, false) }

// setShared maps lext to ext, marked shared or not. REQUIRES pool.mu.
func (t *table) setShared(lext uint32, ext allocator.Extent, shared bool) {
	ds := &t.dirs[lext/(chunkExtents*dirChunks)]
	d := ds.Load()
	if d == nil {
		d = new(chunkDir)
		ds.Store(d)
	}
	cs := &d[lext/chunkExtents%dirChunks]
	c := cs.Load()
	if c == nil {
		c = new(chunk)
		cs.Store(c)
	}
	v := uint32(ext) + 1
	if shared {
		v |= sharedFlag
	}
	c[lext%chunkExtents].Store(v)
}

// copyFrom makes t map exactly what src maps, every entry marked shared (and
// marks src's entries shared too). REQUIRES pool.mu; t's volume's ioMu (write).
func (t *table) copyFrom(src *table) {
	for i := range t.dirs {
		var d *chunkDir
		if i < len(src.dirs) {
			if sd := src.dirs[i].Load(); sd != nil {
				d = new(chunkDir)
				for ci := range sd {
					sc := sd[ci].Load()
					if sc == nil {
						continue
					}
					c := new(chunk)
					for j := range sc {
						if p := sc[j].Load(); p != 0 {
							sc[j].Store(p | sharedFlag)
							c[j].Store(p | sharedFlag)
						}
					}
					d[ci].Store(c)
				}
			}
		}
		t.dirs[i].Store(d)
	}
}

// unset unmaps lext. REQUIRES pool.mu and the volume's ioMu (write).
func (t *table) unset(lext uint32) {
	if e := t.slot(lext); e != nil {
		e.Store(0)
	}
}

// grow returns a table covering size that shares t's directories. REQUIRES
// pool.mu and the volume's ioMu held for writing.
func (t *table) grow(size int64) *table {
	n := newTable(size)
	for i := range t.dirs {
		n.dirs[i].Store(t.dirs[i].Load())
	}
	return n
}

// forEach visits every mapped extent in logical order. REQUIRES pool.mu.
func (t *table) forEach(fn func(lext uint32, ext allocator.Extent)) {
	for di := range t.dirs {
		d := t.dirs[di].Load()
		if d == nil {
			continue
		}
		for ci := range d {
			c := d[ci].Load()
			if c == nil {
				continue
			}
			base := uint32(di*dirChunks+ci) * chunkExtents
			for i := range c {
				if p := c[i].Load(); p != 0 {
					fn(base+uint32(i), allocator.Extent(p&^sharedFlag-1))
				}
			}
		}
	}
}
