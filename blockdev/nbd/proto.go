package nbd

import "errors"

// Magic numbers. Part of the wire protocol — do not change.
const (
	magicInit        uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption      uint64 = 0x49484156454f5054 // "IHAVEOPT", server greeting and every option header
	magicOptionReply uint64 = 0x0003e889045565a9
	magicRequest     uint32 = 0x25609513
	magicSimple      uint32 = 0x67446698
	magicStructured  uint32 = 0x668e33ef
)

// Handshake flags (server) and client flags. Part of the wire protocol — do not change.
const (
	flagFixedNewstyle  uint16 = 1 << 0
	flagNoZeroes       uint16 = 1 << 1
	flagCFixedNewstyle uint32 = 1 << 0
	flagCNoZeroes      uint32 = 1 << 1
)

// Transmission flags. Part of the wire protocol — do not change.
const (
	tflagHasFlags        uint16 = 1 << 0
	tflagReadOnly        uint16 = 1 << 1
	tflagSendFlush       uint16 = 1 << 2
	tflagSendFUA         uint16 = 1 << 3
	tflagRotational      uint16 = 1 << 4
	tflagSendTrim        uint16 = 1 << 5
	tflagSendWriteZeroes uint16 = 1 << 6
	tflagSendDF          uint16 = 1 << 7
	tflagCanMultiConn    uint16 = 1 << 8
	tflagSendResize      uint16 = 1 << 9
	tflagSendCache       uint16 = 1 << 10
	tflagSendFastZero    uint16 = 1 << 11
)

// Option types. Part of the wire protocol — do not change.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optPeekExport      uint32 = 4 // withdrawn; answered ERR_UNSUP
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
)

// Option reply types. Part of the wire protocol — do not change.
const (
	repAck          uint32 = 1
	repServer       uint32 = 2
	repInfo         uint32 = 3
	repMetaContext  uint32 = 4
	repErrUnsup     uint32 = 1<<31 + 1
	repErrPolicy    uint32 = 1<<31 + 2
	repErrInvalid   uint32 = 1<<31 + 3
	repErrPlatform  uint32 = 1<<31 + 4
	repErrTLSReqd   uint32 = 1<<31 + 5
	repErrUnknown   uint32 = 1<<31 + 6
	repErrShutdown  uint32 = 1<<31 + 7
	repErrBlockSize uint32 = 1<<31 + 8
	repErrTooBig    uint32 = 1<<31 + 9
)

// NBD_INFO types. Part of the wire protocol — do not change.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Commands. Part of the wire protocol — do not change.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags. Part of the wire protocol — do not change.
const (
	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
)

// Structured reply flags and chunk types. Part of the wire protocol — do not change.
const (
	replyFlagDone uint16 = 1 << 0

	replyNone        uint16 = 0
	replyOffsetData  uint16 = 1
	replyOffsetHole  uint16 = 2
	replyBlockStatus uint16 = 5
	replyError       uint16 = 1<<15 + 1
	replyErrorOffset uint16 = 1<<15 + 2
)

// base:allocation status flags. Part of the wire protocol — do not change.
const (
	stateHole uint32 = 1 << 0
	stateZero uint32 = 1 << 1
)

// Error values sent in replies. Part of the wire protocol — do not change
// (they are the Linux errno values, but fixed by the protocol, not by the OS).
const (
	errPerm     uint32 = 1
	errIO       uint32 = 5
	errNoMem    uint32 = 12
	errInval    uint32 = 22
	errNoSpc    uint32 = 28
	errOverflow uint32 = 75
	errNotSup   uint32 = 95
	errShutdown uint32 = 108
)

// Fixed sizes of wire structures. Part of the wire protocol — do not change.
const (
	requestHeaderLen    = 28
	simpleReplyLen      = 16
	structuredHeaderLen = 20
	optionHeaderLen     = 16
	optionReplyLen      = 20
	zeroPadLen          = 124
)

// The one metadata context this server knows.
const (
	metaBaseAllocation = "base:allocation"
	metaBaseNamespace  = "base:"
	// metaContextID is the id given to base:allocation by SET_META_CONTEXT.
	// Any nonzero value would do; the client treats it as opaque.
	metaContextID uint32 = 1
)

// Limits on what the server accepts from the wire. Every length read from a
// client is checked against one of these before anything is allocated.
const (
	// maxRequestLength is the largest READ/WRITE/CACHE the server serves,
	// also advertised as the maximum block size: 2^25, the size the spec
	// says clients may assume every server supports.
	maxRequestLength = 32 << 20
	// maxDiscardLength bounds the oversized WRITE payload the server reads
	// and throws away to keep the stream in sync after refusing it. Longer
	// payloads are deemed a denial of service and close the connection.
	maxDiscardLength = 256 << 20
	// maxOptionLength bounds an option's data. The largest legitimate option
	// is a meta-context request: a 4096-byte name plus a few queries.
	maxOptionLength = 64 << 10
	// maxStringLength is the protocol's limit on names and messages.
	maxStringLength = 4096
	// maxOptions bounds the options of one handshake, so a client cannot
	// keep a connection in negotiation forever.
	maxOptions = 1024
	// maxStatusExtents bounds the descriptors of one BLOCK_STATUS reply;
	// the spec allows replying with fewer than the whole range.
	maxStatusExtents = 4096
	// holeReadMin is the smallest structured READ for which the server asks
	// the export for holes and sends them as OFFSET_HOLE chunks; smaller
	// reads are one OFFSET_DATA chunk (the extent lookup would cost more than
	// the zeros it saves).
	holeReadMin = 64 << 10
	// maxReadChunks bounds the content chunks of one READ reply; a read more
	// fragmented than this is sent as one OFFSET_DATA chunk.
	maxReadChunks = 16
)

// Block size constraints sent in NBD_INFO_BLOCK_SIZE.
//
// The engine's natural block is 4096 bytes but it accepts byte-granular I/O
// (a sub-block write is a read-modify-write inside the engine, done
// correctly), so the minimum is 1: advertising 512 or 4096 would only make
// clients do their own read-modify-write round trips, and under the spec a
// minimum is a promise the client MUST keep, which would make us reject
// unaligned requests we can serve. 4096 is the preferred size because that
// is where the engine stops doing read-modify-write and where holes begin and
// end. The maximum is the largest payload we accept (maxRequestLength).
const (
	blockSizeMin       uint32 = 1
	blockSizePreferred uint32 = 4096
	blockSizeMax       uint32 = maxRequestLength
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrServerClosed is returned by Serve after Shutdown.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrProtocol marks a client that broke the protocol (bad magic,
	// impossible length, unknown client flags); its connection is closed.
	ErrProtocol = errors.New("nbd: protocol violation")
	// ErrAborted is a client that ended negotiation (NBD_OPT_ABORT or a
	// hang-up before choosing an export).
	ErrAborted = errors.New("nbd: client aborted negotiation")
	// ErrUnknownExport is a NBD_OPT_EXPORT_NAME for an export that does not
	// exist; the protocol has no way to say so but closing the connection.
	ErrUnknownExport = errors.New("nbd: unknown export")
)
