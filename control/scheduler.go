package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/engine"
)

// Scheduled snapshots (Portworx snap_interval): every volume whose
// snap_interval is above zero gets a snapshot every snap_interval minutes,
// named VOLUME.snap-<UTC timestamp> like a snapshot taken without a name,
// and the scheduler's own snapshots of it are pruned to the newest
// snap_keep.
//
// The scheduler deletes only snapshots it took. A snapshot an operator took
// without --name has the same shape of name, so names alone cannot tell
// them apart: the scheduler records each name in its state file
// (DATA_DIR/snapschedule.json, published with tmp + fsync + rename) before
// it asks the engine for the snapshot. A crash between the two leaves a
// recorded name with no snapshot, which the next pass drops; it never
// leaves a scheduled snapshot that is not recorded — or a recorded one that
// someone else made, save a user re-using a just-deleted scheduled name
// within one tick.
//
// A failure (a snapshot not taken, an old one not deleted) is logged at
// error level and kept in Errors, which status shows; a volume whose
// snapshot failed is retried one interval later, not at every tick.

// maxSnapshotErrors bounds the failures kept for status (newest kept).
const maxSnapshotErrors = 32

// SchedulerConfig configures a Scheduler. Zero values take the defaults.
type SchedulerConfig struct {
	// StatePath records the scheduled snapshots; "" keeps them in memory
	// only (tests).
	StatePath string
	// Minute is the length of one snap_interval minute: time.Minute, except
	// in tests, which shorten it to see snapshots come and go in seconds.
	Minute time.Duration
	// Tick is how often volumes are looked at: Minute/6, at most 10 s.
	Tick time.Duration
	// Now is the clock; time.Now by default.
	Now    func() time.Time
	Logger *slog.Logger
	// Snapshot takes a snapshot and Delete prunes one; nil: the engine's
	// own. A node in a cluster passes Server.SnapshotHeld and DeleteHeld,
	// so that scheduled snapshots are cluster objects like the others.
	Snapshot func(volume, name string) (engine.VolumeInfo, error)
	Delete   func(name string) error
}

// Scheduler takes and prunes scheduled snapshots. Run drives it; RunOnce
// is one pass, for tests.
type Scheduler struct {
	engine *engine.Engine
	cfg    SchedulerConfig
	log    *slog.Logger

	// runMu serialises passes: a name is recorded, then taken, by one pass.
	runMu sync.Mutex

	mu sync.Mutex // protects the fields below; never held across engine calls
	// taken are the snapshots the scheduler took, by name.
	taken map[string]scheduledSnap
	// since is, per scheduled volume, when the scheduler first saw it
	// scheduled or last tried (and failed) to snapshot it: the interval
	// counts from the latest of this and its newest scheduled snapshot.
	since map[string]time.Time
	errs  []SnapshotError
	// paused: volumes no pass takes or prunes snapshots of (Pause).
	paused map[string]int
}

// scheduledSnap is one record of the state file.
type scheduledSnap struct {
	Volume string    `json:"volume"`
	Name   string    `json:"name"`
	Taken  time.Time `json:"taken"`
}

type schedulerState struct {
	Snapshots []scheduledSnap `json:"snapshots"`
}

