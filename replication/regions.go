package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"math/bits"
	"os"
	"slices"
	"sync"

	"github.com/cairn-storage/cairn/internal/atomicfile"
)

// RegionSize is the granularity of what a coordinator records as changed
// for a replica that is out of the in-sync set, and of what a resync copies.
const RegionSize = 1 << 20

// regions is a set of RegionSize regions of a volume: a bitmap, 2 KiB per
// 16 GiB. Safe for concurrent use.
type regions struct {
	mu    sync.Mutex
	words []uint64 // REQUIRES mu
	gen   uint64   // REQUIRES mu; grows with every change
	n     int      // regions in the volume
}

func newRegions(size int64) *regions {
	n := int((size + RegionSize - 1) / RegionSize)
	return &regions{words: make([]uint64, (n+63)/64), n: n}
}

// span returns the regions [first, last] that [off, off+n) touches.
func span(off, n int64) (first, last int) {
	if n <= 0 {
		n = 1
	}
	return int(off / RegionSize), int((off + n - 1) / RegionSize)
}

// add marks the regions [off, off+n) touches and reports whether any was
// not marked before.
func (r *regions) add(off, n int64) bool {
	first, last := span(off, n)
	last = min(last, r.n-1)
	r.mu.Lock()
	defer r.mu.Unlock()
	added := false
	for i := first; i <= last; i++ {
		w, b := i/64, uint64(1)<<(i%64)
		if r.words[w]&b == 0 {
			r.words[w] |= b
			added = true
		}
	}
	if added {
		r.gen++
	}
	return added
}

// addAll marks every region (a full copy).
func (r *regions) addAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	for i := range r.words {
		r.words[i] = ^uint64(0)
	}
	if rem := r.n % 64; rem != 0 {
		r.words[len(r.words)-1] = 1<<rem - 1
	}
}

// union adds every region of o.
func (r *regions) union(o *regions) {
	o.mu.Lock()
	words := append([]uint64(nil), o.words...)
	o.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	for i := range min(len(words), len(r.words)) {
		r.words[i] |= words[i]
	}
}

// remove unmarks region i.
func (r *regions) remove(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.words[i/64] &^= 1 << (i % 64)
	r.gen++
}

// next returns the first marked region at or after i, or -1.
func (r *regions) next(i int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for w := i / 64; w < len(r.words); w++ {
		word := r.words[w]
		if w == i/64 {
			word &^= 1<<(i%64) - 1
		}
		if word != 0 {
			return w*64 + bits.TrailingZeros64(word)
		}
	}
	return -1
}

// count returns how many regions are marked.
func (r *regions) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := 0
	for _, w := range r.words {
		c += bits.OnesCount64(w)
	}
	return c
}

// orInto ORs the marked set into words (a bitmap of as many words).
func (r *regions) orInto(words []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range min(len(words), len(r.words)) {
		words[i] |= r.words[i]
	}
}

// swap returns the marked set and leaves r empty.
func (r *regions) swap() *regions {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := &regions{words: r.words, n: r.n}
	r.words = make([]uint64, len(old.words))
	return old
}

// A region log is the durable record of the regions an out-of-sync replica
// misses, kept by the coordinator that evicted it (a file per volume and
// replica node in the coordinator's state directory). Format, version 1
// (part of the on-disk format — do not change; big-endian):
//
//	 0          8         12        16        24
//	+----------+---------+---------+---------+----------------+---------+
//	|"CAIRNRGN"| version | regions | epoch   | bitmap (8 bytes | crc32c  |
//	|          |         |         |         | per 64 regions) |         |
//	+----------+---------+---------+---------+----------------+---------+
//
// epoch: the volume's epoch when the log was started (informational). crc32c
// (Castagnoli) covers everything before it. A log whose size, magic,
// version or checksum is wrong is refused; the caller treats a missing or
// refused log as "every region" (a full copy), never as "nothing".
const regionLogMagic = "CAIRNRGN"

const regionLogVersion = 1

// regionLog is a regions set backed by a file: marks are durable before
// mark returns.
type regionLog struct {
	*regions
	path  string
	epoch uint64
	saved uint64     // REQUIRES regions.mu; the gen the file holds
	wmu   sync.Mutex // serialises writes of the file
}

