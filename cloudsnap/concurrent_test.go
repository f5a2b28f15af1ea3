package cloudsnap

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/s3test"
)

// The handshakes of the package doc's "Concurrent deletes". Each test runs
// the other party inside one request of the first (Store.testHook), at
// the point where it does harm: the interleaving is exact, not a race.

// at makes f run once, just before the first request of st whose op is op
// and whose key ends with suffix. f may use st (the hook is off by then).
func at(t *testing.T, st *Store, op, suffix string, f func()) {
	t.Helper()
	t.Cleanup(func() { st.testHook.Store(nil) })
	var h func(o, key string)
	h = func(o, key string) {
		if o == op && strings.HasSuffix(key, suffix) && st.testHook.CompareAndSwap(&h, nil) {
			f()
		}
	}
	st.testHook.Store(&h)
}

// fired fails the test if a hook set with at never ran.
func fired(t *testing.T, st *Store) {
	t.Helper()
	if st.testHook.Load() != nil {
		t.Fatal("the interleaved party never ran")
	}
}

// volumeChain starts an S3 server and an engine holding volume "v" (8 MiB,
// its first n bytes random from seed), and the chain that backs it up.
func volumeChain(t *testing.T, seed uint64, n int) (*chain, *s3test.Server) {
	srv := s3test.Start(t, bucket)
	e := testEngine(t, 128<<20)
	e.CreateVolume(engine.VolumeSpec{Name: "v", Size: 8 << 20})
	write(t, e, "v", 0, randBytes(seed, n))
	return &chain{t: t, e: e, st: testStore(t, srv, ""), vol: "v"}, srv
}

// restores checks that backup id restores (as a new volume) to want.
func (c *chain) restores(id string, want []byte) {
	c.t.Helper()
	c.restored++
	name := fmt.Sprintf("r%d", c.restored)
	if _, err := Restore(context.Background(), c.e, c.st, id, name, nil); err != nil {
		c.t.Fatalf("restore of %s: %v", id, err)
	}
	sameContent(c.t, "restore of "+id, want, content(c.t, c.e, name))
}

// volumeKeys lists everything under the volume's prefix.
func volumeKeys(t *testing.T, st *Store, e *engine.Engine, vol string) []string {
	t.Helper()
	v, _ := e.Volume(vol)
	keys, err := st.list(context.Background(), volumePrefix(v.Info().ID))
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// The base of an incremental is deleted while the incremental uploads (its
// manifest not yet stored): the base's objects go, though the incremental
// would name some. It fails, keeps nothing, and the next backup is full.
func TestDeleteBaseBeforeIncrementalPublishes(t *testing.T) {
	c, _ := volumeChain(t, 1, 8<<20)
	ctx, e := context.Background(), c.e
	base := c.backup(false)
	write(t, e, "v", 2<<20, randBytes(2, 1<<20))
	at(t, c.st, "put", "/"+pendingName, func() {
		if err := Delete(ctx, c.st, base.ID); err != nil {
			t.Errorf("delete of the base: %v", err)
		}
	})
	_, _, err := c.try(false)
	fired(t, c.st)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "base backup "+base.ID+" was deleted") {
		t.Fatalf("incremental whose base was deleted: %v", err)
	}
	if keys := volumeKeys(t, c.st, e, "v"); len(keys) != 0 {
		t.Fatalf("the bucket holds %v", keys)
	}
	m := c.backup(false)
	if !m.Full {
		t.Fatal("the backup after is not full")
	}
	c.restores(m.ID, content(t, e, "v"))
}

