package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
)

// Volumes as cluster objects: every volume, snapshot and clone has a spec
// in etcd (cluster.VolumeSpec) naming the node that holds its data, and any
// node's API answers for any volume.
//
// Who does what. The node that receives a request (the coordinator) reads
// etcd to find the volume's node and, if it is another one, forwards the
// request to that node's management API unchanged, marked with
// forwardedHeader; the reply goes back as it came. The holder does the
// work: every change of a spec in etcd and every change on the engine is
// made by the node that holds the volume, and no other. A create is placed
// by the coordinator (cluster.Place) and forwarded to the chosen node,
// which then holds it. So the order of etcd and engine steps below is
// decided, and after a crash repaired, on one node.
//
// The invariant, kept by that order:
//
//	A volume on a node's drives has a spec in etcd naming that node, in
//	state creating, ready or deleting; a spec in state ready names a node
//	that has the volume on its drives.
//
//	create:  reserve spec (creating; the name's uniqueness is this
//	         transaction) → engine create → spec ready
//	delete:  spec deleting → engine delete → spec removed
//	         (engine refuses: spec back to ready)
//	update:  engine update → spec updated (the engine's values)
//
// A crash (or an etcd failure) between two steps leaves a spec creating
// or deleting on this node; reconcile (at start, then every
// reconcileInterval) finishes it from what the drives hold: creating and on
// the drives → ready, not on them → removed (never created); deleting and
// on the drives → ready (the delete did not happen), not on them → removed.
// An operation in progress on this node is never reconciled under it
// (busy). Nothing is ever deleted from the drives by reconciliation.
//
// Exceptions the invariant admits, reported and never repaired by force:
// volumes on the drives etcd does not know (status: unregistered), and
// ready specs whose volume the drives lack (status: missing).

// forwardedHeader marks a request one node forwards to the volume's node,
// with the forwarding node's id: the receiver acts on its own engine and
// never forwards again.
const forwardedHeader = "Cairn-Forwarded-By"

// warningHeader carries a warning with a successful reply (the client
// prints it on stderr): a listing from this node alone while the kvdb is
// unavailable.
const warningHeader = "Cairn-Warning"

// forwardTimeout bounds a request forwarded to another node: the control
// operations it carries take well under a second on a healthy node.
const forwardTimeout = 30 * time.Second

// peerListTimeout bounds asking a node for its volumes in a listing: one
// node that does not answer must not hold up the list for long.
const peerListTimeout = 5 * time.Second

// ErrNodeUnreachable: the node that holds a volume is Offline or does not
// answer; what needs its data cannot be done now.
var ErrNodeUnreachable = errors.New("control: volume's node unreachable")

// ErrElsewhere: the volume lives on another node, and what was asked can
// only be done on the node that holds it (host attach, NBD).
var ErrElsewhere = errors.New("control: volume on another node")

// clusterOf returns the cluster configuration once the node has joined.
func (s *Server) clusterOf() *ClusterConfig {
	if cfg := s.cluster.Load(); cfg != nil && cfg.Member != nil {
		return cfg
	}
	return nil
}

// busy tracks the volumes this node is changing right now (by name), so
// that reconcile leaves their specs alone. An operation marks the names it
// will write before its first etcd step and unmarks them after its last.
type busySet struct {
	mu    sync.Mutex
	names map[string]int
}

func (b *busySet) add(names ...string) func() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.names == nil {
		b.names = map[string]int{}
	}
	for _, n := range names {
		b.names[n]++
	}
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, n := range names {
			if b.names[n]--; b.names[n] <= 0 {
				delete(b.names, n)
			}
		}
	}
}

func (b *busySet) has(name string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.names[name] > 0
}

// lookup finds the spec of a volume by name or by engine id.
func (s *Server) lookup(ctx context.Context, st *cluster.Store, ref string) (cluster.VolumeSpec, error) {
	spec, err := st.Volume(ctx, ref)
	if !errors.Is(err, cluster.ErrNotFound) && !errors.Is(err, cluster.ErrInvalid) {
		return spec, err
	}
	specs, lerr := st.Volumes(ctx)
	if lerr != nil {
		return spec, lerr
	}
	for _, sp := range specs {
		if sp.ID != "" && sp.ID == ref {
			return sp, nil
		}
	}
	return spec, fmt.Errorf("%w: volume %q", engine.ErrNotFound, ref)
}

