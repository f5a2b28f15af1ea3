package wal

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// Part of the on-disk format — do not change.
const (
	SectorSize = 4096       // frames start on, and are padded to, this boundary
	HeaderSize = 56         // bytes before the payload
	magic      = 0x4c415743 // "CWAL"
	// MaxPayload bounds one frame; lengths read from disk above it are invalid
	// and are never used to allocate.
	MaxPayload = 16 << 20
)

// Type says what a frame's payload holds; the log itself does not interpret it.
type Type uint8

var (
	ErrCorrupt = errors.New("wal: corrupt frame")
	ErrFull    = errors.New("wal: log region full")
	ErrTooBig  = errors.New("wal: frame payload too large")
)

type header struct {
	typ        Type
	length     uint32
	logID      uint64
	seq        uint64
	durableSeq uint64
	prevSum    uint64
	sum        uint64
}

// frameSize is the on-disk size of a frame with an n-byte payload.
func frameSize(n int) int {
	return (HeaderSize + n + SectorSize - 1) / SectorSize * SectorSize
}

// encode writes header and payload into dst (len ≥ frameSize) and returns the checksum.
func encode(dst []byte, h header, payload []byte) uint64 {
	binary.LittleEndian.PutUint32(dst[0:], magic)
	dst[4] = byte(h.typ)
	dst[5], dst[6], dst[7] = 0, 0, 0
	binary.LittleEndian.PutUint32(dst[8:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(dst[12:], 0)
	binary.LittleEndian.PutUint64(dst[16:], h.logID)
	binary.LittleEndian.PutUint64(dst[24:], h.seq)
	binary.LittleEndian.PutUint64(dst[32:], h.durableSeq)
	binary.LittleEndian.PutUint64(dst[40:], h.prevSum)
	n := copy(dst[HeaderSize:], payload)
	clear(dst[HeaderSize+n : frameSize(n)])
	sum := checksum(dst[:48], payload)
	binary.LittleEndian.PutUint64(dst[48:], sum)
	return sum
}

func checksum(head, payload []byte) uint64 {
	var d xxhash.Digest
	d.Reset()
	d.Write(head)
	d.Write(payload)
	return d.Sum64()
}

// decodeHeader parses the fixed part; it checks only what it can without the
// payload (magic, reserved bytes, length bound).
func decodeHeader(b []byte) (header, bool) {
	if len(b) < HeaderSize || binary.LittleEndian.Uint32(b[0:]) != magic || b[5]|b[6]|b[7] != 0 ||
		binary.LittleEndian.Uint32(b[12:]) != 0 {
		return header{}, false
	}
	h := header{
		typ:        Type(b[4]),
		length:     binary.LittleEndian.Uint32(b[8:]),
		logID:      binary.LittleEndian.Uint64(b[16:]),
		seq:        binary.LittleEndian.Uint64(b[24:]),
		durableSeq: binary.LittleEndian.Uint64(b[32:]),
		prevSum:    binary.LittleEndian.Uint64(b[40:]),
		sum:        binary.LittleEndian.Uint64(b[48:]),
	}
	if h.length > MaxPayload {
		return header{}, false
	}
	return h, true
}

func (h header) String() string {
	return fmt.Sprintf("frame seq %d type %d len %d", h.seq, h.typ, h.length)
}
