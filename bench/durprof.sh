#!/usr/bin/env bash
# bench/durprof.sh — where a durable write's time goes on this disk.
#
# Two parts, each printed as a markdown table:
#
#  disk   fio alone on a prefilled raw file in the work dir (same filesystem as
#         compare.sh's drives), QD1 unless the label says otherwise: buffered
#         writes + fdatasync (what cairn's file drives do), O_DIRECT writes +
#         fdatasync (what qemu-nbd --cache=none does), O_DIRECT + O_DSYNC, and
#         fdatasync every N writes (N dirty pages per sync, buffered and direct).
#         Per row: IOPS, mean and p99 write latency, mean and p99 sync latency,
#         and what the block device did per fio write (from
#         /sys/dev/block/M:m/stat: device writes, device flushes, ms the
#         device spent on writes and on flushes per 1000 fio writes).
#  commit bench/cmd/commitlat on a raw file: one commit (a write, a spin of
#         GAP standing in for the NBD round trip, the flush) at a time, for
#         each way a server could write: buffered + fdatasync (cairn today),
#         buffered + sync_file_range(WRITE) after the write (write-behind),
#         O_DIRECT + fdatasync (qemu-nbd --cache=none), O_DIRECT on another
#         thread, O_DIRECT|O_DSYNC, and a journal (the flush writes the data
#         to a sequential log with O_DIRECT|O_DSYNC); 8k sequential and 4k
#         random, gap 40 µs and 0.
#  cairn  a cairn daemon (built from this checkout, or CAIRN_BIN) with
#         --cpu-profile, under the durable rows of compare.sh (fio nbd engine):
#         per row IOPS, fio's write and flush latency (mean, p99), the daemon's
#         CPU µs and context switches per write (perf stat), device writes and
#         flushes per fio write; then one more short run of each row under
#         `strace -c -f` (syscall counts and time; strace slows the daemon,
#         use it for counts and shares, not rates). The Go CPU profile is
#         summarised with `go tool pprof -top`.
#
# The fsync=32 row runs first and again last: the first run on a fresh
# daemon has been 3x slower than later ones on this machine.
#
# Usage: bench/durprof.sh [-r SECONDS] [-p disk|cairn|all] [-o DIR]
#   -r  seconds per fio run (default 5)
#   -p  which part: disk, commit, cairn or all (default)
#   -o  keep the raw outputs (fio JSON, strace and pprof reports) in DIR
# Needs root (drop_caches), fio, jq, perf, strace, nbdinfo (`make deps`).
# Wrap in `flock /tmp/cairn-bench.lock` on a shared machine.
set -euo pipefail

RUNTIME=5
PART=all
OUTDIR=""
while getopts "r:p:o:h" opt; do
	case $opt in
	r) RUNTIME=$OPTARG ;;
	p) PART=$OPTARG ;;
	o) OUTDIR=$OPTARG ;;
	*) sed -n '2,39p' "$0"; exit 2 ;;
	esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-/usr/local/go/bin/go}
for tool in fio jq perf strace nbdinfo; do
	command -v $tool >/dev/null || { echo "durprof.sh: $tool missing (run make deps)" >&2; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cairn-durprof.XXXXXX")
PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM
[ -n "$OUTDIR" ] && mkdir -p "$OUTDIR"
keep() { [ -z "$OUTDIR" ] || cp "$1" "$OUTDIR/$2"; }

log() { echo "[$(date +%T)] $*" >&2; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || log "warning: cannot drop caches"; }

# The block device under the work dir: /sys/dev/block/MAJ:MIN/stat fields
# (Documentation/block/stat.rst): 5 writes, 7 sectors written, 8 write ticks
# (ms), 16 flushes, 17 flush ticks (ms). A flush is also counted as one write on this kernel
# (dev writes is 2 per fio write for a write + fdatasync).
DEVSTAT=/sys/dev/block/$(stat -c '%Hd:%Ld' "$WORK")/stat
[ -r "$DEVSTAT" ] || { echo "durprof.sh: no $DEVSTAT" >&2; exit 1; }
dev_snap() { awk '{ print $5, $8, $16, $17, $7 }' "$DEVSTAT"; }
# dev_per BEFORE(5) AFTER(5) N → "writes flushes write_ms flush_ms KiB", writes,
# flushes and KiB written per fio write, the ms per 1000 fio writes
dev_per() {
	awk -v n="${11}" -v a="$1 $2 $3 $4 $5" -v b="$6 $7 $8 $9 ${10}" 'BEGIN { split(a, x, " "); split(b, y, " ")
		if (n <= 0) { print "- - - - -"; exit }
		printf "%.2f %.2f %.0f %.0f %.1f\n", (y[1]-x[1])/n, (y[3]-x[3])/n, (y[2]-x[2])*1000/n, (y[4]-x[4])*1000/n, (y[5]-x[5])/2/n }'
}

