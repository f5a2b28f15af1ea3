package replication

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// TestActivityEncoding: sets round-trip; anything malformed is refused,
// never read as a smaller set.
func TestActivityEncoding(t *testing.T) {
	for _, s := range []activitySet{{}, {exts: []uint32{0}}, {exts: []uint32{1, 5, 99}}, {all: true}} {
		b := appendActivity(nil, s)
		got, err := parseActivity(append(b, 0, 0, 0, 0), 100) // with a reply's padding
		if err != nil || got.all != s.all || !slices.Equal(got.exts, s.exts) {
			t.Fatalf("%+v: decoded %+v, %v", s, got, err)
		}
	}
	list := func(kind, count uint32, exts ...uint32) []byte {
		b := be.AppendUint32(be.AppendUint32(nil, kind), count)
		for _, e := range exts {
			b = be.AppendUint32(b, e)
		}
		return b
	}
	for name, b := range map[string][]byte{
		"short":           {0, 0, 0},
		"unknown kind":    list(7, 0),
		"all with a list": list(activityAll, 1, 3),
		"count too large": list(activityList, 3, 1, 2),
		"out of order":    list(activityList, 2, 5, 4),
		"repeated":        list(activityList, 2, 4, 4),
		"beyond volume":   list(activityList, 1, 100),
		"trailing bytes":  append(list(activityList, 1, 4), 0, 1),
	} {
		if s, err := parseActivity(b, 100); err == nil {
			t.Errorf("%s: decoded as %+v", name, s)
		}
	}
}

// TestActivityFile: the log round-trips through its file; a missing or
// damaged file reads as every extent, never as nothing.
func TestActivityFile(t *testing.T) {
	f := newActivityFile(t.TempDir(), "v")
	if s, err := f.load(10); err != nil || !s.all {
		t.Fatalf("missing file: %+v, %v (want every extent)", s, err)
	}
	want := activitySet{exts: []uint32{2, 9}}
	if err := f.store(want); err != nil {
		t.Fatal(err)
	}
	if s, err := f.load(10); err != nil || !slices.Equal(s.exts, want.exts) || s.all {
		t.Fatalf("stored %+v, loaded %+v, %v", want, s, err)
	}
	if s, err := f.load(5); err == nil || !s.all {
		t.Fatalf("a log naming extents past a smaller volume: %+v, %v", s, err)
	}
	// Rewritten in place: a shorter set over a longer one.
	if err := f.store(activitySet{exts: []uint32{0, 1, 2, 3, 4, 5, 6, 7}}); err != nil {
		t.Fatal(err)
	}
	if err := f.store(want); err != nil {
		t.Fatal(err)
	}
	if s, err := f.load(10); err != nil || !slices.Equal(s.exts, want.exts) || s.all {
		t.Fatalf("stored %+v over a longer set, loaded %+v, %v", want, s, err)
	}
	// A new handle (a restarted replica) reads what was stored.
	if s, err := newActivityFile(filepath.Dir(f.path), "v").load(10); err != nil || !slices.Equal(s.exts, want.exts) {
		t.Fatalf("reopened: %+v, %v", s, err)
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		t.Fatal(err)
	}
	// Every byte of the log (not the longer set's tail behind it).
	for i := range activityHead + len(appendActivity(nil, want)) + 8 {
		d := slices.Clone(b)
		d[i] ^= 0x10
		if err := os.WriteFile(f.path, d, 0o644); err != nil {
			t.Fatal(err)
		}
		if s, err := f.load(10); err == nil || !s.all {
			t.Fatalf("byte %d damaged: %+v, %v (want an error and every extent)", i, s, err)
		}
	}
}

// TestActivityWire: MARK stores a set in the replica's log, ACTIVITY reads
// it back; a malformed set is refused with EINVAL and changes nothing; an
// older coordinator's MARK is refused for its epoch.
func TestActivityWire(t *testing.T) {
	vol := newMemVolume(20 * ActivitySize)
	srv := startServer(t, memVolumes{testVolume, vol}, "", Config{})
	c := dial(t, clientConfig(srv.addr, testVolume, 3))
	ctx := context.Background()
	read := func() activitySet {
		t.Helper()
		buf := make([]byte, activityPayloadLen(vol.Size()))
		if err := c.Activity(ctx, buf); err != nil {
			t.Fatal(err)
		}
		s, err := parseActivity(buf, 20)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if s := read(); !s.all {
		t.Fatalf("a replica that never had a log: %+v, want every extent", s)
	}
	if err := c.StartMark(appendActivity(nil, activitySet{exts: []uint32{1, 19}})).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if s := read(); s.all || !slices.Equal(s.exts, []uint32{1, 19}) {
		t.Fatalf("read back %+v", s)
	}
	bad := be.AppendUint32(be.AppendUint32(nil, activityList), 1)
	bad = be.AppendUint32(bad, 20) // past the volume's 20 extents
	if err := c.StartMark(bad).Wait(ctx); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a set past the volume: %v, want ErrInvalid", err)
	}
	if s := read(); !slices.Equal(s.exts, []uint32{1, 19}) {
		t.Fatalf("a refused MARK changed the log: %+v", s)
	}
	if err := c.Activity(ctx, make([]byte, 4)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ACTIVITY of 4 bytes: %v, want ErrInvalid", err)
	}
	newer := dial(t, clientConfig(srv.addr, testVolume, 4))
	if err := newer.StartMark(appendActivity(nil, activitySet{})).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StartMark(appendActivity(nil, activitySet{all: true})).Wait(ctx); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("an older coordinator's MARK: %v, want a stale epoch", err)
	}
	if _, err := os.Stat(filepath.Join(srv.stateDir, testVolume+".activity")); err != nil {
		t.Fatal(err)
	}
}