// route decides where a request about volume ref is served. It returns
// done when it has answered (forwarded, or failed); otherwise the caller
// serves it from this node's engine, and spec is the volume's spec when
// the cluster has one naming this node (nil without a cluster, for a
// volume etcd does not know, or while the kvdb is unavailable for a read).
//
// Reads (GET) fall back to this node's engine while the kvdb is
// unavailable, with a warning; changes fail with the kvdb error.
func (s *Server) route(w http.ResponseWriter, r *http.Request, ref string) (spec *cluster.VolumeSpec, done bool) {
	cfg := s.clusterOf()
	if cfg == nil {
		return nil, false
	}
	m := cfg.Member
	read := r.Method == http.MethodGet
	sp, err := s.lookup(r.Context(), m.Store(), ref)
	switch {
	case errors.Is(err, cluster.ErrUnavailable) && read:
		w.Header().Set(warningHeader, fmt.Sprintf("%s; showing this node's own volumes only", plain(err)))
		return nil, false
	case errors.Is(err, engine.ErrNotFound):
		// Not a cluster volume: this node's engine may still have it
		// (unregistered, status says so), else it answers "not found".
		return nil, false
	case err != nil:
		s.fail(w, r, err)
		return nil, true
	}
	holder := sp.Node()
	if holder == m.ID() {
		return &sp, false
	}
	if by := r.Header.Get(forwardedHeader); by != "" {
		// Sent here by a node whose view was stale: never forward twice.
		s.fail(w, r, fmt.Errorf("%w: volume %q is held by node %s, not by this node (%s)", ErrElsewhere, sp.Name, holder, m.ID()))
		return nil, true
	}
	node, err := s.nodeByID(r.Context(), holder)
	if err != nil {
		s.fail(w, r, err)
		return nil, true
	}
	// A volume's own view (GET /v1/volumes/NAME) is answered from the
	// cluster's when its node cannot answer; lists of its snapshots or
	// cloudsnap jobs cannot be.
	ownView := read && strings.HasPrefix(r.URL.Path, "/v1/volumes/") && !strings.HasSuffix(r.URL.Path, "/snapshots") && !strings.Contains(strings.TrimPrefix(r.URL.Path, "/v1/volumes/"), "/")
	if node.Status != cluster.StatusOnline {
		if ownView {
			reply(w, http.StatusOK, s.withReplicas(r.Context(), volumeFromSpec(sp, node, stateWithout(sp, node)), &sp))
			return nil, true
		}
		s.fail(w, r, unreachable(sp.Name, node, "is "+node.Status))
		return nil, true
	}
	if ownView {
		// Its node may have died without its lease expiring yet.
		var v Volume
		if err := s.callPeer(r.Context(), node.ID, http.MethodGet, r.URL.RequestURI(), nil, &v); errors.Is(err, ErrNodeUnreachable) {
			state := fmt.Sprintf("unavailable: its node %s (%s) does not answer", node.ID, orUnknown(node.MgmtAddr))
			reply(w, http.StatusOK, s.withReplicas(r.Context(), volumeFromSpec(sp, node, state), &sp))
			return nil, true
		}
	}
	s.forward(w, r, node, sp.Name)
	return nil, true
}

// nodeByID returns the cluster's view of node id; a node deleted from the
// cluster comes back Offline with a hostname saying so.
func (s *Server) nodeByID(ctx context.Context, id string) (cluster.Node, error) {
	cfg := s.clusterOf()
	nodes, err := cfg.Member.Nodes(ctx)
	if err != nil {
		return cluster.Node{}, err
	}
	for _, n := range nodes {
		if n.ID == id {
			return n, nil
		}
	}
	return cluster.Node{NodeRecord: cluster.NodeRecord{ID: id, Hostname: "(deleted from the cluster)"}, Status: "Deleted"}, nil
}

func unreachable(volume string, n cluster.Node, why string) error {
	return fmt.Errorf("%w: volume %q is on node %s (%s), which %s; try again when it is Online", ErrNodeUnreachable, volume, n.ID, orUnknown(n.MgmtAddr), why)
}

func orUnknown(addr string) string {
	if addr == "" {
		return "address unknown"
	}
	return addr
}

// forward sends r to node and copies its reply back. The body is r's
// (unread so far).
func (s *Server) forward(w http.ResponseWriter, r *http.Request, node cluster.Node, volume string) {
	s.forwardBody(w, r, node, volume, r.Body)
}

