package main

// Integration tests of issue 18 (cloudsnaps) against the real binary and a
// real S3 server (versitygw, internal/s3test): credentials, backup,
// incremental backup, restore read back over NBD with nbdcopy and cmp, a
// restore on another node (another cluster) from the bucket alone, delete
// of a chain's full backup, the schedule, and a daemon killed mid-upload.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/internal/s3test"
	"github.com/cairn-storage/cairn/internal/testenv"
)

func createCredential(t *testing.T, host, name string, srv *s3test.Server, bucket, passphrase string) {
	t.Helper()
	args := []string{"credentials", "create", name, "--provider", "s3", "--s3-endpoint", srv.Endpoint(),
		"--s3-access-key", s3test.AccessKey, "--s3-secret-key", s3test.SecretKey, "--bucket", bucket}
	if passphrase != "" {
		args = append(args, "--encryption-passphrase", passphrase)
	}
	mustCairn(t, host, args...)
}

func TestCloudsnapCLI(t *testing.T) {
	testenv.RequireTool(t, "nbdcopy")
	srv := s3test.Start(t, "cairn")
	d := startDaemon(t, t.TempDir(), "--snap-minute", "1s")
	host := d.api
	_, socket := d.nbdAddrs(t)
	uri := func(name string) string { return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, socket) }
	tmp := t.TempDir()
	read := func(name, to string) string {
		t.Helper()
		dst := filepath.Join(tmp, to)
		os.Remove(dst)
		run(t, "nbdcopy", uri(name), dst)
		return dst
	}

	// Credentials: the secrets never come back.
	mustFail(t, host, "no credentials", "cloudsnap", "list")
	createCredential(t, host, "s3", srv, "cairn", "pass phrase 1")
	mustFail(t, host, "already exists", "credentials", "create", "s3", "--s3-endpoint", srv.Endpoint(), "--s3-access-key", "a", "--s3-secret-key", "b")
	mustFail(t, host, "--s3-endpoint is required", "credentials", "create", "x", "--s3-access-key", "a", "--s3-secret-key", "b")
	for _, args := range [][]string{{"credentials", "list"}, {"credentials", "list", "-j"}} {
		out := mustCairn(t, host, args...)
		if strings.Contains(out, s3test.SecretKey) || strings.Contains(out, "pass phrase") || !strings.Contains(out, "s3") {
			t.Errorf("credentials list shows a secret or misses the credential:\n%s", out)
		}
	}
	mustCairn(t, host, "credentials", "validate", "s3")
	mustCairn(t, host, "credentials", "create", "bad", "--s3-endpoint", srv.Endpoint(), "--s3-access-key", s3test.AccessKey, "--s3-secret-key", "wrong", "--bucket", "cairn")
	mustFail(t, host, "refused the credentials", "credentials", "validate", "bad")
	mustCairn(t, host, "credentials", "create", "nobucket", "--s3-endpoint", srv.Endpoint(), "--s3-access-key", s3test.AccessKey, "--s3-secret-key", s3test.SecretKey, "--bucket", "nosuch")
	mustFail(t, host, `bucket "nosuch" does not exist`, "credentials", "validate", "nobucket")
	mustFail(t, host, "name one with --cred", "cloudsnap", "list")
	mustCairn(t, host, "credentials", "delete", "bad")
	mustCairn(t, host, "credentials", "delete", "nobucket")
	mustFail(t, host, "not found", "credentials", "delete", "nobucket")

	// A full backup, then an incremental of 4 MiB changed.
	mustCairn(t, host, "volume", "create", "v", "--size", "64M")
	run(t, "nbdcopy", patternFile(t, tmp, "A", 16<<20, 1), uri("v"))
	out := mustCairn(t, host, "cloudsnap", "backup", "v", "--wait")
	if !regexp.MustCompile(`(?m)^Cloudsnap backup done: [0-9a-f]{16}-\S+ \(full, `).MatchString(out) || !strings.Contains(out, "backup v:") {
		t.Errorf("backup --wait:\n%s", out)
	}
	exp1 := read("v", "exp1")
	run(t, "nbdcopy", patternFile(t, tmp, "B", 4<<20, 2), uri("v"))
	out = mustCairn(t, host, "cloudsnap", "backup", "v", "--wait", "-j")
	if jq(t, out, ".full == false") != "true" {
		t.Errorf("second backup is not incremental:\n%s", out)
	}
	if up := jsonInt(t, out, ".bytes_uploaded"); up < 4<<20 || up > 4<<20+256<<10 {
		t.Errorf("incremental uploaded %d bytes for 4 MiB changed", up)
	}
	exp2 := read("v", "exp2")
	list := mustCairn(t, host, "cloudsnap", "list", "--volume", "v", "-j")
	id1, id2 := jq(t, list, ".[0].id"), jq(t, list, ".[1].id")
	if jq(t, list, "length") != "2" || jq(t, list, ".[0].full") != "true" || jq(t, list, ".[0].encrypted") != "true" {
		t.Errorf("cloudsnap list:\n%s", list)
	}
	if snaps := mustCairn(t, host, "volume", "snapshot", "list", "v"); strings.Count(snaps, "v.cloudsnap-") != 1 {
		t.Errorf("want exactly one local cloudsnap snapshot (the base of the next), got:\n%s", snaps)
	}
	status := mustCairn(t, host, "cloudsnap", "status", "v")
	if strings.Count(status, " done ") != 2 {
		t.Errorf("cloudsnap status:\n%s", status)
	}

	// Restores read exactly what each snapshot held.
	mustCairn(t, host, "cloudsnap", "restore", "--snap", id1, "--name", "r1", "--wait")
	sameFile(t, "restore of the full backup", exp1, read("r1", "r1"))
	mustCairn(t, host, "cloudsnap", "restore", "--snap", id2, "--name", "r2", "--wait")
	sameFile(t, "restore of the incremental", exp2, read("r2", "r2"))
	mustFail(t, host, `volume "r1" already exists`, "cloudsnap", "restore", "--snap", id1, "--name", "r1")
	mustFail(t, host, "--snap ID is required", "cloudsnap", "restore")
	mustFail(t, host, "not a cloudsnap id", "cloudsnap", "restore", "--snap", "../x")

	// Delete the chain's full backup: the incremental still restores.
	mustCairn(t, host, "cloudsnap", "delete", "--snap", id1)
	mustCairn(t, host, "cloudsnap", "restore", "--snap", id2, "--name", "r3", "--wait")
	sameFile(t, "restore after deleting its base", exp2, read("r3", "r3"))
	mustFail(t, host, "not found", "cloudsnap", "restore", "--snap", id1, "--name", "r4")

	// Another node of another cluster, pointed at the same bucket, sees the
	// backup and restores it.
	d2 := startDaemon(t, t.TempDir())
	createCredential(t, d2.api, "same", srv, "cairn", "pass phrase 1")
	if l := mustCairn(t, d2.api, "cloudsnap", "list", "-j"); jq(t, l, ".[0].id") != id2 {
		t.Errorf("the other node lists:\n%s", l)
	}
	mustCairn(t, d2.api, "cloudsnap", "restore", "--snap", id2, "--wait")
	_, socket2 := d2.nbdAddrs(t)
	dst := filepath.Join(tmp, "other")
	run(t, "nbdcopy", fmt.Sprintf("nbd+unix:///v?socket=%s", socket2), dst)
	sameFile(t, "restore on another node", exp2, dst)
	// A wrong passphrase there: a clear refusal, no volume.
	createCredential(t, d2.api, "wrongpass", srv, "cairn", "not it")
	mustFail(t, d2.api, "wrong encryption passphrase", "cloudsnap", "restore", "--snap", id2, "--name", "w", "--cred", "wrongpass")

	// Schedule: every "minute" (1 s here), keep 2.
	mustCairn(t, host, "volume", "update", "v", "--cloudsnap_interval", "1", "--cloudsnap_keep", "2")
	if v := mustCairn(t, host, "volume", "inspect", "v"); !strings.Contains(v, "every 1 min, keep 2") {
		t.Errorf("volume inspect does not show the cloudsnap schedule:\n%s", v)
	}
	waitFor(t, d, "two scheduled cloudsnaps pruned", func(log string) bool { return strings.Count(log, "scheduled cloudsnap pruned") >= 2 })
	mustCairn(t, host, "volume", "update", "v", "--cloudsnap_interval", "0")
	time.Sleep(2 * time.Second) // a backup started just before may still finish
	list = mustCairn(t, host, "cloudsnap", "list", "--volume", "v", "-j")
	if n := jsonInt(t, list, "length"); n < 2 || n > 4 {
		t.Errorf("after pruning to 2, %d backups of v are listed (want the manual one and 2 scheduled, give or take the one in flight):\n%s", n, list)
	}

	// The server dies: a backup fails clearly, nothing is listed for it.
	srv.Kill()
	// (--wait prints progress on stdout until the failure.)
	if r := cairn(t, host, "cloudsnap", "backup", "v", "--wait", "--full"); r.code == 0 || !strings.Contains(r.stderr, "cannot reach") {
		t.Errorf("backup with the server dead: %s", r)
	}
	srv.Restart()
	if l := mustCairn(t, host, "cloudsnap", "list", "--volume", "v", "-j"); jq(t, l, "length") != fmt.Sprint(strings.Count(list, `"id"`)) {
		t.Errorf("a failed backup is listed:\n%s\nbefore:\n%s", l, list)
	}
}

