package engine

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

// memCatalog is a Catalog in memory, as control's file keeps it.
type memCatalog struct{ entries []CatalogEntry }

func (c *memCatalog) Load() ([]CatalogEntry, error) { return slices.Clone(c.entries), nil }
func (c *memCatalog) Save(e []CatalogEntry) error   { c.entries = slices.Clone(e); return nil }

func catalogOptions(cat Catalog, drives ...*drive.Mem) Options {
	o := memOptions(drives...)
	o.Catalog = cat
	return o
}

// catalogEngine opens an engine on drives with cat as its catalog; it is
// closed when the test ends.
func catalogEngine(t *testing.T, cat Catalog, drives ...*drive.Mem) *Engine {
	t.Helper()
	e, err := Open(catalogOptions(cat, drives...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// lowAndSSD are two drives that make two pools: low and medium.
func lowAndSSD() (low, ssd *drive.Mem) {
	low, ssd = drive.NewMem("low", 32<<20), drive.NewMem("ssd", 32<<20)
	ssd.SetKind(drive.KindSSD)
	return low, ssd
}

func volumeNames(e *Engine) map[string]string {
	out := map[string]string{}
	for _, v := range e.Volumes() {
		out[v.Name] = v.State
	}
	return out
}

// A pool that is missing at start keeps its volumes' names: listed as
// unavailable with the reason, refused to a create, back with the pool
// (issue 13: "v6" taken again while its pool was missing, then the node
// could not start).
func TestMissingPoolKeepsItsNames(t *testing.T) {
	low, ssd := lowAndSSD()
	cat := &memCatalog{}
	e, err := Open(catalogOptions(cat, low, ssd))
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, e, "v-low", 1, 1<<20)
	if _, err := e.CreateVolume(VolumeSpec{Name: "v6", Size: 16 << 20, IOPriority: PriorityMedium}); err != nil {
		t.Fatal(err)
	}
	v6, _ := e.Volume("v6")
	if err := v6.WriteAt(pattern(6, 1<<20), 0, true); err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateSnapshot("v6", "v6.s1"); err != nil {
		t.Fatal(err)
	}
	e.Close()

	// The ssd is missing.
	e, err = Open(catalogOptions(cat, low))
	if err != nil {
		t.Fatal(err)
	}
	names := volumeNames(e)
	for _, n := range []string{"v6", "v6.s1"} {
		if !strings.HasPrefix(names[n], "unavailable: pool 1 (medium)") {
			t.Fatalf("%s while its pool is missing: %q (all: %v)", n, names[n], names)
		}
	}
	if names["v-low"] != "up" {
		t.Fatalf("v-low: %q", names["v-low"])
	}
	for _, n := range []string{"v6", "v6.s1"} {
		if _, err := e.CreateVolume(VolumeSpec{Name: n, Size: 16 << 20}); !errors.Is(err, ErrExists) {
			t.Fatalf("create %s while its pool is missing: %v", n, err)
		}
	}
	if _, err := e.CreateSnapshot("v-low", "v6"); !errors.Is(err, ErrExists) {
		t.Fatalf("snapshot named v6 while its pool is missing: %v", err)
	}
	if _, err := e.Volume("v6"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("lookup of an unavailable volume: %v", err)
	}
	if err := e.DeleteVolume("v6"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("delete of an unavailable volume: %v", err)
	}
	// A new pool made meanwhile does not take the missing pool's number.
	hdd := drive.NewMem("nvme", 32<<20)
	hdd.SetKind(drive.KindNVMe)
	if err := e.AddDrive(DriveSpec{Path: "nvme", Drive: hdd}); err != nil {
		t.Fatal(err)
	}
	for _, p := range e.Status().Pools {
		if p.IOPriority == PriorityHigh && p.ID != 2 {
			t.Fatalf("new pool numbered %d while pool 1 is missing", p.ID)
		}
	}
	e.Close()

	// The ssd is back: everything is served again, with its data.
	e, err = Open(catalogOptions(cat, low, ssd, hdd))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	names = volumeNames(e)
	if names["v6"] != "up" || names["v6.s1"] != "up" || len(e.Status().DuplicateNames) != 0 {
		t.Fatalf("after the pool came back: %v", names)
	}
	checkVolume(t, e, "v6", 6, 1<<20)
}

// A name in two pools at start (made before the catalog existed) never
// stops the node: each copy is served as NAME@poolN and status says so.
func TestDuplicateNamesAreServedUnderAliases(t *testing.T) {
	low, ssd := lowAndSSD()
	e, err := Open(memOptions(low))
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, e, "v6", 1, 1<<20)
	if _, err := e.CreateSnapshot("v6", "v6.s"); err != nil {
		t.Fatal(err)
	}
	e.Close()
	e, err = Open(memOptions(ssd))
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, e, "v6", 2, 1<<20)
	e.Close()

	cat := &memCatalog{}
	e, err = Open(catalogOptions(cat, low, ssd))
	if err != nil {
		t.Fatalf("a duplicate name stopped the node: %v", err)
	}
	dups := e.Status().DuplicateNames
	if len(dups) != 1 || dups[0].Name != "v6" || len(dups[0].ServedAs) != 2 {
		t.Fatalf("duplicates: %+v", dups)
	}
	// Each copy holds its own data, under its own name (both pools are
	// numbered 0 here: each was made while the other was missing).
	seeds := map[string]int{}
	for _, v := range e.Volumes() {
		if strings.HasPrefix(v.Name, "v6@") {
			if v.IOPriority == PriorityLow {
				seeds[v.Name] = 1
			} else {
				seeds[v.Name] = 2
			}
		}
	}
	if len(seeds) != 2 {
		t.Fatalf("want two copies served as v6@…, got %v", volumeNames(e))
	}
	for name, seed := range seeds {
		checkVolume(t, e, name, seed, 1<<20)
	}
	if _, err := e.CreateVolume(VolumeSpec{Name: "v6", Size: 16 << 20}); !errors.Is(err, ErrExists) {
		t.Fatalf("create of a duplicated name: %v", err)
	}
	// The low copy's snapshot follows it, under its alias.
	var lowName string
	for name, seed := range seeds {
		if seed == 1 {
			lowName = name
		}
	}
	snaps := e.Snapshots(lowName)
	if len(snaps) != 1 || snaps[0].Name != "v6.s" || snaps[0].Parent != lowName {
		t.Fatalf("snapshots of %s: %+v", lowName, snaps)
	}
	// The operator deletes the ssd copy; at the next start the name is whole again.
	for name, seed := range seeds {
		if seed == 2 {
			if err := e.DeleteVolume(name); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.Close()
	e, err = Open(catalogOptions(cat, low, ssd))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if len(e.Status().DuplicateNames) != 0 {
		t.Fatalf("duplicates after one copy was deleted: %+v", e.Status().DuplicateNames)
	}
	checkVolume(t, e, "v6", 1, 1<<20)
	if snaps := e.Snapshots("v6"); len(snaps) != 1 || snaps[0].Parent != "v6" {
		t.Fatalf("snapshots of v6: %+v", snaps)
	}
}
