//! What every program uses: the configuration, the target filter, stack capture and the way
//! records leave the kernel (with drops counted, never silent).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_CPU, BPF_NOEXIST},
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_perf_event_output},
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap, PerfEventArray, StackTrace},
    programs::tracing::StackIdContext,
};
use bar_ebpf_common::{
    BATCH_HEADER, BATCH_RECORDS, Batch, Config, DEFAULT_STACK_MAP_ENTRIES, Header, SUM_MAP_ENTRIES,
    SumKey, SumValue, counter,
};

#[unsafe(no_mangle)]
pub(crate) static BAR_CONFIG: Config = Config::new();

#[map]
static EVENTS: PerfEventArray<u8> = PerfEventArray::new(0);

#[map]
pub(crate) static STACKS: StackTrace = StackTrace::with_max_entries(DEFAULT_STACK_MAP_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Records summed in the kernel (`--aggregate`), per CPU so that adding needs no atomics.
#[map]
static SUMS: PerCpuHashMap<SumKey, SumValue> = PerCpuHashMap::with_max_entries(SUM_MAP_ENTRIES, 0);

/// The window the collector is in; programs add to the half of `SUMS` of its parity while the
/// collector drains the other (see `collect::sums`).
#[map]
static SUM_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

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

/// Where the kernel stack of a record comes from.
#[derive(Clone, Copy)]
pub(crate) enum KernelStack {
    /// Walked for every record.
    Walk,
    /// The same for every record of the program (e.g. a fault taken in user mode always enters
    /// the kernel through the same path): walked once per CPU, its id kept in this per-CPU
    /// slot as id + 1 (0 until taken). Walking a kernel stack costs about as much as walking
    /// the user stack, so this halves the cost of such a record.
    OncePerCpu(&'static PerCpuArray<u32>),
}

#[inline(always)]
pub(crate) fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(e) => e,
    }
}

/// User and kernel stack ids of the current task; a failure is kept as its negative errno so
/// the collector can count it and show the frame as lost.
#[inline(always)]
pub(crate) fn stacks<C: StackIdContext>(ctx: &C) -> (i32, i32) {
    stacks_with(ctx, KernelStack::Walk)
}

/// [`stacks`], with the kernel stack taken as `kernel` says.
#[inline(always)]
pub(crate) fn stacks_with<C: StackIdContext>(ctx: &C, kernel: KernelStack) -> (i32, i32) {
    let walking = IN_STACK_WALK.get_ptr_mut(0);
    let mut depth = crate::unwind::WALK_SLOTS;
    if let Some(n) = walking {
        // SAFETY: per-CPU slot.
        unsafe {
            depth = *n;
            *n += 1;
        }
    }
    let user = crate::unwind::user_stack(ctx, depth);
    let kernel = match kernel {
        KernelStack::Walk => stack_id(ctx, 0),
        KernelStack::OncePerCpu(slot) => match slot.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            Some(known) if unsafe { *known } != 0 => (unsafe { *known } - 1) as i32,
            Some(known) => {
                let id = stack_id(ctx, 0);
                if id >= 0 {
                    // SAFETY: per-CPU slot.
                    unsafe { *known = id as u32 + 1 };
                }
                id
            }
            None => stack_id(ctx, 0),
        },
    };
    if let Some(n) = walking {
        // SAFETY: per-CPU slot.
        unsafe { *n = (*n).saturating_sub(1) };
    }
    (user, kernel)
}

const EEXIST: i32 = 17;

/// Header for a record about the current task, with its stacks.
#[inline(always)]
pub(crate) fn current_header<C: StackIdContext>(ctx: &C, kind: u32, pid_tgid: u64) -> Header {
    header_with(ctx, kind, pid_tgid, KernelStack::Walk)
}

