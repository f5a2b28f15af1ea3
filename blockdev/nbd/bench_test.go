package nbd

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
)

// BenchmarkServer measures the server alone: a pipelined client over a unix
// socket against an in-memory export, so the time and allocations are the
// protocol path's (client included, which allocates nothing).
// BenchmarkServerEngine runs the same cases against a real engine volume on
// a sparse file drive; the difference is the engine's share.
//
//	go test -run '^$' -bench Server -benchmem ./blockdev/nbd
func BenchmarkServer(b *testing.B) {
	benchCases(b, func(b *testing.B) Exports { return memExports{newMemExport("m", benchSpan)} })
}

func BenchmarkServerEngine(b *testing.B) {
	benchCases(b, func(b *testing.B) Exports {
		drive := filepath.Join(b.TempDir(), "drive0")
		if err := os.WriteFile(drive, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Truncate(drive, 4*benchSpan); err != nil {
			b.Fatal(err)
		}
		eng, err := engine.Open(engine.Options{NodeID: "bench", Drives: []engine.DriveSpec{{Path: drive}}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { eng.Close() })
		if _, err := eng.CreateVolume(engine.VolumeSpec{Name: "m", Size: benchSpan}); err != nil {
			b.Fatal(err)
		}
		v, err := eng.Volume("m")
		if err != nil {
			b.Fatal(err)
		}
		// Written once, so the cases measure steady state, not first writes.
		buf := make([]byte, 1<<20)
		for off := int64(0); off < benchSpan; off += int64(len(buf)) {
			if err := v.WriteAt(buf, off, false); err != nil {
				b.Fatal(err)
			}
		}
		return singleExport{v}
	})
}

// benchSpan is the export size the benchmarks address.
const benchSpan = 256 << 20

func benchCases(b *testing.B, exports func(*testing.B) Exports) {
	for _, tc := range []struct {
		op         string
		size, qd   int
		structured bool
	}{
		{"write", 4 << 10, 1, false},
		{"read", 4 << 10, 1, false},
		{"write", 4 << 10, 32, false},
		{"read", 4 << 10, 32, false},
		{"read", 4 << 10, 32, true},
		{"write", 1 << 20, 8, false},
		{"read", 1 << 20, 8, true},
	} {
		name := fmt.Sprintf("%s-%dk-qd%d", tc.op, tc.size>>10, tc.qd)
		if tc.structured {
			name += "-structured"
		}
		b.Run(name, func(b *testing.B) {
			typ := CmdWrite
			if tc.op == "read" {
				typ = CmdRead
			}
			benchIO(b, exports(b), typ, tc.size, tc.qd, tc.structured)
		})
	}
}

// singleExport serves one export by its name.
type singleExport struct{ exp Export }

func (x singleExport) OpenExport(name string) (Export, func(), error) {
	if name != x.exp.Name() {
		return nil, nil, engine.ErrNotFound
	}
	return x.exp, func() {}, nil
}

func (x singleExport) ExportNames() []string { return []string{x.exp.Name()} }

func benchIO(b *testing.B, exports Exports, typ uint16, size, qd int, structured bool) {
	const span = benchSpan
	srv := NewServer(exports, Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	l, sock := listenUnix(b)
	go srv.Serve(l)
	b.Cleanup(func() { srv.Shutdown(b.Context()) })
	c := connectRaw(b, sock, "m", structured)
	c.nc.SetDeadline(time.Time{})

	payload := make([]byte, size)
	tokens := make(chan struct{}, qd)
	for range qd {
		tokens <- struct{}{}
	}
	bw := bufio.NewWriterSize(c.nc, 256<<10)
	done := make(chan error, 1)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()

	// Receiver: reads replies, returning a token per reply.
	go func() {
		var h [32]byte
		data := make([]byte, size)
		for range b.N {
			if _, err := io.ReadFull(c.br, h[:4]); err != nil {
				done <- err
				return
			}
			var err error
			switch be.Uint32(h[:]) {
			case MagicSimpleReply:
				_, err = io.ReadFull(c.br, h[4:16])
				if err == nil && typ == CmdRead {
					_, err = io.ReadFull(c.br, data)
				}
			case MagicStructuredReply:
				// One OFFSET_DATA chunk with DONE (the export has no holes).
				_, err = io.ReadFull(c.br, h[4:28])
				if err == nil {
					_, err = io.ReadFull(c.br, data)
				}
			default:
				err = fmt.Errorf("bad magic %x", h[:4])
			}
			if err != nil {
				done <- err
				return
			}
			tokens <- struct{}{}
		}
		done <- nil
	}()

	var h [RequestHeaderLen]byte
	be.PutUint32(h[0:], MagicRequest)
	be.PutUint16(h[6:], typ)
	be.PutUint32(h[24:], uint32(size))
	blocks := uint64(span / size)
	for i := range b.N {
		if len(tokens) == 0 {
			bw.Flush()
		}
		<-tokens
		be.PutUint64(h[8:], uint64(i))
		be.PutUint64(h[16:], (uint64(i)*2654435761)%blocks*uint64(size))
		bw.Write(h[:])
		if typ == CmdWrite {
			bw.Write(payload)
		}
	}
	bw.Flush()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
