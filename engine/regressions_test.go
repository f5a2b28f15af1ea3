package engine

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/drive"
)

// A drive of this node's pool that was missing at start (its volumes listed
// as unavailable) is never formatted by a forced AddDrive: the refusal says
// to restart with it, and the pool comes back with its data.
func TestAddDriveRefusesMissingPoolsDrive(t *testing.T) {
	low, ssd := lowAndSSD()
	cat := &memCatalog{}
	e, err := Open(catalogOptions(cat, low, ssd))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateVolume(VolumeSpec{Name: "v6", Size: 16 << 20, IOPriority: PriorityMedium}); err != nil {
		t.Fatal(err)
	}
	v6, _ := e.Volume("v6")
	if err := v6.WriteAt(pattern(6, 1<<20), 0, true); err != nil {
		t.Fatal(err)
	}
	e.Close()
	// Start without the ssd: v6 is unavailable.
	e, err = Open(catalogOptions(cat, low))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Volume("v6"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("v6: %v", err)
	}
	// The drive comes back; the operator adds it (the plain add tells them
	// to use force, as if it were another node's).
	for _, force := range []bool{false, true} {
		err = e.AddDrive(DriveSpec{Path: "ssd", Drive: ssd.Reopen(), Force: force})
		if !errors.Is(err, ErrDriveRefused) || !strings.Contains(err.Error(), "restart the daemon with it") {
			t.Errorf("add (force %v) of this node's missing pool's drive: %v", force, err)
		}
	}
	e.Close()
	e, err = Open(catalogOptions(cat, low, ssd))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.Volume("v6"); err != nil {
		t.Fatalf("v6 after the drive came back: %v", err)
	}
}