/// [`current_header`], with the kernel stack taken as `kernel` says.
#[inline(always)]
pub(crate) fn header_with<C: StackIdContext>(
    ctx: &C,
    kind: u32,
    pid_tgid: u64,
    kernel: KernelStack,
) -> Header {
    let (user_stack, kernel_stack) = stacks_with(ctx, kernel);
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

/// Writes `size` bytes at `data` to this CPU's perf buffer; false when it had no room.
#[inline(always)]
fn output<C: EbpfContext>(ctx: &C, data: *const c_void, size: usize) -> bool {
    // aya-ebpf's PerfEventArray::output drops the helper's result; bar needs it to count
    // drops per kind, so the helper is called directly on the map definition.
    // SAFETY: EVENTS is a perf event array map definition; callers pass `size` valid bytes.
    let ret = unsafe {
        bpf_perf_event_output(
            ctx.as_ptr(),
            (&raw const EVENTS).cast_mut().cast::<c_void>(),
            BPF_F_CURRENT_CPU,
            data.cast_mut(),
            size as u64,
        )
    };
    ret >= 0
}

/// Sends a record to this CPU's perf buffer; a full buffer is counted per kind.
#[inline(always)]
pub(crate) fn emit<C: EbpfContext, T>(ctx: &C, kind: u32, record: &T) {
    if !output(ctx, core::ptr::from_ref(record).cast(), size_of::<T>()) {
        bump(counter::DROPPED + kind);
    }
}

/// How long the first record of a [`Batch`] may wait for others (until the next record of its
/// kind on its CPU; the collector takes what is still waiting when the recording ends). A storm
/// fills a batch in microseconds; a family that records less often than this sends each record
/// with the next one, or alone.
const BATCH_WAIT_NS: u64 = 20_000_000;

/// Sends `record` (taken at `ts`) in this CPU's `batch` of records of `kind`: when the batch is
/// full, or its first record has waited [`BATCH_WAIT_NS`]. Only programs that cannot interrupt
/// one another on a CPU may share a batch: programs that run with preemption off (tracepoints,
/// kprobes, or fentry inside the scheduler) and never in interrupts, and that pass over events
/// inside bar's own programs. An fexit program may be preempted by another thread's on the
/// same CPU, so it sends with [`emit`].
#[inline(always)]
pub(crate) fn emit_batched<C: EbpfContext, T: Copy>(
    ctx: &C,
    kind: u32,
    batch: &PerCpuArray<Batch<T>>,
    ts: u64,
    record: T,
) {
    let Some(b) = batch.get_ptr_mut(0) else {
        emit(ctx, kind, &record);
        return;
    };
    // SAFETY: this CPU's batch, used by no other program meanwhile (see above).
    let b = unsafe { &mut *b };
    let len = b.len as usize;
    let Some(slot) = b.records.get_mut(len) else {
        // Not left full by the code below; sent alone rather than lost if ever it is.
        b.len = 0;
        emit(ctx, kind, &record);
        return;
    };
    *slot = record;
    if len == 0 {
        b.ts_ns = ts;
    }
    let len = len + 1;
    if len < BATCH_RECORDS && ts.wrapping_sub(b.ts_ns) < BATCH_WAIT_NS {
        b.len = len as u32;
        return;
    }
    b.kind = bar_ebpf_common::kind::BATCH;
    b.len = len as u32;
    // The records in use only: at most the whole batch, as len <= BATCH_RECORDS.
    let size = BATCH_HEADER + len * size_of::<T>();
    if !output(ctx, core::ptr::from_ref(b).cast(), size) {
        bump_by(counter::DROPPED + kind, len as u64);
    }
    b.len = 0;
}

/// Whether records are summed in the kernel rather than sent one by one.
#[inline(always)]
pub(crate) fn summing() -> bool {
    config!(sum_records) != 0
}

/// Adds a record to the sums of the current window instead of sending it: one more under
/// `key` (whose epoch is set here), and `total` to their sum. A record that finds the map full
/// is counted as dropped, as one that finds the perf buffer full.
#[inline(always)]
pub(crate) fn add_to_sums(mut key: SumKey, total: u64) {
    key.epoch = SUM_EPOCH.get(0).map_or(0, |e| *e & 1);
    let add = |v: *mut SumValue| {
        // SAFETY: this CPU's value. A key holds a thread id and a kind, and one thread's
        // additions of one kind do not interleave (a fault program passes over faults taken
        // inside bar's programs), so no other program writes this value meanwhile.
        unsafe {
            (*v).count += 1;
            (*v).total += total;
        }
    };
    if let Some(v) = SUMS.get_ptr_mut(key) {
        add(v);
        return;
    }
    let first = SumValue { count: 1, total };
    match SUMS.insert(key, first, u64::from(BPF_NOEXIST)) {
        Ok(()) => {}
        // Another CPU added the key in between: its value on this CPU starts at zero.
        Err(e) if e == -EEXIST => match SUMS.get_ptr_mut(key) {
            Some(v) => add(v),
            None => bump(counter::DROPPED + key.kind),
        },
        Err(_) => bump(counter::DROPPED + key.kind),
    }
}

#[inline(always)]
pub(crate) fn bump(index: u32) {
    bump_by(index, 1);
}

#[inline(always)]
pub(crate) fn bump_by(index: u32, n: u64) {
    if let Some(value) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs on one CPU do not run concurrently with each other.
        unsafe { *value += n };
    }
}

/// Reads a value at `base + off` in kernel memory (a tracepoint record or a kernel struct).
#[inline(always)]
pub(crate) fn read<T>(base: *const c_void, off: usize) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one just fails.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(base.cast::<u8>().add(off).cast::<T>()) }.ok()
}
