package cloudsnap

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/s3test"
)

// BenchmarkRestore restores a backup of 256 MiB of random data from a real
// versitygw into a file drive (as the daemon's drives are: page cache), and
// reports next to it the rate of minio-go alone getting the same objects
// 4 at a time (the client-only reference of bench/cloudsnap.sh). For
// profiles of the restore path without a daemon:
//
//	go test ./cloudsnap -run '^$' -bench Restore -benchtime 3x -cpuprofile /tmp/r.pprof
//
// Not a pass/fail test: it reports rates, it asserts only that restores work.
func BenchmarkRestore(b *testing.B) {
	const size = 256 << 20
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
	getOnly := float64(size) / time.Since(start).Seconds() / (1 << 20)

	b.SetBytes(size)
	b.ResetTimer()
	for i := range b.N {
		name := "r" + string(rune('a'+i%26)) + string(rune('a'+i/26%26))
		if _, err := Restore(ctx, e, st, id, name, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := e.DeleteVolume(name); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(getOnly, "get-only-MiB/s")
}
