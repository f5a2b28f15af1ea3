#!/usr/bin/env bash
# bench/snapshot.sh — the cost of snapshots on the NBD path.
#
# fio's nbd engine over the unix socket drives cairn daemons built from this
# checkout (sparse 32 GiB file drive each, in the work dir).
#
# write: one daemon. 4k randwrite QD32 on a 1 GiB prefilled volume without
#        any snapshot, then right after a snapshot of it (every extent shared:
#        the first write to each 1 MiB extent copies it); a long and a short
#        run each. The page cache is dropped before each run (when root).
#
# read:  4k randread QD32 on a 1 GiB volume, three arms, each its own daemon
#        and data dir, all prefilled with a sequential 1M write and given the
#        same 64 × 128 random 4k writes:
#          none     never a snapshot
#          snaps    a snapshot after each 128 writes: 64 snapshots
#          deleted  like snaps, then its 64 snapshots deleted (the same
#                   layout, scattered by the copies, without snapshots)
#        Every measurement starts its arm's daemon afresh, with no other
#        cairn daemon running, and sets the cache state explicitly:
#          cold  caches dropped after the start. A restart is needed: the
#                daemon maps its drive file to read it, and drop_caches
#                cannot evict pages a process has mapped, so without one a
#                "dropped" measurement is as warm as the previous run left it.
#          warm  after one sequential read of the whole volume.
#        The arms alternate (none snaps deleted, then the reverse, ...) for
#        ROUNDS rounds, so slow spells of a shared machine fall on all of
#        them; the table shows each arm's median and the ratios of medians,
#        and every run is printed below it.
#
# cliff: the write cliff after a snapshot (issue 17), per second. Two
#        workloads, each on its own daemon (sparse 64 GiB drive) and a VOLSIZE
#        (4 GiB) volume prefilled with a sequential 1M write and fsynced:
#          qd32   4k randwrite QD32
#          qd1    4k randwrite QD1 with fsync=1 (a flush after every write)
#        Each runs three cases: the 1st, the 2nd and the 64th snapshot of the
#        volume. Snapshots 3-63 are taken between the 2nd and the 64th case,
#        each after 128 random 4k writes (fio --number_ios=128, QD32), about
#        0.2 s apart. Before each case one 4k write into every 1 MiB extent
#        (fio zonemode=strided) makes every extent private again, so the
#        time before the snapshot is the steady state. A case is one fio run
#        of WARM (2) + BEFORE (10) + AFTER (20) + 2 seconds; the snapshot is
#        created WARM+BEFORE seconds in (its creation time T0 is the origin).
#        fio logs every write (completion time, latency, offset), so each
#        1 s window's IOPS and p99 are exact; a sampler reads the pool's used
#        bytes (cairn status -j) every 0.5 s. Per case a table, window by
#        window, of IOPS, its ratio to the mean of the BEFORE windows, p99,
#        pool bytes used since T0 and bytes changed since T0 (distinct 4 KiB
#        blocks written × 4 KiB), and the issue's three targets:
#          IOPS   every window after T0 ≥ 0.5× the mean before
#          p99    every window after T0 ≤ 5× the p99 of all writes before
#          space  used since T0 ≤ 2 × changed since T0 + 1 MiB × QD (one
#                 extent in flight per outstanding write), at every window
#        For qd1 the latency is the write's alone (fio logs no fsync
#        latencies); the fsync is in the IOPS (a write/fsync pair per I/O).
#        -o DIR keeps the raw logs (fio's per-write logs, used-bytes samples,
#        daemon logs). CAIRN_BIN=FILE runs that binary instead of building
#        this checkout; CAIRN_DAEMON_ARGS adds daemon flags (e.g.
#        "--cpu-profile /tmp/cpu.pprof").
#        -D SIZE runs every daemon on a block device drive instead of the
#        sparse file: a loop device with direct I/O over a SIZE file in the
#        work dir, written whole with zeros first (so that no write to it
#        allocates in the file system below, as on a real drive); its first
#        16 MiB are wiped before each daemon. (Needs root and losetup.)
#        -Z SIZE does the same on /dev/zram0 set to SIZE: a block device with
#        no file system below it (compressed RAM), so a write into a fresh
#        extent costs what an overwrite costs, and flushes cost nothing: the
#        engine's own share of a cliff. (Needs root and the zram module.)
#
# Prints markdown tables.
#
# Usage: bench/snapshot.sh [-r SECONDS] [-s SHORT_SECONDS] [-n ROUNDS]
#                          [-V VOLSIZE] [-B BEFORE] [-A AFTER] [-o DIR]
#                          [-w "qd32 qd1"] [-c "1 2 64"] [-D SIZE | -Z SIZE] [all|write|read|cliff]
# (default all: write then read, as before issue 17; cliff runs alone)
set -euo pipefail

