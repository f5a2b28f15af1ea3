#!/usr/bin/env bash
# bench/compare.sh — cairn's NBD path against peer servers, in one run.
#
# fio's nbd engine over a unix socket drives each server in turn:
#   cairn           cairn daemon built from this checkout (real engine, sparse
#                   file drive in the work dir); CAIRN_BIN=path uses that binary
#   nbdkit-memory   nbdkit memory plugin (flush does nothing)
#   nbdkit-file     nbdkit file plugin on a raw file
#   qemu-nbd-raw    qemu-nbd raw --cache=none --aio=io_uring -t
#   qemu-nbd-qcow2  qemu-nbd qcow2, same cache/aio flags
# and fio runs directly on a raw file (io_uring, direct=1) as the disk's limit.
# Each export is 1 GiB, prefilled by a sequential write; the page cache is
# dropped before each server and written back (sync) before each workload.
# Prints one table: IOPS and MiB/s per server and cairn's ratio to each peer.
#
# Durable rows (a write waits for a flush): 4k randwrite QD32 fsync=32 (fio
# flushes after every 32 writes), 8k seq write QD1 fsync=1 (a database WAL:
# each write then an NBD flush) and 4k randwrite QD1 fsync=1. fio's nbd engine
# sends its fsync as NBD_CMD_FLUSH; on the raw file the same rows run with
# io_uring, direct=1 and an fsync (IORING_OP_FSYNC), the disk's own limit. The
# QD1 fsync=1 rows also show the p99 latency of the write and of the flush
# (fio's clat and sync latencies, µs, of the median round): one commit is a
# write and a flush.
#
# Usage: bench/compare.sh [-r SECONDS] [-s SERVERS] [-c daemon|nbdserve|mem] [-w REGEX] [-n N] [-m] [-o FILE] [-p PROFILE]
#   -r  seconds per workload (default 15)
#   -s  space-separated subset of: cairn nbdkit-memory nbdkit-file qemu-nbd-raw qemu-nbd-qcow2 raw
#       cairn-base: cairn built elsewhere (e.g. from an older commit), run the
#       same way as cairn, for an A/B in one run: the binary named by
#       BASE_CAIRN_BIN (-c daemon) or BASE_NBDSERVE (-c nbdserve|mem)
#   -w  only the workloads whose label matches this extended regex
#       (e.g. -w '^4k rand(write|read) QD(1|32)$')
#   -n  rounds: run every server N times, interleaved; the table shows the
#       median IOPS of the rounds (default 1)
#   -m  also measure each server's CPU time (µs) and context switches (cs)
#       per I/O with perf stat: less noisy than IOPS on a shared machine; and
#       the whole machine's busy CPU time per I/O (/proc/stat: fio, server,
#       kernel threads, interrupts), which says what a workload costs in all
#       (for fsync=32, per write: the flushes are part of each write's cost)
#   -c  how to run cairn: daemon (default), nbdserve (bench/cmd/nbdserve
#       on the engine), mem (nbdserve on a flat in-memory export: protocol path only);
#       CAIRN_BIN / NBDSERVE_BIN name prebuilt binaries instead of building
#       this checkout
#   -o  also write the markdown table to FILE
#   -p  with -c nbdserve|mem: write cairn's CPU profile to PROFILE
# Needs root (drop_caches), fio, nbdkit, qemu-nbd, qemu-img, jq (`make deps`).
set -euo pipefail

RUNTIME=15
SERVERS="cairn nbdkit-memory nbdkit-file qemu-nbd-raw qemu-nbd-qcow2 raw"
CAIRN_MODE=daemon
OUT=""
PROFILE=""
WFILTER=""
ROUNDS=1
CPUSTAT=""
while getopts "r:s:c:w:n:mo:p:h" opt; do
	case $opt in
	r) RUNTIME=$OPTARG ;;
	s) SERVERS=$OPTARG ;;
	c) CAIRN_MODE=$OPTARG ;;
	o) OUT=$OPTARG ;;
	p) PROFILE=$OPTARG ;;
	w) WFILTER=$OPTARG ;;
	n) ROUNDS=$OPTARG ;;
	m) CPUSTAT=1 ;;
	*) sed -n '2,46p' "$0"; exit 2 ;;
	esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE=1G
GO=${GO:-/usr/local/go/bin/go}
for tool in fio jq nbdkit qemu-nbd qemu-img nbdinfo; do
	command -v $tool >/dev/null || { echo "compare.sh: $tool missing (run make deps)" >&2; exit 1; }
done

# The work dir is on the same filesystem as the disk under test, not tmpfs.
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cairn-bench.XXXXXX")
PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	[ -n "${KEEP:-}" ] || rm -rf "$WORK"; [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2
}
trap cleanup EXIT INT TERM

