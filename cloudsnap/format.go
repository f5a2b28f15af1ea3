package cloudsnap

import (
	"cmp"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/crypto/argon2"

	"github.com/cairn-storage/cairn/engine"
)

// Errors. Callers test them with errors.Is; messages name the backup and
// the object involved.
var (
	ErrNotFound        = errors.New("cloudsnap: not found")
	ErrCorrupt         = errors.New("cloudsnap: corrupt backup")
	ErrWrongPassphrase = errors.New("cloudsnap: wrong encryption passphrase")
	ErrStore           = errors.New("cloudsnap: object store")
	ErrInvalid         = errors.New("cloudsnap: invalid argument")
	// ErrConflict: work in the bucket that ran at the same time undid this
	// one's (a backup's base deleted, or its upload swept, while it ran).
	ErrConflict = errors.New("cloudsnap: conflict")
)

// Part of the bucket format — do not change.
const (
	// FormatVersion is the newest manifest format this cairn reads and
	// writes (package doc). Format 2 is format 1 plus raw frames
	// (Frame.Raw); a manifest naming none is written as format 1, which
	// every cairn reads. Readers refuse a format newer than theirs.
	FormatVersion   = 2
	formatRawFrames = 2 // the first format with raw frames
	rootPrefix      = "cairn-cloudsnap/v1/"
	manifestName    = "manifest.json"
	// pendingName: the manifest as a backup stores it before its checks
	// (package doc, "Concurrent deletes"); never listed.
	pendingName = "manifest.pending"
	// sweptName: the mark a sweep leaves in the prefix of a backup whose
	// objects it deletes (package doc, "Concurrent deletes"). It stays
	// sweptKeep after the backup's start; a backup still running
	// maxBackupTime after its start fails.
	sweptName     = "swept"
	sweptKeep     = 30 * 24 * time.Hour
	maxBackupTime = 7 * 24 * time.Hour
	idTimeLayout  = "20060102T150405.000Z"
	// FullEvery: every FullEvery-th backup of a chain is full.
	FullEvery = 7
	// extentSize is the unit of a frame. Manifests record it; a reader
	// refuses another.
	extentSize = engine.ExtentSize
	// maxFrame bounds a frame's length (Manifest.validate): a zstd frame
	// of an incompressible extent is a little longer than the extent.
	maxFrame  = 2 * extentSize
	nonceSize = 12
	tagSize   = 16
	keyCheck  = "cairn-cloudsnap key check v1"
	// Argon2id cost (RFC 9106, second recommended option).
	argonTime    = 1
	argonMemKiB  = 64 << 10
	argonThreads = 4
)

// An extent is stored raw when zstd saves less than 1/rawBelowSaving of
// it: a raw frame restores with no decoding (and, unencrypted, no copy).
// A writer's choice, not part of the format: readers go by Frame.Raw.
const rawBelowSaving = 32

// Bounds on what a manifest read from the bucket may claim, checked before
// anything is allocated from it.
const (
	maxManifestBytes = 256 << 20
	maxVolumeSize    = int64(64) << 40
	maxObjectBytes   = 1 << 30
)

// Manifest describes one complete backup. Its JSON is the bucket format.
type Manifest struct {
	Format      int         `json:"format"`
	ID          string      `json:"id"`
	Volume      string      `json:"volume"`
	VolumeID    string      `json:"volume_id"`
	Size        int64       `json:"size"`
	ExtentSize  int64       `json:"extent_size"`
	Created     time.Time   `json:"created"`
	Full        bool        `json:"full"`
	Base        string      `json:"base,omitempty"`
	ChainIndex  int         `json:"chain_index"`
	Node        string      `json:"node,omitempty"`
	Snapshot    string      `json:"local_snapshot,omitempty"`
	Compression string      `json:"compression"`
	Encryption  *Encryption `json:"encryption,omitempty"`
	// Uploaded is the bytes this backup stored (its data objects);
	// DataBytes the volume's bytes holding data at the snapshot.
	Uploaded  int64    `json:"uploaded_bytes"`
	DataBytes int64    `json:"data_bytes"`
	Objects   []Object `json:"objects"`
	Extents   []Frame  `json:"extents"`
}

// Object is one data object a manifest names.
type Object struct {
	Key    string `json:"key"`
	Size   int64  `json:"size"`
	XXH64  uint64 `json:"xxh64"`
	Frames int    `json:"frames"`
}

// Frame places one extent's data: extent index X, object O (index into
// Objects), offset and length of its frame in the object. Raw (format 2):
// the frame holds the extent's bytes as they are, not a zstd frame.
type Frame struct {
	X   int64 `json:"x"`
	O   int   `json:"o"`
	Off int64 `json:"off"`
	Len int64 `json:"len"`
	Raw bool  `json:"raw,omitempty"`
}

// Encryption is how a manifest's frames are sealed.
type Encryption struct {
	Cipher    string `json:"cipher"` // "aes-256-gcm"
	KDF       string `json:"kdf"`    // "argon2id"
	Salt      []byte `json:"salt"`
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	Check     []byte `json:"check"` // nonce ‖ GCM(keyCheck)
}