// TestCoordinatorConvergeActivity: after an unclean stop, Converge compares
// only the extents the replicas' activity logs name — where the crashed
// coordinator wrote — finds the write that reached one replica only, and
// leaves the logs empty, so that the next unclean start compares nothing.
func TestCoordinatorConvergeActivity(t *testing.T) {
	const size = 16 * ActivitySize
	tc := newReplCluster(t, size, "n1", "n2", "n3")
	old := tc.open(tc.config("c0", nil, "n1", "n2", "n3"))
	mustWrite(t, old, pattern(4096, 1), 3*ActivitySize+5*RegionSize)
	mustWrite(t, old, pattern(4096, 2), 9*ActivitySize)
	// The crash: a write reached n2 only, and nothing was flushed.
	tc.node("n2").vol.poke(pattern(4096, 3), 9*ActivitySize+RegionSize)
	old.Close()

	takeover := func(epoch uint64) (*Coordinator, []Difference, int64) {
		t.Helper()
		cfg := tc.config("c1", nil, "n1", "n2", "n3")
		cfg.Epoch, cfg.StateDir, cfg.Unclean = epoch, t.TempDir(), true
		c := tc.open(cfg)
		var total int64
		diffs, err := c.Converge(context.Background(), func(_, t int64) { total = t })
		if err != nil {
			t.Fatal(err)
		}
		return c, diffs, total
	}
	c, diffs, total := takeover(5)
	if total != 2*ActivitySize {
		t.Fatalf("Converge compared %d bytes, want the 2 extents written (%d)", total, 2*ActivitySize)
	}
	if len(diffs) != 1 || diffs[0].Offset != 9*ActivitySize+RegionSize {
		t.Fatalf("Converge copied %+v, want the region at %d", diffs, 9*ActivitySize+RegionSize)
	}
	verifyClean(t, c)
	c.Close()
	if _, diffs, total = takeover(7); total != 0 || len(diffs) != 0 {
		t.Fatalf("after a converged takeover, the next compared %d bytes and copied %d regions, want none", total, len(diffs))
	}
}

// TestCoordinatorActivityBound: extents stay marked while written; past
// activityCap only settled ones (flushed everywhere) are given back, so
// the replicas' logs stay bounded — and without a flush nothing is given
// back, whatever the count.
func TestCoordinatorActivityBound(t *testing.T) {
	const extents = activityCap + 100
	tc := newReplCluster(t, extents*ActivitySize, "n1", "n2")
	c := tc.open(tc.config("c0", nil, "n1", "n2"))
	logged := func() activitySet {
		t.Helper()
		s, err := newActivityFile(tc.node("n2").stateDir, testVolume).load(extents)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Writes to extents 0 … extents-11 and extents-5, 16 at once (they
	// share marks).
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := g; e < extents-10; e += 16 {
				if err := c.WriteAt(pattern(4096, 1), int64(e)*ActivitySize, false); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	mustWrite(t, c, pattern(4096, 1), (extents-5)*ActivitySize)
	if n := len(logged().exts); n != extents-9 {
		t.Fatalf("unflushed: %d extents logged, want all %d written", n, extents-9)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, c, pattern(4096, 2), (extents-1)*ActivitySize) // needs room: evicts
	s := logged()
	if len(s.exts) > activityEvictTo || !s.contains(extents-1) {
		t.Fatalf("after a flush: %d extents logged (cap %d), last written logged: %v", len(s.exts), activityCap, s.contains(extents-1))
	}
}

// FuzzActivityDecode: whatever arrives (a MARK's payload, an ACTIVITY
// reply, a log file's body), a decoded set names only extents of the
// volume, in increasing order.
func FuzzActivityDecode(f *testing.F) {
	f.Add(appendActivity(nil, activitySet{exts: []uint32{0, 3, 9}}), 10)
	f.Add(appendActivity(nil, activitySet{all: true}), 10)
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, 1)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		if n <= 0 || n > 1<<20 {
			return
		}
		s, err := parseActivity(b, n)
		if err != nil {
			return
		}
		for i, e := range s.exts {
			if int(e) >= n || i > 0 && e <= s.exts[i-1] {
				t.Fatalf("decoded %v for a volume of %d extents", s.exts, n)
			}
		}
	})
}
