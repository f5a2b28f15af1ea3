// Command snapcommit measures, in process, what a database's commit (one
// 4 KiB random write, then a flush) costs on the engine before and after a
// snapshot: the commit rate and latency percentiles of each phase. It runs
// on a sparse file drive in DIR, so the drive's filesystem is part of what
// it measures (run it on the filesystem the daemon's drives live on); wrap
// it in `strace -f -T -e trace=fdatasync,pwrite64` to see each sync.
//
//	go run ./bench/cmd/snapcommit -dir /work/snapcommit [-size 1G] [-n 3000]
package main

import (
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cairn-storage/cairn/engine"
)

func main() {
	dir := flag.String("dir", "", "work directory (removed and recreated)")
	size := flag.Int64("size", 1<<30, "volume size in bytes")
	n := flag.Int("n", 3000, "commits per phase")
	flag.Parse()
	if *dir == "" {
		log.Fatal("-dir is required")
	}
	if err := os.RemoveAll(*dir); err != nil {
		log.Fatal(err)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(*dir)
	path := filepath.Join(*dir, "drive")
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	if err := f.Truncate(16 * *size); err != nil {
		log.Fatal(err)
	}
	f.Close()
	e, err := engine.Open(engine.Options{NodeID: "snapcommit", Drives: []engine.DriveSpec{{Path: path}}})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	if _, err := e.CreateVolume(engine.VolumeSpec{Name: "v", Size: *size}); err != nil {
		log.Fatal(err)
	}
	v, err := e.Volume("v")
	if err != nil {
		log.Fatal(err)
	}
	fill := make([]byte, engine.ExtentSize)
	for i := range fill {
		fill[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < *size; off += engine.ExtentSize {
		must(v.WriteAt(fill, off, false))
	}
	must(v.Flush())

	rng := rand.New(rand.NewPCG(1, 2))
	p := make([]byte, engine.BlockSize)
	phase := func(name string) {
		lat := make([]time.Duration, *n)
		start := time.Now()
		for i := range lat {
			t := time.Now()
			p[0] = byte(i)
			must(v.WriteAt(p, rng.Int64N(*size/engine.BlockSize)*engine.BlockSize, false))
			must(v.Flush())
			lat[i] = time.Since(t)
		}
		elapsed := time.Since(start)
		slices.Sort(lat)
		fmt.Printf("%-16s %6.0f commits/s  p50 %4d µs  p99 %5d µs\n", name, float64(*n)/elapsed.Seconds(),
			lat[len(lat)/2].Microseconds(), lat[len(lat)*99/100].Microseconds())
	}
	phase("before")
	if _, err := e.CreateSnapshot("v", "s1"); err != nil {
		log.Fatal(err)
	}
	phase("after snapshot")
	phase("later")
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
