package control

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/cairn-storage/cairn/cluster"
)

// ClusterNode is the JSON shape of a node in `cluster list` and `cluster
// inspect`. Size and used add up the node's pools as it last reported them.
type ClusterNode struct {
	ID       string        `json:"id"`
	Hostname string        `json:"hostname"`
	MgmtAddr string        `json:"mgmt_addr"`
	DataAddr string        `json:"data_addr"`
	Zone     string        `json:"zone"`
	Rack     string        `json:"rack"`
	Status   string        `json:"status"` // "Online" or "Offline"
	Version  string        `json:"version"`
	Size     int64         `json:"size"`
	Used     int64         `json:"used"`
	Pools    []ClusterPool `json:"pools"`
	Started  string        `json:"started"` // RFC 3339, when the node last registered
	// Clock is the node's clock in its last heartbeat (RFC 3339), "" when
	// Offline. ClockOffsetMS is that clock minus the answering node's, as
	// measured when the heartbeat arrived; ClockSkew flags a clock more
	// than 1 s from the others' (cluster.MaxClockSkew).
	Clock         string `json:"clock"`
	ClockOffsetMS int64  `json:"clock_offset_ms"`
	ClockSkew     bool   `json:"clock_skew"`
	// ThisNode marks the node that answered.
	ThisNode bool `json:"this_node"`
	// Volumes names the volumes on the node (at most 256; VolumeCount
	// counts them all), as it last reported them.
	Volumes     []string `json:"volumes"`
	VolumeCount int      `json:"volume_count"`
}

// DeletedNode is the reply to `cluster delete`.
type DeletedNode struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	// LostVolumes are the volumes that lived on the node (forced delete),
	// removed from the cluster's view with it.
	LostVolumes []string `json:"lost_volumes"`
	LostCount   int      `json:"lost_count"`
}

// ClusterPool is one pool of a node, as the cluster sees it.
type ClusterPool struct {
	ID         int    `json:"id"`
	IOPriority string `json:"io_priority"`
	Size       int64  `json:"size"`
	Used       int64  `json:"used"`
	Status     string `json:"status"`
}

// ClusterSummary is the cluster part of `cairn status`.
type ClusterSummary struct {
	UUID        string `json:"uuid"`
	NodesOnline int    `json:"nodes_online"`
	NodesTotal  int    `json:"nodes_total"`
	Kvdb        Kvdb   `json:"kvdb"`
	// ClockSkew lists the nodes whose clock is more than 1 s from the others'.
	ClockSkew []string `json:"clock_skew"`
	// Nodes are the cluster's nodes (as `cluster list`), for the table
	// pxctl status prints; empty while the kvdb is unavailable.
	Nodes []ClusterNode `json:"nodes"`
	// UnregisteredVolumes and MissingVolumes are what this node's last
	// reconciliation left to the operator (Server.Reconcile): volumes on
	// its drives the cluster does not have as its own, and volumes the
	// cluster places on it that its drives lack.
	UnregisteredVolumes []UnregisteredVolume `json:"unregistered_volumes"`
	MissingVolumes      []string             `json:"missing_volumes"`
}

// Kvdb is the state of the cluster's etcd as this node sees it.
type Kvdb struct {
	Endpoints []string `json:"endpoints"`
	Embedded  bool     `json:"embedded"` // this node runs it (no -k)
	Healthy   bool     `json:"healthy"`  // it answered a quorum read just now
	Error     string   `json:"error"`    // why not, when not healthy
}

// ClusterConfig is what the server knows of the cluster (SetCluster).
type ClusterConfig struct {
	Member   *cluster.Member
	Embedded bool
	// MgmtAddr is this node's management API address as other nodes
	// reach it; LocalIP the address its connections to them leave from.
	MgmtAddr string
	LocalIP  string
}

// SetCluster serves the cluster routes and the cluster summary in status.
// Safe to call while the server serves (the node registers once its
// listeners are up); until then the cluster routes answer "kvdb unavailable".
func (s *Server) SetCluster(cfg ClusterConfig) { s.cluster.Store(&cfg) }

// member is the node's cluster membership, nil before SetCluster.
func (s *Server) member() *cluster.Member {
	if cfg := s.cluster.Load(); cfg != nil {
		return cfg.Member
	}
	return nil
}

func (s *Server) clusterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/cluster/nodes", s.listNodes)
	mux.HandleFunc("GET /v1/cluster/nodes/{node}", s.getNode)
	mux.HandleFunc("DELETE /v1/cluster/nodes/{node}", s.deleteNode)
}

// errNoCluster: a server without a cluster (only in unit tests).
var errNoCluster = fmt.Errorf("%w: this node has not joined its cluster yet", cluster.ErrUnavailable)

