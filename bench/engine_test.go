// Package bench holds cairn's benchmarks: the engine in-process (this file),
// the NBD path, and bench/compare.sh against peer servers. Results that matter
// go in BENCHMARKS.md with the command that produced them. Nothing here is a
// pass/fail timing test.
package bench

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

// parallel is the number of goroutines issuing I/O (the queue depth).
var parallel = 32

func init() {
	if s := os.Getenv("CAIRN_BENCH_QD"); s != "" {
		fmt.Sscan(s, &parallel)
	}
}

const (
	volSize = 1 << 30
	kib4    = 4096
	mib1    = 1 << 20
)

// fileEngine opens an engine on a sparse file drive in a temp dir.
func fileEngine(b *testing.B, driveSize int64, opts engine.Options) *engine.Engine {
	b.Helper()
	path := filepath.Join(b.TempDir(), "drive0.img")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	f.Truncate(driveSize)
	f.Close()
	opts.NodeID = "bench"
	opts.Drives = []engine.DriveSpec{{Path: path}}
	e, err := engine.Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	return e
}

// benchVolume creates a 1 GiB volume, prefilled by a sequential write so that
// random I/O measures steady state, not first allocation.
func benchVolume(b *testing.B, prefill bool) *engine.Volume {
	e := fileEngine(b, 4<<30, engine.Options{})
	if _, err := e.CreateVolume(engine.VolumeSpec{Name: "bench", Size: volSize}); err != nil {
		b.Fatal(err)
	}
	v, _ := e.Volume("bench")
	if prefill {
		buf := make([]byte, mib1)
		for i := range buf {
			buf[i] = byte(i)
		}
		for off := int64(0); off < volSize; off += mib1 {
			if err := v.WriteAt(buf, off, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	return v
}

// parallelIO runs op from 32 goroutines (queue depth 32), each with its own
// buffer and random source.
func parallelIO(b *testing.B, size int, op func(v *engine.Volume, buf []byte, r *rand.Rand, i int) error, v *engine.Volume) {
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.SetParallelism(max(1, parallel/runtime.GOMAXPROCS(0)))
	var seed atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 1))
		buf := make([]byte, size)
		for i := 0; pb.Next(); i++ {
			if err := op(v, buf, r, i); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportIOPS(b)
}

func reportIOPS(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func randBlock(r *rand.Rand, size int) int64 {
	return r.Int64N(volSize/int64(size)) * int64(size)
}

func BenchmarkRandWrite4K(b *testing.B) {
	v := benchVolume(b, true)
	parallelIO(b, kib4, func(v *engine.Volume, buf []byte, r *rand.Rand, _ int) error {
		return v.WriteAt(buf, randBlock(r, kib4), false)
	}, v)
}

// First writes to a fresh thin volume: every 4 KiB write records its block.
func BenchmarkRandWrite4KFresh(b *testing.B) {
	v := benchVolume(b, false)
	parallelIO(b, kib4, func(v *engine.Volume, buf []byte, r *rand.Rand, _ int) error {
		return v.WriteAt(buf, randBlock(r, kib4), false)
	}, v)
}

func BenchmarkRandRead4K(b *testing.B) {
	v := benchVolume(b, true)
	parallelIO(b, kib4, func(v *engine.Volume, buf []byte, r *rand.Rand, _ int) error {
		return v.ReadAt(buf, randBlock(r, kib4))
	}, v)
}

// The durable path: every goroutine flushes after each 32 of its writes.
func BenchmarkRandWrite4KFlush32(b *testing.B) {
	v := benchVolume(b, true)
	parallelIO(b, kib4, func(v *engine.Volume, buf []byte, r *rand.Rand, i int) error {
		if err := v.WriteAt(buf, randBlock(r, kib4), false); err != nil {
			return err
		}
		if i%32 == 31 {
			return v.Flush()
		}
		return nil
	}, v)
}

func BenchmarkSeqWrite1M(b *testing.B) {
	v := benchVolume(b, true)
	buf := make([]byte, mib1)
	b.SetBytes(mib1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := v.WriteAt(buf, int64(i)%(volSize/mib1)*mib1, false); err != nil {
			b.Fatal(err)
		}
	}
	reportIOPS(b)
}

func BenchmarkSeqRead1M(b *testing.B) {
	v := benchVolume(b, true)
	buf := make([]byte, mib1)
	b.SetBytes(mib1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := v.ReadAt(buf, int64(i)%(volSize/mib1)*mib1); err != nil {
			b.Fatal(err)
		}
	}
	reportIOPS(b)
}
