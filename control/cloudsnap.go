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
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/cloudsnap"
	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
)

// Cloudsnaps: the daemon's side of package cloudsnap. The Cloudsnaps
// manager runs backups and restores in the background (one backup per
// volume at a time), keeps the recent ones for `cloudsnap status`, runs the
// cloudsnap schedule, and keeps its state in DATA_DIR/cloudsnap.json
// (published with tmp + fsync + rename):
//
//   - chains: per volume id, the last backup and the local snapshot it
//     uploaded — the base of the next incremental. Only that one snapshot is
//     kept per volume: a new backup deletes its predecessor's once it is
//     complete.
//   - running: the backups and restores in flight, recorded before they
//     touch anything. A daemon killed mid-upload finds them at its next
//     start and cleans up: the local snapshot the backup took is deleted,
//     its objects (no manifest was written, so it was never listed) are
//     deleted from the bucket, and a restore's partial volume is deleted.
//     Each is reported failed ("interrupted by a daemon restart") in status.
//   - schedules: --cloudsnap_interval/--cloudsnap_keep per volume name, and
//     the ids of the backups the schedule made (only those are pruned).
//
// Credentials live in the cluster's etcd (cluster/credentials.go): every
// node, and a new node restoring after a site loss, reaches the same
// buckets with them.

// maxCloudsnapJobs bounds the finished jobs kept for status.
const maxCloudsnapJobs = 64

// CloudsnapsConfig configures the manager.
type CloudsnapsConfig struct {
	StatePath string // "" = in memory (tests)
	NodeID    string
	// Cluster returns the cluster store holding the credentials (nil
	// before the node registered).
	Cluster func() *cluster.Store
	// Minute is one cloudsnap_interval minute (tests shorten it).
	Minute time.Duration
	Logger *slog.Logger
	// Snapshot takes a backup's local snapshot, Delete deletes one (and,
	// at start, what an interrupted job left), Create makes a restored
	// volume around its fill; nil: the engine's own. A node in a cluster
	// passes Server.SnapshotHeld, DeleteHeld and CreateRestored, so that
	// what cloudsnaps make is a cluster object like any volume: registered
	// (never reported unregistered), its name unique in the cluster, and
	// its spec removed with it.
	Snapshot func(ctx context.Context, volume, name string) (engine.VolumeInfo, error)
	Delete   func(ctx context.Context, name string) error
	Create   func(ctx context.Context, spec engine.VolumeSpec, build func() (engine.VolumeInfo, error)) (engine.VolumeInfo, error)
}

// Cloudsnaps runs cloud backups and restores.
type Cloudsnaps struct {
	eng *engine.Engine
	cfg CloudsnapsConfig
	log *slog.Logger

	ctx    context.Context // cancelled by Shutdown: jobs stop, clean up
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex // protects the fields below; never held across store or engine calls that wait
	state cloudsnapState
	jobs  []*cloudsnapJob // running and recent, oldest first
}

type cloudsnapState struct {
	Chains    map[string]chainRecord    `json:"chains"` // by volume id
	Running   []runningRecord           `json:"running"`
	Schedules map[string]scheduleRecord `json:"schedules"` // by volume name
}

type chainRecord struct {
	Volume     string `json:"volume"`
	Credential string `json:"credential"`
	LastID     string `json:"last_id"`
	Snapshot   string `json:"local_snapshot"`
}

type runningRecord struct {
	Kind       string `json:"kind"` // "backup" or "restore"
	ID         string `json:"id"`   // the backup's id (restore: the one restored)
	Volume     string `json:"volume"`
	Snapshot   string `json:"local_snapshot,omitempty"` // backup: the snapshot it takes
	Credential string `json:"credential"`
}

type scheduleRecord struct {
	Interval  int       `json:"interval"` // minutes
	Keep      int       `json:"keep"`
	Taken     []string  `json:"taken"` // backup ids the schedule made, oldest first
	LastStart time.Time `json:"last_start"`
}

// DefaultCloudsnapKeep is how many scheduled cloudsnaps are kept when not told.
const DefaultCloudsnapKeep = 7

// cloudsnapJob is one backup or restore, running or finished.
type cloudsnapJob struct {
	info             CloudsnapJob // REQUIRES Cloudsnaps.mu (except the progress counters)
	started, stopped time.Time    // REQUIRES Cloudsnaps.mu
	prog             cloudsnap.Progress
}

