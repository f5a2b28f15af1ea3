// Package engine is cairn's volume manager and data path: drives grouped into
// pools by io_priority, thin volumes mapped onto pool extents, a write-ahead
// log per pool for the mapping, and recovery. Every frontend (NBD, FUSE) and,
// later, replication calls the Volume API; see DESIGN.md for the durability
// contract it keeps.
package engine

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/allocator"
	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/internal/size"
	"github.com/cairn-storage/cairn/wal"
)

// Engine owns a node's pools and volumes.
//
// Locks: mu guards the name index and the pool list; it is taken before any
// volume's ioMu or pool's mu.
type Engine struct {
	opts Options

	mu     sync.Mutex
	pools  []*pool            // REQUIRES mu; by pool number
	byName map[string]*Volume // REQUIRES mu
	closed bool               // REQUIRES mu

	// Set by Open, read-only after: what could not be served and why.
	failedPools []PoolInfo
	refused     []DriveInfo
	unavailable map[string]*unavailableVolume // by served name: volumes of pools not open
	aliases     map[nameInPool]string         // served names of duplicated volumes
	duplicated  map[string]bool               // names found in more than one pool
	duplicates  []DuplicateName
	catalogErr  error          // REQUIRES mu; the last catalog save's failure, nil once one succeeds
	adding      map[any]string // REQUIRES mu; drives AddDrive is zeroing (driveKey → path)
}

// Open opens (and formats, when blank) the drives in opts, replays each
// pool's log and returns an engine serving its volumes.
//
// A drive that belongs to another node, carries a damaged or foreign
// superblock, or is too small is refused: it is reported in Status with the
// reason and nothing is written to it. A pool whose metadata cannot be
// replayed (corruption, a missing drive) is reported in Status as failed, with
// the error naming drive and offset, and its drives are left untouched. The
// other pools are served; the volumes of pools that are not open stay named
// (Options.Catalog, names.go). Force formats over another node's drive or
// foreign data, never over one of this node's. Open fails only when drives
// were given, none of them can be used and no volume of this node is known.
func Open(opts Options) (*Engine, error) {
	if opts.NodeID == "" || len(opts.NodeID) > maxNodeIDLen {
		return nil, fmt.Errorf("%w: node id %q", ErrInvalid, opts.NodeID)
	}
	e := &Engine{opts: opts, byName: map[string]*Volume{}}
	type found struct {
		spec DriveSpec
		d    drive.Drive
		sb   superblock
	}
	var formatted, blank []found
	var problems []error
	refuse := func(path string, d drive.Drive, err error) {
		if d != nil {
			d.Close()
		}
		problems = append(problems, err)
		e.refused = append(e.refused, DriveInfo{Path: path, Status: "Refused: " + err.Error()})
	}
	// Force formats over another node's drive, a filesystem or a damaged
	// superblock; it never formats a drive of this node (that is how a
	// forced start destroyed its own pools), nor one drive given twice.
	seen := map[[16]byte]string{}
	seenKey := map[any]string{}
	for _, spec := range opts.Drives {
		key, err := specKey(spec)
		if err != nil {
			refuse(spec.Path, nil, fmt.Errorf("%w: %w", ErrDriveRefused, err))
			continue
		}
		if prev, dup := seenKey[key]; dup {
			refuse(spec.Path, nil, fmt.Errorf("%w: %s is the same drive as %s (given twice)", ErrDriveRefused, spec.Path, prev))
			continue
		}
		seenKey[key] = spec.Path
		d, err := openDrive(spec)
		if err != nil {
			refuse(spec.Path, nil, err)
			continue
		}
		sb, state, err := readSuperblock(d)
		if err != nil {
			refuse(spec.Path, d, fmt.Errorf("%w: %s: reading superblock: %w", ErrDriveRefused, spec.Path, err))
			continue
		}
		f := found{spec: spec, d: d, sb: sb}
		switch {
		case !isOurs(sb, state, opts.NodeID):
			if err = formatRefusal(spec, sb, state, opts.NodeID); err == nil {
				blank = append(blank, f)
			}
		case sb.driveSize > d.Size():
			err = fmt.Errorf("%w: %s is %d bytes but was formatted as %d (it shrank)", ErrDriveRefused, spec.Path, d.Size(), sb.driveSize)
		default:
			if prev, dup := seen[sb.driveUUID]; dup {
				err = fmt.Errorf("%w: %s is the same drive as %s (or a copy of it)", ErrDriveRefused, spec.Path, prev)
				break
			}
			seen[sb.driveUUID] = spec.Path
			formatted = append(formatted, f)
		}
		if err != nil {
			refuse(spec.Path, d, err)
		}
	}
	// Existing pools: group by pool uuid, replay each from its drive 0.
	groups := map[[16]byte][]found{}
	var order [][16]byte
	for _, f := range formatted {
		if groups[f.sb.poolUUID] == nil {
			order = append(order, f.sb.poolUUID)
		}
		groups[f.sb.poolUUID] = append(groups[f.sb.poolUUID], f)
	}
	var orphans []found // drives whose pool never recorded them (crash while adding)
	for _, id := range order {
		g := groups[id]
		byUUID := map[[16]byte]drive.Drive{}
		var d0 *found
		for i := range g {
			byUUID[g[i].sb.driveUUID] = g[i].d
			if g[i].sb.driveIndex == 0 {
				d0 = &g[i]
			}
		}
		var p *pool
		var used map[[16]byte]bool
		err := fmt.Errorf("%w: %s: its pool's first drive (holding the pool's metadata) was not given", ErrDriveRefused, g[0].spec.Path)
		if d0 != nil {
			p, used, err = e.loadPool(d0.d, d0.sb, byUUID)
		}
		if err != nil {
			problems = append(problems, err)
			fp := PoolInfo{ID: int(g[0].sb.poolNumber), UUID: uuidString(id), IOPriority: g[0].sb.priority, Raid: "raid0", Status: "Error: " + err.Error()}
			for _, f := range g {
				fp.Drives = append(fp.Drives, DriveInfo{Path: f.spec.Path, Size: int64(f.sb.extentCount) * ExtentSize, Status: "Error"})
				f.d.Close()
			}
			e.failedPools = append(e.failedPools, fp)
			continue
		}
		for _, f := range g {
			if !used[f.sb.driveUUID] {
				orphans = append(orphans, f)
			}
		}
		e.pools = append(e.pools, p)
	}
	sort.Slice(e.pools, func(i, j int) bool { return e.pools[i].number < e.pools[j].number })
	var catalog []CatalogEntry
	if opts.Catalog != nil {
		var err error
		if catalog, err = opts.Catalog.Load(); err != nil {
			e.closePools()
			for _, f := range append(orphans, blank...) {
				f.d.Close()
			}
			return nil, fmt.Errorf("engine: loading the volume catalog: %w", err)
		}
	}
	e.indexNames(catalog)
	for _, f := range append(orphans, blank...) {
		if err := e.addDrive(f.spec, f.d); err != nil {
			refuse(f.spec.Path, f.d, err)
		}
	}
	if len(opts.Drives) > 0 && len(e.pools) == 0 && len(e.unavailable) == 0 {
		e.closePools()
		return nil, errors.Join(problems...)
	}
	if err := e.saveCatalogLocked(); err != nil {
		e.closePools()
		return nil, err
	}
	for _, p := range e.pools {
		e.startBackground(p)
	}
	return e, nil
}

