// Package catalogfuzz fuzzes the volume catalog (DATA_DIR/volumes.json, a
// file an operator can edit) from its bytes through control's loader into
// engine.Open: whatever the file holds, the node starts (a damaged file is
// moved aside), never panics, lists what it serves and creates volumes.
package catalogfuzz

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/cairn-storage/cairn/control"
	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

func FuzzCatalog(f *testing.F) {
	f.Add([]byte(`{"version":1,"volumes":[{"name":"v6","id":"0123456789abcdef","pool":1,"pool_uuid":"00112233445566778899aabbccddeeff","io_priority":"high"}]}`))
	f.Add([]byte(`{"version":1,"volumes":[{"name":"v","pool":0,"pool_uuid":"x"},{"name":"v","pool":0,"pool_uuid":"00112233445566778899aabbccddeeff"},{"name":"v","pool":0,"pool_uuid":"ffeeddccbbaa99887766554433221100"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`not json`))
	f.Add([]byte(`{"version":1,"volumes":[{"name":"a@pool0","pool":-1,"pool_uuid":"00112233445566778899aabbccddeeff","snapshot":true,"parent":"a"}]}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "volumes.json"), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		cat := control.NewVolumeCatalog(dir, nil)
		d := drive.NewMem("d", 32<<20)
		e, err := engine.Open(engine.Options{NodeID: "fuzz", Catalog: cat, LogAreaSize: 256 << 10,
			Drives: []engine.DriveSpec{{Path: "d", Drive: d}}})
		if err != nil {
			return // a newer format version is refused, clearly
		}
		defer e.Close()
		for _, v := range e.Volumes() {
			_, _ = e.Volume(v.Name)
			_, _ = e.Volume(v.ID)
		}
		_ = e.Status()
		if _, err := e.CreateVolume(engine.VolumeSpec{Name: "fresh", Size: 1 << 20}); err != nil && !errors.Is(err, engine.ErrExists) {
			t.Fatalf("create on a node whose catalog was %q: %v", raw, err)
		}
		if err := e.Check(); err != nil {
			t.Fatal(err)
		}
	})
}
