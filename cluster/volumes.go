package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Volume states (VolumeSpec.State). Part of the stored format — do not
// change; add new ones.
const (
	// VolumeCreating: the name is reserved for a volume on Replicas[0].Node,
	// which may or may not have it on its drives yet.
	VolumeCreating = "creating"
	// VolumeReady: the volume is on its node's drives.
	VolumeReady = "ready"
	// VolumeDeleting: its node is deleting it from its drives.
	VolumeDeleting = "deleting"
)

// VolumeSpec is a volume, snapshot or clone as a cluster object (key
// volumes/<name>). The spec (size, settings, placement) is the cluster's;
// the data is on the drives of the node in Replicas.
//
// Who writes it: only the node that holds the volume (Replicas[0].Node)
// changes its spec after the create that reserved it, and every change
// compares the revision it read (Rev), so two writers never overwrite each
// other unseen.
type VolumeSpec struct {
	Name string `json:"name"`
	// ID is the engine's id of the volume ("" while creating).
	ID           string `json:"id"`
	Size         int64  `json:"size"`
	Repl         int    `json:"repl"`
	IOPriority   string `json:"io_priority"` // as asked; the pool's may be lower (Replica.IOPriority)
	Sticky       bool   `json:"sticky"`
	SnapInterval int    `json:"snap_interval"`
	SnapKeep     int    `json:"snap_keep"`
	// Snapshot: a read-only snapshot of Parent. A clone has Parent (its
	// snapshot) and is not a snapshot. Both live on their parent's node.
	Snapshot  bool      `json:"snapshot"`
	Parent    string    `json:"parent"`
	Placement Placement `json:"placement"`
	State     string    `json:"state"` // VolumeCreating, VolumeReady, VolumeDeleting
	Replicas  []Replica `json:"replicas"`
	// Epoch grows with every change of Replicas, of their states and of
	// the coordinator (replication's fencing token); changes compare the
	// revision they read. A volume's first epoch is the kvdb's revision
	// when it is created (CreateVolume): every epoch of an earlier volume
	// of the same name is at most the revision of its last change (each
	// raise is a transaction), so the new volume's epochs are above all of
	// the old one's, which its replicas' nodes may still keep (replication
	// state files are named after the volume).
	Epoch uint64 `json:"epoch"`
	// Coordinator is the node serving the volume's I/O ("" = none), under
	// its node lease CoordinatorLease (hex): the claim holds while that
	// node's heartbeat carries that lease (control/replicated.go).
	Coordinator      string `json:"coordinator,omitempty"`
	CoordinatorLease string `json:"coordinator_lease,omitempty"`
	// Restoring: a restore of the replicated volume from this snapshot
	// began and has not finished (its replicas may hold either content):
	// the volume is not served until a restore finishes.
	Restoring string    `json:"restoring,omitempty"`
	Created   time.Time `json:"created"`

	// Rev is the etcd revision the spec was read at (not stored): a change
	// made with it succeeds only if nobody changed the spec since.
	Rev int64 `json:"-"`
}

// Replica is one copy of a volume: a pool of a node.
type Replica struct {
	Node       string `json:"node"`
	Pool       int    `json:"pool"`        // -1 while creating
	IOPriority string `json:"io_priority"` // of the pool it landed in
	// State: ReplicaInSync ("" reads as in sync: specs from before
	// replication) or ReplicaOutOfSync. Only the coordinator changes it,
	// with an epoch bump.
	State string `json:"state,omitempty"`
	// Log is the node that keeps the region log of what an out-of-sync
	// replica misses; any other coordinator copies it whole.
	Log string `json:"log,omitempty"`
}

// Replica states (Replica.State). Part of the stored format — do not
// change; add new ones.
const (
	ReplicaInSync    = "in-sync"
	ReplicaOutOfSync = "out-of-sync"
)

// InSync reports whether the replica is in the volume's in-sync set.
func (r Replica) InSync() bool { return r.State == "" || r.State == ReplicaInSync }

// Placement is where a volume may be created (pxctl's --nodes, --zones,
// --racks): each list, when not empty, is a set of allowed values.
type Placement struct {
	Nodes []string `json:"nodes,omitempty"`
	Zones []string `json:"zones,omitempty"`
	Racks []string `json:"racks,omitempty"`
}

// Node is the node that holds the volume's data ("" for a damaged spec).
func (v VolumeSpec) Node() string {
	if len(v.Replicas) == 0 {
		return ""
	}
	return v.Replicas[0].Node
}

// HasReplica reports whether node holds one of the volume's replicas.
func (v VolumeSpec) HasReplica(node string) bool {
	for _, r := range v.Replicas {
		if r.Node == node {
			return true
		}
	}
	return false
}

// CreateVolume records spec under its name and returns it with its
// revision. The transaction requires the name to be unused: of concurrent
// creates of one name, from any nodes, exactly one succeeds and the others
// get ErrExists.
func (s *Store) CreateVolume(ctx context.Context, spec VolumeSpec) (VolumeSpec, error) {
	if err := validateName("volume", spec.Name); err != nil {
		return spec, err
	}
	key := s.prefix + "volumes/" + spec.Name
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	now, err := s.cli.Get(cctx, key, clientv3.WithCountOnly())
	if err != nil {
		return spec, s.unavailable(err)
	}
	spec.Epoch = max(spec.Epoch, uint64(now.Header.Revision))
	val, err := json.Marshal(spec)
	if err != nil {
		return spec, err
	}
	resp, err := s.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).Commit()
	if err != nil {
		return spec, s.unavailable(err)
	}
	if !resp.Succeeded {
		return spec, errorf(ErrExists, "volume %q already exists in cluster %q", spec.Name, s.identity.Name)
	}
	spec.Rev = resp.Header.Revision
	return spec, nil
}

