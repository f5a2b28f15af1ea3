package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// driveScanner finds the node's unused block devices for `cairn daemon -a`.
// Its file system roots are fields so tests can hand it a fake /sys and /proc.
type driveScanner struct {
	sysBlock  string // /sys/block
	devDir    string // /dev
	mountinfo string // /proc/self/mountinfo
	swaps     string // /proc/swaps
	// hasSignature reports whether a device carries a filesystem, partition
	// table or RAID/LVM signature (blkid -p).
	hasSignature func(dev string) (bool, error)
}

func newDriveScanner() driveScanner {
	return driveScanner{
		sysBlock: "/sys/block", devDir: "/dev",
		mountinfo: "/proc/self/mountinfo", swaps: "/proc/swaps",
		hasSignature: blkidSignature,
	}
}

// skippedDrive is a device that -a passed over, and why.
type skippedDrive struct {
	Dev, Reason string
}

// reasonVirtual is why virtual devices are skipped; they are too many (every
// loop device) to be worth a log line each.
const reasonVirtual = "virtual device"

// virtualPrefixes name kernel devices that are never drives of their own:
// loop and nbd devices (often our own exports), RAM disks, device-mapper and
// md arrays (built on other drives), optical and floppy drives.
var virtualPrefixes = []string{"loop", "ram", "zram", "nbd", "dm-", "md", "sr", "fd"}

// unusedDrives lists whole disks that are safe to take: not virtual, not
// read-only or removable, not partitioned, not held by another device (LVM,
// md), not mounted or used as swap, and (unless withFilesystem) carrying no
// filesystem. A mounted device is never taken, -f or not.
func (s driveScanner) unusedDrives(withFilesystem bool) (found []string, skipped []skippedDrive, err error) {
	entries, err := os.ReadDir(s.sysBlock)
	if err != nil {
		return nil, nil, fmt.Errorf("scan drives: %w", err)
	}
	inUse, err := s.devicesInUse()
	if err != nil {
		return nil, nil, err
	}
	for _, ent := range entries {
		name := ent.Name()
		dev := filepath.Join(s.devDir, name)
		reason, err := s.unsafeReason(name, inUse, withFilesystem)
		if err != nil {
			return nil, nil, err
		}
		if reason != "" {
			skipped = append(skipped, skippedDrive{Dev: dev, Reason: reason})
			continue
		}
		found = append(found, dev)
	}
	return found, skipped, nil
}

// unsafeReason says why the disk must not be used, or "" when it may be.
func (s driveScanner) unsafeReason(name string, inUse map[string]bool, withFilesystem bool) (string, error) {
	for _, p := range virtualPrefixes {
		if strings.HasPrefix(name, p) {
			return reasonVirtual, nil
		}
	}
	dir := filepath.Join(s.sysBlock, name)
	if readSysfs(dir, "ro") == "1" {
		return "read-only", nil
	}
	if readSysfs(dir, "removable") == "1" {
		return "removable", nil
	}
	if sz := readSysfs(dir, "size"); sz == "" || sz == "0" {
		return "no media", nil
	}
	// A partitioned disk is in use by definition, whatever its partitions hold.
	parts, err := partitions(dir, name)
	if err != nil {
		return "", err
	}
	if len(parts) > 0 {
		return "has partitions", nil
	}
	if inUse[readSysfs(dir, "dev")] {
		return "mounted or swap", nil
	}
	if holders, _ := os.ReadDir(filepath.Join(dir, "holders")); len(holders) > 0 {
		return "held by " + holders[0].Name(), nil
	}
	if !withFilesystem {
		has, err := s.hasSignature(filepath.Join(s.devDir, name))
		if err != nil {
			return "", err
		}
		if has {
			return "has a filesystem or signature (use -f to take it)", nil
		}
	}
	return "", nil
}

// partitions lists the partition directories of a disk in sysfs.
func partitions(dir, name string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("scan drives: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), name) {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
				out = append(out, e.Name())
			}
		}
	}
	return out, nil
}

// devicesInUse returns the "major:minor" numbers of mounted devices and of
// swap devices. mountinfo's third field names the device even when the mount
// source is a symlink (/dev/disk/by-uuid/…) or a mapper name.
func (s driveScanner) devicesInUse() (map[string]bool, error) {
	inUse := map[string]bool{}
	f, err := os.Open(s.mountinfo)
	if err != nil {
		return nil, fmt.Errorf("scan drives: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 2 {
			inUse[fields[2]] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scan drives: %w", err)
	}
	if buf, err := os.ReadFile(s.swaps); err == nil {
		lines := strings.Split(string(buf), "\n")
		for _, line := range lines[1:] { // first line is a header
			fields := strings.Fields(line)
			if len(fields) == 0 {
				continue
			}
			if base := filepath.Base(fields[0]); base != "" {
				if dev := readSysfs(filepath.Join(s.sysBlock, base), "dev"); dev != "" {
					inUse[dev] = true
				}
			}
		}
	}
	return inUse, nil
}

func readSysfs(dir, file string) string {
	buf, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(buf))
}

// blkidSignature asks blkid to probe the device itself (-p, not its cache).
// blkid exits 2 when it finds nothing.
func blkidSignature(dev string) (bool, error) {
	out, err := exec.Command("blkid", "-p", "-o", "export", dev).Output()
	if err == nil {
		return len(strings.TrimSpace(string(out))) > 0, nil
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 2 {
		return false, nil
	}
	return false, fmt.Errorf("scan drives: blkid %s: %w", dev, err)
}
