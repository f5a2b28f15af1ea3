package drive

import (
	"math/bits"
	"sync"
	"unsafe"
)

// Buffer is a pooled I/O buffer, the one pool every layer uses (the engine's
// partial blocks and zero runs, NBD request payloads, FUSE gathered writes,
// File's O_DIRECT bounce buffers). B's address is AtomicSize-aligned, so any
// Buffer can go to an O_DIRECT drive as is.
//
// Buffers come from size-classed pools, powers of two from 4 KiB to 32 MiB
// (the largest NBD request), so steady-state I/O allocates nothing; a larger
// one is allocated and dropped on Put. The pools hold *Buffer so that Put
// does not allocate.
type Buffer struct{ B []byte }

const (
	minBufferShift = 12
	maxBufferShift = 25
)

var bufferPools [maxBufferShift - minBufferShift + 1]sync.Pool

func bufferClass(n int) int {
	if n <= 1<<minBufferShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufferShift
}

// GetBuffer returns a buffer with len(B) == n; its contents are undefined.
func GetBuffer(n int) *Buffer {
	c := bufferClass(n)
	if c >= len(bufferPools) {
		return &Buffer{B: AlignedBuffer(n)}
	}
	b, ok := bufferPools[c].Get().(*Buffer)
	if !ok {
		b = &Buffer{B: classBuffer(1 << (c + minBufferShift))}
	}
	b.B = b.B[:n]
	return b
}

// PutBuffer returns b to its pool; neither b nor b.B may be used afterwards.
func PutBuffer(b *Buffer) {
	n := cap(b.B)
	c := bufferClass(n)
	if c < len(bufferPools) && n == 1<<(c+minBufferShift) {
		b.B = b.B[:n]
		bufferPools[c].Put(b)
	}
}

// classBuffer allocates a pool class's buffer. Go's allocator places
// power-of-two objects of 4 KiB and more on 4 KiB boundaries (not promised,
// so it is checked): the padding AlignedBuffer adds, which would double a
// 4 KiB buffer, is paid only when that ever changes.
func classBuffer(n int) []byte {
	if b := make([]byte, n); uintptr(unsafe.Pointer(&b[0]))%AtomicSize == 0 {
		return b
	}
	return AlignedBuffer(n)
}

// AlignedBuffer returns n bytes whose address is AtomicSize-aligned.
func AlignedBuffer(n int) []byte {
	raw := make([]byte, n+AtomicSize)
	skip := (AtomicSize - int(uintptr(unsafe.Pointer(&raw[0]))%AtomicSize)) % AtomicSize
	return raw[skip : skip+n : skip+n]
}
