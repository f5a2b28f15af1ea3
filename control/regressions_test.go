package control

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

// `host detach VOL` lets go of a record that a restart could not restore
// because VOL's pool is missing: it succeeds, and the record is gone.
func TestDetachForgetsRecordOfUnavailableVolume(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 256<<20); err != nil {
			t.Fatal(err)
		}
		return p
	}
	low, high := mk("low.img"), mk("high.img")
	node, err := OpenNode(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	cat := NewVolumeCatalog(dir, nil)
	e, err := engine.Open(engine.Options{NodeID: node.ID(), Catalog: cat, Drives: []engine.DriveSpec{
		{Path: low}, {Path: high, IOPriority: engine.PriorityHigh}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.CreateVolume(engine.VolumeSpec{Name: "db", Size: 16 << 20, IOPriority: engine.PriorityHigh}); err != nil {
		t.Fatal(err)
	}
	e.Close()
	rec := `[{"volume":"db","via":"fuse","mounts":[{"path":"/mnt/review-db","fs":"ext4"}]}]`
	if err := os.WriteFile(filepath.Join(dir, attachStateFile), []byte(rec), 0o600); err != nil {
		t.Fatal(err)
	}
	// The high drive is missing at this start.
	e, err = engine.Open(engine.Options{NodeID: node.ID(), Catalog: cat, Drives: []engine.DriveSpec{{Path: low}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	srv := NewServer(e, node, nil, nil)
	a := NewAttacher(e, AttachConfig{DataDir: dir, NodeID: node.ID()})
	a.Restore(context.Background())
	defer a.Shutdown()
	srv.SetAttacher(a)
	if rs := a.RestoreState(); len(rs.Errors) != 1 {
		t.Fatalf("restore state: %+v", rs)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	c := NewClient(hs.URL)
	_, derr := c.Detach(context.Background(), "db")
	raw, _ := os.ReadFile(filepath.Join(dir, attachStateFile))
	if derr != nil || strings.TrimSpace(string(raw)) != "[]" {
		t.Errorf("host detach of the pending record: %v; attachments.json: %s", derr, raw)
	}
	if rs := a.RestoreState(); len(rs.Errors) != 0 {
		t.Errorf("restore errors after the record was let go: %+v", rs.Errors)
	}
}

// A new open of a replicated volume on the node whose last connection is
// being closed waits until that release has cleared the claim: a claim
// made meanwhile (same node, same lease) was cleared by the release's
// transaction, leaving a coordinator the cluster did not record. Here the
// release never ends: the open fails busy when its deadline passes, and
// never starts a claim (this Server has no cluster; a claim would panic).
func TestOpenWaitsForReleaseOfSameVolume(t *testing.T) {
	s := &Server{}
	e := &coordEntry{ready: make(chan struct{}), stop: make(chan struct{}), released: make(chan struct{}), releasing: true}
	close(e.ready)
	s.coords.open = map[string]*coordEntry{"db": e}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.acquireCoordinator(ctx, "db"); !errors.Is(err, engine.ErrBusy) {
		t.Fatalf("open during the release: %v, want busy", err)
	}
	if s.coords.open["db"] != e {
		t.Fatal("the releasing entry was replaced")
	}
}

// ha-update's removal refuses, in its transaction, to leave a volume with
// no in-sync replica in the record: the replica being removed may be the
// last one since another was evicted after the coordinator's status was
// read.
func TestRemoveReplicaKeepsAnInSyncReplica(t *testing.T) {
	spec := func(states ...string) *cluster.VolumeSpec {
		v := &cluster.VolumeSpec{Name: "db", Coordinator: "a", CoordinatorLease: "1f", Epoch: 7}
		for i, st := range states {
			v.Replicas = append(v.Replicas, cluster.Replica{Node: string(rune('a' + i)), State: st})
		}
		v.Repl = len(v.Replicas)
		return v
	}
	v := spec(cluster.ReplicaOutOfSync, cluster.ReplicaInSync, cluster.ReplicaOutOfSync)
	if err := removeReplicaFromSpec(v, "b", "a", "1f"); !errors.Is(err, engine.ErrInvalid) {
		t.Fatalf("removing the last in-sync replica: %v", err)
	}
	if len(v.Replicas) != 3 || v.Epoch != 7 {
		t.Fatalf("a refused removal changed the spec: %+v", v)
	}
	v = spec(cluster.ReplicaInSync, cluster.ReplicaInSync, cluster.ReplicaOutOfSync)
	if err := removeReplicaFromSpec(v, "b", "a", "1f"); err != nil {
		t.Fatal(err)
	}
	if len(v.Replicas) != 2 || v.Repl != 2 || v.Epoch != 8 || v.HasReplica("b") {
		t.Fatalf("after the removal: %+v", v)
	}
	if err := removeReplicaFromSpec(spec(cluster.ReplicaInSync, cluster.ReplicaInSync), "b", "a", "other"); !errors.Is(err, replication.ErrFenced) {
		t.Fatalf("removal under another claim: %v", err)
	}
}

// Reconciliation does not record a replicated volume's size from this
// node's replica: a resize grows it first, and one that failed on another
// replica must leave the recorded size alone (the smaller replica would be
// refused at the next open). A volume of one replica still takes it.
func TestSettleKeepsReplicatedSize(t *testing.T) {
	info := engine.VolumeInfo{Name: "db", Size: 2 << 30, Repl: 2}
	sp := cluster.VolumeSpec{Name: "db", Size: 1 << 30, Repl: 2, State: cluster.VolumeReady,
		Replicas: []cluster.Replica{{Node: "a"}, {Node: "b"}}}
	if got := settledSpec(sp, info); got.Size != 1<<30 {
		t.Fatalf("replicated volume's size settled to %d from this node's replica", got.Size)
	}
	sp.Replicas = sp.Replicas[:1]
	if got := settledSpec(sp, info); got.Size != 2<<30 {
		t.Fatalf("single-replica volume's size not settled: %d", got.Size)
	}
}
