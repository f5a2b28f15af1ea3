package main

// Integration tests of the host verbs on real kernel objects: FUSE mounts,
// loop devices, ext4/xfs filesystems, fio. They need root and /dev/fuse and
// skip without them (fail, with CI=true: internal/testenv). Every test cleans up after itself, pass or fail: the
// hostCleanup registered before the daemon starts runs after the daemon is
// killed, unmounts (lazily) whatever is still mounted under the test's
// directories, detaches the loop devices backed by the daemon's FUSE files
// and unmounts the FUSE mount, then checks that nothing of the test is
// left in /proc/mounts or in the loop device table.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/attach"
	"github.com/cairn-storage/cairn/blockdev/attach/attachtest"
	"github.com/cairn-storage/cairn/internal/testenv"
)

func needHost(t *testing.T, tools ...string) {
	t.Helper()
	testenv.RequireRoot(t, "host verbs: FUSE mount, loop devices, mount")
	testenv.RequireFUSE(t)
	for _, tool := range append([]string{"losetup", "blkid", "mkfs.ext4"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run `make deps`", tool)
		}
	}
}

// hostCleanup removes every kernel object under dirs (mounts) and under the
// daemon's FUSE directory (loop devices, the FUSE mount). Register it before
// starting the daemon, so that it runs after the daemon is killed.
func hostCleanup(t *testing.T, dataDir string, dirs ...string) {
	t.Helper()
	attachtest.Cleanup(t, filepath.Join(dataDir, "fuse"), append([]string{dataDir}, dirs...)...)
}

// loopsOf lists the loop devices on the daemon's FUSE files.
func loopsOf(t *testing.T, dataDir string) []attach.Loop {
	t.Helper()
	loops, err := attach.LoopsUnder(filepath.Join(dataDir, "fuse"))
	if err != nil {
		t.Fatal(err)
	}
	return loops
}

func isMounted(t *testing.T, path string) bool {
	t.Helper()
	ok, err := attach.IsMountPoint(path)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// writeFiles writes n files of random content under dir and returns their
// SHA-256 sums by name.
func writeFiles(t *testing.T, dir string, n int, seed uint64) map[string]string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	sums := map[string]string{}
	for i := range n {
		buf := make([]byte, 4096+rng.IntN(3<<20))
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		name := fmt.Sprintf("file-%02d", i)
		if err := os.WriteFile(filepath.Join(dir, name), buf, 0o644); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(buf)
		sums[name] = hex.EncodeToString(sum[:])
	}
	return sums
}

func checkFiles(t *testing.T, dir string, sums map[string]string) {
	t.Helper()
	for name, want := range sums {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("%s: sha256 %s, want %s", name, got, want)
		}
	}
}

func nodeID(t *testing.T, host string) string {
	return jq(t, mustCairn(t, host, "status", "-j"), ".node_id")
}

