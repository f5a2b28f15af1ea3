package engine

import (
	"errors"
	"syscall"
)

// Errno is the one mapping from an error of a volume's I/O to the errno a
// block client is given: FUSE passes it to the kernel, NBD translates it to
// the error values its protocol allows. nil maps to 0.
//
// A full filesystem under a file drive is ENOSPC, like a full pool, so that
// it can be told apart from a failing disk; everything that is neither the
// caller's mistake nor a full pool (ErrIO, ErrCorrupt, a failed pool,
// anything unexpected) is EIO.
func Errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrNoSpace), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return syscall.ENOSPC
	case errors.Is(err, ErrOutOfRange), errors.Is(err, ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, ErrClosed):
		return syscall.ESHUTDOWN
	}
	return syscall.EIO
}
