package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
)

// ReconcileReport is what the last reconciliation found that it leaves to
// the operator (status shows it under cluster_summary).
type ReconcileReport struct {
	// Unregistered are volumes on this node's drives that the cluster does
	// not have as this node's: served here, never deleted, not in the
	// cluster's view.
	Unregistered []UnregisteredVolume `json:"unregistered_volumes"`
	// Missing are volumes the cluster places on this node that its drives
	// lack.
	Missing []string `json:"missing_volumes"`
	// Time is when it ran (RFC 3339).
	Time string `json:"time"`
}

// UnregisteredVolume is a volume on the drives the cluster does not know
// as this node's, and why.
type UnregisteredVolume struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// ReconcileInterval is how often a node reconciles after its start: what
// an etcd outage left half-done (clustervol.go) is finished this long
// after the kvdb is back, at most.
const ReconcileInterval = 30 * time.Second

// RunReconcile reconciles every ReconcileInterval until ctx is done.
func (s *Server) RunReconcile(ctx context.Context) {
	t := time.NewTicker(ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.Reconcile(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, cluster.ErrUnavailable) {
			s.log.Warn("cluster: reconciliation failed", "err", err)
		}
	}
}

// Reconcile brings the cluster's specs of this node's volumes in line with
// its drives (the invariant in clustervol.go): the drives are the truth for
// what exists, etcd for the specs. It finishes creates and deletes left
// half-done, copies the engine's settings into specs that lag behind, and
// reports (never deletes) what it cannot decide. On the node's first
// start with volumes in the cluster (node.VolumesRegistered), every volume
// on the drives that etcd does not have is registered as this node's; a
// name another node has taken is reported, not overwritten.
//
// Volumes this node is changing right now (busy) are left alone.
func (s *Server) Reconcile(ctx context.Context) error {
	cfg := s.clusterOf()
	if cfg == nil {
		return nil
	}
	st, self := cfg.Member.Store(), cfg.Member.ID()
	register := !s.node.VolumesRegistered()
	specs, err := st.Volumes(ctx)
	if err != nil {
		return err
	}
	byName := map[string]cluster.VolumeSpec{}
	for _, sp := range specs {
		byName[sp.Name] = sp
	}
	local := s.engine.Volumes()
	onDrives := map[string]bool{}
	rep := ReconcileReport{Unregistered: []UnregisteredVolume{}, Missing: []string{}, Time: time.Now().UTC().Format(time.RFC3339)}
	var errs []error
	for _, info := range local {
		onDrives[info.Name] = true
		if s.busy.has(info.Name) {
			continue
		}
		sp, known := byName[info.Name]
		switch {
		case !known && register:
			spec := specFromInfo(cluster.VolumeSpec{Name: info.Name, Repl: max(info.Repl, 1), State: cluster.VolumeReady, Created: info.Created.UTC(),
				Replicas: []cluster.Replica{{Node: self}}}, info)
			_, err := st.CreateVolume(ctx, spec)
			switch {
			case errors.Is(err, cluster.ErrExists): // taken meanwhile
				rep.Unregistered = append(rep.Unregistered, UnregisteredVolume{info.Name, "the name was taken in the cluster by another node while this node registered its volumes"})
			case err != nil:
				errs = append(errs, err)
			default:
				s.log.Info("cluster: volume registered (it was on this node's drives before the node kept volumes in the cluster)", "name", info.Name, "id", info.ID)
			}
		case !known:
			rep.Unregistered = append(rep.Unregistered, UnregisteredVolume{info.Name, "on this node's drives but not in the cluster's kvdb"})
		case sp.Node() != self && sp.HasReplica(self):
			// A replica of a volume another node holds: that node keeps
			// its spec.
		case sp.Node() != self:
			rep.Unregistered = append(rep.Unregistered, UnregisteredVolume{info.Name, fmt.Sprintf("the name is taken in the cluster by a volume of node %s", sp.Node())})
		case info.Unavailable:
			// Its pool is missing: the engine knows only its name; the
			// spec stays as it is.
		default:
			errs = append(errs, s.settle(ctx, st, sp, info))
		}
	}
	for _, sp := range specs {
		if sp.Node() != self || onDrives[sp.Name] || s.busy.has(sp.Name) {
			continue
		}
		switch sp.State {
		case cluster.VolumeCreating, cluster.VolumeDeleting:
			// Never made, or deleted: the spec goes.
			if err := st.DeleteVolume(ctx, sp.Name, sp.Rev); err != nil && !errors.Is(err, cluster.ErrConflict) {
				errs = append(errs, err)
				continue
			}
			s.log.Info("cluster: spec of a volume not on this node's drives removed", "name", sp.Name, "state", sp.State)
		default:
			rep.Missing = append(rep.Missing, sp.Name)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if register {
		if err := s.node.MarkVolumesRegistered(); err != nil {
			return err
		}
	}
	s.report(rep)
	return nil
}

// settle fixes the spec of a volume this node has on its drives: a create
// left creating or a delete left deleting becomes ready, and settings the
// engine holds (an update whose record failed) are copied in.
func (s *Server) settle(ctx context.Context, st *cluster.Store, sp cluster.VolumeSpec, info engine.VolumeInfo) error {
	want := settledSpec(sp, info)
	if specEqual(want, sp) {
		return nil
	}
	if _, err := st.UpdateVolume(ctx, want); err != nil && !errors.Is(err, cluster.ErrConflict) {
		return err
	}
	s.log.Info("cluster: volume spec brought in line with this node's drives", "name", sp.Name, "was", sp.State)
	return nil
}

// settledSpec is sp as settle would record it for this node's volume info.
// A replicated volume keeps the record's size: this node's replica grows
// first in a resize, and the size is recorded only once every replica has
// grown (a replica smaller than the record is refused at its next open).
func settledSpec(sp cluster.VolumeSpec, info engine.VolumeInfo) cluster.VolumeSpec {
	want := specFromInfo(sp, info)
	want.State, want.Rev = cluster.VolumeReady, sp.Rev
	if len(sp.Replicas) > 1 {
		want.Size = sp.Size
	}
	return want
}

func specEqual(a, b cluster.VolumeSpec) bool {
	return a.ID == b.ID && a.Size == b.Size && a.Sticky == b.Sticky && a.SnapInterval == b.SnapInterval && a.SnapKeep == b.SnapKeep &&
		a.State == b.State && a.Snapshot == b.Snapshot && a.Parent == b.Parent && slices.Equal(a.Replicas, b.Replicas)
}

// report keeps rep for status and logs what changed since the last one:
// each unregistered or missing volume once, not every interval.
func (s *Server) report(rep ReconcileReport) {
	prev := s.recon.Swap(&rep)
	seen := map[string]bool{}
	if prev != nil {
		for _, u := range prev.Unregistered {
			seen["u"+u.Name+u.Reason] = true
		}
		for _, m := range prev.Missing {
			seen["m"+m] = true
		}
	}
	for _, u := range rep.Unregistered {
		if !seen["u"+u.Name+u.Reason] {
			s.log.Warn("cluster: volume on this node's drives is not in the cluster; it is served here and kept", "name", u.Name, "reason", u.Reason)
		}
	}
	for _, m := range rep.Missing {
		if !seen["m"+m] {
			s.log.Error("cluster: volume the cluster places on this node is missing from its drives", "name", m)
		}
	}
}
