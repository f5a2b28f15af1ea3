package nbd

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
)

// The handshake, option by option, as a client that reads every byte sees it.
func TestHandshakeOptions(t *testing.T) {
	env := newEnv(t)
	env.volume("alpha", 16<<20)
	env.volume("beta", 32<<20)

	c := dialRaw(t, env.sock)
	c.greet(ClientFlagFixedNewstyle | ClientFlagNoZeroes)

	// LIST names every export, then ACK.
	c.option(OptList, nil)
	var names []string
	for {
		typ, data := c.optReply(OptList)
		if typ == RepAck {
			break
		}
		if typ != RepServer || int(be.Uint32(data)) != len(data)-4 {
			t.Fatalf("LIST reply %#x %q", typ, data)
		}
		names = append(names, string(data[4:]))
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"alpha", "beta"}) {
		t.Errorf("LIST = %q", names)
	}

	// LIST with data is invalid; the next option is still read.
	c.option(OptList, []byte{1})
	if typ, _ := c.optReply(OptList); typ != RepErrInvalid {
		t.Errorf("LIST with data: %#x, want ERR_INVALID", typ)
	}
	// Unknown options and STARTTLS get ERR_UNSUP.
	for _, opt := range []uint32{OptStartTLS, OptPeekExport, 99, 1 << 30} {
		c.option(opt, []byte("some data"))
		if typ, _ := c.optReply(opt); typ != RepErrUnsup {
			t.Errorf("option %d: %#x, want ERR_UNSUP", opt, typ)
		}
	}
	// Meta contexts need structured replies first.
	c.option(OptSetMetaContext, MetaContextData("alpha", MetaBaseAllocation))
	if typ, _ := c.optReply(OptSetMetaContext); typ != RepErrInvalid {
		t.Errorf("SET_META_CONTEXT before STRUCTURED_REPLY: %#x, want ERR_INVALID", typ)
	}
	c.option(OptStructuredReply, nil)
	if typ, _ := c.optReply(OptStructuredReply); typ != RepAck {
		t.Fatalf("STRUCTURED_REPLY: %#x", typ)
	}
	c.structured = true

	// LIST_META_CONTEXT: no query and "base:" list base:allocation; an
	// unknown namespace lists nothing.
	for _, tc := range []struct {
		queries []string
		want    bool
	}{{nil, true}, {[]string{"base:"}, true}, {[]string{"base:allocation"}, true}, {[]string{"qemu:dirty-bitmap:x"}, false}, {[]string{"base:nope"}, false}} {
		c.option(OptListMetaContext, MetaContextData("alpha", tc.queries...))
		typ, data := c.optReply(OptListMetaContext)
		if tc.want {
			if typ != RepMetaContext || string(data[4:]) != MetaBaseAllocation {
				t.Errorf("LIST_META_CONTEXT %q: %#x %q", tc.queries, typ, data)
				continue
			}
			typ, _ = c.optReply(OptListMetaContext)
		}
		if typ != RepAck {
			t.Errorf("LIST_META_CONTEXT %q: final %#x, want ACK", tc.queries, typ)
		}
	}
	// A query length past the option's end is invalid.
	bad := MetaContextData("alpha", "base:allocation")
	binary.BigEndian.PutUint32(bad[len(bad)-len("base:allocation")-4:], 1000)
	c.option(OptSetMetaContext, bad)
	if typ, _ := c.optReply(OptSetMetaContext); typ != RepErrInvalid {
		t.Errorf("SET_META_CONTEXT with bad query length: %#x", typ)
	}
	// Meta context of an unknown export.
	c.option(OptSetMetaContext, MetaContextData("nope", MetaBaseAllocation))
	if typ, _ := c.optReply(OptSetMetaContext); typ != RepErrUnknown {
		t.Errorf("SET_META_CONTEXT for unknown export: %#x, want ERR_UNKNOWN", typ)
	}

	// INFO reports size, flags, block sizes, name and description.
	c.option(OptInfo, GoData("beta", InfoName, InfoDescription, InfoBlockSize))
	got := map[uint16][]byte{}
	for {
		typ, data := c.optReply(OptInfo)
		if typ == RepAck {
			break
		}
		if typ != RepInfo {
			t.Fatalf("INFO: %#x %q", typ, data)
		}
		got[be.Uint16(data)] = data[2:]
	}
	if e := got[InfoExport]; len(e) != 10 || be.Uint64(e) != 32<<20 {
		t.Errorf("INFO_EXPORT = %x", e)
	} else if f := be.Uint16(e[8:]); f&TFlagReadOnly != 0 || f&TFlagSendDF == 0 || f&TFlagCanMultiConn == 0 {
		t.Errorf("transmission flags %#x", f)
	}
	if bs := got[InfoBlockSize]; len(bs) != 12 || be.Uint32(bs) != 1 || be.Uint32(bs[4:]) != 4096 || be.Uint32(bs[8:]) != 32<<20 {
		t.Errorf("INFO_BLOCK_SIZE = %x", bs)
	}
	if n := string(got[InfoName]); n != "beta" {
		t.Errorf("INFO_NAME = %q", n)
	}
	if d := string(got[InfoDescription]); !strings.Contains(d, "beta") {
		t.Errorf("INFO_DESCRIPTION = %q", d)
	}
	// Malformed INFO: count of requests disagrees with the length.
	d := GoData("beta", InfoName)
	d = d[:len(d)-1]
	c.option(OptInfo, d)
	if typ, _ := c.optReply(OptInfo); typ != RepErrInvalid {
		t.Errorf("INFO with bad request count: %#x", typ)
	}
	// GO to an unknown export fails and negotiation continues.
	c.option(OptGo, GoData("nope"))
	if typ, msg := c.optReply(OptGo); typ != RepErrUnknown {
		t.Errorf("GO unknown: %#x %q, want ERR_UNKNOWN", typ, msg)
	}
	// GO to a real one enters transmission.
	c.option(OptGo, GoData("alpha"))
	for {
		typ, data := c.optReply(OptGo)
		if typ == RepAck {
			break
		}
		if typ != RepInfo {
			t.Fatalf("GO: %#x %q", typ, data)
		}
	}
	c.request(CmdFlush, 0, 7, 0, 0, nil)
	if r := c.readReply(0); r.handle != 7 || r.errno != 0 {
		t.Errorf("FLUSH after GO: %+v", r)
	}
	c.request(CmdDisc, 0, 8, 0, 0, nil)
	c.expectClosed()
}

