package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairn-storage/cairn/drive"
)

// Check is safe to call while I/O runs: with writers (fresh extents and
// copy-on-write of extents a snapshot shares), trims, flushes and snapshots
// being taken and deleted on other goroutines, every Check passes. Run it
// with -race.
func TestCheckWhileIORuns(t *testing.T) {
	e := memEngine(t, drive.NewMem("mem0", 96<<20))
	const size = 16 << 20
	if _, err := e.CreateVolume(VolumeSpec{Name: "v", Size: size}); err != nil {
		t.Fatal(err)
	}
	v, _ := e.Volume("v")

	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	seed := uint64(0)
	worker := func(name string, op func(rng *rand.Rand, i int) error) {
		seed++
		rng := rand.New(rand.NewPCG(seed, 1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				if err := op(rng, i); err != nil && !errors.Is(err, ErrNoSpace) {
					errs <- fmt.Errorf("%s %d: %w", name, i, err)
					return
				}
			}
		}()
	}
	for w := range 3 {
		buf := pattern(w, 2*BlockSize)
		worker(fmt.Sprintf("writer%d", w), func(rng *rand.Rand, _ int) error {
			off := rng.Int64N(size/BlockSize-1) * BlockSize
			return v.WriteAt(buf, off, rng.IntN(8) == 0)
		})
	}
	worker("trimmer", func(rng *rand.Rand, _ int) error {
		return v.Trim(rng.Int64N(size/ExtentSize)*ExtentSize, ExtentSize)
	})
	var snapshots atomic.Int64
	worker("snapshotter", func(_ *rand.Rand, i int) error {
		snapshots.Add(1)
		name := fmt.Sprintf("v.s%d", i)
		if _, err := e.CreateSnapshot("v", name); err != nil {
			return err
		}
		if i%2 == 0 {
			return nil // kept until the next one: writes copy on write meanwhile
		}
		if err := e.DeleteVolume(fmt.Sprintf("v.s%d", i-1)); err != nil {
			return err
		}
		return e.DeleteVolume(name)
	})

	// Check until the snapshotter has been round enough times for every
	// extent to have been copied on write many times over.
	const rounds = 200
	for i := 0; snapshots.Load() < rounds && len(errs) == 0; i++ {
		if err := e.Check(); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("check %d while I/O runs: %v", i, err)
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := e.Check(); err != nil {
		t.Fatalf("after the I/O: %v", err)
	}
}
