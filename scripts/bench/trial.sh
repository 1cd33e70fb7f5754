#!/usr/bin/env bash
# One benchmark trial: start a built-in workload that waits for a go, attach a tracer to its
# pid, wait until the tracer says it is attached, let the workload do its fixed amount of work,
# then stop the tracer. Leaves in OUT:
#   workload.json  the workload's report, with its own elapsed_us
#   tracer.cmd     the tracer's command line          tracer.err/out  what it printed
#   attach_ms      from starting the tracer to it being attached
#   status         "ok", or why the trial failed
#   time.txt       with TIME_TRACER=1, /usr/bin/time -v of the tracer (peak RSS)
#   progs-*.json   with PROG_STATS=1 (and kernel.bpf_stats_enabled=1), `bpftool -j prog show`
#                  at the go and as late as possible while the workload runs, prog_ids (the
#                  tracer's programs) and progs_ms (when both were taken, after the go)
#
#   scripts/bench/trial.sh OUT TRACER FAMILY -- WORKLOAD-ARGS...
#
# TRACER and FAMILY as in tracers.sh, or TRACER `none` for an untraced run. BAR_PROBE is the
# bar-probe binary (its `workload` subcommand runs the work); with WORKLOAD_BIN set, that
# program runs the work instead, as `WORKLOAD_BIN --wait WORKLOAD-ARGS...` (the frameless C
# workload of the unwinding benchmarks).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tracers.sh
. "$here/tracers.sh"

out=$1 tracer=$2 family=$3
shift 3
[ "${1:-}" = "--" ] && shift
: "${BAR_PROBE:?BAR_PROBE must name the bar-probe binary}"
SETTLE=${SETTLE:-0.5}
READY_TIMEOUT=${READY_TIMEOUT:-120}

rm -rf "$out"
mkdir -p "$out"
echo "running" > "$out/status"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
fail() {
    echo "$*" > "$out/status"
    cleanup
    exit 0
}
wl="" tp=""
cleanup() {
    exec 3>&- 2>/dev/null || true
    [ -n "$wl" ] && kill -KILL "$wl" 2>/dev/null || true
    if [ -n "$tp" ] && kill -0 "$tp" 2>/dev/null; then
        kill -INT "$tp" 2>/dev/null || true
        wait_gone "$tp" 30 || kill -KILL "$tp" 2>/dev/null || true
    fi
}
# wait_gone PID SECONDS: waits for a child to exit; false on timeout.
wait_gone() {
    local deadline=$(($(now_ms) + $2 * 1000))
    while kill -0 "$1" 2>/dev/null; do
        [ "$(now_ms)" -gt "$deadline" ] && return 1
        sleep 0.05
    done
    wait "$1" 2>/dev/null || true
}

# The tracer process itself (under /usr/bin/time, its child).
tracer_pid() {
    if [ "${TIME_TRACER:-0}" = 1 ]; then pgrep -P "$tp" | head -n 1; else echo "$tp"; fi
}
attached() {
    local p
    p=$(tracer_pid)
    [ -n "$p" ] && ls -l "/proc/$p/fd" 2> /dev/null | grep -q 'bpf_link\|\[perf_event\]'
}

# The workload opens the FIFO as its stdin and blocks there until we open the other end; it
# then waits for a line before starting its work.
mkfifo "$out/go"
if [ -n "${WORKLOAD_BIN:-}" ]; then
    "$WORKLOAD_BIN" --wait "$@" < "$out/go" > "$out/workload.json" 2> "$out/workload.err" &
    exe=$(readlink -f "$WORKLOAD_BIN")
else
    "$BAR_PROBE" workload "$@" --wait < "$out/go" > "$out/workload.json" 2> "$out/workload.err" &
    exe=$(readlink -f "$BAR_PROBE")
fi
wl=$!
exec 3> "$out/go"
for _ in $(seq 500); do
    [ "$(readlink /proc/$wl/exe 2>/dev/null)" = "$exe" ] && break
    sleep 0.01
done

