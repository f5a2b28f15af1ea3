// Package cloudsnap backs up snapshots of volumes to an S3-compatible store
// and restores them, on this node or any other: the bucket alone is enough
// to list and restore every backup.
//
// # What a backup is
//
// A backup (a "cloudsnap") uploads one local snapshot of a volume. The first
// backup of a volume's chain is full: every extent the snapshot maps. Each
// later one is incremental: only the extents that changed between the
// previous backup's local snapshot and this one (engine.ChangedExtents,
// exact at 1 MiB extent granularity; holes are never uploaded, and an
// extent that reads all zeros is recorded as a hole). Every 7th backup of a
// chain is full again (as Portworx does), and so is one whose base is gone
// (its local snapshot or its manifest deleted) or whose encryption changed.
//
// Every manifest is complete on its own: it lists every data extent of the
// volume at that snapshot and the object holding it, whichever backup
// uploaded that object. So a restore reads one manifest and the objects it
// names, and deleting a backup deletes only the objects no other manifest
// of the volume names: every other backup stays restorable.
//
// # Layout in the bucket (formats 1 and 2)
//
//	cairn-cloudsnap/v1/<volume-id>/<backup-id>/data/<nnnnnn>     data objects
//	cairn-cloudsnap/v1/<volume-id>/<backup-id>/manifest.json     the manifest
//	cairn-cloudsnap/v1/<volume-id>/<backup-id>/manifest.pending  while it publishes
//	cairn-cloudsnap/v1/<volume-id>/<backup-id>/swept             a sweep's mark
//
// <volume-id> is the 16-hex-digit id of the backed-up volume (not of its
// snapshot): one chain per volume. <backup-id> is "<volume-id>-<UTC time
// 20060102T150405.000Z>", the ID operators pass to restore and delete.
// The "v1" is the version of this key layout, not of the manifest format:
// it changes only if the keys do.
//
// The manifest is written last, after every data object it names is
// stored: a backup without a manifest is incomplete, never listed and never
// restored (an interrupted upload leaves at most unreferenced data objects,
// which the daemon deletes when it can).
//
// A data object is a concatenation of frames, one per extent (1 MiB, less
// at the end of the volume). A frame holds the extent's bytes compressed as
// one zstd frame or, from format 2, raw: the extent's bytes as they are,
// when zstd would save less than 1/32 of them (random or already
// compressed data), so that a restore writes them with no decoding:
//
//	unencrypted:  | zstd frame, or the raw extent                           |
//	encrypted:    | nonce (12 B) | AES-256-GCM(zstd frame or raw extent) + tag (16 B) |
//
// A raw frame's length is the extent's (plus 28 bytes when encrypted);
// readers refuse one of any other length.
//
// The GCM additional data is the object's key followed by the extent's
// index (8 bytes, big endian), so a frame moved to another place in the
// bucket does not decrypt. The manifest gives each frame's offset and
// length in its object, and each object's size and xxhash64 (of the bytes
// as stored): a restore checks both before it decodes anything, and names
// the object that fails.
//
// The manifest is JSON (Manifest): format (1 or 2; readers refuse a
// higher one than they know), id, volume name and id, size, creation
// time, full or incremental, base (the previous backup's id), chain index
// (0 = full), compression ("zstd"),
// encryption (nil, or cipher "aes-256-gcm", KDF "argon2id" with its salt
// and cost, and a key check: a sealed constant that tells a wrong
// passphrase from a damaged object), the object table and the extent
// table (per extent: index, object, offset and length of its frame, and
// from format 2 "raw": true for a raw frame). Fields are only ever added;
// a field is never reused for another meaning.
//
// Format 2 is format 1 plus raw frames. A backup is written as format 2
// only when its manifest names a raw frame (its own, or one it keeps from
// its base), and as format 1 otherwise: backups of compressible data stay
// readable by cairns that know format 1 only, and one of those refuses a
// format 2 backup clearly instead of misreading a raw frame as zstd.
//
// # Encryption
//
// With a passphrase, the key is argon2id(passphrase, salt, 1 pass, 64 MiB,
// 4 lanes, 32 bytes) — RFC 9106's second recommended setting. argon2id
// over scrypt: it is the RFC-standard memory-hard KDF, its data-
// independent first pass resists side channels, and x/crypto has it. The
// salt (16 random bytes) is chosen by a chain's full backup and kept by its
// incrementals, so one manifest has one key. Manifests are not encrypted:
// they hold the volume's name, size and which extents hold data, not data.
//
// # Faults
//
// Every store call runs under a deadline and minio-go retries failed
// requests with backoff; a backup that still cannot store an object fails,
// deletes what it stored, and writes no manifest. What it could not delete
// (the store unreachable) is swept by SweepOrphans when the volume's next
// backup starts: objects of the volume's backups that have no manifest. A
// restore that finds a
// missing or damaged object fails naming it and deletes the volume it was
// filling.
//
// # Concurrent deletes
//
// Another node may delete objects while a backup uploads: a Delete of the
// backup's base (an operator, a schedule's pruning), or a SweepOrphans that
// takes the upload for an interrupted one (the volume moved meanwhile).
// Neither may leave a listed manifest that names a deleted object, and
// neither takes a lock (the store has none). A backup publishes in three
// steps: its manifest as "manifest.pending" (never listed, but it protects
// the objects it names as a manifest does), two checks, then
// "manifest.json" (listed from then on), then the pending one goes. The
// checks are each half of a handshake, a write then a read on either side,
// so that of two racing parties at least one sees the other — S3's strong
// read-after-write and list-after-write consistency (AWS since 2020, and
// every store cairn supports) is what makes that hold:
//
//   - Delete removes the base's manifests, then reads every manifest of the
//     volume, pending ones included, to learn which objects are still
//     named. The backup stores its pending manifest, then checks that its
//     base's manifest is still there. Either Delete sees the pending
//     manifest and keeps the objects it names, or the backup sees its base
//     gone and fails (ErrConflict; the next one is full). The read of the
//     volume's manifests is of one listing, all read: if a listed manifest
//     is gone when read, the listing is taken again, as that manifest may
//     be the base of one published since, which names the same objects.
//   - A sweep stores its mark ("swept") in the backup's prefix, then looks
//     for the backup's manifests, the pending one first (the order the
//     backup writes them in, so it cannot miss both): either there, it
//     deletes nothing. Abandon, which cleans up after a crash, marks too. The
//     backup stores its pending manifest, then checks for a mark: there,
//     the backup fails (ErrConflict) and deletes what it stored. The mark
//     stays, whatever the sweep found, until 30 days after the backup's
//     start (its id's time), and only a prefix that holds nothing else
//     loses it.
//
// A backup that has run 7 days fails before it stores its manifest
// (checkAge) rather than trust that a mark it does not see never existed; a pending manifest
// 8 days old belongs to a backup that can no longer publish it, and a
// sweep deletes it with what it names. A backup whose upload failed and
// whose cleanup could not reach the store leaves a pending manifest: never
// listed, swept after those 8 days.
package cloudsnap
