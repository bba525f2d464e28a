#!/usr/bin/env bash
# Measures `guard replay` over COPIES copies of attack-mixed.ami against
# fail2ban-regex (Debian package fail2ban, its asterisk filter) over the
# messages log Asterisk 20 writes for the same traffic (cmd/asterisklog), the
# runs of the two taking turns in one run, and prints messages/s and lines/s:
# the best and the median of the runs, wall time of the whole process
# (start-up included), and per second of CPU time, with the machine's load
# before and after.
#
#   docs/bench-replay.sh                  # COPIES=50 RUNS=21 F2B_RUNS=3
#   RUNS=41 F2B_RUNS=5 docs/bench-replay.sh
#
# Figures and how to read them: docs/load-report.md, "guard replay against
# fail2ban-regex".
set -euo pipefail
cd "$(dirname "$0")/.."

COPIES=${COPIES:-50}
RUNS=${RUNS:-21}
F2B_RUNS=${F2B_RUNS:-3}
transcript=testdata/transcripts/attack-mixed.ami
filter=/etc/fail2ban/filter.d/asterisk.conf

command -v fail2ban-regex >/dev/null || { echo "fail2ban-regex is missing: apt-get install fail2ban" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

go build -o "$work/guard" ./cmd/guard
go run ./cmd/asterisklog --copies "$COPIES" "$transcript" >"$work/messages" 2>/dev/null
files=()
for _ in $(seq "$COPIES"); do files+=("$transcript"); done

load() {
	echo "  uptime: $(uptime)"
	echo "  /proc/pressure/cpu: $(head -1 /proc/pressure/cpu)"
}

# elapsed runs a command, its output discarded, and prints its wall time and
# the CPU time it used (user + system), in seconds.
elapsed() {
	local TIMEFORMAT='%3R %3U %3S'
	{ time "$@" >/dev/null 2>&1 </dev/null; } 2>&1 | awk '{ printf "%s %.3f\n", $1, $2 + $3 }'
}

# median prints the median of numbers, one a line.
median() {
	sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# stats reads a file of "wall cpu" lines and a count, and prints the best and
# median rates of the wall times and the rate per median CPU time.
stats() {
	local best med cpu
	best=$(cut -d' ' -f1 "$1" | sort -n | head -1)
	med=$(cut -d' ' -f1 "$1" | median)
	cpu=$(cut -d' ' -f2 "$1" | median)
	awk -v n="$2" -v unit="$3" -v best="$best" -v med="$med" -v cpu="$cpu" -v runs="$(wc -l <"$1")" 'BEGIN {
		printf "  wall: best %.3f s = %.0f %s; median %.3f s = %.0f %s (%d runs)\n", best, n / best, unit, med, n / med, unit, runs
		printf "  CPU time (user + system): median %.3f s = %.0f %s a CPU second\n", cpu, n / cpu, unit
		printf "%.0f %.0f %.0f\n", n / best, n / med, n / cpu > "/dev/stderr"
	}'
}

echo "machine: $(nproc) cores; before:"
load

# The counts, and a check that both find what they should.
"$work/guard" replay "${files[@]}" >"$work/alerts" 2>"$work/summary"
msgs=$(sed -n 's/^total: .*), \([0-9]*\) messages .*/\1/p' "$work/summary")
alerts=$(wc -l <"$work/alerts")
lines=$(wc -l <"$work/messages")
fail2ban-regex "$work/messages" "$filter" >"$work/f2b" 2>&1
matched=$(awk '/^Lines:/ { print $6 }' "$work/f2b")
echo "guard replay: $COPIES copies of $transcript, $msgs messages, $alerts alerts ($((alerts / COPIES)) a copy)"
echo "fail2ban-regex: $lines lines, $matched matched ($((matched / COPIES)) a copy)"
if [ "$alerts" -ne $((15 * COPIES)) ] || [ "$matched" -ne $((28 * COPIES)) ]; then
	echo "unexpected counts: want 15 alerts and 28 matched lines a copy" >&2
	exit 1
fi

# The runs of the two take turns, so that both meet the same load.
every=$(((RUNS + F2B_RUNS - 1) / F2B_RUNS))
f2b=0
for i in $(seq "$RUNS"); do
	elapsed "$work/guard" replay "${files[@]}" >>"$work/guard-times"
	if [ $((i % every)) -eq 0 ] || { [ "$i" -eq "$RUNS" ] && [ "$f2b" -lt "$F2B_RUNS" ]; }; then
		elapsed fail2ban-regex "$work/messages" "$filter" >>"$work/f2b-times"
		f2b=$((f2b + 1))
	fi
done
echo "guard replay ($RUNS runs of the whole process):"
stats "$work/guard-times" "$msgs" msgs/s 2>"$work/guard-rates"
echo "fail2ban-regex ($f2b runs of the whole process, between those of guard replay):"
stats "$work/f2b-times" "$lines" lines/s 2>"$work/f2b-rates"
own=$(sed -n 's/.*processed in \([0-9.]*\) sec.*/\1/p' "$work/f2b")
echo "  fail2ban-regex's own count of its first run, start-up left out: $own s = $(echo "$lines / $own" | bc) lines/s"

read -r gbest gmed gcpu <"$work/guard-rates"
read -r fbest fmed fcpu <"$work/f2b-rates"
echo "guard replay / fail2ban-regex: best $(echo "scale=1; $gbest / $fbest" | bc)x, median $(echo "scale=1; $gmed / $fmed" | bc)x; per CPU second $(echo "scale=1; $gcpu / $fcpu" | bc)x"
echo "after:"
load
