package main

// An external etcd cluster of three members (Debian's etcd-server, `make
// deps`), started by the test on loopback ports, each member in its own
// process group: the daemons join it with -k; the members are killed and
// restarted under them.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/cluster"
	"github.com/cairn-storage/cairn/internal/testenv"
)

// etcdMember is one process of the external etcd cluster.
type etcdMember struct {
	name, dir, client, peer, logPath string
	args                             []string
	cmd                              *exec.Cmd
	exited                           chan struct{}
}

// startEtcdCluster starts n members on free loopback ports and waits until
// the cluster answers. Every member is killed (its process group) in
// t.Cleanup, pass or fail.
func startEtcdCluster(t *testing.T, n int) []*etcdMember {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		testenv.Unavailable(t, "etcd is not installed (Debian etcd-server): run `make deps`")
	}
	ms := make([]*etcdMember, n)
	var initial []string
	for i := range ms {
		ms[i] = &etcdMember{name: fmt.Sprintf("m%d", i), dir: filepath.Join(t.TempDir(), "etcd"), client: freeAPIAddr(t), peer: freeAPIAddr(t)}
		initial = append(initial, ms[i].name+"=http://"+ms[i].peer)
	}
	for _, m := range ms {
		m.args = []string{bin, "--name", m.name, "--data-dir", m.dir,
			"--listen-client-urls", "http://" + m.client, "--advertise-client-urls", "http://" + m.client,
			"--listen-peer-urls", "http://" + m.peer, "--initial-advertise-peer-urls", "http://" + m.peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new", "--initial-cluster-token", "cairn-test"}
		m.logPath = filepath.Join(t.TempDir(), m.name+".log")
		m.start(t)
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.kill()
			if t.Failed() {
				log, _ := os.ReadFile(m.logPath)
				t.Logf("etcd %s log (last 2000 bytes):\n%s", m.name, tail(log, 2000))
			}
		}
	})
	waitKvdb(t, endpointsOf(ms), 30*time.Second)
	return ms
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (m *etcdMember) start(t *testing.T) {
	t.Helper()
	logFile, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command(m.args[0], m.args[1:]...)
	m.cmd.Stdout, m.cmd.Stderr = logFile, logFile
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		cmd.Wait()
		logFile.Close()
		close(exited)
	}(m.cmd, m.exited)
}

// kill SIGKILLs the member's process group and waits for it to be gone.
func (m *etcdMember) kill() {
	if m.cmd == nil {
		return
	}
	select {
	case <-m.exited:
	default:
		syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.exited
	}
}

func endpointsOf(ms []*etcdMember) []string {
	var eps []string
	for _, m := range ms {
		eps = append(eps, m.client)
	}
	return eps
}

// waitKvdb waits until the etcd at endpoints answers a quorum read.
func waitKvdb(t *testing.T, endpoints []string, limit time.Duration) {
	t.Helper()
	urls := make([]string, len(endpoints))
	for i, e := range endpoints {
		urls[i] = "http://" + e
	}
	deadline := time.Now().Add(limit)
	for {
		cli, err := cluster.Connect(context.Background(), urls, "")
		if err == nil {
			cli.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd at %v not answering after %v: %v", endpoints, limit, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitCluster polls `cluster list` on host until it succeeds with every
// node Online, failing after limit.
func waitCluster(t *testing.T, host string, nodes int, limit time.Duration) {
	t.Helper()
	began := time.Now()
	for {
		r := cairn(t, host, "cluster", "list", "-j")
		if r.code == 0 && jqQuiet(r.stdout, fmt.Sprintf(`length == %d and all(.[]; .status == "Online")`, nodes)) {
			return
		}
		if time.Since(began) > limit {
			t.Fatalf("cluster list on %s not %d Online %v after the change: %s", host, nodes, limit, r)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// jqQuiet reports whether jq -e filter holds for input.
func jqQuiet(input, filter string) bool {
	cmd := exec.Command("jq", "-e", filter)
	cmd.Stdin = strings.NewReader(input)
	return cmd.Run() == nil
}

func TestClusterExternalEtcd(t *testing.T) {
	t.Parallel() // own addresses, ports and data dirs; overlaps the waits of the other cluster tests
	ms := startEtcdCluster(t, 3)
	kvdb := "etcd://" + strings.Join(endpointsOf(ms), ",")
	var ds []*testDaemon
	for i := range 2 {
		ip := fmt.Sprintf("127.0.0.%d", i+1)
		ds = append(ds, startDaemon(t, t.TempDir(), "--api", ip+":0", "--nbd", ip+":0", "-k", kvdb, "-c", "ext"))
	}
	for _, d := range ds {
		if strings.Contains(d.log(), "kvdb listening") {
			t.Fatalf("a daemon given -k started an embedded kvdb:\n%s", d.log())
		}
		jq(t, mustCairn(t, d.api, "cluster", "list", "-j"), `length == 2 and all(.[]; .status == "Online")`)
		st := mustCairn(t, d.api, "status", "-j")
		jq(t, st, `.cluster == "ext" and .cluster_summary.kvdb.embedded == false and (.cluster_summary.kvdb.endpoints | length) == 3 and .cluster_summary.kvdb.healthy`)
	}

	// A volume on node 2 with data on it, over NBD.
	mustCairn(t, ds[1].api, "volume", "create", "v", "--size", "64M", "--nodes", nodeID(t, ds[1].api))
	data := patternFile(t, t.TempDir(), "a.bin", 1<<20, 1)
	nbdWriteFile(t, ds[1], "v", data)

	// One member of three gone: quorum stands, everything works (a call
	// may meet the leader election; it settles within seconds).
	ms[0].kill()
	for _, d := range ds {
		waitCluster(t, d.api, 2, 15*time.Second)
	}
	mustCairn(t, ds[0].api, "cluster", "inspect", nodeID(t, ds[1].api))

	// Two gone: no quorum. Cluster verbs fail fast with the kvdb error,
	// status says so; the node's volumes and NBD I/O go on.
	ms[1].kill()
	for _, d := range ds {
		began := time.Now()
		mustFail(t, d.api, "kvdb unavailable", "cluster", "list")
		if took := time.Since(began); took > 10*time.Second {
			t.Errorf("cluster list with no kvdb quorum took %v", took)
		}
		jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "degraded" and .cluster_summary.kvdb.healthy == false`)
	}
	data2 := patternFile(t, t.TempDir(), "b.bin", 1<<20, 2)
	nbdWriteFile(t, ds[1], "v", data2)
	want, _ := os.ReadFile(data2)
	if got := nbdReadBack(t, ds[1], "v", len(want)); !bytes.Equal(got, want) {
		t.Fatal("NBD read-back after a write with the kvdb down differs")
	}
	mustFail(t, ds[1].api, "kvdb unavailable", "volume", "create", "w", "--size", "64M")

	// Members back: cluster verbs work again, both nodes Online, no restart.
	ms[0].start(t)
	ms[1].start(t)
	for _, d := range ds {
		waitCluster(t, d.api, 2, 30*time.Second)
		jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "operational" and .cluster_summary.kvdb.healthy`)
	}
	if got := nbdReadBack(t, ds[1], "v", len(want)); !bytes.Equal(got, want) {
		t.Fatal("NBD read-back after the kvdb came back differs")
	}
}
