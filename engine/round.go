package engine

import (
	"bytes"
	"fmt"
	"math/bits"

	"github.com/cairn-storage/cairn/allocator"
	"github.com/cairn-storage/cairn/drive"
)

// Unordered rounds: one sync for a flush whose writes logged metadata.
//
// An ordered round (pool.round) syncs the data drives, then writes its
// records and syncs the log: two syncs one after the other, because a record
// must never describe data that a crash can still take away. A flush after a
// write that logs something — the first write to an extent after a snapshot
// (recRedirect), to a block of a filling extent (recFilled), to an unmapped
// extent of a thin volume (recMapExtent) — paid both, against one for an
// overwrite.
//
// An unordered round writes its records first and then syncs every drive
// once (on a pool of one drive the log and the data share a file: one
// fdatasync). That is safe for the records whose truth recovery can read off
// the data itself (orderFree):
//   - recReserve: reserved extents are zero, durably, before they are free.
//   - recMapExtent, recRedirect point a logical extent at a reserved (zero)
//     extent F. Where F's data did not land, a mapped extent reads zeros (a
//     thin volume's old content) and a filling one reads its base (F's bits
//     are clear): the old content either way.
//   - recFilled says "these blocks of F hold their data". A block of F that
//     nothing wrote since F was reserved is zero (only writes of that block,
//     and the filler's copies of its base into it, write there; a fill
//     state that was replayed after a crash may hold writes whose bits were
//     lost, so its bits go to ordered rounds: fillState.recovered), and a crash
//     leaves a 4 KiB block old or new (drive.AtomicSize): where no write
//     landed the block is zero; where one did, it holds one whole write of
//     that block, the data or a later write, both of which a read may show.
//     So recovery keeps a bit that an unconfirmed unordered round set only if
//     its block is not zero (checkUnorderedTail). The filler's copy of a zero
//     block of the base loses its bit that way and reads the same zeros.
//
// Every other record (a delete, an unmap, a remap after a whole copy, a
// fill's completion ...) and a checkpoint need their data synced first: a
// round with one of them is ordered.
//
// Zeros are what the check cannot tell from "not written". A write of zeros
// into a filling extent (beginZeroFill; so is a trim that zeroes a whole
// filling extent, deallocate):
//   - has its bit logged by an ordered round (zeroWriters, zeroFills);
//   - never overwrites a block whose bit an unconfirmed unordered round set
//     (recovery would read zero there, drop the bit and show the base, where
//     the flushed data or the zeros must be): while the last round that
//     logged anything was unordered (lastUnordered), the write first waits
//     for an ordered round, whose marker frame confirms it.
//
// Which round is the tail: every round that logs records starts with a
// recRound marker that says whether it is unordered; an ordered round after
// an unordered one logs the marker even alone. A round writes its frames
// only after the previous round's sync, so every round but the last one in
// the log is confirmed. Replay keeps the bits newly set after the last
// marker when that marker is unordered (poolState.tail). A log written before
// markers existed has none: its rounds were all ordered (a binary from
// before markers refuses a log that has them). Recovery's verdicts must
// last: when it drops a bit, the first round writes a checkpoint
// (mustCheckpoint), or a later frame would confirm the record that set it;
// and what it read, which after a crash of the process alone may be in the
// page cache only, is synced before anything is written (loadPool syncs
// every drive), or a later frame would confirm a bit whose data a power
// loss then takes.
//
// Costs: an ordered round that logs nothing but the marker a zero writer
// waits for still syncs the log once.

// orderFree reports whether a record may reach the log in the same sync as
// the data it describes (see above).
func orderFree(typ byte) bool {
	return typ == recReserve || typ == recMapExtent || typ == recRedirect || typ == recFilled
}

// markRound returns recs behind a recRound marker, and cuts moved to match.
// Round state: called by rounds only.
func (p *pool) markRound(recs []byte, cuts []int, unordered bool) ([]byte, []int) {
	r := record{typ: recRound}
	if unordered {
		r.flags = roundUnordered
	}
	b := appendRecord(p.roundBuf[:0], &r)
	n := len(b)
	b = append(b, recs...)
	cs := p.roundCuts[:0]
	for _, c := range cuts {
		cs = append(cs, c+n)
	}
	p.roundBuf, p.roundCuts = b, cs
	return b, cs
}

// syncUnordered writes an unordered round's records, then syncs the log
// with the data drives: one sync per drive.
func (p *pool) syncUnordered(recs []byte, cuts []int) error {
	if err := p.writeRecords(recs, cuts); err != nil {
		return err
	}
	drives := p.drivesSnapshot()
	drives[0].dirty.Store(true) // the log's drive
	if err := p.syncData(); err != nil {
		return err
	}
	p.log.Synced()
	return nil
}

// beginZeroFill is called before a write of zeros into the filling extent
// of a volume, and endZeroFill after it (the block's bit set). Between
// them every round is ordered; the write waits first for an ordered round
// when the last round that logged anything was unordered and unconfirmed.
// Both sides decide under mu: a round either saw this writer or set
// lastUnordered before the writer looked at it.
func (p *pool) beginZeroFill() error {
	p.mu.Lock()
	p.zeroWriters++
	confirm := p.lastUnordered
	p.mu.Unlock()
	if !confirm {
		return nil
	}
	// Commit waits for a round that starts after the call: ordered, since
	// this writer is counted, and marked, since lastUnordered is set.
	if err := p.commit(); err != nil {
		p.endZeroFill()
		return err
	}
	return nil
}

func (p *pool) endZeroFill() {
	p.mu.Lock()
	p.zeroWriters--
	p.zeroFills = true // the bits it set are logged by an ordered round
	p.mu.Unlock()
}

// tailFill is what one recFilled record of an unordered tail round newly
// set (poolState.tail).
type tailFill struct {
	ext  allocator.Extent
	bits [blocksPerExtent / 64]uint64
}

// checkUnorderedTail drops, from the fill states replay built, every bit an
// unconfirmed unordered round set whose block reads as zeros, and reports
// how many it dropped. Called by loadPool once the drives are attached.
func (p *pool) checkUnorderedTail(st *poolState) (int, error) {
	pb := drive.GetBuffer(BlockSize)
	defer drive.PutBuffer(pb)
	buf := pb.B[:BlockSize]
	dropped := 0
	for _, t := range st.tail {
		fs := st.fills[t.ext]
		if fs == nil {
			continue // the tail's own records ended it
		}
		m := fs.blocks.words()
		for w, word := range t.bits {
			for word != 0 {
				i := bits.TrailingZeros64(word)
				word &^= 1 << i
				blk := w*64 + i
				if err := p.readExtent(t.ext, buf, int64(blk)*BlockSize); err != nil {
					return 0, fmt.Errorf("%s: checking block %d of filling extent %d: %w", p, blk, t.ext, err)
				}
				if isZero(buf) {
					m[w] &^= 1 << i
					dropped++
				}
			}
		}
		fs.blocks.reset(m)
	}
	return dropped, nil
}

// zeroBlock is what isZero compares with.
var zeroBlock [BlockSize]byte

// isZero reports whether b holds only zero bytes (a block at a time, with
// the runtime's vectorized compare: data that is not zero stops at once).
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// hasZeroBlock reports whether any whole block of b is zero.
func hasZeroBlock(b []byte) bool {
	for ; len(b) >= BlockSize; b = b[BlockSize:] {
		if isZero(b[:BlockSize]) {
			return true
		}
	}
	return false
}
