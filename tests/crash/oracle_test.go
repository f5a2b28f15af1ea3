package crash

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

const blockSize = 4096

// oracle is the writer and the checker of the crash tests. Every payload is
// a whole 4 KiB block naming its block number and a version; versions of a
// block count up from 1 and never two writes of one block are in flight at
// once, so per block "acknowledged" is a single number.
//
// What a read after recovery may return, per block (the durability contract
// of DESIGN.md): zeros, if no flush or FUA covered any write of it; otherwise
// exactly the payload of one version v with floor ≤ v ≤ issued, where floor
// is the newest version acknowledged before a flush that completed (or by a
// FUA write), and issued the newest version ever sent. After a check the
// version read becomes the floor: recovered data must stay.
type oracle struct {
	tag    uint64 // names this volume's payloads: another volume's block is caught
	blocks int

	mu       sync.Mutex
	issued   []uint64 // REQUIRES mu
	acked    []uint64 // REQUIRES mu
	floor    []uint64 // REQUIRES mu
	inflight []bool   // REQUIRES mu

	// tears are blocks found mixed from two of their own versions, the
	// newer one not flushed: a write torn inside its 4 KiB block by the
	// crash. The contract forbids it; they are collected and reported at the
	// end of a loop (tornWrites) with a precise description.
	tears    []string       // REQUIRES mu
	tornSeen map[int]string // REQUIRES mu; torn blocks as last read

	writes  atomic.Int64 // acknowledged writes, this run
	flushes atomic.Int64 // completed flushes, this run
}

func newOracle(tag uint64, blocks int) *oracle {
	return &oracle{tag: tag, blocks: blocks, issued: make([]uint64, blocks), acked: make([]uint64, blocks),
		floor: make([]uint64, blocks), inflight: make([]bool, blocks), tornSeen: map[int]string{}}
}

// payload is the content of version v of block b: a header, filler from a
// PRNG seeded by (tag, b, v), so a block mixing two writes never matches.
func (o *oracle) payload(b int, v uint64) []byte {
	p := make([]byte, blockSize)
	copy(p, "CRASHBLK")
	binary.LittleEndian.PutUint64(p[8:], o.tag)
	binary.LittleEndian.PutUint64(p[16:], uint64(b))
	binary.LittleEndian.PutUint64(p[24:], v)
	r := rand.New(rand.NewPCG(o.tag^uint64(b)<<20, v))
	for i := 32; i < blockSize; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	return p
}

// blockDevice is what the workload writes to: an NBD connection.
type blockDevice interface {
	WriteAt(p []byte, off int64, fua bool) error
	Flush() error
}

// run writes random blocks at queue depth qd, with a flush every 20–60
// writes and FUA on one write in 16, until the device fails (the daemon was
// killed) or stop is closed. It returns the first error that was not the
// connection going away.
func (o *oracle) run(dev blockDevice, qd int, seed uint64, stop <-chan struct{}) {
	var wg sync.WaitGroup
	var nextFlush atomic.Int64
	nextFlush.Store(40)
	for w := 0; w < qd; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				if n := o.writes.Load(); n >= nextFlush.Load() && nextFlush.CompareAndSwap(nextFlush.Load(), n+20+int64(rng.IntN(41))) {
					o.mu.Lock()
					snap := append([]uint64(nil), o.acked...)
					o.mu.Unlock()
					if err := dev.Flush(); err != nil {
						return
					}
					o.mu.Lock()
					for b, v := range snap {
						o.floor[b] = max(o.floor[b], v)
					}
					o.mu.Unlock()
					o.flushes.Add(1)
					continue
				}
				o.mu.Lock()
				b := rng.IntN(o.blocks)
				for o.inflight[b] {
					b = rng.IntN(o.blocks)
				}
				o.issued[b]++
				v := o.issued[b]
				o.inflight[b] = true
				o.mu.Unlock()
				fua := rng.IntN(16) == 0
				err := dev.WriteAt(o.payload(b, v), int64(b)*blockSize, fua)
				o.mu.Lock()
				o.inflight[b] = false
				if err == nil {
					o.acked[b] = v
					if fua {
						o.floor[b] = max(o.floor[b], v)
					}
				}
				o.mu.Unlock()
				if err != nil {
					return
				}
				o.writes.Add(1)
			}
		}()
	}
	wg.Wait()
}

// blockReader is what the checker reads from.
type blockReader interface {
	ReadAt(p []byte, off int64) error
}

