package nbd

import (
	"bytes"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"
)

// Malformed bytes close that one connection, with one log line, and the
// server keeps serving everyone else.
func TestMalformed(t *testing.T) {
	env := newEnv(t)
	uri := env.volume("vol", 8<<20)

	// A healthy connection that lives through all of it.
	healthy := connectRaw(t, env.sock, "vol", true)
	healthy.request(CmdWrite, 0, 1, 0, 4, []byte("good"))
	if r := healthy.readReply(0); r.errno != 0 {
		t.Fatalf("healthy write: %d", r.errno)
	}

	optHeader := func(magic uint64, opt, length uint32) []byte {
		b := binary.BigEndian.AppendUint64(nil, magic)
		b = binary.BigEndian.AppendUint32(b, opt)
		return binary.BigEndian.AppendUint32(b, length)
	}
	reqHeader := func(magic uint32, typ uint16, length uint32) []byte {
		b := make([]byte, RequestHeaderLen)
		be.PutUint32(b, magic)
		be.PutUint16(b[6:], typ)
		be.PutUint64(b[16:], 0)
		be.PutUint32(b[24:], length)
		return b
	}

	cases := []struct {
		name        string
		transmit    bool   // send after a full handshake (else after the greeting)
		bytes       []byte // then these bytes
		closeWrite  bool   // then half-close, as a client that died mid-message
		wantWarning bool
	}{
		{"garbage client flags", false, []byte{0xde, 0xad, 0xbe, 0xef}, false, true},
		{"garbage option magic", false, append([]byte{0, 0, 0, 1}, bytes.Repeat([]byte{0x42}, 16)...), false, true},
		{"truncated option header", false, append([]byte{0, 0, 0, 1}, optHeader(MagicOption, OptGo, 10)[:9]...), true, true},
		{"4 GiB option length", false, append([]byte{0, 0, 0, 1}, optHeader(MagicOption, OptGo, ^uint32(0))...), false, true},
		{"4 GiB option length, unknown option", false, append([]byte{0, 0, 0, 1}, optHeader(MagicOption, 1234, 0xfffffff0)...), false, true},
		{"truncated option data", false, append(append([]byte{0, 0, 0, 1}, optHeader(MagicOption, OptGo, 100)...), 0, 0, 0, 3), true, true},
		{"garbage request magic", true, bytes.Repeat([]byte{0xff}, RequestHeaderLen), false, true},
		{"truncated request header", true, reqHeader(MagicRequest, CmdRead, 4096)[:17], true, true},
		{"4 GiB write", true, reqHeader(MagicRequest, CmdWrite, ^uint32(0)), false, true},
		{"truncated write payload", true, append(reqHeader(MagicRequest, CmdWrite, 1<<20), make([]byte, 1000)...), true, true},
		{"hang-up during negotiation", false, []byte{0, 0, 0, 1}, true, false},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			before := env.logs.warnings.Load()
			var c *rawClient
			if tc.transmit {
				c = connectRaw(t, env.sock, "vol", true)
			} else {
				c = dialRaw(t, env.sock)
				c.read(18) // greeting
			}
			c.write(tc.bytes)
			if tc.closeWrite {
				c.nc.(*net.UnixConn).CloseWrite()
			}
			c.expectClosed()
			got := env.logs.warnings.Load() - before
			if tc.wantWarning && got != 1 || !tc.wantWarning && got != 0 {
				t.Errorf("%d warnings logged, want %v", got, tc.wantWarning)
			}
			// A fresh real client still works.
			mustRun(t, 30*time.Second, "nbdinfo", "--size", uri)
		})
	}

	healthy.request(CmdRead, 0, 2, 0, 4, nil)
	if r := healthy.readReply(0); r.errno != 0 || string(r.data) != "good" {
		t.Fatalf("healthy connection after the malformed ones: errno %d data %q", r.errno, r.data)
	}
}

// A read of 4 GiB - 1 bytes is refused, not a reason to hang up.
func TestHugeReadIsAnError(t *testing.T) {
	env := newEnv(t)
	env.volume("vol", 8<<20)
	for _, structured := range []bool{false, true} {
		c := connectRaw(t, env.sock, "vol", structured)
		c.request(CmdRead, 0, 1, 0, ^uint32(0), nil)
		if r := c.readReply(0); r.errno != ErrnoInval {
			t.Fatalf("4 GiB read: errno %d", r.errno)
		}
		c.request(CmdRead, 0, 2, 0, 16, nil)
		if r := c.readReply(16); r.errno != 0 || len(r.data) != 16 {
			t.Fatalf("read after: errno %d", r.errno)
		}
	}
}
