package nbd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// The client side of the wire, for the kernel attach code (which needs only
// the handshake) and for tests: the encoders of what a client sends, the
// fixed newstyle handshake ending in NBD_OPT_GO, and Client, a minimal
// pipelined client with simple replies. Structured replies, block status
// and the rest are the server's to speak; tests that exercise them decode
// the bytes themselves.

// handshakeReplyMax bounds one option reply a client accepts during the
// handshake (the largest legitimate one is an NBD_INFO_NAME or description
// of maxStringLength bytes).
const handshakeReplyMax = 64 << 10

// ErrDisconnected is returned by a Client's calls once its connection is
// gone.
var ErrDisconnected = errors.New("nbd: connection lost")

// ReplyError is an error reply from the server. Its value is an NBD error
// (ErrnoIO, ErrnoNoSpc, ...), which the protocol numbers as Linux does, so
// errors.Is(err, syscall.ENOSPC) works.
type ReplyError uint32

func (e ReplyError) Error() string {
	return fmt.Sprintf("nbd: server error %d (%v)", uint32(e), syscall.Errno(e))
}

// Is reports whether target is the syscall.Errno of the same number.
func (e ReplyError) Is(target error) bool {
	errno, ok := target.(syscall.Errno)
	return ok && uint32(errno) == uint32(e)
}

