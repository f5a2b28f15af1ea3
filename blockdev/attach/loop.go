package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrBusy says a device or mount point is in use.
var ErrBusy = errors.New("attach: in use")

// AttachLoop binds file to the first free loop device, with direct I/O (no
// second page cache between the loop device and the file), and returns the
// device path.
func AttachLoop(ctx context.Context, file string) (string, error) {
	out, err := exec.CommandContext(ctx, "losetup", "--direct-io=on", "--find", "--show", file).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("attach: losetup %s: %v: %s", file, err, strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("attach: losetup %s: unexpected output %q", file, dev)
	}
	return dev, nil
}

// DetachLoop detaches a loop device. The kernel releases the backing file
// once the device is no longer open (LOOP_CLR_FD on a busy device sets
// autoclear), so the file may stay open for a moment after this returns.
func DetachLoop(ctx context.Context, dev string) error {
	out, err := exec.CommandContext(ctx, "losetup", "-d", dev).CombinedOutput()
	if err != nil {
		return fmt.Errorf("attach: losetup -d %s: %v: %s", dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Loop is a configured loop device and its backing file.
type Loop struct {
	Dev     string // /dev/loopN
	Backing string // as the kernel reports it (may end in " (deleted)")
}

// LoopsUnder lists the loop devices whose backing file lies in dir, from
// sysfs. A daemon that died leaves such devices behind; the next one
// detaches them.
func LoopsUnder(dir string) ([]Loop, error) {
	paths, err := filepath.Glob("/sys/block/loop*/loop/backing_file")
	if err != nil {
		return nil, err
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	var loops []Loop
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // detached meanwhile
		}
		backing := strings.TrimSpace(string(b))
		if strings.HasPrefix(backing, prefix) {
			name := filepath.Base(filepath.Dir(filepath.Dir(p)))
			loops = append(loops, Loop{Dev: "/dev/" + name, Backing: backing})
		}
	}
	return loops, nil
}

// LoopDirectIO reports whether a loop device does direct I/O on its file.
func LoopDirectIO(dev string) bool {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop/dio"))
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
