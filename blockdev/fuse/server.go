package fuse

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofuse "github.com/hanwen/go-fuse/v2/fuse"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

// Volume is what a file serves: engine.Volume satisfies it.
type Volume interface {
	Size() int64
	ReadAt(p []byte, off int64) error
	WriteAt(p []byte, off int64, fua bool) error
	Flush() error
	Trim(off, n int64) error
	WriteZeroes(off, n int64, noHole bool) error
}

// Errors of the package.
var (
	ErrExists   = errors.New("fuse: a file of that name is already exported")
	ErrNotFound = errors.New("fuse: no such exported file")
	ErrBusy     = errors.New("fuse: file is still open")
	ErrFull     = errors.New("fuse: too many exported files")
)

// Limits.
const (
	// MaxFiles bounds the file table (and so the volumes one node can have
	// attached through FUSE at once).
	MaxFiles = 4096
	// DefaultMaxWrite is the largest READ/WRITE the kernel is asked to send:
	// 1 MiB, FUSE_MAX_MAX_PAGES on Linux ≥ 4.20.
	DefaultMaxWrite = 1 << 20
	// DefaultMaxBackground bounds the kernel's asynchronous requests (async
	// direct I/O from the loop device counts as background). The kernel's
	// default, 12, would cap a loop device's queue depth at 12.
	DefaultMaxBackground = 256

	rootIno   = 1 // FUSE_ROOT_ID
	firstIno  = 2 // file slot i has inode firstIno+i
	blockSize = 4096
	attrTTL   = time.Second
)

// Config tunes a mount. Zero values take the defaults.
type Config struct {
	MaxWrite      int  // bytes per READ/WRITE request (≤ 1 MiB)
	MaxBackground int  // in-flight asynchronous requests
	PageCache     bool // serve files through the page cache instead of FOPEN_DIRECT_IO
	Logger        *slog.Logger
	Debug         bool // go-fuse request tracing
}

// file is one exported volume.
type file struct {
	name string
	ino  uint64
	gen  uint64
	vol  Volume
	open atomic.Int32 // open handles
}

// Server is one FUSE mount exporting volumes as files.
type Server struct {
	gofuse.RawFileSystem // ENOSYS for everything not below

	dir     string
	cfg     Config
	log     *slog.Logger
	srv     *gofuse.Server
	mounted time.Time

	// slots is the file table, indexed by inode-firstIno. The data path
	// reads it without locks; writers hold mu.
	slots [MaxFiles]atomic.Pointer[file]

	mu     sync.Mutex       // protects byName, gens, and writes to slots
	byName map[string]*file // REQUIRES: mu
	gens   [MaxFiles]uint64 // generation per slot, bumped on reuse; REQUIRES: mu

	rrs sync.Pool // *readResult
}

