package attach

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Filesystems `host mount` can make.
var Filesystems = []string{"ext4", "xfs"}

// mkfsPackage is the Debian package that installs each filesystem's mkfs.
var mkfsPackage = map[string]string{"ext4": "e2fsprogs", "xfs": "xfsprogs"}

// MissingToolError says a program a host operation needs is not installed,
// and which Debian package has it.
type MissingToolError struct {
	Tool, Package string
}

func (e *MissingToolError) Error() string {
	return fmt.Sprintf("%s is not installed on this host: install the Debian package %s (apt-get install %s)", e.Tool, e.Package, e.Package)
}

// MountEntry is one line of /proc/self/mountinfo.
type MountEntry struct {
	Dev        uint64 // st_dev of the mounted filesystem (major:minor)
	MountPoint string
	FSType     string
	Source     string
}

// Mounts parses /proc/self/mountinfo.
func Mounts() ([]MountEntry, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountinfo(b)
}

// parseMountinfo reads the mountinfo format (proc(5)):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//	(1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)   (10)         (11)
func parseMountinfo(b []byte) ([]MountEntry, error) {
	var out []MountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 5 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("attach: bad mountinfo line %q", sc.Text())
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("attach: bad device %q in mountinfo", f[2])
		}
		out = append(out, MountEntry{
			Dev:        unix.Mkdev(uint32(ma), uint32(mi)),
			MountPoint: unescapeMount(f[4]),
			FSType:     f[sep+1],
			Source:     unescapeMount(f[sep+2]),
		})
	}
	return out, sc.Err()
}

// unescapeMount undoes the octal escapes (\040 for space, …) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// IsMountPoint reports whether path (absolute, symlinks resolved) has
// something mounted on it.
func IsMountPoint(path string) (bool, error) {
	ms, err := Mounts()
	if err != nil {
		return false, err
	}
	for _, m := range ms {
		if m.MountPoint == path {
			return true, nil
		}
	}
	return false, nil
}

// MountsOf lists the mounts of the filesystem on block device dev.
func MountsOf(dev string) ([]MountEntry, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return nil, fmt.Errorf("attach: %s: %w", dev, err)
	}
	ms, err := Mounts()
	if err != nil {
		return nil, err
	}
	var out []MountEntry
	for _, m := range ms {
		if m.Dev == st.Rdev {
			out = append(out, m)
		}
	}
	return out, nil
}

// Signature returns what blkid finds on dev, probing the device itself
// (never a cache): the filesystem type ("ext4"), "partition table (dos)",
// another signature's kind, or "" for a blank device.
func Signature(ctx context.Context, dev string) (string, error) {
	cmd := exec.CommandContext(ctx, "blkid", "-p", "-o", "export", dev)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return "", nil // nothing found: blank
	}
	if err != nil {
		return "", fmt.Errorf("attach: blkid -p %s: %v: %s", dev, err, strings.TrimSpace(stderr.String()))
	}
	vals := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vals[k] = v
		}
	}
	switch {
	case vals["TYPE"] != "":
		return vals["TYPE"], nil
	case vals["PTTYPE"] != "":
		return "partition table (" + vals["PTTYPE"] + ")", nil
	}
	return "unknown signature", nil
}

// MakeFS makes a filesystem of type fs on dev. Callers check Signature
// first; MakeFS never forces (no -F/-f) either, and stdin is closed, so a
// mkfs that finds a signature and asks before overwriting it fails.
func MakeFS(ctx context.Context, dev, fs string) error {
	var cmd *exec.Cmd
	switch fs {
	case "ext4":
		// mke2fs discards the device first (no -E nodiscard): the thin
		// volume gives back whatever it held.
		cmd = exec.CommandContext(ctx, "mkfs.ext4", "-q", dev)
	case "xfs":
		cmd = exec.CommandContext(ctx, "mkfs.xfs", "-q", dev)
	default:
		return fmt.Errorf("attach: filesystem %q: want one of %s", fs, strings.Join(Filesystems, ", "))
	}
	if errors.Is(cmd.Err, exec.ErrNotFound) {
		return &MissingToolError{Tool: cmd.Args[0], Package: mkfsPackage[fs]}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("attach: mkfs.%s %s: %v: %s", fs, dev, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Mount mounts the filesystem of type fs on dev at path.
func Mount(dev, path, fs string) error {
	if err := unix.Mount(dev, path, fs, 0, ""); err != nil {
		return fmt.Errorf("attach: mount %s on %s (%s): %w", dev, path, fs, err)
	}
	return nil
}

// Unmount unmounts path. A busy filesystem gives an error matching ErrBusy.
func Unmount(path string) error {
	if err := unix.Unmount(path, 0); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("attach: unmount %s: %w (%v)", path, ErrBusy, err)
		}
		return fmt.Errorf("attach: unmount %s: %w", path, err)
	}
	return nil
}

// SyncAndDetach writes a filesystem's dirty data out (syncfs) and detaches it
// lazily (MNT_DETACH): it leaves the mount table now and goes away when its
// last user does. For shutdown with a busy mount and for dead mounts.
func SyncAndDetach(path string) error {
	if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NONBLOCK, 0); err == nil {
		unix.Syncfs(fd)
		unix.Close(fd)
	}
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("attach: umount -l %s: %w", path, err)
	}
	return nil
}

// CleanPath resolves a mount path the way the kernel will see it: absolute,
// symlinks resolved. The path must exist and be a directory.
func CleanPath(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", fmt.Errorf("mount path %q is not absolute", path)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("mount path %s does not exist", path)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("mount path %s: %v", path, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("mount path %s is not a directory", path)
	}
	return real, nil
}
