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
