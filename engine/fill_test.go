package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cairn-storage/cairn/drive"
)

// manualEngine opens d with commits and the filler driven by the test.
func manualEngine(t *testing.T, d *drive.Mem, fillCap int) *Engine {
	t.Helper()
	opts := memOptions(d)
	opts.manualCommit = true
	opts.fillCap = fillCap
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func mustVolume(t *testing.T, e *Engine, name string) *Volume {
	t.Helper()
	v, err := e.Volume(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func poolSpace(e *Engine) (used, allocated int64) {
	p := e.Status().Pools[0]
	return p.Used, p.Allocated
}

// A write after a snapshot takes a fresh extent and copies nothing: the pool
// grows by the bytes written; the rest of the extent reads from the
// snapshot's. Filling completes an extent written at least half, or one whose
// snapshot went away; recovery brings a filling extent back as it was.
func TestRedirectOnWriteCopiesNothing(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e := manualEngine(t, d, 0)
	const size = 8 << 20
	if _, err := e.CreateVolume(VolumeSpec{Name: "db", Size: size}); err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, e, "db")
	a := pattern(1, size)
	if err := v.WriteAt(a, 0, true); err != nil {
		t.Fatal(err)
	}
	used0, alloc0 := poolSpace(e)
	if _, err := e.CreateSnapshot("db", "db.s1"); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(a)
	write := func(v *Volume, off int64, seed int, n int) {
		t.Helper()
		b := pattern(seed, n)
		if err := v.WriteAt(b, off, false); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	write(v, ExtentSize+2*BlockSize, 2, BlockSize) // extent 1, one block
	write(v, 2*ExtentSize+5, 3, 100)               // extent 2, part of one block
	p := e.pools[0]
	if n := p.fillCount.Load(); n != 2 {
		t.Fatalf("%d extents filling after writes into 2 shared extents, want 2", n)
	}
	table := p.fills.ram()
	wantFilling(t, e, 2, table+2*fillStateBytes) // a block each: inline
	if used, alloc := poolSpace(e); used-used0 != 2*BlockSize || alloc-alloc0 != 2*ExtentSize {
		t.Fatalf("after 2 blocks written: used +%d, allocated +%d; want +%d and +%d", used-used0, alloc-alloc0, 2*BlockSize, 2*ExtentSize)
	}
	s1 := mustVolume(t, e, "db.s1")
	if !bytes.Equal(readAll(t, v), want) || !bytes.Equal(readAll(t, s1), a) {
		t.Fatal("volume or snapshot reads wrong content while extents fill")
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}

	// Recovery: the filling extents and what they hold come back.
	e.Close()
	e = manualEngine(t, d, 0)
	v, s1, p = mustVolume(t, e, "db"), mustVolume(t, e, "db.s1"), e.pools[0]
	if n := p.fillCount.Load(); n != 2 {
		t.Fatalf("%d extents filling after reopen, want 2", n)
	}
	wantFilling(t, e, 2, table+2*fillStateBytes)
	if !bytes.Equal(readAll(t, v), want) || !bytes.Equal(readAll(t, s1), a) {
		t.Fatal("volume or snapshot reads wrong content after reopen")
	}

	// Half of extent 1 written: the filler completes it; extent 2 (one
	// block) is not worth it while the snapshot holds its base.
	write(v, ExtentSize, 4, ExtentSize/2)
	wantFilling(t, e, 2, table+2*fillStateBytes+denseBytes) // extent 1 past inlineMax
	if err := p.fillPass(true, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := p.fillCount.Load(); n != 1 {
		t.Fatalf("%d extents filling after the filler's pass, want 1 (the sparse one)", n)
	}
	if !bytes.Equal(readAll(t, v), want) || !bytes.Equal(readAll(t, s1), a) {
		t.Fatal("wrong content after the filler completed an extent")
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
	// The snapshot owns what the volume no longer reads from it: extent 1
	// (completed) and extent 2 (its base, held by the snapshot and the fill
	// state only).
	if got := s1.Info().Used; got != 2*ExtentSize {
		t.Fatalf("snapshot exclusive bytes %d, want %d", got, 2*ExtentSize)
	}

	// The snapshot goes: the sparse extent is completed and every base
	// given back.
	if err := e.DeleteVolume("db.s1"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := p.fillPass(true, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := p.commit(); err != nil { // a round, even with nothing new to flush
			t.Fatal(err)
		}
	}
	if n := p.fillCount.Load(); n != 0 {
		t.Fatalf("%d extents filling after the snapshot was deleted, want 0", n)
	}
	wantFilling(t, e, 0, table)
	if used, alloc := poolSpace(e); used != alloc || alloc != alloc0 {
		t.Fatalf("after the snapshot's delete: used %d, allocated %d; want both %d", used, alloc, alloc0)
	}
	if !bytes.Equal(readAll(t, v), want) {
		t.Fatal("wrong content after the snapshot's delete")
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}

// wantFilling checks what Status says of the pool's filling extents.
func wantFilling(t *testing.T, e *Engine, n, ram int64) {
	t.Helper()
	p := e.Status().Pools[0]
	if p.Filling != n || p.FillRAM != ram || p.FillBudget != minFillBudget {
		t.Fatalf("status: %d extents filling, %d B of RAM of %d; want %d, %d B of %d", p.Filling, p.FillRAM, p.FillBudget, n, ram, minFillBudget)
	}
}

// Snapshots of a volume whose extents are filling chain: each level reads
// what it has not filled from the one below. Every snapshot keeps its
// content through completion in any order and through recovery.
func TestRedirectChains(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e := manualEngine(t, d, 0)
	const size = 4 << 20
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: size}); err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, e, "v")
	cur := pattern(1, size)
	if err := v.WriteAt(cur, 0, false); err != nil {
		t.Fatal(err)
	}
	snaps := map[string][]byte{}
	rng := rand.New(rand.NewPCG(5, 5))
	for i := range 6 {
		name := fmt.Sprintf("v.s%d", i)
		if _, err := e.CreateSnapshot("v", name); err != nil {
			t.Fatal(err)
		}
		snaps[name] = bytes.Clone(cur)
		for range 8 {
			off := rng.Int64N(size/BlockSize) * BlockSize
			b := pattern(100*i+rng.IntN(100), BlockSize)
			if err := v.WriteAt(b, off, false); err != nil {
				t.Fatal(err)
			}
			copy(cur[off:], b)
		}
	}
	verify := func(when string) {
		t.Helper()
		if !bytes.Equal(readAll(t, v), cur) {
			t.Fatalf("%s: volume reads wrong content", when)
		}
		for name, want := range snaps {
			if !bytes.Equal(readAll(t, mustVolume(t, e, name)), want) {
				t.Fatalf("%s: snapshot %s reads wrong content", when, name)
			}
		}
		if err := e.Check(); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	p := e.pools[0]
	if p.fillCount.Load() < 8 {
		t.Fatalf("only %d extents filling after 6 snapshots and 48 writes", p.fillCount.Load())
	}
	verify("chains built")
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	e.Close()
	e = manualEngine(t, d, 0)
	v, p = mustVolume(t, e, "v"), e.pools[0]
	verify("after reopen")

	// Complete them in a random order, interrupting some copies.
	for p.fillCount.Load() > 0 {
		var all []*fillState
		p.fills.each(func(fs *fillState) bool { all = append(all, fs); return true })
		fs := all[rng.IntN(len(all))]
		if err := p.completeFill(fs, nil, rng.IntN(20)); err != nil {
			t.Fatal(err)
		}
		if rng.IntN(3) == 0 {
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			verify(fmt.Sprintf("after completing part of extent %d", fs.ext))
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	verify("all complete")
	// Deleting every snapshot gives back all but the volume's extents.
	for name := range snaps {
		if err := e.DeleteVolume(name); err != nil {
			t.Fatal(err)
		}
		delete(snaps, name)
	}
	for range 3 {
		if err := p.fillPass(true, nil, nil); err != nil {
			t.Fatal(err)
		}
		if err := p.commit(); err != nil { // a round, even with nothing new to flush
			t.Fatal(err)
		}
	}
	if _, alloc := poolSpace(e); alloc != size {
		t.Fatalf("allocated %d after every snapshot went, want the volume's %d", alloc, size)
	}
	verify("snapshots deleted")
}

// Writers, readers, snapshots, deletes and the background filler at once:
// no block ever reads another block's or another version's bytes, the
// snapshot keeps its content, and the engine's invariants hold throughout.
func TestRedirectUnderConcurrentIO(t *testing.T) {
	d := drive.NewMem("mem0", 128<<20)
	opts := memOptions(d)
	opts.FillRate = 1 << 30
	opts.fillCap = 4 // completion under pressure, and the whole-copy fallback
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	const size = 16 << 20
	var uid uint64 = 7
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: size}); err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, e, "v")
	base := make([]byte, size)
	for blk := int64(0); blk < size/BlockSize; blk++ {
		blockContent(base[blk*BlockSize:(blk+1)*BlockSize], uid, blk, 1)
	}
	if err := v.WriteAt(base, 0, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSnapshot("v", "v.base"); err != nil {
		t.Fatal(err)
	}
	snap := mustVolume(t, e, "v.base")

	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	var version atomic.Uint32
	version.Store(1)
	run := func(seed uint64, fn func(rng *rand.Rand, buf []byte) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 3))
			buf := make([]byte, 8*BlockSize)
			for !stop.Load() {
				if err := fn(rng, buf); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for w := range 3 {
		run(uint64(w), func(rng *rand.Rand, buf []byte) error {
			n := int64(1 + rng.IntN(8))
			blk := rng.Int64N(size/BlockSize - n)
			ver := version.Add(1)
			for i := int64(0); i < n; i++ {
				blockContent(buf[i*BlockSize:(i+1)*BlockSize], uid, blk+i, ver)
			}
			return v.WriteAt(buf[:n*BlockSize], blk*BlockSize, rng.IntN(16) == 0)
		})
	}
	for r := range 2 {
		run(uint64(10+r), func(rng *rand.Rand, buf []byte) error {
			blk := rng.Int64N(size / BlockSize)
			b := buf[:BlockSize]
			if err := v.ReadAt(b, blk*BlockSize); err != nil {
				return err
			}
			// Every word names block and version (blockContent).
			w0 := binary.LittleEndian.Uint64(b)
			for ver := version.Load(); ver > 0; ver-- {
				if w0 == uid*0x9E3779B97F4A7C15^uint64(blk)<<20^uint64(ver)<<1 {
					if blockVersion(b, uid, blk, ver) != ver {
						return fmt.Errorf("block %d version %d is torn", blk, ver)
					}
					return nil
				}
			}
			return fmt.Errorf("block %d reads bytes of no version of it (all zeros: %v)", blk, bytes.Equal(b, make([]byte, BlockSize)))
		})
	}
	run(20, func(rng *rand.Rand, buf []byte) error {
		blk := rng.Int64N(size / BlockSize)
		b := buf[:BlockSize]
		if err := snap.ReadAt(b, blk*BlockSize); err != nil {
			return err
		}
		if !bytes.Equal(b, base[blk*BlockSize:(blk+1)*BlockSize]) {
			return fmt.Errorf("snapshot block %d changed", blk)
		}
		return nil
	})
	run(30, func(rng *rand.Rand, _ []byte) error {
		// Snapshots come and go under the writers: chains form and bases
		// are released while extents fill.
		name := fmt.Sprintf("v.t%d", rng.Uint32())
		if _, err := e.CreateSnapshot("v", name); err != nil {
			return err
		}
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
		return e.DeleteVolume(name)
	})
	deadline := time.Now().Add(2 * time.Second)
	for i := 0; time.Now().Before(deadline) && len(errs) == 0; i++ {
		if err := e.Check(); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("check %d: %v", i, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, snap), base) {
		t.Fatal("snapshot content changed")
	}
}

// The fill state's size is part of the RAM budget (fillBudget's comment).
func TestFillStateSize(t *testing.T) {
	if n := unsafe.Sizeof(fillState{}); n > 32 {
		t.Fatalf("fillState is %d bytes; fillBudget assumes 32", n)
	}
	if n := unsafe.Sizeof(fillChunk{}) / fillChunkSlots; n > 12 {
		t.Fatalf("fillTable takes %d bytes per extent; fillBudget assumes 12", n)
	}
}

// A writer whose block another writer set a moment before, that other
// writer still between its new bit and its noteFilled, relies on that bit
// being logged by the round its own flush waits for (endSet). Before
// endSet, a power cut right after that flush returned lost the flushed
// write: after recovery the block read the snapshot's data.
func TestRewriteOfABitNotYetNotedIsLogged(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e := manualEngine(t, d, 0)
	if _, err := e.CreateVolume(VolumeSpec{Name: "db", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, e, "db")
	if err := v.WriteAt(pattern(1, ExtentSize), 0, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSnapshot("db", "db.s1"); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(pattern(2, BlockSize), 0, true); err != nil { // extent 0 filling, bit 0 logged
		t.Fatal(err)
	}
	p := e.pools[0]
	inWindow, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hook := func(*fillState) { once.Do(func() { close(inWindow); <-release }) }
	p.afterSetHook.Store(&hook)
	defer p.afterSetHook.Store(nil)
	errA := make(chan error, 1)
	go func() { errA <- v.WriteAt(pattern(3, BlockSize), BlockSize, false) }() // sets bit 1, stops before noteFilled
	<-inWindow
	b := pattern(4, BlockSize)
	if err := v.WriteAt(b, BlockSize, true); err != nil { // block 1 again: no new bit; flushed
		close(release)
		t.Fatal(err)
	}
	img := d.DurableBytes() // a power cut now
	close(release)
	if err := <-errA; err != nil {
		t.Fatal(err)
	}
	d2 := drive.NewMem("mem0", 64<<20)
	d2.Poke(0, img)
	e2 := manualEngine(t, d2, 0)
	if !bytes.Equal(readBlock(t, mustVolume(t, e2, "db"), 1), b) {
		t.Fatal("block 1's flushed write was lost in the power cut")
	}
}
