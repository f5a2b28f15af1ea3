package allocator

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func TestStripesAcrossDrives(t *testing.T) {
	a := New()
	a.AddDrive(10)
	a.AddDrive(10)
	a.AddDrive(10)
	seen := map[int]int{}
	for i := 0; i < 6; i++ {
		e, err := a.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		d, _, _ := a.Drive(e)
		seen[d]++
	}
	for d := 0; d < 3; d++ {
		if seen[d] != 2 {
			t.Fatalf("allocations per drive %v, want 2 each", seen)
		}
	}
}

// A randomized simulation against a trivial model: allocate until full, free
// at random, re-take, share; after every step the invariants hold and no
// extent is ever handed out twice.
func TestRandomAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	a := New()
	sizes := []int{1, 63, 64, 65, 200}
	total := 0
	for _, n := range sizes {
		a.AddDrive(n)
		total += n
	}
	refs := map[Extent]int{}
	for step := 0; step < 20000; step++ {
		switch op := rng.IntN(10); {
		case op < 5:
			e, err := a.Allocate()
			if errors.Is(err, ErrNoSpace) {
				if len(refs) != total {
					t.Fatalf("step %d: ENOSPC with %d of %d in use", step, len(refs), total)
				}
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if refs[e] != 0 {
				t.Fatalf("step %d: extent %d allocated twice", step, e)
			}
			refs[e] = 1
		case op < 8 && len(refs) > 0:
			for e := range refs {
				if err := a.Free(e); err != nil {
					t.Fatal(err)
				}
				if refs[e]--; refs[e] == 0 {
					delete(refs, e)
				}
				break
			}
		case op == 8 && len(refs) > 0:
			for e := range refs {
				if err := a.Ref(e); err != nil {
					t.Fatal(err)
				}
				refs[e]++
				break
			}
		default:
			e := Extent(rng.IntN(total))
			if err := a.Take(e); err != nil {
				t.Fatal(err)
			}
			refs[e]++
		}
		if err := a.Check(); err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if a.Used() != int64(len(refs)) {
			t.Fatalf("step %d: used %d, model %d", step, a.Used(), len(refs))
		}
		for e, n := range refs {
			if a.Refs(e) != n {
				t.Fatalf("step %d: extent %d refs %d, model %d", step, e, a.Refs(e), n)
			}
		}
	}
}

func TestBadInput(t *testing.T) {
	a := New()
	a.AddDrive(4)
	if err := a.Free(2); !errors.Is(err, ErrInvalid) {
		t.Fatalf("free of free extent: %v", err)
	}
	if err := a.Take(99); !errors.Is(err, ErrInvalid) {
		t.Fatalf("take beyond drives: %v", err)
	}
	if err := a.Ref(1); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ref of free extent: %v", err)
	}
}
