package drive

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is a real drive: a block device (opened O_DIRECT, so the engine's own
// durability rules are the only cache policy) or a regular file (page cache,
// synced with fdatasync).
//
// A regular file is also mapped into memory (MAP_SHARED) for reads: a copy out
// of the mapping costs no system call, which is what makes 4 KiB random reads
// cheap. Writes never go through the mapping: a copy into a shared mapping is
// not atomic against the process being killed — SIGKILL in the middle of it
// leaves a half-written page in the page cache that the kernel then writes back,
// a block that is neither old nor new (found by tests/crash). pwrite copies each
// page whole before a fatal signal is acted on, so every 4 KiB block the engine
// writes is either all there or not at all, whatever happens to the process.
// A fault on the mapping (an I/O error, or the backing filesystem full for a
// sparse file) would be SIGBUS; reads run with debug.SetPanicOnFault and the
// fault comes back as ErrIO.
type File struct {
	f      *os.File
	path   string
	size   int64
	direct bool
	mem    []byte // the mapping for reads, for regular files not opened direct
	kind   Kind
	wb     writebackKicker
}

// OpenFile opens an existing block device or regular file as a drive.
// forceDirect opens a regular file O_DIRECT too (tests of the direct path).
func OpenFile(path string, forceDirect bool) (*File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnusable, path, err)
	}
	isDev := st.Mode()&os.ModeDevice != 0
	if !isDev && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s: not a block device or regular file", ErrUnusable, path)
	}
	flags := os.O_RDWR
	direct := isDev || forceDirect
	if direct {
		flags |= unix.O_DIRECT
	}
	if isDev {
		flags |= unix.O_EXCL // refuse a device the kernel has mounted or claimed
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnusable, path, err)
	}
	size, err := f.Seek(0, 2)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %s: size: %w", ErrUnusable, path, err)
	}
	d := &File{f: f, path: path, size: size &^ (AtomicSize - 1), direct: direct, kind: KindFile}
	if isDev {
		d.kind = deviceKind(path)
	}
	if !direct && d.size > 0 {
		// No readahead on the descriptor: readahead fills the page cache with
		// large folios, and small writes into those are slow (see
		// cachedWriteChunk). A 1 MiB cold read is as fast without it.
		if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_RANDOM); err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: fadvise: %w", ErrUnusable, path, err)
		}
		d.mem, err = unix.Mmap(int(f.Fd()), 0, int(d.size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %s: mmap: %w", ErrUnusable, path, err)
		}
	}
	return d, nil
}

// deviceKind reads /sys/block/<dev>/queue/rotational and the device name.
func deviceKind(path string) Kind {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = path
	}
	name := filepath.Base(real)
	if strings.HasPrefix(name, "nvme") {
		return KindNVMe
	}
	// A partition's queue lives under its parent disk.
	for _, p := range []string{"/sys/class/block/" + name + "/queue/rotational", "/sys/class/block/" + name + "/../queue/rotational"} {
		if b, err := os.ReadFile(p); err == nil {
			if strings.TrimSpace(string(b)) == "1" {
				return KindHDD
			}
			return KindSSD
		}
	}
	return KindHDD
}

func (d *File) Path() string { return d.path }
func (d *File) Size() int64  { return d.size }
func (d *File) Kind() Kind   { return d.kind }
func (d *File) Cached() bool { return !d.direct }
func (d *File) Close() error {
	if d.mem != nil {
		unix.Munmap(d.mem)
		d.mem = nil
	}
	return d.f.Close()
}

// copyMapped copies between a caller's buffer and the mapping, turning a
// fault on the mapping into ErrIO.
func (d *File) copyMapped(dst, src []byte, off int64) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %s: fault at %d (I/O error, or the filesystem holding the drive file is full): %v", ErrIO, d.path, off, r)
		}
	}()
	copy(dst, src)
	return nil
}

