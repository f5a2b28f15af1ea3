package enginefuzz

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

// Engine bugs the fuzzer found, kept as regression tests (all fixed in
// 3587e2e: sizes bounded in replayed records, a two-level mapping table,
// Open validates before it zeroes anything).

// TestSetAttrsHugeSizeBounded: a records frame (valid frame, checksummed)
// holding one recSetAttrs whose size field is 2^57 made Open allocate a 1 GiB
// mapping table (pool.apply → Volume.setSize → table.grow → newTable): apply
// checks only that the size does not shrink, never that it is a multiple of
// the block size and at most maxVolumeSize, as newVolume does. With the
// fuzzer's 0x3030303030303030 the process dies ("fatal error: runtime: out
// of memory"). Found by FuzzRecords.
func TestSetAttrsHugeSizeBounded(t *testing.T) {
	tp := getTemplate(t)
	d := tp.d.clone()
	vols := checkpointVolumes(tp.ckpt)
	le := binary.LittleEndian
	rec := le.AppendUint32([]byte{2}, vols[0].id)
	rec = le.AppendUint64(rec, 1<<57)
	rec = append(rec, 0)
	rec = le.AppendUint32(rec, 0)
	rec = le.AppendUint32(rec, 0)
	var before, after runtimeMem
	before.read()
	tp.rewriteLog(t, d, tp.ckpt, rec)
	e, err := engine.Open(engine.Options{NodeID: nodeID, Drives: []engine.DriveSpec{{Path: d.path, Drive: d}}})
	if err == nil {
		e.Close()
	}
	after.read()
	if grew := after.total - before.total; grew > 256<<20 {
		t.Fatalf("opening a pool whose log holds one 22-byte record allocated %d MiB (Open: %v)", grew>>20, err)
	}
}

// TestCheckpointVolumesCheap: every volume in a checkpoint cost a
// mapping table of 8 bytes per GiB of its size field (2 MiB at the 64 TiB
// maximum) while it costs 47 bytes of checkpoint: 1024 such volumes in a
// 47 KiB checkpoint make Open allocate 2 GiB. The decoder bounds counts by
// the bytes left but not the memory a count of sizes implies.
func TestCheckpointVolumesCheap(t *testing.T) {
	tp := getTemplate(t)
	d := tp.d.clone()
	le := binary.LittleEndian
	ck := le.AppendUint32(nil, 0x31504b43)
	const vols = 1024
	ck = le.AppendUint32(ck, vols)
	ck = le.AppendUint32(ck, 1)
	ck = append(ck, tp.ckpt[12:32]...) // the real drive
	ck = le.AppendUint32(ck, vols)
	for i := uint32(0); i < vols; i++ {
		ck = le.AppendUint32(ck, i)
		ck = le.AppendUint64(ck, uint64(i)+1)
		ck = le.AppendUint64(ck, 64<<40) // the largest volume allowed
		ck = le.AppendUint64(ck, 0)
		ck = append(ck, 0, 1, 0)
		ck = le.AppendUint32(ck, 0)
		ck = le.AppendUint32(ck, 4096)
		name := fmt.Sprintf("v%d", i)
		ck = le.AppendUint16(ck, uint16(len(name)))
		ck = append(ck, name...)
		ck = append(ck, 0)          // read-only
		ck = le.AppendUint32(ck, 0) // snap keep
		ck = le.AppendUint16(ck, 0) // parent ""
		ck = le.AppendUint32(ck, 0) // mapped
	}
	var before, after runtimeMem
	before.read()
	tp.rewriteLog(t, d, ck)
	openAndCheck(t, d)
	after.read()
	if grew := after.total - before.total; grew > 256<<20 {
		t.Fatalf("opening a %d-byte checkpoint allocated %d MiB", len(ck), grew>>20)
	}
}

type runtimeMem struct{ total uint64 }

func (m *runtimeMem) read() {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m.total = ms.TotalAlloc
}

