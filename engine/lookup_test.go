package engine

import (
	"errors"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

// Every entry point takes a volume's id as well as its name, and an
// unavailable volume's id says it is unavailable.
func TestLookupByID(t *testing.T) {
	cat := &memCatalog{}
	d := drive.NewMem("d", 32<<20)
	e, err := Open(catalogOptions(cat, d))
	if err != nil {
		t.Fatal(err)
	}
	a, err := e.CreateVolume(VolumeSpec{Name: "a", Size: 1 << 20})
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
	_, h, err := e.HoldVolume(a.ID, Holder{Kind: HeldByNBD})
	if err != nil {
		t.Fatalf("hold by id: %v", err)
	}
	h.Release()
	if err := e.DeleteVolume(snap.ID); err != nil {
		t.Fatalf("delete by id: %v", err)
	}
	// No name may look like an id, so an id always means the volume it names.
	if _, err := e.CreateVolume(VolumeSpec{Name: a.ID, Size: 2 << 20}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("create of a volume named like another's id: %v", err)
	}
	if v, err := e.Volume(a.ID); err != nil || v.Name() != "a" {
		t.Fatalf("lookup by id: %v, %v", v, err)
	}
	e.Close()

	// The pool is missing: the id says the volume is unavailable, by name.
	e, err = Open(catalogOptions(cat))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.Volume(a.ID); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("lookup of an unavailable volume by id: %v", err)
	}
}
