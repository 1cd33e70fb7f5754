//! Go's own unwind information: the `.gopclntab` function table of a Go executable, turned
//! into [`Row`]s. Go binaries carry no `.eh_frame`, and Go assembly such as
//! `crypto/sha256.block` uses RBP as a data register, so frame pointers give garbage there;
//! the per-function pc→SP-delta table (`pcsp`) that Go's own tracebacks use is right at
//! every instruction.
//!
//! Layout (Go's `runtime/symtab.go`, `runtime/runtime2.go`): a `pcHeader` (magic, pointer
//! size, function count, text start, offsets of the name, compilation-unit, file, pc-value and
//! function tables), then `functab`, `nfunc + 1` pairs of (entry, offset of the function's
//! `_func`), sorted by entry, the last entry being the end of the text. A `_func` holds the
//! offset of its `pcsp` table in the pc-value table: pairs of varints (zig-zag value delta,
//! pc delta), starting from the value -1 at the function's entry, ending at a zero byte.
//!
//! Go 1.16-1.17 (magic 0xfffffffa) store 8-byte entries; 1.18-1.19 (0xfffffff0) 4-byte
//! entries as offsets from the text start; 1.20 and later (0xfffffff1) add a start line to
//! `_func`. Go 1.2-1.15 (0xfffffffb) keep a single table with the pc-value data interleaved
//! with the functions and name offsets relative to the whole table; they are refused
//! ([`Error::UnsupportedVersion`]): those toolchains have been out of support since 2021.

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, ReadRef};

use super::{Cfa, Rbp, Row};

const MAGIC_GO1_2: u32 = 0xffff_fffb;
const MAGIC_GO1_16: u32 = 0xffff_fffa;
const MAGIC_GO1_18: u32 = 0xffff_fff0;
const MAGIC_GO1_20: u32 = 0xffff_fff1;

/// `_func.flag` bits (Go 1.17+, `runtime/symtab.go`): TOPFRAME marks a function at the
/// outermost end of its stack (Go's traceback stops there, complete); SPWRITE one that writes
/// SP other than by a constant adjustment the pcsp table records.
const FLAG_TOPFRAME: u8 = 1 << 0;
const FLAG_SPWRITE: u8 = 1 << 1;

/// The TOPFRAME functions of amd64 (`runtime/asm_amd64.s`), by name for Go 1.16, whose
/// `_func` has no flags yet.
const TOP_FRAMES: [&str; 3] = ["runtime.goexit", "runtime.mstart", "runtime.rt0_go"];

/// Go 1.16's runtime assembly that writes SP (the functions Go 1.17 first flagged SPWRITE):
/// stack switches to g0 and context switches.
const SP_WRITERS_GO1_16: [&str; 8] = [
    "runtime.asmcgocall",
    "runtime.gogo",
    "runtime.mcall",
    "runtime.morestack",
    "runtime.nanotime1",
    "runtime.systemstack",
    "runtime.walltime1",
    "time.now",
];

/// Where the caller's RBP sits once a frame pointer is saved: Go saves it just below the
/// return address.
const SAVED_RBP: i32 = -16;
/// With RBP pointing at the saved RBP, the CFA is 16 above it.
const CFA_FROM_RBP: i32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("the object is not x86-64 ({0:?}); Go tables are read for x86-64 only")]
    NotX86_64(object::Architecture),
    #[error("no Go function table (.gopclntab) in this object")]
    NoPclntab,
    #[error("the Go function table is from {0}; bar reads those of Go 1.16 and later")]
    UnsupportedVersion(String),
    #[error("the Go function table is truncated: {0}")]
    Truncated(&'static str),
    #[error("the Go function table is malformed: {0}")]
    Malformed(String),
}

/// True when `elf` carries a Go function table (a Go executable, or a C program with Go
/// linked in through cgo's c-archive/c-shared modes).
pub fn is_go<'data, R: ReadRef<'data>>(elf: &object::File<'data, R>) -> bool {
    pclntab_location(elf).is_some()
}