// specKey is what makes two drive specs the same drive: the file or device
// behind the path, or the drive object itself when the spec carries one.
func specKey(spec DriveSpec) (any, error) {
	if spec.Drive != nil {
		return driveKey(spec.Drive), nil
	}
	return drive.IdentityOf(spec.Path)
}

// driveKey is specKey for an open drive.
func driveKey(d drive.Drive) any {
	if f, ok := d.(interface {
		Identity() (drive.Identity, error)
	}); ok {
		if id, err := f.Identity(); err == nil {
			return id
		}
	}
	return d
}

func openDrive(spec DriveSpec) (drive.Drive, error) {
	if spec.Drive != nil {
		return spec.Drive, nil
	}
	d, err := drive.OpenFile(spec.Path, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDriveRefused, err)
	}
	return d, nil
}

// detectPriority maps what a drive is to an io_priority.
func detectPriority(spec DriveSpec, d drive.Drive) IOPriority {
	if spec.IOPriority != "" {
		return spec.IOPriority
	}
	switch d.Kind() {
	case drive.KindNVMe:
		return PriorityHigh
	case drive.KindSSD:
		return PriorityMedium
	}
	return PriorityLow
}

// loadPool replays a pool from its drive 0 and attaches its other drives.
// It writes nothing (it syncs every drive). used reports which of the given drives the pool lists.
func (e *Engine) loadPool(d0 drive.Drive, sb superblock, byUUID map[[16]byte]drive.Drive) (*pool, map[[16]byte]bool, error) {
	p := e.newPool(int(sb.poolNumber), sb.poolUUID, sb.priority, sb.logSize)
	p.sb0 = sb
	var st *poolState
	var ckpt []byte
	region := logRegion(sb.activeArea, sb.logSize)
	pos, err := wal.Replay(d0, region, sb.logID, sb.logStartSeq, func(typ wal.Type, seq uint64, payload []byte) error {
		switch typ {
		case frameCheckpoint, frameCheckpointEnd:
			if st != nil {
				return fmt.Errorf("%w: second checkpoint at seq %d", ErrCorrupt, seq)
			}
			ckpt = append(ckpt, payload...)
			if typ == frameCheckpointEnd {
				s, err := p.decodeCheckpoint(ckpt)
				if err != nil {
					return err
				}
				st, ckpt = s, nil
			}
		case frameRecords:
			if st == nil {
				return fmt.Errorf("%w: records before the checkpoint at seq %d", ErrCorrupt, seq)
			}
			return decodeRecords(payload, func(r *record) error { return p.apply(st, r) })
		default:
			return fmt.Errorf("%w: frame type %d at seq %d", ErrCorrupt, typ, seq)
		}
		return nil
	})
	if err == nil && st == nil {
		err = fmt.Errorf("%w: the log holds no checkpoint", ErrCorrupt)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s on %s: metadata log (area at offset %d): %w", p, d0.Path(), region.Base, err)
	}
	// Drive 0 holds the log and the superblock that points at it: a
	// checkpoint whose drive table does not start with the drive it was
	// read from is not this pool's.
	if len(st.drives) == 0 || st.drives[0].uuid != sb.driveUUID {
		return nil, nil, fmt.Errorf("%w: %s on %s: the checkpoint's drive table does not start with this drive", ErrCorrupt, p, d0.Path())
	}
	used := map[[16]byte]bool{}
	for i, ref := range st.drives {
		d := byUUID[ref.uuid]
		if d == nil {
			return nil, nil, fmt.Errorf("%w: %s: drive %d (%s) is missing", ErrDriveRefused, p, i, uuidString(ref.uuid))
		}
		dsb, _, err := readSuperblock(d)
		if err != nil {
			return nil, nil, err
		}
		if dsb.extentCount != ref.extents {
			return nil, nil, fmt.Errorf("%w: %s: drive %s has %d extents, the pool says %d", ErrCorrupt, p, d.Path(), dsb.extentCount, ref.extents)
		}
		p.drives = append(p.drives, &poolDrive{d: d, sb: dsb})
		p.alloc.AddDrive(int(ref.extents))
		used[ref.uuid] = true
	}
	p.publishLayout()
	// After a crash of the process alone, what replay and the checks below
	// read may be in the page cache only, and this process would never sync
	// a drive it does not write (a later frame could then confirm records
	// whose data a power loss takes; a client would read data that its next
	// flush does not make durable). Syncing changes no content: a pool
	// refused below is still left as it was.
	for _, pd := range p.drives {
		if err := pd.d.Sync(); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %s: %w", ErrIO, p, pd.d.Path(), err)
		}
	}
	dropped, err := p.checkUnorderedTail(st)
	if err != nil {
		return nil, nil, err
	}
	p.lastUnordered, p.mustCheckpoint = st.tailUnordered, dropped > 0
	p.vols, p.nextVolID = st.vols, st.nextVolID
	// References: one per mapping (snapshots and clones share extents), one
	// per reservation. Entries are marked shared exactly when their extent has
	// more than one reference.
	for _, v := range p.vols {
		var terr error
		v.table.forEach(func(lext uint32, ext allocator.Extent) {
			v.used.Add(1)
			if err := p.alloc.Take(ext); err != nil && terr == nil {
				terr = fmt.Errorf("%w: %s: volume %q: %w", ErrCorrupt, p, v.meta.name, err)
			}
		})
		if terr != nil {
			return nil, nil, terr
		}
	}
	if err := p.loadFills(st); err != nil {
		return nil, nil, err
	}
	for _, v := range p.vols {
		v.table.forEach(func(lext uint32, ext allocator.Extent) {
			v.table.setShared(lext, ext, p.alloc.Refs(ext) > 1)
		})
	}
	// Reserved extents nobody mapped may hold data written just before a
	// crash, and so may extents a logged delete, restore or copy-on-write let
	// go of that no one maps any more: zero them before any writer can map
	// them. Everything is validated first: a pool refused here is left
	// untouched.
	for ext := range st.reserved {
		if p.alloc.Refs(ext) > 0 {
			return nil, nil, fmt.Errorf("%w: %s: reserved extent %d is also mapped", ErrCorrupt, p, ext)
		}
		if err := p.alloc.Take(ext); err != nil {
			return nil, nil, fmt.Errorf("%w: %s: reserved extent: %w", ErrCorrupt, p, err)
		}
		p.reserved = append(p.reserved, ext)
	}
	slices.Sort(p.reserved)
	var condemned []allocator.Extent
	for ext := range st.condemned {
		if _, _, ok := p.alloc.Drive(ext); !ok {
			return nil, nil, fmt.Errorf("%w: %s: condemned extent %d is in no drive", ErrCorrupt, p, ext)
		}
		if p.alloc.Refs(ext) == 0 {
			condemned = append(condemned, ext)
		}
	}
	slices.Sort(condemned)
	for _, ext := range append(slices.Clip(p.reserved), condemned...) {
		if err := p.zeroExtent(ext, 0, ExtentSize); err != nil {
			return nil, nil, err
		}
	}
	if len(p.reserved)+len(condemned) > 0 {
		if err := p.syncData(); err != nil {
			return nil, nil, err
		}
	}
	p.log = wal.NewWriter(d0, region, pos)
	return p, used, nil
}

