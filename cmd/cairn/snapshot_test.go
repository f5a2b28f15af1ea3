package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Integration tests of issue 5 against the real binary: snapshots, clones
// and restore read back over NBD with nbdcopy and cmp, a raw NBD write to a
// snapshot refused with EPERM, the 64-snapshot limit, space given back,
// delete --force, and scheduled snapshots with a shortened minute.

// patternFile writes size pseudo-random bytes from seed to a file in dir.
func patternFile(t *testing.T, dir, name string, size int, seed uint64) string {
	t.Helper()
	b := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sameFile compares two files with cmp, as an operator would.
func sameFile(t *testing.T, what, a, b string) {
	t.Helper()
	if out, err := exec.Command("cmp", a, b).CombinedOutput(); err != nil {
		t.Errorf("%s: %s and %s differ: %v %s", what, a, b, err, out)
	}
}

// retryCairn runs a CLI command until it succeeds (a client's disconnect
// reaches the daemon asynchronously).
func retryCairn(t *testing.T, host string, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := cairn(t, host, args...)
		if r.code == 0 {
			return r.stdout
		}
		if time.Now().After(deadline) {
			t.Fatalf("cairn %s: %s", strings.Join(args, " "), r)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func jsonInt(t *testing.T, input, filter string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(jq(t, input, filter), 10, 64)
	if err != nil {
		t.Fatalf("jq %s: %v", filter, err)
	}
	return n
}

func TestSnapshotCloneRestoreOverNBD(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	host := d.api
	_, socket := d.nbdAddrs(t)
	uri := func(name string) string { return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, socket) }
	tmp := t.TempDir()
	const size = 16 << 20
	a := patternFile(t, tmp, "A", size, 1)
	b := patternFile(t, tmp, "B", size, 2)
	c := patternFile(t, tmp, "C", size, 3)
	read := func(name string) string {
		t.Helper()
		dst := filepath.Join(tmp, "read-"+name)
		os.Remove(dst)
		run(t, "nbdcopy", uri(name), dst)
		return dst
	}

	mustCairn(t, host, "volume", "create", "data", "--size", "16M")
	run(t, "nbdcopy", a, uri("data"))
	out := mustCairn(t, host, "volume", "snapshot", "create", "data", "--name", "data.a")
	if !regexp.MustCompile(`^Volume snap successful: [0-9a-f]+\n$`).MatchString(out) {
		t.Errorf("snapshot create: %q", out)
	}
	run(t, "nbdcopy", b, uri("data"))

	// The snapshot reads A, the volume B.
	sameFile(t, "snapshot after the volume was overwritten", a, read("data.a"))
	sameFile(t, "volume", b, read("data"))

	// The snapshot is a read-only export: nbdinfo says so, and a write is
	// refused with EPERM (an NBD client that ignores the flag).
	jq(t, run(t, "nbdinfo", "--json", uri("data.a")), `.exports[0].is_read_only == true and .exports[0]."export-size" == 16777216`)
	jq(t, run(t, "nbdinfo", "--json", uri("data")), `.exports[0].is_read_only == false`)
	conn := holdExport(t, socket, "data.a")
	if err := conn.WriteAt(make([]byte, 4096), 0, false); !errors.Is(err, syscall.EPERM) {
		t.Errorf("NBD write to a snapshot: %v, want EPERM", err)
	}
	conn.Close()
	if out, err := exec.Command("nbdcopy", b, uri("data.a")).CombinedOutput(); err == nil {
		t.Errorf("nbdcopy onto a snapshot succeeded:\n%s", out)
	}
	sameFile(t, "snapshot after refused writes", a, read("data.a"))

	// inspect shows the snapshot as a read-only volume with its parent and
	// the bytes only it holds (all of A: the volume was overwritten).
	snapJSON := mustCairn(t, host, "volume", "inspect", "data.a", "-j")
	checkVolumeJSON(t, snapJSON)
	jq(t, snapJSON, `.snapshot == true and .readonly == true and .parent == "data" and .used == 16777216`)
	human := mustCairn(t, host, "volume", "inspect", "data.a")
	for _, want := range []string{"Snapshot       :  yes", "Parent         :  data", "Read-only      :  yes", "exclusive"} {
		if !strings.Contains(human, want) {
			t.Errorf("volume inspect of a snapshot lacks %q:\n%s", want, human)
		}
	}
	jq(t, mustCairn(t, host, "volume", "inspect", "data", "-j"), `.snapshot == false and .snap_keep == 5 and .parent == ""`)

	// volume list: volumes only; --all and --snapshot show snapshots.
	jq(t, mustCairn(t, host, "volume", "list", "-j"), `[.[].name] == ["data"]`)
	jq(t, mustCairn(t, host, "volume", "list", "--all", "-j"), `[.[].name] == ["data", "data.a"]`)
	jq(t, mustCairn(t, host, "volume", "list", "-s", "-j"), `[.[].name] == ["data.a"]`)
	jq(t, mustCairn(t, host, "volume", "snapshot", "list", "data", "-j"), `[.[].name] == ["data.a"] and .[0].snapshot`)
	if out := mustCairn(t, host, "volume", "snapshot", "ls"); !strings.Contains(out, "data.a") || !strings.Contains(out, "EXCLUSIVE") {
		t.Errorf("snapshot ls:\n%s", out)
	}

	// A clone reads A and diverges on write; the snapshot does not move.
	out = mustCairn(t, host, "volume", "clone", "data.a", "--name", "copy")
	if !regexp.MustCompile(`^Volume clone successful: [0-9a-f]+\n$`).MatchString(out) {
		t.Errorf("clone: %q", out)
	}
	jq(t, mustCairn(t, host, "volume", "inspect", "copy", "-j"), `.snapshot == false and .readonly == false and .parent == "data.a"`)
	sameFile(t, "clone", a, read("copy"))
	run(t, "nbdcopy", c, uri("copy"))
	sameFile(t, "clone after writing", c, read("copy"))
	sameFile(t, "snapshot after its clone was written", a, read("data.a"))
	sameFile(t, "volume after its snapshot's clone was written", b, read("data"))

	// Restore: refused while an NBD client is connected, then A is back.
	conn = holdExport(t, socket, "data")
	mustFail(t, host, `cannot restore volume "data": it is in use`, "volume", "restore", "data", "--snapshot", "data.a")
	sameFile(t, "volume after a refused restore", b, read("data"))
	conn.Close()
	out = retryCairn(t, host, "volume", "restore", "data", "--snapshot", "data.a")
	if out != "Successfully restored volume data from snapshot data.a\n" {
		t.Errorf("restore: %q", out)
	}
	sameFile(t, "volume after restore", a, read("data"))

	// Delete gives space back: overwrite the volume so the snapshot alone
	// holds A, then delete it.
	run(t, "nbdcopy", b, uri("data"))
	exclusive := jsonInt(t, mustCairn(t, host, "volume", "inspect", "data.a", "-j"), ".used")
	if exclusive != size {
		t.Errorf("snapshot exclusive bytes %d, want %d", exclusive, size)
	}
	poolUsed := func() int64 { return jsonInt(t, mustCairn(t, host, "status", "-j"), "[.pools[].used] | add") }
	before := poolUsed()
	if out := mustCairn(t, host, "volume", "snapshot", "delete", "data.a"); out != "Snapshot data.a successfully deleted\n" {
		t.Errorf("snapshot delete: %q", out)
	}
	if after := poolUsed(); before-after < exclusive {
		t.Errorf("pool used %d → %d after deleting a snapshot holding %d bytes alone", before, after, exclusive)
	}
	sameFile(t, "volume after its snapshot was deleted", b, read("data"))
	sameFile(t, "clone after its snapshot was deleted", c, read("copy"))
	jq(t, mustCairn(t, host, "volume", "list", "--all", "-j"), `[.[].name] == ["copy", "data"]`)

	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

func TestSnapshotLimitsAndErrors(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	host := d.api
	_, socket := d.nbdAddrs(t)
	mustCairn(t, host, "volume", "create", "many", "--size", "64M")
	mustCairn(t, host, "volume", "create", "keep", "--size", "1G", "--sticky")
	tmp := t.TempDir()
	run(t, "nbdcopy", patternFile(t, tmp, "p", 4<<20, 7), fmt.Sprintf("nbd+unix:///many?socket=%s", socket))
	mustCairn(t, host, "volume", "snapshot", "create", "keep", "--name", "keep.s")

	// 64 snapshots are fine (default names, distinct by the millisecond).
	for i := range 64 {
		if i%2 == 0 {
			mustCairn(t, host, "volume", "snapshot", "create", "many")
		} else {
			mustCairn(t, host, "volume", "snapshot", "create", "many", "--name", fmt.Sprintf("many.s%02d", i))
		}
	}
	listJSON := mustCairn(t, host, "volume", "snapshot", "list", "many", "-j")
	jq(t, listJSON, `length == 64 and all(.[]; .parent == "many" and .snapshot and .readonly)`)
	jq(t, listJSON, `[.[] | select(.name | startswith("many.snap-"))] | length == 32`)
	allBefore := mustCairn(t, host, "volume", "list", "--all", "-j")

	// Every bad input: one line on stderr, non-zero exit, nothing changed.
	for _, tc := range []struct {
		want string
		args []string
	}{
		{`cannot snapshot volume "many": it has 64 snapshots, the most a volume can have; delete one first`, []string{"volume", "snapshot", "create", "many"}},
		{`cannot snapshot volume "many": it has 64 snapshots`, []string{"volume", "snapshot", "create", "many", "--name", "many.x"}},
		{`volume "nope" not found`, []string{"volume", "snapshot", "create", "nope"}},
		{`the name "keep" is taken`, []string{"volume", "snapshot", "create", "keep", "--name", "keep"}},
		{`snapshot name "a/b"`, []string{"volume", "snapshot", "create", "keep", "--name", "a/b"}},
		{"--name is empty", []string{"volume", "snapshot", "create", "keep", "--name", ""}},
		{`"keep.s" is a snapshot; snapshots are taken of volumes`, []string{"volume", "snapshot", "create", "keep.s"}},
		{"accepts 1 arg", []string{"volume", "snapshot", "create"}},
		{`volume "nope" not found`, []string{"volume", "snapshot", "list", "nope"}},
		{`"keep.s" is a snapshot`, []string{"volume", "snapshot", "list", "keep.s"}},
		{`unknown command "frob"`, []string{"volume", "snapshot", "frob"}},
		{`"many" is a volume, not a snapshot`, []string{"volume", "snapshot", "delete", "many"}},
		{`snapshot "nope" not found`, []string{"volume", "snapshot", "delete", "nope"}},
		{"--name is required", []string{"volume", "clone", "keep.s"}},
		{`"many" is not a snapshot; clone a snapshot of it`, []string{"volume", "clone", "many", "--name", "x"}},
		{`snapshot "nope" not found`, []string{"volume", "clone", "nope", "--name", "x"}},
		{`the name "many" is taken`, []string{"volume", "clone", "keep.s", "--name", "many"}},
		{"--snapshot is required", []string{"volume", "restore", "many"}},
		{`"keep.s" is not a snapshot of "many"`, []string{"volume", "restore", "many", "--snapshot", "keep.s"}},
		{`snapshot "nope" not found`, []string{"volume", "restore", "many", "--snapshot", "nope"}},
		{`volume "nope" not found`, []string{"volume", "restore", "nope", "--snapshot", "keep.s"}},
		{`cannot delete volume "many": it has 64 snapshot(s): many.snap-`, []string{"volume", "delete", "many"}},
		{"or delete them with it (cairn volume delete many --force)", []string{"volume", "delete", "many"}},
		{"sticky volume: turn sticky off first", []string{"volume", "delete", "keep", "--force"}},
		{"its 1 snapshot(s) are kept", []string{"volume", "delete", "keep", "--force"}},
		{"snap_keep 0: must be 1 to 64", []string{"volume", "create", "x", "--size", "1G", "--snap_keep", "0"}},
		{"snap_keep 65: must be 1 to 64", []string{"volume", "create", "x", "--size", "1G", "--snap_keep", "65"}},
		{"snap_keep -1: must be 1 to 64", []string{"volume", "update", "many", "--snap_keep", "-1"}},
		{`"keep.s" is a snapshot`, []string{"volume", "update", "keep.s", "--snap_keep", "3"}},
		{"give --all or --snapshot, not both", []string{"volume", "list", "-a", "-s"}},
	} {
		mustFail(t, host, tc.want, tc.args...)
	}
	if got := mustCairn(t, host, "volume", "list", "--all", "-j"); got != allBefore {
		t.Errorf("refused commands changed the volumes:\nbefore %s\nafter %s", allBefore, got)
	}

	// delete --force with an NBD client on one of the snapshots: refused,
	// nothing deleted.
	snaps := strings.Fields(jq(t, listJSON, `[.[].name] | join(" ")`))
	conn := holdExport(t, socket, snaps[10])
	mustFail(t, host, fmt.Sprintf("%s is in use: 1 NBD client connected; disconnect its NBD clients first; nothing was deleted", snaps[10]), "volume", "delete", "many", "--force")
	jq(t, mustCairn(t, host, "volume", "snapshot", "list", "many", "-j"), `length == 64`)
	conn.Close()

	// Deleting one makes room for one more.
	mustCairn(t, host, "volume", "snapshot", "delete", snaps[0])
	mustCairn(t, host, "volume", "snapshot", "create", "many", "--name", "many.last")
	mustFail(t, host, "it has 64 snapshots", "volume", "snapshot", "create", "many")

	// delete --force: every snapshot, then the volume.
	used := jsonInt(t, mustCairn(t, host, "status", "-j"), "[.pools[].used] | add")
	var r result
	waitFor(t, d, "the held connection's close to reach the daemon", func(string) bool {
		r = cairn(t, host, "volume", "delete", "many", "--force", "-j")
		return r.code == 0 || !strings.Contains(r.stderr, "NBD client")
	})
	if r.code != 0 {
		t.Fatalf("volume delete --force: %s", r)
	}
	var res struct {
		Deleted          string   `json:"deleted"`
		SnapshotsDeleted []string `json:"snapshots_deleted"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Deleted != "many" || len(res.SnapshotsDeleted) != 64 {
		t.Errorf("volume delete --force -j: %s (%v)", r.stdout, err)
	}
	jq(t, mustCairn(t, host, "volume", "list", "--all", "-j"), `[.[].name] == ["keep", "keep.s"]`)
	if after := jsonInt(t, mustCairn(t, host, "status", "-j"), "[.pools[].used] | add"); used-after < 4<<20 {
		t.Errorf("pool used %d → %d after deleting a volume with 4 MiB written and its snapshots", used, after)
	}
	// Sticky off: now --force deletes it and its snapshot.
	mustCairn(t, host, "volume", "update", "keep", "--sticky", "off")
	out := mustCairn(t, host, "volume", "delete", "keep", "--force")
	if out != "Snapshot keep.s successfully deleted\nVolume keep successfully deleted\n" {
		t.Errorf("volume delete --force: %q", out)
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

func TestScheduledSnapshots(t *testing.T) {
	dataDir := t.TempDir()
	// One snap_interval minute lasts a second here.
	d := startDaemon(t, dataDir, "--snap-minute", "1s")
	host := d.api
	v := checkVolumeJSON(t, mustCairn(t, host, "volume", "create", "s", "--size", "16M", "--snap_interval", "1", "--snap_keep", "2", "-j"))
	// probe's scheduled snapshots show the scheduler's passes going by: one
	// per pass at most, and passes never overlap.
	mustCairn(t, host, "volume", "create", "probe", "--size", "4M", "--snap_interval", "1", "--snap_keep", "1")
	probeTaken := regexp.MustCompile(`msg="scheduled snapshot taken" volume=probe `)
	if v["snap_keep"] != float64(2) || v["snap_interval"] != float64(1) {
		t.Errorf("volume create -j: %v", v)
	}
	// An operator's snapshots, named and default-named: never pruned.
	mustCairn(t, host, "volume", "snapshot", "create", "s", "--name", "s.mine")
	mustCairn(t, host, "volume", "snapshot", "create", "s")
	manual := jq(t, mustCairn(t, host, "volume", "snapshot", "list", "s", "-j"), `[.[].name] | join(" ")`)

	taken := regexp.MustCompile(`msg="scheduled snapshot taken" volume=s snapshot=(\S+)`)
	pruned := regexp.MustCompile(`msg="scheduled snapshot pruned" volume=s `)
	// 4 taken, and the pass that took each one beyond the 2 kept has pruned.
	waitFor(t, d, "4 scheduled snapshots, pruned to snap_keep", func(log string) bool {
		n := len(taken.FindAllString(log, -1))
		return n >= 4 && len(pruned.FindAllString(log, -1)) >= n-2
	})
	list := mustCairn(t, host, "volume", "snapshot", "list", "s", "-j")
	for _, name := range strings.Fields(manual) {
		jq(t, list, fmt.Sprintf(`any(.[]; .name == %q)`, name))
	}
	jq(t, list, `length >= 4 and length <= 5`) // 2 kept (+1 between a take and its prune), 2 of the operator's
	if !strings.Contains(d.log(), `msg="scheduled snapshot pruned" volume=s`) {
		t.Errorf("no scheduled snapshot was pruned:\n%s", d.log())
	}
	jq(t, mustCairn(t, host, "status", "-j"), `.snapshot_errors == []`)

	// Stop the schedule; what is left: the 2 newest scheduled and the 2 manual.
	mustCairn(t, host, "volume", "update", "s", "--snap_interval", "0")
	// A pass in flight may still take (and prune) one; the second pass from
	// now started after the update, so the one in flight is over.
	passes := len(probeTaken.FindAllString(d.log(), -1))
	waitFor(t, d, "two scheduler passes after the schedule stopped", func(log string) bool {
		return len(probeTaken.FindAllString(log, -1)) >= passes+2
	})
	list = mustCairn(t, host, "volume", "snapshot", "list", "s", "-j")
	all := taken.FindAllStringSubmatch(d.log(), -1)
	newest := []string{all[len(all)-2][1], all[len(all)-1][1]}
	want := append(strings.Fields(manual), newest...)
	jq(t, list, fmt.Sprintf(`([.[].name] | sort) == (%s | sort)`, toJSON(want)))

	// A failing scheduled snapshot is logged and in status: fill the volume
	// to 64 snapshots, then turn the schedule back on.
	for i := 4; i < 64; i++ {
		mustCairn(t, host, "volume", "snapshot", "create", "s", "--name", fmt.Sprintf("s.fill%02d", i))
	}
	mustCairn(t, host, "volume", "update", "s", "--snap_interval", "1", "--snap_keep", "5")
	var st string
	waitFor(t, d, "a snapshot error in status", func(string) bool {
		st = mustCairn(t, host, "status", "-j")
		return jq(t, st, `.snapshot_errors | length`) != "0"
	})
	jq(t, st, `.snapshot_errors[0] | .volume == "s" and .op == "create" and (.snapshot | startswith("s.snap-")) and (.error | contains("64 snapshots"))`)
	if out := mustCairn(t, host, "status"); !strings.Contains(out, "Scheduled snapshot failures: ") {
		t.Errorf("human status does not show the failure:\n%s", out)
	}
	if !strings.Contains(d.log(), `level=ERROR msg="scheduled snapshot failed"`) {
		t.Errorf("the failure is not logged:\n%s", d.log())
	}
	jq(t, mustCairn(t, host, "volume", "snapshot", "list", "s", "-j"), `length == 64`)

	// The record survives a restart: the scheduled snapshots are still the
	// scheduler's (pruned with snap_keep 1 once there is room), the
	// operator's are not.
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	d = startDaemon(t, dataDir, "--snap-minute", "1s")
	host = d.api
	for i := 4; i < 64; i++ {
		mustCairn(t, host, "volume", "snapshot", "delete", fmt.Sprintf("s.fill%02d", i))
	}
	mustCairn(t, host, "volume", "update", "s", "--snap_keep", "1")
	waitFor(t, d, "scheduled snapshots pruned to 1 after a restart", func(string) bool {
		list = mustCairn(t, host, "volume", "snapshot", "list", "s", "-j")
		return jq(t, list, fmt.Sprintf(`[(map(select(.name == %q)) | length), length] | map(tostring) | join(" ")`, newest[0])) == "0 3"
	})
	for _, name := range strings.Fields(manual) {
		jq(t, list, fmt.Sprintf(`any(.[]; .name == %q)`, name))
	}
	mustCairn(t, host, "volume", "delete", "s", "--force")
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// waitFor polls cond with the daemon's log until it holds; after 30 s the
// test fails, saying what it waited for.
func waitFor(t *testing.T, d *testDaemon, what string, cond func(log string) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond(d.log()) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30 s for %s:\n%s", what, d.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
