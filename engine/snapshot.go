package engine

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/allocator"
)

// Snapshots and clones share extents with their source: creating one copies
// the source's mapping (4 bytes per mapped extent) and adds a reference to
// each extent, and marks both sides' entries shared. The first write to a
// shared extent redirects it to a fresh extent that fills from the shared
// one (fill.go): nothing is copied on the write path. A snapshot is
// read-only; a clone is an ordinary volume that started as a snapshot's
// content.

func snapKeepOrDefault(n uint32) int {
	if n == 0 {
		return DefaultSnapKeep
	}
	return int(n)
}

// snapshotsLocked lists the snapshots of a volume by served name, oldest
// first. A snapshot lives in its volume's pool and names it by its own name.
// REQUIRES e.mu.
func (e *Engine) snapshotsLocked(src *Volume) []string {
	type snap struct {
		name    string
		created int64
	}
	var snaps []snap
	for name, v := range e.byName {
		if v.meta.readOnly && v.pool == src.pool && v.meta.parent == src.meta.name {
			snaps = append(snaps, snap{name, v.meta.created})
		}
	}
	slices.SortFunc(snaps, func(a, b snap) int {
		if a.created != b.created {
			return int(a.created - b.created)
		}
		return compareStrings(a.name, b.name)
	})
	out := make([]string, len(snaps))
	for i, s := range snaps {
		out[i] = s.name
	}
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Snapshots returns the snapshots of a volume ("" = of every volume), oldest first.
func (e *Engine) Snapshots(volume string) []VolumeInfo {
	var out []VolumeInfo
	for _, info := range e.Volumes() {
		if info.Snapshot && (volume == "" || info.Parent == volume) {
			out = append(out, info)
		}
	}
	slices.SortStableFunc(out, func(a, b VolumeInfo) int { return a.Created.Compare(b.Created) })
	return out
}

// DefaultSnapshotName is the name of a snapshot taken without one (by an
// operator or by the scheduler): VOLUME.snap-<UTC timestamp, ms>. volume
// may be the served name of a duplicated volume (NAME@poolN, names.go):
// the snapshot is named after NAME.
func DefaultSnapshotName(volume string, t time.Time) string {
	if i := strings.IndexByte(volume, '@'); i >= 0 {
		volume = volume[:i]
	}
	return volume + ".snap-" + t.UTC().Format("20060102T150405.000Z")
}

// CreateSnapshot freezes the current content of a volume (everything written
// to it so far, flushed or not) under a new read-only name; durable on return.
// name "" means "VOLUME.snap-<UTC timestamp>".
func (e *Engine) CreateSnapshot(volume, name string) (VolumeInfo, error) {
	return e.share(volume, name, true)
}

// CloneVolume makes a writable volume from a snapshot; durable on return.
func (e *Engine) CloneVolume(snapshot, name string) (VolumeInfo, error) {
	return e.share(snapshot, name, false)
}

func (e *Engine) share(srcName, name string, snapshot bool) (VolumeInfo, error) {
	if snapshot {
		if err := e.reserveAheadFor(srcName); err != nil {
			return VolumeInfo{}, err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return VolumeInfo{}, ErrClosed
	}
	src, err := e.lookupLocked(srcName)
	if err != nil {
		return VolumeInfo{}, err
	}
	switch {
	case snapshot && src.meta.readOnly:
		return VolumeInfo{}, fmt.Errorf("%w: %q is a snapshot; snapshots are taken of volumes", ErrInvalid, srcName)
	case !snapshot && !src.meta.readOnly:
		return VolumeInfo{}, fmt.Errorf("%w: %q is not a snapshot; clone a snapshot of it", ErrInvalid, srcName)
	}
	what := "clone"
	if snapshot {
		what = "snapshot"
		if name == "" {
			name = DefaultSnapshotName(src.meta.name, time.Now())
		}
	}
	if err := ValidateName(what, name); err != nil {
		return VolumeInfo{}, err
	}
	if err := e.nameTakenLocked(name); err != nil {
		return VolumeInfo{}, err
	}
	if snapshot {
		if n := len(e.snapshotsLocked(src)); n >= MaxSnapshots {
			return VolumeInfo{}, fmt.Errorf("%w: volume %q has %d snapshots, the most a volume can have; delete one first", ErrTooManySnaps, srcName, n)
		}
	}
	p := src.pool
	if err := p.err(); err != nil {
		return VolumeInfo{}, err
	}
	uid := randomU64()
	if err := e.saveCatalogLocked(entryFor(p, volumeMeta{uid: uid, name: name, readOnly: snapshot, parent: src.meta.name})); err != nil {
		return VolumeInfo{}, err
	}

	// Quiesce the source so the copy is one instant of it.
	src.ioMu.Lock()
	p.mu.Lock()
	m := src.meta
	m.id, m.uid, m.name, m.created = p.nextVolID, uid, name, time.Now().UnixNano()
	m.readOnly, m.parent, m.sticky, m.snapInterval, m.snapKeep = snapshot, src.meta.name, false, 0, 0
	v, err := p.newVolume(m)
	if err != nil {
		p.mu.Unlock()
		src.ioMu.Unlock()
		return VolumeInfo{}, err
	}
	p.nextVolID++
	v.table.copyFrom(src.table)
	var rerr error
	src.table.forEach(func(_ uint32, ext allocator.Extent) {
		if err := p.alloc.Ref(ext); err != nil && rerr == nil {
			rerr = err
		}
		v.used.Add(1)
	})
	p.vols[m.id] = v
	p.enqueue(&record{typ: recSnapshot, src: src.id, meta: m, vol: m.id})
	p.mu.Unlock()
	src.ioMu.Unlock()
	if rerr != nil {
		return VolumeInfo{}, p.fail(rerr)
	}
	if err := p.commit(); err != nil {
		return VolumeInfo{}, err
	}
	e.byName[name] = v
	return v.Info(), nil
}

// reserveAheadFor prepares a snapshot of a volume: every extent it maps is
// about to be shared, and the first write to each will take a reserved one
// (a redirect). Reserving them ahead, in a round of their own, keeps the
// writers after the snapshot from waiting for rounds. That round also syncs
// what was written before, so the snapshot's own round has little left to
// sync. It runs without the engine's lock: status and other volumes' calls
// need not wait for the sync. (Nothing else is decided here: share checks
// everything again under the lock.)
func (e *Engine) reserveAheadFor(volume string) error {
	e.mu.Lock()
	src, err := e.lookupLocked(volume)
	e.mu.Unlock()
	if err != nil || src.meta.readOnly {
		return nil // share reports it
	}
	return src.pool.reserveAhead(int(src.used.Load()))
}

// RestoreVolume makes a volume's content its snapshot's; durable on return.
// Refused while the volume is in use (exported to a client or attached).
func (e *Engine) RestoreVolume(volume, snapshot string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.lookupLocked(volume)
	if err != nil {
		return err
	}
	snap, err := e.lookupLocked(snapshot)
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: snapshot %q", ErrNotFound, snapshot)
	}
	if err != nil {
		return err
	}
	if !snap.meta.readOnly || snap.pool != v.pool || snap.meta.parent != v.meta.name {
		return fmt.Errorf("%w: %q is not a snapshot of %q", ErrInvalid, snapshot, volume)
	}
	if v.meta.readOnly {
		return fmt.Errorf("%w: %q is a snapshot", ErrReadOnly, volume)
	}
	if err := v.busy(); err != nil {
		return err
	}
	p := v.pool
	if err := p.err(); err != nil {
		return err
	}
	v.ioMu.Lock()
	p.mu.Lock()
	p.dropMapping(v.table)
	var ferr error
	v.table.copyFrom(snap.table)
	v.used.Store(0)
	snap.table.forEach(func(_ uint32, ext allocator.Extent) {
		if err := p.alloc.Ref(ext); err != nil && ferr == nil {
			ferr = err
		}
		v.used.Add(1)
	})
	p.enqueue(&record{typ: recRestore, vol: v.id, src: snap.id})
	p.mu.Unlock()
	v.ioMu.Unlock()
	if ferr != nil {
		return p.fail(ferr)
	}
	if err := p.commit(); err != nil {
		return err
	}
	return p.reclaimCondemned()
}
