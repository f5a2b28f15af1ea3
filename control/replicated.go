package control

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/engine"
	"github.com/cairn-storage/cairn/replication"
)

// Replicated volumes (repl ≥ 2) are served by one node at a time, their
// coordinator (replication.Coordinator): the node where an NBD client
// opened the volume. Any node can be it, whether it holds a replica or not.
//
// The claim — who may write. A node becomes a volume's coordinator by one
// etcd transaction on the volume's spec that sets Coordinator to itself and
// CoordinatorLease to its node lease, raises the epoch, and requires that
// lease to be the one its heartbeat is under (so a node cut off from etcd
// cannot claim). It is refused while the spec names another coordinator
// whose heartbeat is still under the lease the claim recorded: that node is
// alive and serving. Once that node's lease has expired (it died, or was cut
// off from etcd for LeaseTTL) the claim goes through with a higher epoch,
// and the new coordinator's hello with that epoch fences the old one on
// every replica it reaches; the old one also stops all I/O itself before
// its node lease can have expired in etcd (watchLease), which covers its
// own replica when the new coordinator cannot reach it. So at any time at
// most one coordinator's writes are acknowledged by the replicas of the
// in-sync set, and only the live one serves reads.
//
// Every change of the in-sync set (replicationMembership) is a transaction
// that requires the claim to still be this node's under the same lease, and
// raises the epoch. A coordinator that cannot make it fails the write.
//
// A clean release (the last NBD client gone) flushes every replica and
// clears Coordinator. A claim that finds Coordinator set (its node died,
// or could not flush) converges the in-sync replicas before serving: writes
// since the last flush may have reached some replicas and not others.

// ReplicationConfig is the node's replication setup, from the daemon.
type ReplicationConfig struct {
	Server *replication.Server
	// LocalIP is the node's data address: replication connections leave
	// from it (a partition between two nodes' addresses cuts them).
	LocalIP string
	// StateDir keeps the region logs of the replicas this node's
	// coordinators took out of sync.
	StateDir string
	// Timeout is how long a replica may take to answer before it is
	// evicted; 0 = replication.DefaultTimeout.
	Timeout    time.Duration
	ResyncRate int64 // bytes per second; 0 = the coordinator's default
}

// openLookupTimeout bounds the kvdb lookup an NBD open of a repl 1 volume
// of this node makes (has it gained replicas?) before it is served from the
// engine anyway.
const openLookupTimeout = 300 * time.Millisecond

// SetReplication makes this node serve replicated volumes.
func (s *Server) SetReplication(cfg ReplicationConfig) {
	if s.repl.Swap(&cfg) == nil && s.metrics != nil {
		s.metrics.Registry.MustRegister(replicationCollector{s})
	}
}

// coordinators are the replicated volumes this node coordinates now, with
// how many NBD connections use each.
type coordinators struct {
	mu   sync.Mutex
	open map[string]*coordEntry // REQUIRES mu
	// held: volumes this node holds for a change of every replica, with
	// no coordinator (replmaint.go), and what the change is.
	held map[string]string // REQUIRES mu
}

type coordEntry struct {
	ready chan struct{} // closed once c or err is set
	c     *replication.Coordinator
	err   error
	refs  int // REQUIRES coordinators.mu
	claim claim
	stop  chan struct{} // ends watchLease
	// released is closed once the last connection's release has cleared
	// the claim in the kvdb (or failed to). The entry stays in the map
	// until then, and a new open on this node waits for it: a claim made
	// meanwhile would be under the same node and lease, and the release's
	// transaction would clear it.
	released  chan struct{}
	releasing bool // REQUIRES coordinators.mu
}

// claim is this node's claim on a volume: the lease it was made under.
type claim struct {
	lease string       // hex, as in the spec
	cmp   clientv3.Cmp // holds while this node's heartbeat is under that lease
}