/// The unwind rows of every Go function in an ELF file, sorted by pc, from the first
/// function's entry to a [`Cfa::Missing`] row at the end of the last: at each pc the CFA is
/// `rsp + spdelta + 8`; the caller's RBP is at `CFA - 16` where the function has saved it;
/// TOPFRAME functions end the stack ([`Cfa::End`]); SPWRITE functions, whose SP the table
/// cannot follow, are walked through their frame pointer ([`Cfa::Rbp`]) where they keep one
/// and are left to the frame-pointer walk ([`Cfa::Missing`]) where they do not, as are the
/// gaps between functions. Building them reads the table and the prologues' bytes once:
/// about a millisecond for a 2 MB Go binary.
pub fn rows(elf: &[u8]) -> Result<Vec<Row>, Error> {
    rows_of(&object::File::parse(elf)?)
}

/// [`rows`] of an ELF file already parsed.
pub fn rows_of<'data, R: ReadRef<'data>>(elf: &object::File<'data, R>) -> Result<Vec<Row>, Error> {
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(Error::NotX86_64(elf.architecture()));
    }
    let data = pclntab_location(elf).ok_or(Error::NoPclntab)?;
    let text = Text::of(elf);
    let table = Table::parse(data, || symbol_address(elf, "runtime.text"))?;
    table.check_within(&text)?;
    // About two rows a function; the count is only a hint, as a damaged table's may be large.
    let mut rows = Vec::with_capacity(table.nfunc.min(1 << 16) * 2);
    let mut ranges = Vec::new();
    // Up to where the rows so far describe the text: from there to the next function (its
    // alignment padding) nothing does.
    let mut covered = None;
    for i in 0..table.nfunc {
        let f = table.func(i)?;
        match covered {
            Some(end) if f.entry < end => {
                return Err(Error::Malformed(format!(
                    "function {i} starts at {:#x}, inside the one before",
                    f.entry
                )));
            }
            Some(end) if f.entry > end => push(&mut rows, end, Cfa::Missing, Rbp::Unchanged),
            _ => {}
        }
        covered = Some(function_rows(&mut rows, &mut ranges, &table, &text, &f)?);
    }
    if let Some(end) = covered {
        push(&mut rows, end, Cfa::Missing, Rbp::Unchanged);
    }
    Ok(rows)
}

/// Appends a row, unless it repeats the rules of the one before; a row at the same pc as the
/// one before replaces it.
fn push(rows: &mut Vec<Row>, pc: u64, cfa: Cfa, rbp: Rbp) {
    if let Some(last) = rows.last_mut() {
        if last.pc == pc {
            (last.cfa, last.rbp) = (cfa, rbp);
            let n = rows.len();
            if n >= 2 && (rows[n - 2].cfa, rows[n - 2].rbp) == (cfa, rbp) {
                rows.pop();
            }
            return;
        }
        if (last.cfa, last.rbp) == (cfa, rbp) {
            return;
        }
    }
    rows.push(Row { pc, cfa, rbp });
}

/// The bytes of the function table: its section (`.gopclntab`; `.data.rel.ro.gopclntab` in
/// position-independent builds, whose table holds relocated addresses), else the range of the
/// `runtime.pclntab` and `runtime.epclntab` symbols (external linking puts the table inside
/// `.data.rel.ro`), else, when the binary is also stripped, a header found in the data.
fn pclntab_location<'data, R: ReadRef<'data>>(elf: &object::File<'data, R>) -> Option<&'data [u8]> {
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(data) = elf.section_by_name(name).and_then(|s| s.data().ok())
            && !data.is_empty()
        {
            return Some(data);
        }
    }
    let by_symbols = || {
        let start = symbol_address(elf, "runtime.pclntab")?;
        let end = symbol_address(elf, "runtime.epclntab")?;
        let len = end.checked_sub(start).filter(|&n| n > 0)?;
        elf.segments()
            .find_map(|s| s.data_range(start, len).ok().flatten())
    };
    // The header is searched for only in a Go binary (whose linkers all keep these sections):
    // the search reads every data segment, hundreds of megabytes of a large C++ library read
    // and held for nothing (a rustc process's librustc_driver took 213 MB to find no table).
    let go = [".go.buildinfo", ".note.go.buildid"]
        .iter()
        .any(|name| elf.section_by_name(name).is_some());
    by_symbols().or_else(|| if go { find_header(elf) } else { None })
}