func (e *Engine) newPool(number int, uuid [16]byte, prio IOPriority, logSize int64) *pool {
	p := &pool{eng: e, number: number, uuid: uuid, priority: prio, logSize: logSize,
		alloc: allocator.New(), vols: map[uint32]*Volume{}, condemned: map[allocator.Extent]struct{}{},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		fillWake: make(chan struct{}, 1), fillDone: make(chan struct{})}
	p.committer = wal.NewCommitterCounting(p.round, p.changes.Load)
	return p
}

// publishLayout makes the current drive list visible to the I/O path.
func (p *pool) publishLayout() {
	l := &poolLayout{}
	var base uint32
	for _, pd := range p.drives {
		l.drives = append(l.drives, pd)
		l.bases = append(l.bases, base)
		base += pd.sb.extentCount
	}
	p.layoutPtr.Store(l)
}

// addDrive formats a blank drive into the matching pool (same io_priority,
// capacity within 1 GiB of its drives) or a new pool.
// REQUIRES: e.mu held (or e not yet shared).
func (e *Engine) addDrive(spec DriveSpec, d drive.Drive) error {
	sb, err := e.prepareDrive(spec, d)
	if err != nil {
		return err
	}
	return e.addPreparedLocked(spec, d, sb)
}

// prepareDrive lays a blank drive out and zeroes its data region: the slow
// part of adding a drive (BLKZEROOUT writes a whole disk), which touches no
// engine state, so AddDrive runs it without e.mu. It returns the superblock
// to format the drive with; nothing on the drive names a pool yet.
func (e *Engine) prepareDrive(spec DriveSpec, d drive.Drive) (superblock, error) {
	prio := detectPriority(spec, d)
	logSize := e.opts.LogAreaSize
	if logSize == 0 {
		logSize = defaultLogSize(d.Size())
	}
	dataOff, extents, err := layout(d.Size(), logSize)
	if err != nil {
		return superblock{}, fmt.Errorf("%w: %s: %w", ErrDriveRefused, spec.Path, err)
	}
	sb := superblock{driveSize: d.Size(), logSize: logSize, dataOff: dataOff, extentCount: extents,
		driveUUID: newUUID(), priority: prio, nodeID: e.opts.NodeID, created: time.Now().UnixNano(), logStartSeq: 1}
	// Free extents must read as zeros (see mapping.go): zero the data region
	// before the superblock makes the drive part of a pool.
	if err := d.Zero(dataOff, int64(extents)*ExtentSize); err != nil {
		return superblock{}, fmt.Errorf("%w: %s: zeroing the data region: %w", ErrDriveRefused, spec.Path, err)
	}
	if err := d.Sync(); err != nil {
		return superblock{}, fmt.Errorf("%w: %s: %w", ErrDriveRefused, spec.Path, err)
	}
	return sb, nil
}

