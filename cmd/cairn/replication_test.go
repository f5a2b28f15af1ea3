package main

// Synchronous replication against three real daemons (threeNodes: node 1
// runs the embedded kvdb; each node on its own loopback address), real NBD
// clients and real faults (SIGKILL). One cluster, subtests in order.

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd"
)

// replicaNodes returns the nodes of a volume's replicas and their states.
func replicaStates(t *testing.T, host, name string) map[string]string {
	t.Helper()
	out := jq(t, mustCairn(t, host, "volume", "inspect", name, "-j"), `.replicas[] | .node + "=" + .state`)
	states := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if node, state, ok := strings.Cut(line, "="); ok {
			states[node] = state
		}
	}
	return states
}

// waitReplStatus polls inspect until the volume's repl_status is want.
func waitReplStatus(t *testing.T, host, name, want string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		got := jq(t, mustCairn(t, host, "volume", "inspect", name, "-j"), ".repl_status")
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("volume %s: repl_status %q after %v, want %s\n%s", name, got, limit, want, mustCairn(t, host, "volume", "inspect", name))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// pattern is the bytes a test writes at off: distinct per block and seed.
func pattern(seed uint64, off int64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(off)))
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func TestReplication(t *testing.T) {
	t.Parallel() // own addresses, ports and data dirs
	ds, args := threeNodes(t)
	ids := make([]string, 3)
	for i, d := range ds {
		ids[i] = nodeID(t, d.api)
	}
	tcp := func(i int) string { a, _ := ds[i].nbdAddrs(t); return a }
	// restart starts node i again for the rest of the test (a subtest's t
	// would stop it when the subtest ends).
	restart := func(i int) { ds[i] = startDaemon(t, ds[i].dataDir, args[i]...) }

	t.Run("repl 2 and 3: fio verifies through a coordinator, replicas identical", func(t *testing.T) {
		for _, repl := range []int{2, 3} {
			name := fmt.Sprintf("r%d", repl)
			mustCairn(t, ds[1].api, "volume", "create", name, "--size", "256M", "--repl", strconv.Itoa(repl))
			states := replicaStates(t, ds[0].api, name)
			if len(states) != repl {
				t.Fatalf("%s: %d replicas, want %d: %v", name, len(states), repl, states)
			}
			for node, st := range states {
				if st != "in-sync" {
					t.Errorf("%s: replica on %s is %s, want in-sync", name, node, st)
				}
			}
			// Node 1 coordinates (whether or not it holds a replica).
			run(t, "fio", "--name=repl", "--ioengine=nbd", "--uri=nbd://"+tcp(0)+"/"+name, "--rw=randwrite", "--bs=4k",
				"--iodepth=16", "--size=32M", "--fsync=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1")
			if out := mustCairn(t, ds[2].api, "volume", "verify", name); !strings.Contains(out, "Replicas are identical") ||
				!strings.Contains(out, fmt.Sprintf("on %d in-sync replicas", repl)) {
				t.Errorf("volume verify %s:\n%s", name, out)
			}
			jq(t, mustCairn(t, ds[2].api, "volume", "inspect", name, "-j"), `.repl_status == "Up"`)
		}
		// A verify of a large volume, forwarded to its coordinator, streams
		// its progress: plain lines on stderr (not a terminal here).
		mustCairn(t, ds[0].api, "volume", "create", "big", "--size", "8G", "--repl", "2")
		c := reopen(t, tcp(0), "big", 10*time.Second)
		writeChunks(t, c, 5, 4<<30, 4, 1<<20)
		began := time.Now()
		r := cairn(t, ds[2].api, "volume", "verify", "big")
		t.Logf("verify of an 8 GiB volume took %v; stderr:\n%s", time.Since(began).Round(time.Millisecond), r.stderr)
		if r.code != 0 || !strings.Contains(r.stdout, "Replicas are identical") {
			t.Errorf("volume verify big: %s", r)
		}
		for _, line := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
			if line != "" && !strings.HasPrefix(line, "verify big: ") {
				t.Errorf("volume verify big: stderr line %q is not a progress line", line)
			}
		}
		c.Close()
		mustCairn(t, ds[0].api, "volume", "create", "single", "--size", "64M")
		mustFail(t, ds[0].api, "has one replica", "volume", "verify", "single")
	})

	t.Run("a storageless node coordinates a replicated volume", func(t *testing.T) {
		ip := "127.0.0.5" // its own address: no other test's rules name it
		z := startDaemon(t, t.TempDir(), "-z", "--api", ip+":0", "--nbd", ip+":0", "--repl-listen", ip+":0", "-k", "etcd://"+ds[0].kvdbAddr(t))
		zt, _ := z.nbdAddrs(t)
		run(t, "fio", "--name=storageless", "--ioengine=nbd", "--uri=nbd://"+zt+"/r2", "--rw=randwrite", "--bs=4k",
			"--iodepth=16", "--size=16M", "--fsync=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1")
		if out := mustCairn(t, ds[1].api, "volume", "verify", "r2"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the storageless node's writes:\n%s", out)
		}
		z.cmd.Process.Signal(syscall.SIGTERM)
		<-z.exited
	})

	t.Run("ha-update adds a replica (copied in the background) and removes one", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "grow", "--size", "256M", "--nodes", ids[0])
		_, socket := ds[0].nbdAddrs(t)
		c := holdExport(t, socket, "grow")
		const chunk = 1 << 20
		for off := int64(0); off < 32*chunk; off += 2 * chunk {
			if err := c.WriteAt(pattern(5, off, chunk), off, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		// In use through the engine on its node: refused until closed.
		mustFail(t, ds[1].api, "is in use on this node", "volume", "ha-update", "grow", "--repl", "2")
		c.Close()
		mustFail(t, ds[1].api, "ha-update adds or removes one at a time", "volume", "ha-update", "grow", "--repl", "3")
		mustFail(t, ds[1].api, "repl 4: must be 1, 2 or 3", "volume", "ha-update", "grow", "--repl", "4")
		// --wait's progress goes to stderr (plain lines: not a terminal).
		r := cairn(t, ds[1].api, "volume", "ha-update", "grow", "--repl", "2", "--node", ids[2], "--wait")
		if r.code != 0 || !strings.Contains(r.stdout, "Replication update started successfully") || !strings.Contains(r.stderr, "grow up: 100.0%") {
			t.Errorf("ha-update --repl 2 --wait: %v", r)
		}
		if st := replicaStates(t, ds[1].api, "grow"); len(st) != 2 || st[ids[0]] != "in-sync" || st[ids[2]] != "in-sync" {
			t.Fatalf("after ha-update --repl 2 --wait: replicas %v, want nodes 1 and 3 in sync", st)
		}
		if out := mustCairn(t, ds[1].api, "volume", "verify", "grow"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the added replica's copy:\n%s", out)
		}
		mustFail(t, ds[1].api, "has 2 replicas already", "volume", "ha-update", "grow", "--repl", "2")
		mustFail(t, ds[1].api, "first, which holds its settings", "volume", "ha-update", "grow", "--repl", "1", "--node", ids[0])
		mustCairn(t, ds[1].api, "volume", "ha-update", "grow", "--repl", "1")
		jq(t, mustCairn(t, ds[1].api, "volume", "inspect", "grow", "-j"), `.repl == 1 and .node == "`+ids[0]+`"`)
		// The data is all there, served by node 1 alone again.
		c = holdExport(t, socket, "grow")
		defer c.Close()
		for off := int64(0); off < 32*chunk; off += 2 * chunk {
			got := make([]byte, chunk)
			if err := c.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, pattern(5, off, chunk)) {
				t.Fatalf("read at %d after adding and removing a replica differs", off)
			}
		}
	})

	t.Run("a volume being given a replica: delete refused saying why, then deleted once in sync and gone from the cluster", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "gone", "--size", "256M", "--nodes", ids[0])
		_, socket := ds[0].nbdAddrs(t)
		c := holdExport(t, socket, "gone")
		for off := int64(0); off < 64<<20; off += 1 << 20 {
			if err := c.WriteAt(pattern(7, off, 1<<20), off, false); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
		mustCairn(t, ds[0].api, "volume", "ha-update", "gone", "--repl", "2", "--node", ids[1])
		// While the copy holds it, a delete is refused, saying what to do.
		if r := cairn(t, ds[0].api, "volume", "delete", "gone"); r.code == 0 {
			t.Log("the copy ended before the delete") // nothing to check then
		} else if !strings.Contains(r.stderr, "wait for its replica copy to end") {
			t.Errorf("delete during the copy: %v", r)
		}
		// Once it is in sync and given back (--wait), the delete goes
		// through, and the cluster forgets the volume.
		r := cairn(t, ds[0].api, "volume", "ha-update", "gone", "--repl", "2", "--wait")
		if r.code != 0 && !strings.Contains(r.stderr, "has 2 replicas already") {
			t.Fatalf("ha-update --wait: %v", r)
		}
		waitReplStatus(t, ds[0].api, "gone", "Up", 60*time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for jqQuiet(mustCairn(t, ds[0].api, "volume", "inspect", "gone", "-j"), `.coordinator != null and .coordinator != ""`) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		mustCairn(t, ds[0].api, "volume", "delete", "gone")
		for i, d := range ds {
			if out := mustCairn(t, d.api, "volume", "list", "-j"); jqQuiet(out, `any(.[]; .name == "gone")`) {
				t.Errorf("node %d still lists the deleted volume: %s", i+1, out)
			}
		}
	})

	t.Run("host mount on a node without a replica: a filesystem through the coordinator", func(t *testing.T) {
		needHost(t)
		mnt := t.TempDir()
		hostCleanup(t, ds[0].dataDir, mnt)
		mustCairn(t, ds[0].api, "volume", "create", "fs", "--size", "256M", "--repl", "2", "--nodes", ids[1]+","+ids[2])
		if out := mustCairn(t, ds[0].api, "host", "mount", "fs", mnt); !strings.Contains(out, "successfully mounted") {
			t.Fatalf("host mount of a replicated volume: %s", out)
		}
		// Inspected on any node: attached on node 1, its coordinator.
		for i := range ds {
			jq(t, mustCairn(t, ds[i].api, "volume", "inspect", "fs", "-j"), `.coordinator == "`+ids[0]+`" and .attached_on == "`+ids[0]+`" and (.device | startswith("/dev/loop"))`)
		}
		sums := writeFiles(t, mnt, 3, 2)
		mustCairn(t, ds[0].api, "host", "unmount", "fs", mnt)
		if out := mustCairn(t, ds[2].api, "volume", "verify", "fs"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the filesystem's writes:\n%s", out)
		}
		// Mounted again on another node, the files are there.
		mnt2 := t.TempDir()
		hostCleanup(t, ds[2].dataDir, mnt2)
		mustCairn(t, ds[2].api, "host", "mount", "fs", mnt2)
		checkFiles(t, mnt2, sums)
		mustCairn(t, ds[2].api, "host", "unmount", "fs", mnt2)
	})

	t.Run("a snapshot of a replicated volume is taken on every in-sync replica at one point", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "sv", "--size", "128M", "--repl", "3")
		_, socket := ds[0].nbdAddrs(t)
		c := holdExport(t, socket, "sv") // node 1 coordinates while the snapshot is taken
		const chunk = 1 << 20
		writeChunks(t, c, 50, 0, 8, chunk)
		if err := c.WriteAt(pattern(51, 16*chunk, chunk), 16*chunk, false); err != nil { // acknowledged, not flushed
			t.Fatal(err)
		}
		mustCairn(t, ds[1].api, "volume", "snapshot", "create", "sv", "--name", "sv.s1")
		writeChunks(t, c, 52, 0, 4, chunk) // after the snapshot
		jq(t, mustCairn(t, ds[2].api, "volume", "inspect", "sv.s1", "-j"), `.snapshot and (.replicas | length == 3) and all(.replicas[]; .state == "in-sync")`)
		for i := range ds {
			tcp, _ := ds[i].nbdAddrs(t)
			sc, err := nbd.Dial("tcp", tcp, "sv.s1")
			if err != nil {
				t.Fatalf("node %d's copy of the snapshot: %v", i+1, err)
			}
			checkChunks(t, sc, 50, 0, 8, chunk, fmt.Sprintf("node %d's copy of the snapshot", i+1))
			checkChunks(t, sc, 51, 16*chunk, 1, chunk, fmt.Sprintf("node %d's copy of the snapshot", i+1))
			sc.Close()
		}
		c.Close()
		mustCairn(t, ds[2].api, "volume", "snapshot", "delete", "sv.s1")
		for i := range ds {
			tcp, _ := ds[i].nbdAddrs(t)
			if sc, err := nbd.Dial("tcp", tcp, "sv.s1"); err == nil {
				sc.Close()
				t.Errorf("node %d still serves the deleted snapshot", i+1)
			}
		}
	})

	t.Run("restore and resize of a replicated volume change every replica", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "rv", "--size", "128M", "--repl", "2", "--nodes", ids[0]+","+ids[1])
		const chunk = 1 << 20
		c := reopen(t, tcp(2), "rv", 10*time.Second) // node 3, holding no replica, coordinates
		writeChunks(t, c, 90, 0, 16, chunk)
		mustCairn(t, ds[1].api, "volume", "snapshot", "create", "rv", "--name", "rv.s1")
		writeChunks(t, c, 91, 4*chunk, 16, chunk) // after the snapshot
		mustFail(t, ds[1].api, "open on node "+ids[2], "volume", "restore", "rv", "--snapshot", "rv.s1")
		mustFail(t, ds[1].api, "open on node "+ids[2], "volume", "update", "rv", "--size", "256M")
		c.Close()
		// A third replica, added after the snapshot: it holds no copy of
		// it, and gets a full copy of the restored content.
		if r := cairn(t, ds[0].api, "volume", "ha-update", "rv", "--repl", "3", "--node", ids[2], "--wait"); r.code != 0 {
			t.Fatalf("ha-update rv --repl 3: %s", r)
		}
		mustFail(t, ds[1].api, "not a snapshot of it", "volume", "restore", "rv", "--snapshot", "rv")
		mustCairn(t, ds[1].api, "volume", "restore", "rv", "--snapshot", "rv.s1")
		jq(t, mustCairn(t, ds[2].api, "volume", "inspect", "rv", "-j"),
			`[.replicas[] | select(.node == "`+ids[2]+`") | .state] == ["out-of-sync"] and ([.replicas[] | select(.state == "in-sync")] | length) == 2`)
		mustCairn(t, ds[2].api, "volume", "update", "rv", "--size", "256M")
		jq(t, mustCairn(t, ds[0].api, "volume", "inspect", "rv", "-j"), `.size == 268435456`)
		c = reopen(t, tcp(1), "rv", 10*time.Second)
		if c.Size() != 256<<20 {
			t.Fatalf("the resized volume is served as %d bytes, want 256 MiB", c.Size())
		}
		checkChunks(t, c, 90, 0, 16, chunk, "after the restore") // the snapshot's content, the later writes gone
		writeChunks(t, c, 92, 200*chunk, 8, chunk)               // past the old end
		waitReplStatus(t, ds[0].api, "rv", "Up", 60*time.Second)
		checkChunks(t, c, 92, 200*chunk, 8, chunk, "after the resize")
		c.Close()
		if out := mustCairn(t, ds[0].api, "volume", "verify", "rv"); !strings.Contains(out, "Replicas are identical") || !strings.Contains(out, "on 3 in-sync replicas") {
			t.Errorf("volume verify after the restore and the resize:\n%s", out)
		}
		// A clone of the snapshot is made from each copy: replicated.
		mustCairn(t, ds[2].api, "volume", "clone", "rv.s1", "--name", "rvc")
		jq(t, mustCairn(t, ds[2].api, "volume", "inspect", "rvc", "-j"), `.repl == 2 and (.replicas | length == 2) and all(.replicas[]; .state == "in-sync")`)
		c = reopen(t, tcp(2), "rvc", 10*time.Second)
		checkChunks(t, c, 90, 0, 16, chunk, "the clone")
		writeChunks(t, c, 93, 32*chunk, 4, chunk)
		c.Close()
		if out := mustCairn(t, ds[0].api, "volume", "verify", "rvc"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify of the clone:\n%s", out)
		}
	})

	t.Run("a second coordinator is refused while the first serves", func(t *testing.T) {
		_, socket := ds[0].nbdAddrs(t)
		c := holdExport(t, socket, "r2")
		defer c.Close()
		jq(t, mustCairn(t, ds[1].api, "volume", "inspect", "r2", "-j"), `.coordinator == "`+ids[0]+`"`)
		if c2, err := nbd.Dial("tcp", tcp(2), "r2"); err == nil {
			c2.Close()
			t.Fatal("NBD open of r2 on node 3 succeeded while node 1 coordinates it")
		} else if !strings.Contains(err.Error(), "is open on node "+ids[0]) {
			t.Errorf("NBD open on node 3 while node 1 serves: %v, want it to name node 1", err)
		}
	})

	t.Run("a volume deleted and made again under its name is served: its replicas forget the old one's epochs", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "again", "--size", "64M", "--repl", "2", "--nodes", ids[0]+","+ids[1])
		// Each open is a claim: it raises the epoch on both replicas.
		for range 4 {
			_, socket := ds[0].nbdAddrs(t)
			c := holdExport(t, socket, "again")
			if err := c.WriteAt(pattern(5, 0, 4096), 0, true); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		mustCairn(t, ds[0].api, "volume", "delete", "again")
		mustCairn(t, ds[0].api, "volume", "create", "again", "--size", "64M", "--repl", "2", "--nodes", ids[0]+","+ids[1])
		_, socket := ds[0].nbdAddrs(t)
		c, err := nbd.Dial("unix", socket, "again")
		if err != nil {
			t.Fatalf("NBD open of the volume made again: %v", err)
		}
		defer c.Close()
		got := make([]byte, 4096)
		if err := c.WriteAt(pattern(6, 4096, 4096), 4096, true); err != nil {
			t.Fatalf("write to the volume made again: %v", err)
		}
		if err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
			t.Fatalf("the volume made again reads the deleted one's data (or fails: %v)", err)
		}
	})

	t.Run("replica killed mid-write: writes go on, degraded, resync of what changed only", func(t *testing.T) {
		// Replicas on nodes 2 and 3; node 1 coordinates, so killing node 3
		// leaves the coordinator and the kvdb up.
		mustCairn(t, ds[0].api, "volume", "create", "k", "--size", "1G", "--repl", "2", "--nodes", ids[1]+","+ids[2])
		_, socket := ds[0].nbdAddrs(t)
		c := holdExport(t, socket, "k")
		const chunk = 1 << 20
		write := func(seed uint64, off int64) {
			t.Helper()
			if err := c.WriteAt(pattern(seed, off, chunk), off, false); err != nil {
				t.Fatalf("write at %d: %v", off, err)
			}
		}
		for off := int64(0); off < 8*chunk; off += chunk {
			write(1, off)
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		ds[2].cmd.Process.Kill()
		<-ds[2].exited
		killed := time.Now()
		// Writes keep being acknowledged (the first within the replica timeout).
		for off := int64(16 * chunk); off < 24*chunk; off += chunk {
			write(2, off)
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		t.Logf("8 MiB written and flushed %v after the kill", time.Since(killed).Round(time.Millisecond))
		if st := replicaStates(t, ds[1].api, "k"); st[ids[2]] == "in-sync" || st[ids[1]] != "in-sync" {
			t.Fatalf("after node 3's death: replicas %v, want node 3 out of the in-sync set", st)
		}
		jq(t, mustCairn(t, ds[0].api, "volume", "inspect", "k", "-j"), `.repl_status == "Degraded"`)
		metrics := httpGet(t, "http://"+ds[0].api+"/metrics")
		if v := metricValue(t, metrics, `cairn_volume_replication_degraded{volume="k"}`); v != 1 {
			t.Errorf("cairn_volume_replication_degraded of k = %v, want 1", v)
		}
		if v := metricValue(t, metrics, `cairn_replica_in_sync{node="`+ids[1]+`",state="in-sync",volume="k"}`); v != 1 {
			t.Errorf("cairn_replica_in_sync of k's replica on node 2 = %v, want 1", v)
		}
		if v := metricValue(t, metrics, `cairn_replica_writes_total{node="`+ids[1]+`",volume="k"}`); v < 16 {
			t.Errorf("cairn_replica_writes_total of k's replica on node 2 = %v, want ≥ 16", v)
		}

		restart(2)
		waitReplStatus(t, ds[0].api, "k", "Up", 60*time.Second)
		m := regexp.MustCompile(`msg="replica back in sync" .*volume=k node=` + ids[2] + ` epoch=\d+ copied=(\d+)`).FindStringSubmatch(ds[0].log())
		if m == nil {
			t.Fatalf("node 1 logged no resync of k's replica on node 3:\n%s", ds[0].log())
		}
		copied, _ := strconv.ParseInt(m[1], 10, 64)
		// What changed while it was out: 8 MiB (plus what was unflushed
		// when it died: nothing here). ≪ the 1 GiB volume.
		if copied == 0 || copied > 16*chunk {
			t.Errorf("resync copied %d bytes, want 8 MiB and ≪ 1 GiB", copied)
		}
		for _, r := range []struct {
			seed uint64
			from int64
		}{{1, 0}, {2, 16 * chunk}} {
			for off := r.from; off < r.from+8*chunk; off += chunk {
				got := make([]byte, chunk)
				if err := c.ReadAt(got, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, pattern(r.seed, off, chunk)) {
					t.Fatalf("read at %d after the resync differs from what was written", off)
				}
			}
		}
		c.Close()
		if out := mustCairn(t, ds[1].api, "volume", "verify", "k"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the resync:\n%s", out)
		}
	})

	t.Run("coordinator killed mid-write: another node takes over, nothing acknowledged and flushed is lost", func(t *testing.T) {
		// Replicas on nodes 2 and 3; node 2 coordinates and dies.
		mustCairn(t, ds[0].api, "volume", "create", "takeover", "--size", "256M", "--repl", "2", "--nodes", ids[1]+","+ids[2])
		_, socket := ds[1].nbdAddrs(t)
		c := holdExport(t, socket, "takeover")
		const chunk = 256 << 10
		for off := int64(0); off < 64*chunk; off += chunk {
			if err := c.WriteAt(pattern(3, off, chunk), off, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
		ds[1].cmd.Process.Kill()
		<-ds[1].exited
		killed := time.Now()
		// Node 3 may take the volume once node 2's lease has expired.
		var c3 *nbd.Client
		for {
			var err error
			if c3, err = nbd.Dial("tcp", tcp(2), "takeover"); err == nil {
				break
			}
			if time.Since(killed) > 40*time.Second {
				t.Fatalf("node 3 could not take the volume over %v after its coordinator died: %v", time.Since(killed), err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		defer c3.Close()
		t.Logf("node 3 took over %v after node 2 died", time.Since(killed).Round(100*time.Millisecond))
		for off := int64(0); off < 64*chunk; off += chunk {
			got := make([]byte, chunk)
			if err := c3.ReadAt(got, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, pattern(3, off, chunk)) {
				t.Fatalf("acknowledged and flushed write at %d lost after the takeover", off)
			}
		}
		if err := c3.WriteAt(pattern(4, 0, chunk), 0, false); err != nil {
			t.Fatalf("write through the new coordinator: %v", err)
		}
		if err := c3.Flush(); err != nil {
			t.Fatal(err)
		}
		jq(t, mustCairn(t, ds[0].api, "volume", "inspect", "takeover", "-j"), `.coordinator == "`+ids[2]+`" and .repl_status == "Degraded"`)
		restart(1)
		waitReplStatus(t, ds[0].api, "takeover", "Up", 60*time.Second)
		c3.Close()
		if out := mustCairn(t, ds[0].api, "volume", "verify", "takeover"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the takeover and resync:\n%s", out)
		}
	})
	t.Run("a forced cluster delete of a node keeps the replicated volumes that have a copy elsewhere", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "keep", "--size", "64M", "--repl", "2", "--nodes", ids[1]+","+ids[2])
		_, socket := ds[0].nbdAddrs(t)
		c := holdExport(t, socket, "keep")
		writeChunks(t, c, 70, 0, 8, 1<<20)
		c.Close()
		ds[2].cmd.Process.Kill()
		<-ds[2].exited
		killed := time.Now()
		waitStatus(t, ds[0].api, ids[2], "Offline", killed, offlineWithin)
		out := mustCairn(t, ds[0].api, "cluster", "delete", ids[2], "--force")
		if strings.Contains(out, "keep") {
			t.Errorf("cluster delete --force lists keep as lost though node 2 has an in-sync copy:\n%s", out)
		}
		jq(t, mustCairn(t, ds[1].api, "volume", "inspect", "keep", "-j"), `.repl == 1 and .node == "`+ids[1]+`"`)
		c = holdExport(t, func() string { _, s := ds[1].nbdAddrs(t); return s }(), "keep")
		defer c.Close()
		checkChunks(t, c, 70, 0, 8, 1<<20, "after the forced delete of the other replica's node")
	})
}