// OpenReplicated is the NBD catalogue's way into replicated volumes: handled
// is false for a name this node serves from its engine alone (repl 1, a
// snapshot, unknown to the cluster).
func (s *Server) OpenReplicated(name string) (exp nbd.Export, release func(), handled bool, err error) {
	cfg, rc := s.clusterOf(), s.repl.Load()
	if cfg == nil || rc == nil {
		return nil, nil, false, nil
	}
	// The engine's repl is what the volume was created with; ha-update
	// changes the cluster's (the spec), so the spec decides — except for a
	// repl 1 volume of this node while the kvdb does not answer at once:
	// it is served as before (run-flat).
	localRepl1 := false
	if v, err := s.engine.Volume(name); err == nil {
		if v.Info().Snapshot {
			return nil, nil, false, nil
		}
		localRepl1 = v.Info().Repl < 2
	}
	wait := forwardTimeout
	if localRepl1 {
		wait = openLookupTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	sp, err := cfg.Member.Store().Volume(ctx, name)
	switch {
	case errors.Is(err, cluster.ErrNotFound):
		return nil, nil, false, nil
	case err != nil && localRepl1:
		return nil, nil, false, nil
	case err != nil:
		return nil, nil, true, fmt.Errorf("volume %q: its replicas are found through the kvdb: %w", name, err)
	}
	if sp.Snapshot || len(sp.Replicas) < 2 && !s.coordinating(name) {
		return nil, nil, false, nil // (a repl 1 volume gaining its first replica has a coordinator here)
	}
	// The claim, the dials and a convergence get the full time, whatever
	// the lookup had: cut short, a dial evicts a healthy replica.
	actx, acancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer acancel()
	c, err := s.acquireCoordinator(actx, name)
	if err != nil {
		return nil, nil, true, err
	}
	return c, func() { s.releaseCoordinator(name) }, true, nil
}

// acquireCoordinator returns the volume's coordinator on this node,
// claiming the volume and starting one for the first connection.
func (s *Server) acquireCoordinator(ctx context.Context, name string) (*replication.Coordinator, error) {
	s.coords.mu.Lock()
	if s.coords.open == nil {
		s.coords.open = map[string]*coordEntry{}
	}
	if what, ok := s.coords.held[name]; ok {
		s.coords.mu.Unlock()
		return nil, fmt.Errorf("%w: volume %q is being %s on this node", engine.ErrBusy, name, what)
	}
	e := s.coords.open[name]
	if e != nil && e.releasing {
		s.coords.mu.Unlock()
		select {
		case <-e.released:
			return s.acquireCoordinator(ctx, name)
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: volume %q is being closed on this node: %w", engine.ErrBusy, name, ctx.Err())
		}
	}
	if e == nil {
		e = &coordEntry{ready: make(chan struct{}), stop: make(chan struct{}), released: make(chan struct{})}
		s.coords.open[name] = e
		e.refs++
		s.coords.mu.Unlock()
		e.c, e.claim, e.err = s.startCoordinator(ctx, name)
		if e.err == nil {
			go s.watchLease(e)
		}
		close(e.ready)
		if e.err != nil {
			s.coords.mu.Lock()
			delete(s.coords.open, name)
			s.coords.mu.Unlock()
		}
		return e.c, e.err
	}
	e.refs++
	s.coords.mu.Unlock()
	<-e.ready
	if e.err != nil {
		return nil, e.err
	}
	return e.c, nil
}

// releaseCoordinator drops one connection's use; the last one flushes every
// replica and releases the claim.
func (s *Server) releaseCoordinator(name string) {
	s.coords.mu.Lock()
	e := s.coords.open[name]
	if e == nil {
		s.coords.mu.Unlock()
		return
	}
	if e.refs--; e.refs > 0 {
		s.coords.mu.Unlock()
		return
	}
	e.releasing = true
	s.coords.mu.Unlock()
	defer func() {
		s.coords.mu.Lock()
		delete(s.coords.open, name)
		s.coords.mu.Unlock()
		close(e.released)
	}()
	close(e.stop)
	ferr := e.c.Flush()
	e.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer cancel()
	release := func() error {
		_, err := s.clusterOf().Member.Store().ModifyVolume(ctx, name, func(sp *cluster.VolumeSpec) error {
			if sp.Coordinator != s.clusterOf().Member.ID() || sp.CoordinatorLease != e.claim.lease {
				return errNotOurs
			}
			if ferr != nil {
				// Replicas may differ: the next coordinator converges them.
				sp.CoordinatorLease = ""
				return nil
			}
			sp.Coordinator, sp.CoordinatorLease = "", ""
			return nil
		}, e.claim.cmp)
		return err
	}
	// Tried again while the kvdb does not answer: a claim left under this
	// node's live lease turns every other node away. (New opens here wait
	// meanwhile: see coordEntry.released.)
	err := release()
	for err != nil && !errors.Is(err, errNotOurs) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
			err = release()
		}
	}
	if err != nil && !errors.Is(err, errNotOurs) {
		s.log.Warn("replicated volume closed; its claim stays in the kvdb until another node takes it over", "volume", name, "err", err)
		return
	}
	s.log.Info("replicated volume closed", "volume", name, "flush_err", ferr)
}

