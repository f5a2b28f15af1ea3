package engine

import (
	"cmp"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/drive"
)

var (
	crashSeed   = flag.Uint64("crash.seed", 0, "seed for TestCrashModel (0 = time-based; printed on failure)")
	crashCycles = flag.Int("crash.cycles", 1200, "crash-recover cycles in TestCrashModel")
)

// blockContent is the data of version ver of block blk of volume uid: every
// 8-byte word names all three, so a block that shows up in the wrong place,
// the wrong volume or torn is recognised.
func blockContent(buf []byte, uid uint64, blk int64, ver uint32) {
	if ver == 0 {
		clear(buf)
		return
	}
	for i := 0; i < len(buf); i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], uid*0x9E3779B97F4A7C15^uint64(blk)<<20^uint64(ver)<<1^uint64(i))
	}
}

// modelVolume tracks, per block, the versions a read after a crash may show:
// the one the last flush covered and every one written since (issue order).
type modelVolume struct {
	name string
	// info is every piece of the volume's metadata, as the engine reported it
	// when the volume was made and as each update since changed it (Used,
	// which follows the data, is left zero: see metadataOf).
	info VolumeInfo
	// An operation that failed on an I/O error may or may not have happened.
	maybeInfo    *VolumeInfo // a failed update to this
	maybeExists  bool        // a failed create: the volume may not exist (info unknown)
	maybeDeleted bool        // a failed delete: the volume may be gone
	readOnly     bool        // a snapshot
	parent       string
	uid          uint64
	size         int64
	latest       []uint32   // what a read must show now
	possible     [][]uint32 // what a read after a crash may show
}

// metadataOf is the part of VolumeInfo that must survive a crash exactly:
// all of it but Used (which depends on which unflushed writes survived).
func metadataOf(info VolumeInfo) VolumeInfo {
	info.Used = 0
	return info
}

// randomUpdate changes one or more of the fields of VolumeUpdate, each as a
// user could (TestRandomUpdateCoversVolumeUpdate makes a new field join).
func randomUpdate(rng *rand.Rand, m *modelVolume) VolumeUpdate {
	for {
		var upd VolumeUpdate
		if rng.IntN(2) == 0 {
			size := m.size + int64(1+rng.IntN(4))*ExtentSize/4
			upd.Size = &size
		}
		if rng.IntN(2) == 0 {
			sticky := rng.IntN(3) == 0 // mostly off, so deletes go on
			upd.Sticky = &sticky
		}
		if rng.IntN(2) == 0 {
			minutes := rng.IntN(3) * 30
			upd.SnapInterval = &minutes
		}
		if rng.IntN(2) == 0 {
			keep := 1 + rng.IntN(MaxSnapshots)
			upd.SnapKeep = &keep
		}
		if upd != (VolumeUpdate{}) {
			return upd
		}
	}
}

// applyUpdate is what an update does to a volume's metadata.
func applyUpdate(info VolumeInfo, upd VolumeUpdate) VolumeInfo {
	if upd.Size != nil {
		info.Size = *upd.Size
	}
	if upd.Sticky != nil {
		info.Sticky = *upd.Sticky
	}
	if upd.SnapInterval != nil {
		info.SnapInterval = *upd.SnapInterval
	}
	if upd.SnapKeep != nil {
		info.SnapKeep = *upd.SnapKeep
	}
	return info
}

func TestRandomUpdateCoversVolumeUpdate(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	m := &modelVolume{size: ExtentSize}
	typ := reflect.TypeFor[VolumeUpdate]()
	set := make([]bool, typ.NumField())
	for range 100 {
		v := reflect.ValueOf(randomUpdate(rng, m))
		for i := range set {
			if !v.Field(i).IsNil() {
				set[i] = true
			}
		}
	}
	for i, ok := range set {
		if !ok {
			t.Errorf("the crash model never changes VolumeUpdate.%s: teach randomUpdate and applyUpdate about it", typ.Field(i).Name)
		}
	}
}

func (m *modelVolume) blocks() int64 { return m.size / BlockSize }

func (m *modelVolume) grow(size int64) {
	for b := m.blocks(); b < size/BlockSize; b++ {
		m.latest = append(m.latest, 0)
		m.possible = append(m.possible, []uint32{0})
	}
	m.size = size
}

type histKey struct {
	name string
	blk  int64
}

