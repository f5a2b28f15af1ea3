package fuse

import (
	"errors"
	"os"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine/enginetest"
)

// A drive's errors reach the caller as what they are: a full host
// filesystem as ENOSPC, a failing disk as EIO.
func TestDriveErrorsReachCaller(t *testing.T) {
	needRoot(t)
	s := mountTest(t)
	d := drive.NewMem("mem0", 64<<20)
	v := enginetest.MemVolume(t, d, "v", 4<<20)
	path, err := s.Add("v", v)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	block := make([]byte, 4096)
	if _, err := f.WriteAt(block, 0); err != nil { // maps the block, so reads and writes reach the drive
		t.Fatal(err)
	}

	d.Inject(drive.Fault{Ops: drive.FaultRead})
	if _, err := f.ReadAt(block, 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("read from a failing drive: %v, want EIO", err)
	}
	d.ClearFaults()

	d.Inject(drive.Fault{Ops: drive.FaultWrite, Err: syscall.ENOSPC})
	if _, err := f.WriteAt(block, 0); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write to a full host filesystem: %v, want ENOSPC", err)
	}
}
