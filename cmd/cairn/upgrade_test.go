package main

// Upgrade in place: a data directory made by the last single-node release
// (commit 69db017: `cairn daemon --default-drive-size 1G`, volume "old" of
// 64 MiB with the first 64 KiB of patternFile(seed 42) written over NBD,
// snapshot "old.before", SIGTERM) is started by this build. The node keeps
// its id, joins a cluster (embedded kvdb) and records its uuid, and serves
// its volumes and snapshot with their data.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const (
	releaseDataDir = "testdata/datadir-69db017.tar.gz"
	releaseNodeID  = "7d8f5fa7-fc85-433f-807a-350d6d6efe3e"
)

// unpackRelease extracts the release data directory into a new directory
// and points node.json's drive at its new place (it was made in
// /tmp/updata: an operator moving a data directory does the same).
func unpackRelease(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("tar", "-xzf", releaseDataDir, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	path := filepath.Join(dir, "node.json")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var node map[string]any
	if err := json.Unmarshal(raw, &node); err != nil {
		t.Fatal(err)
	}
	if _, ok := node["cluster_uuid"]; ok {
		t.Fatalf("release node.json already has a cluster uuid: %s", raw)
	}
	node["drives"] = []map[string]string{{"path": filepath.Join(dir, defaultDriveName)}}
	raw, err = json.Marshal(node)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestUpgradeInPlace(t *testing.T) {
	t.Parallel() // its own ports and data dir
	dir := unpackRelease(t)
	want, err := os.ReadFile(patternFile(t, t.TempDir(), "p.bin", 64<<10, 42))
	if err != nil {
		t.Fatal(err)
	}
	var uuid string
	for run := range 2 { // the first start joins; a restart finds the same cluster
		d := startDaemon(t, dir)
		st := mustCairn(t, d.api, "status", "-j")
		jq(t, st, fmt.Sprintf(`.node_id == %q and .cluster == "cairn" and .status == "operational"`, releaseNodeID))
		jq(t, st, `.cluster_summary.nodes_online == 1 and .cluster_summary.nodes_total == 1 and .cluster_summary.kvdb.healthy`)
		u := jq(t, st, `.cluster_summary.uuid`)
		if run == 0 {
			uuid = u
		} else if u != uuid {
			t.Errorf("restart: cluster uuid %s, first start %s", u, uuid)
		}
		var node struct {
			ClusterUUID string `json:"cluster_uuid"`
		}
		raw, _ := os.ReadFile(filepath.Join(dir, "node.json"))
		if json.Unmarshal(raw, &node); node.ClusterUUID != uuid {
			t.Errorf("node.json cluster_uuid %q, want %q:\n%s", node.ClusterUUID, uuid, raw)
		}
		jq(t, mustCairn(t, d.api, "cluster", "list", "-j"), fmt.Sprintf(`length == 1 and .[0].id == %q and .[0].status == "Online"`, releaseNodeID))
		// The volumes are registered in the cluster (the listing is the
		// cluster's view), as this node's, on the first start.
		jq(t, mustCairn(t, d.api, "volume", "list", "--all", "-j"),
			fmt.Sprintf(`[.[] | [.name, .id, .node]] == [["old", "5826d4eb9c89a7b3", %[1]q], ["old.before", "549c4355e7e41901", %[1]q]]`, releaseNodeID))
		jq(t, st, `.cluster_summary.unregistered_volumes == [] and .cluster_summary.missing_volumes == []`)
		if registered := strings.Count(d.log(), "cluster: volume registered"); registered != 2*(1-run) {
			t.Errorf("run %d: %d volumes registered, want %d:\n%s", run, registered, 2*(1-run), d.log())
		}
		for _, export := range []string{"old", "old.before"} {
			if got := nbdReadBack(t, d, export, len(want)); !bytes.Equal(got, want) {
				t.Errorf("run %d: %s does not read back what the release wrote", run, export)
			}
		}
		if code := d.stop(t); code != 0 {
			t.Fatalf("exit code %d", code)
		}
	}
}

// An upgraded node joining a cluster where one of its volumes' names is
// already another node's: that volume is reported (status, log), served on
// the node and kept; the cluster's volume of that name is left alone; the
// other volume is registered.
func TestUpgradeNameTaken(t *testing.T) {
	t.Parallel() // its own addresses, ports and data dirs
	d1 := startDaemon(t, t.TempDir())
	id1 := nodeID(t, d1.api)
	mustCairn(t, d1.api, "volume", "create", "old", "--size", "1G")
	dir := unpackRelease(t)
	d2 := startDaemon(t, dir, "--api", "127.0.0.2:0", "--nbd", "127.0.0.2:0", "-k", "etcd://"+d1.kvdbAddr(t))
	st := mustCairn(t, d2.api, "status", "-j")
	jq(t, st, fmt.Sprintf(`.status == "degraded" and .cluster_summary.unregistered_volumes == [{"name": "old", "reason": "the name is taken in the cluster by a volume of node %s"}]`, id1))
	if !strings.Contains(d2.log(), `msg="cluster: volume on this node's drives is not in the cluster; it is served here and kept" name=old`) {
		t.Errorf("node 2 did not log the unregistered volume:\n%s", d2.log())
	}
	jq(t, mustCairn(t, d1.api, "volume", "inspect", "old", "-j"), fmt.Sprintf(`.node == %q and .size == 1073741824`, id1))
	jq(t, mustCairn(t, d1.api, "volume", "inspect", "old.before", "-j"), fmt.Sprintf(`.node == %q and .snapshot`, releaseNodeID))
	want, err := os.ReadFile(patternFile(t, t.TempDir(), "p.bin", 64<<10, 42))
	if err != nil {
		t.Fatal(err)
	}
	if got := nbdReadBack(t, d2, "old", len(want)); !bytes.Equal(got, want) {
		t.Error("the unregistered volume does not read back what the release wrote")
	}
}
