package engine

import (
	"bytes"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/allocator"
	"github.com/cairn-storage/cairn/drive"
)

// syncCounter is a Mem drive that counts its syncs.
type syncCounter struct {
	*drive.Mem
	syncs atomic.Int64
}

func (c *syncCounter) Sync() error {
	c.syncs.Add(1)
	return c.Mem.Sync()
}

// manualDB opens a manual engine on d (logArea 0: the default log size)
// with a 4 MiB volume "db".
func manualDB(t *testing.T, d drive.Drive, logArea int64) (*Engine, *Volume) {
	t.Helper()
	e, err := Open(Options{NodeID: testNode, LogAreaSize: logArea, manualCommit: true,
		Drives: []DriveSpec{{Path: d.Path(), Drive: d}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if _, err := e.CreateVolume(VolumeSpec{Name: "db", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	return e, mustVolume(t, e, "db")
}

// snapshotted opens a manual engine on d, writes pattern 1 over the first
// extent of a 4 MiB volume "db", flushes, and snapshots it as "db.s1".
func snapshotted(t *testing.T, d drive.Drive) (*Engine, *Volume, []byte) {
	t.Helper()
	e, v := manualDB(t, d, 256<<10)
	a := pattern(1, ExtentSize)
	if err := v.WriteAt(a, 0, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSnapshot("db", "db.s1"); err != nil {
		t.Fatal(err)
	}
	return e, v, a
}

func reopen(t *testing.T, e *Engine, d *drive.Mem) (*Engine, *Volume) {
	t.Helper()
	abandon(e)
	d.Crash(rand.New(rand.NewPCG(1, 2)))
	e = manualEngine(t, d, 0)
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
	return e, mustVolume(t, e, "db")
}

func readBlock(t *testing.T, v *Volume, blk int64) []byte {
	t.Helper()
	b := make([]byte, BlockSize)
	if err := v.ReadAt(b, blk*BlockSize); err != nil {
		t.Fatal(err)
	}
	return b
}

// A flush after writes that logged only order-free records (a redirect and
// filled bits) costs one sync of the pool's one drive, not two; a write of
// zeros into a filling extent takes the ordered round.
func TestUnorderedRoundOneSync(t *testing.T) {
	d := &syncCounter{Mem: drive.NewMem("mem0", 64<<20)}
	_, v, _ := snapshotted(t, d)
	flushSyncs := func(what string, off int64, b []byte, want int64) {
		t.Helper()
		before := d.syncs.Load()
		if err := v.WriteAt(b, off, false); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := d.syncs.Load() - before; got != want {
			t.Fatalf("%s, and a flush: %d syncs, want %d", what, got, want)
		}
	}
	flushSyncs("first write to a shared extent (redirect)", 0, pattern(2, BlockSize), 1)
	flushSyncs("write to another block of the filling extent", 5*BlockSize, pattern(3, BlockSize), 1)
	flushSyncs("overwrite of a filled block (nothing logged)", 5*BlockSize, pattern(4, BlockSize), 1)
	// The zero write first confirms the unordered round: an ordered round
	// whose marker frame costs a sync (no data is dirty). Its own bit is
	// then logged after its data is synced: two more.
	flushSyncs("zeros into a filling extent", 9*BlockSize, make([]byte, BlockSize), 1+2)
	// The last round was ordered: zeros go at once, and their flush syncs
	// data, then log.
	flushSyncs("zeros again", 10*BlockSize, make([]byte, BlockSize), 2)
}

// A crash during an unordered round whose frame reached the drive but
// whose data did not: recovery drops the bits of the blocks that read as
// zeros (they read the snapshot's data again, the old content), keeps the
// others, and the verdict outlives the next recovery.
func TestUnorderedTailDropsUnwrittenBits(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e, v, a := snapshotted(t, d)
	b := pattern(2, 2*BlockSize)
	if err := v.WriteAt(b, 0, false); err != nil {
		t.Fatal(err)
	}
	p := e.pools[0]
	f, _ := v.table.lookup(0)
	d.Inject(drive.Fault{Ops: drive.FaultSync, Count: 1})
	if err := v.Flush(); err == nil {
		t.Fatal("flush succeeded with its sync failing")
	}
	d.ClearFaults()
	// The round's frame is on the drive; block 0's data is not.
	pd, off := p.locateShared(f)
	if err := pd.d.WriteAt(make([]byte, BlockSize), off); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}

	e, v = reopen(t, e, d)
	p = e.pools[0]
	if !bytes.Equal(readBlock(t, v, 0), a[:BlockSize]) {
		t.Fatal("block 0, whose data never landed, does not read its old content")
	}
	if !bytes.Equal(readBlock(t, v, 1), b[BlockSize:]) {
		t.Fatal("block 1, whose data landed, does not read it")
	}
	if !p.mustCheckpoint {
		t.Fatal("recovery dropped a bit without asking for a checkpoint")
	}
	if err := p.commit(); err != nil {
		t.Fatal(err)
	}
	// More rounds after the one that set the dropped bit: if they confirmed
	// it, block 0 would read F's zeros.
	if err := v.WriteAt(pattern(3, BlockSize), 2*ExtentSize, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	_, v = reopen(t, e, d)
	if !bytes.Equal(readBlock(t, v, 0), a[:BlockSize]) {
		t.Fatal("after a second recovery, block 0 does not read its old content")
	}
}

// Zeros written over a block that an unordered round filled, flushed and
// not yet confirmed: after a crash the block reads the zeros or the flushed
// data, never the snapshot's.
func TestZeroWriteConfirmsUnorderedRound(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e, v, a := snapshotted(t, d)
	b := pattern(2, BlockSize)
	if err := v.WriteAt(b, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	p := e.pools[0]
	p.mu.Lock()
	unconfirmed := p.lastUnordered
	p.mu.Unlock()
	if !unconfirmed {
		t.Fatal("the flush's round was not unordered")
	}
	if err := v.WriteAt(make([]byte, BlockSize), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil { // the zeros landed; no round logged them
		t.Fatal(err)
	}
	expectZerosOrFlushed(t, e, d, a, b)
}

// expectZerosOrFlushed crashes e (d keeps what was synced) and checks that
// block 0 reads the zeros written last or the flushed data b before them,
// never the snapshot's data a.
func expectZerosOrFlushed(t *testing.T, e *Engine, d *drive.Mem, a, b []byte) {
	t.Helper()
	_, v := reopen(t, e, d)
	switch got := readBlock(t, v, 0); {
	case bytes.Equal(got, a[:BlockSize]):
		t.Fatal("block 0 reads the snapshot's data: the flushed write is lost")
	case !isZero(got) && !bytes.Equal(got, b):
		t.Fatal("block 0 reads neither the zeros nor the flushed data")
	}
}

// A trim or write-zeroes of a whole filling extent zeroes it at once (the
// unmap is logged later): the same rule as a write of zeros.
func TestWholeExtentZeroConfirmsUnorderedRound(t *testing.T) {
	for _, op := range []string{"trim", "write-zeroes"} {
		t.Run(op, func(t *testing.T) {
			d := drive.NewMem("mem0", 64<<20)
			e, v, a := snapshotted(t, d)
			b := pattern(2, BlockSize)
			if err := v.WriteAt(b, 0, false); err != nil {
				t.Fatal(err)
			}
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			var err error
			if op == "trim" {
				err = v.Trim(0, ExtentSize)
			} else {
				err = v.WriteZeroes(0, ExtentSize, false)
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Sync(); err != nil { // the zeros landed; the unmap was never logged
				t.Fatal(err)
			}
			expectZerosOrFlushed(t, e, d, a, b)
		})
	}
}

// The process dies between an unordered round's frame and its sync; the
// restart reads the frame and the data from the page cache and keeps the
// bits; later rounds sync only drive 0; then the power goes. Recovery must
// have synced what it kept: otherwise the confirmed bit points at a block of
// drive 1 that never reached it, and reads zeros.
func TestProcessCrashThenPowerLoss(t *testing.T) {
	d0, d1 := drive.NewMem("mem0", 64<<20), drive.NewMem("mem1", 64<<20)
	open := func() *Engine {
		opts := memOptions(d0, d1)
		opts.manualCommit = true
		e, err := Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}
	e := open()
	if _, err := e.CreateVolume(VolumeSpec{Name: "db", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, e, "db")
	a := pattern(1, ExtentSize)
	if err := v.WriteAt(a, 0, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSnapshot("db", "db.s1"); err != nil {
		t.Fatal(err)
	}
	p := e.pools[0]
	onD1 := func(x allocator.Extent) bool { pd, _ := p.locateShared(x); return pd.d == drive.Drive(d1) }
	// First writes to other extents use up reserved extents until the next
	// one is on drive 1, then (after the redirect) all of them, so that
	// loading zeroes and syncs nothing by itself.
	lext := int64(1)
	reservedNext := func() (allocator.Extent, int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if n := len(p.reserved); n > 0 {
			return p.reserved[n-1], n + len(p.reserving)
		}
		return 0, len(p.reserving)
	}
	for next, n := reservedNext(); n == 0 || !onD1(next); next, n = reservedNext() {
		if n == 0 {
			t.Fatal("no reserved extent on drive 1")
		}
		if err := v.WriteAt(pattern(9, BlockSize), lext*ExtentSize, false); err != nil {
			t.Fatal(err)
		}
		lext++
	}
	x := pattern(2, BlockSize)
	if err := v.WriteAt(x, 0, false); err != nil {
		t.Fatal(err)
	}
	if f, _ := v.table.lookup(0); !onD1(f) {
		t.Fatal("the redirect did not take the extent on drive 1")
	}
	for _, n := reservedNext(); n > 0; _, n = reservedNext() {
		if err := v.WriteAt(pattern(9, BlockSize), lext*ExtentSize, false); err != nil {
			t.Fatal(err)
		}
		lext++
	}
	d0.Inject(drive.Fault{Ops: drive.FaultSync, Count: 1})
	if err := v.Flush(); err == nil {
		t.Fatal("flush succeeded with its sync failing")
	}
	d0.ClearFaults()
	abandon(e) // the process dies; the page cache stays

	e = open()
	if !bytes.Equal(readBlock(t, mustVolume(t, e, "db"), 0), x) {
		t.Fatal("after the process crash block 0 does not read what the page cache holds")
	}
	if _, err := e.CreateVolume(VolumeSpec{Name: "other", Size: 1 << 20}); err != nil { // a round on drive 0
		t.Fatal(err)
	}
	abandon(e)
	for _, d := range []*drive.Mem{d0, d1} { // power loss: every unsynced write lost
		durable := d.DurableBytes()
		d.Crash(rand.New(rand.NewPCG(1, 2)))
		d.Poke(0, durable)
	}
	e = open()
	switch got := readBlock(t, mustVolume(t, e, "db"), 0); {
	case bytes.Equal(got, x), bytes.Equal(got, a[:BlockSize]):
	case isZero(got):
		t.Fatal("block 0 reads zeros, which were never written to it")
	default:
		t.Fatal("block 0 reads neither its old nor its new content")
	}
}

// lostWriteInFill: a snapshotted volume whose block 0 was redirected
// (durably, by a flushed write to another block of the extent) and then
// written with D1, which reached the drive but whose bit was never logged;
// then a crash. Returns the reopened engine and volume, the snapshot's
// data and D1.
func lostWriteInFill(t *testing.T, d *drive.Mem) (*Engine, *Volume, []byte, []byte) {
	t.Helper()
	e, v, a := snapshotted(t, d)
	if err := v.WriteAt(pattern(5, BlockSize), 7*BlockSize, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	d1 := pattern(6, BlockSize)
	if err := v.WriteAt(d1, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil { // the disk wrote it on its own
		t.Fatal(err)
	}
	e, v = reopen(t, e, d)
	return e, v, a, d1
}

// A write to a block of a filling extent lands on the drive but its bit is
// never logged (not flushed); a crash: the block reads the snapshot's data
// again, while F still holds the lost write. After recovery a new write to
// that block is logged by an unordered round whose frame lands and whose
// data does not: recovery finds the block non-zero (the stale, lost write)
// and keeps the bit. The block then shows a write that the first crash had
// already taken away: neither its old content nor its new one.
func TestUnorderedTailResurrectsLostWrite(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e, v, a, d1 := lostWriteInFill(t, d)
	if got := readBlock(t, v, 0); !bytes.Equal(got, a[:BlockSize]) {
		t.Fatal("setup: block 0 should read the snapshot's data after the first crash")
	}
	p := e.pools[0]
	f, _ := v.table.lookup(0)
	pd, off := p.locateShared(f)

	// D2 into block 0; its flush's one sync fails: the frame is written,
	// the data is not durable.
	d2 := pattern(7, BlockSize)
	if err := v.WriteAt(d2, 0, false); err != nil {
		t.Fatal(err)
	}
	d.Inject(drive.Fault{Ops: drive.FaultSync, Count: 1})
	if err := v.Flush(); err == nil {
		t.Fatal("flush succeeded with its sync failing")
	}
	d.ClearFaults()
	// Power loss keeps the frame and loses D2: F's block 0 holds D1 again.
	if err := pd.d.WriteAt(d1, off); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	_, v = reopen(t, e, d)
	switch got := readBlock(t, v, 0); {
	case bytes.Equal(got, a[:BlockSize]), bytes.Equal(got, d2):
	case bytes.Equal(got, d1):
		t.Fatal("block 0 reads D1, a write the first crash took away (neither its old nor its new content)")
	default:
		t.Fatal("block 0 reads something else")
	}
}

// The same stale block reaches another volume: after the first crash a
// clone (through a snapshot) maps F, the volume and the snapshot go, and
// the clone writes F directly (its only reference). Its lost write lets the
// volume's pre-crash lost write show in the clone.
func TestUnorderedTailResurrectsLostWriteInClone(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e, _, a, d1 := lostWriteInFill(t, d)
	if _, err := e.CreateSnapshot("db", "db.s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CloneVolume("db.s2", "c"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"db.s2", "db.s1", "db"} {
		if err := e.DeleteVolume(n); err != nil {
			t.Fatal(n, err)
		}
	}
	c := mustVolume(t, e, "c")
	if got := readBlock(t, c, 0); !bytes.Equal(got, a[:BlockSize]) {
		t.Fatal("setup: clone block 0 should read db.s1's data")
	}
	p := e.pools[0]
	f, _ := c.table.lookup(0)
	if p.fillOf(f) == nil {
		t.Fatal("setup: the clone's extent is not filling")
	}
	pd, off := p.locateShared(f)
	stale := make([]byte, BlockSize)
	if err := pd.d.ReadAt(stale, off); err != nil {
		t.Fatal(err)
	}
	d2 := pattern(7, BlockSize)
	if err := c.WriteAt(d2, 0, false); err != nil {
		t.Fatal(err)
	}
	if f2, _ := c.table.lookup(0); f2 != f {
		t.Fatal("setup: the clone's write redirected")
	}
	d.Inject(drive.Fault{Ops: drive.FaultSync, Count: 1})
	if err := c.Flush(); err == nil {
		t.Fatal("flush succeeded with its sync failing")
	}
	d.ClearFaults()
	if err := pd.d.WriteAt(stale, off); err != nil { // D2 lost, frame kept
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	abandon(e)
	e = manualEngine(t, d, 0)
	c = mustVolume(t, e, "c")
	switch got := readBlock(t, c, 0); {
	case bytes.Equal(got, a[:BlockSize]), bytes.Equal(got, d2):
	case bytes.Equal(got, d1):
		t.Fatal("clone block 0 reads D1, a write to another volume that a crash took away")
	default:
		t.Fatal("clone block 0 reads something else")
	}
}

// FlushCovering(gen) makes durable every write acknowledged before gen was
// read (FlushGen), and returns at once, without a round, when a round
// covered gen already.
func TestFlushCoveringTheWritesBeforeItsGen(t *testing.T) {
	d := &syncCounter{Mem: drive.NewMem("mem0", 64<<20)}
	_, v := manualDB(t, d, 0)
	a := pattern(1, BlockSize)
	if err := v.WriteAt(a, 0, false); err != nil {
		t.Fatal(err)
	}
	gen := v.FlushGen()
	if gen == 0 {
		t.Fatal("FlushGen did not count the write")
	}
	if err := v.FlushCovering(gen, time.Time{}); err != nil {
		t.Fatal(err)
	}
	img := d.DurableBytes() // a power cut now
	syncs := d.syncs.Load()
	if err := v.FlushCovering(gen, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := d.syncs.Load(); got != syncs {
		t.Fatalf("a flush whose gen a round covered synced again (%d → %d syncs)", syncs, got)
	}
	if err := v.WriteAt(pattern(2, BlockSize), BlockSize, false); err != nil {
		t.Fatal(err)
	}
	if v.FlushGen() <= gen {
		t.Fatal("FlushGen did not move with a later write")
	}
	d2 := drive.NewMem("mem0", 64<<20)
	d2.Poke(0, img)
	e2 := manualEngine(t, d2, 0)
	if !bytes.Equal(readBlock(t, mustVolume(t, e2, "db"), 0), a) {
		t.Fatal("the write before FlushGen was lost in the power cut after FlushCovering")
	}
}
