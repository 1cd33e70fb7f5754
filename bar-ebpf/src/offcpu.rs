//! Off-CPU time. At `sched_switch` the task being switched out is still `current`: if it is a
//! target thread, its stacks and the time are kept in `OFFCPU_START` under its thread id. When
//! that thread is switched back in, the CPU notes it in `SWITCHED_IN`, and the interval is
//! reported at the thread's next switch-out (see `switch` for why). The map is an LRU hash of
//! bounded size, and `sched_process_exit` reports what is left of a thread that exits and
//! removes its entry, so nothing accumulates over a long capture; intervals of threads still
//! running when the recording ends are read from both maps by the collector.
//!
//! A return can pass unseen: the kernel does not run the tracepoint for every switch (on a
//! 6.18 host, no switch away from some tasks reached ftrace or BPF: one sleep in a few hundred
//! came back from one of those), and a classic tracepoint or kprobe program is skipped while
//! a BPF system call holds the CPU. A thread that is switched out again, or exits, came back
//! all the same; its scheduler's run-time sums say when (`report_unseen`).
//!
//! Attach points: `tp_btf/sched_switch` (arguments direct, needs the four-argument form with
//! `prev_state`, Linux 5.18+); then `finish_task_switch(prev)` by fentry or kprobe, as bcc's
//! offcputime does, for kernels whose tracepoint lacks `prev_state`; last the classic
//! `sched:sched_switch` tracepoint.
//!
//! `finish_task_switch` runs after the switch, in the context of the task switched *in*: the
//! switch-out of `prev` is recorded from its `task_struct` (BTF offsets), and the stacks are
//! taken when the thread runs again. They are the same stacks: a thread off CPU does not move,
//! its kernel stack still ends in `schedule()` and its user stack where it entered the kernel.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{btf_tracepoint, fentry, kprobe, map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use bar_ebpf_common::{
    Batch, OFFCPU_MAP_ENTRIES, OffCpuRecord, OffCpuStart, SumKey, SwitchIn, counter, kind,
    offcpu_reason,
};

use crate::shared::{
    add_to_sums, bump, config, emit_batched, now, null_mode, offset, read, stacks, summing,
    traced_current, traced_tgid,
};

/// Off-CPU records of this CPU waiting to be sent together.
#[map]
static OFFCPU_BATCH: PerCpuArray<Batch<OffCpuRecord>> = PerCpuArray::with_max_entries(1, 0);

#[map]
static OFFCPU_START: LruHashMap<u32, OffCpuStart> =
    LruHashMap::with_max_entries(OFFCPU_MAP_ENTRIES, 0);

#[map]
static SWITCHED_IN: PerCpuArray<SwitchIn> = PerCpuArray::with_max_entries(1, 0);

/// The state of `prev` as this attach point reports it, reduced to what off-CPU needs.
struct Prev {
    preempted: bool,
    exiting: bool,
    state: u32,
}

#[inline(always)]
fn switch<C: StackIdContext>(ctx: &C, prev: Prev, next_tid: u32) {
    let ts = now();
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = SWITCHED_IN.get_ptr_mut(0);
    if !prev.exiting && traced_current(pid_tgid) && !null_mode() {
        let tid = pid_tgid as u32;
        let entry = OFFCPU_START.get_ptr_mut(tid);
        if let (Some(last), Some(back)) = (entry, slot) {
            // SAFETY: a thread's entry is used by the programs of its own switches and its
            // exit, which happen one after another; the slot is this CPU's.
            report_back(ctx, ts, tid, unsafe { &*last }, unsafe { &*back });
        }
        let (user_stack, kernel_stack) = stacks(ctx);
        let start = OffCpuStart {
            ts_ns: ts,
            pid: (pid_tgid >> 32) as u32,
            reason: if prev.preempted {
                offcpu_reason::PREEMPTED
            } else {
                offcpu_reason::BLOCKED
            },
            state: prev.state,
            user_stack,
            kernel_stack,
            _pad: 0,
        };
        keep(tid, entry, start);
    }
    // The switch-in is only noted, in a slot of this CPU: it lies on the path from a wakeup to
    // the woken thread running, where every nanosecond adds to the latency the workload sees,
    // while the switch-out overlaps with the wakeup of whatever runs next. The interval is
    // reported at the thread's next switch-out (`report_back`).
    if let Some(slot) = slot {
        // SAFETY: this CPU's slot; programs on one CPU do not run at the same time.
        unsafe {
            *slot = SwitchIn {
                ts_ns: ts,
                tid: next_tid,
                _pad: 0,
            }
        };
    }
}

