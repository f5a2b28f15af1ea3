package main

// Cluster tests against real daemons and a real etcd: the first daemon runs
// the embedded kvdb, the others join it with -k, each on its own loopback
// address (127.0.0.1, .2, .3) with its own ports and data directory. Every
// daemon is killed in t.Cleanup, and the kvdb with the daemon that runs it.

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

// offlineWithin is the promise: a dead node is Offline within 15 s.
const offlineWithin = 15 * time.Second

// kvdbAddr is the embedded kvdb's client address from the daemon's log.
func (d *testDaemon) kvdbAddr(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`msg="kvdb listening" addr=(\S+)`).FindStringSubmatch(d.log())
	if m == nil {
		t.Fatalf("daemon on %s logged no kvdb address", d.dataDir)
	}
	return m[1]
}

// clusterNode is the part of `cluster list -j` the tests read.
type clusterNode struct {
	ID        string `json:"id"`
	Hostname  string `json:"hostname"`
	MgmtAddr  string `json:"mgmt_addr"`
	DataAddr  string `json:"data_addr"`
	Zone      string `json:"zone"`
	Rack      string `json:"rack"`
	Status    string `json:"status"`
	Size      int64  `json:"size"`
	ClockSkew bool   `json:"clock_skew"`
	OffsetMS  int64  `json:"clock_offset_ms"`
	ThisNode  bool   `json:"this_node"`
}

func clusterList(t *testing.T, host string) map[string]clusterNode {
	t.Helper()
	var nodes []clusterNode
	out := mustCairn(t, host, "cluster", "list", "-j")
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("cluster list -j: %v\n%s", err, out)
	}
	byID := map[string]clusterNode{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	return byID
}