func (s *Server) forwardBody(w http.ResponseWriter, r *http.Request, node cluster.Node, volume string, body io.Reader) {
	// A request asking for a progress stream takes as long as its work,
	// passed on as it comes; its client watches that it moves.
	stream := r.URL.Query().Has("progress")
	ctx, cancel := context.WithTimeout(r.Context(), forwardTimeout)
	if stream {
		ctx, cancel = context.WithCancel(r.Context())
	}
	defer cancel()
	if body != nil {
		body = http.MaxBytesReader(nil, io.NopCloser(body), maxRequestBytes)
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+node.MgmtAddr+r.URL.RequestURI(), body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	req.Header.Set(forwardedHeader, s.node.ID())
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.peers().Do(req)
	if err != nil {
		s.fail(w, r, unreachable(volume, node, fmt.Sprintf("does not answer (%v)", err)))
		return
	}
	defer resp.Body.Close()
	for _, h := range []string{"Content-Type", warningHeader} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	if !stream {
		_, _ = io.Copy(w, resp.Body) // the client went away: nothing to do
		return
	}
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			rc.Flush()
		}
		if err != nil {
			return
		}
	}
}

// peers is the HTTP client for other nodes' APIs; its connections leave
// from this node's management address (cluster.BoundDialer).
func (s *Server) peers() *http.Client {
	s.peerOnce.Do(func() {
		ip := ""
		if cfg := s.clusterOf(); cfg != nil {
			ip = cfg.LocalIP
		}
		dial := cluster.BoundDialer(ip)
		s.peerClient = &http.Client{Transport: &http.Transport{
			DialContext:         func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
			MaxIdleConnsPerHost: 4, IdleConnTimeout: time.Minute,
		}}
	})
	return s.peerClient
}

// stateWithout is the state of a volume whose node cannot be asked.
func stateWithout(sp cluster.VolumeSpec, n cluster.Node) string {
	switch {
	case sp.State != cluster.VolumeReady:
		return sp.State
	case n.Status == "Deleted":
		return "lost: its node " + n.ID + " was deleted from the cluster (cairn volume delete removes it)"
	default:
		return fmt.Sprintf("unavailable: its node %s (%s) is %s", n.ID, orUnknown(n.MgmtAddr), n.Status)
	}
}

// volumeFromSpec is a volume as the cluster knows it, for a volume whose
// node cannot tell more (Offline, unreachable) or has not made it yet.
func volumeFromSpec(sp cluster.VolumeSpec, n cluster.Node, state string) Volume {
	v := Volume{ID: sp.ID, Name: sp.Name, Size: sp.Size, Repl: sp.Repl, IOPriority: sp.IOPriority, Sticky: sp.Sticky, State: state,
		SnapInterval: sp.SnapInterval, Parent: sp.Parent, ReadOnly: sp.Snapshot, Snapshot: sp.Snapshot, SnapKeep: sp.SnapKeep,
		Created: sp.Created.UTC().Format(time.RFC3339), RequestedIOPriority: sp.IOPriority, Node: n.ID, NodeAddr: n.MgmtAddr}
	if len(sp.Replicas) > 0 && sp.Replicas[0].IOPriority != "" {
		v.IOPriority = sp.Replicas[0].IOPriority
	}
	return v
}

// specFromInfo fills a spec's settings from what the engine holds: after
// the engine made a change, the spec says what was done.
func specFromInfo(sp cluster.VolumeSpec, info engine.VolumeInfo) cluster.VolumeSpec {
	sp.ID, sp.Size, sp.Sticky, sp.SnapInterval, sp.SnapKeep = info.ID, info.Size, info.Sticky, info.SnapInterval, info.SnapKeep
	sp.Snapshot, sp.Parent = info.Snapshot, info.Parent
	if sp.Repl == 0 {
		sp.Repl = info.Repl
	}
	if sp.IOPriority == "" {
		sp.IOPriority = string(info.RequestedIOPriority)
	}
	if len(sp.Replicas) == 0 {
		sp.Replicas = []cluster.Replica{{}}
	}
	sp.Replicas[0].Pool, sp.Replicas[0].IOPriority = info.Pool, string(info.IOPriority)
	return sp
}