var errNotOurs = errors.New("the claim is no longer this node's")

// startCoordinator claims name for this node and opens its replicas.
func (s *Server) startCoordinator(ctx context.Context, name string) (*replication.Coordinator, claim, error) {
	cfg, rc := s.clusterOf(), s.repl.Load()
	m := cfg.Member
	st := m.Store()
	self := m.ID()
	lease, cmp, ok := m.Lease()
	if !ok {
		return nil, claim{}, fmt.Errorf("%w: this node holds no lease in the cluster now (kvdb unreachable?); a replicated volume is served only by a live member", cluster.ErrUnavailable)
	}
	var unclean bool
	logValid := map[string]bool{}
	sp, err := st.ModifyVolume(ctx, name, func(sp *cluster.VolumeSpec) error {
		unclean = false
		clear(logValid)
		if sp.State != cluster.VolumeReady {
			return fmt.Errorf("%w: volume %q is %s", engine.ErrBusy, name, sp.State)
		}
		if sp.Restoring != "" {
			return unfinishedRestore(name, sp.Restoring)
		}
		if sp.Coordinator != "" {
			if sp.Coordinator != self || sp.CoordinatorLease != lease {
				hb, alive, err := st.HeartbeatLease(ctx, sp.Coordinator)
				if err != nil {
					return err
				}
				if alive && hb == sp.CoordinatorLease && sp.CoordinatorLease != "" {
					return s.openElsewhere(ctx, name, sp.Coordinator)
				}
			}
			unclean = true
		}
		sp.Coordinator, sp.CoordinatorLease = self, lease
		sp.Epoch++
		for i := range sp.Replicas {
			r := &sp.Replicas[i]
			if !r.InSync() {
				logValid[r.Node] = r.Log == self
				if r.Log != self {
					// What this node may hold for it is stale: gone
					// before the record names this node its keeper.
					if err := replication.ForgetRegionLog(rc.StateDir, name, r.Node); err != nil {
						return err
					}
				}
				r.Log = self
			}
		}
		return nil
	}, cmp)
	if err != nil {
		if !errors.Is(err, engine.ErrBusy) {
			// The claim may have been recorded (an etcd timeout after the
			// commit): left under this node's live lease, it would turn
			// every other node away until this one restarts.
			s.giveUpClaim(name, claim{lease: lease})
		}
		return nil, claim{}, err
	}
	cl := claim{lease: lease, cmp: cmp}
	fail := func(err error) (*replication.Coordinator, claim, error) {
		// Leave Coordinator set with no lease: the next claim converges.
		s.giveUpClaim(name, cl)
		return nil, claim{}, err
	}
	var local *replication.Local
	replicas := make([]replication.ReplicaConfig, 0, len(sp.Replicas))
	for _, r := range sp.Replicas {
		replicas = append(replicas, replication.ReplicaConfig{Node: r.Node, InSync: r.InSync(), LogValid: logValid[r.Node]})
		if r.Node == self {
			if local, err = rc.Server.OpenLocal(name, sp.Epoch); err != nil {
				return fail(fmt.Errorf("volume %q: this node's replica: %w", name, err))
			}
		}
	}
	c, err := replication.NewCoordinator(ctx, replication.CoordinatorConfig{
		Volume: name, Size: sp.Size, Self: self, Epoch: sp.Epoch, Replicas: replicas, Local: local,
		Membership: &replicationMembership{s: s, volume: name, claim: cl},
		Dial:       s.dialReplica(name), StateDir: rc.StateDir, ResyncRate: rc.ResyncRate, Logger: s.log, Unclean: unclean,
		Live: func() error { return s.claimLive(cl) },
	})
	if err != nil {
		if local != nil {
			local.Close()
		}
		return fail(fmt.Errorf("volume %q: %w", name, err))
	}
	if unclean {
		began := time.Now()
		var compared int64
		diffs, err := c.Converge(ctx, func(_, total int64) { compared = total })
		if err != nil {
			c.Close()
			return fail(fmt.Errorf("volume %q: converging its replicas after its previous coordinator stopped uncleanly: %w", name, err))
		}
		s.log.Info("replicas converged after an unclean coordinator change", "volume", name, "bytes_compared", compared,
			"regions_copied", len(diffs), "seconds", time.Since(began).Seconds())
	}
	s.log.Info("coordinating replicated volume", "volume", name, "epoch", sp.Epoch, "replicas", len(sp.Replicas))
	return c, cl, nil
}