func (d *File) ReadAt(p []byte, off int64) error {
	if err := checkRange(d, len(p), off); err != nil {
		return err
	}
	// Large reads go through pread: on a cold cache, faulting a mapping in
	// page by page is many times slower than one read with readahead.
	if d.mem != nil && len(p) < largeRead {
		return d.copyMapped(p, d.mem[off:off+int64(len(p))], off)
	}
	if d.direct && !aligned(p, off) {
		b := GetBuffer(len(p))
		defer PutBuffer(b)
		if err := d.readFull(b.B, off); err != nil {
			return err
		}
		copy(p, b.B)
		return nil
	}
	return d.readFull(p, off)
}

func (d *File) readFull(p []byte, off int64) error {
	if _, err := d.f.ReadAt(p, off); err != nil {
		return fmt.Errorf("%w: %s: read at %d: %w", ErrIO, d.path, off, err)
	}
	return nil
}

func (d *File) WriteAt(p []byte, off int64) error {
	if err := checkRange(d, len(p), off); err != nil {
		return err
	}
	if d.direct && !aligned(p, off) {
		b := GetBuffer(len(p))
		defer PutBuffer(b)
		copy(b.B, p)
		p = b.B
	}
	chunk := len(p)
	if d.mem != nil {
		chunk = cachedWriteChunk
	}
	for len(p) > 0 {
		n := min(len(p), chunk)
		if _, err := d.f.WriteAt(p[:n], off); err != nil {
			return fmt.Errorf("%w: %s: write at %d: %w", ErrIO, d.path, off, err)
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// cachedWriteChunk caps each pwrite into the page cache. The kernel sizes a
// new page-cache folio by the write (or readahead) that creates it, up to
// 2 MiB on ext4, and every later small write into a folio walks all of the
// folio's block buffers: small folios make small writes cheap, large ones make
// large writes cheap. Engine benchmarks (go test -bench ./bench/, ext4, kernel
// 6.18, 2 cores), 4 KiB random writes QD32 / 1 MiB sequential writes:
//
//	1 MiB pieces    39–52k ops/s   9–11 GB/s
//	64 KiB pieces  210–250k ops/s  8–9.7 GB/s
//	32 KiB pieces  290–320k ops/s  6.5–7.2 GB/s   <- chosen
//	16 KiB pieces  390–420k ops/s  5.4–6.0 GB/s
const cachedWriteChunk = 32 << 10

func (d *File) Zero(off, n int64) error {
	if err := checkRange(d, int(n), off); err != nil {
		return err
	}
	var err error
	if d.kind == KindFile {
		err = unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	} else {
		r := [2]uint64{uint64(off), uint64(n)}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, d.f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r[0])))
		if errno != 0 {
			err = errno
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %s: zero %d bytes at %d: %w", ErrIO, d.path, n, off, err)
	}
	return nil
}

// FillHoles writes zeros into the holes of [off, off+n) of a regular file,
// never over data: a later write there is then an overwrite, which a sync
// makes durable without a filesystem journal commit for the allocation
// (on ext4 that commit roughly doubles an fdatasync). The zeros reach the
// device with the next Sync; their write-back starts at once. Block devices
// have no holes: nothing to do.
func (d *File) FillHoles(off, n int64) error {
	if d.kind != KindFile {
		return nil
	}
	if err := checkRange(d, int(n), off); err != nil {
		return err
	}
	fd := int(d.f.Fd())
	end := off + n
	for off < end {
		hole, err := unix.Seek(fd, off, unix.SEEK_HOLE) // I/O uses pread/pwrite: the file offset is free
		if err != nil || hole >= end {
			break // ENXIO: no hole before EOF
		}
		data, err := unix.Seek(fd, hole, unix.SEEK_DATA)
		if err != nil || data > end {
			data = end // ENXIO: a hole to EOF
		}
		zeros := make([]byte, min(data-hole, 1<<20))
		for at := hole; at < data; at += int64(len(zeros)) {
			z := zeros[:min(int64(len(zeros)), data-at)]
			if err := d.WriteAt(z, at); err != nil {
				return err
			}
		}
		_ = unix.SyncFileRange(fd, hole, data-hole, unix.SYNC_FILE_RANGE_WRITE)
		off = data
	}
	return nil
}

// NextData returns the first offset ≥ off that may hold data: a regular
// file's holes (never written, or punched) read as zeros and can be skipped.
// Block devices report off itself.
func (d *File) NextData(off int64) (int64, bool) {
	if d.kind != KindFile {
		return off, true
	}
	next, err := unix.Seek(int(d.f.Fd()), off, unix.SEEK_DATA) // I/O uses pread/pwrite: the file offset is free
	if err == unix.ENXIO {
		return 0, false
	}
	if err != nil {
		return off, true
	}
	return next, true
}

// ReadAhead turns the kernel's readahead on for a caller about to read a
// long range in order (the log, at replay), and off again. It is off for
// normal use: see cachedWriteChunk.
func (d *File) ReadAhead(on bool) {
	if d.mem == nil {
		return
	}
	advice := unix.FADV_RANDOM
	if on {
		advice = unix.FADV_SEQUENTIAL
	}
	unix.Fadvise(int(d.f.Fd()), 0, 0, advice) // a hint: an error changes nothing
}

func (d *File) Sync() error {
	if err := unix.Fdatasync(int(d.f.Fd())); err != nil {
		return fmt.Errorf("%w: %s: fdatasync: %w", ErrIO, d.path, err)
	}
	return nil
}

const largeRead = 256 << 10

// O_DIRECT needs the buffer address, length and offset aligned; the engine
// keeps length and offset aligned, and Buffers are aligned, so bouncing is
// the rare path.
func aligned(p []byte, off int64) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(&p[0]))%AtomicSize == 0 && len(p)%AtomicSize == 0 && off%AtomicSize == 0
}