// waitJobUnderway waits until volume's cloudsnap job has moved some bytes
// (the status field named by the jq path), and skips the test if the job
// ended first: there is nothing left to interrupt.
func waitJobUnderway(t *testing.T, host, volume, bytesField string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st := mustCairn(t, host, "cloudsnap", "status", volume, "-j")
		if state := jq(t, st, ".[0].state"); state != "running" {
			t.Skipf("the %s job ended before the kill (%s); nothing more to test", volume, state)
		}
		if jsonInt(t, st, bytesField) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the %s job moved nothing in 60 s", volume)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SIGKILL mid-upload: the next start cleans up — the local snapshot the
// backup took is gone, nothing of it stays in the bucket, status says what
// happened — and the next backup works.
func TestCloudsnapDaemonKilledMidUpload(t *testing.T) {
	testenv.RequireTool(t, "nbdcopy")
	srv := s3test.Start(t, "cairn")
	dataDir := t.TempDir()
	d := startDaemon(t, dataDir)
	host := d.api
	_, socket := d.nbdAddrs(t)
	createCredential(t, host, "s3", srv, "cairn", "")
	mustCairn(t, host, "volume", "create", "big", "--size", "512M")
	run(t, "nbdcopy", patternFile(t, t.TempDir(), "A", 384<<20, 5), fmt.Sprintf("nbd+unix:///big?socket=%s", socket))
	out := mustCairn(t, host, "cloudsnap", "backup", "big", "-j")
	id := jq(t, out, ".cloudsnap")
	waitJobUnderway(t, host, "big", ".[0].bytes_stored")
	d.cmd.Process.Kill()
	<-d.exited
	var stored []string
	filepath.Walk(filepath.Join(srv.Dir, "cairn"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			stored = append(stored, p)
		}
		return nil
	})
	t.Logf("killed mid-upload with %d objects stored", len(stored))

	d = startDaemon(t, dataDir)
	host = d.api
	waitFor(t, d, "the interrupted backup cleaned up", func(log string) bool { return strings.Contains(log, "interrupted job cleaned up") })
	if snaps := mustCairn(t, host, "volume", "snapshot", "list", "big"); strings.Contains(snaps, "cloudsnap") {
		t.Errorf("the interrupted backup's snapshot is left:\n%s", snaps)
	}
	// Its spec went with it: the cluster lists no such snapshot.
	jq(t, mustCairn(t, host, "volume", "list", "--all", "-j"), `[.[].name | select(contains("cloudsnap"))] == []`)
	if l := mustCairn(t, host, "cloudsnap", "list", "-j"); jq(t, l, "length") != "0" {
		t.Errorf("an interrupted backup is listed:\n%s", l)
	}
	var left []string
	filepath.Walk(filepath.Join(srv.Dir, "cairn"), func(p string, fi os.FileInfo, err error) error {
		// (Abandon's mark stays: cloudsnap/doc.go, "Concurrent deletes".)
		if err == nil && !fi.IsDir() && fi.Name() != "swept" {
			left = append(left, p)
		}
		return nil
	})
	if len(left) != 0 {
		t.Errorf("objects of the interrupted backup are left: %v", left)
	}
	st := mustCairn(t, host, "cloudsnap", "status", "-j")
	if jq(t, st, ".[0].cloudsnap") != id || jq(t, st, ".[0].state") != "failed" || !strings.Contains(jq(t, st, ".[0].error"), "interrupted by a daemon restart") {
		t.Errorf("status after the restart:\n%s", st)
	}
	out = mustCairn(t, host, "cloudsnap", "backup", "big", "--wait")
	if !strings.Contains(out, "(full, ") {
		t.Errorf("backup after the restart:\n%s", out)
	}

	// SIGKILL mid-restore. While it fills, the volume is nobody else's (an
	// NBD client is refused); after the restart the partial volume is gone
	// before the daemon is ready, never recorded as a usable volume.
	last := jq(t, mustCairn(t, host, "cloudsnap", "list", "--volume", "big", "-j"), ".[-1].id")
	mustCairn(t, host, "cloudsnap", "restore", "--snap", last, "--name", "copy")
	waitJobUnderway(t, host, "copy", ".[0].bytes_done")
	_, socket = d.nbdAddrs(t)
	if r := exec.Command("nbdinfo", "--size", fmt.Sprintf("nbd+unix:///copy?socket=%s", socket)); r.Run() == nil {
		if st := mustCairn(t, host, "cloudsnap", "status", "copy", "-j"); jq(t, st, ".[0].state") == "running" {
			t.Error("an NBD client opened a volume being restored")
		}
	}
	d.cmd.Process.Kill()
	<-d.exited
	d = startDaemon(t, dataDir)
	host = d.api
	// The restore may have finished between waitJobUnderway and the kill
	// (the nbdinfo check takes a while): then no running job was recorded,
	// copy is a finished volume, and there is nothing to clean up. (A
	// restore is recorded running before it touches anything, so one the
	// kill interrupted is always reported failed below.)
	if st := mustCairn(t, host, "cloudsnap", "status", "copy", "-j"); jq(t, st, "length") == "0" {
		t.Skip("the restore finished before the kill; nothing more to test")
	}
	jq(t, mustCairn(t, host, "volume", "list", "--all", "-j"), `[.[].name | select(. == "copy")] == []`)
	// Deleted before the first reconciliation, which never took the
	// partial volume for a finished one.
	if log := d.log(); strings.Contains(log, `brought in line with this node's drives" name=copy`) {
		t.Errorf("the partial restored volume was recorded ready at start:\n%s", log)
	}
	st = mustCairn(t, host, "cloudsnap", "status", "copy", "-j")
	if jq(t, st, ".[0].state") != "failed" || !strings.Contains(jq(t, st, ".[0].error"), "interrupted by a daemon restart") {
		t.Errorf("status of the interrupted restore after the restart:\n%s", st)
	}
}