// NewCloudsnaps loads the state and cleans up what a previous run left in
// flight (in the background: the store may be slow to answer).
func NewCloudsnaps(e *engine.Engine, cfg CloudsnapsConfig) (*Cloudsnaps, error) {
	if cfg.Minute <= 0 {
		cfg.Minute = time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Snapshot == nil {
		cfg.Snapshot = func(_ context.Context, volume, name string) (engine.VolumeInfo, error) {
			return e.CreateSnapshot(volume, name)
		}
	}
	if cfg.Delete == nil {
		cfg.Delete = func(_ context.Context, name string) error { return e.DeleteVolume(name) }
	}
	c := &Cloudsnaps{eng: e, cfg: cfg, log: log}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.state = cloudsnapState{Chains: map[string]chainRecord{}, Schedules: map[string]scheduleRecord{}}
	if cfg.StatePath != "" {
		raw, err := os.ReadFile(cfg.StatePath)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("control: cloudsnap state: %w", err)
		default:
			if err := json.Unmarshal(raw, &c.state); err != nil {
				return nil, fmt.Errorf("control: cloudsnap state %s: %w", cfg.StatePath, err)
			}
			if c.state.Chains == nil {
				c.state.Chains = map[string]chainRecord{}
			}
			if c.state.Schedules == nil {
				c.state.Schedules = map[string]scheduleRecord{}
			}
		}
	}
	return c, nil
}

