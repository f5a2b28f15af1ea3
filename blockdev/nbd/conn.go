package nbd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cairn-storage/cairn/engine"
)

const (
	readBufferSize  = 128 << 10
	writeBufferSize = 128 << 10
	// maxInFlightBytes bounds the payload buffers one connection holds
	// (write payloads read ahead, read data not yet sent).
	maxInFlightBytes = 128 << 20
	// inlineMaxLength is the largest READ or WRITE the reader runs itself
	// when the connection is otherwise idle (see canInline). Larger ones go
	// to a worker, where the hand-off is small next to the copy. A WRITE
	// payload this size must fit in the read buffer (runInline peeks it).
	inlineMaxLength = readBufferSize
)

// errDisconnect is the reader's way of saying the client sent NBD_CMD_DISC.
var errDisconnect = errors.New("nbd: client disconnected")

// conn is one client connection. Handshake fields are used only by the
// goroutine running serve; transmission fields are written before the
// workers and the writer start and only read afterwards. See the package doc
// for the goroutines and how a request moves between them.
type conn struct {
	srv *Server
	nc  net.Conn
	log *slog.Logger
	br  *bufio.Reader // owned by the reader (serve's goroutine)
	bw  *bufio.Writer // owned by serve during the handshake, then by the writer

	// mu protects shutdown and the read deadline, so that beginShutdown's
	// deadline cannot be undone by the reader clearing the handshake one.
	mu       sync.Mutex
	shutdown bool

	// Handshake state.
	optBuf       []byte
	noZeroes     bool
	structured   bool
	metaSelected bool   // base:allocation selected by the last SET_META_CONTEXT
	metaExport   string // the export name that SET_META_CONTEXT named

	// Transmission state, fixed once transmission begins.
	exp         Export
	release     func()
	size        uint64
	tflags      uint16
	readOnly    bool
	blockStatus bool

	wb   DeferredWriteback // the export, when it is one; nil otherwise
	sf   SharedFlusher     // the export, when it is one; nil otherwise
	free chan *request     // slots not in flight; its capacity is MaxInFlight
	work chan *request     // reader → workers
	// cachedWrites: reader → the cached-write workers, for plain writes to
	// a CachedWriter export; nil when the export is not one.
	cachedWrites chan *request
	// cachedSlowUntil (UnixNano): until then the reader sends plain writes
	// to the full pool too. A cached-write worker sets it when a write
	// waited (see cachedWritesBackoff).
	cachedSlowUntil atomic.Int64
	done            chan *request // workers → writer
	budget          byteBudget    // payload bytes in flight

	// flushLead is the connection's shared FLUSH in flight (queued or
	// running), the one later flushes may join; nil when none.
	flushMu   sync.Mutex
	flushLead *request

	// pending counts requests queued to the workers or the writer whose
	// reply is not yet flushed to the socket. The reader adds, the writer
	// subtracts after a flush. When the reader sees 0 the writer has
	// nothing to do and is not touching bw, whdr or broken, so the reader
	// may use them itself until it queues the next request (the atomic
	// gives the happens-before edge).
	pending atomic.Int64
	// inline is the reader's own request slot for requests it runs itself,
	// ibuf the buffer it encodes their replies in (it grows to the largest
	// inline reply, at most inlineMaxLength plus chunk headers), and rc the
	// socket's descriptor it sends them on (nil: the connection has none,
	// nothing runs inline).
	inline     request
	lastInline bool   // the reader ran the last request itself (canInline)
	lastTyp    uint16 // the last request's command
	ibuf       bytes.Buffer
	rc         syscall.RawConn
	sendFn     func(fd uintptr) bool // c.sendNow
	pollFn     func(fd uintptr) bool // c.pollNow
	pollFds    [1]unix.PollFd        // pollNow's argument
	sendBuf    []byte                // sendNow's input and what it left
	sendErr    error                 // sendNow's error
	broken     bool                  // writer (or the inline reader): the socket failed, replies are dropped
	// whdr is the writer's (or the inline reader's) scratch space for
	// reply headers (a local array would escape through the replyWriter
	// and cost an allocation per reply).
	whdr [StructuredReplyHeaderLen + 8]byte
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv: s,
		nc:  nc,
		log: s.log.With("remote", remoteName(nc)),
		br:  bufio.NewReaderSize(nc, readBufferSize),
		bw:  bufio.NewWriterSize(nc, writeBufferSize),
	}
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.rc, c.sendFn, c.pollFn = rc, c.sendNow, c.pollNow
		}
	}
	return c
}