// Cloudsnaps in a 2-node cluster: what they make on a node (the backup's
// local snapshot, a restored volume) is a cluster object — listed from the
// other node, never reported unregistered, its name taken cluster-wide —
// and a backup asked of the node without the volume runs on its holder.
func TestCloudsnapCluster(t *testing.T) {
	testenv.RequireTool(t, "nbdcopy")
	srv := s3test.Start(t, "cairn")
	n1 := startDaemon(t, t.TempDir())
	args2 := []string{"--api", "127.0.0.2:0", "--nbd", "127.0.0.2:0", "-k", "etcd://" + n1.kvdbAddr(t)}
	n2 := startDaemon(t, t.TempDir(), args2...)
	id1, id2 := nodeID(t, n1.api), nodeID(t, n2.api)
	createCredential(t, n1.api, "s3", srv, "cairn", "")

	// v lives on node 2 (the joiner: it can restart without the kvdb going).
	mustCairn(t, n1.api, "volume", "create", "v", "--size", "64M", "--nodes", id2)
	_, socket2 := n2.nbdAddrs(t)
	tmp := t.TempDir()
	src := patternFile(t, tmp, "A", 8<<20, 3)
	run(t, "nbdcopy", src, fmt.Sprintf("nbd+unix:///v?socket=%s", socket2))

	// Asked of node 1, done by node 2 (forwarded), followed through node 1.
	out := mustCairn(t, n1.api, "cloudsnap", "backup", "v", "--wait", "-j")
	id := jq(t, out, ".cloudsnap")
	jq(t, mustCairn(t, n2.api, "cloudsnap", "status", "-j"), fmt.Sprintf(`[.[] | select(.cloudsnap == %q and .state == "done")] | length == 1`, id))
	jq(t, mustCairn(t, n1.api, "cloudsnap", "status", "-j"), `length == 0`)
	jq(t, mustCairn(t, n1.api, "cloudsnap", "status", "v", "-j"), fmt.Sprintf(`.[0].cloudsnap == %q`, id))

	// A restore lands on the node that runs it; a name another node has
	// is refused there.
	mustCairn(t, n1.api, "volume", "create", "taken", "--size", "64M", "--nodes", id1)
	mustFail(t, n2.api, `volume "taken" already exists in the cluster`, "cloudsnap", "restore", "--snap", id, "--name", "taken")
	mustCairn(t, n2.api, "cloudsnap", "restore", "--snap", id, "--name", "r", "--wait")
	if got := volumeNode(t, n1.api, "r"); got != id2 {
		t.Errorf("restored volume r is on node %q, want node 2 (%s)", got, id2)
	}
	dst := filepath.Join(tmp, "r")
	run(t, "nbdcopy", fmt.Sprintf("nbd+unix:///r?socket=%s", socket2), dst)
	if b, err := os.ReadFile(dst); err != nil || len(b) != 64<<20 {
		t.Fatalf("read back r: %d bytes, %v", len(b), err)
	} else if want, _ := os.ReadFile(src); string(b[:len(want)]) != string(want) {
		t.Error("restored volume r does not hold what v held")
	}

	// A restore that fails mid-fill (a damaged object) leaves no volume
	// and no spec.
	var victim string
	filepath.Walk(filepath.Join(srv.Dir, "cairn"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && filepath.Base(p) != "manifest.json" {
			victim = p
		}
		return nil
	})
	if victim == "" {
		t.Fatal("the backup stored no data object")
	}
	b, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(victim, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := cairn(t, n2.api, "cloudsnap", "restore", "--snap", id, "--name", "bad", "--wait"); r.code == 0 || !strings.Contains(r.stderr, "damaged") {
		t.Errorf("restore of a damaged backup: %s", r)
	}
	mustFail(t, n2.api, "not found", "volume", "inspect", "bad")

	// Node 2 restarted reconciles at its start: nothing unregistered. Node
	// 1 lists the restored volume and the backup's local snapshot, and not
	// the failed restore.
	if code := n2.stop(t); code != 0 {
		t.Fatalf("node 2 exit code %d", code)
	}
	n2 = startDaemon(t, n2.dataDir, args2...)
	jq(t, mustCairn(t, n2.api, "status", "-j"), `.status == "operational" and .cluster_summary.unregistered_volumes == [] and .cluster_summary.missing_volumes == []`)
	all := mustCairn(t, n1.api, "volume", "list", "--all", "-j")
	jq(t, all, fmt.Sprintf(`[.[] | select(.node == %q and (.name == "r" or (.name | startswith("v.cloudsnap-"))) and .state == "up")] | length == 2`, id2))
	jq(t, all, `[.[].name] | index("bad") == null`)
}
