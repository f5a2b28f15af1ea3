// Package drive is the bottom of cairn's data path: a Drive is a block device
// or a file that the engine reads, writes and syncs by offset.
//
// Two implementations: File (a real block device or regular file; O_DIRECT on
// block devices, fdatasync on Sync) and Mem (an in-memory drive that remembers
// which writes were synced, so tests can simulate a crash that drops or tears
// everything else, and inject EIO by rule).
//
// Contract every implementation keeps:
//   - ReadAt sees every completed WriteAt (synced or not), like a page cache.
//   - Sync makes every write completed before Sync was called durable, or
//     returns an error; a failed Sync is never retried into success (the
//     engine treats it as fatal for the drive).
//   - The engine issues I/O in whole 4 KiB blocks at 4 KiB-aligned offsets
//     (AtomicSize); a crash leaves each such block either old or new.
package drive

import (
	"errors"
	"fmt"
)

// AtomicSize is the unit the engine writes in and the unit a crash cannot tear.
const AtomicSize = 4096

var (
	ErrIO       = errors.New("drive: I/O error")
	ErrRange    = errors.New("drive: I/O beyond the end of the drive")
	ErrUnusable = errors.New("drive: cannot be used")
)

// Drive is one raw drive. Safe for concurrent use.
type Drive interface {
	ReadAt(p []byte, off int64) error
	WriteAt(p []byte, off int64) error
	// Zero makes [off, off+n) read as zeros, like a write of zeros (durable
	// after the next Sync), using the cheapest way the drive has: a punched
	// hole in a file, BLKZEROOUT on a block device.
	Zero(off, n int64) error
	Sync() error
	Size() int64
	Path() string
	// Rotational reports what the device says about itself: used to detect
	// io_priority (NVMe high, non-rotational medium, rotational low).
	Kind() Kind
	// Cached reports whether a write returns once its data is in memory
	// (the page cache, or Mem's buffer) rather than on the device: such
	// writes are CPU work that never waits for the device.
	Cached() bool
	Close() error
}

// Kind is what a drive is, for io_priority detection.
type Kind uint8

const (
	KindFile Kind = iota
	KindNVMe
	KindSSD
	KindHDD
)

func (k Kind) String() string {
	switch k {
	case KindNVMe:
		return "nvme"
	case KindSSD:
		return "ssd"
	case KindHDD:
		return "hdd"
	}
	return "file"
}

func checkRange(d Drive, n int, off int64) error {
	if off < 0 || off+int64(n) > d.Size() {
		return fmt.Errorf("%w: %s: offset %d length %d, drive size %d", ErrRange, d.Path(), off, n, d.Size())
	}
	return nil
}
