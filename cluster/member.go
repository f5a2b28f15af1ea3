package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	// LeaseTTL is the node lease in seconds: a dead node is Offline at
	// most this long (plus etcd's expiry check) after its last keep-alive,
	// well inside the 15 s an operator is promised.
	LeaseTTL = 10
	// HeartbeatInterval is how often a node rewrites its heartbeat (its
	// clock) and its record (pools used).
	HeartbeatInterval = 3 * time.Second
	// MaxClockSkew is how far a node's clock may be from the others' before
	// it is flagged.
	MaxClockSkew = time.Second
	// retryInterval paces registering again after the lease was lost.
	retryInterval = time.Second
)

// MemberConfig is a node's registration.
type MemberConfig struct {
	// Record returns the node's current record; called at every heartbeat
	// (pools change). Its ID must stay the same.
	Record func() NodeRecord
	// Clock is the node's clock (time.Now when nil). Tests shift it to
	// stand for a node whose clock is off.
	Clock func() time.Time
	Log   *slog.Logger
}

// Member keeps one node registered: its record written, its heartbeat
// alive under a lease, registered again when the lease is lost; and it
// measures the other nodes' clocks.
type Member struct {
	s     *Store
	id    string
	cfg   MemberConfig
	clock func() time.Time
	log   *slog.Logger

	stop context.CancelFunc
	done sync.WaitGroup

	// lastRetryLog paces the warnings of a kvdb that stays down.
	// lastRecord is the record last written: a heartbeat rewrites the
	// record only when it changed (it may hold 256 volume names; the
	// heartbeat key stays small). Both are used by one goroutine at a
	// time: Register's, then run's.
	lastRetryLog time.Time
	lastRecord   []byte

	mu      sync.Mutex               // protects the fields below
	offsets map[string]time.Duration // node id → its clock minus ours, from its last heartbeat
	lease   clientv3.LeaseID         // the current lease, 0 while not registered
	renewed time.Time                // when etcd last answered a keep-alive of lease
	// held is lease and renewed, published for HoldsFresh without mu
	// (asked on every I/O of a replicated volume). Set under mu.
	held atomic.Pointer[heldLease]
}

type heldLease struct {
	id      clientv3.LeaseID
	renewed time.Time
}

// publishLeaseLocked publishes lease and renewed to HoldsFresh. REQUIRES mu.
func (m *Member) publishLeaseLocked() {
	m.held.Store(&heldLease{id: m.lease, renewed: m.renewed})
}

// Register registers the node now (so that a start fails when etcd is
// unreachable or the node id is taken by another host) and keeps it
// registered until Stop.
func (s *Store) Register(ctx context.Context, cfg MemberConfig) (*Member, error) {
	m := &Member{s: s, cfg: cfg, clock: cfg.Clock, log: cfg.Log, offsets: map[string]time.Duration{}}
	if m.clock == nil {
		m.clock = time.Now
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	rec := cfg.Record()
	m.id = rec.ID
	if err := validateName("node", m.id); err != nil {
		return nil, err
	}
	if err := m.checkNotTaken(ctx, rec); err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(context.Background())
	lease, ka, err := m.register(ctx, runCtx)
	if err != nil {
		stop()
		return nil, err
	}
	m.stop = stop
	m.done.Add(2)
	go func() { defer m.done.Done(); m.run(runCtx, lease, ka) }()
	go func() { defer m.done.Done(); m.watchClocks(runCtx) }()
	return m, nil
}

// checkNotTaken refuses a node id that is Online from another host: a
// copied data directory, not this node restarted. A restart after a crash
// finds its own heartbeat not yet expired (its management port may differ:
// port 0) and takes it over.
func (m *Member) checkNotTaken(ctx context.Context, rec NodeRecord) error {
	nodes, err := m.s.Nodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.ID == rec.ID && n.Status == StatusOnline && n.Hostname != rec.Hostname {
			return errorf(ErrExists, "node id %s is Online in cluster %q on host %s (%s); is this data directory a copy of that node's?", rec.ID, m.s.identity.Name, n.Hostname, n.MgmtAddr)
		}
	}
	return nil
}

// register grants a lease and writes the record and the heartbeat under it
// in one transaction (each call bounded by ctx and CallTimeout), then keeps
// the lease alive until runCtx ends or the lease is lost.
func (m *Member) register(ctx, runCtx context.Context) (clientv3.LeaseID, <-chan *clientv3.LeaseKeepAliveResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	g, err := m.s.cli.Grant(cctx, LeaseTTL)
	if err != nil {
		return 0, nil, m.s.unavailable(err)
	}
	m.lastRecord = nil // a registration always writes the record
	if err := m.write(cctx, g.ID); err != nil {
		return 0, nil, err
	}
	ka, err := m.s.cli.KeepAlive(runCtx, g.ID)
	if err != nil {
		return 0, nil, m.s.unavailable(err)
	}
	m.mu.Lock()
	m.lease, m.renewed = g.ID, time.Now()
	m.publishLeaseLocked()
	m.mu.Unlock()
	return g.ID, ka, nil
}

