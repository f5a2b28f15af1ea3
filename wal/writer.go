package wal

import (
	"fmt"
	"slices"
)

// Device is the part of a drive the log needs.
type Device interface {
	ReadAt(p []byte, off int64) error
	WriteAt(p []byte, off int64) error
	Sync() error
}

// Region is where a log lives on its device: [Base, Base+Size), both multiples
// of SectorSize.
type Region struct {
	Base, Size int64
}

// Position is where the next frame goes and what it must link to. Replay
// returns one for an existing log; Start makes one for a new log.
type Position struct {
	Off        int64 // relative to Region.Base
	LogID      uint64
	Seq        uint64 // of the next frame
	DurableSeq uint64 // every frame ≤ this is durable
	PrevSum    uint64
}

// Start is the position of a new, empty log: the chain starts at seq with prev
// sum 0. The caller records logID and seq (in its superblock) to replay it.
func Start(logID, seq uint64) Position {
	return Position{LogID: logID, Seq: seq, DurableSeq: seq - 1}
}

// Writer appends frames to a log. Not safe for concurrent use: the group
// committer's round is its only caller.
type Writer struct {
	dev     Device
	region  Region
	pos     Position
	buf     []byte // frames appended since the last Write, contiguous
	nbuf    int    // frames in buf
	bufSeq  uint64 // seq of the last frame in buf
	lastSum uint64 // checksum of the last frame in buf
}

func NewWriter(dev Device, region Region, pos Position) *Writer {
	return &Writer{dev: dev, region: region, pos: pos}
}

// Position reports where the next frame will go.
func (w *Writer) Position() Position { return w.pos }

// Used is how many bytes of the region hold frames (written or buffered).
func (w *Writer) Used() int64 { return w.pos.Off + int64(len(w.buf)) }

// Device returns the device the writer appends to.
func (w *Writer) Device() Device { return w.dev }

// Region returns the region the writer appends to.
func (w *Writer) Region() Region { return w.region }

// Append buffers one frame; Write puts buffered frames on the device.
func (w *Writer) Append(typ Type, payload []byte) error {
	if len(payload) > MaxPayload {
		return fmt.Errorf("%w: %d bytes", ErrTooBig, len(payload))
	}
	n := frameSize(len(payload))
	if w.pos.Off+int64(len(w.buf))+int64(n) > w.region.Size {
		return fmt.Errorf("%w: %d of %d bytes used, frame needs %d", ErrFull, w.Used(), w.region.Size, n)
	}
	seq := w.pos.Seq + uint64(w.nbuf)
	start := len(w.buf)
	w.buf = slices.Grow(w.buf, n)[:start+n] // encode writes every byte, padding included
	prev := w.pos.PrevSum
	if w.nbuf > 0 {
		prev = w.lastSum
	}
	w.lastSum = encode(w.buf[start:], header{typ: typ, logID: w.pos.LogID, seq: seq, durableSeq: w.pos.DurableSeq, prevSum: prev}, payload)
	w.bufSeq = seq
	w.nbuf++
	return nil
}

// Write puts every buffered frame on the device in one write (not synced).
func (w *Writer) Write() error {
	if len(w.buf) == 0 {
		return nil
	}
	if err := w.dev.WriteAt(w.buf, w.region.Base+w.pos.Off); err != nil {
		return err
	}
	w.pos.Off += int64(len(w.buf))
	w.pos.Seq = w.bufSeq + 1
	w.pos.PrevSum = w.lastSum
	w.buf, w.bufSeq, w.nbuf = w.buf[:0], 0, 0
	return nil
}

// Sync makes every written frame durable.
func (w *Writer) Sync() error {
	if err := w.dev.Sync(); err != nil {
		return err
	}
	w.Synced()
	return nil
}

// Synced tells the writer that its caller synced the device itself, after
// the last Write: every written frame is durable.
func (w *Writer) Synced() { w.pos.DurableSeq = w.pos.Seq - 1 }