type histEntry struct {
	ver   uint32
	cycle int
	op    string
}

// history records every version ever given to a block, for failure reports.
var history = map[histKey][]histEntry{}
var histCycle int
var histOp string

type traceEntry struct {
	cycle   int
	op, vol string
	blk, n  int64
	err     error
}

var trace []traceEntry

func traced(cycle int, op, vol string, blk, n int64, err error) {
	trace = append(trace, traceEntry{cycle: cycle, op: op, vol: vol, blk: blk, n: n, err: err})
}

func (m *modelVolume) set(blk int64, ver uint32) {
	history[histKey{m.name, blk}] = append(history[histKey{m.name, blk}], histEntry{ver, histCycle, histOp})
	m.latest[blk] = ver
	m.possible[blk] = append(m.possible[blk], ver)
}

func (m *modelVolume) flushed() {
	for b := range m.latest {
		m.possible[b] = append(m.possible[b][:0], m.latest[b])
	}
}

// TestCrashModel drives random writes, trims, write-zeroes, flushes, updates
// (of every field of VolumeUpdate), creates (with random settings) and deletes
// across several volumes against a model, crashes the drives at random points
// (unsynced writes dropped, applied or torn in 4 KiB units), sometimes with an
// I/O fault that fails the pool mid-round, recovers, and checks every block
// and all the metadata of every volume against the durability contract.
// Replay a failure with: go test ./engine -run TestCrashModel -crash.seed=N
func TestMain(m *testing.M) {
	// Pool failures are logged at ERROR; the crash test causes hundreds on purpose.
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}

func TestCrashModel(t *testing.T) {
	cycles := *crashCycles
	if testing.Short() {
		cycles = 100
	}
	t.Run("mixed", func(t *testing.T) { runCrashModel(t, cycles, false) })
	// Snapshots, clones, restores and deletes often, so writes redirect,
	// extents fill and fills are cut short by crashes and deletes.
	t.Run("snapshots", func(t *testing.T) { runCrashModel(t, cycles/2, true) })
}

// snapHeavy makes step pick a snapshot, clone, restore or delete one time
// in four.
var snapHeavy bool

func runCrashModel(t *testing.T, cycles int, heavy bool) {
	seed := *crashSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	snapHeavy = heavy
	defer func() {
		if t.Failed() {
			t.Logf("replay with: go test ./engine -run 'TestCrashModel/%s' -crash.seed=%d", t.Name()[len("TestCrashModel/"):], seed)
		}
	}()
	rng := rand.New(rand.NewPCG(seed, 99))
	dev := drive.NewMem("mem0", 20<<20) // 1 MiB of metadata + 19 extents: ENOSPC happens
	opts := memOptions(dev)
	opts.manualCommit = true
	vols := map[string]*modelVolume{}
	var nextName int
	buf := make([]byte, 16*BlockSize)
	want := make([]byte, BlockSize)

	for cycle := 0; cycle < cycles && !t.Failed(); cycle++ {
		dev.ClearFaults()
		// A small cap on filling extents makes the filler complete them
		// under pressure and redirects fall back to whole copies.
		opts.fillCap = 1 + rng.IntN(6)
		e, err := Open(opts)
		if err != nil {
			t.Fatalf("cycle %d: recovery: %v", cycle, err)
		}
		if err := e.Check(); err != nil {
			t.Fatalf("cycle %d: after recovery: %v", cycle, err)
		}
		verify(t, e, vols, cycle, want)
		faulted := false
		if rng.IntN(4) == 0 {
			ops := []drive.FaultOp{drive.FaultWrite, drive.FaultSync, drive.FaultWrite | drive.FaultSync}[rng.IntN(3)]
			dev.Inject(drive.Fault{Ops: ops, Skip: rng.IntN(40), Count: 1})
			faulted = true
		}
		histCycle = cycle
		for op := rng.IntN(40); op > 0 && !t.Failed(); op-- {
			if op%8 == 0 {
				if err := e.Check(); err != nil && e.pools[0].err() == nil {
					t.Fatalf("cycle %d: %v (last op %s)", cycle, err, histOp)
				}
			}
			if err := step(e, rng, vols, &nextName, buf); err != nil {
				if faulted && errors.Is(err, ErrIO) || errors.Is(err, drive.ErrIO) {
					break // the pool failed on the injected fault: crash now
				}
				if !errors.Is(err, ErrNoSpace) {
					t.Fatalf("cycle %d: %v", cycle, err)
				}
			}
		}
		if err := e.Check(); err != nil && e.pools[0].err() == nil {
			t.Fatalf("cycle %d: before crash: %v", cycle, err)
		}
		abandon(e)
		if rng.IntN(3) > 0 {
			dev.Crash(rng)
			traced(cycle, "crash", "", 0, 0, nil)
		} else {
			// The process alone: the page cache stays, and recovery
			// makes what it reads durable (loadPool), so the next
			// power loss keeps what this recovery showed.
			traced(cycle, "process crash", "", 0, 0, nil)
		}
	}
}