// giveUpClaim leaves a claim this node could not serve with no lease, so
// that any node may take it (and converges the replicas first).
func (s *Server) giveUpClaim(name string, cl claim) {
	ctx, cancel := context.WithTimeout(context.Background(), cluster.CallTimeout)
	defer cancel()
	self := s.clusterOf().Member.ID()
	_, _ = s.clusterOf().Member.Store().ModifyVolume(ctx, name, func(sp *cluster.VolumeSpec) error {
		if sp.Coordinator != self || sp.CoordinatorLease != cl.lease {
			return errNotOurs
		}
		sp.CoordinatorLease = ""
		return nil
	})
}

// openElsewhere is the refusal of a second coordinator.
func (s *Server) openElsewhere(ctx context.Context, name, node string) error {
	n, err := s.nodeByID(ctx, node)
	addr := "unknown"
	if err == nil && n.DataAddr != "" {
		addr = n.DataAddr
	}
	return fmt.Errorf("%w: volume %q is open on node %s (its coordinator, NBD %s); connect there, or close it there first", engine.ErrBusy, name, node, addr)
}

// leaseMargin: a coordinator stops this long before its node's lease can
// have expired in etcd (cluster.Member.HoldsFresh).
const leaseMargin = 3 * time.Second

var errLeaseLost = fmt.Errorf("this node's cluster lease was not renewed for %v, or was replaced: another node may take the volume over", cluster.LeaseTTL*time.Second-leaseMargin)

// claimLive says whether this node may still serve under claim cl: the
// lease it was made under is this node's and fresh.
func (s *Server) claimLive(cl claim) error {
	if !s.clusterOf().Member.HoldsFresh(cl.lease, leaseMargin) {
		return errLeaseLost
	}
	return nil
}

// watchLease fences e's coordinator (every later I/O fails) once this
// node's lease has gone unrenewed for LeaseTTL − leaseMargin, or is no
// longer the one it claimed under: before another node can claim the volume
// (which needs the lease expired in etcd), this one has stopped — reads of
// its own replica included, which no epoch could fence. Each request asks
// the same of the lease itself (CoordinatorConfig.Live), so that one that
// runs right after a pause longer than the lease, before this tick, is
// refused too; this watch fences a coordinator that sees no requests.
func (s *Server) watchLease(e *coordEntry) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		if err := s.claimLive(e.claim); err != nil {
			e.c.Fence(err)
			return
		}
	}
}

