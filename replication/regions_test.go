package replication

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A region log survives its volume growing (the new regions are where no
// replica differs), and any other file is refused as "every region", never
// read as "nothing".
func TestRegionLogAfterGrow(t *testing.T) {
	path := filepath.Join(t.TempDir(), "v@n.rgn")
	l := &regionLog{regions: newRegions(100 * RegionSize), path: path}
	l.add(3*RegionSize, 1)
	l.add(99*RegionSize, 1)
	if err := l.sync(); err != nil {
		t.Fatal(err)
	}
	grown, err := loadRegionLog(path, 300*RegionSize)
	if err != nil {
		t.Fatal(err)
	}
	if got := marked(grown.regions); !slices.Equal(got, []int{3, 99}) {
		t.Fatalf("after the grow the log holds %v, want [3 99]", got)
	}
	shrunk, err := loadRegionLog(path, 50*RegionSize)
	if err == nil || shrunk.count() != 50 {
		t.Fatalf("a log of more regions than the volume: err %v, %d regions marked, want an error and all 50", err, shrunk.count())
	}
}

func FuzzRegionLogDecode(f *testing.F) {
	dir := f.TempDir()
	l := &regionLog{regions: newRegions(70 * RegionSize), path: filepath.Join(dir, "seed.rgn")}
	l.add(0, 1)
	l.add(69*RegionSize, 1)
	if err := l.sync(); err != nil {
		f.Fatal(err)
	}
	seed, err := os.ReadFile(l.path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed, int64(70))
	f.Add(seed, int64(200))
	f.Add(seed[:30], int64(70))
	f.Fuzz(func(t *testing.T, b []byte, regions int64) {
		if regions <= 0 || regions > 1<<16 {
			return
		}
		d := &regionLog{regions: newRegions(regions * RegionSize), path: "fuzz"}
		if err := d.decode(b); err != nil {
			return
		}
		if next := d.next(int(regions)); next >= 0 {
			t.Fatalf("a decoded log marks region %d past the volume's %d", next, regions)
		}
	})
}

// marked lists the regions r holds.
func marked(r *regions) []int {
	var out []int
	for i := r.next(0); i >= 0; i = r.next(i + 1) {
		out = append(out, i)
	}
	return out
}
