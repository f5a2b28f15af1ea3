package control

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/cairn-storage/cairn/engine"
)

// nodeFile holds the node's identity and its drive set in the data directory.
const nodeFile = "node.json"

// DefaultCluster is the cluster name when none was ever given with -c.
const DefaultCluster = "cairn"

// Node is the daemon's persisted identity: the node id (generated once, so
// the engine recognises its own drives after a restart), the cluster name and
// the drives the node owns. Drives are remembered so that a restart without
// -s flags (or after `cairn service drive add`) opens the same drives again,
// as Portworx keeps its drive set in its config.
type Node struct {
	path string

	mu    sync.Mutex // protects state and the file at path
	state nodeState
}

type nodeState struct {
	NodeID  string `json:"node_id"`
	Cluster string `json:"cluster"`
	// ClusterUUID is the identity of the cluster the node joined (empty
	// for a data directory of a single-node release, which joins the
	// cluster -c names on its first start with a kvdb).
	ClusterUUID string        `json:"cluster_uuid,omitempty"`
	Drives      []storedDrive `json:"drives"`
	// VolumesRegistered: the volumes on the node's drives were entered in
	// the cluster (once, by the first start of a release that keeps
	// volumes in etcd; Server.Reconcile). Absent in data directories of
	// earlier releases.
	VolumesRegistered bool `json:"volumes_registered,omitempty"`
}

// storedDrive deliberately has no Force: once the engine has formatted a
// drive it carries our superblock, and forcing again must be the operator's
// explicit choice on that start.
type storedDrive struct {
	Path       string `json:"path"`
	IOPriority string `json:"io_priority,omitempty"`
}

// OpenNode loads the node state from dataDir, creating it (with a fresh node
// id) on first start. A non-empty cluster replaces the stored name, unless
// the node has joined a cluster (its UUID is recorded): a node belongs to
// one cluster, and a different -c is refused rather than mixing two.
func OpenNode(dataDir, cluster string) (*Node, error) {
	n := &Node{path: filepath.Join(dataDir, nodeFile)}
	buf, err := os.ReadFile(n.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		id, err := newNodeID()
		if err != nil {
			return nil, err
		}
		n.state = nodeState{NodeID: id, Cluster: DefaultCluster}
	case err != nil:
		return nil, fmt.Errorf("control: read node state: %w", err)
	default:
		if err := json.Unmarshal(buf, &n.state); err != nil {
			return nil, fmt.Errorf("control: node state %s is damaged: %w", n.path, err)
		}
		if n.state.NodeID == "" {
			return nil, fmt.Errorf("control: node state %s has no node id", n.path)
		}
	}
	if cluster != "" && cluster != n.state.Cluster && n.state.ClusterUUID != "" {
		return nil, fmt.Errorf("control: this node (data dir %s) belongs to cluster %q (uuid %s); it cannot join cluster %q: start it with -c %s, or give the new node a fresh data dir",
			dataDir, n.state.Cluster, n.state.ClusterUUID, cluster, n.state.Cluster)
	}
	if cluster != "" {
		n.state.Cluster = cluster
	}
	if err := n.saveLocked(); err != nil {
		return nil, err
	}
	return n, nil
}

// newNodeID returns a random UUID (version 4).
func newNodeID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("control: node id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

func (n *Node) ID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state.NodeID
}

func (n *Node) Cluster() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state.Cluster
}

// ClusterUUID is the UUID of the cluster the node joined, "" before it
// joined one.
func (n *Node) ClusterUUID() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state.ClusterUUID
}

// JoinCluster records that the node is a member of the cluster with uuid.
// A node that was a member of another cluster of the same name (a kvdb
// wiped, or another cluster's) is refused: its volumes and node id belong
// to the cluster it came from.
func (n *Node) JoinCluster(uuid string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state.ClusterUUID == uuid {
		return nil
	}
	if n.state.ClusterUUID != "" {
		return fmt.Errorf("control: this node is a member of cluster %q with uuid %s, but the kvdb holds cluster %q with uuid %s (a new kvdb, or another cluster of that name); refusing to join it",
			n.state.Cluster, n.state.ClusterUUID, n.state.Cluster, uuid)
	}
	n.state.ClusterUUID = uuid
	return n.saveLocked()
}

// VolumesRegistered reports whether the node's volumes were entered in
// the cluster (see nodeState).
func (n *Node) VolumesRegistered() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state.VolumesRegistered
}

// MarkVolumesRegistered records, durably, that the node's volumes were
// entered in the cluster: later starts report a volume the cluster does not
// know instead of registering it.
func (n *Node) MarkVolumesRegistered() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.state.VolumesRegistered {
		return nil
	}
	n.state.VolumesRegistered = true
	return n.saveLocked()
}

// Drives returns the remembered drives, in the order they were added.
func (n *Node) Drives() []engine.DriveSpec {
	n.mu.Lock()
	defer n.mu.Unlock()
	specs := make([]engine.DriveSpec, 0, len(n.state.Drives))
	for _, d := range n.state.Drives {
		specs = append(specs, engine.DriveSpec{Path: d.Path, IOPriority: engine.IOPriority(d.IOPriority)})
	}
	return specs
}

// RememberDrives adds drives (by path; known paths are left alone) and
// persists the node state before returning.
func (n *Node) RememberDrives(specs ...engine.DriveSpec) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	known := make(map[string]bool, len(n.state.Drives))
	for _, d := range n.state.Drives {
		known[d.Path] = true
	}
	for _, s := range specs {
		if !known[s.Path] {
			known[s.Path] = true
			n.state.Drives = append(n.state.Drives, storedDrive{Path: s.Path, IOPriority: string(s.IOPriority)})
		}
	}
	return n.saveLocked()
}

// saveLocked publishes the state (internal/atomicfile), so a crash leaves
// either the old or the new file, never a torn one.
// REQUIRES: n.mu held (or n not yet shared).
func (n *Node) saveLocked() error {
	if err := writeJSON(n.path, n.state); err != nil {
		return fmt.Errorf("control: save node state: %w", err)
	}
	return nil
}