// NBD_OPT_EXPORT_NAME with and without NO_ZEROES; unknown names close.
func TestExportName(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 8<<20)
	for _, noZeroes := range []bool{true, false} {
		c := dialRaw(t, env.sock)
		cf := ClientFlagFixedNewstyle
		if noZeroes {
			cf |= ClientFlagNoZeroes
		}
		c.greet(cf)
		c.option(OptExportName, []byte("vol"))
		b := c.read(10)
		if be.Uint64(b) != 8<<20 || be.Uint16(b[8:])&TFlagHasFlags == 0 {
			t.Fatalf("EXPORT_NAME reply %x", b)
		}
		if !noZeroes {
			if z := c.read(ZeroPadLen); !bytes.Equal(z, make([]byte, ZeroPadLen)) {
				t.Fatalf("padding not zero")
			}
		}
		c.request(CmdWrite, 0, 1, 4096, 5, []byte("hello"))
		if r := c.readReply(0); r.errno != 0 {
			t.Fatalf("write: %+v", r)
		}
		c.request(CmdRead, 0, 2, 4096, 5, nil)
		if r := c.readReply(5); r.errno != 0 || string(r.data) != "hello" {
			t.Fatalf("read: %+v", r)
		}
	}
	c := dialRaw(t, env.sock)
	c.greet(ClientFlagFixedNewstyle)
	c.option(OptExportName, []byte("missing"))
	c.expectClosed()

	// Unknown client flags close the connection.
	c = dialRaw(t, env.sock)
	c.greet(1 << 5)
	c.expectClosed()
}

type errCase struct {
	name          string
	typ, flags    uint16
	off           uint64
	length        uint32
	payload       []byte
	want          uint32
	simpleReadLen int
}

