// Package lazyfs is a FUSE filesystem for power-loss tests, after the lazyfs
// tool: it serves the regular files of a backing directory and keeps every
// write that has not been fsync'd in memory, so a test can cut the power —
// drop those writes, or tear them at 4 KiB granularity (a random subset of
// unsynced pages survives) — below the page cache of the process under
// test. It also injects EIO on chosen byte ranges.
//
// How writes reach it: files are opened without direct I/O, so the kernel
// page cache sits above; write(2) is sent through at once (no writeback
// cache), and pages dirtied through a shared mmap arrive as WRITE requests on
// writeback, at the latest when fsync/fdatasync flushes them (the kernel
// writes dirty pages back before it sends FSYNC). An FSYNC makes the file's
// unsynced pages durable: they are written to the backing file, which is
// fsync'd. fallocate(PUNCH_HOLE) is an unsynced write of zeros.
//
// A power cut, done right, is: kill the process using the files, Unmount
// (the kernel writes back what it still held dirty — unsynced, still in
// memory here — and forgets its page cache), PowerCut, Mount again. What a
// new process reads then is exactly what had been fsync'd (plus, torn, a
// random subset of the rest).
//
// Only regular files at the top of the backing directory are served; files
// are neither created, removed nor resized through the mount.
package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// PageSize is the unit unsynced data is kept, dropped and torn in.
const PageSize = 4096

// Op is the kind of operation a Fault matches.
type Op uint8

const (
	OpRead Op = 1 << iota
	OpWrite
	OpSync
)

// Fault makes matching operations on File fail with EIO: reads and writes
// overlapping [Off, Off+Len) (Len 0 = the whole file), and fsync when OpSync
// is set.
type Fault struct {
	File     string
	Off, Len int64
	Ops      Op
}

// FS is the filesystem state. It survives Unmount and Mount: the unsynced
// pages stay until PowerCut or an fsync.
//
// Locks: mu guards files and faults and the mount; each file's mu guards its
// pages. Order: FS.mu, then file.mu.
type FS struct {
	backing string

	mu     sync.Mutex
	files  map[string]*file // REQUIRES mu
	faults []Fault          // REQUIRES mu
	server *fuse.Server     // REQUIRES mu
	mount  string           // REQUIRES mu
}

type file struct {
	name string
	f    *os.File
	size int64
	ino  uint64

	mu    sync.Mutex
	dirty map[int64]*[PageSize]byte // REQUIRES mu; unsynced pages by page number
	stats Stats                     // REQUIRES mu
}

// Stats counts what one file saw.
type Stats struct {
	Writes, Syncs, Reads, Punches int64
	UnsyncedPages                 int
}

// New opens every regular file in backing (read-write).
func New(backing string) (*FS, error) {
	ents, err := os.ReadDir(backing)
	if err != nil {
		return nil, err
	}
	l := &FS{backing: backing, files: map[string]*file{}}
	for i, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		f, err := os.OpenFile(filepath.Join(backing, e.Name()), os.O_RDWR, 0)
		if err != nil {
			l.Close()
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			l.Close()
			return nil, err
		}
		l.files[e.Name()] = &file{name: e.Name(), f: f, size: st.Size(), ino: uint64(i + 2), dirty: map[int64]*[PageSize]byte{}}
	}
	return l, nil
}

// Mount serves the files at dir until Unmount.
func (l *FS) Mount(dir string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.server != nil {
		return fmt.Errorf("lazyfs: already mounted at %s", l.mount)
	}
	zero := time.Duration(0)
	srv, err := fs.Mount(dir, &root{l: l}, &fs.Options{
		AttrTimeout:  &zero,
		EntryTimeout: &zero,
		MountOptions: fuse.MountOptions{FsName: "lazyfs", Name: "lazyfs", MaxWrite: 1 << 20, DisableXAttrs: true},
	})
	if err != nil {
		return fmt.Errorf("lazyfs: mount %s: %w", dir, err)
	}
	l.server, l.mount = srv, dir
	return nil
}

// Unmount unmounts (lazily if busy, after trying a clean unmount) and waits
// for the server to stop.
func (l *FS) Unmount() error {
	l.mu.Lock()
	srv, dir := l.server, l.mount
	l.server = nil
	l.mu.Unlock()
	if srv == nil {
		return nil
	}
	if err := srv.Unmount(); err != nil {
		// Busy (a process still holds a file): detach it lazily.
		if out, err2 := run("fusermount3", "-u", "-z", dir); err2 != nil {
			return fmt.Errorf("lazyfs: unmount %s: %v; lazy: %v %s", dir, err, err2, out)
		}
	}
	srv.Wait()
	return nil
}

// Close unmounts and closes the backing files; unsynced data is dropped.
func (l *FS) Close() error {
	err := l.Unmount()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.files {
		f.f.Close()
	}
	l.files = nil
	return err
}

