package cloudsnap

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/s3test"
)

// BenchmarkRestore restores a backup of 1 GiB of random data from a real
// versitygw into a file drive (as the daemon's drives are: page cache).
// Before each restore (outside the timer) minio-go alone gets the same
// objects 4 at a time, the client-only reference of bench/cloudsnap.sh; it
// reports that rate, the ratio of the two (the target of bench/cloudsnap.sh
// is ≥ 0.7; on a shared machine the two rates move together, their ratio
// much less), the final flush, and the CPU time (this process and the
// versitygw) each spends per GiB. Run one restore per process
// (-benchtime 1x -count N): on some VMs writing more than a couple of GiB
// into the page cache gets ten times slower (BENCHMARKS.md, cloudsnaps),
// and the later restores of one run would measure that. For profiles of
// the restore path without a daemon:
//
//	go test ./cloudsnap -run '^$' -bench Restore -benchtime 1x -count 3 -cpuprofile /tmp/r.pprof
//
// Not a pass/fail test: it reports rates, it asserts only that restores work.
func BenchmarkRestore(b *testing.B) {
	const size = 1 << 30
	srv := s3test.Start(b, bucket)
	st, err := Open(Credential{Name: "b", Endpoint: srv.Endpoint(), AccessKey: s3test.AccessKey, SecretKey: s3test.SecretKey, Bucket: bucket})
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "drive")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(4 * size * int64(b.N+2)); err != nil {
		b.Fatal(err)
	}
	f.Close()
	e, err := engine.Open(engine.Options{NodeID: "node-bench", Drives: []engine.DriveSpec{{Path: path}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	if _, err := e.CreateVolume(engine.VolumeSpec{Name: "src", Size: size}); err != nil {
		b.Fatal(err)
	}
	v, _ := e.Volume("src")
	for off := int64(0); off < size; off += 16 << 20 {
		if err := v.WriteAt(randBytes(uint64(off), 16<<20), off, false); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := e.CreateSnapshot("src", "src.cs"); err != nil {
		b.Fatal(err)
	}
	id := NewID(v.Info().ID, time.Now())
	ctx := context.Background()
	m, err := Backup(ctx, e, st, BackupRequest{ID: id, Snapshot: "src.cs"}, nil)
	if err != nil {
		b.Fatal(err)
	}

	// The client-only reference: the same objects, 4 GETs at a time.
	getOnly := func() time.Duration {
		start := time.Now()
		jobs := make(chan string)
		done := make(chan error)
		for range 4 {
			go func() {
				var err error
				for k := range jobs {
					if err != nil {
						continue
					}
					var o *minio.Object
					if o, err = st.cli.GetObject(ctx, bucket, k, minio.GetObjectOptions{}); err == nil {
						_, err = io.Copy(io.Discard, o)
						o.Close()
					}
				}
				done <- err
			}()
		}
		for _, o := range m.Objects {
			jobs <- o.Key
		}
		close(jobs)
		for range 4 {
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}

	name := func(i int) string { return "r" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) }
	b.SetBytes(size)
	b.ReportAllocs()
	b.ResetTimer()
	var getTime, restoreTime, flushTime, getCPU, restoreCPU time.Duration
	for i := range b.N {
		b.StopTimer()
		c0 := cpuTime()
		getTime += getOnly()
		c1 := cpuTime()
		start := time.Now()
		b.StartTimer()
		var prog Progress
		if _, err := Restore(ctx, e, st, id, name(i), &prog); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		restoreTime += time.Since(start)
		restoreCPU += cpuTime() - c1
		getCPU += c1 - c0
		flushTime += time.Duration(prog.FlushNanos.Load())
		b.StartTimer()
	}
	// The restored volumes are deleted after the runs: a deletion's work
	// (the extents' holes punched, their pages dropped) goes on in the
	// background and would be counted in the next run.
	b.StopTimer()
	for i := range b.N {
		if err := e.DeleteVolume(name(i)); err != nil {
			b.Fatal(err)
		}
	}
	gib := float64(size) * float64(b.N) / (1 << 30)
	b.ReportMetric(gib*1024/getTime.Seconds(), "get-only-MiB/s")
	b.ReportMetric(getTime.Seconds()/restoreTime.Seconds(), "ratio")
	b.ReportMetric(float64(flushTime.Milliseconds())/float64(b.N), "flush-ms/op")
	b.ReportMetric(getCPU.Seconds()/gib, "get-cpu-s/GiB")
	b.ReportMetric(restoreCPU.Seconds()/gib, "restore-cpu-s/GiB")
}

// cpuTime is the CPU time (user and system) this process and its running
// children (the versitygw) have used: what a restore costs the machine,
// next to what the client-only GETs cost it. Linux only (/proc).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	t := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	self := strconv.Itoa(os.Getpid())
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		raw, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime stime: fields 4, 14 and 15.
		_, rest, ok := strings.Cut(string(raw), ") ")
		f := strings.Fields(rest)
		if !ok || len(f) < 13 || f[1] != self {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		t += time.Duration(ut+st) * (time.Second / 100) // USER_HZ
	}
	return t
}
