package nbdfuzz

import (
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

// TestRandomOpsKeepEngineConsistent replays what FuzzTransmission does
// without the wire: random writes, trims, write-zeroes (with and without
// NO_HOLE) and flushes on one volume, seeded; after every op the engine's
// invariant check must pass, even with a commit round running.
func TestRandomOpsKeepEngineConsistent(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		eng, err := engine.Open(engine.Options{NodeID: "leak", LogAreaSize: 256 << 10,
			Drives: []engine.DriveSpec{{Path: "mem0", Drive: drive.NewMem("mem0", 20<<20)}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := eng.CreateVolume(engine.VolumeSpec{Name: "v", Size: 16 << 20}); err != nil {
			t.Fatal(err)
		}
		v, _ := eng.Volume("v")
		rng := rand.New(rand.NewPCG(seed, 9))
		buf := make([]byte, 1<<20)
		var ops []string
		for i := 0; i < 300; i++ {
			off := int64(rng.IntN(16<<20/4096)) * 4096
			if rng.IntN(4) == 0 {
				off += int64(rng.IntN(4096)) // unaligned
			}
			n := min(int64(1+rng.IntN(3<<20)), 16<<20-off)
			var op string
			switch rng.IntN(5) {
			case 0, 1:
				n = min(n, int64(len(buf)))
				op = "write"
				err = v.WriteAt(buf[:n], off, rng.IntN(2) == 0)
			case 2:
				op = "trim"
				err = v.Trim(off, n)
			case 3:
				noHole := rng.IntN(2) == 0
				op = "zeroes"
				if noHole {
					op = "zeroes-nohole"
				}
				err = v.WriteZeroes(off, n, noHole)
			case 4:
				op, n = "flush", 0
				err = v.Flush()
			}
			ops = append(ops, op)
			if err != nil && !errors.Is(err, engine.ErrNoSpace) {
				t.Fatalf("seed %d op %d %s(%d, %d): %v", seed, i, op, off, n, err)
			}
			if err := eng.Check(); err != nil {
				t.Fatalf("seed %d after op %d %s(%d, %d): %v\nops: %v", seed, i, op, off, n, err, ops)
			}
		}
		eng.Close()
	}
}
