// Package nbdtest provides MemExport, a flat in-memory NBD export for the
// tests, fuzz targets and benchmarks that measure the NBD server rather than
// the storage under it. It implements nbd.Export without importing package
// nbd, so that package's own tests can use it.
package nbdtest

import (
	"sync"

	"github.com/cairn-storage/cairn/engine"
)

// MemExport is a byte slice served as an export: no holes, no durability
// (Flush does nothing). The server checks every range against Size before
// calling it, so it does not. Safe for concurrent use.
type MemExport struct {
	name string
	mu   sync.RWMutex
	data []byte // REQUIRES mu
}

// NewMemExport returns a zeroed export of size bytes.
func NewMemExport(name string, size int) *MemExport {
	return &MemExport{name: name, data: make([]byte, size)}
}

func (m *MemExport) Name() string   { return m.name }
func (m *MemExport) Size() int64    { return int64(len(m.data)) }
func (m *MemExport) ReadOnly() bool { return false }

func (m *MemExport) ReadAt(p []byte, off int64) error {
	m.mu.RLock()
	copy(p, m.data[off:])
	m.mu.RUnlock()
	return nil
}

func (m *MemExport) WriteAt(p []byte, off int64, _ bool) error {
	m.mu.Lock()
	copy(m.data[off:], p)
	m.mu.Unlock()
	return nil
}

func (m *MemExport) Flush() error            { return nil }
func (m *MemExport) Trim(off, n int64) error { return m.WriteZeroes(off, n, false) }

func (m *MemExport) WriteZeroes(off, n int64, _ bool) error {
	m.mu.Lock()
	clear(m.data[off : off+n])
	m.mu.Unlock()
	return nil
}

// Extents reports the whole range as data.
func (m *MemExport) Extents(off, n int64) ([]engine.Extent, error) {
	return []engine.Extent{{Offset: off, Length: n, Kind: engine.ExtentData}}, nil
}
