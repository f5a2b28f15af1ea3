package control

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

// Snapshots of a replicated volume are taken on every in-sync replica at
// one point of the write stream: the volume's coordinator (the node serving
// it, or the volume's node claiming it for the moment) stops new writes,
// waits for those in flight, flushes every replica, snapshots each in-sync
// one on its node, and lets writes go on (replication.Coordinator.Quiesce).
// The snapshot's spec lists the nodes that hold a copy, its volume's node
// first (which must be in sync); deleting it deletes every copy. A clone of
// it is made from every copy, on its node: a replicated volume whose
// replicas are in sync from the start (the copies are identical). A node
// whose clone fails leaves the clone with one replica fewer, logged, for
// `volume ha-update` to make up.

// ReplicatedSnapshotReply: the nodes (and pools) that took the snapshot.
type ReplicatedSnapshotReply struct {
	Replicas []cluster.Replica `json:"replicas"`
}

// snapshotReplicated takes snapshot name of the replicated volume sp on
// every in-sync replica; this node is sp's node.
func (s *Server) snapshotReplicated(ctx context.Context, sp cluster.VolumeSpec, name string) (engine.VolumeInfo, error) {
	self := s.node.ID()
	if !sp.Replicas[0].InSync() {
		return engine.VolumeInfo{}, fmt.Errorf("%w: volume %q's replica on this node (its first) is out of sync; snapshot it once it is back in sync", engine.ErrBusy, sp.Name)
	}
	var others []cluster.Replica
	for _, r := range sp.Replicas[1:] {
		if r.InSync() {
			others = append(others, cluster.Replica{Node: r.Node, Pool: -1})
		}
	}
	return s.createHeldOn(ctx, cluster.VolumeSpec{Name: name, Snapshot: true, Parent: sp.Name, Repl: 1 + len(others), Replicas: others},
		func([]cluster.Replica) (engine.VolumeInfo, []cluster.Replica, error) {
			made, err := s.coordinatedSnapshot(ctx, sp, name)
			if err != nil {
				return engine.VolumeInfo{}, nil, err
			}
			v, err := s.engine.Volume(name)
			if err != nil || !slices.ContainsFunc(made, func(r cluster.Replica) bool { return r.Node == self }) {
				for _, r := range made {
					s.deleteReplicaOn(context.Background(), r.Node, name)
				}
				return engine.VolumeInfo{}, nil, fmt.Errorf("%w: volume %q: the snapshot was not taken on its first replica (it left the in-sync set meanwhile)", engine.ErrIO, sp.Name)
			}
			made = slices.DeleteFunc(made, func(r cluster.Replica) bool { return r.Node == self })
			return v.Info(), made, nil
		})
}

// coordinatedSnapshot has the volume's coordinator take the snapshot: the
// live coordinator on another node, else this node claiming the volume.
func (s *Server) coordinatedSnapshot(ctx context.Context, sp cluster.VolumeSpec, name string) ([]cluster.Replica, error) {
	cfg := s.clusterOf()
	if sp.Coordinator != "" && sp.CoordinatorLease != "" && sp.Coordinator != cfg.Member.ID() {
		if lease, alive, err := cfg.Member.Store().HeartbeatLease(ctx, sp.Coordinator); err == nil && alive && lease == sp.CoordinatorLease {
			var rep ReplicatedSnapshotReply
			err := s.callPeer(ctx, sp.Coordinator, http.MethodPost, "/v1/internal/coordinators/"+url.PathEscape(sp.Name)+"/snapshot", SnapshotRequest{Name: name}, &rep)
			return rep.Replicas, err
		}
	}
	c, err := s.acquireCoordinator(ctx, sp.Name)
	if err != nil {
		return nil, err
	}
	defer s.releaseCoordinator(sp.Name)
	return s.snapshotThrough(ctx, c, sp.Name, name)
}

// snapshotThrough quiesces c's volume and snapshots every in-sync replica.
// A failure deletes the copies made.
func (s *Server) snapshotThrough(ctx context.Context, c *replication.Coordinator, volume, name string) ([]cluster.Replica, error) {
	var made []cluster.Replica
	err := c.Quiesce(func(inSync []string) error {
		for _, node := range inSync {
			var rep ReplicaReply
			var err error
			if node == s.node.ID() {
				var info engine.VolumeInfo
				if info, err = s.engine.CreateSnapshot(volume, name); err == nil {
					rep = ReplicaReply{Pool: info.Pool, IOPriority: string(info.IOPriority)}
				}
			} else {
				err = s.callPeer(ctx, node, http.MethodPost, "/v1/internal/replicas/"+url.PathEscape(volume)+"/snapshots", SnapshotRequest{Name: name}, &rep)
			}
			if err != nil {
				return fmt.Errorf("snapshot of the replica on node %s: %w", node, err)
			}
			made = append(made, cluster.Replica{Node: node, Pool: rep.Pool, IOPriority: rep.IOPriority, State: cluster.ReplicaInSync})
		}
		return nil
	})
	if err != nil {
		for _, r := range made {
			if r.Node == s.node.ID() {
				s.engine.DeleteVolume(name)
			} else {
				s.deleteReplicaOn(context.Background(), r.Node, name)
			}
		}
		return nil, err
	}
	return made, nil
}

