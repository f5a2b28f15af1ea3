# bench/snapshot-cliff.sh — `bench/snapshot.sh cliff` (issue 17): the write
# cliff after a snapshot, in 1 s windows. Sourced by bench/snapshot.sh, which
# has parsed the options (VOLSIZE BEFORE AFTER WARM KEEP WORKLOADS CASES) and
# defines WORK, CAIRN, start_daemon, stop_daemon, stop_sampler, cairn, uri,
# log, and the cleanup trap (which also stops FIOPID and SAMPLER). The usage
# is in bench/snapshot.sh's header.

DRIVE_SIZE=64G
vol_bytes=$(numfmt --from=iec "$VOLSIZE")
extents=$((vol_bytes / 1048576))
[ "$extents" -ge 1 ] || { echo "snapshot.sh: -V $VOLSIZE is less than one extent" >&2; exit 1; }
now_ms() { date +%s%3N; }
# pool_sample: the pool's used bytes, extents filling, their RAM and its budget.
pool_sample() { cairn status -j | jq -r '.pools[0] | "\(.used) \(.filling // 0) \(.fill_ram // 0) \(.fill_budget // 0)"'; }

# fio_args WORKLOAD: the fio options of a workload.
fio_args() {
	case $1 in
	qd32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
	qd1) echo "--rw=randwrite --bs=4k --iodepth=1 --fsync=1" ;;
	*) echo "snapshot.sh: unknown workload $1 (qd32, qd1)" >&2; exit 2 ;;
	esac
}
qd_of() { case $1 in qd32) echo 32 ;; *) echo 1 ;; esac; }

# touch_all VOLUME: one 4k write into every 1 MiB extent, so none is shared.
touch_all() {
	fio --name=touch --ioengine=nbd --uri="$(uri "$1")" --rw=write --bs=4k --iodepth=32 --size="$VOLSIZE" \
		--zonemode=strided --zonesize=4k --zonerange=1M --number_ios="$extents" >/dev/null
}

# cliff_case WORKLOAD VOLUME SNAPSHOT OUT: one fio run around one snapshot.
# Leaves OUT.{lat,used,t0,t1,fio.json}.
cliff_case() {
	local wl=$1 vol=$2 snap=$3 out=$4
	touch_all "$vol"
	local total=$((WARM + BEFORE + AFTER + 2))
	(while :; do echo "$(now_ms) $(pool_sample)"; sleep 0.5; done) >"$out.used" 2>/dev/null &
	SAMPLER=$!
	local start
	start=$(now_ms)
	# shellcheck disable=SC2046 # fio_args is a list of options
	fio --name=cliff --ioengine=nbd --uri="$(uri "$vol")" $(fio_args "$wl") --size="$VOLSIZE" \
		--time_based --runtime="$total" --write_lat_log="$out" --log_avg_msec=0 --log_offset=1 \
		--log_unix_epoch=1 --disable_slat=1 --output-format=json --output="$out.fio.json" >/dev/null &
	FIOPID=$!
	# Sleep until WARM+BEFORE seconds after fio started.
	local wake=$((start + (WARM + BEFORE) * 1000))
	while [ "$(now_ms)" -lt "$wake" ]; do sleep 0.05; done
	now_ms >"$out.t0"
	cairn volume snapshot create "$vol" --name "$snap" >/dev/null
	now_ms >"$out.t1"
	wait "$FIOPID"
	FIOPID=""
	stop_sampler
	mv "${out}_clat.1.log" "$out.lat"
	rm -f "${out}"_lat.1.log
}

