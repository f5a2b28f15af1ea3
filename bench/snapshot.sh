#!/usr/bin/env bash
# bench/snapshot.sh — the cost of snapshots on the NBD path, in one run.
#
# fio's nbd engine over the unix socket drives one cairn daemon (built from
# this checkout, sparse 32 GiB file drive in the work dir):
#   write: 4k randwrite QD32 on a 1 GiB prefilled volume without any snapshot,
#          then right after a snapshot of it (every extent shared: the first
#          write to each 1 MiB extent copies it); a long and a short run each
#   read:  4k randread QD32 on a 1 GiB prefilled volume without snapshots,
#          then the same volume with 64 snapshots, 2000 random 4k writes
#          between each two
# The page cache is dropped before each measurement (when root). Prints a
# markdown table with IOPS and the ratios.
#
# Usage: bench/snapshot.sh [-r SECONDS] [-s SHORT_SECONDS]
set -euo pipefail

RUNTIME=10
SHORT=2
while getopts "r:s:h" opt; do
	case $opt in
	r) RUNTIME=$OPTARG ;;
	s) SHORT=$OPTARG ;;
	*) sed -n '2,15p' "$0"; exit 2 ;;
	esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-/usr/local/go/bin/go}
for tool in fio jq; do
	command -v $tool >/dev/null || { echo "snapshot.sh: $tool missing (run make deps)" >&2; exit 1; }
done
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cairn-snapbench.XXXXXX")
PID=""
cleanup() {
	if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
log() { echo "[$(date +%T)] $*" >&2; }

CAIRN=$WORK/cairn
(cd "$ROOT" && $GO build -o "$CAIRN" ./cmd/cairn)
"$CAIRN" daemon --data-dir "$WORK/d" --api 127.0.0.1:0 --nbd 127.0.0.1:0 --nbd-socket "$WORK/nbd.sock" \
	--default-drive-size 32G >"$WORK/log" 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q 'msg="api listening"' "$WORK/log" 2>/dev/null && break; sleep 0.1; done
API=$(sed -n 's/.*msg="api listening" addr=\([^ ]*\).*/\1/p' "$WORK/log")
[ -n "$API" ] || { cat "$WORK/log" >&2; exit 1; }
cairn() { "$CAIRN" --host "$API" "$@"; }
uri() { echo "nbd+unix:///$1?socket=$WORK/nbd.sock"; }

drop() { sync; [ "$(id -u)" = 0 ] && echo 3 >/proc/sys/vm/drop_caches || true; }
# fio_iops VOLUME RW SECONDS: IOPS of a 4k QD32 time-based run.
fio_iops() {
	drop
	fio --name="$2" --ioengine=nbd --uri="$(uri "$1")" --rw="$2" --bs=4k --iodepth=32 --size=1G \
		--time_based --runtime="$3" --output-format=json --output="$WORK/fio.json" >/dev/null
	jq -r "(.jobs[0].read.iops + .jobs[0].write.iops) | floor" "$WORK/fio.json"
}
prefill() {
	fio --name=prefill --ioengine=nbd --uri="$(uri "$1")" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null
}

cairn volume create w --size 1G >/dev/null
cairn volume create r --size 1G >/dev/null
prefill w
prefill r

log "write: no snapshot (${RUNTIME}s)"; w_base=$(fio_iops w randwrite "$RUNTIME")
cairn volume snapshot create w --name w.s1 >/dev/null
log "write: right after a snapshot (${RUNTIME}s)"; w_snap=$(fio_iops w randwrite "$RUNTIME")
cairn volume snapshot delete w.s1 >/dev/null
log "write: no snapshot (${SHORT}s)"; w_base_s=$(fio_iops w randwrite "$SHORT")
cairn volume snapshot create w --name w.s2 >/dev/null
log "write: right after a snapshot (${SHORT}s)"; w_snap_s=$(fio_iops w randwrite "$SHORT")
cairn volume snapshot delete w.s2 >/dev/null

log "read: no snapshot (${RUNTIME}s)"; r_base=$(fio_iops r randread "$RUNTIME")
log "read: taking 64 snapshots, 128 random writes between each two"
for i in $(seq 64); do
	fio --name=churn --ioengine=nbd --uri="$(uri r)" --rw=randwrite --bs=4k --iodepth=32 --size=1G \
		--number_ios=128 --randseed="$i" >/dev/null
	cairn volume snapshot create r --name "r.s$i" >/dev/null
done
log "read: 64 snapshots (${RUNTIME}s)"; r_snap=$(fio_iops r randread "$RUNTIME")
# Control: the same volume (same extents, scattered by the copies) with its
# snapshots deleted, to tell the snapshots' cost from the layout's.
for i in $(seq 64); do cairn volume snapshot delete "r.s$i" >/dev/null; done
log "read: same volume, snapshots deleted (${RUNTIME}s)"; r_after=$(fio_iops r randread "$RUNTIME")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }
echo "bench/snapshot.sh -r $RUNTIME -s $SHORT — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r)"
echo
echo "| workload (fio nbd, 4k, QD32) | without snapshots | with | ratio |"
echo "|---|---:|---:|---:|"
echo "| randwrite ${RUNTIME}s, right after a snapshot | $w_base | $w_snap | $(ratio "$w_snap" "$w_base") |"
echo "| randwrite ${SHORT}s, right after a snapshot | $w_base_s | $w_snap_s | $(ratio "$w_snap_s" "$w_base_s") |"
echo "| randread ${RUNTIME}s, 64 snapshots | $r_base | $r_snap | $(ratio "$r_snap" "$r_base") |"
echo "| randread ${RUNTIME}s, 64 snapshots vs the same volume after deleting them | $r_after | $r_snap | $(ratio "$r_snap" "$r_after") |"