// A volume deleted by its id is gone by its name too.
func TestDeleteByIDFreesTheName(t *testing.T) {
	e := catalogEngine(t, &memCatalog{}, drive.NewMem("d", 32<<20))
	a, err := e.CreateVolume(VolumeSpec{Name: "a", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteVolume(a.ID); err != nil {
		t.Fatal(err)
	}
	if vs := e.Volumes(); len(vs) != 0 {
		t.Errorf("after delete by id, Volumes() = %+v", vs)
	}
	if _, err := e.Volume("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("lookup of deleted volume: %v", err)
	}
	if _, err := e.CreateVolume(VolumeSpec{Name: "a", Size: 1 << 20}); err != nil {
		t.Errorf("create again after delete by id: %v", err)
	}
}

// dupSetup makes "v6" in two pools that both number 0 (each made while the
// other was missing), as TestDuplicateNamesAreServedUnderAliases does.
func dupSetup(t *testing.T) (low, ssd *drive.Mem) {
	low, ssd = drive.NewMem("low", 32<<20), drive.NewMem("ssd", 32<<20)
	ssd.SetKind(drive.KindSSD)
	e, err := Open(memOptions(low))
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, e, "v6", 1, 1<<20)
	e.Close()
	e, err = Open(memOptions(ssd))
	if err != nil {
		t.Fatal(err)
	}
	writeVolume(t, e, "v6", 2, 1<<20)
	if _, err := e.UpdateVolume("v6", VolumeUpdate{SnapInterval: ptr(60)}); err != nil {
		t.Fatal(err)
	}
	e.Close()
	return low, ssd
}

func ptr[T any](v T) *T { return &v }

// An alias names the same copy whatever the order the drives are given in:
// an attachment recorded as "v6@pool0…" (attachments.json) or an NBD client
// reconnecting to that export gets the same volume after a restart.
func TestAliasesDoNotDependOnDriveOrder(t *testing.T) {
	low, ssd := dupSetup(t)
	prio := func(e *Engine) map[string]IOPriority {
		out := map[string]IOPriority{}
		for _, v := range e.Volumes() {
			out[v.Name] = v.IOPriority
		}
		return out
	}
	e, err := Open(catalogOptions(&memCatalog{}, low, ssd))
	if err != nil {
		t.Fatal(err)
	}
	a := prio(e)
	e.Close()
	e, err = Open(catalogOptions(&memCatalog{}, ssd, low))
	if err != nil {
		t.Fatal(err)
	}
	b := prio(e)
	e.Close()
	for name, p := range a {
		if b[name] != p {
			t.Errorf("%s is the %s copy with drives (low, ssd) and the %s copy with (ssd, low)", name, p, b[name])
		}
	}
}

// The scheduler names its snapshots DefaultSnapshotName(served name): a
// duplicated volume (NAME@poolN) gets valid ones too.
func TestDefaultSnapshotNameOfAnAlias(t *testing.T) {
	low, ssd := dupSetup(t)
	e, err := Open(catalogOptions(&memCatalog{}, low, ssd))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for _, v := range e.Volumes() {
		if v.SnapInterval == 0 {
			continue
		}
		name := DefaultSnapshotName(v.Name, time.Now()) // control/scheduler.go take()
		if _, err := e.CreateSnapshot(v.Name, name); err != nil {
			t.Errorf("scheduled snapshot of %s: %v", v.Name, err)
		}
	}
}

type failingCatalog struct {
	memCatalog
	fail bool
}

func (c *failingCatalog) Save(e []CatalogEntry) error {
	if c.fail {
		return errors.New("disk full")
	}
	return c.memCatalog.Save(e)
}

// A delete that is committed is reported done even when the catalog cannot
// be saved afterwards (Status says so), and its space is given back.
func TestDeleteIsDoneDespiteACatalogFailure(t *testing.T) {
	d := drive.NewMem("d", 32<<20)
	cat := &failingCatalog{}
	e, err := Open(catalogOptions(cat, d))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	writeVolume(t, e, "a", 1, 4<<20)
	cat.fail = true
	err = e.DeleteVolume("a")
	_, lerr := e.Volume("a")
	if err != nil && errors.Is(lerr, ErrNotFound) {
		t.Errorf("DeleteVolume returned %v, but the volume is deleted", err)
	}
	if cerr := e.Check(); cerr != nil {
		t.Fatal(cerr)
	}
	if err := e.pools[0].commit(); err != nil { // the round that gives reclaimed extents back
		t.Fatal(err)
	}
	st := e.Status()
	if st.Pools[0].Used != 0 || st.CatalogError == "" {
		t.Errorf("after the delete: pool used %d bytes, catalog error %q", st.Pools[0].Used, st.CatalogError)
	}
	cat.fail = false
	if _, err := e.CreateVolume(VolumeSpec{Name: "b", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if st := e.Status(); st.CatalogError != "" {
		t.Errorf("catalog error after a good save: %q", st.CatalogError)
	}
}

// A snapshot deleted by its id no longer keeps its volume from a delete.
func TestDeleteSnapshotByIDThenItsVolume(t *testing.T) {
	e := catalogEngine(t, &memCatalog{}, drive.NewMem("d", 32<<20))
	if _, err := e.CreateVolume(VolumeSpec{Name: "a", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	snap, err := e.CreateSnapshot("a", "a.s1")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteVolume(snap.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteVolume("a"); err != nil {
		t.Errorf("delete of a after its only snapshot was deleted by id: %v", err)
	}
}

// slowZero is a drive whose Zero waits (BLKZEROOUT over a large HDD
// writes every byte: hours).
type slowZero struct {
	*drive.Mem
	started chan struct{}
	release chan struct{}
}

func (s *slowZero) Zero(off, n int64) error {
	close(s.started)
	<-s.release
	return s.Mem.Zero(off, n)
}

// AddDrive zeroes the new drive's data region without e.mu: lookups (API
// calls, NBD connects via HoldVolume, Status) go on meanwhile.
func TestAddDriveZeroesOutsideTheEngineLock(t *testing.T) {
	e := catalogEngine(t, &memCatalog{}, drive.NewMem("d", 32<<20))
	if _, err := e.CreateVolume(VolumeSpec{Name: "a", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	sz := &slowZero{Mem: drive.NewMem("big", 32<<20), started: make(chan struct{}), release: make(chan struct{})}
	added := make(chan error, 1)
	go func() { added <- e.AddDrive(DriveSpec{Path: "big", Drive: sz}) }()
	<-sz.started
	looked := make(chan struct{})
	go func() { e.Volume("a"); e.Status(); close(looked) }()
	select {
	case <-looked:
	case <-time.After(30 * time.Second): // a deadline, not a timing: the lookups never wait on the zeroing
		t.Errorf("Volume/Status blocked while AddDrive zeroes the new drive (e.mu held)")
	}
	close(sz.release)
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	<-looked
}

// V and clone C share extent X. V trims X's logical extent whole (not
// flushed): unmapped, X's reference dropped in memory at once. C's next
// write finds X referenced once ("ours alone") and writes X in place. A
// crash keeps C's data (the disk wrote it) and loses V's unmap (never
// logged): V maps X again and shows C's write.
func TestOursAloneAfterUnloggedUnmap(t *testing.T) {
	d := drive.NewMem("mem0", 64<<20)
	e, v, a := snapshotted(t, d) // db (X at lext 0), db.s1
	if _, err := e.CloneVolume("db.s1", "c"); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteVolume("db.s1"); err != nil {
		t.Fatal(err)
	}
	c := mustVolume(t, e, "c")
	x, _ := v.table.lookup(0)
	if err := v.Trim(0, ExtentSize); err != nil { // not flushed
		t.Fatal(err)
	}
	dc := pattern(9, BlockSize)
	if err := c.WriteAt(dc, 0, false); err != nil { // not flushed
		t.Fatal(err)
	}
	if got, _ := c.table.lookup(0); got != x {
		t.Logf("c's write went to extent %d, not X=%d (redirected)", got, x)
	}
	if err := d.Sync(); err != nil { // the disk wrote C's data on its own; no round ran
		t.Fatal(err)
	}
	abandon(e)
	d.Crash(rand.New(rand.NewPCG(1, 2)))
	e = manualEngine(t, d, 0)
	v = mustVolume(t, e, "db")
	switch got := readBlock(t, v, 0); {
	case bytes.Equal(got, a[:BlockSize]), isZero(got):
	case bytes.Equal(got, dc):
		t.Fatal("db block 0 shows the clone's write: content never written to db")
	default:
		t.Fatal("db block 0 shows something else")
	}
}