// createClustered answers POST /v1/volumes in a cluster: place the volume
// (unless this node was chosen by the coordinator that forwarded it), then
// create it here or forward it to the chosen node.
func (s *Server) createClustered(w http.ResponseWriter, r *http.Request, cfg *ClusterConfig, req CreateVolumeRequest) {
	m := cfg.Member
	if r.Header.Get(forwardedHeader) == "" {
		if err := checkCreate(req); err != nil {
			s.fail(w, r, volumeError("create", req.Name, err))
			return
		}
		// The name first: "already exists" says more than any placement.
		if sp, err := m.Store().Volume(r.Context(), req.Name); err == nil {
			exists := volumeError("create", req.Name, fmt.Errorf("%w: %q", engine.ErrExists, req.Name))
			if _, uerr := s.engine.Volume(req.Name); sp.Node() == m.ID() && errors.Is(uerr, engine.ErrUnavailable) {
				// Its pool is missing here: say why it is not listed as usable.
				exists = &messageError{msg: fmt.Sprintf("%s; it is unavailable on this node (%s): its name stays taken until the pool is back",
					exists.Error(), strings.TrimPrefix(plain(uerr), "volume unavailable: ")), err: uerr}
			}
			s.fail(w, r, exists)
			return
		} else if !errors.Is(err, cluster.ErrNotFound) {
			s.fail(w, r, err)
			return
		}
		nodes, err := m.Nodes(r.Context())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		targets, err := cluster.PlaceReplicas(nodes, cluster.PlaceRequest{Name: req.Name, Size: req.Size, IOPriority: req.IOPriority, Placement: placementOf(req)}, max(req.Repl, 1))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		target := targets[0]
		req.ReplicaNodes = nil
		for _, t := range targets[1:] {
			req.ReplicaNodes = append(req.ReplicaNodes, t.ID)
		}
		if target.ID != m.ID() {
			body, err := json.Marshal(req)
			if err != nil {
				s.fail(w, r, err)
				return
			}
			s.forwardBody(w, r, target, req.Name, bytes.NewReader(body))
			return
		}
	}
	spec := cluster.VolumeSpec{Name: req.Name, Size: req.Size, Repl: max(req.Repl, 1), IOPriority: req.IOPriority,
		Sticky: req.Sticky, SnapInterval: req.SnapInterval, SnapKeep: req.SnapKeep, Placement: placementOf(req)}
	for _, n := range req.ReplicaNodes {
		spec.Replicas = append(spec.Replicas, cluster.Replica{Node: n, Pool: -1})
	}
	info, err := s.createHeldOn(r.Context(), spec,
		func(others []cluster.Replica) (engine.VolumeInfo, []cluster.Replica, error) {
			info, err := s.engine.CreateVolume(engine.VolumeSpec{Name: req.Name, Size: req.Size, Repl: req.Repl, IOPriority: engine.IOPriority(req.IOPriority),
				Sticky: req.Sticky, SnapInterval: req.SnapInterval, SnapKeep: req.SnapKeep, BlockSize: req.BlockSize})
			if err != nil || len(others) == 0 {
				return info, nil, err
			}
			if err := s.createReplicas(r.Context(), others, info); err != nil {
				if derr := s.engine.DeleteVolume(info.Name); derr != nil {
					s.log.Warn("replicated volume not created; its first replica stays on this node", "name", info.Name, "err", derr)
				}
				return info, nil, err
			}
			return info, others, nil
		})
	if err != nil {
		s.fail(w, r, volumeError("create", req.Name, err))
		return
	}
	s.log.Info("volume created", "name", info.Name, "id", info.ID, "size", info.Size, "io_priority", info.IOPriority)
	if err := s.setCloudsnapSchedule(info.Name, setIfNonZero(req.CloudsnapInterval), setIfNonZero(req.CloudsnapKeep)); err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusCreated, s.volumeJSON(info.Name, volumeFromEngine(info)))
}

// checkCreate refuses, before placement, what no node would create.
func checkCreate(req CreateVolumeRequest) error {
	if err := engine.ValidateName("volume", req.Name); err != nil {
		return err
	}
	if err := engine.ValidateSize(req.Size); err != nil {
		return err
	}
	if err := engine.ValidateRepl(max(req.Repl, 1)); err != nil {
		return err
	}
	if req.IOPriority != "" {
		if _, err := engine.ParseIOPriority(req.IOPriority); err != nil {
			return err
		}
	}
	return nil
}

func placementOf(req CreateVolumeRequest) cluster.Placement {
	return cluster.Placement{Nodes: req.Nodes, Zones: req.Zones, Racks: req.Racks}
}