// addPreparedLocked formats a prepared drive into the matching pool (same
// io_priority, capacity within 1 GiB of its drives) or a new pool.
// REQUIRES: e.mu held (or e not yet shared).
func (e *Engine) addPreparedLocked(spec DriveSpec, d drive.Drive, sb superblock) error {
	prio, logSize, extents := sb.priority, sb.logSize, sb.extentCount
	for _, p := range e.pools {
		if p.priority != prio || p.err() != nil {
			continue
		}
		if math.Abs(float64(p.drives[0].d.Size()-d.Size())) > 1<<30 {
			continue
		}
		return p.addDrive(d, sb)
	}
	// A new pool, with this drive as its drive 0.
	number := 0
	for _, p := range e.pools {
		number = max(number, p.number+1)
	}
	for _, p := range e.failedPools {
		number = max(number, p.ID+1)
	}
	for _, u := range e.unavailable {
		number = max(number, u.Pool+1)
	}
	sb.poolUUID = newUUID()
	sb.poolNumber = uint32(number)
	sb.logID = randomU64()
	p := e.newPool(number, sb.poolUUID, prio, logSize)
	pd := &poolDrive{d: d, sb: sb}
	p.drives = []*poolDrive{pd}
	p.alloc.AddDrive(int(extents))
	p.publishLayout()
	// The first checkpoint (drive list, no volumes) goes to log area 0 before
	// the superblock that names it, so a formatted drive always replays.
	w := wal.NewWriter(d, logRegion(0, logSize), wal.Start(sb.logID, sb.logStartSeq))
	p.mu.Lock()
	snap := p.encodeCheckpoint()
	p.mu.Unlock()
	if err := appendCheckpoint(w, snap); err != nil {
		return err
	}
	if err := w.Write(); err != nil {
		return fmt.Errorf("formatting %s: %w", spec.Path, err)
	}
	if err := w.Sync(); err != nil {
		return fmt.Errorf("formatting %s: %w", spec.Path, err)
	}
	if err := writeSuperblock(d, &sb); err != nil {
		return fmt.Errorf("formatting %s: %w", spec.Path, err)
	}
	pd.sb = sb
	p.sb0, p.log = sb, w
	e.pools = append(e.pools, p)
	return nil
}

