package replication

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/cespare/xxhash/v2"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cairn-storage/cairn/engine"
)

const (
	readBufferSize  = 128 << 10
	writeBufferSize = 128 << 10
	// inlineMaxLength is the largest WRITE the reader applies itself when
	// no worker holds a request (see canInline). Larger ones go to a
	// worker, where the hand-offs are small next to the copy. It must fit
	// in the read buffer (runInline peeks the payload).
	inlineMaxLength = readBufferSize
	// inlineBurst is how many inline replies the reader holds at most
	// before sending them: enough to share a send among a burst, few
	// enough that the first of them is not kept waiting for long.
	inlineBurst = 16
)

// conn is one coordinator's connection to a replica volume. The hello
// fields (vol, release, state) are set by serve's goroutine before the
// workers and the writer start, and only read afterwards. See the package
// doc for the goroutines and how a request moves between them; besides
// that path, the reader applies small WRITEs itself while no worker holds
// a request and answers them in bursts (canInline), which saves the two
// hand-offs per write, reader → worker → writer.
type conn struct {
	srv *Server
	nc  net.Conn
	log *slog.Logger
	br  *bufio.Reader // owned by the reader (serve's goroutine)
	bw  *bufio.Writer // owned by serve during the hello, then by the writer

	vol     Volume
	release func()
	state   *epochState

	free   chan *request // slots not in flight; capacity MaxInFlight
	work   chan *request // reader → workers
	done   chan *request // workers → writer
	budget byteBudget    // payload bytes in flight
	broken bool          // writer only: the socket failed, replies are dropped
	whdr   [ReplyHeaderLen]byte

	// pending counts the requests the reader has queued whose replies the
	// writer has not flushed (or dropped) yet. The reader adds, the writer
	// subtracts after its flush: at 0 no worker holds a request and the
	// writer's buffer is empty, so nothing is waiting to go on the socket
	// (canInline).
	pending atomic.Int32
	// The reader's inline burst (runInline): the request it applies, the
	// replies it has not sent yet and their writes' ranges, whose
	// write-back starts once the replies are sent.
	inline   request
	ireplies []byte
	iwb      []engine.WritebackRange
}

// request is one request and, once applied, its reply. Slots are allocated
// once per connection and reused; a slot is owned by exactly one goroutine
// at a time (reader, then a worker, then the writer), so its fields need no
// lock.
type request struct {
	requestHeader
	buf    *drive.Buffer // pooled buffer behind data
	data   []byte        // WRITE payload or READ data
	sum    [8]byte       // a CHECKSUM's answer
	budget int64         // bytes reserved in the connection's byteBudget

	code       uint32 // reply code
	replyEpoch uint64 // the durable epoch when it was applied or refused
	msg        string // error message
}

func (r *request) alloc(n int) {
	r.buf = drive.GetBuffer(n)
	r.data = r.buf.B
}

func (r *request) freeBuf() {
	if r.buf != nil {
		drive.PutBuffer(r.buf)
	}
	r.buf, r.data = nil, nil
}

// failErr records err (if any) as the request's outcome.
func (r *request) failErr(err error) {
	if err == nil {
		return
	}
	r.code, r.msg = codeOf(err), err.Error()
}

// codeOf maps an error of the volume (or of the epoch state) to a reply
// code, through engine.Errno: the one mapping every frontend uses.
func codeOf(err error) uint32 {
	if errors.Is(err, ErrStaleEpoch) {
		return CodeStaleEpoch
	}
	switch engine.Errno(err) {
	case syscall.ENOSPC:
		return CodeNoSpace
	case syscall.EINVAL:
		return CodeInvalid
	}
	return CodeIO
}

func newConn(s *Server, nc net.Conn) *conn {
	return &conn{
		srv: s, nc: nc,
		log: s.log.With("remote", nc.RemoteAddr().String()),
		br:  bufio.NewReaderSize(nc, readBufferSize),
		bw:  bufio.NewWriterSize(nc, writeBufferSize),
	}
}

// serve runs the connection to its end. It never panics on wire input; it
// logs one line when it closes a connection for a protocol violation.
func (c *conn) serve() {
	defer c.nc.Close()
	deadline := time.Now().Add(c.srv.cfg.HandshakeTimeout)
	c.nc.SetDeadline(deadline)
	if err := c.hello(); err != nil {
		c.log.Warn("refused a coordinator", "err", err)
		return
	}
	defer c.release()
	c.nc.SetDeadline(time.Time{})
	err := c.transmit()
	switch {
	case c.srv.isClosed():
		c.log.Debug("connection closed by shutdown", "err", err)
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Debug("connection closed")
	default:
		c.log.Warn("closing connection", "err", err)
	}
}

