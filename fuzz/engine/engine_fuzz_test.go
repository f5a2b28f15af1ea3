// Package enginefuzz fuzzes the engine's decoders of on-disk bytes through
// engine.Open: the drive superblock, the checkpoint and the metadata records.
// Each input is placed on a copy of a real formatted drive (with volumes and
// data); checksummed structures are re-sealed around the fuzzed bytes (the
// superblock's xxhash, valid WAL frames around checkpoint and record
// payloads) so the fuzzer reaches the decoders, not just the checksums.
//
// The seeds are made at run time (f.Add) from that drive, not stored under
// testdata: the drive's bytes hold fresh random uuids on every run, so stored
// inputs would not match it.
//
// What must hold for every input: Open neither panics nor hangs; a drive it
// refuses (an error, or a pool reported failed) received no write at all;
// and an engine that opens passes its own invariant check, serves reads and
// extent maps of every volume, and closes.
package enginefuzz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/wal"
)

const (
	nodeID    = "fuzz-node"
	driveSize = 20 << 20
	logArea   = 64 << 10 // small, so the template rotates its log and holds a checkpoint with volumes
	sbSize    = 4096
)

// Superblock fields the targets need (engine/superblock.go; on-disk format).
const (
	sbLogSizeOff  = 32
	sbActiveOff   = 93
	sbLogIDOff    = 96
	sbStartSeqOff = 104
	sbSumOff      = sbSize - 8
)

// Frame types of the engine's log (engine/records.go; on-disk format).
const (
	frameRecords       wal.Type = 1
	frameCheckpoint    wal.Type = 2
	frameCheckpointEnd wal.Type = 3
)

type template struct {
	d        *sparseDrive
	region   wal.Region
	logID    uint64
	startSeq uint64
	ckpt     []byte   // the checkpoint payload in the active area
	records  [][]byte // records frames after it
}

var (
	tmplOnce sync.Once
	tmpl     template
	tmplErr  error
)

// getTemplate formats a drive, creates volumes, writes and trims, and closes:
// a real pool at rest whose log holds a checkpoint with volumes and records.
func getTemplate(t testing.TB) template {
	tmplOnce.Do(func() { tmpl, tmplErr = buildTemplate() })
	if tmplErr != nil {
		t.Fatal(tmplErr)
	}
	return tmpl
}

func buildTemplate() (template, error) {
	d := newSparse("fuzz0", driveSize)
	e, err := engine.Open(engine.Options{NodeID: nodeID, Drives: []engine.DriveSpec{{Path: d.path, Drive: d}}, LogAreaSize: logArea})
	if err != nil {
		return template{}, err
	}
	block := bytes.Repeat([]byte("cairn!"), 4096/6+1)[:4096]
	for i, name := range []string{"a", "b", "c", "d"} {
		if _, err := e.CreateVolume(engine.VolumeSpec{Name: name, Size: int64(4+i) << 20}); err != nil {
			return template{}, err
		}
		v, _ := e.Volume(name)
		for j := 0; j < 3; j++ {
			if err := v.WriteAt(block, int64(j*(1<<20)+i*8192), false); err != nil {
				return template{}, err
			}
			if err := v.Flush(); err != nil {
				return template{}, err
			}
		}
		if i == 1 {
			if err := v.Trim(0, 1<<20); err != nil {
				return template{}, err
			}
		}
	}
	e.DeleteVolume("d")
	if _, err := e.UpdateVolume("c", engine.VolumeUpdate{Size: ptr(int64(16 << 20))}); err != nil {
		return template{}, err
	}
	v, _ := e.Volume("a")
	v.WriteAt(bytes.Repeat(block, 256), 2<<20, false) // a whole extent
	v.Flush()
	// A snapshot, and writes after it: redirect and fill records, and in
	// the checkpoints after them the filling section (engine/fill.go).
	if _, err := e.CreateSnapshot("a", "a.snap"); err != nil {
		return template{}, err
	}
	v.WriteAt(block, 1<<20+4096, false)
	v.WriteAt(block, 2<<20+8192, false)
	v.Flush()
	if err := e.Close(); err != nil {
		return template{}, err
	}
	// Until the active log holds a checkpoint with records after it: reopen,
	// write and flush once more.
	for try := 0; ; try++ {
		tp, err := inspectTemplate(d)
		if err == nil || try == 32 {
			return tp, err
		}
		e, err := engine.Open(engine.Options{NodeID: nodeID, Drives: []engine.DriveSpec{{Path: d.path, Drive: d}}})
		if err != nil {
			return template{}, err
		}
		v, _ := e.Volume("c")
		v.WriteAt(block, int64(try%16)<<20, false)
		v.Flush()
		if err := e.Close(); err != nil {
			return template{}, err
		}
	}
}

