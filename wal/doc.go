// Package wal is cairn's write-ahead log: sector-aligned, checksummed,
// hash-chained frames in a fixed region of a drive, a replay that tells a torn
// tail from corruption, and a group committer that lets many writers share one
// fsync.
//
// # Frame format (part of the on-disk format — do not change)
//
// Every frame starts on a SectorSize boundary and is zero-padded to one:
//
//	 0       4       8      12      16              24              32
//	 +-------+---+---+-------+-------+---------------+---------------+
//	 | magic |typ|000|  len  | 0000  |    log id     |      seq      |
//	 +-------+---+---+-------+-------+---------------+---------------+
//	32              40              48              56
//	 +---------------+---------------+---------------+-------- - - ---+
//	 |  durable seq  |  prev  sum    |    checksum   | payload (len)  |
//	 +---------------+---------------+---------------+-------- - - ---+
//
// All integers little-endian. checksum = xxhash64(bytes 0..48 ‖ payload).
//   - log id names one generation of the log; frames of older generations
//     left in the region are never mistaken for live ones.
//   - seq increases by one per frame; prev sum is the checksum of the frame
//     before (the chain start's is given by the caller), so a valid but stale
//     frame after a rewritten tail does not link.
//   - durable seq: every frame with seq ≤ it had been synced before this frame
//     was written. Replay uses it to tell the two kinds of bad frame apart:
//     a bad frame at seq N followed somewhere later by a valid frame of the
//     same log that says N was durable is corruption (ErrCorrupt, with the
//     offset); otherwise the bad frame is a torn tail, and replay stops there.
//     A read error anywhere in replay stops it with that error: a frame that
//     could not be read is never taken for a torn tail.
//
// Frames are written by one Writer at a time and never overwrite a frame that
// was synced: each write starts on a fresh sector.
package wal