// loadRegionLog reads the log at path for a volume of size bytes. A missing
// or unreadable log comes back with every region marked, and the error
// saying why (nil when the file was simply missing).
func loadRegionLog(path string, size int64) (*regionLog, error) {
	l := &regionLog{regions: newRegions(size), path: path}
	b, err := os.ReadFile(path)
	if err == nil {
		err = l.decode(b)
	}
	if err != nil {
		l.addAll()
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
		return l, err
	}
	return l, nil
}

// decode reads a log file. A log of fewer regions than the volume has is
// one kept before the volume grew: every replica grew before the new size
// was recorded (control's resize), and reads zeros past the old end, so
// the new regions are where no replica differs.
func (l *regionLog) decode(b []byte) error {
	if len(b) < 24 {
		return fmt.Errorf("replication: region log %s: %d bytes", l.path, len(b))
	}
	n := int(binary.BigEndian.Uint32(b[12:]))
	nw := (n + 63) / 64
	want := 24 + 8*nw + 4
	switch {
	case string(b[:8]) != regionLogMagic:
		return fmt.Errorf("replication: region log %s: bad magic", l.path)
	case binary.BigEndian.Uint32(b[8:]) != regionLogVersion:
		return fmt.Errorf("replication: region log %s: version %d", l.path, binary.BigEndian.Uint32(b[8:]))
	case n > l.n:
		return fmt.Errorf("replication: region log %s: %d regions, more than the volume's %d", l.path, n, l.n)
	case len(b) != want:
		return fmt.Errorf("replication: region log %s: %d bytes, want %d", l.path, len(b), want)
	case crc32.Checksum(b[:want-4], castagnoli) != binary.BigEndian.Uint32(b[want-4:]):
		return fmt.Errorf("replication: region log %s: checksum mismatch", l.path)
	}
	l.epoch = binary.BigEndian.Uint64(b[16:])
	for i := range nw {
		l.words[i] = binary.BigEndian.Uint64(b[24+8*i:])
	}
	if rem := n % 64; rem != 0 {
		l.words[nw-1] &= 1<<rem - 1 // bits past the old end are not regions
	}
	return nil
}

// save writes the set to the file, durably (write, fsync, rename), unless
// the file already holds generation upTo.
func (l *regionLog) save(upTo uint64) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	if l.saved >= upTo {
		l.mu.Unlock()
		return nil // a save that began after ours was needed did it
	}
	gen := l.gen
	words := slices.Clone(l.words)
	l.mu.Unlock()
	b := make([]byte, 0, 24+8*len(words)+4)
	b = append(b, regionLogMagic...)
	b = binary.BigEndian.AppendUint32(b, regionLogVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(l.n))
	b = binary.BigEndian.AppendUint64(b, l.epoch)
	for _, w := range words {
		b = binary.BigEndian.AppendUint64(b, w)
	}
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	if err := atomicfile.WriteFile(l.path, b, 0o644); err != nil {
		return fmt.Errorf("replication: region log: %w", err)
	}
	l.mu.Lock()
	l.saved = max(l.saved, gen)
	l.mu.Unlock()
	return nil
}

// sync makes everything marked so far durable.
func (l *regionLog) sync() error {
	l.mu.Lock()
	gen := l.gen
	l.mu.Unlock()
	return l.save(gen)
}

// rewrite writes the file again, even if it held this set already: another
// log of the same path may have replaced it since.
func (l *regionLog) rewrite() error {
	l.mu.Lock()
	l.saved = 0
	l.gen++
	gen := l.gen
	l.mu.Unlock()
	return l.save(gen)
}

// mark adds [off, off+n) and returns once the file holds it — also when
// another caller marked the region first and its save is still under way:
// the caller acknowledges a write only after.
func (l *regionLog) mark(off, n int64) error {
	l.add(off, n)
	l.mu.Lock()
	gen, saved := l.gen, l.saved
	l.mu.Unlock()
	if saved >= gen {
		return nil
	}
	return l.save(gen)
}
