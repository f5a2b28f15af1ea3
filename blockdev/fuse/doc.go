// Package fuse exports cairn volumes as files of a FUSE filesystem, so that
// a loop device (losetup --direct-io=on) turns each one into /dev/loopN.
//
// One Server is one mount: a flat, fixed directory in which every exported
// volume is a regular file of the volume's size, named after the volume.
// Files are not created, removed or renamed through the filesystem; the
// daemon adds and removes them (Server.Add, Server.Remove) as volumes are
// attached and detached.
//
//	/var/lib/cairn/fuse/          (mode 0700, root)
//	├── db          (0600, size = volume size)  ──▶ losetup ──▶ /dev/loop0
//	└── scratch     (0600)                      ──▶ losetup ──▶ /dev/loop1
//
// # Data path
//
// The kernel sends READ and WRITE requests of up to Config.MaxWrite bytes
// (1 MiB by default: FUSE_MAX_PAGES) and many at once: the files are opened
// with FOPEN_DIRECT_IO and FOPEN_PARALLEL_DIRECT_WRITES (no page cache in
// the FUSE layer, no inode lock around writes) and the mount asks for
// ASYNC_DIO, so the loop device's asynchronous direct I/O arrives as
// parallel requests. Each request is served on the goroutine go-fuse handed
// it to, straight into or out of the request buffer: one copy between the
// kernel and the engine, no allocation (read results are pooled).
//
// Mapping of operations (loop device → FUSE → engine):
//
//	READ                          → Volume.ReadAt      (short at end of file)
//	WRITE                         → Volume.WriteAt     (fua when the handle is O_SYNC/O_DSYNC)
//	FSYNC, FSYNCDIR               → Volume.Flush       (REQ_PREFLUSH; a FUA bio becomes write + flush)
//	FALLOCATE PUNCH_HOLE          → Volume.Trim        (discard, write-zeroes without NOUNMAP)
//	FALLOCATE ZERO_RANGE          → Volume.WriteZeroes (noHole: write-zeroes with NOUNMAP)
//	FALLOCATE (allocate)          → EOPNOTSUPP         (thin volumes reserve nothing)
//	SETATTR size ≠ volume size    → EPERM              (resize through the API, never truncate)
//
// # Concurrency
//
// Request handlers run on many goroutines at once. The file table is a fixed
// array of atomic pointers indexed by inode number, so the data path takes
// no lock; Add and Remove serialise on Server.mu. A file's open-handle count
// is atomic; Remove waits for it to reach zero (the loop device closes the
// file asynchronously after LOOP_CLR_FD), so a removed file's volume is never
// used again once Remove returns.
package fuse