func remoteName(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" && a.String() != "@" {
		return a.String()
	}
	return "unix:" + nc.LocalAddr().String()
}

func (c *conn) shuttingDown() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shutdown
}

// beginShutdown makes the reader stop at the next request boundary (or
// fail the negotiation); in-flight requests still complete and are replied to.
func (c *conn) beginShutdown() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.shutdown = true
	c.nc.SetReadDeadline(time.Now())
}

// setReadDeadline sets the read deadline unless shutdown began.
func (c *conn) setReadDeadline(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.shutdown {
		c.nc.SetReadDeadline(t)
	}
}

// send writes b and flushes. Handshake only.
func (c *conn) send(b []byte) error {
	c.bw.Write(b)
	return c.bw.Flush()
}

// serve runs the connection to its end. It never panics on wire input; it
// logs one line when it closes a connection for a protocol violation.
func (c *conn) serve() {
	defer c.nc.Close()
	c.setReadDeadline(time.Now().Add(c.srv.cfg.HandshakeTimeout))
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.HandshakeTimeout))
	if err := c.handshake(); err != nil {
		switch {
		case errors.Is(err, ErrAborted):
			c.log.Debug("client ended negotiation")
		case c.shuttingDown():
			c.log.Debug("negotiation cut short by shutdown", "err", err)
		default:
			c.log.Warn("closing connection during negotiation", "err", err)
		}
		if c.release != nil {
			c.release()
		}
		return
	}
	defer c.release()
	c.setReadDeadline(time.Time{})
	c.nc.SetWriteDeadline(time.Time{})
	c.optBuf = nil
	c.log.Debug("transmission", "export", c.exp.Name(), "size", c.size, "structured", c.structured)

	err := c.transmit()
	switch {
	case c.shuttingDown():
		c.log.Debug("connection closed by shutdown", "export", c.exp.Name(), "err", err)
	case err == nil, errors.Is(err, errDisconnect), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Debug("connection closed", "export", c.exp.Name())
	default:
		c.log.Warn("closing connection", "export", c.exp.Name(), "err", err)
	}
}

// transmit runs the transmission phase: it starts the workers and the
// writer, reads requests until the client leaves or breaks the protocol,
// then drains every request already read before returning.
func (c *conn) transmit() error {
	cfg := c.srv.cfg
	reqs := make([]request, cfg.MaxInFlight)
	c.free = make(chan *request, cfg.MaxInFlight)
	for i := range reqs {
		c.free <- &reqs[i]
	}
	c.work = make(chan *request, cfg.MaxInFlight)
	c.done = make(chan *request, cfg.MaxInFlight)
	c.budget.init(maxInFlightBytes)

	var workers sync.WaitGroup
	startWorkers := func(n int, queue <-chan *request, run func(*request)) {
		for range n {
			workers.Add(1)
			go func() {
				defer workers.Done()
				for r := range queue {
					run(r)
					if r.shared {
						c.finishFlush(r)
					}
					off, n, wb := r.offset, int64(r.length), r.writeback
					c.done <- r
					if wb {
						c.wb.StartWriteback(int64(off), n)
					}
				}
			}()
		}
	}
	startWorkers(cfg.Workers, c.work, c.execute)
	if cw, ok := c.exp.(CachedWriter); ok && cw.WritesCached() && !c.readOnly {
		c.cachedWrites = make(chan *request, cfg.MaxInFlight)
		startWorkers(cfg.CachedWriteWorkers, c.cachedWrites, func(r *request) {
			waits := cw.WriteWaits()
			c.execute(r)
			if cw.WriteWaits() != waits {
				c.cachedSlowUntil.Store(time.Now().Add(cachedWritesBackoff).UnixNano())
			}
		})
	}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()

	err := c.readLoop()

	close(c.work)
	if c.cachedWrites != nil {
		close(c.cachedWrites)
	}
	workers.Wait()
	close(c.done)
	<-writerDone
	if c.shuttingDown() && !c.readOnly {
		if ferr := c.exp.Flush(); ferr != nil {
			c.log.Error("flush at shutdown failed", "export", c.exp.Name(), "err", ferr)
		}
	}
	return err
}