/// Keeps the switch-out of thread `tid` in `entry`, its entry if it has one. A thread's entry
/// stays in the map while it lives and is written over in place: an insert would allocate a
/// new element and free the old one on every switch, which costs more than the lookup.
#[inline(always)]
fn keep(tid: u32, entry: Option<*mut OffCpuStart>, start: OffCpuStart) {
    if let Some(entry) = entry {
        // SAFETY: as in `switch`.
        unsafe { *entry = start };
    } else if OFFCPU_START.insert(tid, start, 0).is_err() {
        bump(counter::OFFCPU_MAP_FULL);
    }
}

/// Reports the interval that began at `last` (not reported yet unless `ts_ns` is 0) of thread
/// `tid`, the current task at `ts`: running, so it came back since. Its return is `back`, this
/// CPU's last switch-in, when a program saw it; else it passed unseen.
#[inline(always)]
fn report_back<C: StackIdContext>(ctx: &C, ts: u64, tid: u32, last: &OffCpuStart, back: &SwitchIn) {
    if last.ended_by(tid, back).is_some() {
        report(ctx, back.ts_ns, tid, last);
    } else if last.ts_ns != 0 {
        // SAFETY: the helper has no preconditions.
        let task = unsafe { bpf_get_current_task() } as *const c_void;
        report_unseen(ctx, ts, tid, last, task);
    }
}

/// Reports the interval that began at `last` of thread `tid` (`task`, on CPU at `ts`), whose
/// return no program saw. The task's `prev_sum_exec_runtime` is its `sum_exec_runtime` when
/// it was last put on a CPU, both kept up to date at every switch, so their difference is how
/// long it has run since it came back. Counted either way; one whose return cannot be placed
/// after its switch-out is counted as lost.
#[inline(always)]
fn report_unseen<C: StackIdContext>(
    ctx: &C,
    ts: u64,
    tid: u32,
    last: &OffCpuStart,
    task: *const c_void,
) {
    bump(counter::OFFCPU_RETURN_UNSEEN);
    if last.user_stack == STACKS_AT_RETURN {
        // finish_task_switch's switch-out, whose stacks were to be taken at the return.
        bump(counter::DROPPED + kind::OFFCPU);
        return;
    }
    let ran = read::<u64>(task, offset!(task_sum_exec)).and_then(|sum| {
        read::<u64>(task, offset!(task_prev_sum_exec))
            .and_then(|at_return| sum.checked_sub(at_return))
    });
    match ran.and_then(|ran| ts.checked_sub(ran)) {
        Some(back) if back > last.ts_ns => report(ctx, back, tid, last),
        _ => bump(counter::DROPPED + kind::OFFCPU),
    }
}

/// The switch-out of thread `tid` that has not been taken yet, marking it taken (`ts_ns` 0).
#[inline(always)]
fn take(tid: u32) -> Option<OffCpuStart> {
    let entry = OFFCPU_START.get_ptr_mut(tid)?;
    // SAFETY: as in `switch`.
    let start = unsafe { *entry };
    if start.ts_ns == 0 {
        return None;
    }
    unsafe { (*entry).ts_ns = 0 };
    Some(start)
}

/// Reports the off-CPU interval `start` of thread `tid`, which is back on CPU at `ts`.
#[inline(always)]
fn report<C: StackIdContext>(ctx: &C, ts: u64, tid: u32, start: &OffCpuStart) {
    let blocked_ns = ts.saturating_sub(start.ts_ns);
    if blocked_ns < config!(min_block_ns) {
        return;
    }
    if summing() {
        let key = SumKey {
            kind: kind::OFFCPU,
            pid: start.pid,
            tid,
            user_stack: start.user_stack,
            kernel_stack: start.kernel_stack,
            detail: start.reason,
            state: start.state,
            epoch: 0,
        };
        add_to_sums(key, blocked_ns);
        return;
    }
    emit_batched(ctx, kind::OFFCPU, &OFFCPU_BATCH, ts, start.record(tid, ts));
}

// Raw `__state` bit of a task that has finished exiting (include/linux/sched.h).
const TASK_DEAD: u32 = 0x80;

/// The stack ids of a switch-out seen by `finish_task_switch`, whose stacks are taken when the
/// thread runs again: an errno, should it ever be shown.
const STACKS_AT_RETURN: i32 = -61;

#[btf_tracepoint(function = "sched_switch")]
pub fn bar_switch_btf(ctx: BtfTracePointContext) -> u32 {
    // sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
    //              unsigned int prev_state)
    let preempt: u64 = ctx.arg(0);
    let next: *const c_void = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    let state = prev_state as u32;
    let next_tid = read::<u32>(next, offset!(task_pid)).unwrap_or(0);
    let prev = Prev {
        preempted: preempt & 1 != 0 || state == 0,
        exiting: state & TASK_DEAD != 0,
        state,
    };
    switch(&ctx, prev, next_tid);
    0
}

