package main

// Volumes as cluster objects, against three real daemons and the embedded
// etcd of the first (threeNodes): any node's API answers for any volume,
// the node that holds it serves it, names are unique across the cluster,
// placement honours --nodes/--zones/--racks, reconciliation reports what
// it cannot decide, and a forced node delete takes its volumes out of the
// cluster's view. One cluster for all of it: subtests in order.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-storage/cairn/cluster"
)

// volumeNode returns the node id a volume lives on, as host sees it.
func volumeNode(t *testing.T, host, name string) string {
	t.Helper()
	return jq(t, mustCairn(t, host, "volume", "inspect", name, "-j"), ".node")
}

// etcdClient connects the test to the cluster's kvdb, to stand for what
// an operator's etcdctl (or a restored etcd backup) does behind the nodes.
func etcdClient(t *testing.T, addr string) *clientv3.Client {
	t.Helper()
	cli, err := cluster.Connect(context.Background(), []string{"http://" + addr}, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestClusterVolumes(t *testing.T) {
	t.Parallel() // own addresses, ports and data dirs
	ds, args := threeNodes(t)
	ids := make([]string, 3)
	for i, d := range ds {
		ids[i] = nodeID(t, d.api)
	}
	kvdb := ds[0].kvdbAddr(t)
	index := map[string]int{ids[0]: 0, ids[1]: 1, ids[2]: 2}

	t.Run("any node answers, the holder serves", func(t *testing.T) {
		v := checkVolumeJSON(t, mustCairn(t, ds[1].api, "volume", "create", "shared", "--size", "64M", "-j"))
		holder, ok := index[v["node"].(string)]
		if !ok || !strings.HasPrefix(v["node_addr"].(string), fmt.Sprintf("127.0.0.%d:", holder+1)) {
			t.Fatalf("create through node 2: node %v at %v, not one of %v", v["node"], v["node_addr"], ids)
		}
		for _, d := range ds {
			jq(t, mustCairn(t, d.api, "volume", "list", "-j"), fmt.Sprintf(`[.[] | select(.name == "shared") | .node] == [%q]`, ids[holder]))
			in := mustCairn(t, d.api, "volume", "inspect", "shared", "-j")
			checkVolumeJSON(t, in)
			jq(t, in, fmt.Sprintf(`.node == %q and .size == 67108864 and .state == "up"`, ids[holder]))
		}
		if human := mustCairn(t, ds[2].api, "volume", "inspect", "shared"); !strings.Contains(human, "Node") || !strings.Contains(human, ids[holder]) {
			t.Errorf("volume inspect does not show the node:\n%s", human)
		}
		// By id from another node too.
		jq(t, mustCairn(t, ds[(holder+1)%3].api, "volume", "inspect", v["id"].(string), "-j"), `.name == "shared"`)

		// Served by its node; another node says where it is.
		data := patternFile(t, t.TempDir(), "a.bin", 1<<20, 7)
		nbdWriteFile(t, ds[holder], "shared", data)
		want, _ := os.ReadFile(data)
		if got := nbdReadBack(t, ds[holder], "shared", len(want)); !bytes.Equal(got, want) {
			t.Fatal("NBD read-back from the holder differs")
		}
		other := ds[(holder+1)%3]
		tcp, _ := other.nbdAddrs(t)
		// The reason travels in the NBD error reply; libnbd shows it in
		// its debug output, qemu prints it ("server reported: ...").
		cmd := exec.Command("nbdinfo", "nbd://"+tcp+"/shared")
		cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=1")
		out, err := cmd.CombinedOutput()
		if q, qerr := exec.Command("qemu-img", "info", "nbd://"+tcp+"/shared").CombinedOutput(); qerr == nil || !strings.Contains(string(q), "served by node "+ids[holder]) {
			t.Errorf("qemu-img info of shared on another node: %v\n%s", qerr, q)
		}
		if err == nil || !strings.Contains(string(out), "served by node "+ids[holder]) {
			t.Errorf("nbdinfo of shared on another node: %v\n%s\nwant an error naming node %s", err, out, ids[holder])
		}
		holderTCP, _ := ds[holder].nbdAddrs(t)
		if !strings.Contains(string(out), holderTCP) {
			t.Errorf("the NBD error does not give the holder's NBD address %s:\n%s", holderTCP, out)
		}
		mustFail(t, other.api, "is served by node "+ids[holder], "host", "attach", "shared")
	})

	t.Run("changes through any node", func(t *testing.T) {
		holder := index[volumeNode(t, ds[0].api, "shared")]
		via := ds[(holder+1)%3].api
		mustCairn(t, via, "volume", "update", "shared", "--size", "128M", "--sticky", "on")
		jq(t, mustCairn(t, ds[(holder+2)%3].api, "volume", "inspect", "shared", "-j"), `.size == 134217728 and .sticky`)
		mustFail(t, via, "sticky volume", "volume", "delete", "shared")
		mustCairn(t, via, "volume", "update", "shared", "--sticky", "off")
		mustCairn(t, via, "volume", "snapshot", "create", "shared", "--name", "shared.s1")
		mustCairn(t, ds[(holder+2)%3].api, "volume", "clone", "shared.s1", "--name", "shared-clone")
		for _, name := range []string{"shared.s1", "shared-clone"} {
			if got := volumeNode(t, ds[0].api, name); got != ids[holder] {
				t.Errorf("%s lives on %s, want its parent's node %s", name, got, ids[holder])
			}
		}
		jq(t, mustCairn(t, ds[(holder+2)%3].api, "volume", "snapshot", "list", "shared", "-j"), `[.[].name] == ["shared.s1"]`)
		jq(t, mustCairn(t, via, "volume", "list", "--snapshot", "-j"), `[.[].name] == ["shared.s1"]`)
		mustCairn(t, via, "volume", "restore", "shared", "--snapshot", "shared.s1")
		mustFail(t, via, "has 1 snapshot(s)", "volume", "delete", "shared")
		mustCairn(t, via, "volume", "delete", "shared-clone")
		mustCairn(t, ds[(holder+2)%3].api, "volume", "delete", "shared", "--force")
		for _, d := range ds {
			jq(t, mustCairn(t, d.api, "volume", "list", "--all", "-j"), `length == 0`)
		}
		// The names are free again, on any node.
		mustCairn(t, ds[0].api, "volume", "create", "shared.s1", "--size", "64M")
		mustCairn(t, ds[0].api, "volume", "delete", "shared.s1")
	})

	t.Run("one name, two nodes at once", func(t *testing.T) {
		for round := range 3 {
			name := fmt.Sprintf("race%d", round)
			var wg sync.WaitGroup
			var rs [2]result
			for i := range rs {
				wg.Go(func() { rs[i] = cairn(t, ds[i+1].api, "volume", "create", name, "--size", "64M", "--nodes", ids[i+1]) })
			}
			wg.Wait()
			ok := 0
			for _, r := range rs {
				switch {
				case r.code == 0:
					ok++
				case !strings.Contains(r.stderr, "already exists"):
					t.Errorf("losing create: want \"already exists\", got %s", r)
				}
			}
			if ok != 1 {
				t.Fatalf("%s: %d creates succeeded, want 1: %v", name, ok, rs)
			}
			jq(t, mustCairn(t, ds[0].api, "volume", "list", "-j"), fmt.Sprintf(`[.[] | select(.name == %q)] | length == 1`, name))
			// Only the winner's node has it on its drives (the loser's
			// reservation never existed, or its engine copy was not made).
			have := 0
			for _, d := range ds {
				if strings.Contains(httpGetForwarded(t, d.api), `"name": "`+name+`"`) {
					have++
				}
			}
			if have != 1 {
				t.Errorf("%s is on %d nodes' drives, want 1", name, have)
			}
		}
	})

	t.Run("placement", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want int
		}{
			{[]string{"--zones", "z3"}, 2},
			{[]string{"--racks", "r1"}, 0},
			{[]string{"--nodes", ids[1]}, 1},
			{[]string{"--zones", "z1,z2", "--racks", "r2"}, 1},
		} {
			name := "p-" + strings.Join(tc.args, "")
			name = strings.NewReplacer("--", "", ",", "-").Replace(name)
			if len(name) > 40 {
				name = name[:40]
			}
			mustCairn(t, ds[0].api, append([]string{"volume", "create", name, "--size", "64M"}, tc.args...)...)
			if got := volumeNode(t, ds[2].api, name); got != ids[tc.want] {
				t.Errorf("volume create %v landed on %s, want node %d (%s)", tc.args, got, tc.want+1, ids[tc.want])
			}
		}
		mustFail(t, ds[1].api, `no Online node with a storage pool in zone z9: node `, "volume", "create", "nowhere", "--size", "10G", "--zones", "z9")
		mustFail(t, ds[1].api, `node `+ids[0]+` is in zone z1`, "volume", "create", "nowhere", "--size", "10G", "--zones", "z9")
		mustFail(t, ds[1].api, fmt.Sprintf("among nodes %s on rack r2: node %s is on rack r1", ids[0], ids[0]), "volume", "create", "nowhere", "--size", "1G", "--nodes", ids[0], "--racks", "r2")
		mustFail(t, ds[1].api, "node nope is not in the cluster", "volume", "create", "nowhere", "--size", "1G", "--nodes", "nope")
		mustFail(t, ds[1].api, "with repl 3: 2 eligible nodes", "volume", "create", "nowhere", "--size", "1G", "--repl", "3", "--zones", "z1,z2")
		mustFail(t, ds[1].api, "already exists", "volume", "create", "race0", "--size", "1G", "--zones", "z9")
		mustFail(t, ds[1].api, "not found", "volume", "inspect", "nowhere")
	})

	t.Run("reconciliation", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "kept", "--size", "64M", "--nodes", ids[2])
		if code := ds[2].stop(t); code != 0 {
			t.Fatalf("node 3 exit code %d", code)
		}
		// While node 3 is down its volumes are listed from the cluster's view.
		jq(t, mustCairn(t, ds[0].api, "volume", "inspect", "kept", "-j"), `.state | startswith("unavailable: its node")`)
		mustFail(t, ds[1].api, "which is Offline", "volume", "delete", "kept")
		// Behind its back: "kept" leaves etcd (an etcd restored from an
		// old backup), "ghost" is placed on it, a create and a delete are
		// left half-done.
		cli := etcdClient(t, kvdb)
		ctx := context.Background()
		prefix := "/cairn/v1/cairn/volumes/"
		if _, err := cli.Delete(ctx, prefix+"kept"); err != nil {
			t.Fatal(err)
		}
		for name, state := range map[string]string{"ghost": "ready", "half": "creating", "gone": "deleting"} {
			spec, _ := json.Marshal(cluster.VolumeSpec{Name: name, Size: 64 << 20, Repl: 1, State: state, Replicas: []cluster.Replica{{Node: ids[2]}}})
			if _, err := cli.Put(ctx, prefix+name, string(spec)); err != nil {
				t.Fatal(err)
			}
		}
		ds[2] = startDaemon(t, ds[2].dataDir, args[2]...)
		st := mustCairn(t, ds[2].api, "status", "-j")
		jq(t, st, `.status == "degraded" and .cluster_summary.missing_volumes == ["ghost"]`)
		jq(t, st, `[.cluster_summary.unregistered_volumes[].name] == ["kept"]`)
		for _, want := range []string{`msg="cluster: volume on this node's drives is not in the cluster; it is served here and kept" name=kept`,
			`msg="cluster: volume the cluster places on this node is missing from its drives" name=ghost`} {
			if !strings.Contains(ds[2].log(), want) {
				t.Errorf("node 3's log does not say %s", want)
			}
		}
		// Never deleted: still on its drives and served there.
		run(t, "nbdinfo", "nbd://"+must(ds[2].nbdAddrs(t))+"/kept")
		jq(t, mustCairn(t, ds[0].api, "volume", "list", "-j"), `[.[].name] | (index("half") == null and index("gone") == null and index("kept") == null)`)
		jq(t, mustCairn(t, ds[0].api, "volume", "inspect", "ghost", "-j"), `.state | startswith("missing")`)
	})

	t.Run("cluster delete --force", func(t *testing.T) {
		ds[2].cmd.Process.Kill()
		<-ds[2].exited
		waitStatus(t, ds[0].api, ids[2], "Offline", time.Now(), offlineWithin)
		mustFail(t, ds[0].api, "they would be lost", "cluster", "delete", ids[2])
		del := mustCairn(t, ds[1].api, "cluster", "delete", ids[2], "--force", "-j")
		jq(t, del, `.lost_volumes | (index("ghost") != null and index("p-zonesz3") != null and index("kept") != null)`)
		for _, d := range ds[:2] {
			jq(t, mustCairn(t, d.api, "volume", "list", "--all", "-j"), fmt.Sprintf(`all(.[]; .node != %q)`, ids[2]))
		}
		mustFail(t, ds[0].api, "not found", "volume", "inspect", "ghost")
		mustCairn(t, ds[0].api, "volume", "create", "ghost", "--size", "64M") // the name is free again
	})
}

// must returns the first of two values (a helper's tcp address).
func must(first, _ string) string { return first }

// httpGetForwarded lists a node's own volumes (the listing a node asks
// another node for), without going through the cluster's view.
func httpGetForwarded(t *testing.T, api string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+api+"/v1/volumes?all=true", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Cairn-Forwarded-By", "test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.String()
}
