package nbd

import (
	"errors"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine/enginetest"
)

// The protocol's error values for each errno engine.Errno gives.
func TestNBDError(t *testing.T) {
	for _, c := range []struct {
		errno syscall.Errno
		want  uint32
	}{
		{syscall.ENOSPC, ErrnoNoSpc},
		{syscall.EIO, ErrnoIO},
		{syscall.EINVAL, ErrnoInval},
		{syscall.EROFS, ErrnoPerm}, // the spec: a write to a read-only export is EPERM
		{syscall.EPERM, ErrnoPerm},
		{syscall.ESHUTDOWN, ErrnoShutdown},
		{syscall.ENOTSUP, ErrnoNotSup},
		{syscall.EOVERFLOW, ErrnoOverflow},
		{syscall.ENOMEM, ErrnoNoMem},
		{syscall.EFBIG, ErrnoIO}, // not in the protocol
	} {
		if got := nbdError(c.errno); got != c.want {
			t.Errorf("nbdError(%v) = %d, want %d", c.errno, got, c.want)
		}
	}
}

// A drive's errors reach the client as what they are: a full host
// filesystem as ENOSPC, a failing disk as EIO.
func TestDriveErrorsReachClient(t *testing.T) {
	env := newEnv(t)
	d := drive.NewMem("mem0", 64<<20)
	v := enginetest.MemVolume(t, d, "v", 4<<20)
	env.exps.mu.Lock()
	env.exps.extra["v"] = v
	env.exps.mu.Unlock()
	c, err := Dial("unix", env.sock, "v")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	block := make([]byte, 4096)
	if err := c.WriteAt(block, 0, true); err != nil { // maps the block, so reads and writes reach the drive
		t.Fatal(err)
	}

	d.Inject(drive.Fault{Ops: drive.FaultRead})
	if err := c.ReadAt(block, 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("read from a failing drive: %v, want EIO", err)
	}
	d.ClearFaults()

	d.Inject(drive.Fault{Ops: drive.FaultWrite, Err: syscall.ENOSPC})
	if err := c.WriteAt(block, 0, false); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write to a full host filesystem: %v, want ENOSPC", err)
	}
}
