package control

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
)

// Restore and resize of a replicated volume change every replica, with no
// coordinator: the volume's node holds the volume for the change (a claim
// in etcd under its lease, as a coordinator's, so no node can open it
// meanwhile, and a crash of this node frees it), raises the epoch so that
// each replica fences whatever older coordinator may still reach it, makes
// the change on each replica's node, and records the outcome with another
// epoch in the transaction that gives the claim back.
//
//   - Restore: every replica whose node holds a copy of the snapshot (the
//     snapshot's spec lists them; the copies were taken at one point of the
//     write stream) is restored from it and is in sync; every other replica
//     is out of sync with no region log (a full copy by the next
//     coordinator). The spec says Restoring while replicas are being
//     restored: if this node dies or fails half-way, no node serves the
//     volume — whose replicas may then hold either content — until a
//     restore finishes.
//   - Resize (grow): every replica grows, or the size is not recorded (a
//     grown replica reads zeros past the old end, so a partly done resize
//     is harmless, and retrying it finishes it).

// ReplicaChangeRequest is POST /v1/internal/replicas/{name}/change: the
// volume's node asks a replica's node to restore or grow its replica, at
// Epoch (raised first).
type ReplicaChangeRequest struct {
	Epoch    uint64 `json:"epoch"`
	Snapshot string `json:"snapshot,omitempty"` // restore from this snapshot
	Size     int64  `json:"size,omitempty"`     // grow to this size
}

// heldVolume is a replicated volume this node holds for a change.
type heldVolume struct {
	spec    cluster.VolumeSpec // as recorded by the claim, epoch raised
	cl      claim
	unclean bool // its last coordinator stopped uncleanly: replicas may differ
	release func()
}

// holdReplicated claims name for a change (what: "restored", "resized")
// with no coordinator; mark, when not nil, changes the spec in the same
// transaction. The caller ends with finishChange, then release.
func (s *Server) holdReplicated(ctx context.Context, name, what string, mark func(*cluster.VolumeSpec)) (*heldVolume, error) {
	s.coords.mu.Lock()
	if s.coords.open[name] != nil {
		s.coords.mu.Unlock()
		return nil, fmt.Errorf("%w: volume %q is open on this node (close its NBD connections, or detach it, first)", engine.ErrBusy, name)
	}
	if other, ok := s.coords.held[name]; ok {
		s.coords.mu.Unlock()
		return nil, fmt.Errorf("%w: volume %q is being %s", engine.ErrBusy, name, other)
	}
	if s.coords.held == nil {
		s.coords.held = map[string]string{}
	}
	s.coords.held[name] = what
	s.coords.mu.Unlock()
	h := &heldVolume{release: func() {
		s.coords.mu.Lock()
		delete(s.coords.held, name)
		s.coords.mu.Unlock()
	}}
	m := s.clusterOf().Member
	st, self := m.Store(), m.ID()
	lease, cmp, ok := m.Lease()
	if !ok {
		h.release()
		return nil, fmt.Errorf("%w: this node holds no lease in the cluster now (kvdb unreachable?)", cluster.ErrUnavailable)
	}
	sp, err := st.ModifyVolume(ctx, name, func(sp *cluster.VolumeSpec) error {
		h.unclean = false
		if sp.State != cluster.VolumeReady {
			return fmt.Errorf("%w: volume %q is %s", engine.ErrBusy, name, sp.State)
		}
		if sp.Coordinator != "" && sp.CoordinatorLease != "" {
			hb, alive, err := st.HeartbeatLease(ctx, sp.Coordinator)
			if err != nil {
				return err
			}
			if alive && hb == sp.CoordinatorLease {
				return s.openElsewhere(ctx, name, sp.Coordinator)
			}
		}
		h.unclean = sp.Coordinator != ""
		sp.Coordinator, sp.CoordinatorLease = self, lease
		sp.Epoch++
		if mark != nil {
			mark(sp)
		}
		return nil
	}, cmp)
	if err != nil {
		h.release()
		return nil, err
	}
	h.spec, h.cl = sp, claim{lease: lease, cmp: cmp}
	return h, nil
}

