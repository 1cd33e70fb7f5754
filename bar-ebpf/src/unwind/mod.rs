//! User stacks, walked by bar's programs themselves: with the unwind tables the collector loads
//! for a process's objects (`.eh_frame`, Go's tables), and by frame pointer where an object has
//! none (JIT code, an object not loaded yet, a process bar has not read yet). Frames are
//! interned in `USER_STACKS` by a hash of their addresses, with what the walk learned on the
//! way: frames per method and why it stopped.

mod ask;
mod lookup;

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_loop, bpf_probe_read_user, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::tracing::StackIdContext,
};
use bar_ebpf_common::{
    DEFAULT_STACK_MAP_ENTRIES, USER_STACK_FRAMES, USER_STACK_KEY, UserStack,
    unwind::{MAX_PROCESSES, UnwindRow, cfa, facts, method, rbp, stop},
};

use self::{
    ask::{ask_for_page, ask_for_tables},
    lookup::{Mapped, Search, find_rule},
};
use crate::shared::{config, now, stack_id};

/// User stacks walked by bar's programs (see [`user_stack`]), by [`USER_STACK_KEY`] id.
#[map]
static USER_STACKS: HashMap<u32, UserStack> =
    HashMap::with_max_entries(DEFAULT_STACK_MAP_ENTRIES, 0);

/// Processes whose mappings are loaded, to the generation of their entries. A process that
/// execs is removed (by the exec program) until the collector has read its new map.
#[map]
static UNWIND_PROCESSES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// Bumped whenever `UNWIND_PROCESSES` changes, so that a walk may trust the generation it
/// found for the same process the last time: entry 0 by the exec program, 1 by the collector
/// (each writer its own, so that neither writes over the other's).
#[map]
static UNWIND_EPOCH: Array<u64> = Array::with_max_entries(2, 0);

/// How far above the stack pointer an unreadable word may lie and still be asked for.
const STACK_REACH: u64 = 64 << 20;

/// Words of user stack read at once. A read costs a helper call and a user access window, plus
/// its copy; callers' frames are mostly close together, so one read usually covers several.
/// 512 bytes measured best on a page-fault storm (program time per fault: 128 bytes 572 ns,
/// 256 bytes 465, 512 bytes 370, 1024 bytes 415).
const WINDOW_WORDS: usize = 64;

/// A user stack being walked: the stack as it will be interned, the piece of user memory read
/// last, and where the walk is. All of it lives in a map value rather than on the BPF stack:
/// the verifier tracks no values in map memory, so the state a step starts from looks the same
/// at every step and bpf_loop's callback is verified in a few passes (with the counters and
/// lengths on the stack as known constants, it followed every possible count and ran out of
/// its million instructions).
#[repr(C)]
pub(super) struct UserWalk {
    stack: UserStack,
    /// One word more than is read, so that the verifier sees any (masked) word offset inside.
    window: [u64; WINDOW_WORDS + 1],
    state: WalkState,
    search: Search,
    known: [Known; KNOWN_SLOTS],
    roots: [Root; ROOT_SLOTS],
    /// The process of the last walk, its generation, and the epoch they were read in: a hash
    /// map lookup saved per walk of the same process.
    last_pid: u32,
    last_generation: u32,
    last_epoch: [u64; 2],
}

/// The rule the walk found for an address of a process, kept for the walks that follow: most
/// stacks repeat, and a hit here replaces a mapping lookup and a binary search with one compare.
#[repr(C)]
#[derive(Clone, Copy)]
struct Known {
    addr: u64,
    pid: u32,
    /// Entries are for a process's mappings as of one generation; an exec, or a mapping
    /// removed, makes a new one.
    generation: u32,
    row: UnwindRow,
    method: u32,
    _pad: u32,
}

/// Addresses [`Known`] per walk slot of a CPU (direct-mapped by a hash of the address).
const KNOWN_SLOTS: usize = 512;