// TestRefusedPoolNotWritten: a records frame that deletes volume A, maps an
// extent of volume B onto an extent number beyond every drive, and deletes B
// is corrupt, and Open refuses the pool ("condemned extent N is in no
// drive") — but only after loadPool (engine/engine.go, the loops after
// "Reserved extents nobody mapped" and "Extents a logged delete … let go
// of") has zeroed the reserved extents and, in map order, condemned ones on
// the drive it then refuses. A refused pool's drives must be left untouched:
// validate first, then zero. Found by FuzzRecords.
func TestRefusedPoolNotWritten(t *testing.T) {
	tp := getTemplate(t)
	vols := checkpointVolumes(tp.ckpt)
	var a, b *ckptVolume
	for i := range vols {
		if len(vols[i].phys) > 0 && a == nil {
			a = &vols[i]
		} else if b == nil {
			b = &vols[i]
		}
	}
	if a == nil || b == nil {
		t.Fatalf("template checkpoint has no two volumes with one mapped: %+v", vols)
	}
	lext := uint32(0)
	for slices.Contains(b.lexts, lext) {
		lext++
	}
	le := binary.LittleEndian
	rec := le.AppendUint32([]byte{3}, a.id) // delete A: its extents are condemned
	rec = append(rec, 4)                    // map a free extent of B beyond every drive
	rec = le.AppendUint32(rec, b.id)
	rec = le.AppendUint32(rec, lext)
	rec = le.AppendUint32(rec, 1<<30)
	rec = le.AppendUint32(append(rec, 3), b.id) // delete B: that extent is condemned
	d := tp.d.clone()
	tp.rewriteLog(t, d, tp.ckpt, append(tp.records, rec)...)
	before := d.writeCount()
	_, err := engine.Open(engine.Options{NodeID: nodeID, Drives: []engine.DriveSpec{{Path: d.path, Drive: d}}})
	if err == nil {
		t.Fatal("Open accepted a log that condemns an extent beyond every drive")
	}
	if n := d.writeCount() - before; n != 0 {
		t.Fatalf("Open refused the pool (%v) after writing to its drive %d times", err, n)
	}
}

type ckptVolume struct {
	id    uint32
	size  int64
	lexts []uint32
	phys  []uint32
}

// checkpointVolumes lists the volumes of a checkpoint payload and the
// physical extents each maps.
func checkpointVolumes(b []byte) []ckptVolume {
	le := binary.LittleEndian
	off := 12 + int(le.Uint32(b[8:]))*20
	nv := int(le.Uint32(b[off:]))
	off += 4
	var out []ckptVolume
	for i := 0; i < nv; i++ {
		v := ckptVolume{id: le.Uint32(b[off:]), size: int64(le.Uint64(b[off+12:]))}
		m, _ := metaLen(b, off)
		off += m
		nm := int(le.Uint32(b[off:]))
		off += 4
		for j := 0; j < nm; j++ {
			v.lexts = append(v.lexts, le.Uint32(b[off:]))
			v.phys = append(v.phys, le.Uint32(b[off+4:]))
			off += 8
		}
		out = append(out, v)
	}
	return out
}

// metaLen is the encoded length of the volume meta at b[off:] (the engine's
// enc.meta: id u32 | uid u64 | size u64 | created i64 | prio u8 | repl u8 |
// sticky u8 | snap u32 | bs u32 | name str | readonly u8 | snap keep u32 |
// parent str). It follows the format by hand: when the engine's format moves,
// update it (the known-bug filters that use it only get less precise).
func metaLen(b []byte, off int) (int, bool) {
	le := binary.LittleEndian
	if off+41 > len(b) {
		return 0, false
	}
	p := off + 41 + int(le.Uint16(b[off+39:]))
	if p+7 > len(b) {
		return 0, false
	}
	p += 7 + int(le.Uint16(b[p+5:]))
	if p > len(b) {
		return 0, false
	}
	return p - off, true
}