// finishChange records the change (apply) and gives the claim back, with
// another epoch. A volume whose last coordinator stopped uncleanly stays
// marked so, unless apply made its replicas identical (clean).
func (s *Server) finishChange(ctx context.Context, h *heldVolume, clean bool, apply func(*cluster.VolumeSpec)) error {
	m := s.clusterOf().Member
	self := m.ID()
	_, err := m.Store().ModifyVolume(ctx, h.spec.Name, func(sp *cluster.VolumeSpec) error {
		if sp.Coordinator != self || sp.CoordinatorLease != h.cl.lease {
			return errNotOurs
		}
		apply(sp)
		sp.Epoch++
		sp.Coordinator, sp.CoordinatorLease = "", ""
		if h.unclean && !clean {
			sp.Coordinator = self // no lease: the next coordinator converges
		}
		return nil
	}, h.cl.cmp)
	return err
}

// giveBack ends a change that recorded nothing. A failure is logged: the
// claim then stays this node's until its lease ends (this node can still
// open the volume; others are refused, naming it).
func (s *Server) giveBack(ctx context.Context, h *heldVolume) {
	if err := s.finishChange(ctx, h, false, func(*cluster.VolumeSpec) {}); err != nil {
		s.log.Warn("volume's claim for a change not given back", "volume", h.spec.Name, "err", err)
	}
}

// changeReplica makes the change on node's replica: this node's through
// its engine, another's through its API.
func (s *Server) changeReplica(ctx context.Context, node, name string, req ReplicaChangeRequest) error {
	if node == s.node.ID() {
		return s.applyReplicaChange(name, req)
	}
	return s.callPeer(ctx, node, http.MethodPost, "/v1/internal/replicas/"+url.PathEscape(name)+"/change", req, nil)
}

// applyReplicaChange raises the replica's epoch, then restores or grows it.
func (s *Server) applyReplicaChange(name string, req ReplicaChangeRequest) error {
	rc := s.repl.Load()
	if rc == nil {
		return fmt.Errorf("%w: this node serves no replicas", cluster.ErrUnavailable)
	}
	if err := rc.Server.RaiseEpoch(name, req.Epoch); err != nil {
		return err
	}
	switch {
	case req.Snapshot != "":
		return s.engine.RestoreVolume(name, req.Snapshot)
	case req.Size > 0:
		_, err := s.engine.UpdateVolume(name, engine.VolumeUpdate{Size: &req.Size})
		return err
	}
	return invalidf("a replica change names neither a snapshot nor a size")
}

// replicaChange answers POST /v1/internal/replicas/{name}/change.
func (s *Server) replicaChange(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.Header.Get(forwardedHeader) == "" {
		s.fail(w, r, invalidf("/v1/internal/replicas is for the volume's node; use POST /v1/volumes/%s/restore or PATCH /v1/volumes/%s", name, name))
		return
	}
	var req ReplicaChangeRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.applyReplicaChange(name, req); err != nil {
		s.fail(w, r, volumeError("change replica of", name, err))
		return
	}
	s.log.Info("replica changed", "name", name, "for", r.Header.Get(forwardedHeader), "snapshot", req.Snapshot, "size", req.Size, "epoch", req.Epoch)
	w.WriteHeader(http.StatusNoContent)
}