// Mount mounts an empty export directory on dir (which must exist) and
// serves it until Unmount.
func Mount(dir string, cfg Config) (*Server, error) {
	if cfg.MaxWrite <= 0 {
		cfg.MaxWrite = DefaultMaxWrite
	}
	cfg.MaxWrite = min(cfg.MaxWrite, DefaultMaxWrite)
	if cfg.MaxBackground <= 0 {
		cfg.MaxBackground = DefaultMaxBackground
	}
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		RawFileSystem: gofuse.NewDefaultRawFileSystem(),
		dir:           dir,
		cfg:           cfg,
		log:           lg.With("component", "fuse"),
		mounted:       time.Now(),
		byName:        map[string]*file{},
	}
	s.rrs.New = func() any { return &readResult{pool: &s.rrs} }
	opts := &gofuse.MountOptions{
		FsName:        "cairn",
		Name:          "cairn",
		MaxWrite:      cfg.MaxWrite,
		MaxReadAhead:  cfg.MaxWrite,
		MaxBackground: cfg.MaxBackground,
		// Only root opens the files: the kernel checks the 0600 mode.
		Options: []string{"default_permissions"},
		// Splice only pays for fd-backed results; ours are memory.
		DisableSplice:     true,
		DisableXAttrs:     true,
		DirectMount:       true,
		ExtraCapabilities: gofuse.CAP_ASYNC_DIO,
		Debug:             cfg.Debug,
		Logger:            log.New(slogWriter{s.log}, "", 0),
	}
	srv, err := gofuse.NewServer(s, dir, opts)
	if err != nil {
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	// go-fuse's direct mount opens /dev/fuse without O_CLOEXEC, so every
	// command the daemon runs (losetup, blkid, mount, mkfs) would inherit
	// the connection. One still running when the daemon is killed keeps
	// the dead connection open: its own read of a loop device on this
	// mount then waits forever, and every losetup on the host with it.
	// (The Attacher serialises the commands it runs with the mount, so
	// none can fork in between.)
	if err := closeOnExecFUSE(); err != nil {
		srv.Unmount()
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	s.srv = srv
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		srv.Unmount()
		return nil, fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	return s, nil
}

// closeOnExecFUSE marks every /dev/fuse descriptor of the process
// close-on-exec.
func closeOnExecFUSE() error {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range fds {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}

// Dir is the mount point.
func (s *Server) Dir() string { return s.dir }

// Unmount unmounts the filesystem. It fails (EBUSY) while a file is open,
// e.g. by a loop device.
func (s *Server) Unmount() error {
	if err := s.srv.Unmount(); err != nil {
		return fmt.Errorf("fuse: unmount %s: %w", s.dir, err)
	}
	s.srv.Wait()
	return nil
}

// Add exports v as the file name and returns its path.
func (s *Server) Add(name string, v Volume) (string, error) {
	if name == "" || name == "." || name == ".." || containsSlash(name) {
		return "", fmt.Errorf("fuse: bad file name %q", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byName[name]; ok {
		return "", fmt.Errorf("%w: %s", ErrExists, name)
	}
	for i := range s.slots {
		if s.slots[i].Load() != nil {
			continue
		}
		s.gens[i]++
		f := &file{name: name, ino: uint64(firstIno + i), gen: s.gens[i], vol: v}
		s.byName[name] = f
		s.slots[i].Store(f)
		return s.dir + "/" + name, nil
	}
	return "", fmt.Errorf("%w (%d)", ErrFull, MaxFiles)
}

// Remove stops exporting name. It waits, until ctx ends, for the file's
// open handles to be closed (a loop device releases its backing file
// asynchronously after it is detached) and fails with ErrBusy if they are
// not; the file is exported as before in that case.
func (s *Server) Remove(ctx context.Context, name string) error {
	s.mu.Lock()
	f, ok := s.byName[name]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	for f.open.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %s (%d handles)", ErrBusy, name, f.open.Load())
		case <-time.After(5 * time.Millisecond):
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.open.Load() > 0 { // reopened meanwhile
		return fmt.Errorf("%w: %s", ErrBusy, name)
	}
	delete(s.byName, name)
	s.slots[f.ino-firstIno].Store(nil)
	// Tell the kernel the name is gone now, rather than after attrTTL.
	s.srv.EntryNotify(rootIno, name)
	return nil
}

// Names lists the exported files.
func (s *Server) Names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func containsSlash(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' || s[i] == 0 {
			return true
		}
	}
	return false
}

// fileOf returns the live file of an inode, or nil.
func (s *Server) fileOf(ino uint64) *file {
	i := ino - firstIno
	if ino < firstIno || i >= MaxFiles {
		return nil
	}
	return s.slots[i].Load()
}

func (s *Server) String() string { return "cairn" }

func (s *Server) dirAttr(a *gofuse.Attr) {
	*a = gofuse.Attr{Ino: rootIno, Mode: syscall.S_IFDIR | 0o700, Nlink: 2, Blksize: blockSize}
	a.SetTimes(&s.mounted, &s.mounted, &s.mounted)
}

func (s *Server) fileAttr(f *file, a *gofuse.Attr) {
	size := uint64(f.vol.Size())
	*a = gofuse.Attr{
		Ino: f.ino, Size: size, Blocks: size / 512,
		Mode: syscall.S_IFREG | 0o600, Nlink: 1, Blksize: blockSize,
	}
	a.SetTimes(&s.mounted, &s.mounted, &s.mounted)
}

func (s *Server) Lookup(_ <-chan struct{}, h *gofuse.InHeader, name string, out *gofuse.EntryOut) gofuse.Status {
	if h.NodeId != rootIno {
		return gofuse.ENOTDIR
	}
	s.mu.Lock()
	f := s.byName[name]
	s.mu.Unlock()
	if f == nil {
		return gofuse.ENOENT
	}
	s.entry(f, out)
	return gofuse.OK
}

func (s *Server) entry(f *file, out *gofuse.EntryOut) {
	out.NodeId, out.Generation = f.ino, f.gen
	out.SetEntryTimeout(attrTTL)
	out.SetAttrTimeout(attrTTL)
	s.fileAttr(f, &out.Attr)
}

func (s *Server) GetAttr(_ <-chan struct{}, in *gofuse.GetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	_, st := s.attr(in.NodeId, out)
	return st
}

// SetAttr accepts only what leaves the volume as it is: a volume is resized
// through the API, never truncated through its file.
func (s *Server) SetAttr(_ <-chan struct{}, in *gofuse.SetAttrIn, out *gofuse.AttrOut) gofuse.Status {
	f, st := s.attr(in.NodeId, out)
	if sz, ok := in.GetSize(); ok && f != nil && int64(sz) != f.vol.Size() {
		return gofuse.EPERM
	}
	return st
}

// attr fills out with the attributes of the directory or of a volume's
// file, and returns the file (nil for the directory or an unknown node).
func (s *Server) attr(node uint64, out *gofuse.AttrOut) (*file, gofuse.Status) {
	out.SetTimeout(attrTTL)
	if node == rootIno {
		s.dirAttr(&out.Attr)
		return nil, gofuse.OK
	}
	f := s.fileOf(node)
	if f == nil {
		return nil, gofuse.ENOENT
	}
	s.fileAttr(f, &out.Attr)
	return f, gofuse.OK
}

func (s *Server) Access(_ <-chan struct{}, in *gofuse.AccessIn) gofuse.Status {
	if in.NodeId != rootIno && s.fileOf(in.NodeId) == nil {
		return gofuse.ENOENT
	}
	return gofuse.OK
}

func (s *Server) Open(_ <-chan struct{}, in *gofuse.OpenIn, out *gofuse.OpenOut) gofuse.Status {
	f := s.fileOf(in.NodeId)
	if f == nil {
		return gofuse.ENOENT
	}
	if in.Flags&syscall.O_TRUNC != 0 {
		return gofuse.EPERM
	}
	f.open.Add(1)
	out.Fh = f.ino
	if !s.cfg.PageCache {
		out.OpenFlags = gofuse.FOPEN_DIRECT_IO | gofuse.FOPEN_PARALLEL_DIRECT_WRITES
	}
	return gofuse.OK
}

func (s *Server) Release(_ <-chan struct{}, in *gofuse.ReleaseIn) {
	if f := s.fileOf(in.NodeId); f != nil {
		f.open.Add(-1)
	}
}

func (s *Server) Flush(_ <-chan struct{}, _ *gofuse.FlushIn) gofuse.Status { return gofuse.OK }

// Fsync is the durability point: the loop device turns REQ_PREFLUSH (and
// the flush half of a FUA write) into an fsync of its backing file.
func (s *Server) Fsync(_ <-chan struct{}, in *gofuse.FsyncIn) gofuse.Status {
	f := s.fileOf(in.NodeId)
	if f == nil {
		return gofuse.EBADF
	}
	return errno(f.vol.Flush())
}

func (s *Server) Read(_ <-chan struct{}, in *gofuse.ReadIn, buf []byte) (gofuse.ReadResult, gofuse.Status) {
	f := s.fileOf(in.NodeId)
	if f == nil {
		return nil, gofuse.EBADF
	}
	size := f.vol.Size()
	off := int64(in.Offset)
	n := int64(in.Size)
	if off >= size {
		n = 0
	} else if off+n > size {
		n = size - off
	}
	if n > int64(len(buf)) {
		n = int64(len(buf))
	}
	p := buf[:n]
	if n > 0 {
		if err := f.vol.ReadAt(p, off); err != nil {
			return nil, errno(err)
		}
	}
	rr := s.rrs.Get().(*readResult)
	rr.data = p
	return rr, gofuse.OK
}

func (s *Server) Write(cancel <-chan struct{}, in *gofuse.WriteIn, data []byte) (uint32, gofuse.Status) {
	f := s.fileOf(in.NodeId)
	if f == nil {
		return 0, gofuse.EBADF
	}
	off := int64(in.Offset)
	if off < 0 || off+int64(len(data)) > f.vol.Size() {
		return 0, gofuse.Status(syscall.EFBIG) // the file cannot grow
	}
	// An O_SYNC / O_DSYNC handle gets FUA writes: durable when acknowledged.
	fua := in.Flags&syscall.O_DSYNC != 0
	if err := f.vol.WriteAt(data, off, fua); err != nil {
		return 0, errno(err)
	}
	return uint32(len(data)), gofuse.OK
}

// Writev takes the payload as the kernel delivered it; one segment (the
// common case) goes to the engine as is, several are gathered into a pooled
// buffer so the engine sees one write.
func (s *Server) Writev(cancel <-chan struct{}, in *gofuse.WriteIn, data [][]byte) (uint32, gofuse.Status) {
	if len(data) == 1 {
		return s.Write(cancel, in, data[0])
	}
	total := 0
	for _, d := range data {
		total += len(d)
	}
	if total > s.cfg.MaxWrite {
		return 0, gofuse.EINVAL
	}
	b := drive.GetBuffer(total)
	defer drive.PutBuffer(b)
	n := 0
	for _, d := range data {
		n += copy(b.B[n:], d)
	}
	return s.Write(cancel, in, b.B)
}

const (
	fallocKeepSize  = 0x01 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x02 // FALLOC_FL_PUNCH_HOLE
	fallocZeroRange = 0x10 // FALLOC_FL_ZERO_RANGE
)

// Fallocate carries the loop device's discard (PUNCH_HOLE) and write-zeroes
// (ZERO_RANGE with REQ_NOUNMAP, PUNCH_HOLE without) to the engine.
func (s *Server) Fallocate(_ <-chan struct{}, in *gofuse.FallocateIn) gofuse.Status {
	f := s.fileOf(in.NodeId)
	if f == nil {
		return gofuse.EBADF
	}
	off, n := int64(in.Offset), int64(in.Length)
	size := f.vol.Size()
	if off < 0 || n <= 0 || off >= size {
		return gofuse.EINVAL
	}
	n = min(n, size-off) // KEEP_SIZE: a range past the end is clipped
	switch mode := in.Mode &^ fallocKeepSize; mode {
	case fallocPunchHole:
		return errno(f.vol.Trim(off, n))
	case fallocZeroRange:
		return errno(f.vol.WriteZeroes(off, n, true))
	default:
		return gofuse.Status(syscall.EOPNOTSUPP)
	}
}

func (s *Server) OpenDir(_ <-chan struct{}, in *gofuse.OpenIn, out *gofuse.OpenOut) gofuse.Status {
	if in.NodeId != rootIno {
		return gofuse.ENOTDIR
	}
	return gofuse.OK
}

func (s *Server) ReleaseDir(*gofuse.ReleaseIn) {}

func (s *Server) ReadDir(_ <-chan struct{}, in *gofuse.ReadIn, out *gofuse.DirEntryList) gofuse.Status {
	return s.readDir(in, out, false)
}

func (s *Server) ReadDirPlus(_ <-chan struct{}, in *gofuse.ReadIn, out *gofuse.DirEntryList) gofuse.Status {
	return s.readDir(in, out, true)
}

func (s *Server) readDir(in *gofuse.ReadIn, out *gofuse.DirEntryList, plus bool) gofuse.Status {
	if in.NodeId != rootIno {
		return gofuse.ENOTDIR
	}
	s.mu.Lock()
	files := make([]*file, 0, len(s.byName))
	for _, f := range s.byName {
		files = append(files, f)
	}
	s.mu.Unlock()
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	for i := int(in.Offset); i < len(files); i++ {
		f := files[i]
		e := gofuse.DirEntry{Name: f.name, Ino: f.ino, Mode: syscall.S_IFREG, Off: uint64(i + 1)}
		if !plus {
			if !out.AddDirEntry(e) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			break
		}
		s.entry(f, eo)
	}
	return gofuse.OK
}

func (s *Server) FsyncDir(_ <-chan struct{}, _ *gofuse.FsyncIn) gofuse.Status { return gofuse.OK }

func (s *Server) StatFs(_ <-chan struct{}, _ *gofuse.InHeader, out *gofuse.StatfsOut) gofuse.Status {
	*out = gofuse.StatfsOut{}
	out.Bsize, out.Frsize, out.NameLen = blockSize, blockSize, 255
	s.mu.Lock()
	for _, f := range s.byName {
		out.Blocks += uint64(f.vol.Size()) / blockSize
	}
	out.Files = uint64(len(s.byName))
	s.mu.Unlock()
	return gofuse.OK
}

// readResult is a pooled gofuse.ReadResult over the request's own buffer.
type readResult struct {
	data []byte
	pool *sync.Pool
}

func (r *readResult) Size() int { return len(r.data) }

func (r *readResult) Bytes([]byte) ([]byte, gofuse.Status) { return r.data, gofuse.OK }

func (r *readResult) Done() {
	r.data = nil
	r.pool.Put(r)
}

// errno is the status the kernel passes on for an engine error (engine.Errno,
// the map NBD uses too).
func errno(err error) gofuse.Status { return gofuse.Status(engine.Errno(err)) }

// slogWriter lets go-fuse's log.Logger write to our slog.Logger.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	msg := string(p)
	for len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	w.l.Warn(msg)
	return len(p), nil
}
