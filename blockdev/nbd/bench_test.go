package nbd

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"
)

// BenchmarkServer measures the server alone: a pipelined client over a unix
// socket against an in-memory export, so the time and allocations are the
// protocol path's (client included, which allocates nothing).
//
//	go test -run '^$' -bench Server -benchmem ./blockdev/nbd
func BenchmarkServer(b *testing.B) {
	for _, tc := range []struct {
		op         string
		size, qd   int
		structured bool
	}{
		{"write", 4 << 10, 1, false},
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
			typ := cmdWrite
			if tc.op == "read" {
				typ = cmdRead
			}
			benchIO(b, typ, tc.size, tc.qd, tc.structured)
		})
	}
}

func benchIO(b *testing.B, typ uint16, size, qd int, structured bool) {
	const span = 256 << 20
	exp := newMemExport("m", span)
	srv := NewServer(memExports{exp}, Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
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
			case magicSimple:
				_, err = io.ReadFull(c.br, h[4:16])
				if err == nil && typ == cmdRead {
					_, err = io.ReadFull(c.br, data)
				}
			case magicStructured:
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

	var h [requestHeaderLen]byte
	be.PutUint32(h[0:], magicRequest)
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
		if typ == cmdWrite {
			bw.Write(payload)
		}
	}
	bw.Flush()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}
