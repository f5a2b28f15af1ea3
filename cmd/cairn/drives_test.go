package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// nbdWriteFile copies src onto the start of the export over the daemon's
// unix socket, with libnbd's nbdcopy.
func nbdWriteFile(t *testing.T, d *testDaemon, export, src string) {
	t.Helper()
	_, socket := d.nbdAddrs(t)
	run(t, "nbdcopy", src, "nbd+unix:///"+export+"?socket="+socket)
}

// nbdReadBack reads the first n bytes of the export.
func nbdReadBack(t *testing.T, d *testDaemon, export string, n int) []byte {
	t.Helper()
	_, socket := d.nbdAddrs(t)
	out := filepath.Join(t.TempDir(), "read.bin")
	run(t, "nbdcopy", "nbd+unix:///"+export+"?socket="+socket, out)
	buf, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// `service drive add DRIVE -f` of a drive the node uses is refused (by any
// path to it), and so is a daemon start naming one drive twice; the data
// is intact afterwards and after a restart (issue 13's data-loss case).
func TestDriveAddNeverReformatsInUse(t *testing.T) {
	dir := t.TempDir()
	d0, d1 := filepath.Join(dir, "d0.img"), filepath.Join(dir, "d1.img")
	for _, p := range []string{d0, d1} {
		if err := createSparseFile(p, 2<<30); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(dir, "d0-link")
	if err := os.Symlink(d0, link); err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	d := startDaemon(t, dataDir, "-s", d0, "-s", d1)
	mustCairn(t, d.api, "volume", "create", "v", "--size", "64M")
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	src := filepath.Join(t.TempDir(), "src.bin")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	nbdWriteFile(t, d, "v", src)

	for _, path := range []string{d0, link, d1} {
		mustFail(t, d.api, "in use", "service", "drive", "add", path, "-f")
		mustFail(t, d.api, "in use", "service", "drive", "add", path)
	}
	jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "operational" and (.pools | length) == 1 and (.pools[0].drives | length) == 2`)
	if got := nbdReadBack(t, d, "v", len(data)); !bytes.Equal(got, data) {
		t.Fatal("volume data changed after refused drive adds")
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	// A start that names d0 twice (once through the link) is refused.
	if _, err := launchDaemon(t, dataDir, "-s", d0, "-s", link, "-f"); err == nil || !strings.Contains(err.Error(), "same drive") {
		t.Fatalf("daemon -s d0 -s link: %v", err)
	}
	// Forcing the node's own drives at start formats nothing.
	d = startDaemon(t, dataDir, "-s", d0, "-s", d1, "-f")
	jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "operational" and (.pools[0].drives | length) == 2`)
	jq(t, mustCairn(t, d.api, "volume", "inspect", "v", "-j"), `.name == "v"`)
	if got := nbdReadBack(t, d, "v", len(data)); !bytes.Equal(got, data) {
		t.Fatal("volume data changed after a forced restart")
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// A pool whose drive is missing at start keeps its volumes' names: the
// node logs the refused drive, lists the volume as unavailable, refuses
// the name to a create, and serves the volume again, data intact, when the
// drive is back (issue 13: the name was taken again, then the node could
// not start). A create whose io_priority falls back says so.
func TestMissingDriveKeepsVolumeNames(t *testing.T) {
	dir := t.TempDir()
	d0, d1 := filepath.Join(dir, "d0.img"), filepath.Join(dir, "d1.img")
	for _, p := range []string{d0, d1} {
		if err := createSparseFile(p, 2<<30); err != nil {
			t.Fatal(err)
		}
	}
	dataDir := t.TempDir()
	d := startDaemon(t, dataDir, "-s", d0)
	mustCairn(t, d.api, "service", "drive", "add", d1, "--io_priority", "high")
	out := mustCairn(t, d.api, "volume", "create", "v6", "--size", "64M", "--io_priority", "high")
	if strings.Contains(out, "no high pool") {
		t.Fatalf("create on an existing high pool says it fell back:\n%s", out)
	}
	src := filepath.Join(t.TempDir(), "src.bin")
	data := bytes.Repeat([]byte("cairn v6 "), 1<<20)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	nbdWriteFile(t, d, "v6", src)
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	away := d1 + ".away"
	if err := os.Rename(d1, away); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, dataDir)
	for _, want := range []string{`msg="drive refused" path=` + d1, `msg="volume unavailable" name=v6`} {
		if !strings.Contains(d.log(), want) {
			t.Errorf("start with a missing drive: the log does not say %q", want)
		}
	}
	st := mustCairn(t, d.api, "status", "-j")
	jq(t, st, `.status == "degraded" and .unavailable_volumes == 1`)
	jq(t, mustCairn(t, d.api, "volume", "list", "-j"), `[.[] | select(.name == "v6") | .state | startswith("unavailable: pool 1 (high)")] == [true]`)
	mustFail(t, d.api, "stays taken", "volume", "create", "v6", "--size", "64M")
	mustFail(t, d.api, "unavailable", "volume", "inspect", "v6")
	out = mustCairn(t, d.api, "volume", "create", "v7", "--size", "64M", "--io_priority", "high")
	if !strings.Contains(out, "no high pool: created on low") {
		t.Errorf("a create that fell back does not say so:\n%s", out)
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	if err := os.Rename(away, d1); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, dataDir)
	jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "operational" and .unavailable_volumes == 0 and .duplicate_volumes == []`)
	jq(t, mustCairn(t, d.api, "volume", "inspect", "v6", "-j"), `.state == "up" and .io_priority == "high"`)
	if got := nbdReadBack(t, d, "v6", len(data)); !bytes.Equal(got, data) {
		t.Fatal("v6's data changed while its drive was away")
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
