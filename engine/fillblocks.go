package engine

import (
	"fmt"
	"math/bits"
	"runtime"
	"sync/atomic"
)

// fillBlocks is the set of a filling extent's blocks that hold their data
// (fill.go). Readers query it without locks; writers only add to it.
//
// Most extents written after a snapshot are written sparsely (a database's
// random writes touch a few blocks of each 1 MiB extent between two
// snapshots), so up to inlineMax blocks are kept inline, in one word: their
// numbers, a byte each, and a count. Adding to it is one compare-and-swap.
// Past inlineMax a 256-bit map is allocated and published once: the adder
// first seals the word (no one may add to it any more), then builds the map
// from the word's blocks and its own, then publishes it. A sealed word keeps
// the blocks it held, so a reader that still looks at it sees a subset of
// the set, as a reader that looked a moment earlier would; writers that
// find the word sealed wait the few instructions until the map is there.
// So a state costs 32 B while its extent has at most inlineMax blocks
// filled, and 32 B more past that (fillRAM).
type fillBlocks struct {
	inline atomic.Uint64 // bytes 0..inlineMax-1: block numbers; byte 7: count | inlineSealed>>56
	dense  atomic.Pointer[denseBlocks]
}

type denseBlocks [blocksPerExtent / 64]atomic.Uint64

const (
	inlineMax    = 7
	inlineSealed = uint64(1) << 63
	// denseBytes is what a map adds to a state's RAM.
	denseBytes = int64(blocksPerExtent / 8)
)

func inlineCount(w uint64) int { return int(w>>56) & 0x7f }

func inlineHas(w uint64, blk int) bool {
	for i := range inlineCount(w) {
		if int(byte(w>>(8*i))) == blk {
			return true
		}
	}
	return false
}

// inlineAdd returns w with blocks [first, first+n) added and how many of
// them are new; ok is false when they do not fit.
func inlineAdd(w uint64, first, n int) (nw uint64, newly int, ok bool) {
	if n > inlineMax {
		return w, 0, false
	}
	c := inlineCount(w)
	for blk := first; blk < first+n; blk++ {
		if inlineHas(w, blk) {
			continue
		}
		if c == inlineMax {
			return w, 0, false
		}
		w |= uint64(blk) << (8 * c)
		c++
		newly++
	}
	return w&^(uint64(0xff)<<56) | uint64(c)<<56, newly, true
}

func (s *fillBlocks) isSet(blk int) bool {
	if d := s.dense.Load(); d != nil {
		return d[blk/64].Load()&(1<<(blk%64)) != 0
	}
	return inlineHas(s.inline.Load(), blk)
}

// runOf returns how many blocks from blk on share blk's state, up to max.
func (s *fillBlocks) runOf(blk, max int) (set bool, n int) {
	set = s.isSet(blk)
	for n = 1; n < max && s.isSet(blk+n) == set; n++ {
	}
	return set, n
}

// set adds blocks [first, first+n) and returns how many were not in the set
// and whether it allocated the map (fillRAM grows by denseBytes). Safe
// with concurrent readers and adders.
func (s *fillBlocks) set(first, n int) (newly int, grew bool) {
	if first < 0 || n < 0 || first+n > blocksPerExtent {
		panic(fmt.Sprintf("engine: blocks [%d, %d) of a filling extent", first, first+n)) // a bug: the inline word would take them silently
	}
	for {
		if d := s.dense.Load(); d != nil {
			return d.set(first, n), false
		}
		w := s.inline.Load()
		if w&inlineSealed != 0 { // another adder is publishing the map
			runtime.Gosched()
			continue
		}
		if nw, k, ok := inlineAdd(w, first, n); ok {
			if k == 0 || s.inline.CompareAndSwap(w, nw) {
				return k, false
			}
			continue
		}
		if !s.inline.CompareAndSwap(w, w|inlineSealed) {
			continue
		}
		d := new(denseBlocks)
		d.or(inlineWords(w))
		newly = d.set(first, n)
		s.dense.Store(d)
		return newly, true
	}
}

// count returns how many blocks are in the set.
func (s *fillBlocks) count() int {
	if d := s.dense.Load(); d != nil {
		c := 0
		for i := range d {
			c += bits.OnesCount64(d[i].Load())
		}
		return c
	}
	return inlineCount(s.inline.Load())
}

func (s *fillBlocks) isDense() bool { return s.dense.Load() != nil }

// words returns the set as a 256-bit map (what the log and checkpoints hold).
func (s *fillBlocks) words() [blocksPerExtent / 64]uint64 {
	if d := s.dense.Load(); d != nil {
		var out [blocksPerExtent / 64]uint64
		for i := range d {
			out[i] = d[i].Load()
		}
		return out
	}
	return inlineWords(s.inline.Load())
}

// reset makes the set exactly the blocks of m. Recovery only: not safe with
// concurrent readers or adders.
func (s *fillBlocks) reset(m [blocksPerExtent / 64]uint64) {
	c := 0
	for _, w := range m {
		c += bits.OnesCount64(w)
	}
	s.inline.Store(0)
	s.dense.Store(nil)
	if c > inlineMax {
		d := new(denseBlocks)
		d.or(m)
		s.dense.Store(d)
		return
	}
	var w uint64
	i := 0
	for wi, word := range m {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			word &^= 1 << b
			w |= uint64(wi*64+b) << (8 * i)
			i++
		}
	}
	s.inline.Store(w | uint64(i)<<56)
}

// merge adds the blocks of m and returns those that were not in the set.
// Recovery only, like reset.
func (s *fillBlocks) merge(m [blocksPerExtent / 64]uint64) (newly [blocksPerExtent / 64]uint64) {
	all := s.words()
	for w := range m {
		newly[w] = m[w] &^ all[w]
		all[w] |= m[w]
	}
	if d := s.dense.Load(); d != nil {
		d.or(newly)
	} else {
		s.reset(all)
	}
	return newly
}

func inlineWords(w uint64) (m [blocksPerExtent / 64]uint64) {
	for i := range inlineCount(w) {
		blk := int(byte(w >> (8 * i)))
		m[blk/64] |= 1 << (blk % 64)
	}
	return m
}

func (d *denseBlocks) or(m [blocksPerExtent / 64]uint64) {
	for i, w := range m {
		d[i].Or(w)
	}
}

// set marks blocks [first, first+n) and returns how many were not.
func (d *denseBlocks) set(first, n int) int {
	newly := 0
	for n > 0 {
		w, b := first/64, first%64
		k := min(n, 64-b)
		mask := ^uint64(0) >> (64 - k) << b
		old := d[w].Or(mask)
		newly += bits.OnesCount64(mask &^ old)
		first, n = first+k, n-k
	}
	return newly
}
