package cloudsnap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/s3test"
)

const bucket = "backups"

func testEngine(t *testing.T, size int64) *engine.Engine {
	t.Helper()
	d := drive.NewMem("mem0", size)
	e, err := engine.Open(engine.Options{NodeID: "node-test", LogAreaSize: 256 << 10,
		Drives: []engine.DriveSpec{{Path: d.Path(), Drive: d}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func testStore(t *testing.T, srv *s3test.Server, passphrase string) *Store {
	t.Helper()
	st, err := Open(Credential{Name: "t", Endpoint: srv.Endpoint(), AccessKey: s3test.AccessKey, SecretKey: s3test.SecretKey,
		Bucket: bucket, Passphrase: passphrase})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 3))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func write(t *testing.T, e *engine.Engine, vol string, off int64, b []byte) {
	t.Helper()
	v, err := e.Volume(vol)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(b, off, false); err != nil {
		t.Fatal(err)
	}
}

func content(t *testing.T, e *engine.Engine, vol string) []byte {
	t.Helper()
	v, err := e.Volume(vol)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, v.Size())
	if err := v.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// sameContent compares two volumes extent by extent, naming the first that differs.
func sameContent(t *testing.T, what string, want, got []byte) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%s: size %d, want %d", what, len(got), len(want))
	}
	for off := 0; off < len(want); off += extentSize {
		end := min(len(want), off+extentSize)
		if xxhash.Sum64(want[off:end]) != xxhash.Sum64(got[off:end]) {
			t.Fatalf("%s: extent %d differs", what, off/extentSize)
		}
	}
}

// chain takes snapshots and backs them up in turn, as the daemon does.
type chain struct {
	t            *testing.T
	e            *engine.Engine
	st           *Store
	vol          string
	prevSnap, id string
	n            int
	restored     int // volumes restores made
}

// backup takes the next backup of the chain (full, or as Backup decides),
// failing the test on an error.
func (c *chain) backup(full bool) *Manifest {
	c.t.Helper()
	_, m, err := c.try(full)
	if err != nil {
		c.t.Fatalf("backup %d: %v", c.n, err)
	}
	return m
}

// try takes the next backup of the chain and returns its id and error; a
// failed one is not the chain's base.
func (c *chain) try(full bool) (string, *Manifest, error) {
	c.t.Helper()
	c.n++
	snap := c.vol + ".cs" + string(rune('a'+c.n))
	if _, err := c.e.CreateSnapshot(c.vol, snap); err != nil {
		c.t.Fatal(err)
	}
	v, _ := c.e.Volume(c.vol)
	id := NewID(v.Info().ID, time.Now().Add(time.Duration(c.n)*time.Millisecond))
	m, err := Backup(context.Background(), c.e, c.st, BackupRequest{ID: id, Snapshot: snap, BaseSnapshot: c.prevSnap, BaseID: c.id, Full: full}, nil)
	if err == nil {
		c.prevSnap, c.id = snap, id
	}
	return id, m, err
}

// A written volume, backed up; more writes, an incremental that uploads
// about what changed; both restore to exactly their snapshot's content.
func TestBackupIncrementalRestore(t *testing.T) {
	srv := s3test.Start(t, bucket)
	st := testStore(t, srv, "")
	ctx := context.Background()
	if err := st.Validate(ctx); err != nil {
		t.Fatal(err)
	}
	e := testEngine(t, 256<<20)
	const size = 64 << 20
	e.CreateVolume(engine.VolumeSpec{Name: "db", Size: size})
	write(t, e, "db", 0, randBytes(1, 8<<20))
	write(t, e, "db", 32<<20, randBytes(2, 4<<20))
	write(t, e, "db", 40<<20, make([]byte, 2<<20)) // written zeros: not uploaded
	c := &chain{t: t, e: e, st: st, vol: "db"}
	m1 := c.backup(false)
	want1 := content(t, e, "db")
	if !m1.Full || len(m1.Extents) != 12 {
		t.Fatalf("first backup: full=%v, %d extents (want full, 12)", m1.Full, len(m1.Extents))
	}
	if m1.Uploaded < 12<<20 || m1.Uploaded > 13<<20 {
		t.Fatalf("first backup uploaded %d bytes of 12 MiB of random data", m1.Uploaded)
	}

	// 3 MiB rewritten (one partial extent among them), one extent trimmed.
	write(t, e, "db", 1<<20, randBytes(3, 2<<20))
	write(t, e, "db", 33<<20+4096, randBytes(4, 8192))
	v, _ := e.Volume("db")
	if err := v.Trim(5<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	m2 := c.backup(false)
	want2 := content(t, e, "db")
	if m2.Full || m2.Base != m1.ID || m2.ChainIndex != 1 {
		t.Fatalf("second backup: full=%v base=%q index %d", m2.Full, m2.Base, m2.ChainIndex)
	}
	if m2.Uploaded < 3<<20 || m2.Uploaded > 3<<20+64<<10 {
		t.Fatalf("incremental uploaded %d bytes, want about the 3 MiB changed", m2.Uploaded)
	}
	if len(m2.Extents) != 11 {
		t.Fatalf("incremental lists %d extents, want 11", len(m2.Extents))
	}

	list, err := List(ctx, st, "db")
	if err != nil || len(list) != 2 || list[0].ID != m1.ID || list[1].ID != m2.ID || !list[0].Full || list[1].Full {
		t.Fatalf("list: %+v, %v", list, err)
	}
	for i, tc := range []struct {
		id   string
		want []byte
	}{{m1.ID, want1}, {m2.ID, want2}} {
		name := []string{"r1", "r2"}[i]
		info, err := Restore(ctx, e, st, tc.id, name, nil)
		if err != nil {
			t.Fatalf("restore %s: %v", tc.id, err)
		}
		if info.Size != size || info.Repl != 1 {
			t.Fatalf("restored volume %+v", info)
		}
		sameContent(t, "restore of "+tc.id, tc.want, content(t, e, name))
	}
	// A name in use is refused, and nothing is created.
	if _, err := Restore(ctx, e, st, m1.ID, "db", nil); !errors.Is(err, engine.ErrExists) {
		t.Fatalf("restore over an existing volume: %v", err)
	}
}

// The 7th backup of a chain is full, and --full forces one.
func TestFullEvery(t *testing.T) {
	srv := s3test.Start(t, bucket)
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 8 << 20})
	c := &chain{t: t, e: e, st: testStore(t, srv, ""), vol: "v"}
	for i := range 9 {
		write(t, e, "v", int64(i%8)<<20, randBytes(uint64(i), 4096))
		m := c.backup(i == 8)
		if wantFull := i%FullEvery == 0 || i == 8; m.Full != wantFull {
			t.Fatalf("backup %d: full=%v, want %v", i+1, m.Full, wantFull)
		}
	}
}

