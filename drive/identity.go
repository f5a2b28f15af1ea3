package drive

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Identity names the file or device behind a path, so that two paths to one
// drive (a symlink, a bind mount, /dev/disk/by-id/…) are known to be the same
// drive. Formatting a drive that a pool has open through another path would
// destroy the pool under it.
type Identity struct {
	Device uint64 // st_rdev of a block device, else st_dev of the file
	Inode  uint64 // 0 for a block device: its device number says it all
}

// IdentityOf returns the identity of the file or block device at path.
func IdentityOf(path string) (Identity, error) {
	st, err := os.Stat(path)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrUnusable, err)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return Identity{}, fmt.Errorf("%w: %s: no device and inode numbers", ErrUnusable, path)
	}
	if st.Mode()&os.ModeDevice != 0 {
		return Identity{Device: uint64(sys.Rdev)}, nil
	}
	return Identity{Device: uint64(sys.Dev), Inode: sys.Ino}, nil
}

// Identity returns the identity of the open file or device.
func (d *File) Identity() (Identity, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(d.f.Fd()), &st); err != nil {
		return Identity{}, fmt.Errorf("%w: %s: fstat: %w", ErrIO, d.path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		return Identity{Device: st.Rdev}, nil
	}
	return Identity{Device: st.Dev, Inode: st.Ino}, nil
}