// readLoop is the reader: it decodes requests and queues them until the
// client disconnects, the socket fails or the client breaks the protocol.
func (c *conn) readLoop() error {
	var h [RequestHeaderLen]byte
	for {
		if c.lastInline && c.lastTyp != CmdRead && c.br.Buffered() == 0 {
			c.awaitRequest()
		}
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: truncated request header", ErrProtocol)
			}
			return err
		}
		if m := be.Uint32(h[0:]); m != MagicRequest {
			return fmt.Errorf("%w: bad request magic %#x", ErrProtocol, m)
		}
		flags, typ := be.Uint16(h[4:]), be.Uint16(h[6:])
		handle, off, length := be.Uint64(h[8:]), be.Uint64(h[16:]), be.Uint32(h[24:])
		if typ == CmdDisc {
			return errDisconnect
		}
		if typ == CmdWrite && length > maxRequestLength {
			// Refuse, but keep the stream in sync by reading the payload,
			// unless it is so large the client must be hostile.
			if length > maxDiscardLength {
				return fmt.Errorf("%w: WRITE of %d bytes (limit %d)", ErrProtocol, length, maxDiscardLength)
			}
			if _, err := c.br.Discard(int(length)); err != nil {
				return fmt.Errorf("%w: truncated WRITE payload: %w", ErrProtocol, err)
			}
		}

		c.lastInline, c.lastTyp = c.canInline(typ, length), typ
		if c.lastInline {
			if err := c.runInline(handle, off, length, typ, flags); err != nil {
				return err
			}
			continue
		}

		r := <-c.free
		r.reset(handle, off, length, typ, flags)
		switch {
		case typ == CmdWrite && length > maxRequestLength:
			r.fail(ErrnoInval, "request larger than the maximum block size")
			c.pending.Add(1)
			c.done <- r
			continue
		case typ == CmdWrite:
			c.budget.acquire(int64(length))
			r.budget = int64(length)
			r.alloc(int(length))
			if _, err := io.ReadFull(c.br, r.data); err != nil {
				c.budget.release(r.budget)
				r.freeBuf()
				c.free <- r
				return fmt.Errorf("%w: truncated WRITE payload: %w", ErrProtocol, err)
			}
		case typ == CmdRead && length <= maxRequestLength:
			// The worker allocates the read buffer; reserve its bytes here
			// so the reader is the one that waits.
			c.budget.acquire(int64(length))
			r.budget = int64(length)
		}
		c.pending.Add(1) // before a joined flush can be answered
		if typ == CmdFlush && c.sf != nil && flags == 0 && c.shareFlush(r) {
			continue // answered with the flush it joined
		}
		if c.cachedWrites != nil && typ == CmdWrite && flags&CmdFlagFUA == 0 && r.errno == 0 && !c.cachedWritesSlow() {
			c.cachedWrites <- r
		} else {
			c.work <- r
		}
	}
}

// shareFlush prepares a FLUSH to a SharedFlusher export: it reads the
// export's FlushGen and, when the connection's shared flush in flight read
// the same count (nothing changed since that one arrived), chains r to it
// and reports true: r is answered with it (finishFlush). Otherwise r becomes
// the flush in flight and goes to a worker. Reader only.
func (c *conn) shareFlush(r *request) bool {
	r.shared, r.gen, r.arrived = true, c.sf.FlushGen(), time.Now()
	c.flushMu.Lock()
	defer c.flushMu.Unlock()
	if lead := c.flushLead; lead != nil && lead.gen >= r.gen {
		r.joined, lead.joined = lead.joined, r
		return true
	}
	c.flushLead = r
	return false
}