// UpdateVolume replaces the spec of spec.Name if it is still at spec.Rev
// (ErrConflict otherwise) and returns it with its new revision.
func (s *Store) UpdateVolume(ctx context.Context, spec VolumeSpec) (VolumeSpec, error) {
	if err := validateName("volume", spec.Name); err != nil {
		return spec, err
	}
	val, err := json.Marshal(spec)
	if err != nil {
		return spec, err
	}
	key := s.prefix + "volumes/" + spec.Name
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", spec.Rev)).
		Then(clientv3.OpPut(key, string(val))).Commit()
	if err != nil {
		return spec, s.unavailable(err)
	}
	if !resp.Succeeded {
		return spec, errorf(ErrConflict, "volume %q changed in the cluster while this change was made; retry", spec.Name)
	}
	spec.Rev = resp.Header.Revision
	return spec, nil
}

// ModifyVolume reads volume name's spec, lets change edit it, and writes it
// back if nobody changed it meanwhile, retrying a few times on a conflict.
// conds are more comparisons the write requires (a node's lease). change
// may be called more than once; an error from it is returned as is.
func (s *Store) ModifyVolume(ctx context.Context, name string, change func(*VolumeSpec) error, conds ...clientv3.Cmp) (VolumeSpec, error) {
	for try := 0; ; try++ {
		sp, err := s.Volume(ctx, name)
		if err != nil {
			return sp, err
		}
		if err := change(&sp); err != nil {
			return sp, err
		}
		val, err := json.Marshal(sp)
		if err != nil {
			return sp, err
		}
		key := s.prefix + "volumes/" + name
		cctx, cancel := context.WithTimeout(ctx, CallTimeout)
		resp, err := s.cli.Txn(cctx).
			If(append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", sp.Rev)}, conds...)...).
			Then(clientv3.OpPut(key, string(val))).
			Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
		cancel()
		if err != nil {
			return sp, s.unavailable(err)
		}
		if resp.Succeeded {
			sp.Rev = resp.Header.Revision
			return sp, nil
		}
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 && kvs[0].ModRevision == sp.Rev {
			// The spec is as read: one of conds failed.
			return sp, errorf(ErrConflict, "volume %q: this node's lease in the cluster changed or expired; the change was not made", name)
		}
		if try == 4 {
			return sp, errorf(ErrConflict, "volume %q keeps changing in the cluster; retry", name)
		}
	}
}

// Volume returns the spec of volume name.
func (s *Store) Volume(ctx context.Context, name string) (VolumeSpec, error) {
	if err := validateName("volume", name); err != nil {
		return VolumeSpec{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Get(cctx, s.prefix+"volumes/"+name)
	if err != nil {
		return VolumeSpec{}, s.unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return VolumeSpec{}, errorf(ErrNotFound, "volume %q not found in cluster %q", name, s.identity.Name)
	}
	var spec VolumeSpec
	if err := json.Unmarshal(resp.Kvs[0].Value, &spec); err != nil {
		return VolumeSpec{}, fmt.Errorf("cluster: volume %q: damaged spec: %v", name, err)
	}
	spec.Name, spec.Rev = name, resp.Kvs[0].ModRevision
	return spec, nil
}

// Volumes returns every volume spec, by name. A damaged spec is skipped
// rather than hiding the others.
func (s *Store) Volumes(ctx context.Context) ([]VolumeSpec, error) {
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	resp, err := s.cli.Get(cctx, s.prefix+"volumes/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, s.unavailable(err)
	}
	specs := make([]VolumeSpec, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var spec VolumeSpec
		if json.Unmarshal(kv.Value, &spec) == nil {
			spec.Name, spec.Rev = strings.TrimPrefix(string(kv.Key), s.prefix+"volumes/"), kv.ModRevision
			specs = append(specs, spec)
		}
	}
	return specs, nil
}

// DeleteVolume removes the spec of volume name; rev, when not 0, must be
// the revision it is at (ErrConflict otherwise).
func (s *Store) DeleteVolume(ctx context.Context, name string, rev int64) error {
	if err := validateName("volume", name); err != nil {
		return err
	}
	key := s.prefix + "volumes/" + name
	cctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	cmp := clientv3.Compare(clientv3.CreateRevision(key), "!=", 0)
	if rev != 0 {
		cmp = clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	}
	resp, err := s.cli.Txn(cctx).If(cmp).Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return s.unavailable(err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return errorf(ErrNotFound, "volume %q not found in cluster %q", name, s.identity.Name)
		}
		return errorf(ErrConflict, "volume %q changed in the cluster while it was being removed; retry", name)
	}
	return nil
}

// deleteSpecs removes the specs given, each only at the revision it was
// read at: a spec changed meanwhile (the volume recreated elsewhere) is left.
func (s *Store) deleteSpecs(ctx context.Context, specs []VolumeSpec) error {
	for _, sp := range specs {
		key := s.prefix + "volumes/" + sp.Name
		cctx, cancel := context.WithTimeout(ctx, CallTimeout)
		_, err := s.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", sp.Rev)).Then(clientv3.OpDelete(key)).Commit()
		cancel()
		if err != nil {
			return s.unavailable(err)
		}
	}
	return nil
}