// Encrypted: no plaintext in the bucket, the right passphrase restores, a
// wrong one (or none) fails clearly and leaves no volume.
func TestEncrypted(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "sec", Size: 8 << 20})
	secret := bytes.Repeat([]byte("TOP-SECRET-PAYLOAD-"), 60000) // compressible: zstd alone would not hide it
	write(t, e, "sec", 0, secret[:1<<20])
	c := &chain{t: t, e: e, st: testStore(t, srv, "correct horse"), vol: "sec"}
	m := c.backup(false)
	if m.Encryption == nil {
		t.Fatal("manifest says not encrypted")
	}
	write(t, e, "sec", 2<<20, secret[:1<<20])
	m2 := c.backup(false)
	want := content(t, e, "sec")
	err := filepath.Walk(srv.Dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if bytes.Contains(b, []byte("TOP-SECRET")) {
			t.Errorf("%s holds the plaintext", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(ctx, e, testStore(t, srv, "wrong"), m2.ID, "x", nil); !errors.Is(err, ErrWrongPassphrase) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if _, err := Restore(ctx, e, testStore(t, srv, ""), m2.ID, "x", nil); !errors.Is(err, ErrWrongPassphrase) || !strings.Contains(err.Error(), "no passphrase") {
		t.Fatalf("no passphrase: %v", err)
	}
	if _, err := e.Volume("x"); err == nil {
		t.Fatal("a failed restore left volume x")
	}
	if _, err := Restore(ctx, e, c.st, m2.ID, "x", nil); err != nil {
		t.Fatal(err)
	}
	sameContent(t, "encrypted restore", want, content(t, e, "x"))
}

// A restore that returned is durable: a crash right after it (every write
// not yet synced lost or torn) leaves the restored volume whole.
func TestRestoreDurable(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	d := drive.NewMem("mem0", 128<<20)
	open := func(d *drive.Mem) *engine.Engine {
		e, err := engine.Open(engine.Options{NodeID: "node-test", LogAreaSize: 256 << 10,
			Drives: []engine.DriveSpec{{Path: d.Path(), Drive: d}}})
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := open(d)
	defer e.Close()
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 24 << 20})
	write(t, e, "v", 0, randBytes(8, 20<<20))
	write(t, e, "v", 20<<20, bytes.Repeat([]byte("zstd "), 1<<20)[:4<<20])
	st := testStore(t, srv, "")
	m := (&chain{t: t, e: e, st: st, vol: "v"}).backup(false)
	want := content(t, e, "v")
	if _, err := Restore(ctx, e, st, m.ID, "r", nil); err != nil {
		t.Fatal(err)
	}
	// The drive as a crash now would leave it, on a drive of its own.
	crashed := drive.NewMem("mem0", d.Size())
	crashed.Poke(0, d.DurableBytes())
	e2 := open(crashed)
	defer e2.Close()
	sameContent(t, "restored volume after a crash", want, content(t, e2, "r"))
}

// Deleting the middle backup of a chain keeps the later ones restorable,
// and deleting them all leaves nothing of the volume in the bucket.
func TestDeleteMiddle(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 16 << 20})
	write(t, e, "v", 0, randBytes(1, 16<<20))
	c := &chain{t: t, e: e, st: testStore(t, srv, ""), vol: "v"}
	var ids []string
	var wants [][]byte
	for i := range 4 {
		write(t, e, "v", int64(i*3)<<20, randBytes(uint64(10+i), 1<<20))
		ids = append(ids, c.backup(false).ID)
		wants = append(wants, content(t, e, "v"))
	}
	if err := Delete(ctx, c.st, ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, c.st, ids[0]); err != nil { // the full one too
		t.Fatal(err)
	}
	for _, i := range []int{2, 3} {
		name := "r" + string(rune('0'+i))
		if _, err := Restore(ctx, e, c.st, ids[i], name, nil); err != nil {
			t.Fatalf("restore %d after deleting its bases: %v", i, err)
		}
		sameContent(t, "restore after delete", wants[i], content(t, e, name))
	}
	if _, err := Restore(ctx, e, c.st, ids[1], "gone", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("restore of a deleted backup: %v", err)
	}
	for _, id := range ids[2:] {
		if err := Delete(ctx, c.st, id); err != nil {
			t.Fatal(err)
		}
	}
	keys, err := c.st.list(ctx, rootPrefix)
	if err != nil || len(keys) != 0 {
		t.Fatalf("after deleting every backup the bucket holds %v (%v)", keys, err)
	}
}

