package engine

import (
	"encoding/binary"
	"fmt"
)

// Metadata records and checkpoints (part of the on-disk format — do not change).
//
// A records frame's payload is a sequence of records, each a type byte then
// fixed little-endian fields (strings are u16 length + bytes):
//
//	recCreateVolume  vol u32 | uid u64 | size u64 | created i64 | prio u8 | repl u8 | sticky u8 | snap u32 | bs u32 | name str
//	                 | readonly u8 | snap keep u32 | parent str
//	recSetAttrs      vol u32 | size u64 | sticky u8 | snap u32 | snap keep u32
//	recSnapshot      src u32 | create-record fields      (a new volume sharing src's extents: snapshot or clone)
//	recRemap         vol u32 | lext u32 | phys u32       (copy-on-write: lext now on a private extent)
//	recRestore       vol u32 | src u32                   (vol's mapping becomes a copy of src's)
//	recDeleteVolume  vol u32
//	recMapExtent     vol u32 | lext u32 | phys u32
//	recUnmapExtent   vol u32 | lext u32
//	recReserve       n u32 | n × phys u32        (extents writers may map; zeroed at recovery if still unmapped)
//	recAddDrive      uuid [16] | extents u32
//	recRedirect      vol u32 | lext u32 | phys u32       (lext now on phys, filling from lext's previous extent: fill.go)
//	recFilled        phys u32 | bitmap 4 × u64           (these blocks of filling phys hold their data; bit i of word w = block 64w+i)
//	recFillDone      phys u32                            (phys is complete; its base loses phys's reference)
//	recRound         flags u8                            (first record of a commit round; flag 1: unordered, see pool.round)
//
// A checkpoint (one or more frames of type frameCheckpoint, the last of type
// frameCheckpointEnd, concatenated) is the whole pool state at one instant:
//
//	magic u32 "CKP1" | next vol u32 | drives u32 | drives × (uuid [16] | extents u32)
//	| volumes u32 | volumes × (create-record fields | mapped u32 | mapped × (lext u32 | phys u32))
//	| reserved u32 | reserved × phys u32
//	| condemned u32 | condemned × phys u32                (candidates: zeroed at load unless referenced)
//	[ | filling u32 | filling × (phys u32 | base u32 | filled bitmap [32]) ]   (only when some extent is filling)
//
// Every count and length read back is bounded by the bytes that remain before
// anything is allocated for it.
const (
	recCreateVolume byte = 1 + iota
	recSetAttrs
	recDeleteVolume
	recMapExtent
	recUnmapExtent
	recReserve
	_ // 7: unused
	recAddDrive
	recSnapshot
	recRemap
	recRestore
	recRedirect
	recFilled
	recFillDone
	recRound
)

// recRound flags.
const roundUnordered = 1

// Frame types in the pool's log.
const (
	frameRecords       = 1
	frameCheckpoint    = 2
	frameCheckpointEnd = 3
)

const checkpointMagic = 0x31504b43 // "CKP1"

// volumeMeta is what a volume is, apart from its mapping.
type volumeMeta struct {
	id           uint32
	uid          uint64
	name         string
	size         int64
	created      int64
	priority     IOPriority // requested
	repl         uint8
	sticky       bool
	snapInterval uint32
	blockSize    uint32
	readOnly     bool   // a snapshot
	snapKeep     uint32 // scheduled snapshots kept (0 = default)
	parent       string // the volume a snapshot was taken of, the snapshot a clone was made from
}

type enc struct{ b []byte }

