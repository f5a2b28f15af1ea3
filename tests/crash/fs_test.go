package crash

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/internal/testenv"
)

func need(t *testing.T, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		testenv.RequireTool(t, c)
	}
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// cleanupHost removes what a killed daemon leaves on the host under dataDir:
// loop devices on files of its FUSE mount, and the mount itself.
func cleanupHost(dataDir string) {
	out, _ := exec.Command("losetup", "-a").Output()
	for _, line := range strings.Split(string(out), "\n") {
		dev, rest, ok := strings.Cut(line, ":")
		if ok && strings.Contains(rest, dataDir) {
			exec.Command("losetup", "-d", dev).Run()
		}
	}
	if mounts, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(mounts), dataDir) {
		exec.Command("umount", "-l", filepath.Join(dataDir, "fuse")).Run()
	}
}

// TestCrashExt4: ext4 on a volume attached through `cairn host attach`
// (FUSE + loop). Files written and fsync'd, more written without fsync, the
// daemon SIGKILLed part-way; after a restart (which re-attaches the volume)
// the filesystem mounts, every fsync'd file is intact, and after unmounting
// `fsck -n` finds it clean. Repeated, the filesystem growing each time.
func TestCrashExt4(t *testing.T) {
	need(t, "mkfs.ext4", "fsck.ext4", "losetup", "fusermount3")
	testenv.RequireRoot(t, "loop devices, mount")
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	t.Cleanup(func() { cleanupHost(dataDir) }) // runs after the daemon is killed
	drv := sparseFile(t, filepath.Join(dir, "drive0.img"), 1<<30)
	d := startDaemon(t, dataDir, "-s", drv)
	d.cli("volume", "create", "fs", "--size", "256M")
	dev := strings.TrimSpace(d.cli("host", "attach", "fs", "--via", "fuse"))
	sh(t, "mkfs.ext4", "-q", dev)
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })

	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	synced := map[string][32]byte{} // file → sha256 of its fsync'd content
	iters := min(*iterations, 10)
	for it := 0; it < iters; it++ {
		sh(t, "mount", dev, mnt)
		for i := 0; i < 8; i++ {
			name := fmt.Sprintf("it%d-f%d", it, i)
			data := make([]byte, 4096*(1+rng.IntN(256)))
			for j := range data {
				data[j] = byte(rng.Uint32())
			}
			writeFileSync(t, filepath.Join(mnt, name), data)
			synced[name] = sha256.Sum256(data)
		}
		syncDir(t, mnt)
		// Unsynced writes still in flight when the daemon dies: overwrite a
		// scratch file over and over, and make new ones.
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			buf := bytes.Repeat([]byte{byte(it)}, 256<<10)
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				os.WriteFile(filepath.Join(mnt, fmt.Sprintf("scratch-%d", k%16)), buf, 0o644)
			}
		}()
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // a random moment, not a pass/fail timing
		d.kill()
		close(stop)
		<-done
		sh(t, "umount", "-l", mnt)
		d = startDaemon(t, dataDir, d.args...)
		v := d.inspect("fs")
		if v.Device == "" {
			t.Fatalf("iteration %d: the restarted daemon did not re-attach the volume: %+v", it, v)
		}
		dev = v.Device
		sh(t, "mount", dev, mnt) // replays the journal
		for name, sum := range synced {
			got, err := os.ReadFile(filepath.Join(mnt, name))
			if err != nil {
				t.Fatalf("iteration %d: fsync'd file %s: %v", it, name, err)
			}
			if sha256.Sum256(got) != sum {
				t.Fatalf("iteration %d: fsync'd file %s has changed", it, name)
			}
		}
		sh(t, "umount", mnt)
		if out, err := exec.Command("fsck.ext4", "-n", "-f", dev).CombinedOutput(); err != nil {
			t.Fatalf("iteration %d: fsck -n after the crash: %v\n%s", it, err, out)
		}
		t.Logf("iteration %d: %d fsync'd files intact, fsck clean", it, len(synced))
	}
	d.cli("host", "detach", "fs")
}

func writeFileSync(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func syncDir(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
