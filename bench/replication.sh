#!/usr/bin/env bash
# bench/replication.sh — synchronous replication's cost, in one run (issue 16).
#
# Three cairn daemons on this machine, built from this checkout (CAIRN_BIN=path
# uses that binary): node 1 on 127.0.0.1 runs the embedded kvdb on ephemeral
# ports, nodes 2 and 3 on 127.0.0.2 and 127.0.0.3 join it with -k; every
# daemon on ephemeral API, NBD and replication ports, its own data dir and
# sparse 24 GiB file drive under a temp dir, zones z1 z2 z3. Node 3 runs with
# --resync-rate 4G (-f), nodes 1 and 2 with the default (256M): a copy
# coordinated by node 3 shows what the copy itself costs, one coordinated by
# node 1 what a user gets. Sections (-s):
#
#   volumes  compare.sh's workloads (fio's nbd engine, nbd://NODE1/VOL) on a
#            4 GiB volume at repl 1 (on node 1), repl 2 (nodes 1, 2) and
#            repl 3, node 1 coordinating; the first -S bytes (1 GiB, as
#            compare.sh) prefilled by a sequential write, every workload on
#            that span; interleaved: each workload runs on the three volumes
#            in turn. IOPS (MiB/s), p99 completion latency, repl N ÷ repl 1;
#            the machine's busy CPU during each run and the part of it that
#            was neither the daemons nor fio (other work sharing the
#            machine); for the writes, each replica's mean write time as the
#            coordinator's /metrics has it (a second before the run ends).
#   resync   a 16 GiB repl 2 volume with 256 MiB written, a client holding it
#            open on its coordinator (bench/cmd/nbdhold), the other replica's
#            node SIGKILLed, 64 distinct 1 MiB-aligned 1 MiB blocks written
#            across the volume (64 MiB of changed 1 MiB regions), the node
#            restarted with the same arguments: the coordinator's copy time
#            (its "replica back in sync ... seconds=" log line) and restart →
#            repl_status Up; once with node 1 coordinating (default rate),
#            once with node 3 (4G). Against copying 64 MiB (just written, in
#            the page cache) file to file with dd conv=fsync, and over one
#            loopback TCP stream (bench/cmd/tcpcopy, fsync at the end).
#   rebuild  a repl 1 volume on node 3 with -g GiB of data (half the volume),
#            page cache dropped, `volume ha-update --repl 2 --node NODE2
#            --wait`: rate = data bytes ÷ the copy's time (node 3's log line;
#            the command's wall time too). Against tcpcopy of as many bytes
#            from a cold file to a file (fsync at the end).
#   p99      4k randwrite QD1 p99 on a volume on node 1 holding enough data
#            for a rebuild at the default 256M/s to outlast the run: at repl
#            1 before, at repl 2 during its rebuild (ha-update without
#            --wait, fio right after), at repl 2 after it; each replica's
#            mean write time (node 1's coordinator) and each node's engine
#            mean write time (its /metrics) during the run.
#   profile  the durable row (4k randwrite QD32 fsync=32) once on the repl 1
#            volume with node 1 restarted with --cpu-profile, once on the
#            repl 2 volume with nodes 1 and 2 restarted with it (node 1 keeps
#            its kvdb address); SIGTERM writes each profile; `go tool pprof
#            -top` of each, CPU per write, fio's write and flush latency,
#            the replicas' mean write time, each node's engine mean write
#            and flush time.
#
# Usage: bench/replication.sh [-r SECONDS] [-n N] [-s SECTIONS] [-w REGEX] [-g GIB] [-S SPAN] [-f RATE] [-o FILE] [-p DIR] [-T DIR] [-P]
#   -r  seconds per fio workload (default 15)
#   -n  rounds of the volume workloads; the table shows the median (default 1)
#   -s  space-separated subset of: volumes resync rebuild p99 profile (default all)
#   -w  only the volume workloads whose label matches this extended regex
#   -g  GiB of data for the rebuild (default 4)
#   -S  the span the volume workloads prefill and run on (default 1G)
#   -f  node 3's --resync-rate (default 4G)
#   -o  also write the markdown report to FILE
#   -p  keep the profiles and their pprof -top in DIR (default: a new
#       /var/tmp/cairn-rbench-profile.* directory, printed at the end)
#   -T  put nodes 2 and 3's data dirs (their drives) under DIR, e.g. a tmpfs
#       (/dev/shm): the replicas off node 1's disk, as on a cluster where
#       each node has its own. On tmpfs their flushes cost nothing, so a
#       durable row then shows an upper bound of what replication costs
#       when the nodes do not share one disk
#   -P  also `perf record -a -g` the whole machine (kernel included: the
#       loopback TCP, the page cache, fio) during the profile rows and the
#       p99 runs, into the profile dir with a `perf report` by command and
#       object (needs perf; its sampling costs a few % of a CPU)
# KEEP=1 keeps the work dir (data dirs and logs). Wrap it in
# `flock /tmp/cairn-bench.lock` on a shared machine, as the other benches
# (it takes no lock itself: a second open of the file would wait on the
# wrapper's lock for ever).
# Needs root (drop_caches), fio, jq, curl, go (`make deps`); perf for -P.
# Loopback addresses only (127.0.0.1–3).
set -euo pipefail

RUNTIME=15
ROUNDS=1
SECTIONS="volumes resync rebuild p99 profile"
WFILTER=""
REBUILD_GIB=4
SPAN=1G
FAST_RATE=4G
OUT=""
PROFDIR=""
PERF=""
REPLICA_DIR=""
while getopts "r:n:s:w:g:S:f:o:p:T:Ph" opt; do
	case $opt in
	r) RUNTIME=$OPTARG ;;
	n) ROUNDS=$OPTARG ;;
	s) SECTIONS=$OPTARG ;;
	w) WFILTER=$OPTARG ;;
	g) REBUILD_GIB=$OPTARG ;;
	S) SPAN=$OPTARG ;;
	f) FAST_RATE=$OPTARG ;;
	o) OUT=$OPTARG ;;
	p) PROFDIR=$OPTARG ;;
	T) REPLICA_DIR=$OPTARG ;;
	P) PERF=1 ;;
	*) sed -n '2,77p' "$0"; exit 2 ;;
	esac
done
ARGS="$*"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-/usr/local/go/bin/go}
for tool in fio jq dd curl; do
	command -v $tool >/dev/null || { echo "replication.sh: $tool missing (run make deps)" >&2; exit 1; }
