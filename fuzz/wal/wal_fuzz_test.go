// Package walfuzz fuzzes the write-ahead log's decoder: wal.Replay over a
// region holding arbitrary bytes, and over logs written by wal.Writer and then
// crashed (unsynced frames dropped, applied or torn) at fuzzed points.
package walfuzz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/wal"
)

const (
	regionBase = 8192
	logID      = 0x5eed
	// maxRegion bounds the region a fuzz input may describe (inputs are cut).
	maxRegion = 256 << 10
)

type frame struct {
	typ     wal.Type
	seq     uint64
	payload []byte
}

func replay(dev wal.Device, r wal.Region) ([]frame, wal.Position, error) {
	var got []frame
	pos, err := wal.Replay(dev, r, logID, 1, func(typ wal.Type, seq uint64, p []byte) error {
		got = append(got, frame{typ, seq, bytes.Clone(p)})
		return nil
	})
	return got, pos, err
}

// FuzzWALReplay: a region holding arbitrary bytes (seeded with real logs).
// Replay must not panic, must return only ErrCorrupt as its own error, must
// hand out frames in seq order from 1 with bounded payloads, must stop inside
// the region at a sector boundary, and must say the same thing twice.
func FuzzWALReplay(f *testing.F) {
	for _, s := range walSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > maxRegion {
			raw = raw[:maxRegion]
		}
		size := (int64(len(raw)) + wal.SectorSize - 1) / wal.SectorSize * wal.SectorSize
		if size == 0 {
			size = wal.SectorSize
		}
		dev := drive.NewMem("fuzz", regionBase+size+wal.SectorSize)
		dev.Poke(regionBase, raw)
		r := wal.Region{Base: regionBase, Size: size}
		got, pos, err := replay(dev, r)
		if err != nil && !errors.Is(err, wal.ErrCorrupt) {
			t.Fatalf("replay: unexpected error kind: %v", err)
		}
		for i, fr := range got {
			if fr.seq != uint64(i+1) {
				t.Fatalf("frame %d has seq %d", i, fr.seq)
			}
			if len(fr.payload) > wal.MaxPayload || int64(len(fr.payload)) > size {
				t.Fatalf("frame %d: payload of %d bytes from a %d-byte region", i, len(fr.payload), size)
			}
		}
		if err == nil && (pos.Off < 0 || pos.Off > size || pos.Off%wal.SectorSize != 0 || pos.Seq != uint64(len(got))+1) {
			t.Fatalf("replay ended at %+v after %d frames in a %d-byte region", pos, len(got), size)
		}
		again, pos2, err2 := replay(dev, r)
		if (err == nil) != (err2 == nil) || pos != pos2 || len(again) != len(got) {
			t.Fatalf("replay is not deterministic: %d frames %+v %v, then %d frames %+v %v", len(got), pos, err, len(again), pos2, err2)
		}
	})
}

// FuzzWALCrash: frames cut from fuzzed data are written by a Writer in
// batches, some batches synced, then the drive crashes (seeded). Replay must
// return every synced frame and an in-order prefix of the rest, exactly as
// written, and never an error: a crash only tears the tail. Then the log
// continues from where replay stopped and replays whole again.
func FuzzWALCrash(f *testing.F) {
	f.Add([]byte("hello, world; a second frame; and a third one that is longer than the rest"), uint64(1), uint8(3), uint8(0x5a))
	f.Add(bytes.Repeat([]byte{0xA5}, 9000), uint64(7), uint8(2), uint8(0))
	f.Add([]byte{}, uint64(0), uint8(0), uint8(0xff))
	f.Fuzz(func(t *testing.T, data []byte, seed uint64, batch, syncMask uint8) {
		if len(data) > 64<<10 {
			data = data[:64<<10]
		}
		rng := rand.New(rand.NewPCG(seed, 0xc0ffee))
		// Cut data into frames of 0..~6000 bytes (some span several sectors).
		var frames [][]byte
		for len(data) > 0 && len(frames) < 64 {
			n := min(len(data), rng.IntN(6000))
			frames = append(frames, data[:n])
			data = data[n:]
		}
		dev := drive.NewMem("crash", regionBase+1<<20+wal.SectorSize)
		dev.TearSize = 512 // tear inside a sector: worse than the engine's 4 KiB assumption
		r := wal.Region{Base: regionBase, Size: 1 << 20}
		w := wal.NewWriter(dev, r, wal.Start(logID, 1))
		per := int(batch%4) + 1
		durable, written := 0, 0
		for i := 0; i < len(frames); {
			j := min(i+per, len(frames))
			for _, p := range frames[i:j] {
				if err := w.Append(1, p); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Write(); err != nil {
				t.Fatal(err)
			}
			written = j
			if syncMask>>(uint(i/per)%8)&1 == 1 {
				if err := w.Sync(); err != nil {
					t.Fatal(err)
				}
				durable = j
			}
			i = j
		}
		dev.Crash(rng)
		got, pos, err := replay(dev, r)
		if err != nil {
			t.Fatalf("replay after a crash: %v (durable %d of %d frames)", err, durable, written)
		}
		if len(got) < durable || len(got) > written {
			t.Fatalf("replayed %d frames; %d were durable, %d written", len(got), durable, written)
		}
		for i, fr := range got {
			if !bytes.Equal(fr.payload, frames[i]) {
				t.Fatalf("frame %d differs from what was written", i)
			}
		}
		w2 := wal.NewWriter(dev, r, pos)
		extra := binary.LittleEndian.AppendUint64(nil, seed)
		if err := w2.Append(2, extra); err != nil {
			t.Fatal(err)
		}
		if err := w2.Write(); err != nil {
			t.Fatal(err)
		}
		if err := w2.Sync(); err != nil {
			t.Fatal(err)
		}
		got2, _, err := replay(dev, r)
		if err != nil || len(got2) != len(got)+1 || !bytes.Equal(got2[len(got)].payload, extra) {
			t.Fatalf("after continuing the log: %d frames (want %d), err %v", len(got2), len(got)+1, err)
		}
	})
}

// walSeeds are real logs: frames of several sizes, one with a torn tail, one
// with a flipped byte in the middle (corruption), one of another log id.
func walSeeds() [][]byte {
	mk := func(n int, id uint64) []byte {
		dev := drive.NewMem("seed", regionBase+64<<10)
		r := wal.Region{Base: regionBase, Size: 48 << 10}
		w := wal.NewWriter(dev, r, wal.Start(id, 1))
		for i := 0; i < n; i++ {
			w.Append(wal.Type(1+i%3), bytes.Repeat([]byte{byte('a' + i)}, 1+i*1500))
			w.Write()
			w.Sync()
		}
		return dev.Bytes()[regionBase : regionBase+r.Size]
	}
	good := mk(5, logID)
	torn := bytes.Clone(good)
	clear(torn[4*wal.SectorSize+100 : 6*wal.SectorSize])
	flipped := bytes.Clone(good)
	flipped[wal.SectorSize+60] ^= 1
	return [][]byte{good, torn, flipped, mk(3, logID+1), good[:wal.SectorSize]}
}