# report_case WORKLOAD LABEL OUT: the table and the targets of one case.
report_case() {
	local wl=$1 label=$2 out=$3 qd
	qd=$(qd_of "$wl")
	local t0 t1
	t0=$(cat "$out.t0")
	t1=$(cat "$out.t1")
	# Per write: window and latency; per window after T0: distinct blocks
	# first written in it (the bytes changed).
	LC_ALL=C awk -F', *' -v t0="$t0" -v b="$BEFORE" -v a="$AFTER" -v chg="$out.changed" '
		$3 == 1 {
			w = int(($1 - t0 + 1000000000) / 1000) - 1000000
			if (w < -b || w >= a) next
			print w, $2
			if (w >= 0 && !(($5 / 4096) in seen)) { seen[$5 / 4096] = 1; n[w]++ }
		}
		END { for (w = 0; w < a; w++) print w, n[w] + 0 > chg }' "$out.lat" |
		sort -k1,1n -k2,2n >"$out.sorted"
	# Per window: count and p99 (ns); "before": all writes before T0 pooled.
	LC_ALL=C awk '
		function flush() { if (cnt > 0) printf "%d %d %d\n", cur, cnt, v[int((cnt * 99 + 99) / 100)] }
		NR == 1 || $1 != cur { flush(); cur = $1; cnt = 0 }
		{ v[++cnt] = $2 }
		END { flush() }' "$out.sorted" >"$out.windows"
	local p99_before
	p99_before=$(LC_ALL=C awk '$1 < 0 { print $2 }' "$out.sorted" | sort -n |
		awk '{ v[NR] = $1 } END { print v[int((NR * 99 + 99) / 100)] + 0 }')
	local used0
	used0=$(awk -v t0="$t0" '$1 <= t0 && $2 != "" { u = $2 } END { print u + 0 }' "$out.used")
	local fills
	fills=$(awk -v t0="$t0" '$1 <= t0 && $5 != "" { a = $3 " extents filling, fill state " int($4 / 1024) " KiB" }
		$5 != "" { z = $3 " extents and " int($4 / 1024) " KiB"; bud = int($5 / 1024) }
		END { if (a != "") printf "%s at T0, %s at the end (budget %d KiB)", a, z, bud }' "$out.used")
	echo
	echo "#### $wl, $label (snapshot created in $((t1 - t0)) ms)"
	echo
	echo "| window (s from T0) | IOPS | × mean before | p99 (ms) | × p99 before | pool used since T0 (MiB) | changed since T0 (MiB) |"
	echo "|---:|---:|---:|---:|---:|---:|---:|"
	LC_ALL=C awk -v b="$BEFORE" -v a="$AFTER" -v t0="$t0" -v p99b="$p99_before" -v used0="$used0" -v qd="$qd" -v fills="${fills:+ $fills.}" \
		-v chgfile="$out.changed" -v usedfile="$out.used" -v verdict="$out.verdict" '
		BEGIN {
			while ((getline line < chgfile) > 0) { split(line, f, " "); chg[f[1]] = f[2] }
			nu = 0
			while ((getline line < usedfile) > 0) { split(line, f, " "); if (f[2] != "") { ut[++nu] = f[1]; uv[nu] = f[2] } }
		}
		{ cnt[$1] = $2; p99[$1] = $3 }
		# used_at(t): the last sample at or before t.
		function used_at(t,   i, u) { u = ""; for (i = 1; i <= nu; i++) if (ut[i] <= t) u = uv[i]; return u }
		END {
			for (w = -b; w < 0; w++) sum += cnt[w]
			mean = sum / b
			minr = 1e9; maxp = 0; worst_space = -1e18; cum = 0; space_ok = 1
			for (w = -b; w < a; w++) {
				r = mean > 0 ? cnt[w] / mean : 0
				pr = p99b > 0 ? p99[w] / p99b : 0
				usedcol = ""; chgcol = ""
				if (w >= 0) {
					if (r < minr) { minr = r; minw = w }
					if (pr > maxp) { maxp = pr; maxpw = w }
					cum += chg[w]
					u = used_at(t0 + (w + 1) * 1000)
					if (u != "") {
						grown = (u - used0) / 1048576
						allowed = 2 * cum * 4096 / 1048576 + qd
						usedcol = sprintf("%.0f", grown)
						if (grown - allowed > worst_space) { worst_space = grown - allowed; ws_w = w; ws_g = grown; ws_a = allowed }
						if (grown > allowed) space_ok = 0
					}
					chgcol = sprintf("%.1f", cum * 4096 / 1048576)
				}
				printf "| %d | %d | %.3f | %.2f | %.1f | %s | %s |\n", w, cnt[w], r, p99[w] / 1e6, pr, usedcol, chgcol
			}
			printf "\nBefore T0: mean %.0f IOPS, p99 %.2f ms (all writes of the %d s pooled); pool used %.0f MiB.%s\n", mean, p99b / 1e6, b, used0 / 1048576, fills
			printf "- IOPS target (every window after ≥ 0.5× the mean before): **%s** — worst window %d s: %.3f×\n", (minr >= 0.5 ? "PASS" : "FAIL"), minw, minr
			printf "- p99 target (every window after ≤ 5× the p99 before): **%s** — worst window %d s: %.1f×\n", (maxp <= 5 ? "PASS" : "FAIL"), maxpw, maxp
			printf "- space target (used since T0 ≤ 2 × changed + %d MiB, every window): **%s** — worst window %d s: %.0f MiB used, %.0f MiB allowed\n", qd, (space_ok ? "PASS" : "FAIL"), ws_w, ws_g, ws_a
			printf "%s %s %s\n", (minr >= 0.5 ? "PASS" : "FAIL"), (maxp <= 5 ? "PASS" : "FAIL"), (space_ok ? "PASS" : "FAIL") > verdict
		}' "$out.windows"
}

echo "bench/snapshot.sh -V $VOLSIZE -B $BEFORE -A $AFTER -w \"$WORKLOADS\" -c \"$CASES\" cliff — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(uname -r), fio $(fio --version)"
summary=""
for wl in $WORKLOADS; do
	fio_args "$wl" >/dev/null
	start_daemon "cliff-$wl"
	cairn volume create c --size "$VOLSIZE" >/dev/null
	log "cliff $wl: prefill $VOLSIZE"
	fio --name=prefill --ioengine=nbd --uri="$(uri c)" --rw=write --bs=1M --iodepth=8 --size="$VOLSIZE" --end_fsync=1 >/dev/null
	taken=0
	for n in $CASES; do
		# Snapshots up to n-1 that no case measures, each after 128 random writes.
		while [ $((taken + 1)) -lt "$n" ]; do
			taken=$((taken + 1))
			fio --name=churn --ioengine=nbd --uri="$(uri c)" --rw=randwrite --bs=4k --iodepth=32 --size="$VOLSIZE" \
				--number_ios=128 --randseed="$taken" >/dev/null
			cairn volume snapshot create c --name "c.s$taken" >/dev/null
		done
		taken=$((taken + 1))
		log "cliff $wl: snapshot $n"
		out=$DIR/case$n
		cliff_case "$wl" c "c.s$taken" "$out"
		report_case "$wl" "snapshot $n" "$out"
		summary="$summary
| $wl | $n | $(sed 's/ / | /g' "$out.verdict") |"
	done
	got=$(cairn volume snapshot list c --json | jq 'length')
	[ "$got" = "$taken" ] || { echo "snapshot.sh: $got snapshots, want $taken" >&2; exit 1; }
	stop_daemon
	if [ -n "$KEEP" ]; then
		mkdir -p "$KEEP/$wl"
		cp "$DIR"/case*.lat "$DIR"/case*.used "$DIR"/case*.t0 "$DIR"/case*.t1 "$DIR"/case*.fio.json "$DIR/log" "$KEEP/$wl/"
	fi
	rm -rf "$DIR"
done
echo
echo "| workload | snapshot | IOPS ≥ 0.5× | p99 ≤ 5× | space ≤ 2× changed + QD MiB |"
echo "|---|---:|---|---|---|$summary"
