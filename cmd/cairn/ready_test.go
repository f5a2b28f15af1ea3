package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// freeAPIAddr returns a loopback address nothing listens on, so that a test
// knows the daemon's address before the daemon has said anything.
func freeAPIAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// writeSynced writes a small file and makes it durable (it must survive a
// SIGKILL of the daemon).
func writeSynced(t *testing.T, path, content string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// pollStatus runs `cairn status` as fast as it can until it succeeds and
// returns every failed run before that.
func pollStatus(t *testing.T, d *testDaemon, api string) []result {
	t.Helper()
	var failed []result
	for deadline := time.Now().Add(30 * time.Second); ; {
		r := cairn(t, api, "status")
		if r.code == 0 {
			return failed
		}
		failed = append(failed, r)
		select {
		case <-d.exited:
			t.Fatalf("daemon exited before status succeeded (%v); last status: %s", d.err, r)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("status did not succeed within 30s; last: %s", r)
		}
	}
}

// daemonWithMount starts a daemon on a fixed API address with the volume
// name made and mounted on a temporary directory. Restarts pass fixed, which
// puts the embedded kvdb on fixed addresses too: a restarted daemon opens
// its kvdb before its API, and an ephemeral port drawn for the kvdb could
// be the API port the last daemon just let go.
func daemonWithMount(t *testing.T, name string) (d *testDaemon, dataDir, mnt, api string, fixed []string) {
	t.Helper()
	needHost(t)
	dataDir, mnt = t.TempDir(), t.TempDir()
	hostCleanup(t, dataDir, mnt)
	api = freeAPIAddr(t)
	fixed = []string{"--api", api, "--kvdb-listen", freeAPIAddr(t), "--kvdb-peer", freeAPIAddr(t)}
	d = startDaemon(t, dataDir, fixed...)
	mustCairn(t, d.api, "volume", "create", name, "--size", "64M")
	mustCairn(t, d.api, "host", "mount", name, mnt)
	return d, dataDir, mnt, api, fixed
}

// TestHostReadyOnlyOnceMounted restarts a daemon with a mounted volume, by
// SIGTERM and by SIGKILL, and polls `cairn status` as fast as it can: the
// instant status first succeeds the volume must be mounted again with the
// file written before the restart in it — an application gated on status
// must never find the bare mount point. The first restarts hold the restore
// (--restore-gate) to check what the node says while it is starting.
func TestHostReadyOnlyOnceMounted(t *testing.T) {
	d, dataDir, mnt, api, fixed := daemonWithMount(t, "pgdata")

	const restarts = 20
	for i := range restarts {
		name := fmt.Sprintf("before-restart-%d", i)
		writeSynced(t, filepath.Join(mnt, name), name)
		how := "SIGTERM"
		if i%2 == 1 {
			how = "SIGKILL"
			if err := d.cmd.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			<-d.exited
		} else if code := d.stop(t); code != 0 {
			t.Fatalf("restart %d: daemon exit code %d after SIGTERM", i, code)
		}

		gated := i < 2
		args := slices.Clone(fixed)
		gate := filepath.Join(t.TempDir(), "gate")
		if gated {
			args = append(args, "--restore-gate", gate)
		}
		d = spawnDaemon(t, dataDir, args...)
		if gated {
			checkStarting(t, d, api, mnt)
			writeSynced(t, gate, "")
		}
		pollStatus(t, d, api)
		// The instant status succeeds: mounted (mountinfo), with the data.
		if !isMounted(t, mnt) {
			t.Fatalf("restart %d (%s): status succeeded but %s is not in /proc/self/mountinfo", i, how, mnt)
		}
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || string(got) != name {
			t.Fatalf("restart %d (%s): status succeeded but %s/%s reads %q, %v", i, how, mnt, name, got, err)
		}
	}
	mustCairn(t, api, "host", "unmount", "pgdata", mnt)
	if code := d.stop(t); code != 0 {
		t.Errorf("daemon exit code %d", code)
	}
}

// checkStarting waits until the node, its restore held, says what it is
// restoring, and checks what it says while it is starting: status exits
// non-zero naming what it restores, its JSON says "starting", changes are
// refused, reads are served, and nothing is mounted yet.
func checkStarting(t *testing.T, d *testDaemon, api, mnt string) {
	t.Helper()
	const want = "node is starting: restoring 1 attachment"
	// Until the API listens: unreachable; until the restore has read its
	// list: "node is starting" with no count.
	r := cairn(t, api, "status")
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(r.stderr, want); r = cairn(t, api, "status") {
		if r.code == 0 {
			t.Fatalf("status succeeded while the restore is held:\n%s", r)
		}
		select {
		case <-d.exited:
			t.Fatalf("daemon exited (%v)", d.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("status does not say %q within 30s; last: %s", want, r)
		}
	}
	if r.code == 0 || !strings.Contains(r.stdout, "cairn is starting") || !strings.Contains(r.stdout, "Restoring: 1 attachment") {
		t.Errorf("status while starting: want a non-zero exit and the status on stdout, got %s", r)
	}
	r = cairn(t, api, "status", "-j")
	if r.code == 0 {
		t.Errorf("status -j while starting succeeded: %s", r)
	}
	checkKeys(t, r.stdout)
	jq(t, r.stdout, `.status == "starting" and .restoring == 1 and .restore_errors == []`)
	mustFail(t, api, "node is starting", "volume", "create", "other", "--size", "64M")
	mustFail(t, api, "node is starting", "host", "unmount", "pgdata", mnt)
	jq(t, mustCairn(t, api, "volume", "list", "-j"), `.[0].name == "pgdata"`)
	if isMounted(t, mnt) {
		t.Errorf("%s mounted while the restore is held", mnt)
	}
}

func checkKeys(t *testing.T, raw string) {
	t.Helper()
	if got := keysOf(t, []byte(raw)); strings.Join(got, ",") != strings.Join(statusKeys, ",") {
		t.Errorf("status JSON keys = %v, want %v", got, statusKeys)
	}
}

// TestHostRestoreErrorsInStatus: a mount that cannot be restored (its mount
// point is gone) does not keep the node starting: status succeeds, says
// degraded and lists the failure first, in the table and in the JSON.
func TestHostRestoreErrorsInStatus(t *testing.T) {
	needHost(t)
	dataDir, parent := t.TempDir(), t.TempDir()
	mnt := filepath.Join(parent, "gone")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	hostCleanup(t, dataDir, parent)
	d := startDaemon(t, dataDir)
	mustCairn(t, d.api, "volume", "create", "lost", "--size", "64M")
	mustCairn(t, d.api, "host", "mount", "lost", mnt)
	if code := d.stop(t); code != 0 {
		t.Fatalf("daemon exit code %d", code)
	}
	if err := os.Remove(mnt); err != nil {
		t.Fatal(err)
	}

	d = startDaemon(t, dataDir)
	out := mustCairn(t, d.api, "status")
	lines := strings.Split(out, "\n")
	if len(lines) < 4 || lines[0] != "Status: cairn is degraded" || !strings.Contains(lines[1], "Not restored after restart: 1") ||
		!strings.Contains(lines[3], "lost") || !strings.Contains(lines[3], mnt) {
		t.Errorf("status does not lead with the restore failure:\n%s", out)
	}
	st := mustCairn(t, d.api, "status", "-j")
	checkKeys(t, st)
	jq(t, st, fmt.Sprintf(`.status == "degraded" and .restoring == 0 and (.restore_errors | length == 1)
		and .restore_errors[0].volume == "lost" and .restore_errors[0].path == %q and (.restore_errors[0].error | length > 0)`, mnt))
	// The node is ready: changes are served again.
	mustCairn(t, d.api, "volume", "create", "next", "--size", "64M")
	d.stop(t)

	// What was not restored stays recorded: once the mount point is back,
	// the next start mounts it again.
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, dataDir)
	jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "operational" and .restore_errors == []`)
	if !isMounted(t, mnt) {
		t.Fatalf("%s not mounted again once it was back", mnt)
	}
	mustCairn(t, d.api, "host", "unmount", "lost", mnt)
	mustCairn(t, d.api, "host", "mount", "lost", mnt)
	d.stop(t)

	// Forgetting a mount that was not restored: host unmount.
	if err := os.Remove(mnt); err != nil {
		t.Fatal(err)
	}
	d = startDaemon(t, dataDir)
	jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "degraded" and (.restore_errors | length == 1)`)
	mustCairn(t, d.api, "host", "unmount", "lost", mnt)
	jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "operational" and .restore_errors == []`)
	jq(t, mustCairn(t, d.api, "volume", "inspect", "lost", "-j"), `.device == ""`)
	d.stop(t)
	d = startDaemon(t, dataDir)
	jq(t, mustCairn(t, d.api, "status", "-j"), `.status == "operational" and .restore_errors == []`)
	d.stop(t)
}

// TestHostStopWhileRestoringKeepsRecord: a daemon stopped (SIGTERM) while
// it is still restoring keeps the attachments it had not restored yet in
// its record, so the start after that mounts them (before the fix they were
// dropped, and the application found a bare directory).
func TestHostStopWhileRestoringKeepsRecord(t *testing.T) {
	d, dataDir, mnt, api, fixed := daemonWithMount(t, "kept")
	writeSynced(t, filepath.Join(mnt, "data"), "kept")
	if code := d.stop(t); code != 0 {
		t.Fatalf("daemon exit code %d", code)
	}

	gate := filepath.Join(t.TempDir(), "gate") // never created: the restore waits
	d = spawnDaemon(t, dataDir, slices.Concat(fixed, []string{"--restore-gate", gate})...)
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(cairn(t, api, "status", "-j").stdout, `"status": "starting"`); {
		if time.Now().After(deadline) {
			t.Fatal("the node never said it was starting")
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("daemon stopped while restoring: exit code %d", code)
	}

	d = startDaemon(t, dataDir, fixed...)
	pollStatus(t, d, api)
	if !isMounted(t, mnt) {
		t.Fatalf("%s not mounted after a start that follows a stop during the restore", mnt)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "data")); err != nil || string(got) != "kept" {
		t.Fatalf("data after the restore: %q, %v", got, err)
	}
	d.stop(t)
}
