package crash

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// On-disk layout the test damages (engine/superblock.go, wal/doc.go; part of
// the on-disk format).
const (
	sbCopySize  = 4096
	walMagic    = 0x4c415743 // "CWAL"
	walHeader   = 56
	walSector   = 4096
	sbGenOff    = 16
	sbLogSzOff  = 32
	sbActiveOff = 93
	sbLogIDOff  = 96
)

// logFrames returns the absolute offsets of the frames of the active log on
// a drive file, in order.
func logFrames(t *testing.T, path string) []int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sbs := make([]byte, 2*sbCopySize)
	if _, err := f.ReadAt(sbs, 0); err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	sb := sbs[:sbCopySize]
	if le.Uint64(sbs[sbCopySize+sbGenOff:]) > le.Uint64(sb[sbGenOff:]) {
		sb = sbs[sbCopySize:]
	}
	logSize := int64(le.Uint64(sb[sbLogSzOff:]))
	base := 2*sbCopySize + int64(sb[sbActiveOff])*logSize
	logID := le.Uint64(sb[sbLogIDOff:])
	var offs []int64
	h := make([]byte, walHeader)
	for off := base; off < base+logSize; {
		if _, err := f.ReadAt(h, off); err != nil {
			t.Fatal(err)
		}
		if le.Uint32(h) != walMagic || le.Uint64(h[16:]) != logID {
			break
		}
		offs = append(offs, off)
		off += (walHeader + int64(le.Uint32(h[8:])) + walSector - 1) / walSector * walSector
	}
	return offs
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func copyFile(t *testing.T, dst, src string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedMetadata: pool 0's drive gets a flipped byte in both superblock
// copies, in a WAL frame in the middle of its log, or in its checkpoint. The
// daemon refuses that pool with an error naming the drive and the offset,
// writes nothing to the drive, and serves pool 1 with all its data.
func TestDamagedMetadata(t *testing.T) {
	dir := t.TempDir()
	a := sparseFile(t, filepath.Join(dir, "a.img"), smallDrive)
	b := sparseFile(t, filepath.Join(dir, "b.img"), largeDrive)
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 2))
	d, oa, ob := twoPools(t, a, b, rng, seed)
	ca := d.dial("va")
	for i := 0; i < 4; i++ { // more log frames: one per flush
		if err := oa.writeBatch(ca, rng, 20); err != nil {
			t.Fatal(err)
		}
	}
	ca.Close()
	d.stop()
	frames := logFrames(t, a)
	if len(frames) < 4 {
		t.Fatalf("pool 0's log has %d frames; want at least 4 to damage one in the middle", len(frames))
	}
	pristine := filepath.Join(dir, "a.pristine")
	copyFile(t, pristine, a)

	for _, tc := range []struct {
		name   string
		flips  []int64
		expect []string // in pool 0's status (or the refused drive's)
	}{
		{"superblock", []int64{200, sbCopySize + 200}, []string{a, "damaged superblock", "offsets 0 and 4096"}},
		{"wal-frame", []int64{frames[len(frames)/2] + walHeader + 3}, []string{a, fmt.Sprintf("offset %d", frames[len(frames)/2])}},
		{"checkpoint", []int64{frames[0] + walHeader + 20}, []string{a, fmt.Sprintf("offset %d", frames[0])}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			copyFile(t, a, pristine)
			for _, off := range tc.flips {
				flipByte(t, a, off)
			}
			before := fileHash(t, a)
			d := startDaemon(t, d.dataDir, d.args...)
			d.t = t
			st := d.status()
			var report string
			for _, p := range st.Pools {
				if len(p.Drives) > 0 && p.Drives[0].Path == a {
					report = p.Status
				}
			}
			for _, r := range st.RefusedDrives {
				if r.Path == a {
					report = r.Status
				}
			}
			if report == "" || st.Status != "degraded" {
				t.Fatalf("status does not report the damaged drive %s: %+v", a, st)
			}
			for _, want := range tc.expect {
				if !strings.Contains(report, want) {
					t.Errorf("the report on %s does not say %q: %s", a, want, report)
				}
			}
			t.Logf("reported: %s", report)
			if out, err := d.try("volume", "inspect", "va", "-j"); err == nil && !strings.Contains(out, `"error`) {
				t.Errorf("volume va of the refused pool is served as healthy: %s", out)
			}
			checkVolume(t, d, "vb", ob)
			d.kill()
			if after := fileHash(t, a); after != before {
				t.Fatalf("the daemon wrote to the damaged drive %s", a)
			}
		})
	}
}