// coordinatorSnapshot answers POST /v1/internal/coordinators/{name}/snapshot:
// the volume's node asks its coordinator (this node) for a snapshot.
func (s *Server) coordinatorSnapshot(w http.ResponseWriter, r *http.Request) {
	var req SnapshotRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	volume := r.PathValue("name")
	c := s.coordinatorOf(volume)
	if c == nil {
		s.fail(w, r, fmt.Errorf("%w: this node does not coordinate volume %q (any more)", engine.ErrBusy, volume))
		return
	}
	made, err := s.snapshotThrough(r.Context(), c, volume, req.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, ReplicatedSnapshotReply{Replicas: made})
}

// replicaSnapshot answers POST /v1/internal/replicas/{name}/snapshots: a
// snapshot of this node's replica, asked by the volume's coordinator while
// it holds the writes.
func (s *Server) replicaSnapshot(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(forwardedHeader) == "" {
		s.fail(w, r, invalidf("/v1/internal/replicas is for the volume's coordinator; use POST /v1/volumes/{name}/snapshots"))
		return
	}
	var req SnapshotRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := s.engine.CreateSnapshot(r.PathValue("name"), req.Name)
	if err != nil {
		s.fail(w, r, volumeError("snapshot replica of", r.PathValue("name"), err))
		return
	}
	reply(w, http.StatusCreated, ReplicaReply{Pool: info.Pool, IOPriority: string(info.IOPriority)})
}

// cloneReplicated clones snap, a replicated volume's snapshot held by this
// node (its first copy) and others, on every node holding a copy.
func (s *Server) cloneReplicated(ctx context.Context, snap cluster.VolumeSpec, name string) (engine.VolumeInfo, error) {
	var others []cluster.Replica
	for _, r := range snap.Replicas[1:] {
		others = append(others, cluster.Replica{Node: r.Node, Pool: -1})
	}
	return s.createHeldOn(ctx, cluster.VolumeSpec{Name: name, Parent: snap.Name, Repl: 1 + len(others), Replicas: others},
		func(others []cluster.Replica) (engine.VolumeInfo, []cluster.Replica, error) {
			info, err := s.engine.CloneVolume(snap.Name, name)
			if err != nil {
				return engine.VolumeInfo{}, nil, err
			}
			var made []cluster.Replica
			for _, r := range others {
				var rep ReplicaReply
				if err := s.callPeer(ctx, r.Node, http.MethodPost, "/v1/internal/replicas/"+url.PathEscape(snap.Name)+"/clones", CloneRequest{Name: name}, &rep); err != nil {
					s.log.Warn("clone not made on a node holding a copy of its snapshot; the clone has one replica fewer", "clone", name, "snapshot", snap.Name, "node", r.Node, "err", err)
					continue
				}
				made = append(made, cluster.Replica{Node: r.Node, Pool: rep.Pool, IOPriority: rep.IOPriority, State: cluster.ReplicaInSync})
			}
			return info, made, nil
		})
}

// replicaClone answers POST /v1/internal/replicas/{name}/clones: a clone
// of this node's copy of a replicated volume's snapshot, asked by the
// snapshot's node.
func (s *Server) replicaClone(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(forwardedHeader) == "" {
		s.fail(w, r, invalidf("/v1/internal/replicas is for the snapshot's node; use POST /v1/volumes/{name}/clone"))
		return
	}
	var req CloneRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := s.engine.CloneVolume(r.PathValue("name"), req.Name)
	if err != nil {
		s.fail(w, r, shareError("clone", r.PathValue("name"), req.Name, err))
		return
	}
	s.log.Info("replica cloned", "snapshot", r.PathValue("name"), "clone", req.Name, "for", r.Header.Get(forwardedHeader))
	reply(w, http.StatusCreated, ReplicaReply{Pool: info.Pool, IOPriority: string(info.IOPriority)})
}