// maxPoolExtents keeps pool extent numbers clear of the mapping's shared bit.
const maxPoolExtents = 1 << 30

// addDrive formats d as the next drive of p and records it in p's log.
func (p *pool) addDrive(d drive.Drive, sb superblock) error {
	p.mu.Lock()
	if p.alloc.Total()+int64(sb.extentCount) > maxPoolExtents {
		p.mu.Unlock()
		return fmt.Errorf("%w: %s: %s would exceed %d extents (1 PiB)", ErrDriveRefused, d.Path(), p, maxPoolExtents)
	}
	sb.poolUUID, sb.poolNumber, sb.driveIndex = p.uuid, uint32(p.number), uint32(len(p.drives))
	p.mu.Unlock()
	if err := writeSuperblock(d, &sb); err != nil {
		return fmt.Errorf("formatting %s: %w", d.Path(), err)
	}
	p.mu.Lock()
	p.drives = append(slices.Clip(p.drives), &poolDrive{d: d, sb: sb})
	p.alloc.AddDrive(int(sb.extentCount))
	p.publishLayout()
	p.enqueue(&record{typ: recAddDrive, uuid: sb.driveUUID, extents: sb.extentCount})
	p.mu.Unlock()
	return p.commit()
}

// AddDrive adds a drive online: to the matching pool or as a new pool.
//
// Force formats over a filesystem, a damaged superblock or another node's
// drive. Nothing formats a drive this node is using: one open in a pool, by
// any path to the same file or device, or one of this node's pools that
// could not be opened (its data comes back when the pool does).
func (e *Engine) AddDrive(spec DriveSpec) error {
	key, err := specKey(spec)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDriveRefused, err)
	}
	d, err := e.claimForAdd(spec, key)
	if err != nil {
		return err
	}
	// Zeroing a whole drive can take hours: not under e.mu, which every
	// lookup (an NBD client connecting, each API call, status) takes.
	sb, err := e.prepareDrive(spec, d)
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.adding, key)
	if err == nil && e.closed {
		err = ErrClosed
	}
	before := len(e.pools)
	if err == nil {
		err = e.addPreparedLocked(spec, d, sb)
	}
	if err != nil {
		d.Close()
		return err
	}
	if len(e.pools) > before {
		e.startBackground(e.pools[len(e.pools)-1])
	}
	return nil
}

// claimForAdd opens the drive AddDrive is given after the checks that
// refuse it (in use, being added, this node's, not blank without force),
// and marks it being added until AddDrive is done with it.
func (e *Engine) claimForAdd(spec DriveSpec, key any) (drive.Drive, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, ErrClosed
	}
	if err := e.inUseLocked(spec.Path, key); err != nil {
		return nil, err
	}
	if prev, busy := e.adding[key]; busy {
		return nil, fmt.Errorf("%w: %s is being added already (as %s)", ErrDriveRefused, spec.Path, prev)
	}
	d, err := openDrive(spec)
	if err != nil {
		return nil, err
	}
	sb, state, err := readSuperblock(d)
	if err != nil {
		err = fmt.Errorf("%w: %s: reading superblock: %w", ErrDriveRefused, spec.Path, err)
	} else {
		err = e.refuseAddLocked(spec, sb, state)
	}
	if err != nil {
		d.Close()
		return nil, err
	}
	if e.adding == nil {
		e.adding = map[any]string{}
	}
	e.adding[key] = spec.Path
	return d, nil
}

// inUseLocked refuses a drive that one of this node's pools has open,
// whatever the path it was opened by.
// REQUIRES: e.mu held.
func (e *Engine) inUseLocked(path string, key any) error {
	for _, p := range e.pools {
		p.mu.Lock()
		drives := p.drives
		p.mu.Unlock()
		for i, pd := range drives {
			if driveKey(pd.d) == key {
				return fmt.Errorf("%w: %s is drive %d of %s (opened as %s); it is in use and is never reformatted, force or not", ErrDriveRefused, path, i, p, pd.d.Path())
			}
		}
	}
	return nil
}

// isOurs reports whether a drive carries this node's superblock: it is one
// of the node's drives, opened as such and never formatted, force or not.
func isOurs(sb superblock, state sbState, nodeID string) bool {
	return state == sbValid && sb.nodeID == nodeID
}