// finishFlush, once a worker ran the shared FLUSH r, ends it as the flush in
// flight and answers the flushes that joined it. Each asks the export for its
// own gen, which r's covered: that returns at once, or with the error that
// failed r's round. Worker only.
func (c *conn) finishFlush(r *request) {
	c.flushMu.Lock()
	if c.flushLead == r {
		c.flushLead = nil
	}
	j := r.joined
	r.joined = nil
	c.flushMu.Unlock()
	for j != nil {
		next := j.joined
		j.joined = nil
		j.failErr(c.sf.FlushCovering(j.gen, j.arrived))
		c.done <- j
		j = next
	}
}

// awaitInKernel bounds how long the reader's thread waits in poll(2) for
// the next request of a client that waits for each reply (awaitRequest).
const awaitInKernel = 1 // ms, poll's unit

// awaitRequest waits for the next request of a client that waits for each
// reply (the last request ran inline) in poll(2) on the socket, on the
// reader's own thread, for up to awaitInKernel: the kernel then wakes this
// thread directly when the request arrives. Reading the empty socket
// instead parks the reader in Go's netpoller, and its wake-up takes a hop
// through another thread's epoll_wait and the scheduler, twice per commit
// of a database that flushes after each write. A client that goes quiet
// past the bound gets the netpoller as before; the thread is blocked, not
// spinning, either way. Reader only.
func (c *conn) awaitRequest() {
	if c.rc == nil {
		return
	}
	c.rc.Read(c.pollFn)
}

// pollNow is awaitRequest's RawConn.Read callback, bound once (c.pollFn).
func (c *conn) pollNow(fd uintptr) bool {
	c.pollFds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN}
	_, _ = unix.Poll(c.pollFds[:], awaitInKernel) // EINTR or a timeout: the read that follows waits as before
	return true                                   // never wait in the netpoller here
}

// Even a write into the page cache sometimes waits for a commit round that
// makes newly reserved extents usable (first writes to a thin volume,
// copy-on-write after a snapshot). Four workers that all wait stop every
// write of the connection, so after a write that waited (the export's
// WriteWaits moved), plain writes use the full pool for cachedWritesBackoff.
// bench/snapshot.sh, the first 2 s of random writes after a snapshot: 0.11×
// the rate without one with the small pool alone, 0.31× with 64 workers.
var cachedWritesBackoff = 100 * time.Millisecond // a variable for tests

// cachedWritesSlow reports whether a cached write recently waited. Reader only.
func (c *conn) cachedWritesSlow() bool {
	until := c.cachedSlowUntil.Load()
	return until != 0 && time.Now().UnixNano() < until
}

// canInline reports whether the reader should run the request whose header
// it just decoded itself: a small READ or WRITE, nothing else in flight (so
// there is no reply it could overtake and the writer is idle), and no
// further request already buffered (a client that pipelines gets the
// workers). At queue depth 1 this saves two goroutine hand-offs per request:
// reader → worker → writer, each a wake-up of a parked goroutine. Reader
// only.
//
// A FLUSH runs inline only while the client is waiting for each reply (the
// request before it ran inline too): a flush holds the reader for a device
// flush, and a client that pipelines (the kernel's client with readers
// beside a committer) must not find its next requests stuck behind it. At
// queue depth 1, a database's commit, this saves two of the flush's three
// hand-offs (~55 µs of ~210 µs per commit on the disk of
// bench/RESULTS-nbd.md, "Where cairn's time goes").
func (c *conn) canInline(typ uint16, length uint32) bool {
	if c.rc == nil || c.pending.Load() != 0 {
		return false
	}
	switch typ {
	case CmdRead:
		return length <= inlineMaxLength && c.br.Buffered() == 0
	case CmdWrite:
		return length <= inlineMaxLength && c.br.Buffered() <= int(length)
	case CmdFlush:
		return c.lastInline && c.br.Buffered() == 0
	}
	return false
}