// createHeld makes a volume (a snapshot, a clone) on this node: reserve
// its name in etcd for this node, make it on the engine, mark it ready
// (the invariant at the top of this file). spec is filled in here with the
// state and this node.
func (s *Server) createHeld(ctx context.Context, spec cluster.VolumeSpec, create func() (engine.VolumeInfo, error)) (engine.VolumeInfo, error) {
	return s.createHeldOn(ctx, spec, func([]cluster.Replica) (engine.VolumeInfo, []cluster.Replica, error) {
		info, err := create()
		return info, nil, err
	})
}

// createHeldOn is createHeld for a volume (or snapshot) with copies on other
// nodes too: spec.Replicas names them (recorded with the reservation, so
// that their nodes know the copies for the cluster's while they are made),
// and create makes this node's and theirs, returning the other replicas as
// made (their pools) — or none, having made or left nothing, on an error.
func (s *Server) createHeldOn(ctx context.Context, spec cluster.VolumeSpec, create func(others []cluster.Replica) (engine.VolumeInfo, []cluster.Replica, error)) (engine.VolumeInfo, error) {
	cfg := s.clusterOf()
	if cfg == nil {
		info, _, err := create(nil)
		return info, err
	}
	st := cfg.Member.Store()
	defer s.busy.add(spec.Name)()
	spec.State, spec.Created = cluster.VolumeCreating, time.Now().UTC()
	others := spec.Replicas
	spec.Replicas = append([]cluster.Replica{{Node: cfg.Member.ID(), Pool: -1}}, others...)
	spec, err := st.CreateVolume(ctx, spec)
	if errors.Is(err, cluster.ErrExists) {
		return engine.VolumeInfo{}, fmt.Errorf("%w: %q", engine.ErrExists, spec.Name)
	}
	if err != nil {
		return engine.VolumeInfo{}, err
	}
	info, made, err := create(append([]cluster.Replica(nil), others...))
	if err != nil {
		// Not made: give the name back. Should etcd fail here, the
		// reservation stays creating and reconcile removes it.
		if derr := st.DeleteVolume(ctx, spec.Name, spec.Rev); derr != nil {
			s.log.Warn("volume not created; its reservation in the kvdb is left to reconciliation", "name", spec.Name, "err", derr)
		}
		return engine.VolumeInfo{}, err
	}
	spec = specFromInfo(spec, info)
	spec.Replicas = append(spec.Replicas[:1], made...)
	spec.State = cluster.VolumeReady
	if _, err := st.UpdateVolume(ctx, spec); err != nil {
		return engine.VolumeInfo{}, fmt.Errorf("%s %q was made on this node but not recorded ready in the kvdb (this node records it by itself once the kvdb answers): %w", kindWord(info), info.Name, err)
	}
	return info, nil
}

func kindWord(info engine.VolumeInfo) string {
	if info.Snapshot {
		return "snapshot"
	}
	return "volume"
}