// TestHostAttachMkfsMount is the round trip: attach, mkfs.ext4,
// mount, write, unmount, detach, attach again, mount, read back, fsck.
func TestHostAttachMkfsMount(t *testing.T) {
	needHost(t, "e2fsck")
	dataDir, mnt := t.TempDir(), t.TempDir()
	hostCleanup(t, dataDir, mnt)
	d := startDaemon(t, dataDir)
	mustCairn(t, d.api, "volume", "create", "fsvol", "--size", "256M")

	dev := strings.TrimSpace(mustCairn(t, d.api, "host", "attach", "fsvol", "--via", "fuse"))
	if !strings.HasPrefix(dev, "/dev/loop") {
		t.Fatalf("host attach printed %q, want /dev/loopN", dev)
	}
	if !attach.LoopDirectIO(dev) {
		t.Errorf("%s does not do direct I/O on its FUSE file", dev)
	}
	// inspect shows where it is attached, and the device.
	v := mustCairn(t, d.api, "volume", "inspect", "fsvol", "-j")
	checkVolumeJSON(t, v)
	jq(t, v, fmt.Sprintf(`.attached_on == %q and .device == %q`, nodeID(t, d.api), dev))
	if out := mustCairn(t, d.api, "volume", "inspect", "fsvol"); !strings.Contains(out, "Attached on") || strings.Contains(out, "Attached on     :  -") {
		t.Errorf("inspect does not show the attachment:\n%s", out)
	}
	// Attaching again is idempotent; deleting is refused while attached.
	if again := strings.TrimSpace(mustCairn(t, d.api, "host", "attach", "fsvol")); again != dev {
		t.Errorf("second attach printed %q, want %q", again, dev)
	}
	mustFail(t, d.api, "in use", "volume", "delete", "fsvol")

	run(t, "mkfs.ext4", "-q", dev)
	run(t, "mount", dev, mnt)
	sums := writeFiles(t, mnt, 8, 1)
	run(t, "sync")
	run(t, "umount", mnt)
	mustCairn(t, d.api, "host", "detach", "fsvol")
	if loops := loopsOf(t, dataDir); len(loops) != 0 {
		t.Fatalf("loop devices left after detach: %v", loops)
	}
	jq(t, mustCairn(t, d.api, "volume", "inspect", "fsvol", "-j"), `.attached_on == "" and .device == ""`)

	dev = strings.TrimSpace(mustCairn(t, d.api, "host", "attach", "fsvol", "--via", "fuse"))
	run(t, "mount", dev, mnt)
	checkFiles(t, mnt, sums)
	run(t, "umount", mnt)
	run(t, "e2fsck", "-n", "-f", dev)
	mustCairn(t, d.api, "host", "detach", "fsvol")
	mustCairn(t, d.api, "volume", "delete", "fsvol")
	if code := d.stop(t); code != 0 {
		t.Errorf("daemon exit code %d", code)
	}
}

// TestHostMountFormatsOnlyBlank: host mount formats a blank volume once and
// never a volume that holds anything.
func TestHostMountFormatsOnlyBlank(t *testing.T) {
	needHost(t)
	dataDir, mnt := t.TempDir(), t.TempDir()
	hostCleanup(t, dataDir, mnt)
	d := startDaemon(t, dataDir)
	mustCairn(t, d.api, "volume", "create", "blank", "--size", "128M")

	out := mustCairn(t, d.api, "host", "mount", "blank", mnt)
	if !strings.Contains(out, "successfully mounted") || !isMounted(t, mnt) {
		t.Fatalf("host mount: %q, mounted %v", out, isMounted(t, mnt))
	}
	v := mustCairn(t, d.api, "volume", "inspect", "blank", "-j")
	dev := jq(t, v, ".device")
	uuid := strings.TrimSpace(run(t, "blkid", "-p", "-s", "UUID", "-o", "value", dev))
	if fs := strings.TrimSpace(run(t, "blkid", "-p", "-s", "TYPE", "-o", "value", dev)); fs != "ext4" {
		t.Errorf("blank volume got %q, want ext4", fs)
	}
	if !strings.Contains(d.log(), "device is blank: making a filesystem") {
		t.Error("the daemon did not log the mkfs")
	}
	sums := writeFiles(t, mnt, 3, 2)
	mustCairn(t, d.api, "host", "unmount", "blank", mnt)
	if isMounted(t, mnt) {
		t.Fatal("still mounted after host unmount")
	}
	// host mount attached it, so host unmount detached it.
	jq(t, mustCairn(t, d.api, "volume", "inspect", "blank", "-j"), `.attached_on == "" and .device == ""`)
	if loops := loopsOf(t, dataDir); len(loops) != 0 {
		t.Errorf("loop devices left after host unmount: %v", loops)
	}

	// Second mount: the same filesystem, files intact, no mkfs.
	mustCairn(t, d.api, "host", "mount", "blank", mnt)
	dev = jq(t, mustCairn(t, d.api, "volume", "inspect", "blank", "-j"), ".device")
	if got := strings.TrimSpace(run(t, "blkid", "-p", "-s", "UUID", "-o", "value", dev)); got != uuid {
		t.Errorf("filesystem UUID %s after the second mount, want %s: reformatted", got, uuid)
	}
	checkFiles(t, mnt, sums)
	if n := strings.Count(d.log(), "making a filesystem"); n != 1 {
		t.Errorf("mkfs ran %d times, want once", n)
	}
	mustCairn(t, d.api, "host", "unmount", "blank", mnt)

	// Asking for another filesystem never formats over this one.
	mustFail(t, d.api, "holds ext4", "host", "mount", "blank", mnt, "--fs", "xfs")
	if isMounted(t, mnt) {
		t.Error("a refused mount mounted something")
	}
	jq(t, mustCairn(t, d.api, "volume", "inspect", "blank", "-j"), `.attached_on == ""`)

	// A volume with data that is no filesystem is never formatted either.
	mustCairn(t, d.api, "volume", "create", "raw", "--size", "64M")
	rawDev := strings.TrimSpace(mustCairn(t, d.api, "host", "attach", "raw", "--via", "fuse"))
	run(t, "mkswap", rawDev)
	mustFail(t, d.api, "formats only blank volumes", "host", "mount", "raw", mnt)
	mustCairn(t, d.api, "host", "detach", "raw")

	if _, err := exec.LookPath("mkfs.xfs"); err == nil {
		mustCairn(t, d.api, "volume", "create", "x", "--size", "512M")
		mustCairn(t, d.api, "host", "mount", "x", mnt, "--fs", "xfs")
		dev := jq(t, mustCairn(t, d.api, "volume", "inspect", "x", "-j"), ".device")
		if fs := strings.TrimSpace(run(t, "blkid", "-p", "-s", "TYPE", "-o", "value", dev)); fs != "xfs" {
			t.Errorf("--fs xfs made %q", fs)
		}
		mustCairn(t, d.api, "host", "unmount", "x", mnt)
	}
	if code := d.stop(t); code != 0 {
		t.Errorf("daemon exit code %d", code)
	}
}