// The error rules of the spec, for simple and structured replies.
func TestErrorRules(t *testing.T) {
	env := newEnv(t)
	const size = 8 << 20
	env.volume("vol", size)
	ro, _ := env.eng.Volume("vol")
	env.exps.extra["ro"] = readOnlyExport{ro}

	for _, structured := range []bool{false, true} {
		c := connectRaw(t, env.sock, "vol", structured)
		if c.size != size {
			t.Fatalf("size %d", c.size)
		}
		cases := []errCase{
			{"read past end", CmdRead, 0, size - 4096, 8192, nil, ErrnoInval, 0},
			{"read offset past end", CmdRead, 0, 1 << 62, 1, nil, ErrnoInval, 0},
			{"read offset+length overflows", CmdRead, 0, ^uint64(0) - 10, 4096, nil, ErrnoInval, 0},
			{"write past end", CmdWrite, 0, size - 2, 4, []byte("abcd"), ErrnoNoSpc, 0},
			{"trim past end", CmdTrim, 0, size, 1, nil, ErrnoInval, 0},
			{"write zeroes past end", CmdWriteZeroes, 0, size - 1, 2, nil, ErrnoNoSpc, 0},
			{"cache past end", CmdCache, 0, size, 4096, nil, ErrnoInval, 0},
			{"unknown command", 42, 0, 0, 0, nil, ErrnoInval, 0},
			{"unknown flag", CmdFlush, 1 << 9, 0, 0, nil, ErrnoInval, 0},
			{"NO_HOLE on a write", CmdWrite, CmdFlagNoHole, 0, 1, []byte("x"), ErrnoInval, 0},
			{"REQ_ONE on a read", CmdRead, CmdFlagReqOne, 0, 1, nil, ErrnoInval, 0},
			{"oversize read", CmdRead, 0, 0, 64 << 20, nil, ErrnoInval, 0},
			{"4 GiB read", CmdRead, 0, 0, ^uint32(0), nil, ErrnoInval, 0},
			{"fast zero with NO_HOLE", CmdWriteZeroes, CmdFlagFastZero | CmdFlagNoHole, 0, 4096, nil, ErrnoNotSup, 0},
			{"good write", CmdWrite, CmdFlagFUA, 0, 3, []byte("abc"), 0, 0},
			{"good read", CmdRead, 0, 0, 3, nil, 0, 3},
			{"zero-length read", CmdRead, 0, 0, 0, nil, 0, 0},
			{"zero-length write", CmdWrite, 0, 0, 0, nil, 0, 0},
			{"FUA on flush", CmdFlush, CmdFlagFUA, 0, 0, nil, 0, 0},
			{"trim FUA", CmdTrim, CmdFlagFUA, 1 << 20, 1 << 20, nil, 0, 0},
			{"write zeroes", CmdWriteZeroes, CmdFlagNoHole, 1 << 20, 8192, nil, 0, 0},
			{"fast zero", CmdWriteZeroes, CmdFlagFastZero, 1 << 20, 8192, nil, 0, 0},
			{"cache", CmdCache, 0, 0, 1 << 20, nil, 0, 0},
		}
		if structured {
			cases = append(cases,
				errCase{"block status past end", CmdBlockStatus, 0, size - 512, 1024, nil, ErrnoInval, 0},
				errCase{"DF read", CmdRead, CmdFlagDF, 0, 3, nil, 0, 0})
		} else {
			cases = append(cases, errCase{"DF without structured replies", CmdRead, CmdFlagDF, 0, 3, nil, ErrnoInval, 0},
				errCase{"block status without a context", CmdBlockStatus, 0, 0, 4096, nil, ErrnoInval, 0})
		}
		for i, tc := range cases {
			c.request(tc.typ, tc.flags, uint64(1000+i), tc.off, tc.length, tc.payload)
			r := c.readReply(tc.simpleReadLen)
			if r.handle != uint64(1000+i) || r.errno != tc.want {
				t.Errorf("structured=%v %s: handle %d errno %d (%q), want errno %d", structured, tc.name, r.handle, r.errno, r.msg, tc.want)
			}
			if structured && tc.want != 0 && r.msg == "" {
				t.Errorf("%s: structured error without a message", tc.name)
			}
		}

		// An oversize WRITE is refused and its payload skipped: the next
		// request on the same connection is read correctly.
		big := make([]byte, 40<<20)
		c.request(CmdWrite, 0, 77, 0, uint32(len(big)), big)
		if r := c.readReply(0); r.handle != 77 || r.errno != ErrnoInval {
			t.Errorf("oversize write: %+v", r.errno)
		}
		c.request(CmdRead, 0, 78, 0, 3, nil)
		if r := c.readReply(3); r.handle != 78 || r.errno != 0 || string(r.data) != "abc" {
			t.Errorf("read after oversize write: errno %d data %q", r.errno, r.data)
		}
		c.request(CmdDisc, 0, 0, 0, 0, nil)
		c.expectClosed()
	}

	// Read-only export: READ_ONLY flag, writes EPERM, reads fine.
	c := connectRaw(t, env.sock, "ro", true)
	if c.tflags&TFlagReadOnly == 0 || c.tflags&TFlagSendTrim != 0 {
		t.Errorf("read-only export flags %#x", c.tflags)
	}
	for i, typ := range []uint16{CmdWrite, CmdTrim, CmdWriteZeroes} {
		var payload []byte
		if typ == CmdWrite {
			payload = []byte("zz")
		}
		c.request(typ, 0, uint64(i), 0, 2, payload)
		if r := c.readReply(0); r.errno != ErrnoPerm {
			t.Errorf("read-only command %d: errno %d, want EPERM", typ, r.errno)
		}
	}
	c.request(CmdRead, 0, 9, 0, 3, nil)
	if r := c.readReply(0); r.errno != 0 || string(r.data) != "abc" {
		t.Errorf("read on read-only: %d %q", r.errno, r.data)
	}
}

