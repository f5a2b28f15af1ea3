package replication

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// ClientConfig says where and as whom a Client connects.
type ClientConfig struct {
	Addr string // the replica's --repl-listen address
	// LocalAddr is the source address to bind: this node's data address
	// (port 0 = any). Tests cut one link with an nftables rule on a pair of
	// addresses, so a connection must come from the node's own.
	LocalAddr *net.TCPAddr
	Cluster   [16]byte
	Node      string // this node's id
	Volume    string // the replica to open on the remote node
	Epoch     uint64 // the epoch the coordinator holds; SetEpoch raises it
	// Timeout bounds every request and the dial with its hello; 0 = 5 s.
	Timeout     time.Duration
	MaxInFlight int   // requests in flight; 0 = 128 (callers beyond wait for a slot)
	Clock       Clock // what Timeout is measured on; nil = the real clock
}

// DefaultTimeout is a request's timeout when ClientConfig.Timeout is 0.
const DefaultTimeout = 5 * time.Second

// Client is one connection to one replica volume. Its methods may be called
// from many goroutines at once; each call sends one request and waits for
// its own reply, and many are in flight together.
//
// A call that fails for the connection — a timeout, a broken socket, a
// protocol violation, its context ending before the reply — closes the
// connection, and every call in flight and after returns that error: the
// caller evicts the replica (its state is unknown) and dials anew. Error
// replies (stale epoch, EIO, ENOSPC, EINVAL) fail only their own call.
//
// Goroutines: the caller encodes its own request into the connection's
// send buffer; the first caller to find no one writing to the socket writes
// it, and keeps writing what other callers queue meanwhile (see send), so a
// burst shares syscalls and a lone request is written at once. One reader
// goroutine matches replies to calls by handle; one watchdog goroutine fails
// the connection when a request is older than the timeout. None is started
// per request, and a call allocates nothing but its error.
type Client struct {
	nc      net.Conn
	timeout time.Duration
	clock   Clock
	size    int64
	epoch   atomic.Uint64 // sent with every request
	// replicaEpoch is the highest durable epoch the replica has reported.
	replicaEpoch atomic.Uint64

	calls []call
	free  chan uint32 // indices of idle calls

	// Sending (see send). wmu protects wbuf, spare and sending.
	wmu     sync.Mutex
	wroom   sync.Cond // L = &wmu; broadcast when wbuf is taken or sending ends
	wbuf    []byte    // REQUIRES wmu; requests queued for the socket, ≤ writeBufferSize
	spare   []byte    // REQUIRES wmu; the other buffer (nil while the sender holds it)
	sending bool      // REQUIRES wmu; a caller is writing to the socket

	br         *bufio.Reader // reader goroutine only
	msgBuf     [MaxMessageLen]byte
	readerDone chan struct{}

	errMu  sync.Mutex
	err    error         // REQUIRES errMu; the connection's failure, set once
	closed chan struct{} // closed when err is set
}

// call is one request slot. The caller owns it from taking its index off
// free to putting it back; the reader reads cmd, dst and length only after
// loading handle, which the caller stores after writing them (the atomic is
// the happens-before edge the socket is not).
type call struct {
	handle atomic.Uint64 // the handle in flight; 0 = none
	start  atomic.Int64  // UnixNano (on the Clock) the request was queued; 0 = idle (watchdog)
	gen    uint32        // caller only: makes each use's handle distinct
	cmd    uint16
	dst    []byte // READ destination
	length uint32
	hdr    [RequestHeaderLen]byte
	done   chan error // capacity 1: the reader's (or failAll's) one answer
}

// Dial connects to a replica, binding cfg.LocalAddr as the source, and
// says hello. A refused hello returns ErrStaleEpoch (a *StaleEpochError),
// ErrWrongCluster, ErrUnknownVolume, ErrVersion or ErrIO.
func Dial(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: cfg.Timeout}
	if cfg.LocalAddr != nil {
		d.LocalAddr = cfg.LocalAddr
	}
	nc, err := d.DialContext(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("replication: dial %s: %w", cfg.Addr, err)
	}
	return NewClient(nc, cfg)
}