// StartWriteback asks the kernel to start writing [off, off+n) of a cached
// file drive to the device now, without waiting (sync_file_range WRITE):
// the next Sync then finds fewer dirty pages to write. It changes nothing
// that is durable — only Sync does — so its error is not a lost write and is
// dropped: a real I/O error is reported by the Sync that follows.
//
// Concurrent calls share one system call (writebackKicker): each
// sync_file_range submits its pages and kicks the device's queue, a VM exit
// on a virtio disk, which cost more than the write itself when every 4 KiB
// write of a burst made its own.
func (d *File) StartWriteback(off, n int64) {
	if d.direct || n <= 0 {
		return
	}
	d.wb.start(off, off+n, func(lo, hi int64) {
		_ = unix.SyncFileRange(int(d.f.Fd()), lo, hi-lo, unix.SYNC_FILE_RANGE_WRITE)
	})
}

// writebackKicker combines write-back requests that arrive while one is
// being made: the caller that finds none running makes it, and before
// returning makes one more covering every range that arrived meanwhile
// (the smallest span holding them: write-back of a page that is not dirty
// costs nothing, and every dirty page of the file is written by the next
// Sync anyway). A caller that finds one running adds its range and returns
// at once. Like the write-back itself, it is a hint: a range still pending
// when its caller's write is flushed is written by that flush's Sync.
type writebackKicker struct {
	mu      sync.Mutex
	running bool
	lo, hi  int64 // the pending span; lo == hi: none
}

// maxWritebackRounds bounds the calls one caller makes for others, so that
// a steady stream of writers cannot keep it from its own work; what is
// left is made by the next caller.
const maxWritebackRounds = 4

func (k *writebackKicker) start(lo, hi int64, kick func(lo, hi int64)) {
	k.mu.Lock()
	if k.lo == k.hi {
		k.lo, k.hi = lo, hi
	} else {
		k.lo, k.hi = min(k.lo, lo), max(k.hi, hi)
	}
	if k.running {
		k.mu.Unlock()
		return
	}
	k.running = true
	for range maxWritebackRounds {
		if k.lo == k.hi {
			break
		}
		lo, hi := k.lo, k.hi
		k.lo, k.hi = 0, 0
		k.mu.Unlock()
		kick(lo, hi)
		k.mu.Lock()
	}
	k.running = false
	k.mu.Unlock()
}
