package nbd

import (
	"sync"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

// request is one transmission request and, once executed, its reply. The
// slots are allocated once per connection and reused; see the package doc
// for which goroutine owns a slot when.
type request struct {
	handle uint64
	offset uint64
	length uint32
	typ    uint16
	flags  uint16

	buf    *drive.Buffer // pooled buffer backing data, nil when none
	data   []byte        // WRITE payload, READ data, or BLOCK_STATUS payload
	budget int64         // bytes reserved in the connection's byteBudget

	raw       bool   // data is the rest of an encoded reply, sent as is
	writeback bool   // a WRITE whose write-back starts once it is answered (DeferredWriteback)
	errno     uint32 // NBD error to reply with; 0 = success
	msg       string // message for a structured error reply
	errOffset int64  // offset for ERROR_OFFSET; -1 = plain ERROR

	// A FLUSH to a SharedFlusher: gen is the export's FlushGen read as the
	// flush arrived, at arrived; joined chains the flushes that share this
	// one's outcome (conn.shareFlush).
	shared  bool
	gen     uint64
	arrived time.Time
	joined  *request

	// Content chunks of a structured READ; nchunks == 0 means one
	// OFFSET_DATA chunk for the whole request.
	nchunks int
	chunks  [maxReadChunks]readChunk
}

// readChunk is one content chunk of a READ reply.
type readChunk struct {
	off   uint64 // absolute export offset
	n     uint32
	start int // position of the chunk's data in request.data
	hole  bool
}

func (r *request) reset(handle, off uint64, length uint32, typ, flags uint16) {
	r.handle, r.offset, r.length, r.typ, r.flags = handle, off, length, typ, flags
	r.errno, r.msg, r.errOffset, r.nchunks, r.budget, r.raw, r.writeback = 0, "", -1, 0, 0, false, false
	r.shared, r.gen, r.arrived, r.joined = false, 0, time.Time{}, nil
}

func (r *request) fail(errno uint32, msg string) {
	r.errno, r.msg = errno, msg
}

// failErr records err (if any) as the request's outcome.
func (r *request) failErr(err error) {
	if err != nil {
		r.errno, r.msg = nbdError(engine.Errno(err)), err.Error()
	}
}

// nbdError translates an errno (engine.Errno decides which) to the error
// value the protocol allows: it has no EROFS (a write to a read-only export
// is EPERM, says the spec), and anything it does not name is EIO.
func nbdError(e syscall.Errno) uint32 {
	switch e {
	case syscall.EPERM, syscall.EROFS:
		return ErrnoPerm
	case syscall.ENOMEM:
		return ErrnoNoMem
	case syscall.EINVAL:
		return ErrnoInval
	case syscall.ENOSPC:
		return ErrnoNoSpc
	case syscall.EOVERFLOW:
		return ErrnoOverflow
	case syscall.ENOTSUP:
		return ErrnoNotSup
	case syscall.ESHUTDOWN:
		return ErrnoShutdown
	}
	return ErrnoIO
}

// alloc points r.data at a pooled buffer of n bytes.
func (r *request) alloc(n int) {
	r.buf = drive.GetBuffer(n)
	r.data = r.buf.B
}

func (r *request) freeBuf() {
	if r.buf != nil {
		drive.PutBuffer(r.buf)
		r.buf, r.data = nil, nil
	}
}

// planChunks lays out a READ of [offset, offset+length) as content chunks
// from the export's extents. It reports false (one OFFSET_DATA chunk, please)
// when the range has no hole, needs more than maxReadChunks chunks, or the
// extents do not cover the range contiguously.
func (r *request) planChunks(ext []engine.Extent) bool {
	off, end := r.offset, r.offset+uint64(r.length)
	pos, n, holes := off, 0, false
	for _, e := range ext {
		if pos >= end {
			break
		}
		if e.Offset < 0 || e.Length <= 0 || uint64(e.Offset) > pos || uint64(e.Offset+e.Length) <= pos {
			return false
		}
		t := min(uint64(e.Offset+e.Length), end)
		hole := e.Kind == engine.ExtentHole
		if n > 0 && r.chunks[n-1].hole == hole {
			r.chunks[n-1].n += uint32(t - pos)
		} else {
			if n == maxReadChunks {
				return false
			}
			r.chunks[n] = readChunk{off: pos, n: uint32(t - pos), start: int(pos - off), hole: hole}
			n++
		}
		holes = holes || hole
		pos = t
	}
	if pos != end || !holes {
		return false
	}
	r.nchunks = n
	return true
}

// byteBudget bounds the payload bytes a connection holds. Only the reader
// waits in acquire; the writer releases. A single request larger than the
// whole budget is let through alone (acquire caps it).
type byteBudget struct {
	mu    sync.Mutex
	cond  sync.Cond
	total int64
	avail int64 // protected by mu
}

func (b *byteBudget) init(total int64) {
	b.cond.L = &b.mu
	b.total, b.avail = total, total
}

func (b *byteBudget) acquire(n int64) {
	n = min(n, b.total)
	b.mu.Lock()
	for b.avail < n {
		b.cond.Wait()
	}
	b.avail -= n
	b.mu.Unlock()
}

func (b *byteBudget) release(n int64) {
	if n == 0 {
		return
	}
	n = min(n, b.total)
	b.mu.Lock()
	b.avail += n
	b.mu.Unlock()
	b.cond.Signal()
}