func (e *enc) u8(v byte)    { e.b = append(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) str(s string) {
	e.b = binary.LittleEndian.AppendUint16(e.b, uint16(len(s)))
	e.b = append(e.b, s...)
}
func (e *enc) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

func (e *enc) meta(m *volumeMeta) {
	e.u32(m.id)
	e.u64(m.uid)
	e.u64(uint64(m.size))
	e.u64(uint64(m.created))
	e.u8(priorityCode(m.priority))
	e.u8(m.repl)
	e.bool(m.sticky)
	e.u32(m.snapInterval)
	e.u32(m.blockSize)
	e.str(m.name)
	e.bool(m.readOnly)
	e.u32(m.snapKeep)
	e.str(m.parent)
}

// dec reads bounded fields; the first short read sets err and every later
// read returns zero.
type dec struct {
	b   []byte
	off int
	err error
}

func (d *dec) need(n int) bool {
	if d.err != nil {
		return false
	}
	if n < 0 || len(d.b)-d.off < n {
		d.err = fmt.Errorf("%w: record truncated at byte %d (need %d, have %d)", ErrCorrupt, d.off, n, len(d.b)-d.off)
		return false
	}
	return true
}
func (d *dec) u8() byte {
	if !d.need(1) {
		return 0
	}
	d.off++
	return d.b[d.off-1]
}
func (d *dec) u32() uint32 {
	if !d.need(4) {
		return 0
	}
	d.off += 4
	return binary.LittleEndian.Uint32(d.b[d.off-4:])
}
func (d *dec) u64() uint64 {
	if !d.need(8) {
		return 0
	}
	d.off += 8
	return binary.LittleEndian.Uint64(d.b[d.off-8:])
}
func (d *dec) str() string {
	if !d.need(2) {
		return ""
	}
	n := int(binary.LittleEndian.Uint16(d.b[d.off:]))
	d.off += 2
	if !d.need(n) {
		return ""
	}
	d.off += n
	return string(d.b[d.off-n : d.off])
}
func (d *dec) done() bool { return d.err == nil && d.off == len(d.b) }

// count reads a u32 count of items at least minSize bytes each and rejects a
// count the remaining bytes cannot hold (so nothing is allocated for a lie).
func (d *dec) count(minSize int) int {
	n := int(d.u32())
	if d.err == nil && n > (len(d.b)-d.off)/minSize {
		d.err = fmt.Errorf("%w: count %d at byte %d exceeds the %d bytes left", ErrCorrupt, n, d.off-4, len(d.b)-d.off)
		return 0
	}
	return n
}

func (d *dec) meta() volumeMeta {
	m := volumeMeta{id: d.u32(), uid: d.u64(), size: int64(d.u64()), created: int64(d.u64())}
	p := d.u8()
	if int(p) >= len(priorityCodes) && d.err == nil {
		d.err = fmt.Errorf("%w: io_priority code %d", ErrCorrupt, p)
		return m
	}
	if d.err == nil {
		m.priority = priorityCodes[p]
	}
	m.repl = d.u8()
	m.sticky = d.u8() != 0
	m.snapInterval = d.u32()
	m.blockSize = d.u32()
	m.name = d.str()
	m.readOnly = d.u8() != 0
	m.snapKeep = d.u32()
	m.parent = d.str()
	return m
}

// record is one decoded metadata record.
type record struct {
	typ     byte
	meta    volumeMeta // recCreateVolume, recSnapshot; recSetAttrs uses size, sticky, snapInterval, snapKeep
	vol     uint32
	lext    uint32
	phys    uint32
	src     uint32   // recSnapshot, recRestore
	exts    []uint32 // recReserve
	uuid    [16]byte
	extents uint32
	bitmap  [blocksPerExtent / 64]uint64 // recFilled
	flags   byte                         // recRound
}

func appendRecord(b []byte, r *record) []byte {
	e := enc{b}
	e.u8(r.typ)
	switch r.typ {
	case recCreateVolume:
		e.meta(&r.meta)
	case recSetAttrs:
		e.u32(r.vol)
		e.u64(uint64(r.meta.size))
		e.bool(r.meta.sticky)
		e.u32(r.meta.snapInterval)
		e.u32(r.meta.snapKeep)
	case recSnapshot:
		e.u32(r.src)
		e.meta(&r.meta)
	case recRemap, recRedirect:
		e.u32(r.vol)
		e.u32(r.lext)
		e.u32(r.phys)
	case recFilled:
		e.u32(r.phys)
		for _, w := range r.bitmap {
			e.u64(w)
		}
	case recFillDone:
		e.u32(r.phys)
	case recRound:
		e.u8(r.flags)
	case recRestore:
		e.u32(r.vol)
		e.u32(r.src)
	case recDeleteVolume:
		e.u32(r.vol)
	case recMapExtent:
		e.u32(r.vol)
		e.u32(r.lext)
		e.u32(r.phys)
	case recUnmapExtent:
		e.u32(r.vol)
		e.u32(r.lext)
	case recReserve:
		e.u32(uint32(len(r.exts)))
		for _, x := range r.exts {
			e.u32(x)
		}
	case recAddDrive:
		e.b = append(e.b, r.uuid[:]...)
		e.u32(r.extents)
	default:
		panic(fmt.Sprintf("engine: unknown record type %d", r.typ)) // programming error, never input
	}
	return e.b
}

// decodeRecords calls fn for each record of a records frame.
func decodeRecords(p []byte, fn func(*record) error) error {
	d := dec{b: p}
	var r record
	for d.err == nil && d.off < len(p) {
		// Fast path for the extent records most of a log is made of.
		if t, left := p[d.off], p[d.off+1:]; (t == recMapExtent || t == recRemap || t == recRedirect) && len(left) >= 12 || t == recUnmapExtent && len(left) >= 8 {
			r = record{typ: t, vol: binary.LittleEndian.Uint32(left), lext: binary.LittleEndian.Uint32(left[4:])}
			d.off += 9
			if t != recUnmapExtent {
				r.phys = binary.LittleEndian.Uint32(left[8:])
				d.off += 4
			}
			if err := fn(&r); err != nil {
				return err
			}
			continue
		}
		r = record{typ: d.u8()}
		switch r.typ {
		case recCreateVolume:
			r.meta = d.meta()
			r.vol = r.meta.id
		case recSetAttrs:
			r.vol = d.u32()
			r.meta.size = int64(d.u64())
			r.meta.sticky = d.u8() != 0
			r.meta.snapInterval = d.u32()
			r.meta.snapKeep = d.u32()
		case recSnapshot:
			r.src = d.u32()
			r.meta = d.meta()
			r.vol = r.meta.id
		case recRemap, recRedirect:
			r.vol, r.lext, r.phys = d.u32(), d.u32(), d.u32()
		case recFilled:
			r.phys = d.u32()
			for w := range r.bitmap {
				r.bitmap[w] = d.u64()
			}
		case recFillDone:
			r.phys = d.u32()
		case recRound:
			r.flags = d.u8()
		case recRestore:
			r.vol, r.src = d.u32(), d.u32()
		case recDeleteVolume:
			r.vol = d.u32()
		case recMapExtent:
			r.vol, r.lext, r.phys = d.u32(), d.u32(), d.u32()
		case recUnmapExtent:
			r.vol, r.lext = d.u32(), d.u32()
		case recReserve:
			n := d.count(4)
			r.exts = make([]uint32, n)
			for i := range r.exts {
				r.exts[i] = d.u32()
			}
		case recAddDrive:
			if d.need(16) {
				copy(r.uuid[:], d.b[d.off:])
				d.off += 16
			}
			r.extents = d.u32()
		default:
			return fmt.Errorf("%w: unknown record type %d at byte %d", ErrCorrupt, r.typ, d.off-1)
		}
		if d.err != nil {
			return d.err
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	return d.err
}
