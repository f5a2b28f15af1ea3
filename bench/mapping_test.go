package bench

import (
	"runtime"
	"testing"

	"github.com/cairn-storage/cairn/engine"
)

// heapInUse returns live heap bytes after a full collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkMappingRAM reports mapping metadata per TiB of allocated extents
// for the worst case (a sparse 4 KiB pattern: one block written per 1 MiB
// extent, so every extent keeps its block bitmap) and the dense case (whole
// extents written). Run with -benchtime=1x; the metric is what matters.
func BenchmarkMappingRAM(b *testing.B) {
	for _, c := range []struct {
		name      string
		extents   int64
		writeSize int
	}{
		{"sparse4K", 4096, kib4},
		{"dense1M", 512, mib1},
	} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				e := fileEngine(b, c.extents*mib1+(2<<30), engine.Options{})
				if _, err := e.CreateVolume(engine.VolumeSpec{Name: "big", Size: 1 << 40}); err != nil {
					b.Fatal(err)
				}
				v, _ := e.Volume("big")
				buf := make([]byte, c.writeSize)
				stride := int64((1 << 40) / c.extents) // spread over the whole 1 TiB volume
				before := heapInUse()
				for x := int64(0); x < c.extents; x++ {
					if err := v.WriteAt(buf, x*stride, false); err != nil {
						b.Fatal(err)
					}
				}
				if err := v.Flush(); err != nil {
					b.Fatal(err)
				}
				after := heapInUse()
				perTiB := float64(after-before) / float64(c.extents) * float64(1<<20) // extents per TiB = 2^20
				b.ReportMetric(perTiB/(1<<20), "MiB/TiB-allocated")
				runtime.KeepAlive(v)
			}
		})
	}
}