// waitStatus polls `cluster list` on host until node id has status want,
// failing after limit.
func waitStatus(t *testing.T, host, id, want string, since time.Time, limit time.Duration) {
	t.Helper()
	for {
		got := clusterList(t, host)[id].Status
		if got == want {
			t.Logf("node %s %s on %s after %v", id, want, host, time.Since(since).Round(100*time.Millisecond))
			return
		}
		if time.Since(since) > limit {
			t.Fatalf("node %s is %q on %s %v after the change, want %s", id, got, host, limit, want)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// threeNodes starts node 1 (embedded kvdb) on 127.0.0.1 and nodes 2 and 3
// joining it on 127.0.0.2 and .3; extra3 goes to node 3 only.
func threeNodes(t *testing.T, extra3 ...string) (ds [3]*testDaemon, args [3][]string) {
	t.Helper()
	ds[0] = startDaemon(t, t.TempDir(), "--zone", "z1", "--rack", "r1")
	kvdb := "etcd://" + ds[0].kvdbAddr(t)
	for i := 1; i < 3; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		args[i] = []string{"--api", ip + ":0", "--nbd", ip + ":0", "--repl-listen", ip + ":0", "-k", kvdb, "--zone", fmt.Sprintf("z%d", i+1), "--rack", fmt.Sprintf("r%d", i+1)}
		if i == 2 {
			args[i] = append(args[i], extra3...)
		}
		ds[i] = startDaemon(t, t.TempDir(), args[i]...)
	}
	return ds, args
}

func TestClusterThreeNodes(t *testing.T) {
	t.Parallel() // own addresses, ports and data dirs; overlaps the waits of the other cluster tests
	ds, args := threeNodes(t, "--clock-offset", "5s")
	ids := make([]string, 3)
	for i, d := range ds {
		ids[i] = nodeID(t, d.api)
	}

	// Every node sees all three Online, with their own addresses, zone and rack.
	for i, d := range ds {
		nodes := clusterList(t, d.api)
		if len(nodes) != 3 {
			t.Fatalf("cluster list on node %d: %d nodes, want 3: %+v", i+1, len(nodes), nodes)
		}
		for j, id := range ids {
			n := nodes[id]
			ip := fmt.Sprintf("127.0.0.%d", j+1)
			if n.Status != "Online" || !strings.HasPrefix(n.MgmtAddr, ip+":") || !strings.HasPrefix(n.DataAddr, ip+":") ||
				n.Zone != fmt.Sprintf("z%d", j+1) || n.Rack != fmt.Sprintf("r%d", j+1) || n.Size == 0 || n.ThisNode != (i == j) {
				t.Errorf("cluster list on node %d: node %d is %+v", i+1, j+1, n)
			}
		}
		table := mustCairn(t, d.api, "cluster", "list")
		if c := strings.Count(table, " Online "); c != 3 {
			t.Errorf("cluster list table on node %d shows %d Online, want 3:\n%s", i+1, c, table)
		}
	}
	list := mustCairn(t, ds[0].api, "cluster", "list", "-j")
	jq(t, list, `all(.[]; has("id") and has("hostname") and has("mgmt_addr") and has("data_addr") and has("zone") and has("rack") and has("status"))`)

	// status: cluster stays the name (a string); the summary agrees on every node.
	var uuid string
	for i, d := range ds {
		st := mustCairn(t, d.api, "status", "-j")
		checkKeys(t, st)
		jq(t, st, `.cluster == "cairn" and .status == "operational"`)
		jq(t, st, `.cluster_summary.nodes_online == 3 and .cluster_summary.nodes_total == 3 and .cluster_summary.kvdb.healthy == true`)
		jq(t, st, `(.cluster_summary.nodes | length) == 3 and ([.cluster_summary.nodes[] | select(.this_node)] | length) == 1`)
		jq(t, st, fmt.Sprintf(`.cluster_summary.kvdb.endpoints == ["http://%s"] and .cluster_summary.kvdb.embedded == %v`, ds[0].kvdbAddr(t), i == 0))
		u := jq(t, st, `.cluster_summary.uuid`)
		if i == 0 {
			uuid = u
		} else if u != uuid {
			t.Errorf("node %d says cluster uuid %s, node 1 %s", i+1, u, uuid)
		}
		human := mustCairn(t, d.api, "status")
		for _, want := range []string{"Cluster Summary", "Cluster UUID: " + uuid, "Nodes: 3 online of 3", "healthy", ids[i] + " (this node)"} {
			if !strings.Contains(human, want) {
				t.Errorf("status on node %d does not say %q:\n%s", i+1, want, human)
			}
		}
	}

	// Node 3's clock is 5 s ahead: every node flags it, and only it.
	deadline := time.Now().Add(20 * time.Second)
	for _, d := range ds {
		for {
			nodes := clusterList(t, d.api)
			if nodes[ids[2]].ClockSkew {
				// Offsets are from the observer's clock: node 3's is 5 s
				// from node 1's wherever it is measured.
				if nodes[ids[0]].ClockSkew || nodes[ids[1]].ClockSkew || nodes[ids[2]].OffsetMS-nodes[ids[0]].OffsetMS < 4000 {
					t.Errorf("clock flags on %s: %+v", d.api, nodes)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node 3's clock (5 s ahead) not flagged on %s: %+v", d.api, nodes)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	jq(t, mustCairn(t, ds[0].api, "status", "-j"), fmt.Sprintf(`.cluster_summary.clock_skew == [%q]`, ids[2]))

	// inspect: by id from another node, with its pools; by a hostname all
	// three share (one machine): refused, naming the ids; unknown: refused.
	in := mustCairn(t, ds[0].api, "cluster", "inspect", ids[1], "-j")
	jq(t, in, fmt.Sprintf(`.id == %q and .status == "Online" and .zone == "z2" and (.pools | length) == 1 and .pools[0].size > 0`, ids[1]))
	human := mustCairn(t, ds[0].api, "cluster", "inspect", ids[1])
	for _, want := range []string{ids[1], "Online", "z2", "r2", "Pools: 1", "LOW"} {
		if !strings.Contains(human, want) {
			t.Errorf("cluster inspect does not say %q:\n%s", want, human)
		}
	}
	mgmt := jq(t, in, `.mgmt_addr`)
	jq(t, mustCairn(t, ds[2].api, "cluster", "inspect", mgmt, "-j"), fmt.Sprintf(`.id == %q`, ids[1]))
	hostname := jq(t, in, `.hostname`)
	mustFail(t, ds[0].api, "name one by id", "cluster", "inspect", hostname)
	mustFail(t, ds[0].api, `node "no-such-node" is not in cluster "cairn"`, "cluster", "inspect", "no-such-node")
	mustFail(t, ds[0].api, "accepts 1 arg", "cluster", "inspect")
	mustFail(t, ds[0].api, `unknown command "nope"`, "cluster", "nope")

	// The single-node volume API is unchanged on a joined node.
	mustCairn(t, ds[1].api, "volume", "create", "v2", "--size", "1G")
	jq(t, mustCairn(t, ds[1].api, "volume", "list", "-j"), `length == 1 and .[0].name == "v2"`)

	// SIGKILL node 3: Offline within 15 s on the others; restarted: Online.
	ds[2].cmd.Process.Kill()
	<-ds[2].exited
	killed := time.Now()
	waitStatus(t, ds[0].api, ids[2], "Offline", killed, offlineWithin)
	waitStatus(t, ds[1].api, ids[2], "Offline", killed, offlineWithin)
	jq(t, mustCairn(t, ds[1].api, "status", "-j"), `.cluster_summary.nodes_online == 2 and .cluster_summary.nodes_total == 3`)
	ds[2] = startDaemon(t, ds[2].dataDir, args[2]...)
	if id := nodeID(t, ds[2].api); id != ids[2] {
		t.Fatalf("node 3 came back as %s, want %s", id, ids[2])
	}
	back := time.Now()
	waitStatus(t, ds[0].api, ids[2], "Online", back, offlineWithin)
	waitStatus(t, ds[1].api, ids[2], "Online", back, offlineWithin)

	// SIGTERM: the node revokes its lease and is Offline at once.
	if code := ds[1].stop(t); code != 0 {
		t.Fatalf("node 2 exit code %d", code)
	}
	if got := clusterList(t, ds[0].api)[ids[1]].Status; got != "Offline" {
		t.Errorf("node 2 stopped cleanly is %q, want Offline at once", got)
	}
	// Restarted with the same data dir, it is the same node, Online.
	ds[1] = startDaemon(t, ds[1].dataDir, args[1]...)
	if got := clusterList(t, ds[0].api)[ids[1]].Status; got != "Online" {
		t.Errorf("node 2 restarted is %q, want Online", got)
	}
	jq(t, mustCairn(t, ds[1].api, "volume", "list", "-j"), `length == 1 and .[0].name == "v2"`)
}

// Joining is refused, with the reason, when it would mix clusters or
// cannot reach the kvdb; nothing hangs.
func TestClusterJoinRefusals(t *testing.T) {
	t.Parallel() // own addresses, ports and data dirs; overlaps the waits of the other cluster tests
	d1 := startDaemon(t, t.TempDir(), "-c", "alpha")
	kvdb := "etcd://" + d1.kvdbAddr(t)
	dead := freeAPIAddr(t) // nothing listens there

	joined := t.TempDir()
	d2 := startDaemon(t, joined, "--api", "127.0.0.2:0", "--nbd", "127.0.0.2:0", "-k", kvdb, "-c", "alpha")
	if code := d2.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	for _, tc := range []struct {
		want    string
		dataDir string
		args    []string
	}{
		{`is the embedded kvdb of cluster "alpha"; this node is of cluster "beta"`, t.TempDir(), []string{"-k", kvdb, "-c", "beta"}},
		{`belongs to cluster "alpha"`, joined, []string{"-k", kvdb, "-c", "beta"}},
		{"kvdb unavailable (http://" + dead + ")", t.TempDir(), []string{"-k", "etcd://" + dead}},
		{"want etcd://HOST:PORT", t.TempDir(), []string{"-k", "etcd://no-port"}},
		{"TLS is not supported yet", t.TempDir(), []string{"-k", "etcd:https://127.0.0.1:2379"}},
		{"with -k (an external etcd) none is started", t.TempDir(), []string{"-k", kvdb, "--kvdb-listen", "127.0.0.1:0"}},
		{"--zone and --rack cannot be empty", t.TempDir(), []string{"--zone", ""}},
		{"another node's embedded kvdb? join it with -k etcd://" + d1.kvdbAddr(t), t.TempDir(), []string{"--kvdb-listen", d1.kvdbAddr(t), "--kvdb-peer", "127.0.0.1:0"}},
	} {
		began := time.Now()
		_, err := launchDaemon(t, tc.dataDir, append([]string{"--api", "127.0.0.3:0", "--nbd", "127.0.0.3:0"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("daemon %v: want an error saying %q, got %v", tc.args, tc.want, err)
		}
		if took := time.Since(began); took > 20*time.Second {
			t.Errorf("daemon %v took %v to fail", tc.args, took)
		}
	}
	// The node refused with -c beta is still alpha's, and rejoins.
	d2 = startDaemon(t, joined, "--api", "127.0.0.2:0", "--nbd", "127.0.0.2:0", "-k", kvdb)
	jq(t, mustCairn(t, d2.api, "status", "-j"), `.cluster == "alpha" and .cluster_summary.nodes_online == 2`)
}

// With the kvdb down, a joined node's cluster operations fail at once
// with "kvdb unavailable", status says so, volumes and NBD go on; when the
// kvdb is back, everything works again without a restart.
func TestClusterKvdbDown(t *testing.T) {
	t.Parallel() // own addresses, ports and data dirs; overlaps the waits of the other cluster tests
	d1Dir := t.TempDir()
	d1 := startDaemon(t, d1Dir)
	kvdbAddr := d1.kvdbAddr(t)
	d2 := startDaemon(t, t.TempDir(), "--api", "127.0.0.2:0", "--nbd", "127.0.0.2:0", "-k", "etcd://"+kvdbAddr)
	id2 := nodeID(t, d2.api)
	mustCairn(t, d2.api, "volume", "create", "v", "--size", "64M", "--nodes", id2)
	_, socket := d2.nbdAddrs(t)
	nbdURI := "nbd+unix:///v?socket=" + socket

	d1.cmd.Process.Kill() // its embedded kvdb with it
	<-d1.exited

	began := time.Now()
	mustFail(t, d2.api, "kvdb unavailable", "cluster", "list")
	mustFail(t, d2.api, "kvdb unavailable", "cluster", "inspect", id2)
	if took := time.Since(began); took > 15*time.Second {
		t.Errorf("two cluster verbs with the kvdb down took %v", took)
	}
	st := mustCairn(t, d2.api, "status", "-j")
	jq(t, st, `.status == "degraded" and .cluster_summary.kvdb.healthy == false and (.cluster_summary.kvdb.error | contains("kvdb unavailable"))`)
	if human := mustCairn(t, d2.api, "status"); !strings.Contains(human, "UNAVAILABLE") {
		t.Errorf("status does not say the kvdb is unavailable:\n%s", human)
	}
	// Run flat: the node's volumes and NBD exports do not need the kvdb;
	// changes do (a name is unique only by the kvdb's say), and listings
	// show this node's own volumes, with a warning.
	mustFail(t, d2.api, "kvdb unavailable", "volume", "create", "w", "--size", "64M")
	mustFail(t, d2.api, "kvdb unavailable", "volume", "update", "v", "--size", "128M")
	mustFail(t, d2.api, "kvdb unavailable", "volume", "snapshot", "create", "v")
	mustFail(t, d2.api, "kvdb unavailable", "volume", "delete", "v")
	for _, args := range [][]string{{"volume", "list", "-j"}, {"volume", "inspect", "v", "-j"}} {
		r := cairn(t, d2.api, args...)
		if r.code != 0 || !strings.HasPrefix(r.stderr, "warning: kvdb unavailable") || !strings.Contains(r.stderr, "this node's own volumes only") {
			t.Errorf("%v with the kvdb down: want success with a warning, got %s", args, r)
		}
		jq(t, r.stdout, `[.. | objects | select(has("name")) | .name] == ["v"]`)
	}
	if took := time.Since(began); took > 30*time.Second {
		t.Errorf("cluster and volume verbs with the kvdb down took %v", took)
	}
	run(t, "nbdinfo", nbdURI)

	// The kvdb back (node 1 restarted on its data dir and address).
	startDaemon(t, d1Dir, "--kvdb-listen", kvdbAddr)
	back := time.Now()
	for {
		r := cairn(t, d2.api, "cluster", "list", "-j")
		if r.code == 0 {
			jq(t, r.stdout, fmt.Sprintf(`length == 2 and all(.[]; .status == "Online") and any(.[]; .id == %q)`, id2))
			break
		}
		if time.Since(back) > 30*time.Second {
			t.Fatalf("cluster list on node 2 still failing 30 s after the kvdb came back: %s", r)
		}
		time.Sleep(250 * time.Millisecond)
	}
	jq(t, mustCairn(t, d2.api, "status", "-j"), `.status == "operational" and .cluster_summary.kvdb.healthy == true`)
}

// cluster delete: refused for an Online node; for an Offline one holding
// volumes refused unless --force, which names them; the deleted node is
// gone from every list and cannot start again on its data directory.
func TestClusterDelete(t *testing.T) {
	t.Parallel()
	d1 := startDaemon(t, t.TempDir())
	kvdb := "etcd://" + d1.kvdbAddr(t)
	args2 := []string{"--api", "127.0.0.2:0", "--nbd", "127.0.0.2:0", "-k", kvdb}
	d2 := startDaemon(t, t.TempDir(), args2...)
	args3 := []string{"--api", "127.0.0.3:0", "--nbd", "127.0.0.3:0", "-k", kvdb}
	d3 := startDaemon(t, t.TempDir(), args3...)
	id1, id2, id3 := nodeID(t, d1.api), nodeID(t, d2.api), nodeID(t, d3.api)
	mustCairn(t, d2.api, "volume", "create", "db", "--size", "64M", "--nodes", id2)
	mustCairn(t, d1.api, "volume", "create", "logs", "--size", "64M", "--nodes", id2)
	mustCairn(t, d2.api, "volume", "snapshot", "create", "db", "--name", "db.s1")
	// The node's record carries its volumes (not snapshots) by its next heartbeat.
	deadline := time.Now().Add(15 * time.Second)
	for {
		in := mustCairn(t, d1.api, "cluster", "inspect", id2, "-j")
		if jqQuiet(in, `.volumes == ["db", "logs"] and .volume_count == 2`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 2's volumes not in its record after 15 s:\n%s", in)
		}
		time.Sleep(250 * time.Millisecond)
	}

	mustFail(t, d1.api, "is Online: only an Offline node can be deleted", "cluster", "delete", id1)
	mustFail(t, d1.api, "is Online", "cluster", "delete", id2, "--force")
	mustFail(t, d1.api, `node "nope" is not in cluster`, "cluster", "delete", "nope")
	mustFail(t, d1.api, "accepts 1 arg", "cluster", "delete")

	// Node 3, without volumes, stopped: deleted without --force.
	if code := d3.stop(t); code != 0 {
		t.Fatalf("node 3 exit code %d", code)
	}
	out := mustCairn(t, d1.api, "cluster", "delete", id3)
	if !strings.Contains(out, "Node "+id3+" deleted from the cluster") || strings.Contains(out, "lost") {
		t.Errorf("cluster delete of node 3 printed:\n%s", out)
	}

	// Node 2 killed: Offline, then refused for its volumes, then forced.
	d2.cmd.Process.Kill()
	<-d2.exited
	waitStatus(t, d1.api, id2, "Offline", time.Now(), offlineWithin)
	mustFail(t, d1.api, "holds 2 volume(s) (db, logs): they would be lost; --force", "cluster", "delete", id2)
	del := mustCairn(t, d1.api, "cluster", "delete", id2, "--force", "-j")
	jq(t, del, fmt.Sprintf(`.id == %q and .lost_volumes == ["db", "logs"] and .lost_count == 2`, id2))
	jq(t, mustCairn(t, d1.api, "cluster", "list", "-j"), fmt.Sprintf(`length == 1 and .[0].id == %q`, id1))
	jq(t, mustCairn(t, d1.api, "status", "-j"), `.cluster_summary.nodes_total == 1 and .cluster_summary.nodes_online == 1`)
	// Its volumes (and their snapshots) left the cluster's view with it.
	jq(t, mustCairn(t, d1.api, "volume", "list", "--all", "-j"), `length == 0`)

	// Deleted nodes stay out: neither starts on its data directory.
	for _, tc := range []struct {
		d    *testDaemon
		args []string
	}{{d2, args2}, {d3, args3}} {
		_, err := launchDaemon(t, tc.d.dataDir, tc.args...)
		if err == nil || !strings.Contains(err.Error(), "was deleted from cluster \"cairn\"") {
			t.Errorf("a deleted node restarted: want a refusal, got %v", err)
		}
	}
}
