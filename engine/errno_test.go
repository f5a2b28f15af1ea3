package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/internal/testenv"
)

func TestErrno(t *testing.T) {
	// A drive error as the pool wraps it: engine.ErrIO around drive.ErrIO
	// around the host's errno.
	fromDrive := func(e syscall.Errno) error {
		return fmt.Errorf("%w: %w", ErrIO, fmt.Errorf("%w: d0: write at 0: %w", drive.ErrIO, e))
	}
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{nil, 0},
		{fmt.Errorf("%w: pool 0", ErrNoSpace), syscall.ENOSPC},
		{fromDrive(syscall.ENOSPC), syscall.ENOSPC},
		{fromDrive(syscall.EDQUOT), syscall.ENOSPC},
		{fmt.Errorf("pool 0 failed: %w", fromDrive(syscall.ENOSPC)), syscall.ENOSPC},
		{fromDrive(syscall.EIO), syscall.EIO},
		{fmt.Errorf("%w: fdatasync", ErrIO), syscall.EIO},
		{fmt.Errorf("%w: bad record", ErrCorrupt), syscall.EIO},
		{fmt.Errorf("%w: offset 1", ErrOutOfRange), syscall.EINVAL},
		{fmt.Errorf("%w: misaligned", ErrInvalid), syscall.EINVAL},
		{fmt.Errorf("%w: snapshot", ErrReadOnly), syscall.EROFS},
		{ErrClosed, syscall.ESHUTDOWN},
		{fmt.Errorf("%w: deleted", ErrNotFound), syscall.EIO},
		{fmt.Errorf("something unexpected"), syscall.EIO},
	} {
		if got := Errno(c.err); got != c.want {
			t.Errorf("Errno(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// A full filesystem under a file drive reaches the writer as ENOSPC, not as a
// bare I/O error: the drive's and the engine's wrapping keep the host's errno.
func TestHostENOSPCReachesWriter(t *testing.T) {
	testenv.RequireRoot(t, "to mount a tmpfs")
	dir := t.TempDir()
	if err := syscall.Mount("cairn-test", dir, "tmpfs", 0, "size=8m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "drive0")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 64<<20); err != nil { // sparse: more than the tmpfs holds
		t.Fatal(err)
	}
	e, err := Open(Options{NodeID: testNode, LogAreaSize: 256 << 10, Drives: []DriveSpec{{Path: path}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() }) // before the unmount (cleanups run last first)
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 32 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")
	data := pattern(1, ExtentSize)
	for off := int64(0); off < 32<<20 && err == nil; off += ExtentSize {
		err = v.WriteAt(data, off, true)
	}
	if !errors.Is(err, syscall.ENOSPC) || Errno(err) != syscall.ENOSPC {
		t.Fatalf("writing past a full host filesystem: %v (errno %v), want ENOSPC", err, Errno(err))
	}
}

// A drive's I/O error reaches the writer and reader as EIO.
func TestDriveEIOReachesCaller(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	_, v := memVolume(t, d, 4<<20)
	b := pattern(1, BlockSize)
	if err := v.WriteAt(b, 0, true); err != nil {
		t.Fatal(err)
	}
	d.Inject(drive.Fault{Ops: drive.FaultRead | drive.FaultWrite, Count: 2})
	err := v.ReadAt(b, 0)
	if !errors.Is(err, syscall.EIO) || Errno(err) != syscall.EIO {
		t.Fatalf("read with a failing drive: %v (errno %v), want EIO", err, Errno(err))
	}
	err = v.WriteAt(b, 0, false)
	if !errors.Is(err, syscall.EIO) || Errno(err) != syscall.EIO {
		t.Fatalf("write with a failing drive: %v (errno %v), want EIO", err, Errno(err))
	}
}