// abandon stops an engine the way a killed process stops: no flush, no close.
func abandon(e *Engine) {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.stopBackground()
}

func step(e *Engine, rng *rand.Rand, vols map[string]*modelVolume, nextName *int, buf []byte) error {
	names := make([]string, 0, len(vols))
	for n := range vols {
		names = append(names, n)
	}
	slices.Sort(names)
	if len(names) == 0 || rng.IntN(50) == 0 && len(names) < 4 {
		// uid: each volume's blocks are its own, so one showing up in
		// another volume is caught (its snapshots and clones share it).
		name, uid := fmt.Sprintf("vol%d", *nextName), uint64(1+*nextName)
		*nextName++
		size := int64(1+rng.IntN(12)) * ExtentSize / 2
		spec := VolumeSpec{Name: name, Size: size, IOPriority: priorityCodes[rng.IntN(len(priorityCodes))],
			SnapInterval: rng.IntN(3) * 15, SnapKeep: rng.IntN(MaxSnapshots + 1)}
		info, err := e.CreateVolume(spec)
		if err != nil {
			if errors.Is(err, drive.ErrIO) || errors.Is(err, ErrIO) {
				m := &modelVolume{name: name, uid: uid, maybeExists: true}
				m.grow(size)
				vols[name] = m
			}
			return err
		}
		want := VolumeInfo{ID: info.ID, Name: name, Size: size, Repl: 1, IOPriority: PriorityLow, RequestedIOPriority: spec.IOPriority,
			SnapInterval: spec.SnapInterval, SnapKeep: cmp.Or(spec.SnapKeep, DefaultSnapKeep), BlockSize: BlockSize, State: "up", Created: info.Created}
		if got := metadataOf(info); got != want {
			return fmt.Errorf("create %s returned %+v, want %+v", name, got, want)
		}
		m := &modelVolume{name: name, uid: uid, info: want}
		traced(histCycle, "create", name, 0, size/BlockSize, nil)
		m.grow(size)
		vols[name] = m
		return nil
	}
	if rng.IntN(16) == 0 {
		return fillStep(e, rng)
	}
	m := vols[names[rng.IntN(len(names))]]
	v, err := e.Volume(m.name)
	if err != nil {
		return err
	}
	op := rng.IntN(108)
	if snapHeavy && rng.IntN(4) == 0 {
		op = 96 + rng.IntN(12)
	}
	if m.readOnly && (op < 72 || op >= 92) {
		// A snapshot refuses every change.
		if err := v.WriteAt(buf[:BlockSize], 0, false); !errors.Is(err, ErrReadOnly) {
			return fmt.Errorf("write to snapshot %s: %v", m.name, err)
		}
		if op < 100 {
			return nil
		}
	}
	switch {
	case op < 55: // write 1..16 blocks
		histOp = "write"
		n := int64(1 + rng.IntN(16))
		blk := rng.Int64N(m.blocks())
		n = min(n, m.blocks()-blk)
		ver := uint32(rng.Uint32()>>1) + 1
		if rng.IntN(8) == 0 {
			ver = 0 // zeros written as data: recovery cannot tell them from "not written" (round.go)
		}
		for i := int64(0); i < n; i++ {
			blockContent(buf[i*BlockSize:(i+1)*BlockSize], m.uid, blk+i, ver)
		}
		fua := rng.IntN(10) == 0
		err := v.WriteAt(buf[:n*BlockSize], blk*BlockSize, fua)
		ext, _ := v.table.lookup(uint32(blk * BlockSize / ExtentSize))
		traced(histCycle, fmt.Sprintf("write v%d fua=%v ext=%d", ver, fua, ext), m.name, blk, n, err)
		if err == nil || !errors.Is(err, ErrNoSpace) {
			// Even a failed write may have reached some blocks.
			for i := int64(0); i < n; i++ {
				m.set(blk+i, ver)
			}
		}
		if err != nil && errors.Is(err, ErrNoSpace) {
			// ENOSPC: blocks before the failing extent may be written; the
			// model cannot know which, so it re-reads them.
			for i := int64(0); i < n; i++ {
				b := buf[:BlockSize]
				if rerr := v.ReadAt(b, (blk+i)*BlockSize); rerr != nil {
					return rerr
				}
				if got := blockVersion(b, m.uid, blk+i, ver, m.latest[blk+i]); got != m.latest[blk+i] {
					m.set(blk+i, got)
				}
			}
		}
		if err == nil && fua {
			for i := int64(0); i < n; i++ {
				m.possible[blk+i] = append(m.possible[blk+i][:0], ver)
			}
		}
		return err
	case op < 65, op < 72: // trim or write-zeroes over 1..300 blocks
		histOp = fmt.Sprintf("trim/zero(op %d)", op)
		n := int64(1 + rng.IntN(300))
		blk := rng.Int64N(m.blocks())
		if rng.IntN(4) == 0 { // a whole extent: unmapped, not written
			n, blk = ExtentSize/BlockSize, blk/(ExtentSize/BlockSize)*(ExtentSize/BlockSize)
		}
		n = min(n, m.blocks()-blk)
		var err error
		if op < 65 {
			err = v.Trim(blk*BlockSize, n*BlockSize)
			traced(histCycle, fmt.Sprintf("trim pendingFree=%v reserved=%v", v.pool.pendingFree, v.pool.reserved), m.name, blk, n, err)
		} else {
			err = v.WriteZeroes(blk*BlockSize, n*BlockSize, rng.IntN(4) == 0)
			traced(histCycle, fmt.Sprintf("zero pendingFree=%v reserved=%v", v.pool.pendingFree, v.pool.reserved), m.name, blk, n, err)
		}
		switch {
		case err == nil || errors.Is(err, ErrIO) || errors.Is(err, drive.ErrIO):
			// Done, or (the pool failed, a crash follows) perhaps partly done.
			for i := int64(0); i < n; i++ {
				m.set(blk+i, 0)
			}
		default:
			// Refused part-way (ENOSPC for copy-on-write): learn what happened.
			for i := int64(0); i < n; i++ {
				b := buf[:BlockSize]
				if rerr := v.ReadAt(b, (blk+i)*BlockSize); rerr != nil {
					return rerr
				}
				if blockVersion(b, m.uid, blk+i, m.latest[blk+i]) != m.latest[blk+i] {
					m.set(blk+i, 0)
				}
			}
		}
		return err
	case op < 82:
		err := v.Flush()
		traced(histCycle, "flush", m.name, 0, 0, err)
		if err != nil {
			return err
		}
		m.flushed()
		return nil
	case op < 92: // read and compare with latest
		blk := rng.Int64N(m.blocks())
		b := buf[:BlockSize]
		if err := v.ReadAt(b, blk*BlockSize); err != nil {
			return err
		}
		want := make([]byte, BlockSize)
		blockContent(want, m.uid, blk, m.latest[blk])
		if string(b) != string(want) {
			return fmt.Errorf("read of %s block %d: not version %d", m.name, blk, m.latest[blk])
		}
		return nil
	case op < 96:
		upd := randomUpdate(rng, m)
		want := applyUpdate(m.info, upd)
		info, err := e.UpdateVolume(m.name, upd)
		if err != nil {
			if errors.Is(err, drive.ErrIO) || errors.Is(err, ErrIO) {
				m.maybeInfo = &want
			}
			return err
		}
		if got := metadataOf(info); got != want {
			return fmt.Errorf("update %s returned %+v, want %+v", m.name, got, want)
		}
		m.info = want     // durable on return
		m.grow(want.Size) // old blocks' possibilities unchanged
		return nil
	case op < 100:
		err := e.DeleteVolume(m.name)
		traced(histCycle, "delete", m.name, 0, m.blocks(), err)
		if err != nil {
			if errors.Is(err, drive.ErrIO) || errors.Is(err, ErrIO) {
				m.maybeDeleted = true
			}
			if errors.Is(err, ErrHasSnapshots) || errors.Is(err, ErrSticky) {
				return nil
			}
			return err
		}
		delete(vols, m.name)
		return nil
	case op < 104 && len(vols) >= 8 && snapHeavy: // make room: delete a snapshot, as the scheduler does
		for _, n := range names {
			if s := vols[n]; s.readOnly && n != m.name {
				err := e.DeleteVolume(n)
				traced(histCycle, "delete snapshot", n, 0, s.blocks(), err)
				if errors.Is(err, drive.ErrIO) || errors.Is(err, ErrIO) {
					s.maybeDeleted = true
				} else if err == nil {
					delete(vols, n)
				}
				return err
			}
		}
		return nil
	case op < 104 && len(vols) >= 8: // keep the model small: snapshots are verified every cycle
		return nil
	case op < 104 && m.readOnly: // clone a snapshot
		return shareModel(e, vols, m, nextName, false)
	case op < 104: // snapshot a volume
		return shareModel(e, vols, m, nextName, true)
	default: // restore a volume from one of its snapshots
		var snap *modelVolume
		for _, n := range names {
			if s := vols[n]; s.readOnly && s.parent == m.name && !s.maybeExists {
				snap = s
			}
		}
		if snap == nil || m.readOnly {
			return nil
		}
		err := e.RestoreVolume(m.name, snap.name)
		traced(histCycle, "restore from "+snap.name, m.name, 0, m.blocks(), err)
		if err != nil && !errors.Is(err, drive.ErrIO) && !errors.Is(err, ErrIO) {
			return err
		}
		for b := range m.latest {
			ver := uint32(0)
			if int64(b) < snap.blocks() {
				ver = snap.latest[b]
			}
			if err != nil { // may or may not have happened
				m.possible[b] = append(m.possible[b], ver)
			} else {
				m.latest[b] = ver
				m.possible[b] = append(m.possible[b][:0], ver)
			}
		}
		return err
	}
}