// formatRefusal says why a drive that is not one of this node's must not be
// formatted, or nil when it may be: blank, or force given. Force formats
// over another node's drive, foreign data (a filesystem) or a damaged
// superblock; the refusal says which, and whose.
func formatRefusal(spec DriveSpec, sb superblock, state sbState, nodeID string) error {
	if spec.Force || state == sbBlank {
		return nil
	}
	switch state {
	case sbValid:
		return fmt.Errorf("%w: %s belongs to node %q (%s; this node is %q); use force to reformat it", ErrDriveRefused, spec.Path, sb.nodeID, sb.placeString(), nodeID)
	case sbDamaged:
		return fmt.Errorf("%w: %s: damaged superblock (both copies at offsets 0 and %d fail their checksum); use force to reformat it", ErrDriveRefused, spec.Path, superblockSize)
	}
	return fmt.Errorf("%w: %s holds data that is not cairn's (a filesystem?); use force to overwrite it", ErrDriveRefused, spec.Path)
}

// refuseAddLocked says why the drive with this superblock cannot be added
// online, or nil. A drive of this node never is, force or not: its pool is
// open (a copy of one of its drives), failed, or missing — and then a
// restart that gives the drive (-s) brings the pool and its volumes back.
// REQUIRES: e.mu held.
func (e *Engine) refuseAddLocked(spec DriveSpec, sb superblock, state sbState) error {
	if !isOurs(sb, state, e.opts.NodeID) {
		return formatRefusal(spec, sb, state, e.opts.NodeID)
	}
	for _, p := range e.pools {
		if p.uuid == sb.poolUUID {
			return fmt.Errorf("%w: %s carries the superblock of drive %d of %s, which is in use (a copy of that drive?); it is never reformatted, force or not", ErrDriveRefused, spec.Path, sb.driveIndex, p)
		}
	}
	for _, fp := range e.failedPools {
		if fp.UUID == uuidString(sb.poolUUID) {
			return fmt.Errorf("%w: %s is drive %d of this node's pool %d, which could not be opened (%s); it is kept for when the pool comes back, force or not", ErrDriveRefused, spec.Path, sb.driveIndex, fp.ID, fp.Status)
		}
	}
	return fmt.Errorf("%w: %s is drive %d of this node's %s, which is not open; restart the daemon with it (-s %s) to bring that pool and its volumes back; it is never reformatted, force or not", ErrDriveRefused, spec.Path, sb.driveIndex, sb.placeString(), spec.Path)
}

// Close flushes every pool and closes the drives.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	var errs []error
	for _, p := range e.pools {
		if err := p.commit(); err != nil {
			errs = append(errs, err)
		}
	}
	e.closePools()
	return errors.Join(errs...)
}

func (e *Engine) startBackground(p *pool) {
	if e.opts.manualCommit {
		close(p.done)
		close(p.fillDone)
		return
	}
	p.bgStarted = true
	go p.background()
	go p.filler()
}

// stopBackground stops every pool's background committer (idempotent).
func (e *Engine) stopBackground() {
	for _, p := range e.pools {
		select {
		case <-p.stop:
		default:
			close(p.stop)
			if p.bgStarted {
				<-p.done
				<-p.fillDone
			}
		}
	}
}

func (e *Engine) closePools() {
	e.stopBackground()
	for _, p := range e.pools {
		for _, pd := range p.drives {
			pd.d.Close()
		}
	}
}

// Status reports the node and its pools.
func (e *Engine) Status() Status {
	e.mu.Lock()
	pools := slices.Clone(e.pools)
	e.mu.Unlock()
	st := Status{NodeID: e.opts.NodeID}
	for _, p := range pools {
		p.mu.Lock()
		allocated := p.allocatedLocked() * ExtentSize
		pi := PoolInfo{ID: p.number, UUID: uuidString(p.uuid), IOPriority: p.priority, Raid: "raid0",
			Size: p.alloc.Total() * ExtentSize, Used: allocated - p.unfilled.Load()*BlockSize, Allocated: allocated, Status: "Online",
			Filling: p.fillCount.Load(), FillRAM: p.fillRAMUsed(), FillBudget: p.fillBudget()}
		// A drive's used space, like its pool's, leaves out the extents
		// reserved for writers.
		spareOn := make([]int64, len(p.drives))
		for _, ext := range append(slices.Clip(p.reserved), p.reserving...) {
			if d, _, ok := p.alloc.Drive(ext); ok {
				spareOn[d]++
			}
		}
		for i, pd := range p.drives {
			pi.Drives = append(pi.Drives, DriveInfo{Path: pd.d.Path(), Size: int64(pd.sb.extentCount) * ExtentSize,
				Used: (int64(p.alloc.DriveUsed(i)) - spareOn[i]) * ExtentSize, Status: "Online"})
		}
		p.mu.Unlock()
		if err := p.err(); err != nil {
			pi.Status = "Error: " + err.Error()
			for i := range pi.Drives {
				pi.Drives[i].Status = "Error"
			}
		}
		st.Pools = append(st.Pools, pi)
	}
	st.Pools = append(st.Pools, e.failedPools...)
	sort.SliceStable(st.Pools, func(i, j int) bool { return st.Pools[i].ID < st.Pools[j].ID })
	st.RefusedDrives = e.refused
	st.DuplicateNames = e.duplicates
	st.UnavailableVolumes = len(e.unavailable)
	e.mu.Lock()
	if e.catalogErr != nil {
		st.CatalogError = e.catalogErr.Error()
	}
	e.mu.Unlock()
	return st
}