/// A thread's last step to its outermost frame, by table, as read the last time.
///
/// That step reads the top of the thread's stack (a thread's `start_thread` frame under
/// `clone3`, the main thread's `__libc_start_main` under `_start`), which the thread itself
/// does not touch again once started: the read misses the caches. On a page-fault storm of a
/// program built with frame pointers, whose other frames lie where it works, it was a fifth of
/// the program's time (per fault, medians of 12 runs: 718 ns, 565 ns stopped before that step,
/// 532 ns by frame pointer, which stops one frame short at the frameless `start_thread`); kept
/// here, 615-636 ns against 683-690 without, in two sets of 8 runs. The words read there stay
/// as they are while the thread lives: a step from the same instruction at the same CFA of the
/// same thread (or of a thread that reuses the tid of one that exited, with its stack at the
/// same place, started by the same code) finds what was found before.
#[repr(C)]
#[derive(Clone, Copy)]
struct Root {
    tid: u32,
    pid: u32,
    generation: u32,
    _pad: u32,
    /// The step: from the instruction `pc` of a frame whose CFA is `cfa` ...
    pc: u64,
    cfa: u64,
    /// ... to the outermost frame's address, with `rbp` restored to `fp`.
    ret: u64,
    fp: u64,
}

/// Threads whose [`Root`] a walk slot of a CPU keeps (direct-mapped by tid).
const ROOT_SLOTS: usize = 64;

/// Where a user stack is built before it is interned: one slot per level of nesting of bar's
/// programs on a CPU (the count in `IN_STACK_WALK`), so a program that interrupts another
/// does not write over its walk.
pub(crate) const WALK_SLOTS: u32 = 4;
#[map]
static USER_WALK: PerCpuArray<UserWalk> = PerCpuArray::with_max_entries(WALK_SLOTS, 0);

pub(super) const EFAULT: i32 = 14;
const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;
/// `__USER_CS`: the code segment of a 64-bit task in user mode.
const USER_CS_64: u64 = 0x33;
/// [`WalkState::reason`] while the walk goes on.
const WALKING: u32 = u32::MAX;

#[inline(always)]
fn mix(h: u64, word: u64) -> u64 {
    // FNV-1a over whole words: cheap, and good enough for keys checked by a second hash.
    (h ^ word).wrapping_mul(0x0000_0100_0000_01b3)
}

/// A user stack walk in progress, between [`user_stack`] and its [`walk_frame`] steps.
#[repr(C)]
pub(super) struct WalkState {
    /// The frame to push next: its instruction (frame 0) or return address, stack pointer
    /// and frame pointer.
    pc: u64,
    sp: u64,
    fp: u64,
    /// The window holds user memory from `base` to `base + len` bytes.
    base: u64,
    len: u64,
    hash: u64,
    mapped: Mapped,
    pid: u32,
    /// Of the process's mapping entries; 0 when its tables are not loaded.
    generation: u32,
    /// Frames found by table, by frame pointer, by Go's table.
    by_table: u32,
    by_frame_pointer: u32,
    by_go: u32,
    /// One of [`stop`], or [`WALKING`].
    reason: u32,
    /// Non-zero: the walk met code in no mapping the collector loaded.
    missed: u32,
    tid: u32,
    /// The frame the last step was taken from, if by table and read from the stack (0
    /// otherwise): when the frame it reached is the outermost, that step is kept as the
    /// thread's [`Root`].
    from_pc: u64,
    /// The stack word the walk could not read, if it stopped on one (0 otherwise).
    unread: u64,
}

/// The word of user memory at `addr`, through the window: read again when it does not hold
/// `addr`.
#[inline(always)]
fn fetch(st: &mut WalkState, window: &mut [u64; WINDOW_WORDS + 1], addr: u64) -> Option<u64> {
    if !covers(st, addr, 8) && !refill(st, window, addr, 8) {
        return None;
    }
    // Inside the window (checked above); the mask only shows it to the verifier.
    let at = ((addr - st.base) / 8) as usize & (WINDOW_WORDS - 1);
    window.get(at).copied()
}

/// The words at `addr` and `addr + 8`, a frame's saved `rbp` and return address, with one
/// check of the window: a frame pointer step and the usual table row read both, and the walk
/// takes a step per frame.
#[inline(always)]
fn fetch_pair(
    st: &mut WalkState,
    window: &mut [u64; WINDOW_WORDS + 1],
    addr: u64,
) -> Option<(u64, u64)> {
    if !covers(st, addr, 16) && !refill(st, window, addr, 16) {
        return None;
    }
    // As in `fetch`; the window has a word more than is read, so `at + 1` is inside too.
    let at = ((addr - st.base) / 8) as usize & (WINDOW_WORDS - 1);
    Some((*window.get(at)?, *window.get(at + 1)?))
}

