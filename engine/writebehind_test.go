package engine

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/cairn-storage/cairn/drive"
	"golang.org/x/sys/unix"
)

// countingDrive is a Mem drive that counts the write-backs started on it.
type countingDrive struct {
	*drive.Mem
	started atomic.Int64
	lo, hi  atomic.Int64 // the last one's range
}

func (c *countingDrive) StartWriteback(off, n int64) {
	c.started.Add(1)
	c.lo.Store(off)
	c.hi.Store(off + n)
}

// Writes start their write-back only while the pool sees flushes: a volume
// that is never flushed keeps the page cache's batching, unless its writer
// asks (Writeback).
func TestWriteBehindOnlyWhileFlushed(t *testing.T) {
	d := &countingDrive{Mem: drive.NewMem("d", 32<<20)}
	e, err := Open(Options{NodeID: testNode, LogAreaSize: 256 << 10, Drives: []DriveSpec{{Path: "d", Drive: d}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")
	for i := range 8 {
		if err := v.WriteAt(pattern(i, BlockSize), int64(i)*BlockSize, false); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.started.Load(); n != 0 {
		t.Fatalf("%d write-backs started before any flush", n)
	}
	// Writeback starts them anyway (a restore that flushes once at the end).
	v.Writeback(0, 8*BlockSize)
	if n := d.started.Load(); n != 1 {
		t.Fatalf("Writeback of 8 blocks of one extent started %d write-backs, want 1", n)
	}
	v.Writeback(ExtentSize, BlockSize) // an extent never written: nothing
	v.Writeback(4<<20, BlockSize)      // past the end: nothing, no panic
	if n := d.started.Load(); n != 1 {
		t.Fatalf("Writeback of unmapped or out-of-range blocks started %d write-backs", n-1)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(pattern(9, BlockSize), 0, false); err != nil {
		t.Fatal(err)
	}
	if n := d.started.Load(); n == 1 {
		t.Fatal("a write right after a flush started no write-back")
	}
	// The NBD server's way: the write, its reply, then the write-back.
	before := d.started.Load()
	if err := v.WriteAtDeferWriteback(pattern(10, 2*BlockSize), ExtentSize-BlockSize, false); err != nil {
		t.Fatal(err)
	}
	if n := d.started.Load(); n != before {
		t.Fatalf("WriteAtDeferWriteback started %d write-backs itself", n-before)
	}
	v.StartWriteback(ExtentSize-BlockSize, 2*BlockSize)
	if n := d.started.Load(); n != before+2 {
		t.Fatalf("StartWriteback over two extents started %d write-backs, want 2", n-before)
	}
	v.StartWriteback(4<<20, BlockSize) // past the end: nothing, no panic
	// A burst's ranges, on two extents and out of order, one past the end:
	// one write-back call for the drive, over their span.
	before = d.started.Load()
	v.StartWritebacks([]WritebackRange{{ExtentSize, BlockSize}, {0, BlockSize}, {4 << 20, BlockSize}, {ExtentSize - BlockSize, 2 * BlockSize}})
	if n := d.started.Load(); n != before+1 {
		t.Fatalf("StartWritebacks of a burst on one drive started %d write-backs, want 1", n-before)
	}
	if lo, hi := d.lo.Load(), d.hi.Load(); hi-lo != ExtentSize+BlockSize {
		t.Fatalf("StartWritebacks covered %d bytes, want the span of its ranges, %d", hi-lo, ExtentSize+BlockSize)
	}
	// The flush that follows still makes the write durable.
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	d.Crash(rand.New(rand.NewPCG(1, 2)))
	e.Close()
	e2, err := Open(Options{NodeID: testNode, Drives: []DriveSpec{{Path: "d", Drive: d.Reopen()}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	v2, _ := e2.Volume("v")
	got := make([]byte, BlockSize)
	if err := v2.ReadAt(got, 0); err != nil || string(got) != string(pattern(9, BlockSize)) {
		t.Fatalf("flushed write after a crash: %v", err)
	}
}

// The log area ahead of the writer holds no holes on a file drive, so that
// appending a frame never allocates (a journal commit in the log's sync).
// The engine itself keeps reading what it logged, across a restart.
func TestLogAreaAheadHasNoHoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(1 << 30)
	f.Close()
	opts := Options{NodeID: testNode, LogAreaSize: 8 << 20, Drives: []DriveSpec{{Path: path}}}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")
	for i := range 64 { // each first write to an extent logs its mapping
		if err := v.WriteAt(pattern(i, BlockSize), int64(i)*ExtentSize, false); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	p := e.pools[0]
	p.mu.Lock() // rounds run under the committer; none runs now
	region, pos := p.log.Region(), p.log.Used()
	p.mu.Unlock()
	fd, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	from, to := region.Base+pos, region.Base+min(region.Size, pos+logPrepareLow)
	hole, err := unix.Seek(int(fd.Fd()), from, unix.SEEK_HOLE)
	if err != nil {
		t.Fatal(err)
	}
	if hole < to {
		t.Fatalf("a hole at %d, inside the %d bytes ahead of the log's writer at %d", hole, to-from, from)
	}
	e.Close()
	e2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	v2, _ := e2.Volume("v")
	for i := range 64 {
		got := make([]byte, BlockSize)
		if err := v2.ReadAt(got, int64(i)*ExtentSize); err != nil || !bytes.Equal(got, pattern(i, BlockSize)) {
			t.Fatalf("extent %d after a restart: err %v, data equal %v", i, err, bytes.Equal(got, pattern(i, BlockSize)))
		}
	}
}

// syncCountingDrive counts Syncs.
type syncCountingDrive struct {
	*drive.Mem
	syncs atomic.Int64
}

func (d *syncCountingDrive) Sync() error { d.syncs.Add(1); return d.Mem.Sync() }

// A flush with nothing written since the last round syncs nothing; one
// after a write, trim or write-zeroes does. (No background committer: its
// rounds would sync in between.)
func TestFlushWithNothingNewSyncsNothing(t *testing.T) {
	d := &syncCountingDrive{Mem: drive.NewMem("d", 32<<20)}
	e, err := Open(Options{NodeID: testNode, LogAreaSize: 256 << 10, Drives: []DriveSpec{{Path: "d", Drive: d}}, manualCommit: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")
	for i, change := range []func() error{
		func() error { return v.WriteAt(pattern(1, BlockSize), 0, false) },
		func() error { return v.WriteZeroes(BlockSize, BlockSize, true) },
		func() error { return v.Trim(0, ExtentSize) },
	} {
		if err := v.Flush(); err != nil { // settles whatever came before
			t.Fatal(err)
		}
		before := d.syncs.Load()
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		if n := d.syncs.Load() - before; n != 0 {
			t.Fatalf("change %d: a flush with nothing new synced %d times", i, n)
		}
		if err := change(); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		if d.syncs.Load() == before {
			t.Fatalf("change %d: the flush after it synced nothing", i)
		}
	}
}

// fullFSDrive is a Mem drive whose hole filling fails, as on a full file
// system under a sparse drive file.
type fullFSDrive struct {
	*drive.Mem
	tries atomic.Int64
}

func (d *fullFSDrive) FillHoles(off, n int64) error { d.tries.Add(1); return unix.ENOSPC }

// Filling the log's holes is a speed-up: when it fails, rounds and flushes
// go on and the pool keeps taking writes.
func TestLogPreparationFailureIsNotAPoolFailure(t *testing.T) {
	d := &fullFSDrive{Mem: drive.NewMem("d", 32<<20)}
	e, err := Open(Options{NodeID: testNode, LogAreaSize: 256 << 10, Drives: []DriveSpec{{Path: "d", Drive: d}}, manualCommit: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")
	for i := range 4 {
		if err := v.WriteAt(pattern(i, BlockSize), int64(i)*ExtentSize, false); err != nil {
			t.Fatal(err)
		}
		if err := v.Flush(); err != nil {
			t.Fatalf("flush %d with the log's hole filling failing: %v", i, err)
		}
	}
	if d.tries.Load() == 0 {
		t.Fatal("the log's holes were never filled: the test did not reach the failure")
	}
	if err := e.pools[0].err(); err != nil {
		t.Fatalf("the pool failed: %v", err)
	}
}
