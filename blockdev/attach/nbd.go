package attach

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
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

// NBD handshake constants (NetworkBlockDevice/nbd doc/proto.md), for the
// userspace half of the handshake the kernel expects done before SET_SOCK.
const (
	nbdOptMagic        = 0x49484156454F5054 // "IHAVEOPT"
	nbdRepMagic        = 0x3e889045565a9
	nbdFlagFixed       = 1 << 0
	nbdFlagNoZeroes    = 1 << 1
	nbdOptGo           = 7
	nbdRepAck          = 1
	nbdRepInfo         = 3
	nbdRepErrBit       = 1 << 31
	nbdInfoExport      = 0
	nbdMaxReplyPayload = 64 << 10

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
	size, tflags, err := nbdHandshake(conn, export)
	if err != nil {
		return nil, err
	}
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

// nbdHandshake does the client side of the fixed newstyle handshake with
// NBD_OPT_GO and returns the export's size and transmission flags.
func nbdHandshake(c net.Conn, export string) (size uint64, tflags uint16, err error) {
	c.SetDeadline(time.Now().Add(nbdHandshakeIO))
	defer c.SetDeadline(time.Time{})
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		return 0, 0, fmt.Errorf("attach: nbd handshake: %w", err)
	}
	if string(hello[:16]) != "NBDMAGICIHAVEOPT" || binary.BigEndian.Uint16(hello[16:])&nbdFlagFixed == 0 {
		return 0, 0, errors.New("attach: nbd handshake: not a fixed-newstyle NBD server")
	}
	req := binary.BigEndian.AppendUint32(nil, nbdFlagFixed|nbdFlagNoZeroes)
	req = binary.BigEndian.AppendUint64(req, nbdOptMagic)
	req = binary.BigEndian.AppendUint32(req, nbdOptGo)
	req = binary.BigEndian.AppendUint32(req, uint32(4+len(export)+2))
	req = binary.BigEndian.AppendUint32(req, uint32(len(export)))
	req = append(req, export...)
	req = binary.BigEndian.AppendUint16(req, 0) // no information requests
	if _, err := c.Write(req); err != nil {
		return 0, 0, fmt.Errorf("attach: nbd handshake: %w", err)
	}
	gotExport := false
	for {
		var h [20]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return 0, 0, fmt.Errorf("attach: nbd handshake: %w", err)
		}
		if binary.BigEndian.Uint64(h[:]) != nbdRepMagic || binary.BigEndian.Uint32(h[8:]) != nbdOptGo {
			return 0, 0, errors.New("attach: nbd handshake: bad option reply")
		}
		typ, n := binary.BigEndian.Uint32(h[12:]), binary.BigEndian.Uint32(h[16:])
		if n > nbdMaxReplyPayload {
			return 0, 0, fmt.Errorf("attach: nbd handshake: reply of %d bytes", n)
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(c, payload); err != nil {
			return 0, 0, fmt.Errorf("attach: nbd handshake: %w", err)
		}
		switch {
		case typ&nbdRepErrBit != 0:
			return 0, 0, fmt.Errorf("attach: nbd: export %q refused: %s", export, payload)
		case typ == nbdRepInfo && n >= 12 && binary.BigEndian.Uint16(payload) == nbdInfoExport:
			size, tflags, gotExport = binary.BigEndian.Uint64(payload[2:]), binary.BigEndian.Uint16(payload[10:]), true
		case typ == nbdRepAck:
			if !gotExport {
				return 0, 0, errors.New("attach: nbd handshake: no NBD_INFO_EXPORT before the ack")
			}
			return size, tflags, nil
		}
	}
}