log() { echo "[$(date +%T)] $*" >&2; }

drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || log "warning: cannot drop caches (not root?)"
}

# wait_nbd URI: until nbdinfo can connect (10 s).
wait_nbd() {
	for _ in $(seq 100); do
		nbdinfo --size "$1" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "compare.sh: server at $1 did not come up" >&2
	return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# stop_server: stop every process this script started for the current server.
stop_server() {
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	PIDS=()
}

# start_server NAME: starts it, sets URI (or FILE for raw).
start_server() {
	local name=$1 d="$WORK/$1"
	rm -rf "$d"
	mkdir -p "$d"
	URI="" FILE=""
	case $name in
	cairn | cairn-base)
		local mode=$CAIRN_MODE
		if [ "$name" = cairn-base ]; then
			case $mode in
			daemon) [ -n "${BASE_CAIRN_BIN:-}" ] || { echo "compare.sh: cairn-base needs BASE_CAIRN_BIN=path" >&2; exit 2; } ;;
			*) [ -n "${BASE_NBDSERVE:-}" ] || { echo "compare.sh: cairn-base needs BASE_NBDSERVE=path" >&2; exit 2; } ;;
			esac
			mode=base-$mode
		fi
		case $mode in
		daemon | base-daemon)
			# Built fresh from this checkout unless CAIRN_BIN names a binary.
			local cairn=${CAIRN_BIN:-$WORK/cairn-bin} api nbdport
			if [ "$mode" = base-daemon ]; then
				cairn=$BASE_CAIRN_BIN
			elif [ -z "${CAIRN_BIN:-}" ] && [ ! -x "$cairn" ]; then
				(cd "$ROOT" && $GO build -o "$cairn" ./cmd/cairn)
			fi
			api=$(free_port) nbdport=$(free_port)
			# Its embedded kvdb on ports of its own (the base build may predate it).
			local kvdb=()
			"$cairn" daemon --help 2>&1 | grep -q -- --kvdb-listen && kvdb=(--kvdb-listen 127.0.0.1:0 --kvdb-peer 127.0.0.1:0)
	"$cairn" daemon --help 2>&1 | grep -q -- --repl-listen && kvdb+=(--repl-listen 127.0.0.1:0)
			"$cairn" daemon --data-dir "$d" --api "127.0.0.1:$api" --nbd "127.0.0.1:$nbdport" \
				--nbd-socket "$d/nbd.sock" --default-drive-size 4G "${kvdb[@]}" >"$d/log" 2>&1 &
			PIDS+=($!)
			for _ in $(seq 100); do [ -S "$d/nbd.sock" ] && break; sleep 0.1; done
			"$cairn" --host "127.0.0.1:$api" volume create bench --size $SIZE >/dev/null
			;;
		nbdserve | mem)
			local backend=engine prof=()
			[ "$CAIRN_MODE" = mem ] && backend=mem
			[ -n "$PROFILE" ] && prof=(-cpuprofile "$PROFILE")
			# Built fresh from this checkout unless NBDSERVE_BIN names a binary.
			local nbdserve=${NBDSERVE_BIN:-$WORK/nbdserve}
			[ -x "$nbdserve" ] || (cd "$ROOT" && $GO build -o "$nbdserve" ./bench/cmd/nbdserve)
			"$nbdserve" -socket "$d/nbd.sock" -dir "$d" -size $SIZE -backend $backend "${prof[@]}" >"$d/log" 2>&1 &
			PIDS+=($!)
			;;
		base-nbdserve | base-mem)
			local backend=engine
			[ "$mode" = base-mem ] && backend=mem
			"$BASE_NBDSERVE" -socket "$d/nbd.sock" -dir "$d" -size $SIZE -backend $backend >"$d/log" 2>&1 &
			PIDS+=($!)
			;;
		*) echo "compare.sh: -c $CAIRN_MODE?" >&2; exit 2 ;;
		esac
		URI="nbd+unix:///bench?socket=$d/nbd.sock"
		;;
	nbdkit-memory)
		nbdkit -f -U "$d/nbd.sock" memory $SIZE >"$d/log" 2>&1 &
		PIDS+=($!)
		URI="nbd+unix:///?socket=$d/nbd.sock"
		;;
	nbdkit-file)
		truncate -s $SIZE "$d/disk.img"
		nbdkit -f -U "$d/nbd.sock" file "$d/disk.img" >"$d/log" 2>&1 &
		PIDS+=($!)
		URI="nbd+unix:///?socket=$d/nbd.sock"
		;;
	qemu-nbd-raw)
		truncate -s $SIZE "$d/disk.img"
		qemu-nbd -f raw --cache=none --aio=io_uring -t -x bench -k "$d/nbd.sock" "$d/disk.img" >"$d/log" 2>&1 &
		PIDS+=($!)
		URI="nbd+unix:///bench?socket=$d/nbd.sock"
		;;
	qemu-nbd-qcow2)
		qemu-img create -q -f qcow2 "$d/disk.qcow2" $SIZE
		qemu-nbd -f qcow2 --cache=none --aio=io_uring -t -x bench -k "$d/nbd.sock" "$d/disk.qcow2" >"$d/log" 2>&1 &
		PIDS+=($!)
		URI="nbd+unix:///bench?socket=$d/nbd.sock"
		;;
	raw)
		truncate -s $SIZE "$d/disk.img"
		FILE="$d/disk.img"
		;;
	esac
	if [ -n "$URI" ]; then wait_nbd "$URI"; fi
}

