package nbd

// Tests with real NBD clients: libnbd's nbdinfo and nbdcopy, fio's nbd
// engine, qemu-io. `make deps` installs them; a missing binary skips the
// test with the reason.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNbdinfo(t *testing.T) {
	env := newEnv(t)
	uri := env.volume("info", 64<<20)
	env.volume("other", 8<<20)

	var info struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []struct {
			Name         string   `json:"export-name"`
			Size         int64    `json:"export-size"`
			Contexts     []string `json:"contexts"`
			ReadOnly     bool     `json:"is_read_only"`
			CanCache     bool     `json:"can_cache"`
			CanDF        bool     `json:"can_df"`
			CanFastZero  bool     `json:"can_fast_zero"`
			CanFlush     bool     `json:"can_flush"`
			CanFUA       bool     `json:"can_fua"`
			CanMultiConn bool     `json:"can_multi_conn"`
			CanTrim      bool     `json:"can_trim"`
			CanZero      bool     `json:"can_zero"`
			BlockMin     int64    `json:"block_size_minimum"`
			BlockPref    int64    `json:"block_size_preferred"`
			BlockMax     int64    `json:"block_size_maximum"`
		} `json:"exports"`
	}
	out := mustRun(t, 30*time.Second, "nbdinfo", "--json", uri)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || !info.Structured || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %s", out)
	}
	e := info.Exports[0]
	if e.Name != "info" || e.Size != 64<<20 || e.ReadOnly {
		t.Errorf("export %q size %d read-only %v", e.Name, e.Size, e.ReadOnly)
	}
	if !(e.CanFlush && e.CanFUA && e.CanTrim && e.CanZero && e.CanMultiConn && e.CanCache && e.CanDF && e.CanFastZero) {
		t.Errorf("capabilities missing: %s", out)
	}
	if len(e.Contexts) != 1 || e.Contexts[0] != "base:allocation" {
		t.Errorf("contexts %q", e.Contexts)
	}
	if e.BlockMin != 1 || e.BlockPref != 4096 || e.BlockMax != 32<<20 {
		t.Errorf("block sizes %d/%d/%d", e.BlockMin, e.BlockPref, e.BlockMax)
	}

	// --list shows both exports.
	out = mustRun(t, 30*time.Second, "nbdinfo", "--list", "--json", fmt.Sprintf("nbd+unix:///?socket=%s", env.sock))
	for _, name := range []string{`"info"`, `"other"`} {
		if !strings.Contains(out, name) {
			t.Errorf("nbdinfo --list lacks %s:\n%s", name, out)
		}
	}

	// An unknown export fails clearly.
	out, err := run(t, 30*time.Second, "nbdinfo", env.uri("missing"))
	if err == nil || !strings.Contains(out, "missing") {
		t.Errorf("nbdinfo of an unknown export: err=%v\n%s", err, out)
	}
}

type mapEntry struct {
	Offset, Length int64
	Type           int
}

func nbdMap(t *testing.T, uri string) []mapEntry {
	t.Helper()
	out := mustRun(t, 30*time.Second, "nbdinfo", "--map", "--json", uri)
	var m []mapEntry
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	return m
}

