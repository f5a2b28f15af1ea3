// Command tcpcopy copies a file to another over one TCP stream on
// loopback, the way a replica copy moves data between two nodes on one
// machine: read(2) of the source in -bs chunks, write(2) to the socket; on
// the other side read(2) from the socket, write(2) to the destination, one
// fsync at the end. No sendfile or splice (cairn's copy has neither), so it
// is the limit of one plain stream on this machine, disk at both ends:
//
//	tcpcopy -src FILE -dst FILE [-bytes N] [-bs 1M] [-from 127.0.0.1] [-to 127.0.0.2] [-sync=false]
//
// Prints "BYTES SECONDS MiB/s": from the connect to the destination's fsync
// (-sync=false: to the last byte written, e.g. with -dst /dev/null).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	src := flag.String("src", "", "file to send")
	dst := flag.String("dst", "", "file to write (created or truncated)")
	limit := flag.Int64("bytes", 0, "copy only the first N bytes (0: the whole file)")
	bs := flag.Int("bs", 1<<20, "read and write size")
	from := flag.String("from", "127.0.0.1", "sender's address")
	to := flag.String("to", "127.0.0.2", "receiver's address")
	doSync := flag.Bool("sync", true, "fsync the destination at the end")
	flag.Parse()
	if *src == "" || *dst == "" || *bs <= 0 {
		fmt.Fprintln(os.Stderr, "tcpcopy: -src and -dst are required")
		os.Exit(2)
	}
	n, d, err := run(*src, *dst, *limit, *bs, *from, *to, *doSync)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpcopy:", err)
		os.Exit(1)
	}
	fmt.Printf("%d %.3f %.0f\n", n, d.Seconds(), float64(n)/(1<<20)/d.Seconds())
}

func run(src, dst string, limit int64, bs int, from, to string, doSync bool) (int64, time.Duration, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, 0, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, 0, err
	}
	defer out.Close()
	l, err := net.Listen("tcp", net.JoinHostPort(to, "0"))
	if err != nil {
		return 0, 0, err
	}
	defer l.Close()

	type result struct {
		n   int64
		err error
	}
	recv := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			recv <- result{err: err}
			return
		}
		defer c.Close()
		buf := make([]byte, bs)
		var n int64
		for {
			m, rerr := io.ReadFull(c, buf)
			if m > 0 {
				if _, err := out.Write(buf[:m]); err != nil {
					recv <- result{n, err}
					return
				}
				n += int64(m)
			}
			if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
				break
			}
			if rerr != nil {
				recv <- result{n, rerr}
				return
			}
		}
		if doSync {
			recv <- result{n, out.Sync()}
			return
		}
		recv <- result{n, nil}
	}()

	start := time.Now()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		return 0, 0, err
	}
	buf := make([]byte, bs)
	var sent int64
	for limit == 0 || sent < limit {
		p := buf
		if limit > 0 && limit-sent < int64(len(p)) {
			p = p[:limit-sent]
		}
		m, rerr := in.Read(p)
		if m > 0 {
			if _, err := c.Write(p[:m]); err != nil {
				c.Close()
				return 0, 0, err
			}
			sent += int64(m)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			c.Close()
			return 0, 0, rerr
		}
	}
	if err := c.Close(); err != nil {
		return 0, 0, err
	}
	r := <-recv
	d2 := time.Since(start)
	if r.err != nil {
		return r.n, d2, r.err
	}
	if r.n != sent {
		return r.n, d2, fmt.Errorf("received %d bytes of %d", r.n, sent)
	}
	return r.n, d2, nil
}
