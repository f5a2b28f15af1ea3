package crash

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// nbdClient is a small pipelined NBD client (fixed newstyle, NBD_OPT_GO,
// simple replies) for the tests: requests from many goroutines go out on one
// connection; a reader goroutine matches replies to them by handle.
type nbdClient struct {
	conn  net.Conn
	size  int64
	flags uint16

	wmu sync.Mutex // serialises request writes
	bw  *bufio.Writer

	mu      sync.Mutex
	pending map[uint64]*nbdCall // REQUIRES mu
	next    uint64              // REQUIRES mu
	dead    error               // REQUIRES mu; set when the connection broke
}

type nbdCall struct {
	buf  []byte // read target
	err  error
	done chan struct{}
}

// errnoError is an NBD error reply.
type errnoError uint32

func (e errnoError) Error() string {
	return fmt.Sprintf("nbd: server error %d (%v)", uint32(e), syscall.Errno(e))
}

// Is lets errors.Is(err, syscall.ENOSPC) work on replies.
func (e errnoError) Is(target error) bool {
	errno, ok := target.(syscall.Errno)
	return ok && uint32(errno) == uint32(e)
}

var errDisconnected = errors.New("nbd: connection lost")

const (
	nbdCmdRead        = 0
	nbdCmdWrite       = 1
	nbdCmdDisc        = 2
	nbdCmdFlush       = 3
	nbdCmdTrim        = 4
	nbdCmdWriteZeroes = 6
	nbdFlagFUA        = 1
)

// dialNBD connects to export name over a unix socket.
func dialNBD(socket, name string) (*nbdClient, error) {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return nil, err
	}
	cl, err := handshake(c, name)
	if err != nil {
		c.Close()
		return nil, err
	}
	go cl.readLoop()
	return cl, nil
}

func handshake(c net.Conn, name string) (*nbdClient, error) {
	be := binary.BigEndian
	c.SetDeadline(time.Now().Add(30 * time.Second))
	defer c.SetDeadline(time.Time{})
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil || string(hello[:16]) != "NBDMAGICIHAVEOPT" {
		return nil, fmt.Errorf("nbd greeting %q: %v", hello[:], err)
	}
	// client flags: FIXED_NEWSTYLE | NO_ZEROES; then NBD_OPT_GO with no info requests.
	msg := be.AppendUint32(nil, 3)
	msg = be.AppendUint64(msg, 0x49484156454f5054)
	msg = be.AppendUint32(msg, 7)
	msg = be.AppendUint32(msg, uint32(4+len(name)+2))
	msg = be.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	msg = be.AppendUint16(msg, 0)
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	cl := &nbdClient{conn: c, bw: bufio.NewWriterSize(c, 1<<20), pending: map[uint64]*nbdCall{}}
	for {
		var h [20]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return nil, err
		}
		typ, n := be.Uint32(h[12:]), be.Uint32(h[16:])
		if n > 1<<20 {
			return nil, fmt.Errorf("option reply of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(c, data); err != nil {
			return nil, err
		}
		switch {
		case typ == 1: // ACK
			if cl.size == 0 {
				return nil, errors.New("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT")
			}
			return cl, nil
		case typ == 3 && n >= 12 && be.Uint16(data) == 0: // INFO_EXPORT
			cl.size, cl.flags = int64(be.Uint64(data[2:])), be.Uint16(data[10:])
		case typ&(1<<31) != 0:
			return nil, fmt.Errorf("export %q refused: option reply %#x %s", name, typ, data)
		}
	}
}

func (cl *nbdClient) readLoop() {
	be := binary.BigEndian
	br := bufio.NewReaderSize(cl.conn, 1<<20)
	var err error
	for {
		var h [16]byte
		if _, err = io.ReadFull(br, h[:]); err != nil {
			break
		}
		if be.Uint32(h[:]) != 0x67446698 {
			err = fmt.Errorf("reply magic %#x", be.Uint32(h[:]))
			break
		}
		handle := be.Uint64(h[8:])
		cl.mu.Lock()
		call := cl.pending[handle]
		delete(cl.pending, handle)
		cl.mu.Unlock()
		if call == nil {
			err = fmt.Errorf("reply for unknown handle %d", handle)
			break
		}
		if e := be.Uint32(h[4:]); e != 0 {
			call.err = errnoError(e)
		} else if call.buf != nil {
			if _, err = io.ReadFull(br, call.buf); err != nil {
				call.err = errDisconnected
				close(call.done)
				break
			}
		}
		close(call.done)
	}
	cl.mu.Lock()
	cl.dead = fmt.Errorf("%w: %v", errDisconnected, err)
	for h, call := range cl.pending {
		call.err = errDisconnected
		close(call.done)
		delete(cl.pending, h)
	}
	cl.mu.Unlock()
	cl.conn.Close()
}

// do sends one request and waits for its reply.
func (cl *nbdClient) do(cmd, flags uint16, off int64, length uint32, payload, buf []byte) error {
	call := &nbdCall{buf: buf, done: make(chan struct{})}
	cl.mu.Lock()
	if cl.dead != nil {
		cl.mu.Unlock()
		return cl.dead
	}
	cl.next++
	handle := cl.next
	cl.pending[handle] = call
	cl.mu.Unlock()

	be := binary.BigEndian
	var h [28]byte
	be.PutUint32(h[0:], 0x25609513)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], cmd)
	be.PutUint64(h[8:], handle)
	be.PutUint64(h[16:], uint64(off))
	be.PutUint32(h[24:], length)
	cl.wmu.Lock()
	cl.bw.Write(h[:])
	cl.bw.Write(payload)
	err := cl.bw.Flush()
	cl.wmu.Unlock()
	if err != nil {
		cl.conn.Close() // the reader fails every pending call
	}
	<-call.done
	return call.err
}

func (cl *nbdClient) ReadAt(p []byte, off int64) error {
	return cl.do(nbdCmdRead, 0, off, uint32(len(p)), nil, p)
}

func (cl *nbdClient) WriteAt(p []byte, off int64, fua bool) error {
	var f uint16
	if fua {
		f = nbdFlagFUA
	}
	return cl.do(nbdCmdWrite, f, off, uint32(len(p)), p, nil)
}

func (cl *nbdClient) Flush() error { return cl.do(nbdCmdFlush, 0, 0, 0, nil, nil) }
func (cl *nbdClient) Trim(off int64, n int64) error {
	return cl.do(nbdCmdTrim, 0, off, uint32(n), nil, nil)
}

// Close sends NBD_CMD_DISC and closes the connection.
func (cl *nbdClient) Close() error {
	be := binary.BigEndian
	var h [28]byte
	be.PutUint32(h[0:], 0x25609513)
	be.PutUint16(h[6:], nbdCmdDisc)
	cl.wmu.Lock()
	cl.bw.Write(h[:])
	cl.bw.Flush()
	cl.wmu.Unlock()
	return cl.conn.Close()
}
