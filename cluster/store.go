package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// LayoutPrefix is the root of every key of layout version 1 (doc.go).
// Part of the stored format — do not change; a new layout gets a new prefix.
const LayoutPrefix = "/cairn/v1/"

// embeddedKey marks an embedded etcd with the cluster of the node running it.
const embeddedKey = LayoutPrefix + "embedded"

// maxNameLen bounds cluster and volume names in keys (engine.MaxNameLen).
const maxNameLen = 255

// Identity is the cluster's identity, created once.
type Identity struct {
	Name    string    `json:"name"`
	UUID    string    `json:"uuid"`
	Created time.Time `json:"created"`
}

// Store is one cluster's state in etcd: every method is one or two etcd
// calls under CallTimeout, and fails with ErrUnavailable when etcd does not
// answer. Safe for concurrent use.
type Store struct {
	cli       *clientv3.Client
	endpoints []string
	prefix    string // LayoutPrefix + name + "/"
	identity  Identity
}

// JoinOptions say how a node joins.
type JoinOptions struct {
	// Embedded is set by the node that runs the etcd (no -k): it marks the
	// etcd as its cluster's, so that nodes of another cluster are refused.
	Embedded bool
}

// Join opens cluster name in etcd, creating its identity (a new UUID) if
// this is the first node, by a transaction: of two first nodes at once, one
// creates it and the other reads it. It fails with ErrMismatch when the etcd
// is another cluster's embedded kvdb.
func Join(ctx context.Context, cli *clientv3.Client, endpoints []string, name string, opts JoinOptions) (*Store, error) {
	if err := validateName("cluster", name); err != nil {
		return nil, err
	}
	s := &Store{cli: cli, endpoints: endpoints, prefix: LayoutPrefix + name + "/"}
	if err := s.checkEmbedded(ctx, name, opts.Embedded); err != nil {
		return nil, err
	}
	uuid, err := newUUID()
	if err != nil {
		return nil, err
	}
	fresh, err := json.Marshal(Identity{Name: name, UUID: uuid, Created: time.Now().UTC()})
	if err != nil {
		return nil, err
	}
	key := s.prefix + "identity"
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(fresh))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return nil, s.unavailable(err)
	}
	raw := fresh
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) != 1 {
			return nil, fmt.Errorf("cluster: identity %s vanished while joining", key)
		}
		raw = kvs[0].Value
	}
	if err := json.Unmarshal(raw, &s.identity); err != nil || s.identity.UUID == "" {
		return nil, fmt.Errorf("cluster: identity %s is damaged: %q", key, raw)
	}
	return s, nil
}

// checkEmbedded refuses a node of another cluster name in an embedded etcd,
// and has the node running one mark it as its cluster's.
func (s *Store) checkEmbedded(ctx context.Context, name string, owner bool) error {
	mark, err := json.Marshal(map[string]string{"cluster": name})
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	txn := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.CreateRevision(embeddedKey), "=", 0))
	if owner {
		txn = txn.Then(clientv3.OpPut(embeddedKey, string(mark)))
	}
	resp, err := txn.Else(clientv3.OpGet(embeddedKey)).Commit()
	if err != nil {
		return s.unavailable(err)
	}
	if resp.Succeeded {
		return nil
	}
	var m struct {
		Cluster string `json:"cluster"`
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 1 {
		_ = json.Unmarshal(kvs[0].Value, &m) // damaged: Cluster "" and refused below
	}
	if m.Cluster != name {
		return errorf(ErrMismatch, "the kvdb at %s is the embedded kvdb of cluster %q; this node is of cluster %q (start it with -c %s, or point -k elsewhere)", strings.Join(s.endpoints, ","), m.Cluster, name, m.Cluster)
	}
	return nil
}

// Identity is the cluster's name, UUID and creation time.
func (s *Store) Identity() Identity { return s.identity }

// Endpoints are the etcd client URLs the store talks to.
func (s *Store) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Health returns nil when etcd answers a linearizable read (it has quorum)
// within CallTimeout.
func (s *Store) Health(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	if _, err := s.cli.Get(cctx, s.prefix+"identity", clientv3.WithCountOnly()); err != nil {
		return s.unavailable(err)
	}
	return nil
}

func (s *Store) unavailable(err error) error { return unavailable(s.endpoints, err) }

// Node status words, as pxctl prints them.
const (
	StatusOnline  = "Online"
	StatusOffline = "Offline"
)

// NodeRecord is what a node says about itself (key nodes/<id>).
type NodeRecord struct {
	ID       string        `json:"id"`
	Hostname string        `json:"hostname"`
	MgmtAddr string        `json:"mgmt_addr"` // management API host:port
	DataAddr string        `json:"data_addr"` // NBD host:port
	ReplAddr string        `json:"repl_addr"` // replication host:port (--repl-listen)
	Zone     string        `json:"zone"`
	Rack     string        `json:"rack"`
	Version  string        `json:"version"`
	Pools    []PoolSummary `json:"pools"`
	Started  time.Time     `json:"started"`
	// Volumes names the volumes (not snapshots) whose data is on the
	// node, at most MaxRecordVolumes of them; VolumeCount counts them all.
	// What `cluster delete` says is lost with an Offline node.
	Volumes     []string `json:"volumes"`
	VolumeCount int      `json:"volume_count"`
}