func volumePrefix(volumeID string) string { return rootPrefix + volumeID + "/" }

func backupPrefix(id string) (string, error) {
	vol, _, ok := strings.Cut(id, "-")
	if !ok || len(vol) != 16 || strings.ContainsAny(id, "/\x00") || len(id) > 64 {
		return "", fmt.Errorf("%w: %q is not a cloudsnap id (VOLUMEID-TIME, as cloudsnap list shows)", ErrInvalid, id)
	}
	return volumePrefix(vol) + id + "/", nil
}

func manifestKey(id string) (string, error) {
	p, err := backupPrefix(id)
	return p + manifestName, err
}

// NewID names a backup of volume volumeID taken at t.
func NewID(volumeID string, t time.Time) string {
	return volumeID + "-" + t.UTC().Format(idTimeLayout)
}

// decodeManifest parses and checks a manifest read from key.
func decodeManifest(key string, raw []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest %s: %v", ErrCorrupt, key, err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("%w: manifest %s: %v", ErrCorrupt, key, err)
	}
	return &m, nil
}

func (m *Manifest) check() error {
	switch {
	case m.Format < 1 || m.Format > FormatVersion:
		return fmt.Errorf("format %d (this cairn reads formats 1 to %d)", m.Format, FormatVersion)
	case m.ExtentSize != extentSize:
		return fmt.Errorf("extent size %d (want %d)", m.ExtentSize, extentSize)
	case m.Size <= 0 || m.Size > maxVolumeSize || m.Size%engine.BlockSize != 0:
		return fmt.Errorf("volume size %d", m.Size)
	case m.Compression != "zstd":
		return fmt.Errorf("compression %q", m.Compression)
	}
	if e := m.Encryption; e != nil {
		if e.Cipher != "aes-256-gcm" || e.KDF != "argon2id" || len(e.Salt) < 16 || e.Time == 0 || e.Time > 16 ||
			e.MemoryKiB == 0 || e.MemoryKiB > 1<<20 || e.Threads == 0 || len(e.Check) != nonceSize+len(keyCheck)+tagSize {
			return fmt.Errorf("encryption parameters %s/%s not readable", e.Cipher, e.KDF)
		}
	}
	// Objects live under their own volume's prefix: a manifest naming
	// another volume's objects (written by hand, or hostile) would have
	// Delete remove what that volume's backups need.
	own := volumePrefix(m.VolumeID)
	for i, o := range m.Objects {
		if o.Size < 0 || o.Size > maxObjectBytes || len(m.VolumeID) != 16 || !strings.HasPrefix(o.Key, own) {
			return fmt.Errorf("object %d (%q): bad entry", i, o.Key)
		}
	}
	exts := (m.Size + extentSize - 1) / extentSize
	last := int64(-1)
	for _, f := range m.Extents {
		if f.X <= last || f.X >= exts || f.O < 0 || f.O >= len(m.Objects) || f.Off < 0 || f.Len <= 0 ||
			f.Len > maxFrame || f.Off+f.Len > m.Objects[f.O].Size {
			return fmt.Errorf("extent entry %+v out of range", f)
		}
		switch {
		case f.Raw && m.Format < formatRawFrames:
			return fmt.Errorf("extent entry %+v: raw frame in a format %d manifest (raw frames are format %d)", f, m.Format, formatRawFrames)
		case f.Raw && f.Len != m.rawLen(f.X):
			return fmt.Errorf("extent entry %+v: raw frame of %d bytes (want %d)", f, f.Len, m.rawLen(f.X))
		}
		last = f.X
	}
	return nil
}

// extentLen is the length of extent x: extentSize, less at the end of the
// volume.
func (m *Manifest) extentLen(x int64) int64 { return min(extentSize, m.Size-x*extentSize) }

// rawLen is the length of extent x's frame when it is raw.
func (m *Manifest) rawLen(x int64) int64 {
	if m.Encryption != nil {
		return nonceSize + m.extentLen(x) + tagSize
	}
	return m.extentLen(x)
}

// formatFor is the format a manifest with frames fs is written in: the
// oldest that can say what they are.
func formatFor(fs []Frame) int {
	for _, f := range fs {
		if f.Raw {
			return formatRawFrames
		}
	}
	return 1
}

// keyCache keeps derived keys: argon2id costs 64 MiB and a fraction of a
// second, and a chain's backups share one salt.
var keyCache sync.Map // string(passphrase ‖ 0 ‖ salt ‖ params) → []byte

func deriveKey(passphrase string, e *Encryption) []byte {
	ck := fmt.Sprintf("%s\x00%x\x00%d/%d/%d", passphrase, e.Salt, e.Time, e.MemoryKiB, e.Threads)
	if k, ok := keyCache.Load(ck); ok {
		return k.([]byte)
	}
	k := argon2.IDKey([]byte(passphrase), e.Salt, e.Time, e.MemoryKiB, e.Threads, 32)
	keyCache.Store(ck, k)
	return k
}