// NewClient says hello on nc, a connection already made to the replica
// (Dial makes a TCP one; the simulation tests pass in-memory pipes), and
// returns a Client over it. cfg.Addr names the replica in errors;
// cfg.LocalAddr is not used. nc is closed when NewClient fails.
func NewClient(nc net.Conn, cfg ClientConfig) (*Client, error) {
	if err := cfg.check(); err != nil {
		nc.Close()
		return nil, err
	}
	c := &Client{
		nc: nc, timeout: cfg.Timeout, clock: cfg.Clock,
		calls: make([]call, cfg.MaxInFlight), free: make(chan uint32, cfg.MaxInFlight),
		wbuf: make([]byte, 0, writeBufferSize), spare: make([]byte, 0, writeBufferSize),
		br:         bufio.NewReaderSize(nc, readBufferSize),
		readerDone: make(chan struct{}), closed: make(chan struct{}),
	}
	c.wroom.L = &c.wmu
	if err := c.hello(cfg); err != nil {
		nc.Close()
		return nil, err
	}
	for i := range c.calls {
		c.calls[i].done = make(chan error, 1)
		c.free <- uint32(i)
	}
	c.epoch.Store(cfg.Epoch)
	go c.readLoop()
	go c.watchdog()
	return c, nil
}

// check fills cfg's defaults and refuses names the hello cannot carry.
func (cfg *ClientConfig) check() error {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = defaultMaxInFlight
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if len(cfg.Node) > MaxNameLen || !validVolume(cfg.Volume) {
		return fmt.Errorf("%w: node %q, volume %q", ErrInvalid, cfg.Node, cfg.Volume)
	}
	return nil
}

func (c *Client) hello(cfg ClientConfig) error {
	c.nc.SetDeadline(time.Now().Add(cfg.Timeout))
	defer c.nc.SetDeadline(time.Time{})
	h := Hello{Version: Version, Cluster: cfg.Cluster, Epoch: cfg.Epoch, Node: cfg.Node, Volume: cfg.Volume}
	if _, err := c.nc.Write(AppendHello(nil, h)); err != nil {
		return fmt.Errorf("replication: hello to %s: %w", cfg.Addr, err)
	}
	var b [HelloReplyLen]byte
	if _, err := io.ReadFull(c.br, b[:]); err != nil {
		return fmt.Errorf("replication: hello to %s: %w", cfg.Addr, err)
	}
	if m := be.Uint64(b[0:]); m != MagicHelloReply {
		return fmt.Errorf("%w: %s: bad hello reply magic %#x", ErrProtocol, cfg.Addr, m)
	}
	status, msgLen := be.Uint16(b[10:]), be.Uint32(b[12:])
	epoch, size := be.Uint64(b[16:]), be.Uint64(b[24:])
	if msgLen > MaxMessageLen {
		return fmt.Errorf("%w: %s: hello reply message of %d bytes", ErrProtocol, cfg.Addr, msgLen)
	}
	msg := make([]byte, msgLen)
	if _, err := io.ReadFull(c.br, msg); err != nil {
		return fmt.Errorf("replication: hello to %s: %w", cfg.Addr, err)
	}
	c.replicaEpoch.Store(epoch)
	switch status {
	case HelloOK:
		if size > 1<<62 {
			return fmt.Errorf("%w: %s: volume size %d", ErrProtocol, cfg.Addr, size)
		}
		c.size = int64(size)
		return nil
	case HelloStaleEpoch:
		return &StaleEpochError{Sent: cfg.Epoch, Epoch: epoch}
	case HelloWrongCluster:
		return fmt.Errorf("%w: %s: %s", ErrWrongCluster, cfg.Addr, msg)
	case HelloUnknownVolume:
		return fmt.Errorf("%w: %s: %s", ErrUnknownVolume, cfg.Addr, msg)
	case HelloBadVersion:
		return fmt.Errorf("%w: %s: %s", ErrVersion, cfg.Addr, msg)
	}
	return fmt.Errorf("%w: %s refused the hello: %s", ErrIO, cfg.Addr, msg)
}

// Size is the replica volume's size as its hello reported it.
func (c *Client) Size() int64 { return c.size }

// SetEpoch makes later requests carry e (the coordinator's new epoch after
// an eviction). It never lowers the epoch.
func (c *Client) SetEpoch(e uint64) {
	for {
		cur := c.epoch.Load()
		if e <= cur || c.epoch.CompareAndSwap(cur, e) {
			return
		}
	}
}

// ReplicaEpoch is the highest durable epoch the replica has reported (in
// its hello reply and in every reply since).
func (c *Client) ReplicaEpoch() uint64 { return c.replicaEpoch.Load() }

// WriteAt writes p at off on the replica; with fua, p is durable there when
// WriteAt returns nil. len(p) ≤ MaxPayload.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	return c.StartWriteAt(p, off, fua).Wait(ctx)
}

// ReadAt fills p from the replica at off. len(p) ≤ MaxPayload.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	if len(p) > MaxPayload {
		return fmt.Errorf("%w: read of %d bytes (limit %d)", ErrInvalid, len(p), MaxPayload)
	}
	return c.do(ctx, CmdRead, 0, off, uint32(len(p)), nil, p)
}