// transmit starts the workers and the writer, reads requests until the
// coordinator leaves or breaks the protocol, then lets every request it has
// read finish before returning.
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
	for range cfg.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			wb, _ := c.vol.(deferredWriteback)
			for r := range c.work {
				c.execute(r)
				// r belongs to the writer once sent: what the write-back
				// needs is read first.
				write := wb != nil && r.cmd == CmdWrite && r.code == CodeOK && r.length > 0
				off, n := int64(r.offset), int64(r.length)
				c.done <- r
				if write {
					wb.StartWriteback(off, n)
				}
			}
		}()
	}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()

	err := c.readLoop()

	close(c.work)
	workers.Wait()
	close(c.done)
	<-writerDone
	return err
}

// readLoop is the reader: it decodes requests and queues them until the
// coordinator disconnects, the socket fails or the protocol is broken.
// Taking a free slot blocks while MaxInFlight requests are in flight, and
// reserving payload bytes while maxInFlightBytes are: that is the
// back-pressure on the coordinator.
func (c *conn) readLoop() error {
	var h [RequestHeaderLen]byte
	for {
		if c.br.Buffered() < RequestHeaderLen {
			// The next read may wait for the coordinator: what was
			// applied inline is answered first.
			if err := c.sendInline(); err != nil {
				return err
			}
		}
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: truncated request header", ErrProtocol)
			}
			return err
		}
		hdr, err := parseRequest(&h)
		if err != nil {
			return err
		}
		if c.canInline(hdr) {
			if err := c.runInline(hdr); err != nil {
				return err
			}
			continue
		}
		// Inline replies go out before the workers take over: they are
		// not held while the reader waits for a slot or a payload.
		if err := c.sendInline(); err != nil {
			return err
		}
		r := <-c.free
		r.requestHeader = hdr
		r.code, r.replyEpoch, r.msg, r.budget = CodeOK, 0, "", 0
		switch hdr.cmd {
		case CmdWrite, CmdMark:
			c.budget.acquire(int64(hdr.length))
			r.budget = int64(hdr.length)
			r.alloc(int(hdr.length))
			if _, err := io.ReadFull(c.br, r.data); err != nil {
				c.budget.release(r.budget)
				r.freeBuf()
				c.free <- r
				return fmt.Errorf("%w: truncated payload of command %d: %w", ErrProtocol, hdr.cmd, err)
			}
		case CmdRead, CmdChecksum, CmdActivity:
			// The worker allocates the read buffer; reserve its bytes here
			// so that the reader is the one that waits.
			c.budget.acquire(int64(hdr.length))
			r.budget = int64(hdr.length)
		}
		c.pending.Add(1)
		c.work <- r
	}
}

// canInline reports whether the reader should apply the request whose
// header it just decoded itself: a WRITE of at most inlineMaxLength while
// no worker holds a request and the writer has nothing to send (pending ==
// 0), so that no reply it sends can interleave with the writer's and no
// write it applies overtakes an earlier one. Requests buffered behind it
// are applied the same way, one after another, and their replies sent
// together (runInline): on two cores, a worker per write bought no
// parallelism (a file's buffered writes serialize on its inode lock) and
// cost two goroutine wake-ups per write, reader → worker → writer, as in
// the NBD server's reader (blockdev/nbd, canInline). FLUSH, FUA writes
// and the rest always go to the workers: the reader must not sit in a
// device flush while writes queue behind it. Reader only.
func (c *conn) canInline(hdr requestHeader) bool {
	return hdr.cmd == CmdWrite && hdr.flags&FlagFUA == 0 && hdr.length <= inlineMaxLength &&
		c.pending.Load() == 0
}

