#!/usr/bin/env bash
# bench/cloudsnap.sh — cloudsnap backup and restore against a local S3
# server (versitygw, posix backend in the work dir, loopback), next to
# minio-go alone moving the same bytes to the same server.
#
# Cases, each on a 1 GiB volume of a cairn daemon built from this checkout
# (sparse 16 GiB file drive in the work dir):
#   random    1 GiB of random bytes (incompressible)
#   halfzero  512 MiB random then 512 MiB of zeros (a sparse source: the
#             zeros arrive as holes and are never uploaded)
# For each: `cloudsnap backup --wait` (full) and `cloudsnap restore --wait`
# into a new volume, timed by the job's own start and end (what `cloudsnap
# status -j` reports), each after a sync (see below); the restored volume is
# read back over NBD and compared with cmp. The rate is the volume's size
# over that time.
# Baseline (bench/cmd/s3baseline): minio-go putting and getting the same
# file as 16 MiB objects 4 at a time (the shape cairn uses), and as one
# multipart PutObject / one GetObject, each timed after a sync too.
# Targets (issue 18): backup and restore ≥ 0.7× the client-only rate of
# the same shape.
#
# incremental: a 4 GiB volume filled with random data (fio, refill_buffers),
# a full backup, then 64 MiB changed (16 random 4 MiB-aligned 4 MiB writes,
# fio randwrite with fresh random buffers), and an incremental backup:
# target ≤ 70 MiB uploaded.
#
# Usage: bash bench/cloudsnap.sh [-o DIR] [-p PROFILE]
#   -o  keep the logs in DIR
#   -p  write the daemon's Go CPU profile of the whole run to PROFILE
#       (look at one stage with e.g. `go tool pprof -top -focus
#       'cloudsnap.fill' cairn PROFILE`; the binary is copied next to it)
# Needs: versitygw (make deps), nbdcopy, fio, jq, cmp. Takes ~10 GiB of disk
# in $TMPDIR and a few minutes.
set -euo pipefail
GO=${GO:-/usr/local/go/bin/go}
export PATH=/usr/local/go/bin:$PATH
root=$(cd "$(dirname "$0")/.." && pwd)
keep=""
profile=""
while getopts o:p: opt; do
	case $opt in
	o) keep=$OPTARG; mkdir -p "$keep" ;;
	p) profile=$(realpath -m "$OPTARG") ;;
	*) exit 2 ;;
	esac
done

