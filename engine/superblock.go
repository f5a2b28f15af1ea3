package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cairn-storage/cairn/drive"
	"github.com/cespare/xxhash/v2"
)

// Drive layout (part of the on-disk format — do not change):
//
//	0        4K       8K                  8K+L            8K+2L   dataOff
//	+--------+--------+-------------------+-----------------+- - -+----------------------+
//	| super  | super  |  log area 0 (L)   |  log area 1 (L) | pad |  extents, 1 MiB each  |
//	| copy 0 | copy 1 |                   |                 |     |                      |
//	+--------+--------+-------------------+-----------------+- - -+----------------------+
//
// Every drive carries both copies of its superblock. The log areas exist on
// every drive but only the pool's drive 0 uses them: one is active (named by
// drive 0's superblock), the other receives the next checkpoint.
//
// Superblock (4096 bytes, little-endian):
//
//	0   magic "CAIRNDRV"      8   version u32        12  reserved u32
//	16  generation u64        24  drive size u64     32  log area size u64
//	40  data offset u64       48  extent count u32   52  drive index u32
//	56  pool uuid [16]        72  drive uuid [16]    88  pool number u32
//	92  io_priority u8        93  active log area u8 94  node id length u16
//	96  log id u64            104 log start seq u64  112 created (unix ns) i64
//	120 node id [≤ 128]                              4088 xxhash64 of 0..4088
const (
	superblockSize  = 4096
	formatVersion   = 1
	maxNodeIDLen    = 128
	sbChecksumOff   = superblockSize - 8
	blankProbeBytes = 64 << 10 // a drive is blank when its first 64 KiB are zero
)

var sbMagic = [8]byte{'C', 'A', 'I', 'R', 'N', 'D', 'R', 'V'}

type superblock struct {
	gen         uint64
	driveSize   int64
	logSize     int64
	dataOff     int64
	extentCount uint32
	driveIndex  uint32
	poolUUID    [16]byte
	driveUUID   [16]byte
	poolNumber  uint32
	priority    IOPriority
	activeArea  uint8
	nodeID      string
	logID       uint64
	logStartSeq uint64
	created     int64
}

var priorityCodes = []IOPriority{PriorityLow, PriorityMedium, PriorityHigh}

func priorityCode(p IOPriority) byte {
	for i, q := range priorityCodes {
		if q == p {
			return byte(i)
		}
	}
	return 0
}

func (sb *superblock) encode() []byte {
	b := drive.AlignedBuffer(superblockSize)
	copy(b[0:], sbMagic[:])
	le := binary.LittleEndian
	le.PutUint32(b[8:], formatVersion)
	le.PutUint64(b[16:], sb.gen)
	le.PutUint64(b[24:], uint64(sb.driveSize))
	le.PutUint64(b[32:], uint64(sb.logSize))
	le.PutUint64(b[40:], uint64(sb.dataOff))
	le.PutUint32(b[48:], sb.extentCount)
	le.PutUint32(b[52:], sb.driveIndex)
	copy(b[56:], sb.poolUUID[:])
	copy(b[72:], sb.driveUUID[:])
	le.PutUint32(b[88:], sb.poolNumber)
	b[92] = priorityCode(sb.priority)
	b[93] = sb.activeArea
	le.PutUint16(b[94:], uint16(len(sb.nodeID)))
	le.PutUint64(b[96:], sb.logID)
	le.PutUint64(b[104:], sb.logStartSeq)
	le.PutUint64(b[112:], uint64(sb.created))
	copy(b[120:], sb.nodeID)
	le.PutUint64(b[sbChecksumOff:], xxhash.Sum64(b[:sbChecksumOff]))
	return b
}

type sbState uint8

const (
	sbValid   sbState = iota
	sbBlank           // never formatted: safe to format
	sbForeign         // holds something that is not cairn's
	sbDamaged         // cairn's magic, but no copy passes its checksum
)