# fio_lat JSON → "iops write_mean_us write_p99_us sync_mean_us sync_p99_us total_ios"
fio_lat() {
	jq -r '.jobs[0] | .write as $w | (.sync // {}) as $s |
		"\($w.iops) \(($w.clat_ns.mean // 0) / 1000) \(($w.clat_ns.percentile["99.000000"] // 0) / 1000) \(($s.lat_ns.mean // 0) / 1000) \(($s.lat_ns.percentile["99.000000"] // 0) / 1000) \($w.total_ios)"' "$1"
}

row() { # label iops wmean wp99 smean sp99 [more columns...]
	local label=$1
	shift
	printf '| %s |' "$label"
	printf ' %.0f | %.0f | %.0f | %.0f | %.0f |' "${@:1:5}"
	shift 5
	printf ' %s |' "$@"
	echo
}

disk_part() {
	local f="$WORK/disk.img"
	log "disk: prefill 1 GiB"
	fio --name=prefill --filename="$f" --rw=write --bs=1M --size=1G --ioengine=psync --direct=1 --end_fsync=1 >/dev/null
	echo "Disk alone: fio on a prefilled 1 GiB raw file, ${RUNTIME} s per row, $(date -u '+%Y-%m-%d %H:%M UTC'). Latencies in µs; device columns per fio write (ms per 1000 writes)."
	echo
	echo "| fio job | IOPS | write mean | write p99 | sync mean | sync p99 | dev writes | dev flushes | dev write ms | dev flush ms | dev KiB |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	local jobs=(
		"4k rand QD1 buffered + fdatasync|--rw=randwrite --bs=4k --ioengine=psync --fdatasync=1"
		"4k rand QD1 direct + fdatasync|--rw=randwrite --bs=4k --ioengine=io_uring --direct=1 --fdatasync=1"
		"4k rand QD1 direct + O_DSYNC|--rw=randwrite --bs=4k --ioengine=io_uring --direct=1 --sync=dsync"
		"4k rand QD1 direct, no sync|--rw=randwrite --bs=4k --ioengine=io_uring --direct=1"
		"8k seq QD1 buffered + fdatasync|--rw=write --bs=8k --ioengine=psync --fdatasync=1"
		"8k seq QD1 direct + fdatasync|--rw=write --bs=8k --ioengine=io_uring --direct=1 --fdatasync=1"
		"8k seq QD1 direct + O_DSYNC|--rw=write --bs=8k --ioengine=io_uring --direct=1 --sync=dsync"
		"4k rand QD32 buffered + fsync=32 (io_uring)|--rw=randwrite --bs=4k --ioengine=io_uring --iodepth=32 --fsync=32"
		"4k rand QD32 direct + fsync=32 (io_uring)|--rw=randwrite --bs=4k --ioengine=io_uring --direct=1 --iodepth=32 --fsync=32"
		"4k rand QD32 direct + O_DSYNC (io_uring)|--rw=randwrite --bs=4k --ioengine=io_uring --direct=1 --iodepth=32 --sync=dsync"
	)
	for n in 4 16 64 256; do
		jobs+=("4k rand QD1 buffered, fdatasync every $n|--rw=randwrite --bs=4k --ioengine=psync --fdatasync=$n")
		jobs+=("4k rand QD1 direct, fdatasync every $n|--rw=randwrite --bs=4k --ioengine=io_uring --direct=1 --fdatasync=$n")
	done
	local j label opts i=0
	for j in "${jobs[@]}"; do
		label=${j%%|*} opts=${j#*|}
		sync
		local before after
		before=$(dev_snap)
		# shellcheck disable=SC2086
		fio --name=d --filename="$f" --size=1G --time_based --runtime="$RUNTIME" --randrepeat=0 \
			$opts --output-format=json --output="$WORK/d.json" >/dev/null
		after=$(dev_snap)
		local r
		read -r -a r < <(fio_lat "$WORK/d.json")
		# shellcheck disable=SC2046
		row "$label" "${r[0]}" "${r[1]}" "${r[2]}" "${r[3]}" "${r[4]}" $(dev_per $before $after "${r[5]}")
		keep "$WORK/d.json" "disk-$i.json"
		i=$((i + 1))
	done
	echo
}