// Checksum returns the xxhash64 of the replica's n bytes at off, computed
// on the replica (volume verify and convergence compare replicas without
// moving their data). n ≤ MaxPayload.
func (c *Client) Checksum(ctx context.Context, off, n int64) (uint64, error) {
	if n < 0 || n > MaxPayload {
		return 0, fmt.Errorf("%w: checksum of %d bytes (limit %d)", ErrInvalid, n, MaxPayload)
	}
	var sum [8]byte
	if err := c.do(ctx, CmdChecksum, 0, off, uint32(n), nil, sum[:]); err != nil {
		return 0, err
	}
	return be.Uint64(sum[:]), nil
}

// Flush makes every write the replica answered before it received the
// FLUSH durable there.
func (c *Client) Flush(ctx context.Context) error {
	return c.StartFlush().Wait(ctx)
}

// Trim deallocates the whole blocks of [off, off+n) on the replica; with
// fua, that is durable when Trim returns nil. n < 4 GiB.
func (c *Client) Trim(ctx context.Context, off, n int64, fua bool) error {
	return c.StartTrim(off, n, fua).Wait(ctx)
}

// WriteZeroes makes [off, off+n) read as zeros on the replica, keeping the
// blocks allocated with noHole. n < 4 GiB.
func (c *Client) WriteZeroes(ctx context.Context, off, n int64, noHole, fua bool) error {
	return c.StartWriteZeroes(off, n, noHole, fua).Wait(ctx)
}

// do sends one request and waits for its reply.
func (c *Client) do(ctx context.Context, cmd, flags uint16, off int64, length uint32, payload, dst []byte) error {
	return c.send(ctx, cmd, flags, off, length, payload, dst).Wait(ctx)
}

// Pending is a request sent and not yet answered. Its caller must Wait for
// it exactly once (the request's slot is freed by Wait).
type Pending struct {
	c   *Client
	idx uint32
	err error // the send failed: Wait returns it and frees nothing
}

// send encodes and sends one request. The payload is on the socket, or
// copied into the send buffer that the caller writing to the socket will
// write next, when send returns, so the caller may reuse it.
//
// Senders combine their writes: a caller appends its request to wbuf under
// wmu; if no caller is sending, it becomes the sender: it takes wbuf (the
// other buffer takes its place), writes it with wmu released, and repeats
// while other callers have queued more, then clears sending. With other
// calls in flight the sender first yields its P (runtime.Gosched), so that
// callers already runnable — the coordinator's other writes of a burst —
// queue theirs and share the write(2); a lone request (queue depth 1) is
// written at once, as by a plain write. wbuf is bounded: a caller whose
// request does not fit waits (wroom) for the sender to take it, and one
// larger than the buffer waits until no one is sending and then writes its
// payload straight from the caller's memory.
func (c *Client) send(ctx context.Context, cmd, flags uint16, off int64, length uint32, payload, dst []byte) Pending {
	if off < 0 {
		return Pending{err: fmt.Errorf("%w: negative offset %d", ErrInvalid, off)}
	}
	var idx uint32
	select {
	case idx = <-c.free:
	case <-c.closed:
		return Pending{err: c.failure()}
	case <-ctx.Done():
		return Pending{err: ctx.Err()}
	}
	k := &c.calls[idx]
	k.gen++
	if k.gen == 0 {
		k.gen = 1 // handle 0 means "none"
	}
	handle := uint64(k.gen)<<32 | uint64(idx)
	k.cmd, k.dst, k.length = cmd, dst, length
	var crc uint32
	if hasPayload(cmd) {
		crc = checksum(payload)
	}
	putRequest(&k.hdr, requestHeader{cmd: cmd, flags: flags, handle: handle, epoch: c.epoch.Load(), offset: uint64(off), length: length, crc: crc})
	k.start.Store(c.clock.Now().UnixNano())
	k.handle.Store(handle) // publishes the fields above to the reader

	n := len(k.hdr) + len(payload)
	c.wmu.Lock()
	for c.sending && len(c.wbuf)+n > cap(c.wbuf) {
		c.wroom.Wait()
	}
	c.wbuf = append(c.wbuf, k.hdr[:]...)
	if c.sending {
		// The sender writes it after its current write.
		c.wbuf = append(c.wbuf, payload...)
		c.wmu.Unlock()
		return Pending{c: c, idx: idx}
	}
	c.sending = true
	var direct []byte
	if len(c.wbuf)+len(payload) <= cap(c.wbuf) {
		c.wbuf = append(c.wbuf, payload...)
	} else {
		direct = payload // wbuf holds only our header: nothing is queued behind
	}
	if direct == nil && cap(c.free)-len(c.free) > 1 {
		// Other calls are in flight, so others may be about to send: let
		// the runnable ones queue theirs before the write(2) (BenchmarkWrite
		// at depth 32: a quarter to a third less CPU per write). Never
		// taken at depth 1.
		c.wmu.Unlock()
		runtime.Gosched()
		c.wmu.Lock()
	}
	c.sendQueued(direct)
	return Pending{c: c, idx: idx}
}

