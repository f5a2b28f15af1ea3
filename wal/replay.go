package wal

import (
	"fmt"
)

// HoleSkipper is a device that knows where it holds only zeros (a sparse
// file): the tail check skips those ranges instead of reading them.
type HoleSkipper interface {
	// NextData returns the first offset ≥ off that may hold data; false when
	// there is none before the end.
	NextData(off int64) (int64, bool)
}

// ReadAheader is a device whose readahead can be turned on while the log is
// read in order.
type ReadAheader interface {
	ReadAhead(on bool)
}

// Replay reads the log in region from its start (logID, first seq startSeq,
// prev sum 0) and calls fn for every valid frame in order. It stops quietly at
// a torn tail and returns the Position to continue writing at. A bad frame
// that a later valid frame of the same log proves was durable is corruption:
// Replay returns an error wrapping ErrCorrupt that names the offset.
// A read error from dev stops replay with an error that wraps it (not
// ErrCorrupt) and names the offset. An error from fn stops replay and is
// returned as is.
func Replay(dev Device, region Region, logID, startSeq uint64, fn func(typ Type, seq uint64, payload []byte) error) (Position, error) {
	// Replay reads the whole region (the chain, then the tail check) in order.
	if ra, ok := dev.(ReadAheader); ok {
		ra.ReadAhead(true)
		defer ra.ReadAhead(false)
	}
	pos := Start(logID, startSeq)
	var hbuf [SectorSize]byte
	var payload []byte
	for pos.Off+SectorSize <= region.Size {
		h, ok, err := readFrame(dev, region, pos.Off, hbuf[:], &payload)
		if err != nil {
			return pos, err
		}
		if !ok || h.logID != logID || h.seq != pos.Seq || h.prevSum != pos.PrevSum {
			break
		}
		if err := fn(h.typ, h.seq, payload); err != nil {
			return pos, err
		}
		pos.Off += int64(frameSize(int(h.length)))
		pos.Seq++
		pos.PrevSum = h.sum
	}
	// Everything replayed is durable now (it was read back from the device).
	pos.DurableSeq = pos.Seq - 1
	if err := checkTail(dev, region, pos, hbuf[:], &payload); err != nil {
		return pos, err
	}
	return pos, nil
}

// checkTail scans past the end of the chain for a valid frame of the same log
// that was written after the missing seq had been made durable. It reads the
// rest of the region in large chunks (the common tail is empty space).
func checkTail(dev Device, region Region, pos Position, hbuf []byte, payload *[]byte) error {
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	skipper, _ := dev.(HoleSkipper)
	for base := pos.Off + SectorSize; base+SectorSize <= region.Size; base += chunk {
		if skipper != nil {
			next, ok := skipper.NextData(region.Base + base)
			if !ok {
				break // only holes (zeros) to the end of the device
			}
			if skip := (next - region.Base) &^ (SectorSize - 1); skip > base {
				base = skip
				if base+SectorSize > region.Size {
					break
				}
			}
		}
		n := min(int64(chunk), region.Size-base) / SectorSize * SectorSize
		if err := dev.ReadAt(buf[:n], region.Base+base); err != nil {
			return fmt.Errorf("wal: read at %d: %w", region.Base+base, err)
		}
		for i := int64(0); i < n; i += SectorSize {
			h, ok := decodeHeader(buf[i:])
			if !ok || h.logID != pos.LogID || h.seq <= pos.Seq || h.durableSeq < pos.Seq {
				continue
			}
			// A read error is not "not a frame": taking it as one could turn
			// mid-log corruption into a torn tail that the next commit
			// overwrites. Recovery stops instead.
			_, ok, err := readFrame(dev, region, base+i, hbuf, payload)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			return fmt.Errorf("%w: at offset %d (seq %d): frame seq %d at offset %d was written after it was durable",
				ErrCorrupt, region.Base+pos.Off, pos.Seq, h.seq, region.Base+base+i)
		}
	}
	return nil
}

// readFrame reads and verifies the frame at off; ok is false for anything that
// is not a whole valid frame. payload is reused between calls.
func readFrame(dev Device, region Region, off int64, hbuf []byte, payload *[]byte) (header, bool, error) {
	if err := dev.ReadAt(hbuf[:SectorSize], region.Base+off); err != nil {
		return header{}, false, fmt.Errorf("wal: read at %d: %w", region.Base+off, err)
	}
	h, ok := decodeHeader(hbuf)
	if !ok || off+int64(frameSize(int(h.length))) > region.Size {
		return header{}, false, nil
	}
	n := int(h.length)
	if cap(*payload) < n {
		*payload = make([]byte, n)
	}
	p := (*payload)[:n]
	inFirst := copy(p, hbuf[HeaderSize:SectorSize])
	if inFirst < n {
		if err := dev.ReadAt(p[inFirst:], region.Base+off+SectorSize); err != nil {
			return header{}, false, fmt.Errorf("wal: read at %d: %w", region.Base+off+SectorSize, err)
		}
	}
	if checksum(hbuf[:48], p) != h.sum {
		return header{}, false, nil
	}
	*payload = p
	return h, true, nil
}
