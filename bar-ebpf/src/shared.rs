//! What every program uses: the configuration, the target filter, stack capture and the way
//! records leave the kernel (with drops counted, never silent).

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_CPU, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_perf_event_output,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, PerfEventArray, StackTrace},
    programs::tracing::StackIdContext,
};
use bar_ebpf_common::{
    BATCH_HEADER, BATCH_RECORDS, Batch, Config, DEFAULT_STACK_MAP_ENTRIES, Header, SUM_MAP_ENTRIES,
    SumKey, SumValue, USER_STACK_FRAMES, USER_STACK_KEY, UserStack, counter,
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

/// User stacks walked by bar's programs (see [`user_stack`]), by [`USER_STACK_KEY`] id.
#[map]
static USER_STACKS: HashMap<u32, UserStack> =
    HashMap::with_max_entries(DEFAULT_STACK_MAP_ENTRIES, 0);

/// Words of user stack read at once. A read costs a helper call and a user access window, plus
/// its copy; callers' frames are mostly close together, so one read usually covers several.
/// 512 bytes measured best on a page-fault storm (program time per fault: 128 bytes 572 ns,
/// 256 bytes 465, 512 bytes 370, 1024 bytes 415).
const WINDOW_WORDS: usize = 64;

/// A user stack being walked: the stack as it will be interned, and the piece of user memory
/// read last.
#[repr(C)]
struct UserWalk {
    stack: UserStack,
    /// One word more than is read, so that the verifier sees both words of a frame inside the
    /// window at any (masked) frame offset.
    window: [u64; WINDOW_WORDS + 1],
}

/// Where a user stack is built before it is interned: one slot per level of nesting of bar's
/// programs on a CPU (the count in `IN_STACK_WALK`), so a program that interrupts another
/// does not write over its walk.
const WALK_SLOTS: u32 = 4;
#[map]
static USER_WALK: PerCpuArray<UserWalk> = PerCpuArray::with_max_entries(WALK_SLOTS, 0);

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
fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(e) => e,
    }
}

const EFAULT: i32 = 14;
const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;
/// `__USER_CS`: the code segment of a 64-bit task in user mode.
const USER_CS_64: u64 = 0x33;

#[inline(always)]
fn mix(h: u64, word: u64) -> u64 {
    // FNV-1a over whole words: cheap, and good enough for keys checked by a second hash.
    (h ^ word).wrapping_mul(0x0000_0100_0000_01b3)
}

/// A user stack walk in progress, between [`user_stack`] and its [`walk_frame`] steps.
#[repr(C)]
struct WalkState {
    walk: *mut UserStack,
    window: *mut [u64; WINDOW_WORDS + 1],
    /// The frame pointer to follow next.
    fp: u64,
    /// The window holds user memory from `base` to `base + len` bytes.
    base: u64,
    len: u64,
    hash: u64,
}

/// One step of a user stack walk: frame `i + 1` (frame 0 is the interrupted instruction).
/// Returns 1 to stop the walk, as bpf_loop expects.
#[inline(never)]
extern "C" fn walk_frame(i: u64, state: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the state `user_stack` gave it, whose pointers are this
    // CPU's walk slot.
    let st = unsafe { &mut *state.cast::<WalkState>() };
    // SAFETY: as above.
    let (walk, window) = unsafe { (&mut *st.walk, &mut *st.window) };
    let fp = st.fp;
    if fp == 0 || fp % 8 != 0 {
        return 1;
    }
    // A frame is the caller's frame pointer, then the return address.
    if fp < st.base || fp + 16 > st.base + st.len {
        let whole = (WINDOW_WORDS * 8) as u32;
        let dst = window.as_mut_ptr().cast::<c_void>();
        // SAFETY: `dst` has room for `whole` bytes; bpf_probe_read_user validates the source
        // and fails on a bad one. A window that runs past the top of the stack fails too: then
        // only the frame is read.
        if unsafe { bpf_probe_read_user(dst, whole, fp as *const c_void) } == 0 {
            st.len = u64::from(whole);
        } else if unsafe { bpf_probe_read_user(dst, 16, fp as *const c_void) } == 0 {
            st.len = 16;
        } else {
            return 1;
        }
        st.base = fp;
    }
    // The frame is inside the window (checked above); the mask only shows it.
    let at = ((fp - st.base) / 8) as usize & (WINDOW_WORDS - 1);
    let (Some(&next), Some(&ret)) = (window.get(at), window.get(at + 1)) else {
        return 1;
    };
    let n = i as usize + 1;
    let Some(slot) = walk.ips.get_mut(n) else {
        return 1;
    };
    if ret == 0 {
        return 1;
    }
    *slot = ret;
    walk.nr = n as u32 + 1;
    st.hash = mix(st.hash, ret);
    // Callers' frames are higher up the stack; anything else is not a frame chain.
    if next <= fp {
        return 1;
    }
    st.fp = next;
    0
}

