package control

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

// clusterAPI is one node in a cluster of its own: a real engine on a file
// drive, a real embedded etcd, the node registered, the API server over
// both. Everything is closed when the test ends.
func clusterAPI(t *testing.T) (*Server, *Client, *cluster.Store, *engine.Engine) {
	t.Helper()
	dir := t.TempDir()
	drivePath := filepath.Join(dir, "drive.img")
	if err := os.WriteFile(drivePath, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(drivePath, 1<<30); err != nil {
		t.Fatal(err)
	}
	node, err := OpenNode(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	e, err := engine.Open(engine.Options{NodeID: node.ID(), Drives: []engine.DriveSpec{{Path: drivePath}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	ctx := context.Background()
	kv, err := cluster.StartEmbedded(ctx, cluster.EmbeddedConfig{Name: "t", Dir: filepath.Join(dir, "kvdb"), ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kv.Close)
	cli, err := cluster.Connect(ctx, kv.Endpoints(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	st, err := cluster.Join(ctx, cli, kv.Endpoints(), "alpha", cluster.JoinOptions{Embedded: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(e, node, nil, nil)
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	m, err := st.Register(ctx, cluster.MemberConfig{Record: func() cluster.NodeRecord {
		pools := []cluster.PoolSummary{}
		for _, p := range e.Status().Pools {
			pools = append(pools, cluster.PoolSummary{ID: p.ID, IOPriority: string(p.IOPriority), Size: p.Size, Used: p.Used, Status: p.Status})
		}
		return cluster.NodeRecord{ID: node.ID(), Hostname: "h", MgmtAddr: hs.Listener.Addr().String(), Zone: "default", Rack: "default", Pools: pools}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	srv.SetCluster(ClusterConfig{Member: m, MgmtAddr: hs.Listener.Addr().String()})
	return srv, NewClient(hs.URL), st, e
}

// The create and delete steps (clustervol.go) interrupted at every point
// they can be, in a seeded random order with whole operations between
// them; after reconciliation the invariant holds: the drives and the
// cluster's specs name the same volumes, every spec ready and naming this
// node, and reconciliation deleted nothing from the drives.
func TestReconcileFinishesInterruptedSteps(t *testing.T) {
	t.Parallel()
	srv, c, st, e := clusterAPI(t)
	ctx := context.Background()
	self := srv.clusterOf().Member.ID()
	for seed := uint64(1); seed <= 4; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed*0x9e3779b97f4a7c15))
		for i := range 24 {
			name := fmt.Sprintf("s%d-v%d", seed, rng.IntN(8))
			reserve := func(state string) cluster.VolumeSpec {
				sp, err := st.CreateVolume(ctx, cluster.VolumeSpec{Name: name, Size: 64 << 20, Repl: 1, State: state, Replicas: []cluster.Replica{{Node: self, Pool: -1}}})
				if err != nil && !errors.Is(err, cluster.ErrExists) {
					t.Fatal(err)
				}
				return sp
			}
			_, onDrives := e.Volume(name)
			exists := onDrives == nil
			switch op := rng.IntN(6); {
			case op == 0 && !exists: // create, whole
				if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: name, Size: 64 << 20}); err != nil && !errors.Is(err, engine.ErrExists) {
					t.Fatalf("seed %d op %d: create %s: %v", seed, i, name, err)
				}
			case op == 1 && exists: // delete, whole
				if err := c.DeleteVolume(ctx, name); err != nil && !errors.Is(err, engine.ErrNotFound) {
					t.Fatalf("seed %d op %d: delete %s: %v", seed, i, name, err)
				}
			case op == 2 && !exists: // create: crash after the reservation
				reserve(cluster.VolumeCreating)
			case op == 3 && !exists: // create: crash after the engine's create
				if sp := reserve(cluster.VolumeCreating); sp.Rev != 0 {
					if _, err := e.CreateVolume(engine.VolumeSpec{Name: name, Size: 64 << 20}); err != nil {
						t.Fatal(err)
					}
				}
			case op == 4 && exists: // delete: crash after marking it deleting
				if sp, err := st.Volume(ctx, name); err == nil {
					sp.State = cluster.VolumeDeleting
					_, _ = st.UpdateVolume(ctx, sp)
				}
			case op == 5 && exists: // delete: crash after the engine's delete
				if sp, err := st.Volume(ctx, name); err == nil {
					sp.State = cluster.VolumeDeleting
					if _, err := st.UpdateVolume(ctx, sp); err == nil {
						if err := e.DeleteVolume(name); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
		}
		before := engineNames(e.Volumes())
		if err := srv.Reconcile(ctx); err != nil {
			t.Fatalf("seed %d: reconcile: %v", seed, err)
		}
		if after := engineNames(e.Volumes()); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("seed %d: reconciliation changed the drives: %v → %v", seed, before, after)
		}
		specs, err := st.Volumes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var inEtcd []string
		for _, sp := range specs {
			inEtcd = append(inEtcd, sp.Name)
			if sp.State != cluster.VolumeReady || sp.Node() != self || sp.ID == "" || sp.Replicas[0].Pool < 0 {
				t.Errorf("seed %d: spec after reconciliation: %+v", seed, sp)
			}
		}
		if fmt.Sprint(inEtcd) != fmt.Sprint(before) {
			t.Fatalf("seed %d: etcd has %v, the drives %v", seed, inEtcd, before)
		}
		if rep := srv.recon.Load(); len(rep.Missing) != 0 || len(rep.Unregistered) != 0 {
			t.Errorf("seed %d: report %+v, want nothing left to the operator", seed, rep)
		}
	}
}

func engineNames(infos []engine.VolumeInfo) []string {
	out := []string{}
	for _, v := range infos {
		out = append(out, v.Name)
	}
	return out
}

// A volume that another live node coordinates (its claim names that node
// under that node's live lease) is not deleted from here: that node is
// acknowledging writes the replicas hold. Once the claim is gone, it is.
func TestDeleteRefusedWhileCoordinatedElsewhere(t *testing.T) {
	t.Parallel()
	_, c, st, _ := clusterAPI(t)
	ctx := context.Background()
	other, err := st.Register(ctx, cluster.MemberConfig{Record: func() cluster.NodeRecord {
		return cluster.NodeRecord{ID: "node-other", Hostname: "other", Zone: "default", Rack: "default"}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Stop()
	lease, _, ok := other.Lease()
	if !ok {
		t.Fatal("the other node holds no lease")
	}
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "db", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	claim := func(node, lease string) {
		sp, err := st.Volume(ctx, "db")
		if err != nil {
			t.Fatal(err)
		}
		sp.Coordinator, sp.CoordinatorLease = node, lease
		if _, err := st.UpdateVolume(ctx, sp); err != nil {
			t.Fatal(err)
		}
	}
	claim("node-other", lease)
	if err := c.DeleteVolume(ctx, "db"); !errors.Is(err, engine.ErrBusy) || !strings.Contains(err.Error(), "node-other") {
		t.Fatalf("delete of a volume coordinated by a live node: %v", err)
	}
	if sp, err := st.Volume(ctx, "db"); err != nil || sp.State != cluster.VolumeReady {
		t.Fatalf("after the refused delete: %+v, %v", sp, err)
	}
	claim("", "")
	if err := c.DeleteVolume(ctx, "db"); err != nil {
		t.Fatal(err)
	}
}

// The eviction transaction keeps an in-sync replica in the record, whatever
// the coordinator believes: an earlier eviction it heard fail may have been
// committed (found by the replication simulation, seed 170: both replicas
// evicted in the record, and the volume could never be opened again).
func TestEvictionKeepsAnInSyncReplicaInTheRecord(t *testing.T) {
	t.Parallel()
	srv, _, st, _ := clusterAPI(t)
	ctx := context.Background()
	m := srv.clusterOf().Member
	self := m.ID()
	lease, cmp, ok := m.Lease()
	if !ok {
		t.Fatal("no lease")
	}
	sp, err := st.CreateVolume(ctx, cluster.VolumeSpec{Name: "db", Size: 64 << 20, Repl: 2, State: cluster.VolumeReady,
		Coordinator: self, CoordinatorLease: lease, Epoch: 4,
		Replicas: []cluster.Replica{{Node: self, State: cluster.ReplicaInSync}, {Node: "node-b", State: cluster.ReplicaInSync}}})
	if err != nil {
		t.Fatal(err)
	}
	mem := &replicationMembership{s: srv, volume: "db", claim: claim{lease: lease, cmp: cmp}}
	if epoch, err := mem.Evict("node-b"); err != nil || epoch != sp.Epoch+1 {
		t.Fatalf("evicting one of two in-sync replicas: epoch %d, %v", epoch, err)
	}
	if _, err := mem.Evict(self); !errors.Is(err, replication.ErrNoReplica) {
		t.Fatalf("evicting the last in-sync replica in the record: %v", err)
	}
	got, err := st.Volume(ctx, "db")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Replicas[0].InSync() || got.Replicas[1].InSync() || got.Epoch != sp.Epoch+1 {
		t.Fatalf("record after the refused eviction: %+v", got)
	}
	// Evicting one that is out already (a retry of an eviction heard as
	// failed) is allowed while another is in sync.
	if _, err := mem.Evict("node-b"); err != nil {
		t.Fatalf("evicting an evicted replica again: %v", err)
	}
}