// Structured READs of thin regions come back as OFFSET_HOLE chunks, and
// BLOCK_STATUS describes the same layout. The data is one aligned MiB, so
// the expectations hold whether the engine reports holes per 4 KiB block or
// per 1 MiB extent.
func TestStructuredReadAndBlockStatus(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 8<<20)
	c := connectRaw(t, env.sock, "vol", true)

	const mib = 1 << 20
	payload := bytes.Repeat([]byte{0xa5}, mib)
	c.request(CmdWrite, 0, 1, mib, mib, payload)
	if r := c.readReply(0); r.errno != 0 {
		t.Fatalf("write: %d %s", r.errno, r.msg)
	}
	c.request(CmdRead, 0, 2, 0, 4*mib, nil)
	r := c.readReply(0)
	want := make([]byte, 4*mib)
	copy(want[mib:], payload)
	if r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("read: errno %d, %d bytes, equal=%v", r.errno, len(r.data), bytes.Equal(r.data, want))
	}
	if !slices.Equal(r.chunks, []uint16{ReplyTypeOffsetHole, ReplyTypeOffsetData, ReplyTypeOffsetHole}) {
		t.Errorf("read chunks %v, want hole, data, hole", r.chunks)
	}
	// DF: exactly one data chunk.
	c.request(CmdRead, CmdFlagDF, 3, 0, 4*mib, nil)
	r = c.readReply(0)
	if !bytes.Equal(r.data, want) || !slices.Equal(r.chunks, []uint16{ReplyTypeOffsetData}) {
		t.Errorf("DF read chunks %v", r.chunks)
	}

	c.request(CmdBlockStatus, 0, 4, 0, 4*mib, nil)
	r = c.readReply(0)
	wantStatus := []uint32{mib, StateHole | StateZero, mib, 0, 2 * mib, StateHole | StateZero}
	if r.errno != 0 || !slices.Equal(r.status, wantStatus) {
		t.Errorf("block status %v, want %v", r.status, wantStatus)
	}
	c.request(CmdBlockStatus, CmdFlagReqOne, 5, 100<<10, 100<<10, nil)
	r = c.readReply(0)
	if want := []uint32{100 << 10, StateHole | StateZero}; !slices.Equal(r.status, want) {
		t.Errorf("REQ_ONE block status %v, want %v", r.status, want)
	}
	c.request(CmdBlockStatus, CmdFlagReqOne, 6, mib/2, 2*mib, nil)
	r = c.readReply(0)
	if want := []uint32{mib / 2, StateHole | StateZero}; !slices.Equal(r.status, want) {
		t.Errorf("REQ_ONE block status across a boundary %v, want %v", r.status, want)
	}
}

// Many requests in flight at once on one connection, replies matched by
// handle.
func TestPipelined(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 16<<20)
	c := connectRaw(t, env.sock, "vol", true)
	const n = 300 // more than MaxInFlight: exercises back-pressure
	go func() {
		for i := range n {
			p := bytes.Repeat([]byte{byte(i)}, 4096)
			c.request(CmdWrite, 0, uint64(i), uint64(i)*4096, 4096, p)
		}
	}()
	seen := map[uint64]bool{}
	for range n {
		r := c.readReply(0)
		if r.errno != 0 || seen[r.handle] {
			t.Fatalf("reply %+v (dup=%v)", r.errno, seen[r.handle])
		}
		seen[r.handle] = true
	}
	for i := range n {
		c.request(CmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
	}
	for range n {
		r := c.readReply(0)
		if r.errno != 0 || !bytes.Equal(r.data, bytes.Repeat([]byte{byte(r.handle)}, 4096)) {
			t.Fatalf("read %d: errno %d", r.handle, r.errno)
		}
	}
}