// Start cleans up interrupted jobs and runs the schedule until Shutdown.
func (c *Cloudsnaps) Start() {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.recover()
		t := time.NewTicker(min(c.cfg.Minute/6, 10*time.Second))
		defer t.Stop()
		for {
			c.runSchedule()
			select {
			case <-c.ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// Shutdown stops the schedule and every running job; a stopped backup
// deletes its local snapshot and what it uploaded, a stopped restore its
// volume, before Shutdown returns (store calls have their own deadlines).
func (c *Cloudsnaps) Shutdown() {
	c.cancel()
	c.wg.Wait()
}

// RecoverRestores deletes the partial volumes of the restores a killed
// daemon left running. The daemon calls it before its first
// reconciliation, which would otherwise record such a volume ready (and
// before anything can export or attach it); the rest of the cleanup runs
// in the background (Start).
func (c *Cloudsnaps) RecoverRestores() {
	c.recoverKind("restore")
}

// recover cleans up the jobs a killed daemon left running.
func (c *Cloudsnaps) recover() {
	c.recoverKind("")
}

// recoverKind cleans up the left-running jobs of kind ("": every kind).
func (c *Cloudsnaps) recoverKind(kind string) {
	c.mu.Lock()
	left := slices.Clone(c.state.Running)
	c.mu.Unlock()
	for _, r := range left {
		if kind != "" && r.Kind != kind {
			continue
		}
		j := c.addJob(CloudsnapJob{ID: r.ID, Kind: r.Kind, Volume: r.Volume, Cloudsnap: r.ID, Credential: r.Credential})
		var errs []error
		switch r.Kind {
		case "backup":
			if r.Snapshot != "" {
				if err := c.deleteLocal(r.Snapshot); err != nil {
					errs = append(errs, fmt.Errorf("delete local snapshot %s: %w", r.Snapshot, err))
				}
			}
			if st, err := c.store(c.ctx, r.Credential); err != nil {
				errs = append(errs, err)
			} else if err := cloudsnap.Abandon(c.ctx, st, r.ID); err != nil {
				errs = append(errs, fmt.Errorf("delete its objects: %w", err))
			}
		case "restore":
			if err := c.deleteLocal(r.Volume); err != nil {
				errs = append(errs, fmt.Errorf("delete partial volume %s: %w", r.Volume, err))
			}
		}
		msg := "interrupted by a daemon restart; cleaned up"
		if err := errors.Join(errs...); err != nil {
			msg = "interrupted by a daemon restart; cleanup failed: " + plain(err)
			c.log.Error("cloudsnap: cleanup of an interrupted job failed", "kind", r.Kind, "id", r.ID, "err", err)
		} else {
			c.log.Info("cloudsnap: interrupted job cleaned up", "kind", r.Kind, "id", r.ID, "volume", r.Volume)
		}
		c.finish(j, errors.New(msg))
		if len(errs) == 0 {
			c.mu.Lock()
			c.dropRunningLocked(r.ID, r.Kind)
			c.saveLocked()
			c.mu.Unlock()
		}
	}
}

// deleteLocal deletes a snapshot or volume a cloudsnap job made on this
// node, with its spec in the cluster (cfg.Delete). One the engine does not
// have is not deleted at all: the job stopped before making it, and a spec
// it may have reserved (creating) is reconciliation's to remove — never
// another node's volume of that name. It runs when the job's own context
// may be cancelled (Shutdown): the kvdb steps must still happen.
func (c *Cloudsnaps) deleteLocal(name string) error {
	if _, err := c.eng.Volume(name); errors.Is(err, engine.ErrNotFound) {
		return nil
	}
	err := c.cfg.Delete(context.WithoutCancel(c.ctx), name)
	if errors.Is(err, engine.ErrNotFound) {
		return nil // deleted meanwhile
	}
	return err
}

// store opens the bucket of credential name ("" = the only credential).
func (c *Cloudsnaps) store(ctx context.Context, name string) (*cloudsnap.Store, error) {
	cred, err := c.credential(ctx, name)
	if err != nil {
		return nil, err
	}
	return cloudsnap.Open(cred)
}

func (c *Cloudsnaps) clusterStore() (*cluster.Store, error) {
	if c.cfg.Cluster == nil {
		return nil, errNoCluster
	}
	s := c.cfg.Cluster()
	if s == nil {
		return nil, errNoCluster
	}
	return s, nil
}

// credential returns a credential with its secrets; name "" picks the only one.
func (c *Cloudsnaps) credential(ctx context.Context, name string) (cloudsnap.Credential, error) {
	cs, err := c.clusterStore()
	if err != nil {
		return cloudsnap.Credential{}, err
	}
	if name == "" {
		all, err := c.credentials(ctx)
		if err != nil {
			return cloudsnap.Credential{}, err
		}
		switch len(all) {
		case 0:
			return cloudsnap.Credential{}, fmt.Errorf("%w: no credentials: create one (cairn credentials create NAME --provider s3 ...)", cloudsnap.ErrNotFound)
		case 1:
			return all[0], nil
		}
		names := make([]string, len(all))
		for i, cr := range all {
			names[i] = cr.Name
		}
		return cloudsnap.Credential{}, fmt.Errorf("%w: %d credentials (%s): name one with --cred", cloudsnap.ErrInvalid, len(all), strings.Join(names, ", "))
	}
	raw, err := cs.Credential(ctx, name)
	if errors.Is(err, cluster.ErrNotFound) {
		return cloudsnap.Credential{}, fmt.Errorf("%w: credential %q (cairn credentials list)", cloudsnap.ErrNotFound, name)
	}
	if err != nil {
		return cloudsnap.Credential{}, err
	}
	var cred cloudsnap.Credential
	if err := json.Unmarshal(raw, &cred); err != nil {
		return cloudsnap.Credential{}, fmt.Errorf("credential %q: damaged record: %v", name, err)
	}
	return cred, nil
}

func (c *Cloudsnaps) credentials(ctx context.Context) ([]cloudsnap.Credential, error) {
	cs, err := c.clusterStore()
	if err != nil {
		return nil, err
	}
	raws, err := cs.Credentials(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cloudsnap.Credential, 0, len(raws))
	for _, raw := range raws {
		var cred cloudsnap.Credential
		if json.Unmarshal(raw, &cred) == nil {
			out = append(out, cred)
		}
	}
	return out, nil
}

// CreateCredential checks and records a credential (not the store: that
// is ValidateCredential).
func (c *Cloudsnaps) CreateCredential(ctx context.Context, cred cloudsnap.Credential) (CredentialInfo, error) {
	if err := engine.ValidateName("credential", cred.Name); err != nil {
		return CredentialInfo{}, err
	}
	if err := cred.Check(); err != nil {
		return CredentialInfo{}, err
	}
	cs, err := c.clusterStore()
	if err != nil {
		return CredentialInfo{}, err
	}
	raw, err := json.Marshal(cred)
	if err != nil {
		return CredentialInfo{}, err
	}
	if err := cs.PutCredential(ctx, cred.Name, raw); err != nil {
		if errors.Is(err, cluster.ErrExists) {
			return CredentialInfo{}, fmt.Errorf("%w: credential %q already exists", engine.ErrExists, cred.Name)
		}
		return CredentialInfo{}, err
	}
	return credentialInfo(cred), nil
}

func credentialInfo(c cloudsnap.Credential) CredentialInfo {
	return CredentialInfo{Name: c.Name, Provider: c.Provider, Endpoint: c.Endpoint, AccessKey: c.AccessKey, Region: c.Region,
		Bucket: c.Bucket, Encrypted: c.Passphrase != ""}
}

// Credentials lists the credentials, without their secrets.
func (c *Cloudsnaps) Credentials(ctx context.Context) ([]CredentialInfo, error) {
	all, err := c.credentials(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]CredentialInfo, 0, len(all))
	for _, cr := range all {
		out = append(out, credentialInfo(cr))
	}
	return out, nil
}

// ValidateCredential reaches the store and checks the bucket is there and writable.
func (c *Cloudsnaps) ValidateCredential(ctx context.Context, name string) (CredentialInfo, error) {
	cred, err := c.credential(ctx, name)
	if err != nil {
		return CredentialInfo{}, err
	}
	st, err := cloudsnap.Open(cred)
	if err != nil {
		return CredentialInfo{}, err
	}
	if err := st.Validate(ctx); err != nil {
		return CredentialInfo{}, fmt.Errorf("credential %q: %w", name, err)
	}
	return credentialInfo(cred), nil
}

// DeleteCredential forgets a credential; refused while a job or a schedule uses it.
func (c *Cloudsnaps) DeleteCredential(ctx context.Context, name string) error {
	cs, err := c.clusterStore()
	if err != nil {
		return err
	}
	c.mu.Lock()
	for _, r := range c.state.Running {
		if r.Credential == name {
			c.mu.Unlock()
			return fmt.Errorf("%w: credential %q is in use by the running %s %s", engine.ErrBusy, name, r.Kind, r.ID)
		}
	}
	c.mu.Unlock()
	if err := cs.DeleteCredential(ctx, name); err != nil {
		if errors.Is(err, cluster.ErrNotFound) {
			return fmt.Errorf("%w: credential %q", cloudsnap.ErrNotFound, name)
		}
		return err
	}
	return nil
}

// addJob registers a job for status.
func (c *Cloudsnaps) addJob(info CloudsnapJob) *cloudsnapJob {
	now := time.Now()
	info.State, info.Started = "running", now.UTC().Format(time.RFC3339Nano)
	j := &cloudsnapJob{info: info, started: now}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.jobs = append(c.jobs, j)
	// Drop the oldest finished ones beyond the bound.
	for n := len(c.jobs); n > maxCloudsnapJobs; n-- {
		i := slices.IndexFunc(c.jobs, func(j *cloudsnapJob) bool { return j.info.State != "running" })
		if i < 0 {
			break
		}
		c.jobs = slices.Delete(c.jobs, i, i+1)
	}
	return j
}

func (c *Cloudsnaps) finish(j *cloudsnapJob, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	j.stopped = time.Now()
	j.info.Finished = j.stopped.UTC().Format(time.RFC3339Nano)
	if err != nil {
		j.info.State, j.info.Error = "failed", plain(err)
		return
	}
	j.info.State = "done"
}

// Jobs returns the running and recent jobs, oldest first; volume filters.
func (c *Cloudsnaps) Jobs(volume string) []CloudsnapJob {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []CloudsnapJob{}
	for _, j := range c.jobs {
		if volume != "" && j.info.Volume != volume {
			continue
		}
		info := j.info
		info.BytesTotal, info.BytesDone, info.BytesStored = j.prog.Total.Load(), j.prog.Done.Load(), j.prog.Stored.Load()
		end := j.stopped
		if end.IsZero() {
			end = time.Now()
		}
		// The rate over the whole job so far (or all of it, once ended).
		info.RateBytesPerSec = float64(info.BytesDone) / max(end.Sub(j.started).Seconds(), 1e-3)
		if info.State == "running" && info.RateBytesPerSec > 0 && info.BytesTotal >= info.BytesDone {
			info.ETASeconds = float64(info.BytesTotal-info.BytesDone) / info.RateBytesPerSec
		}
		out = append(out, info)
	}
	return out
}

// Backup starts a backup of volume in the background and returns its job.
func (c *Cloudsnaps) Backup(ctx context.Context, volume, credName string, full, scheduled bool) (CloudsnapJob, error) {
	v, err := c.eng.Volume(volume)
	if err != nil {
		return CloudsnapJob{}, volumeError("back up", volume, err)
	}
	info := v.Info()
	if info.Snapshot {
		return CloudsnapJob{}, invalidf("%q is a snapshot: back up its volume %q", volume, info.Parent)
	}
	if credName == "" {
		// Without --cred, a volume's chain goes on in its bucket (the only
		// credential is taken when it has none yet).
		c.mu.Lock()
		credName = c.state.Chains[info.ID].Credential
		c.mu.Unlock()
	}
	cred, err := c.credential(ctx, credName)
	if err != nil {
		return CloudsnapJob{}, err
	}
	st, err := cloudsnap.Open(cred)
	if err != nil {
		return CloudsnapJob{}, err
	}
	now := time.Now()
	id := cloudsnap.NewID(info.ID, now)
	// VOL.cloudsnap-<UTC timestamp>: the shape of a scheduled snapshot's
	// name, so that it reads as one taken by cairn.
	snap := strings.Replace(engine.DefaultSnapshotName(info.Name, now), ".snap-", ".cloudsnap-", 1)

	c.mu.Lock()
	for _, r := range c.state.Running {
		if r.Kind == "backup" && r.Volume == info.Name {
			c.mu.Unlock()
			return CloudsnapJob{}, fmt.Errorf("%w: a backup of volume %q is running (%s)", engine.ErrBusy, info.Name, r.ID)
		}
	}
	chain := c.state.Chains[info.ID]
	// Recorded before the snapshot is taken: a crash from here on is
	// cleaned up at the next start (recover).
	rec := runningRecord{Kind: "backup", ID: id, Volume: info.Name, Snapshot: snap, Credential: cred.Name}
	c.state.Running = append(c.state.Running, rec)
	if err := c.saveLocked(); err != nil {
		c.dropRunningLocked(id, "backup")
		c.mu.Unlock()
		return CloudsnapJob{}, fmt.Errorf("cannot record the backup: %w", err)
	}
	c.mu.Unlock()
	if err := c.takeSnapshot(ctx, info.Name, snap); err != nil {
		c.mu.Lock()
		c.dropRunningLocked(id, "backup")
		c.saveLocked()
		c.mu.Unlock()
		return CloudsnapJob{}, volumeError("snapshot", info.Name, err)
	}
	req := cloudsnap.BackupRequest{ID: id, Snapshot: snap, Full: full, Node: c.cfg.NodeID}
	if chain.Credential == cred.Name && chain.LastID != "" {
		req.BaseID, req.BaseSnapshot = chain.LastID, chain.Snapshot
	}
	j := c.addJob(CloudsnapJob{ID: id, Kind: "backup", Volume: info.Name, Cloudsnap: id, Credential: cred.Name, Full: full, Scheduled: scheduled})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.runBackup(j, st, info, req, chain, scheduled)
	}()
	return c.jobInfo(j), nil
}

// takeSnapshot takes a backup's local snapshot (cfg.Snapshot). Should it
// fail after the engine made it (the kvdb did not record it ready), the
// snapshot is deleted again: no backup builds on it. Only a name the engine
// did not have before is deleted, never someone else's snapshot.
func (c *Cloudsnaps) takeSnapshot(ctx context.Context, volume, snap string) error {
	if _, err := c.eng.Volume(snap); err == nil {
		return fmt.Errorf("%w: snapshot %q", engine.ErrExists, snap)
	}
	_, err := c.cfg.Snapshot(ctx, volume, snap)
	if err == nil {
		return nil
	}
	if derr := c.deleteLocal(snap); derr != nil {
		c.log.Error("cloudsnap: cannot delete the snapshot of a backup that did not start", "snapshot", snap, "err", derr)
		return fmt.Errorf("%w (and its snapshot %q could not be deleted: %v)", err, snap, plain(derr))
	}
	return err
}

func (c *Cloudsnaps) jobInfo(j *cloudsnapJob) CloudsnapJob {
	c.mu.Lock()
	defer c.mu.Unlock()
	return j.info
}

func (c *Cloudsnaps) runBackup(j *cloudsnapJob, st *cloudsnap.Store, info engine.VolumeInfo, req cloudsnap.BackupRequest, prev chainRecord, scheduled bool) {
	start := time.Now()
	// This is the volume's only backup running (Backup refuses a
	// second one, and only the volume's node backs it up): what an earlier
	// failed upload left in the bucket without a manifest can go now.
	if n, err := cloudsnap.SweepOrphans(c.ctx, st, info.ID, req.ID); err != nil {
		c.log.Warn("cloudsnap: cannot sweep the objects of earlier failed backups", "volume", info.Name, "err", err)
	} else if n > 0 {
		c.log.Info("cloudsnap: swept the objects of earlier failed backups", "volume", info.Name, "backups", n)
	}
	m, err := cloudsnap.Backup(c.ctx, c.eng, st, req, &j.prog)
	if err != nil {
		// Backup deleted what it stored; the snapshot goes too.
		if derr := c.deleteLocal(req.Snapshot); derr != nil {
			c.log.Error("cloudsnap: cannot delete the snapshot of a failed backup", "snapshot", req.Snapshot, "err", derr)
		}
		c.log.Error("cloudsnap backup failed", "volume", info.Name, "id", req.ID, "err", err)
		c.mu.Lock()
		c.dropRunningLocked(req.ID, "backup")
		c.saveLocked()
		c.mu.Unlock()
		c.finish(j, err)
		return
	}
	c.mu.Lock()
	j.info.Full = m.Full
	j.info.BytesUploaded = m.Uploaded
	c.state.Chains[info.ID] = chainRecord{Volume: info.Name, Credential: st.CredentialName(), LastID: m.ID, Snapshot: req.Snapshot}
	c.dropRunningLocked(req.ID, "backup")
	if scheduled {
		sr := c.state.Schedules[info.Name]
		sr.Taken = append(sr.Taken, m.ID)
		c.state.Schedules[info.Name] = sr
	}
	serr := c.saveLocked()
	c.mu.Unlock()
	if serr != nil {
		c.log.Error("cloudsnap: cannot record the backup's chain (the next one will be full)", "err", serr)
	}
	// The previous local snapshot is no base any more.
	if prev.Snapshot != "" && prev.Snapshot != req.Snapshot {
		if err := c.deleteLocal(prev.Snapshot); err != nil {
			c.log.Warn("cloudsnap: cannot delete the previous base snapshot", "snapshot", prev.Snapshot, "err", err)
		}
	}
	c.log.Info("cloudsnap backup done", "volume", info.Name, "id", m.ID, "full", m.Full, "uploaded", m.Uploaded,
		"extents", len(m.Extents), "seconds", time.Since(start).Seconds())
	c.finish(j, nil)
	if scheduled {
		c.prune(st, info.Name)
	}
}

// dropRunningLocked forgets a running record. REQUIRES c.mu.
func (c *Cloudsnaps) dropRunningLocked(id, kind string) {
	c.state.Running = slices.DeleteFunc(c.state.Running, func(r runningRecord) bool { return r.ID == id && r.Kind == kind })
}

// Restore starts a restore of backup id into a new volume name ("" = the
// backed-up volume's name). Checked before it returns: the backup exists,
// the passphrase opens it, the name is free.
func (c *Cloudsnaps) Restore(ctx context.Context, id, credName, name string) (CloudsnapJob, error) {
	st, err := c.store(ctx, credName)
	if err != nil {
		return CloudsnapJob{}, err
	}
	m, _, err := cloudsnap.CheckRestore(ctx, c.eng, st, id, name)
	if err != nil {
		return CloudsnapJob{}, err
	}
	if name == "" {
		name = m.Volume
	}
	// CheckRestore looked at this node's engine; the name must be free in
	// the whole cluster. (A create elsewhere racing this one is caught
	// when the restore reserves the name: its job fails "already exists".)
	if err := c.nameFree(ctx, name); err != nil {
		return CloudsnapJob{}, err
	}
	c.mu.Lock()
	for _, r := range c.state.Running {
		if r.Kind == "restore" && r.Volume == name {
			c.mu.Unlock()
			return CloudsnapJob{}, fmt.Errorf("%w: volume %q is being restored", engine.ErrExists, name)
		}
	}
	c.state.Running = append(c.state.Running, runningRecord{Kind: "restore", ID: id, Volume: name, Credential: st.CredentialName()})
	if err := c.saveLocked(); err != nil {
		c.dropRunningLocked(id, "restore")
		c.mu.Unlock()
		return CloudsnapJob{}, fmt.Errorf("cannot record the restore: %w", err)
	}
	c.mu.Unlock()
	j := c.addJob(CloudsnapJob{ID: "restore-" + name, Kind: "restore", Volume: name, Cloudsnap: id, Credential: st.CredentialName(), Full: m.Full})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_, err := cloudsnap.RestoreWith(c.ctx, c.eng, st, id, name, &j.prog, c.creator())
		if err != nil {
			c.log.Error("cloudsnap restore failed", "id", id, "volume", name, "err", err)
		} else {
			c.log.Info("cloudsnap restore done", "id", id, "volume", name, "bytes", j.prog.Done.Load(),
				"seconds", time.Since(j.started).Seconds(), "fill_seconds", time.Duration(j.prog.FillNanos.Load()).Seconds(),
				"flush_seconds", time.Duration(j.prog.FlushNanos.Load()).Seconds())
		}
		c.mu.Lock()
		// A restore that failed because the name was taken meanwhile did
		// not create it: nothing to clean up either way (Restore deletes
		// its own partial volume).
		c.dropRunningLocked(id, "restore")
		c.saveLocked()
		c.mu.Unlock()
		c.finish(j, err)
	}()
	return c.jobInfo(j), nil
}

