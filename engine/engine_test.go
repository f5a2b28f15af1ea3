package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/drive"
)

const testNode = "node-test"

func memEngine(t *testing.T, drives ...*drive.Mem) *Engine {
	t.Helper()
	e, err := Open(memOptions(drives...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func memOptions(drives ...*drive.Mem) Options {
	o := Options{NodeID: testNode, LogAreaSize: 256 << 10}
	for _, d := range drives {
		o.Drives = append(o.Drives, DriveSpec{Path: d.Path(), Drive: d.Reopen()})
	}
	return o
}

// memVolume opens an engine on d and creates the volume "v" of size bytes.
func memVolume(t *testing.T, d *drive.Mem, size int64) (*Engine, *Volume) {
	t.Helper()
	e := memEngine(t, d)
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: size}); err != nil {
		t.Fatal(err)
	}
	v, err := e.Volume("v")
	if err != nil {
		t.Fatal(err)
	}
	return e, v
}

func pattern(seed, n int) []byte {
	r := rand.New(rand.NewPCG(uint64(seed), 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestThinVolumeBasics(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e := memEngine(t, d)
	info, err := e.CreateVolume(VolumeSpec{Name: "v1", Size: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if info.Used != 0 || info.Size != 32<<20 || info.IOPriority != PriorityLow {
		t.Fatalf("new volume info %+v", info)
	}
	v, _ := e.Volume("v1")
	got := make([]byte, 8192)
	if err := v.ReadAt(got, 4096); err != nil || !bytes.Equal(got, make([]byte, 8192)) {
		t.Fatalf("never-written read: err %v, nonzero data", err)
	}
	data := pattern(1, 3*ExtentSize/2)
	if err := v.WriteAt(data, ExtentSize/2, false); err != nil {
		t.Fatal(err)
	}
	got = make([]byte, len(data))
	if err := v.ReadAt(got, ExtentSize/2); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: err %v equal %v", err, bytes.Equal(got, data))
	}
	if u := v.Info().Used; u != 2*ExtentSize {
		t.Fatalf("used %d, want 2 extents", u)
	}
	// Unaligned write in the middle of a never-written block.
	small := []byte("hello, cairn")
	if err := v.WriteAt(small, 10*ExtentSize+100, false); err != nil {
		t.Fatal(err)
	}
	blk := make([]byte, BlockSize)
	v.ReadAt(blk, 10*ExtentSize)
	want := make([]byte, BlockSize)
	copy(want[100:], small)
	if !bytes.Equal(blk, want) {
		t.Fatal("unaligned write: block is not zeros + data")
	}
	// Extents are reported per 1 MiB extent: [0,2M) data, then a hole, data
	// at extent 10, a hole to the end.
	ext, _ := v.Extents(0, 32<<20)
	wantExt := []Extent{{0, 2 * ExtentSize, ExtentData}, {2 * ExtentSize, 8 * ExtentSize, ExtentHole},
		{10 * ExtentSize, ExtentSize, ExtentData}, {11 * ExtentSize, 21 * ExtentSize, ExtentHole}}
	if !slices.Equal(ext, wantExt) {
		t.Fatalf("extents %+v, want %+v", ext, wantExt)
	}
	// Trim the whole first extent range back: space comes back after a flush.
	if err := v.Trim(0, 2*ExtentSize); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(got[:4096], ExtentSize); err != nil || !bytes.Equal(got[:4096], make([]byte, 4096)) {
		t.Fatal("trimmed block does not read zeros")
	}
	if u := v.Info().Used; u != ExtentSize {
		t.Fatalf("used after trim %d, want 1 extent", u)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
	// Write zeroes on the data extent: reads zeros, extent given back.
	if err := v.WriteZeroes(10*ExtentSize, ExtentSize, false); err != nil {
		t.Fatal(err)
	}
	if u := v.Info().Used; u != 0 {
		t.Fatalf("used after write-zeroes %d", u)
	}
}

func TestBadInput(t *testing.T) {
	e := memEngine(t, drive.NewMem("mem0", 64<<20))
	v, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	vol, _ := e.Volume(v.Name)
	buf := make([]byte, 4096)
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"read past end", vol.ReadAt(buf, 1<<20-2048), ErrOutOfRange},
		{"write past end", vol.WriteAt(buf, 1<<20, false), ErrOutOfRange},
		{"negative offset", vol.ReadAt(buf, -4096), ErrOutOfRange},
		{"zero-length read", vol.ReadAt(nil, 0), ErrInvalid},
		{"zero-length write", vol.WriteAt(nil, 0, false), ErrInvalid},
		{"trim past end", vol.Trim(0, 2<<20), ErrOutOfRange},
		{"zero-length trim", vol.Trim(0, 0), ErrInvalid},
		{"extents past end", func() error { _, err := vol.Extents(0, 2<<20); return err }(), ErrOutOfRange},
		{"unaligned size", func() error { _, err := e.CreateVolume(VolumeSpec{Name: "x", Size: 1000}); return err }(), ErrInvalid},
		{"zero size", func() error { _, err := e.CreateVolume(VolumeSpec{Name: "x", Size: 0}); return err }(), ErrInvalid},
		{"bad name", func() error { _, err := e.CreateVolume(VolumeSpec{Name: "a/b", Size: 4096}); return err }(), ErrInvalid},
		{"duplicate", func() error { _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 4096}); return err }(), ErrExists},
		{"repl 4", func() error { _, err := e.CreateVolume(VolumeSpec{Name: "x", Size: 4096, Repl: 4}); return err }(), ErrInvalid},
		{"bad priority", func() error {
			_, err := e.CreateVolume(VolumeSpec{Name: "x", Size: 4096, IOPriority: "urgent"})
			return err
		}(), ErrInvalid},
		{"shrink", vol.Resize(4096), ErrShrink},
		{"unknown volume", func() error { _, err := e.Volume("nope"); return err }(), ErrNotFound},
		{"delete unknown", e.DeleteVolume("nope"), ErrNotFound},
	}
	for _, c := range cases {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, c.err, c.want)
		}
	}
	sticky := true
	if _, err := e.UpdateVolume("v", VolumeUpdate{Sticky: &sticky}); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteVolume("v"); !errors.Is(err, ErrSticky) {
		t.Fatalf("delete sticky: %v", err)
	}
	sticky = false
	e.UpdateVolume("v", VolumeUpdate{Sticky: &sticky})
	_, hold, err := e.HoldVolume("v", Holder{Kind: HeldAttached, Device: "/dev/loop7"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteVolume("v"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "attached as /dev/loop7") {
		t.Fatalf("delete held: %v", err)
	}
	hold.Release()
	if err := e.DeleteVolume("v"); err != nil {
		t.Fatal(err)
	}
	if err := vol.WriteAt(buf, 0, false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("write to deleted volume: %v", err)
	}
}

func TestPoolFullENOSPC(t *testing.T) {
	d := drive.NewMem("mem0", 24<<20) // 1 MiB of metadata, 23 extents
	e := memEngine(t, d)
	if _, err := e.CreateVolume(VolumeSpec{Name: "big", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("big")
	data := pattern(3, ExtentSize)
	var written int64
	var err error
	for off := int64(0); off < 64<<20; off += ExtentSize {
		if err = v.WriteAt(data, off, false); err != nil {
			break
		}
		written = off + ExtentSize
	}
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("filling the pool: %v", err)
	}
	got := make([]byte, ExtentSize)
	for off := int64(0); off < written; off += ExtentSize {
		if err := v.ReadAt(got, off); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("data at %d harmed by ENOSPC (err %v)", off, err)
		}
	}
	// Overwrites of allocated space still work; after a trim, new writes do.
	if err := v.WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Trim(0, ExtentSize); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(data, written, false); err != nil {
		t.Fatalf("write after trim: %v", err)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestRestartFileDrive(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "drive0.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 256<<20); err != nil {
		t.Fatal(err)
	}
	opts := Options{NodeID: testNode, Drives: []DriveSpec{{Path: path}}}
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int64{"a": 16 << 20, "b": 100 << 20}
	for name, size := range sizes {
		if _, err := e.CreateVolume(VolumeSpec{Name: name, Size: size}); err != nil {
			t.Fatal(err)
		}
	}
	va, _ := e.Volume("a")
	vb, _ := e.Volume("b")
	da, db := pattern(10, 5<<20), pattern(11, 3<<20+4096)
	va.WriteAt(da, 4096, false)
	vb.WriteAt(db, 50<<20, true)
	grow := int64(200 << 20)
	if _, err := e.UpdateVolume("b", VolumeUpdate{Size: &grow}); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	vols := e.Volumes()
	if len(vols) != 2 || vols[0].Name != "a" || vols[0].Size != 16<<20 || vols[1].Size != grow {
		t.Fatalf("volumes after restart: %+v", vols)
	}
	va, _ = e.Volume("a")
	vb, _ = e.Volume("b")
	got := make([]byte, len(da))
	if va.ReadAt(got, 4096); !bytes.Equal(got, da) {
		t.Fatal("volume a data lost")
	}
	got = make([]byte, len(db))
	if vb.ReadAt(got, 50<<20); !bytes.Equal(got, db) {
		t.Fatal("volume b data lost")
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}

// Drives that are not ours, too small, or damaged are refused with an error
// naming them, and nothing is written to them.
func TestDriveRefused(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, size int64, head []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, head, 0o600)
		os.Truncate(p, size)
		return p
	}
	small := mk("small.img", 8<<20, nil)
	foreign := mk("ext4.img", 64<<20, append(make([]byte, 1024), 0x53, 0xEF)) // an ext4-like magic
	good := mk("good.img", 64<<20, nil)
	e, err := Open(Options{NodeID: "node-a", Drives: []DriveSpec{{Path: good}}})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	damaged := mk("damaged.img", 64<<20, nil)
	b, _ := os.ReadFile(good)
	b[200] ^= 1      // copy 0
	b[4096+200] ^= 1 // copy 1
	os.WriteFile(damaged, b, 0o600)
	for _, c := range []struct {
		path, node, want string
	}{
		{small, testNode, "too small"},
		{foreign, testNode, "not cairn's"},
		{good, "node-b", `belongs to node "node-a"`},
		{damaged, "node-a", "damaged superblock"},
		{filepath.Join(dir, "missing.img"), testNode, "no such file"},
	} {
		before, _ := os.ReadFile(c.path)
		_, err := Open(Options{NodeID: c.node, Drives: []DriveSpec{{Path: c.path}}})
		if err == nil || !errors.Is(err, ErrDriveRefused) || !bytes.Contains([]byte(err.Error()), []byte(c.want)) || !bytes.Contains([]byte(err.Error()), []byte(filepath.Base(c.path))) {
			t.Errorf("%s: err %v, want ErrDriveRefused naming the file and %q", c.path, err, c.want)
		}
		after, _ := os.ReadFile(c.path)
		if !bytes.Equal(before, after) {
			t.Errorf("%s: refused drive was modified", c.path)
		}
	}
}

// A pool whose log is corrupt in the middle, or whose superblock is damaged,
// is reported failed (naming drive and offset) and left untouched, while the
// node's other pool keeps serving.
func TestDamagedPoolDegrades(t *testing.T) {
	for _, damage := range []string{"log", "superblock"} {
		low := drive.NewMem("low.img", 32<<20)
		ssd := drive.NewMem("ssd.img", 32<<20)
		ssd.SetKind(drive.KindSSD)
		e, err := Open(memOptions(low, ssd))
		if err != nil {
			t.Fatal(err)
		}
		if len(e.pools) != 2 {
			t.Fatalf("%d pools, want 2 (low and medium)", len(e.pools))
		}
		for _, spec := range []VolumeSpec{{Name: "onlow", Size: 8 << 20, IOPriority: PriorityLow}, {Name: "onssd", Size: 8 << 20, IOPriority: PriorityMedium}} {
			if _, err := e.CreateVolume(spec); err != nil {
				t.Fatal(err)
			}
			v, _ := e.Volume(spec.Name)
			for i := int64(0); i < 6; i++ { // several commits: several frames
				v.WriteAt(pattern(int(i), BlockSize), i*ExtentSize, true)
			}
		}
		lowPool := e.pools[0]
		region := logRegion(lowPool.sb0.activeArea, lowPool.sb0.logSize)
		e.Close()
		var at int64
		switch damage {
		case "log":
			at = region.Base + 2*4096 + 60 // inside the third frame's payload
		case "superblock":
			at = 200
			low.Poke(superblockSize+200, []byte{0xFF})
		}
		b := low.Bytes()
		low.Poke(at, []byte{b[at] ^ 0xFF})
		before := low.Bytes()
		e, err = Open(memOptions(low, ssd))
		if err != nil {
			t.Fatalf("%s damage: Open failed although the other pool is fine: %v", damage, err)
		}
		st := e.Status()
		var failed string
		for _, p := range st.Pools {
			if p.Status != "Online" {
				failed = p.Status
			}
		}
		for _, r := range st.RefusedDrives {
			failed += r.Status
		}
		if !bytes.Contains([]byte(failed), []byte("low.img")) {
			t.Fatalf("%s damage: status does not name the drive: %q", damage, failed)
		}
		if damage == "log" && !bytes.Contains([]byte(failed), []byte(fmt.Sprintf("offset %d", region.Base+2*4096))) {
			t.Fatalf("log damage: status does not name the offset %d: %q", region.Base+2*4096, failed)
		}
		if _, err := e.Volume("onlow"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s damage: volume of the failed pool is served", damage)
		}
		v, err := e.Volume("onssd")
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, BlockSize)
		if err := v.ReadAt(got, 5*ExtentSize); err != nil || !bytes.Equal(got, pattern(5, BlockSize)) {
			t.Fatalf("%s damage: healthy pool's data: err %v", damage, err)
		}
		if err := v.WriteAt(got, 0, true); err != nil {
			t.Fatalf("%s damage: healthy pool refuses writes: %v", damage, err)
		}
		e.Close()
		if !bytes.Equal(before, low.Bytes()) {
			t.Fatalf("%s damage: the failed pool's drive was modified", damage)
		}
	}
}

// Drives of one io_priority and size form one pool, striped; a drive added
// online joins it; another priority forms its own pool; a volume asking for a
// priority no pool has falls back (high → medium → low) and says where it landed.
func TestPoolsAndPriorityFallback(t *testing.T) {
	a, b := drive.NewMem("a", 32<<20), drive.NewMem("b", 32<<20)
	e := memEngine(t, a, b)
	st := e.Status()
	if len(st.Pools) != 1 || len(st.Pools[0].Drives) != 2 || st.Pools[0].IOPriority != PriorityLow {
		t.Fatalf("two equal file drives: %+v", st.Pools)
	}
	info, err := e.CreateVolume(VolumeSpec{Name: "fast", Size: 16 << 20, IOPriority: PriorityHigh})
	if err != nil {
		t.Fatal(err)
	}
	if info.IOPriority != PriorityLow || info.RequestedIOPriority != PriorityHigh {
		t.Fatalf("fallback: landed %s, asked %s", info.IOPriority, info.RequestedIOPriority)
	}
	v, _ := e.Volume("fast")
	if err := v.WriteAt(pattern(1, 8<<20), 0, true); err != nil {
		t.Fatal(err)
	}
	st = e.Status()
	if st.Pools[0].Drives[0].Used == 0 || st.Pools[0].Drives[1].Used == 0 {
		t.Fatalf("8 extents not striped across both drives: %+v", st.Pools[0].Drives)
	}
	// Online: an equal drive joins the pool, an SSD makes a medium pool.
	c := drive.NewMem("c", 32<<20)
	if err := e.AddDrive(DriveSpec{Path: "c", Drive: c}); err != nil {
		t.Fatal(err)
	}
	ssd := drive.NewMem("ssd", 32<<20)
	ssd.SetKind(drive.KindSSD)
	if err := e.AddDrive(DriveSpec{Path: "ssd", Drive: ssd}); err != nil {
		t.Fatal(err)
	}
	st = e.Status()
	if len(st.Pools) != 2 || len(st.Pools[0].Drives) != 3 || st.Pools[1].IOPriority != PriorityMedium {
		t.Fatalf("after adding drives: %+v", st.Pools)
	}
	if info, _ := e.CreateVolume(VolumeSpec{Name: "fast2", Size: 4 << 20, IOPriority: PriorityHigh}); info.IOPriority != PriorityMedium {
		t.Fatalf("high falls back to medium first, landed on %s", info.IOPriority)
	}
	if err := e.AddDrive(DriveSpec{Path: "c", Drive: c}); !errors.Is(err, ErrDriveRefused) {
		t.Fatalf("adding a drive twice: %v", err)
	}
	// Everything is still there after a restart with all four drives.
	e.Close()
	e2, err := Open(memOptions(a, b, c, ssd))
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	v, _ = e2.Volume("fast")
	got := make([]byte, 8<<20)
	if err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, pattern(1, 8<<20)) {
		t.Fatalf("striped data after restart: %v", err)
	}
	if st := e2.Status(); len(st.Pools) != 2 || len(st.Pools[0].Drives) != 3 {
		t.Fatalf("pools after restart: %+v", st.Pools)
	}
}