/// Looks for the table's header in the data segments, at the 8-byte alignment Go gives it
/// (in fact 32), and takes the first that reads as a table whose functions lie in the
/// executable segments. One pass over the data, comparing 8 bytes per 8.
fn find_header<'data, R: ReadRef<'data>>(elf: &object::File<'data, R>) -> Option<&'data [u8]> {
    const PF_X: u32 = 1;
    const AMD64: [u8; 4] = [0, 0, 1, 8];
    let text = Text::of(elf);
    let data = elf
        .segments()
        .filter(
            |s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & PF_X == 0),
        )
        .filter_map(|s| s.data().ok());
    data.flat_map(|d| (0..d.len()).step_by(8).map(move |off| &d[off..]))
        .filter(|t| {
            matches!(
                u32_at(t, 0),
                Some(MAGIC_GO1_16 | MAGIC_GO1_18 | MAGIC_GO1_20)
            ) && t.get(4..8) == Some(&AMD64)
        })
        .find(|t| {
            Table::parse(t, || None)
                .and_then(|table| table.check_within(&text))
                .is_ok()
        })
}

fn symbol_address<'data, R: ReadRef<'data>>(
    elf: &object::File<'data, R>,
    name: &str,
) -> Option<u64> {
    elf.symbol_by_name(name)
        .map(|s| s.address())
        .filter(|&a| a != 0)
}

/// The executable segments' bytes, to read the instructions of function prologues.
struct Text<'data> {
    segments: Vec<(u64, &'data [u8])>,
}

impl<'data> Text<'data> {
    fn of<R: ReadRef<'data>>(elf: &object::File<'data, R>) -> Self {
        const PF_X: u32 = 1;
        let segments = elf
            .segments()
            .filter(|s| matches!(s.flags(), object::SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0))
            .filter_map(|s| Some((s.address(), s.data().ok()?)))
            .collect();
        Self { segments }
    }

    /// Up to `len` bytes from `pc` on (fewer at the end of a segment; none outside).
    fn at(&self, pc: u64, len: usize) -> &'data [u8] {
        for &(start, data) in &self.segments {
            if let Some(off) = pc.checked_sub(start)
                && let Ok(off) = usize::try_from(off)
                && off < data.len()
            {
                return &data[off..data.len().min(off + len)];
            }
        }
        &[]
    }

    /// The `len` bytes that end at `pc` (none when they do not all lie in one segment).
    fn before(&self, pc: u64, len: usize) -> &'data [u8] {
        match pc.checked_sub(len as u64) {
            Some(start) => Some(self.at(start, len))
                .filter(|b| b.len() == len)
                .unwrap_or(&[]),
            None => &[],
        }
    }

    fn contains(&self, pc: u64) -> bool {
        !self.at(pc, 1).is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Go116,
    Go118,
    Go120,
}

/// The parsed header and the sub-tables it locates, all bounds-checked against the section.
struct Table<'data> {
    version: Version,
    nfunc: usize,
    text_start: u64,
    funcnames: &'data [u8],
    pctab: &'data [u8],
    /// From `pclnOffset` to the end: `functab`, then the `_func`s, which functab's offsets
    /// are relative to.
    pcln: &'data [u8],
}

/// One function, as read from its `_func`.
struct Func<'data> {
    name: &'data [u8],
    entry: u64,
    /// The next function's entry (the text's end for the last).
    end: u64,
    pcsp: u32,
    flag: u8,
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    let b = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