// runInline applies a WRITE on the reader's goroutine and adds its reply
// to the inline replies, sent by sendInline before the reader could wait
// (for the next request, a payload or a slot), before a request goes to
// the workers, or once inlineBurst are held. The payload goes to the
// volume straight from the read buffer (no copy, no pooled buffer, no
// byte budget: it is bounded by the read buffer); the volume does not keep
// it (Volume.WriteAt). REQUIRES: canInline was true for hdr.
func (c *conn) runInline(hdr requestHeader) error {
	r := &c.inline
	r.requestHeader = hdr
	r.code, r.replyEpoch, r.msg, r.budget = CodeOK, 0, "", 0
	if c.br.Buffered() < int(hdr.length) {
		if err := c.sendInline(); err != nil { // the payload may be a while
			return err
		}
	}
	p, err := c.br.Peek(int(hdr.length))
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // not a clean end: the header came
		}
		return fmt.Errorf("%w: truncated payload of command %d: %w", ErrProtocol, hdr.cmd, err)
	}
	r.data = p
	c.execute(r)
	r.data = nil
	c.br.Discard(int(hdr.length))
	h, _, msg := replyOf(r)
	var hb [ReplyHeaderLen]byte
	putReply(&hb, h)
	c.ireplies = append(append(c.ireplies, hb[:]...), msg...)
	r.msg = ""
	if r.code == CodeOK && hdr.length > 0 {
		c.iwb = append(c.iwb, engine.WritebackRange{Off: int64(hdr.offset), N: int64(hdr.length)})
	}
	if len(c.ireplies) >= inlineBurst*ReplyHeaderLen { // each reply is at least a header
		return c.sendInline()
	}
	return nil
}

// sendInline sends the inline replies with one blocking write, then starts
// the write-back of their writes (after the reply, as the workers do). The
// coordinator's Client reads replies on a goroutine of their own whatever
// it is sending, so this waits at most for the socket to drain, and a
// coordinator that stops reading stalls only its own connection, as it
// would the writer. Reader only.
func (c *conn) sendInline() error {
	if len(c.ireplies) == 0 {
		return nil
	}
	_, err := c.nc.Write(c.ireplies)
	c.ireplies = c.ireplies[:0]
	if err != nil {
		c.iwb = c.iwb[:0]
		return fmt.Errorf("replication: reply: %w", err)
	}
	switch wb := c.vol.(type) {
	case batchWriteback:
		wb.StartWritebacks(c.iwb)
	case deferredWriteback:
		for _, r := range c.iwb {
			wb.StartWriteback(r.Off, r.N)
		}
	}
	c.iwb = c.iwb[:0]
	return nil
}

// execute applies r to the volume, leaving the outcome in r. Worker only.
//
// The epoch is checked (and, when newer, made durable) before anything is
// applied, and the fence is held until the volume call returns: see
// epochState. A refused request leaves the volume untouched.
func (c *conn) execute(r *request) {
	if hasPayload(r.cmd) && checksum(r.data) != r.crc {
		r.code, r.msg = CodeIO, ErrChecksum.Error()
		r.replyEpoch = c.state.epoch.Load()
		return
	}
	cur, err := c.state.admit(r.epoch)
	r.replyEpoch = cur
	if err != nil {
		r.failErr(err)
		return
	}
	defer c.state.fence.RUnlock()
	off, n := int64(r.offset), int64(r.length)
	if r.offset > uint64(c.vol.Size()) {
		// Beyond any int64 the volume could check; it would wrap.
		r.code, r.msg = CodeInvalid, fmt.Sprintf("offset %d beyond the volume's end", r.offset)
		return
	}
	fua := r.flags&FlagFUA != 0
	switch r.cmd {
	case CmdWrite:
		if wb, ok := c.vol.(deferredWriteback); ok && n > 0 {
			r.failErr(wb.WriteAtDeferWriteback(r.data, off, fua)) // the worker starts it
		} else if n > 0 {
			r.failErr(c.vol.WriteAt(r.data, off, fua))
		}
	case CmdRead:
		if n > 0 {
			r.alloc(int(n))
			r.failErr(c.vol.ReadAt(r.data, off))
		}
	case CmdChecksum:
		r.alloc(int(n))
		if err := c.vol.ReadAt(r.data, off); err != nil {
			r.failErr(err)
		} else {
			be.PutUint64(r.sum[:], xxhash.Sum64(r.data))
		}
		r.freeBuf() // the reply carries the sum only
	case CmdFlush:
		r.failErr(c.vol.Flush())
	case CmdMark:
		set, err := parseActivity(r.data, activityExtents(c.vol.Size()))
		if err != nil {
			r.code, r.msg = CodeInvalid, err.Error()
			break
		}
		r.failErr(c.state.activity.store(set))
	case CmdActivity:
		if n < 8 {
			r.code, r.msg = CodeInvalid, fmt.Sprintf("ACTIVITY of %d bytes: a set needs at least 8", n)
			break
		}
		r.alloc(int(n))
		r.data = activityReply(r.data, c.state.activity, c.vol.Size(), c.log)
	case CmdTrim:
		if n > 0 {
			r.failErr(c.vol.Trim(off, n))
		}
		if r.code == CodeOK && fua {
			r.failErr(c.vol.Flush())
		}
	case CmdWriteZeroes:
		if n > 0 {
			r.failErr(c.vol.WriteZeroes(off, n, r.flags&FlagNoHole != 0))
		}
		if r.code == CodeOK && fua {
			r.failErr(c.vol.Flush())
		}
	}
}