done
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
[ -z "$PERF" ] || command -v perf >/dev/null || { echo "replication.sh: -P needs perf" >&2; exit 1; }

# The work dir is on the same filesystem as the disk under test, not tmpfs.
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/cairn-rbench.XXXXXX")
RWORK=$WORK # nodes 2 and 3 (-T)
[ -z "$REPLICA_DIR" ] || RWORK=$(mktemp -d "$REPLICA_DIR/cairn-rbench.XXXXXX")
declare -A PID API NBD ID EXTRA
HELPERS=() # other processes this script started (fio, nbdhold)
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for pid in "${HELPERS[@]}" ${PERF_PID:+"$PERF_PID"}; do kill "$pid" 2>/dev/null || true; done
	# Nodes 2 and 3 first, together: node 1's kvdb lets them leave quickly.
	stop_all 3 2
	stop_all 1
	wait 2>/dev/null || true
	if [ -n "${KEEP:-}" ]; then
		echo "kept $WORK $RWORK" >&2
	else
		rm -rf "$WORK" "$RWORK"
	fi
	exit $rc
}
# stop_all I...: SIGTERM those nodes, SIGKILL what is left after 15 s.
stop_all() {
	local i pids=()
	for i in "$@"; do [ -n "${PID[$i]:-}" ] && pids+=("${PID[$i]}"); done
	[ ${#pids[@]} -gt 0 ] || return 0
	kill -TERM "${pids[@]}" 2>/dev/null || true
	for _ in $(seq 150); do
		kill -0 "${pids[@]}" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "${pids[@]}" 2>/dev/null || true
	for i in "$@"; do PID[$i]=""; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { echo "[$(date +%T)] $*" >&2; }
die() { echo "replication.sh: $*" >&2; exit 1; }

drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || log "warning: cannot drop caches (not root?)"
}

# Built fresh from this checkout unless CAIRN_BIN names a binary.
CAIRN=${CAIRN_BIN:-$WORK/cairn}
log "building"
[ -n "${CAIRN_BIN:-}" ] || (cd "$ROOT" && $GO build -o "$CAIRN" ./cmd/cairn)
(cd "$ROOT" && $GO build -o "$WORK/nbdhold" ./bench/cmd/nbdhold && $GO build -o "$WORK/tcpcopy" ./bench/cmd/tcpcopy)

# node_dir I: node I's data dir.
node_dir() { if [ "$1" = 1 ]; then echo "$WORK/n1"; else echo "$RWORK/n$1"; fi; }

KVDB=""
# start_node I [extra daemon args]: starts node I (again, on the same data
# dir and arguments plus the extra ones) and waits until it is ready; sets
# PID, API, NBD and ID for it, KVDB for node 1's first start.
start_node() {
	local i=$1 ip=127.0.0.$1 d
	d=$(node_dir "$1")
	shift
	mkdir -p "$d"
	# EXTRA[i] is split into words on purpose (flag and value).
	# shellcheck disable=SC2206
	local args=(daemon --data-dir "$d" --api "$ip:0" --nbd "$ip:0" --repl-listen "$ip:0"
		--default-drive-size 24G --zone "z$i" ${EXTRA[$i]:-})
	if [ "$i" = 1 ]; then
		args+=(--kvdb-listen "${KVDB:-127.0.0.1:0}" --kvdb-peer 127.0.0.1:0)
	else
		args+=(-k "etcd://$KVDB")
	fi
	touch "$d/log"
	local from=$(($(wc -l <"$d/log") + 1))
	"$CAIRN" "${args[@]}" "$@" >>"$d/log" 2>&1 &
	PID[$i]=$!
	local lines=""
	for _ in $(seq 300); do
		lines=$(tail -n +"$from" "$d/log")
		grep -q 'msg="cairn daemon ready"' <<<"$lines" && break
		kill -0 "${PID[$i]}" 2>/dev/null || { tail -n +"$from" "$d/log" >&2; die "node $i exited at start"; }
		sleep 0.1
	done
	grep -q 'msg="cairn daemon ready"' <<<"$lines" || { echo "$lines" >&2; die "node $i not ready after 30 s"; }
	field() { sed -n "s/.*msg=\"$1\" addr=\([^ ]*\).*/\1/p" <<<"$lines" | tail -1; }
	API[$i]=$(field "api listening")
	NBD[$i]=$(field "nbd listening")
	[ "$i" = 1 ] && [ -z "$KVDB" ] && KVDB=$(field "kvdb listening")
	ID[$i]=$("$CAIRN" --host "${API[$i]}" status -j | jq -r .node_id)
	return 0
}

# stop_node I SIGNAL: signals node I and waits for it to exit.
stop_node() {
	kill -"$2" "${PID[$1]}"
	wait "${PID[$1]}" 2>/dev/null || true
	PID[$1]=""
}

# cn I ARGS...: the CLI against node I.
cn() { local i=$1; shift; "$CAIRN" --host "${API[$i]}" "$@"; }

# fio_run NAME URI RW BS QD [extra...] → "iops bw_bytes total_ios
# write_or_read_p99_us flush_p99_us write_or_read_mean_us flush_mean_us"
# (0 for a flush's when there were none)
fio_run() {
	local name=$1 uri=$2 rw=$3 bs=$4 qd=$5
	shift 5
	fio --name="$name" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
		--output-format=json --output="$WORK/fio.json" "$@" >"$WORK/fio.err" 2>&1 || {
		cat "$WORK/fio.err" >&2
		echo "0 0 0 0 0 0 0"
		return
	}
	local dir=write
	case $rw in *read*) dir="read" ;; esac
	jq -r ".jobs[0] | .$dir as \$d | (.sync.lat_ns.percentile[\"99.000000\"] // 0) as \$f |
		\"\(\$d.iops) \(\$d.bw_bytes) \(\$d.total_ios) \((\$d.clat_ns.percentile[\"99.000000\"] // 0) / 1000) \(\$f / 1000) \(\$d.clat_ns.mean / 1000) \((.sync.lat_ns.mean // 0) / 1000)\"" "$WORK/fio.json"
}

# delete VOL: volume delete, retried while the volume's coordinator is
# still closing after its last client went (it flushes every replica).
delete() {
	local t0 first=""
	t0=$(now)
	for _ in $(seq 300); do
		cn 1 volume delete "$1" >/dev/null 2>"$WORK/delete.err" && break
		grep -q "in use" "$WORK/delete.err" || { cat "$WORK/delete.err" >&2; die "volume delete $1 failed"; }
		[ -n "$first" ] || first=$(cat "$WORK/delete.err")
		sleep 0.1
	done
	[ ! -s "$WORK/delete.err" ] || die "volume delete $1: still in use after 30 s: $(cat "$WORK/delete.err")"
	[ -z "$first" ] || log "volume delete $1: refused for $(since "$t0") s after its last client left: $first"
}

# repl_status VOL → Up, Degraded or Resyncing
repl_status() { cn 1 volume inspect "$1" -j | jq -r .repl_status; }

# wait_up VOL LIMIT_S: until the volume's repl_status is Up (0.1 s polls).
wait_up() {
	local deadline=$(($(date +%s) + $2))
	until [ "$(repl_status "$1")" = Up ]; do
		[ "$(date +%s)" -lt "$deadline" ] || die "volume $1 not Up after $2 s: $(cn 1 volume inspect "$1")"
		sleep 0.1
	done
}

# synced_line I VOL → "copied_bytes seconds" of the last "replica back in
# sync" line node I logged for VOL
synced_line() {
	grep 'msg="replica back in sync"' "$(node_dir "$1")/log" | grep "volume=$2 " | tail -1 |
		sed -n 's/.* copied=\([0-9]*\) seconds=\([0-9.e+-]*\).*/\1 \2/p'
}

# replica_times VOL → "N writes seconds" per replica of VOL that node 1
# coordinates (N: its node's number), from node 1's /metrics: the writes
# each replica answered since the coordinator opened the volume and their
# total time, send to reply
replica_times() {
	local m i
	m=$(curl -s "http://${API[1]}/metrics") || return 0
	for i in 1 2 3; do
		awk -v v="$1" -v n="${ID[$i]}" -v i="$i" '
			index($0, "volume=\"" v "\"") && index($0, "node=\"" n "\"") {
				if ($1 ~ /^cairn_replica_writes_total/) w = $2
				if ($1 ~ /^cairn_replica_write_seconds_total/) s = $2
			}
			END { if (w > 0) print i, w, s }' <<<"$m"
	done
}

# fio_scraped NAME URI RW BS QD VOL [extra...]: fio_run (time based,
# RUNTIME) with VOL's replica_times taken a second before it ends (the
# coordinator closes with fio's connection) into $WORK/replica_times.
# Also VOL's engine op times on every running node, before the run and at
# the same moment, into $WORK/engine_times.{0,1} (eng_us reads them).
fio_scraped() {
	local name=$1 uri=$2 rw=$3 bs=$4 qd=$5 vol=$6
	shift 6
	: >"$WORK/replica_times"
	engine_times "$vol" >"$WORK/engine_times.0"
	cpu_snap >"$WORK/cpu.0"
	fio_run "$name" "$uri" "$rw" "$bs" "$qd" --time_based --runtime="$RUNTIME" "$@" >"$WORK/fio.out" &
	local pid=$!
	HELPERS+=("$pid")
	sleep "$((RUNTIME - 1))"
	replica_times "$vol" >"$WORK/replica_times"
	engine_times "$vol" >"$WORK/engine_times.1"
	cpu_snap >"$WORK/cpu.1"
	wait "$pid" || true
	jq -r '.jobs[0] | .usr_cpu + .sys_cpu' "$WORK/fio.json" >"$WORK/fio.cpu" 2>/dev/null || echo 0 >"$WORK/fio.cpu"
	cat "$WORK/fio.out"
}

# cpu_snap → "total_ticks idle_ticks daemon_ticks": the machine's CPU
# time (/proc/stat; iowait counts as idle) and the running daemons' own
# (utime + stime; the kvdb is node 1's)
cpu_snap() {
	local i d=0 t
	for i in 1 2 3; do
		[ -n "${PID[$i]:-}" ] || continue
		t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/${PID[$i]}/stat" 2>/dev/null) || t=0
		d=$((d + t))
	done
	awk -v d="$d" 'NR == 1 { t = 0; for (f = 2; f <= 9; f++) t += $f; print t, $5 + $6, d }' /proc/stat
}

# busy → "B O" for the last fio_scraped run, to a second before its end:
# B the whole machine's busy CPU share (%) of its $(nproc) CPUs — every
# process and the kernel; O the part of it that is neither the daemons nor
# fio (fio's own CPU from its report): other work on the machine, the
# kernel's threads and interrupts
busy() {
	cat "$WORK/cpu.0" "$WORK/cpu.1" | awk -v fio="$(cat "$WORK/fio.cpu")" -v n="$(nproc)" '
		NR == 1 { t0 = $1; i0 = $2; d0 = $3; next }
		$1 > t0 { t = $1 - t0; b = 100 * (1 - ($2 - i0) / t); o = b - 100 * ($3 - d0) / t - fio / n
			printf "%.0f %.0f\n", b, (o > 0 ? o : 0); p = 1 }
		END { if (!p) print "0 0" }'
}

# busy_cell "B O" → "B% (O% other)"
busy_cell() { awk -v b="${1% *}" -v o="${1#* }" 'BEGIN { printf "%s%% (%s%% other)", b, o }'; }

# perf_start TAG / perf_stop: with -P, a system-wide perf record between
# them into $PROFDIR/TAG.perf.data, and its report by command and object
# (TAG.perf.comm) and by symbol (TAG.perf.sym)
PERF_PID=""
PERF_TAG=""
perf_start() {
	[ -n "$PERF" ] || return 0
	PERF_TAG=$1
	perf record -a -g -F 499 -o "$PROFDIR/$1.perf.data" >"$WORK/perf.log" 2>&1 &
	PERF_PID=$!
	sleep 0.5
}
perf_stop() {
	[ -n "$PERF_PID" ] || return 0
	kill -INT "$PERF_PID"
	wait "$PERF_PID" 2>/dev/null || true
	PERF_PID=""
	perf report -i "$PROFDIR/$PERF_TAG.perf.data" --stdio --no-children -g none --sort comm,dso >"$PROFDIR/$PERF_TAG.perf.comm" 2>/dev/null || true
	perf report -i "$PROFDIR/$PERF_TAG.perf.data" --stdio --no-children -g none --sort comm,sym >"$PROFDIR/$PERF_TAG.perf.sym" 2>/dev/null || true
	perf report -i "$PROFDIR/$PERF_TAG.perf.data" --stdio --no-children -g none --sort comm 2>/dev/null |
		awk '/^ *[0-9.]+%/ { printf "%s%s %s", (n++ ? ", " : ""), $2, $1 } n == 6 { exit }' >"$PROFDIR/$PERF_TAG.perf.top" || true
}
# perf_say TAG: a report line with the machine's samples by command
# (swapper: idle; the three daemons are all "cairn")
perf_say() {
	[ -n "$PERF" ] && [ -s "$PROFDIR/$1.perf.top" ] || return 0
	say "perf -a, $1, the machine's CPU samples by command: $(cat "$PROFDIR/$1.perf.top") (\`$PROFDIR/$1.perf.{comm,sym}\`)."
	say ""
}

# mean_us N → replica N's mean write time in µs from $WORK/replica_times
mean_us() { awk -v i="$1" '$1 == i && $2 > 0 { printf "%.0f", $3 * 1e6 / $2 }' "$WORK/replica_times"; }

# engine_times VOL → "N op count seconds" per op of VOL on each running
# node N, from its /metrics (cairn_volume_op_duration_seconds: the time
# inside that node's engine; a replica's volume has the same name)
engine_times() {
	local i
	for i in 1 2 3; do
		[ -n "${PID[$i]:-}" ] || continue
		curl -s "http://${API[$i]}/metrics" | awk -v v="$1" -v i="$i" '
			$1 ~ /^cairn_volume_op_duration_seconds_(sum|count)\{/ && index($1, "volume=\"" v "\"") {
				op = $1; sub(/.*op="/, "", op); sub(/".*/, "", op)
				if ($1 ~ /_sum\{/) s[op] = $2; else c[op] = $2
			}
			END { for (op in c) print i, op, c[op], s[op] }' || true
	done
}

# eng_us N OP → "mean_µs count" of OP on node N during the last
# fio_scraped run (its two engine_times); nothing when there was none
eng_us() {
	awk -v i="$1" -v op="$2" '$1 != i || $2 != op { next }
		FILENAME ~ /\.0$/ { c0 = $3; s0 = $4; next }
		$3 > c0 { printf "%.0f %d\n", ($4 - s0) * 1e6 / ($3 - c0), $3 - c0 }' "$WORK/engine_times.0" "$WORK/engine_times.1"
}

# eng_cell OP → "µs / µs" of OP's mean on nodes 1 and 2 (– for none)
eng_cell() {
	local a b
	read -r a _ < <(eng_us 1 "$1") || true
	read -r b _ < <(eng_us 2 "$1") || true
	echo "${a:-–} / ${b:-–}"
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
# num N → N with thin spaces between thousands, as BENCHMARKS.md writes them
num() { printf '%.0f' "$1" | sed ':a;s/\B[0-9]\{3\}\>/ &/;ta'; }

if has profile || [ -n "$PERF" ]; then
	PROFDIR=${PROFDIR:-$(mktemp -d /var/tmp/cairn-rbench-profile.XXXXXX)}
	mkdir -p "$PROFDIR"
fi

START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
EXTRA[3]="--resync-rate $FAST_RATE"
log "starting three nodes in $WORK"
start_node 1
start_node 2
start_node 3
log "nodes: 1 ${ID[1]} (${NBD[1]}), 2 ${ID[2]}, 3 ${ID[3]} (--resync-rate $FAST_RATE); kvdb $KVDB"

REPORT=$WORK/report.md
: >"$REPORT"
say() { echo "$*" >>"$REPORT"; }
TARGETS=$WORK/targets
: >"$TARGETS"
# target WHAT MET(1/0) DETAIL
target() { echo "- $1: $([ "$2" = 1 ] && echo "**met**" || echo "**missed**") ($3)" >>"$TARGETS"; }

# ---------------------------------------------------------------- volumes
# label|rw|bs|iodepth|extra fio options|target for repl 2 ÷ repl 1
WORKLOADS=(
	"4k randwrite QD32|randwrite|4k|32||0.5"
	"4k randread QD32|randread|4k|32||0.9"
	"4k randwrite QD1|randwrite|4k|1||"
	"4k randread QD1|randread|4k|1||0.9"
	"1M seq write QD8|write|1M|8||"
	"1M seq read QD8|read|1M|8||0.9"
	"4k randwrite QD32 fsync=32|randwrite|4k|32|--fsync=32|0.6"
	"8k seq write QD1 fsync=1 (WAL)|write|8k|1|--fsync=1|"
	"4k randwrite QD1 fsync=1|randwrite|4k|1|--fsync=1|"
)
if [ -n "$WFILTER" ]; then
	kept=()
	for w in "${WORKLOADS[@]}"; do
		if [[ ${w%%|*} =~ $WFILTER ]]; then kept+=("$w"); fi
	done
	[ ${#kept[@]} -gt 0 ] || die "no workload matches -w '$WFILTER'"
	WORKLOADS=("${kept[@]}")
fi

# The repl 2 volume on nodes 1 and 2 is the profile's too.
volumes_create() {
	cn 1 volume create v1 --size 4G --nodes "${ID[1]}" >/dev/null
	cn 1 volume create v2 --size 4G --repl 2 --nodes "${ID[1]},${ID[2]}" >/dev/null
	cn 1 volume create v3 --size 4G --repl 3 --nodes "${ID[1]},${ID[2]},${ID[3]}" >/dev/null
	drop_caches
	for r in 1 2 3; do
		local t0
		t0=$(now)
		fio_run prefill "nbd://${NBD[1]}/v$r" write 1M 8 --size="$SPAN" >/dev/null
		log "v$r (repl $r): prefilled $SPAN in $(since "$t0") s"
	done
}

if has volumes; then
	volumes_create
	RESULTS=$WORK/results
	: >"$RESULTS"
	for round in $(seq "$ROUNDS"); do
		for w in "${WORKLOADS[@]}"; do
			IFS='|' read -r label rw bs qd extra _ <<<"$w"
			for r in 1 2 3; do
				# shellcheck disable=SC2086
				read -r iops bw _ p99 p99f _ < <(fio_scraped bench "nbd://${NBD[1]}/v$r" "$rw" "$bs" "$qd" "v$r" --size="$SPAN" \
					--randrepeat=0 $extra)
				times=""
				if [ "$r" -gt 1 ] && [[ $rw == *write* ]]; then
					times="$(mean_us 1)|$(mean_us 2)|$(mean_us 3)"
				fi
				read -r cb co < <(busy)
				log "repl $r: $label: $(num "$iops") IOPS, $(num "$((${bw%.*} >> 20))") MiB/s, p99 $(num "$p99") µs${extra:+, flush p99 $(num "$p99f") µs}, machine CPU $(busy_cell "$cb $co") busy${times:+, replica mean write µs (node 1|2|3) $times} (round $round)"
				echo "$r|$label|$iops|$bw|$p99|$p99f|$cb|$co|$times" >>"$RESULTS"
			done
		done
	done
	# median R LABEL → "iops bw p99 p99f busy other t1 t2 t3" of the
	# median round by IOPS (t: the replicas' mean write µs, - for none)
	median() {
		awk -F'|' -v r="$1" -v l="$2" '$1==r && $2==l { print $3, $4, $5, $6, $7, $8, ($9 == "" ? "-" : $9), ($10 == "" ? "-" : $10), ($11 == "" ? "-" : $11) }' "$RESULTS" |
			sort -g | awk '{ v[NR] = $0 } END { if (NR) print v[int((NR + 1) / 2)] }'
	}
	say "### Volume workloads through node 1 (repl 1, 2, 3)"
	say ""
	say "IOPS (MiB/s for the 1M rows) and p99 completion latency (µs; for the fsync=1 rows also the flush's p99), the median of $ROUNDS round(s) of $RUNTIME s:"
	say ""
	say "| workload | repl 1 | repl 2 | repl 3 | repl 2 ÷ repl 1 | repl 3 ÷ repl 1 | target (repl 2) |"
	say "|---|---:|---:|---:|---:|---:|---|"
	for w in "${WORKLOADS[@]}"; do
		IFS='|' read -r label rw bs qd extra want <<<"$w"
		row="| $label |"
		declare -A V=()
		for r in 1 2 3; do
			read -r iops bw p99 p99f _ < <(median "$r" "$label")
			if [ "$bs" = 1M ]; then V[$r]=$(awk -v b="$bw" 'BEGIN { print b / 1048576 }'); cell="$(num "${V[$r]}") MiB/s"
			else V[$r]=$iops; cell="$(num "$iops")"; fi
			cell+=", p99 $(num "$p99")"
			[ -n "$extra" ] && [ "$qd" = 1 ] && cell+=" / flush $(num "$p99f")"
			row+=" $cell |"
		done
		r2=$(awk -v a="${V[2]}" -v b="${V[1]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print 0 }')
		r3=$(awk -v a="${V[3]}" -v b="${V[1]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print 0 }')
		tcell="–"
		if [ -n "$want" ]; then
			met=$(awk -v a="$r2" -v w="$want" 'BEGIN { print (a >= w) ? 1 : 0 }')
			tcell="≥ ${want}× $([ "$met" = 1 ] && echo met || echo missed)"
			target "repl 2 ≥ ${want}× repl 1 on $label" "$met" "${r2}×; repl 3 ${r3}×"
		fi
		say "$row ${r2}× | ${r3}× | $tcell |"
	done
	say ""
	say "Where the time goes: the whole machine's busy CPU during each run ($(nproc) CPUs; fio, the three daemons with the kvdb, the kernel; iowait as idle) and, in brackets, the part of it that was neither the daemons nor fio (other work on the machine, kernel threads, interrupts); for the writes, each replica's mean write time as node 1's coordinator measures it (send to reply; /metrics \`cairn_replica_write_seconds_total\` ÷ \`cairn_replica_writes_total\`, a second before the run's end; node 1's is its own engine, the others' include the loopback round trip and their apply), µs:"
	say ""
	say "| workload | CPU busy (other): repl 1 / 2 / 3 | replica mean write, repl 2: node 1 / node 2 | repl 3: node 1 / node 2 / node 3 |"
	say "|---|---:|---:|---:|"
	for w in "${WORKLOADS[@]}"; do
		IFS='|' read -r label rw _ <<<"$w"
		read -r _ _ _ _ c1 o1 _ < <(median 1 "$label")
		read -r _ _ _ _ c2 o2 a1 a2 _ < <(median 2 "$label")
		read -r _ _ _ _ c3 o3 b1 b2 b3 < <(median 3 "$label")
		cpus="$c1% ($o1%) / $c2% ($o2%) / $c3% ($o3%)"
		if [[ $rw == *write* ]]; then
			say "| $label | $cpus | $a1 / $a2 | $b1 / $b2 / $b3 |"
		else
			say "| $label | $cpus | – | – |"
		fi
	done
	say ""
	# Room for the rest (volume delete gives a thin volume's space back);
	# v1 and v2 stay for the profile.
	delete v3
fi

# ---------------------------------------------------------------- resync
# resync_once C NAME: a 16 GiB repl 2 volume on nodes C and 2, a client on
# node C; node 2 killed, 64 MiB of 1 MiB regions changed, node 2 restarted.
# Appends a table row; sets RS_COPY_S.
resync_once() {
	local c=$1 vol=$2
	cn 1 volume create "$vol" --size 16G --repl 2 --nodes "${ID[$c]},${ID[2]}" >/dev/null
	local in=$WORK/hold.in out=$WORK/hold.out
	rm -f "$in" "$out"
	mkfifo "$in"
	"$WORK/nbdhold" -addr "${NBD[$c]}" -export "$vol" <"$in" >"$out" 2>&1 &
	local hold=$!
	HELPERS+=("$hold")
	exec 8>"$in"
	# hold CMD: one command, its reply
	hold() {
		local n
		n=$(wc -l <"$out")
		echo "$1" >&8
		for _ in $(seq 600); do
			[ "$(wc -l <"$out")" -gt "$n" ] && break
			sleep 0.05
		done
		local reply
		reply=$(tail -1 "$out")
		[[ $reply == ok* ]] || die "nbdhold $1: $reply"
	}
	hold "write 0 256M 1"
	hold "flush"
	stop_node 2 KILL
	local i off
	for i in $(seq 0 63); do
		# One 1 MiB block in each 256 MiB, at a different place in each.
		off=$((i * 256 + (i * 37) % 256))
		hold "write ${off}M 1M 2"
	done
	hold "flush"
	local missing
	missing=$(cn 1 volume inspect "$vol" -j | jq -r --arg n "${ID[2]}" '.replicas[] | select(.node == $n) | "\(.state) \(.missing)"')
	[ "$missing" = "out-of-sync $((64 << 20))" ] || log "warning: $vol: node 2's replica is '$missing' after the kill, want out-of-sync 67108864"
	local t0
	t0=$(now)
	start_node 2
	local ready
	ready=$(since "$t0")
	wait_up "$vol" 120
	local up
	up=$(since "$t0")
	read -r copied secs < <(synced_line "$c" "$vol") || die "$vol: no \"replica back in sync\" line in node $c's log"
	echo quit >&8
	exec 8>&-
	wait "$hold" 2>/dev/null || true
	local rate
	rate=$(awk -v b="$copied" -v s="$secs" 'BEGIN { printf "%.0f", b / 1048576 / s }')
	log "resync ($vol, node $c coordinating): copied $copied bytes in $secs s ($rate MiB/s); node 2 ready after $ready s, Up after $up s"
	RS_COPY_S=$secs
	RS_ROWS+="| node $c ($( [ "$c" = 3 ] && echo "--resync-rate $FAST_RATE" || echo "default 256M")) | $((copied >> 20)) MiB | $(printf '%.3f' "$secs") s ($rate MiB/s) | $ready s | $up s |"$'\n'
	delete "$vol"
}

if has resync; then
	RS_ROWS=""
	resync_once 1 rs1
	RS_DEFAULT=$RS_COPY_S
	resync_once 3 rs3
	RS_FAST=$RS_COPY_S
	# What copying 64 MiB costs on this machine: just written (in the page
	# cache, as the resync's source), to a file, durable at the end.
	dd if=/dev/urandom of="$WORK/copy-src" bs=1M count=64 status=none
	t0=$(now)
	dd if="$WORK/copy-src" of="$WORK/copy-dst" bs=1M conv=fsync status=none
	DD_S=$(since "$t0")
	read -r _ TCP64_S _ < <("$WORK/tcpcopy" -src "$WORK/copy-src" -dst "$WORK/copy-dst")
	rm -f "$WORK/copy-src" "$WORK/copy-dst"
	BASE64=$(awk -v a="$DD_S" -v b="$TCP64_S" 'BEGIN { print (a < b) ? a : b }')
	log "copying 64 MiB: dd $DD_S s, one TCP stream $TCP64_S s"
	say "### Resync of 64 MiB changed in a 16 GiB repl 2 volume"
	say ""
	say "Node 2 SIGKILLed while a client holds the volume open on its coordinator, 64 distinct 1 MiB-aligned 1 MiB blocks written, node 2 restarted with the same arguments. Copy: the coordinator's \`replica back in sync … seconds=\`; then from node 2's restart: ready (its \`cairn daemon ready\`), and \`repl_status\` Up (0.1 s polls):"
	say ""
	say "| coordinator (its resync rate) | copied | copy | restart → node ready | restart → Up |"
	say "|---|---:|---:|---:|---:|"
	printf '%s' "$RS_ROWS" >>"$REPORT"
	say ""
	say "Copying 64 MiB on this machine (source just written, in the page cache; fsync at the end): dd file to file $(printf '%.3f' "$DD_S") s, one loopback TCP stream into a file (bench/cmd/tcpcopy) $(printf '%.3f' "$TCP64_S") s."
	say ""
	for v in "default:$RS_DEFAULT" "fast:$RS_FAST"; do
		k=${v%%:*} s=${v#*:}
		ratio=$(awk -v a="$s" -v b="$BASE64" 'BEGIN { printf "%.1f", a / b }')
		met=$(awk -v a="$s" -v b="$BASE64" 'BEGIN { print (a <= 2 * b) ? 1 : 0 }')
		if [ "$k" = default ]; then
			target "resync of 64 MiB ≤ 2× copying 64 MiB, at the default --resync-rate 256M" "$met" "copy $(printf '%.3f' "$s") s = ${ratio}× the faster copy's $(printf '%.3f' "$BASE64") s; 64 MiB at 256 MiB/s is 0.25 s by itself"
		else
			target "resync of 64 MiB ≤ 2× copying 64 MiB, at --resync-rate $FAST_RATE" "$met" "copy $(printf '%.3f' "$s") s = ${ratio}× $(printf '%.3f' "$BASE64") s"
		fi
	done
fi

# ---------------------------------------------------------------- rebuild
if has rebuild; then
	cn 1 volume create rb --size "$((2 * REBUILD_GIB))G" --nodes "${ID[3]}" >/dev/null
	t0=$(now)
	fio_run fill "nbd://${NBD[3]}/rb" write 1M 8 --size="${REBUILD_GIB}G" >/dev/null
	log "rb: $REBUILD_GIB GiB written in $(since "$t0") s"
	drop_caches
	t0=$(now)
	cn 1 volume ha-update rb --repl 2 --node "${ID[2]}" --wait >/dev/null 2>"$WORK/haupdate.err" ||
		{ cat "$WORK/haupdate.err" >&2; die "ha-update rb failed"; }
	RB_WALL=$(since "$t0")
	read -r RB_COPIED RB_S < <(synced_line 3 rb) || die "rb: no \"replica back in sync\" line in node 3's log"
	BYTES=$((REBUILD_GIB << 30))
	RB_RATE=$(awk -v b="$BYTES" -v s="$RB_S" 'BEGIN { printf "%.0f", b / 1048576 / s }')
	RB_WRATE=$(awk -v b="$BYTES" -v s="$RB_WALL" 'BEGIN { printf "%.0f", b / 1048576 / s }')
	log "rebuild: $RB_COPIED bytes copied in $RB_S s ($RB_RATE MiB/s of data), ha-update --wait $RB_WALL s"
	delete rb
	# An empty volume as large: what visiting regions without data costs.
	cn 1 volume create re --size "$((2 * REBUILD_GIB))G" --nodes "${ID[3]}" >/dev/null
	t0=$(now)
	cn 1 volume ha-update re --repl 2 --node "${ID[2]}" --wait >/dev/null 2>"$WORK/haupdate.err" ||
		{ cat "$WORK/haupdate.err" >&2; die "ha-update re failed"; }
	RE_WALL=$(since "$t0")
	read -r RE_COPIED RE_S < <(synced_line 3 re) || die "re: no \"replica back in sync\" line in node 3's log"
	log "rebuild of an empty $((2 * REBUILD_GIB)) GiB volume: $RE_S s (ha-update --wait $RE_WALL s)"
	delete re
	# One plain TCP stream moving as many bytes: a file just written (in
	# the page cache) to /dev/null, the stream alone; then cold file to
	# file with an fsync at the end, the same work as the rebuild's.
	fio --name=src --filename="$WORK/tcp-src" --rw=write --bs=1M --size="${REBUILD_GIB}G" --end_fsync=1 >/dev/null
	read -r _ TCPM_S TCPM_RATE < <("$WORK/tcpcopy" -src "$WORK/tcp-src" -dst /dev/null -sync=false)
	drop_caches
	read -r _ TCP_S TCP_RATE < <("$WORK/tcpcopy" -src "$WORK/tcp-src" -dst "$WORK/tcp-dst")
	rm -f "$WORK/tcp-src" "$WORK/tcp-dst"
	log "one TCP stream: $REBUILD_GIB GiB file to file in $TCP_S s ($TCP_RATE MiB/s), cached file to /dev/null in $TCPM_S s ($TCPM_RATE MiB/s)"
	ratio=$(awk -v a="$RB_RATE" -v b="$TCP_RATE" 'BEGIN { printf "%.2f", a / b }')
	say "### Rebuild: ha-update --repl 2 of a repl 1 volume with $REBUILD_GIB GiB of data"
	say ""
	say "Volume of $((2 * REBUILD_GIB)) GiB on node 3 (\`--resync-rate $FAST_RATE\`, so the throttle is out of the way) holding $REBUILD_GIB GiB written sequentially, page cache dropped, \`volume ha-update rb --repl 2 --node NODE2 --wait\`:"
	say ""
	say "| | bytes | time | rate |"
	say "|---|---:|---:|---:|"
	say "| rebuild: the copy (node 3's \`replica back in sync\`) | $((RB_COPIED >> 20)) MiB copied, $((BYTES >> 20)) MiB of data | $(printf '%.2f' "$RB_S") s | $(num "$RB_RATE") MiB/s |"
	say "| rebuild: \`ha-update --wait\` wall time | | $(printf '%.2f' "$RB_WALL") s | $(num "$RB_WRATE") MiB/s |"
	say "| rebuild of an empty $((2 * REBUILD_GIB)) GiB volume: the copy | $((RE_COPIED >> 20)) MiB of regions, none with data | $(printf '%.2f' "$RE_S") s | |"
	say "| one TCP stream on loopback, cold file to file, fsync (bench/cmd/tcpcopy) | $((BYTES >> 20)) MiB | $(printf '%.2f' "$TCP_S") s | $(num "$TCP_RATE") MiB/s |"
	say "| one TCP stream on loopback, cached file to /dev/null | $((BYTES >> 20)) MiB | $(printf '%.2f' "$TCPM_S") s | $(num "$TCPM_RATE") MiB/s |"
	say ""
	mratio=$(awk -v a="$RB_RATE" -v b="$TCPM_RATE" 'BEGIN { printf "%.2f", a / b }')
	target "rebuild ≥ 0.5× one TCP stream (file to file, as the rebuild)" "$(awk -v r="$ratio" 'BEGIN { print (r >= 0.5) ? 1 : 0 }')" "$(num "$RB_RATE") MiB/s = ${ratio}× $(num "$TCP_RATE") MiB/s; ${mratio}× the stream alone's $(num "$TCPM_RATE") MiB/s"
fi

# ---------------------------------------------------------------- p99
if has p99; then
	# Enough data that a rebuild at 256 MiB/s outlasts the run by 5 s.
	P99_GIB=$(((RUNTIME + 5) * 256 / 1024 + 1))
	[ "$P99_GIB" -ge "$REBUILD_GIB" ] || P99_GIB=$REBUILD_GIB
	cn 1 volume create rp --size "$((2 * P99_GIB))G" --nodes "${ID[1]}" >/dev/null
	t0=$(now)
	fio_run fill "nbd://${NBD[1]}/rp" write 1M 8 --size="${P99_GIB}G" >/dev/null
	log "rp: $P99_GIB GiB written in $(since "$t0") s"
	# qd1: the run, with node 1's replica write times a second before its end
	qd1() { fio_scraped qd1 "nbd://${NBD[1]}/rp" randwrite 4k 1 rp --size="${P99_GIB}G" --randrepeat=0; }
	read -r B_IOPS _ _ B_P99 _ < <(qd1)
	B_TIMES="– | $(eng_cell write) | $(busy_cell "$(busy)")"
	log "rp repl 1: $(num "$B_IOPS") IOPS, p99 $(num "$B_P99") µs"
	cn 1 volume ha-update rp --repl 2 --node "${ID[2]}" >/dev/null
	# The copy starts at the coordinator's next retry (up to 2 s): until
	# then the new replica is out of sync and gets no writes.
	t0=$(now)
	until [ "$(cn 1 volume inspect rp -j | jq -r --arg n "${ID[2]}" '.replicas[] | select(.node == $n) | .state')" = resyncing ]; do
		[ "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print (b - a > 30) }')" = 0 ] || die "rp: the new replica is not resyncing after 30 s"
		sleep 0.05
	done
	log "rp: the new replica is resyncing $(since "$t0") s after ha-update"
	perf_start p99-during
	read -r D_IOPS _ _ D_P99 _ < <(qd1)
	perf_stop
	D_STATE=$(repl_status rp)
	D_TIMES="$(mean_us 1) / $(mean_us 2) | $(eng_cell write) | $(busy_cell "$(busy)")"
	log "rp during its rebuild: $(num "$D_IOPS") IOPS, p99 $(num "$D_P99") µs, replica | engine mean write µs (node 1 / node 2) | CPU busy: $D_TIMES; repl_status $D_STATE at the end"
	[ "$D_STATE" != Up ] || log "warning: the rebuild ended before fio did"
	wait_up rp 600
	read -r _ P_S < <(synced_line 1 rp) || die "rp: no \"replica back in sync\" line in node 1's log"
	# Open it again only once the rebuild's coordinator has closed and the
	# copy's dirty pages are on disk: an open that starts a coordinator
	# while the disk is busy can evict the new replica: the open of a
	# volume its node's engine still has at repl 1 (raised by ha-update)
	# gives the coordinator's claim and dials openLookupTimeout, 300 ms
	# (control/replicated.go), and a replica not dialled by then is
	# evicted "unreachable at open". The run after is flagged if it was.
	until [ "$(cn 1 volume inspect rp -j | jq -r '.coordinator // ""')" = "" ]; do sleep 0.1; done
	sync
	EVICTED=$(grep -c 'volume=rp .*err="unreachable at open"' "$WORK/n1/log" || true)
	perf_start p99-after
	read -r A_IOPS _ _ A_P99 _ < <(qd1)
	perf_stop
	A_STATE=$(repl_status rp)
	A_TIMES="$(mean_us 1) / $(mean_us 2) | $(eng_cell write) | $(busy_cell "$(busy)")"
	if [ "$(grep -c 'volume=rp .*err="unreachable at open"' "$WORK/n1/log" || true)" != "$EVICTED" ] || [ "$A_STATE" != Up ]; then
		log "warning: rp's open for the run after the rebuild evicted a replica (repl_status $A_STATE): that run is not at repl 2"
		A_NOTE=" (**not at repl 2**: its open evicted node 2's replica, repl_status $A_STATE)"
	fi
	log "rp repl 2 after: $(num "$A_IOPS") IOPS, p99 $(num "$A_P99") µs, replica | engine mean write µs (node 1 / node 2) | CPU busy: $A_TIMES"
	delete rp
	ratio=$(awk -v a="$D_P99" -v b="$A_P99" 'BEGIN { printf "%.2f", a / b }')
	say "### Client 4k randwrite QD1 while a rebuild runs (default --resync-rate 256M)"
	say ""
	say "A volume on node 1 with $P99_GIB GiB of data; fio 4k randwrite QD1 over those $P99_GIB GiB for $RUNTIME s through node 1, before the rebuild (repl 1), right after \`ha-update --repl 2 --node NODE2\` (the copy took $(printf '%.1f' "$P_S") s; repl_status at fio's end: $D_STATE), and after it (repl 2, in sync):"
	say ""
	say "| | IOPS | p99 (µs) | replica mean write (µs): node 1 / node 2 | engine mean write (µs): node 1 / node 2 | machine CPU busy |"
	say "|---|---:|---:|---:|---:|---:|"
	say "| repl 1, before | $(num "$B_IOPS") | $(num "$B_P99") | $B_TIMES |"
	say "| repl 2, during the rebuild | $(num "$D_IOPS") | $(num "$D_P99") | $D_TIMES |"
	say "| repl 2, after${A_NOTE:-} | $(num "$A_IOPS") | $(num "$A_P99") | $A_TIMES |"
	say ""
	met=$(awk -v r="$ratio" 'BEGIN { print (r <= 2) ? 1 : 0 }')
	[ "$D_STATE" != Up ] || met=0
	perf_say p99-during
	perf_say p99-after
	target "QD1 write p99 during a rebuild ≤ 2× without" "$met" "$(num "$D_P99") µs = ${ratio}× $(num "$A_P99") µs at repl 2 after it; $(awk -v a="$D_P99" -v b="$B_P99" 'BEGIN { printf "%.1f", a / b }')× repl 1's $(num "$B_P99") µs"
fi

# ---------------------------------------------------------------- profile
if has profile; then
	has volumes || volumes_create
	# profile_row TAG VOL NODES...: restart those nodes with --cpu-profile
	# (node 1 keeps its kvdb address), run the durable row on VOL, stop
	# them (SIGTERM writes the profile) and start them again without.
	profile_row() {
		local tag=$1 vol=$2 i
		shift 2
		log "profile ($tag): restarting node(s) $* with --cpu-profile"
		for i in $(printf '%s\n' "$@" | sort -r); do stop_node "$i" TERM; done
		for i in "$@"; do start_node "$i" --cpu-profile "$PROFDIR/$tag-node$i.pprof"; done
		perf_start "$tag"
		read -r P_IOPS _ P_IOS P_P99 P_P99F P_MEAN P_MEANF < <(fio_scraped bench "nbd://${NBD[1]}/$vol" randwrite 4k 32 "$vol" --size="$SPAN" --fsync="${PROFILE_FSYNC:-32}" --randrepeat=0)
		perf_stop
		local ew ef busy_pct
		ew=$(eng_cell write) ef=$(eng_cell flush) busy_pct=$(busy_cell "$(busy)")
		log "profile ($tag): $(num "$P_IOPS") IOPS, $P_IOS writes, p99 $(num "$P_P99") µs, mean write $(num "$P_MEAN") µs, flush mean $(num "$P_MEANF") p99 $(num "$P_P99F") µs; machine CPU $busy_pct busy; replica mean write µs (node 1|2): $(mean_us 1)|$(mean_us 2); engine mean write µs $ew, flush µs $ef"
		for i in $(printf '%s\n' "$@" | sort -r); do stop_node "$i" TERM; done
		for i in "$@"; do
			$GO tool pprof -top -nodecount=40 "$CAIRN" "$PROFDIR/$tag-node$i.pprof" >"$PROFDIR/$tag-node$i.top" 2>/dev/null
			$GO tool pprof -top -cum -nodecount=80 "$CAIRN" "$PROFDIR/$tag-node$i.pprof" >"$PROFDIR/$tag-node$i.cum" 2>/dev/null
		done
		for i in "$@"; do start_node "$i"; done
		say "| $tag | $(num "$P_IOPS") | $(num "$P_MEAN") / $(num "$P_P99") | $(num "$P_MEANF") / $(num "$P_P99F") | $busy_pct | $(cpu "$tag" 1 "$P_IOS") | $([ $# -gt 1 ] && cpu "$tag" 2 "$P_IOS" || echo –) | $(mean_us 1) / $(mean_us 2) | $ew | $ef |"
	}
	# cpu TAG I WRITES → "S s, µs per write" from the profile's total samples
	cpu() { sed -n 's/.*Total samples = \([0-9.]*\)\([a-z]*\).*/\1 \2/p' "$PROFDIR/$1-node$2.top" |
		awk -v n="$3" '{ s = $1; if ($2 == "ms") s /= 1000; if ($2 == "mins") s *= 60; if ($2 == "hrs") s *= 3600
			printf "%.1f s, %.1f µs per write", s, s * 1e6 / n }'; }
	say "### Profile: 4k randwrite QD32 fsync=32, repl 1 and repl 2"
	say ""
	say "The row run once ($RUNTIME s) on v1 with node 1 restarted with \`--cpu-profile\`, then on v2 with nodes 1 and 2 restarted with it (node 1 on the same kvdb address); CPU from each profile (the whole process life: start, the row, stop):"
	say ""
	say "| | IOPS | write mean / p99 (µs) | flush mean / p99 (µs) | machine CPU busy | node 1 CPU | node 2 CPU | replica mean write (µs): node 1 / node 2 | engine mean write (µs): node 1 / node 2 | engine mean flush (µs): node 1 / node 2 |"
	say "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	profile_row repl1 v1 1
	profile_row repl2 v2 1 2
	say ""
	say "\`go tool pprof -top\` (and -cum) of each: $PROFDIR/{repl1,repl2}-node{1,2}.{top,cum}."
	say ""
	perf_say repl1
	perf_say repl2
fi

{
	echo "bench/replication.sh${ARGS:+ $ARGS} — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores (the three daemons, fio and the kvdb share them), $(uname -r), $(($(date +%s) - START)) s; load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
	echo
	cat "$REPORT"
	echo "Targets:"
	echo
	cat "$TARGETS"
} | tee ${OUT:+"$OUT"}
[ -z "${PROFDIR:-}" ] || log "profiles in $PROFDIR"
