package cloudsnap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/s3test"
)

// format1Content is what the volumes of testdata/format1 hold: 2 MiB +
// 64 KiB, extent 0 compressible text, extent 1 a hole, extent 2 (the last,
// 64 KiB) random bytes.
func format1Content() []byte {
	b := make([]byte, 2<<20+64<<10)
	copy(b, bytes.Repeat([]byte("cairn cloudsnap format 1 fixture\n"), 1<<15)[:1<<20])
	copy(b[2<<20:], randBytes(18, 64<<10))
	return b
}

// Backups written by cairn before format 2 (commit 8e56dc4: format 1, every
// frame zstd, one of them a stored block of random data) restore: the
// bucket under testdata/format1 holds one unencrypted and one encrypted
// backup (passphrase "format 1 fixture") of format1Content, as that cairn
// wrote them.
func TestReadsFormat1(t *testing.T) {
	srv := s3test.Start(t, bucket)
	st := testStore(t, srv, "format 1 fixture")
	ctx := context.Background()
	root := filepath.Join("testdata", "format1")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		return st.put(ctx, filepath.ToSlash(rel), b, dataTimeout)
	})
	if err != nil {
		t.Fatal(err)
	}
	list, err := List(ctx, st, "")
	if err != nil || len(list) != 2 {
		t.Fatalf("list: %+v, %v (want the 2 backups of testdata/format1)", list, err)
	}
	e := testEngine(t, 64<<20)
	want := format1Content()
	for _, ent := range list {
		m, err := ReadManifest(ctx, st, ent.ID)
		if err != nil || m.Format != 1 {
			t.Fatalf("manifest %s: %v, format %d (want 1)", ent.ID, err, m.Format)
		}
		name := ent.Volume + "-restored"
		if _, err := Restore(ctx, e, st, ent.ID, name, nil); err != nil {
			t.Fatalf("restore of format-1 backup %s: %v", ent.ID, err)
		}
		sameContent(t, "format-1 backup of "+ent.Volume, want, content(t, e, name))
	}
}

// Extents zstd cannot shrink are stored raw (format 2), the others as zstd
// frames; both restore, unencrypted and encrypted; a backup with no raw
// frame stays format 1, which older cairns read.
func TestRawFrames(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	for _, pass := range []string{"", "raw frames"} {
		e := testEngine(t, 64<<20)
		st := testStore(t, srv, pass)
		// 3 MiB + 12 KiB: random, text, hole, a random 12 KiB tail.
		e.CreateVolume(engine.VolumeSpec{Name: "mix", Size: 3<<20 + 12<<10})
		write(t, e, "mix", 0, randBytes(5, 1<<20))
		write(t, e, "mix", 1<<20, bytes.Repeat([]byte("compressible "), 1<<17)[:1<<20])
		write(t, e, "mix", 3<<20, randBytes(6, 12<<10))
		c := &chain{t: t, e: e, st: st, vol: "mix"}
		m := c.backup(false)
		want := content(t, e, "mix")
		if m.Format != 2 || len(m.Extents) != 3 {
			t.Fatalf("passphrase %q: format %d, %d extents (want format 2, 3 extents)", pass, m.Format, len(m.Extents))
		}
		for i, raw := range []bool{true, false, true} {
			if f := m.Extents[i]; f.Raw != raw || raw && f.Len != m.rawLen(f.X) {
				t.Fatalf("passphrase %q: extent %+v, want raw=%v", pass, f, raw)
			}
		}
		if _, err := Restore(ctx, e, st, m.ID, "back", nil); err != nil {
			t.Fatalf("passphrase %q: %v", pass, err)
		}
		sameContent(t, "restore with raw frames", want, content(t, e, "back"))

		// Only compressible data since: the incremental's new frame is zstd,
		// but it lists the raw frames of the full backup, so it is format 2
		// too. A new chain of compressible data alone is format 1.
		write(t, e, "mix", 0, bytes.Repeat([]byte("text "), 1<<18)[:1<<20])
		if m2 := c.backup(false); m2.Format != 2 {
			t.Fatalf("incremental over raw frames: format %d", m2.Format)
		}
		e.CreateVolume(engine.VolumeSpec{Name: "text", Size: 2 << 20})
		write(t, e, "text", 0, bytes.Repeat([]byte("text "), 1<<18)[:1<<20])
		if m3 := (&chain{t: t, e: e, st: st, vol: "text"}).backup(false); m3.Format != 1 {
			t.Fatalf("backup of compressible data: format %d (want 1)", m3.Format)
		}
	}
}