// MaxRecordVolumes bounds the names in a NodeRecord: the record is
// rewritten every heartbeat and must stay far below etcd's request limit
// (1.5 MiB) with names of up to 255 bytes.
const MaxRecordVolumes = 256

// PoolSummary is one pool of a node, as the cluster sees it.
type PoolSummary struct {
	ID         int    `json:"id"`
	IOPriority string `json:"io_priority"`
	Size       int64  `json:"size"`
	Used       int64  `json:"used"`
	Status     string `json:"status"`
}

// Heartbeat is the leased key alive/<id>: present while the node lives.
type Heartbeat struct {
	Clock time.Time `json:"clock"` // the node's clock when it wrote this
	Lease string    `json:"lease"` // hex lease id, for etcdctl
}

// HeartbeatLease returns the lease (hex) of node's heartbeat, and false
// when the node has none (Offline).
func (s *Store) HeartbeatLease(ctx context.Context, node string) (string, bool, error) {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Get(cctx, s.prefix+"alive/"+node)
	if err != nil {
		return "", false, s.unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return "", false, nil
	}
	var hb Heartbeat
	if err := json.Unmarshal(resp.Kvs[0].Value, &hb); err != nil {
		return "", false, fmt.Errorf("cluster: heartbeat of node %s is damaged: %v", node, err)
	}
	return hb.Lease, true, nil
}

// Node is a node as the cluster sees it: its record and its liveness.
type Node struct {
	NodeRecord
	Status string    // StatusOnline or StatusOffline
	Clock  time.Time // the clock of its last heartbeat (zero when Offline)
	// ClockOffset is its clock minus the observer's, as last measured
	// (Member.Nodes); ClockMeasured says whether there is a measurement.
	ClockOffset   time.Duration
	ClockMeasured bool
	// ClockSkew: the clock is more than MaxClockSkew from the others'.
	ClockSkew bool
}

// Nodes returns every node ever registered, by id, with its liveness, read
// at one revision.
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Txn(cctx).Then(
		clientv3.OpGet(s.prefix+"nodes/", clientv3.WithPrefix()),
		clientv3.OpGet(s.prefix+"alive/", clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, s.unavailable(err)
	}
	alive := map[string]Heartbeat{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		var hb Heartbeat
		if json.Unmarshal(kv.Value, &hb) == nil {
			alive[strings.TrimPrefix(string(kv.Key), s.prefix+"alive/")] = hb
		}
	}
	var nodes []Node
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		id := strings.TrimPrefix(string(kv.Key), s.prefix+"nodes/")
		n := Node{Status: StatusOffline}
		if err := json.Unmarshal(kv.Value, &n.NodeRecord); err != nil {
			// One damaged record must not hide the others: show the id.
			n.NodeRecord = NodeRecord{Hostname: "(damaged record)"}
		}
		n.ID = id
		if hb, ok := alive[id]; ok {
			n.Status, n.Clock = StatusOnline, hb.Clock
		}
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].ID < nodes[j].ID })
	return nodes, nil
}

// Tombstone marks a node deleted from the cluster (key deleted/<id>): it
// may not register again (its data directory must be wiped and the node
// join as a new one). Written once, never removed.
type Tombstone struct {
	Deleted     time.Time `json:"deleted"`
	Hostname    string    `json:"hostname"`
	MgmtAddr    string    `json:"mgmt_addr"`
	LostVolumes []string  `json:"lost_volumes"`
}