// The base is deleted after the incremental stored its pending manifest,
// before it checks its base: Delete keeps what the pending manifest names,
// the incremental fails all the same, and a sweep then leaves nothing.
func TestDeleteBaseWhileIncrementalPublishes(t *testing.T) {
	c, _ := volumeChain(t, 3, 8<<20)
	ctx, e := context.Background(), c.e
	base := c.backup(false)
	baseKey, _ := manifestKey(base.ID)
	write(t, e, "v", 2<<20, randBytes(4, 1<<20))
	checked := 0
	at(t, c.st, "stat", baseKey, func() {
		if err := Delete(ctx, c.st, base.ID); err != nil {
			t.Errorf("delete of the base: %v", err)
		}
		// Every object the pending manifest names is still there.
		keys := volumeKeys(t, c.st, e, "v")
		for _, k := range keys {
			if !strings.HasSuffix(k, "/"+pendingName) {
				continue
			}
			m, err := readManifest(ctx, c.st, k)
			if err != nil {
				t.Errorf("the pending manifest: %v", err)
				return
			}
			for _, o := range m.Objects {
				if !slices.Contains(keys, o.Key) {
					t.Errorf("Delete took %s, which a pending manifest names", o.Key)
				}
				checked++
			}
		}
	})
	_, _, err := c.try(false)
	fired(t, c.st)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("incremental whose base was deleted: %v", err)
	}
	if checked < 2 {
		t.Fatalf("the pending manifest named %d objects; want its own and its base's", checked)
	}
	if list, err := List(ctx, c.st, ""); err != nil || len(list) != 0 {
		t.Fatalf("list: %+v, %v", list, err)
	}
	v, _ := e.Volume("v")
	if n, err := SweepOrphans(ctx, c.st, v.Info().ID, ""); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v", n, err)
	}
	keys := volumeKeys(t, c.st, e, "v")
	if keys = slices.DeleteFunc(keys, func(k string) bool { return strings.HasSuffix(k, "/"+sweptName) }); len(keys) != 0 {
		t.Fatalf("after the sweep the bucket holds %v", keys)
	}
}

// Chain F ← I1, I2 publishing on I1. Delete(F) lists the manifests before
// I2's is stored; I2 publishes (I1 is there); Delete(I1) sees I2 and keeps
// what it names; then Delete(F) finds I1 gone. It must list again and keep
// the objects of F that I2 names.
func TestDeleteSeesABackupPublishedWhileItRead(t *testing.T) {
	c, srv := volumeChain(t, 5, 8<<20)
	ctx, e := context.Background(), c.e
	f := c.backup(false)
	write(t, e, "v", 1<<20, randBytes(6, 1<<20))
	i1 := c.backup(false)
	write(t, e, "v", 3<<20, randBytes(7, 1<<20))
	i1Key, _ := manifestKey(i1.ID)
	var i2 *Manifest
	other := testStore(t, srv, "") // the deleter
	at(t, other, "get", i1Key, func() {
		var err error
		if _, i2, err = c.try(false); err != nil {
			t.Errorf("I2: %v", err)
		}
		if err := Delete(ctx, c.st, i1.ID); err != nil {
			t.Errorf("delete I1: %v", err)
		}
	})
	// Delete reads F's own manifest first (not the one to interleave).
	if err := Delete(ctx, other, f.ID); err != nil {
		t.Fatal(err)
	}
	fired(t, other)
	if i2 == nil || i2.Base != i1.ID {
		t.Fatalf("I2: %+v", i2)
	}
	c.restores(i2.ID, content(t, e, "v")) // its base and its base's base deleted
}

// Another node sweeps the volume while a backup uploads, taking it for an
// interrupted upload. The backup fails, saying so, and lists nothing; the
// next backup restores.
func TestSweepDuringBackup(t *testing.T) {
	c, _ := volumeChain(t, 8, 8<<20)
	ctx, e := context.Background(), c.e
	v, _ := e.Volume("v")
	at(t, c.st, "put", "/"+pendingName, func() {
		if n, err := SweepOrphans(ctx, c.st, v.Info().ID, ""); err != nil || n != 1 {
			t.Errorf("sweep during the upload: %d swept, %v", n, err)
		}
	})
	id, _, err := c.try(false)
	fired(t, c.st)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "swept") {
		t.Fatalf("backup swept while it ran: %v", err)
	}
	if list, err := List(ctx, c.st, ""); err != nil || len(list) != 0 {
		t.Fatalf("after a swept backup the bucket lists %+v (%v)", list, err)
	}
	prefix, _ := backupPrefix(id)
	if keys, err := c.st.list(ctx, prefix); err != nil || len(keys) != 0 {
		t.Fatalf("the swept backup left %v (%v)", keys, err)
	}
	m := c.backup(false)
	c.restores(m.ID, content(t, e, "v"))
}