func TestNbdinfoMap(t *testing.T) {
	env := newEnv(t)
	const size = 64 << 20
	uri := env.volume("map", size)
	hole := 3 // hole,zero

	if m := nbdMap(t, uri); len(m) != 1 || m[0] != (mapEntry{0, size, hole}) {
		t.Fatalf("fresh volume map %+v, want one hole", m)
	}
	mustRun(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 1M", uri)
	want := []mapEntry{{0, 1 << 20, hole}, {1 << 20, 1 << 20, 0}, {2 << 20, size - 2<<20, hole}}
	if m := nbdMap(t, uri); fmt.Sprint(m) != fmt.Sprint(want) {
		t.Fatalf("map after write %+v, want %+v", m, want)
	}
	mustRun(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "discard 1M 1M", uri)
	if m := nbdMap(t, uri); len(m) != 1 || m[0] != (mapEntry{0, size, hole}) {
		t.Fatalf("map after trim %+v, want one hole", m)
	}
}

func TestQemuIO(t *testing.T) {
	env := newEnv(t)
	uri := env.volume("qemu", 8<<20)
	// qemu-io exits 1 because two commands are meant to fail.
	out, _ := run(t, 60*time.Second, "qemu-io", "-f", "raw",
		"-c", "write -f -P 0x11 0 64k", // FUA
		"-c", "read -P 0x11 0 64k",
		"-c", "write -P 0x22 64k 64k",
		"-c", "write -z 64k 32k", // write zeroes
		"-c", "read -P 0 64k 32k",
		"-c", "read -P 0x22 96k 32k",
		"-c", "write -z -u 96k 32k", // write zeroes, may unmap
		"-c", "read -P 0 96k 32k",
		"-c", "write -P 0x44 128k 64k",
		"-c", "write -z -n 128k 64k", // fast zero without unmap: refused (ENOTSUP), data intact
		"-c", "read -P 0x44 128k 64k",
		"-c", "write -z -n -u 128k 64k", // fast zero that may unmap: done
		"-c", "read -P 0 128k 64k",
		"-c", "discard 0 64k",
		"-c", "flush",
		"-c", "read 8M 4k", // past the end: fails
		"-c", "read -P 0x22 0x1f000 0", // zero-length
		"-c", "write -P 0x33 8380416 4096", // the last 4 KiB
		"-c", "read -P 0x33 8380416 4096", // same connection still works
		uri)
	t.Logf("qemu-io:\n%s", out)
	for _, bad := range []string{"Pattern verification failed", "discard failed", "flush failed"} {
		if strings.Contains(out, bad) {
			t.Errorf("qemu-io reported %q", bad)
		}
	}
	if n := strings.Count(out, "write failed"); n != 1 || !strings.Contains(out, "write failed: Operation not supported") {
		t.Errorf("want exactly one failed write (fast zero without unmap), got %d", n)
	}
	if n := strings.Count(out, "read failed"); n != 1 {
		t.Errorf("want exactly one failed read (past the end), got %d", n)
	}
	if !strings.Contains(out, "read 4096/4096 bytes at offset 8380416") {
		t.Errorf("read after the failed read did not succeed")
	}
}

// fioJob runs fio's nbd engine against uri with verify=crc32c.
func fioJob(t *testing.T, uri string, args ...string) {
	t.Helper()
	base := []string{"--name=verify", "--ioengine=nbd", "--uri=" + uri,
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse"}
	out, err := run(t, 120*time.Second, "fio", append(base, args...)...)
	if err != nil || strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
		t.Fatalf("fio %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestFio(t *testing.T) {
	needTool(t, "fio")
	env := newEnv(t)
	uri := env.volume("fio", 128<<20)
	t.Run("randwrite4k", func(t *testing.T) {
		fioJob(t, uri, "--rw=randwrite", "--bs=4k", "--size=64M", "--iodepth=32")
	})
	t.Run("seqwrite1M", func(t *testing.T) {
		fioJob(t, uri, "--rw=write", "--bs=1M", "--size=128M", "--iodepth=8")
	})
	t.Run("twoConnections", func(t *testing.T) {
		// Each job has its own connection and its own 64 MiB region.
		fioJob(t, uri, "--rw=randwrite", "--bs=4k", "--size=64M", "--offset_increment=64M",
			"--numjobs=2", "--iodepth=16")
	})
}

func TestNbdcopy(t *testing.T) {
	needTool(t, "nbdcopy")
	env := newEnv(t)
	const size = 256 << 20
	uri := env.volume("copy", size)

	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{4})
	if _, err := io.CopyN(f, rng, size); err != nil {
		t.Fatal(err)
	}
	f.Close()

	mustRun(t, 120*time.Second, "nbdcopy", src, uri)
	dst := filepath.Join(dir, "dst.img")
	mustRun(t, 120*time.Second, "nbdcopy", uri, dst)
	a, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		i := 0
		for i < min(len(a), len(b)) && a[i] == b[i] {
			i++
		}
		t.Fatalf("copy differs: %d vs %d bytes, first difference at %d", len(a), len(b), i)
	}
}
