package main

// A node cut off from the kvdb by the network (nftables drops its packets;
// the process lives on): the others see it Offline within 15 s, it says the
// kvdb is unavailable and keeps serving its volumes; healed, it is Online
// again by itself. Needs root and nft (nftables, `make deps`).

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/internal/testenv"
)

// partition drops TCP between node (an IP) and the kvdb at kvdbAddr, both
// ways; heal (also run in t.Cleanup) removes the rules. The rules name the
// kvdb's port, so tests running at the same time on other ports are
// untouched.
func partition(t *testing.T, node, kvdbAddr string) (heal func()) {
	t.Helper()
	host, port, err := net.SplitHostPort(kvdbAddr)
	if err != nil {
		t.Fatal(err)
	}
	return dropTraffic(t, "kvdb_"+port,
		fmt.Sprintf("ip saddr %s ip daddr %s tcp dport %s drop", node, host, port),
		fmt.Sprintf("ip saddr %s ip daddr %s tcp sport %s drop", host, node, port))
}

// dropTraffic installs nftables rules (statements of an output chain, each
// ending in drop) in a table of their own, named after name and this
// process; heal (also run in t.Cleanup, so a failing test leaves none)
// deletes the table.
func dropTraffic(t *testing.T, name string, rules ...string) (heal func()) {
	t.Helper()
	testenv.RequireRoot(t, "nftables rules")
	nft := testenv.RequireTool(t, "nft")
	table := fmt.Sprintf("cairn_test_%s_%d", name, os.Getpid())
	ruleset := fmt.Sprintf(`table inet %s {
	chain out {
		type filter hook output priority 0; policy accept;
		%s
	}
}
`, table, strings.Join(rules, "\n\t\t"))
	cmd := exec.Command(nft, "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s\n%s", err, out, ruleset)
	}
	healed := false
	heal = func() {
		if healed {
			return
		}
		healed = true
		if out, err := exec.Command(nft, "delete", "table", "inet", table).CombinedOutput(); err != nil {
			t.Errorf("nft delete table %s: %v\n%s", table, err, out)
		}
	}
	t.Cleanup(heal)
	return heal
}

// cutLink drops all traffic between two addresses, both ways.
func cutLink(t *testing.T, a, b string) (heal func()) {
	t.Helper()
	name := strings.NewReplacer(".", "_").Replace(a + "_" + b)
	return dropTraffic(t, name, fmt.Sprintf("ip saddr %s ip daddr %s drop", a, b), fmt.Sprintf("ip saddr %s ip daddr %s drop", b, a))
}

func TestClusterPartition(t *testing.T) {
	t.Parallel() // its own addresses and ports; its rules name only its kvdb port
	d1 := startDaemon(t, t.TempDir())
	kvdb := d1.kvdbAddr(t)
	d2 := startDaemon(t, t.TempDir(), "--api", "127.0.0.4:0", "--nbd", "127.0.0.4:0", "-k", "etcd://"+kvdb)
	id2 := nodeID(t, d2.api)
	waitCluster(t, d1.api, 2, 15*time.Second)
	mustCairn(t, d2.api, "volume", "create", "v", "--size", "64M", "--nodes", id2)
	data := patternFile(t, t.TempDir(), "a.bin", 1<<20, 3)

	heal := partition(t, "127.0.0.4", kvdb)
	cut := time.Now()
	waitStatus(t, d1.api, id2, "Offline", cut, offlineWithin)
	mustFail(t, d2.api, "kvdb unavailable", "cluster", "list")
	jq(t, mustCairn(t, d2.api, "status", "-j"), `.status == "degraded" and .cluster_summary.kvdb.healthy == false`)
	// Cut off from the kvdb, the node still serves its own volumes.
	nbdWriteFile(t, d2, "v", data)

	heal()
	healed := time.Now()
	waitStatus(t, d1.api, id2, "Online", healed, 30*time.Second)
	waitCluster(t, d2.api, 2, 30*time.Second)
	if !strings.Contains(d2.log(), "registering again") {
		t.Errorf("node 2 did not log losing its lease and registering again:\n%s", d2.log())
	}
}