// write puts the record and the heartbeat (under lease) in one transaction.
func (m *Member) write(ctx context.Context, lease clientv3.LeaseID) error {
	rec, err := json.Marshal(m.cfg.Record())
	if err != nil {
		return err
	}
	ops := []clientv3.Op{}
	if !bytes.Equal(rec, m.lastRecord) {
		ops = append(ops, clientv3.OpPut(m.s.prefix+"nodes/"+m.id, string(rec)))
	}
	hb, err := json.Marshal(Heartbeat{Clock: m.clock().UTC(), Lease: strconv.FormatInt(int64(lease), 16)})
	if err != nil {
		return err
	}
	// A deleted node's tombstone stops it here, in the same transaction
	// as DeleteNode's: a node deleted while cut off never comes back.
	tombKey := m.s.prefix + "deleted/" + m.id
	resp, err := m.s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(tombKey), "=", 0)).
		Then(append(ops, clientv3.OpPut(m.s.prefix+"alive/"+m.id, string(hb), clientv3.WithLease(lease)))...).
		Else(clientv3.OpGet(tombKey)).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return errLeaseLost
	}
	if err != nil {
		return m.s.unavailable(err)
	}
	if !resp.Succeeded {
		var tomb Tombstone
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
			_ = json.Unmarshal(kvs[0].Value, &tomb) // damaged: still removed
		}
		return errorf(ErrRemoved, "node %s was deleted from cluster %q (cairn cluster delete, %s); this data directory cannot join again: give the node a fresh data directory to join as a new node", m.id, m.s.identity.Name, tomb.Deleted.Format(time.RFC3339))
	}
	m.lastRecord = rec
	return nil
}

var errLeaseLost = errors.New("cluster: lease lost")

// run heartbeats until stopped; when the lease is lost (etcd unreachable
// for longer than LeaseTTL) it registers again as soon as etcd answers.
func (m *Member) run(ctx context.Context, lease clientv3.LeaseID, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	tick := time.NewTicker(HeartbeatInterval)
	defer tick.Stop()
	for {
		if lease == 0 {
			var err error
			if lease, ka, err = m.register(ctx, ctx); errors.Is(err, ErrRemoved) {
				m.log.Error("cluster: this node was deleted from the cluster; it stops registering", "err", err)
				return
			} else if err != nil {
				if ctx.Err() == nil {
					m.retryWarn("cluster: registering this node again failed; retrying every second", "err", err)
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(retryInterval):
				}
				continue
			}
			m.log.Info("cluster: node registered again", "lease", strconv.FormatInt(int64(lease), 16))
			m.lastRetryLog = time.Time{}
		}
		select {
		case <-ctx.Done():
			m.revoke(lease)
			return
		case _, ok := <-ka:
			if ok {
				m.mu.Lock()
				m.renewed = time.Now()
				m.publishLeaseLocked()
				m.mu.Unlock()
			}
			if !ok && ctx.Err() != nil {
				// Stopping: the keep-alive channel closes with ctx, and
				// may win the select over ctx.Done. The lease is still
				// ours to revoke.
				m.revoke(lease)
				return
			}
			if !ok {
				m.log.Warn("cluster: node lease lost (kvdb unreachable for longer than the lease); registering again")
				lease = m.lost()
			}
		case <-tick.C:
			cctx, cancel := context.WithTimeout(ctx, CallTimeout)
			err := m.write(cctx, lease)
			cancel()
			switch {
			case errors.Is(err, errLeaseLost):
				m.log.Warn("cluster: node lease expired; registering again")
				lease = m.lost()
			case errors.Is(err, ErrRemoved):
				m.log.Error("cluster: this node was deleted from the cluster; it stops heartbeating", "err", err)
				m.revoke(lease)
				m.lost()
				return
			case err != nil && ctx.Err() == nil:
				// The keep-alive decides when the lease is gone; one
				// missed heartbeat is only logged.
				m.retryWarn("cluster: heartbeat failed", "err", err)
			}
		}
	}
}

// retryWarn logs a failure that repeats while the kvdb is down at most
// every retryLogInterval, so that an outage does not flood the log.
func (m *Member) retryWarn(msg string, args ...any) {
	if time.Since(m.lastRetryLog) < retryLogInterval {
		return
	}
	m.lastRetryLog = time.Now()
	m.log.Warn(msg, args...)
}

