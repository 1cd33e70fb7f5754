# The tracers the benchmarks compare, as commands. Sourced by trial.sh; also run directly to
# print a command for the report:
#
#   scripts/bench/tracers.sh TRACER FAMILY       the command, with PID and OUT as placeholders
#
# TRACER is one of
#   bar         bar-probe attach, FAMILY may be a comma list or `all`
#   bar-null    the same with --null: the programs attach to the same hooks, filter and return
#   bar-sum     the same with --aggregate: faults and off-CPU intervals summed in the kernel
#   bar-before  bar-probe of an earlier revision ($BAR_PROBE_BEFORE), for before/after figures
#   bar-fp      bar-probe with --unwind frame-pointers: user stacks by frame pointer only
#   bpftrace    a one-liner counting events by user and kernel stack
#   perf        perf record -g on the same event (cpu: cpu-clock at the same 99 Hz)
#   perf-dwarf  perf record --call-graph dwarf: copies 8 KiB of user stack per event, unwound
#               after the fact with the objects' tables
#   offcputime  libbpf-tools offcputime (offcpu), user and kernel stacks
#
# tracer_setup sets CMD (argv), READY (a line on stderr that says it is attached, or empty) and
# CONTROL (1 when the command is perf waiting for "enable" on its control FIFO).

FREQ=99

bpftrace_probe() {
    case "$1" in
        faults) echo 'tracepoint:exceptions:page_fault_user' ;;
        offcpu) echo 'tracepoint:sched:sched_switch' ;;
        tcp) echo 'tracepoint:sock:inet_sock_set_state' ;;
        cpu) echo "profile:hz:$FREQ" ;;
        *) return 1 ;;
    esac
}

perf_event() {
    case "$1" in
        faults) echo 'exceptions:page_fault_user' ;;
        offcpu) echo 'sched:sched_switch' ;;
        tcp) echo 'sock:inet_sock_set_state' ;;
        cpu) echo 'cpu-clock' ;;
        *) return 1 ;;
    esac
}

# tracer_setup TRACER FAMILY PID OUT
tracer_setup() {
    local tracer=$1 family=$2 pid=$3 out=$4
    READY=""
    CONTROL=0
    case "$tracer" in
        bar | bar-null | bar-sum | bar-before | bar-fp)
            local bin=${BAR_PROBE:-bar-probe}
            [ "$tracer" = bar-before ] && bin=${BAR_PROBE_BEFORE:-bar-probe-before}
            CMD=("$bin" attach --pid "$pid" -e "$family" -o "$out/bar")
            [ "$tracer" = bar-null ] && CMD+=(--null)
            [ "$tracer" = bar-sum ] && CMD+=(--aggregate)
            [ "$tracer" = bar-fp ] && CMD+=(--unwind frame-pointers)
            READY="bar-probe: recording"
            ;;
        bpftrace)
            local probe
            probe=$(bpftrace_probe "$family") || return 1
            CMD=(bpftrace -e "$probe /pid == $pid/ { @[ustack, kstack] = count(); }")
            READY="Attaching "
            ;;
        perf | perf-dwarf)
            local ev graph=-g
            ev=$(perf_event "$family") || return 1
            [ "$tracer" = perf-dwarf ] && graph=--call-graph=dwarf
            CMD=(perf record "$graph" -e "$ev" -p "$pid" -o "$out/perf.data"
                --control "fifo:$out/perf.ctl,$out/perf.ack" -D -1)
            [ "$family" = cpu ] && CMD+=(-F "$FREQ")
            CONTROL=1
            ;;
        offcputime)
            [ "$family" = offcpu ] || return 1
            CMD=(offcputime -p "$pid")
            ;;
        *) return 1 ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    BAR_PROBE=bar-probe BAR_PROBE_BEFORE=bar-probe
    tracer_setup "$1" "$2" PID OUT || { echo "no $1 command for $2" >&2; exit 2; }
    line=""
    for a in "${CMD[@]}"; do
        case "$a" in
            *[!A-Za-z0-9_./:,=+-]*) a="'$a'" ;;
        esac
        line+="${line:+ }$a"
    done
    echo "$line"
fi
