package crash

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/internal/lazyfs"
)

const (
	smallDrive = 64 << 20   // pool 0: the drive that fails or is damaged
	largeDrive = 1536 << 20 // pool 1: more than 1 GiB larger, so a pool of its own
)

// twoPools starts a daemon with drive a (small) in pool 0 and volume "va" on
// it, then adds drive b (large) online as pool 1 and creates "vb" there. Each
// volume gets a flushed batch of writes; the returned oracles know them.
func twoPools(t *testing.T, a, b string, rng *rand.Rand, seed uint64) (*daemon, *oracle, *oracle) {
	t.Helper()
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "-s", a)
	d.cli("volume", "create", "va", "--size", "16M")
	d.cli("service", "drive", "add", b)
	d.cli("volume", "create", "vb", "--size", "16M")
	oa, ob := newOracle(seed|1, 4096), newOracle(seed|3, 4096)
	for _, w := range []struct {
		name string
		o    *oracle
	}{{"va", oa}, {"vb", ob}} {
		cl := d.dial(w.name)
		if err := w.o.writeBatch(cl, rng, 300); err != nil {
			t.Fatalf("writing %s: %v", w.name, err)
		}
		cl.Close()
	}
	st := d.status()
	if len(st.Pools) != 2 || st.Pools[0].Used == 0 || st.Pools[1].Used == 0 {
		t.Fatalf("want two pools, each holding one volume's data; status: %+v", st)
	}
	if !strings.HasSuffix(st.Pools[0].Drives[0].Path, filepath.Base(a)) {
		t.Fatalf("pool 0 is on %s, want %s", st.Pools[0].Drives[0].Path, a)
	}
	return d, oa, ob
}

// checkVolume runs the oracle's check on a volume and fails on violations.
func checkVolume(t *testing.T, d *daemon, name string, o *oracle) {
	t.Helper()
	cl := d.dial(name)
	defer cl.Close()
	violations, summary := o.check(t, cl)
	t.Logf("%s: %s", name, summary)
	if len(violations) > 0 {
		t.Fatalf("%s: durability contract broken:\n%s", name, strings.Join(violations, "\n"))
	}
	tornWrites(t, o)
}

// TestDriveEIO: the drive of pool 0 starts failing every read, write and
// fsync of its data area (lazyfs). Writers of its volume get errors, the
// pool and the volume show the error state in status and inspect, and pool 1
// keeps serving with nothing acknowledged lost; after the fault clears and
// the daemon restarts, everything flushed before the fault is there.
func TestDriveEIO(t *testing.T) {
	l, mnt := mountLazy(t, func(b string) {
		sparseFile(t, filepath.Join(b, "a.img"), smallDrive)
		sparseFile(t, filepath.Join(b, "b.img"), largeDrive)
	})
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	d, oa, ob := twoPools(t, filepath.Join(mnt, "a.img"), filepath.Join(mnt, "b.img"), rng, seed)

	// Everything past the two superblocks and the metadata log areas.
	l.Inject(lazyfs.Fault{File: "a.img", Off: 17 << 20, Len: smallDrive, Ops: lazyfs.OpRead | lazyfs.OpWrite | lazyfs.OpSync})
	ca := d.dial("va")
	var werr error
	for i := 0; i < 20 && werr == nil; i++ {
		werr = oa.writeBatch(ca, rng, 50)
	}
	if werr == nil {
		t.Fatal("writes and flushes to a volume whose drive returns EIO all succeeded")
	}
	var errno nbd.ReplyError
	if !errors.As(werr, &errno) {
		t.Fatalf("the failing volume's client got %v, want an NBD error reply", werr)
	}
	t.Logf("va's writer got: %v", werr)
	if err := oa.writeBatch(ca, rng, 1); err == nil {
		t.Fatal("the failed pool accepted a write and a flush again")
	}
	ca.Close()

	st := d.status()
	if !strings.HasPrefix(st.Pools[0].Status, "Error") || st.Pools[1].Status != "Online" || st.Status != "degraded" {
		t.Fatalf("status after the fault: node %q, pool 0 %q, pool 1 %q; want degraded, Error…, Online", st.Status, st.Pools[0].Status, st.Pools[1].Status)
	}
	if s := d.inspect("va").State; !strings.HasPrefix(s, "error") {
		t.Fatalf("volume va state %q, want error…", s)
	}
	if s := d.inspect("vb").State; s != "up" {
		t.Fatalf("volume vb state %q, want up", s)
	}
	// Pool 1 serves on: its flushed data is whole, and it takes new writes.
	checkVolume(t, d, "vb", ob)
	cb := d.dial("vb")
	if err := ob.writeBatch(cb, rng, 200); err != nil {
		t.Fatalf("the healthy pool refused writes: %v", err)
	}
	cb.Close()
	checkVolume(t, d, "vb", ob)

	// The fault clears (the drive is replaced by a good copy of itself);
	// after a restart both pools serve, with every flushed write.
	l.ClearFaults()
	d = d.restart()
	checkVolume(t, d, "va", oa)
	checkVolume(t, d, "vb", ob)
	if st := d.status(); st.Pools[0].Status != "Online" {
		t.Fatalf("pool 0 after the fault cleared and a restart: %q", st.Pools[0].Status)
	}
}

