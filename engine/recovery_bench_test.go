package engine

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/wal"
)

// BenchmarkRecovery1GiBLog measures Open after an unclean stop with 1 GiB of
// metadata log to replay (page cache dropped first when running as root).
// The log is written directly: map/unmap record pairs for one volume, in 1 MiB
// frames, after the pool's checkpoint — what replay sees after a long run of
// first writes and trims without a checkpoint. Run with -benchtime=1x.
//
// (A pool's log areas are at most 256 MiB by default and checkpoint at half,
// so replay never exceeds 128 MiB in practice; this is the stress case.)
func BenchmarkRecovery1GiBLog(b *testing.B) {
	const logBytes = 1 << 30
	dir := b.TempDir()
	path := filepath.Join(dir, "drive0.img")
	f, _ := os.Create(path)
	f.Truncate(6 << 30)
	f.Close()
	opts := Options{NodeID: "bench", Drives: []DriveSpec{{Path: path}}, LogAreaSize: 5 << 29, manualCommit: true}
	e, err := Open(opts)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 30}); err != nil {
		b.Fatal(err)
	}
	p := e.pools[0]
	w := p.log
	var frame []byte
	written := int64(0)
	for lext := uint32(0); written < logBytes; lext = (lext + 1) % 1024 {
		frame = appendRecord(frame, &record{typ: recMapExtent, vol: 0, lext: lext, phys: lext})
		frame = appendRecord(frame, &record{typ: recUnmapExtent, vol: 0, lext: lext})
		if len(frame) >= 1<<20 {
			if err := w.Append(frameRecords, frame); err != nil {
				b.Fatal(err)
			}
			if err := w.Write(); err != nil {
				b.Fatal(err)
			}
			written += int64(len(frame))
			frame = frame[:0]
		}
	}
	if err := w.Sync(); err != nil {
		b.Fatal(err)
	}
	abandon(e)
	for _, pd := range p.drives {
		pd.d.Close()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0) // best effort
		b.StartTimer()
		start := time.Now()
		e, err := Open(opts)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/recovery")
		b.ReportMetric(float64(written)/(1<<20), "MiB-replayed")
		b.StopTimer()
		if e.pools[0].log.Position().Off < written {
			b.Fatalf("replayed only %d bytes", e.pools[0].log.Position().Off)
		}
		e.Close()
		b.StartTimer()
	}
	_ = wal.SectorSize
}
