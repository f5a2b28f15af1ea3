package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/control"
	"github.com/cairn-storage/cairn/engine"
)

// Defaults of the embedded kvdb (cairn daemon without -k).
const (
	defaultKvdbListen = "127.0.0.1:9019"
	defaultKvdbPeer   = "127.0.0.1:9018"
	// kvdbDirName is the embedded etcd's data, in DATA_DIR.
	kvdbDirName = "kvdb"
	// defaultTopology is the zone and rack of a node not given --zone/--rack.
	defaultTopology = "default"
)

// clusterRun is the daemon's part of the cluster: the embedded etcd (when
// it runs one), the etcd client, the cluster store and, once registered,
// the node's membership.
type clusterRun struct {
	embedded *cluster.Embedded // nil with -k
	cli      *clientv3.Client
	store    *cluster.Store
	member   *cluster.Member
	log      *slog.Logger
}

// joinCluster starts the embedded kvdb (no -k) or uses the external one,
// and joins the node's cluster: the cluster's identity is created by its
// first node and recorded in node.json, so that a node never mixes two
// clusters. Connections to etcd leave from mgmtIP.
func joinCluster(ctx context.Context, cfg daemonConfig, node *control.Node, dataDir, mgmtIP string, log *slog.Logger) (_ *clusterRun, err error) {
	c := &clusterRun{log: log}
	defer func() {
		if err != nil {
			c.close() // what was started so far
		}
	}()
	var endpoints []string
	if cfg.kvdb != "" {
		if endpoints, err = cluster.ParseEndpoints(cfg.kvdb); err != nil {
			return nil, fmt.Errorf("-k: %s", control.Message(err))
		}
	} else {
		dir := filepath.Join(dataDir, kvdbDirName)
		began := time.Now()
		c.embedded, err = cluster.StartEmbedded(ctx, cluster.EmbeddedConfig{Name: node.ID(), Dir: dir, ClientAddr: cfg.kvdbListen, PeerAddr: cfg.kvdbPeer})
		if err != nil {
			return nil, err
		}
		endpoints = c.embedded.Endpoints()
		log.Info("kvdb listening", "addr", c.embedded.ClientAddr(), "dir", dir, "start_ms", time.Since(began).Milliseconds())
		go func() {
			if err, ok := <-c.embedded.Err(); ok && err != nil {
				// Served volumes go on without it; cluster operations
				// report the kvdb unavailable.
				log.Error("embedded kvdb failed", "err", err)
			}
		}()
	}
	if c.cli, err = cluster.Connect(ctx, endpoints, mgmtIP); err != nil {
		return nil, err
	}
	if c.store, err = cluster.Join(ctx, c.cli, endpoints, node.Cluster(), cluster.JoinOptions{Embedded: c.embedded != nil}); err != nil {
		return nil, err
	}
	if err := node.JoinCluster(c.store.Identity().UUID); err != nil {
		return nil, err
	}
	return c, nil
}

// register makes the node a live member of the cluster, its record drawn
// from the running engine at every heartbeat.
func (c *clusterRun) register(ctx context.Context, cfg daemonConfig, node *control.Node, eng *engine.Engine, mgmtAddr, dataAddr, replAddr string) error {
	hostname, err := os.Hostname()
	if err != nil {
		hostname = "unknown"
	}
	started := time.Now().UTC()
	version := buildVersion()
	record := func() cluster.NodeRecord {
		st := eng.Status()
		pools := make([]cluster.PoolSummary, 0, len(st.Pools))
		for _, p := range st.Pools {
			pools = append(pools, cluster.PoolSummary{ID: p.ID, IOPriority: string(p.IOPriority), Size: p.Size, Used: p.Used, Status: p.Status})
		}
		var vols []string
		for _, v := range eng.Volumes() {
			if !v.Snapshot { // a snapshot goes with its volume
				vols = append(vols, v.Name)
			}
		}
		sort.Strings(vols)
		count := len(vols)
		if len(vols) > cluster.MaxRecordVolumes {
			vols = vols[:cluster.MaxRecordVolumes]
		}
		return cluster.NodeRecord{ID: node.ID(), Hostname: hostname, MgmtAddr: mgmtAddr, DataAddr: dataAddr, ReplAddr: replAddr, Zone: cfg.zone, Rack: cfg.rack,
			Version: version, Pools: pools, Started: started, Volumes: vols, VolumeCount: count}
	}
	clock := time.Now
	if cfg.clockOffset != 0 {
		clock = func() time.Time { return time.Now().Add(cfg.clockOffset) }
	}
	m, err := c.store.Register(ctx, cluster.MemberConfig{Record: record, Clock: clock, Log: c.log})
	if err != nil {
		return err
	}
	c.member = m
	return nil
}

// close leaves the cluster: the lease is revoked (the node shows Offline
// at once), then the client and the embedded kvdb are closed.
// Idempotent: the daemon calls it in its shutdown sequence and again,
// deferred, on every error path.
func (c *clusterRun) close() {
	if c.member != nil {
		c.member.Stop()
		c.member = nil
	}
	if c.cli != nil {
		c.cli.Close()
		c.cli = nil
	}
	if c.embedded != nil {
		c.embedded.Close()
		c.embedded = nil
	}
}

// serverConfig is what the API server needs of the cluster.
func (c *clusterRun) serverConfig(mgmtAddr, localIP string) control.ClusterConfig {
	return control.ClusterConfig{Member: c.member, Embedded: c.embedded != nil, MgmtAddr: mgmtAddr, LocalIP: localIP}
}

// cloudsnapStore is where credentials live: the cluster's store.
func (c *clusterRun) cloudsnapStore() *cluster.Store { return c.store }

// hostOf returns the IP of a host:port listen address ("" when the host is
// not an IP): the address the node's outgoing connections leave from.
func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || net.ParseIP(host) == nil {
		return ""
	}
	return host
}

// buildVersion names the binary: its module version, or the VCS revision
// of a source build ("devel+1a2b3c4d5e6f", "-dirty" when modified).
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "devel"
	}
	return "devel+" + rev + dirty
}

// errKvdbFlags: --kvdb-listen and --kvdb-peer configure the embedded kvdb,
// which -k replaces.
var errKvdbFlags = errors.New("daemon: --kvdb-listen and --kvdb-peer configure the embedded kvdb; with -k (an external etcd) none is started: drop them")
