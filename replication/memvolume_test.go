package replication

import (
	"fmt"
	"slices"
	"sync"

	"github.com/cairn-storage/cairn/engine"
)

// memPage is memVolume's unit: what it keeps per entry and what a crash
// keeps or loses whole.
const memPage = 4096

// memVolume is a replica volume in memory with a durable and a volatile
// layer, as an engine volume behaves across a crash: writes land in the
// volatile layer, Flush (and FUA) copies them to the durable one, and crash
// throws the volatile layer away. Pages are kept sparsely (absent = zeros),
// so a volume of many regions costs only what was written.
//
// Tests can make it fail or stall an operation (fail, before) and count
// what reached it (wrote).
type memVolume struct {
	size int64

	mu       sync.Mutex
	durable  map[int64][]byte // REQUIRES mu; page index → content
	volatile map[int64][]byte // REQUIRES mu; written since the last flush; nil = zeroed
	wrote    int64            // REQUIRES mu; bytes written or zeroed (WriteAt, Trim, WriteZeroes)
	writes   int              // REQUIRES mu; calls of WriteAt, Trim, WriteZeroes

	// hooks, set before the volume is served (or under mu): before runs
	// ahead of every operation, outside mu (it may block); fail, under mu,
	// makes the operation return its error.
	before func(op string, off, n int64)
	fail   func(op string, off, n int64) error
}

func newMemVolume(size int64) *memVolume {
	return &memVolume{size: size, durable: map[int64][]byte{}, volatile: map[int64][]byte{}}
}

func (v *memVolume) Size() int64 { return v.size }

// enter runs the hooks and checks the range; on nil the caller holds mu.
func (v *memVolume) enter(op string, off, n int64) error {
	v.mu.Lock()
	before := v.before
	v.mu.Unlock()
	if before != nil {
		before(op, off, n)
	}
	v.mu.Lock()
	if off < 0 || n < 0 || off+n > v.size {
		v.mu.Unlock()
		return fmt.Errorf("%w: [%d, %d) outside %d bytes", engine.ErrInvalid, off, off+n, v.size)
	}
	if v.fail != nil {
		if err := v.fail(op, off, n); err != nil {
			v.mu.Unlock()
			return err
		}
	}
	return nil
}

// page returns page i as reads see it (nil = zeros). REQUIRES mu.
func (v *memVolume) page(i int64) []byte {
	if p, ok := v.volatile[i]; ok {
		return p
	}
	return v.durable[i]
}

func (v *memVolume) ReadAt(p []byte, off int64) error {
	if err := v.enter("read", off, int64(len(p))); err != nil {
		return err
	}
	defer v.mu.Unlock()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		i, in := pos/memPage, int(pos%memPage)
		n := min(memPage-in, len(p)-done)
		if pg := v.page(i); pg != nil {
			copy(p[done:done+n], pg[in:])
		} else {
			clear(p[done : done+n])
		}
		done += n
	}
	return nil
}

// put writes p (nil = zeros) at off into the volatile layer, and also into
// the durable one with fua. REQUIRES mu.
func (v *memVolume) put(p []byte, off, n int64, fua bool) {
	v.wrote += n
	v.writes++
	for done := int64(0); done < n; {
		pos := off + done
		i, in := pos/memPage, pos%memPage
		k := min(memPage-in, n-done)
		var pg []byte
		if in == 0 && k == memPage && p == nil {
			pg = nil // a whole page of zeros: sparse again
		} else {
			pg = make([]byte, memPage)
			copy(pg, v.page(i))
			if p == nil {
				clear(pg[in : in+k])
			} else {
				copy(pg[in:in+k], p[done:done+k])
			}
		}
		v.volatile[i] = pg
		if fua {
			v.persist(i, pg)
		}
		done += k
	}
}

// persist makes pg page i's durable content. REQUIRES mu.
func (v *memVolume) persist(i int64, pg []byte) {
	if pg == nil {
		delete(v.durable, i)
	} else {
		v.durable[i] = pg
	}
}

func (v *memVolume) WriteAt(p []byte, off int64, fua bool) error {
	if err := v.enter("write", off, int64(len(p))); err != nil {
		return err
	}
	defer v.mu.Unlock()
	v.put(p, off, int64(len(p)), fua)
	return nil
}

func (v *memVolume) Trim(off, n int64) error {
	if err := v.enter("trim", off, n); err != nil {
		return err
	}
	defer v.mu.Unlock()
	v.put(nil, off, n, false)
	return nil
}

func (v *memVolume) WriteZeroes(off, n int64, noHole bool) error {
	if err := v.enter("zeroes", off, n); err != nil {
		return err
	}
	defer v.mu.Unlock()
	v.put(nil, off, n, false)
	return nil
}

func (v *memVolume) Flush() error {
	if err := v.enter("flush", 0, 0); err != nil {
		return err
	}
	defer v.mu.Unlock()
	for i, pg := range v.volatile {
		v.persist(i, pg)
	}
	clear(v.volatile)
	return nil
}

// crash loses every write not flushed, as a power cut would.
func (v *memVolume) crash() {
	v.mu.Lock()
	defer v.mu.Unlock()
	clear(v.volatile)
}

// durableAt reads n bytes at off of what a crash would leave.
func (v *memVolume) durableAt(off, n int64) []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	b := make([]byte, n)
	for done := int64(0); done < n; {
		pos := off + done
		i, in := pos/memPage, pos%memPage
		k := min(memPage-in, n-done)
		if pg := v.durable[i]; pg != nil {
			copy(b[done:done+k], pg[in:])
		}
		done += k
	}
	return b
}

// at reads n bytes at off as a read would, bypassing the hooks.
func (v *memVolume) at(off, n int64) []byte {
	b := make([]byte, n)
	v.mu.Lock()
	defer v.mu.Unlock()
	for done := int64(0); done < n; {
		pos := off + done
		i, in := pos/memPage, pos%memPage
		k := min(memPage-in, n-done)
		if pg := v.page(i); pg != nil {
			copy(b[done:done+k], pg[in:])
		}
		done += k
	}
	return b
}

// poke writes p at off behind the replication layer's back (a replica that
// diverged), durably.
func (v *memVolume) poke(p []byte, off int64) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.put(p, off, int64(len(p)), true)
}

// pagesOutside counts the durable pages holding data outside the regions
// named.
func (v *memVolume) pagesOutside(regions ...int64) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for i := range v.durable {
		if !slices.Contains(regions, i*memPage/RegionSize) {
			n++
		}
	}
	return n
}

// written returns the bytes and calls of writes that reached the volume.
func (v *memVolume) written() (bytes int64, calls int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.wrote, v.writes
}

func (v *memVolume) setBefore(f func(op string, off, n int64)) {
	v.mu.Lock()
	v.before = f
	v.mu.Unlock()
}

func (v *memVolume) setFail(f func(op string, off, n int64) error) {
	v.mu.Lock()
	v.fail = f
	v.mu.Unlock()
}

// memVolumes serves one memVolume under one name.
type memVolumes struct {
	name string
	v    *memVolume
}

func (m memVolumes) OpenReplica(name string) (Volume, func(), error) {
	if name != m.name {
		return nil, nil, fmt.Errorf("%w: volume %q", engine.ErrNotFound, name)
	}
	return m.v, func() {}, nil
}
