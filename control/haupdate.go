package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

// haUpdate answers POST /v1/volumes/{name}/ha (`volume ha-update`): add one
// replica (made empty on its node, then copied by the coordinator's resync:
// the regions that hold data) or remove one.
//
// It runs on the volume's coordinator — forwarded to the node serving the
// volume, or claiming the volume here when none does — so that the change
// of the replica set and the I/O that must follow it are one node's. A
// repl 1 volume is served by its node's engine directly, so its first added
// replica is done on that node, and only while nothing uses the volume
// there (its clients would write around the coordinator).
//
// Order, so that the cluster never records a replica in sync that is not:
//
//	add:    make the empty replica on its node → record it out-of-sync
//	        (epoch bump, log kept here) → the coordinator copies it and
//	        joins it to the in-sync set (epoch bump)
//	remove: record it gone (epoch bump) → the coordinator stops using it
//	        → delete its data on its node (best effort: a node that does not
//	        answer keeps it, reported unregistered there)
func (s *Server) haUpdate(w http.ResponseWriter, r *http.Request) {
	cfg := s.clusterOf()
	name := r.PathValue("name")
	if cfg == nil {
		s.fail(w, r, invalidf("volume ha-update changes a volume's replicas across nodes; this node has not joined its cluster"))
		return
	}
	var req HAUpdateRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	ctx := r.Context()
	sp, err := cfg.Member.Store().Volume(ctx, name)
	if err != nil {
		s.fail(w, r, volumeError("ha-update", name, err))
		return
	}
	have := len(sp.Replicas)
	switch {
	case sp.Snapshot:
		s.fail(w, r, invalidf("%q is a snapshot: its replicas follow its volume", name))
		return
	case sp.State != cluster.VolumeReady:
		s.fail(w, r, fmt.Errorf("%w: volume %q is %s", engine.ErrBusy, name, sp.State))
		return
	case engine.ValidateRepl(req.Repl) != nil:
		s.fail(w, r, engine.ValidateRepl(req.Repl))
		return
	case req.Repl == have:
		s.fail(w, r, invalidf("volume %q has %d replicas already", name, have))
		return
	case req.Repl != have+1 && req.Repl != have-1:
		s.fail(w, r, invalidf("volume %q has %d replicas: ha-update adds or removes one at a time (--repl %d or %d)", name, have, have+1, have-1))
		return
	}
	forwarded := r.Header.Get(forwardedHeader) != ""
	// Where it must run: the repl 1 volume's node, or the live coordinator.
	target := ""
	switch {
	case have == 1:
		target = sp.Node()
	case sp.Coordinator != "" && sp.CoordinatorLease != "":
		if lease, alive, err := cfg.Member.Store().HeartbeatLease(ctx, sp.Coordinator); err == nil && alive && lease == sp.CoordinatorLease {
			target = sp.Coordinator
		}
	}
	if target != "" && target != cfg.Member.ID() {
		if forwarded {
			s.fail(w, r, fmt.Errorf("%w: volume %q is served by node %s, not this one", ErrElsewhere, name, target))
			return
		}
		n, err := s.nodeByID(ctx, target)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if n.Status != cluster.StatusOnline {
			s.fail(w, r, unreachable(name, n, "is "+n.Status))
			return
		}
		body, err := json.Marshal(req) // decode consumed the request's
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.forwardBody(w, r, n, name, bytes.NewReader(body))
		return
	}
	if req.Repl > have {
		err = s.addReplica(ctx, sp, req.Node)
	} else {
		err = s.removeReplica(ctx, sp, req.Node)
	}
	if err != nil {
		s.fail(w, r, volumeError("ha-update", name, err))
		return
	}
	sp, err = cfg.Member.Store().Volume(ctx, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	n, _ := s.nodeByID(ctx, sp.Node())
	reply(w, http.StatusOK, s.withReplicas(ctx, volumeFromSpec(sp, n, "up"), &sp))
}

// addReplica adds one replica of sp on node (placed when ""), and keeps the
// volume claimed here until the copy is done.
func (s *Server) addReplica(ctx context.Context, sp cluster.VolumeSpec, node string) error {
	cfg := s.clusterOf()
	if len(sp.Replicas) == 1 {
		if hs, err := s.engine.Holders(sp.Name); err != nil {
			return err
		} else if len(hs) > 0 {
			return fmt.Errorf("%w: volume %q is in use on this node (%s); disconnect or detach it, then add the replica", engine.ErrBusy, sp.Name, engine.DescribeHolders(hs))
		}
	}
	var existing []string
	for _, r := range sp.Replicas {
		existing = append(existing, r.Node)
	}
	nodes, err := cfg.Member.Nodes(ctx)
	if err != nil {
		return err
	}
	pl := sp.Placement
	if node != "" {
		if slices.Contains(existing, node) {
			return invalidf("volume %q has a replica on node %s already", sp.Name, node)
		}
		pl = cluster.Placement{Nodes: []string{node}}
	}
	chosen, err := cluster.PlaceReplicas(nodes, cluster.PlaceRequest{Name: sp.Name, Size: sp.Size, IOPriority: sp.IOPriority, Placement: pl, Exclude: existing}, 1)
	if err != nil {
		return err
	}
	target := chosen[0].ID
	rep := []cluster.Replica{{Node: target}}
	info := engine.VolumeInfo{Name: sp.Name, Size: sp.Size, Repl: len(sp.Replicas) + 1, RequestedIOPriority: engine.IOPriority(sp.IOPriority)}
	if err := s.createReplicas(ctx, rep, info); err != nil {
		return err
	}
	undo := func() { s.deleteReplicaOn(context.Background(), target, sp.Name) }
	c, err := s.acquireCoordinator(ctx, sp.Name)
	if err != nil {
		undo()
		return err
	}
	claimed := s.claimOf(sp.Name)
	self := cfg.Member.ID()
	// A log this node kept for an earlier replica on target is stale.
	if err := replication.ForgetRegionLog(s.repl.Load().StateDir, sp.Name, target); err != nil {
		s.releaseCoordinator(sp.Name)
		undo()
		return err
	}
	if _, err := cfg.Member.Store().ModifyVolume(ctx, sp.Name, func(v *cluster.VolumeSpec) error {
		if v.Coordinator != self || v.CoordinatorLease != claimed.lease {
			return fmt.Errorf("%w: volume %q is now coordinated by node %s", replication.ErrFenced, v.Name, v.Coordinator)
		}
		if v.HasReplica(target) {
			return invalidf("volume %q has a replica on node %s already", v.Name, target)
		}
		v.Replicas = append(v.Replicas, cluster.Replica{Node: target, Pool: rep[0].Pool, IOPriority: rep[0].IOPriority, State: cluster.ReplicaOutOfSync, Log: self})
		v.Repl = len(v.Replicas)
		v.Epoch++
		return nil
	}, claimed.cmp); err != nil {
		s.releaseCoordinator(sp.Name)
		undo()
		return err
	}
	if err := c.AddReplica(target); err != nil {
		s.releaseCoordinator(sp.Name)
		return err // recorded out of sync: the next coordinator copies it
	}
	s.log.Info("replica added; copying it", "volume", sp.Name, "node", target)
	// Keep the volume claimed (and so the copy going) until the replica is
	// in sync, the coordinator is fenced, or the replica is removed.
	go func() {
		defer s.releaseCoordinator(sp.Name)
		for {
			time.Sleep(100 * time.Millisecond) // `ha-update --wait` waits for the release too
			found := false
			for _, st := range c.Status() {
				if st.Node == target {
					found = true
					if st.State == replication.InSync {
						return
					}
				}
			}
			if !found || c.Fenced() {
				return
			}
		}
	}()
	return nil
}

// removeReplica removes sp's replica on node (an out-of-sync one, else the
// last, when ""): never its first replica (which holds its spec), nor its
// last in-sync one.
func (s *Server) removeReplica(ctx context.Context, sp cluster.VolumeSpec, node string) error {
	cfg := s.clusterOf()
	if node == "" {
		node = sp.Replicas[len(sp.Replicas)-1].Node
		for _, r := range sp.Replicas[1:] {
			if !r.InSync() {
				node = r.Node
			}
		}
	}
	i := slices.IndexFunc(sp.Replicas, func(r cluster.Replica) bool { return r.Node == node })
	switch {
	case i < 0:
		return invalidf("volume %q has no replica on node %s", sp.Name, node)
	case i == 0:
		return invalidf("the replica on node %s is volume %q's first, which holds its settings; remove another", node, sp.Name)
	}
	c, err := s.acquireCoordinator(ctx, sp.Name)
	if err != nil {
		return err
	}
	defer s.releaseCoordinator(sp.Name)
	inSync := 0
	for _, st := range c.Status() {
		if st.State == replication.InSync && st.Node != node {
			inSync++
		}
	}
	if inSync == 0 {
		return invalidf("the replica on node %s is volume %q's last in-sync one", node, sp.Name)
	}
	if node == cfg.Member.ID() {
		return invalidf("this node coordinates volume %q and holds the replica to remove; run ha-update on another node", sp.Name)
	}
	claimed := s.claimOf(sp.Name)
	self := cfg.Member.ID()
	if _, err := cfg.Member.Store().ModifyVolume(ctx, sp.Name, func(v *cluster.VolumeSpec) error {
		return removeReplicaFromSpec(v, node, self, claimed.lease)
	}, claimed.cmp); err != nil {
		return err
	}
	if err := c.RemoveReplica(node); err != nil && !errors.Is(err, replication.ErrInvalid) {
		return err
	}
	s.deleteReplicaOn(ctx, node, sp.Name)
	s.log.Info("replica removed", "volume", sp.Name, "node", node)
	return nil
}

// removeReplicaFromSpec takes node's replica out of v, for the coordinator
// self holding v under lease. It refuses when v would keep no in-sync
// replica: checked here, in the transaction, because another replica may
// have been evicted since the coordinator's status was read (the change is
// retried on a conflict).
func removeReplicaFromSpec(v *cluster.VolumeSpec, node, self, lease string) error {
	if v.Coordinator != self || v.CoordinatorLease != lease {
		return fmt.Errorf("%w: volume %q is now coordinated by node %s", replication.ErrFenced, v.Name, v.Coordinator)
	}
	j := slices.IndexFunc(v.Replicas, func(r cluster.Replica) bool { return r.Node == node })
	if j <= 0 {
		return invalidf("volume %q has no replica on node %s", v.Name, node)
	}
	if !slices.ContainsFunc(v.Replicas, func(r cluster.Replica) bool { return r.Node != node && r.InSync() }) {
		return invalidf("the replica on node %s is volume %q's last in-sync one", node, v.Name)
	}
	v.Replicas = slices.Delete(v.Replicas, j, j+1)
	v.Repl = len(v.Replicas)
	v.Epoch++
	return nil
}

// claimOf is this node's claim on a volume it coordinates.
func (s *Server) claimOf(name string) claim {
	s.coords.mu.Lock()
	defer s.coords.mu.Unlock()
	if e := s.coords.open[name]; e != nil {
		return e.claim
	}
	return claim{}
}