// inspectTemplate reads the active log of a drive at rest.
func inspectTemplate(d *sparseDrive) (template, error) {
	tp := template{d: d}
	sb0, sb1 := make([]byte, sbSize), make([]byte, sbSize)
	d.ReadAt(sb0, 0)
	d.ReadAt(sb1, sbSize)
	sb := sb0
	if le.Uint64(sb1[16:]) > le.Uint64(sb0[16:]) {
		sb = sb1
	}
	logSize := int64(le.Uint64(sb[sbLogSizeOff:]))
	tp.region = wal.Region{Base: 2*sbSize + int64(sb[sbActiveOff])*logSize, Size: logSize}
	tp.logID, tp.startSeq = le.Uint64(sb[sbLogIDOff:]), le.Uint64(sb[sbStartSeqOff:])
	_, err := wal.Replay(d, tp.region, tp.logID, tp.startSeq, func(typ wal.Type, _ uint64, p []byte) error {
		switch typ {
		case frameCheckpoint, frameCheckpointEnd:
			tp.ckpt = append(tp.ckpt, p...)
		case frameRecords:
			tp.records = append(tp.records, bytes.Clone(p))
		}
		return nil
	})
	if err != nil {
		return template{}, err
	}
	if tp.ckpt == nil || len(tp.records) == 0 || sb[sbActiveOff] == 0 {
		return template{}, errors.New("template: want a rotated log with a checkpoint and records after it")
	}
	return tp, nil
}

var le = binary.LittleEndian

func ptr[T any](v T) *T { return &v }

// rewriteLog replaces the active log area with a checkpoint frame and records
// frames holding the given payloads (valid frames: the decoders see them).
func (tp template) rewriteLog(t *testing.T, d *sparseDrive, ckpt []byte, records ...[]byte) {
	d.drop(tp.region.Base, tp.region.Base+tp.region.Size)
	buf := &pokeDevice{d}
	w := wal.NewWriter(buf, tp.region, wal.Start(tp.logID, tp.startSeq))
	if err := w.Append(frameCheckpointEnd, ckpt); err != nil {
		return // too big for the area: nothing to test
	}
	for _, r := range records {
		if err := w.Append(frameRecords, r); err != nil {
			break
		}
	}
	if err := w.Write(); err != nil {
		t.Fatal(err)
	}
}

// pokeDevice writes to a sparse drive without counting the writes.
type pokeDevice struct{ d *sparseDrive }

func (p *pokeDevice) ReadAt(b []byte, off int64) error  { return p.d.ReadAt(b, off) }
func (p *pokeDevice) WriteAt(b []byte, off int64) error { p.d.poke(off, b); return nil }
func (p *pokeDevice) Sync() error                       { return nil }

