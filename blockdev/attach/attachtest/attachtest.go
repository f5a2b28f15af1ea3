// Package attachtest cleans up after tests that attach volumes to the host:
// whatever a test leaves (a failed assertion, a killed daemon) is removed,
// and what cannot be removed fails the test.
package attachtest

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/blockdev/attach"
)

// loopDetachWait bounds the wait for loop devices to go away: the kernel
// detaches them asynchronously once their last user is gone.
const loopDetachWait = 5 * time.Second

// Cleanup registers the removal of every kernel object a test may leave:
// filesystems mounted under dirs, loop devices on files under fuseDir and
// the FUSE mount on fuseDir. Register it before starting what makes them (a
// daemon, an Attacher), so that it runs after that is stopped. It fails the
// test if anything is left.
func Cleanup(t testing.TB, fuseDir string, dirs ...string) {
	t.Helper()
	under := func(p string) bool {
		for _, d := range append(dirs, fuseDir) {
			if p == d || strings.HasPrefix(p, d+"/") {
				return true
			}
		}
		return false
	}
	t.Cleanup(func() {
		for attempt := 0; attempt < 3; attempt++ {
			ms, _ := attach.Mounts()
			for i := len(ms) - 1; i >= 0; i-- { // innermost first
				if under(ms[i].MountPoint) && ms[i].MountPoint != fuseDir {
					t.Logf("cleanup: umount -l %s", ms[i].MountPoint)
					syscall.Unmount(ms[i].MountPoint, syscall.MNT_DETACH)
				}
			}
			loops, _ := attach.LoopsUnder(fuseDir)
			for _, l := range loops {
				t.Logf("cleanup: losetup -d %s", l.Dev)
				exec.Command("losetup", "-d", l.Dev).Run()
			}
			if ok, _ := attach.IsMountPoint(fuseDir); ok {
				t.Logf("cleanup: unmount %s", fuseDir)
				if exec.Command("fusermount3", "-u", fuseDir).Run() != nil {
					syscall.Unmount(fuseDir, syscall.MNT_DETACH)
				}
			}
		}
		ms, _ := attach.Mounts()
		for _, m := range ms {
			if under(m.MountPoint) {
				t.Errorf("left behind: %s mounted on %s", m.Source, m.MountPoint)
			}
		}
		for deadline := time.Now().Add(loopDetachWait); ; time.Sleep(50 * time.Millisecond) {
			loops, _ := attach.LoopsUnder(fuseDir)
			if len(loops) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("left behind: loop devices %v", loops)
				break
			}
		}
	})
}
