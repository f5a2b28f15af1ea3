package attach

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/blockdev/nbd"
)

// ErrNoNBD is returned where the kernel has no nbd module.
var ErrNoNBD = errors.New("attach: this kernel has no nbd module (/dev/nbd0 is missing; load it with `modprobe nbd`)")

// HaveNBD reports whether the kernel NBD client is available.
func HaveNBD() bool {
	_, err := os.Stat("/dev/nbd0")
	return err == nil
}

// Kernel NBD ioctls (include/uapi/linux/nbd.h).
const (
	nbdSetSock       = 0xab00
	nbdSetBlksize    = 0xab01
	nbdDoIt          = 0xab03
	nbdClearSock     = 0xab04
	nbdClearQue      = 0xab05
	nbdSetSizeBlocks = 0xab07
	nbdDisconnect    = 0xab08
	nbdSetTimeout    = 0xab09
	nbdSetFlags      = 0xab0a
)

// How the kernel client is set up and waited for.
const (
	nbdBlockSize   = 4096
	nbdIOTimeout   = 30 // seconds before the kernel fails a stuck request
	nbdHandshakeIO = 10 * time.Second
)

// NBDDevice is a /dev/nbdN connected to an export.
type NBDDevice struct {
	Path string
	dev  *os.File
	sock *os.File
	done chan error // DO_IT's result

	once sync.Once
}

// AttachNBD connects the kernel NBD client to export on the NBD server at
// the unix socket path and returns the device. The handshake (fixed
// newstyle, NBD_OPT_GO) is done here; the kernel takes the socket for the
// transmission phase. The device stays connected until Detach.
func AttachNBD(socket, export string) (*NBDDevice, error) {
	if !HaveNBD() {
		return nil, ErrNoNBD
	}
	conn, err := net.DialTimeout("unix", socket, nbdHandshakeIO)
	if err != nil {
		return nil, fmt.Errorf("attach: nbd: %w", err)
	}
	defer conn.Close() // the kernel holds its own reference (via sock)
	// The userspace half: the kernel expects the handshake done before
	// SET_SOCK and takes the socket for the transmission phase.
	conn.SetDeadline(time.Now().Add(nbdHandshakeIO))
	size, tflags, err := nbd.Handshake(conn, export)
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	conn.SetDeadline(time.Time{})
	sock, err := conn.(*net.UnixConn).File() // a blocking dup for the kernel
	if err != nil {
		return nil, fmt.Errorf("attach: nbd: %w", err)
	}
	for i := 0; ; i++ {
		path := fmt.Sprintf("/dev/nbd%d", i)
		if _, err := os.Stat(path); err != nil {
			sock.Close()
			return nil, fmt.Errorf("attach: nbd: every /dev/nbdN is in use (%d devices)", i)
		}
		if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(path), "pid")); err == nil {
			continue // connected
		}
		d, err := connectNBD(path, sock, size, tflags)
		if errors.Is(err, unix.EBUSY) {
			continue // taken meanwhile
		}
		if err != nil {
			sock.Close()
			return nil, err
		}
		return d, nil
	}
}

func connectNBD(path string, sock *os.File, size uint64, tflags uint16) (*NBDDevice, error) {
	dev, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("attach: nbd: %w", err)
	}
	fd := int(dev.Fd())
	for _, c := range []struct {
		req uint
		arg uintptr
	}{
		{nbdSetBlksize, nbdBlockSize},
		{nbdSetSizeBlocks, uintptr(size / nbdBlockSize)},
		{nbdSetTimeout, nbdIOTimeout},
		{nbdSetFlags, uintptr(tflags)},
		{nbdSetSock, sock.Fd()},
	} {
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(c.req), c.arg); e != 0 {
			unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nbdClearSock, 0)
			dev.Close()
			return nil, fmt.Errorf("attach: nbd %s: ioctl %#x: %w", path, c.req, e)
		}
	}
	d := &NBDDevice{Path: path, dev: dev, sock: sock, done: make(chan error, 1)}
	go func() {
		// DO_IT serves the device until it is disconnected.
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nbdDoIt, 0)
		unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nbdClearQue, 0)
		unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nbdClearSock, 0)
		if e != 0 {
			d.done <- e
			return
		}
		d.done <- nil
	}()
	// The device is usable once the kernel records the serving pid.
	pid := filepath.Join("/sys/block", filepath.Base(path), "pid")
	for deadline := time.Now().Add(nbdHandshakeIO); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(pid); err == nil {
			return d, nil
		}
		select {
		case err := <-d.done:
			dev.Close()
			return nil, fmt.Errorf("attach: nbd %s: %w", path, err)
		default:
		}
	}
	d.Detach()
	return nil, fmt.Errorf("attach: nbd %s: not connected after %v", path, nbdHandshakeIO)
}

// Detach disconnects the device (NBD_DISCONNECT: the kernel sends NBD_CMD_DISC
// after the requests in flight) and waits for it to be released.
func (d *NBDDevice) Detach() error {
	var err error
	d.once.Do(func() {
		unix.Syscall(unix.SYS_IOCTL, d.dev.Fd(), nbdDisconnect, 0)
		select {
		case <-d.done:
		case <-time.After(nbdIOTimeout * time.Second):
			err = fmt.Errorf("attach: nbd %s: still connected %ds after disconnect", d.Path, nbdIOTimeout)
		}
		d.sock.Close()
		d.dev.Close()
	})
	return err
}
