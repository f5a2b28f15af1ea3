package fuse

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/internal/testenv"
)

// memVolume is a Volume in memory that counts flushes and trims.
type memVolume struct {
	mu      sync.Mutex
	data    []byte
	flushes atomic.Int64
	trims   atomic.Int64
	fuas    atomic.Int64
	maxReq  atomic.Int64
}

func newMemVolume(size int) *memVolume { return &memVolume{data: make([]byte, size)} }

func (m *memVolume) Size() int64 { return int64(len(m.data)) }

func (m *memVolume) note(n int) {
	for {
		cur := m.maxReq.Load()
		if int64(n) <= cur || m.maxReq.CompareAndSwap(cur, int64(n)) {
			return
		}
	}
}

func (m *memVolume) ReadAt(p []byte, off int64) error {
	m.note(len(p))
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(p, m.data[off:])
	return nil
}

func (m *memVolume) WriteAt(p []byte, off int64, fua bool) error {
	m.note(len(p))
	if fua {
		m.fuas.Add(1)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.data[off:], p)
	return nil
}

func (m *memVolume) Flush() error { m.flushes.Add(1); return nil }

func (m *memVolume) Trim(off, n int64) error {
	m.trims.Add(1)
	return m.WriteZeroes(off, n, false)
}

func (m *memVolume) WriteZeroes(off, n int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

func needRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "FUSE mount, loop devices")
	testenv.RequireFUSE(t)
}

func mountTest(t *testing.T) *Server {
	t.Helper()
	dir := t.TempDir()
	s, err := Mount(dir, Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			exec.Command("umount", "-l", dir).Run()
		}
	})
	return s
}

