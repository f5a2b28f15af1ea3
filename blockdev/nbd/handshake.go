package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cairn-storage/cairn/engine"
)

var be = binary.BigEndian

// handshake runs the fixed newstyle negotiation. It returns nil once the
// client entered transmission (c.exp, c.release, c.size, c.tflags set);
// otherwise the connection is to be closed.
func (c *conn) handshake() error {
	var greet [GreetingLen]byte
	be.PutUint64(greet[0:], MagicInit)
	be.PutUint64(greet[8:], MagicOption)
	be.PutUint16(greet[16:], FlagFixedNewstyle|FlagNoZeroes)
	if err := c.send(greet[:]); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return eofAsAbort(err)
	}
	cflags := be.Uint32(cf[:])
	if cflags&^(ClientFlagFixedNewstyle|ClientFlagNoZeroes) != 0 {
		return fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, cflags)
	}
	c.noZeroes = cflags&ClientFlagNoZeroes != 0

	var hdr [OptionHeaderLen]byte
	for range maxOptions {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return eofAsAbort(err)
		}
		if m := be.Uint64(hdr[0:]); m != MagicOption {
			return fmt.Errorf("%w: bad option magic %#x", ErrProtocol, m)
		}
		opt, length := be.Uint32(hdr[8:]), be.Uint32(hdr[12:])
		if length > maxOptionLength {
			return fmt.Errorf("%w: option %d with %d bytes of data (limit %d)", ErrProtocol, opt, length, maxOptionLength)
		}
		if cap(c.optBuf) < int(length) {
			c.optBuf = make([]byte, length)
		}
		data := c.optBuf[:length]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return fmt.Errorf("%w: truncated option %d: %w", ErrProtocol, opt, err)
		}
		done, err := c.option(opt, data)
		if err != nil || done {
			return err
		}
	}
	return fmt.Errorf("%w: more than %d options", ErrProtocol, maxOptions)
}

// eofAsAbort turns a hang-up between messages into ErrAborted (clients such
// as nbdinfo --list close after NBD_OPT_ABORT without waiting for the ACK).
func eofAsAbort(err error) error {
	if errors.Is(err, io.EOF) {
		return ErrAborted
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated message", ErrProtocol)
	}
	return err
}

