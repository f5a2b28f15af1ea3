package engine

import (
	"fmt"
	"slices"

	"github.com/cairn-storage/cairn/allocator"
)

// Changed extents between two snapshots (for incremental backups, cloudsnap/).
//
// Why comparing physical mappings is exact: a snapshot's mapping never
// changes after it is taken, and no extent that two volumes map is ever
// written in place — a write to a shared extent redirects to a fresh one
// (fill.go). So when two snapshots of a volume map a logical extent to the
// same pool extent, they hold the same bytes there: that extent did not
// change. When they map different pool extents, it was written (or trimmed
// and written again) in between and is reported changed — possibly with
// the same bytes rewritten, which is the one imprecision, at 1 MiB
// granularity. A filling extent (F reading its clear blocks from a base) is
// one pool extent like any other here: the filler completing it later
// copies the base's bytes into F without changing what F reads as, and
// never remaps it.
//
// Holes: a logical extent neither snapshot maps is never reported; one
// only the older maps is reported as a hole (trimmed since).

// ChangedExtents returns, in logical order, the extents of snapshot to
// whose content may differ from snapshot from's: Kind ExtentData for an
// extent to maps (changed or new since from), ExtentHole for one from
// maps and to no longer does. from "" means every extent to maps. Each
// Extent is one whole extent (Offset a multiple of ExtentSize, Length
// ExtentSize, clipped at to's size). Both must be snapshots of volumes of
// one pool (their extents are comparable only there); name or id each.
func (e *Engine) ChangedExtents(from, to string) ([]Extent, error) {
	e.mu.Lock()
	tv, err := e.lookupLocked(to)
	var fv *Volume
	if err == nil && from != "" {
		fv, err = e.lookupLocked(from)
	}
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if !tv.meta.readOnly || (fv != nil && !fv.meta.readOnly) { // readOnly never changes
		return nil, fmt.Errorf("%w: changed extents are computed between snapshots (%q, %q)", ErrInvalid, from, to)
	}
	if fv != nil && fv.pool != tv.pool {
		return nil, fmt.Errorf("%w: snapshots %q and %q are in different pools", ErrInvalid, from, to)
	}
	// Read locks on both volumes keep their tables from being dropped (a
	// delete takes ioMu for writing); pool.mu makes the walk one instant.
	// Lock order: ioMu → pool.mu, volumes by id (read locks only).
	vols := []*Volume{tv}
	if fv != nil && fv != tv {
		vols = append(vols, fv)
		slices.SortFunc(vols, func(a, b *Volume) int { return int(a.id) - int(b.id) })
	}
	for _, v := range vols {
		v.ioMu.RLock()
		defer v.ioMu.RUnlock()
	}
	for _, v := range vols {
		if v.deleted {
			return nil, fmt.Errorf("%w: snapshot %q was deleted", ErrNotFound, v.served)
		}
	}
	p := tv.pool
	size := tv.size.Load()
	p.mu.Lock()
	var out []Extent
	tv.table.forEach(func(lext uint32, ext allocator.Extent) {
		if fv != nil {
			if old, mapped := fv.table.lookup(lext); mapped && old == ext {
				return
			}
		}
		out = append(out, extentAt(lext, size, ExtentData))
	})
	if fv != nil {
		fv.table.forEach(func(lext uint32, _ allocator.Extent) {
			if _, mapped := tv.table.lookup(lext); !mapped && int64(lext)*ExtentSize < size {
				out = append(out, extentAt(lext, size, ExtentHole))
			}
		})
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Extent) int { return int((a.Offset - b.Offset) / ExtentSize) })
	return out, nil
}

func extentAt(lext uint32, size int64, kind ExtentKind) Extent {
	off := int64(lext) * ExtentSize
	return Extent{Offset: off, Length: min(ExtentSize, size-off), Kind: kind}
}