// nameFree refuses a name the cluster has given to a volume (any node's).
func (c *Cloudsnaps) nameFree(ctx context.Context, name string) error {
	cs, err := c.clusterStore()
	if err != nil {
		return nil // not in a cluster: the engine's check is the whole check
	}
	sp, err := cs.Volume(ctx, name)
	switch {
	case errors.Is(err, cluster.ErrNotFound):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("%w: volume %q already exists in the cluster (node %s); restore under another name (--name)", engine.ErrExists, name, sp.Node())
}

// creator makes a restored volume through cfg.Create. Its kvdb steps run
// without the jobs' cancellation: when Shutdown stops a fill, the name
// must still be given back now, not left to reconciliation.
func (c *Cloudsnaps) creator() cloudsnap.Creator {
	if c.cfg.Create == nil {
		return nil
	}
	return func(spec engine.VolumeSpec, build func() (engine.VolumeInfo, error)) (engine.VolumeInfo, error) {
		return c.cfg.Create(context.WithoutCancel(c.ctx), spec, build)
	}
}

// List reads the backups in the bucket of credName.
func (c *Cloudsnaps) List(ctx context.Context, credName, volume string) ([]cloudsnap.Entry, error) {
	st, err := c.store(ctx, credName)
	if err != nil {
		return nil, err
	}
	out, err := cloudsnap.List(ctx, st, volume)
	if out == nil {
		out = []cloudsnap.Entry{}
	}
	return out, err
}

// Delete deletes backup id from the bucket of credName; refused while a
// backup of its volume runs here (it may be building on it).
func (c *Cloudsnaps) Delete(ctx context.Context, credName, id string) error {
	st, err := c.store(ctx, credName)
	if err != nil {
		return err
	}
	volID, _, _ := strings.Cut(id, "-")
	c.mu.Lock()
	for _, r := range c.state.Running {
		if r.Kind == "backup" && strings.HasPrefix(r.ID, volID+"-") {
			c.mu.Unlock()
			return fmt.Errorf("%w: a backup of its volume is running (%s); retry when it is done", engine.ErrBusy, r.ID)
		}
	}
	c.mu.Unlock()
	if err := cloudsnap.Delete(ctx, st, id); err != nil {
		return err
	}
	c.mu.Lock()
	for name, sr := range c.state.Schedules {
		sr.Taken = slices.DeleteFunc(sr.Taken, func(t string) bool { return t == id })
		c.state.Schedules[name] = sr
	}
	c.saveLocked()
	c.mu.Unlock()
	return nil
}

// SetSchedule sets a volume's cloudsnap schedule (interval 0 stops it and
// keeps what it made). keep 0 = DefaultCloudsnapKeep.
func (c *Cloudsnaps) SetSchedule(volume string, interval, keep *int) error {
	if err := checkSchedule(interval, keep); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	sr := c.state.Schedules[volume]
	if interval != nil {
		sr.Interval = *interval
	}
	if keep != nil {
		sr.Keep = *keep
	}
	c.state.Schedules[volume] = sr
	return c.saveLocked()
}

// maxCloudsnapInterval is a year of minutes.
const maxCloudsnapInterval = 60 * 24 * 366

func checkSchedule(interval, keep *int) error {
	if interval != nil && (*interval < 0 || *interval > maxCloudsnapInterval) {
		return invalidf("--cloudsnap_interval %d: minutes, 0 (off) to %d", *interval, maxCloudsnapInterval)
	}
	if keep != nil && (*keep < 0 || *keep > 1000) {
		return invalidf("--cloudsnap_keep %d: 1 to 1000", *keep)
	}
	return nil
}

// Schedule returns a volume's cloudsnap interval and keep.
func (c *Cloudsnaps) Schedule(volume string) (interval, keep int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sr := c.state.Schedules[volume]
	keep = sr.Keep
	if keep == 0 {
		keep = DefaultCloudsnapKeep
	}
	return sr.Interval, keep
}

// runSchedule starts the scheduled backups that are due.
func (c *Cloudsnaps) runSchedule() {
	now := time.Now()
	c.mu.Lock()
	var due []string
	for vol, sr := range c.state.Schedules {
		if sr.Interval > 0 && now.Sub(sr.LastStart) >= time.Duration(sr.Interval)*c.cfg.Minute {
			due = append(due, vol)
		}
	}
	c.mu.Unlock()
	slices.Sort(due)
	for _, vol := range due {
		if c.ctx.Err() != nil {
			return
		}
		if _, err := c.eng.Volume(vol); errors.Is(err, engine.ErrNotFound) {
			c.mu.Lock()
			delete(c.state.Schedules, vol) // the volume is gone
			c.saveLocked()
			c.mu.Unlock()
			continue
		}
		c.mu.Lock()
		sr := c.state.Schedules[vol]
		sr.LastStart = now // a failure is retried one interval later
		c.state.Schedules[vol] = sr
		c.saveLocked()
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		_, err := c.Backup(ctx, vol, "", false, true)
		cancel()
		if err != nil {
			c.log.Error("scheduled cloudsnap not started", "volume", vol, "err", err)
		}
	}
}

// prune deletes the schedule's oldest backups of volume beyond its keep.
func (c *Cloudsnaps) prune(st *cloudsnap.Store, volume string) {
	c.mu.Lock()
	sr := c.state.Schedules[volume]
	keep := sr.Keep
	if keep == 0 {
		keep = DefaultCloudsnapKeep
	}
	old := slices.Clone(sr.Taken[:max(0, len(sr.Taken)-keep)])
	c.mu.Unlock()
	for _, id := range old {
		if err := cloudsnap.Delete(c.ctx, st, id); err != nil && !errors.Is(err, cloudsnap.ErrNotFound) {
			c.log.Error("scheduled cloudsnap not pruned", "volume", volume, "id", id, "err", err)
			continue
		}
		c.log.Info("scheduled cloudsnap pruned", "volume", volume, "id", id, "keep", keep)
		c.mu.Lock()
		sr := c.state.Schedules[volume]
		sr.Taken = slices.DeleteFunc(sr.Taken, func(t string) bool { return t == id })
		c.state.Schedules[volume] = sr
		c.saveLocked()
		c.mu.Unlock()
	}
}

// saveLocked publishes the state. A failure is returned to who asked (and
// logged): the next change retries. REQUIRES c.mu.
func (c *Cloudsnaps) saveLocked() error {
	if c.cfg.StatePath == "" {
		return nil
	}
	if err := writeJSON(c.cfg.StatePath, c.state); err != nil {
		c.log.Error("cloudsnap: cannot save the state", "path", c.cfg.StatePath, "err", err)
		return err
	}
	return nil
}