// deleteHeld deletes volumes of this node (a volume with its snapshots
// for a forced delete) by del, keeping their specs right: deleting before,
// removed after, back to ready for what del did not delete. specs are the
// names' specs (nil entries: not in the cluster). del returns the names it
// deleted.
func (s *Server) deleteHeld(ctx context.Context, names []string, del func() ([]string, error)) ([]string, error) {
	cfg := s.clusterOf()
	if cfg == nil {
		return del()
	}
	st := cfg.Member.Store()
	inflight := map[string]bool{}
	for _, n := range names {
		inflight[n] = s.busy.has(n)
	}
	defer s.busy.add(names...)()
	specs := map[string]cluster.VolumeSpec{}
	for _, n := range names {
		sp, err := st.Volume(ctx, n)
		if errors.Is(err, cluster.ErrNotFound) {
			continue // unregistered: the engine alone decides
		}
		if err != nil {
			return nil, err
		}
		if sp.Node() != cfg.Member.ID() {
			continue // the name is another node's volume: leave its spec
		}
		if sp.State == cluster.VolumeCreating && inflight[n] {
			s.restoreReady(ctx, st, specs)
			return nil, fmt.Errorf("%w: %q is being created; retry in a moment", engine.ErrBusy, n)
		}
		if sp.Coordinator != "" && sp.CoordinatorLease != "" && sp.Coordinator != cfg.Member.ID() {
			// Served by another node: its writes are acknowledged by the
			// replicas, this one among them. (This node's own coordinator
			// holds its replica in the engine, which refuses the delete.)
			hb, alive, err := st.HeartbeatLease(ctx, sp.Coordinator)
			if err != nil {
				s.restoreReady(ctx, st, specs)
				return nil, err
			}
			if alive && hb == sp.CoordinatorLease {
				s.restoreReady(ctx, st, specs)
				return nil, fmt.Errorf("%w: volume %q is open on node %s (its coordinator); close it there first", engine.ErrBusy, n, sp.Coordinator)
			}
		}
		// Otherwise a create or delete an earlier run left half-done
		// (reconcile has not come by yet): the engine, which has it, is
		// the truth, and the delete goes on from there.
		sp.State = cluster.VolumeDeleting
		if sp, err = st.UpdateVolume(ctx, sp); err != nil {
			s.restoreReady(ctx, st, specs)
			return nil, err
		}
		specs[n] = sp
	}
	deleted, derr := del()
	for _, n := range deleted {
		sp, ok := specs[n]
		if !ok {
			continue
		}
		delete(specs, n)
		s.deleteReplicas(ctx, sp)
		if err := s.deleteSpec(ctx, st, sp); err != nil {
			s.log.Warn("volume deleted; its spec in the kvdb is left to reconciliation", "name", n, "err", err)
			derr = errors.Join(derr, fmt.Errorf("%q was deleted from this node but is still in the kvdb (this node removes it by itself once the kvdb answers): %w", n, err))
		}
	}
	s.restoreReady(ctx, st, specs)
	return deleted, derr
}

// deleteSpec removes the spec of a volume this node has deleted. The spec
// may have moved on meanwhile without being another volume's — a
// coordinator giving back its claim (a copy that ended as the replicas
// went) — so a conflict is retried at the new revision while the spec is
// still this volume's, marked deleting; a volume made again under the name
// is left alone.
func (s *Server) deleteSpec(ctx context.Context, st *cluster.Store, sp cluster.VolumeSpec) error {
	err := st.DeleteVolume(ctx, sp.Name, sp.Rev)
	for range 3 {
		if !errors.Is(err, cluster.ErrConflict) {
			return err
		}
		now, gerr := st.Volume(ctx, sp.Name)
		if errors.Is(gerr, cluster.ErrNotFound) {
			return nil
		}
		if gerr != nil {
			return gerr
		}
		if now.State != cluster.VolumeDeleting || !now.Created.Equal(sp.Created) {
			return err
		}
		err = st.DeleteVolume(ctx, sp.Name, now.Rev)
	}
	return err
}

// restoreReady puts specs marked deleting back to ready: their volumes
// were not deleted. Should etcd fail, reconcile does it.
func (s *Server) restoreReady(ctx context.Context, st *cluster.Store, specs map[string]cluster.VolumeSpec) {
	for _, sp := range specs {
		sp.State = cluster.VolumeReady
		if _, err := st.UpdateVolume(ctx, sp); err != nil {
			s.log.Warn("volume not deleted; its spec stays deleting until reconciliation", "name", sp.Name, "err", err)
		}
	}
}

