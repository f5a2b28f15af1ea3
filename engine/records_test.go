package engine

import (
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/cairn-storage/cairn/allocator"
)

// Which fields of volumeMeta a recSetAttrs record carries (what
// UpdateVolume may change), and which are fixed when the volume is made.
// TestMetaFieldsClassified makes a new field choose one, so it is never
// silently left out of the records that change it.
var (
	setAttrsFields = []string{"size", "sticky", "snapInterval", "snapKeep"}
	fixedFields    = []string{"id", "uid", "name", "created", "priority", "repl", "blockSize", "readOnly", "parent"}
)

func TestMetaFieldsClassified(t *testing.T) {
	typ := reflect.TypeFor[volumeMeta]()
	for i := range typ.NumField() {
		name := typ.Field(i).Name
		if slices.Contains(setAttrsFields, name) == slices.Contains(fixedFields, name) {
			t.Errorf("volumeMeta.%s: list it in exactly one of setAttrsFields (recSetAttrs carries it) and fixedFields", name)
		}
	}
}

// fullMeta is volume metadata with every field set (checked by
// requireAllSet), so a field an encoding or a replay drops shows up as a
// difference. Replay does not judge whether the values make sense together.
func fullMeta(id uint32, name string) volumeMeta {
	return volumeMeta{
		id: id, uid: 0x0123456789abcdef + uint64(id), name: name, size: 4 * ExtentSize,
		created: 1700000000123456789 + int64(id), priority: PriorityMedium, repl: 2, sticky: true,
		snapInterval: 15, blockSize: BlockSize, readOnly: true, snapKeep: 7, parent: "gold",
	}
}

func requireAllSet(t *testing.T, m volumeMeta) {
	t.Helper()
	v := reflect.ValueOf(m)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("fixture leaves volumeMeta.%s zero: give it a value a lost field cannot have", v.Type().Field(i).Name)
		}
	}
}

// metaDiff names every field that differs between two volume metadata.
func metaDiff(got, want volumeMeta) string {
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	var diff string
	for i := range g.NumField() {
		if gf, wf := fmt.Sprint(g.Field(i)), fmt.Sprint(w.Field(i)); gf != wf {
			diff += fmt.Sprintf(" %s=%s (want %s)", g.Type().Field(i).Name, gf, wf)
		}
	}
	return diff
}

// exported lets a test set an unexported field of an addressable struct.
func exported(f reflect.Value) reflect.Value {
	return reflect.NewAt(f.Type(), f.Addr().UnsafePointer()).Elem()
}

// replayRecords encodes recs into one records frame, decodes it and applies
// each record to st, the way recovery does.
func replayRecords(t *testing.T, st *poolState, recs ...record) {
	t.Helper()
	var b []byte
	for i := range recs {
		b = appendRecord(b, &recs[i])
	}
	p := &pool{}
	if err := decodeRecords(b, func(r *record) error { return p.apply(st, r) }); err != nil {
		t.Fatalf("replay: %v", err)
	}
}

func newPoolState() *poolState {
	return &poolState{vols: map[uint32]*Volume{}, reserved: map[allocator.Extent]bool{}, condemned: map[allocator.Extent]bool{}}
}

func checkMetas(t *testing.T, st *poolState, want ...volumeMeta) {
	t.Helper()
	if len(st.vols) != len(want) {
		t.Errorf("%d volumes after replay, want %d", len(st.vols), len(want))
	}
	for _, w := range want {
		v := st.vols[w.id]
		if v == nil {
			t.Errorf("volume id %d missing after replay", w.id)
			continue
		}
		if !reflect.DeepEqual(v.meta, w) {
			t.Errorf("volume id %d after replay:%s", w.id, metaDiff(v.meta, w))
		}
		if v.size.Load() != w.size {
			t.Errorf("volume id %d: Size() %d after replay, want %d", w.id, v.size.Load(), w.size)
		}
	}
}

func mappingOf(v *Volume) map[uint32]allocator.Extent {
	m := map[uint32]allocator.Extent{}
	v.table.forEach(func(lext uint32, ext allocator.Extent) { m[lext] = ext })
	return m
}