// dialReplica connects to another node's replica of volume.
func (s *Server) dialReplica(volume string) replication.Dialer {
	return func(ctx context.Context, node string, epoch uint64) (*replication.Client, error) {
		cfg, rc := s.clusterOf(), s.repl.Load()
		n, err := s.nodeByID(ctx, node)
		if err != nil {
			return nil, err
		}
		if n.ReplAddr == "" {
			return nil, fmt.Errorf("node %s has no replication address (is it running an older version?)", node)
		}
		uuid, err := ParseClusterUUID(s.node.ClusterUUID())
		if err != nil {
			return nil, err
		}
		var local *net.TCPAddr
		if ip := net.ParseIP(rc.LocalIP); ip != nil {
			local = &net.TCPAddr{IP: ip}
		}
		return replication.Dial(ctx, replication.ClientConfig{Addr: n.ReplAddr, LocalAddr: local, Cluster: uuid,
			Node: cfg.Member.ID(), Volume: volume, Epoch: epoch, Timeout: rc.Timeout})
	}
}

// ParseClusterUUID reads the cluster UUID as node.json keeps it.
func ParseClusterUUID(s string) ([16]byte, error) {
	var u [16]byte
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return u, fmt.Errorf("cluster uuid %q is not a UUID", s)
	}
	copy(u[:], b)
	return u, nil
}

// replicationMembership records a coordinator's changes of the in-sync set
// in the volume's spec, each raising the epoch, each only while the claim
// is still this node's under the lease it was made with.
type replicationMembership struct {
	s      *Server
	volume string
	claim  claim
}

func (m *replicationMembership) Evict(node string) (uint64, error) {
	return m.set(node, cluster.ReplicaOutOfSync)
}

func (m *replicationMembership) Join(node string) (uint64, error) {
	return m.set(node, cluster.ReplicaInSync)
}

func (m *replicationMembership) set(node, state string) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*cluster.CallTimeout)
	defer cancel()
	mem := m.s.clusterOf().Member
	self := mem.ID()
	sp, err := mem.Store().ModifyVolume(ctx, m.volume, func(sp *cluster.VolumeSpec) error {
		if sp.Coordinator != self || sp.CoordinatorLease != m.claim.lease {
			return fmt.Errorf("%w: volume %q is now coordinated by node %s", replication.ErrFenced, m.volume, sp.Coordinator)
		}
		if state == cluster.ReplicaOutOfSync && !slices.ContainsFunc(sp.Replicas, func(r cluster.Replica) bool { return r.Node != node && r.InSync() }) {
			// The record keeps an in-sync replica whatever the coordinator
			// believes: an earlier eviction it heard fail may have been
			// recorded (an etcd timeout after the commit).
			return fmt.Errorf("%w: the replica on node %s is the last in-sync one of volume %q in the cluster's record", replication.ErrNoReplica, node, m.volume)
		}
		for i := range sp.Replicas {
			if sp.Replicas[i].Node == node {
				sp.Replicas[i].State = state
				sp.Replicas[i].Log = ""
				if state == cluster.ReplicaOutOfSync {
					sp.Replicas[i].Log = self
				}
				sp.Epoch++
				return nil
			}
		}
		return fmt.Errorf("volume %q has no replica on node %s any more", m.volume, node)
	}, m.claim.cmp)
	if err != nil {
		return 0, err
	}
	return sp.Epoch, nil
}

// coordinating reports whether this node has (or is starting) a
// coordinator of name.
func (s *Server) coordinating(name string) bool {
	s.coords.mu.Lock()
	defer s.coords.mu.Unlock()
	return s.coords.open[name] != nil
}

// coordinatorOf returns the coordinator of name on this node, if any.
func (s *Server) coordinatorOf(name string) *replication.Coordinator {
	s.coords.mu.Lock()
	e := s.coords.open[name]
	s.coords.mu.Unlock()
	if e == nil {
		return nil
	}
	select {
	case <-e.ready:
		return e.c
	default:
		return nil
	}
}

// ReplicaVolumes is the replication server's catalogue: this node's engine
// volumes, each held for as long as a coordinator's connection uses it.
type ReplicaVolumes struct{ Engine *engine.Engine }

