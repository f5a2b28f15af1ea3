package control

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

// TestVolumeByID: every call that takes a volume's name takes the id that
// create printed, as pxctl does.
func TestVolumeByID(t *testing.T) {
	c, _, x := newSnapshotTestAPI(t)
	ctx := context.Background()
	v, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "db", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Volume(ctx, v.ID); err != nil || got.Name != "db" {
		t.Fatalf("inspect by id: %+v, %v", got, err)
	}
	if got, err := c.UpdateVolume(ctx, v.ID, UpdateVolumeRequest{SnapKeep: ptr(7)}); err != nil || got.Name != "db" || got.SnapKeep != 7 {
		t.Fatalf("update by id: %+v, %v", got, err)
	}
	snap, err := c.CreateSnapshot(ctx, v.ID, "db.a")
	if err != nil || snap.Parent != "db" {
		t.Fatalf("snapshot by id: %+v, %v", snap, err)
	}
	def, err := c.CreateSnapshot(ctx, v.ID, "") // the default name is the volume's
	if err != nil || def.Parent != "db" || def.Name[:len("db.snap-")] != "db.snap-" {
		t.Fatalf("default snapshot by id: %+v, %v", def, err)
	}
	if snaps, err := c.Snapshots(ctx, v.ID); err != nil || !slices.Equal(names(snaps), []string{"db.a", def.Name}) {
		t.Fatalf("snapshot list by id: %v, %v", names(snaps), err)
	}
	if err := c.DeleteSnapshot(ctx, def.ID); err != nil {
		t.Fatalf("snapshot delete by id: %v", err)
	}
	clone, err := c.CloneVolume(ctx, snap.ID, "db2")
	if err != nil || clone.Parent != "db.a" {
		t.Fatalf("clone by id: %+v, %v", clone, err)
	}
	if _, err := c.RestoreVolume(ctx, v.ID, snap.ID); err != nil {
		t.Fatalf("restore by ids: %v", err)
	}
	// The NBD export opens by id too, and the hold refuses a delete by id.
	_, release, err := x.OpenExport(v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, v.ID); !errors.Is(err, engine.ErrBusy) {
		t.Fatalf("delete by id with an NBD client: %v", err)
	}
	release()
	if err := c.DeleteVolume(ctx, clone.ID); err != nil {
		t.Fatalf("delete by id: %v", err)
	}
	if deleted, err := c.DeleteVolumeForce(ctx, v.ID); err != nil || !slices.Equal(deleted, []string{"db.a", "db"}) {
		t.Fatalf("delete --force by id: %v, %v", deleted, err)
	}

	// No name may look like an id: an id always means the volume it names.
	a, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "a", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: a.ID, Size: 2 << 20}); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("create of a volume named like another's id: %v", err)
	}
	if got, err := c.Volume(ctx, a.ID); err != nil || got.Name != "a" {
		t.Fatalf("inspect %s: %+v, %v", a.ID, got, err)
	}
	if _, err := c.Volume(ctx, "0123456789abcdef"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("inspect of an unknown id: %v", err)
	}
}
