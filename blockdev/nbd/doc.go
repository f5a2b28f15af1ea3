// Package nbd serves cairn volumes over the Network Block Device protocol
// (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle handshake, simple and
// structured replies, base:allocation block status, and a pipelined
// transmission phase.
//
// # Wire formats
//
// Every integer is big-endian. The handshake (server speaks first):
//
//	S: +--------------------+--------------------+---------+
//	   | "NBDMAGIC" (8)     | "IHAVEOPT" (8)     | hflags  |  hflags: FIXED_NEWSTYLE|NO_ZEROES (2)
//	   +--------------------+--------------------+---------+
//	C: +-----------+
//	   | cflags (4)|  C_FIXED_NEWSTYLE, C_NO_ZEROES; anything else closes the connection
//	   +-----------+
//
// then options, repeated until GO/EXPORT_NAME succeeds or the client aborts:
//
//	C: +--------------------+----------+----------+------------------+
//	   | "IHAVEOPT" (8)     | opt (4)  | len (4)  | data (len bytes) |  len capped at maxOptionLength
//	   +--------------------+----------+----------+------------------+
//	S: +--------------------+----------+----------+----------+------------------+
//	   | 0x3e889045565a9 (8)| opt (4)  | type (4) | len (4)  | data (len bytes) |
//	   +--------------------+----------+----------+----------+------------------+
//
// NBD_OPT_EXPORT_NAME is answered (no option reply header) with
//
//	S: +-----------+-----------+----------------------------------+
//	   | size (8)  | tflags (2)| 124 zero bytes unless NO_ZEROES  |
//	   +-----------+-----------+----------------------------------+
//
// NBD_OPT_INFO / NBD_OPT_GO data, and the NBD_REP_INFO payloads sent back:
//
//	C: | namelen (4) | name | n (2) | n × info type (2) |
//	S: INFO_EXPORT      | 0 (2) | size (8) | tflags (2) |
//	   INFO_NAME        | 1 (2) | name                  |
//	   INFO_DESCRIPTION | 2 (2) | text                  |
//	   INFO_BLOCK_SIZE  | 3 (2) | min (4) | preferred (4) | max (4) |
//
// NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data, and the reply:
//
//	C: | namelen (4) | name | nqueries (4) | nqueries × ( qlen (4) | query ) |
//	S: NBD_REP_META_CONTEXT | context id (4) | context name |
//
// Transmission. A request is 28 bytes, followed by the payload for WRITE:
//
//	 0            4        6        8                16               24           28
//	+------------+--------+--------+----------------+----------------+------------+
//	| 0x25609513 | flags  | type   | handle         | offset         | length     |
//	+------------+--------+--------+----------------+----------------+------------+
//
// A simple reply is 16 bytes, followed by the data of a successful READ:
//
//	 0            4            8                16
//	+------------+------------+----------------+
//	| 0x67446698 | error      | handle         |
//	+------------+------------+----------------+
//
// A structured reply chunk is 20 bytes plus its payload:
//
//	 0            4        6        8                16           20
//	+------------+--------+--------+----------------+------------+
//	| 0x668e33ef | flags  | type   | handle         | length     |
//	+------------+--------+--------+----------------+------------+
//	payload by type:
//	  OFFSET_DATA  (1)      | offset (8) | data (length-8)                  |
//	  OFFSET_HOLE  (2)      | offset (8) | hole size (4)                    |
//	  BLOCK_STATUS (5)      | context id (4) | n × ( extent len (4) | flags (4) ) |
//	  ERROR        (32769)  | error (4) | msglen (2) | msg                  |
//	  ERROR_OFFSET (32770)  | error (4) | msglen (2) | msg | offset (8)     |
//
// # Concurrency
//
// Each connection runs one reader goroutine (the one Serve started for it),
// a fixed pool of worker goroutines and one writer goroutine:
//
//	reader ──work──▶ workers (Config.Workers) ──done──▶ writer ──▶ socket
//	   ▲                                                  │
//	   └───────────────── free request slots ◀────────────┘
//
// The reader owns the receiving half of the socket: it decodes a request
// header, takes a free request slot (blocking when Config.MaxInFlight are in
// flight, which is the back-pressure), reads a WRITE payload into a pooled
// buffer and queues the request. Plain writes to an export whose writes land
// in the page cache (CachedWriter) go to a second, small pool
// (Config.CachedWriteWorkers, 4): they never wait for a device, and on two
// cores more of them at once only spin on the drive file's inode lock. When
// one of them had to wait all the same (for a commit round: thin first
// writes, copy-on-write), plain writes use the full pool for 100 ms. A
// worker runs the request against the Export and hands it to the writer,
// which owns the sending half: it appends replies to a bufio.Writer and
// flushes only when no further reply is queued, so a busy connection sends
// many replies per syscall. The writer then returns the buffer to its pool
// and the slot to the free list; a slot is owned by
// exactly one goroutine at a time (reader, then a worker, then the writer),
// so request fields need no lock. The one exception is a FLUSH that joins
// another in flight (SharedFlusher, below): the reader chains it to that
// flush under conn.flushMu, and the worker running that flush answers it.
//
// The inline path. Every hand-off above is a wake-up of a parked goroutine,
// and at queue depth 1 (a client that waits for each reply) they were half
// the server's CPU per request. So when nothing is in flight — every reply
// already on the wire, no further request buffered — the reader runs a
// small READ or WRITE itself: it executes it (a WRITE straight from its read
// buffer) and sends the reply with one non-blocking write. A FLUSH runs
// there too when the request before it did (a client waiting for each
// reply: a database's commit), never behind pipelined requests. The writer is
// idle then and owns nothing the reader touches; conn.pending (queued
// requests whose reply is not yet flushed, an atomic) is the hand-over. If
// the socket cannot take the whole reply at once, the rest is queued to the
// writer and the reader goes back to reading, so a client that sends a
// batch before reading replies cannot wedge it.
//
// Ordering: the server replies in completion order (an inline request has
// nothing to overtake). A write is replied to only after Export.WriteAt
// returned, and FLUSH calls Export.Flush, which covers every write the
// volume completed — on every connection — so a FLUSH covers
// all writes this or any other connection has been answered for
// (NBD_FLAG_CAN_MULTI_CONN). An export that counts its changes
// (SharedFlusher: the engine's volumes) is asked instead to cover the count
// the reader read as the FLUSH arrived, which includes every write answered
// before then on any connection; a write answered while the flush waits is
// the next flush's (QEMU's write_gen does the same). A FLUSH that arrives
// with the count unchanged since the connection's flush in flight arrived
// needs exactly what that one needs, and is answered with it: a burst of
// flushes costs one worker. FUA writes are durable when WriteAt(fua=true)
// returns; FUA on TRIM and WRITE_ZEROES is a Flush after the operation.
//
// # Errors
//
// Engine errors map to an errno by engine.Errno (the same map FUSE uses),
// then to the protocol's error values: EROFS → EPERM, anything the protocol
// does not name → EIO. The server checks ranges itself against the
// size sent at GO: reads, trims, caches and block status past the end get
// EINVAL, writes and write-zeroes past the end ENOSPC. Requests larger than
// maxRequestLength are refused with EINVAL; an oversized WRITE payload is
// read and discarded (up to maxDiscardLength, beyond which the client is
// deemed hostile and the connection is closed) so the stream stays in sync.
// Garbage magic, truncated headers and impossible lengths close that
// connection with one log line; other connections are unaffected.
//
// # Exported volumes
//
// A connection holds its export from GO to disconnect (Exports.OpenExport and
// the release it returns); the daemon uses that hold to refuse deleting an
// exported volume. The size is read once at GO: a volume grown while
// exported shows its new size to new connections only.
//
// # The client side
//
// The protocol's constants are declared once, exported, in proto.go; every
// speaker of the wire in the tree uses them. client.go holds the client's
// half: encoders for options and requests, Handshake (fixed newstyle with
// NBD_OPT_GO, used by the kernel attach in blockdev/attach before it hands
// the socket to the kernel) and Client, a minimal pipelined client with
// simple replies for tests. Package nbdtest holds an in-memory Export.
package nbd