// Many writers mapping new extents at once must never see ENOSPC while the
// pool has free extents (they race for each reserved batch).
func TestConcurrentFirstWritesNoFalseENOSPC(t *testing.T) {
	e := memEngine(t, drive.NewMem("mem0", 160<<20))
	e.CreateVolume(VolumeSpec{Name: "v", Size: 128 << 20})
	v, _ := e.Volume("v")
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := pattern(g, BlockSize)
			for x := int64(g); x < 128; x += 32 {
				if err := v.WriteAt(buf, x*ExtentSize, false); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("first writes on a pool with room: %v", err)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}

// Writes, FUA writes and flushes from many goroutines at once, over mapped
// extents (no records: a flush is a data sync) and fresh ones (a record each,
// logged by the same rounds): after a crash, every block holds the version
// its writer's last successful flush covered, or one written after it —
// never an older one, never anything else.
func TestConcurrentFlushesMakeWritesDurable(t *testing.T) {
	const (
		writers = 8
		blocks  = 2048 // 8 MiB volume; the second half starts unmapped
	)
	for seed := range uint64(6) {
		d := drive.NewMem("mem0", 64<<20)
		e, err := Open(memOptions(d))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: blocks * BlockSize}); err != nil {
			t.Fatal(err)
		}
		v, _ := e.Volume("v")
		buf := make([]byte, BlockSize)
		for blk := int64(0); blk < blocks/2; blk++ { // map the first half
			blockContent(buf, 1, blk, 1)
			if err := v.WriteAt(buf, blk*BlockSize, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := v.Flush(); err != nil {
			t.Fatal(err)
		}
		// Per writer (it owns blocks blk%writers == w): the last version it
		// wrote to each block and the version its last good flush covered.
		latest := make([][]uint32, writers)
		flushed := make([][]uint32, writers)
		var wg sync.WaitGroup
		for w := range writers {
			latest[w], flushed[w] = make([]uint32, blocks), make([]uint32, blocks)
			for blk := 0; blk < blocks/2; blk++ {
				latest[w][blk], flushed[w][blk] = 1, 1
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, uint64(w)))
				b := make([]byte, BlockSize)
				for i := range 300 {
					blk := int64(rng.IntN(blocks/writers)*writers + w)
					ver := latest[w][blk] + 1
					blockContent(b, 1, blk, ver)
					if err := v.WriteAt(b, blk*BlockSize, i%17 == 0); err != nil {
						t.Error(err)
						return
					}
					latest[w][blk] = ver
					if i%17 == 0 || rng.IntN(4) == 0 { // FUA, or a flush
						if err := v.Flush(); err != nil {
							t.Error(err)
							return
						}
						copy(flushed[w], latest[w])
					}
				}
			}()
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		abandon(e)
		d.Crash(rand.New(rand.NewPCG(seed, 99)))
		e, err = Open(memOptions(d))
		if err != nil {
			t.Fatalf("seed %d: reopen: %v", seed, err)
		}
		v, _ = e.Volume("v")
		for blk := int64(0); blk < blocks; blk++ {
			w := blk % writers
			if err := v.ReadAt(buf, blk*BlockSize); err != nil {
				t.Fatal(err)
			}
			var candidates []uint32
			for ver := flushed[w][blk]; ver <= latest[w][blk]; ver++ {
				candidates = append(candidates, ver)
			}
			got := blockVersion(buf, 1, blk, candidates...)
			if got == ^uint32(0) || got < flushed[w][blk] {
				t.Fatalf("seed %d: block %d holds version %d after the crash; flushed %d, latest %d", seed, blk, int32(got), flushed[w][blk], latest[w][blk])
			}
		}
		if err := e.Check(); err != nil {
			t.Fatal(err)
		}
		e.Close()
	}
}