// choosePool picks where a new volume lands: a pool of the asked priority,
// else the next lower one, else any; among equals the one with most free space.
func (e *Engine) choosePool(want IOPriority) (*pool, error) {
	order := map[IOPriority][]IOPriority{
		PriorityHigh:   {PriorityHigh, PriorityMedium, PriorityLow},
		PriorityMedium: {PriorityMedium, PriorityLow, PriorityHigh},
		PriorityLow:    {PriorityLow, PriorityMedium, PriorityHigh},
	}[want]
	for _, prio := range order {
		var best *pool
		var bestFree int64
		for _, p := range e.pools {
			if p.priority != prio || p.err() != nil {
				continue
			}
			p.mu.Lock()
			free := p.alloc.Total() - p.allocatedLocked() // reserved extents are free to any volume
			p.mu.Unlock()
			if best == nil || free > bestFree {
				best, bestFree = p, free
			}
		}
		if best != nil {
			return best, nil
		}
	}
	return nil, fmt.Errorf("%w: this node has no usable storage pool (storageless, or every pool failed)", ErrNoPool)
}

// CreateVolume creates a thin volume; it is durable when CreateVolume returns.
func (e *Engine) CreateVolume(spec VolumeSpec) (VolumeInfo, error) {
	if err := spec.check(); err != nil {
		return VolumeInfo{}, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return VolumeInfo{}, ErrClosed
	}
	if err := e.nameTakenLocked(spec.Name); err != nil {
		return VolumeInfo{}, err
	}
	p, err := e.choosePool(spec.IOPriority)
	if err != nil {
		return VolumeInfo{}, err
	}
	p.mu.Lock()
	m := volumeMeta{id: p.nextVolID, uid: randomU64(), name: spec.Name, size: spec.Size, created: time.Now().UnixNano(),
		priority: spec.IOPriority, repl: uint8(spec.Repl), sticky: spec.Sticky, snapInterval: uint32(spec.SnapInterval),
		snapKeep: uint32(spec.SnapKeep), blockSize: BlockSize}
	v, err := p.newVolume(m)
	p.mu.Unlock()
	if err != nil {
		return VolumeInfo{}, err
	}
	if err := e.saveCatalogLocked(entryFor(p, m)); err != nil {
		return VolumeInfo{}, err
	}
	p.mu.Lock()
	p.nextVolID++
	p.vols[m.id] = v
	p.enqueue(&record{typ: recCreateVolume, meta: m, vol: m.id})
	p.mu.Unlock()
	if err := p.commit(); err != nil {
		return VolumeInfo{}, err
	}
	e.byName[spec.Name] = v
	return v.Info(), nil
}

// Volume returns a volume (or snapshot) by name or by id.
func (e *Engine) Volume(name string) (*Volume, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lookupLocked(name)
}

