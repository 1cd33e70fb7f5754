//! Unwind tables: for every executable object a traced process maps, the rule that finds the
//! caller's frame at each address. Built here, in userspace, from the object's own tables
//! (`.eh_frame`, `.debug_frame`, Go's `.gopclntab`), compacted and handed to the kernel
//! programs, which walk user stacks with them where frame pointers are missing or wrong.
//!
//! [`Row`] is the form every source produces and the compaction consumes: [`cfi`] makes
//! rows of `.eh_frame` and `.debug_frame` (with [`elf`] finding them in the file),
//! [`compact`] the kernel's 8-byte rows of any source's.

pub mod cfi;
pub mod compact;
pub mod elf;

pub mod gopclntab;

/// How to compute the canonical frame address (CFA: the stack pointer just before the call
/// that entered the function, so the return address sits at `CFA - 8` on x86-64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cfa {
    /// `rsp + offset`.
    Rsp(i32),
    /// `rbp + offset`.
    Rbp(i32),
    /// A PLT stub (the expression compilers emit for `.plt`): `rsp + 8`, and 8 more once the
    /// stub's own push has run, i.e. when `(rip & 15) >= 11`.
    Plt,
    /// The outermost frame (the return address is undefined here, as in `_start`): the stack
    /// ends, complete.
    End,
    /// No table covers this address: the walker uses frame pointers here.
    Missing,
    /// A rule the walker does not follow (another register, a DWARF expression): the walk
    /// stops and says so, rather than guess.
    Unsupported,
}

/// Where the caller's `rbp` is, once the CFA is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rbp {
    /// Not saved by this function: the caller's is the current one.
    Unchanged,
    /// Saved on the stack at `CFA + offset`.
    AtCfa(i32),
    /// A rule the walker does not follow.
    Unsupported,
}

/// One row of an object's table: from `pc` up to the next row's `pc`, the CFA and `rbp`
/// rules hold. `pc` is an address of the object as its ELF program headers place it (not as
/// a process maps it), so one table serves every process that maps the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    pub pc: u64,
    pub cfa: Cfa,
    pub rbp: Rbp,
}

/// Why an object has no table: it then falls back to frame pointers.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read it: {0}")]
    Io(std::io::Error),
    #[error("not an ELF object bar unwinds: {0}")]
    NotElf(String),
    #[error("it has no .eh_frame or .debug_frame")]
    NoUnwindInfo,
    #[error("its unwind tables are malformed: {0}")]
    Malformed(String),
    #[error("it is too big to unwind: {0}")]
    TooBig(String),
}
