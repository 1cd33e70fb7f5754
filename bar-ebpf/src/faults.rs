//! Page faults of the target.
//!
//! Preferred: the return of `handle_mm_fault` (fexit, else kprobe + kretprobe), which sees the
//! outcome and so tells major faults from minor ones. It counts what the kernel's own
//! `maj_flt`/`min_flt` accounting counts, the way `mm_account_fault` does: an attempt that
//! returns `VM_FAULT_RETRY` is counted once, when it is retried; a call without registers is
//! get_user_pages() faulting pages in on the kernel's behalf (no exception was taken) and is
//! left out, as the exception tracepoints never see it either.
//!
//! Then `tp_btf` on the x86 `page_fault_user` / `page_fault_kernel` tracepoints (arguments
//! passed directly, no record formatting), then the same tracepoints as classic tracepoints,
//! whose field offsets come from tracefs. Those run before the fault is handled, so they cannot
//! tell major from minor; the kernel stack is the fault entry path in every case.
//!
//! For a fault taken in user mode that path is always the same (`asm_exc_page_fault`,
//! `exc_page_fault`, `do_user_addr_fault`, then the tracepoint or `handle_mm_fault`), so its
//! kernel stack is walked once per CPU and its id reused; a kernel-mode fault's stack (which
//! kernel code touched user memory) is walked every time.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit, kprobe, kretprobe, map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{
        BtfTracePointContext, FExitContext, ProbeContext, RetProbeContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use bar_ebpf_common::{
    Batch, FaultArgs, FaultRecord, SumKey, THREAD_MAP_ENTRIES, fault_flag, kind,
};

use crate::shared::{
    KernelStack, add_to_sums, config, emit, emit_batched, header_with, in_stack_walk, null_mode,
    offset, read, stacks_with, summing, traced_current,
};

/// The kernel stack id of a user-mode fault on this CPU, plus one (see [`KernelStack`]).
#[map]
static USER_FAULT_KSTACK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Fault records of this CPU waiting to be sent together.
#[map]
static FAULT_BATCH: PerCpuArray<Batch<FaultRecord>> = PerCpuArray::with_max_entries(1, 0);

/// `handle_mm_fault` arguments of a thread between kprobe and kretprobe (a fault can sleep and
/// resume on another CPU, hence per thread rather than per CPU).
#[map]
static FAULT_ARGS: LruHashMap<u32, FaultArgs> = LruHashMap::with_max_entries(THREAD_MAP_ENTRIES, 0);

/// How a program may send its records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// In this CPU's batch (the program runs with preemption off: see `emit_batched`).
    Batched,
    /// One by one (fexit: another thread's program may run on this CPU meanwhile).
    Alone,
}

/// Records a fault with `flags`; `details` gives its address, instruction pointer and error
/// code, which are read only when they are kept (a fault summed in the kernel has none).
#[inline(always)]
fn record<C: StackIdContext>(
    ctx: &C,
    pid_tgid: u64,
    flags: u32,
    send: Delivery,
    details: impl FnOnce() -> (u64, u64, u64),
) {
    let kernel = if flags & fault_flag::USER_MODE != 0 {
        KernelStack::OncePerCpu(&USER_FAULT_KSTACK)
    } else {
        KernelStack::Walk
    };
    if summing() {
        let (user_stack, kernel_stack) = stacks_with(ctx, kernel);
        let key = SumKey {
            kind: kind::FAULT,
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            user_stack,
            kernel_stack,
            detail: flags,
            state: 0,
            epoch: 0,
        };
        add_to_sums(key, 0);
        return;
    }
    let (address, ip, error_code) = details();
    let record = FaultRecord {
        header: header_with(ctx, kind::FAULT, pid_tgid, kernel),
        address,
        ip,
        error_code: error_code as u32,
        flags,
    };
    match send {
        Delivery::Batched => {
            emit_batched(ctx, kind::FAULT, &FAULT_BATCH, record.header.ts_ns, record)
        }
        Delivery::Alone => emit(ctx, kind::FAULT, &record),
    }
}

#[inline(always)]
fn from_btf(ctx: &BtfTracePointContext, flags: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() || in_stack_walk() {
        return 0;
    }
    // page_fault_{user,kernel}(unsigned long address, struct pt_regs *regs, unsigned long error_code)
    record(ctx, pid_tgid, flags, Delivery::Batched, || {
        let regs: *const c_void = ctx.arg(1);
        let ip = read::<u64>(regs, offset!(pt_regs_ip)).unwrap_or(0);
        (ctx.arg(0), ip, ctx.arg(2))
    });
    0
}

