package crash

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/cairn-storage/cairn/internal/lazyfs"
	"github.com/cairn-storage/cairn/internal/testenv"
)

// mountLazy serves the files of a new backing directory (made by mk) through
// lazyfs at a new mount point; unmounted when the test ends.
func mountLazy(t *testing.T, mk func(backing string)) (*lazyfs.FS, string) {
	t.Helper()
	testenv.RequireFUSE(t)
	testenv.RequireTool(t, "fusermount3")
	backing, mnt := t.TempDir(), t.TempDir()
	mk(backing)
	l, err := lazyfs.New(backing)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Mount(mnt); err != nil {
		t.Fatal(err)
	}
	// Registered after the daemons' cleanups would be wrong: cleanups run in
	// reverse, and the daemon must die before the unmount. mountLazy is
	// called before startDaemon, so this runs last.
	t.Cleanup(func() { l.Close() })
	return l, mnt
}

// powerCut kills the daemon, drops (or tears) everything its drives had not
// synced, and starts it again on the surviving bytes.
func powerCut(t *testing.T, l *lazyfs.FS, mnt string, rng *rand.Rand, tear bool) func(d *daemon) *daemon {
	return func(d *daemon) *daemon {
		t.Helper()
		d.kill()
		if err := l.Unmount(); err != nil {
			t.Fatal(err)
		}
		lost, kept, err := l.PowerCut(rng, tear)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("power cut (tear %v): %d unsynced pages lost, %d kept", tear, lost, kept)
		if err := l.Mount(mnt); err != nil {
			t.Fatal(err)
		}
		return startDaemon(t, d.dataDir, d.args...)
	}
}

// TestPowerLoss: the crash loop with the daemon's drive on lazyfs; each
// crash is a power cut below the page cache (unsynced writes dropped, or torn
// at 4 KiB granularity on odd iterations).
func TestPowerLoss(t *testing.T) {
	l, mnt := mountLazy(t, func(b string) { sparseFile(t, filepath.Join(b, "drive0.img"), 1<<30) })
	d := startDaemon(t, filepath.Join(t.TempDir(), "data"), "-s", filepath.Join(mnt, "drive0.img"))
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	n := 0
	cut := func(d *daemon) *daemon {
		n++
		return powerCut(t, l, mnt, rng, n%2 == 0)(d)
	}
	crashLoop(t, d, *iterations, seed, cut)
	if st := l.Stats("drive0.img"); st.Syncs == 0 {
		t.Fatalf("the daemon never synced its drive through lazyfs: %+v", st)
	}
}
