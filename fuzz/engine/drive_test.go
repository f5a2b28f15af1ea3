package enginefuzz

import (
	"fmt"
	"maps"
	"sync"

	"github.com/cairn-storage/cairn/drive"
)

// sparseDrive is a drive held as a map of written 4 KiB pages (everything
// else reads as zeros), cheap to clone for every fuzz input, and counting
// writes so a target can assert that a refused drive was never touched.
type sparseDrive struct {
	path string
	size int64

	mu     sync.Mutex
	pages  map[int64]*[drive.AtomicSize]byte // REQUIRES mu; by page number
	writes int                               // REQUIRES mu
}

func newSparse(path string, size int64) *sparseDrive {
	return &sparseDrive{path: path, size: size, pages: map[int64]*[drive.AtomicSize]byte{}}
}

// clone copies the pages (the page arrays are copied on write, see WriteAt).
func (d *sparseDrive) clone() *sparseDrive {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &sparseDrive{path: d.path, size: d.size, pages: maps.Clone(d.pages)}
}

func (d *sparseDrive) Path() string     { return d.path }
func (d *sparseDrive) Size() int64      { return d.size }
func (d *sparseDrive) Kind() drive.Kind { return drive.KindFile }
func (d *sparseDrive) Cached() bool     { return true }
func (d *sparseDrive) Close() error     { return nil }
func (d *sparseDrive) Sync() error      { return nil }
func (d *sparseDrive) writeCount() int  { d.mu.Lock(); defer d.mu.Unlock(); return d.writes }
func (d *sparseDrive) drop(from, to int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for pg := from / drive.AtomicSize; pg < (to+drive.AtomicSize-1)/drive.AtomicSize; pg++ {
		delete(d.pages, pg)
	}
}

func (d *sparseDrive) check(n int, off int64) error {
	if off < 0 || n < 0 || off+int64(n) > d.size {
		return fmt.Errorf("%w: %s: %d bytes at %d", drive.ErrRange, d.path, n, off)
	}
	return nil
}

func (d *sparseDrive) ReadAt(p []byte, off int64) error {
	if err := d.check(len(p), off); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(p) > 0 {
		pg, in := off/drive.AtomicSize, int(off%drive.AtomicSize)
		n := min(len(p), drive.AtomicSize-in)
		if page := d.pages[pg]; page != nil {
			copy(p[:n], page[in:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

func (d *sparseDrive) WriteAt(p []byte, off int64) error {
	if err := d.check(len(p), off); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.writes++
	for len(p) > 0 {
		pg, in := off/drive.AtomicSize, int(off%drive.AtomicSize)
		n := min(len(p), drive.AtomicSize-in)
		page := new([drive.AtomicSize]byte) // copy on write: clones share old pages
		if old := d.pages[pg]; old != nil {
			*page = *old
		}
		copy(page[in:], p[:n])
		d.pages[pg] = page
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// poke writes bytes without counting a write (a test damaging a drive at rest).
func (d *sparseDrive) poke(off int64, p []byte) {
	d.WriteAt(p, off)
	d.mu.Lock()
	d.writes--
	d.mu.Unlock()
}

func (d *sparseDrive) Zero(off, n int64) error {
	if err := d.check(int(n), off); err != nil {
		return err
	}
	for n > 0 {
		c := min(n, 1<<20)
		if err := d.WriteAt(make([]byte, c), off); err != nil {
			return err
		}
		off, n = off+c, n-c
	}
	return nil
}
