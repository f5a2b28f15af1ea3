package nbdfuzz

import (
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

// FuzzTransmission fuzzes the transmission phase against a real engine
// volume: a fixed, valid handshake (structured replies and base:allocation
// negotiated when the first input byte is odd, NBD_OPT_GO) followed by the
// fuzzed request stream. The server must not panic or hang and must close
// the connection once the bytes run out; the engine must stay consistent.
func FuzzTransmission(f *testing.F) {
	for _, s := range transmissionSeeds() {
		f.Add(s)
	}
	sock, eng := startEngineServer(f)
	f.Fuzz(func(t *testing.T, in []byte) {
		structured := len(in) > 0 && in[0]&1 == 1
		if len(in) > 0 {
			in = in[1:]
		}
		nc, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			nc.Write(append(handshake(structured), in...))
			nc.(*net.UnixConn).CloseWrite()
		}()
		if _, err := io.Copy(io.Discard, nc); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("server did not close the connection after the client's %d bytes", len(in))
			}
		}
		// Check races with a background commit round (which holds the
		// extents it frees or reserves outside the pool's lists while it
		// writes the log): a real inconsistency is one that persists.
		for try := 0; try < 5; try++ {
			if err = eng.Check(); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("engine inconsistent after the stream: %v", err)
		}
	})
}

// handshake is the client's side of a fixed newstyle negotiation ending in
// NBD_OPT_GO for export "v".
func handshake(structured bool) []byte {
	be := binary.BigEndian
	opt := func(b []byte, o uint32, data []byte) []byte {
		b = be.AppendUint64(b, 0x49484156454f5054)
		b = be.AppendUint32(b, o)
		b = be.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	str := func(b []byte, s string) []byte { return append(be.AppendUint32(b, uint32(len(s))), s...) }
	hs := be.AppendUint32(nil, 3)
	if structured {
		hs = opt(hs, 8, nil)
		hs = opt(hs, 10, str(be.AppendUint32(str(nil, "v"), 1), "base:allocation"))
	}
	return opt(hs, 7, be.AppendUint16(str(nil, "v"), 0))
}

func request(b []byte, flags, typ uint16, off uint64, n uint32) []byte {
	be := binary.BigEndian
	b = be.AppendUint32(b, 0x25609513)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, 7)
	b = be.AppendUint64(b, off)
	return be.AppendUint32(b, n)
}

func transmissionSeeds() [][]byte {
	s := []byte{1}
	s = append(request(s, 1, 1, 4096, 4096), make([]byte, 4096)...) // WRITE FUA
	s = request(s, 0, 0, 0, 8192)                                   // READ
	s = request(s, 0, 3, 0, 0)                                      // FLUSH
	s = request(s, 0, 4, 1<<20, 1<<20)                              // TRIM
	s = request(s, 2, 6, 0, 65536)                                  // WRITE_ZEROES NO_HOLE
	s = request(s, 0, 6, 2<<20, 1<<20)                              // WRITE_ZEROES
	s = request(s, 0, 7, 0, 4<<20)                                  // BLOCK_STATUS
	s = request(s, 8, 7, 0, 4<<20)                                  // BLOCK_STATUS REQ_ONE
	s = request(s, 4, 0, 0, 65536)                                  // READ DF
	s = request(s, 0, 5, 0, 4096)                                   // CACHE
	s = request(s, 0, 0, 15<<20, 2<<20)                             // READ past the end
	s = request(s, 0, 9, 0, 0)                                      // unknown command
	s = request(s, 0, 2, 0, 0)                                      // DISC
	simple := append([]byte{0}, s[1:]...)
	short := append(request([]byte{0}, 0, 1, 0, 4096), "partial"...) // write payload cut short
	return [][]byte{s, simple, short, {1}, {0, 0x25, 0x60}}
}

// startEngineServer serves one 16 MiB engine volume "v" (on a crash-simulating
// memory drive) on a unix socket for the whole fuzz run.
func startEngineServer(f *testing.F) (string, *engine.Engine) {
	dir, err := os.MkdirTemp("", "nbdfuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	eng, err := engine.Open(engine.Options{NodeID: "fuzz", LogAreaSize: 256 << 10,
		Drives: []engine.DriveSpec{{Path: "mem0", Drive: drive.NewMem("mem0", 20<<20)}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { eng.Close() })
	if _, err := eng.CreateVolume(engine.VolumeSpec{Name: "v", Size: 16 << 20}); err != nil {
		f.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	srv := nbd.NewServer(engineExports{eng}, nbd.Config{MaxInFlight: 16, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	go srv.Serve(l)
	f.Cleanup(func() { srv.Shutdown(f.Context()) })
	return sock, eng
}

type engineExports struct{ eng *engine.Engine }

func (x engineExports) OpenExport(name string) (nbd.Export, func(), error) {
	v, release, err := x.eng.HoldVolume(name)
	if err != nil {
		return nil, nil, err
	}
	return v, release, nil
}

func (x engineExports) ExportNames() []string { return []string{"v"} }