// runInline reads the payload of, executes and replies to one request on
// the reader's goroutine. REQUIRES: canInline was true for it. The reply is
// on the wire when it returns, or queued to the writer (pending > 0).
func (c *conn) runInline(handle, off uint64, length uint32, typ, flags uint16) error {
	r := &c.inline
	r.reset(handle, off, length, typ, flags)
	defer r.freeBuf()
	if typ == CmdWrite {
		// The payload is handed to the export straight from the read
		// buffer (inlineMaxLength fits in it): no copy, no pooled buffer.
		// It stays valid until the Discard below.
		p, err := c.br.Peek(int(length))
		if err != nil {
			return fmt.Errorf("%w: truncated WRITE payload: %w", ErrProtocol, err)
		}
		r.data = p
		c.execute(r)
		r.data = nil
		c.br.Discard(int(length))
	} else {
		c.execute(r)
	}
	if c.broken {
		return nil
	}
	c.ibuf.Reset()
	c.writeReply(&c.ibuf, r)
	if err := c.sendInline(c.ibuf.Bytes()); err != nil {
		c.fail(err)
	}
	if r.writeback {
		c.wb.StartWriteback(int64(off), int64(length))
	}
	return nil
}

// sendInline sends b, an encoded reply, without ever waiting for the
// socket: what does not fit in the socket's buffer now goes to the writer
// as a raw reply, and the reader goes back to reading requests. (A client
// that sends a batch of requests before it reads any reply would otherwise
// deadlock with a reader stuck in write.) REQUIRES: pending == 0, so the
// writer's buffer is empty and the rest is the next thing on the wire.
func (c *conn) sendInline(b []byte) error {
	c.sendBuf, c.sendErr = b, nil
	err := c.rc.Write(c.sendFn)
	b, werr := c.sendBuf, c.sendErr
	c.sendBuf = nil
	if err != nil {
		return err
	}
	if werr != nil && werr != unix.EAGAIN {
		return os.NewSyscallError("write", werr)
	}
	if len(b) == 0 {
		return nil
	}
	r := <-c.free // all slots are free: pending == 0
	r.reset(0, 0, 0, 0, 0)
	r.raw = true
	r.alloc(len(b))
	copy(r.data, b)
	c.pending.Add(1)
	c.done <- r
	return nil
}

// sendNow writes as much of c.sendBuf as the socket takes now, leaving the
// rest in c.sendBuf and the error that stopped it in c.sendErr. It is the
// RawConn.Write callback of sendInline, bound once (as c.sendFn) so that a
// send allocates nothing.
func (c *conn) sendNow(fd uintptr) bool {
	for len(c.sendBuf) > 0 {
		n, err := unix.Write(int(fd), c.sendBuf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			c.sendErr = err
			break
		}
		c.sendBuf = c.sendBuf[n:]
	}
	return true // never wait for the socket
}

// writeLoop is the writer: it sends replies in completion order, batching
// them in c.bw and flushing when no more are queued. When none is queued
// but workers hold requests, it first yields its P once (runtime.Gosched):
// workers that are runnable finish and their replies share the flush (one
// write(2) for several replies). It never waits for a worker that is not
// runnable. Not after a plain write to an export whose writes go to the
// page cache: those workers are rarely runnable at that moment, and the
// yield cost that row more than the batching gave (BENCHMARKS.md).
func (c *conn) writeLoop() {
	var unflushed int64 // replies in bw, still counted in pending
	for r := range c.done {
		if !c.broken {
			if err := c.writeReply(c.bw, r); err != nil {
				c.fail(err)
			}
		}
		cachedWrite := r.typ == CmdWrite && c.cachedWrites != nil
		c.budget.release(r.budget)
		r.freeBuf()
		c.free <- r
		unflushed++
		if len(c.done) == 0 && !cachedWrite && c.pending.Load() > unflushed {
			runtime.Gosched()
		}
		if len(c.done) == 0 {
			if !c.broken {
				if err := c.bw.Flush(); err != nil {
					c.fail(err)
				}
			}
			c.pending.Add(-unflushed)
			unflushed = 0
		}
	}
	if !c.broken {
		if err := c.bw.Flush(); err != nil {
			c.fail(err)
		}
	}
}

