package engine

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

func readAll(t *testing.T, v *Volume) []byte {
	t.Helper()
	b := make([]byte, v.Size())
	if err := v.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// Write A, snapshot, write B: the snapshot reads A, the volume B; a clone
// reads A and diverges on write; restore brings A back; deleting gives space
// back; all of it survives a restart.
func TestSnapshotCloneRestore(t *testing.T) {
	d := drive.NewMem("mem0", 96<<20)
	e := memEngine(t, d)
	const size = 8 << 20
	e.CreateVolume(VolumeSpec{Name: "db", Size: size})
	v, _ := e.Volume("db")
	a := pattern(1, size)
	v.WriteAt(a, 0, false)
	usedA := e.Status().Pools[0].Used

	snap, err := e.CreateSnapshot("db", "db.before")
	if err != nil {
		t.Fatal(err)
	}
	if !snap.ReadOnly || !snap.Snapshot || snap.Parent != "db" || snap.Used != 0 {
		t.Fatalf("snapshot info %+v (a fresh snapshot owns nothing exclusively)", snap)
	}
	if e.Status().Pools[0].Used != usedA {
		t.Fatalf("taking a snapshot used space: %d → %d", usedA, e.Status().Pools[0].Used)
	}
	b := pattern(2, size/2)
	v.WriteAt(b, size/4, false)
	sv, _ := e.Volume("db.before")
	if !bytes.Equal(readAll(t, sv), a) {
		t.Fatal("snapshot changed after a write to its volume")
	}
	wantB := append(append(append([]byte(nil), a[:size/4]...), b...), a[3*size/4:]...)
	if !bytes.Equal(readAll(t, v), wantB) {
		t.Fatal("volume does not read its new content")
	}
	if err := sv.WriteAt(b[:4096], 0, false); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to a snapshot: %v", err)
	}
	if info := sv.Info(); info.Used != 4*ExtentSize {
		t.Fatalf("snapshot exclusive bytes %d, want the 4 extents the volume rewrote", info.Used)
	}

	if _, err := e.CloneVolume("db.before", "db-clone"); err != nil {
		t.Fatal(err)
	}
	cv, _ := e.Volume("db-clone")
	if !bytes.Equal(readAll(t, cv), a) {
		t.Fatal("clone does not read the snapshot's content")
	}
	cv.WriteAt(pattern(3, 4096), 0, false)
	if !bytes.Equal(readAll(t, sv), a) {
		t.Fatal("writing the clone changed the snapshot")
	}

	if err := e.DeleteVolume("db"); !errors.Is(err, ErrHasSnapshots) || !bytes.Contains([]byte(err.Error()), []byte("db.before")) {
		t.Fatalf("delete of a volume with snapshots: %v", err)
	}
	_, h1, _ := e.HoldVolume("db", Holder{Kind: HeldByNBD})
	_, h2, _ := e.HoldVolume("db", Holder{Kind: HeldByNBD})
	if err := e.RestoreVolume("db", "db.before"); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "2 NBD clients connected") {
		t.Fatalf("restore of a volume in use: %v", err)
	}
	h1.Release()
	h2.Release()
	h2.Release() // a second release does nothing
	if err := e.RestoreVolume("db", "db.before"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, v), a) {
		t.Fatal("restore did not bring A back")
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}

	// Restart: all three keep their content.
	e.Close()
	e2, err := Open(memOptions(d))
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	for name, want := range map[string][]byte{"db": a, "db.before": a} {
		x, err := e2.Volume(name)
		if err != nil || !bytes.Equal(readAll(t, x), want) {
			t.Fatalf("%s after restart: err %v", name, err)
		}
	}
	if err := e2.Check(); err != nil {
		t.Fatal(err)
	}
	// Deleting the snapshot and the clone gives their space back.
	before := e2.Status().Pools[0].Used
	e2.DeleteVolume("db-clone")
	e2.DeleteVolume("db.before")
	if after := e2.Status().Pools[0].Used; after >= before {
		t.Fatalf("used %d → %d after deleting snapshot and clone", before, after)
	}
	if err := e2.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotLimit(t *testing.T) {
	e := memEngine(t, drive.NewMem("mem0", 48<<20))
	e.CreateVolume(VolumeSpec{Name: "v", Size: 4 << 20})
	v, _ := e.Volume("v")
	v.WriteAt(pattern(1, 4096), 0, false)
	for i := 0; i < MaxSnapshots; i++ {
		if _, err := e.CreateSnapshot("v", fmt.Sprintf("s%d", i)); err != nil {
			t.Fatalf("snapshot %d: %v", i+1, err)
		}
	}
	before := len(e.Volumes())
	if _, err := e.CreateSnapshot("v", "one-too-many"); !errors.Is(err, ErrTooManySnaps) {
		t.Fatalf("65th snapshot: %v", err)
	}
	if len(e.Volumes()) != before {
		t.Fatal("refused snapshot changed something")
	}
	if _, err := e.CreateSnapshot("s0", "snap-of-snap"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("snapshot of a snapshot: %v", err)
	}
	if _, err := e.CreateSnapshot("v", "s1"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate snapshot name: %v", err)
	}
	if _, err := e.CloneVolume("v", "c"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("clone of a volume: %v", err)
	}
	if len(e.Snapshots("v")) != MaxSnapshots {
		t.Fatalf("Snapshots lists %d", len(e.Snapshots("v")))
	}
	// Default name.
	e.DeleteVolume("s0")
	info, err := e.CreateSnapshot("v", "")
	if err != nil || !bytes.HasPrefix([]byte(info.Name), []byte("v.snap-")) {
		t.Fatalf("default snapshot name %q, err %v", info.Name, err)
	}
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
}