func (r ReplicaVolumes) OpenReplica(name string) (replication.Volume, func(), error) {
	v, h, err := r.Engine.HoldVolume(name, engine.Holder{Kind: engine.HeldByReplication})
	if err != nil {
		return nil, nil, err
	}
	return v, h.Release, nil
}

// createReplicas asks each node of replicas to make its replica of the
// volume this node just made (info), and fills in their pools. On a
// failure the replicas made so far are deleted again.
func (s *Server) createReplicas(ctx context.Context, replicas []cluster.Replica, info engine.VolumeInfo) error {
	req := ReplicaRequest{Name: info.Name, Size: info.Size, Repl: info.Repl, IOPriority: string(info.RequestedIOPriority), BlockSize: info.BlockSize}
	for i := range replicas {
		var rep ReplicaReply
		if err := s.callPeer(ctx, replicas[i].Node, http.MethodPost, "/v1/internal/replicas", req, &rep); err != nil {
			for _, made := range replicas[:i] {
				s.deleteReplicaOn(ctx, made.Node, info.Name)
			}
			return fmt.Errorf("replica on node %s: %w", replicas[i].Node, err)
		}
		replicas[i].Pool, replicas[i].IOPriority, replicas[i].State = rep.Pool, rep.IOPriority, cluster.ReplicaInSync
	}
	return nil
}

// deleteReplicas deletes the other nodes' replicas of a volume this node
// deleted. A node that does not answer keeps its replica; its status then
// lists it as unregistered, for `volume delete` there once it is back.
func (s *Server) deleteReplicas(ctx context.Context, sp cluster.VolumeSpec) {
	for _, r := range sp.Replicas {
		if r.Node != s.node.ID() {
			s.deleteReplicaOn(ctx, r.Node, sp.Name)
		}
	}
}

func (s *Server) deleteReplicaOn(ctx context.Context, node, name string) {
	if err := s.callPeer(ctx, node, http.MethodDelete, "/v1/internal/replicas/"+url.PathEscape(name), nil, nil); err != nil && !errors.Is(err, engine.ErrNotFound) {
		s.log.Warn("replica not deleted; it stays on its node's drives", "volume", name, "node", node, "err", err)
	}
}

// createReplica answers POST /v1/internal/replicas: make this node's
// replica of another node's volume. Only another node asks (forwarded).
func (s *Server) createReplica(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(forwardedHeader) == "" {
		s.fail(w, r, invalidf("/v1/internal/replicas is for the volume's node; use POST /v1/volumes"))
		return
	}
	var req ReplicaRequest
	if err := decode(r, &req); err != nil {
		s.fail(w, r, err)
		return
	}
	info, err := s.engine.CreateVolume(engine.VolumeSpec{Name: req.Name, Size: req.Size, Repl: req.Repl, IOPriority: engine.IOPriority(req.IOPriority), BlockSize: req.BlockSize})
	if err != nil {
		s.fail(w, r, volumeError("create replica of", req.Name, err))
		return
	}
	s.log.Info("replica created", "name", info.Name, "for", r.Header.Get(forwardedHeader), "pool", info.Pool)
	reply(w, http.StatusCreated, ReplicaReply{Pool: info.Pool, IOPriority: string(info.IOPriority)})
}

// deleteReplica answers DELETE /v1/internal/replicas/{name}.
func (s *Server) deleteReplica(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if r.Header.Get(forwardedHeader) == "" {
		s.fail(w, r, invalidf("/v1/internal/replicas is for the volume's node; use DELETE /v1/volumes/%s", name))
		return
	}
	if err := s.engine.DeleteVolume(name); err != nil {
		s.fail(w, r, volumeError("delete replica of", name, err))
		return
	}
	s.log.Info("replica deleted", "name", name, "for", r.Header.Get(forwardedHeader))
	w.WriteHeader(http.StatusNoContent)
}