RUNTIME=10
SHORT=2
ROUNDS=3
VOLSIZE=4G
BEFORE=10
AFTER=20
WARM=2
KEEP=""
WORKLOADS="qd32 qd1"
CASES="1 2 64"
BDEV_SIZE=""
ZRAM_SIZE=""
while getopts "r:s:n:V:B:A:o:w:c:D:Z:h" opt; do
	case $opt in
	r) RUNTIME=$OPTARG ;;
	s) SHORT=$OPTARG ;;
	n) ROUNDS=$OPTARG ;;
	V) VOLSIZE=$OPTARG ;;
	B) BEFORE=$OPTARG ;;
	A) AFTER=$OPTARG ;;
	o) KEEP=$OPTARG ;;
	w) WORKLOADS=$OPTARG ;;
	c) CASES=$OPTARG ;;
	D) BDEV_SIZE=$OPTARG ;;
	Z) ZRAM_SIZE=$OPTARG ;;
	*) sed -n '2,76p' "$0"; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
MODE=${1:-all}
case $MODE in
all | write | read | cliff) ;;
*) echo "snapshot.sh: unknown mode $MODE (all, write, read, cliff)" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-/usr/local/go/bin/go}
for tool in fio jq; do
	command -v $tool >/dev/null || { echo "snapshot.sh: $tool missing (run make deps)" >&2; exit 1; }
