// Package replication is synchronous replication of a volume: the wire
// protocol between a volume's coordinator and its replicas (a replica
// Server that applies pipelined requests to local engine volumes, fenced by
// epoch, and a pipelined Client the coordinator holds per replica), a fenced
// Local replica for the coordinator's own node, and the Coordinator: the
// write fan-out to the in-sync set, eviction before acknowledgement, region
// logs, resync, verify and convergence (coordinator.go has its invariants,
// resync.go the resync's). Claims and epochs in etcd are the daemon's
// (control/replicated.go).
//
// # Wire format (part of the wire protocol — do not change)
//
// Every integer is big-endian. The coordinator speaks first, once per
// connection:
//
//	C: hello, 40 bytes + names
//	 0          8         10        12        14        16                32         40
//	+----------+---------+---------+---------+---------+-----------------+----------+
//	|"CAIRNRPL"| version | flags=0 | nodelen | vol len | cluster UUID    | epoch    |
//	+----------+---------+---------+---------+---------+-----------------+----------+
//	| node id (nodelen ≤ 255) | volume (vol len ≤ 255) |
//
//	S: hello reply, 32 bytes + message
//	 0          8         10        12        16         24         32
//	+----------+---------+---------+---------+----------+----------+
//	|"CAIRNRPY"| version | status  | msglen  | epoch    | size     |  msg (msglen ≤ 1024)
//	+----------+---------+---------+---------+----------+----------+
//	status: 0 OK, 1 STALE_EPOCH, 2 WRONG_CLUSTER, 3 UNKNOWN_VOLUME,
//	        4 BAD_VERSION, 5 ERROR; anything but OK closes the connection.
//	epoch:  the replica's durable epoch once the hello was handled (on
//	        STALE_EPOCH, the one that refused it). size: the volume's bytes.
//
// Then any number of requests, each followed by its payload for WRITE:
//
//	 0        4        6        8              16             24             32       36       40
//	+--------+--------+--------+--------------+--------------+--------------+--------+--------+
//	| "CREQ" | cmd    | flags  | handle       | epoch        | offset       | length | crc32c |
//	+--------+--------+--------+--------------+--------------+--------------+--------+--------+
//	cmd:    1 WRITE (length bytes of payload follow), 2 FLUSH (offset and
//	        length 0), 3 TRIM, 4 WRITE_ZEROES, 5 READ, 6 CHECKSUM (the
//	        xxhash64 of the range, computed on the replica: 8 bytes back),
//	        7 MARK (length bytes of payload follow: an activity set that
//	        becomes the replica's activity log, durably, before the reply),
//	        8 ACTIVITY (the replica's activity log, as a set padded to
//	        length bytes); see activity.go for the set's encoding. Both
//	        have offset 0 and length ≤ 1 MiB. (Version 2 added them.)
//	flags:  FUA 1 (WRITE, TRIM, WRITE_ZEROES), NO_HOLE 2 (WRITE_ZEROES).
//	length: ≤ MaxPayload (32 MiB) for WRITE, READ and CHECKSUM; TRIM and
//	        WRITE_ZEROES name up to 4 GiB − 1 without a payload.
//	crc32c: Castagnoli CRC of a WRITE's or MARK's payload; 0 for other
//	        commands.
//
// and the replica answers each, in any order, matched by handle:
//
//	 0        4        8              16             24       28       32
//	+--------+--------+--------------+--------------+--------+--------+
//	| "CRPY" | code   | handle       | epoch        | length | crc32c |  then length bytes
//	+--------+--------+--------------+--------------+--------+--------+
//	code:   0 OK, 1 STALE_EPOCH, 2 EIO, 3 ENOSPC, 4 EINVAL.
//	epoch:  the replica's durable epoch (on STALE_EPOCH, the newer one that
//	        refused the request).
//	length: a successful READ's data, CHECKSUM's 8 bytes or ACTIVITY's
//	        set (crc32c is their CRC), or on error the message (≤ 1024
//	        bytes, crc32c 0); 0 otherwise.
//
// A handle is opaque to the replica; the Client's is a slot index and a
// generation. Malformed input — bad magic, an unknown command or flag, a
// length over its limit, a truncated header or payload, a FLUSH with a
// range, a checksum on a command without payload — closes that connection
// with one log line naming the violation (ErrProtocol); other connections
// are unaffected. Out-of-range offsets are EINVAL replies, not violations.
// A WRITE whose payload does not match its crc32c is refused with EIO and
// not applied (ErrChecksum): corrupted in flight.
//
// # Epochs and fencing
//
// Every request carries the epoch its coordinator holds (the cluster's
// fencing token, raised by an etcd transaction on each change of
// coordinator or in-sync set). A replica keeps, per volume, the highest
// epoch it has seen in a small state file (StateDir/VOLUME.epoch), and:
//   - a hello or request with a newer epoch makes that epoch durable before
//     it is applied or answered — so a new coordinator's hello fences the
//     old one at once, and a coordinator that evicted a replica moves the
//     others on with its next request;
//   - a hello with an older epoch is refused (STALE_EPOCH) and the
//     connection closed; a request with an older epoch is refused with
//     STALE_EPOCH and the replica's epoch, and not applied.
//
// The invariant, and the lock that keeps it, are written on epochState.
//
// # Concurrency (server)
//
// Each connection runs one reader (the goroutine Serve started for it), a
// fixed pool of workers (Config.Workers) and one writer, as blockdev/nbd does:
//
//	reader ──work──▶ workers ──done──▶ writer ──▶ socket
//	   ▲                                 │
//	   └──────── free request slots ◀────┘
//
// The reader decodes a header, takes a free slot (blocking when
// Config.MaxInFlight are in flight, and while the connection holds 128 MiB
// of payloads: the back-pressure), reads a WRITE payload into a pooled
// buffer and queues the slot. A worker checks the epoch and applies the
// request; the writer encodes replies into a bufio.Writer and flushes when
// no further reply is queued (yielding once first while workers still hold
// requests, so replies finishing together share a write), then returns the
// buffer to its pool and the slot to the free list. A slot belongs to one
// goroutine at a time, so its fields need no lock; nothing is allocated per
// request in steady state. A lone small WRITE — nothing in flight, nothing
// buffered behind it — is applied and answered by the reader itself
// (conn.canInline), saving two hand-offs at queue depth 1, as the NBD
// server does. On the coordinator's side, a Client's callers combine their
// requests into shared writes (Client.send).
//
// # Ordering: the coordinator's contract
//
// Requests in flight together are applied in any order, as an NBD server
// may. So the coordinator must not have two overlapping writes (WRITE,
// TRIM, WRITE_ZEROES) in flight to one replica, or replicas could apply
// them in different orders and diverge; it waits for the first's reply.
// FLUSH makes durable every write the replica completed before the FLUSH
// began, so it covers exactly the writes whose replies the coordinator had
// received when it sent the FLUSH.
//
// # The write path, the epochs and the resync (the design, with its tests)
//
// A volume with repl ≥ 2 has a spec in etcd listing its replicas, each in
// sync or out of sync, and its epoch. One node at a time serves it, its
// coordinator, claimed in etcd under the node's lease (control/replicated.go
// has the claim's rules). The coordinator sends every write to every
// in-sync replica at once and acknowledges it when all have answered; a
// replica that fails or times out leaves the in-sync set through an etcd
// transaction that raises the epoch before the write is acknowledged; a
// FLUSH is acknowledged once every in-sync replica flushed. Replicas refuse
// requests of an older epoch than the newest they have made durable.
// While a replica is out, the coordinator's region log records what it
// misses; when its node answers, a resync copies those regions only and
// the replica joins the set again (another epoch).
//
// Each rule, where it is kept, and the test that checks it with real
// daemons and real faults (cmd/cairn, three nodes):
//
//   - No write is acknowledged unless every replica of the recorded in-sync
//     set has it (Coordinator: write, settle, drop). Checked by
//     TestReplication ("replica killed mid-write", "coordinator killed
//     mid-write": every flushed block read back after the takeover) and
//     TestReplicationFaults ("partitioned from its coordinator").
//   - An eviction that cannot be recorded fails the write (drop): etcd
//     unreachable, a replica killed → the write fails
//     (TestReplicationFaults, "etcd unreachable").
//   - One coordinator at a time: a second open is refused while the first
//     lives ("a second coordinator is refused"); a new one's epoch fences
//     the old one on every replica (epochState), and the old one fences
//     itself before its lease can expire (control watchLease): its writes
//     fail ("a coordinator cut off from etcd and its replicas is replaced").
//   - Reads only from in-sync replicas (Coordinator.reader): reads during a
//     partition and after resyncs return every acknowledged write.
//   - A resync copies only what the replica misses (region logs: what was
//     written since it left, and what was unflushed on it when it left),
//     each region under the range lock, and a copy is durable on the target
//     before the log forgets it: "resync of what changed only" asserts the
//     bytes copied; "a resync whose target dies midway resumes" and `volume
//     verify` after every fault check the replicas end identical. A resync
//     interrupted by a crash of the coordinator restarts as a full copy
//     (its log does not name the writes the target was sent and may have
//     lost: "the coordinator and the target die together mid-resync"), and
//     a replica being copied never serves a read, also when no replica is
//     left in sync ("a resync whose source dies").
//   - A slow replica is evicted once, not rebuilt in a loop ("a replica
//     stopped longer than the timeout").
//   - After an unclean coordinator change the in-sync replicas converge
//     before the volume is served, comparing only the extents their
//     activity logs name, not the whole volume (Converge, activity.go; the
//     takeover test's verify and the bytes it compared). A replica that
//     fails during the convergence leaves the set with a full log.
//   - Snapshots are taken at one point of the write stream on every in-sync
//     replica (Quiesce; "a snapshot of a replicated volume").
//
// In this package the same rules are checked without daemons:
// coordinator_test.go has a test per rule on in-memory replicas, and
// sim_test.go a seeded simulation (partitions, delays, replica crashes,
// failing and stalling disks, etcd outages, coordinator takeovers with a
// zombie predecessor) whose histories are checked per block for
// linearizability, with what a flush covered surviving every crash.
//
// # Client
//
// A Client is one connection to one replica volume; see its doc for the
// goroutines, the per-request timeout (DefaultTimeout) and what a failure
// does to the connection. It dials from ClientConfig.LocalAddr (the node's
// data address) so that a partition made of nftables rules between two
// addresses cuts exactly that link.
package replication