// option handles one option; done is true when transmission begins.
func (c *conn) option(opt uint32, data []byte) (done bool, err error) {
	if c.shuttingDown() && opt != OptAbort {
		return false, c.optReply(opt, RepErrShutdown, "server is shutting down")
	}
	switch opt {
	case OptExportName:
		return true, c.optExportName(string(data))
	case OptAbort:
		// The client may already have hung up; the ACK is best effort.
		_ = c.optReply(opt, RepAck, "")
		return false, ErrAborted
	case OptList:
		return false, c.optList(data)
	case OptInfo, OptGo:
		return c.optInfoGo(opt, data)
	case OptStructuredReply:
		if len(data) != 0 {
			return false, c.optReply(opt, RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		if c.structured {
			return false, c.optReply(opt, RepErrInvalid, "structured replies already negotiated")
		}
		c.structured = true
		return false, c.optReply(opt, RepAck, "")
	case OptListMetaContext, OptSetMetaContext:
		return false, c.optMetaContext(opt, data)
	default:
		// STARTTLS included: this server runs in NOTLS mode.
		return false, c.optReply(opt, RepErrUnsup, fmt.Sprintf("option %d is not supported", opt))
	}
}

// optReply sends one option reply whose data is msg (an error message or
// nothing).
func (c *conn) optReply(opt, typ uint32, msg string) error {
	return c.optReplyData(opt, typ, []byte(truncate(msg, maxStringLength)))
}

func (c *conn) optReplyData(opt, typ uint32, data ...[]byte) error {
	var h [OptionReplyHeaderLen]byte
	n := 0
	for _, d := range data {
		n += len(d)
	}
	be.PutUint64(h[0:], MagicOptionReply)
	be.PutUint32(h[8:], opt)
	be.PutUint32(h[12:], typ)
	be.PutUint32(h[16:], uint32(n))
	c.bw.Write(h[:])
	for _, d := range data {
		c.bw.Write(d)
	}
	return c.bw.Flush()
}

func (c *conn) optList(data []byte) error {
	if len(data) != 0 {
		return c.optReply(OptList, RepErrInvalid, "NBD_OPT_LIST takes no data")
	}
	for _, name := range c.srv.exports.ExportNames() {
		if len(name) > maxStringLength {
			continue
		}
		var l [4]byte
		be.PutUint32(l[:], uint32(len(name)))
		if err := c.optReplyData(OptList, RepServer, l[:], []byte(name)); err != nil {
			return err
		}
	}
	return c.optReply(OptList, RepAck, "")
}

// openExport opens name and maps failures to an option reply type.
func (c *conn) openExport(name string) (Export, func(), uint32, error) {
	exp, release, err := c.srv.exports.OpenExport(name)
	switch {
	case err == nil:
		if release == nil {
			release = func() {}
		}
		return exp, release, 0, nil
	case errors.Is(err, engine.ErrNotFound):
		return nil, nil, RepErrUnknown, err
	default:
		return nil, nil, RepErrPolicy, err
	}
}

func (c *conn) optExportName(name string) error {
	exp, release, _, err := c.openExport(name)
	if err != nil {
		return fmt.Errorf("%w %q: %w", ErrUnknownExport, name, err)
	}
	c.enter(name, exp, release)
	var b [8 + 2 + ZeroPadLen]byte
	be.PutUint64(b[0:], c.size)
	be.PutUint16(b[8:], c.tflags)
	n := len(b)
	if c.noZeroes {
		n = 10
	}
	return c.send(b[:n])
}

// optInfoGo answers NBD_OPT_INFO and NBD_OPT_GO, which share their format.
func (c *conn) optInfoGo(opt uint32, data []byte) (bool, error) {
	if len(data) < 6 {
		return false, c.optReply(opt, RepErrInvalid, "option data too short")
	}
	nameLen := be.Uint32(data)
	if nameLen > uint32(len(data)-6) {
		return false, c.optReply(opt, RepErrInvalid, "name length exceeds option length")
	}
	if nameLen > maxStringLength {
		return false, c.optReply(opt, RepErrInvalid, "export name longer than 4096 bytes")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nreq := int(be.Uint16(rest))
	if len(rest)-2 != 2*nreq {
		return false, c.optReply(opt, RepErrInvalid, "information request count does not match option length")
	}
	var wantName, wantDesc bool
	for i := range nreq {
		switch be.Uint16(rest[2+2*i:]) {
		case InfoName:
			wantName = true
		case InfoDescription:
			wantDesc = true
		}
	}

	exp, release, rep, err := c.openExport(name)
	if err != nil {
		return false, c.optReply(opt, rep, err.Error())
	}
	size, tflags := uint64(exp.Size()), c.transmissionFlags(exp)

	var b [14]byte
	be.PutUint16(b[0:], InfoExport)
	be.PutUint64(b[2:], size)
	be.PutUint16(b[10:], tflags)
	err = c.optReplyData(opt, RepInfo, b[:InfoExportLen])
	// Block sizes are sent whether asked for or not: they are the defaults a
	// client may assume anyway, so a client that did not ask loses nothing.
	if err == nil {
		be.PutUint16(b[0:], InfoBlockSize)
		be.PutUint32(b[2:], blockSizeMin)
		be.PutUint32(b[6:], blockSizePreferred)
		be.PutUint32(b[10:], blockSizeMax)
		err = c.optReplyData(opt, RepInfo, b[:14])
	}
	if err == nil && wantName {
		be.PutUint16(b[0:], InfoName)
		err = c.optReplyData(opt, RepInfo, b[:2], []byte(truncate(exp.Name(), maxStringLength)))
	}
	if err == nil && wantDesc {
		be.PutUint16(b[0:], InfoDescription)
		err = c.optReplyData(opt, RepInfo, b[:2], []byte(truncate(describe(exp, size), maxStringLength)))
	}
	if err == nil {
		err = c.optReply(opt, RepAck, "")
	}
	if err != nil || opt == OptInfo {
		release()
		return false, err
	}
	c.enter(name, exp, release)
	return true, nil
}

func describe(exp Export, size uint64) string {
	ro := ""
	if exp.ReadOnly() {
		ro = ", read-only"
	}
	return fmt.Sprintf("cairn volume %s (%d bytes%s)", exp.Name(), size, ro)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// enter records the export chosen for transmission.
func (c *conn) enter(name string, exp Export, release func()) {
	c.exp, c.release = exp, release
	c.wb, _ = exp.(DeferredWriteback)
	c.sf, _ = exp.(SharedFlusher)
	c.size = uint64(exp.Size())
	c.tflags = c.transmissionFlags(exp)
	c.readOnly = exp.ReadOnly()
	// Block status is allowed only if the last SET_META_CONTEXT selected
	// base:allocation for this very export name.
	c.blockStatus = c.metaSelected && c.metaExport == name
}

func (c *conn) transmissionFlags(exp Export) uint16 {
	f := TFlagHasFlags | TFlagSendFlush | TFlagSendFUA | TFlagSendCache | TFlagCanMultiConn
	if exp.ReadOnly() {
		f |= TFlagReadOnly
	} else {
		f |= TFlagSendTrim | TFlagSendWriteZeroes | TFlagSendFastZero
	}
	if c.structured {
		f |= TFlagSendDF
	}
	return f
}

// optMetaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The only context is base:allocation; it is
// matched by its full name, and by the "base:" wildcard when listing.
func (c *conn) optMetaContext(opt uint32, data []byte) error {
	if opt == OptSetMetaContext {
		// SET replaces the selection even when it fails.
		c.metaSelected, c.metaExport = false, ""
	}
	if !c.structured {
		return c.optReply(opt, RepErrInvalid, "negotiate structured replies first")
	}
	if len(data) < 8 {
		return c.optReply(opt, RepErrInvalid, "option data too short")
	}
	nameLen := be.Uint32(data)
	if nameLen > uint32(len(data)-8) || nameLen > maxStringLength {
		return c.optReply(opt, RepErrInvalid, "bad export name length")
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	nq := be.Uint32(rest)
	rest = rest[4:]
	match := nq == 0 && opt == OptListMetaContext
	for range nq {
		if len(rest) < 4 {
			return c.optReply(opt, RepErrInvalid, "query count exceeds option length")
		}
		ql := be.Uint32(rest)
		if ql > uint32(len(rest)-4) {
			return c.optReply(opt, RepErrInvalid, "query length exceeds option length")
		}
		q := string(rest[4 : 4+ql])
		rest = rest[4+ql:]
		if q == MetaBaseAllocation || (q == metaBaseNamespace && opt == OptListMetaContext) {
			match = true
		}
	}
	if len(rest) != 0 {
		return c.optReply(opt, RepErrInvalid, "trailing bytes after queries")
	}
	_, release, rep, err := c.openExport(name)
	if err != nil {
		return c.optReply(opt, rep, err.Error())
	}
	release()
	if match {
		id := uint32(0) // LIST: reserved, SHOULD be zero
		if opt == OptSetMetaContext {
			id = metaContextID
			c.metaSelected, c.metaExport = true, name
		}
		var b [4]byte
		be.PutUint32(b[:], id)
		if err := c.optReplyData(opt, RepMetaContext, b[:], []byte(MetaBaseAllocation)); err != nil {
			return err
		}
	}
	return c.optReply(opt, RepAck, "")
}
