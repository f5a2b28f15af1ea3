package drive

import (
	"testing"
	"unsafe"
)

func TestBuffer(t *testing.T) {
	for _, c := range []struct{ n, cap int }{
		{1, 4096}, {4096, 4096}, {4097, 8192}, {12 << 10, 16 << 10}, {1 << 20, 1 << 20},
		{1<<20 + 1, 2 << 20}, {32 << 20, 32 << 20}, {32<<20 + 4096, 32<<20 + 4096},
	} {
		b := GetBuffer(c.n)
		if len(b.B) != c.n || cap(b.B) != c.cap || uintptr(unsafe.Pointer(&b.B[0]))%AtomicSize != 0 {
			t.Errorf("GetBuffer(%d): len %d cap %d at %p, want len %d cap %d, aligned", c.n, len(b.B), cap(b.B), &b.B[0], c.n, c.cap)
		}
		PutBuffer(b)
	}
}

// Steady-state I/O allocates nothing: a buffer put back is the one the next
// Get of its class returns.
func TestBufferNoAllocs(t *testing.T) {
	for _, n := range []int{4096, 64 << 10, 1 << 20} {
		PutBuffer(GetBuffer(n))
		if allocs := testing.AllocsPerRun(100, func() { PutBuffer(GetBuffer(n)) }); allocs != 0 {
			t.Errorf("GetBuffer(%d)+PutBuffer: %.1f allocations, want 0", n, allocs)
		}
	}
}