/// Reads the window from `addr`: a whole window, or the `n` bytes wanted where the window
/// would run past readable memory (the top of the stack). False, with the word that could not
/// be read noted, when even those cannot be read.
#[inline(always)]
fn refill(st: &mut WalkState, window: &mut [u64; WINDOW_WORDS + 1], addr: u64, n: u32) -> bool {
    let whole = (WINDOW_WORDS * 8) as u32;
    let dst = window.as_mut_ptr().cast::<c_void>();
    let read = |size: u32| {
        // SAFETY: `dst` has room for `whole` bytes, and `size` is at most that;
        // bpf_probe_read_user validates the source and fails on a bad one.
        unsafe { bpf_probe_read_user(dst, size, addr as *const c_void) == 0 }
    };
    if read(whole) {
        st.len = u64::from(whole);
    } else if read(n) {
        st.len = u64::from(n);
    } else {
        st.len = 0;
        // Of a pair, the second word is the one missing when the first reads alone.
        let unread = if n > 8 && read(8) { addr + 8 } else { addr };
        // A frame's words lie above the stack pointer, and a stack is at most a few
        // megabytes: anything else is a wrong frame pointer, not a page to bring back.
        if unread.wrapping_sub(st.sp) < STACK_REACH {
            st.unread = unread;
        }
        return false;
    }
    st.base = addr;
    true
}

/// Whether the window holds the `n` bytes at `addr`.
#[inline(always)]
fn covers(st: &WalkState, addr: u64, n: u64) -> bool {
    let off = addr.wrapping_sub(st.base);
    off < st.len && st.len - off >= n && off.is_multiple_of(8)
}

/// Steps from the current frame to its caller by frame pointer: the saved frame pointer, then
/// the return address. Returns the reason to stop, if the walk stops here.
#[inline(always)]
fn frame_pointer_step(st: &mut WalkState, window: &mut [u64; WINDOW_WORDS + 1]) -> Option<u32> {
    let fp = st.fp;
    if fp == 0 {
        // The ABI's outermost frame.
        return Some(stop::COMPLETE);
    }
    // A caller's frame lies above the current one; anything else is not a frame chain.
    if !fp.is_multiple_of(8) || fp < st.sp {
        return Some(stop::NO_TABLE);
    }
    let Some((next, ret)) = fetch_pair(st, window, fp) else {
        return Some(stop::READ);
    };
    if ret == 0 {
        return Some(stop::COMPLETE);
    }
    st.pc = ret;
    st.sp = fp + 16;
    st.fp = next;
    st.by_frame_pointer += 1;
    None
}

/// Steps from the current frame to its caller by a table row of `method`.
#[inline(always)]
fn table_step(
    st: &mut WalkState,
    window: &mut [u64; WINDOW_WORDS + 1],
    root: Option<&Root>,
    row: UnwindRow,
    method: u32,
) -> Option<u32> {
    let cfa = match row.cfa() {
        cfa::RSP => st.sp + u64::from(row.cfa_offset),
        cfa::RBP => st.fp.wrapping_add(u64::from(row.cfa_offset)),
        cfa::PLT => st.sp + if st.pc & 15 >= 11 { 16 } else { 8 },
        cfa::END => return Some(stop::COMPLETE),
        _ => return Some(stop::UNSUPPORTED),
    };
    // The caller's frame lies above this one.
    if cfa <= st.sp {
        return Some(stop::READ);
    }
    st.from_pc = st.pc;
    let (fp, ret) = match root {
        // The thread's step to its outermost frame, where reading it again would be a cache miss.
        Some(r)
            if r.pc == st.pc
                && r.cfa == cfa
                && r.tid == st.tid
                && r.pid == st.pid
                && r.generation == st.generation
                && !covers(st, cfa - 8, 8) =>
        {
            // Kept already: the frame it reaches need not keep it again.
            st.from_pc = 0;
            (r.fp, r.ret)
        }
        _ => {
            let read = match (row.rbp(), row.rbp_offset) {
                // The usual frame: `rbp` saved right below the return address.
                (rbp::AT_CFA, -2) => fetch_pair(st, window, cfa - 16),
                (rbp::UNCHANGED, _) => fetch(st, window, cfa - 8).map(|ret| (st.fp, ret)),
                // The saved rbp lies below the return address: read it first, so that one
                // window holds both.
                (rbp::AT_CFA, offset) => {
                    let at = cfa.wrapping_add((i64::from(offset) * 8) as u64);
                    let Some(fp) = fetch(st, window, at) else {
                        return Some(stop::READ);
                    };
                    fetch(st, window, cfa - 8).map(|ret| (fp, ret))
                }
                _ => return Some(stop::UNSUPPORTED),
            };
            match read {
                Some(words) => words,
                None => return Some(stop::READ),
            }
        }
    };
    if ret == 0 {
        return Some(stop::COMPLETE);
    }
    st.pc = ret;
    st.sp = cfa;
    st.fp = fp;
    if method == method::GO {
        st.by_go += 1;
    } else {
        st.by_table += 1;
    }
    None
}

