// Package allocator hands out the extents of one pool. A pool's drives each
// contribute a run of fixed-size extents; extents are numbered pool-wide
// (drive 0's first, then drive 1's, …) and an allocation takes the next free
// extent of the next drive in turn, so consecutive allocations stripe across
// the drives (raid0).
//
// The allocator keeps no state of its own on disk: the engine's mapping (in
// its checkpoints and WAL) is the truth, and recovery rebuilds the allocator
// by calling Take for every mapped extent. That makes a double allocation after
// a crash impossible by construction.
//
// Extents carry a reference count so that snapshots can share them; Free
// drops one reference and the extent is free again when none remain.
package allocator

import (
	"errors"
	"fmt"
	"math/bits"
)

var (
	ErrNoSpace = errors.New("allocator: no free extent")
	ErrInvalid = errors.New("allocator: invalid extent")
)

// Extent is a pool-wide extent number.
type Extent uint32

// Allocator is not safe for concurrent use; the engine's pool lock guards it.
type Allocator struct {
	drives []driveSpace
	next   int // drive to try first on the next Allocate
	used   int64
	total  int64
	shared map[Extent]uint32 // extra references beyond the first (snapshots)
	gen    uint64            // bumped whenever an extent in use gains or loses a reference
}

type driveSpace struct {
	base  Extent
	count int
	used  int
	hint  int      // first word that may have a free bit
	bits  []uint64 // 1 = in use
}

func New() *Allocator { return &Allocator{shared: map[Extent]uint32{}} }

// AddDrive appends a drive of count extents; its extents are numbered after
// every existing drive's. Returns the first extent number.
func (a *Allocator) AddDrive(count int) Extent {
	var base Extent
	if n := len(a.drives); n > 0 {
		base = a.drives[n-1].base + Extent(a.drives[n-1].count)
	}
	a.drives = append(a.drives, driveSpace{base: base, count: count, bits: make([]uint64, (count+63)/64)})
	a.total += int64(count)
	return base
}

// Allocate takes one free extent, preferring the drive after the last one used.
func (a *Allocator) Allocate() (Extent, error) {
	for i := 0; i < len(a.drives); i++ {
		d := (a.next + i) % len(a.drives)
		ds := &a.drives[d]
		if ds.used == ds.count {
			continue
		}
		for w := ds.hint; w < len(ds.bits); w++ {
			if ds.bits[w] == ^uint64(0) {
				continue
			}
			b := bits.TrailingZeros64(^ds.bits[w])
			idx := w*64 + b
			if idx >= ds.count {
				break
			}
			ds.bits[w] |= 1 << b
			ds.hint = w
			ds.used++
			a.used++
			a.next = d + 1
			return ds.base + Extent(idx), nil
		}
	}
	return 0, ErrNoSpace
}

// Take marks a specific extent in use (recovery); taking it again adds a reference.
func (a *Allocator) Take(e Extent) error {
	ds, idx, err := a.locate(e)
	if err != nil {
		return err
	}
	if ds.bits[idx/64]&(1<<(idx%64)) != 0 {
		a.shared[e]++
		return nil
	}
	ds.bits[idx/64] |= 1 << (idx % 64)
	ds.used++
	a.used++
	return nil
}

// Ref adds a reference to an extent in use (a snapshot sharing it).
func (a *Allocator) Ref(e Extent) error {
	ds, idx, err := a.locate(e)
	if err != nil {
		return err
	}
	if ds.bits[idx/64]&(1<<(idx%64)) == 0 {
		return fmt.Errorf("%w: ref of free extent %d", ErrInvalid, e)
	}
	a.shared[e]++
	a.gen++
	return nil
}

// Generation changes whenever an extent in use gains or loses a reference, so
// a count over existing extents' references (a snapshot's exclusive space)
// is still true while it is unchanged.
func (a *Allocator) Generation() uint64 { return a.gen }

// Refs reports how many references an extent has (0 = free).
func (a *Allocator) Refs(e Extent) int {
	ds, idx, err := a.locate(e)
	if err != nil || ds.bits[idx/64]&(1<<(idx%64)) == 0 {
		return 0
	}
	return 1 + int(a.shared[e])
}

// Free drops one reference; the extent is free when the last one goes.
func (a *Allocator) Free(e Extent) error {
	ds, idx, err := a.locate(e)
	if err != nil {
		return err
	}
	if ds.bits[idx/64]&(1<<(idx%64)) == 0 {
		return fmt.Errorf("%w: double free of extent %d", ErrInvalid, e)
	}
	a.gen++
	if n := a.shared[e]; n > 0 {
		if n == 1 {
			delete(a.shared, e)
		} else {
			a.shared[e] = n - 1
		}
		return nil
	}
	ds.bits[idx/64] &^= 1 << (idx % 64)
	ds.used--
	a.used--
	if idx/64 < ds.hint {
		ds.hint = idx / 64
	}
	return nil
}

func (a *Allocator) locate(e Extent) (*driveSpace, int, error) {
	for i := range a.drives {
		ds := &a.drives[i]
		if e >= ds.base && e < ds.base+Extent(ds.count) {
			return ds, int(e - ds.base), nil
		}
	}
	return nil, 0, fmt.Errorf("%w: extent %d is in no drive", ErrInvalid, e)
}

// Drive returns which drive an extent is on and its index there.
func (a *Allocator) Drive(e Extent) (drive, index int, ok bool) {
	for i := range a.drives {
		ds := &a.drives[i]
		if e >= ds.base && e < ds.base+Extent(ds.count) {
			return i, int(e - ds.base), true
		}
	}
	return 0, 0, false
}

// Used and Total count extents; DriveUsed counts one drive's.
func (a *Allocator) Used() int64  { return a.used }
func (a *Allocator) Total() int64 { return a.total }
func (a *Allocator) DriveUsed(d int) int {
	return a.drives[d].used
}

// Check verifies the invariants: per-drive counts match the bitmaps, free +
// used = capacity, shared references only on extents in use. For tests.
func (a *Allocator) Check() error {
	var used int64
	for i := range a.drives {
		ds := &a.drives[i]
		n := 0
		for w, word := range ds.bits {
			if w == len(ds.bits)-1 && ds.count%64 != 0 {
				if word>>(ds.count%64) != 0 {
					return fmt.Errorf("allocator: drive %d: bits set beyond its %d extents", i, ds.count)
				}
			}
			n += bits.OnesCount64(word)
		}
		if n != ds.used {
			return fmt.Errorf("allocator: drive %d: %d extents marked, %d counted", i, n, ds.used)
		}
		used += int64(n)
	}
	if used != a.used {
		return fmt.Errorf("allocator: %d extents used on drives, %d counted", used, a.used)
	}
	if a.used < 0 || a.used > a.total {
		return fmt.Errorf("allocator: used %d of %d", a.used, a.total)
	}
	for e := range a.shared {
		if a.Refs(e) < 2 {
			return fmt.Errorf("allocator: shared count on free extent %d", e)
		}
	}
	return nil
}
