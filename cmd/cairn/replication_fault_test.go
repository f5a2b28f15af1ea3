package main

// Replication under real faults — partitions made of nftables rules between
// two loopback addresses, etcd made unreachable, SIGSTOP — on three daemons
// of their own addresses (127.0.0.11–13), so that the rules cut nothing of
// the tests running beside them. Every rule is removed in t.Cleanup, also
// when the test fails. Needs root and nft (`make deps`).

import (
	"bytes"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd"
	"github.com/cairn-storage/cairn/internal/testenv"
)

// faultNodes starts three nodes on 127.0.0.11, .12 and .13, the first with
// the embedded kvdb.
func faultNodes(t *testing.T) (ds [3]*testDaemon, args [3][]string, ips [3]string) {
	t.Helper()
	for i := range ips {
		ips[i] = fmt.Sprintf("127.0.0.%d", 11+i)
	}
	own := func(i int) []string {
		ip := ips[i]
		// A slow resync, so that a test can kill its target in the middle.
		return []string{"--api", ip + ":0", "--nbd", ip + ":0", "--repl-listen", ip + ":0", "--zone", fmt.Sprintf("z%d", i+1), "--resync-rate", "16M"}
	}
	args[0] = append(own(0), "--kvdb-listen", ips[0]+":0", "--kvdb-peer", ips[0]+":0")
	ds[0] = startDaemon(t, t.TempDir(), args[0]...)
	kvdb := "etcd://" + ds[0].kvdbAddr(t)
	for i := 1; i < 3; i++ {
		args[i] = append(own(i), "-k", kvdb)
		ds[i] = startDaemon(t, t.TempDir(), args[i]...)
	}
	return ds, args, ips
}

