package nbd

import "errors"

// The protocol's constants (NetworkBlockDevice/nbd doc/proto.md), exported
// so that every speaker of the wire in this tree — the server, Handshake and
// Client, the kernel attach code, tests and fuzz targets — uses these and
// declares none of its own.

// Magic numbers. Part of the wire protocol — do not change.
const (
	MagicInit            uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	MagicOption          uint64 = 0x49484156454f5054 // "IHAVEOPT", server greeting and every option header
	MagicOptionReply     uint64 = 0x0003e889045565a9
	MagicRequest         uint32 = 0x25609513
	MagicSimpleReply     uint32 = 0x67446698
	MagicStructuredReply uint32 = 0x668e33ef
)

// Handshake flags (server) and client flags. Part of the wire protocol — do not change.
const (
	FlagFixedNewstyle       uint16 = 1 << 0
	FlagNoZeroes            uint16 = 1 << 1
	ClientFlagFixedNewstyle uint32 = 1 << 0
	ClientFlagNoZeroes      uint32 = 1 << 1
)

// Transmission flags. Part of the wire protocol — do not change.
const (
	TFlagHasFlags        uint16 = 1 << 0
	TFlagReadOnly        uint16 = 1 << 1
	TFlagSendFlush       uint16 = 1 << 2
	TFlagSendFUA         uint16 = 1 << 3
	TFlagRotational      uint16 = 1 << 4
	TFlagSendTrim        uint16 = 1 << 5
	TFlagSendWriteZeroes uint16 = 1 << 6
	TFlagSendDF          uint16 = 1 << 7
	TFlagCanMultiConn    uint16 = 1 << 8
	TFlagSendResize      uint16 = 1 << 9
	TFlagSendCache       uint16 = 1 << 10
	TFlagSendFastZero    uint16 = 1 << 11
)

// Option types. Part of the wire protocol — do not change.
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = 2
	OptList            uint32 = 3
	OptPeekExport      uint32 = 4 // withdrawn; answered ERR_UNSUP
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = 6
	OptGo              uint32 = 7
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
)

// Option reply types; every error type has RepFlagError set. Part of the
// wire protocol — do not change.
const (
	RepAck          uint32 = 1
	RepServer       uint32 = 2
	RepInfo         uint32 = 3
	RepMetaContext  uint32 = 4
	RepFlagError    uint32 = 1 << 31
	RepErrUnsup            = RepFlagError + 1
	RepErrPolicy           = RepFlagError + 2
	RepErrInvalid          = RepFlagError + 3
	RepErrPlatform         = RepFlagError + 4
	RepErrTLSReqd          = RepFlagError + 5
	RepErrUnknown          = RepFlagError + 6
	RepErrShutdown         = RepFlagError + 7
	RepErrBlockSize        = RepFlagError + 8
	RepErrTooBig           = RepFlagError + 9
)

// NBD_INFO types. Part of the wire protocol — do not change.
const (
	InfoExport      uint16 = 0
	InfoName        uint16 = 1
	InfoDescription uint16 = 2
	InfoBlockSize   uint16 = 3
)

// Commands. Part of the wire protocol — do not change.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags. Part of the wire protocol — do not change.
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
)

// Structured reply flags and chunk types. Part of the wire protocol — do not change.
const (
	ReplyFlagDone uint16 = 1 << 0

	ReplyTypeNone        uint16 = 0
	ReplyTypeOffsetData  uint16 = 1
	ReplyTypeOffsetHole  uint16 = 2
	ReplyTypeBlockStatus uint16 = 5
	ReplyTypeError       uint16 = 1<<15 + 1
	ReplyTypeErrorOffset uint16 = 1<<15 + 2
)

// base:allocation status flags. Part of the wire protocol — do not change.
const (
	StateHole uint32 = 1 << 0
	StateZero uint32 = 1 << 1
)

// Error values sent in replies. Part of the wire protocol — do not change
// (they are the Linux errno values, but fixed by the protocol, not by the OS).
const (
	ErrnoPerm     uint32 = 1
	ErrnoIO       uint32 = 5
	ErrnoNoMem    uint32 = 12
	ErrnoInval    uint32 = 22
	ErrnoNoSpc    uint32 = 28
	ErrnoOverflow uint32 = 75
	ErrnoNotSup   uint32 = 95
	ErrnoShutdown uint32 = 108
)

// Fixed sizes of wire structures. Part of the wire protocol — do not change.
const (
	GreetingLen              = 18 // "NBDMAGIC", "IHAVEOPT", handshake flags
	InfoExportLen            = 12 // NBD_INFO_EXPORT: type, size, transmission flags
	RequestHeaderLen         = 28
	SimpleReplyLen           = 16
	StructuredReplyHeaderLen = 20
	OptionHeaderLen          = 16
	OptionReplyHeaderLen     = 20
	ZeroPadLen               = 124
)

// The one metadata context this server knows.
const (
	MetaBaseAllocation = "base:allocation" // part of the wire protocol
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
