package nbd

import (
	"bufio"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// rawClient speaks the protocol byte by byte, to test what real clients
// never send.
type rawClient struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	size       uint64
	tflags     uint16
}

func dialRaw(t testing.TB, sock string) *rawClient {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server greeting and sends client flags.
func (c *rawClient) greet(cflags uint32) {
	c.t.Helper()
	g := c.read(GreetingLen)
	if be.Uint64(g) != MagicInit || be.Uint64(g[8:]) != MagicOption {
		c.t.Fatalf("bad greeting %x", g)
	}
	if hf := be.Uint16(g[16:]); hf != FlagFixedNewstyle|FlagNoZeroes {
		c.t.Fatalf("handshake flags %#x", hf)
	}
	c.write(be.AppendUint32(nil, cflags))
}

func (c *rawClient) option(opt uint32, data []byte) {
	c.t.Helper()
	c.write(AppendOption(nil, opt, data))
}

// optReply reads one option reply.
func (c *rawClient) optReply(opt uint32) (typ uint32, data []byte) {
	c.t.Helper()
	h := c.read(OptionReplyHeaderLen)
	if be.Uint64(h) != MagicOptionReply || be.Uint32(h[8:]) != opt {
		c.t.Fatalf("bad option reply header %x (option %d)", h, opt)
	}
	n := be.Uint32(h[16:])
	if n > 1<<20 {
		c.t.Fatalf("option reply of %d bytes", n)
	}
	return be.Uint32(h[12:]), c.read(int(n))
}

// connect does a full handshake to name: optionally structured replies and
// base:allocation, then GO.
func connectRaw(t testing.TB, sock, name string, structured bool) *rawClient {
	t.Helper()
	c := dialRaw(t, sock)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)
	if structured {
		c.option(OptStructuredReply, nil)
		if typ, _ := c.optReply(OptStructuredReply); typ != RepAck {
			t.Fatalf("STRUCTURED_REPLY: reply %#x", typ)
		}
		c.structured = true
		c.option(OptSetMetaContext, MetaContextData(name, MetaBaseAllocation))
		typ, data := c.optReply(OptSetMetaContext)
		if typ != RepMetaContext || string(data[4:]) != MetaBaseAllocation {
			t.Fatalf("SET_META_CONTEXT: reply %#x %q", typ, data)
		}
		if typ, _ := c.optReply(OptSetMetaContext); typ != RepAck {
			t.Fatalf("SET_META_CONTEXT: final reply %#x", typ)
		}
	}
	c.option(OptGo, GoData(name))
	for {
		typ, data := c.optReply(OptGo)
		if typ == RepAck {
			break
		}
		if typ != RepInfo {
			t.Fatalf("GO %q: reply %#x %q", name, typ, data)
		}
		if be.Uint16(data) == InfoExport {
			c.size, c.tflags = be.Uint64(data[2:]), be.Uint16(data[10:])
		}
	}
	return c
}

func (c *rawClient) request(typ, flags uint16, handle, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	c.write(append(AppendRequest(nil, typ, flags, handle, off, length), payload...))
}

// reply is one decoded reply (all chunks of a structured one).
type reply struct {
	handle uint64
	errno  uint32
	msg    string
	data   []byte   // READ data, holes filled with zeros
	status []uint32 // BLOCK_STATUS descriptors: length, flags, length, flags...
	chunks []uint16 // structured chunk types in order
}

// readReply reads one reply. For simple READ replies the caller passes the
// expected data length (the protocol gives no other way to know it).
func (c *rawClient) readReply(readLen int) reply {
	c.t.Helper()
	return c.readReplyFor(func(uint64) int { return readLen })
}

// readReplyFor is readReply for replies that may come in any order: readLen
// says how much data a successful simple reply to a handle carries.
func (c *rawClient) readReplyFor(readLen func(handle uint64) int) reply {
	c.t.Helper()
	h := c.read(4)
	switch be.Uint32(h) {
	case MagicSimpleReply:
		rest := c.read(12)
		r := reply{errno: be.Uint32(rest), handle: be.Uint64(rest[4:])}
		if n := readLen(r.handle); r.errno == 0 && n > 0 {
			r.data = c.read(n)
		}
		return r
	case MagicStructuredReply:
	default:
		c.t.Fatalf("bad reply magic %x", h)
	}
	var r reply
	for first := true; ; first = false {
		if !first {
			if m := be.Uint32(c.read(4)); m != MagicStructuredReply {
				c.t.Fatalf("bad chunk magic %#x", m)
			}
		}
		hh := c.read(16)
		flags, typ, handle, n := be.Uint16(hh), be.Uint16(hh[2:]), be.Uint64(hh[4:]), be.Uint32(hh[12:])
		r.handle = handle
		r.chunks = append(r.chunks, typ)
		p := c.read(int(n))
		switch typ {
		case ReplyTypeNone:
		case ReplyTypeOffsetData:
			r.data = append(r.data, p[8:]...)
		case ReplyTypeOffsetHole:
			r.data = append(r.data, make([]byte, be.Uint32(p[8:]))...)
		case ReplyTypeBlockStatus:
			for i := 4; i+8 <= len(p); i += 8 {
				r.status = append(r.status, be.Uint32(p[i:]), be.Uint32(p[i+4:]))
			}
		case ReplyTypeError, ReplyTypeErrorOffset:
			r.errno = be.Uint32(p)
			r.msg = string(p[6 : 6+be.Uint16(p[4:])])
		default:
			c.t.Fatalf("unknown chunk type %d", typ)
		}
		if flags&ReplyFlagDone != 0 {
			return r
		}
	}
}

// expectClosed asserts the server closed the connection.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c.br)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		c.t.Fatalf("want the server to close the connection; got %v", err)
	}
}
