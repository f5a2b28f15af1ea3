package drive

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/internal/testenv"
)

func newFile(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "d.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	return p
}

func TestFileRoundTrip(t *testing.T) {
	for _, direct := range []bool{false, true} {
		p := newFile(t, t.TempDir(), 16<<20)
		d, err := OpenFile(p, direct)
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte("cairn!!!"), 2048) // 16 KiB
		if err := d.WriteAt(data, 8192); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteAt(data[:4096], 4096*100); err != nil { // unaligned buffer start is fine
			t.Fatal(err)
		}
		if err := d.Sync(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(data))
		if err := d.ReadAt(got, 8192); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("direct=%v: read back differs (err %v)", direct, err)
		}
		if err := d.ReadAt(got, 16<<20-4096); !errors.Is(err, ErrRange) {
			t.Fatalf("direct=%v: read past end: %v", direct, err)
		}
		d.Close()
		onDisk, _ := os.ReadFile(p)
		if !bytes.Equal(onDisk[8192:8192+len(data)], data) {
			t.Fatalf("direct=%v: file content differs after close", direct)
		}
	}
}

// A sparse drive file on a filesystem that fills up: the write that cannot
// get a page fails with ErrIO instead of killing the process with SIGBUS.
func TestFileOnFullFilesystem(t *testing.T) {
	testenv.RequireRoot(t, "to mount a small tmpfs")
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		testenv.Unavailable(t, "cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	p := newFile(t, dir, 8<<20)
	d, err := OpenFile(p, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	buf := bytes.Repeat([]byte{0xAB}, 4096)
	var werr error
	for off := int64(0); off < 8<<20 && werr == nil; off += 4096 {
		werr = d.WriteAt(buf, off)
	}
	if !errors.Is(werr, ErrIO) {
		t.Fatalf("filling a 1 MiB filesystem through an 8 MiB drive: %v, want ErrIO", werr)
	}
}

func TestFileZero(t *testing.T) {
	p := newFile(t, t.TempDir(), 4<<20)
	d, err := OpenFile(p, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	data := bytes.Repeat([]byte{0x5A}, 1<<20)
	d.WriteAt(data, 1<<20)
	if err := d.Zero(1<<20+4096, 8192); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1<<20)
	d.ReadAt(got, 1<<20)
	want := append([]byte(nil), data...)
	clear(want[4096 : 4096+8192])
	if !bytes.Equal(got, want) {
		t.Fatal("Zero did not zero exactly its range")
	}
}

// FillHoles writes zeros into holes only: data already there stays, and
// afterwards the range has no hole.
func TestFileFillHoles(t *testing.T) {
	path := newFile(t, t.TempDir(), 16<<20)
	d, err := OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	data := bytes.Repeat([]byte{0xab}, 64<<10)
	if err := d.WriteAt(data, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := d.FillHoles(1<<20, 6<<20); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := d.ReadAt(got, 3<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data inside the filled range: err %v, unchanged %v", err, bytes.Equal(got, data))
	}
	if next, ok := d.NextData(1 << 20); !ok || next != 1<<20 {
		t.Fatalf("first data at or after 1 MiB: %d (%v), want 1 MiB: the hole was not filled", next, ok)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if hole, err := f.Seek(1<<20, 4 /* SEEK_HOLE */); err != nil || hole < 7<<20 {
		t.Fatalf("a hole at %d (err %v) inside the filled range [1 MiB, 7 MiB)", hole, err)
	}
	if next, ok := d.NextData(8 << 20); ok && next < 16<<20 {
		t.Fatalf("data at %d, past the filled range", next)
	}
}

// TestWritebackKickerCombines: ranges that arrive while a write-back call
// runs share the next call; no two calls run at once; no range is lost (it
// is kicked, or still pending for the next caller); and no caller makes
// more than maxWritebackRounds calls for others.
func TestWritebackKickerCombines(t *testing.T) {
	var k writebackKicker
	var mu sync.Mutex
	var spans [][2]int64
	var running atomic.Int32
	kick := func(lo, hi int64) {
		if running.Add(1) != 1 {
			t.Error("two write-back calls at once")
		}
		time.Sleep(200 * time.Microsecond)
		mu.Lock()
		spans = append(spans, [2]int64{lo, hi})
		mu.Unlock()
		running.Add(-1)
	}
	const callers, perCaller = 8, 200
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perCaller {
				off := int64(c*perCaller+i) * 4096
				mu.Lock()
				before := len(spans)
				mu.Unlock()
				k.start(off, off+4096, kick)
				mu.Lock()
				made := len(spans) - before
				mu.Unlock()
				if made > maxWritebackRounds+callers { // its own rounds, plus others' finishing meanwhile
					t.Errorf("one call saw %d write-back calls", made)
				}
			}
		}()
	}
	wg.Wait()
	if k.lo != k.hi { // left by a caller that hit maxWritebackRounds
		spans = append(spans, [2]int64{k.lo, k.hi})
	}
	for r := range int64(callers * perCaller) {
		lo := r * 4096
		covered := false
		for _, s := range spans {
			if s[0] <= lo && lo+4096 <= s[1] {
				covered = true
				break
			}
		}
		if !covered {
			t.Fatalf("range at %d never written back", lo)
		}
	}
	if len(spans) >= callers*perCaller/2 {
		t.Errorf("%d write-back calls for %d ranges: calls are not combined", len(spans), callers*perCaller)
	}
	t.Logf("%d write-back calls for %d ranges", len(spans), callers*perCaller)
}

// TestStartWritebackFile: a cached drive's write-back hint runs on a real
// file and changes nothing that is read; a direct drive ignores it.
func TestStartWritebackFile(t *testing.T) {
	for _, direct := range []bool{false, true} {
		d, err := OpenFile(newFile(t, t.TempDir(), 4<<20), direct)
		if err != nil {
			t.Fatal(err)
		}
		data := bytes.Repeat([]byte{0xa5}, 8192)
		if err := d.WriteAt(data, 1<<20); err != nil {
			t.Fatal(err)
		}
		d.StartWriteback(1<<20, 8192)
		d.StartWriteback(0, 0) // empty: nothing
		got := make([]byte, 8192)
		if err := d.ReadAt(got, 1<<20); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read after write-back: %v, equal %v", err, bytes.Equal(got, data))
		}
		if err := d.Sync(); err != nil {
			t.Fatal(err)
		}
		d.Close()
	}
}