// sendQueued writes wbuf, then direct, then whatever other callers queue
// meanwhile, until wbuf is empty; then it clears sending. A failed write
// fails the connection and drops what is queued (those requests fail with
// the connection). REQUIRES: wmu held and sending set by this caller;
// returns with wmu released.
func (c *Client) sendQueued(direct []byte) {
	for {
		out := c.wbuf
		c.wbuf, c.spare = c.spare, nil
		c.wroom.Broadcast()
		c.wmu.Unlock()
		_, err := c.nc.Write(out)
		if err == nil && direct != nil {
			_, err = c.nc.Write(direct)
		}
		direct = nil
		if err != nil {
			c.fail(fmt.Errorf("replication: send to %s: %w", c.nc.RemoteAddr(), err))
		}
		c.wmu.Lock()
		c.spare = out[:0]
		if err != nil {
			c.wbuf = c.wbuf[:0]
		}
		if len(c.wbuf) == 0 {
			c.sending = false
			c.wroom.Broadcast()
			c.wmu.Unlock()
			return
		}
	}
}

// Wait waits for the request's reply and returns its outcome. ctx ending
// first abandons the request, which fails the connection (the reply could
// still arrive and write into a READ's buffer).
func (p Pending) Wait(ctx context.Context) error {
	if p.c == nil {
		return p.err
	}
	c, k := p.c, &p.c.calls[p.idx]
	select {
	case err := <-k.done:
		k.dst = nil
		c.free <- p.idx
		return err
	case <-c.readerDone:
		// The connection failed; the reader answered every call it saw in
		// flight, maybe not this one, and will touch none again.
		return c.failure()
	case <-ctx.Done():
		// The reply may still come and write into dst: close the
		// connection and wait for the reader to stop before returning.
		c.fail(fmt.Errorf("replication: request abandoned: %w", ctx.Err()))
		<-c.readerDone
		return ctx.Err()
	}
}

// StartWriteAt sends a WRITE (as WriteAt) and returns without waiting for
// the reply: a coordinator sends one write to every replica, then waits for
// them all, from one goroutine.
func (c *Client) StartWriteAt(p []byte, off int64, fua bool) Pending {
	if len(p) > MaxPayload {
		return Pending{err: fmt.Errorf("%w: write of %d bytes (limit %d)", ErrInvalid, len(p), MaxPayload)}
	}
	var flags uint16
	if fua {
		flags = FlagFUA
	}
	return c.send(context.Background(), CmdWrite, flags, off, uint32(len(p)), p, nil)
}

// StartMark sends a MARK: the replica's activity log becomes the encoded
// set p, durably, before the reply.
func (c *Client) StartMark(p []byte) Pending {
	return c.send(context.Background(), CmdMark, 0, 0, uint32(len(p)), p, nil)
}

// Activity reads the replica's activity log: dst is filled with its
// encoding, padded with zeros (len(dst) ≤ 1 MiB).
func (c *Client) Activity(ctx context.Context, dst []byte) error {
	return c.do(ctx, CmdActivity, 0, 0, uint32(len(dst)), nil, dst)
}

// StartFlush sends a FLUSH (as Flush) without waiting for the reply.
func (c *Client) StartFlush() Pending {
	return c.send(context.Background(), CmdFlush, 0, 0, 0, nil, nil)
}

// StartTrim sends a TRIM (as Trim) without waiting for the reply.
func (c *Client) StartTrim(off, n int64, fua bool) Pending {
	var flags uint16
	if fua {
		flags = FlagFUA
	}
	return c.startRanged(CmdTrim, flags, off, n)
}

// StartWriteZeroes sends a WRITE_ZEROES (as WriteZeroes) without waiting.
func (c *Client) StartWriteZeroes(off, n int64, noHole, fua bool) Pending {
	var flags uint16
	if fua {
		flags |= FlagFUA
	}
	if noHole {
		flags |= FlagNoHole
	}
	return c.startRanged(CmdWriteZeroes, flags, off, n)
}