done
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cairn-snapbench.XXXXXX")
PID=""
SAMPLER=""
FIOPID=""
LOOPDEV=""
BDEV="" # the block device drive (-D, -Z)
stop_daemon() {
	if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
	PID=""
}
stop_sampler() {
	if [ -n "$SAMPLER" ]; then kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; fi
	SAMPLER=""
}
cleanup() {
	if [ -n "$FIOPID" ]; then kill "$FIOPID" 2>/dev/null || true; wait "$FIOPID" 2>/dev/null || true; fi
	stop_sampler
	stop_daemon
	if [ -n "$LOOPDEV" ]; then losetup -d "$LOOPDEV" 2>/dev/null || true; fi
	if [ -n "$ZRAM_SIZE" ]; then echo 1 >/sys/block/zram0/reset 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
log() { echo "[$(date +%T)] $*" >&2; }

CAIRN=$WORK/cairn
if [ -n "${CAIRN_BIN:-}" ]; then
	cp "$CAIRN_BIN" "$CAIRN"
else
	(cd "$ROOT" && $GO build -o "$CAIRN" ./cmd/cairn)
fi
DRIVE_SIZE=32G
DRIVE_ARGS=""
if [ -n "$BDEV_SIZE" ]; then
	log "writing a $BDEV_SIZE backing file for the block device drive"
	bytes=$(numfmt --from=iec "$BDEV_SIZE")
	dd if=/dev/zero of="$WORK/bdev.img" bs=16M count=$((bytes / (16 << 20))) oflag=direct status=none
	LOOPDEV=$(losetup --direct-io=on -f --show "$WORK/bdev.img")
	DRIVE_ARGS="-s $LOOPDEV"
	BDEV=$LOOPDEV
	log "block device drive $LOOPDEV"
elif [ -n "$ZRAM_SIZE" ]; then
	[ -w /sys/block/zram0/disksize ] || { echo "snapshot.sh: -Z needs /dev/zram0 and root" >&2; exit 1; }
	echo 1 >/sys/block/zram0/reset
	echo "$ZRAM_SIZE" >/sys/block/zram0/disksize
	BDEV=/dev/zram0
	DRIVE_ARGS="-s $BDEV"
	log "block device drive $BDEV ($ZRAM_SIZE of compressed RAM)"
fi
# start_daemon NAME: runs a daemon on $WORK/NAME (one at a time).
start_daemon() {
	stop_daemon
	DIR=$WORK/$1
	mkdir -p "$DIR"
	if [ -n "$BDEV" ]; then dd if=/dev/zero of="$BDEV" bs=1M count=16 oflag=direct status=none; fi
	# shellcheck disable=SC2086 # CAIRN_DAEMON_ARGS is a list of flags
	# Its embedded kvdb on ports of its own (CAIRN_BIN may predate it).
	local kvdb=""
	"$CAIRN" daemon --help 2>&1 | grep -q -- --kvdb-listen && kvdb="--kvdb-listen 127.0.0.1:0 --kvdb-peer 127.0.0.1:0"
	"$CAIRN" daemon --help 2>&1 | grep -q -- --repl-listen && kvdb="$kvdb --repl-listen 127.0.0.1:0"
	# shellcheck disable=SC2086 # kvdb and CAIRN_DAEMON_ARGS are lists of flags
	"$CAIRN" daemon --data-dir "$DIR/d" --api 127.0.0.1:0 --nbd 127.0.0.1:0 --nbd-socket "$DIR/nbd.sock" \
		--default-drive-size "$DRIVE_SIZE" $kvdb $DRIVE_ARGS ${CAIRN_DAEMON_ARGS:-} >"$DIR/log" 2>&1 &
	PID=$!
	for _ in $(seq 100); do grep -q 'msg="cairn daemon ready"' "$DIR/log" 2>/dev/null && break; sleep 0.1; done
	API=$(sed -n 's/.*msg="api listening" addr=\([^ ]*\).*/\1/p' "$DIR/log")
	[ -n "$API" ] || { cat "$DIR/log" >&2; exit 1; }
}
cairn() { "$CAIRN" --host "$API" "$@"; }
uri() { echo "nbd+unix:///$1?socket=$DIR/nbd.sock"; }

drop() { sync; [ "$(id -u)" = 0 ] && echo 3 >/proc/sys/vm/drop_caches || true; }
# fio_run VOLUME RW SECONDS: IOPS of a 4k QD32 time-based run.
fio_run() {
	fio --name="$2" --ioengine=nbd --uri="$(uri "$1")" --rw="$2" --bs=4k --iodepth=32 --size=1G \
		--time_based --runtime="$3" --output-format=json --output="$WORK/fio.json" >/dev/null
	jq -r "(.jobs[0].read.iops + .jobs[0].write.iops) | floor" "$WORK/fio.json"
}
fio_iops() { drop; fio_run "$@"; }
prefill() {
	fio --name=prefill --ioengine=nbd --uri="$(uri "$1")" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null
}
seqread() {
	fio --name=warm --ioengine=nbd --uri="$(uri "$1")" --rw=read --bs=1M --iodepth=8 --size=1G >/dev/null
}

if [ "$MODE" = cliff ]; then
	# shellcheck source=bench/snapshot-cliff.sh
	. "$ROOT/bench/snapshot-cliff.sh"
	exit 0
fi

if [ "$MODE" = all ] || [ "$MODE" = write ]; then
# Writes.
start_daemon write
cairn volume create w --size 1G >/dev/null
prefill w
log "write: no snapshot (${RUNTIME}s)"; w_base=$(fio_iops w randwrite "$RUNTIME")
cairn volume snapshot create w --name w.s1 >/dev/null
log "write: right after a snapshot (${RUNTIME}s)"; w_snap=$(fio_iops w randwrite "$RUNTIME")
cairn volume snapshot delete w.s1 >/dev/null
log "write: no snapshot (${SHORT}s)"; w_base_s=$(fio_iops w randwrite "$SHORT")
cairn volume snapshot create w --name w.s2 >/dev/null
log "write: right after a snapshot (${SHORT}s)"; w_snap_s=$(fio_iops w randwrite "$SHORT")
cairn volume snapshot delete w.s2 >/dev/null
stop_daemon
fi

if [ "$MODE" = all ] || [ "$MODE" = read ]; then

# Reads: set up the three arms.
ARMS="none snaps deleted"
for arm in $ARMS; do
	log "read: setting up arm $arm"
	start_daemon "$arm"
	cairn volume create r --size 1G >/dev/null
	prefill r
	for i in $(seq 64); do
		fio --name=churn --ioengine=nbd --uri="$(uri r)" --rw=randwrite --bs=4k --iodepth=32 --size=1G \
			--number_ios=128 --randseed="$i" >/dev/null
		[ "$arm" = none ] || cairn volume snapshot create r --name "r.s$i" >/dev/null
	done
	if [ "$arm" = deleted ]; then
		for i in $(seq 64); do cairn volume snapshot delete "r.s$i" >/dev/null; done
	fi
	n=$(cairn volume snapshot list r --json | jq 'length')
	want=64; [ "$arm" = snaps ] || want=0
	[ "$n" = "$want" ] || { echo "snapshot.sh: arm $arm has $n snapshots, want $want" >&2; exit 1; }
	stop_daemon
done

# measure ARM STATE: one randread run on a fresh daemon; appends to RES_<STATE>_<ARM>.
measure() {
	start_daemon "$1"
	case $2 in
	cold) drop ;;
	warm) seqread r ;;
	esac
	log "read: $2, arm $1 (${RUNTIME}s)"
	local iops
	iops=$(fio_run r randread "$RUNTIME")
	stop_daemon
	eval "RES_$2_$1=\"\${RES_$2_$1:-} $iops\""
}
order=$ARMS
reverse() { local out=""; for a in $1; do out="$a $out"; done; echo $out; }
for _ in $(seq "$ROUNDS"); do
	for state in cold warm; do
		for arm in $order; do measure "$arm" "$state"; done
	done
	order=$(reverse "$order")