impl<'data> Table<'data> {
    /// `text_symbol` gives the text start when the header leaves it zero (Go 1.26 does: the
    /// runtime takes it from moduledata, which `runtime.text` marks).
    fn parse(data: &'data [u8], text_symbol: impl FnOnce() -> Option<u64>) -> Result<Self, Error> {
        let magic = u32_at(data, 0).ok_or(Error::Truncated("header"))?;
        let version = match magic {
            MAGIC_GO1_16 => Version::Go116,
            MAGIC_GO1_18 => Version::Go118,
            MAGIC_GO1_20 => Version::Go120,
            MAGIC_GO1_2 => return Err(Error::UnsupportedVersion("Go 1.2-1.15".into())),
            m => {
                return Err(Error::UnsupportedVersion(format!(
                    "an unknown Go version (magic {m:#x})"
                )));
            }
        };
        let (pad, quantum, ptr_size) = (data.get(4..6), data.get(6).copied(), data.get(7).copied());
        if pad != Some(&[0, 0]) || quantum != Some(1) || ptr_size != Some(8) {
            return Err(Error::Malformed(
                "the header is not that of a 64-bit x86 Go binary (instruction size 1, pointer size 8)"
                    .into(),
            ));
        }
        // The header's words after the 8 bytes above: nfunc, nfiles, [textStart (1.18+)],
        // funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset.
        let words = if version == Version::Go116 { 7 } else { 8 };
        let word = |i: usize| u64_at(data, 8 + 8 * i).ok_or(Error::Truncated("header"));
        let header: Vec<u64> = (0..words).map(word).collect::<Result<_, _>>()?;
        let offsets = &header[words - 5..];
        let [funcname, cu, filetab, pctab, pcln] = [0, 1, 2, 3, 4].map(|i| offsets[i]);
        if !(funcname <= cu && cu <= filetab && filetab <= pctab && pctab <= pcln)
            || pcln > data.len() as u64
        {
            return Err(Error::Malformed(format!(
                "its sub-table offsets ({funcname:#x}, {cu:#x}, {filetab:#x}, {pctab:#x}, {pcln:#x}) are out of order or beyond its {} bytes",
                data.len()
            )));
        }
        let slice = |a: u64, b: u64| &data[a as usize..b as usize];
        let pcln = slice(pcln, data.len() as u64);
        // Every function needs a functab entry: a count beyond what fits is corrupt, and
        // bounding it here bounds every allocation that follows.
        let entry_size = if version == Version::Go116 { 16 } else { 8 };
        let nfunc = usize::try_from(header[0])
            .ok()
            .filter(|&n| n < usize::MAX / entry_size && (n + 1) * entry_size <= pcln.len())
            .ok_or(Error::Truncated(
                "the function count exceeds the function table",
            ))?;
        let text_start = match version {
            Version::Go116 => 0,
            _ => match header[2] {
                0 => text_symbol().ok_or_else(|| {
                    Error::Malformed("it gives no text start and runtime.text is missing".into())
                })?,
                t => t,
            },
        };
        Ok(Self {
            version,
            nfunc,
            text_start,
            funcnames: slice(funcname, cu),
            pctab: slice(pctab, offsets[4]),
            pcln,
        })
    }

    /// Entry `i` of functab (`i == nfunc` is the end of the text): (pc, offset of `_func`).
    fn functab(&self, i: usize) -> Result<(u64, usize), Error> {
        let truncated = Error::Truncated("functab");
        let (pc, off) = if self.version == Version::Go116 {
            let pc = u64_at(self.pcln, 16 * i).ok_or(truncated)?;
            (pc, u64_at(self.pcln, 16 * i + 8).unwrap_or(0))
        } else {
            let pc = u32_at(self.pcln, 8 * i).ok_or(truncated)?;
            let off = u32_at(self.pcln, 8 * i + 4).unwrap_or(0);
            (self.text_start.wrapping_add(u64::from(pc)), u64::from(off))
        };
        Ok((pc, usize::try_from(off).unwrap_or(usize::MAX)))
    }