// restoreReplicated restores the replicated volume sp (this node is its
// node) from snapshot; see the top of this file.
func (s *Server) restoreReplicated(ctx context.Context, sp cluster.VolumeSpec, snapshot string) error {
	snap, err := s.clusterOf().Member.Store().Volume(ctx, snapshot)
	switch {
	case errors.Is(err, cluster.ErrNotFound):
		return fmt.Errorf("%w: snapshot %q", engine.ErrNotFound, snapshot)
	case err != nil:
		return err
	case !snap.Snapshot || snap.Parent != sp.Name:
		return invalidf("cannot restore volume %q from %q: it is not a snapshot of it", sp.Name, snapshot)
	}
	copies := map[string]bool{}
	for _, r := range snap.Replicas {
		copies[r.Node] = true
	}
	if !slices.ContainsFunc(sp.Replicas, func(r cluster.Replica) bool { return copies[r.Node] }) {
		return invalidf("cannot restore volume %q from %q: no replica of the volume holds a copy of the snapshot", sp.Name, snapshot)
	}
	h, err := s.holdReplicated(ctx, sp.Name, "restored", func(sp *cluster.VolumeSpec) { sp.Restoring = snapshot })
	if err != nil {
		return err
	}
	defer h.release()
	restored := map[string]bool{}
	var failed []string
	for _, r := range h.spec.Replicas {
		if !copies[r.Node] {
			continue
		}
		if err := s.changeReplica(ctx, r.Node, sp.Name, ReplicaChangeRequest{Epoch: h.spec.Epoch, Snapshot: snapshot}); err != nil {
			s.log.Warn("replica not restored", "volume", sp.Name, "node", r.Node, "snapshot", snapshot, "err", err)
			failed = append(failed, fmt.Sprintf("node %s: %s", r.Node, plain(err)))
			continue
		}
		restored[r.Node] = true
	}
	if len(restored) == 0 {
		// Nothing is known to hold the snapshot's content: Restoring stays,
		// and so the volume unserved, until a restore succeeds.
		s.giveBack(ctx, h)
		return fmt.Errorf("%w: no replica of volume %q could be restored from %q (%s); the volume is not served until a restore succeeds",
			engine.ErrIO, sp.Name, snapshot, strings.Join(failed, "; "))
	}
	err = s.finishChange(ctx, h, true, func(sp *cluster.VolumeSpec) {
		sp.Restoring = ""
		for i := range sp.Replicas {
			r := &sp.Replicas[i]
			r.State, r.Log = cluster.ReplicaInSync, ""
			if !restored[r.Node] {
				r.State = cluster.ReplicaOutOfSync // a full copy from a restored one
			}
		}
	})
	if err != nil {
		return fmt.Errorf("volume %q: its replicas were restored but the outcome is not recorded (restore it again): %w", sp.Name, err)
	}
	if len(failed) > 0 {
		s.log.Warn("volume restored; replicas that were not get a full copy when it is next opened", "volume", sp.Name, "failed", strings.Join(failed, "; "))
	}
	return nil
}

// resizeReplicated grows every replica of sp (this node is its node) to
// size and records it.
func (s *Server) resizeReplicated(ctx context.Context, sp cluster.VolumeSpec, size int64) error {
	if size < sp.Size {
		return fmt.Errorf("%w: volume %q is %d bytes, asked for %d", engine.ErrShrink, sp.Name, sp.Size, size)
	}
	h, err := s.holdReplicated(ctx, sp.Name, "resized", nil)
	if err != nil {
		return err
	}
	defer h.release()
	for _, r := range h.spec.Replicas {
		if err := s.changeReplica(ctx, r.Node, sp.Name, ReplicaChangeRequest{Epoch: h.spec.Epoch, Size: size}); err != nil {
			s.giveBack(ctx, h)
			return fmt.Errorf("volume %q not resized: its replica on node %s: %w (every replica grows, or the size does not change; retry once the node is back)", sp.Name, r.Node, err)
		}
	}
	return s.finishChange(ctx, h, false, func(sp *cluster.VolumeSpec) { sp.Size = size })
}

// unfinishedRestore is the refusal to serve a volume whose restore did not
// finish.
func unfinishedRestore(name, snapshot string) error {
	return fmt.Errorf("%w: volume %q: a restore from snapshot %q did not finish; run `cairn volume restore %s --snapshot %s` again",
		engine.ErrBusy, name, snapshot, name, snapshot)
}
