package drive

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
)

// Mem is a crash-simulating in-memory drive for tests, after pebble's
// vfs.MemFS CrashClone and TigerBeetle's simulated storage: reads see every
// write, Sync makes writes durable, and Crash throws away the volatile state —
// each unsynced write is dropped, applied, or torn (a random subset of its
// TearSize units applied), in the seeded random order a real disk might pick.
type Mem struct {
	mu       sync.Mutex
	path     string
	current  []byte  // what reads see
	durable  []byte  // what survives a crash
	unsynced []write // REQUIRES mu; writes since the last Sync, in order
	faults   []Fault
	// TearSize is the unit a crash can tear a write into; AtomicSize models a
	// drive with 4 KiB atomic writes (what the engine assumes), 1 tears bytes.
	TearSize int
	kind     Kind
	closed   bool
}

type write struct {
	off  int64
	data []byte
}

// FaultOp is the operation a Fault matches.
type FaultOp uint8

const (
	FaultRead FaultOp = 1 << iota
	FaultWrite
	FaultSync
)

// Fault makes matching operations fail with ErrIO wrapping an errno (EIO
// unless Err says otherwise), as a real drive's errors do. Off/Len bound the
// byte range (Len 0 = whole drive); Count limits how many times it fires
// (0 = forever).
type Fault struct {
	Ops      FaultOp
	Off, Len int64
	Count    int
	Skip     int           // let this many matching operations through first
	Err      syscall.Errno // e.g. ENOSPC for a full host filesystem; 0 = EIO
}

func NewMem(path string, size int64) *Mem {
	size &^= AtomicSize - 1
	return &Mem{path: path, current: make([]byte, size), durable: make([]byte, size), TearSize: AtomicSize}
}

func (m *Mem) Path() string   { return m.path }
func (m *Mem) Size() int64    { return int64(len(m.current)) }
func (m *Mem) Kind() Kind     { return m.kind }
func (m *Mem) Cached() bool   { return true }
func (m *Mem) SetKind(k Kind) { m.kind = k }
func (m *Mem) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

// Reopen clears the closed flag, as a new process opening the same device.
func (m *Mem) Reopen() *Mem {
	m.mu.Lock()
	m.closed = false
	m.mu.Unlock()
	return m
}

// Inject adds a fault rule.
func (m *Mem) Inject(f Fault) {
	m.mu.Lock()
	m.faults = append(m.faults, f)
	m.mu.Unlock()
}

// ClearFaults removes every fault rule.
func (m *Mem) ClearFaults() {
	m.mu.Lock()
	m.faults = nil
	m.mu.Unlock()
}

// REQUIRES m.mu held.
func (m *Mem) fault(op FaultOp, off int64, n int) error {
	for i := range m.faults {
		f := &m.faults[i]
		if f.Ops&op == 0 {
			continue
		}
		if f.Len > 0 && op != FaultSync && (off+int64(n) <= f.Off || off >= f.Off+f.Len) {
			continue
		}
		if f.Skip > 0 {
			f.Skip--
			continue
		}
		if f.Count > 0 {
			f.Count--
			if f.Count == 0 {
				m.faults = append(m.faults[:i], m.faults[i+1:]...)
			}
		}
		errno := f.Err
		if errno == 0 {
			errno = syscall.EIO
		}
		return fmt.Errorf("%w: %s: injected fault at %d: %w", ErrIO, m.path, off, errno)
	}
	return nil
}

// begin checks an operation on [off, off+n) and takes m.mu; on success the
// caller must unlock.
func (m *Mem) begin(op FaultOp, off int64, n int) error {
	if op != FaultSync {
		if err := checkRange(m, n, off); err != nil {
			return err
		}
	}
	m.mu.Lock()
	err := m.fault(op, off, n)
	if m.closed {
		err = fmt.Errorf("%w: %s: closed", ErrIO, m.path)
	}
	if err != nil {
		m.mu.Unlock()
	}
	return err
}

func (m *Mem) ReadAt(p []byte, off int64) error {
	if err := m.begin(FaultRead, off, len(p)); err != nil {
		return err
	}
	defer m.mu.Unlock()
	copy(p, m.current[off:])
	return nil
}

func (m *Mem) WriteAt(p []byte, off int64) error {
	if err := m.begin(FaultWrite, off, len(p)); err != nil {
		return err
	}
	defer m.mu.Unlock()
	copy(m.current[off:], p)
	m.unsynced = append(m.unsynced, write{off: off, data: append([]byte(nil), p...)})
	return nil
}

// Zero is a write of zeros (so a crash may drop or tear it like any write).
func (m *Mem) Zero(off, n int64) error {
	if err := m.begin(FaultWrite, off, int(n)); err != nil {
		return err
	}
	defer m.mu.Unlock()
	clear(m.current[off : off+n])
	for ; n > 0; n -= int64(len(zeros)) {
		c := min(n, int64(len(zeros)))
		m.unsynced = append(m.unsynced, write{off: off, data: zeros[:c]}) // shared, never written
		off += c
	}
	return nil
}

var zeros = make([]byte, 1<<20)

func (m *Mem) Sync() error {
	if err := m.begin(FaultSync, 0, 0); err != nil {
		return err
	}
	defer m.mu.Unlock()
	for _, w := range m.unsynced {
		copy(m.durable[w.off:], w.data)
	}
	m.unsynced = m.unsynced[:0]
	return nil
}

// Crash simulates power loss: every unsynced write is dropped, applied whole,
// or torn, chosen by rng; then the drive holds only what survived. Faults stay.
func (m *Mem) Crash(rng *rand.Rand) {
	m.mu.Lock()
	defer m.mu.Unlock()
	tear := max(m.TearSize, 1)
	for _, w := range m.unsynced {
		switch rng.IntN(3) {
		case 0: // lost
		case 1:
			copy(m.durable[w.off:], w.data)
		case 2:
			for u := 0; u < len(w.data); u += tear {
				if rng.IntN(2) == 0 {
					end := min(u+tear, len(w.data))
					copy(m.durable[w.off+int64(u):], w.data[u:end])
				}
			}
		}
	}
	m.unsynced = nil
	copy(m.current, m.durable)
}

// Unsynced reports how many writes a crash could lose now.
func (m *Mem) Unsynced() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.unsynced)
}

// Bytes returns a copy of what reads see (for tests that inspect the layout).
func (m *Mem) Bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.current...)
}

// Poke overwrites bytes as durable, as a test that damages a drive at rest.
func (m *Mem) Poke(off int64, p []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.current[off:], p)
	copy(m.durable[off:], p)
}

// DurableBytes returns a copy of what would survive a crash now.
func (m *Mem) DurableBytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.durable...)
}