/// The user stack of the current task, as an id for the record.
///
/// `bpf_get_stackid` walks user frame pointers until a read fails, and the chain of every
/// program ends with a null frame pointer (the ABI's outermost frame): each walk ends in a
/// page fault on address 0, which the kernel handles and fixes up. That fault cost more than
/// the rest of the walk together (about 2 us of the 2.5 us a page-fault storm paid per event
/// here). This walk reads the same frames from the same registers (`task_pt_regs`, as
/// `perf_callchain_user`) but stops at a null or descending frame pointer, and interns the
/// stack in `USER_STACKS` under 30 bits of a 64-bit hash of its frames (the other bits tell
/// two stacks with the same key apart, reported as a collision like `-EEXIST` from
/// `bpf_get_stackid`). 32-bit tasks, and kernels without `bpf_task_pt_regs` or `bpf_loop`,
/// keep the kernel's walk.
#[inline(always)]
fn user_stack<C: StackIdContext>(ctx: &C, slot: u32) -> i32 {
    let kernel_walk = u64::from(BPF_F_USER_STACK);
    if config!(user_walk) == 0 {
        return stack_id(ctx, kernel_walk);
    }
    let Some(walk) = USER_WALK.get_ptr_mut(slot) else {
        return stack_id(ctx, kernel_walk);
    };
    // SAFETY: this CPU's slot for this nesting level, used by no other program meanwhile.
    let UserWalk {
        stack: walk,
        window,
    } = unsafe { &mut *walk };
    // SAFETY: helpers without preconditions; the verifier checks the task pointer's type.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as usize as *const u8;
    // `regs` is a BTF pointer to the task's `struct pt_regs`, and the offsets are constants
    // the verifier checks against BTF: a field is a plain load (its fault, if any, handled by
    // the kernel), several times cheaper than copying the registers with a helper.
    // SAFETY: see above; a bad address reads as 0 rather than faulting.
    let word = |off: u32| unsafe { core::ptr::read_volatile(regs.add(off as usize).cast::<u64>()) };
    // The low 16 bits: kernels with FRED keep more in the word that holds `cs`.
    let cs = word(config!(layout.pt_regs_cs)) & 0xffff;
    if cs & 3 != 3 {
        // Never in user mode: a kernel thread has no user stack.
        return -EFAULT;
    }
    if cs != USER_CS_64 {
        return stack_id(ctx, kernel_walk);
    }
    let ip = word(config!(layout.pt_regs_ip));
    let fp = word(config!(layout.pt_regs_bp));
    walk.ips[0] = ip;
    walk.nr = 1;
    let mut state = WalkState {
        walk: &raw mut *walk,
        window: &raw mut *window,
        fp,
        base: 0,
        len: 0,
        hash: mix(0xcbf2_9ce4_8422_2325, ip),
    };
    // A loop written here would be verified once per possible frame (the verifier follows
    // every iteration), which made each program take up to 0.15 s to load natively and many
    // seconds on slow machines; bpf_loop's body is verified once.
    // SAFETY: the callback and its state match what bpf_loop passes back to it.
    unsafe {
        bpf_loop(
            (USER_STACK_FRAMES - 1) as u32,
            walk_frame as *const () as *mut c_void,
            (&raw mut state).cast::<c_void>(),
            0,
        )
    };
    let hash = state.hash;
    walk.hash = hash;
    let key = ((hash ^ (hash >> 32)) as u32 & (USER_STACK_KEY - 1)) | USER_STACK_KEY;
    // SAFETY: the value is only compared, not kept.
    if let Some(known) = unsafe { USER_STACKS.get(key) } {
        return if known.hash == hash {
            key as i32
        } else {
            -EEXIST
        };
    }
    // By reference: the stack is too big to copy onto the BPF stack.
    let stack: &UserStack = walk;
    match USER_STACKS.insert(key, stack, u64::from(BPF_NOEXIST)) {
        // Another CPU interned it first: the same stack, as near as a 64-bit hash tells.
        Ok(()) => key as i32,
        Err(e) if e == -EEXIST => key as i32,
        Err(_) => -ENOMEM,
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
    let mut depth = WALK_SLOTS;
    if let Some(n) = walking {
        // SAFETY: per-CPU slot.
        unsafe {
            depth = *n;
            *n += 1;
        }
    }
    let user = user_stack(ctx, depth);
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
