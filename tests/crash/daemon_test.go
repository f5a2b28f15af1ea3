// Package crash tests cairn's durability contract against the real binary:
// a daemon killed with SIGKILL (or its drives' unsynced bytes dropped, a
// power cut) part-way through a workload must come back with every flushed
// write and no torn or foreign block; drives that fail, fill up or carry
// damaged metadata are handled without losing what was acknowledged.
//
// The tests build bin/cairn from the checkout (or use $CAIRN_BIN). Flags
// (after -args): -iterations N for the crash loops (3 by default; make
// crash runs 20).
package crash

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/nbd"
)

var (
	iterations = flag.Int("iterations", 3, "crash loop iterations (SIGKILL and power-loss loops)")
	seedFlag   = flag.Uint64("seed", 0, "random seed (0 = from the clock; the seed is logged)")
	cairnBin   string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	cairnBin = os.Getenv("CAIRN_BIN")
	if cairnBin == "" {
		dir, err := os.MkdirTemp("", "cairn-crash-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		cairnBin = filepath.Join(dir, "cairn")
		cmd := exec.Command("go", "build", "-o", cairnBin, "github.com/cairn-storage/cairn/cmd/cairn")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building cairn:", err)
			return 1
		}
	}
	return m.Run()
}

// daemon is one run of `cairn daemon` on a data directory.
type daemon struct {
	t       *testing.T
	dataDir string
	args    []string
	cmd     *exec.Cmd
	logPath string
	api     string
	socket  string
	exited  chan struct{}
	err     error
}

// startDaemon runs the daemon on dataDir with the given drives (and extra
// flags) on ephemeral ports, and waits until it serves its API. The daemon is
// killed when the test ends, whatever happens.
func startDaemon(t *testing.T, dataDir string, extra ...string) *daemon {
	t.Helper()
	d, err := launch(t, dataDir, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func launch(t *testing.T, dataDir string, extra ...string) (*daemon, error) {
	t.Helper()
	logFile, err := os.CreateTemp(t.TempDir(), "daemon-*.log")
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dataDir, "nbd.sock")
	// Ephemeral ports for everything, the embedded kvdb included.
	args := append([]string{"daemon", "--data-dir", dataDir, "--api", "127.0.0.1:0", "--nbd", "127.0.0.1:0", "--nbd-socket", socket,
		"--kvdb-listen", "127.0.0.1:0", "--kvdb-peer", "127.0.0.1:0", "--repl-listen", "127.0.0.1:0"}, extra...)
	d := &daemon{t: t, dataDir: dataDir, args: extra, logPath: logFile.Name(), socket: socket, exited: make(chan struct{})}
	d.cmd = exec.Command(cairnBin, args...)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = d.cmd.Wait()
		logFile.Close()
		close(d.exited)
	}()
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			t.Logf("daemon log (%s):\n%s", d.logPath, d.log())
		}
	})
	// Ready: the API listens and the attachments of the last run are back.
	listening := regexp.MustCompile(`msg="api listening" addr=(\S+)`)
	ready := regexp.MustCompile(`msg="cairn daemon ready"`)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if m := listening.FindStringSubmatch(d.log()); m != nil && ready.MatchString(d.log()) {
			d.api = m[1]
			return d, nil
		}
		select {
		case <-d.exited:
			return nil, fmt.Errorf("daemon exited before it was ready (%v):\n%s", d.err, d.log())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("daemon not ready after 60s:\n%s", d.log())
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// kill sends SIGKILL and waits for the process to be gone.
func (d *daemon) kill() {
	select {
	case <-d.exited:
	default:
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.exited
	}
}

// restart kills the daemon (if alive) and starts it again on the same data
// directory with the same flags.
func (d *daemon) restart() *daemon {
	d.t.Helper()
	d.kill()
	return startDaemon(d.t, d.dataDir, d.args...)
}

// cli runs a CLI verb against the daemon and returns stdout; it fails the
// test on a non-zero exit.
func (d *daemon) cli(args ...string) string {
	d.t.Helper()
	out, err := d.try(args...)
	if err != nil {
		d.t.Fatalf("cairn %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (d *daemon) try(args ...string) (string, error) {
	cmd := exec.Command(cairnBin, append([]string{"--host", d.api}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// status is the part of `cairn status -j` the tests read.
type status struct {
	Status string `json:"status"`
	Pools  []struct {
		ID     int    `json:"id"`
		Size   int64  `json:"size"`
		Used   int64  `json:"used"`
		Status string `json:"status"`
		Drives []struct {
			Path   string `json:"path"`
			Status string `json:"status"`
		} `json:"drives"`
	} `json:"pools"`
	RefusedDrives []struct {
		Path   string `json:"path"`
		Status string `json:"status"`
	} `json:"refused_drives"`
}

func (d *daemon) status() status {
	d.t.Helper()
	var st status
	out := d.cli("status", "-j")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		d.t.Fatalf("status -j: %v\n%s", err, out)
	}
	return st
}

type volumeInfo struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Used   int64  `json:"used"`
	State  string `json:"state"`
	Device string `json:"device"`
}

func (d *daemon) inspect(name string) volumeInfo {
	d.t.Helper()
	var v volumeInfo
	out := d.cli("volume", "inspect", name, "-j")
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		d.t.Fatalf("volume inspect -j: %v\n%s", err, out)
	}
	return v
}

// dial opens an NBD connection to a volume over the daemon's unix socket.
func (d *daemon) dial(name string) *nbd.Client {
	d.t.Helper()
	cl, err := nbd.Dial("unix", d.socket, name)
	if err != nil {
		d.t.Fatalf("nbd connect to %q: %v", name, err)
	}
	d.t.Cleanup(func() { cl.Close() })
	return cl
}

// sparseFile makes a sparse file of size bytes (a drive).
func sparseFile(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(60 * time.Second):
		d.kill()
		d.t.Fatal("daemon did not stop within 60s of SIGTERM")
	}
	if d.err != nil {
		d.t.Fatalf("daemon exited with %v", d.err)
	}
}