// NewScheduler loads the record of scheduled snapshots.
func NewScheduler(e *engine.Engine, cfg SchedulerConfig) (*Scheduler, error) {
	if cfg.Minute <= 0 {
		cfg.Minute = time.Minute
	}
	if cfg.Tick <= 0 {
		cfg.Tick = min(cfg.Minute/6, 10*time.Second)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Snapshot == nil {
		cfg.Snapshot = e.CreateSnapshot
	}
	if cfg.Delete == nil {
		cfg.Delete = e.DeleteVolume
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Scheduler{engine: e, cfg: cfg, log: log, taken: map[string]scheduledSnap{}, since: map[string]time.Time{}, paused: map[string]int{}}
	if cfg.StatePath != "" {
		raw, err := os.ReadFile(cfg.StatePath)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("control: snapshot schedule: %w", err)
		default:
			var st schedulerState
			if err := json.Unmarshal(raw, &st); err != nil {
				// Not fatal: without the record, the snapshots it named are
				// kept like an operator's (never pruned) — the safe side.
				s.report("load", "", "", fmt.Errorf("record %s unreadable (%v); scheduled snapshots taken before will not be pruned", cfg.StatePath, err))
				break
			}
			for _, r := range st.Snapshots {
				s.taken[r.Name] = r
			}
		}
	}
	return s, nil
}

// Run takes and prunes snapshots every Tick until ctx is done.
func (s *Scheduler) Run(ctx context.Context) {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	for {
		s.RunOnce()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunOnce snapshots every scheduled volume that is due and prunes the
// scheduler's snapshots of every scheduled volume to its snap_keep.
func (s *Scheduler) RunOnce() {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	now := s.cfg.Now()
	scheduled := map[string]bool{}
	infos := s.engine.Volumes()
	s.forgetGone(infos)
	for _, info := range infos {
		if info.Snapshot || info.SnapInterval <= 0 {
			continue
		}
		scheduled[info.Name] = true
		if s.isPaused(info.Name) {
			continue // its interval keeps counting
		}
		interval := time.Duration(info.SnapInterval) * s.cfg.Minute
		if now.Sub(s.last(info.Name, now)) >= interval {
			s.take(info.Name, now)
		}
		s.prune(info)
	}
	s.mu.Lock()
	for vol := range s.since {
		if !scheduled[vol] { // schedule turned off (or volume gone): start afresh if turned on again
			delete(s.since, vol)
		}
	}
	s.mu.Unlock()
}

// Pause keeps passes from taking or pruning snapshots of volume until
// resume is called, and returns once no pass is doing so: `volume delete
// --force` lists and deletes a volume's snapshots meanwhile, which a
// scheduled snapshot taken or pruned at the same moment would undo.
func (s *Scheduler) Pause(volume string) (resume func()) {
	s.runMu.Lock() // a pass that began before the pause ends first
	s.mu.Lock()
	s.paused[volume]++
	s.mu.Unlock()
	s.runMu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.paused[volume]--; s.paused[volume] <= 0 {
			delete(s.paused, volume)
		}
	}
}

func (s *Scheduler) isPaused(volume string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused[volume] > 0
}

// last is when the interval of volume started counting.
func (s *Scheduler) last(volume string, now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var newest time.Time
	for _, r := range s.taken {
		if r.Volume == volume && r.Taken.After(newest) {
			newest = r.Taken
		}
	}
	since, ok := s.since[volume]
	if !ok { // first seen: count from its newest scheduled snapshot (a restart), else from now
		since = now
		if !newest.IsZero() {
			since = newest
		}
		s.since[volume] = since
	}
	if newest.After(since) {
		return newest
	}
	return since
}

func (s *Scheduler) take(volume string, now time.Time) {
	name := engine.DefaultSnapshotName(volume, now)
	s.mu.Lock()
	s.since[volume] = now // a failure is retried one interval later
	s.taken[name] = scheduledSnap{Volume: volume, Name: name, Taken: now}
	err := s.saveLocked()
	if err != nil {
		delete(s.taken, name)
	}
	s.mu.Unlock()
	if err != nil {
		s.report("create", volume, name, fmt.Errorf("not taken: cannot record it: %w", err))
		return
	}
	info, err := s.cfg.Snapshot(volume, name)
	if err != nil {
		s.mu.Lock()
		delete(s.taken, name)
		if serr := s.saveLocked(); serr != nil {
			s.log.Warn("scheduled snapshot: cannot update the record", "err", serr) // the next pass drops the name
		}
		s.mu.Unlock()
		s.report("create", volume, name, err)
		return
	}
	s.log.Info("scheduled snapshot taken", "volume", volume, "snapshot", info.Name)
}

// prune deletes the oldest of the scheduler's snapshots of a volume beyond
// its snap_keep, and forgets recorded names that no longer exist.
func (s *Scheduler) prune(info engine.VolumeInfo) {
	exists := map[string]bool{}
	for _, sn := range s.engine.Snapshots(info.Name) {
		exists[sn.Name] = true
	}
	s.mu.Lock()
	var mine []scheduledSnap
	dropped := false
	for name, r := range s.taken {
		switch {
		case r.Volume != info.Name:
		case exists[name]:
			mine = append(mine, r)
		default: // deleted by someone else, or never taken (crash, failure)
			delete(s.taken, name)
			dropped = true
		}
	}
	s.mu.Unlock()
	slices.SortFunc(mine, func(a, b scheduledSnap) int { return a.Taken.Compare(b.Taken) })
	keep := info.SnapKeep
	if keep <= 0 {
		keep = engine.DefaultSnapKeep
	}
	for _, r := range mine[:max(0, len(mine)-keep)] {
		if err := s.cfg.Delete(r.Name); err != nil {
			s.report("prune", info.Name, r.Name, err)
			continue
		}
		s.log.Info("scheduled snapshot pruned", "volume", info.Name, "snapshot", r.Name, "snap_keep", keep)
		s.mu.Lock()
		delete(s.taken, r.Name)
		s.mu.Unlock()
		dropped = true
	}
	if dropped {
		s.mu.Lock()
		err := s.saveLocked()
		s.mu.Unlock()
		if err != nil {
			s.log.Warn("scheduled snapshot: cannot update the record", "err", err) // retried at the next change
		}
	}
}

// forgetGone drops the records of snapshots that no longer exist (their
// volume was deleted with --force, or an operator deleted them).
func (s *Scheduler) forgetGone(infos []engine.VolumeInfo) {
	exists := make(map[string]bool, len(infos))
	for _, info := range infos {
		exists[info.Name] = info.Snapshot
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	dropped := false
	for name := range s.taken {
		if !exists[name] {
			delete(s.taken, name)
			dropped = true
		}
	}
	if dropped {
		if err := s.saveLocked(); err != nil {
			s.log.Warn("scheduled snapshot: cannot update the record", "err", err)
		}
	}
}

// report logs a failure and keeps it for status. A failure repeating the
// previous one of the same snapshot (a prune retried every tick) only
// refreshes its time.
func (s *Scheduler) report(op, volume, snapshot string, err error) {
	e := SnapshotError{Time: s.cfg.Now().UTC().Format(time.RFC3339), Volume: volume, Snapshot: snapshot, Op: op, Error: plain(err)}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.errs {
		if p := &s.errs[i]; p.Op == op && p.Snapshot == snapshot && p.Error == e.Error {
			p.Time = e.Time
			return
		}
	}
	s.log.Error("scheduled snapshot failed", "op", op, "volume", volume, "snapshot", snapshot, "err", err)
	s.errs = append(s.errs, e)
	if len(s.errs) > maxSnapshotErrors {
		s.errs = slices.Delete(s.errs, 0, len(s.errs)-maxSnapshotErrors)
	}
}

// Errors returns the most recent failures, oldest first.
func (s *Scheduler) Errors() []SnapshotError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]SnapshotError{}, s.errs...)
}

// Scheduled reports whether the scheduler took the named snapshot.
func (s *Scheduler) Scheduled(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.taken[name]
	return ok
}

// saveLocked publishes the record. REQUIRES s.mu.
func (s *Scheduler) saveLocked() error {
	if s.cfg.StatePath == "" {
		return nil
	}
	st := schedulerState{Snapshots: make([]scheduledSnap, 0, len(s.taken))}
	for _, r := range s.taken {
		st.Snapshots = append(st.Snapshots, r)
	}
	slices.SortFunc(st.Snapshots, func(a, b scheduledSnap) int { return a.Taken.Compare(b.Taken) })
	return writeJSON(s.cfg.StatePath, st)
}