// recordUpdate writes what the engine now holds of a volume of this node
// into its spec (after an update). spec nil: not in the cluster.
func (s *Server) recordUpdate(ctx context.Context, spec *cluster.VolumeSpec, info engine.VolumeInfo) error {
	cfg := s.clusterOf()
	if cfg == nil || spec == nil {
		return nil
	}
	defer s.busy.add(spec.Name)()
	st := cfg.Member.Store()
	for range 3 { // a concurrent update of the same volume moves the revision
		sp, err := st.Volume(ctx, spec.Name)
		if err != nil {
			return err
		}
		if _, err = st.UpdateVolume(ctx, specFromInfo(sp, info)); !errors.Is(err, cluster.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("%w: volume %q changed concurrently three times", cluster.ErrConflict, spec.Name)
}

// listClustered answers GET /v1/volumes (and /v1/snapshots, snapsOnly) in
// a cluster: the specs in etcd, with what each volume's node says of it
// (asked at once, each within peerListTimeout). A node that cannot be
// asked leaves its volumes as etcd has them, the state saying why.
// While the kvdb is unavailable: this node's own volumes, with a warning.
func (s *Server) listClustered(w http.ResponseWriter, r *http.Request, cfg *ClusterConfig, all bool) ([]Volume, bool) {
	m := cfg.Member
	specs, err := m.Store().Volumes(r.Context())
	if errors.Is(err, cluster.ErrUnavailable) {
		w.Header().Set(warningHeader, fmt.Sprintf("%s; showing this node's own volumes only", plain(err)))
		return nil, false
	}
	if err != nil {
		s.fail(w, r, err)
		return nil, true
	}
	nodes, err := m.Nodes(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return nil, true
	}
	byID := map[string]cluster.Node{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	// What each node holding a listed volume says of its volumes.
	held := map[string]map[string]Volume{m.ID(): s.localVolumes()}
	errs := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, sp := range specs {
		id := sp.Node()
		n, ok := byID[id]
		mu.Lock()
		_, asked := held[id]
		if !asked && ok && n.Status == cluster.StatusOnline {
			held[id] = nil
			wg.Go(func() {
				vols, err := s.askVolumes(r.Context(), n)
				mu.Lock()
				defer mu.Unlock()
				held[id], errs[id] = vols, err
			})
		}
		mu.Unlock()
	}
	wg.Wait()
	out := make([]Volume, 0, len(specs))
	for _, sp := range specs {
		if sp.Snapshot && !all {
			continue
		}
		id := sp.Node()
		n, ok := byID[id]
		if !ok {
			n = cluster.Node{NodeRecord: cluster.NodeRecord{ID: id}, Status: "Deleted"}
		}
		if v, ok := held[id][sp.Name]; ok && sp.State == cluster.VolumeReady {
			if !sp.Snapshot && len(sp.Replicas) > 0 {
				v.Repl = len(sp.Replicas) // the cluster's, which ha-update changes
			}
			out = append(out, v)
			continue
		}
		state := stateWithout(sp, n)
		switch {
		case sp.State != cluster.VolumeReady:
		case errs[id] != nil:
			state = fmt.Sprintf("unavailable: its node %s (%s) does not answer", id, orUnknown(n.MgmtAddr))
		case n.Status == cluster.StatusOnline:
			state = fmt.Sprintf("missing: not on the drives of its node %s", id)
		}
		out = append(out, volumeFromSpec(sp, n, state))
	}
	return out, false
}

// localVolumes is this node's engine's view of its volumes, by name.
func (s *Server) localVolumes() map[string]Volume {
	out := map[string]Volume{}
	for _, info := range s.engine.Volumes() {
		out[info.Name] = s.volumeJSON(info.Name, volumeFromEngine(info))
	}
	return out
}

// askVolumes asks node n for its own volumes and snapshots.
func (s *Server) askVolumes(ctx context.Context, n cluster.Node) (map[string]Volume, error) {
	ctx, cancel := context.WithTimeout(ctx, peerListTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.MgmtAddr+"/v1/volumes?all=true", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set(forwardedHeader, s.node.ID())
	resp, err := s.peers().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	var vols []Volume
	if err := json.NewDecoder(resp.Body).Decode(&vols); err != nil {
		return nil, err
	}
	out := make(map[string]Volume, len(vols))
	for _, v := range vols {
		out[v.Name] = v
	}
	return out, nil
}

// Locate says where volume name is served when it is not on this node: an
// error naming its node and the node's addresses, wrapping
// engine.ErrNotFound (NBD answers "unknown export" with this text). nil
// when the cluster does not place it on another node.
func (s *Server) Locate(ctx context.Context, name string) error {
	cfg := s.clusterOf()
	if cfg == nil {
		return nil
	}
	sp, err := cfg.Member.Store().Volume(ctx, name)
	if err != nil || sp.Node() == cfg.Member.ID() || len(sp.Replicas) > 1 && !sp.Snapshot {
		return nil // here, or replicated: any node serves it
	}
	n, err := s.nodeByID(ctx, sp.Node())
	if err != nil {
		return nil
	}
	return &elsewhereError{volume: name, node: n}
}

// elsewhereError: a volume served by another node.
type elsewhereError struct {
	volume string
	node   cluster.Node
}

func (e *elsewhereError) Error() string {
	return fmt.Sprintf("volume %q is served by node %s (NBD %s, management %s, %s); connect there (remote access comes with replication)",
		e.volume, e.node.ID, orUnknown(e.node.DataAddr), orUnknown(e.node.MgmtAddr), e.node.Status)
}

func (e *elsewhereError) Is(target error) bool {
	return target == engine.ErrNotFound || target == ErrElsewhere
}
