#!/usr/bin/env bash
# bench/fuse.sh — cairn's FUSE + loop attach path against its peer, in one run.
#
# fio (libaio, direct=1) on a block device, four workloads:
#   4k randwrite QD32, 4k randread QD32, 1M seq write QD8, 1M seq read QD8
# against
#   cairn-fuse     `cairn host attach VOL --via fuse`: /dev/loopN (direct I/O)
#                  on the daemon's FUSE file
#   cairn-nbd      the same volume through cairn's NBD server (fio nbd engine,
#                  unix socket): the exporter without the kernel in between
#   nbdfuse-peer   libnbd's nbdfuse serving nbdkit's memory plugin, with
#                  losetup --direct-io=on on top: the same kernel path as
#                  cairn-fuse with a different server behind it
# Each target is 1 GiB, prefilled by a sequential write so reads hit data.
# Prints one markdown table (IOPS, MiB/s) and cairn-fuse's ratio to the peer.
#
# Usage: bench/fuse.sh [-r SECONDS] [-o FILE] [-p PROFILE]
#   -r  seconds per workload (default 15)
#   -o  also write the table to FILE
#   -p  write the cairn daemon's CPU profile (whole run) to PROFILE
# Needs root, /dev/fuse, fio, nbdkit, nbdfuse, losetup, jq (`make deps`).
set -euo pipefail

RUNTIME=15
OUT=""
PROFILE=""
while getopts "r:o:p:h" opt; do
	case $opt in
	r) RUNTIME=$OPTARG ;;
	o) OUT=$OPTARG ;;
	p) PROFILE=$OPTARG ;;
	*) sed -n '2,22p' "$0"; exit 2 ;;
	esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-/usr/local/go/bin/go}
for tool in fio jq nbdkit nbdfuse losetup fusermount3; do
	command -v $tool >/dev/null || { echo "fuse.sh: $tool missing (run make deps)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "fuse.sh: needs root (FUSE mounts, loop devices)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cairn-fusebench.XXXXXX")
CAIRN_PID="" NBDKIT_PID="" NBDFUSE_PID="" PEER_LOOP="" CAIRN_API=""
cleanup() {
	set +e
	[ -n "$PEER_LOOP" ] && losetup -d "$PEER_LOOP"
	if [ -n "$NBDFUSE_PID" ]; then
		fusermount3 -u "$WORK/peer" 2>/dev/null || umount -l "$WORK/peer" 2>/dev/null
		wait "$NBDFUSE_PID" 2>/dev/null
	fi
	[ -n "$NBDKIT_PID" ] && kill "$NBDKIT_PID" 2>/dev/null && wait "$NBDKIT_PID" 2>/dev/null
	if [ -n "$CAIRN_PID" ]; then
		# SIGTERM: the daemon detaches its loop device and unmounts FUSE.
		kill -TERM "$CAIRN_PID" 2>/dev/null && wait "$CAIRN_PID" 2>/dev/null
	fi
	mountpoint -q "$WORK/cairn/fuse" 2>/dev/null && umount -l "$WORK/cairn/fuse"
	[ -n "${KEEP:-}" ] || rm -rf "$WORK"
	[ -n "${KEEP:-}" ] && echo "kept $WORK" >&2
	true
}
trap cleanup EXIT INT TERM

log() { echo "[$(date +%T)] $*" >&2; }

WORKLOADS="randwrite-4k randread-4k write-1M read-1M"
wl_args() {
	case $1 in
	randwrite-4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
	randread-4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
	write-1M) echo "--rw=write --bs=1M --iodepth=8" ;;
	read-1M) echo "--rw=read --bs=1M --iodepth=8" ;;
	esac
}

declare -A IOPS BW
# run_fio TARGET WORKLOAD fio-target-args...
run_fio() {
	local target=$1 wl=$2; shift 2
	local json
	# shellcheck disable=SC2046
	fio --name="$target-$wl" "$@" $(wl_args "$wl") --size=1G --time_based --runtime="$RUNTIME" \
		--ramp_time=2 --numjobs=1 --group_reporting --output-format=json --output="$WORK/fio.json" >/dev/null
	json=$(cat "$WORK/fio.json")
	local kind=read
	case $wl in *write*) kind=write ;; esac
	IOPS[$target,$wl]=$(jq -r ".jobs[0].$kind.iops | floor" <<<"$json")
	BW[$target,$wl]=$(jq -r ".jobs[0].$kind.bw_bytes / 1048576 | floor" <<<"$json")
	log "$target $wl: ${IOPS[$target,$wl]} IOPS, ${BW[$target,$wl]} MiB/s"
}