    fn func(&self, i: usize) -> Result<Func<'data>, Error> {
        let (entry, off) = self.functab(i)?;
        let (end, _) = self.functab(i + 1)?;
        if end < entry {
            return Err(Error::Malformed(format!(
                "function {i} ends at {end:#x}, before its entry {entry:#x}"
            )));
        }
        // _func: the entry (8 bytes before 1.18, a 4-byte offset since), nameoff, args,
        // deferreturn, pcsp, pcfile, pcln, npcdata, cuOffset, [startLine (1.20+)], funcID,
        // flag (1.17+; padding in 1.16, read as no flags), pad, nfuncdata.
        let (entry_len, flag_at) = match self.version {
            Version::Go116 => (8, 41),
            Version::Go118 => (4, 37),
            Version::Go120 => (4, 41),
        };
        let f = off
            .checked_add(flag_at + 3)
            .and_then(|end| self.pcln.get(off..end))
            .ok_or(Error::Truncated("a function's _func lies beyond the table"))?;
        let own_entry = if self.version == Version::Go116 {
            u64_at(f, 0)
        } else {
            u32_at(f, 0).map(|e| self.text_start.wrapping_add(u64::from(e)))
        };
        if own_entry != Some(entry) {
            return Err(Error::Malformed(format!(
                "function {i}'s _func does not start at its functab entry {entry:#x}"
            )));
        }
        let field = |n: usize| u32_at(f, entry_len + 4 * n).unwrap_or(0);
        let name = usize::try_from(field(0))
            .ok()
            .and_then(|o| self.funcnames.get(o..))
            .map(|s| &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())])
            .ok_or_else(|| {
                Error::Malformed(format!("function {i}'s name lies beyond the names"))
            })?;
        Ok(Func {
            name,
            entry,
            end,
            pcsp: field(3),
            flag: f[flag_at],
        })
    }

    /// The first and the last function lie in executable code: a wrong text start or a table
    /// of another file would not.
    fn check_within(&self, text: &Text<'_>) -> Result<(), Error> {
        if self.nfunc == 0 {
            return Ok(());
        }
        let (first, _) = self.functab(0)?;
        let (end, _) = self.functab(self.nfunc)?;
        if !text.contains(first) || !text.contains(end.saturating_sub(1)) {
            return Err(Error::Malformed(format!(
                "its functions ({first:#x}..{end:#x}) lie outside the executable segments"
            )));
        }
        Ok(())
    }
}

/// One run of a pc-value table: from `start` up to `end`, the value is `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PcRange {
    start: u64,
    end: u64,
    value: i32,
}

/// Decodes the pc-value table at `off` of `pctab` for a function at `entry..limit`. Every
/// step reads at least two bytes and moves the pc forward within the function, so the work
/// is bounded by the table and the function's size.
fn pc_values(
    pctab: &[u8],
    off: u32,
    entry: u64,
    limit: u64,
    out: &mut Vec<PcRange>,
) -> Result<(), Error> {
    out.clear();
    let mut p = usize::try_from(off)
        .ok()
        .and_then(|o| pctab.get(o..))
        .ok_or(Error::Truncated(
            "a pcsp offset lies beyond the pc-value table",
        ))?;
    let (mut pc, mut value) = (entry, -1i32);
    loop {
        let Some((&first, _)) = p.split_first() else {
            return Err(Error::Truncated("a pcsp table runs past the end"));
        };
        if first == 0 && !out.is_empty() {
            return Ok(());
        }
        let (zigzag, n) = varint(p)?;
        p = &p[n..];
        let (pc_delta, n) = varint(p)?;
        p = &p[n..];
        let delta = ((zigzag >> 1) as i32) ^ -((zigzag & 1) as i32);
        value = value.wrapping_add(delta);
        let start = pc;
        pc = pc
            .checked_add(u64::from(pc_delta))
            .filter(|&pc| pc > start && pc <= limit)
            .ok_or_else(|| {
                Error::Malformed(format!(
                    "a pcsp table steps from {start:#x} by {pc_delta}, outside its function (up to {limit:#x})"
                ))
            })?;
        out.push(PcRange {
            start,
            end: pc,
            value,
        });
    }
}

/// An unsigned LEB128 of at most 32 bits, as Go writes them; returns it and its length.
fn varint(p: &[u8]) -> Result<(u32, usize), Error> {
    let mut v = 0u32;
    for (i, &b) in p.iter().enumerate().take(5) {
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(Error::Malformed(
        "a pc-value varint is longer than 5 bytes or cut short".into(),
    ))
}

/// Where a function's prologue saves the caller's RBP and points RBP at its own frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FrameSave {
    /// From here on the caller's RBP is at CFA-16.
    saved: u64,
    /// From here on RBP points at that slot (CFA = RBP + 16).
    rbp_set: u64,
    /// Saved with PUSHQ (rather than stored with MOVQ after the SUBQ).
    pushed: bool,
}

