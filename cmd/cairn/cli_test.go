package main

// Integration tests: they build the real binary, start `cairn daemon` on
// free ports in a temporary directory, and drive every CLI verb the way an
// operator (or a script with jq) would, checking stdout, stderr and exit
// codes. Every daemon a test starts is killed in t.Cleanup, pass or fail.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cairnBin is the binary under test, built once by TestMain.
var cairnBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cairn-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cairnBin = filepath.Join(dir, "cairn")
	build := exec.Command("go", "build", "-o", cairnBin, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building cairn:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testDaemon is one running `cairn daemon`.
type testDaemon struct {
	dataDir string
	api     string // host:port of the management API
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	err     error // from Wait, valid once exited is closed
}

// defaultTestFlags keep tests fast and private: ephemeral ports, a small
// embedded default drive.
var defaultTestFlags = []string{"--api", "127.0.0.1:0", "--nbd", "127.0.0.1:0", "--repl-listen", "127.0.0.1:0", "--default-drive-size", "2G"}

// embeddedKvdbFlags put the embedded kvdb on ephemeral ports too; a daemon
// given -k (an external etcd) runs none and takes neither flag.
var embeddedKvdbFlags = []string{"--kvdb-listen", "127.0.0.1:0", "--kvdb-peer", "127.0.0.1:0"}

// startDaemon starts a daemon on dataDir and waits until its API answers.
func startDaemon(t *testing.T, dataDir string, extra ...string) *testDaemon {
	t.Helper()
	d, err := launchDaemon(t, dataDir, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// launchDaemon starts a daemon and waits for it to be ready or to exit.
func launchDaemon(t *testing.T, dataDir string, extra ...string) (*testDaemon, error) {
	t.Helper()
	d := spawnDaemon(t, dataDir, extra...)
	return d, d.waitReady()
}

// spawnDaemon starts a daemon and returns at once; it is killed in
// t.Cleanup.
func spawnDaemon(t *testing.T, dataDir string, extra ...string) *testDaemon {
	t.Helper()
	logFile, err := os.CreateTemp(t.TempDir(), "daemon-*.log")
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"daemon", "--data-dir", dataDir}, defaultTestFlags...)
	if !slices.Contains(extra, "-k") && !slices.Contains(extra, "--kvdb-listen") {
		args = append(args, embeddedKvdbFlags...)
	}
	args = append(args, extra...)
	d := &testDaemon{dataDir: dataDir, logPath: logFile.Name(), exited: make(chan struct{})}
	d.cmd = exec.Command(cairnBin, args...)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = d.cmd.Wait()
		logFile.Close()
		close(d.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-d.exited:
		default:
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			log, _ := os.ReadFile(d.logPath)
			t.Logf("daemon log (%s):\n%s", dataDir, log)
		}
	})
	return d
}

// waitReady waits until the daemon logs that it is ready (its attachments
// restored), and sets d.api from its log.
func (d *testDaemon) waitReady() error {
	listening := regexp.MustCompile(`msg="api listening" addr=(\S+)`)
	ready := regexp.MustCompile(`msg="cairn daemon ready"`)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		log, _ := os.ReadFile(d.logPath)
		if m := listening.FindSubmatch(log); m != nil && ready.Match(log) {
			d.api = string(m[1])
			return nil
		}
		select {
		case <-d.exited:
			log, _ := os.ReadFile(d.logPath)
			return fmt.Errorf("daemon exited before it was ready (%v):\n%s", d.err, log)
		case <-time.After(20 * time.Millisecond):
		}
	}
	log, _ := os.ReadFile(d.logPath)
	return fmt.Errorf("daemon not ready after 30s:\n%s", log)
}

// stop sends SIGTERM and returns the exit code.
func (d *testDaemon) stop(t *testing.T) int {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("daemon did not exit within 60s of SIGTERM")
	}
	return d.cmd.ProcessState.ExitCode()
}

func (d *testDaemon) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// result is one CLI run.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// cairn runs the CLI against the daemon at host (via CAIRN_HOST, as a user
// would set it).
func cairn(t *testing.T, host string, args ...string) result {
	t.Helper()
	cmd := exec.Command(cairnBin, args...)
	cmd.Env = append(os.Environ(), "CAIRN_HOST="+host)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("cairn %v: %v", args, err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: cmd.ProcessState.ExitCode()}
}