// A sweep from another node runs across a backup's publication: it lists
// before the pending manifest exists and stores its mark after the backup
// checked for one; the backup stores its manifest and removes the pending
// one between the sweep's two looks. Either the backup fails or the sweep
// deletes nothing: a listed backup restores.
func TestSweepAcrossPublish(t *testing.T) {
	c, srv := volumeChain(t, 12, 8<<20)
	ctx, e := context.Background(), c.e
	sweeper := testStore(t, srv, "")
	v, _ := e.Volume("v")
	// The sweep waits before its mark until the backup has checked for
	// one; the backup waits before its manifest until the sweep has
	// looked once (and waits before its second look) or has ended.
	markAt, markGo := make(chan struct{}), make(chan struct{})
	second, secondGo, ended := make(chan struct{}), make(chan struct{}), make(chan struct{})
	swept := make(chan error, 1)
	var once sync.Once
	var looks atomic.Int32
	sh := func(op, key string) {
		switch {
		case op == "put" && strings.HasSuffix(key, "/"+sweptName):
			once.Do(func() { close(markAt); <-markGo })
		case op == "stat" && (strings.HasSuffix(key, "/"+pendingName) || strings.HasSuffix(key, "/"+manifestName)):
			if looks.Add(1) == 2 {
				close(second)
				<-secondGo
			}
		}
	}
	sweeper.testHook.Store(&sh)
	bh := func(op, key string) {
		switch {
		case op == "put" && strings.HasSuffix(key, "/"+pendingName):
			go func() {
				_, err := SweepOrphans(ctx, sweeper, v.Info().ID, "")
				close(ended)
				swept <- err
			}()
			<-markAt
		case op == "put" && strings.HasSuffix(key, "/"+manifestName):
			close(markGo)
			select {
			case <-second:
			case <-ended:
			}
		}
	}
	c.st.testHook.Store(&bh)
	_, m, err := c.try(false)
	c.st.testHook.Store(nil)
	close(secondGo)
	if serr := <-swept; serr != nil {
		t.Fatal(serr)
	}
	list, lerr := List(ctx, c.st, "")
	t.Logf("backup: %v; listed %d (%v)", err, len(list), lerr)
	if err != nil || len(list) != 1 {
		t.Fatalf("backup: %v; listed %+v (%v)", err, list, lerr)
	}
	c.restores(m.ID, content(t, e, "v")) // listed, so it must restore
}