/// Finds the frame-pointer save in a function's prologue, by reading the instructions where
/// the pcsp table says the frame was allocated. Go up to 1.20 emits (cmd/internal/obj/x86
/// obj6.go, `preprocess`) `SUBQ $framesize, SP; MOVQ BP, framesize-8(SP); LEAQ
/// framesize-8(SP), BP`, where framesize includes the 8 bytes of the saved RBP: the pcsp
/// table changes after the SUBQ, one instruction before the caller's RBP is stored, so at the
/// MOVQ the slot still holds stale stack and RBP is the caller's. Later Go versions may push
/// it instead (`PUSHQ BP; MOVQ SP, BP`), saved as soon as SP moves. Functions without either
/// (NOFRAME assembly, frameless leaves) never touch RBP as a frame pointer: `None`.
fn frame_save(text: &Text<'_>, ranges: &[PcRange]) -> Option<FrameSave> {
    let first = ranges.iter().find(|r| r.value > 0)?;
    let (pc, size) = (first.start, first.value);
    const MOVQ_BP_TO: [u8; 2] = [0x48, 0x89];
    const LEAQ_BP: [u8; 2] = [0x48, 0x8d];
    if let Some(mov) = rsp_slot_insn(text.at(pc, 8), MOVQ_BP_TO, size - 8)
        && let Some(lea) = rsp_slot_insn(text.at(pc + mov, 8), LEAQ_BP, size - 8)
    {
        return Some(FrameSave {
            saved: pc + mov,
            rbp_set: pc + mov + lea,
            pushed: false,
        });
    }
    const PUSHQ_BP: u8 = 0x55;
    const MOVQ_SP_BP: [u8; 3] = [0x48, 0x89, 0xe5];
    if size == 8 && text.before(pc, 1) == [PUSHQ_BP] && text.at(pc, 3) == MOVQ_SP_BP {
        return Some(FrameSave {
            saved: pc,
            rbp_set: pc + 3,
            pushed: true,
        });
    }
    None
}

/// The length of `op rbp, disp(rsp)` at the start of `code` (REX.W, the opcode, a ModRM of
/// RBP with an SIB base of RSP, then no, an 8-bit or a 32-bit displacement), if that is the
/// instruction there and its displacement is `disp`.
fn rsp_slot_insn(code: &[u8], op: [u8; 2], disp: i32) -> Option<u64> {
    const SIB_RSP: u8 = 0x24;
    match code {
        [a, b, 0x2c, SIB_RSP, ..] if [*a, *b] == op && disp == 0 => Some(4),
        [a, b, 0x6c, SIB_RSP, d, ..] if [*a, *b] == op && i32::from(*d as i8) == disp => Some(5),
        [a, b, 0xac, SIB_RSP, d @ ..] if [*a, *b] == op && d.len() >= 4 => {
            (i32::from_le_bytes([d[0], d[1], d[2], d[3]]) == disp).then_some(8)
        }
        _ => None,
    }
}

/// The epilogues of an SPWRITE function with a frame pointer: the instruction that releases
/// the frame after RBP was restored (`MOVQ framesize-8(SP), BP; ADDQ $framesize, SP`), where
/// RBP no longer points at the frame but SP is right again. `None` when an epilogue does not
/// read as expected, so that the caller does not trust RBP in that function.
fn epilogues(text: &Text<'_>, ranges: &[PcRange], save: FrameSave) -> Option<Vec<(u64, u64)>> {
    let mut windows = Vec::new();
    // A frame ends where SP comes back to the entry's; a function may also end inside its
    // frame (in a jump back), which is no epilogue.
    for (r, next) in ranges.iter().zip(ranges.iter().skip(1)) {
        if r.value <= 0 || next.value != 0 || r.end <= save.rbp_set {
            continue;
        }
        let size = r.value;
        // PUSHQ style: the frame ends with POPQ BP, and RBP is the frame's until then.
        if save.pushed && text.before(r.end, 1) == [0x5d] {
            continue;
        }
        // ADDQ $size, SP with an 8-bit or a 32-bit immediate; 128 is SUBQ $-128, SP.
        let add_len = match size {
            1..=127 if text.before(r.end, 4) == [0x48, 0x83, 0xc4, size as u8] => 4,
            128 if text.before(r.end, 4) == [0x48, 0x83, 0xec, 0x80] => 4,
            _ if text.before(r.end, 7).get(..3) == Some(&[0x48, 0x81, 0xc4])
                && u32_at(text.before(r.end, 4), 0) == Some(size as u32) =>
            {
                7
            }
            _ => return None,
        };
        let add = r.end - add_len;
        let restored = [4, 5, 8].into_iter().any(|len| {
            rsp_slot_insn(text.before(add, len), [0x48, 0x8b], size - 8) == Some(len as u64)
        });
        if !restored {
            return None;
        }
        windows.push((add, r.end));
    }
    Some(windows)
}