// Volumes lists every volume, by name.
func (e *Engine) Volumes() []VolumeInfo {
	e.mu.Lock()
	vols := make([]*Volume, 0, len(e.byName))
	for _, v := range e.byName {
		vols = append(vols, v)
	}
	e.mu.Unlock()
	out := make([]VolumeInfo, 0, len(vols)+len(e.unavailable))
	for _, v := range vols {
		out = append(out, v.Info())
	}
	for _, u := range e.unavailable {
		out = append(out, u.info(e))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// UpdateVolume changes size (grow only), sticky, snap interval and snap keep; durable on return.
func (e *Engine) UpdateVolume(name string, upd VolumeUpdate) (VolumeInfo, error) {
	v, err := e.Volume(name)
	if err != nil {
		return VolumeInfo{}, err
	}
	if err := upd.check(); err != nil {
		return VolumeInfo{}, err
	}
	if upd.Size != nil && *upd.Size < v.Size() {
		return VolumeInfo{}, fmt.Errorf("%w: volume %q is %s, asked for %s", ErrShrink, name, size.Exact(v.Size()), size.Exact(*upd.Size))
	}
	if v.ReadOnly() && (upd.Size != nil || upd.SnapInterval != nil || upd.SnapKeep != nil) {
		return VolumeInfo{}, fmt.Errorf("%w: %q is a snapshot", ErrReadOnly, name)
	}
	p := v.pool
	if err := p.err(); err != nil {
		return VolumeInfo{}, err
	}
	v.ioMu.Lock()
	if v.deleted {
		v.ioMu.Unlock()
		return VolumeInfo{}, fmt.Errorf("%w: volume %q", ErrNotFound, name)
	}
	p.mu.Lock()
	if upd.Size != nil && *upd.Size > v.meta.size {
		v.setSize(*upd.Size)
	}
	if upd.Sticky != nil {
		v.meta.sticky = *upd.Sticky
	}
	if upd.SnapInterval != nil {
		v.meta.snapInterval = uint32(*upd.SnapInterval)
	}
	if upd.SnapKeep != nil {
		v.meta.snapKeep = uint32(*upd.SnapKeep)
	}
	p.enqueue(&record{typ: recSetAttrs, vol: v.id, meta: v.meta})
	p.mu.Unlock()
	v.ioMu.Unlock()
	if err := p.commit(); err != nil {
		return VolumeInfo{}, err
	}
	return v.Info(), nil
}

// DeleteVolume deletes a volume and gives its space back; durable on return.
// Refused for sticky volumes and volumes in use (held).
func (e *Engine) DeleteVolume(name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, err := e.lookupLocked(name)
	if err != nil {
		return err
	}
	p := v.pool
	p.mu.Lock()
	sticky := v.meta.sticky
	p.mu.Unlock()
	if sticky {
		return fmt.Errorf("%w: volume %q", ErrSticky, name)
	}
	if err := v.busy(); err != nil {
		return err
	}
	if snaps := e.snapshotsLocked(v); len(snaps) > 0 {
		return fmt.Errorf("%w: volume %q has %d snapshot(s) (%s); delete them first, or use force", ErrHasSnapshots, name, len(snaps), strings.Join(snaps, ", "))
	}
	if err := p.err(); err != nil {
		return err
	}
	v.ioMu.Lock()
	p.mu.Lock()
	p.dropMapping(v.table)
	v.used.Store(0)
	v.deleted = true
	delete(p.vols, v.id)
	p.enqueue(&record{typ: recDeleteVolume, vol: v.id})
	p.mu.Unlock()
	v.ioMu.Unlock()
	delete(e.byName, v.served) // name may be its id
	if err := p.commit(); err != nil {
		return err
	}
	err = p.reclaimCondemned()
	// The delete is done: a failed save of the catalog only leaves the name
	// there, which keeps it taken while this pool is missing, until the next
	// save. It is reported in Status, not as a failed delete.
	_ = e.saveCatalogLocked() // a failure stays in e.catalogErr, for Status
	return err
}

// Check verifies the engine's invariants (tests): every pool's allocator is
// consistent and holds exactly the extents mapped by its volumes plus those
// waiting to be freed.
//
// It may run while I/O does. A copy-on-write holds the extent it copies into
// outside the pool's lists (neither reserved nor mapped yet) while it copies,
// with only its volume's ioMu (read) held; so Check freezes each pool's
// volumes by taking their ioMu for writing, then the pool's mu, and checks a
// state no I/O is half-way through. Commit rounds keep the extents they work
// on listed, so they need not be stopped. e.mu keeps p.vols fixed meanwhile
// (volumes are created and deleted under it).
func (e *Engine) Check() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.pools {
		p.mu.Lock()
		vols := slices.Collect(maps.Values(p.vols))
		p.mu.Unlock()
		for _, v := range vols {
			v.ioMu.Lock()
		}
		p.mu.Lock()
		err := p.alloc.Check()
		var mapped int64
		refs := map[allocator.Extent]int{}
		held := map[allocator.Extent]string{}
		for _, v := range p.vols {
			v.table.forEach(func(lext uint32, ext allocator.Extent) {
				mapped++
				refs[ext]++
			})
		}
		p.copierMu.Lock() // the filler sets bits and counts them apart
		if ferr := p.fillCheckLocked(refs); ferr != nil && err == nil {
			err = ferr
		}
		p.copierMu.Unlock()
		hold := func(ext allocator.Extent, who string) {
			if refs[ext] > 0 || held[ext] != "" {
				if err == nil {
					err = fmt.Errorf("%s: extent %d is %s and also mapped or %s", p, ext, who, held[ext])
				}
			}
			held[ext] = who
		}
		for _, ext := range p.pendingFree {
			hold(ext, "pending free")
		}
		for _, ext := range append(slices.Clip(p.reserved), p.reserving...) {
			hold(ext, "reserved")
		}
		for ext := range p.condemned {
			hold(ext, "condemned")
		}
		for ext, n := range refs {
			if got := p.alloc.Refs(ext); got != n && err == nil {
				err = fmt.Errorf("%s: extent %d mapped %d times, allocator counts %d references", p, ext, n, got)
			}
		}
		if err == nil && int64(len(refs)+len(held)) != p.alloc.Used() {
			err = fmt.Errorf("%s: %d extents mapped + %d held, allocator says %d used", p, len(refs), len(held), p.alloc.Used())
		}
		p.mu.Unlock()
		for _, v := range vols {
			v.ioMu.Unlock()
		}
		if err != nil {
			return err
		}
	}
	return nil
}
