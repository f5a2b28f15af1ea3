// Command nbdhold holds one NBD connection open and runs the commands it
// reads on stdin, one a line, for scripts that must keep a client on an
// export between their own steps (bench/replication.sh keeps a replicated
// volume's coordinator alive while it kills a replica):
//
//	nbdhold -addr HOST:PORT -export NAME
//
//	write OFF LEN SEED   write LEN bytes at OFF (1 MiB requests, one at a
//	                     time) of data drawn from SEED and the offset
//	flush                NBD_CMD_FLUSH
//	quit                 disconnect and exit (so does end of input)
//
// Prints one line per command: "ok MS" (its wall time in milliseconds) or
// "error: …" (and exits 1: the connection is not to be trusted after it).
// Offsets and lengths take a K, M or G suffix (binary).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd"
)

// chunk is the largest request sent: well under any server's limit.
const chunk = 1 << 20

func main() {
	addr := flag.String("addr", "", "NBD server host:port (TCP)")
	export := flag.String("export", "", "export name")
	flag.Parse()
	if *addr == "" || *export == "" {
		fmt.Fprintln(os.Stderr, "nbdhold: -addr and -export are required")
		os.Exit(2)
	}
	c, err := nbd.Dial("tcp", *addr, *export)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nbdhold:", err)
		os.Exit(1)
	}
	defer c.Close()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		start := time.Now()
		switch {
		case f[0] == "quit":
			return
		case f[0] == "flush" && len(f) == 1:
			err = c.Flush()
		case f[0] == "write" && len(f) == 4:
			err = write(c, f[1], f[2], f[3])
		default:
			err = fmt.Errorf("unknown command %q", in.Text())
		}
		if err != nil {
			fmt.Println("error:", err)
			c.Close()
			os.Exit(1)
		}
		fmt.Printf("ok %.1f\n", float64(time.Since(start).Microseconds())/1000)
	}
}

func write(c *nbd.Client, offS, lenS, seedS string) error {
	off, err := parseSize(offS)
	if err != nil {
		return err
	}
	n, err := parseSize(lenS)
	if err != nil {
		return err
	}
	seed, err := strconv.ParseUint(seedS, 10, 64)
	if err != nil {
		return fmt.Errorf("seed %q: %w", seedS, err)
	}
	if off < 0 || n <= 0 || off+n > c.Size() {
		return fmt.Errorf("write of %d bytes at %d: outside the export's %d bytes", n, off, c.Size())
	}
	buf := make([]byte, min(n, chunk))
	for done := int64(0); done < n; {
		p := buf[:min(n-done, chunk)]
		r := rand.New(rand.NewPCG(seed, uint64(off+done)))
		for i := 0; i+8 <= len(p); i += 8 {
			v := r.Uint64()
			for j := range 8 {
				p[i+j] = byte(v >> (8 * j))
			}
		}
		if err := c.WriteAt(p, off+done, false); err != nil {
			return fmt.Errorf("write at %d: %w", off+done, err)
		}
		done += int64(len(p))
	}
	return nil
}

// parseSize reads a byte count with an optional K, M or G suffix.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	return v * mult, nil
}
