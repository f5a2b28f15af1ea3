package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/blockdev/nbd"
)

// nbdAddrs returns the daemon's NBD TCP address and unix socket, from its log.
func (d *testDaemon) nbdAddrs(t *testing.T) (tcp, socket string) {
	t.Helper()
	m := regexp.MustCompile(`msg="nbd listening" addr=(\S+) socket=(\S+)`).FindStringSubmatch(d.log())
	if m == nil {
		t.Fatalf("daemon log does not say where NBD listens:\n%s", d.log())
	}
	return m[1], m[2]
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// holdExport opens an NBD connection to an export and keeps it open (until
// the test ends, or Close). While it is open the volume is in use.
func holdExport(t *testing.T, socket, name string) *nbd.Client {
	t.Helper()
	c, err := nbd.Dial("unix", socket, name)
	if err != nil {
		t.Fatalf("NBD connect to %q: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// metricValue finds one sample in a Prometheus text exposition.
func metricValue(t *testing.T, metrics, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(metrics, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return v
		}
	}
	t.Errorf("/metrics has no %s", series)
	return 0
}

func TestNBDExport(t *testing.T) {
	dataDir := t.TempDir()
	d := startDaemon(t, dataDir)
	_, socket := d.nbdAddrs(t)
	mustCairn(t, d.api, "volume", "create", "data", "--size", "16M")
	mustCairn(t, d.api, "volume", "create", "scratch", "--size", "64M")
	uri := func(name string) string { return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, socket) }

	// nbdinfo sees the export with its size; an unknown export is refused.
	info := run(t, "nbdinfo", "--json", uri("data"))
	jq(t, info, `.exports[0]."export-name" == "data" and .exports[0]."export-size" == 16777216`)
	if out, err := exec.Command("nbdinfo", uri("nope")).CombinedOutput(); err == nil {
		t.Errorf("nbdinfo on an unknown export succeeded:\n%s", out)
	}

	// Write a pattern over the unix socket with nbdcopy.
	tmp := t.TempDir()
	pattern := make([]byte, 16<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range pattern {
		pattern[i] = byte(rng.Uint32())
	}
	src := filepath.Join(tmp, "pattern")
	if err := os.WriteFile(src, pattern, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", src, uri("data"))

	// fio with the nbd engine and verification (the README's command).
	run(t, "fio", "--name=quick", "--ioengine=nbd", "--uri="+uri("scratch"), "--rw=randwrite",
		"--bs=4k", "--size=16M", "--iodepth=8", "--verify=crc32c", "--verify_state_save=0", "--output-format=terse",
	)

	// Per-volume I/O metrics.
	metrics := httpGet(t, "http://"+d.api+"/metrics")
	if got := metricValue(t, metrics, `cairn_volume_bytes_total{op="write",volume="data"}`); got < 16<<20 {
		t.Errorf("cairn_volume_bytes_total write for data = %v, want >= 16 MiB", got)
	}
	if got := metricValue(t, metrics, `cairn_volume_ops_total{op="write",volume="data"}`); got < 1 {
		t.Errorf("cairn_volume_ops_total write for data = %v, want > 0", got)
	}
	if got := metricValue(t, metrics, `cairn_volume_op_duration_seconds_count{op="read",volume="scratch"}`); got < 1 {
		t.Errorf("read latency histogram of scratch counts %v, want > 0 (fio verifies by reading)", got)
	}
	jq(t, mustCairn(t, d.api, "volume", "inspect", "data", "-j"), `.used >= 16777216`)

	// SIGTERM with a client connected: in-flight I/O finishes, exit 0.
	holdExport(t, socket, "scratch")
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code after SIGTERM with an NBD client = %d, want 0\n%s", code, d.log())
	}

	// After a restart the data is there, read back over TCP this time.
	d = startDaemon(t, dataDir)
	tcp, socket := d.nbdAddrs(t)
	dst := filepath.Join(tmp, "readback")
	run(t, "nbdcopy", "nbd://"+tcp+"/data", dst)
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, pattern) {
		t.Fatalf("data read back after a restart differs from what was written")
	}

	// A volume with a client connected cannot be deleted.
	conn := holdExport(t, socket, "data")
	mustFail(t, d.api, `cannot delete volume "data": it is in use`, "volume", "delete", "data")
	conn.Close()
	retryCairn(t, d.api, "volume", "delete", "data")
	// A deleted volume's I/O series are gone from /metrics.
	if metrics := httpGet(t, "http://"+d.api+"/metrics"); strings.Contains(metrics, `volume="data"`) {
		t.Errorf("/metrics still has series of the deleted volume data")
	}
	if code := d.stop(t); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}