// DeleteNode removes node id from the cluster and returns its last record.
// Refused (ErrOnline) while the node holds its lease, and (ErrHasVolumes)
// while volumes live on it (specs placing them there, or its record's
// list), unless force; then their specs are removed after the node. One transaction: the node
// must still be Offline with the very record read (not registered again in
// between), and its tombstone is written with the delete, so that the node
// can never register again (Member.write checks it).
func (s *Store) DeleteNode(ctx context.Context, id string, force bool) (NodeRecord, error) {
	if err := validateName("node", id); err != nil {
		return NodeRecord{}, err
	}
	recKey, aliveKey := s.prefix+"nodes/"+id, s.prefix+"alive/"+id
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Txn(cctx).Then(clientv3.OpGet(recKey), clientv3.OpGet(aliveKey, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return NodeRecord{}, s.unavailable(err)
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return NodeRecord{}, errorf(ErrNotFound, "node %s is not in cluster %q", id, s.identity.Name)
	}
	if resp.Responses[1].GetResponseRange().Count > 0 {
		return NodeRecord{}, errorf(ErrOnline, "node %s is Online: only an Offline node can be deleted (stop it, or wait for it to go Offline)", id)
	}
	var rec NodeRecord
	_ = json.Unmarshal(kvs[0].Value, &rec) // damaged: deleted as a node without volumes
	rec.ID = id
	// What is lost: the volumes the cluster places on the node, and those
	// its record lists (the node's own view, which may hold volumes it
	// could not register).
	specs, err := s.Volumes(ctx)
	if err != nil {
		return rec, err
	}
	var held, shrink []VolumeSpec
	names := map[string]bool{}
	for _, n := range rec.Volumes {
		names[n] = true
	}
	extra := rec.VolumeCount - len(rec.Volumes) // listed only by count
	for _, sp := range specs {
		switch {
		case !sp.HasReplica(id):
		case inSyncElsewhere(sp, id):
			// Replicated, with an in-sync copy on another node: it
			// loses this replica, not its data.
			shrink = append(shrink, sp)
			delete(names, sp.Name)
		case sp.Node() == id:
			held = append(held, sp)
			if !sp.Snapshot {
				names[sp.Name] = true
			}
		}
	}
	rec.Volumes = slices.Sorted(maps.Keys(names))
	rec.VolumeCount = len(rec.Volumes) + max(extra, 0)
	if len(rec.Volumes) > MaxRecordVolumes {
		rec.Volumes = rec.Volumes[:MaxRecordVolumes]
	}
	if rec.VolumeCount > 0 && !force {
		return rec, errorf(ErrHasVolumes, "node %s holds %d volume(s) (%s): they would be lost; --force deletes the node and them from the cluster", id, rec.VolumeCount, volumeList(rec))
	}
	tomb, err := json.Marshal(Tombstone{Deleted: time.Now().UTC(), Hostname: rec.Hostname, MgmtAddr: rec.MgmtAddr, LostVolumes: rec.Volumes})
	if err != nil {
		return rec, err
	}
	del, err := s.cli.Txn(cctx).If(
		clientv3.Compare(clientv3.ModRevision(recKey), "=", kvs[0].ModRevision),
		clientv3.Compare(clientv3.CreateRevision(aliveKey), "=", 0),
	).Then(clientv3.OpDelete(recKey), clientv3.OpPut(s.prefix+"deleted/"+id, string(tomb))).Commit()
	if err != nil {
		return rec, s.unavailable(err)
	}
	if !del.Succeeded {
		return rec, errorf(ErrOnline, "node %s registered again while it was being deleted", id)
	}
	// The node is gone for good (its tombstone keeps it out); its volumes
	// leave the cluster's view after it. Should this fail half-way, the
	// specs left name a deleted node: volume list shows them lost and
	// volume delete removes them.
	if err := s.deleteSpecs(ctx, held); err != nil {
		return rec, fmt.Errorf("node %s deleted, but removing its volumes from the cluster failed (volume delete removes them): %w", id, err)
	}
	for _, sp := range shrink {
		if _, err := s.ModifyVolume(ctx, sp.Name, func(v *VolumeSpec) error {
			v.Replicas = slices.DeleteFunc(v.Replicas, func(r Replica) bool { return r.Node == id })
			if i := slices.IndexFunc(v.Replicas, Replica.InSync); i > 0 {
				// The first replica holds the volume's settings and is
				// what serves it alone: an in-sync one.
				v.Replicas[0], v.Replicas[i] = v.Replicas[i], v.Replicas[0]
			}
			v.Repl = len(v.Replicas)
			v.Epoch++
			return nil
		}); err != nil {
			return rec, fmt.Errorf("node %s deleted, but removing its replica of volume %q from the cluster failed: %w", id, sp.Name, err)
		}
	}
	return rec, nil
}

// inSyncElsewhere reports whether sp has an in-sync replica on a node other
// than id.
func inSyncElsewhere(sp VolumeSpec, id string) bool {
	return slices.ContainsFunc(sp.Replicas, func(r Replica) bool { return r.Node != id && r.InSync() })
}

// volumeList words a record's volumes for a message: "a, b and 3 more".
func volumeList(rec NodeRecord) string {
	list := strings.Join(rec.Volumes, ", ")
	if more := rec.VolumeCount - len(rec.Volumes); more > 0 {
		list += fmt.Sprintf(" and %d more", more)
	}
	return list
}

// validateName keeps a name from changing the key it goes into: non-empty,
// bounded, and without '/' (which would reach into another key's space).
func validateName(what, name string) error {
	if name == "" || len(name) > maxNameLen || strings.ContainsAny(name, "/\x00") || name == "." || name == ".." {
		return errorf(ErrInvalid, "%s name %q: use 1 to %d characters, no '/'", what, name, maxNameLen)
	}
	return nil
}

// newUUID returns a random UUID (version 4).
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("cluster: uuid: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}