// writeChunks writes pattern(seed) over [from, from+n·chunk) and flushes.
func writeChunks(t *testing.T, c *nbd.Client, seed uint64, from int64, n int, chunk int) {
	t.Helper()
	for k := 0; k < n; k++ {
		off := from + int64(k*chunk)
		if err := c.WriteAt(pattern(seed, off, chunk), off, false); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
}

// checkChunks reads [from, from+n·chunk) and compares with pattern(seed).
func checkChunks(t *testing.T, c *nbd.Client, seed uint64, from int64, n int, chunk int, what string) {
	t.Helper()
	got := make([]byte, chunk)
	for k := 0; k < n; k++ {
		off := from + int64(k*chunk)
		if err := c.ReadAt(got, off); err != nil {
			t.Fatalf("%s: read at %d: %v", what, off, err)
		}
		if !bytes.Equal(got, pattern(seed, off, chunk)) {
			t.Fatalf("%s: the acknowledged and flushed write at %d is not what reads return", what, off)
		}
	}
}

// waitResyncUnderWay waits until a resync of name has copied something.
func waitResyncUnderWay(t *testing.T, api, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := mustCairn(t, api, "volume", "inspect", name, "-j")
		if jqQuiet(out, `any(.replicas[]; .state == "resyncing" and .copied > 0)`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no resync of %s under way after 30 s:\n%s", name, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// reopen opens name at addr (a unix socket's path, or host:port), retrying
// while its previous coordinator's claim is still in the way.
func reopen(t *testing.T, addr, name string, limit time.Duration) *nbd.Client {
	t.Helper()
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	deadline := time.Now().Add(limit)
	for {
		c, err := nbd.Dial(network, addr, name)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("could not open %s for %v: %v", name, limit, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func TestReplicationFaults(t *testing.T) {
	testenv.RequireRoot(t, "nftables rules")
	t.Parallel() // its own addresses; its rules name only them
	ds, args, ips := faultNodes(t)
	ids := make([]string, 3)
	for i, d := range ds {
		ids[i] = nodeID(t, d.api)
	}
	socket := func(i int) string { _, s := ds[i].nbdAddrs(t); return s }
	// restart starts node i again for the rest of the test.
	restart := func(i int) { ds[i] = startDaemon(t, ds[i].dataDir, args[i]...) }
	const chunk = 256 << 10
	const mib = 1 << 20
	// resyncUnderWay makes name a repl 2 volume on node source+1 and node 3,
	// opened on node coord+1, with pattern seed over its first 32 MiB; kills
	// node 3, writes pattern seed+1 over 64 MiB at 64 MiB (64 regions to
	// resync, ~4 s at 16M/s), brings node 3 back and returns once its
	// resync has copied something.
	resyncUnderWay := func(t *testing.T, name string, coord, source int, seed uint64) *nbd.Client {
		t.Helper()
		mustCairn(t, ds[0].api, "volume", "create", name, "--size", "256M", "--repl", "2", "--nodes", ids[source]+","+ids[2])
		c := holdExport(t, socket(coord), name)
		writeChunks(t, c, seed, 0, 32, mib)
		ds[2].cmd.Process.Kill()
		<-ds[2].exited
		writeChunks(t, c, seed+1, 64*mib, 64, mib)
		restart(2)
		waitResyncUnderWay(t, ds[coord].api, name)
		return c
	}

	t.Run("a replica partitioned from its coordinator is evicted before the next ack and resyncs after the heal", func(t *testing.T) {
		mustCairn(t, ds[1].api, "volume", "create", "p", "--size", "256M", "--repl", "2", "--nodes", ids[1]+","+ids[2])
		c := holdExport(t, socket(0), "p") // node 1 coordinates
		writeChunks(t, c, 10, 0, 16, chunk)
		// Cut the replica that is not the volume's node: the cut also
		// parts it from etcd (on node 1), and the volume's node answers
		// inspect.
		holder, cut := 1, 2
		if jqQuiet(mustCairn(t, ds[1].api, "volume", "inspect", "p", "-j"), `.node == "`+ids[2]+`"`) {
			holder, cut = 2, 1
		}
		heal := cutLink(t, ips[0], ips[cut])
		began := time.Now()
		writeChunks(t, c, 11, 64*chunk, 16, chunk)
		t.Logf("writes acknowledged %v after the cut", time.Since(began).Round(10*time.Millisecond))
		if st := replicaStates(t, ds[holder].api, "p"); st[ids[cut]] == "in-sync" || st[ids[holder]] != "in-sync" {
			t.Fatalf("after the cut: replicas %v, want node %d out of the in-sync set", st, cut+1)
		}
		// Reads come from the in-sync replica only: they see every write.
		checkChunks(t, c, 10, 0, 16, chunk, "read during the partition")
		checkChunks(t, c, 11, 64*chunk, 16, chunk, "read during the partition")
		heal()
		waitReplStatus(t, ds[1].api, "p", "Up", 60*time.Second)
		c.Close()
		if out := mustCairn(t, ds[1].api, "volume", "verify", "p"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the heal:\n%s", out)
		}
	})

	t.Run("a coordinator cut off from etcd and its replicas is replaced; its writes fail; nothing flushed is lost", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "q", "--size", "256M", "--repl", "2", "--nodes", ids[0]+","+ids[2])
		old := holdExport(t, socket(1), "q") // node 2 coordinates, holding no replica
		writeChunks(t, old, 20, 0, 32, chunk)
		heal1 := cutLink(t, ips[1], ips[0])
		heal3 := cutLink(t, ips[1], ips[2])
		cut := time.Now()
		if err := old.WriteAt(pattern(21, 0, chunk), 0, false); err == nil {
			t.Fatal("the cut-off coordinator acknowledged a write it could reach no replica with, and could not record an eviction for")
		} else {
			t.Logf("the cut-off coordinator's write failed after %v: %v", time.Since(cut).Round(10*time.Millisecond), err)
		}
		var c3 *nbd.Client
		for {
			tcp, _ := ds[2].nbdAddrs(t)
			var err error
			if c3, err = nbd.Dial("tcp", tcp, "q"); err == nil {
				break
			}
			if time.Since(cut) > 45*time.Second {
				t.Fatalf("node 3 could not take the volume over %v after the cut: %v", time.Since(cut), err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		defer c3.Close()
		t.Logf("node 3 took over %v after the cut", time.Since(cut).Round(100*time.Millisecond))
		// It converged the replicas where the old coordinator wrote (the
		// replicas' activity logs: the first 8 MiB), not the whole volume.
		m := regexp.MustCompile(`msg="replicas converged after an unclean coordinator change".* volume=q bytes_compared=(\d+)`).FindStringSubmatch(ds[2].log())
		if m == nil {
			t.Errorf("node 3 logged no convergence of q:\n%s", ds[2].log())
		} else if compared, _ := strconv.ParseInt(m[1], 10, 64); compared <= 0 || compared > 16<<20 {
			t.Errorf("node 3 compared %d bytes of q to converge it, want the 8 MiB written (of 256 MiB)", compared)
		} else {
			t.Logf("node 3 compared %d bytes of the 256 MiB volume to converge it", compared)
		}
		checkChunks(t, c3, 20, 0, 32, chunk, "after the takeover")
		writeChunks(t, c3, 22, 64*chunk, 8, chunk)
		heal1()
		heal3()
		// Healed, the old coordinator's node registers again with a new
		// lease: the old claim is void, and nothing it is asked is
		// acknowledged.
		waitStatus(t, ds[0].api, ids[1], "Online", time.Now(), 60*time.Second)
		if err := old.WriteAt(pattern(23, 64*chunk, chunk), 64*chunk, false); err == nil {
			if ferr := old.Flush(); ferr == nil {
				t.Error("the replaced coordinator acknowledged a write and a flush after the heal")
			}
		}
		old.Close()
		checkChunks(t, c3, 22, 64*chunk, 8, chunk, "after the heal")
		c3.Close()
		if out := mustCairn(t, ds[0].api, "volume", "verify", "q"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the takeover:\n%s", out)
		}
	})

	t.Run("etcd unreachable: I/O goes on while the replicas are healthy, and a replica failure fails writes", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "e", "--size", "256M", "--repl", "2", "--nodes", ids[1]+","+ids[2])
		c := holdExport(t, socket(1), "e") // node 2 coordinates
		writeChunks(t, c, 30, 0, 8, chunk)
		host, port, err := net.SplitHostPort(ds[0].kvdbAddr(t))
		if err != nil {
			t.Fatal(err)
		}
		heal := dropTraffic(t, "etcd_"+port, fmt.Sprintf("ip daddr %s tcp dport %s drop", host, port), fmt.Sprintf("ip saddr %s tcp sport %s drop", host, port))
		writeChunks(t, c, 31, 32*chunk, 8, chunk)
		checkChunks(t, c, 31, 32*chunk, 8, chunk, "with etcd unreachable")
		ds[2].cmd.Process.Kill()
		<-ds[2].exited
		if err := c.WriteAt(pattern(32, 0, chunk), 0, false); err == nil {
			t.Fatal("a write was acknowledged after a replica failed while the eviction could not be recorded")
		}
		heal()
		c.Close()
		restart(2)
		c = holdExport(t, socket(1), "e")
		writeChunks(t, c, 33, 0, 8, chunk)
		waitReplStatus(t, ds[0].api, "e", "Up", 60*time.Second)
		checkChunks(t, c, 31, 32*chunk, 8, chunk, "after the heal")
		c.Close()
	})

	t.Run("a resync whose target dies midway resumes, and the replicas end identical", func(t *testing.T) {
		c := resyncUnderWay(t, "rz", 0, 1, 60) // node 1 coordinates
		ds[2].cmd.Process.Kill()               // the target, mid-copy
		<-ds[2].exited
		writeChunks(t, c, 62, 32*mib, 8, mib)
		restart(2)
		waitReplStatus(t, ds[0].api, "rz", "Up", 60*time.Second)
		checkChunks(t, c, 60, 0, 32, mib, "after the interrupted resync")
		checkChunks(t, c, 62, 32*mib, 8, mib, "after the interrupted resync")
		checkChunks(t, c, 61, 64*mib, 64, mib, "after the interrupted resync")
		c.Close()
		if out := mustCairn(t, ds[1].api, "volume", "verify", "rz"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the interrupted resync:\n%s", out)
		}
	})

	t.Run("a resync whose source dies: no read is served by the half-copied replica; it resumes when the source is back", func(t *testing.T) {
		c := resyncUnderWay(t, "rs", 0, 1, 70) // node 1 coordinates; node 2 is the source, node 3 the target
		ds[1].cmd.Process.Kill()               // the source, mid-copy: no replica is in sync now
		<-ds[1].exited
		got := make([]byte, mib)
		for _, off := range []int64{0, 64 * mib, 127 * mib} {
			if err := c.ReadAt(got, off); err == nil {
				t.Fatalf("a read at %d was served with the only in-sync replica down (by the half-copied one)", off)
			}
		}
		if err := c.WriteAt(pattern(72, 0, mib), 0, false); err == nil {
			t.Fatal("a write was acknowledged with the only in-sync replica down")
		}
		c.Close()
		restart(1)
		c = reopen(t, socket(0), "rs", 45*time.Second)
		waitReplStatus(t, ds[0].api, "rs", "Up", 60*time.Second)
		checkChunks(t, c, 70, 0, 32, mib, "after the source came back")
		checkChunks(t, c, 71, 64*mib, 64, mib, "after the source came back")
		c.Close()
		if out := mustCairn(t, ds[0].api, "volume", "verify", "rs"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the source came back:\n%s", out)
		}
	})

	t.Run("the coordinator and the target die together mid-resync: a full copy, nothing the target was sent is lost", func(t *testing.T) {
		c := resyncUnderWay(t, "rc", 1, 0, 80) // node 2 coordinates; node 1 is the source, node 3 the target
		// Writes to regions the resync has no reason to copy, never
		// flushed: the target may lose them when it is killed, the source
		// keeps them, and the region log must still name them.
		for k := 0; k < 16; k++ {
			off := int64(160+k) * mib
			if err := c.WriteAt(pattern(82, off, mib), off, false); err != nil {
				t.Fatalf("write at %d during the resync: %v", off, err)
			}
		}
		ds[1].cmd.Process.Kill()
		ds[2].cmd.Process.Kill()
		<-ds[1].exited
		<-ds[2].exited
		c.Close()
		restart(1)
		restart(2)
		c = reopen(t, socket(1), "rc", 45*time.Second)
		waitReplStatus(t, ds[1].api, "rc", "Up", 90*time.Second)
		checkChunks(t, c, 80, 0, 32, mib, "after the double crash")
		checkChunks(t, c, 81, 64*mib, 64, mib, "after the double crash")
		c.Close()
		// Its log lacks what the target was sent and lost: a full copy
		// (of the regions that hold data), not a resume from the log.
		if !strings.Contains(ds[1].log(), `msg="the replica was resyncing when the previous coordinator stopped uncleanly; it gets a full copy" component=coordinator volume=rc node=`+ids[2]) {
			t.Errorf("node 2 did not restart rc's interrupted resync as a full copy:\n%s", ds[1].log())
		}
		if out := mustCairn(t, ds[0].api, "volume", "verify", "rc"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the double crash (the target lost writes its log did not name?):\n%s", out)
		}
	})

	t.Run("a replica stopped longer than the timeout is evicted once, then resyncs", func(t *testing.T) {
		mustCairn(t, ds[0].api, "volume", "create", "s", "--size", "256M", "--repl", "2", "--nodes", ids[1]+","+ids[2])
		c := holdExport(t, socket(0), "s") // node 1 coordinates
		writeChunks(t, c, 40, 0, 8, chunk)
		if err := ds[2].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := true
		defer func() {
			if stopped {
				ds[2].cmd.Process.Signal(syscall.SIGCONT)
			}
		}()
		for i := 0; i < 8; i++ { // ~10 s of writes: the timeout, then the coordinator's retries
			writeChunks(t, c, 41, int64(i)*4*chunk, 4, chunk)
			time.Sleep(time.Second)
		}
		ds[2].cmd.Process.Signal(syscall.SIGCONT)
		stopped = false
		waitReplStatus(t, ds[0].api, "s", "Up", 60*time.Second)
		if n := strings.Count(ds[0].log(), `msg="replica evicted from the in-sync set" component=coordinator volume=s `); n != 1 {
			t.Errorf("the stopped replica was evicted %d times, want once", n)
		}
		c.Close()
		if out := mustCairn(t, ds[1].api, "volume", "verify", "s"); !strings.Contains(out, "Replicas are identical") {
			t.Errorf("volume verify after the resync:\n%s", out)
		}
	})
}
