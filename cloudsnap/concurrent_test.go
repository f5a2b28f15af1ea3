package cloudsnap

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/s3test"
)

// The handshakes of the package doc's "Concurrent deletes", each driven at
// the point where the other party does harm: after the backup uploaded its
// objects, before it stores its manifest.

// runBefore makes f run once, as the next backup is about to store its
// manifest.
func runBefore(t *testing.T, f func()) {
	t.Cleanup(func() { testHookBeforeManifest = nil })
	testHookBeforeManifest = func() {
		testHookBeforeManifest = nil
		f()
	}
}

// The base of an incremental is deleted while the incremental uploads:
// the objects the incremental keeps from it are gone. The incremental comes
// out full, and restores.
func TestDeleteBaseDuringIncremental(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 8 << 20})
	write(t, e, "v", 0, randBytes(1, 8<<20))
	c := &chain{t: t, e: e, st: testStore(t, srv, ""), vol: "v"}
	base := c.backup(false)
	write(t, e, "v", 2<<20, randBytes(2, 1<<20))
	runBefore(t, func() {
		if err := Delete(ctx, c.st, base.ID); err != nil {
			t.Errorf("delete of the base: %v", err)
		}
	})
	m := c.backup(false)
	want := content(t, e, "v")
	if testHookBeforeManifest != nil {
		t.Fatal("the delete never ran")
	}
	if !m.Full || m.Base != "" || m.Uploaded < 8<<20 {
		t.Fatalf("backup whose base was deleted: full=%v base=%q uploaded %d", m.Full, m.Base, m.Uploaded)
	}
	list, err := List(ctx, c.st, "v")
	if err != nil || len(list) != 1 || list[0].ID != m.ID || !list[0].Full {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if _, err := Restore(ctx, e, c.st, m.ID, "r", nil); err != nil {
		t.Fatalf("restore of the backup whose base was deleted while it ran: %v", err)
	}
	sameContent(t, "restore", want, content(t, e, "r"))
	// The chain goes on from it.
	write(t, e, "v", 5<<20, randBytes(3, 4096))
	if next := c.backup(false); next.Full || next.Base != m.ID {
		t.Fatalf("the next backup: full=%v base=%q", next.Full, next.Base)
	}
}

// Another node sweeps the volume while a backup uploads, taking it for an
// interrupted upload. The backup fails, saying so, and lists nothing; the
// next backup and sweep leave a clean bucket.
func TestSweepDuringBackup(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 8 << 20})
	write(t, e, "v", 0, randBytes(4, 8<<20))
	st := testStore(t, srv, "")
	v, _ := e.Volume("v")
	volID := v.Info().ID
	if _, err := e.CreateSnapshot("v", "v.s1"); err != nil {
		t.Fatal(err)
	}
	id := NewID(volID, time.Now())
	runBefore(t, func() {
		if n, err := SweepOrphans(ctx, st, volID, ""); err != nil || n != 1 {
			t.Errorf("sweep during the upload: %d swept, %v", n, err)
		}
	})
	_, err := Backup(ctx, e, st, BackupRequest{ID: id, Snapshot: "v.s1"}, nil)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("backup swept while it ran: %v", err)
	}
	t.Logf("backup failed as it should: %v", err)
	if list, err := List(ctx, st, ""); err != nil || len(list) != 0 {
		t.Fatalf("after a swept backup the bucket lists %+v (%v)", list, err)
	}
	prefix, _ := backupPrefix(id)
	if keys, err := st.list(ctx, prefix); err != nil || len(keys) != 0 {
		t.Fatalf("the swept backup left %v (%v)", keys, err)
	}
	c := &chain{t: t, e: e, st: st, vol: "v", n: 1}
	m := c.backup(false)
	if _, err := Restore(ctx, e, st, m.ID, "r", nil); err != nil {
		t.Fatal(err)
	}
	sameContent(t, "restore", content(t, e, "v"), content(t, e, "r"))
}

// A sweep that finds the backup's manifest once its mark is stored (the
// backup completed meanwhile) deletes nothing and takes its mark away.
func TestSweepSparesABackupThatCompleted(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 8 << 20})
	write(t, e, "v", 0, randBytes(5, 4<<20))
	c := &chain{t: t, e: e, st: testStore(t, srv, ""), vol: "v"}
	m := c.backup(false)
	want := content(t, e, "v")
	prefix, _ := backupPrefix(m.ID)
	before, err := c.st.list(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	// What a sweep listed before the manifest was stored: every object.
	did, err := sweepOrphan(ctx, c.st, m.ID, before)
	if err != nil || did {
		t.Fatalf("sweep of a complete backup: deleted=%v, %v", did, err)
	}
	after, err := c.st.list(ctx, prefix)
	if err != nil || !slices.Equal(before, after) {
		t.Fatalf("objects after the sweep: %v, before %v (%v)", after, before, err)
	}
	if _, err := Restore(ctx, e, c.st, m.ID, "r", nil); err != nil {
		t.Fatal(err)
	}
	sameContent(t, "restore", want, content(t, e, "r"))
}

// A prefix that holds only a sweep's mark is not counted as swept; the mark
// goes once no backup that old can still be running.
func TestSweptMarkExpires(t *testing.T) {
	srv := s3test.Start(t, bucket)
	ctx := context.Background()
	st := testStore(t, srv, "")
	const volID = "00000000000000aa"
	young := NewID(volID, time.Now().Add(-time.Hour))
	old := NewID(volID, time.Now().Add(-sweptKeep-time.Hour))
	for _, id := range []string{young, old} {
		prefix, _ := backupPrefix(id)
		if err := st.put(ctx, prefix+sweptName, []byte("mark"), smallTimeout); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := SweepOrphans(ctx, st, volID, ""); err != nil || n != 0 {
		t.Fatalf("sweep of marks alone: %d swept, %v", n, err)
	}
	keys, err := st.list(ctx, volumePrefix(volID))
	youngMark, _ := backupPrefix(young)
	if err != nil || !slices.Equal(keys, []string{youngMark + sweptName}) {
		t.Fatalf("after the sweep the volume holds %v (%v), want only the young mark", keys, err)
	}
}
