//! Unwind tables as the kernel programs read them: fixed-size rows per object, the objects'
//! places in the global row array, and the executable mappings of each traced process. The
//! collector builds and loads them (`bar-userspace/src/unwind/`); the programs walk user stacks
//! with them where frame pointers are missing or wrong.

/// How a row finds the canonical frame address (CFA: the stack pointer before the call that
/// entered the function; the return address is the word below it).
pub mod cfa {
    /// No table covers the address: the walker steps by frame pointer.
    pub const MISSING: u8 = 0;
    /// `rsp + offset`.
    pub const RSP: u8 = 1;
    /// `rbp + offset`.
    pub const RBP: u8 = 2;
    /// A PLT stub: `rsp + 8`, and 8 more once its push ran (`(rip & 15) >= 11`).
    pub const PLT: u8 = 3;
    /// The outermost frame (the return address is undefined): the stack is complete.
    pub const END: u8 = 4;
    /// A rule the walker does not follow: the walk stops and says so.
    pub const UNSUPPORTED: u8 = 5;
}

/// Where a row finds the caller's `rbp`.
pub mod rbp {
    /// Not saved: the caller's is the current one.
    pub const UNCHANGED: u8 = 0;
    /// Saved at `CFA + 8 * rbp_offset`.
    pub const AT_CFA: u8 = 1;
    /// A rule the walker does not follow.
    pub const UNSUPPORTED: u8 = 2;
}

/// One row of an object's table: from `pc` up to the next row's, the rules hold. Eight bytes,
/// so that the binary search of a frame touches little memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnwindRow {
    /// Offset of the first address from the object's table base.
    pub pc: u32,
    /// Added to `rsp` or `rbp` for the CFA ([`cfa::RSP`], [`cfa::RBP`]).
    pub cfa_offset: u16,
    /// [`cfa`] rule in the low 4 bits, [`rbp`] rule in the high 4.
    pub kind: u8,
    /// `rbp` is saved at `CFA + 8 * rbp_offset` ([`rbp::AT_CFA`]).
    pub rbp_offset: i8,
}

impl UnwindRow {
    pub const fn new(pc: u32, cfa: u8, cfa_offset: u16, rbp: u8, rbp_offset: i8) -> Self {
        Self {
            pc,
            cfa_offset,
            kind: (cfa & 0xf) | (rbp << 4),
            rbp_offset,
        }
    }

    pub const fn cfa(&self) -> u8 {
        self.kind & 0xf
    }

    pub const fn rbp(&self) -> u8 {
        self.kind >> 4
    }
}

/// How the frames of an object are unwound, for the per-stack counts.
pub mod method {
    /// From `.eh_frame` / `.debug_frame`.
    pub const TABLE: u32 = 0;
    /// From Go's `.gopclntab`.
    pub const GO: u32 = 1;
}

/// An object's place in the row array: rows `first .. first + len`, or none when `len` is 0
/// (not loaded, or evicted: its code is walked by frame pointer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindObject {
    pub first: u32,
    pub len: u32,
    /// One of [`method`].
    pub method: u32,
    pub _pad: u32,
}

/// Objects the programs can know at once (the collector evicts beyond that).
pub const MAX_OBJECTS: u32 = 8192;

/// Key of [`maps::UNWIND_MAPPINGS`] after the LPM trie's prefix length: the pid and the
/// address, big-endian, so that a prefix of the bits is a range of addresses of one process.
pub type MappingKey = [u8; 12];

/// Bits of a [`MappingKey`].
pub const MAPPING_KEY_BITS: u32 = 96;

/// The key of `pid`'s address `addr`, for a prefix of `prefix_len` bits.
pub const fn mapping_key(pid: u32, addr: u64) -> MappingKey {
    let p = pid.to_be_bytes();
    let a = addr.to_be_bytes();
    [
        p[0], p[1], p[2], p[3], a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
    ]
}

/// One executable mapping of a traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindMapping {
    pub start: u64,
    pub end: u64,
    /// An address of the mapping minus `bias` is its offset in the object's table.
    pub bias: u64,
    /// Index in [`maps::UNWIND_OBJECTS`], or [`NO_OBJECT`] for code without a table (JIT code,
    /// an object whose table could not be built): walked by frame pointer.
    pub object: u32,
    /// The generation of the process's entries ([`maps::UNWIND_PROCESSES`]) this entry
    /// belongs to; older ones are stale (the process has exec'd since).
    pub generation: u32,
}

/// [`UnwindMapping::object`] of code that has no table.
pub const NO_OBJECT: u32 = u32::MAX;

/// Mappings the programs can know at once, over all processes (LPM entries: a mapping takes
/// one per power-of-two block of its range).
pub const MAX_MAPPING_ENTRIES: u32 = 262_144;
/// Processes the programs can know at once.
pub const MAX_PROCESSES: u32 = 16384;

/// Why a user stack walk ended, kept with the stack ([`facts`]).
pub mod stop {
    /// The outermost frame was reached (a table said so, or a null frame pointer).
    pub const COMPLETE: u32 = 0;
    /// Frame pointers gave out in code that has no table.
    pub const NO_TABLE: u32 = 1;
    /// A table rule the walker does not follow.
    pub const UNSUPPORTED: u32 = 2;
    /// The stack has more frames than a stack holds.
    pub const DEPTH: u32 = 3;
    /// User memory the walk needed could not be read.
    pub const READ: u32 = 4;
    /// A return address that lies in no executable mapping of the process.
    pub const OUTSIDE: u32 = 5;
    /// One past the largest reason.
    pub const COUNT: u32 = 6;

    /// How the `[truncated: ...]` marker and `summary.json` name a reason.
    pub const fn name(reason: u32) -> &'static str {
        match reason {
            COMPLETE => "complete",
            NO_TABLE => "no table",
            UNSUPPORTED => "unsupported rule",
            DEPTH => "depth bound",
            READ => "read failure",
            OUTSIDE => "outside any mapping",
            _ => "unknown",
        }
    }
}

/// The facts of a walk, packed into [`crate::UserStack::unwind`]: frames found by each method
/// (one byte each: table, frame pointer, Go) and the [`stop`] reason in the top byte.
pub const fn facts(table: u32, frame_pointer: u32, go: u32, reason: u32) -> u32 {
    (table & 0xff) | ((frame_pointer & 0xff) << 8) | ((go & 0xff) << 16) | (reason << 24)
}

/// Frames found by table, by frame pointer and by Go's table, and the stop reason.
pub const fn unpack_facts(facts: u32) -> (u32, u32, u32, u32) {
    (
        facts & 0xff,
        (facts >> 8) & 0xff,
        (facts >> 16) & 0xff,
        facts >> 24,
    )
}

/// `facts` with another stop reason.
pub const fn with_reason(facts: u32, reason: u32) -> u32 {
    (facts & 0x00ff_ffff) | (reason << 24)
}

const _: () = {
    assert!(size_of::<UnwindRow>() == 8);
    assert!(size_of::<UnwindObject>() == 16);
    assert!(size_of::<UnwindMapping>() == 32);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)] structs of integers without implicit padding.
    unsafe impl aya::Pod for super::UnwindRow {}
    unsafe impl aya::Pod for super::UnwindObject {}
    unsafe impl aya::Pod for super::UnwindMapping {}
}
