package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

func changedSet(t *testing.T, e *Engine, from, to string) map[int64]ExtentKind {
	t.Helper()
	ch, err := e.ChangedExtents(from, to)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]ExtentKind{}
	for i, x := range ch {
		if x.Offset%ExtentSize != 0 || x.Length != ExtentSize {
			t.Fatalf("extent %+v is not one whole extent", x)
		}
		if i > 0 && ch[i-1].Offset >= x.Offset {
			t.Fatalf("extents out of order: %+v", ch)
		}
		out[x.Offset/ExtentSize] = x.Kind
	}
	return out
}

// The cases by hand: new, rewritten (one block: a filling extent), trimmed,
// untouched, and a rewrite of an extent that was filling at the last snapshot.
func TestChangedExtents(t *testing.T) {
	e := memEngine(t, drive.NewMem("mem0", 96<<20))
	const size = 16 << 20
	if _, err := e.CreateVolume(VolumeSpec{Name: "db", Size: size}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("db")
	for _, x := range []int64{0, 1, 2, 5} {
		if err := v.WriteAt(pattern(int(x), ExtentSize), x*ExtentSize, false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.CreateSnapshot("db", "s1"); err != nil {
		t.Fatal(err)
	}
	want := map[int64]ExtentKind{0: ExtentData, 1: ExtentData, 2: ExtentData, 5: ExtentData}
	if got := changedSet(t, e, "", "s1"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("full: %v, want %v", got, want)
	}
	v.WriteAt(pattern(9, BlockSize), 1*ExtentSize+BlockSize, false)
	v.WriteAt(pattern(10, ExtentSize), 7*ExtentSize, false)
	if err := v.Trim(5*ExtentSize, ExtentSize); err != nil {
		t.Fatal(err)
	}
	e.CreateSnapshot("db", "s2")
	want = map[int64]ExtentKind{1: ExtentData, 5: ExtentHole, 7: ExtentData}
	if got := changedSet(t, e, "s1", "s2"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("s1→s2: %v, want %v", got, want)
	}
	v.WriteAt(pattern(11, BlockSize), 1*ExtentSize, false)
	e.CreateSnapshot("db", "s3")
	want = map[int64]ExtentKind{1: ExtentData}
	if got := changedSet(t, e, "s2", "s3"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("s2→s3: %v, want %v", got, want)
	}
	if got := changedSet(t, e, "s3", "s3"); len(got) != 0 {
		t.Fatalf("s3→s3: %v", got)
	}
	if _, err := e.ChangedExtents("s1", "db"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a writable volume: %v", err)
	}
	if _, err := e.ChangedExtents("nope", "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing snapshot: %v", err)
	}
}

// Randomized: writes, trims and snapshots, with the filler running; for
// every pair of consecutive snapshots, an extent not reported reads the same
// in both, and one reported as a hole reads zeros in the newer.
func TestChangedExtentsModel(t *testing.T) {
	seed := uint64(rand.Int64())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	opts := memOptions(drive.NewMem("mem0", 128<<20))
	opts.FillRate = 1 << 30
	e, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	const extents = 12
	const size = extents * ExtentSize
	e.CreateVolume(VolumeSpec{Name: "m", Size: size})
	v, _ := e.Volume("m")
	prev := ""
	for round := range 8 {
		for range 1 + r.IntN(10) {
			x := int64(r.IntN(extents))
			switch r.IntN(4) {
			case 0:
				if err := v.Trim(x*ExtentSize, ExtentSize); err != nil {
					t.Fatal(err)
				}
			case 1:
				if err := v.WriteAt(pattern(r.IntN(1000), ExtentSize), x*ExtentSize, false); err != nil {
					t.Fatal(err)
				}
			default:
				n := (1 + r.IntN(8)) * BlockSize
				off := x*ExtentSize + int64(r.IntN(blocksPerExtent-8))*BlockSize
				if err := v.WriteAt(pattern(r.IntN(1000), n), off, false); err != nil {
					t.Fatal(err)
				}
			}
		}
		name := fmt.Sprintf("snap%d", round)
		if _, err := e.CreateSnapshot("m", name); err != nil {
			t.Fatal(err)
		}
		got := changedSet(t, e, prev, name)
		cur, _ := e.Volume(name)
		now := readAll(t, cur)
		old := make([]byte, size)
		if prev != "" {
			pv, _ := e.Volume(prev)
			old = readAll(t, pv)
		}
		for x := range int64(extents) {
			a, b := old[x*ExtentSize:(x+1)*ExtentSize], now[x*ExtentSize:(x+1)*ExtentSize]
			kind, reported := got[x]
			switch {
			case !reported && !bytes.Equal(a, b):
				t.Fatalf("round %d: extent %d changed but not reported", round, x)
			case reported && kind == ExtentHole && !bytes.Equal(b, make([]byte, ExtentSize)):
				t.Fatalf("round %d: extent %d reported a hole but holds data", round, x)
			}
		}
		prev = name
	}
}
