package attach

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/engine"
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

// memExport is an in-memory nbd.Export.
type memExport struct{ size int64 }

func (m memExport) Name() string                                  { return "e" }
func (m memExport) Size() int64                                   { return m.size }
func (m memExport) ReadOnly() bool                                { return false }
func (m memExport) ReadAt([]byte, int64) error                    { return nil }
func (m memExport) WriteAt([]byte, int64, bool) error             { return nil }
func (m memExport) Flush() error                                  { return nil }
func (m memExport) Trim(int64, int64) error                       { return nil }
func (m memExport) WriteZeroes(int64, int64, bool) error          { return nil }
func (m memExport) Extents(int64, int64) ([]engine.Extent, error) { return nil, nil }

type exports struct{}

func (exports) OpenExport(name string) (nbd.Export, func(), error) {
	if name != "vol" {
		return nil, nil, engine.ErrNotFound
	}
	return memExport{size: 64 << 20}, func() {}, nil
}
func (exports) ExportNames() []string { return []string{"vol"} }

// TestNBDHandshake runs the userspace half of a kernel NBD attach against
// cairn's NBD server: it works without the nbd module.
func TestNBDHandshake(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(exports{}, nbd.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	go srv.Serve(l)
	defer srv.Shutdown(t.Context())

	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	size, tflags, err := nbdHandshake(c, "vol")
	if err != nil {
		t.Fatal(err)
	}
	const hasFlags, sendFlush = 1 << 0, 1 << 2
	if size != 64<<20 || tflags&hasFlags == 0 || tflags&sendFlush == 0 {
		t.Errorf("size %d, flags %#x", size, tflags)
	}
	c2, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, _, err := nbdHandshake(c2, "missing"); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("unknown export: %v", err)
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