func (s *Server) nodes(ctx context.Context) ([]ClusterNode, error) {
	m := s.member()
	if m == nil {
		return nil, errNoCluster
	}
	nodes, err := m.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]ClusterNode, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, nodeFromCluster(n, m.ID()))
	}
	return out, nil
}

func nodeFromCluster(n cluster.Node, self string) ClusterNode {
	c := ClusterNode{ID: n.ID, Hostname: n.Hostname, MgmtAddr: n.MgmtAddr, DataAddr: n.DataAddr, Zone: n.Zone, Rack: n.Rack,
		Status: n.Status, Version: n.Version, Pools: []ClusterPool{}, ClockSkew: n.ClockSkew, ThisNode: n.ID == self,
		ClockOffsetMS: n.ClockOffset.Milliseconds(), Volumes: append([]string{}, n.Volumes...), VolumeCount: n.VolumeCount}
	if !n.Started.IsZero() {
		c.Started = n.Started.UTC().Format(time.RFC3339)
	}
	if !n.Clock.IsZero() {
		c.Clock = n.Clock.UTC().Format(time.RFC3339Nano)
	}
	for _, p := range n.Pools {
		c.Pools = append(c.Pools, ClusterPool(p))
		c.Size += p.Size
		c.Used += p.Used
	}
	return c
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	nodes, err := s.nodes(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, nodes)
}

// getNode answers GET /v1/cluster/nodes/{node}.
func (s *Server) getNode(w http.ResponseWriter, r *http.Request) {
	n, err := s.findNode(r.Context(), r.PathValue("node"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	reply(w, http.StatusOK, n)
}

// findNode resolves a node reference: a node id, or a hostname or
// management address that only one node has.
func (s *Server) findNode(ctx context.Context, ref string) (ClusterNode, error) {
	nodes, err := s.nodes(ctx)
	if err != nil {
		return ClusterNode{}, err
	}
	var match []ClusterNode
	for _, n := range nodes {
		if n.ID == ref {
			return n, nil
		}
		if n.Hostname == ref || n.MgmtAddr == ref {
			match = append(match, n)
		}
	}
	switch len(match) {
	case 0:
		return ClusterNode{}, fmt.Errorf("%w: node %q is not in cluster %q (cairn cluster list shows its nodes)", cluster.ErrNotFound, ref, s.node.Cluster())
	case 1:
		return match[0], nil
	default:
		ids := make([]string, 0, len(match))
		for _, n := range match {
			ids = append(ids, n.ID)
		}
		return ClusterNode{}, invalidf("%d nodes are %q: name one by id (%s)", len(match), ref, strings.Join(ids, ", "))
	}
}

// deleteNode answers DELETE /v1/cluster/nodes/{node}[?force=true]: an
// Offline node leaves the cluster for good (cluster.Store.DeleteNode says
// what is refused).
func (s *Server) deleteNode(w http.ResponseWriter, r *http.Request) {
	force, err := forceParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	n, err := s.findNode(r.Context(), r.PathValue("node"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	rec, err := s.member().Store().DeleteNode(r.Context(), n.ID, force)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.log.Warn("node deleted from the cluster", "node", rec.ID, "hostname", rec.Hostname, "lost_volumes", rec.VolumeCount)
	reply(w, http.StatusOK, DeletedNode{ID: rec.ID, Hostname: rec.Hostname, LostVolumes: append([]string{}, rec.Volumes...), LostCount: rec.VolumeCount})
}

// clusterSummary is status's cluster part; nil without a cluster. The
// kvdb is asked once, under cluster.CallTimeout: status answers within
// that even when etcd is down, and says so.
func (s *Server) clusterSummary(ctx context.Context) *ClusterSummary {
	cfg := s.cluster.Load()
	if cfg == nil || cfg.Member == nil {
		return nil
	}
	m := cfg.Member
	st := m.Store()
	sum := &ClusterSummary{UUID: st.Identity().UUID, Kvdb: Kvdb{Endpoints: st.Endpoints(), Embedded: cfg.Embedded}, ClockSkew: []string{}, Nodes: []ClusterNode{},
		UnregisteredVolumes: []UnregisteredVolume{}, MissingVolumes: []string{}}
	if rep := s.recon.Load(); rep != nil {
		sum.UnregisteredVolumes, sum.MissingVolumes = rep.Unregistered, rep.Missing
	}
	nodes, err := m.Nodes(ctx)
	if err != nil {
		sum.Kvdb.Error = plain(err)
		return sum
	}
	sum.Kvdb.Healthy = true
	sum.NodesTotal = len(nodes)
	for _, n := range nodes {
		if n.Status == cluster.StatusOnline {
			sum.NodesOnline++
		}
		if n.ClockSkew {
			sum.ClockSkew = append(sum.ClockSkew, n.ID)
		}
		sum.Nodes = append(sum.Nodes, nodeFromCluster(n, m.ID()))
	}
	return sum
}
