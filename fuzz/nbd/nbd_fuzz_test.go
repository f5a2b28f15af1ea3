// Package nbdfuzz fuzzes the NBD server with arbitrary client byte streams:
// whatever arrives, the server must neither panic nor hang, and must close
// the connection once the client's bytes run out.
package nbdfuzz

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/blockdev/nbd/nbdtest"
	"github.com/cairn-storage/cairn/engine"
)

func FuzzClientStream(f *testing.F) {
	for _, seed := range seeds() {
		f.Add(seed)
	}
	sock := serve(f, exports{holeExport{nbdtest.NewMemExport("x", 1<<20)}}, 8)
	f.Fuzz(func(t *testing.T, in []byte) { stream(t, sock, in) })
}

// serve serves exports on a unix socket for the whole fuzz run.
func serve(f *testing.F, exports nbd.Exports, maxInFlight int) (sock string) {
	sock = filepath.Join(f.TempDir(), "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	srv := nbd.NewServer(exports, nbd.Config{MaxInFlight: maxInFlight, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	go srv.Serve(l)
	f.Cleanup(func() { srv.Shutdown(f.Context()) })
	return sock
}

// stream sends in on a new connection and closes the sending half; the
// server must then close the connection.
func stream(t *testing.T, sock string, in []byte) {
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		nc.Write(in) // the server may close before reading it all
		nc.(*net.UnixConn).CloseWrite()
	}()
	if _, err := io.Copy(io.Discard, nc); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("server did not close the connection after the client's %d bytes", len(in))
		}
	}
}

// seeds are a well-formed session (GO with structured replies and
// base:allocation, then one of each command) and a few broken variants.
func seeds() [][]byte {
	hs := clientFlags()
	hs = nbd.AppendOption(hs, nbd.OptStructuredReply, nil)
	hs = nbd.AppendOption(hs, nbd.OptSetMetaContext, nbd.MetaContextData("x", nbd.MetaBaseAllocation))
	hs = nbd.AppendOption(hs, nbd.OptList, nil)
	hs = nbd.AppendOption(hs, nbd.OptInfo, nbd.GoData("x", nbd.InfoBlockSize))
	hs = nbd.AppendOption(hs, nbd.OptGo, nbd.GoData("x"))
	s := append([]byte{}, hs...)
	s = append(nbd.AppendRequest(s, nbd.CmdWrite, nbd.CmdFlagFUA, 1, 0, 8), "abcdefgh"...)
	s = nbd.AppendRequest(s, nbd.CmdRead, 0, 1, 0, 4096)
	s = nbd.AppendRequest(s, nbd.CmdBlockStatus, 0, 1, 0, 1<<20)
	s = nbd.AppendRequest(s, nbd.CmdWriteZeroes, 0, 1, 4096, 8192)
	s = nbd.AppendRequest(s, nbd.CmdTrim, 0, 1, 0, 4096)
	s = nbd.AppendRequest(s, nbd.CmdCache, 0, 1, 0, 4096)
	s = nbd.AppendRequest(s, nbd.CmdFlush, 0, 1, 0, 0)
	s = nbd.AppendRequest(s, nbd.CmdRead, nbd.CmdFlagDF, 1, 0, 65536)
	s = nbd.AppendRequest(s, nbd.CmdDisc, 0, 1, 0, 0)

	// Old-style clients: FIXED_NEWSTYLE only (the server then pads
	// EXPORT_NAME's reply with zeroes).
	fixedOnly := binary.BigEndian.AppendUint32(nil, nbd.ClientFlagFixedNewstyle)
	old := nbd.AppendOption(fixedOnly, nbd.OptExportName, []byte("x"))
	old = append(nbd.AppendRequest(old, nbd.CmdWrite, 0, 1, 0, 3), "abc"...)
	old = nbd.AppendRequest(old, nbd.CmdRead, 0, 1, 0, 3)

	badGo := nbd.AppendOption(slices.Clone(fixedOnly), nbd.OptGo, []byte{0xff, 0xff, 0xff, 0xff})
	return [][]byte{s, old, hs, s[:len(hs)+20], []byte("garbage"), badGo}
}

type exports struct{ exp nbd.Export }

func (x exports) OpenExport(name string) (nbd.Export, func(), error) {
	if name != "x" {
		return nil, nil, engine.ErrNotFound
	}
	return x.exp, func() {}, nil
}
func (x exports) ExportNames() []string { return []string{"x"} }

// holeExport is a flat in-memory export that reports a hole in its second
// half (so that structured READs send hole chunks).
type holeExport struct{ *nbdtest.MemExport }

func (m holeExport) Extents(off, n int64) ([]engine.Extent, error) {
	half := m.Size() / 2
	var out []engine.Extent
	if off < half {
		out = append(out, engine.Extent{Offset: off, Length: min(n, half-off), Kind: engine.ExtentData})
	}
	if end := off + n; end > half {
		s := max(off, half)
		out = append(out, engine.Extent{Offset: s, Length: end - s, Kind: engine.ExtentHole})
	}
	return out, nil
}
