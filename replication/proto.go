package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

var be = binary.BigEndian

// castagnoli is the CRC-32C table for payload checksums (hardware-assisted
// on amd64 and arm64, so checking every payload costs next to nothing).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// Magic numbers and the protocol version. Part of the wire protocol — do not change.
const (
	MagicHello      uint64 = 0x4341_4952_4e52_504c // "CAIRNRPL", a coordinator's hello
	MagicHelloReply uint64 = 0x4341_4952_4e52_5059 // "CAIRNRPY", the replica's answer
	MagicRequest    uint32 = 0x4352_4551           // "CREQ"
	MagicReply      uint32 = 0x4352_5059           // "CRPY"
	// Version 2 added MARK and ACTIVITY (the activity log).
	Version uint16 = 2
)

// Fixed sizes of wire structures. Part of the wire protocol — do not change.
const (
	HelloLen         = 40
	HelloReplyLen    = 32
	RequestHeaderLen = 40
	ReplyHeaderLen   = 32
)

// Commands. Part of the wire protocol — do not change.
const (
	CmdWrite       uint16 = 1
	CmdFlush       uint16 = 2
	CmdTrim        uint16 = 3
	CmdWriteZeroes uint16 = 4
	CmdRead        uint16 = 5
	CmdChecksum    uint16 = 6 // xxhash64 of [offset, offset+length), 8 bytes back
	CmdMark        uint16 = 7 // replace the activity log with the set in the payload, durably
	CmdActivity    uint16 = 8 // the activity log, length bytes back
)

// hasPayload reports whether a request of cmd carries a payload (and its
// CRC-32C).
func hasPayload(cmd uint16) bool { return cmd == CmdWrite || cmd == CmdMark }

// Command flags. Part of the wire protocol — do not change.
const (
	FlagFUA    uint16 = 1 << 0 // WRITE, TRIM, WRITE_ZEROES: durable before the reply
	FlagNoHole uint16 = 1 << 1 // WRITE_ZEROES: keep the blocks allocated
)

// allowedFlags is the set of flags each command accepts; anything else is a
// protocol violation.
func allowedFlags(cmd uint16) (uint16, bool) {
	switch cmd {
	case CmdWrite, CmdTrim:
		return FlagFUA, true
	case CmdWriteZeroes:
		return FlagFUA | FlagNoHole, true
	case CmdFlush, CmdRead, CmdChecksum, CmdMark, CmdActivity:
		return 0, true
	}
	return 0, false
}

// Reply codes. Part of the wire protocol — do not change.
const (
	CodeOK         uint32 = 0
	CodeStaleEpoch uint32 = 1 // the request's epoch is older than the replica's durable one
	CodeIO         uint32 = 2
	CodeNoSpace    uint32 = 3
	CodeInvalid    uint32 = 4 // out of range, or refused as invalid by the volume
)

// Hello reply statuses. Part of the wire protocol — do not change.
const (
	HelloOK            uint16 = 0
	HelloStaleEpoch    uint16 = 1
	HelloWrongCluster  uint16 = 2
	HelloUnknownVolume uint16 = 3
	HelloBadVersion    uint16 = 4
	HelloError         uint16 = 5 // the replica cannot serve the volume now (state file, engine)
)

