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

// BenchmarkMappingRAM reports the engine's mapping RAM per TiB of volume
// space written over (DESIGN.md budget: ≤ 32 MiB/TiB). sparse4K writes one
// 4 KiB block in every 1 MiB extent of a 16 GiB range of a 1 TiB volume — the
// worst case for a per-block scheme, since every extent is touched and none
// is full; dense1M writes whole extents. Run with -benchtime=1x.
func BenchmarkMappingRAM(b *testing.B) {
	for _, c := range []struct {
		name      string
		rangeSize int64
		writeSize int
	}{
		{"sparse4K", 16 << 30, kib4},
		{"dense1M", 4 << 30, mib1},
	} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				e := fileEngine(b, c.rangeSize+(2<<30), engine.Options{})
				if _, err := e.CreateVolume(engine.VolumeSpec{Name: "big", Size: 1 << 40}); err != nil {
					b.Fatal(err)
				}
				v, _ := e.Volume("big")
				buf := make([]byte, c.writeSize)
				before := heapInUse()
				for off := int64(0); off < c.rangeSize; off += mib1 {
					if err := v.WriteAt(buf, off, false); err != nil {
						b.Fatal(err)
					}
				}
				if err := v.Flush(); err != nil {
					b.Fatal(err)
				}
				after := heapInUse()
				b.ReportMetric(float64(int64(after)-int64(before))/float64(c.rangeSize)*float64(1<<40)/(1<<20), "MiB/TiB")
				runtime.KeepAlive(v)
			}
		})
	}
}

// BenchmarkFillingRAM reports the RAM that extents redirected after a
// snapshot cost while they fill (engine/fill.go), per TiB of volume space
// they cover: each extent of a 16 GiB range mapped (one 4 KiB block), two
// snapshots, then one more 4 KiB block written into every extent, so that
// every extent is filling, each with one block filled (held inline: 32 B
// a state). The pool (4× the range) is well within its fill budget
// (engine/fill.go fillBudget), so none is completed. Run with -benchtime=1x.
func BenchmarkFillingRAM(b *testing.B) {
	const rangeSize = 16 << 30
	for i := 0; i < b.N; i++ {
		e := fileEngine(b, 4*rangeSize, engine.Options{})
		if _, err := e.CreateVolume(engine.VolumeSpec{Name: "v", Size: rangeSize}); err != nil {
			b.Fatal(err)
		}
		v, _ := e.Volume("v")
		buf := make([]byte, kib4)
		for off := int64(0); off < rangeSize; off += mib1 {
			if err := v.WriteAt(buf, off, false); err != nil {
				b.Fatal(err)
			}
		}
		for _, name := range []string{"v.s1"} {
			if _, err := e.CreateSnapshot("v", name); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Flush(); err != nil {
			b.Fatal(err)
		}
		before := heapInUse()
		for off := int64(0); off < rangeSize; off += mib1 {
			if err := v.WriteAt(buf, off+kib4, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := v.Flush(); err != nil {
			b.Fatal(err)
		}
		after := heapInUse()
		p := e.Status().Pools[0]
		b.ReportMetric(float64(int64(after)-int64(before))/float64(rangeSize)*float64(1<<40)/(1<<20), "MiB/TiB")
		b.ReportMetric(float64(p.Allocated-p.Used)/float64(rangeSize), "unfilled/range")
		runtime.KeepAlive(v)
	}
}
