package engine

import (
	"errors"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

// Every entry point takes a volume's id as well as its name; a name comes
// first, and an unavailable volume's id says it is unavailable.
func TestLookupByID(t *testing.T) {
	low, ssd := drive.NewMem("low", 32<<20), drive.NewMem("ssd", 32<<20)
	ssd.SetKind(drive.KindSSD)
	cat := &memCatalog{}
	e, err := Open(catalogOptions(cat, low, ssd))
	if err != nil {
		t.Fatal(err)
	}
	a, err := e.CreateVolume(VolumeSpec{Name: "a", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	far, err := e.CreateVolume(VolumeSpec{Name: "far", Size: 1 << 20, IOPriority: PriorityMedium})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := e.CreateSnapshot(a.ID, "")
	if err != nil || snap.Parent != "a" || !strings.HasPrefix(snap.Name, "a.snap-") {
		t.Fatalf("snapshot by id: %+v, %v", snap, err)
	}
	if err := e.RestoreVolume(a.ID, snap.ID); err != nil {
		t.Fatalf("restore by ids: %v", err)
	}
	if _, h, err := e.HoldVolume(a.ID, Holder{Kind: HeldByNBD}); err != nil {
		t.Fatal(err)
	} else {
		h.Release()
	}
	// A volume named like another's id is found by its name.
	if _, err := e.CreateVolume(VolumeSpec{Name: far.ID, Size: 2 << 20}); err != nil {
		t.Fatal(err)
	}
	if v, err := e.Volume(far.ID); err != nil || v.Name() != far.ID {
		t.Fatalf("lookup of %s: %v, %v; want the volume of that name", far.ID, v, err)
	}
	if err := e.DeleteVolume(snap.ID); err != nil {
		t.Fatalf("delete by id: %v", err)
	}
	e.Close()

	// far's pool is missing: its id says so.
	e, err = Open(catalogOptions(cat, low))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if v, err := e.Volume(a.ID); err != nil || v.Name() != "a" {
		t.Fatalf("lookup by id after a restart: %v, %v", v, err)
	}
	// Once the volume named like far's id is gone, that id finds far:
	// unavailable, and the error names it.
	if err := e.DeleteVolume(far.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Volume(far.ID); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), `"far"`) {
		t.Fatalf("lookup of an unavailable volume by id: %v", err)
	}
}