// check reads every block and asserts the contract; it returns one line per
// violation (at most 20) and a summary. Then every block's floor and acked
// version become what was read.
func (o *oracle) check(t *testing.T, dev blockReader) (violations []string, summary string) {
	t.Helper()
	const chunk = 256 // blocks per read
	buf := make([]byte, chunk*blockSize)
	zero := make([]byte, blockSize)
	var zeros, exact, newer int
	o.mu.Lock()
	defer o.mu.Unlock()
	for first := 0; first < o.blocks; first += chunk {
		n := min(chunk, o.blocks-first)
		if err := dev.ReadAt(buf[:n*blockSize], int64(first)*blockSize); err != nil {
			t.Fatalf("reading blocks %d..%d after recovery: %v", first, first+n, err)
		}
		for i := 0; i < n; i++ {
			b := first + i
			got := buf[i*blockSize : (i+1)*blockSize]
			bad := func(format string, args ...any) {
				if len(violations) < 20 {
					violations = append(violations, fmt.Sprintf("block %d (floor %d, acked %d, issued %d): ", b, o.floor[b], o.acked[b], o.issued[b])+fmt.Sprintf(format, args...))
				}
			}
			if bytes.Equal(got, zero) {
				zeros++
				if o.floor[b] != 0 {
					bad("reads zeros, but version %d was flushed", o.floor[b])
				}
				o.acked[b] = 0
				continue
			}
			v := binary.LittleEndian.Uint64(got[24:])
			switch {
			case string(got[:8]) != "CRASHBLK" || binary.LittleEndian.Uint64(got[8:]) != o.tag:
				bad("holds something that is not a payload of this volume: % x…", got[:32])
				continue
			case binary.LittleEndian.Uint64(got[16:]) != uint64(b):
				bad("holds block %d's payload (version %d)", binary.LittleEndian.Uint64(got[16:]), v)
				continue
			case v < o.floor[b]:
				bad("holds version %d, older than the flushed %d", v, o.floor[b])
			case v > o.issued[b]:
				bad("holds version %d, never written", v)
			case !bytes.Equal(got, o.payload(b, v)):
				desc := fmt.Sprintf("block %d (floor %d, acked %d, issued %d): holds a torn version %d: %s", b, o.floor[b], o.acked[b], o.issued[b], v, o.describeTear(b, v, got))
				if !o.tornByLaterWrite(b, v, got) {
					bad("holds a torn or mixed version %d: %s", v, o.describeTear(b, v, got))
					break
				}
				// Torn by the crash (see tornWrites): recorded, and the block
				// no longer holds any version, so nothing is expected of it
				// until it is written again.
				if o.tornSeen[b] != string(got) { // a block left torn is reported once
					o.tears = append(o.tears, desc)
				}
				o.tornSeen[b] = string(got)
				o.floor[b], o.acked[b] = 0, 0
				continue
			}
			if v == o.floor[b] {
				exact++
			} else {
				newer++
			}
			o.floor[b], o.acked[b] = v, v
		}
	}
	summary = fmt.Sprintf("%d blocks: %d at their flushed version, %d newer (unflushed but kept), %d zero", o.blocks, exact, newer, zeros)
	return violations, summary
}

// writeBatch writes n random blocks one at a time, then flushes; it stops at
// the first error and returns it. Acknowledged and flushed versions are
// recorded as in run.
func (o *oracle) writeBatch(dev blockDevice, rng *rand.Rand, n int) error {
	for i := 0; i < n; i++ {
		o.mu.Lock()
		b := rng.IntN(o.blocks)
		o.issued[b]++
		v := o.issued[b]
		o.mu.Unlock()
		if err := dev.WriteAt(o.payload(b, v), int64(b)*blockSize, false); err != nil {
			return err
		}
		o.mu.Lock()
		o.acked[b] = v
		o.mu.Unlock()
	}
	o.mu.Lock()
	snap := append([]uint64(nil), o.acked...)
	o.mu.Unlock()
	if err := dev.Flush(); err != nil {
		return err
	}
	o.mu.Lock()
	for b, v := range snap {
		o.floor[b] = max(o.floor[b], v)
	}
	o.mu.Unlock()
	return nil
}

// describeTear says which byte ranges of a block differ from version v and
// which other version of the block each of them matches, if any.
func (o *oracle) describeTear(b int, v uint64, got []byte) string {
	want := o.payload(b, v)
	var out []string
	for i := 0; i < blockSize; {
		if got[i] == want[i] {
			i++
			continue
		}
		j := i
		for j < blockSize && got[j] != want[j] {
			j++
		}
		from := "no other version"
		for w := uint64(1); w <= o.issued[b]; w++ {
			if w != v && bytes.Equal(got[i:j], o.payload(b, w)[i:j]) {
				from = fmt.Sprintf("version %d", w)
				break
			}
		}
		if bytes.Equal(got[i:j], make([]byte, j-i)) {
			from = "zeros"
		}
		out = append(out, fmt.Sprintf("bytes [%d,%d) from %s", i, j, from))
		if len(out) == 4 {
			out = append(out, "…")
			break
		}
		i = j
	}
	return strings.Join(out, ", ")
}

// tornByLaterWrite reports whether every byte of block b that differs from
// version v holds the same bytes in some version newer than v that was issued
// (a write in flight, or not flushed, at the crash).
func (o *oracle) tornByLaterWrite(b int, v uint64, got []byte) bool {
	want := o.payload(b, v)
	for i := 0; i < blockSize; {
		if got[i] == want[i] {
			i++
			continue
		}
		j := i
		for j < blockSize && got[j] != want[j] {
			j++
		}
		found := false
		for w := v + 1; w <= o.issued[b] && !found; w++ {
			found = bytes.Equal(got[i:j], o.payload(b, w)[i:j])
		}
		if !found {
			return false
		}
		i = j
	}
	return true
}
