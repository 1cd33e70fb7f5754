#!/usr/bin/env bash
# Post-processing one capture into a flame graph, timed, with each process's peak RSS:
#
#   scripts/bench/postproc.sh bar  CAPTURE   OUT   bar-probe report CAPTURE -o OUT/report
#   scripts/bench/postproc.sh perf PERFDATA  OUT   perf script | inferno-collapse-perf | inferno-flamegraph
#
# Leaves OUT/wall_ms (whole command) and OUT/time-*.txt (/usr/bin/time -v of each process).
set -euo pipefail

what=$1 input=$2 out=$3
rm -rf "$out"
mkdir -p "$out"
now_ms() { echo $(($(date +%s%N) / 1000000)); }
T=(/usr/bin/time -v -o)

start=$(now_ms)
case "$what" in
    bar)
        : "${BAR_PROBE:?BAR_PROBE must name the bar-probe binary}"
        "${T[@]}" "$out/time-report.txt" "$BAR_PROBE" report "$input" -o "$out/report" > /dev/null
        ;;
    perf)
        # Only the fields inferno reads: a tracepoint's own fields on the event line (the
        # default) make inferno-collapse-perf drop every stack as "weird".
        "${T[@]}" "$out/time-script.txt" perf script -i "$input" -F comm,pid,tid,time,event,ip,sym,dso \
            2> "$out/script.err" |
            "${T[@]}" "$out/time-collapse.txt" inferno-collapse-perf |
            "${T[@]}" "$out/time-flamegraph.txt" inferno-flamegraph > "$out/perf.svg"
        ;;
    *)
        echo "postproc.sh: bar or perf, not '$what'" >&2
        exit 2
        ;;
esac
echo $(($(now_ms) - start)) > "$out/wall_ms"