// Inject adds a fault rule.
func (l *FS) Inject(f Fault) {
	l.mu.Lock()
	l.faults = append(l.faults, f)
	l.mu.Unlock()
}

// ClearFaults removes every fault rule.
func (l *FS) ClearFaults() {
	l.mu.Lock()
	l.faults = nil
	l.mu.Unlock()
}

func (l *FS) faulty(name string, op Op, off, n int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.faults {
		if f.File != name || f.Ops&op == 0 {
			continue
		}
		if op == OpSync || f.Len == 0 || off < f.Off+f.Len && f.Off < off+n {
			return true
		}
	}
	return false
}

// PowerCut loses every unsynced write: all of them, or — tear — a random
// subset of the unsynced pages (chosen by rng) reaches the backing file and
// the rest is lost. Call it while nothing uses the mount (see the package
// doc). It returns how many unsynced pages were lost and kept.
func (l *FS) PowerCut(rng *rand.Rand, tear bool) (lost, kept int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	names := make([]string, 0, len(l.files))
	for n := range l.files {
		names = append(names, n)
	}
	sort.Strings(names) // map order must not change what a seed does
	for _, n := range names {
		f := l.files[n]
		f.mu.Lock()
		pages := make([]int64, 0, len(f.dirty))
		for pg := range f.dirty {
			pages = append(pages, pg)
		}
		sort.Slice(pages, func(i, j int) bool { return pages[i] < pages[j] })
		for _, pg := range pages {
			if tear && rng.IntN(2) == 0 {
				if _, werr := f.f.WriteAt(f.dirty[pg][:f.pageLen(pg)], pg*PageSize); werr != nil && err == nil {
					err = werr
				}
				kept++
			} else {
				lost++
			}
		}
		clear(f.dirty)
		f.mu.Unlock()
	}
	return lost, kept, err
}

// Stats reports per-file counters.
func (l *FS) Stats(name string) Stats {
	l.mu.Lock()
	f := l.files[name]
	l.mu.Unlock()
	if f == nil {
		return Stats{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.UnsyncedPages = len(f.dirty)
	return s
}

func (l *FS) file(name string) *file {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.files[name]
}

// pageLen is how many bytes of page pg lie inside the file.
func (f *file) pageLen(pg int64) int {
	return int(min(PageSize, f.size-pg*PageSize))
}

// page returns the unsynced copy of page pg, making one from the backing
// file. REQUIRES f.mu.
func (f *file) page(pg int64) (*[PageSize]byte, error) {
	if p := f.dirty[pg]; p != nil {
		return p, nil
	}
	p := new([PageSize]byte)
	if _, err := f.f.ReadAt(p[:f.pageLen(pg)], pg*PageSize); err != nil {
		return nil, err
	}
	f.dirty[pg] = p
	return p, nil
}

func (f *file) read(dest []byte, off int64) (int, error) {
	if off >= f.size {
		return 0, nil
	}
	dest = dest[:min(int64(len(dest)), f.size-off)]
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats.Reads++
	if _, err := f.f.ReadAt(dest, off); err != nil {
		return 0, err
	}
	// Overlay the unsynced pages.
	for pg := off / PageSize; pg*PageSize < off+int64(len(dest)); pg++ {
		if p := f.dirty[pg]; p != nil {
			start := max(pg*PageSize, off)
			end := min(pg*PageSize+PageSize, off+int64(len(dest)))
			copy(dest[start-off:end-off], p[start-pg*PageSize:end-pg*PageSize])
		}
	}
	return len(dest), nil
}

// write keeps data as unsynced pages; zero writes zeros over n bytes.
func (f *file) write(data []byte, off int64, n int64) error {
	if off < 0 || off+n > f.size {
		return syscall.EFBIG // the mount never grows a file
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats.Writes++
	for pos := off; pos < off+n; {
		pg := pos / PageSize
		in := pos - pg*PageSize
		c := min(PageSize-in, off+n-pos)
		if data == nil && c == PageSize && f.dirty[pg] == nil { // a whole page of zeros: nothing to read
			f.dirty[pg] = new([PageSize]byte)
			pos += c
			continue
		}
		p, err := f.page(pg)
		if err != nil {
			return err
		}
		if data != nil {
			copy(p[in:in+c], data[pos-off:])
		} else {
			clear(p[in : in+c])
		}
		pos += c
	}
	return nil
}

// sync writes the unsynced pages to the backing file and fsyncs it.
func (f *file) sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats.Syncs++
	// Whole pages of zeros (a punched drive's data area: gigabytes) become
	// holes in the backing file, in runs, instead of written zeros.
	var zeros []int64
	for pg, p := range f.dirty {
		if f.pageLen(pg) == PageSize && *p == [PageSize]byte{} {
			zeros = append(zeros, pg)
			continue
		}
		if _, err := f.f.WriteAt(p[:f.pageLen(pg)], pg*PageSize); err != nil {
			return err
		}
	}
	slices.Sort(zeros)
	for i := 0; i < len(zeros); {
		j := i + 1
		for j < len(zeros) && zeros[j] == zeros[j-1]+1 {
			j++
		}
		if err := f.zeroRun(zeros[i]*PageSize, int64(j-i)*PageSize); err != nil {
			return err
		}
		i = j
	}
	if err := f.f.Sync(); err != nil {
		return err
	}
	clear(f.dirty)
	return nil
}

// zeroRun makes [off, off+n) of the backing file read as zeros: a hole
// where the file system can punch one, else written zeros.
func (f *file) zeroRun(off, n int64) error {
	if unix.Fallocate(int(f.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n) == nil {
		return nil
	}
	zeros := make([]byte, min(n, 1<<20))
	for at := off; at < off+n; at += int64(len(zeros)) {
		if _, err := f.f.WriteAt(zeros[:min(int64(len(zeros)), off+n-at)], at); err != nil {
			return err
		}
	}
	return nil
}

// root is the mount's only directory.
type root struct {
	fs.Inode
	l *FS
}

var _ = (fs.NodeLookuper)((*root)(nil))
var _ = (fs.NodeReaddirer)((*root)(nil))

func (r *root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	f := r.l.file(name)
	if f == nil {
		return nil, syscall.ENOENT
	}
	n := &node{l: r.l, f: f}
	n.fill(&out.Attr)
	return r.NewInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: f.ino}), 0
}

func (r *root) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	var ents []fuse.DirEntry
	for name, f := range r.l.files {
		ents = append(ents, fuse.DirEntry{Name: name, Mode: syscall.S_IFREG, Ino: f.ino})
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name < ents[j].Name })
	return fs.NewListDirStream(ents), 0
}