// decodeSuperblock checks one copy. It never trusts a length it has not bounded.
func decodeSuperblock(b []byte) (superblock, bool) {
	var sb superblock
	le := binary.LittleEndian
	if len(b) < superblockSize || !bytes.Equal(b[:8], sbMagic[:]) ||
		le.Uint64(b[sbChecksumOff:]) != xxhash.Sum64(b[:sbChecksumOff]) || le.Uint32(b[8:]) != formatVersion {
		return sb, false
	}
	n := int(le.Uint16(b[94:]))
	if n > maxNodeIDLen || b[92] >= byte(len(priorityCodes)) || b[93] > 1 {
		return sb, false
	}
	sb = superblock{
		gen:         le.Uint64(b[16:]),
		driveSize:   int64(le.Uint64(b[24:])),
		logSize:     int64(le.Uint64(b[32:])),
		dataOff:     int64(le.Uint64(b[40:])),
		extentCount: le.Uint32(b[48:]),
		driveIndex:  le.Uint32(b[52:]),
		poolNumber:  le.Uint32(b[88:]),
		priority:    priorityCodes[b[92]],
		activeArea:  b[93],
		logID:       le.Uint64(b[96:]),
		logStartSeq: le.Uint64(b[104:]),
		created:     int64(le.Uint64(b[112:])),
		nodeID:      string(b[120 : 120+n]),
	}
	copy(sb.poolUUID[:], b[56:72])
	copy(sb.driveUUID[:], b[72:88])
	if sb.driveSize <= 0 || sb.logSize <= 0 || sb.logSize%4096 != 0 || sb.dataOff < 2*superblockSize+2*sb.logSize ||
		sb.dataOff+int64(sb.extentCount)*ExtentSize > sb.driveSize || sb.logStartSeq == 0 {
		return sb, false
	}
	return sb, true
}

// readSuperblock returns the newest valid copy, or says why there is none.
func readSuperblock(d drive.Drive) (superblock, sbState, error) {
	buf := drive.AlignedBuffer(blankProbeBytes)
	if d.Size() < blankProbeBytes {
		return superblock{}, sbForeign, nil
	}
	if err := d.ReadAt(buf, 0); err != nil {
		return superblock{}, 0, err
	}
	var best superblock
	found, magic := false, false
	for c := 0; c < 2; c++ {
		copyBytes := buf[c*superblockSize : (c+1)*superblockSize]
		if bytes.Equal(copyBytes[:8], sbMagic[:]) {
			magic = true
		}
		if sb, ok := decodeSuperblock(copyBytes); ok && (!found || sb.gen > best.gen) {
			best, found = sb, true
		}
	}
	switch {
	case found:
		return best, sbValid, nil
	case magic:
		return superblock{}, sbDamaged, nil
	case isZero(buf):
		return superblock{}, sbBlank, nil
	}
	return superblock{}, sbForeign, nil
}

// writeSuperblock bumps the generation and writes copy 0, syncs, then copy 1,
// syncs: a crash tears at most one copy, and the other is a whole old or new one.
func writeSuperblock(d drive.Drive, sb *superblock) error {
	sb.gen++
	b := sb.encode()
	for c := int64(0); c < 2; c++ {
		if err := d.WriteAt(b, c*superblockSize); err != nil {
			return err
		}
		if err := d.Sync(); err != nil {
			return err
		}
	}
	return nil
}

// layout computes where things go on a drive of size bytes.
func layout(size, logSize int64) (dataOff int64, extents uint32, err error) {
	dataOff = (2*superblockSize + 2*logSize + ExtentSize - 1) / ExtentSize * ExtentSize
	n := (size - dataOff) / ExtentSize
	if n < minExtents {
		return 0, 0, fmt.Errorf("drive too small: %d bytes, need at least %d", size, dataOff+minExtents*ExtentSize)
	}
	if n > maxExtentsPerDrive {
		n = maxExtentsPerDrive
	}
	return dataOff, uint32(n), nil
}

// defaultLogSize sizes each log area for a drive: large enough for a pool's
// checkpoint of many such drives, small next to the drive.
func defaultLogSize(size int64) int64 {
	l := size / 256
	l = max(l, 8<<20)
	l = min(l, 256<<20)
	return l &^ (4096 - 1)
}

// placeString says where a formatted drive belongs, for refusals: pool,
// drive number and when it was formatted.
func (sb *superblock) placeString() string {
	return fmt.Sprintf("pool %d (%s), drive %d, formatted %s", sb.poolNumber, sb.priority,
		sb.driveIndex, time.Unix(0, sb.created).UTC().Format(time.RFC3339))
}
