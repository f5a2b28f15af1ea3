// Command commitlat measures what one durable commit (a small write, then a
// flush) costs on a file of this disk for each way a server could write it,
// with a gap between the write and the flush that stands in for the NBD round
// trip (the write's reply to the client, the client's flush request back):
//
//	commitlat -file /var/tmp/x.img [-size 1G] [-bs 8k] [-seq] [-gap 40µs] [-time 3s] [-modes a,b,...]
//
// Modes (each runs for -time, one commit at a time, QD1):
//
//	buffered      pwrite into the page cache; gap; fdatasync (cairn's file drives today)
//	buffered-sfr  the same plus sync_file_range(WRITE) right after the pwrite,
//	              so write-back starts during the gap
//	direct        pwrite O_DIRECT (returns when the device has it); gap; fdatasync
//	              (qemu-nbd --cache=none)
//	direct-behind O_DIRECT pwrite started on another thread, reply at once; gap;
//	              wait for the write, then fdatasync (write-behind)
//	dsync         pwrite O_DIRECT|O_DSYNC (durable on return); gap; nothing
//	journal       pwrite into the page cache; gap; the flush writes the data and a
//	              4 KiB header sequentially to a log file with O_DIRECT|O_DSYNC
//	              (home write-back left to the kernel)
//
// Prints one line per mode: commits/s, commit latency (write start to flush
// end, gap included) mean/p50/p99 and the flush's part (gap end to flush
// end) mean/p99, in µs.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	file := flag.String("file", "", "data file (created and prefilled up to -size)")
	sizeS := flag.String("size", "1G", "file size")
	bsS := flag.String("bs", "8k", "write size")
	seq := flag.Bool("seq", false, "sequential writes (default random, aligned)")
	gap := flag.Duration("gap", 40*time.Microsecond, "spin between write and flush")
	dur := flag.Duration("time", 3*time.Second, "time per mode")
	modes := flag.String("modes", "buffered,buffered-sfr,direct,direct-behind,dsync,journal", "modes to run")
	flag.Parse()
	if *file == "" {
		fmt.Fprintln(os.Stderr, "commitlat: -file is required")
		os.Exit(2)
	}
	size, bs := parseSize(*sizeS), parseSize(*bsS)
	prefill(*file, size)
	fmt.Printf("| mode | commits/s | commit mean | commit p50 | commit p99 | flush part mean | flush part p99 |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, m := range strings.Split(*modes, ",") {
		run(m, *file, size, bs, *seq, *gap, *dur)
	}
}

func parseSize(s string) int64 {
	mult := int64(1)
	switch strings.ToLower(s[len(s)-1:]) {
	case "k":
		mult = 1 << 10
	case "m":
		mult = 1 << 20
	case "g":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	var n int64
	fmt.Sscan(s, &n)
	return n * mult
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "commitlat:", err)
		os.Exit(1)
	}
}

// aligned returns an n-byte buffer aligned for O_DIRECT.
func aligned(n int) []byte {
	b := make([]byte, n+4096)
	off := int(4096 - uintptr(unsafe.Pointer(&b[0]))%4096)
	return b[off : off+n]
}

func prefill(path string, size int64) {
	if st, err := os.Stat(path); err == nil && st.Size() >= size {
		return
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_DIRECT, 0o644)
	must(err)
	defer unix.Close(fd)
	buf := aligned(1 << 20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		_, err := unix.Pwrite(fd, buf, off)
		must(err)
	}
	must(unix.Fdatasync(fd))
}

func spin(d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
	}
}

func run(mode, path string, size, bs int64, seq bool, gap, dur time.Duration) {
	flags := unix.O_RDWR
	switch mode {
	case "direct", "direct-behind":
		flags |= unix.O_DIRECT
	case "dsync":
		flags |= unix.O_DIRECT | unix.O_DSYNC
	case "buffered", "buffered-sfr", "journal":
	default:
		fmt.Fprintln(os.Stderr, "commitlat: unknown mode", mode)
		os.Exit(2)
	}
	fd, err := unix.Open(path, flags, 0)
	must(err)
	defer unix.Close(fd)
	var logfd int
	var logOff int64
	logSize := int64(256 << 20)
	if mode == "journal" {
		lp := path + ".log"
		prefill(lp, logSize)
		logfd, err = unix.Open(lp, unix.O_RDWR|unix.O_DIRECT|unix.O_DSYNC, 0)
		must(err)
		defer unix.Close(logfd)
	}
	buf := aligned(int(bs))
	logBuf := aligned(int(bs) + 4096)
	for i := range buf {
		buf[i] = byte(rand.IntN(256))
	}
	// direct-behind: one locked thread does the O_DIRECT writes.
	type req struct{ off int64 }
	reqs := make(chan req)
	done := make(chan error)
	if mode == "direct-behind" {
		go func() {
			runtime.LockOSThread()
			for r := range reqs {
				_, err := unix.Pwrite(fd, buf, r.off)
				done <- err
			}
		}()
		defer close(reqs)
	}
	blocks := size / bs
	var next int64
	var commits, flushes []time.Duration
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		var off int64
		if seq {
			off = (next % blocks) * bs
			next++
		} else {
			off = rand.Int64N(blocks) * bs
		}
		t0 := time.Now()
		switch mode {
		case "direct-behind":
			reqs <- req{off}
		default:
			_, err := unix.Pwrite(fd, buf, off)
			must(err)
		}
		if mode == "buffered-sfr" {
			must(unix.SyncFileRange(fd, off, bs, unix.SYNC_FILE_RANGE_WRITE))
		}
		spin(gap)
		t1 := time.Now()
		switch mode {
		case "buffered", "buffered-sfr", "direct":
			must(unix.Fdatasync(fd))
		case "direct-behind":
			must(<-done)
			must(unix.Fdatasync(fd))
		case "journal":
			copy(logBuf[4096:], buf)
			if logOff+int64(len(logBuf)) > logSize {
				logOff = 0
			}
			_, err := unix.Pwrite(logfd, logBuf, logOff)
			must(err)
			logOff += int64(len(logBuf))
		}
		t2 := time.Now()
		commits = append(commits, t2.Sub(t0))
		flushes = append(flushes, t2.Sub(t1))
	}
	n := len(commits)
	cm, fm := mean(commits), mean(flushes)
	sort.Slice(commits, func(i, j int) bool { return commits[i] < commits[j] })
	sort.Slice(flushes, func(i, j int) bool { return flushes[i] < flushes[j] })
	fmt.Printf("| %s | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n", mode, float64(n)/dur.Seconds(),
		us(cm), us(commits[n/2]), us(commits[n*99/100]), us(fm), us(flushes[n*99/100]))
}

func mean(d []time.Duration) time.Duration {
	var s time.Duration
	for _, x := range d {
		s += x
	}
	return s / time.Duration(len(d))
}

func us(d time.Duration) float64 { return float64(d) / 1e3 }