// A manifest claiming a raw frame it cannot hold is refused before
// anything is read or created.
func TestManifestCheckRawFrames(t *testing.T) {
	base := func() *Manifest {
		return &Manifest{Format: 2, ExtentSize: extentSize, Size: 2<<20 + 4096, Compression: "zstd", VolumeID: "0123456789abcdef",
			Objects: []Object{{Key: volumePrefix("0123456789abcdef") + "0123456789abcdef-20261202T000000.000Z/data/000000", Size: 4 << 20}},
			Extents: []Frame{{X: 0, Off: 0, Len: extentSize, Raw: true}, {X: 2, Off: extentSize, Len: 4096, Raw: true}}}
	}
	if err := base().check(); err != nil {
		t.Fatalf("a good manifest: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(m *Manifest)
		want string
	}{
		{"raw frame in a format 1 manifest", func(m *Manifest) { m.Format = 1 }, "raw frames are format 2"},
		{"an object of another volume", func(m *Manifest) { m.Objects[0].Key = volumePrefix("fedcba9876543210") + "x/data/000000" }, "bad entry"},
		{"no volume id", func(m *Manifest) { m.VolumeID = "" }, "bad entry"},
		{"format from the future", func(m *Manifest) { m.Format = FormatVersion + 1 }, "this cairn reads formats 1 to"},
		{"format 0", func(m *Manifest) { m.Format = 0 }, "this cairn reads formats 1 to"},
		{"raw frame shorter than its extent", func(m *Manifest) { m.Extents[0].Len-- }, "raw frame of"},
		{"raw tail frame of a whole extent", func(m *Manifest) { m.Extents[1].Len = extentSize }, "raw frame of"},
		{"raw frame without room for nonce and tag", func(m *Manifest) {
			m.Encryption = &Encryption{Cipher: "aes-256-gcm", KDF: "argon2id", Salt: make([]byte, 16), Time: 1, MemoryKiB: 1, Threads: 1,
				Check: make([]byte, nonceSize+len(keyCheck)+tagSize)}
		}, "raw frame of"},
	} {
		m := base()
		tc.edit(m)
		if err := m.check(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v (want an error saying %q)", tc.name, err, tc.want)
		}
	}
}

// A damaged raw frame is refused naming its object (by the object's
// checksum, or GCM's tag when the checksum was forged too), and no volume
// is left.
func TestCorruptRawFrame(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 64<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 4 << 20})
	write(t, e, "v", 0, randBytes(7, 4<<20))
	st := testStore(t, srv, "damaged")
	m := (&chain{t: t, e: e, st: st, vol: "v"}).backup(false)
	if !m.Extents[2].Raw {
		t.Fatalf("random extent not raw: %+v", m.Extents[2])
	}
	// Damage a byte of extent 2's ciphertext and fix the object's checksum
	// in the manifest, so that only GCM can tell.
	o := &m.Objects[m.Extents[2].O]
	path := filepath.Join(srv.Dir, bucket, filepath.FromSlash(o.Key))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[m.Extents[2].Off+nonceSize+100] ^= 1
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, fixSum := range []bool{false, true} {
		if fixSum {
			rewriteManifest(t, st, m, func(m *Manifest) { m.Objects[m.Extents[2].O].XXH64 = xxhash.Sum64(b) })
		}
		_, err = Restore(ctx, e, st, m.ID, "r", nil)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), o.Key) {
			t.Fatalf("checksum fixed %v: restore of a damaged raw frame: %v (want corrupt, naming %s)", fixSum, err, o.Key)
		}
		if _, err := e.Volume("r"); err == nil {
			t.Fatal("a failed restore left its volume")
		}
	}
}

// rewriteManifest stores backup m's manifest again, changed by edit (as a
// damaged or forged bucket would hold it).
func rewriteManifest(t *testing.T, st *Store, m *Manifest, edit func(m *Manifest)) {
	t.Helper()
	c := *m
	c.Objects = slices.Clone(m.Objects)
	c.Extents = slices.Clone(m.Extents)
	edit(&c)
	raw, err := json.Marshal(&c)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := manifestKey(m.ID)
	if err := st.put(context.Background(), key, raw, smallTimeout); err != nil {
		t.Fatal(err)
	}
}
