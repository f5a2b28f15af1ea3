// Package enginetest opens real engines on in-memory drives for the tests of
// the layers above the engine (NBD, FUSE), so that they exercise the engine's
// own behaviour, errors included, with faults injected on the drive.
package enginetest

import (
	"testing"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

// MemVolume opens an engine on d and creates one volume of size bytes named
// name in it. The engine is closed when the test ends.
func MemVolume(t testing.TB, d *drive.Mem, name string, size int64) *engine.Volume {
	t.Helper()
	e, err := engine.Open(engine.Options{NodeID: "test", LogAreaSize: 256 << 10, Drives: []engine.DriveSpec{{Path: d.Path(), Drive: d}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if _, err := e.CreateVolume(engine.VolumeSpec{Name: name, Size: size}); err != nil {
		t.Fatal(err)
	}
	v, err := e.Volume(name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
