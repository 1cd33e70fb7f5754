//! NUMA placement and page migration. Task moves come from the scheduler's NUMA balancing
//! tracepoints (`sched_move_numa`, `sched_swap_numa`, `sched_stick_numa`), which run in the
//! context of the task being placed; page migrations from `migrate:mm_migrate_pages`, which
//! runs in the context of whoever migrates (the faulting thread for NUMA balancing, the caller
//! of migrate_pages(2)/move_pages(2)/mbind(2), the writer of compact_memory).
//!
//! The tracepoint does not say between which nodes the pages moved. Where kprobes or fentry
//! are available, the entry of the kernel's `migrate_pages()` (every migration goes through it,
//! on every kernel bar supports, the NUMA-balancing one included: `migrate_misplaced_page()`
//! on 6.1, `migrate_misplaced_folio()` on 6.12 both call it) adds the nodes: the destination
//! from its arguments for the two reasons whose arguments name it (NUMA_MISPLACED passes the
//! node itself, SYSCALL a `struct migration_target_control`), the source from the node bits of
//! the first page's flags. They are kept per thread until `mm_migrate_pages` fires at the end
//! of the same call and reports the batch with them.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, kprobe, map, tracepoint},
    maps::LruHashMap,
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use bar_ebpf_common::{
    Header, Layout, NO_STACK, NumaPagesRecord, NumaPending, NumaTaskRecord, THREAD_MAP_ENTRIES,
    kind, numa_task_kind,
};

use crate::shared::{
    config, current_header, emit, now, null_mode, offset, read, traced_current, traced_tgid,
};

/// Nodes of the migration each thread is in (a migration can sleep and change CPU).
#[map]
static NUMA_PENDING: LruHashMap<u32, NumaPending> =
    LruHashMap::with_max_entries(THREAD_MAP_ENTRIES, 0);

/// Header for a record about thread `tid` of process `tgid`. The stacks are that thread's only
/// when it is the one running: a placement can be decided in another thread's context (a swap
/// started by the other side), whose stacks would say nothing about this one.
#[inline(always)]
fn task_header(ctx: &TracePointContext, tgid: u32, tid: u32) -> Header {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 == tid {
        return current_header(ctx, kind::NUMA_TASK, pid_tgid);
    }
    Header {
        ts_ns: now(),
        kind: kind::NUMA_TASK,
        pid: tgid,
        tid,
        user_stack: NO_STACK,
        kernel_stack: NO_STACK,
        _pad: 0,
    }
}

/// Offsets of one task's fields in a placement tracepoint: tgid, pid, then its cpu and node
/// and those it goes (or would have gone) to.
struct TaskFields {
    tgid: usize,
    pid: usize,
    cpus: [usize; 2],
    nids: [usize; 2],
}

/// A placement of the task described by `f`.
#[inline(always)]
fn placement(ctx: &TracePointContext, base: *const c_void, f: &TaskFields, what: u32) {
    let tgid = read::<u32>(base, f.tgid).unwrap_or(0);
    if !traced_tgid(tgid) || null_mode() {
        return;
    }
    let tid = read::<u32>(base, f.pid).unwrap_or(0);
    let record = NumaTaskRecord {
        header: task_header(ctx, tgid, tid),
        src_cpu: read(base, f.cpus[0]).unwrap_or(-1),
        dst_cpu: read(base, f.cpus[1]).unwrap_or(-1),
        src_nid: read(base, f.nids[0]).unwrap_or(-1),
        dst_nid: read(base, f.nids[1]).unwrap_or(-1),
        what,
        _pad: 0,
    };
    emit(ctx, kind::NUMA_TASK, &record);
}

#[tracepoint(category = "sched", name = "sched_move_numa")]
pub fn bar_move_numa_tp(ctx: TracePointContext) -> u32 {
    let f = TaskFields {
        tgid: offset!(numa_tgid),
        pid: offset!(numa_pid),
        cpus: [offset!(numa_src_cpu), offset!(numa_dst_cpu)],
        nids: [offset!(numa_src_nid), offset!(numa_dst_nid)],
    };
    placement(&ctx, ctx.as_ptr().cast_const(), &f, numa_task_kind::MOVE);
    0
}

#[tracepoint(category = "sched", name = "sched_stick_numa")]
pub fn bar_stick_numa_tp(ctx: TracePointContext) -> u32 {
    let f = TaskFields {
        tgid: offset!(stick_tgid),
        pid: offset!(stick_pid),
        cpus: [offset!(stick_src_cpu), offset!(stick_dst_cpu)],
        nids: [offset!(stick_src_nid), offset!(stick_dst_nid)],
    };
    placement(&ctx, ctx.as_ptr().cast_const(), &f, numa_task_kind::STICK);
    0
}

