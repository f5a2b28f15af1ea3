package engine

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

// fileDrives makes n blank sparse file drives of size bytes in a temp dir.
func fileDrives(t *testing.T, n int, size int64) []string {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for i := range n {
		p := filepath.Join(dir, "d"+string(rune('0'+i))+".img")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func fileOptions(node string, paths ...string) Options {
	o := Options{NodeID: node, LogAreaSize: 256 << 10}
	for _, p := range paths {
		o.Drives = append(o.Drives, DriveSpec{Path: p})
	}
	return o
}

// writeVolume creates name and fills its first n bytes with pattern(seed).
func writeVolume(t *testing.T, e *Engine, name string, seed, n int) {
	t.Helper()
	if _, err := e.CreateVolume(VolumeSpec{Name: name, Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := e.Volume(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(pattern(seed, n), 0, true); err != nil {
		t.Fatal(err)
	}
}

// checkVolume fails unless name's first n bytes are pattern(seed).
func checkVolume(t *testing.T, e *Engine, name string, seed, n int) {
	t.Helper()
	v, err := e.Volume(name)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, n)
	if err := v.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, pattern(seed, n)) {
		t.Fatalf("volume %s: data changed", name)
	}
}

// A drive a pool has open is never formatted again, force or not, by any
// path to it: the data-loss case of `service drive add d0 -f` (issue 13).
func TestAddDriveRefusesDriveInUse(t *testing.T) {
	paths := fileDrives(t, 2, 64<<20)
	e, err := Open(fileOptions(testNode, paths...))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { e.Close() }()
	writeVolume(t, e, "data", 1, 8<<20)
	link := filepath.Join(t.TempDir(), "d0-link")
	if err := os.Symlink(paths[0], link); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{paths[0], link, paths[1]} {
		for _, force := range []bool{false, true} {
			err := e.AddDrive(DriveSpec{Path: path, Force: force})
			if !errors.Is(err, ErrDriveRefused) || !strings.Contains(err.Error(), "pool 0") {
				t.Fatalf("add %s (force %v) of a drive in use: %v", path, force, err)
			}
		}
	}
	if st := e.Status(); len(st.Pools) != 1 || len(st.Pools[0].Drives) != 2 {
		t.Fatalf("pools after refused adds: %+v", st.Pools)
	}
	checkVolume(t, e, "data", 1, 8<<20)
	if err := e.Check(); err != nil {
		t.Fatal(err)
	}
	e.Close()
	e, err = Open(fileOptions(testNode, paths...))
	if err != nil {
		t.Fatal(err)
	}
	checkVolume(t, e, "data", 1, 8<<20)
}

// A copy of an in-use drive (same superblock, another file) is refused too.
func TestAddDriveRefusesCopyOfDriveInUse(t *testing.T) {
	paths := fileDrives(t, 1, 64<<20)
	e, err := Open(fileOptions(testNode, paths...))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	writeVolume(t, e, "data", 2, 4<<20)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	buf, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(t.TempDir(), "copy.img")
	if err := os.WriteFile(cp, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	e, err = Open(fileOptions(testNode, paths...))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	err = e.AddDrive(DriveSpec{Path: cp, Force: true})
	if !errors.Is(err, ErrDriveRefused) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("forced add of a copy of an in-use drive: %v", err)
	}
	checkVolume(t, e, "data", 2, 4<<20)
}

// Another node's drive is refused without force, naming the node; force
// takes it.
func TestAddDriveOtherNodesDrive(t *testing.T) {
	paths := fileDrives(t, 2, 64<<20)
	other, err := Open(fileOptions("node-other", paths[1]))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}
	e, err := Open(fileOptions(testNode, paths[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	err = e.AddDrive(DriveSpec{Path: paths[1]})
	if !errors.Is(err, ErrDriveRefused) || !strings.Contains(err.Error(), `node "node-other"`) {
		t.Fatalf("add of another node's drive without force: %v", err)
	}
	if err := e.AddDrive(DriveSpec{Path: paths[1], Force: true}); err != nil {
		t.Fatalf("forced add of another node's drive: %v", err)
	}
	if st := e.Status(); len(st.Pools) != 1 || len(st.Pools[0].Drives) != 2 {
		t.Fatalf("pools: %+v", st.Pools)
	}
}

// At start, a drive named twice (two paths to one file) and force on the
// node's own drives format nothing: the pool and its data are intact.
func TestOpenNeverReformatsOwnDrives(t *testing.T) {
	paths := fileDrives(t, 2, 64<<20)
	e, err := Open(fileOptions(testNode, paths...))
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, e, "data", 3, 8<<20)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "d0-link")
	if err := os.Symlink(paths[0], link); err != nil {
		t.Fatal(err)
	}
	opts := fileOptions(testNode, paths...)
	for i := range opts.Drives {
		opts.Drives[i].Force = true
	}
	opts.Drives = append(opts.Drives, DriveSpec{Path: link, Force: true}, DriveSpec{Path: paths[1], Force: true})
	e, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	st := e.Status()
	if len(st.Pools) != 1 || len(st.Pools[0].Drives) != 2 || st.Pools[0].Status != "Online" {
		t.Fatalf("pools: %+v", st.Pools)
	}
	if len(st.RefusedDrives) != 2 {
		t.Fatalf("want both repeated drives refused, got %+v", st.RefusedDrives)
	}
	for _, r := range st.RefusedDrives {
		if !strings.Contains(r.Status, "same drive") {
			t.Fatalf("refused for the wrong reason: %+v", r)
		}
	}
	checkVolume(t, e, "data", 3, 8<<20)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err = Open(fileOptions(testNode, paths...))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	checkVolume(t, e, "data", 3, 8<<20)
}

// A drive of one of this node's pools that could not be opened is kept for
// when the pool returns, force or not.
func TestAddDriveRefusesFailedPoolsDrive(t *testing.T) {
	a, b := drive.NewMem("a", 32<<20), drive.NewMem("b", 32<<20)
	e := memEngine(t, a, b) // one pool: a is drive 0, b drive 1
	writeVolume(t, e, "data", 4, 4<<20)
	e.Close()
	// Start with only b: its pool cannot be opened without drive 0.
	e2, err := Open(Options{NodeID: testNode, LogAreaSize: 256 << 10, Drives: []DriveSpec{
		{Path: "b", Drive: b.Reopen()}, {Path: "c", Drive: drive.NewMem("c", 32<<20)}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	err = e2.AddDrive(DriveSpec{Path: "b-again", Drive: b.Reopen(), Force: true})
	if !errors.Is(err, ErrDriveRefused) || !strings.Contains(err.Error(), "could not be opened") {
		t.Fatalf("forced add of a failed pool's drive: %v", err)
	}
	e2.Close()
	e3 := memEngine(t, a, b)
	checkVolume(t, e3, "data", 4, 4<<20)
}