// TestRecordReplay round-trips every record type through encode, decode and
// replay, and compares every field of every volume's metadata (and the
// record's own effect) with what was logged.
func TestRecordReplay(t *testing.T) {
	vol := fullMeta(1, "db")
	snap := fullMeta(2, "db.snap")
	snap.parent, snap.created, snap.snapKeep = "db", vol.created+1, 3
	requireAllSet(t, vol)
	requireAllSet(t, snap)

	// base: vol with logical extent 0 mapped, then snap sharing it.
	base := func(t *testing.T) *poolState {
		st := newPoolState()
		replayRecords(t, st,
			record{typ: recCreateVolume, vol: vol.id, meta: vol},
			record{typ: recMapExtent, vol: vol.id, lext: 0, phys: 10},
			record{typ: recSnapshot, vol: snap.id, src: vol.id, meta: snap})
		return st
	}

	// updated differs from vol in every field; a recSetAttrs replay keeps the
	// fixed ones and takes the rest.
	updated := volumeMeta{
		id: 9, uid: 99, name: "other", size: 8 * ExtentSize, created: 5, priority: PriorityHigh, repl: 3,
		sticky: false, snapInterval: 60, blockSize: 512, readOnly: false, snapKeep: 12, parent: "elsewhere",
	}
	afterSetAttrs := vol
	av, uv := reflect.ValueOf(&afterSetAttrs).Elem(), reflect.ValueOf(&updated).Elem()
	for i := range uv.NumField() {
		name := uv.Type().Field(i).Name
		if av.Field(i).Equal(uv.Field(i)) {
			t.Fatalf("fixture: updated.%s equals vol's; make it differ", name)
		}
		if slices.Contains(setAttrsFields, name) {
			exported(av.Field(i)).Set(exported(uv.Field(i)))
		}
	}

	for _, tc := range []struct {
		name  string
		recs  []record
		metas []volumeMeta
		check func(t *testing.T, st *poolState)
	}{
		{name: "create and snapshot", metas: []volumeMeta{vol, snap}, check: func(t *testing.T, st *poolState) {
			if got := mappingOf(st.vols[snap.id]); !reflect.DeepEqual(got, map[uint32]allocator.Extent{0: 10}) {
				t.Errorf("snapshot mapping %v, want its source's", got)
			}
		}},
		{name: "set attrs", recs: []record{{typ: recSetAttrs, vol: vol.id, meta: updated}}, metas: []volumeMeta{afterSetAttrs, snap}},
		{name: "map", recs: []record{{typ: recMapExtent, vol: vol.id, lext: 3, phys: 11}}, metas: []volumeMeta{vol, snap},
			check: func(t *testing.T, st *poolState) {
				if got := mappingOf(st.vols[vol.id]); !reflect.DeepEqual(got, map[uint32]allocator.Extent{0: 10, 3: 11}) {
					t.Errorf("mapping %v", got)
				}
			}},
		{name: "unmap", recs: []record{{typ: recUnmapExtent, vol: vol.id, lext: 0}}, metas: []volumeMeta{vol, snap},
			check: func(t *testing.T, st *poolState) {
				if got := mappingOf(st.vols[vol.id]); len(got) != 0 {
					t.Errorf("mapping %v, want none", got)
				}
			}},
		{name: "remap", recs: []record{{typ: recRemap, vol: vol.id, lext: 0, phys: 12}}, metas: []volumeMeta{vol, snap},
			check: func(t *testing.T, st *poolState) {
				if got := mappingOf(st.vols[vol.id]); !reflect.DeepEqual(got, map[uint32]allocator.Extent{0: 12}) || !st.condemned[10] {
					t.Errorf("mapping %v condemned %v, want 0→12 and 10 condemned", got, st.condemned)
				}
			}},
		{name: "restore", recs: []record{{typ: recMapExtent, vol: vol.id, lext: 1, phys: 11}, {typ: recRestore, vol: vol.id, src: snap.id}},
			metas: []volumeMeta{vol, snap},
			check: func(t *testing.T, st *poolState) {
				if got := mappingOf(st.vols[vol.id]); !reflect.DeepEqual(got, map[uint32]allocator.Extent{0: 10}) {
					t.Errorf("mapping %v, want the snapshot's", got)
				}
			}},
		{name: "delete", recs: []record{{typ: recDeleteVolume, vol: snap.id}}, metas: []volumeMeta{vol}},
		{name: "reserve", recs: []record{{typ: recReserve, exts: []uint32{20, 21}}}, metas: []volumeMeta{vol, snap},
			check: func(t *testing.T, st *poolState) {
				if !st.reserved[20] || !st.reserved[21] || len(st.reserved) != 2 {
					t.Errorf("reserved %v, want 20 and 21", st.reserved)
				}
			}},
		{name: "add drive", recs: []record{{typ: recAddDrive, uuid: [16]byte{1, 2, 3}, extents: 77}}, metas: []volumeMeta{vol, snap},
			check: func(t *testing.T, st *poolState) {
				if want := []driveRef{{uuid: [16]byte{1, 2, 3}, extents: 77}}; !reflect.DeepEqual(st.drives, want) {
					t.Errorf("drives %v, want %v", st.drives, want)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := base(t)
			replayRecords(t, st, tc.recs...)
			checkMetas(t, st, tc.metas...)
			if tc.check != nil {
				tc.check(t, st)
			}
		})
	}

	t.Run("checkpoint", func(t *testing.T) {
		st := base(t)
		replayRecords(t, st, record{typ: recSetAttrs, vol: vol.id, meta: updated})
		p := &pool{vols: st.vols, nextVolID: st.nextVolID}
		got, err := p.decodeCheckpoint(p.encodeCheckpoint())
		if err != nil {
			t.Fatal(err)
		}
		checkMetas(t, got, afterSetAttrs, snap)
		for id, v := range st.vols {
			if !reflect.DeepEqual(mappingOf(got.vols[id]), mappingOf(v)) {
				t.Errorf("volume id %d mapping %v after checkpoint, want %v", id, mappingOf(got.vols[id]), mappingOf(v))
			}
		}
	})
}