// TestConnectionNotInherited: the commands the daemon runs must not hold
// its FUSE connection, or one outliving a killed daemon hangs its own I/O
// (and the host's losetup) on a connection nobody serves.
func TestConnectionNotInherited(t *testing.T) {
	needRoot(t)
	mountTest(t)
	out, err := exec.Command("ls", "-l", "/proc/self/fd").CombinedOutput()
	if err != nil {
		t.Fatalf("ls: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "/dev/fuse") {
		t.Errorf("a child process inherits the FUSE connection:\n%s", out)
	}
}

func TestFileIO(t *testing.T) {
	needRoot(t)
	s := mountTest(t)
	vol := newMemVolume(8 << 20)
	path, err := s.Add("vol", vol)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Add("vol", vol); !errors.Is(err, ErrExists) {
		t.Errorf("second Add: %v, want ErrExists", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 8<<20 || fi.Mode().Perm() != 0o600 || !fi.Mode().IsRegular() {
		t.Errorf("stat: size %d mode %v", fi.Size(), fi.Mode())
	}
	if ents, _ := os.ReadDir(s.Dir()); len(ents) != 1 || ents[0].Name() != "vol" {
		t.Errorf("readdir: %v", ents)
	}

	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	pattern := make([]byte, 3<<20)
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range pattern {
		pattern[i] = byte(rng.Uint32())
	}
	if _, err := f.WriteAt(pattern, 4096+17); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(vol.data[4096+17:4096+17+len(pattern)], pattern) {
		t.Error("volume does not hold what was written")
	}
	if vol.maxReq.Load() < 1<<20 {
		t.Errorf("largest request %d bytes, want ≥ 1 MiB", vol.maxReq.Load())
	}
	got := make([]byte, len(pattern))
	if _, err := f.ReadAt(got, 4096+17); err != nil || !bytes.Equal(got, pattern) {
		t.Errorf("read back: %v, equal %v", err, bytes.Equal(got, pattern))
	}
	// The file cannot grow, and reads stop at its end.
	if _, err := f.WriteAt([]byte("x"), 8<<20); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("write past the end: %v, want EFBIG", err)
	}
	if n, _ := f.ReadAt(got[:8192], 8<<20-4096); n != 4096 {
		t.Errorf("read across the end: %d bytes, want 4096", n)
	}
	if err := f.Truncate(1 << 20); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate: %v, want EPERM", err)
	}
	// fsync reaches Flush; punch-hole reaches Trim.
	if err := f.Sync(); err != nil || vol.flushes.Load() == 0 {
		t.Errorf("fsync: %v, flushes %d", err, vol.flushes.Load())
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 1<<20); err != nil {
		t.Fatal(err)
	}
	if vol.trims.Load() != 1 || !bytes.Equal(vol.data[4096:4096+1<<20], make([]byte, 1<<20)) {
		t.Errorf("punch hole: trims %d", vol.trims.Load())
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 4096); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("fallocate (allocate): %v, want EOPNOTSUPP", err)
	}
	// An O_DSYNC handle writes with FUA.
	g, err := os.OpenFile(path, os.O_RDWR|syscall.O_DSYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt(pattern[:4096], 0); err != nil || vol.fuas.Load() == 0 {
		t.Errorf("O_DSYNC write: %v, fua writes %d", err, vol.fuas.Load())
	}
	g.Close()

	// Remove waits for the handle, then the name is gone.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	err = s.Remove(ctx, "vol")
	cancel()
	if !errors.Is(err, ErrBusy) {
		t.Errorf("Remove of an open file: %v, want ErrBusy", err)
	}
	f.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Remove(ctx, "vol"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after Remove: %v", err)
	}
	if err := s.Remove(ctx, "vol"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove: %v", err)
	}
}

// TestLoopDevice runs the real stack: a loop device with direct I/O on the
// file, parallel writes of 1 MiB, discard and flush from the block layer.
func TestLoopDevice(t *testing.T) {
	needRoot(t)
	testenv.RequireTool(t, "losetup")
	s := mountTest(t)
	vol := newMemVolume(64 << 20)
	path, err := s.Add("loopvol", vol)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--direct-io=on", "--find", "--show", path).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v\n%s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		exec.Command("losetup", "-d", dev).Run()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Remove(ctx, "loopvol"); err != nil {
			t.Errorf("remove after losetup -d: %v", err)
		}
	})
	if dio, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop/dio")); strings.TrimSpace(string(dio)) != "1" {
		t.Errorf("loop device %s is not in direct-I/O mode (dio=%q)", dev, dio)
	}
	pattern := make([]byte, 4<<20)
	rng := rand.New(rand.NewPCG(1, 9))
	for i := range pattern {
		pattern[i] = byte(rng.Uint32())
	}
	bd, err := os.OpenFile(dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer bd.Close()
	buf := drive.AlignedBuffer(len(pattern))
	copy(buf, pattern)
	if _, err := bd.WriteAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := bd.Sync(); err != nil || vol.flushes.Load() == 0 {
		t.Errorf("fsync of the loop device: %v, flushes %d", err, vol.flushes.Load())
	}
	if !bytes.Equal(vol.data[1<<20:5<<20], pattern) {
		t.Error("volume does not hold what the loop device wrote")
	}
	// The loop queue allows 128 segments: 512 KiB of scattered pages.
	if vol.maxReq.Load() < 512<<10 {
		t.Errorf("largest request through the loop device: %d bytes, want ≥ 512 KiB", vol.maxReq.Load())
	}
	if out, err := exec.Command("blkdiscard", "-o", "1048576", "-l", "1048576", dev).CombinedOutput(); err != nil {
		t.Fatalf("blkdiscard: %v\n%s", err, out)
	}
	if vol.trims.Load() == 0 || !bytes.Equal(vol.data[1<<20:2<<20], make([]byte, 1<<20)) {
		t.Errorf("discard did not reach Trim (trims %d)", vol.trims.Load())
	}
}

// TestDataPathAllocs: READ and WRITE handlers allocate nothing per request
// (go-fuse's own request handling is outside this count).
func TestDataPathAllocs(t *testing.T) {
	s := &Server{cfg: Config{MaxWrite: DefaultMaxWrite}, byName: map[string]*file{}}
	s.rrs.New = func() any { return &readResult{pool: &s.rrs} }
	vol := newMemVolume(1 << 20)
	f := &file{name: "v", ino: firstIno, gen: 1, vol: vol}
	s.slots[0].Store(f)
	buf := make([]byte, 64<<10)
	rin := &gofuse.ReadIn{InHeader: gofuse.InHeader{NodeId: firstIno}, Offset: 4096, Size: 64 << 10}
	win := &gofuse.WriteIn{InHeader: gofuse.InHeader{NodeId: firstIno}, Offset: 8192, Size: 64 << 10}
	split := [][]byte{buf[:4096], buf[4096:8192]}
	allocs := testing.AllocsPerRun(1000, func() {
		rr, st := s.Read(nil, rin, buf)
		if !st.Ok() {
			t.Fatal(st)
		}
		rr.Done()
		if _, st := s.Write(nil, win, buf); !st.Ok() {
			t.Fatal(st)
		}
		if _, st := s.Writev(nil, win, split); !st.Ok() {
			t.Fatal(st)
		}
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per READ+WRITE+WRITEV, want 0", allocs)
	}
}