// openAndCheck opens d and checks the properties in the package doc.
func openAndCheck(t *testing.T, d *sparseDrive) {
	before := d.writeCount()
	e, err := engine.Open(engine.Options{NodeID: nodeID, Drives: []engine.DriveSpec{{Path: d.path, Drive: d}}})
	if err != nil {
		if n := d.writeCount() - before; n != 0 {
			t.Fatalf("Open refused the drive (%v) but wrote to it %d times", err, n)
		}
		if !strings.Contains(err.Error(), d.path) && !strings.Contains(err.Error(), "pool") {
			t.Fatalf("Open error names neither the drive %q nor its pool: %v", d.path, err)
		}
		return
	}
	for _, p := range e.Status().Pools {
		if strings.HasPrefix(p.Status, "Error") {
			if n := d.writeCount() - before; n != 0 {
				t.Fatalf("pool %d failed at open (%s) but its drive was written %d times", p.ID, p.Status, n)
			}
		}
	}
	if err := e.Check(); err != nil {
		t.Fatalf("opened an inconsistent pool: %v", err)
	}
	buf := make([]byte, 4096)
	for _, vi := range e.Volumes() {
		v, err := e.Volume(vi.Name)
		if err != nil {
			t.Fatal(err)
		}
		n := min(vi.Size, 64<<20)
		if _, err := v.Extents(0, n); err != nil && !errors.Is(err, engine.ErrIO) {
			t.Fatalf("volume %q extents: %v", vi.Name, err)
		}
		for off := int64(0); off < n; off += 1 << 20 {
			v.ReadAt(buf, off) // an I/O error is fine (extent beyond the drive); a panic is not
		}
	}
	e.Close()
}

// FuzzSuperblock: fuzzed bytes as superblock copy 0 (and, when both, copy
// 1); when seal, the checksum is recomputed so the field checks are reached.
func FuzzSuperblock(f *testing.F) {
	tp := getTemplate(f)
	sb := make([]byte, sbSize)
	tp.d.ReadAt(sb, 0)
	f.Add(sb, true, false)
	f.Add(sb, true, true)
	f.Add(sb, false, true)
	f.Add(sb[:120], true, true)
	f.Add([]byte("CAIRNDRV"), false, true)
	f.Add([]byte{}, false, true)
	f.Fuzz(func(t *testing.T, b []byte, seal, both bool) {
		d := tp.d.clone()
		sb := make([]byte, sbSize)
		copy(sb, b)
		if seal {
			le.PutUint64(sb[sbSumOff:], xxhash.Sum64(sb[:sbSumOff]))
		}
		d.poke(0, sb)
		if both {
			d.poke(sbSize, sb)
		}
		openAndCheck(t, d)
	})
}

// FuzzCheckpoint: the fuzzed bytes are the checkpoint payload of a valid
// log, followed by the template's records.
func FuzzCheckpoint(f *testing.F) {
	tp := getTemplate(f)
	f.Add(tp.ckpt, true)
	f.Add(tp.ckpt, false)
	f.Add(tp.ckpt[:len(tp.ckpt)/2], false)
	f.Add([]byte("CKP1"), false)
	f.Fuzz(func(t *testing.T, ckpt []byte, withRecords bool) {
		d := tp.d.clone()
		if withRecords {
			tp.rewriteLog(t, d, ckpt, tp.records...)
		} else {
			tp.rewriteLog(t, d, ckpt)
		}
		openAndCheck(t, d)
	})
}

// FuzzRecords: the fuzzed bytes are a records frame after the template's
// checkpoint (and, when after, after its records too).
func FuzzRecords(f *testing.F) {
	tp := getTemplate(f)
	for _, r := range tp.records {
		f.Add(r, false)
		f.Add(r, true)
	}
	f.Add(bytes.Join(tp.records, nil), false)
	f.Fuzz(func(t *testing.T, rec []byte, after bool) {
		d := tp.d.clone()
		if after {
			tp.rewriteLog(t, d, tp.ckpt, append(tp.records, rec)...)
		} else {
			tp.rewriteLog(t, d, tp.ckpt, rec)
		}
		openAndCheck(t, d)
	})
}
