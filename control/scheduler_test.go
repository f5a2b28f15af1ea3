package control

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/engine"
)

// fakeClock is a settable clock for the scheduler.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func snapNames(e *engine.Engine, volume string) []string {
	var out []string
	for _, s := range e.Snapshots(volume) {
		out = append(out, s.Name)
	}
	return out
}

func TestSchedulerTakesAndPrunes(t *testing.T) {
	c, e, _ := newTestAPI(t)
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	state := filepath.Join(t.TempDir(), "snapschedule.json")
	s, err := NewScheduler(e, SchedulerConfig{StatePath: state, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "db", Size: 1 << 20, SnapInterval: 10, SnapKeep: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "off", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	// An operator's snapshots, one of them with the default name: never pruned.
	if _, err := c.CreateSnapshot(ctx, "db", "db.mine"); err != nil {
		t.Fatal(err)
	}
	manual, err := c.CreateSnapshot(ctx, "db", "")
	if err != nil {
		t.Fatal(err)
	}

	s.RunOnce() // first sight: the interval starts counting now
	if got := len(e.Snapshots("db")); got != 2 {
		t.Fatalf("snapshots right after the schedule was seen: %d, want 2 (the operator's)", got)
	}
	clock.advance(9 * time.Minute)
	s.RunOnce()
	if got := len(e.Snapshots("db")); got != 2 {
		t.Fatalf("snapshot taken before the interval: %v", snapNames(e, "db"))
	}
	var taken []string
	for i := range 6 {
		clock.advance(time.Minute)
		if i > 0 {
			clock.advance(9 * time.Minute)
		}
		s.RunOnce()
		taken = append(taken, "db.snap-"+clock.t.UTC().Format("20060102T150405.000Z"))
	}
	got := snapNames(e, "db")
	want := append([]string{"db.mine", manual.Name}, taken[3:]...)
	if !slices.Equal(got, want) {
		t.Fatalf("after 6 intervals with snap_keep 3: %v, want %v", got, want)
	}
	if len(e.Snapshots("off")) != 0 {
		t.Errorf("a volume with snap_interval 0 got snapshots")
	}
	if errs := s.Errors(); len(errs) != 0 {
		t.Errorf("errors: %v", errs)
	}

	// A restarted scheduler knows its snapshots from the record: lowering
	// snap_keep prunes them (and only them), and the interval counts from
	// the newest one, not from the restart.
	s2, err := NewScheduler(e, SchedulerConfig{StatePath: state, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.UpdateVolume(ctx, "db", UpdateVolumeRequest{SnapKeep: ptr(1)}); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Minute)
	s2.RunOnce()
	if got, want := snapNames(e, "db"), []string{"db.mine", manual.Name, taken[5]}; !slices.Equal(got, want) {
		t.Fatalf("after restart and snap_keep 1: %v, want %v", got, want)
	}
	clock.advance(9 * time.Minute)
	s2.RunOnce()
	if got := snapNames(e, "db"); got[len(got)-1] == taken[5] {
		t.Errorf("no snapshot one interval after the newest scheduled one: %v", got)
	}
}

func TestSchedulerReportsFailures(t *testing.T) {
	c, e, _ := newTestAPI(t)
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	s, err := NewScheduler(e, SchedulerConfig{Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "full", Size: 1 << 20, SnapInterval: 1}); err != nil {
		t.Fatal(err)
	}
	for i := range engine.MaxSnapshots {
		if _, err := e.CreateSnapshot("full", "full.s"+string(rune('A'+i/26))+string(rune('a'+i%26))); err != nil {
			t.Fatal(err)
		}
	}
	s.RunOnce()
	clock.advance(time.Minute)
	s.RunOnce()
	errs := s.Errors()
	if len(errs) != 1 || errs[0].Volume != "full" || errs[0].Op != "create" || !strings.Contains(errs[0].Error, "snapshot limit") {
		t.Fatalf("errors after a failed scheduled snapshot: %+v", errs)
	}
	// Retried one interval later, not at every tick.
	clock.advance(time.Second)
	s.RunOnce()
	if n := len(s.Errors()); n != 1 {
		t.Errorf("failure retried before the interval: %d errors", n)
	}
	// Status shows it.
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.SnapshotErrors) != 0 {
		t.Errorf("status of a server without the scheduler shows %v", st.SnapshotErrors)
	}

	// An unreadable record is reported, not fatal.
	bad := filepath.Join(t.TempDir(), "snapschedule.json")
	if err := os.WriteFile(bad, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	s3, err := NewScheduler(e, SchedulerConfig{StatePath: bad})
	if err != nil {
		t.Fatal(err)
	}
	if errs := s3.Errors(); len(errs) != 1 || errs[0].Op != "load" {
		t.Errorf("unreadable record: %+v", errs)
	}
}

func TestSchedulerErrorsBounded(t *testing.T) {
	s := &Scheduler{cfg: SchedulerConfig{Now: time.Now}, log: slog.New(slog.DiscardHandler), taken: map[string]scheduledSnap{}, since: map[string]time.Time{}}
	for i := range 3 * maxSnapshotErrors {
		s.report("create", "v", "v.snap-"+time.Duration(i).String(), engine.ErrNoSpace)
	}
	errs := s.Errors()
	if len(errs) != maxSnapshotErrors || errs[len(errs)-1].Snapshot != "v.snap-"+time.Duration(3*maxSnapshotErrors-1).String() {
		t.Fatalf("kept %d errors, last %+v", len(errs), errs[len(errs)-1])
	}
}

// TestSchedulerPause: a paused volume gets no scheduled snapshot (a force
// delete is listing and deleting its snapshots); resumed, it does again.
func TestSchedulerPause(t *testing.T) {
	c, e, _ := newTestAPI(t)
	clock := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	s, err := NewScheduler(e, SchedulerConfig{Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(context.Background(), CreateVolumeRequest{Name: "db", Size: 1 << 20, SnapInterval: 1}); err != nil {
		t.Fatal(err)
	}
	s.RunOnce()
	resume := s.Pause("db")
	clock.advance(2 * time.Minute)
	s.RunOnce()
	if got := len(e.Snapshots("db")); got != 0 {
		t.Fatalf("%d snapshots of a paused volume, want none", got)
	}
	resume()
	s.RunOnce()
	if got := len(e.Snapshots("db")); got != 1 {
		t.Fatalf("%d snapshots once resumed, want 1", got)
	}
}