// fillStep runs the filler by hand (the crash model commits by hand, so no
// filler runs): a pass over what is worth completing, or part of one
// filling extent's copy (a copy a crash then interrupts). Content never
// changes, so the model has nothing to learn.
func fillStep(e *Engine, rng *rand.Rand) error {
	p := e.pools[0]
	if rng.IntN(2) == 0 {
		histOp = "fill pass"
		return p.fillPass(true, nil, nil)
	}
	var all []*fillState
	p.fills.each(func(fs *fillState) bool { all = append(all, fs); return true })
	if len(all) == 0 {
		return nil
	}
	slices.SortFunc(all, func(a, b *fillState) int { return int(a.ext) - int(b.ext) })
	fs := all[rng.IntN(len(all))]
	histOp = fmt.Sprintf("fill extent %d", fs.ext)
	return p.completeFill(fs, nil, rng.IntN(blocksPerExtent/fillRunBlocks+2))
}

// shareModel takes a snapshot of m (or a clone of snapshot m) and models it:
// its content is m's latest, exactly (creation syncs everything).
func shareModel(e *Engine, vols map[string]*modelVolume, m *modelVolume, nextName *int, snapshot bool) error {
	name := fmt.Sprintf("vol%d", *nextName)
	*nextName++
	var info VolumeInfo
	var err error
	if snapshot {
		info, err = e.CreateSnapshot(m.name, name)
	} else {
		info, err = e.CloneVolume(m.name, name)
	}
	traced(histCycle, fmt.Sprintf("share(snapshot=%v) of %s", snapshot, m.name), name, 0, m.blocks(), err)
	if errors.Is(err, ErrTooManySnaps) {
		return nil
	}
	maybe := errors.Is(err, drive.ErrIO) || errors.Is(err, ErrIO)
	if err != nil && !maybe {
		return err
	}
	s := &modelVolume{name: name, uid: m.uid, readOnly: snapshot, parent: m.name, maybeExists: maybe}
	if err == nil {
		// A snapshot or clone has its source's size, io_priority and repl,
		// none of its schedule and stickiness.
		want := VolumeInfo{ID: info.ID, Name: name, Size: m.size, Repl: m.info.Repl, IOPriority: m.info.IOPriority,
			RequestedIOPriority: m.info.RequestedIOPriority, SnapKeep: DefaultSnapKeep, BlockSize: BlockSize,
			Parent: m.name, ReadOnly: snapshot, Snapshot: snapshot, State: "up", Created: info.Created}
		if got := metadataOf(info); got != want {
			return fmt.Errorf("%s of %s returned %+v, want %+v", map[bool]string{true: "snapshot", false: "clone"}[snapshot], m.name, got, want)
		}
		s.info = want
	}
	s.grow(m.size)
	copy(s.latest, m.latest)
	for b := range s.latest {
		s.possible[b][0] = s.latest[b]
	}
	vols[name] = s
	return err
}