// fail marks the socket broken and closes it, which also stops the reader.
// Writer only.
func (c *conn) fail(err error) {
	c.broken = true
	c.log.Debug("send failed", "err", err)
	c.nc.Close()
}

// execute runs r against the export, leaving the outcome in r. Worker only.
func (c *conn) execute(r *request) {
	if r.errno != 0 {
		return
	}
	allowed := CmdFlagFUA
	switch r.typ {
	case CmdRead:
		if c.structured {
			allowed |= CmdFlagDF
		}
	case CmdWriteZeroes:
		allowed |= CmdFlagNoHole | CmdFlagFastZero
	case CmdBlockStatus:
		allowed |= CmdFlagReqOne
	case CmdWrite, CmdFlush, CmdTrim, CmdCache:
	default:
		r.fail(ErrnoInval, "unknown command")
		return
	}
	if r.flags&^allowed != 0 {
		r.fail(ErrnoInval, "command flags not valid for this command")
		return
	}
	if c.readOnly && (r.typ == CmdWrite || r.typ == CmdTrim || r.typ == CmdWriteZeroes) {
		r.fail(ErrnoPerm, "export is read-only")
		return
	}
	off, n := r.offset, uint64(r.length)
	beyond := off > c.size || n > c.size-off
	fua := r.flags&CmdFlagFUA != 0
	exp := c.exp

	switch r.typ {
	case CmdRead:
		switch {
		case n > maxRequestLength:
			r.fail(ErrnoInval, "request larger than the maximum block size")
		case beyond:
			r.fail(ErrnoInval, "read beyond the end of the export")
		case n > 0:
			c.read(r)
		}
	case CmdWrite:
		switch {
		case beyond:
			r.fail(ErrnoNoSpc, "write beyond the end of the export")
		case n > 0 && c.wb != nil && !fua:
			r.failErr(c.wb.WriteAtDeferWriteback(r.data, int64(off), false))
			r.writeback = r.errno == 0
		case n > 0:
			r.failErr(exp.WriteAt(r.data, int64(off), fua))
		}
	case CmdFlush:
		if r.shared {
			r.failErr(c.sf.FlushCovering(r.gen, r.arrived))
		} else {
			r.failErr(exp.Flush())
		}
	case CmdTrim:
		switch {
		case beyond:
			r.fail(ErrnoInval, "trim beyond the end of the export")
		case n > 0:
			r.failErr(exp.Trim(int64(off), int64(n)))
			if r.errno == 0 && fua {
				r.failErr(exp.Flush())
			}
		}
	case CmdCache:
		// The engine keeps no cache to warm; the command succeeds without
		// effect, which the spec allows.
		switch {
		case n > maxRequestLength:
			r.fail(ErrnoInval, "request larger than the maximum block size")
		case beyond:
			r.fail(ErrnoInval, "cache beyond the end of the export")
		}
	case CmdWriteZeroes:
		noHole := r.flags&CmdFlagNoHole != 0
		switch {
		case beyond:
			r.fail(ErrnoNoSpc, "write zeroes beyond the end of the export")
		case noHole && r.flags&CmdFlagFastZero != 0:
			// Zeroing without punching a hole writes every block: no
			// faster than a WRITE. Zeroing with holes allowed is a trim
			// of the mapping, which is fast.
			r.fail(ErrnoNotSup, "fast zero is not possible with NO_HOLE")
		case n > 0:
			r.failErr(exp.WriteZeroes(int64(off), int64(n), noHole))
			if r.errno == 0 && fua {
				r.failErr(exp.Flush())
			}
		}
	case CmdBlockStatus:
		switch {
		case !c.blockStatus:
			r.fail(ErrnoInval, "no metadata context selected")
		case beyond:
			r.fail(ErrnoInval, "block status beyond the end of the export")
		case n == 0:
			r.fail(ErrnoInval, "block status of zero bytes")
		default:
			c.blockStatusOf(r)
		}
	}
}