// node is one served file. It keeps no per-open state: the file handle is nil
// and every operation goes to the node.
type node struct {
	fs.Inode
	l *FS
	f *file
}

var (
	_ = (fs.NodeOpener)((*node)(nil))
	_ = (fs.NodeGetattrer)((*node)(nil))
	_ = (fs.NodeSetattrer)((*node)(nil))
	_ = (fs.NodeReader)((*node)(nil))
	_ = (fs.NodeWriter)((*node)(nil))
	_ = (fs.NodeFsyncer)((*node)(nil))
	_ = (fs.NodeFlusher)((*node)(nil))
	_ = (fs.NodeAllocater)((*node)(nil))
)

func (n *node) fill(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o600
	a.Size = uint64(n.f.size)
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = PageSize
	a.Nlink = 1
	a.Ino = n.f.ino
}

// Open keeps the page cache (no FOPEN_DIRECT_IO): shared mmap needs it.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, 0
}

func (n *node) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(&out.Attr)
	return 0
}

// Setattr accepts what does not change the file (mode, times, same size).
func (n *node) Setattr(ctx context.Context, _ fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != n.f.size {
		return syscall.EPERM
	}
	n.fill(&out.Attr)
	return 0
}

func (n *node) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if n.l.faulty(n.f.name, OpRead, off, int64(len(dest))) {
		return nil, syscall.EIO
	}
	c, err := n.f.read(dest, off)
	if err != nil {
		return nil, errno(err)
	}
	return fuse.ReadResultData(dest[:c]), 0
}

func (n *node) Write(ctx context.Context, _ fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if n.l.faulty(n.f.name, OpWrite, off, int64(len(data))) {
		return 0, syscall.EIO
	}
	if err := n.f.write(data, off, int64(len(data))); err != nil {
		return 0, errno(err)
	}
	return uint32(len(data)), 0
}

func (n *node) Fsync(ctx context.Context, _ fs.FileHandle, flags uint32) syscall.Errno {
	if n.l.faulty(n.f.name, OpSync, 0, 0) {
		return syscall.EIO
	}
	return errno(n.f.sync())
}

// Flush (close(2)) does not make anything durable, as on a real disk.
func (n *node) Flush(ctx context.Context, _ fs.FileHandle) syscall.Errno { return 0 }

// Allocate supports punching holes (an unsynced write of zeros) and plain
// allocation inside the file (nothing to do).
func (n *node) Allocate(ctx context.Context, _ fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	const punch = 0x02 // FALLOC_FL_PUNCH_HOLE
	if mode&punch == 0 {
		if int64(off+size) > n.f.size {
			return syscall.EFBIG
		}
		return 0
	}
	if n.l.faulty(n.f.name, OpWrite, int64(off), int64(size)) {
		return syscall.EIO
	}
	end := min(int64(off+size), n.f.size)
	n.f.mu.Lock()
	n.f.stats.Punches++
	n.f.mu.Unlock()
	return errno(n.f.write(nil, int64(off), end-int64(off)))
}

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}
