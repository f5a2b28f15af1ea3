// Command s3baseline is the client-only reference of bench/cloudsnap.sh:
// minio-go alone putting a file to a bucket and getting it back, with the
// same client settings cairn's cloudsnaps use (path-style, plain PUTs of
// 16 MiB objects, 4 at a time) and, for comparison, one multipart
// PutObject of the whole file. Each case is timed after a sync (settle). It
// prints one line per case:
//
//	put-16MiBx4 BYTES SECONDS MiB/s
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:7070", "host:port (http)")
	access := flag.String("access", "", "access key")
	secret := flag.String("secret", "", "secret key")
	bucket := flag.String("bucket", "", "bucket")
	file := flag.String("file", "", "the bytes to put")
	flag.Parse()
	data, err := os.ReadFile(*file)
	if err != nil {
		fail(err)
	}
	cli, err := minio.New(*endpoint, &minio.Options{Creds: credentials.NewStaticV4(*access, *secret, ""), BucketLookup: minio.BucketLookupPath})
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	const seg = 16 << 20
	var keys []string
	for off := 0; off < len(data); off += seg {
		keys = append(keys, fmt.Sprintf("baseline/seg/%06d", off/seg))
	}
	parallel := func(fn func(i int) error) {
		var wg sync.WaitGroup
		work := make(chan int)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					if err := fn(i); err != nil {
						fail(err)
					}
				}
			}()
		}
		for i := range keys {
			work <- i
		}
		close(work)
		wg.Wait()
	}
	report := func(name string, n int, d time.Duration) {
		fmt.Printf("%s %d %.3f %.1f\n", name, n, d.Seconds(), float64(n)/d.Seconds()/(1<<20))
	}
	settle()
	start := time.Now()
	parallel(func(i int) error {
		b := data[i*seg : min(len(data), (i+1)*seg)]
		_, err := cli.PutObject(ctx, *bucket, keys[i], bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{DisableMultipart: true})
		return err
	})
	report("put-16MiBx4", len(data), time.Since(start))
	settle()
	start = time.Now()
	parallel(func(i int) error {
		o, err := cli.GetObject(ctx, *bucket, keys[i], minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer o.Close()
		_, err = io.Copy(io.Discard, o)
		return err
	})
	report("get-16MiBx4", len(data), time.Since(start))
	settle()
	start = time.Now()
	if _, err := cli.PutObject(ctx, *bucket, "baseline/whole", bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		fail(err)
	}
	report("put-multipart", len(data), time.Since(start))
	settle()
	start = time.Now()
	o, err := cli.GetObject(ctx, *bucket, "baseline/whole", minio.GetObjectOptions{})
	if err != nil {
		fail(err)
	}
	if _, err := io.Copy(io.Discard, o); err != nil {
		fail(err)
	}
	report("get-whole", len(data), time.Since(start))
	for _, k := range append(keys, "baseline/whole") {
		_ = cli.RemoveObject(ctx, *bucket, k, minio.RemoveObjectOptions{})
	}
}

// settle writes back what the steps before left dirty (the puts: the
// server's files) before a case is timed, as bench/cloudsnap.sh syncs
// before each cairn job: else the gets run while the kernel writes back
// the puts, and their rate depends on how far it got.
func settle() { syscall.Sync() }

func fail(err error) {
	fmt.Fprintln(os.Stderr, "s3baseline:", err)
	os.Exit(1)
}