#[btf_tracepoint(function = "page_fault_user")]
pub fn bar_fault_user_btf(ctx: BtfTracePointContext) -> u32 {
    from_btf(&ctx, fault_flag::USER_MODE)
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn bar_fault_kernel_btf(ctx: BtfTracePointContext) -> u32 {
    from_btf(&ctx, 0)
}

#[inline(always)]
fn from_tracepoint(ctx: &TracePointContext, flags: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() || in_stack_walk() {
        return 0;
    }
    let base = ctx.as_ptr().cast_const();
    record(ctx, pid_tgid, flags, Delivery::Batched, || {
        let field = |off| read::<u64>(base, off).unwrap_or(0);
        (
            field(offset!(fault_address)),
            field(offset!(fault_ip)),
            field(offset!(fault_error_code)),
        )
    });
    0
}

#[tracepoint(category = "exceptions", name = "page_fault_user")]
pub fn bar_fault_user_tp(ctx: TracePointContext) -> u32 {
    from_tracepoint(&ctx, fault_flag::USER_MODE)
}

#[tracepoint(category = "exceptions", name = "page_fault_kernel")]
pub fn bar_fault_kernel_tp(ctx: TracePointContext) -> u32 {
    from_tracepoint(&ctx, 0)
}

// x86 page fault error code bits, rebuilt from `enum fault_flag` for records of the
// handle_mm_fault attach points (the hardware code itself is gone by then; bit 0, protection
// violation, is not known there and stays clear).
const X86_PF_WRITE: u64 = 1 << 1;
const X86_PF_USER: u64 = 1 << 2;
const X86_PF_INSTR: u64 = 1 << 4;

/// Whether `flags` (`enum fault_flag`) has the bit whose value the loader read from BTF.
#[inline(always)]
fn has(flags: u32, bit: u32) -> bool {
    flags & bit != 0
}

/// A fault `handle_mm_fault` finished with `ret` (`vm_fault_t`).
#[inline(always)]
fn fault_done<C: StackIdContext>(
    ctx: &C,
    pid_tgid: u64,
    args: &FaultArgs,
    ret: u32,
    send: Delivery,
) {
    if ret & config!(layout.vm_fault_retry) != 0 {
        return;
    }
    let flags = args.flags;
    let user = has(flags, config!(layout.fault_flag_user));
    let major =
        ret & config!(layout.vm_fault_major) != 0 || has(flags, config!(layout.fault_flag_tried));
    let mut error_code = 0;
    if has(flags, config!(layout.fault_flag_write)) {
        error_code |= X86_PF_WRITE;
    }
    if user {
        error_code |= X86_PF_USER;
    }
    if has(flags, config!(layout.fault_flag_instruction)) {
        error_code |= X86_PF_INSTR;
    }
    let mut record_flags = fault_flag::SEVERITY_KNOWN;
    if user {
        record_flags |= fault_flag::USER_MODE;
    }
    if major {
        record_flags |= fault_flag::MAJOR;
    }
    record(ctx, pid_tgid, record_flags, send, || {
        (args.address, args.ip, error_code)
    });
}

/// The arguments of `handle_mm_fault(vma, address, flags, regs)` that a record needs; None for
/// a call without registers (get_user_pages).
#[inline(always)]
fn fault_args(address: u64, flags: u32, regs: *const c_void) -> Option<FaultArgs> {
    if regs.is_null() {
        return None;
    }
    Some(FaultArgs {
        address,
        ip: read::<u64>(regs, offset!(pt_regs_ip)).unwrap_or(0),
        flags,
        _pad: 0,
    })
}

#[fexit]
pub fn bar_fault_fexit(ctx: FExitContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() || in_stack_walk() {
        return 0;
    }
    // handle_mm_fault(struct vm_area_struct *vma, unsigned long address, unsigned int flags,
    //                 struct pt_regs *regs) -> vm_fault_t
    let address: u64 = ctx.arg(1);
    let flags: u32 = ctx.arg(2);
    let regs: *const c_void = ctx.arg(3);
    let Some(args) = fault_args(address, flags, regs) else {
        return 0;
    };
    // An fexit program always has a return value to read.
    let ret = ctx.ret::<u32>().unwrap_or(0);
    fault_done(&ctx, pid_tgid, &args, ret, Delivery::Alone);
    0
}

#[kprobe]
pub fn bar_fault_kprobe(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() || in_stack_walk() {
        return 0;
    }
    let address: u64 = ctx.arg(1).unwrap_or(0);
    let flags: u32 = ctx.arg(2).unwrap_or(0);
    let regs: *const c_void = ctx.arg(3).unwrap_or(core::ptr::null());
    if let Some(args) = fault_args(address, flags, regs) {
        let _ = FAULT_ARGS.insert(pid_tgid as u32, args, 0);
    }
    0
}

#[kretprobe]
pub fn bar_fault_kretprobe(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() || in_stack_walk() {
        return 0;
    }
    let tid = pid_tgid as u32;
    // SAFETY: copied out before removal.
    let Some(args) = (unsafe { FAULT_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _ = FAULT_ARGS.remove(tid);
    fault_done(
        &ctx,
        pid_tgid,
        &args,
        ctx.ret::<u64>() as u32,
        Delivery::Batched,
    );
    0
}
