package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/control"
	"github.com/cairn-storage/cairn/engine"
)

// fakeDisk describes one /sys/block entry of a fake sysfs.
type fakeDisk struct {
	name      string
	dev       string // major:minor
	size      string // sectors
	ro        bool
	removable bool
	parts     []string
	holder    string
	signature bool // blkid finds a filesystem
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func fakeScanner(t *testing.T, disks []fakeDisk, mountinfo, swaps string) driveScanner {
	root := t.TempDir()
	sys := filepath.Join(root, "sys", "block")
	signatures := map[string]bool{}
	for _, d := range disks {
		dir := filepath.Join(sys, d.name)
		writeFile(t, filepath.Join(dir, "dev"), d.dev)
		writeFile(t, filepath.Join(dir, "size"), d.size)
		writeFile(t, filepath.Join(dir, "ro"), map[bool]string{true: "1", false: "0"}[d.ro])
		writeFile(t, filepath.Join(dir, "removable"), map[bool]string{true: "1", false: "0"}[d.removable])
		os.MkdirAll(filepath.Join(dir, "holders"), 0o755)
		if d.holder != "" {
			os.MkdirAll(filepath.Join(dir, "holders", d.holder), 0o755)
		}
		for _, p := range d.parts {
			writeFile(t, filepath.Join(dir, p, "partition"), "1")
		}
		signatures[filepath.Join("/dev", d.name)] = d.signature
	}
	writeFile(t, filepath.Join(root, "mountinfo"), mountinfo)
	writeFile(t, filepath.Join(root, "swaps"), swaps)
	return driveScanner{
		sysBlock: sys, devDir: "/dev",
		mountinfo: filepath.Join(root, "mountinfo"), swaps: filepath.Join(root, "swaps"),
		hasSignature: func(dev string) (bool, error) { return signatures[dev], nil },
	}
}

func TestUnusedDrivesSkipsEverythingUnsafe(t *testing.T) {
	disks := []fakeDisk{
		{name: "sda", dev: "8:0", size: "1000", parts: []string{"sda1", "sda2"}}, // partitioned
		{name: "sdb", dev: "8:16", size: "1000"},                                 // mounted whole
		{name: "sdc", dev: "8:32", size: "1000"},                                 // free
		{name: "sdd", dev: "8:48", size: "1000", signature: true},                // has a filesystem
		{name: "sde", dev: "8:64", size: "1000", holder: "dm-0"},                 // LVM PV
		{name: "sdf", dev: "8:80", size: "1000", ro: true},
		{name: "sdg", dev: "8:96", size: "1000", removable: true},
		{name: "sdh", dev: "8:112", size: "0"},                     // card reader, no media
		{name: "sdi", dev: "8:128", size: "1000"},                  // swap
		{name: "sdj", dev: "8:144", size: "1000", signature: true}, // mounted and has a filesystem
		{name: "nvme0n1", dev: "259:0", size: "1000"},              // free
		{name: "loop0", dev: "7:0", size: "1000"},
		{name: "nbd0", dev: "43:0", size: "1000"},
		{name: "zram0", dev: "253:0", size: "1000"},
		{name: "dm-0", dev: "254:0", size: "1000"},
	}
	mountinfo := "27 1 8:16 / / rw,relatime - ext4 /dev/disk/by-uuid/x rw\n" +
		"28 27 8:144 / /data rw,relatime - xfs /dev/sdj rw\n" +
		"29 27 0:21 / /proc rw - proc proc rw"
	swaps := "Filename\tType\tSize\tUsed\tPriority\n/dev/sdi partition 1000 0 -2"
	s := fakeScanner(t, disks, mountinfo, swaps)

	found, skipped, err := s.unusedDrives(false)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/dev/nvme0n1", "/dev/sdc"}; !slices.Equal(found, want) {
		t.Errorf("unused drives = %v, want %v (skipped: %v)", found, want, skipped)
	}
	// -f adds the unmounted drive with a filesystem, never the mounted one.
	found, _, err = s.unusedDrives(true)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/dev/nvme0n1", "/dev/sdc", "/dev/sdd"}; !slices.Equal(found, want) {
		t.Errorf("unused drives with -f = %v, want %v", found, want)
	}
}

// On the machine running the test, -a must never offer a mounted device
// (here: the root disk) nor a partitioned or virtual one.
func TestUnusedDrivesOnThisMachine(t *testing.T) {
	s := newDriveScanner()
	inUse, err := s.devicesInUse()
	if err != nil {
		t.Fatal(err)
	}
	for _, withFS := range []bool{false, true} {
		found, _, err := s.unusedDrives(withFS)
		if err != nil {
			t.Fatal(err)
		}
		for _, dev := range found {
			dir := filepath.Join(s.sysBlock, filepath.Base(dev))
			if inUse[readSysfs(dir, "dev")] {
				t.Errorf("-a offered %s, which is mounted or swap", dev)
			}
			if parts, _ := partitions(dir, filepath.Base(dev)); len(parts) > 0 {
				t.Errorf("-a offered %s, which has partitions %v", dev, parts)
			}
			for _, p := range virtualPrefixes {
				if strings.HasPrefix(filepath.Base(dev), p) {
					t.Errorf("-a offered virtual device %s", dev)
				}
			}
		}
	}
}

// -a -f finds the node's own drive (a scan sees only "unused" disks: ours is
// not mounted and blkid knows no cairn superblock) under another path than
// the one remembered: the daemon hands it to the engine once, not twice
// (the engine refuses the second and never formats its own, see engine's
// TestOpenNeverReformatsOwnDrives).
func TestChooseDrivesOwnDriveFoundByScan(t *testing.T) {
	devDir := t.TempDir()
	own := filepath.Join(devDir, "sdc")
	if err := createSparseFile(own, 2<<30); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "by-id-own")
	if err := os.Symlink(own, link); err != nil {
		t.Fatal(err)
	}
	scanner := fakeScanner(t, []fakeDisk{{name: "sdc", dev: "8:32", size: "1000"}}, "", "Filename Type Size Used Priority\n")
	scanner.devDir = devDir
	dataDir := t.TempDir()
	node, err := control.OpenNode(dataDir, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := node.RememberDrives(engine.DriveSpec{Path: link}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	drives, err := chooseDrives(daemonConfig{allDrives: true, force: true}, node, scanner, dataDir, 1<<30, log)
	if err != nil {
		t.Fatal(err)
	}
	if len(drives) != 1 || drives[0].Path != own {
		t.Fatalf("-a -f with the node's own drive remembered as %s: %+v", link, drives)
	}
	// -s naming one drive by two paths is refused before anything is opened.
	_, err = chooseDrives(daemonConfig{drives: []string{own, link}}, node, scanner, dataDir, 1<<30, log)
	if err == nil || !strings.Contains(err.Error(), "same drive") {
		t.Fatalf("-s %s -s %s: %v", own, link, err)
	}
}