const retryLogInterval = 30 * time.Second

func (m *Member) lost() clientv3.LeaseID {
	m.mu.Lock()
	m.lease = 0
	m.publishLeaseLocked()
	m.mu.Unlock()
	return 0
}

// revoke ends the lease so that a node stopping cleanly is Offline at once.
func (m *Member) revoke(lease clientv3.LeaseID) {
	if lease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	if _, err := m.s.cli.Revoke(ctx, lease); err != nil {
		m.log.Warn("cluster: revoking the node lease failed; the node shows Online until it expires", "err", err, "ttl_s", LeaseTTL)
	}
}

// Stop ends the registration: the lease is revoked (best effort, under
// CallTimeout) and the node shows Offline.
func (m *Member) Stop() {
	m.stop()
	m.done.Wait()
}

// Registered reports whether the node holds a lease right now.
func (m *Member) Registered() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease != 0
}

// Lease returns the node's lease (hex, as heartbeats carry it) and the
// comparison that holds while the node's heartbeat is under it: a change
// made with that condition is made only by a node that is alive in the
// cluster. "" and nil while the node holds no lease.
func (m *Member) Lease() (string, clientv3.Cmp, bool) {
	m.mu.Lock()
	lease := m.lease
	m.mu.Unlock()
	if lease == 0 {
		return "", clientv3.Cmp{}, false
	}
	return strconv.FormatInt(int64(lease), 16), clientv3.Compare(clientv3.LeaseValue(m.s.prefix+"alive/"+m.id), "=", lease), true
}

// HoldsFresh reports whether the node holds lease (as Lease names it) and
// etcd renewed it less than LeaseTTL − margin ago. The lease expires in etcd
// LeaseTTL after etcd's last renewal, which came before this node heard of
// it: so while HoldsFresh holds, the lease is alive in etcd too (given
// clocks that run at the same rate and an answer faster than margin). A node
// that must stop what a lease entitles it to before another node may take
// it over checks this, not Lease. Lock-free: asked on every I/O of a
// replicated volume.
func (m *Member) HoldsFresh(lease string, margin time.Duration) bool {
	h := m.held.Load()
	id, err := strconv.ParseInt(lease, 16, 64)
	return h != nil && h.id != 0 && err == nil && h.id == clientv3.LeaseID(id) &&
		time.Since(h.renewed) < LeaseTTL*time.Second-margin
}

// Store is the cluster the member belongs to.
func (m *Member) Store() *Store { return m.s }

// ID is the member's node id.
func (m *Member) ID() string { return m.id }

// watchClocks measures every heartbeat's clock against ours as it arrives.
func (m *Member) watchClocks(ctx context.Context) {
	for ctx.Err() == nil {
		wch := m.s.cli.Watch(clientv3.WithRequireLeader(ctx), m.s.prefix+"alive/", clientv3.WithPrefix())
		for resp := range wch {
			if resp.Err() != nil {
				break
			}
			now := m.clock()
			for _, ev := range resp.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				var hb Heartbeat
				if json.Unmarshal(ev.Kv.Value, &hb) != nil {
					continue
				}
				id := string(ev.Kv.Key[len(m.s.prefix+"alive/"):])
				m.mu.Lock()
				m.offsets[id] = hb.Clock.Sub(now)
				m.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(retryInterval):
		}
	}
}

// Nodes returns the cluster's nodes (Store.Nodes) with each Online node's
// clock offset as this member last measured it, and the skew flag.
func (m *Member) Nodes(ctx context.Context) ([]Node, error) {
	nodes, err := m.s.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	var online []time.Duration
	for i := range nodes {
		n := &nodes[i]
		if off, ok := m.offsets[n.ID]; ok && n.Status == StatusOnline {
			n.ClockOffset, n.ClockMeasured = off, true
			online = append(online, off)
		}
	}
	m.mu.Unlock()
	flagSkew(nodes, online)
	return nodes, nil
}

// flagSkew flags the measured Online nodes whose offset is more than
// MaxClockSkew from the median offset: the clock the majority agrees on.
// (With two nodes that disagree, the one with the later clock is flagged:
// the lower median is taken.)
func flagSkew(nodes []Node, offsets []time.Duration) {
	if len(offsets) < 2 {
		return
	}
	sort.Slice(offsets, func(i, j int) bool { return offsets[i] < offsets[j] })
	median := offsets[(len(offsets)-1)/2]
	for i := range nodes {
		if !nodes[i].ClockMeasured {
			continue
		}
		d := nodes[i].ClockOffset - median
		nodes[i].ClockSkew = d > MaxClockSkew || d < -MaxClockSkew
	}
}