/// One step of a user stack walk: pushes frame `i` and finds its caller. Returns 1 to stop the
/// walk, as bpf_loop expects.
#[inline(never)]
extern "C" fn walk_frame(i: u64, state: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `user_stack` gave it, to this CPU's walk slot.
    let uw = unsafe { *state.cast::<*mut UserWalk>() };
    // SAFETY: as above; the three parts do not overlap.
    let (walk, window, st) = unsafe { (&mut (*uw).stack, &mut (*uw).window, &mut (*uw).state) };
    let pc = st.pc;
    // A return address is the instruction after a call, which may be the next function's
    // first: its rule is the call's, one byte before.
    let addr = if i == 0 { pc } else { pc - 1 };
    let mut rule = (UnwindRow::default(), method::TABLE);
    if config!(unwind_tables) != 0 && st.generation != 0 {
        let h = (addr ^ u64::from(st.pid)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55;
        // SAFETY: this CPU's walk slot.
        let known = unsafe { (*uw).known.get_mut(h as usize & (KNOWN_SLOTS - 1)) };
        match known {
            Some(k) if k.addr == addr && k.pid == st.pid && k.generation == st.generation => {
                rule = (k.row, k.method);
            }
            _ => {
                match find_rule(uw, st, pc, addr) {
                    Some(found) => {
                        rule = found;
                        if let Some(k) = known {
                            *k = Known {
                                addr,
                                pid: st.pid,
                                generation: st.generation,
                                row: found.0,
                                method: found.1,
                                _pad: 0,
                            };
                        }
                    }
                    // Code of a mapping not loaded yet: by frame pointer, and not kept.
                    None if i == 0 => {}
                    // A return address in no executable mapping is not a frame: the stack
                    // ends here.
                    None => {
                        st.reason = stop::OUTSIDE;
                        return 1;
                    }
                }
            }
        }
    }
    let n = i as usize;
    let Some(slot) = walk.ips.get_mut(n) else {
        st.reason = stop::DEPTH;
        return 1;
    };
    *slot = pc;
    walk.nr = n as u32 + 1;
    st.hash = mix(st.hash, pc);
    let root = st.tid as usize & (ROOT_SLOTS - 1);
    if rule.0.cfa() == cfa::END
        && st.from_pc != 0
        // SAFETY: this CPU's walk slot.
        && let Some(r) = unsafe { (*uw).roots.get_mut(root) }
    {
        *r = Root {
            tid: st.tid,
            pid: st.pid,
            generation: st.generation,
            _pad: 0,
            pc: st.from_pc,
            cfa: st.sp,
            ret: pc,
            fp: st.fp,
        };
        st.reason = stop::COMPLETE;
        return 1;
    }
    let stopped = if rule.0.cfa() == cfa::MISSING {
        st.from_pc = 0;
        frame_pointer_step(st, window)
    } else {
        // SAFETY: this CPU's walk slot.
        table_step(st, window, unsafe { (*uw).roots.get(root) }, rule.0, rule.1)
    };
    match stopped {
        Some(reason) => {
            st.reason = reason;
            1
        }
        None => 0,
    }
}

/// Sets a field to zero with a store of its own. LLVM merges neighbouring zero stores into a
/// call of `memset`, which on the BPF target is a loop over bytes: four such calls, made when
/// a walk starts, cost 70-90 ns per event, as much as the rest of a short walk.
#[inline(always)]
fn clear<T: Default>(field: &mut T) {
    // SAFETY: a valid, aligned, exclusive reference.
    unsafe { core::ptr::write_volatile(field, T::default()) };
}

/// The user stack of the current task, as an id for the record.
///
/// `bpf_get_stackid` walks user frame pointers until a read fails, and the chain of every
/// program ends with a null frame pointer (the ABI's outermost frame): each walk ends in a
/// page fault on address 0, which the kernel handles and fixes up. That fault cost more than
/// the rest of the walk together (about 2 us of the 2.5 us a page-fault storm paid per event
/// here). This walk reads the same frames from the same registers (`task_pt_regs`, as
/// `perf_callchain_user`), with the process's unwind tables where the collector loaded them,
/// stops where it can go no further, and interns the stack in `USER_STACKS` under 30 bits of
/// a 64-bit hash of its frames (the other bits tell two stacks with the same key apart,
/// reported as a collision like `-EEXIST` from `bpf_get_stackid`). 32-bit tasks, and kernels
/// without `bpf_task_pt_regs` or `bpf_loop`, keep the kernel's walk.
#[inline(always)]
pub(crate) fn user_stack<C: StackIdContext>(ctx: &C, slot: u32) -> i32 {
    let kernel_walk = u64::from(BPF_F_USER_STACK);
    if config!(user_walk) == 0 {
        return stack_id(ctx, kernel_walk);
    }
    let Some(uw) = USER_WALK.get_ptr_mut(slot) else {
        return stack_id(ctx, kernel_walk);
    };
    // SAFETY: this CPU's slot for this nesting level, used by no other program meanwhile.
    let (walk, st) = unsafe { (&mut (*uw).stack, &mut (*uw).state) };
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
    st.pc = word(config!(layout.pt_regs_ip));
    st.fp = word(config!(layout.pt_regs_bp));
    st.hash = 0xcbf2_9ce4_8422_2325;
    st.reason = WALKING;
    clear(&mut st.sp);
    clear(&mut st.base);
    clear(&mut st.len);
    clear(&mut st.mapped.start);
    clear(&mut st.mapped.end);
    clear(&mut st.mapped.len);
    clear(&mut st.generation);
    clear(&mut st.by_table);
    clear(&mut st.by_frame_pointer);
    clear(&mut st.by_go);
    clear(&mut st.missed);
    clear(&mut st.unread);
    clear(&mut st.from_pc);
    if config!(unwind_tables) != 0 {
        let pid_tgid = bpf_get_current_pid_tgid();
        st.pid = (pid_tgid >> 32) as u32;
        st.tid = pid_tgid as u32;
        let epoch = [
            UNWIND_EPOCH.get(0).copied().unwrap_or(0),
            UNWIND_EPOCH.get(1).copied().unwrap_or(0),
        ];
        // SAFETY: this CPU's walk slot.
        let w = unsafe { &mut *uw };
        if w.last_pid == st.pid && w.last_epoch == epoch && epoch[1] != 0 {
            st.generation = w.last_generation;
        } else {
            // SAFETY: the value is copied out at once.
            st.generation = unsafe { UNWIND_PROCESSES.get(st.pid) }
                .copied()
                .unwrap_or(0);
            w.last_pid = st.pid;
            w.last_generation = st.generation;
            w.last_epoch = epoch;
        }
        st.sp = word(config!(layout.pt_regs_sp));
    }
    walk.nr = 0;
    // A loop written here would be verified once per possible frame (the verifier follows
    // every iteration), which made each program take up to 0.15 s to load natively and many
    // seconds on slow machines; bpf_loop's body is verified once.
    let mut state = uw;
    // SAFETY: the callback and its context match what bpf_loop passes back to it.
    unsafe {
        bpf_loop(
            USER_STACK_FRAMES as u32,
            walk_frame as *const () as *mut c_void,
            (&raw mut state).cast::<c_void>(),
            0,
        )
    };
    if st.missed != 0 {
        ask_for_tables(ctx);
    }
    if st.reason == stop::READ && st.unread != 0 {
        ask_for_page(ctx, st.unread);
    }
    let reason = if st.reason == WALKING {
        stop::DEPTH
    } else {
        st.reason
    };
    walk.unwind = facts(st.by_table, st.by_frame_pointer, st.by_go, reason);
    let hash = mix(st.hash, u64::from(reason));
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

/// Called at exec: the process's mappings are gone, and its entries with them until the
/// collector has read the new ones (its stacks are walked by frame pointer meanwhile).
#[inline(always)]
pub(crate) fn forget_process(pid: u32) {
    if config!(unwind_tables) != 0
        && UNWIND_PROCESSES.remove(pid).is_ok()
        && let Some(epoch) = UNWIND_EPOCH.get_ptr_mut(0)
    {
        // The time, rather than a count: any new value will do, and two CPUs that exec at once
        // cannot both write the same one, as they could increments of a shared count.
        // SAFETY: a map value; a plain store of a word.
        unsafe { core::ptr::write_volatile(epoch, now()) };
    }
}