// A damaged or missing data object: the restore fails naming it, and no
// volume is left.
func TestCorruptObject(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 40 << 20})
	write(t, e, "v", 0, randBytes(1, 40<<20))
	c := &chain{t: t, e: e, st: testStore(t, srv, ""), vol: "v"}
	m := c.backup(false)
	victim := m.Objects[1].Key
	path := filepath.Join(srv.Dir, bucket, filepath.FromSlash(victim))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	good := slices.Clone(b)
	b[len(b)/2] ^= 0x40
	short := good[:len(good)-100]
	// A restore writes an object's frames as they arrive, before the
	// object's checksum is known: the damage is found at its end.
	for _, damaged := range [][]byte{b, short} {
		if err := os.WriteFile(path, damaged, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = Restore(ctx, e, c.st, m.ID, "r", nil)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), victim) {
			t.Fatalf("restore of a damaged backup (object %d of %d bytes): %v (want corrupt, naming %s)", 1, len(damaged), err, victim)
		}
		if _, err := e.Volume("r"); err == nil {
			t.Fatal("a failed restore left its volume")
		}
	}
	// A forged manifest whose frames overlap in their object.
	if err := os.WriteFile(path, good, 0o644); err != nil {
		t.Fatal(err)
	}
	var twoInOne []int
	for i, f := range m.Extents {
		if f.O == 1 && len(twoInOne) < 2 {
			twoInOne = append(twoInOne, i)
		}
	}
	if len(twoInOne) < 2 {
		t.Fatalf("object 1 holds fewer than 2 frames: %+v", m.Extents)
	}
	rewriteManifest(t, c.st, m, func(m *Manifest) { m.Extents[twoInOne[1]].Off = m.Extents[twoInOne[0]].Off + 1 })
	if _, err = Restore(ctx, e, c.st, m.ID, "r", nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), victim) {
		t.Fatalf("restore with overlapping frames: %v (want corrupt, naming %s)", err, victim)
	}
	if _, err := e.Volume("r"); err == nil {
		t.Fatal("a failed restore left its volume")
	}
	os.Remove(path)
	if _, err = Restore(ctx, e, c.st, m.ID, "r", nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), victim) {
		t.Fatalf("restore with a missing object: %v", err)
	}
	// A damaged manifest is named too.
	mk, _ := manifestKey(m.ID)
	os.WriteFile(filepath.Join(srv.Dir, bucket, filepath.FromSlash(mk)), []byte("{not json"), 0o644)
	if _, err = Restore(ctx, e, c.st, m.ID, "r", nil); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), mk) {
		t.Fatalf("restore with a damaged manifest: %v", err)
	}
	if _, err := e.Volume("r"); err == nil {
		t.Fatal("a failed restore left its volume")
	}
}