/// Appends the rows of one function; returns the pc up to which they cover it.
fn function_rows(
    rows: &mut Vec<Row>,
    ranges: &mut Vec<PcRange>,
    table: &Table<'_>,
    text: &Text<'_>,
    f: &Func<'_>,
) -> Result<u64, Error> {
    let named = |names: &[&str]| names.iter().any(|n| n.as_bytes() == f.name);
    let top = f.flag & FLAG_TOPFRAME != 0 || named(&TOP_FRAMES);
    if top || f.pcsp == 0 || f.entry == f.end {
        // No pcsp table: code Go does not describe (Go's traceback stops there too).
        let cfa = if top { Cfa::End } else { Cfa::Missing };
        push(rows, f.entry, cfa, Rbp::Unchanged);
        return Ok(f.end);
    }
    pc_values(table.pctab, f.pcsp, f.entry, f.end, ranges)?;
    let save = frame_save(text, ranges);
    let sp_write = f.flag & FLAG_SPWRITE != 0
        || (table.version == Version::Go116 && named(&SP_WRITERS_GO1_16));
    // In an SPWRITE function the pcsp table is wrong once SP has been written; RBP still
    // points at its frame from the prologue to the epilogue (Go's vDSO calls and stack
    // switches keep it), so the frame is found from RBP there.
    let by_rbp = match (sp_write, save) {
        (false, _) => None,
        (true, Some(save)) => epilogues(text, ranges, save).map(|w| (save, w)),
        (true, None) => None,
    };
    if sp_write && by_rbp.is_none() {
        push(rows, f.entry, Cfa::Missing, Rbp::Unchanged);
        return Ok(f.end);
    }
    for r in ranges.iter() {
        let Some(cfa) = r.value.checked_add(8).filter(|_| r.value >= 0) else {
            push(rows, r.start, Cfa::Unsupported, Rbp::Unsupported);
            continue;
        };
        let mut cuts = vec![(r.start, Cfa::Rsp(cfa), Rbp::Unchanged)];
        if let Some(save) = save.filter(|_| r.value > 0) {
            let at_cfa = (Cfa::Rsp(cfa), Rbp::AtCfa(SAVED_RBP));
            cuts.push((save.saved.max(r.start), at_cfa.0, at_cfa.1));
            if let Some((save, windows)) = &by_rbp {
                let by_rbp = (Cfa::Rbp(CFA_FROM_RBP), Rbp::AtCfa(SAVED_RBP));
                cuts.push((save.rbp_set.max(r.start), by_rbp.0, by_rbp.1));
                for &(a, b) in windows.iter().filter(|(a, _)| r.start <= *a && *a < r.end) {
                    cuts.push((a, at_cfa.0, at_cfa.1));
                    cuts.push((b, by_rbp.0, by_rbp.1));
                }
            }
        }
        cuts.sort_by_key(|c| c.0);
        for (pc, cfa, rbp) in cuts.into_iter().filter(|c| c.0 < r.end) {
            push(rows, pc.max(r.start), cfa, rbp);
        }
    }
    Ok(ranges.last().map_or(f.entry, |r| r.end))
}

#[cfg(test)]
mod tests;
