//! Page faults of the target. Preferred: `tp_btf` on the x86 `page_fault_user` /
//! `page_fault_kernel` tracepoints (arguments passed directly, no record formatting); fallback:
//! the same tracepoints as classic tracepoints, whose field offsets come from tracefs.
//! Both run before the fault is handled, so the kernel stack is the fault entry path. For a
//! fault taken in user mode that path is always the same (`asm_exc_page_fault`,
//! `exc_page_fault`, then the tracepoint), so its kernel stack is walked once per CPU and its
//! id reused; a kernel-mode fault's stack (which kernel code touched user memory) is walked
//! every time.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, map, tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, TracePointContext, tracing::StackIdContext},
};
use bar_ebpf_common::{FaultRecord, fault_flag, kind};

use crate::shared::{
    KernelStack, emit, header_with, in_stack_walk, null_mode, offset, read, traced_current,
};

/// The kernel stack id of a user-mode fault on this CPU, plus one (see [`KernelStack`]).
#[map]
static USER_FAULT_KSTACK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn record<C: StackIdContext>(
    ctx: &C,
    pid_tgid: u64,
    address: u64,
    ip: u64,
    error_code: u64,
    flags: u32,
) {
    let kernel = if flags & fault_flag::USER_MODE != 0 {
        KernelStack::OncePerCpu(&USER_FAULT_KSTACK)
    } else {
        KernelStack::Walk
    };
    let record = FaultRecord {
        header: header_with(ctx, kind::FAULT, pid_tgid, kernel),
        address,
        ip,
        error_code: error_code as u32,
        flags,
    };
    emit(ctx, kind::FAULT, &record);
}

#[inline(always)]
fn from_btf(ctx: &BtfTracePointContext, flags: u32) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() || in_stack_walk() {
        return 0;
    }
    // page_fault_{user,kernel}(unsigned long address, struct pt_regs *regs, unsigned long error_code)
    let address: u64 = ctx.arg(0);
    let regs: *const c_void = ctx.arg(1);
    let error_code: u64 = ctx.arg(2);
    let ip = read::<u64>(regs, offset!(pt_regs_ip)).unwrap_or(0);
    record(ctx, pid_tgid, address, ip, error_code, flags);
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
    let address = read::<u64>(base, offset!(fault_address)).unwrap_or(0);
    let ip = read::<u64>(base, offset!(fault_ip)).unwrap_or(0);
    let error_code = read::<u64>(base, offset!(fault_error_code)).unwrap_or(0);
    record(ctx, pid_tgid, address, ip, error_code, flags);
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
