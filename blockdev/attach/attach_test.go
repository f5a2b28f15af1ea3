package attach

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	in := `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
36 22 7:3 / /mnt/with\040space rw,relatime - ext4 /dev/loop3 rw
40 22 0:57 / /var/lib/cairn/fuse rw,nosuid,nodev shared:9 master:2 - fuse.cairn cairn rw,user_id=0
`
	ms, err := parseMountinfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 3 {
		t.Fatalf("%d entries", len(ms))
	}
	if m := ms[1]; m.MountPoint != "/mnt/with space" || m.FSType != "ext4" || m.Source != "/dev/loop3" || m.Dev != 7<<8|3 {
		t.Errorf("escaped entry: %+v", m)
	}
	if m := ms[2]; m.FSType != "fuse.cairn" || m.MountPoint != "/var/lib/cairn/fuse" {
		t.Errorf("optional fields: %+v", m)
	}
	for _, bad := range []string{"1 2 3\n", "1 2 x:y / /a rw - ext4 /dev/a rw\n", "1 2 7:0 / /a rw ext4\n"} {
		if _, err := parseMountinfo([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestCleanPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(dir, link)
	if got, err := CleanPath(link); err != nil || got != dir {
		t.Errorf("CleanPath(symlink) = %q, %v; want %q", got, err, dir)
	}
	for path, want := range map[string]string{
		"relative":                 "not absolute",
		filepath.Join(dir, "nope"): "does not exist",
		file:                       "not a directory",
	} {
		if _, err := CleanPath(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CleanPath(%q): %v, want %q", path, err, want)
		}
	}
}

func TestAttachNBDWithoutModule(t *testing.T) {
	if HaveNBD() {
		t.Skip("this kernel has nbd")
	}
	if _, err := AttachNBD("/nonexistent", "vol"); err != ErrNoNBD {
		t.Errorf("AttachNBD without /dev/nbd0: %v, want ErrNoNBD", err)
	}
}
