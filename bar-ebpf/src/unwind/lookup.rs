//! Where a frame's rule comes from: the process's executable mapping that holds the address
//! (an LPM trie by pid and address), then the row of that mapping's object that covers it (a
//! binary search of the object's rows).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::generated::bpf_loop,
    macros::map,
    maps::{Array, LpmTrie, lpm_trie::Key},
};
use bar_ebpf_common::unwind::{
    MAPPING_KEY_BITS, MAX_MAPPING_ENTRIES, MAX_OBJECTS, MappingKey, NO_OBJECT, UnwindMapping,
    UnwindObject, UnwindRow, mapping_key, method,
};

use super::{UserWalk, WalkState};

/// Every loaded object's rows, back to back; sized by the loader, written by the collector
/// through a mapping of the array's memory (no system call per row).
#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Where each object's rows are.
#[map]
static UNWIND_OBJECTS: Array<UnwindObject> = Array::with_max_entries(MAX_OBJECTS, 0);

/// Executable mappings of the processes whose tables are loaded, by pid and address.
#[map]
static UNWIND_MAPPINGS: LpmTrie<MappingKey, UnwindMapping> =
    LpmTrie::with_max_entries(MAX_MAPPING_ENTRIES, 0);

/// Binary search steps: enough for the largest table an object may have (2^24 rows).
const SEARCH_STEPS: u32 = 25;

/// The executable mapping the current frame's code lies in, as the walk last looked it up.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Mapped {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) bias: u64,
    /// The object's rows: `first .. first + len`; `len` 0 for code walked by frame pointer.
    pub(super) first: u32,
    pub(super) len: u32,
    pub(super) method: u32,
    pub(super) _pad: u32,
}

/// The mapping of `pc` in process `pid`, with its object's rows, if the collector loaded it.
#[inline(always)]
fn find_mapping(pid: u32, generation: u32, pc: u64) -> Option<Mapped> {
    let key = Key::new(MAPPING_KEY_BITS, mapping_key(pid, pc));
    let m = UNWIND_MAPPINGS.get(&key)?;
    if m.generation != generation || pc < m.start || pc >= m.end {
        return None;
    }
    let (first, len, method) = match UNWIND_OBJECTS.get(m.object) {
        Some(o) if m.object != NO_OBJECT => (o.first, o.len, o.method),
        _ => (0, 0, 0),
    };
    Some(Mapped {
        start: m.start,
        end: m.end,
        bias: m.bias,
        first,
        len,
        method,
        _pad: 0,
    })
}

/// A binary search of the rows in progress: the answer lies in `lo .. hi`.
#[repr(C)]
pub(super) struct Search {
    lo: u32,
    hi: u32,
    target: u32,
    _pad: u32,
}

/// One step of the binary search; 1 ends it.
#[inline(never)]
extern "C" fn search_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `find_row` gave it, to this CPU's walk slot.
    let s = unsafe { &mut (**ctx.cast::<*mut UserWalk>()).search };
    if s.hi <= s.lo + 1 {
        return 1;
    }
    let mid = s.lo + (s.hi - s.lo) / 2;
    match UNWIND_ROWS.get(mid) {
        Some(r) if r.pc <= s.target => s.lo = mid,
        Some(_) => s.hi = mid,
        None => {
            s.hi = s.lo;
            return 1;
        }
    }
    0
}

/// The row of `mapped`'s table that covers `addr`: the last one that starts at or before it.
#[inline(always)]
fn find_row(uw: *mut UserWalk, mapped: &Mapped, addr: u64) -> Option<UnwindRow> {
    let target = u32::try_from(addr.checked_sub(mapped.bias)?).ok()?;
    if UNWIND_ROWS.get(mapped.first)?.pc > target {
        return None;
    }
    // Invariant: rows[lo].pc <= target, and every row from hi on starts after it. A loop
    // written here would be verified once per step, for every path that leads to it; bpf_loop's
    // body is verified once.
    {
        // SAFETY: this CPU's walk slot.
        let s = unsafe { &mut (*uw).search };
        s.lo = mapped.first;
        s.hi = mapped.first.checked_add(mapped.len)?;
        s.target = target;
    }
    let mut ctx = uw;
    // SAFETY: the callback and its context match what bpf_loop passes back to it.
    unsafe {
        bpf_loop(
            SEARCH_STEPS,
            search_step as *const () as *mut c_void,
            (&raw mut ctx).cast::<c_void>(),
            0,
        )
    };
    // SAFETY: as above.
    let s = unsafe { &(*uw).search };
    if s.hi <= s.lo {
        return None;
    }
    UNWIND_ROWS.get(s.lo).copied()
}

/// The rule for `addr` (of the instruction at or before `pc`) from the process's mappings and
/// tables: `None` when `pc` lies in no mapping the collector loaded (which asks it to look
/// again), a row of `cfa::MISSING` where the code has no table.
#[inline(always)]
pub(super) fn find_rule(
    uw: *mut UserWalk,
    st: &mut WalkState,
    pc: u64,
    addr: u64,
) -> Option<(UnwindRow, u32)> {
    if pc < st.mapped.start || pc >= st.mapped.end {
        match find_mapping(st.pid, st.generation, pc) {
            Some(m) => st.mapped = m,
            None => {
                st.missed = 1;
                return None;
            }
        }
    }
    if st.mapped.len == 0 {
        return Some((UnwindRow::default(), method::TABLE));
    }
    let row = find_row(uw, &st.mapped, addr).unwrap_or_default();
    Some((row, st.mapped.method))
}