// The classic tracepoint reports `prev_state` as a one-hot index of the task state letter;
// preemption shows as TASK_REPORT_MAX (0x100 on current kernels) with the low byte clear, and
// the exit states as X (0x10) or Z (0x20).
const REPORT_STATE_MASK: u32 = 0xff;
const REPORT_EXIT: u32 = 0x10 | 0x20;

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn bar_switch_tp(ctx: TracePointContext) -> u32 {
    let base = ctx.as_ptr().cast_const();
    let state = read::<u64>(base, offset!(switch_prev_state)).unwrap_or(0) as u32;
    let next_tid = read::<u32>(base, offset!(switch_next_pid)).unwrap_or(0);
    let prev = Prev {
        preempted: state & REPORT_STATE_MASK == 0,
        exiting: state & REPORT_EXIT != 0,
        state,
    };
    switch(&ctx, prev, next_tid);
    0
}

/// A thread exits: its last interval is reported if it came back from it, and its entry goes.
#[inline(always)]
fn thread_exit<C: StackIdContext>(ctx: &C) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if let Some(last) = OFFCPU_START.get_ptr_mut(tid) {
        // finish_task_switch keeps the switch-outs of threads outside the cgroup too (see
        // `finish_switch`); they are never taken, and are no interval to report.
        if let (true, Some(back)) = (traced_current(pid_tgid), SWITCHED_IN.get(0)) {
            // SAFETY: as in `switch`.
            report_back(ctx, now(), tid, unsafe { &*last }, back);
        }
        let _ = OFFCPU_START.remove(tid);
    }
}

// With `tp_btf/sched_switch`, whose intervals wait for the thread's next switch-out or exit,
// the exit program must not be skipped: a classic tracepoint program is skipped while a BPF
// map system call (the collector's) holds this CPU's `bpf_prog_active`, a BTF tracepoint
// program is not.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn bar_thread_exit_btf(ctx: BtfTracePointContext) -> u32 {
    thread_exit(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn bar_thread_exit_tp(ctx: TracePointContext) -> u32 {
    thread_exit(&ctx);
    0
}

/// After a context switch, in the task switched in: the switch-out of `prev` (a
/// `task_struct`) and the return of the current task.
#[inline(always)]
fn finish_switch<C: StackIdContext>(ctx: &C, prev: *const c_void) {
    if null_mode() {
        return;
    }
    let ts = now();
    let prev_tgid = read::<u32>(prev, offset!(task_tgid)).unwrap_or(0);
    // The cgroup filter cannot be applied to a task that is not current; it is applied when
    // the thread runs again, below.
    if traced_tgid(prev_tgid) {
        let state = read::<u32>(prev, offset!(task_state)).unwrap_or(0);
        let tid = read::<u32>(prev, offset!(task_pid)).unwrap_or(0);
        if state & TASK_DEAD == 0 && tid != 0 {
            let entry = OFFCPU_START.get_ptr_mut(tid);
            if let Some(last) = entry {
                // SAFETY: as in `switch`.
                let last = unsafe { &*last };
                // Not taken: the thread ran again without this program seeing it (a kprobe
                // is skipped while a BPF system call holds the CPU). Only known without a
                // cgroup filter, which switch-outs cannot apply.
                if last.ts_ns != 0 && config!(cgroup_id) == 0 {
                    report_unseen(ctx, ts, tid, last, prev);
                }
            }
            let start = OffCpuStart {
                ts_ns: ts,
                pid: prev_tgid,
                reason: if state == 0 {
                    offcpu_reason::PREEMPTED
                } else {
                    offcpu_reason::BLOCKED
                },
                state,
                user_stack: STACKS_AT_RETURN,
                kernel_stack: STACKS_AT_RETURN,
                _pad: 0,
            };
            keep(tid, entry, start);
        }
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if tid == 0 || !traced_current(pid_tgid) {
        return;
    }
    let Some(mut start) = take(tid) else {
        return;
    };
    if ts.saturating_sub(start.ts_ns) < config!(min_block_ns) {
        return;
    }
    (start.user_stack, start.kernel_stack) = stacks(ctx);
    report(ctx, ts, tid, &start);
}

#[fentry]
pub fn bar_finish_switch_fentry(ctx: FEntryContext) -> u32 {
    // finish_task_switch(struct task_struct *prev)
    finish_switch(&ctx, ctx.arg(0));
    0
}

#[kprobe]
pub fn bar_finish_switch_kprobe(ctx: ProbeContext) -> u32 {
    // The kernel's copy may be a compiler clone (finish_task_switch.isra.0) that keeps `prev`
    // as its first argument, which is what bcc's offcputime relies on too.
    finish_switch(&ctx, ctx.arg(0).unwrap_or(core::ptr::null()));
    0
}