# machine_busy → the machine's busy CPU time so far, in clock ticks (every
# field of /proc/stat's cpu line but idle and iowait)
machine_busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }

# With -m: the server's CPU time and context switches over one fio run
# (perf stat on every process this script started for it), and the whole
# machine's busy time over it, per I/O.
cpu_start() {
	CPU_PID=""
	BUSY_START=""
	[ -n "$CPUSTAT" ] || return 0
	BUSY_START=$(machine_busy)
	[ ${#PIDS[@]} -gt 0 ] || return 0
	perf stat -x, -e task-clock,context-switches -p "$(IFS=,; echo "${PIDS[*]}")" -o "$WORK/perf.txt" 2>/dev/null &
	CPU_PID=$!
	sleep 0.2
}

# cpu_stop IOS → prints "server_cpu_us server_context_switches machine_cpu_us",
# each per I/O ("-" where not measured; nothing without -m)
cpu_stop() {
	[ -n "$BUSY_START" ] || return 0
	local busy=$(($(machine_busy) - BUSY_START)) server="- -"
	BUSY_START=""
	if [ -n "$CPU_PID" ]; then
		kill -INT "$CPU_PID" 2>/dev/null || true
		wait "$CPU_PID" 2>/dev/null || true
		CPU_PID=""
		server=$(awk -F, -v n="$1" '/task-clock/ { t = $1 } /context-switches/ { c = $1 }
			END { if (n > 0 && t > 0) printf "%.1f %.2f\n", t * 1000 / n, c / n; else print "- -" }' "$WORK/perf.txt")
	fi
	awk -v s="$server" -v b="$busy" -v n="$1" -v hz="$(getconf CLK_TCK)" \
		'BEGIN { if (n > 0) printf "%s %.1f\n", s, b * 1e6 / hz / n; else printf "%s -\n", s }'
}

# fio_run NAME RW BS QD [extra...] → prints "iops bw_bytes total_ios
# write_p99_us flush_p99_us" (flush 0 when fio sent no flushes)
fio_run() {
	local name=$1 rw=$2 bs=$3 qd=$4
	shift 4
	local target
	if [ -n "$FILE" ]; then
		target=(--ioengine=io_uring --direct=1 --filename="$FILE")
	else
		target=(--ioengine=nbd --uri="$URI")
	fi
	fio --name="$name" "${target[@]}" --rw="$rw" --bs="$bs" --iodepth="$qd" --size=$SIZE \
		--output-format=json --output="$WORK/fio.json" "$@" >"$WORK/fio.err" 2>&1 || {
		cat "$WORK/fio.err" >&2
		echo "0 0 0 0 0"
		return
	}
	local dir=write
	case $rw in *read*) dir=read ;; esac
	jq -r ".jobs[0] | .$dir as \$d | (.sync.lat_ns.percentile[\"99.000000\"] // 0) as \$f |
		\"\(\$d.iops) \(\$d.bw_bytes) \(\$d.total_ios) \((\$d.clat_ns.percentile[\"99.000000\"] // 0) / 1000) \(\$f / 1000)\"" "$WORK/fio.json"
}

# label|rw|bs|iodepth|extra fio options|p99 (show p99 latencies in the table)
WORKLOADS=(
	"4k randwrite QD32|randwrite|4k|32"
	"4k randread QD32|randread|4k|32"
	"4k randwrite QD1|randwrite|4k|1"
	"4k randread QD1|randread|4k|1"
	"1M seq write QD8|write|1M|8"
	"1M seq read QD8|read|1M|8"
	"4k randwrite QD32 fsync=32|randwrite|4k|32|--fsync=32"
	"8k seq write QD1 fsync=1 (WAL)|write|8k|1|--fsync=1|p99"
	"4k randwrite QD1 fsync=1|randwrite|4k|1|--fsync=1|p99"
)

if [ -n "$WFILTER" ]; then
	kept=()
	for w in "${WORKLOADS[@]}"; do
		if [[ ${w%%|*} =~ $WFILTER ]]; then kept+=("$w"); fi
	done
	[ ${#kept[@]} -gt 0 ] || { echo "compare.sh: no workload matches -w '$WFILTER'" >&2; exit 2; }
	WORKLOADS=("${kept[@]}")
fi

RESULTS="$WORK/results"
: >"$RESULTS"
START=$(date +%s)
for round in $(seq "$ROUNDS"); do
	for s in $SERVERS; do
		drop_caches
		log "$s: starting (round $round of $ROUNDS)"
		start_server "$s"
		log "$s: prefill ($SIZE sequential write)"
		fio_run prefill write 1M 8 >/dev/null
		for w in "${WORKLOADS[@]}"; do
			IFS='|' read -r label rw bs qd extra _ <<<"$w"
			# What the prefill and the row before left in the page cache
			# (page-cache servers: cairn, nbdkit-file) is written back now,
			# outside the measurement: otherwise this row's first flush, or
			# the kernel's flusher during it, pays for the writes another
			# row measured (a 1 GiB prefill is seconds on a slow disk).
			sync
			cpu_start
			# shellcheck disable=SC2086
			read -r iops bw ios p99w p99f < <(fio_run bench "$rw" "$bs" "$qd" --time_based --runtime="$RUNTIME" --randrepeat=0 $extra)
			read -r cpu cs mcpu < <(cpu_stop "$ios") || true
			log "$s: $label: $(printf '%.0f' "$iops") IOPS, p99 write $(printf '%.0f' "$p99w") µs${extra:+, flush $(printf '%.0f' "$p99f") µs}${cpu:+, server $cpu µs CPU and $cs context switches, machine $mcpu µs CPU per I/O}"
			printf '%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$s" "$label" "$iops" "$bw" "$cpu" "$cs" "$mcpu" "$p99w" "$p99f" >>"$RESULTS"
		done
		stop_server
	done
done

# median SERVER LABEL → "iops bw p99_write_us p99_flush_us" of the median
# round (by IOPS), then the server's CPU µs and context switches and the
# machine's CPU µs per I/O of the median round by machine CPU (-m).
median() {
	local cpu
	cpu=$(awk -F'|' -v s="$1" -v l="$2" '$1==s && $2==l && $7 != "" { print $7, $5, $6 }' "$RESULTS" |
		sort -g | awk '{ v[NR] = $2 " " $3 " " $1 } END { if (NR) print v[int((NR + 1) / 2)] }')
	awk -F'|' -v s="$1" -v l="$2" '$1==s && $2==l { print $3, $4, ($8 == "" ? 0 : $8), ($9 == "" ? 0 : $9) }' "$RESULTS" |
		sort -g | awk -v cpu="$cpu" '{ v[NR] = $0 } END { if (NR) print v[int((NR + 1) / 2)], cpu }'
}

# The table: one row per workload; per server IOPS (MiB/s); then cairn ÷ peer.
table() {
	local servers=($SERVERS)
	printf '| workload |'
	for s in "${servers[@]}"; do printf ' %s |' "$s"; done
	if [[ " $SERVERS " == *" cairn "* ]]; then
		for s in "${servers[@]}"; do [ "$s" != cairn ] && printf ' cairn ÷ %s |' "$s"; done
	fi
	echo
	printf '|---|'
	for s in "${servers[@]}"; do printf -- '---:|'; done
	if [[ " $SERVERS " == *" cairn "* ]]; then
		for s in "${servers[@]}"; do [ "$s" != cairn ] && printf -- '---:|'; done
	fi
	echo
	for w in "${WORKLOADS[@]}"; do
		local label=${w%%|*} p99=${w##*|}
		printf '| %s |' "$label"
		for s in "${servers[@]}"; do
			median "$s" "$label" | awk -v p99="$p99" '{ printf " %.0f IOPS (%.0f MiB/s", $1, $2/1048576
				if (p99 == "p99") printf "; p99 write %.0f µs, flush %.0f µs", $3, $4
				if ($5 != "" && $5 != "-") printf "; %s µs, %s cs", $5, $6
				if ($7 != "") printf "; machine %s µs", $7
				printf ") |" }'
		done
		if [[ " $SERVERS " == *" cairn "* ]]; then
			local c
			c=$(median cairn "$label" | awk '{ print $1 }')
			for s in "${servers[@]}"; do
				[ "$s" = cairn ] && continue
				median "$s" "$label" | awk -v c="$c" '{ if ($1 > 0) printf " %.2f× |", c/$1; else printf " – |" }'
			done
		fi
		echo
	done
}

{
	echo "bench/compare.sh -r $RUNTIME -c $CAIRN_MODE${WFILTER:+ -w '$WFILTER'} -n $ROUNDS${CPUSTAT:+ -m} — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), $(($(date +%s) - START)) s"
	echo
	table
} | tee ${OUT:+"$OUT"}