work=$(mktemp -d "${TMPDIR:-/tmp}/cloudsnap-bench.XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if [ -n "$profile" ] && [ -x "$work/bin/cairn" ]; then cp "$work/bin/cairn" "$profile.cairn"; fi
	if [ -n "$keep" ]; then cp "$work"/*.log "$keep"/ 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

gw="$($GO env GOPATH)/bin/versitygw"
[ -x "$gw" ] || { echo "versitygw not found at $gw: run make deps" >&2; exit 1; }
for tool in nbdcopy fio jq cmp; do command -v $tool >/dev/null || { echo "$tool missing: run make deps" >&2; exit 1; }; done

mkdir -p "$work/bin" "$work/s3/bench" "$work/data"
(cd "$root" && $GO build -o "$work/bin/cairn" ./cmd/cairn && $GO build -o "$work/bin/s3baseline" ./bench/cmd/s3baseline)
cairn="$work/bin/cairn"
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

s3port=$(freeport)
"$gw" --port 127.0.0.1:$s3port --access bench --secret benchsecret --quiet --health /health posix "$work/s3" >"$work/versitygw.log" 2>&1 &
pids+=($!)
api=127.0.0.1:$(freeport)
prof=()
[ -n "$profile" ] && prof=(--cpu-profile "$profile")
"$cairn" daemon "${prof[@]}" --data-dir "$work/data" --api "$api" --nbd 127.0.0.1:0 --kvdb-listen 127.0.0.1:0 --kvdb-peer 127.0.0.1:0 --repl-listen 127.0.0.1:0 \
	--default-drive-size 16G >"$work/daemon.log" 2>&1 &
pids+=($!)
export CAIRN_HOST=$api
for _ in $(seq 200); do "$cairn" status >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$s3port/health" >/dev/null && break; sleep 0.1; done
sock="$work/data/nbd.sock"
uri() { echo "nbd+unix:///$1?socket=$sock"; }
"$cairn" credentials create bench --provider s3 --s3-endpoint "http://127.0.0.1:$s3port" --s3-access-key bench --s3-secret-key benchsecret --bucket bench >/dev/null
"$cairn" credentials validate bench >/dev/null

# jobsecs JSON: the job's duration from its own timestamps.
jobsecs() { jq -r '((.finished | sub("\\.[0-9]+Z$";"Z") | fromdate) + (.finished | capture("\\.(?<f>[0-9]+)Z$").f | ("0." + .) | tonumber)) - ((.started | sub("\\.[0-9]+Z$";"Z") | fromdate) + (.started | capture("\\.(?<f>[0-9]+)Z$").f | ("0." + .) | tonumber))' <<<"$1"; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / s / 1048576 }'; }

declare -A base
results=()
for case in random halfzero; do
	src="$work/$case.img"
	if [ $case = random ]; then
		head -c 1G /dev/urandom >"$src"
	else
		head -c 512M /dev/urandom >"$src"
		truncate -s 1G "$src"
	fi
	"$cairn" volume create $case --size 1G >/dev/null
	nbdcopy "$src" "$(uri $case)"
	# Each timed job starts with no dirty page cache left by the step
	# before it (nbdcopy's 1 GiB, the backup's objects in versitygw): else
	# the kernel's background write-back of those runs during the job,
	# throttles its writes, and the job pays for another step's I/O.
	sync
	b=$("$cairn" cloudsnap backup $case --wait -j)
	bsecs=$(jobsecs "$b")
	id=$(jq -r .cloudsnap <<<"$b")
	sync
	r=$("$cairn" cloudsnap restore --snap "$id" --name $case-restored --wait -j)
	rsecs=$(jobsecs "$r")
	nbdcopy "$(uri $case-restored)" "$work/$case.back"
	cmp "$src" "$work/$case.back"
	rm -f "$work/$case.back"
	while read -r name n secs mibs; do base[$case/$name]=$mibs; done < <("$work/bin/s3baseline" -endpoint 127.0.0.1:$s3port -access bench -secret benchsecret -bucket bench -file "$src")
	rm -f "$src"
	brate=$(rate $((1 << 30)) "$bsecs")
	rrate=$(rate $((1 << 30)) "$rsecs")
	results+=("$(printf '| %s | backup | %.2f s | %s MiB/s | %s MiB | %s MiB/s | %.2f× | %s MiB/s |' $case "$bsecs" "$brate" \
		$(($(jq .bytes_uploaded <<<"$b") >> 20)) "${base[$case/put-16MiBx4]}" "$(awk -v a="$brate" -v b="${base[$case/put-16MiBx4]}" 'BEGIN{print a/b}')" "${base[$case/put-multipart]}")")
	results+=("$(printf '| %s | restore | %.2f s | %s MiB/s | %s MiB | %s MiB/s | %.2f× | %s MiB/s |' $case "$rsecs" "$rrate" \
		$(($(jq .bytes_stored <<<"$r") >> 20)) "${base[$case/get-16MiBx4]}" "$(awk -v a="$rrate" -v b="${base[$case/get-16MiBx4]}" 'BEGIN{print a/b}')" "${base[$case/get-whole]}")")
	"$cairn" volume delete $case-restored >/dev/null
done

echo "## cloudsnap backup and restore, 1 GiB volume, versitygw on loopback"
echo
echo "| case | op | time (job) | rate (1 GiB / time) | bytes moved | minio-go alone, 16 MiB ×4 | ratio | minio-go alone, one object |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${results[@]}"
echo

# Incremental: 64 MiB changed in a 4 GiB volume.
"$cairn" volume create inc --size 4G >/dev/null
fio --name=fill --ioengine=nbd --uri="$(uri inc)" --rw=write --bs=1M --size=4G --iodepth=8 --refill_buffers \
	--output="$work/fio-fill.log" >/dev/null
full=$("$cairn" cloudsnap backup inc --wait -j)
fio --name=change --ioengine=nbd --uri="$(uri inc)" --rw=randwrite --bs=4M --size=4G --io_size=64M --iodepth=4 --refill_buffers \
	--output="$work/fio-change.log" >/dev/null
incr=$("$cairn" cloudsnap backup inc --wait -j)
up=$(jq .bytes_uploaded <<<"$incr")
echo "## incremental: 64 MiB changed (16 × 4 MiB, aligned) in a 4 GiB volume"
echo
echo "| backup | full | uploaded | time (job) | target |"
echo "| --- | --- | --- | --- | --- |"
printf '| first | %s | %.1f MiB | %.2f s | |\n' "$(jq .full <<<"$full")" "$(awk -v b="$(jq .bytes_uploaded <<<"$full")" 'BEGIN{print b/1048576}')" "$(jobsecs "$full")"
printf '| second | %s | %.1f MiB | %.2f s | ≤ 70 MiB: %s |\n' "$(jq .full <<<"$incr")" "$(awk -v b="$up" 'BEGIN{print b/1048576}')" "$(jobsecs "$incr")" \
	"$([ "$up" -le $((70 << 20)) ] && echo met || echo MISSED)"