// newEncryption starts a chain's encryption: a fresh salt and key check.
func newEncryption(passphrase string) (*Encryption, cipher.AEAD, error) {
	e := &Encryption{Cipher: "aes-256-gcm", KDF: "argon2id", Salt: make([]byte, 16), Time: argonTime, MemoryKiB: argonMemKiB, Threads: argonThreads}
	if _, err := rand.Read(e.Salt); err != nil {
		return nil, nil, err
	}
	aead, err := newAEAD(deriveKey(passphrase, e))
	if err != nil {
		return nil, nil, err
	}
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, nil, err
	}
	e.Check = aead.Seal(nonce, nonce, []byte(keyCheck), nil)
	return e, aead, nil
}

// openEncryption returns the cipher of a manifest for passphrase, or
// ErrWrongPassphrase.
func openEncryption(id, passphrase string, e *Encryption) (cipher.AEAD, error) {
	if passphrase == "" {
		return nil, fmt.Errorf("%w: backup %s is encrypted and the credential has no passphrase", ErrWrongPassphrase, id)
	}
	aead, err := newAEAD(deriveKey(passphrase, e))
	if err != nil {
		return nil, err
	}
	if got, err := aead.Open(nil, e.Check[:nonceSize], e.Check[nonceSize:], nil); err != nil || string(got) != keyCheck {
		return nil, fmt.Errorf("%w for backup %s", ErrWrongPassphrase, id)
	}
	return aead, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func frameAAD(objectKey string, x int64) []byte {
	return binary.BigEndian.AppendUint64([]byte(objectKey), uint64(x))
}

// codec compresses and seals frames; one per goroutine (zstd state).
type codec struct {
	enc  *zstd.Encoder
	dec  *zstd.Decoder
	aead cipher.AEAD // nil: not encrypted
	tmp  []byte
}

func newCodec(aead cipher.AEAD) (*codec, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	// IgnoreChecksum: the frame's own xxhash (zstd's content checksum) is
	// not verified on decode. Every frame is covered already, before it is
	// decoded, by its object's xxhash64 in the manifest (and by GCM's tag
	// when encrypted); the second hash of every restored byte was 8–11% of the
	// restore workers' CPU. Backups still write it (format unchanged).
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(2*extentSize), zstd.IgnoreChecksum(true))
	if err != nil {
		return nil, err
	}
	return &codec{enc: enc, dec: dec, aead: aead}, nil
}

func (c *codec) close() { c.enc.Close(); c.dec.Close() }

// seal appends extent x's frame to dst, and reports whether it is raw: the
// extent's bytes as they are, when zstd does not shrink them enough to be
// worth decoding (random or already compressed data).
func (c *codec) seal(dst []byte, objectKey string, x int64, data []byte) ([]byte, bool, error) {
	worth := func(z []byte) bool { return len(z) <= len(data)-len(data)/rawBelowSaving }
	if c.aead == nil {
		start := len(dst)
		dst = c.enc.EncodeAll(data, dst)
		if worth(dst[start:]) {
			return dst, false, nil
		}
		return append(dst[:start], data...), true, nil
	}
	c.tmp = c.enc.EncodeAll(data, c.tmp[:0])
	payload, raw := c.tmp, false
	if !worth(c.tmp) {
		payload, raw = data, true
	}
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, false, err
	}
	dst = append(dst, nonce...)
	return c.aead.Seal(dst, nonce, payload, frameAAD(objectKey, x)), raw, nil
}

// open decodes a zstd frame into dst (whose length is the extent's).
func (c *codec) open(dst, frame []byte, objectKey string, x int64) error {
	z := frame
	if c.aead != nil {
		if len(frame) < nonceSize+tagSize {
			return fmt.Errorf("%w: object %s: extent %d: frame too short", ErrCorrupt, objectKey, x)
		}
		var err error
		c.tmp, err = c.aead.Open(c.tmp[:0], frame[:nonceSize], frame[nonceSize:], frameAAD(objectKey, x))
		if err != nil {
			return fmt.Errorf("%w: object %s: extent %d does not decrypt (damaged)", ErrCorrupt, objectKey, x)
		}
		z = c.tmp
	}
	out, err := c.dec.DecodeAll(z, dst[:0])
	if err != nil || len(out) != len(dst) || &out[0] != &dst[0] {
		return fmt.Errorf("%w: object %s: extent %d does not decompress to %d bytes", ErrCorrupt, objectKey, x, len(dst))
	}
	return nil
}

// openRaw returns the extent bytes of a raw frame (its length checked by
// Manifest.check): the frame itself, or when encrypted, decrypted in place
// in it. Either way no copy is made: the restore writes the extent into
// the volume straight from the object it read.
func (c *codec) openRaw(frame []byte, objectKey string, x int64) ([]byte, error) {
	if c.aead == nil {
		return frame, nil
	}
	ct := frame[nonceSize:]
	data, err := c.aead.Open(ct[:0], frame[:nonceSize], ct, frameAAD(objectKey, x))
	if err != nil {
		return nil, fmt.Errorf("%w: object %s: extent %d does not decrypt (damaged)", ErrCorrupt, objectKey, x)
	}
	return data, nil
}

func sortFrames(fs []Frame) {
	slices.SortFunc(fs, func(a, b Frame) int { return cmp.Compare(a.X, b.X) })
}