// read fills r with the data of a READ. For large structured reads it asks
// the export for holes first and plans OFFSET_HOLE chunks for them.
// The data is complete in memory before anything is sent, so a read error
// is never preceded by a success header.
func (c *conn) read(r *request) {
	n := int(r.length)
	r.alloc(n)
	off := int64(r.offset)
	if c.structured && n >= holeReadMin && r.flags&CmdFlagDF == 0 {
		if ext, err := c.exp.Extents(off, int64(n)); err == nil && r.planChunks(ext) {
			for i := range r.nchunks {
				ch := &r.chunks[i]
				if ch.hole {
					continue
				}
				if err := c.exp.ReadAt(r.data[ch.start:ch.start+int(ch.n)], int64(ch.off)); err != nil {
					r.failErr(err)
					r.errOffset = int64(ch.off)
					return
				}
			}
			return
		}
		r.nchunks = 0
	}
	r.failErr(c.exp.ReadAt(r.data, off))
}

// blockStatusOf builds the BLOCK_STATUS payload for r: the context id and
// one descriptor per run of data or hole, clipped to the request, at most
// maxStatusExtents of them (one with REQ_ONE).
func (c *conn) blockStatusOf(r *request) {
	ext, err := c.exp.Extents(int64(r.offset), int64(r.length))
	if err != nil {
		r.failErr(err)
		return
	}
	limit := maxStatusExtents
	if r.flags&CmdFlagReqOne != 0 {
		limit = 1
	}
	off, end := r.offset, r.offset+uint64(r.length)
	n := encodeRuns(nil, ext, off, end, limit)
	if n == 0 {
		// Nothing usable came back: status 0 ("allocated, or unknown") is
		// always a correct answer.
		r.alloc(12)
		be.PutUint32(r.data[0:], metaContextID)
		be.PutUint32(r.data[4:], r.length)
		be.PutUint32(r.data[8:], 0)
		return
	}
	r.alloc(4 + 8*n)
	be.PutUint32(r.data[0:], metaContextID)
	encodeRuns(r.data[4:], ext, off, end, limit)
}

// encodeRuns merges ext into runs of data and hole over [off, end) and, when
// dst is not nil, encodes them as block status descriptors (length 4, flags
// 4). It stops at limit runs, at end, or at an extent that does not continue
// where the previous one ended (the engine owes us contiguous extents from
// off; if it breaks that, we report the prefix we trust). It returns the
// number of runs.
func encodeRuns(dst []byte, ext []engine.Extent, off, end uint64, limit int) int {
	n, pos, prevHole := 0, off, false
	for _, e := range ext {
		if pos >= end || e.Offset < 0 || e.Length <= 0 || uint64(e.Offset) != pos {
			break
		}
		t := min(uint64(e.Offset)+uint64(e.Length), end)
		hole := e.Kind == engine.ExtentHole
		if n > 0 && hole == prevHole {
			if dst != nil {
				d := dst[8*(n-1):]
				be.PutUint32(d, be.Uint32(d)+uint32(t-pos))
			}
		} else {
			if n == limit {
				break
			}
			if dst != nil {
				d := dst[8*n:]
				be.PutUint32(d, uint32(t-pos))
				var flags uint32
				if hole {
					flags = StateHole | StateZero
				}
				be.PutUint32(d[4:], flags)
			}
			n++
			prevHole = hole
		}
		pos = t
	}
	return n
}

