package control

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

// newSnapshotTestAPI is newTestAPI with the server's NBD catalogue wired,
// so tests can open exports the way NBD clients do.
func newSnapshotTestAPI(t *testing.T) (*Client, *engine.Engine, *Exports) {
	t.Helper()
	c, e, _ := serveTestAPI(t, nil)
	return c, e, NewExports(e)
}

// serveTestAPI serves the API over a real engine on a sparse 1 GiB file in
// a new data directory, which it returns; setup, when set, configures the
// server before it serves.
func serveTestAPI(t *testing.T, setup func(srv *Server, e *engine.Engine, dataDir string)) (*Client, *engine.Engine, string) {
	t.Helper()
	dir := t.TempDir()
	drivePath := filepath.Join(dir, "drive.img")
	if err := os.WriteFile(drivePath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(drivePath, 1<<30); err != nil {
		t.Fatal(err)
	}
	node, err := OpenNode(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(engine.Options{NodeID: node.ID(), Drives: []engine.DriveSpec{{Path: drivePath}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	srv := NewServer(e, node, nil, nil)
	if setup != nil {
		setup(srv, e, dir)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return NewClient(hs.URL), e, dir
}

func names(vols []Volume) []string {
	out := make([]string, 0, len(vols))
	for _, v := range vols {
		out = append(out, v.Name)
	}
	return out
}

func TestSnapshotAPI(t *testing.T) {
	c, e, x := newSnapshotTestAPI(t)
	ctx := context.Background()
	mustVol := func(req CreateVolumeRequest) {
		t.Helper()
		if _, err := c.CreateVolume(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	mustVol(CreateVolumeRequest{Name: "db", Size: 8 << 20})
	mustVol(CreateVolumeRequest{Name: "keep", Size: 8 << 20, Sticky: true})
	v, _ := e.Volume("db")
	if err := v.WriteAt(make([]byte, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}

	snap, err := c.CreateSnapshot(ctx, "db", "db.a")
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Snapshot || !snap.ReadOnly || snap.Parent != "db" || snap.SnapKeep == 0 {
		t.Errorf("snapshot JSON: %+v", snap)
	}
	def, err := c.CreateSnapshot(ctx, "db", "")
	if err != nil || !strings.HasPrefix(def.Name, "db.snap-") {
		t.Fatalf("default-named snapshot: %+v, %v", def, err)
	}
	if _, err := c.CreateSnapshot(ctx, "keep", "keep.a"); err != nil {
		t.Fatal(err)
	}

	// Lists: volumes without snapshots by default.
	vols, _ := c.Volumes(ctx)
	if got := names(vols); !slices.Equal(got, []string{"db", "keep"}) {
		t.Errorf("volumes: %v", got)
	}
	all, _ := c.AllVolumes(ctx)
	if len(all) != 5 {
		t.Errorf("all volumes: %v", names(all))
	}
	snaps, _ := c.Snapshots(ctx, "db")
	if got := names(snaps); !slices.Equal(got, []string{"db.a", def.Name}) {
		t.Errorf("snapshots of db: %v", got)
	}

	for _, tc := range []struct {
		name     string
		call     func() error
		sentinel error
		message  string
	}{
		{"snapshot of unknown", func() error { _, err := c.CreateSnapshot(ctx, "nope", ""); return err }, engine.ErrNotFound, `volume "nope" not found`},
		{"snapshot name taken", func() error { _, err := c.CreateSnapshot(ctx, "db", "keep"); return err }, engine.ErrExists, `the name "keep" is taken`},
		{"bad snapshot name", func() error { _, err := c.CreateSnapshot(ctx, "db", "a/b"); return err }, engine.ErrInvalid, `snapshot name "a/b"`},
		{"snapshot of snapshot", func() error { _, err := c.CreateSnapshot(ctx, "db.a", ""); return err }, engine.ErrInvalid, `"db.a" is a snapshot`},
		{"list of unknown", func() error { _, err := c.Snapshots(ctx, "nope"); return err }, engine.ErrNotFound, `volume "nope" not found`},
		{"list of snapshot", func() error { _, err := c.Snapshots(ctx, "db.a"); return err }, engine.ErrInvalid, `"db.a" is a snapshot`},
		{"delete volume as snapshot", func() error { return c.DeleteSnapshot(ctx, "db") }, engine.ErrInvalid, `"db" is a volume, not a snapshot`},
		{"delete unknown snapshot", func() error { return c.DeleteSnapshot(ctx, "nope") }, engine.ErrNotFound, `snapshot "nope" not found`},
		{"clone a volume", func() error { _, err := c.CloneVolume(ctx, "db", "x"); return err }, engine.ErrInvalid, `"db" is not a snapshot`},
		{"clone unknown", func() error { _, err := c.CloneVolume(ctx, "nope", "x"); return err }, engine.ErrNotFound, `snapshot "nope" not found`},
		{"clone without name", func() error { _, err := c.CloneVolume(ctx, "db.a", ""); return err }, engine.ErrInvalid, `clone name ""`},
		{"clone name taken", func() error { _, err := c.CloneVolume(ctx, "db.a", "db"); return err }, engine.ErrExists, `the name "db" is taken`},
		{"restore foreign snapshot", func() error { _, err := c.RestoreVolume(ctx, "db", "keep.a"); return err }, engine.ErrInvalid, `"keep.a" is not a snapshot of "db"`},
		{"restore unknown snapshot", func() error { _, err := c.RestoreVolume(ctx, "db", "nope"); return err }, engine.ErrNotFound, `snapshot "nope" not found`},
		{"restore no snapshot", func() error { _, err := c.RestoreVolume(ctx, "db", ""); return err }, engine.ErrInvalid, `name the snapshot`},
		{"delete with snapshots", func() error { return c.DeleteVolume(ctx, "db") }, engine.ErrHasSnapshots, `it has 2 snapshot(s): db.a, ` + def.Name},
		{"force delete sticky", func() error { _, err := c.DeleteVolumeForce(ctx, "keep"); return err }, engine.ErrSticky, "its 1 snapshot(s) are kept"},
		{"snap_keep 0 on update", func() error { _, err := c.UpdateVolume(ctx, "db", UpdateVolumeRequest{SnapKeep: ptr(0)}); return err }, engine.ErrInvalid, "snap_keep 0: must be 1 to 64"},
		{"snap_keep 65 on create", func() error {
			_, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "x", Size: 1 << 20, SnapKeep: 65})
			return err
		}, engine.ErrInvalid, "snap_keep 65: must be 1 to 64"},
		{"snap_keep on a snapshot", func() error { _, err := c.UpdateVolume(ctx, "db.a", UpdateVolumeRequest{SnapKeep: ptr(2)}); return err }, engine.ErrReadOnly, ""},
	} {
		err := tc.call()
		if !errors.Is(err, tc.sentinel) || !strings.Contains(err.Error(), tc.message) {
			t.Errorf("%s: got %v, want %v saying %q", tc.name, err, tc.sentinel, tc.message)
		}
	}
	// Nothing changed.
	all2, _ := c.AllVolumes(ctx)
	if !slices.Equal(names(all2), names(all)) {
		t.Fatalf("refused calls changed the volumes: %v → %v", names(all), names(all2))
	}

	// Clone and restore.
	clone, err := c.CloneVolume(ctx, "db.a", "db2")
	if err != nil || clone.Parent != "db.a" || clone.Snapshot || clone.ReadOnly {
		t.Fatalf("clone: %+v, %v", clone, err)
	}
	_, release, err := x.OpenExport("db")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RestoreVolume(ctx, "db", "db.a"); !errors.Is(err, engine.ErrBusy) || !strings.Contains(err.Error(), "disconnect its NBD clients") {
		t.Errorf("restore with a client: %v", err)
	}
	// delete --force with a client on a snapshot: refused before anything is deleted.
	_, releaseSnap, err := x.OpenExport("db.a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteVolumeForce(ctx, "db"); !errors.Is(err, engine.ErrBusy) || !strings.Contains(err.Error(), "nothing was deleted") {
		t.Errorf("force delete with a client: %v", err)
	}
	release()
	releaseSnap()
	if hs, _ := e.Holders("db"); len(hs) != 0 {
		t.Errorf("holders after release: %+v", hs)
	}
	if _, err := c.RestoreVolume(ctx, "db", "db.a"); err != nil {
		t.Fatal(err)
	}
	deleted, err := c.DeleteVolumeForce(ctx, "db")
	if err != nil || !slices.Equal(deleted, []string{"db.a", def.Name, "db"}) {
		t.Fatalf("force delete: %v, %v", deleted, err)
	}
	all3, _ := c.AllVolumes(ctx)
	if got := names(all3); !slices.Equal(got, []string{"db2", "keep", "keep.a"}) {
		t.Errorf("after force delete: %v", got)
	}
}