// A data sync that fails makes that flush fail and the pool stop taking
// writes; no later flush succeeds.
func TestFailedDataSyncIsFatal(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	_, v := memVolume(t, d, 4<<20)
	b := pattern(1, BlockSize)
	if err := v.WriteAt(b, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(b, BlockSize, false); err != nil { // an overwrite: no record
		t.Fatal(err)
	}
	d.Inject(drive.Fault{Ops: drive.FaultSync, Off: 0, Len: 64 << 20, Count: 1})
	if err := v.Flush(); !errors.Is(err, ErrIO) {
		t.Fatalf("flush with a failing sync: %v, want ErrIO", err)
	}
	for range 3 {
		if err := v.Flush(); err == nil {
			t.Fatal("a flush succeeded after a failed sync")
		}
	}
	if err := v.WriteAt(b, 0, false); err == nil {
		t.Fatal("a write succeeded on a failed pool")
	}
}

// logGate is a Mem drive whose log writes can be held up, to stop a commit
// round between taking its records and making them durable.
type logGate struct {
	*drive.Mem
	logEnd  int64
	armed   atomic.Bool
	blocked chan struct{} // a log write is waiting
	release chan struct{}
}

func (g *logGate) WriteAt(p []byte, off int64) error {
	if off < g.logEnd && g.armed.CompareAndSwap(true, false) {
		g.blocked <- struct{}{}
		<-g.release
	}
	return g.Mem.WriteAt(p, off)
}

// A flush that arrives while a round is writing records it took must wait
// for them, although nothing is queued any more: its own data sync would not
// make those records durable.
func TestFlushWaitsForRecordsBeingLogged(t *testing.T) {
	mem := drive.NewMem("mem0", 64<<20)
	o := memOptions(mem)
	g := &logGate{Mem: mem, logEnd: 2*superblockSize + 2*o.LogAreaSize, blocked: make(chan struct{}), release: make(chan struct{})}
	o.Drives[0].Drive = g
	e, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	open := func() { once.Do(func() { close(g.release) }) }
	t.Cleanup(func() { open(); e.Close() }) // a failed test must not leave the round stuck
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 4 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")
	if err := v.WriteAt(pattern(1, BlockSize), 0, false); err != nil { // maps extent 0: a record
		t.Fatal(err)
	}
	g.armed.Store(true)
	first := make(chan error, 1)
	go func() { first <- v.Flush() }()
	<-g.blocked // the round has taken the record and is writing it
	second := make(chan error, 1)
	go func() { second <- v.Flush() }()
	select {
	case err := <-second:
		t.Fatalf("a flush returned (%v) while the record of an acknowledged write was not yet in the log", err)
	case <-time.After(200 * time.Millisecond):
	}
	open()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

// A drive's used space agrees with its pool's: neither counts the extents
// reserved for writers (an empty pool showed its drive 64 MiB used).
func TestDriveUsedLeavesOutReserved(t *testing.T) {
	e, v := memVolume(t, drive.NewMem("mem0", 256<<20), 16<<20)
	check := func(when string) {
		t.Helper()
		p := e.Status().Pools[0]
		var drives int64
		for _, d := range p.Drives {
			drives += d.Used
		}
		if drives != p.Allocated {
			t.Fatalf("%s: drives used %d, pool allocated %d", when, drives, p.Allocated)
		}
	}
	check("empty")
	if err := v.WriteAt(pattern(1, 3*ExtentSize), 0, true); err != nil {
		t.Fatal(err)
	}
	if e.pools[0].alloc.Used() <= 3 {
		t.Fatal("no extents reserved: the test checks nothing")
	}
	check("3 extents written")
}