// blockVersion returns which of the candidate versions (or 0, zeros) b
// holds; ^0 for anything else.
func blockVersion(b []byte, uid uint64, blk int64, candidates ...uint32) uint32 {
	want := make([]byte, len(b))
	for _, v := range append(candidates, 0) {
		blockContent(want, uid, blk, v)
		if string(want) == string(b) {
			return v
		}
	}
	return ^uint32(0)
}

// verify reads every block of every volume after recovery and checks it holds
// one of the versions the contract allows; then that version is the baseline.
func verify(t *testing.T, e *Engine, vols map[string]*modelVolume, cycle int, want []byte) {
	t.Helper()
	got := e.Volumes()
	present := map[string]VolumeInfo{}
	for _, info := range got {
		present[info.Name] = info
		if vols[info.Name] == nil {
			t.Fatalf("cycle %d: volume %q exists after recovery, the model never had it", cycle, info.Name)
		}
	}
	for name, m := range vols {
		if _, ok := present[name]; !ok {
			if !m.maybeExists && !m.maybeDeleted {
				t.Fatalf("cycle %d: volume %q lost in recovery", cycle, name)
			}
			delete(vols, name)
		}
	}
	b := make([]byte, BlockSize)
	ids := map[string]string{}
	for _, info := range got {
		m := vols[info.Name]
		if other, dup := ids[info.ID]; dup {
			t.Fatalf("cycle %d: volumes %q and %q have the same id %s", cycle, other, info.Name, info.ID)
		}
		ids[info.ID] = info.Name
		switch meta := metadataOf(info); {
		case m.maybeExists:
			m.info = meta // made by a create that failed: nothing to compare with
		case m.maybeInfo != nil && meta == *m.maybeInfo:
			m.info = meta
			m.grow(meta.Size)
		case meta != m.info:
			t.Fatalf("cycle %d: volume %q after recovery:\n got %+v\nwant %+v", cycle, info.Name, meta, m.info)
		}
		m.maybeInfo, m.maybeExists, m.maybeDeleted = nil, false, false
		if info.Size != m.size {
			t.Fatalf("cycle %d: volume %q size %d after recovery, model %d", cycle, info.Name, info.Size, m.size)
		}
		v, _ := e.Volume(info.Name)
		for blk := int64(0); blk < m.blocks(); blk++ {
			if err := v.ReadAt(b, blk*BlockSize); err != nil {
				t.Fatalf("cycle %d: %s block %d: %v", cycle, m.name, blk, err)
			}
			found := false
			for _, ver := range slices.Backward(m.possible[blk]) {
				blockContent(want, m.uid, blk, ver)
				if string(want) == string(b) {
					m.latest[blk] = ver
					m.possible[blk] = append(m.possible[blk][:0], ver)
					found = true
					break
				}
			}
			if !found {
				for _, tr := range trace {
					if (tr.vol == m.name || tr.vol == m.parent) && (tr.op == "flush" || tr.blk <= blk|255 && blk&^255 < tr.blk+tr.n) || tr.op == "crash" || tr.op == "create" {
						t.Logf("trace: cycle %d %s %s blk %d n %d err %v", tr.cycle, tr.op, tr.vol, tr.blk, tr.n, tr.err)
					}
				}
				ext, mapped := v.table.lookup(uint32(blk * BlockSize / ExtentSize))
				t.Logf("lext %d mapped=%v ext=%d; pool reserved %v", blk*BlockSize/ExtentSize, mapped, ext, v.pool.reserved)
				for _, h := range history[histKey{m.name, blk}] {
					blockContent(want, m.uid, blk, h.ver)
					if string(want) == string(b) {
						t.Logf("it holds version %d, written in cycle %d op %q", h.ver, h.cycle, h.op)
					}
				}
				t.Fatalf("cycle %d: %s block %d holds none of the allowed versions %v (first bytes %x)", cycle, m.name, blk, m.possible[blk], b[:16])
			}
		}
	}
}