if [ "$tracer" != none ]; then
    tracer_setup "$tracer" "$family" "$wl" "$out" || fail "no $tracer command for $family"
    printf '%s\n' "${CMD[@]}" > "$out/tracer.cmd"
    [ "$CONTROL" = 1 ] && mkfifo "$out/perf.ctl" "$out/perf.ack"
    start=$(now_ms)
    # A background command of a script starts with SIGINT ignored; the peers stop on SIGINT,
    # and one that has not installed its handler yet must still get it.
    run=(env --default-signal=INT "${CMD[@]}")
    if [ "${TIME_TRACER:-0}" = 1 ]; then
        /usr/bin/time -v -o "$out/time.txt" "${run[@]}" > "$out/tracer.out" 2> "$out/tracer.err" &
    else
        "${run[@]}" > "$out/tracer.out" 2> "$out/tracer.err" &
    fi
    tp=$!
    deadline=$(($(now_ms) + READY_TIMEOUT * 1000))
    if [ "$CONTROL" = 1 ]; then
        # perf starts disabled (-D -1) and says "ack" once enabled.
        exec 4> "$out/perf.ctl" 5< "$out/perf.ack"
        echo enable >&4
        read -r -t "$READY_TIMEOUT" ack <&5 || fail "perf did not acknowledge enable"
        exec 4>&- 5<&-
    else
        # Its message, if it has one (bpftrace prints its before attaching), and then the BPF
        # link or perf event that attaching creates.
        until [ -z "$READY" ] || grep -q "$READY" "$out/tracer.err" "$out/tracer.out" 2>/dev/null; do
            kill -0 "$tp" 2>/dev/null || fail "tracer exited: $(tail -n 3 "$out/tracer.err" | tr '\n' ' ')"
            [ "$(now_ms)" -gt "$deadline" ] && fail "tracer not ready after ${READY_TIMEOUT}s"
            sleep 0.02
        done
        until attached; do
            kill -0 "$tp" 2>/dev/null || fail "tracer exited: $(tail -n 3 "$out/tracer.err" | tr '\n' ' ')"
            [ "$(now_ms)" -gt "$deadline" ] && fail "tracer not attached after ${READY_TIMEOUT}s"
            sleep 0.02
        done
    fi
    echo $(($(now_ms) - start)) > "$out/attach_ms"
    # Let start-up work (symbol tables, status threads) finish before the work starts.
    sleep "$SETTLE"
    kill -0 "$tp" 2>/dev/null || fail "tracer exited: $(tail -n 3 "$out/tracer.err" | tr '\n' ' ')"
fi

# Samples the kernel's run time of the tracer's programs while the workload runs (bar-probe
# detaches as soon as its target exits, so the last sample is taken before that).
prog_stats() {
    local go=$1 first=""
    while kill -0 "$wl" 2> /dev/null; do
        grep -h '^prog_id:' /proc/"$(tracer_pid)"/fdinfo/* 2> /dev/null | awk '{print $2}' | sort -u > "$out/prog_ids.tmp"
        # A program unloaded while bpftool lists them makes it fail: try again.
        bpftool -j prog show > "$out/progs.tmp" 2> /dev/null || continue
        local t=$(($(now_ms) - go))
        if [ -z "$first" ]; then
            first=$t
            mv "$out/progs.tmp" "$out/progs-first.json"
        else
            mv "$out/progs.tmp" "$out/progs-last.json"
            mv "$out/prog_ids.tmp" "$out/prog_ids"
            echo "$first $t" > "$out/progs_ms"
        fi
        sleep 0.1
    done
}

go=$(now_ms)
echo go >&3
exec 3>&-
sampler=""
if [ "${PROG_STATS:-0}" = 1 ] && [ -n "$tp" ]; then
    prog_stats "$go" &
    sampler=$!
fi
wait "$wl" || fail "workload failed: $(tail -n 3 "$out/workload.err" | tr '\n' ' ')"
wl=""
[ -z "$sampler" ] || wait "$sampler" || true

if [ -n "$tp" ]; then
    case "$tracer" in
        # bar-probe stops by itself when its target exits and writes its outputs.
        bar | bar-null | bar-sum | bar-before) wait_gone "$tp" 300 || fail "bar-probe did not stop" ;;
        *)
            # The measurement is taken; a peer that does not stop in time is only noted.
            kill -INT "$tp" 2>/dev/null || true
            if ! wait_gone "$tp" 60; then
                echo "did not stop on SIGINT within 60 s" >> "$out/tracer.err"
                kill -TERM "$tp" 2>/dev/null || true
                wait_gone "$tp" 10 || kill -KILL "$tp" 2>/dev/null || true
            fi
            ;;
    esac
    tp=""
fi
echo ok > "$out/status"
