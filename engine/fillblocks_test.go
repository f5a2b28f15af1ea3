package engine

import (
	"math/rand/v2"
	"sync"
	"testing"
)

// The set answers like a plain map of 256 bits however it is built: inline,
// sealed and moved to a map, or reset by recovery.
func TestFillBlocksLikeAMap(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 0))
		var s fillBlocks
		var want [blocksPerExtent / 64]uint64
		grew := 0
		for range 1 + rng.IntN(40) {
			first := rng.IntN(blocksPerExtent)
			n := 1 + rng.IntN(min(blocksPerExtent-first, 1+rng.IntN(20)))
			if rng.IntN(4) == 0 {
				n = 1
			}
			wantNew := 0
			for b := first; b < first+n; b++ {
				if want[b/64]&(1<<(b%64)) == 0 {
					wantNew++
					want[b/64] |= 1 << (b % 64)
				}
			}
			newly, g := s.set(first, n)
			if g {
				grew++
			}
			if newly != wantNew {
				t.Fatalf("seed %d: set(%d, %d) = %d new, want %d", seed, first, n, newly, wantNew)
			}
			if s.words() != want {
				t.Fatalf("seed %d: words %x, want %x", seed, s.words(), want)
			}
			c := 0
			for b := range blocksPerExtent {
				set := want[b/64]&(1<<(b%64)) != 0
				if set {
					c++
				}
				if s.isSet(b) != set {
					t.Fatalf("seed %d: isSet(%d) = %v", seed, b, !set)
				}
			}
			if s.count() != c || s.isDense() != (c > inlineMax) {
				t.Fatalf("seed %d: count %d dense %v, want %d", seed, s.count(), s.isDense(), c)
			}
			switch rng.IntN(8) {
			case 0: // recovery rebuilds it from its words
				s.reset(s.words())
				if s.words() != want {
					t.Fatalf("seed %d: reset changed the set", seed)
				}
			case 1: // or replays a record onto it
				var m [blocksPerExtent / 64]uint64
				b := rng.IntN(blocksPerExtent)
				m[b/64] = 1 << (b % 64)
				newly := s.merge(m)
				if (newly != [blocksPerExtent / 64]uint64{}) != (want[b/64]&m[b/64] == 0) {
					t.Fatalf("seed %d: merge of block %d said new %x with the set %x", seed, b, newly, want)
				}
				want[b/64] |= m[b/64]
				if s.words() != want {
					t.Fatalf("seed %d: merge gave %x, want %x", seed, s.words(), want)
				}
			}
		}
		if grew > 1 {
			t.Fatalf("seed %d: the map was allocated %d times", seed, grew)
		}
	}
}

// Adders race to move the set from its word to a map while readers look:
// no block is lost, a reader never sees one set that was not, and one set
// before a reader looked stays set (run with -race too).
func TestFillBlocksConcurrentAdders(t *testing.T) {
	for round := range 200 {
		var s fillBlocks
		const adders = 4
		var wg sync.WaitGroup
		done := make(chan struct{})
		var total [adders]int
		for a := range adders {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// adder a owns blocks a, a+adders, ...: each is added once
				for b := a; b < 64; b += adders {
					n, _ := s.set(b, 1)
					total[a] += n
					if !s.isSet(b) {
						t.Errorf("round %d: block %d not set after its add", round, b)
					}
				}
			}()
		}
		var readers sync.WaitGroup
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				for b := 64; b < blocksPerExtent; b++ {
					if s.isSet(b) {
						t.Errorf("round %d: block %d set, never added", round, b)
						return
					}
				}
			}
		}()
		wg.Wait()
		close(done)
		readers.Wait()
		sum := 0
		for _, n := range total {
			sum += n
		}
		if sum != 64 || s.count() != 64 {
			t.Fatalf("round %d: %d blocks counted new, %d in the set; want 64", round, sum, s.count())
		}
	}
}