// activityReply fills buf with the activity log of f (of a volume of size
// bytes), padded with zeros; a log that does not fit is sent as every
// extent, and so is one that cannot be read (logged: it costs a whole
// comparison of the volume after a crash, nothing else).
func activityReply(buf []byte, f *activityFile, size int64, log *slog.Logger) []byte {
	clear(buf)
	set, err := f.load(activityExtents(size))
	if err != nil {
		log.Warn("activity log unreadable; reported as every extent", "err", err)
	}
	if b := appendActivity(buf[:0], set); len(b) <= len(buf) {
		return buf
	}
	clear(buf)
	appendActivity(buf[:0], activitySet{all: true})
	return buf
}

// writeLoop is the writer: it sends replies in completion order, batching
// them in bw and flushing when no more are queued, so a busy connection
// sends many replies per syscall. When none is queued but workers hold
// requests, it yields its P once before deciding (runtime.Gosched): the
// workers that are runnable finish first and their replies share the
// flush, and they find the writer runnable rather than parked (no wake-up
// per reply). It never waits for a worker that is not runnable (one in a
// device flush, say).
func (c *conn) writeLoop() {
	var unflushed int32 // replies in bw, counted in pending
	for r := range c.done {
		if !c.broken {
			if err := c.writeReply(r); err != nil {
				c.broken = true
				c.log.Debug("send failed", "err", err)
				c.nc.Close() // also stops the reader
			}
		}
		c.budget.release(r.budget)
		r.freeBuf()
		c.free <- r
		unflushed++
		if len(c.done) == 0 && c.pending.Load() > unflushed {
			runtime.Gosched() // workers hold requests: see above
		}
		if len(c.done) == 0 {
			if !c.broken {
				if err := c.bw.Flush(); err != nil {
					c.broken = true
					c.nc.Close()
				}
			}
			c.pending.Add(-unflushed)
			unflushed = 0
		}
	}
}

// writeReply encodes r's reply into bw. Writer only (whdr is its scratch).
func (c *conn) writeReply(r *request) error {
	h, payload, msg := replyOf(r)
	putReply(&c.whdr, h)
	c.bw.Write(c.whdr[:])
	if r.code != CodeOK {
		_, err := c.bw.WriteString(msg)
		return err
	}
	_, err := c.bw.Write(payload)
	return err
}

// replyOf is r's reply: its header and what follows it, a successful
// READ's, ACTIVITY's or CHECKSUM's payload or an error's message (at most
// MaxMessageLen bytes).
func replyOf(r *request) (h replyHeader, payload []byte, msg string) {
	h = replyHeader{code: r.code, handle: r.handle, epoch: r.replyEpoch}
	switch {
	case r.code != CodeOK:
		msg = r.msg[:min(len(r.msg), MaxMessageLen)]
		h.length = uint32(len(msg))
	case r.cmd == CmdRead || r.cmd == CmdActivity:
		payload = r.data
		h.length, h.crc = uint32(len(payload)), checksum(payload)
	case r.cmd == CmdChecksum:
		payload = r.sum[:]
		h.length, h.crc = uint32(len(payload)), checksum(payload)
	}
	return h, payload, msg
}

// byteBudget bounds the payload bytes a connection holds. Only the reader
// waits in acquire; the writer releases. No request is larger than the
// budget (MaxPayload < maxInFlightBytes), so acquire always ends.
type byteBudget struct {
	mu    sync.Mutex
	cond  sync.Cond
	avail int64 // protected by mu
}

func (b *byteBudget) init(total int64) {
	b.cond.L = &b.mu
	b.avail = total
}

func (b *byteBudget) acquire(n int64) {
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
	b.mu.Lock()
	b.avail += n
	b.mu.Unlock()
	b.cond.Signal()
}