// A sweep that finds a backup's manifests (published, or pending: still
// running) deletes nothing, and its mark stays: a sweep that removed it
// could hide another sweep's mark from a backup that has yet to check.
func TestSweepSparesPublishingBackups(t *testing.T) {
	c, _ := volumeChain(t, 9, 4<<20)
	ctx, e := context.Background(), c.e
	m := c.backup(false)
	want := content(t, e, "v")
	prefix, _ := backupPrefix(m.ID)
	before, err := c.st.list(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	// What a sweep listed before the manifest was stored: every object.
	if did, err := sweepOrphan(ctx, c.st, m.ID, before, false); err != nil || did {
		t.Fatalf("sweep of a published backup: deleted=%v, %v", did, err)
	}
	// The same with only the pending manifest there: a backup publishing.
	raw, _ := c.st.get(ctx, prefix+manifestName, maxManifestBytes, smallTimeout)
	if err := c.st.put(ctx, prefix+pendingName, raw, smallTimeout); err != nil {
		t.Fatal(err)
	}
	if err := c.st.remove(ctx, prefix+manifestName); err != nil {
		t.Fatal(err)
	}
	if did, err := sweepOrphan(ctx, c.st, m.ID, before, false); err != nil || did {
		t.Fatalf("sweep of a publishing backup: deleted=%v, %v", did, err)
	}
	after, err := c.st.list(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range before {
		if k != prefix+manifestName && !slices.Contains(after, k) {
			t.Fatalf("the sweep deleted %s", k)
		}
	}
	if !slices.Contains(after, prefix+sweptName) {
		t.Fatal("the sweep's mark is gone")
	}
	// Published again: restorable, the mark notwithstanding.
	if err := c.st.put(ctx, prefix+manifestName, raw, smallTimeout); err != nil {
		t.Fatal(err)
	}
	c.restores(m.ID, want)
}

// The store goes away once the pending manifest is stored: the backup
// fails and cannot clean up, but nothing is listed, nor will be; Abandon
// (the daemon's restart) deletes what it stored. A pending manifest of a
// backup that cannot still run (8 days) is swept with what it names, a
// young one is not.
func TestPendingManifestNeverListed(t *testing.T) {
	c, srv := volumeChain(t, 10, 4<<20)
	ctx, e := context.Background(), c.e
	at(t, c.st, "stat", "/"+sweptName, srv.Kill)
	id, _, err := c.try(false)
	fired(t, c.st)
	if !errors.Is(err, ErrStore) {
		t.Fatalf("backup with the store gone: %v", err)
	}
	srv.Restart()
	prefix, _ := backupPrefix(id)
	keys, err := c.st.list(ctx, prefix)
	if err != nil || !slices.Contains(keys, prefix+pendingName) {
		t.Fatalf("after the failed backup its prefix holds %v (%v)", keys, err)
	}
	if list, err := List(ctx, c.st, ""); err != nil || len(list) != 0 {
		t.Fatalf("a pending manifest is listed: %+v (%v)", list, err)
	}
	v, _ := e.Volume("v")
	if n, err := SweepOrphans(ctx, c.st, v.Info().ID, ""); err != nil || n != 0 {
		t.Fatalf("sweep of a young pending manifest: %d swept, %v", n, err)
	}
	if err := Abandon(ctx, c.st, id); err != nil {
		t.Fatal(err)
	}
	if keys, _ := c.st.list(ctx, prefix); !slices.Equal(keys, []string{prefix + sweptName}) {
		t.Fatalf("after Abandon the prefix holds %v (want its mark alone)", keys)
	}

	// A dead one: the same objects under an id 9 days old.
	old := NewID(v.Info().ID, time.Now().Add(-9*24*time.Hour))
	oldPrefix, _ := backupPrefix(old)
	m := c.backup(false)
	mPrefix, _ := backupPrefix(m.ID)
	raw, _ := c.st.get(ctx, mPrefix+manifestName, maxManifestBytes, smallTimeout)
	if err := Delete(ctx, c.st, m.ID); err != nil {
		t.Fatal(err)
	}
	dead := strings.ReplaceAll(string(raw), m.ID, old)
	if err := c.st.put(ctx, oldPrefix+pendingName, []byte(dead), smallTimeout); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"data/000000", "data/000001"} {
		if err := c.st.put(ctx, oldPrefix+k, []byte("x"), smallTimeout); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := SweepOrphans(ctx, c.st, v.Info().ID, ""); err != nil || n != 1 {
		t.Fatalf("sweep of a dead pending manifest: %d swept, %v", n, err)
	}
	if keys, _ := c.st.list(ctx, oldPrefix); !slices.Equal(keys, []string{oldPrefix + sweptName}) {
		t.Fatalf("after the sweep the dead backup's prefix holds %v", keys)
	}
}

// The backup is deleted as it publishes (its manifest stored, its pending
// one not yet removed): nothing of it stays, nothing is listed.
func TestDeleteOfABackupPublishing(t *testing.T) {
	c, _ := volumeChain(t, 11, 4<<20)
	ctx, e := context.Background(), c.e
	var id string
	at(t, c.st, "delete", "/"+pendingName, func() {
		list, err := List(ctx, c.st, "")
		if err != nil || len(list) != 1 {
			t.Errorf("list while publishing: %+v, %v", list, err)
			return
		}
		id = list[0].ID
		if err := Delete(ctx, c.st, id); err != nil {
			t.Errorf("delete: %v", err)
		}
	})
	if _, _, err := c.try(false); err != nil {
		t.Fatal(err)
	}
	fired(t, c.st)
	if list, err := List(ctx, c.st, ""); err != nil || len(list) != 0 {
		t.Fatalf("list: %+v, %v", list, err)
	}
	if keys := volumeKeys(t, c.st, e, "v"); len(keys) != 0 {
		t.Fatalf("the bucket holds %v", keys)
	}
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