// mustCairn runs the CLI and fails the test unless it succeeds quietly.
func mustCairn(t *testing.T, host string, args ...string) string {
	t.Helper()
	r := cairn(t, host, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("cairn %s: want success, got %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// mustFail checks the operator-facing contract of an error: non-zero exit,
// nothing on stdout, one line on stderr that contains want.
func mustFail(t *testing.T, host, want string, args ...string) {
	t.Helper()
	r := cairn(t, host, args...)
	line := strings.TrimSuffix(r.stderr, "\n")
	switch {
	case r.code == 0:
		t.Errorf("cairn %s: want failure, got %s", strings.Join(args, " "), r)
	case r.stdout != "":
		t.Errorf("cairn %s: want empty stdout on failure, got %s", strings.Join(args, " "), r)
	case line == "" || strings.Contains(line, "\n"):
		t.Errorf("cairn %s: want exactly one line on stderr, got %s", strings.Join(args, " "), r)
	case !strings.Contains(line, want):
		t.Errorf("cairn %s: stderr %q does not say %q", strings.Join(args, " "), line, want)
	}
}

// jq runs jq -e -r over input and returns its output; a filter that yields
// false or null fails the test (and the rest of the test goes on).
func jq(t *testing.T, input, filter string) string {
	t.Helper()
	if _, err := exec.LookPath("jq"); err != nil {
		t.Fatal("jq is not installed: run `make deps`")
	}
	cmd := exec.Command("jq", "-e", "-r", filter)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("jq -e %q: %v\n%s\ninput:\n%s", filter, err, out, input)
		return ""
	}
	return strings.TrimSpace(string(out))
}

// keysOf decodes a JSON object and returns its sorted keys.
func keysOf(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, raw)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func sorted(s ...string) []string { sort.Strings(s); return s }

// The JSON contracts of issue 2: scripts depend on exactly these fields.
var (
	volumeKeys = sorted("id", "name", "size", "used", "repl", "io_priority", "sticky", "state",
		"snap_interval", "parent", "readonly", "attached_on", "created", "device",
		"snapshot", "snap_keep", // issue 5
		"requested_io_priority",                // issue 13
		"cloudsnap_interval", "cloudsnap_keep", // issue 18
		"node", "node_addr") // issue 15
	statusKeys = sorted("node_id", "status", "cluster", "pools", "refused_drives", "snapshot_errors",
		"duplicate_volumes", "unavailable_volumes", "restoring", "restore_errors", "catalog_error", // issue 13
		"cluster_summary") // issue 15
	poolKeys  = sorted("id", "io_priority", "raid", "size", "used", "allocated", "filling", "fill_ram", "fill_budget", "status", "drives")
	driveKeys = sorted("path", "size", "used", "status")
)

func checkVolumeJSON(t *testing.T, raw string) map[string]any {
	t.Helper()
	if got := keysOf(t, []byte(raw)); !slices.Equal(got, volumeKeys) {
		t.Fatalf("volume JSON keys = %v, want %v", got, volumeKeys)
	}
	var v map[string]any
	json.Unmarshal([]byte(raw), &v)
	if _, err := time.Parse(time.RFC3339, v["created"].(string)); err != nil {
		t.Errorf("created %q is not RFC 3339: %v", v["created"], err)
	}
	return v
}

func TestCLIAgainstDaemon(t *testing.T) {
	dataDir := t.TempDir()
	d := startDaemon(t, dataDir)
	host := d.api

	// status, human and JSON.
	out := mustCairn(t, host, "status")
	for _, want := range []string{"Status: cairn is operational", "Node ID: ", "Global Storage Pool", "Total Capacity"} {
		if !strings.Contains(out, want) {
			t.Errorf("cairn status: missing %q in:\n%s", want, out)
		}
	}
	statusJSON := mustCairn(t, host, "status", "-j")
	if got := keysOf(t, []byte(statusJSON)); !slices.Equal(got, statusKeys) {
		t.Fatalf("status JSON keys = %v, want %v", got, statusKeys)
	}
	nodeID := jq(t, statusJSON, ".node_id")
	jq(t, statusJSON, `.status == "operational" and .cluster == "cairn"`)
	jq(t, statusJSON, `.pools | length >= 1`)
	var st struct {
		Pools []json.RawMessage `json:"pools"`
	}
	json.Unmarshal([]byte(statusJSON), &st)
	if got := keysOf(t, st.Pools[0]); !slices.Equal(got, poolKeys) {
		t.Errorf("pool JSON keys = %v, want %v", got, poolKeys)
	}
	// The embedded default drive is the node's one drive.
	defaultDrive := filepath.Join(dataDir, defaultDriveName)
	jq(t, statusJSON, fmt.Sprintf(`[.pools[].drives[].path] == [%q]`, defaultDrive))
	var pools []struct {
		Drives []json.RawMessage `json:"drives"`
	}
	json.Unmarshal([]byte(jq(t, statusJSON, ".pools")), &pools)
	if len(pools) == 0 || len(pools[0].Drives) == 0 {
		t.Errorf("status -j shows no drive")
	} else if got := keysOf(t, pools[0].Drives[0]); !slices.Equal(got, driveKeys) {
		t.Errorf("drive JSON keys = %v, want %v", got, driveKeys)
	}
	if fi, err := os.Stat(defaultDrive); err != nil || fi.Size() != 2<<30 {
		t.Errorf("default drive %s: %v, size %v; want a 2 GiB file", defaultDrive, err, fi)
	}
	if !strings.Contains(out, nodeID) {
		t.Errorf("cairn status does not show node id %s:\n%s", nodeID, out)
	}

	// volume create.
	out = mustCairn(t, host, "volume", "create", "v1", "--size", "1G")
	if !regexp.MustCompile(`^Volume successfully created: \S+\n$`).MatchString(out) {
		t.Errorf("volume create: got %q", out)
	}
	v2 := checkVolumeJSON(t, mustCairn(t, host, "volume", "create", "v2", "--size", "512M",
		"--io_priority", "high", "--sticky", "--snap_interval", "60", "--block_size", "4096", "-j"))
	if v2["name"] != "v2" || v2["size"] != float64(512<<20) || v2["sticky"] != true ||
		v2["snap_interval"] != float64(60) || v2["repl"] != float64(1) || v2["attached_on"] != "" || v2["readonly"] != false {
		t.Errorf("volume create -j: got %v", v2)
	}
	mustCairn(t, host, "volume", "create", "v3", "--size", "3") // bare number: GiB

	// Every bad input: one line on stderr, non-zero exit, nothing changed.
	for _, tc := range []struct {
		want string
		args []string
	}{
		{`invalid size "abc"`, []string{"volume", "create", "x", "--size", "abc"}},
		{`invalid size "0"`, []string{"volume", "create", "x", "--size", "0"}},
		{`invalid size "-1G"`, []string{"volume", "create", "x", "--size", "-1G"}},
		{`invalid size "-1G"`, []string{"volume", "create", "x", "--size=-1G"}},
		{"--size is required", []string{"volume", "create", "x"}},
		{"repl 4: must be 1, 2 or 3", []string{"volume", "create", "x", "--size", "1G", "--repl", "4"}},
		{"repl 0: must be 1, 2 or 3", []string{"volume", "create", "x", "--size", "1G", "--repl", "0"}},
		{"snap_interval -5", []string{"volume", "create", "x", "--size", "1G", "--snap_interval", "-5"}},
		{`with repl 2: 1 eligible node`, []string{"volume", "create", "x", "--size", "1G", "--repl", "2"}},
		{`with repl 3: 1 eligible node`, []string{"volume", "create", "x", "--size", "1G", "--repl", "3"}},
		{`io_priority "fast": must be high, medium or low`, []string{"volume", "create", "x", "--size", "1G", "--io_priority", "fast"}},
		{"block_size 512: only 4096", []string{"volume", "create", "x", "--size", "1G", "--block_size", "512"}},
		{"volume name", []string{"volume", "create", "a/b", "--size", "1G"}},
		{`volume name ".x": use 1 to 229 letters`, []string{"volume", "create", ".x", "--size", "1G"}},
		{"size 100P: must be at most 64T", []string{"volume", "create", "x", "--size", "100P"}},
		{"size 100P: must be at most 64T", []string{"volume", "update", "v1", "--size", "100P"}},
		{"snap_keep 0: must be 1 to 64", []string{"volume", "create", "x", "--size", "1G", "--snap_keep", "0"}},
		{"snap_keep 65: must be 1 to 64", []string{"volume", "update", "v1", "--snap_keep", "65"}},
		{"already exists", []string{"volume", "create", "v1", "--size", "1G"}},
		{"not found", []string{"volume", "inspect", "nope"}},
		{"not found", []string{"volume", "update", "nope", "--size", "2G"}},
		{"not found", []string{"volume", "delete", "nope"}},
		{"sticky volume: turn sticky off first", []string{"volume", "delete", "v2"}},
		{"can only grow", []string{"volume", "update", "v1", "--size", "512M"}},
		{`invalid size "abc"`, []string{"volume", "update", "v1", "--size", "abc"}},
		{"want on or off", []string{"volume", "update", "v1", "--sticky", "maybe"}},
		{"nothing to change", []string{"volume", "update", "v1"}},
		{"unknown command", []string{"volume", "frobnicate"}},
		{"unknown flag", []string{"volume", "list", "--frob"}},
		{"accepts 1 arg", []string{"volume", "inspect"}},
	} {
		mustFail(t, host, tc.want, tc.args...)
	}

	// volume list / ls: exactly the three volumes, in name order.
	listJSON := mustCairn(t, host, "volume", "list", "-j")
	jq(t, listJSON, `[.[].name] == ["v1", "v2", "v3"]`)
	jq(t, listJSON, `[.[].size] == [1073741824, 536870912, 3221225472]`)
	jq(t, listJSON, `.[1].sticky and (.[0].sticky | not)`)
	var vols []json.RawMessage
	json.Unmarshal([]byte(listJSON), &vols)
	for _, raw := range vols {
		checkVolumeJSON(t, string(raw))
	}
	out = mustCairn(t, host, "volume", "ls")
	for _, want := range []string{"NAME", "v1", "v2", "v3", "1 GiB", "512 MiB", "3 GiB", "up - detached"} {
		if !strings.Contains(out, want) {
			t.Errorf("volume ls: missing %q in:\n%s", want, out)
		}
	}
	if out2 := mustCairn(t, host, "volume", "list"); out2 != out {
		t.Errorf("volume list and volume ls differ:\n%s\n%s", out2, out)
	}

	// volume inspect.
	out = mustCairn(t, host, "volume", "inspect", "v2")
	for _, want := range []string{"Name           :  v2", "Size           :  512 MiB", "Sticky         :  yes", "every 60 min"} {
		if !strings.Contains(out, want) {
			t.Errorf("volume inspect: missing %q in:\n%s", want, out)
		}
	}
	v1 := checkVolumeJSON(t, mustCairn(t, host, "volume", "inspect", "v1", "-j"))

	// volume update: grow, sticky, snap_interval.
	out = mustCairn(t, host, "volume", "update", "v1", "--size", "2G")
	if out != "Update Volume: Volume update successful for volume v1\n" {
		t.Errorf("volume update: got %q", out)
	}
	upd := checkVolumeJSON(t, mustCairn(t, host, "volume", "update", "v1", "--snap_interval", "15", "-j"))
	if upd["size"] != float64(2<<30) || upd["snap_interval"] != float64(15) || upd["id"] != v1["id"] {
		t.Errorf("volume update -j: got %v", upd)
	}

	// volume delete: sticky off first, then it goes.
	mustCairn(t, host, "volume", "update", "v2", "--sticky", "off")
	if out := mustCairn(t, host, "volume", "delete", "v2"); out != "Volume v2 successfully deleted\n" {
		t.Errorf("volume delete: got %q", out)
	}
	mustFail(t, host, "not found", "volume", "inspect", "v2")
	jq(t, mustCairn(t, host, "volume", "delete", "v3", "-j"), `.deleted == "v3"`)
	jq(t, mustCairn(t, host, "volume", "list", "-j"), `[.[].name] == ["v1"]`)

	// service drive show / pool show.
	out = mustCairn(t, host, "service", "drive", "show")
	for _, want := range []string{"Pool ID: 0", "IO Priority:", "Drives:", "1: " + defaultDrive + ", "} {
		if !strings.Contains(out, want) {
			t.Errorf("service drive show: missing %q in:\n%s", want, out)
		}
	}
	jq(t, mustCairn(t, host, "service", "drive", "show", "-j"), fmt.Sprintf(`[.[].drives[].path] == [%q]`, defaultDrive))
	out = mustCairn(t, host, "service", "pool", "show")
	for _, want := range []string{"POOL", "IO_PRIORITY", "RAID_LEVEL", "raid0"} {
		if !strings.Contains(out, want) {
			t.Errorf("service pool show: missing %q in:\n%s", want, out)
		}
	}
	jq(t, mustCairn(t, host, "service", "pool", "show", "-j"), `.[0] | has("io_priority") and has("drives")`)

	// service drive add: a second file drive, remembered across restarts.
	extra := filepath.Join(t.TempDir(), "extra.img")
	if err := createSparseFile(extra, 2<<30); err != nil {
		t.Fatal(err)
	}
	if out := mustCairn(t, host, "service", "drive", "add", extra); out != "Drive add done: "+extra+"\n" {
		t.Errorf("service drive add: got %q", out)
	}
	jq(t, mustCairn(t, host, "status", "-j"), fmt.Sprintf(`[.pools[].drives[].path] | sort == ([%q, %q] | sort)`, defaultDrive, extra))
	mustFail(t, host, "io_priority", "service", "drive", "add", extra, "--io_priority", "fast")

	// /metrics: pool gauges are there.
	metrics := httpGet(t, "http://"+host+"/metrics")
	for _, want := range []string{"cairn_pool_size_bytes{", "cairn_pool_used_bytes{", `cairn_volume_size_bytes{volume="v1"} 2.147483648e+09`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics: missing %q", want)
		}
	}

	// SIGTERM: clean exit 0.
	if code := d.stop(t); code != 0 {
		t.Fatalf("daemon exit code after SIGTERM = %d, want 0\n%s", code, d.log())
	}
	if !strings.Contains(d.log(), "cairn daemon stopped") {
		t.Errorf("daemon log does not say it stopped:\n%s", d.log())
	}

	// A daemon that is not running: say so and how to start one.
	mustFail(t, host, `Start it with "cairn daemon"`, "status")
	mustFail(t, host, "no cairn daemon answers at "+host, "volume", "list")

	// Restart on the same data dir: same node, same drives, same volumes.
	d = startDaemon(t, dataDir)
	host = d.api
	statusJSON = mustCairn(t, host, "status", "-j")
	jq(t, statusJSON, fmt.Sprintf(`.node_id == %q`, nodeID))
	jq(t, statusJSON, fmt.Sprintf(`[.pools[].drives[].path] | sort == ([%q, %q] | sort)`, defaultDrive, extra))
	after := checkVolumeJSON(t, mustCairn(t, host, "volume", "inspect", "v1", "-j"))
	for _, k := range []string{"id", "size", "snap_interval", "created", "repl", "sticky"} {
		if after[k] != upd[k] {
			t.Errorf("after restart, v1 %s = %v, want %v", k, after[k], upd[k])
		}
	}
	jq(t, mustCairn(t, host, "volume", "list", "-j"), `[.[].name] == ["v1"]`)
	if code := d.stop(t); code != 0 {
		t.Fatalf("daemon exit code after SIGTERM = %d, want 0\n%s", code, d.log())
	}
}

func TestDaemonStartup(t *testing.T) {
	t.Run("one daemon per data dir", func(t *testing.T) {
		dataDir := t.TempDir()
		startDaemon(t, dataDir)
		_, err := launchDaemon(t, dataDir)
		if err == nil || !strings.Contains(err.Error(), "another cairn daemon is running on "+dataDir) {
			t.Fatalf("second daemon on the same data dir: %v", err)
		}
	})
	t.Run("bad flags", func(t *testing.T) {
		for _, tc := range []struct {
			want string
			args []string
		}{
			{"--default-drive-size", []string{"--default-drive-size", "abc"}},
			{"cannot be combined", []string{"-z", "-s", "/dev/null"}},
			{"no such file", []string{"-s", "/nonexistent/drive.img"}},
			{"neither an IP address nor an interface", []string{"-m", "no-such-iface0"}},
		} {
			_, err := launchDaemon(t, t.TempDir(), tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("daemon %v: want an error saying %q, got %v", tc.args, tc.want, err)
			}
		}
	})
	t.Run("explicit drive", func(t *testing.T) {
		dataDir := t.TempDir()
		drive := filepath.Join(t.TempDir(), "d.img")
		if err := createSparseFile(drive, 2<<30); err != nil {
			t.Fatal(err)
		}
		d := startDaemon(t, dataDir, "-s", drive, "-c", "prod", "-m", "lo", "-d", "127.0.0.1")
		st := mustCairn(t, d.api, "status", "-j")
		jq(t, st, fmt.Sprintf(`[.pools[].drives[].path] == [%q] and .cluster == "prod"`, drive))
		if _, err := os.Stat(filepath.Join(dataDir, defaultDriveName)); err == nil {
			t.Errorf("the embedded default drive was created although -s was given")
		}
		if code := d.stop(t); code != 0 {
			t.Fatalf("exit code %d", code)
		}
	})
	t.Run("storageless", func(t *testing.T) {
		dataDir := t.TempDir()
		d := startDaemon(t, dataDir, "-z")
		jq(t, mustCairn(t, d.api, "status", "-j"), `.pools == []`)
		if out := mustCairn(t, d.api, "status"); !strings.Contains(out, "storageless") {
			t.Errorf("status of a storageless node does not say so:\n%s", out)
		}
		mustFail(t, d.api, "cannot create volume", "volume", "create", "v", "--size", "1G")
		if _, err := os.Stat(filepath.Join(dataDir, defaultDriveName)); err == nil {
			t.Errorf("the embedded default drive was created on a storageless node")
		}
		if code := d.stop(t); code != 0 {
			t.Fatalf("exit code %d", code)
		}
	})
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(body)
}