// callPeer sends a JSON request to another node's API (as a forwarded
// request) and decodes its JSON reply into out (nil: ignore it).
func (s *Server) callPeer(ctx context.Context, node, method, path string, in, out any) error {
	n, err := s.nodeByID(ctx, node)
	if err != nil {
		return err
	}
	if n.Status != cluster.StatusOnline {
		return unreachable(path, n, "is "+n.Status)
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, forwardTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+n.MgmtAddr+path, body)
	if err != nil {
		return err
	}
	req.Header.Set(forwardedHeader, s.node.ID())
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.peers().Do(req)
	if err != nil {
		return fmt.Errorf("%w: node %s (%s) does not answer: %v", ErrNodeUnreachable, node, n.MgmtAddr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// withReplicas adds a replicated volume's replicas to its view: their
// states as the cluster records them, made live by the coordinator when one
// serves the volume (resync progress).
func (s *Server) withReplicas(ctx context.Context, v Volume, spec *cluster.VolumeSpec) Volume {
	cfg := s.clusterOf()
	if spec != nil && len(spec.Replicas) > 0 && !spec.Snapshot {
		v.Repl = len(spec.Replicas) // the engine keeps what it was created with; ha-update changes the cluster's
	}
	if spec == nil || cfg == nil || len(spec.Replicas) < 2 {
		return v
	}
	if spec.CoordinatorLease != "" {
		v.Coordinator = spec.Coordinator
	}
	online := map[string]bool{}
	if nodes, err := cfg.Member.Nodes(ctx); err == nil {
		for _, n := range nodes {
			online[n.ID] = n.Status == cluster.StatusOnline
		}
	}
	live := map[string]ReplicaView{}
	if v.Coordinator == cfg.Member.ID() {
		for _, rv := range s.liveReplicas(spec.Name) {
			live[rv.Node] = rv
		}
	} else if v.Coordinator != "" {
		var cs CoordinatorStatus
		if err := s.callPeer(ctx, v.Coordinator, http.MethodGet, "/v1/internal/coordinators/"+url.PathEscape(spec.Name), nil, &cs); err == nil {
			for _, rv := range cs.Replicas {
				live[rv.Node] = rv
			}
			if v.AttachedOn == "" {
				// Attached (FUSE + loop) on its coordinator's host.
				v.AttachedOn, v.Device = cs.AttachedOn, cs.Device
			}
		}
	}
	v.ReplStatus = ReplUp
	for _, r := range spec.Replicas {
		rv, ok := live[r.Node]
		if !ok {
			rv = ReplicaView{Node: r.Node, State: cluster.ReplicaOutOfSync}
			if r.InSync() {
				rv.State = cluster.ReplicaInSync
			}
		}
		rv.Pool = r.Pool
		if rv.State == cluster.ReplicaInSync && !online[r.Node] {
			rv.State = "offline"
		}
		switch {
		case rv.State == replication.Resyncing.String():
			v.ReplStatus = ReplResyncing
		case rv.State != cluster.ReplicaInSync && v.ReplStatus == ReplUp:
			v.ReplStatus = ReplDegraded
		}
		v.Replicas = append(v.Replicas, rv)
	}
	return v
}

// liveReplicas is this node's coordinator's view of name's replicas (nil
// when it does not coordinate it).
func (s *Server) liveReplicas(name string) []ReplicaView {
	c := s.coordinatorOf(name)
	if c == nil {
		return nil
	}
	var out []ReplicaView
	for _, st := range c.Status() {
		out = append(out, ReplicaView{Node: st.Node, State: st.State.String(), Copied: st.Copied, ToCopy: st.ToCopy, Missing: st.Missing})
	}
	return out
}

// CoordinatorStatus is GET /v1/internal/coordinators/{name}: the live view
// of the volume's coordinator (this node), and where it is attached on
// this node's host. (Before it was an object, the reply was the array of
// Replicas alone: UnmarshalJSON reads both, for a cluster in the middle of
// an upgrade.)
type CoordinatorStatus struct {
	Replicas   []ReplicaView `json:"replicas"`
	AttachedOn string        `json:"attached_on,omitempty"`
	Device     string        `json:"device,omitempty"`
}

func (cs *CoordinatorStatus) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		*cs = CoordinatorStatus{}
		return json.Unmarshal(t, &cs.Replicas)
	}
	type plainStatus CoordinatorStatus // without this method
	return json.Unmarshal(b, (*plainStatus)(cs))
}

// coordinatorStatus answers GET /v1/internal/coordinators/{name}.
func (s *Server) coordinatorStatus(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	cs := CoordinatorStatus{Replicas: s.liveReplicas(name)}
	if s.attacher != nil {
		if ai, ok := s.attacher.Info(name); ok {
			cs.AttachedOn, cs.Device = ai.NodeID, ai.Device
		}
	}
	reply(w, http.StatusOK, cs)
}

// verifyVolume answers POST /v1/volumes/{name}/verify: compare the in-sync
// replicas region by region. It runs on the volume's coordinator (forwarded
// there when another node serves it), or claims the volume for its
// duration when no node does, so that no write races the comparison.
func (s *Server) verifyVolume(w http.ResponseWriter, r *http.Request) {
	cfg := s.clusterOf()
	name := r.PathValue("name")
	if cfg == nil {
		s.fail(w, r, invalidf("volume verify compares a replicated volume's replicas; this node has not joined its cluster"))
		return
	}
	sp, err := cfg.Member.Store().Volume(r.Context(), name)
	if err != nil {
		s.fail(w, r, volumeError("verify", name, err))
		return
	}
	if len(sp.Replicas) < 2 {
		s.fail(w, r, invalidf("volume %q has one replica (repl %d): there is nothing to compare", name, sp.Repl))
		return
	}
	if sp.Coordinator != "" && sp.CoordinatorLease != "" && sp.Coordinator != cfg.Member.ID() && r.Header.Get(forwardedHeader) == "" {
		if n, err := s.nodeByID(r.Context(), sp.Coordinator); err == nil && n.Status == cluster.StatusOnline {
			s.forward(w, r, n, name)
			return
		}
	}
	c, err := s.acquireCoordinator(r.Context(), name)
	if err != nil {
		s.fail(w, r, volumeError("verify", name, err))
		return
	}
	defer s.releaseCoordinator(name)
	out := VerifyReply{Volume: name, Bytes: c.Size(), Differences: []VerifyDifference{}}
	for _, st := range c.Status() {
		if st.State == replication.InSync {
			out.Replicas = append(out.Replicas, st.Node)
		}
	}
	// With ?progress the reply is a stream of VerifyEvents: a verify of a
	// large volume takes minutes, and its client sees it move.
	var progress func(done, total int64)
	var events *json.Encoder
	if r.URL.Query().Has("progress") {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		events = json.NewEncoder(w)
		last := time.Now() // a verify done within a second shows no progress
		progress = func(done, total int64) {
			if time.Since(last) >= time.Second {
				last = time.Now()
				events.Encode(VerifyEvent{Done: done, Total: total})
				rc.Flush()
			}
		}
	}
	diffs, err := c.Verify(r.Context(), progress)
	if err != nil {
		err = volumeError("verify", name, err)
		if events == nil {
			s.fail(w, r, err)
		} else {
			s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			events.Encode(VerifyEvent{Error: &errorBody{Error: plain(err), Code: kindOf(err).code}})
		}
		return
	}
	for _, d := range diffs {
		vd := VerifyDifference{Offset: d.Offset, Length: d.Length, Sums: map[string]string{}}
		for node, sum := range d.Sums {
			vd.Sums[node] = fmt.Sprintf("%016x", sum)
		}
		out.Differences = append(out.Differences, vd)
	}
	s.log.Info("volume verified", "volume", name, "replicas", len(out.Replicas), "differences", len(diffs))
	if events != nil {
		events.Encode(VerifyEvent{Done: out.Bytes, Total: out.Bytes, Result: &out})
		return
	}
	reply(w, http.StatusOK, out)
}