// Wrong credentials, a missing bucket, a read-only store, nothing
// listening: clear errors, within the deadlines.
func TestStoreErrors(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	cases := []struct {
		name string
		cred Credential
		want string
	}{
		{"wrong secret", Credential{Endpoint: srv.Endpoint(), AccessKey: s3test.AccessKey, SecretKey: "nope", Bucket: bucket}, "refused the credentials"},
		{"wrong access key", Credential{Endpoint: srv.Endpoint(), AccessKey: "nobody", SecretKey: "nope", Bucket: bucket}, "refused the credentials"},
		{"missing bucket", Credential{Endpoint: srv.Endpoint(), AccessKey: s3test.AccessKey, SecretKey: s3test.SecretKey, Bucket: "nosuch"}, `bucket "nosuch" does not exist`},
	}
	for _, tc := range cases {
		st, err := Open(tc.cred)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Validate(ctx); !errors.Is(err, ErrStore) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v (want %q)", tc.name, err, tc.want)
		}
	}
	ro := s3test.StartReadOnly(t, bucket)
	if err := testStore(t, ro, "").Validate(ctx); !errors.Is(err, ErrStore) || !strings.Contains(err.Error(), "not writable") {
		t.Errorf("read-only store: %v", err)
	}
	e := testEngine(t, 64<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 4 << 20})
	write(t, e, "v", 0, randBytes(1, 1<<20))
	c := &chain{t: t, e: e, st: testStore(t, ro, ""), vol: "v"}
	c.n++
	e.CreateSnapshot("v", "v.s")
	vi, _ := e.Volume("v")
	if _, err := Backup(ctx, e, c.st, BackupRequest{ID: NewID(vi.Info().ID, time.Now()), Snapshot: "v.s"}, nil); !errors.Is(err, ErrStore) {
		t.Errorf("backup to a read-only store: %v", err)
	}
	ro.Kill()
	start := time.Now()
	if err := testStore(t, ro, "").Validate(ctx); !errors.Is(err, ErrStore) || !strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("nothing listening: %v", err)
	}
	t.Logf("unreachable store reported in %v", time.Since(start))
	if _, err := Open(Credential{Endpoint: "ftp://x", AccessKey: "a", SecretKey: "b"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad endpoint: %v", err)
	}
	if _, err := ReadManifest(ctx, testStore(t, srv, ""), "../../etc"); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad id: %v", err)
	}
}

// The server dies mid-upload: the backup fails (after minio-go's retries),
// writes no manifest, and once the server is back nothing is listed and
// what it stored is swept by Abandon.
func TestServerDiesMidUpload(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 512<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "big", Size: 256 << 20})
	write(t, e, "big", 0, randBytes(9, 256<<20))
	e.CreateSnapshot("big", "big.s")
	vi, _ := e.Volume("big")
	id := NewID(vi.Info().ID, time.Now())
	st := testStore(t, srv, "")
	prog := new(Progress)
	done := make(chan error, 1)
	go func() {
		_, err := Backup(ctx, e, st, BackupRequest{ID: id, Snapshot: "big.s"}, prog)
		done <- err
	}()
	for prog.Stored.Load() < 16<<20 {
		select {
		case err := <-done:
			t.Fatalf("backup finished before the server was killed: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	srv.Kill()
	select {
	case err := <-done:
		if !errors.Is(err, ErrStore) {
			t.Fatalf("backup with the server dead: %v", err)
		}
		t.Logf("backup failed as it should: %v", err)
	case <-time.After(3 * time.Minute):
		t.Fatal("backup hangs with the server dead")
	}
	srv.Restart()
	list, err := List(ctx, st, "")
	if err != nil || len(list) != 0 {
		t.Fatalf("after a failed upload the bucket lists %+v (%v)", list, err)
	}
	if err := Abandon(ctx, st, id); err != nil {
		t.Fatal(err)
	}
	if keys, _ := st.list(ctx, rootPrefix); len(keys) != 1 || !strings.HasSuffix(keys[0], "/"+sweptName) {
		t.Fatalf("after Abandon the bucket holds %v (want its mark alone)", keys)
	}
}

// Objects of a backup that never got its manifest (an upload that failed
// while the store was unreachable) are swept; a complete backup and the
// backup about to run are not.
func TestSweepOrphans(t *testing.T) {
	srv := s3test.Start(t, bucket)
	st := testStore(t, srv, "")
	ctx := context.Background()
	e := testEngine(t, 256<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "db", Size: 16 << 20})
	write(t, e, "db", 0, randBytes(9, 4<<20))
	c := &chain{t: t, e: e, st: st, vol: "db"}
	m := c.backup(false)
	want := content(t, e, "db")

	v, _ := e.Volume("db")
	volID := v.Info().ID
	orphan := NewID(volID, time.Now().Add(time.Hour))
	running := NewID(volID, time.Now().Add(2*time.Hour))
	for _, id := range []string{orphan, running} {
		prefix, _ := backupPrefix(id)
		for i := range 3 {
			if err := st.put(ctx, fmt.Sprintf("%sdata/%06d", prefix, i), []byte("partial upload"), dataTimeout); err != nil {
				t.Fatal(err)
			}
		}
	}
	n, err := SweepOrphans(ctx, st, volID, running)
	if err != nil || n != 1 {
		t.Fatalf("SweepOrphans: %d swept, err %v; want 1", n, err)
	}
	for id, want := range map[string]int{orphan: 0, running: 3} {
		prefix, _ := backupPrefix(id)
		keys, err := st.list(ctx, prefix)
		keys = slices.DeleteFunc(keys, func(k string) bool { return k == prefix+sweptName }) // the sweep's mark stays
		if err != nil || len(keys) != want {
			t.Fatalf("backup %s: %d objects left (err %v), want %d", id, len(keys), err, want)
		}
	}
	if _, err := Restore(ctx, e, st, m.ID, "back", nil); err != nil {
		t.Fatalf("the complete backup after the sweep: %v", err)
	}
	sameContent(t, "restored after the sweep", want, content(t, e, "back"))
	if _, err := SweepOrphans(ctx, st, "../x", ""); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a bad volume id: %v", err)
	}
}