// replyWriter is where replies are encoded: the writer's bufio.Writer, or
// the reader's inline buffer. Encoding into either never fails on its own;
// a bufio.Writer reports the socket's error.
type replyWriter interface {
	Write(p []byte) (int, error)
	WriteString(s string) (int, error)
}

// writeReply encodes r's reply into w. whdr is scratch space: writer only,
// or the reader while it owns the sending half (see conn.pending).
func (c *conn) writeReply(w replyWriter, r *request) error {
	h := c.whdr[:]
	if r.raw {
		_, err := w.Write(r.data)
		return err
	}
	if !c.structured {
		be.PutUint32(h[0:], MagicSimpleReply)
		be.PutUint32(h[4:], r.errno)
		be.PutUint64(h[8:], r.handle)
		w.Write(h[:SimpleReplyLen])
		if r.typ == CmdRead && r.errno == 0 {
			_, err := w.Write(r.data)
			return err
		}
		return nil
	}
	if r.errno != 0 {
		return c.writeError(w, r)
	}
	switch r.typ {
	case CmdRead:
		if len(r.data) == 0 {
			return c.writeChunkHeader(w, r.handle, ReplyFlagDone, ReplyTypeNone, 0)
		}
		if r.nchunks == 0 {
			return c.writeData(w, r.handle, ReplyFlagDone, r.offset, r.data)
		}
		for i := range r.nchunks {
			ch := &r.chunks[i]
			var flags uint16
			if i == r.nchunks-1 {
				flags = ReplyFlagDone
			}
			if ch.hole {
				c.writeChunkHeader(w, r.handle, flags, ReplyTypeOffsetHole, 12)
				be.PutUint64(h[0:], ch.off)
				be.PutUint32(h[8:], ch.n)
				w.Write(h[:12])
			} else {
				c.writeData(w, r.handle, flags, ch.off, r.data[ch.start:ch.start+int(ch.n)])
			}
		}
		return nil
	case CmdBlockStatus:
		c.writeChunkHeader(w, r.handle, ReplyFlagDone, ReplyTypeBlockStatus, uint32(len(r.data)))
		_, err := w.Write(r.data)
		return err
	default:
		// No payload: a simple reply is allowed and 4 bytes shorter.
		be.PutUint32(h[0:], MagicSimpleReply)
		be.PutUint32(h[4:], 0)
		be.PutUint64(h[8:], r.handle)
		_, err := w.Write(h[:SimpleReplyLen])
		return err
	}
}

func (c *conn) writeChunkHeader(w replyWriter, handle uint64, flags, typ uint16, length uint32) error {
	h := c.whdr[:StructuredReplyHeaderLen]
	be.PutUint32(h[0:], MagicStructuredReply)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], handle)
	be.PutUint32(h[16:], length)
	_, err := w.Write(h)
	return err
}

func (c *conn) writeData(w replyWriter, handle uint64, flags uint16, off uint64, data []byte) error {
	h := c.whdr[:]
	be.PutUint32(h[0:], MagicStructuredReply)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], ReplyTypeOffsetData)
	be.PutUint64(h[8:], handle)
	be.PutUint32(h[16:], uint32(8+len(data)))
	be.PutUint64(h[20:], off)
	w.Write(h)
	_, err := w.Write(data)
	return err
}

// writeError sends r's error as one ERROR (or ERROR_OFFSET) chunk with its
// message.
func (c *conn) writeError(w replyWriter, r *request) error {
	msg := truncate(r.msg, maxStringLength)
	typ, extra := ReplyTypeError, 0
	if r.errOffset >= 0 {
		typ, extra = ReplyTypeErrorOffset, 8
	}
	c.writeChunkHeader(w, r.handle, ReplyFlagDone, typ, uint32(6+len(msg)+extra))
	b := c.whdr[:8]
	be.PutUint32(b[0:], r.errno)
	be.PutUint16(b[4:], uint16(len(msg)))
	w.Write(b[:6])
	w.WriteString(msg)
	if extra > 0 {
		be.PutUint64(b[:], uint64(r.errOffset))
		w.Write(b[:])
	}
	return nil
}
