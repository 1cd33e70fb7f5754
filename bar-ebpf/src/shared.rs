//! What every program uses: the configuration, the target filter, stack capture and the way
//! records leave the kernel (with drops counted, never silent).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_CPU, BPF_F_USER_STACK},
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_perf_event_output},
    macros::map,
    maps::{PerCpuArray, PerfEventArray, StackTrace},
    programs::tracing::StackIdContext,
};
use bar_ebpf_common::{Config, DEFAULT_STACK_MAP_ENTRIES, Header, counter};

#[unsafe(no_mangle)]
pub(crate) static BAR_CONFIG: Config = Config::new();

#[map]
static EVENTS: PerfEventArray<u8> = PerfEventArray::new(0);

#[map]
pub(crate) static STACKS: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_MAP_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per CPU: how many bar programs are inside a stack capture right now. Walking a user stack
/// reads user memory and can fault; those faults are bar's, not the target's, and the fault
/// programs must not record them. A count, not a flag, because programs nest (a cpu-clock
/// sample can interrupt a fault program).
#[map]
static IN_STACK_WALK: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Whether a bar program on this CPU is walking a stack (so the current fault is bar's own).
#[inline(always)]
pub(crate) fn in_stack_walk() -> bool {
    IN_STACK_WALK.get(0).is_some_and(|n| *n != 0)
}

/// Reads one field of the configuration. The volatile read keeps the compiler from folding the
/// compile-time default into the code; the verifier then sees the loader's value as a constant.
macro_rules! config {
    ($($field:ident).+) => {
        // SAFETY: BAR_CONFIG is a plain static that lives as long as the program.
        unsafe { core::ptr::read_volatile(&raw const crate::shared::BAR_CONFIG.$($field).+) }
    };
}
pub(crate) use config;

/// A field offset from the layout the loader filled in, as `usize`.
macro_rules! offset {
    ($field:ident) => {
        crate::shared::config!(layout.$field) as usize
    };
}
pub(crate) use offset;

/// Whether a process (thread group) is one bar records.
#[inline(always)]
pub(crate) fn traced_tgid(tgid: u32) -> bool {
    let target = config!(target_tgid);
    if target != 0 {
        return tgid == target;
    }
    // System-wide: everything but the idle task and bar itself.
    tgid != 0 && tgid != config!(self_tgid)
}

/// Whether the current task is one bar records.
#[inline(always)]
pub(crate) fn traced_current(pid_tgid: u64) -> bool {
    if !traced_tgid((pid_tgid >> 32) as u32) {
        return false;
    }
    let cgroup = config!(cgroup_id);
    // SAFETY: the helper has no preconditions.
    cgroup == 0 || unsafe { bpf_get_current_cgroup_id() } == cgroup
}

/// True when the programs only filter and return, to measure the floor of the hooks' cost.
#[inline(always)]
pub(crate) fn null_mode() -> bool {
    config!(null_mode) != 0
}

#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// User and kernel stack ids of the current task; a failure is kept as its negative errno so
/// the collector can count it and show the frame as lost.
#[inline(always)]
pub(crate) fn stacks<C: StackIdContext>(ctx: &C) -> (i32, i32) {
    let walking = IN_STACK_WALK.get_ptr_mut(0);
    if let Some(n) = walking {
        // SAFETY: per-CPU slot.
        unsafe { *n += 1 };
    }
    let user = match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as i32,
        Err(e) => e,
    };
    let kernel = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as i32,
        Err(e) => e,
    };
    if let Some(n) = walking {
        // SAFETY: per-CPU slot.
        unsafe { *n = (*n).saturating_sub(1) };
    }
    (user, kernel)
}

/// Header for a record about the current task, with its stacks.
#[inline(always)]
pub(crate) fn current_header<C: StackIdContext>(ctx: &C, kind: u32, pid_tgid: u64) -> Header {
    let (user_stack, kernel_stack) = stacks(ctx);
    Header {
        ts_ns: now(),
        kind,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        user_stack,
        kernel_stack,
        _pad: 0,
    }
}

/// Sends a record to this CPU's perf buffer; a full buffer is counted per kind.
#[inline(always)]
pub(crate) fn emit<C: EbpfContext, T>(ctx: &C, kind: u32, record: &T) {
    // aya-ebpf's PerfEventArray::output drops the helper's result; bar needs it to count
    // drops per kind, so the helper is called directly on the map definition.
    // SAFETY: EVENTS is a perf event array map definition, `record` is valid for its size.
    let ret = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            (&raw const EVENTS).cast_mut().cast::<c_void>(),
            BPF_F_CURRENT_CPU,
            core::ptr::from_ref(record).cast_mut().cast::<c_void>(),
            size_of::<T>() as u64,
        )
    };
    if ret < 0 {
        bump(counter::DROPPED + kind);
    }
}

#[inline(always)]
pub(crate) fn bump(index: u32) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs on one CPU do not run concurrently with each other.
        unsafe { *value += 1 };
    }
}

/// Reads a value at `base + off` in kernel memory (a tracepoint record or a kernel struct).
#[inline(always)]
pub(crate) fn read<T>(base: *const c_void, off: usize) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one just fails.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(base.cast::<u8>().add(off).cast::<T>()) }.ok()
}
