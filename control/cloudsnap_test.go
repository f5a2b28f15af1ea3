package control

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/internal/s3test"
)

// clusterCloudsnaps wires a Cloudsnaps to a clustered server the way the
// daemon does (its snapshots and restored volumes through the cluster
// path), after the reconciliation a daemon's start does: the node's first
// one registers whatever the drives hold, which would hide the volumes
// cloudsnaps leave unregistered.
func clusterCloudsnaps(t *testing.T, srv *Server, st *cluster.Store, e *engine.Engine, statePath string) *Cloudsnaps {
	t.Helper()
	if err := srv.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	cs, err := NewCloudsnaps(e, CloudsnapsConfig{StatePath: statePath, Cluster: func() *cluster.Store { return st },
		Snapshot: srv.SnapshotHeld, Delete: srv.DeleteHeld, Create: srv.CreateRestored})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cs.Shutdown)
	srv.SetCloudsnaps(cs)
	return cs
}

// waitCloudsnapJob waits for the newest job of volume to end and returns it.
func waitCloudsnapJob(t *testing.T, c *Client, volume string) CloudsnapJob {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		jobs, err := c.CloudsnapJobs(context.Background(), volume)
		if err != nil {
			t.Fatal(err)
		}
		if len(jobs) > 0 && jobs[len(jobs)-1].State != "running" {
			return jobs[len(jobs)-1]
		}
	}
	t.Fatalf("the cloudsnap job of %q did not end in 30 s", volume)
	return CloudsnapJob{}
}

// sameVolumes checks the invariant of clustervol.go after cloudsnaps: the
// drives and the cluster's specs name the same volumes, every spec ready,
// and reconciliation finds nothing unregistered or missing.
func sameVolumes(t *testing.T, srv *Server, st *cluster.Store, e *engine.Engine, want ...string) {
	t.Helper()
	ctx := context.Background()
	if err := srv.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	specs, err := st.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var inKV, onDrives []string
	for _, sp := range specs {
		inKV = append(inKV, sp.Name)
		if sp.State != cluster.VolumeReady {
			t.Errorf("spec %q is %s after the cloudsnaps ended", sp.Name, sp.State)
		}
	}
	for _, info := range e.Volumes() {
		onDrives = append(onDrives, info.Name)
	}
	slices.Sort(inKV)
	slices.Sort(onDrives)
	slices.Sort(want)
	if !slices.Equal(inKV, onDrives) || !slices.Equal(onDrives, want) {
		t.Errorf("kvdb has %q, drives %q; want %q on both", inKV, onDrives, want)
	}
	if rep := srv.recon.Load(); rep == nil || len(rep.Unregistered) != 0 || len(rep.Missing) != 0 {
		t.Errorf("reconciliation reports unregistered %v, missing %v", rep.Unregistered, rep.Missing)
	}
}