// TestDiskFull: a pool filled to its last extent returns ENOSPC to NBD
// writers, keeps serving reads and overwrites of allocated blocks, and takes
// new writes again after a trim gives an extent back.
func TestDiskFull(t *testing.T) {
	dir := t.TempDir()
	// 17 MiB of superblocks and log areas, then exactly 16 extents.
	drv := sparseFile(t, filepath.Join(dir, "small.img"), 33<<20)
	d := startDaemon(t, filepath.Join(dir, "data"), "-s", drv)
	st := d.status()
	if len(st.Pools) != 1 || st.Pools[0].Size != 16<<20 {
		t.Fatalf("want one pool of 16 MiB: %+v", st)
	}
	d.cli("volume", "create", "full", "--size", "64M")
	cl := d.dial("full")
	o := newOracle(0xf1, 64<<20/blockSize)
	write := func(b int) error {
		o.mu.Lock()
		o.issued[b]++
		v := o.issued[b]
		o.mu.Unlock()
		err := cl.WriteAt(o.payload(b, v), int64(b)*blockSize, false)
		if err == nil {
			o.mu.Lock()
			o.acked[b] = v
			o.mu.Unlock()
		}
		return err
	}
	const perExtent = 1 << 20 / blockSize
	// One block in each of the 16 extents the pool has: all fit.
	for e := 0; e < 16; e++ {
		if err := write(e*perExtent + e); err != nil {
			t.Fatalf("write to extent %d of 16: %v; status: %+v", e, err, d.status())
		}
	}
	// The 17th extent does not.
	if err := write(16*perExtent + 5); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write to a 17th extent of a 16-extent pool: %v, want ENOSPC", err)
	}
	// Reads, and overwrites of allocated blocks (and new blocks of allocated
	// extents), still work; flushed data is whole.
	for e := 0; e < 16; e++ {
		if err := write(e*perExtent + e); err != nil {
			t.Fatalf("overwrite in allocated extent %d of a full pool: %v", e, err)
		}
		if err := write(e*perExtent + e + 100); err != nil {
			t.Fatalf("new block in allocated extent %d of a full pool: %v", e, err)
		}
	}
	if err := o.writeBatch(cl, rand.New(rand.NewPCG(1, 1)), 0); err != nil {
		t.Fatalf("flush of a full pool: %v", err)
	}
	if s := d.inspect("full").State; s != "up" {
		t.Fatalf("a full pool's volume is %q, want up", s)
	}
	// Trim extent 3 whole: its space comes back, and the 17th extent fits.
	if err := cl.Trim(3<<20, 1<<20); err != nil {
		t.Fatalf("trim: %v", err)
	}
	if err := cl.Flush(); err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	for b := 3 * perExtent; b < 4*perExtent; b++ {
		o.floor[b], o.acked[b] = 0, 0
	}
	o.mu.Unlock()
	if err := write(16*perExtent + 5); err != nil {
		t.Fatalf("write to a new extent after a trim freed one: %v", err)
	}
	if err := write(3 * perExtent); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write to the trimmed extent once the pool is full again: %v, want ENOSPC", err)
	}
	if err := o.writeBatch(cl, rand.New(rand.NewPCG(1, 1)), 0); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	o.blocks = 17 * perExtent
	checkVolume(t, d, "full", o)
	d = d.restart()
	checkVolume(t, d, "full", o)
}
