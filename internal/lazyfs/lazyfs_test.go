package lazyfs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/internal/testenv"
)

func mountTest(t *testing.T, size int64) (*FS, string, string) {
	t.Helper()
	testenv.RequireFUSE(t)
	testenv.RequireTool(t, "fusermount3")
	backing, mnt := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(backing, "d.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(backing, "d.img"), size); err != nil {
		t.Fatal(err)
	}
	l, err := New(backing)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Mount(mnt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, mnt, filepath.Join(backing, "d.img")
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// cut is the power cut as a test does it: nothing holds the files, unmount,
// drop, mount again.
func cut(t *testing.T, l *FS, mnt string, tear bool) (lost, kept int) {
	t.Helper()
	if err := l.Unmount(); err != nil {
		t.Fatal(err)
	}
	lost, kept, err := l.PowerCut(rand.New(rand.NewPCG(1, 2)), tear)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Mount(mnt); err != nil {
		t.Fatal(err)
	}
	return lost, kept
}

// Writes through write(2) and through a shared mmap are kept in memory until
// fsync/fdatasync; a power cut loses exactly what was not synced.
func TestPowerCutLosesUnsynced(t *testing.T) {
	l, mnt, _ := mountTest(t, 1<<20)
	path := filepath.Join(mnt, "d.img")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(fill('a', 8192), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.WriteAt(fill('b', 4096), 4096) // not synced yet: the fdatasync below covers it
	got := make([]byte, 8192)
	f.ReadAt(got, 0)
	if !bytes.Equal(got, append(fill('a', 4096), fill('b', 4096)...)) {
		t.Fatal("reads do not see the unsynced write")
	}
	f.Close()
	// The mmap side runs in another process: a page fault on a FUSE file in
	// the process serving it can deadlock against the Go runtime.
	cmd := exec.Command(os.Args[0], "-test.run=^TestMmapHelper$")
	cmd.Env = append(os.Environ(), "LAZYFS_MMAP="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mmap helper: %v\n%s", err, out)
	}
	if st := l.Stats("d.img"); st.Syncs < 2 {
		t.Fatalf("fsync and fdatasync did not both arrive: %+v", st)
	}
	cut(t, l, mnt, false)
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	copy(want, fill('a', 4096))
	copy(want[4096:], fill('b', 4096))
	copy(want[65536:], fill('m', 4096))
	if !bytes.Equal(after, want) {
		for i := range after {
			if after[i] != want[i] {
				t.Fatalf("after the cut: byte %d is %q, want %q", i, after[i], want[i])
			}
		}
	}
}

// TestMmapHelper is the child process of TestPowerCutLosesUnsynced: it writes
// a page through a shared mapping, fdatasyncs, writes another, and exits.
func TestMmapHelper(t *testing.T) {
	path := os.Getenv("LAZYFS_MMAP")
	if path == "" {
		t.Skip("helper process only")
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	copy(m[65536:], fill('m', 4096)) // synced below
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	copy(m[131072:], fill('n', 4096)) // never synced
	unix.Munmap(m)
	f.Close()
}

// A torn cut keeps a random subset of the unsynced pages, each whole.
func TestPowerCutTears(t *testing.T) {
	l, mnt, _ := mountTest(t, 1<<20)
	path := filepath.Join(mnt, "d.img")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(fill('x', 64*4096), 0)
	f.Close()
	lost, kept := cut(t, l, mnt, true)
	if lost == 0 || kept == 0 || lost+kept != 64 {
		t.Fatalf("tearing 64 pages lost %d and kept %d", lost, kept)
	}
	after, _ := os.ReadFile(path)
	n := 0
	for pg := 0; pg < 64; pg++ {
		p := after[pg*4096 : (pg+1)*4096]
		switch {
		case bytes.Equal(p, fill('x', 4096)):
			n++
		case bytes.Equal(p, make([]byte, 4096)):
		default:
			t.Fatalf("page %d is neither old nor new", pg)
		}
	}
	if n != kept {
		t.Fatalf("%d pages survived, PowerCut said %d", n, kept)
	}
}

// Faults: EIO on reads, writes and fsync of chosen ranges.
func TestFaults(t *testing.T) {
	l, mnt, _ := mountTest(t, 1<<20)
	f, err := os.OpenFile(filepath.Join(mnt, "d.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l.Inject(Fault{File: "d.img", Off: 8192, Len: 4096, Ops: OpRead | OpWrite})
	if _, err := f.WriteAt(fill(1, 4096), 8192); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write into the faulty range: %v", err)
	}
	if _, err := f.WriteAt(fill(1, 4096), 0); err != nil {
		t.Fatalf("write outside it: %v", err)
	}
	// Bypass the page cache for the read.
	fd, err := unix.Open(filepath.Join(mnt, "d.img"), unix.O_RDONLY|unix.O_DIRECT, 0)
	if err == nil {
		buf := make([]byte, 4096)
		if _, err := unix.Pread(fd, buf, 8192); !errors.Is(err, syscall.EIO) {
			t.Errorf("direct read of the faulty range: %v", err)
		}
		unix.Close(fd)
	}
	l.Inject(Fault{File: "d.img", Ops: OpSync})
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("fsync with a sync fault: %v", err)
	}
	l.ClearFaults()
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync after clearing faults: %v", err)
	}
}

// A punched hole is an unsynced write of zeros: reads see zeros at once, a
// power cut before the sync loses it, and a sync makes the backing file read
// zeros there (whole pages become a hole in it; a partial page is written).
func TestPunchHole(t *testing.T) {
	l, mnt, backing := mountTest(t, 1<<20)
	path := filepath.Join(mnt, "d.img")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteAt(fill('a', 1<<20), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	const off, n = 4096 + 100, 3*4096 + 200 // a partial page, two whole ones, a partial one
	punch := func() {
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
			t.Fatal(err)
		}
	}
	want := fill('a', 1<<20)
	clear(want[off : off+n])
	punch()
	got := make([]byte, 1<<20)
	f.ReadAt(got, 0)
	if !bytes.Equal(got, want) {
		t.Fatal("reads do not see the punched hole")
	}
	f.Close()
	cut(t, l, mnt, false)
	if after, _ := os.ReadFile(backing); !bytes.Equal(after, fill('a', 1<<20)) {
		t.Fatal("an unsynced punch survived the power cut")
	}
	if f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
		t.Fatal(err)
	}
	punch()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(backing); !bytes.Equal(after, want) {
		t.Fatal("the synced punch is not in the backing file")
	}
	cut(t, l, mnt, false)
	if after, _ := os.ReadFile(backing); !bytes.Equal(after, want) {
		t.Fatal("the synced punch did not survive the power cut")
	}
}