// The daemon sweeps orphaned uploads before every backup. After the full
// backup at the base of a chain is deleted (as the schedule's pruning
// does), its objects that the incrementals still use stay under its prefix,
// which has no manifest any more: the sweep must leave them. Every backup
// left, and one taken after the sweep on top of the chain, restores.
func TestSweepAfterDeleteKeepsChain(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 256<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 16 << 20})
	write(t, e, "v", 0, randBytes(1, 16<<20))
	c := &chain{t: t, e: e, st: testStore(t, srv, ""), vol: "v"}
	var ids []string
	var wants [][]byte
	for i := range 3 {
		write(t, e, "v", int64(i*5)<<20, randBytes(uint64(20+i), 1<<20))
		ids = append(ids, c.backup(false).ID)
		wants = append(wants, content(t, e, "v"))
	}
	if err := Delete(ctx, c.st, ids[0]); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")
	if _, err := SweepOrphans(ctx, c.st, v.Info().ID, ""); err != nil {
		t.Fatal(err)
	}
	write(t, e, "v", 9<<20, randBytes(30, 1<<20))
	ids = append(ids, c.backup(false).ID)
	wants = append(wants, content(t, e, "v"))
	for i := 1; i < len(ids); i++ {
		name := "r" + string(rune('0'+i))
		if _, err := Restore(ctx, e, c.st, ids[i], name, nil); err != nil {
			t.Fatalf("restore of backup %d after its base was deleted and the bucket swept: %v", i, err)
		}
		sameContent(t, "restore after the sweep", wants[i], content(t, e, name))
	}
}

// While another manifest of the volume cannot be read (damaged, or written
// by a newer cairn), Delete removes the backup's manifest but keeps its
// objects, saying why: the unreadable one may name them.
func TestDeleteKeepsObjectsWhileAManifestIsUnreadable(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 8 << 20})
	write(t, e, "v", 0, randBytes(3, 8<<20))
	c := &chain{t: t, e: e, st: testStore(t, srv, ""), vol: "v"}
	first := c.backup(false).ID
	second := c.backup(false).ID
	prefix, _ := backupPrefix(second)
	if err := c.st.put(ctx, prefix+manifestName, []byte("{not a manifest"), dataTimeout); err != nil {
		t.Fatal(err)
	}
	own, _ := backupPrefix(first)
	before, err := c.st.list(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	if err := Delete(ctx, c.st, first); err == nil || !strings.Contains(err.Error(), "cannot be read") {
		t.Fatalf("delete beside an unreadable manifest: %v", err)
	}
	after, err := c.st.list(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before)-1 || slices.Contains(after, own+manifestName) {
		t.Fatalf("objects of the deleted backup: %v, before %v (want all but its manifest)", after, before)
	}
}