done
fi

median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END { if (NR % 2) print v[(NR+1)/2]; else print int((v[NR/2]+v[NR/2+1])/2) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
res() { eval "echo \${RES_$1_$2}"; }

echo "bench/snapshot.sh -r $RUNTIME -s $SHORT -n $ROUNDS — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
echo
echo "| workload (fio nbd, 4k, QD32) | without snapshots | with | ratio |"
echo "|---|---:|---:|---:|"
if [ "$MODE" = all ] || [ "$MODE" = write ]; then
	echo "| randwrite ${RUNTIME}s, right after a snapshot | $w_base | $w_snap | $(ratio "$w_snap" "$w_base") |"
	echo "| randwrite ${SHORT}s, right after a snapshot | $w_base_s | $w_snap_s | $(ratio "$w_snap_s" "$w_base_s") |"
fi
[ "$MODE" = write ] && exit 0
for state in cold warm; do
	none=$(res "$state" none | median)
	snaps=$(res "$state" snaps | median)
	deleted=$(res "$state" deleted | median)
	echo "| randread ${RUNTIME}s $state, 64 snapshots (median of $ROUNDS) | $none | $snaps | $(ratio "$snaps" "$none") |"
	echo "| randread ${RUNTIME}s $state, 64 snapshots vs the same volume after deleting them | $deleted | $snaps | $(ratio "$snaps" "$deleted") |"
done
echo
echo "| randread ${RUNTIME}s, every run (IOPS, in order) | none | snaps | deleted |"
echo "|---|---|---|---|"
for state in cold warm; do
	echo "| $state | $(res "$state" none) | $(res "$state" snaps) | $(res "$state" deleted) |"
done