// TestHostFioVerify runs fio (libaio, direct) with crc32c verification on
// the loop device.
func TestHostFioVerify(t *testing.T) {
	needHost(t, "fio")
	dataDir := t.TempDir()
	hostCleanup(t, dataDir)
	d := startDaemon(t, dataDir)
	mustCairn(t, d.api, "volume", "create", "fio", "--size", "128M")
	dev := strings.TrimSpace(mustCairn(t, d.api, "host", "attach", "fio", "--via", "fuse"))
	for _, rw := range []string{"randwrite", "write"} {
		bs := map[string]string{"randwrite": "4k", "write": "1M"}[rw]
		run(t, "fio", "--name=verify-"+rw, "--filename="+dev, "--ioengine=libaio", "--direct=1",
			"--rw="+rw, "--bs="+bs, "--iodepth=32", "--size=64M", "--verify=crc32c",
			"--verify_fatal=1", "--verify_state_save=0", "--output-format=terse")
	}
	// Discard from the block layer reaches the engine: used space shrinks.
	used := func() int64 {
		n, err := strconv.ParseInt(jq(t, mustCairn(t, d.api, "volume", "inspect", "fio", "-j"), ".used"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := used()
	run(t, "blkdiscard", dev)
	if after := used(); before == 0 || after >= before {
		t.Errorf("used %d bytes before blkdiscard, %d after: discard did not reach the engine", before, after)
	}
	mustCairn(t, d.api, "host", "detach", "fio")
	if code := d.stop(t); code != 0 {
		t.Errorf("daemon exit code %d", code)
	}
}

// TestHostKernelNBD attaches through the kernel NBD client where the kernel
// has one.
func TestHostKernelNBD(t *testing.T) {
	testenv.RequireRoot(t, "kernel NBD attach")
	// The nbd module is not promised (CI's kernel may lack it): a skip.
	if !attach.HaveNBD() {
		t.Skip("kernel NBD attach not tested: /dev/nbd0 does not exist (the kernel has no nbd module; `modprobe nbd` where it is available); the FUSE + loop path is tested instead")
	}
	dataDir := t.TempDir()
	hostCleanup(t, dataDir)
	d := startDaemon(t, dataDir)
	mustCairn(t, d.api, "volume", "create", "kn", "--size", "64M")
	dev := strings.TrimSpace(mustCairn(t, d.api, "host", "attach", "kn", "--via", "nbd"))
	if !strings.HasPrefix(dev, "/dev/nbd") {
		t.Fatalf("host attach --via nbd printed %q", dev)
	}
	run(t, "fio", "--name=knbd", "--filename="+dev, "--ioengine=libaio", "--direct=1", "--rw=randwrite",
		"--bs=4k", "--iodepth=16", "--size=32M", "--verify=crc32c", "--verify_state_save=0", "--output-format=terse")
	mustCairn(t, d.api, "host", "detach", "kn")
	if code := d.stop(t); code != 0 {
		t.Errorf("daemon exit code %d", code)
	}
}

// TestHostRestart: SIGTERM unmounts and detaches everything the daemon made
// and exits 0; the next start attaches and mounts the same volumes again.
// After a SIGKILL the next start cleans the dead mounts up and does the same.
func TestHostRestart(t *testing.T) {
	needHost(t)
	dataDir, mnt, busy := t.TempDir(), t.TempDir(), t.TempDir()
	hostCleanup(t, dataDir, mnt, busy)
	d := startDaemon(t, dataDir)
	mustCairn(t, d.api, "volume", "create", "keep", "--size", "128M")
	mustCairn(t, d.api, "volume", "create", "dev", "--size", "64M")
	mustCairn(t, d.api, "host", "mount", "keep", mnt)
	mustCairn(t, d.api, "host", "attach", "dev", "--via", "fuse")
	sums := writeFiles(t, mnt, 3, 3)

	if code := d.stop(t); code != 0 {
		t.Fatalf("daemon exit code %d after SIGTERM", code)
	}
	if isMounted(t, mnt) {
		t.Error("filesystem still mounted after the daemon stopped")
	}
	if ok, _ := attach.IsMountPoint(filepath.Join(dataDir, "fuse")); ok {
		t.Error("FUSE filesystem still mounted after the daemon stopped")
	}
	if loops := loopsOf(t, dataDir); len(loops) != 0 {
		t.Errorf("loop devices left after the daemon stopped: %v", loops)
	}

	d = startDaemon(t, dataDir)
	if !isMounted(t, mnt) {
		t.Fatalf("restart did not mount %s again:\n%s", mnt, d.log())
	}
	checkFiles(t, mnt, sums)
	jq(t, mustCairn(t, d.api, "volume", "inspect", "dev", "-j"), `.device | startswith("/dev/loop")`)

	// A crash: the mounts die with the daemon; the next start cleans up
	// and serves them again. Data synced before the crash is there.
	run(t, "sync")
	d.cmd.Process.Kill()
	<-d.exited
	d = startDaemon(t, dataDir)
	if !strings.Contains(d.log(), "left by a previous daemon") {
		t.Errorf("restart after a crash did not clean up:\n%s", d.log())
	}
	checkFiles(t, mnt, sums)

	// A busy filesystem does not stop the daemon from stopping: it is
	// synced and detached lazily.
	f, err := os.Open(filepath.Join(mnt, "file-00"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if code := d.stop(t); code != 0 {
		t.Errorf("daemon exit code %d with a busy mount", code)
	}
	f.Close()
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("stop with a busy mount took %v", took)
	}
	if !strings.Contains(d.log(), "detached lazily") {
		t.Errorf("no word of the busy filesystem in the log:\n%s", d.log())
	}
	if isMounted(t, mnt) {
		t.Error("busy filesystem still in the mount table after stop")
	}

	// And the volume is still fine after all that.
	d = startDaemon(t, dataDir)
	checkFiles(t, mnt, sums)
	mustCairn(t, d.api, "host", "unmount", "keep", mnt)
	mustCairn(t, d.api, "host", "detach", "dev")
	if code := d.stop(t); code != 0 {
		t.Errorf("daemon exit code %d", code)
	}
	// Nothing attached any more: the next start restores nothing.
	d = startDaemon(t, dataDir)
	jq(t, mustCairn(t, d.api, "volume", "list", "-j"), `all(.[]; .attached_on == "")`)
	d.stop(t)
}

// TestHostBadInput: clear one-line errors, non-zero exit, nothing changed.
func TestHostBadInput(t *testing.T) {
	needHost(t)
	dataDir, mnt, other := t.TempDir(), t.TempDir(), t.TempDir()
	hostCleanup(t, dataDir, mnt, other)
	d := startDaemon(t, dataDir)
	mustCairn(t, d.api, "volume", "create", "v", "--size", "64M")
	mustCairn(t, d.api, "volume", "create", "w", "--size", "64M")

	mustFail(t, d.api, `volume "nope" not found`, "host", "attach", "nope")
	mustFail(t, d.api, `volume "nope" not found`, "host", "mount", "nope", mnt)
	mustFail(t, d.api, "want fuse or nbd", "host", "attach", "v", "--via", "floppy")
	if !attach.HaveNBD() {
		mustFail(t, d.api, "no nbd module", "host", "attach", "v", "--via", "nbd")
		r := cairn(t, d.api, "host", "attach", "v", "--via", "nbd")
		if !strings.Contains(r.stderr, "--via fuse") {
			t.Errorf("--via nbd without nbd does not suggest --via fuse: %s", r)
		}
	}
	mustFail(t, d.api, "does not exist", "host", "mount", "v", filepath.Join(mnt, "missing"))
	mustFail(t, d.api, "not a directory", "host", "mount", "v", "/etc/hostname")
	mustFail(t, d.api, "not mounted on", "host", "unmount", "v", mnt)
	mustFail(t, d.api, "not attached", "host", "detach", "v")
	mustFail(t, d.api, "accepts 2 arg", "host", "mount", "v")
	// Nothing of that attached anything.
	jq(t, mustCairn(t, d.api, "volume", "list", "-j"), `all(.[]; .attached_on == "" and .device == "")`)
	if loops := loopsOf(t, dataDir); len(loops) != 0 {
		t.Errorf("loop devices after refused commands: %v", loops)
	}

	// Over a mounted path: refused, and the volume is left as it was.
	mustCairn(t, d.api, "host", "mount", "v", mnt)
	mustFail(t, d.api, "already mounted there", "host", "mount", "w", mnt)
	jq(t, mustCairn(t, d.api, "volume", "inspect", "w", "-j"), `.attached_on == ""`)
	mustFail(t, d.api, "not mounted on", "host", "unmount", "v", other)
	mustFail(t, d.api, "not mounted on", "host", "unmount", "w", mnt)
	mustFail(t, d.api, "unmount it first", "host", "detach", "v")
	mustFail(t, d.api, "in use", "volume", "delete", "v")
	// A busy filesystem is not unmounted from under its user.
	f, err := os.Open(mnt)
	if err == nil {
		cwd := exec.Command("sleep", "30")
		cwd.Dir = mnt
		if err := cwd.Start(); err == nil {
			mustFail(t, d.api, "busy", "host", "unmount", "v", mnt)
			cwd.Process.Kill()
			cwd.Wait()
		}
		f.Close()
	}
	if !isMounted(t, mnt) {
		t.Error("a refused command unmounted the volume")
	}
	mustCairn(t, d.api, "host", "unmount", "v", mnt)
	mustFail(t, d.api, "not mounted on", "host", "unmount", "v", mnt)
	if code := d.stop(t); code != 0 {
		t.Errorf("daemon exit code %d", code)
	}
}
