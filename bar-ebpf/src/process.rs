//! Process lifecycle the collector needs to name and symbolize processes correctly: a fork
//! starts a process with its parent's program and name, an exec replaces both, an exit ends
//! it. Each is reported with the name the kernel has at that moment, so a process gone before
//! the collector could look it up in /proc keeps its name.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use bar_ebpf_common::{COMM_LEN, Header, NO_STACK, ProcessRecord, kind};

use crate::shared::{config, emit, now, offset, read, traced_current};

/// `CLONE_THREAD` (include/uapi/linux/sched.h): the new task is a thread of its parent's
/// process, not a process of its own.
const CLONE_THREAD: u64 = 0x0001_0000;

/// Sends the record of an event of process `pid`, named as the current task is.
#[inline(always)]
fn report(ctx: &TracePointContext, kind: u32, pid: u32, parent: u32) {
    let record = ProcessRecord {
        // No stacks: the header only marks the time.
        header: Header {
            ts_ns: now(),
            kind,
            pid,
            tid: pid,
            user_stack: NO_STACK,
            kernel_stack: NO_STACK,
            _pad: 0,
        },
        parent,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    emit(ctx, kind, &record);
}

/// `sched:sched_process_exec` runs in the new program's context once the exec succeeded, with
/// the new name already set.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn bar_exec_tp(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if traced_current(pid_tgid) {
        crate::unwind::forget_process((pid_tgid >> 32) as u32);
        report(&ctx, kind::EXEC, (pid_tgid >> 32) as u32, 0);
    }
    0
}

/// `task:task_newtask` runs in the parent while it creates a task: the child has the parent's
/// name (copied with the task) and memory map (copied by fork) until it execs. Threads are
/// left out, as are children of a `--pid` target (only the target itself is recorded).
#[tracepoint(category = "task", name = "task_newtask")]
pub fn bar_fork_tp(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if config!(target_tgid) != 0 || !traced_current(pid_tgid) {
        return 0;
    }
    let base = ctx.as_ptr().cast_const();
    let flags = read::<u64>(base, offset!(newtask_clone_flags)).unwrap_or(CLONE_THREAD);
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let Some(child) = read::<i32>(base, offset!(newtask_pid)) else {
        return 0;
    };
    report(&ctx, kind::FORK, child as u32, (pid_tgid >> 32) as u32);
    0
}

/// `sched:sched_process_exit` runs in each exiting thread; the main thread's exit ends the
/// process as the collector sees it (its other threads, if any, are ending with it).
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn bar_exit_tp(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid == tid && traced_current(pid_tgid) {
        report(&ctx, kind::EXIT, tgid, 0);
    }
    0
}