// Limits on what either side accepts from the wire. Every length read from a
// peer is checked against one of these before anything is allocated.
const (
	// MaxPayload is the largest WRITE payload and READ a replica serves:
	// the NBD server's largest request, so a coordinator forwards any NBD
	// request whole.
	MaxPayload = 32 << 20
	// MaxNameLen bounds the node id and the volume in a hello.
	MaxNameLen = 255
	// MaxMessageLen bounds the message of an error reply or a refused hello.
	MaxMessageLen = 1024
	// maxInFlightBytes bounds the payload bytes one server connection holds
	// (write payloads read ahead, read data not yet sent).
	maxInFlightBytes = 128 << 20
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrProtocol marks a peer that broke the protocol (bad magic, unknown
	// command or flags, impossible length, a reply to no request); the
	// connection is closed.
	ErrProtocol = errors.New("replication: protocol violation")
	// ErrStaleEpoch is a request or hello refused because the replica has
	// durably seen a newer epoch; errors.As with *StaleEpochError gives it.
	ErrStaleEpoch = errors.New("replication: stale epoch")
	// ErrTimeout is a request the replica did not answer within the
	// client's timeout; the connection has been closed.
	ErrTimeout = errors.New("replication: replica timed out")
	// ErrIO, ErrNoSpace and ErrInvalid are the replica's error replies.
	ErrIO      = errors.New("replication: replica I/O error")
	ErrNoSpace = errors.New("replication: replica out of space")
	ErrInvalid = errors.New("replication: invalid request")
	// ErrChecksum is a payload whose CRC-32C does not match its header:
	// corrupted between the two nodes.
	ErrChecksum = errors.New("replication: payload checksum mismatch")
	// ErrWrongCluster, ErrUnknownVolume and ErrVersion are refused hellos.
	ErrWrongCluster  = errors.New("replication: replica belongs to another cluster")
	ErrUnknownVolume = errors.New("replication: replica has no such volume")
	ErrVersion       = errors.New("replication: unsupported protocol version")
	// ErrClosed is returned by a Client after Close, and by Serve after Close.
	ErrClosed = errors.New("replication: closed")
)

// StaleEpochError is a refusal for a stale epoch. Epoch is the replica's
// durable epoch, so that the refused coordinator knows how far behind it is.
type StaleEpochError struct {
	Sent, Epoch uint64
}

func (e *StaleEpochError) Error() string {
	return fmt.Sprintf("replication: stale epoch %d: the replica is at epoch %d", e.Sent, e.Epoch)
}

func (e *StaleEpochError) Is(target error) bool { return target == ErrStaleEpoch }

// ReplyError is an error reply other than a stale epoch; it wraps ErrIO,
// ErrNoSpace or ErrInvalid.
type ReplyError struct {
	Code  uint32
	Epoch uint64 // the replica's durable epoch when it replied
	Msg   string // the replica's description
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("%v: %s", e.Unwrap(), e.Msg)
}

func (e *ReplyError) Unwrap() error {
	switch e.Code {
	case CodeNoSpace:
		return ErrNoSpace
	case CodeInvalid:
		return ErrInvalid
	}
	return ErrIO
}

// Hello is what a coordinator says when it connects.
type Hello struct {
	Version uint16
	Cluster [16]byte // the cluster's UUID
	Epoch   uint64   // the epoch the coordinator holds
	Node    string   // the coordinator's node id
	Volume  string   // the replica to serve: its state file is named after it
}

// AppendHello appends h's encoding to b. Node and Volume longer than
// MaxNameLen are the caller's mistake; they are encoded truncated (the
// server then serves another name, or none, so Dial checks them first).
func AppendHello(b []byte, h Hello) []byte {
	node, vol := h.Node[:min(len(h.Node), MaxNameLen)], h.Volume[:min(len(h.Volume), MaxNameLen)]
	b = be.AppendUint64(b, MagicHello)
	b = be.AppendUint16(b, h.Version)
	b = be.AppendUint16(b, 0) // flags, none defined
	b = be.AppendUint16(b, uint16(len(node)))
	b = be.AppendUint16(b, uint16(len(vol)))
	b = append(b, h.Cluster[:]...)
	b = be.AppendUint64(b, h.Epoch)
	b = append(b, node...)
	return append(b, vol...)
}

// parseHelloHeader decodes the fixed part of a hello and returns the
// lengths of the node id and volume that follow, both checked against
// MaxNameLen.
func parseHelloHeader(b *[HelloLen]byte) (h Hello, nodeLen, volLen int, err error) {
	if m := be.Uint64(b[0:]); m != MagicHello {
		return h, 0, 0, fmt.Errorf("%w: bad hello magic %#x", ErrProtocol, m)
	}
	h.Version = be.Uint16(b[8:])
	if f := be.Uint16(b[10:]); f != 0 {
		return h, 0, 0, fmt.Errorf("%w: unknown hello flags %#x", ErrProtocol, f)
	}
	nodeLen, volLen = int(be.Uint16(b[12:])), int(be.Uint16(b[14:]))
	if nodeLen > MaxNameLen || volLen > MaxNameLen {
		return h, 0, 0, fmt.Errorf("%w: hello names of %d and %d bytes (limit %d)", ErrProtocol, nodeLen, volLen, MaxNameLen)
	}
	copy(h.Cluster[:], b[16:32])
	h.Epoch = be.Uint64(b[32:])
	return h, nodeLen, volLen, nil
}

// helloReply is the replica's answer to a hello.
type helloReply struct {
	version uint16
	status  uint16
	epoch   uint64 // the replica's durable epoch after the hello
	size    uint64 // the volume's size in bytes (0 when refused)
	msg     string
}

func appendHelloReply(b []byte, r helloReply) []byte {
	msg := r.msg[:min(len(r.msg), MaxMessageLen)]
	b = be.AppendUint64(b, MagicHelloReply)
	b = be.AppendUint16(b, r.version)
	b = be.AppendUint16(b, r.status)
	b = be.AppendUint32(b, uint32(len(msg)))
	b = be.AppendUint64(b, r.epoch)
	b = be.AppendUint64(b, r.size)
	return append(b, msg...)
}

// requestHeader is a decoded request header.
type requestHeader struct {
	cmd, flags uint16
	handle     uint64
	epoch      uint64
	offset     uint64
	length     uint32
	crc        uint32
}

// AppendRequest appends a request header to b; a WRITE's payload follows it
// on the wire, and crc is its CRC-32C (0 for other commands). Exported for
// tests and fuzz targets that speak the wire without a Client.
func AppendRequest(b []byte, cmd, flags uint16, handle, epoch, off uint64, length, crc uint32) []byte {
	var h [RequestHeaderLen]byte
	putRequest(&h, requestHeader{cmd, flags, handle, epoch, off, length, crc})
	return append(b, h[:]...)
}

// PayloadChecksum is the CRC-32C a WRITE request or READ reply carries.
func PayloadChecksum(p []byte) uint32 { return checksum(p) }

func putRequest(h *[RequestHeaderLen]byte, r requestHeader) {
	be.PutUint32(h[0:], MagicRequest)
	be.PutUint16(h[4:], r.cmd)
	be.PutUint16(h[6:], r.flags)
	be.PutUint64(h[8:], r.handle)
	be.PutUint64(h[16:], r.epoch)
	be.PutUint64(h[24:], r.offset)
	be.PutUint32(h[32:], r.length)
	be.PutUint32(h[36:], r.crc)
}

// parseRequest decodes and validates a request header: magic, a known
// command, flags that command allows, a length within MaxPayload for the
// commands that carry or return one, and no length or offset on FLUSH.
func parseRequest(h *[RequestHeaderLen]byte) (requestHeader, error) {
	r := requestHeader{
		cmd: be.Uint16(h[4:]), flags: be.Uint16(h[6:]), handle: be.Uint64(h[8:]),
		epoch: be.Uint64(h[16:]), offset: be.Uint64(h[24:]), length: be.Uint32(h[32:]), crc: be.Uint32(h[36:]),
	}
	if m := be.Uint32(h[0:]); m != MagicRequest {
		return r, fmt.Errorf("%w: bad request magic %#x", ErrProtocol, m)
	}
	allowed, ok := allowedFlags(r.cmd)
	switch {
	case !ok:
		return r, fmt.Errorf("%w: unknown command %d", ErrProtocol, r.cmd)
	case r.flags&^allowed != 0:
		return r, fmt.Errorf("%w: flags %#x not valid for command %d", ErrProtocol, r.flags, r.cmd)
	case (r.cmd == CmdWrite || r.cmd == CmdRead || r.cmd == CmdChecksum) && r.length > MaxPayload:
		return r, fmt.Errorf("%w: command %d of %d bytes (limit %d)", ErrProtocol, r.cmd, r.length, MaxPayload)
	case (r.cmd == CmdMark || r.cmd == CmdActivity) && (r.length > maxActivityPayload || r.offset != 0):
		return r, fmt.Errorf("%w: command %d with offset %d length %d (limit %d)", ErrProtocol, r.cmd, r.offset, r.length, maxActivityPayload)
	case r.cmd == CmdFlush && (r.length != 0 || r.offset != 0):
		return r, fmt.Errorf("%w: FLUSH with offset %d length %d", ErrProtocol, r.offset, r.length)
	case !hasPayload(r.cmd) && r.crc != 0:
		return r, fmt.Errorf("%w: checksum on command %d, which has no payload", ErrProtocol, r.cmd)
	}
	return r, nil
}

// replyHeader is a decoded reply header.
type replyHeader struct {
	code   uint32
	handle uint64
	epoch  uint64
	length uint32 // READ data on success, the message on error
	crc    uint32 // of READ data; 0 otherwise
}

func putReply(h *[ReplyHeaderLen]byte, r replyHeader) {
	be.PutUint32(h[0:], MagicReply)
	be.PutUint32(h[4:], r.code)
	be.PutUint64(h[8:], r.handle)
	be.PutUint64(h[16:], r.epoch)
	be.PutUint32(h[24:], r.length)
	be.PutUint32(h[28:], r.crc)
}

func parseReply(h *[ReplyHeaderLen]byte) (replyHeader, error) {
	if m := be.Uint32(h[0:]); m != MagicReply {
		return replyHeader{}, fmt.Errorf("%w: bad reply magic %#x", ErrProtocol, m)
	}
	return replyHeader{
		code: be.Uint32(h[4:]), handle: be.Uint64(h[8:]), epoch: be.Uint64(h[16:]),
		length: be.Uint32(h[24:]), crc: be.Uint32(h[28:]),
	}, nil
}