#[tracepoint(category = "sched", name = "sched_swap_numa")]
pub fn bar_swap_numa_tp(ctx: TracePointContext) -> u32 {
    let base = ctx.as_ptr().cast_const();
    let (src_cpu, dst_cpu) = (offset!(swap_src_cpu), offset!(swap_dst_cpu));
    let (src_nid, dst_nid) = (offset!(swap_src_nid), offset!(swap_dst_nid));
    // Each side goes where the other was.
    let src = TaskFields {
        tgid: offset!(swap_src_tgid),
        pid: offset!(swap_src_pid),
        cpus: [src_cpu, dst_cpu],
        nids: [src_nid, dst_nid],
    };
    let dst = TaskFields {
        tgid: offset!(swap_dst_tgid),
        pid: offset!(swap_dst_pid),
        cpus: [dst_cpu, src_cpu],
        nids: [dst_nid, src_nid],
    };
    placement(&ctx, base, &src, numa_task_kind::SWAP);
    placement(&ctx, base, &dst, numa_task_kind::SWAP);
    0
}

#[tracepoint(category = "migrate", name = "mm_migrate_pages")]
pub fn bar_migrate_pages_tp(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() {
        return 0;
    }
    let base = ctx.as_ptr().cast_const();
    let reason = read(base, offset!(mig_reason)).unwrap_or(0);
    // Nodes from the migrate_pages() entry of this call, when one is attached (see above).
    let tid = pid_tgid as u32;
    // SAFETY: copied out before removal.
    let pending = unsafe { NUMA_PENDING.get(tid) }.copied();
    let (src_nid, dst_nid) = match pending {
        Some(p) if p.reason == reason => {
            let _ = NUMA_PENDING.remove(tid);
            (p.src_nid, p.dst_nid)
        }
        _ => (-1, -1),
    };
    let record = NumaPagesRecord {
        header: current_header(&ctx, kind::NUMA_PAGES, pid_tgid),
        succeeded: read(base, offset!(mig_succeeded)).unwrap_or(0),
        failed: read(base, offset!(mig_failed)).unwrap_or(0),
        thp_succeeded: read(base, offset!(mig_thp_succeeded)).unwrap_or(0),
        thp_failed: read(base, offset!(mig_thp_failed)).unwrap_or(0),
        mode: read(base, offset!(mig_mode)).unwrap_or(0),
        reason,
        dst_nid,
        src_nid,
    };
    emit(&ctx, kind::NUMA_PAGES, &record);
    0
}

/// A node id read from the kernel, or -1 when it is not one this machine can have.
#[inline(always)]
fn node(nid: u64) -> i32 {
    if nid < u64::from(config!(nr_node_ids)) {
        nid as i32
    } else {
        -1
    }
}

/// Node of the first page on a migration list (`struct list_head *from`): pages are linked
/// through `page->lru`, and with SPARSEMEM_VMEMMAP (x86-64) the node is the top
/// `page_nid_bits` bits of `page->flags`.
#[inline(always)]
fn first_page_node(from: *const c_void) -> i32 {
    let bits = config!(layout.page_nid_bits);
    if bits == 0 || bits >= 64 || bits == Layout::UNKNOWN {
        return -1;
    }
    // list_head.next is its first member.
    let Some(lru) = read::<u64>(from, 0) else {
        return -1;
    };
    if lru == from as u64 {
        return -1;
    }
    let page = lru.wrapping_sub(u64::from(config!(layout.page_lru))) as *const c_void;
    let Some(flags) = read::<u64>(page, offset!(page_flags)) else {
        return -1;
    };
    node(flags >> (64 - bits))
}

/// Entry of `migrate_pages(struct list_head *from, new_folio_t get_new, free_folio_t put_new,
/// unsigned long private, enum migrate_mode mode, int reason, unsigned int *ret_succeeded)`.
#[inline(always)]
fn migrate_entry(from: *const c_void, private: u64, reason: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() {
        return;
    }
    let dst_nid = if reason == config!(layout.mr_numa_misplaced) {
        // migrate_misplaced_{page,folio}() pass the target node as `private`.
        node(private)
    } else if reason == config!(layout.mr_syscall) {
        // migrate_pages(2) and move_pages(2) pass a struct migration_target_control.
        read::<i32>(private as *const c_void, offset!(migration_target_nid))
            .map_or(-1, |n| node(n as u64))
    } else {
        // Other reasons pass their own state; compaction and the like stay within a node.
        return;
    };
    let pending = NumaPending {
        reason,
        src_nid: first_page_node(from),
        dst_nid,
        _pad: 0,
    };
    let _ = NUMA_PENDING.insert(pid_tgid as u32, pending, 0);
}

#[fentry]
pub fn bar_migrate_pages_fentry(ctx: FEntryContext) -> u32 {
    migrate_entry(ctx.arg(0), ctx.arg(3), ctx.arg(5));
    0
}

#[kprobe]
pub fn bar_migrate_pages_kprobe(ctx: ProbeContext) -> u32 {
    migrate_entry(
        ctx.arg(0).unwrap_or(core::ptr::null()),
        ctx.arg(3).unwrap_or(0),
        ctx.arg(5).unwrap_or(0),
    );
    0
}