commit_part() {
	local bin=${COMMITLAT_BIN:-$WORK/commitlat} f="$WORK/commit.img" t
	[ -n "${COMMITLAT_BIN:-}" ] || (cd "$ROOT" && $GO build -o "$bin" ./bench/cmd/commitlat)
	t=$((RUNTIME < 3 ? RUNTIME : 3))s
	for c in "8k seq, gap 40 µs|-bs 8k -seq -gap 40us" "4k random, gap 40 µs|-bs 4k -gap 40us" \
		"8k seq, gap 0|-bs 8k -seq -gap 0s" "4k random, gap 0|-bs 4k -gap 0s"; do
		echo "One commit at a time on a 1 GiB raw file ($(date -u '+%Y-%m-%d %H:%M UTC')), ${c%%|*}, $t per mode; µs:"
		echo
		# shellcheck disable=SC2086
		"$bin" -file "$f" -size 1G -time "$t" ${c#*|}
		echo
	done
}

cairn_part() {
	local cairn=${CAIRN_BIN:-$WORK/cairn-bin} d="$WORK/cairn"
	[ -n "${CAIRN_BIN:-}" ] || (cd "$ROOT" && $GO build -o "$cairn" ./cmd/cairn)
	mkdir -p "$d"
	drop_caches
	local api nbdp
	api=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	nbdp=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	local kvdb=() # its embedded kvdb on ports of its own (CAIRN_BIN may predate it)
	"$cairn" daemon --help 2>&1 | grep -q -- --kvdb-listen && kvdb=(--kvdb-listen 127.0.0.1:0 --kvdb-peer 127.0.0.1:0)
	"$cairn" daemon --help 2>&1 | grep -q -- --repl-listen && kvdb+=(--repl-listen 127.0.0.1:0)
	"$cairn" daemon --data-dir "$d" --api "127.0.0.1:$api" --nbd "127.0.0.1:$nbdp" --nbd-socket "$d/nbd.sock" \
		--default-drive-size 4G --cpu-profile "$WORK/cpu.pprof" "${kvdb[@]}" >"$d/log" 2>&1 &
	local pid=$!
	PIDS+=($pid)
	for _ in $(seq 100); do [ -S "$d/nbd.sock" ] && break; sleep 0.1; done
	"$cairn" --host "127.0.0.1:$api" volume create bench --size 1G >/dev/null
	local uri="nbd+unix:///bench?socket=$d/nbd.sock"
	for _ in $(seq 100); do nbdinfo --size "$uri" >/dev/null 2>&1 && break; sleep 0.1; done
	log "cairn: prefill"
	fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 --size=1G >/dev/null
	local rows=(
		"4k randwrite QD32 fsync=32|--rw=randwrite --bs=4k --iodepth=32 --fsync=32"
		"8k seq write QD1 fsync=1 (WAL)|--rw=write --bs=8k --iodepth=1 --fsync=1"
		"4k randwrite QD1 fsync=1|--rw=randwrite --bs=4k --iodepth=1 --fsync=1"
		"4k randwrite QD32 fsync=32, again|--rw=randwrite --bs=4k --iodepth=32 --fsync=32"
	)
	echo "cairn daemon (fio nbd engine over the unix socket), ${RUNTIME} s per row, $(date -u '+%Y-%m-%d %H:%M UTC'). Latencies in µs; CPU and context switches are the daemon's per fio write; device columns per fio write."
	echo
	echo "| row | IOPS | write mean | write p99 | flush mean | flush p99 | dev writes | dev flushes | dev write ms | dev flush ms | dev KiB | daemon CPU µs | daemon cs |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	local w label opts i=0
	for w in "${rows[@]}"; do
		label=${w%%|*} opts=${w#*|}
		sync
		perf stat -x, -e task-clock,context-switches -p "$pid" -o "$WORK/perf.txt" 2>/dev/null &
		local ppid=$!
		sleep 0.2
		local before after
		before=$(dev_snap)
		# shellcheck disable=SC2086
		fio --name=c --ioengine=nbd --uri="$uri" --size=1G --time_based --runtime="$RUNTIME" --randrepeat=0 \
			$opts --output-format=json --output="$WORK/c.json" >/dev/null
		after=$(dev_snap)
		kill -INT $ppid 2>/dev/null || true
		wait $ppid 2>/dev/null || true
		local r cpu
		read -r -a r < <(fio_lat "$WORK/c.json")
		cpu=$(awk -F, -v n="${r[5]}" '/task-clock/ { t = $1 } /context-switches/ { c = $1 }
			END { if (n > 0) printf "%.1f %.2f\n", t * 1000 / n, c / n; else print "- -" }' "$WORK/perf.txt")
		# shellcheck disable=SC2046
		row "$label" "${r[0]}" "${r[1]}" "${r[2]}" "${r[3]}" "${r[4]}" $(dev_per $before $after "${r[5]}") $cpu
		keep "$WORK/c.json" "cairn-$i.json"
		i=$((i + 1))
	done
	echo
	echo "Under \`strace -c -f -p DAEMON\` (${RUNTIME} s per row; slowed by strace: read counts per fio write and the time shares, not the rates):"
	echo
	i=0
	for w in "${rows[@]:0:3}"; do
		label=${w%%|*} opts=${w#*|}
		strace -c -f -p "$pid" -o "$WORK/strace.txt" 2>/dev/null &
		local spid=$!
		sleep 0.5
		# shellcheck disable=SC2086
		fio --name=c --ioengine=nbd --uri="$uri" --size=1G --time_based --runtime="$RUNTIME" --randrepeat=0 \
			$opts --output-format=json --output="$WORK/c.json" >/dev/null
		kill -INT $spid 2>/dev/null || true
		wait $spid 2>/dev/null || true
		local n
		n=$(jq '.jobs[0].write.total_ios' "$WORK/c.json")
		echo "$label — $n fio writes, $(jq '.jobs[0].write.iops | floor' "$WORK/c.json") IOPS under strace:"
		echo
		echo "| syscall | calls per fio write | µs per call | % of syscall time |"
		echo "|---|---:|---:|---:|"
		awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
			name = $NF; calls = $4
			if (calls / n >= 0.01) printf "| %s | %.2f | %s | %s |\n", name, calls / n, $3, $1 }' "$WORK/strace.txt" | head -12
		echo
		keep "$WORK/strace.txt" "strace-$i.txt"
		i=$((i + 1))
	done
	kill -TERM "$pid"
	wait "$pid" 2>/dev/null || true
	PIDS=()
	if [ -s "$WORK/cpu.pprof" ]; then
		echo "Go CPU profile of the daemon over all of the above (\`go tool pprof -top\`, flat, first 25):"
		echo
		echo '```'
		(cd "$ROOT" && $GO tool pprof -top -nodecount=25 "$WORK/cpu.pprof" 2>/dev/null | sed -n '1,32p')
		echo '```'
		echo
		echo "Cumulative, first 30 (\`-top -cum\`):"
		echo
		echo '```'
		(cd "$ROOT" && $GO tool pprof -top -cum -nodecount=30 "$WORK/cpu.pprof" 2>/dev/null | sed -n '6,37p')
		echo '```'
		keep "$WORK/cpu.pprof" cpu.pprof
	fi
}

echo "bench/durprof.sh -r $RUNTIME -p $PART — $(nproc) cores, $(uname -r), device $(basename "$(readlink -f "$(dirname "$DEVSTAT")")")"
echo
case $PART in
disk) disk_part ;;
cairn) cairn_part ;;
commit) commit_part ;;
all)
	disk_part
	commit_part
	cairn_part
	;;
*) echo "durprof.sh: -p $PART?" >&2; exit 2 ;;
esac
