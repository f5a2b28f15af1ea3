package control

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

// `host detach VOL` lets go of a record that a restart could not restore
// because VOL's pool is missing: it succeeds, and the record is gone.
func TestDetachForgetsRecordOfUnavailableVolume(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 256<<20); err != nil {
			t.Fatal(err)
		}
		return p
	}
	low, high := mk("low.img"), mk("high.img")
	node, err := OpenNode(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	cat := NewVolumeCatalog(dir, nil)
	e, err := engine.Open(engine.Options{NodeID: node.ID(), Catalog: cat, Drives: []engine.DriveSpec{
		{Path: low}, {Path: high, IOPriority: engine.PriorityHigh}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateVolume(engine.VolumeSpec{Name: "db", Size: 16 << 20, IOPriority: engine.PriorityHigh}); err != nil {
		t.Fatal(err)
	}
	e.Close()
	rec := `[{"volume":"db","via":"fuse","mounts":[{"path":"/mnt/review-db","fs":"ext4"}]}]`
	if err := os.WriteFile(filepath.Join(dir, attachStateFile), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	// The high drive is missing at this start.
	e, err = engine.Open(engine.Options{NodeID: node.ID(), Catalog: cat, Drives: []engine.DriveSpec{{Path: low}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	srv := NewServer(e, node, nil, nil)
	a := NewAttacher(e, AttachConfig{DataDir: dir, NodeID: node.ID()})
	a.Restore(context.Background())
	defer a.Shutdown()
	srv.SetAttacher(a)
	if rs := a.RestoreState(); len(rs.Errors) != 1 {
		t.Fatalf("restore state: %+v", rs)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	c := NewClient(hs.URL)
	_, derr := c.Detach(context.Background(), "db")
	raw, _ := os.ReadFile(filepath.Join(dir, attachStateFile))
	if derr != nil || strings.TrimSpace(string(raw)) != "[]" {
		t.Errorf("host detach of the pending record: %v; attachments.json: %s", derr, raw)
	}
	if rs := a.RestoreState(); len(rs.Errors) != 0 {
		t.Errorf("restore errors after the record was let go: %+v", rs.Errors)
	}
}