func TestCloudsnapsAreClusterObjects(t *testing.T) {
	s3 := s3test.Start(t, "cairn")
	srv, c, st, e := clusterAPI(t)
	clusterCloudsnaps(t, srv, st, e, "")
	ctx := context.Background()
	if _, err := c.CreateCredential(ctx, CreateCredentialRequest{Name: "s3", Provider: "s3", Endpoint: s3.Endpoint(),
		AccessKey: s3test.AccessKey, SecretKey: s3test.SecretKey, Bucket: "cairn"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")
	if err := v.WriteAt([]byte(strings.Repeat("cairn", 1000)), 0, false); err != nil {
		t.Fatal(err)
	}

	// Two backups: the second's snapshot replaces the first's as the base.
	var ids []string
	for range 2 {
		if _, err := c.BackupCloudsnap(ctx, CloudsnapBackupRequest{Volume: "v"}); err != nil {
			t.Fatal(err)
		}
		j := waitCloudsnapJob(t, c, "v")
		if j.State != "done" {
			t.Fatalf("backup: %+v", j)
		}
		ids = append(ids, j.Cloudsnap)
	}
	base := ""
	for _, info := range e.Snapshots("v") {
		base = info.Name
	}
	if !strings.HasPrefix(base, "v.cloudsnap-") {
		t.Fatalf("no local base snapshot of v: %q", base)
	}
	sameVolumes(t, srv, st, e, "v", base)

	// A restore registers its volume; a name the cluster has is refused.
	if _, err := c.RestoreCloudsnap(ctx, ids[1], CloudsnapRestoreRequest{Name: "r"}); err != nil {
		t.Fatal(err)
	}
	if j := waitCloudsnapJob(t, c, "r"); j.State != "done" {
		t.Fatalf("restore: %+v", j)
	}
	sp, err := st.CreateVolume(ctx, cluster.VolumeSpec{Name: "elsewhere", Size: 1 << 20, Repl: 1, State: cluster.VolumeReady,
		Replicas: []cluster.Replica{{Node: "another-node"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RestoreCloudsnap(ctx, ids[1], CloudsnapRestoreRequest{Name: "elsewhere"}); err == nil || !strings.Contains(err.Error(), "already exists in the cluster") {
		t.Errorf("restore onto another node's name: %v", err)
	}
	if err := st.DeleteVolume(ctx, "elsewhere", sp.Rev); err != nil {
		t.Fatal(err)
	}
	sameVolumes(t, srv, st, e, "v", base, "r")

	// A restore failing mid-fill leaves neither volume nor spec.
	var victim string
	filepath.Walk(filepath.Join(s3.Dir, "cairn"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && filepath.Base(p) != "manifest.json" {
			victim = p
		}
		return nil
	})
	if victim == "" || os.Remove(victim) != nil {
		t.Fatalf("no data object to remove (%q)", victim)
	}
	if _, err := c.RestoreCloudsnap(ctx, ids[0], CloudsnapRestoreRequest{Name: "bad"}); err != nil {
		t.Fatal(err)
	}
	if j := waitCloudsnapJob(t, c, "bad"); j.State != "failed" {
		t.Fatalf("restore with a missing object: %+v", j)
	}
	sameVolumes(t, srv, st, e, "v", base, "r")
}

// A daemon killed mid-backup and mid-restore: the next start deletes the
// backup's snapshot and the partial volume, their specs with them.
func TestCloudsnapsCrashCleanupRemovesSpecs(t *testing.T) {
	s3 := s3test.Start(t, "cairn")
	srv, c, st, e := clusterAPI(t)
	ctx := context.Background()
	// The killed run's record of its two jobs, and what they made:
	// a snapshot and a volume, both registered.
	state := filepath.Join(t.TempDir(), "cloudsnap.json")
	raw, _ := json.Marshal(cloudsnapState{Running: []runningRecord{
		{Kind: "backup", ID: "0123456789abcdef-20260101T000000.000Z", Volume: "v", Snapshot: "v.cloudsnap-x", Credential: "s3"},
		{Kind: "restore", ID: "0123456789abcdef-20260101T000000.000Z", Volume: "partial", Credential: "s3"},
	}})
	if err := os.WriteFile(state, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cs := clusterCloudsnaps(t, srv, st, e, state)
	if _, err := c.CreateCredential(ctx, CreateCredentialRequest{Name: "s3", Provider: "s3", Endpoint: s3.Endpoint(),
		AccessKey: s3test.AccessKey, SecretKey: s3test.SecretKey, Bucket: "cairn"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "v", Size: 16 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.SnapshotHeld(ctx, "v", "v.cloudsnap-x"); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.CreateRestored(ctx, engine.VolumeSpec{Name: "partial", Size: 16 << 20}, func() (engine.VolumeInfo, error) {
		return e.CreateVolume(engine.VolumeSpec{Name: "partial", Size: 16 << 20, Repl: 1})
	}); err != nil {
		t.Fatal(err)
	}
	cs.Start()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		jobs := cs.Jobs("")
		if len(jobs) == 2 && jobs[0].State != "running" && jobs[1].State != "running" {
			for _, j := range jobs {
				if !strings.HasSuffix(j.Error, "cleaned up") {
					t.Errorf("cleanup of the %s: %s", j.Kind, j.Error)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("interrupted jobs not cleaned up in 30 s: %+v", jobs)
		}
	}
	sameVolumes(t, srv, st, e, "v")
}
