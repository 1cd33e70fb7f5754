//! NUMA placement and page migration. Task moves come from the scheduler's NUMA balancing
//! tracepoints (`sched_move_numa`, `sched_swap_numa`, `sched_stick_numa`), which run in the
//! context of the task being placed; page migrations from `migrate:mm_migrate_pages`, which
//! runs in the context of whoever migrates (the faulting thread for NUMA balancing, the caller
//! of migrate_pages(2)/move_pages(2)/mbind(2), the writer of compact_memory).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext, helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use bar_ebpf_common::{Header, NumaPagesRecord, NumaTaskRecord, kind, numa_task_kind};

use crate::shared::{
    current_header, emit, now, null_mode, offset, read, traced_current, traced_tgid,
};

/// Header for a record about task `tgid`; stacks only when that task is the one running.
#[inline(always)]
fn task_header(ctx: &TracePointContext, tgid: u32) -> Header {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == tgid {
        return current_header(ctx, kind::NUMA_TASK, pid_tgid);
    }
    Header {
        ts_ns: now(),
        kind: kind::NUMA_TASK,
        pid: tgid,
        tid: 0,
        user_stack: -1,
        kernel_stack: -1,
        _pad: 0,
    }
}

#[inline(always)]
fn placement(ctx: &TracePointContext, what: u32) -> u32 {
    let base = ctx.as_ptr().cast_const();
    let tgid = read::<u32>(base, offset!(numa_tgid)).unwrap_or(0);
    if !traced_tgid(tgid) || null_mode() {
        return 0;
    }
    let record = NumaTaskRecord {
        header: task_header(ctx, tgid),
        src_cpu: read(base, offset!(numa_src_cpu)).unwrap_or(-1),
        dst_cpu: read(base, offset!(numa_dst_cpu)).unwrap_or(-1),
        src_nid: read(base, offset!(numa_src_nid)).unwrap_or(-1),
        dst_nid: read(base, offset!(numa_dst_nid)).unwrap_or(-1),
        what,
        _pad: 0,
    };
    emit(ctx, kind::NUMA_TASK, &record);
    0
}

#[tracepoint(category = "sched", name = "sched_move_numa")]
pub fn bar_move_numa_tp(ctx: TracePointContext) -> u32 {
    placement(&ctx, numa_task_kind::MOVE)
}

#[tracepoint(category = "sched", name = "sched_stick_numa")]
pub fn bar_stick_numa_tp(ctx: TracePointContext) -> u32 {
    placement(&ctx, numa_task_kind::STICK)
}

/// One side of a swap: the task at (`tgid`, `cpu`, `nid`) goes to (`to_cpu`, `to_nid`).
#[inline(always)]
fn swap_side(
    ctx: &TracePointContext,
    base: *const c_void,
    tgid: usize,
    cpus: [usize; 2],
    nids: [usize; 2],
) {
    let tgid = read::<u32>(base, tgid).unwrap_or(0);
    if !traced_tgid(tgid) {
        return;
    }
    let record = NumaTaskRecord {
        header: task_header(ctx, tgid),
        src_cpu: read(base, cpus[0]).unwrap_or(-1),
        dst_cpu: read(base, cpus[1]).unwrap_or(-1),
        src_nid: read(base, nids[0]).unwrap_or(-1),
        dst_nid: read(base, nids[1]).unwrap_or(-1),
        what: numa_task_kind::SWAP,
        _pad: 0,
    };
    emit(ctx, kind::NUMA_TASK, &record);
}

#[tracepoint(category = "sched", name = "sched_swap_numa")]
pub fn bar_swap_numa_tp(ctx: TracePointContext) -> u32 {
    if null_mode() {
        return 0;
    }
    let base = ctx.as_ptr().cast_const();
    let (src_cpu, dst_cpu) = (offset!(swap_src_cpu), offset!(swap_dst_cpu));
    let (src_nid, dst_nid) = (offset!(swap_src_nid), offset!(swap_dst_nid));
    swap_side(
        &ctx,
        base,
        offset!(swap_src_tgid),
        [src_cpu, dst_cpu],
        [src_nid, dst_nid],
    );
    swap_side(
        &ctx,
        base,
        offset!(swap_dst_tgid),
        [dst_cpu, src_cpu],
        [dst_nid, src_nid],
    );
    0
}

#[tracepoint(category = "migrate", name = "mm_migrate_pages")]
pub fn bar_migrate_pages_tp(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() {
        return 0;
    }
    let base = ctx.as_ptr().cast_const();
    let record = NumaPagesRecord {
        header: current_header(&ctx, kind::NUMA_PAGES, pid_tgid),
        succeeded: read(base, offset!(mig_succeeded)).unwrap_or(0),
        failed: read(base, offset!(mig_failed)).unwrap_or(0),
        thp_succeeded: read(base, offset!(mig_thp_succeeded)).unwrap_or(0),
        thp_failed: read(base, offset!(mig_thp_failed)).unwrap_or(0),
        mode: read(base, offset!(mig_mode)).unwrap_or(0),
        reason: read(base, offset!(mig_reason)).unwrap_or(0),
        dst_nid: -1,
        _pad: 0,
    };
    emit(&ctx, kind::NUMA_PAGES, &record);
    0
}