prefill() { fio --name=prefill "$@" --rw=write --bs=1M --iodepth=8 --size=1G --output-format=terse >/dev/null; }

# --- cairn ---------------------------------------------------------------
log "building cairn"
(cd "$ROOT" && $GO build -o "$WORK/cairn-bin" ./cmd/cairn)
mkdir -p "$WORK/cairn"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
CAIRN_API=127.0.0.1:$PORT
prof=()
[ -n "$PROFILE" ] && prof=(--cpu-profile "$PROFILE")
"$WORK/cairn-bin" daemon --data-dir "$WORK/cairn" --api "$CAIRN_API" --nbd 127.0.0.1:0 \
	--kvdb-listen 127.0.0.1:0 --kvdb-peer 127.0.0.1:0 --repl-listen 127.0.0.1:0 --default-drive-size 8G "${prof[@]}" >"$WORK/cairn.log" 2>&1 &
CAIRN_PID=$!
for _ in $(seq 100); do grep -q "cairn daemon ready" "$WORK/cairn.log" && break; sleep 0.1; done
cairn() { "$WORK/cairn-bin" --host "$CAIRN_API" "$@"; }
cairn volume create bench --size 1G >/dev/null
DEV=$(cairn host attach bench --via fuse)
log "cairn-fuse: $DEV on $WORK/cairn/fuse/bench (dio=$(cat /sys/block/$(basename "$DEV")/loop/dio))"
prefill --filename="$DEV" --ioengine=libaio --direct=1
for wl in $WORKLOADS; do run_fio cairn-fuse "$wl" --filename="$DEV" --ioengine=libaio --direct=1; done
cairn host detach bench >/dev/null
SOCK="$WORK/cairn/nbd.sock"
for wl in $WORKLOADS; do run_fio cairn-nbd "$wl" --ioengine=nbd --uri="nbd+unix:///bench?socket=$SOCK"; done
kill -TERM "$CAIRN_PID"; wait "$CAIRN_PID" || true; CAIRN_PID=""

# --- peer: nbdkit memory behind nbdfuse, loop device on top ----------------
mkdir -p "$WORK/peer"
nbdkit -f -U "$WORK/nbdkit.sock" memory 1G &
NBDKIT_PID=$!
for _ in $(seq 100); do [ -S "$WORK/nbdkit.sock" ] && break; sleep 0.1; done
nbdfuse "$WORK/peer/disk" --unix "$WORK/nbdkit.sock" &
NBDFUSE_PID=$!
for _ in $(seq 100); do [ -e "$WORK/peer/disk" ] && break; sleep 0.1; done
PEER_LOOP=$(losetup --direct-io=on --find --show "$WORK/peer/disk")
log "nbdfuse-peer: $PEER_LOOP on $WORK/peer/disk (dio=$(cat /sys/block/$(basename "$PEER_LOOP")/loop/dio))"
prefill --filename="$PEER_LOOP" --ioengine=libaio --direct=1
for wl in $WORKLOADS; do run_fio nbdfuse-peer "$wl" --filename="$PEER_LOOP" --ioengine=libaio --direct=1; done

# --- table ---------------------------------------------------------------
table() {
	echo "| workload (fio libaio, direct=1) | cairn-fuse (/dev/loop) | cairn-nbd (fio nbd engine) | nbdfuse + nbdkit memory (/dev/loop) | cairn-fuse / peer |"
	echo "| --- | --- | --- | --- | --- |"
	for wl in $WORKLOADS; do
		local unit=IOPS a b c
		case $wl in *-1M) unit="MiB/s" ;; esac
		if [ "$unit" = IOPS ]; then a=${IOPS[cairn-fuse,$wl]} b=${IOPS[cairn-nbd,$wl]} c=${IOPS[nbdfuse-peer,$wl]}
		else a=${BW[cairn-fuse,$wl]} b=${BW[cairn-nbd,$wl]} c=${BW[nbdfuse-peer,$wl]}; fi
		local qd=32; case $wl in *-1M) qd=8 ;; esac
		printf "| %s QD%s | %s %s | %s %s | %s %s | %.2f× |\n" "$wl" "$qd" "$a" "$unit" "$b" "$unit" "$c" "$unit" \
			"$(echo "$a / $c" | bc -l)"
	done
}
table | tee ${OUT:+"$OUT"}