// startRanged sends a command that names a range without a payload; its
// length field is 32 bits, as in NBD, whose requests the coordinator
// forwards.
func (c *Client) startRanged(cmd, flags uint16, off, n int64) Pending {
	if n < 0 || n > math.MaxUint32 {
		return Pending{err: fmt.Errorf("%w: length %d (limit %d)", ErrInvalid, n, uint32(math.MaxUint32))}
	}
	return c.send(context.Background(), cmd, flags, off, uint32(n), nil, nil)
}

// readLoop is the reader goroutine: it hands each reply to its call until
// the connection fails, then answers every call still in flight.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	err := c.readReplies()
	c.fail(err)
	err = c.failure()
	for i := range c.calls {
		k := &c.calls[i]
		if k.handle.Swap(0) != 0 {
			k.start.Store(0)
			k.done <- err
		}
	}
}

func (c *Client) readReplies() error {
	var h [ReplyHeaderLen]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			return fmt.Errorf("replication: reading replies from %s: %w", c.nc.RemoteAddr(), err)
		}
		r, err := parseReply(&h)
		if err != nil {
			return err
		}
		idx := uint32(r.handle)
		if idx >= uint32(len(c.calls)) || r.handle == 0 || c.calls[idx].handle.Load() != r.handle {
			return fmt.Errorf("%w: reply for handle %#x, which is not in flight", ErrProtocol, r.handle)
		}
		k := &c.calls[idx]
		for {
			cur := c.replicaEpoch.Load()
			if r.epoch <= cur || c.replicaEpoch.CompareAndSwap(cur, r.epoch) {
				break
			}
		}
		var res error
		switch {
		case r.code == CodeOK && (k.cmd == CmdRead || k.cmd == CmdChecksum || k.cmd == CmdActivity):
			if r.length != uint32(len(k.dst)) {
				return fmt.Errorf("%w: reply of %d bytes to command %d that wants %d", ErrProtocol, r.length, k.cmd, len(k.dst))
			}
			if _, err := io.ReadFull(c.br, k.dst); err != nil {
				return fmt.Errorf("%w: truncated READ reply: %w", ErrProtocol, err)
			}
			if checksum(k.dst) != r.crc {
				res = fmt.Errorf("%w: READ of %d bytes from %s", ErrChecksum, k.length, c.nc.RemoteAddr())
			}
		case r.code == CodeOK:
			if r.length != 0 {
				return fmt.Errorf("%w: %d bytes of payload on a reply to command %d", ErrProtocol, r.length, k.cmd)
			}
		default:
			if r.length > MaxMessageLen {
				return fmt.Errorf("%w: error message of %d bytes (limit %d)", ErrProtocol, r.length, MaxMessageLen)
			}
			msg := c.msgBuf[:r.length]
			if _, err := io.ReadFull(c.br, msg); err != nil {
				return fmt.Errorf("%w: truncated error reply: %w", ErrProtocol, err)
			}
			if r.code == CodeStaleEpoch {
				sent := be.Uint64(k.hdr[16:])
				res = &StaleEpochError{Sent: sent, Epoch: r.epoch}
			} else {
				res = &ReplyError{Code: r.code, Epoch: r.epoch, Msg: string(msg)}
			}
		}
		k.start.Store(0)
		k.handle.Store(0)
		k.done <- res
	}
}

// watchdog fails the connection when a request has waited longer than the
// timeout. One goroutine and one ticker per connection, instead of a timer
// per request; a call fails at most a tick past its timeout.
func (c *Client) watchdog() {
	tick := min(max(c.timeout/10, time.Millisecond), 100*time.Millisecond)
	ticks, stop := c.clock.NewTicker(tick)
	defer stop()
	for {
		select {
		case <-c.closed:
			return
		case now := <-ticks:
			limit := now.Add(-c.timeout).UnixNano()
			for i := range c.calls {
				if s := c.calls[i].start.Load(); s != 0 && s < limit {
					c.fail(fmt.Errorf("%w: %s did not answer within %v; connection closed", ErrTimeout, c.nc.RemoteAddr(), c.timeout))
					return
				}
			}
		}
	}
}

// fail records err as the connection's failure (the first one wins) and
// closes the socket, which stops the reader and any blocked sender.
func (c *Client) fail(err error) {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	if c.err != nil {
		return
	}
	c.err = err
	close(c.closed)
	c.nc.Close()
}

func (c *Client) failure() error {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return c.err
}

// Err returns the connection's failure, or nil while it is usable.
func (c *Client) Err() error { return c.failure() }

// Close closes the connection; calls in flight return ErrClosed.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	<-c.readerDone
	return nil
}