// AppendOption appends an option request (NBD_OPT_*) with its data to b.
func AppendOption(b []byte, opt uint32, data []byte) []byte {
	b = be.AppendUint64(b, MagicOption)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// GoData is the data of NBD_OPT_GO and NBD_OPT_INFO: the export name and the
// NBD_INFO_* types requested.
func GoData(export string, infos ...uint16) []byte {
	b := be.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

// MetaContextData is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT: the export name and the queries.
func MetaContextData(export string, queries ...string) []byte {
	b := be.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// AppendRequest appends a request header (RequestHeaderLen bytes) to b; a
// WRITE's payload follows it.
func AppendRequest(b []byte, typ, flags uint16, handle, off uint64, length uint32) []byte {
	b = be.AppendUint32(b, MagicRequest)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, handle)
	b = be.AppendUint64(b, off)
	return be.AppendUint32(b, length)
}

// Handshake does the client side of the fixed newstyle handshake on rw:
// client flags FIXED_NEWSTYLE|NO_ZEROES, then NBD_OPT_GO for export. It
// returns the export's size and transmission flags; rw is then in the
// transmission phase, with simple replies. The caller bounds its duration
// (a deadline on the connection).
func Handshake(rw io.ReadWriter, export string) (size uint64, tflags uint16, err error) {
	var hello [GreetingLen]byte
	if _, err := io.ReadFull(rw, hello[:]); err != nil {
		return 0, 0, fmt.Errorf("nbd handshake: %w", err)
	}
	if be.Uint64(hello[:]) != MagicInit || be.Uint64(hello[8:]) != MagicOption || be.Uint16(hello[16:])&FlagFixedNewstyle == 0 {
		return 0, 0, errors.New("nbd handshake: not a fixed-newstyle NBD server")
	}
	req := be.AppendUint32(nil, ClientFlagFixedNewstyle|ClientFlagNoZeroes)
	req = AppendOption(req, OptGo, GoData(export))
	if _, err := rw.Write(req); err != nil {
		return 0, 0, fmt.Errorf("nbd handshake: %w", err)
	}
	gotExport := false
	for {
		var h [OptionReplyHeaderLen]byte
		if _, err := io.ReadFull(rw, h[:]); err != nil {
			return 0, 0, fmt.Errorf("nbd handshake: %w", err)
		}
		if be.Uint64(h[:]) != MagicOptionReply || be.Uint32(h[8:]) != OptGo {
			return 0, 0, errors.New("nbd handshake: bad option reply")
		}
		typ, n := be.Uint32(h[12:]), be.Uint32(h[16:])
		if n > handshakeReplyMax {
			return 0, 0, fmt.Errorf("nbd handshake: option reply of %d bytes", n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(rw, data); err != nil {
			return 0, 0, fmt.Errorf("nbd handshake: %w", err)
		}
		switch {
		case typ&RepFlagError != 0:
			return 0, 0, fmt.Errorf("nbd: export %q refused (option reply %#x): %s", export, typ, data)
		case typ == RepInfo && n >= InfoExportLen && be.Uint16(data) == InfoExport:
			size, tflags, gotExport = be.Uint64(data[2:]), be.Uint16(data[10:]), true
		case typ == RepAck:
			if !gotExport {
				return 0, 0, errors.New("nbd handshake: no NBD_INFO_EXPORT before the ack")
			}
			return size, tflags, nil
		}
	}
}

// Client is a minimal NBD client: Handshake, then READ, WRITE, FLUSH, TRIM
// and DISC with simple replies. It is safe for concurrent use: requests from
// many goroutines are pipelined on the one connection and a reader goroutine
// matches replies to them by handle.
type Client struct {
	nc     net.Conn
	size   int64
	tflags uint16

	wmu sync.Mutex // serialises request writes
	bw  *bufio.Writer

	mu      sync.Mutex
	pending map[uint64]*clientCall // REQUIRES mu
	next    uint64                 // REQUIRES mu; the last handle used
	dead    error                  // REQUIRES mu; set when the connection broke
}

type clientCall struct {
	buf  []byte // READ target
	err  error
	done chan struct{}
}

// clientHandshakeTimeout bounds NewClient's handshake.
const clientHandshakeTimeout = 30 * time.Second

// Dial connects to export on the server at addr (network "unix" or "tcp").
func Dial(network, addr, export string) (*Client, error) {
	nc, err := net.Dial(network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: %w", err)
	}
	c, err := NewClient(nc, export)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// NewClient does the handshake for export on nc and returns a client that
// owns nc (Close closes it).
func NewClient(nc net.Conn, export string) (*Client, error) {
	nc.SetDeadline(time.Now().Add(clientHandshakeTimeout))
	size, tflags, err := Handshake(nc, export)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	c := &Client{nc: nc, size: int64(size), tflags: tflags, bw: bufio.NewWriterSize(nc, 1<<20), pending: map[uint64]*clientCall{}}
	go c.readLoop()
	return c, nil
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.size }

// Flags are the export's transmission flags (TFlag*).
func (c *Client) Flags() uint16 { return c.tflags }

// readLoop matches replies to calls until the connection fails, then fails
// every call still pending.
func (c *Client) readLoop() {
	br := bufio.NewReaderSize(c.nc, 1<<20)
	var err error
	for {
		var h [SimpleReplyLen]byte
		if _, err = io.ReadFull(br, h[:]); err != nil {
			break
		}
		if m := be.Uint32(h[:]); m != MagicSimpleReply {
			err = fmt.Errorf("reply magic %#x", m)
			break
		}
		handle := be.Uint64(h[8:])
		c.mu.Lock()
		call := c.pending[handle]
		delete(c.pending, handle)
		c.mu.Unlock()
		if call == nil {
			err = fmt.Errorf("reply for unknown handle %d", handle)
			break
		}
		if errno := be.Uint32(h[4:]); errno != 0 {
			call.err = ReplyError(errno)
		} else if call.buf != nil {
			if _, err = io.ReadFull(br, call.buf); err != nil {
				call.err = ErrDisconnected
				close(call.done)
				break
			}
		}
		close(call.done)
	}
	c.mu.Lock()
	c.dead = fmt.Errorf("%w: %w", ErrDisconnected, err)
	for h, call := range c.pending {
		call.err = ErrDisconnected
		close(call.done)
		delete(c.pending, h)
	}
	c.mu.Unlock()
	c.nc.Close()
}

// do sends one request and waits for its reply.
func (c *Client) do(typ, flags uint16, off int64, length uint32, payload, buf []byte) error {
	call := &clientCall{buf: buf, done: make(chan struct{})}
	c.mu.Lock()
	if c.dead != nil {
		c.mu.Unlock()
		return c.dead
	}
	c.next++
	handle := c.next
	c.pending[handle] = call
	c.mu.Unlock()

	var h [RequestHeaderLen]byte
	c.wmu.Lock()
	c.bw.Write(AppendRequest(h[:0], typ, flags, handle, uint64(off), length))
	c.bw.Write(payload)
	err := c.bw.Flush()
	c.wmu.Unlock()
	if err != nil {
		c.nc.Close() // the reader fails every pending call
	}
	<-call.done
	return call.err
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(p []byte, off int64) error {
	return c.do(CmdRead, 0, off, uint32(len(p)), nil, p)
}

// WriteAt writes p at off; with fua, p is durable when it returns.
func (c *Client) WriteAt(p []byte, off int64, fua bool) error {
	var f uint16
	if fua {
		f = CmdFlagFUA
	}
	return c.do(CmdWrite, f, off, uint32(len(p)), p, nil)
}

// Flush makes every write acknowledged before it durable.
func (c *Client) Flush() error { return c.do(CmdFlush, 0, 0, 0, nil, nil) }

// Trim gives back [off, off+n).
func (c *Client) Trim(off, n int64) error { return c.do(CmdTrim, 0, off, uint32(n), nil, nil) }

// Close sends NBD_CMD_DISC and closes the connection; calls still waiting
// fail with ErrDisconnected.
func (c *Client) Close() error {
	var h [RequestHeaderLen]byte
	c.wmu.Lock()
	c.bw.Write(AppendRequest(h[:0], CmdDisc, 0, 0, 0, 0))
	c.bw.Flush()
	c.wmu.Unlock()
	return c.nc.Close()
}
