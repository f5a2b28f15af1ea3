package engine

// PLACEHOLDER: an in-memory engine with the final API so that the daemon and
// the NBD server can be built against it while the real engine (drives, pools,
// allocator, WAL) is written. Replaced in full; do not build on its internals.

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

const BlockSize = 4096

func ParseIOPriority(s string) (IOPriority, error) {
	switch p := IOPriority(strings.ToLower(s)); p {
	case PriorityHigh, PriorityMedium, PriorityLow:
		return p, nil
	}
	return "", fmt.Errorf("%w: io_priority %q (want high, medium or low)", ErrInvalid, s)
}

type Engine struct {
	mu   sync.Mutex
	opts Options
	vols map[string]*Volume
}

func Open(opts Options) (*Engine, error) {
	return &Engine{opts: opts, vols: map[string]*Volume{}}, nil
}

func (e *Engine) Close() error { return nil }

func (e *Engine) Status() Status {
	return Status{NodeID: e.opts.NodeID, Pools: []PoolInfo{{ID: 0, IOPriority: PriorityLow, Raid: "raid0", Size: 64 << 30, Status: "Online"}}}
}

func (e *Engine) AddDrive(spec DriveSpec) error { return nil }

func (e *Engine) CreateVolume(spec VolumeSpec) (VolumeInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.vols[spec.Name]; ok {
		return VolumeInfo{}, fmt.Errorf("%w: volume %q", ErrExists, spec.Name)
	}
	v := &Volume{info: VolumeInfo{ID: fmt.Sprint(time.Now().UnixNano()), Name: spec.Name, Size: spec.Size, Repl: 1, IOPriority: PriorityLow, State: "up", BlockSize: BlockSize, Created: time.Now()}, data: map[int64][]byte{}}
	e.vols[spec.Name] = v
	return v.info, nil
}

func (e *Engine) Volume(name string) (*Volume, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.vols[name]
	if !ok {
		return nil, fmt.Errorf("%w: volume %q", ErrNotFound, name)
	}
	return v, nil
}

func (e *Engine) Volumes() []VolumeInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []VolumeInfo
	for _, v := range e.vols {
		out = append(out, v.Info())
	}
	return out
}

func (e *Engine) UpdateVolume(name string, upd VolumeUpdate) (VolumeInfo, error) {
	v, err := e.Volume(name)
	if err != nil {
		return VolumeInfo{}, err
	}
	if upd.Size != nil {
		if err := v.Resize(*upd.Size); err != nil {
			return VolumeInfo{}, err
		}
	}
	return v.Info(), nil
}

func (e *Engine) DeleteVolume(name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.vols, name)
	return nil
}

type Volume struct {
	mu   sync.Mutex
	info VolumeInfo
	data map[int64][]byte
	hold int
}

func (v *Volume) Info() VolumeInfo { v.mu.Lock(); defer v.mu.Unlock(); return v.info }
func (v *Volume) Name() string     { return v.info.Name }
func (v *Volume) Size() int64      { v.mu.Lock(); defer v.mu.Unlock(); return v.info.Size }
func (v *Volume) ReadOnly() bool   { return false }
func (v *Volume) Hold() (release func()) {
	v.mu.Lock()
	v.hold++
	v.mu.Unlock()
	return func() { v.mu.Lock(); v.hold--; v.mu.Unlock() }
}

func (v *Volume) check(off, n int64) error {
	if n <= 0 || off < 0 || off+n > v.info.Size {
		return fmt.Errorf("%w: offset %d length %d size %d", ErrOutOfRange, off, n, v.info.Size)
	}
	return nil
}

func (v *Volume) ReadAt(p []byte, off int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	for i := range p {
		o := off + int64(i)
		b := v.data[o/BlockSize]
		if b == nil {
			p[i] = 0
		} else {
			p[i] = b[o%BlockSize]
		}
	}
	return nil
}

func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(off, int64(len(p))); err != nil {
		return err
	}
	for i := range p {
		o := off + int64(i)
		b := v.data[o/BlockSize]
		if b == nil {
			b = make([]byte, BlockSize)
			v.data[o/BlockSize] = b
		}
		b[o%BlockSize] = p[i]
	}
	return nil
}

func (v *Volume) Flush() error { return nil }

func (v *Volume) Trim(off, n int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(off, n); err != nil {
		return err
	}
	for b := (off + BlockSize - 1) / BlockSize; (b+1)*BlockSize <= off+n; b++ {
		delete(v.data, b)
	}
	return nil
}

func (v *Volume) WriteZeroes(off, n int64, noHole bool) error {
	return v.WriteAt(make([]byte, n), off, false)
}

func (v *Volume) Extents(off, n int64) ([]Extent, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.check(off, n); err != nil {
		return nil, err
	}
	var out []Extent
	for o := off; o < off+n; {
		end := min((o/BlockSize+1)*BlockSize, off+n)
		k := ExtentHole
		if v.data[o/BlockSize] != nil {
			k = ExtentData
		}
		if len(out) > 0 && out[len(out)-1].Kind == k {
			out[len(out)-1].Length += end - o
		} else {
			out = append(out, Extent{Offset: o, Length: end - o, Kind: k})
		}
		o = end
	}
	return out, nil
}

func (v *Volume) Resize(size int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if size < v.info.Size {
		return ErrShrink
	}
	v.info.Size = size
	return nil
}
