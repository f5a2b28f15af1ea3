package replication

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

// BenchmarkWrite measures pipelined writes over loopback TCP: a Client and
// a Server in one process, qd goroutines each with one request in flight.
// allocs/op and cpu-µs/op (the process's CPU time per write) count both
// sides. "null" applies requests to a volume that does nothing (the
// protocol's own cost); "engine" to a real engine volume on a sparse file
// drive, written once so the run measures steady state.
//
//	go test -run '^$' -bench Write -benchmem ./replication/
func BenchmarkWrite(b *testing.B) {
	for _, vc := range []struct {
		name string
		vol  func(*testing.B) Volume
	}{
		{"null", func(*testing.B) Volume { return nullVolume{} }},
		{"engine", benchEngineVolume},
	} {
		for _, tc := range []struct{ size, qd int }{{4 << 10, 32}, {4 << 10, 1}, {1 << 20, 8}} {
			b.Run(fmt.Sprintf("%s-%dk-qd%d", vc.name, tc.size>>10, tc.qd), func(b *testing.B) {
				srv := startServer(b, oneVolume{vc.vol(b)}, "", Config{})
				c := dial(b, clientConfig(srv.addr, "v", 1))
				benchWrites(b, c, tc.size, tc.qd)
			})
		}
	}
}

const benchSpan = 256 << 20

func benchWrites(b *testing.B, c *Client, size, qd int) {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(int64(size))
	b.ReportAllocs()
	cpu0 := processCPU(b)
	b.ResetTimer()
	for g := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := pattern(size, byte(g))
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				// Each goroutine its own blocks: no overlapping writes in
				// flight (the coordinator's contract).
				off := (i * int64(size)) % benchSpan
				if err := c.WriteAt(ctx, p, off, false); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N)/1e3, "cpu-µs/op")
}

// processCPU is the CPU time (user and system, every thread) the process
// has used, in ns: both ends of the connection and the kernel's loopback
// work on their behalf, the cost per write that the daemons pay.
func processCPU(b *testing.B) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

type nullVolume struct{}

func (nullVolume) Size() int64                               { return benchSpan }
func (nullVolume) ReadAt(p []byte, off int64) error          { return nil }
func (nullVolume) WriteAt(p []byte, off int64, _ bool) error { return nil }
func (nullVolume) Flush() error                              { return nil }
func (nullVolume) Trim(off, n int64) error                   { return nil }
func (nullVolume) WriteZeroes(off, n int64, _ bool) error    { return nil }

func benchEngineVolume(b *testing.B) Volume {
	path := filepath.Join(b.TempDir(), "drive0")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.Truncate(path, 2*benchSpan); err != nil {
		b.Fatal(err)
	}
	eng, err := engine.Open(engine.Options{NodeID: "bench", Drives: []engine.DriveSpec{{Path: path}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { eng.Close() })
	if _, err := eng.CreateVolume(engine.VolumeSpec{Name: "v", Size: benchSpan}); err != nil {
		b.Fatal(err)
	}
	v := volume(b, eng, "v")
	buf := make([]byte, 1<<20)
	for off := int64(0); off < benchSpan; off += int64(len(buf)) {
		if err := v.WriteAt(buf, off, false); err != nil {
			b.Fatal(err)
		}
	}
	return v
}
