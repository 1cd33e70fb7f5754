//! Unwind tables: for every executable object a traced process maps, the rule that finds the
//! caller's frame at each address. Built here, in userspace, from the object's own tables
//! (`.eh_frame`, `.debug_frame`, Go's `.gopclntab`), compacted and handed to the kernel
//! programs, which walk user stacks with them where frame pointers are missing or wrong.
//!
//! [`Row`] is the form every source produces and the compaction consumes: [`cfi`] makes
//! rows of `.eh_frame` and `.debug_frame` (with [`elf`] finding them in the file),
//! [`compact`] the kernel's 8-byte rows of any source's. [`objects`] shares tables between
//! processes and places them in the kernel ([`kernel`]); [`loader`] follows the processes
//! ([`proc_maps`]).

pub mod cfi;
pub mod compact;
pub mod elf;
pub mod kernel;
pub mod loader;
pub mod objects;
pub mod proc_maps;
pub mod service;

/// How user stacks are walked (`--unwind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// With the unwind tables of the objects (`.eh_frame`, `.debug_frame`), by frame pointer
    /// where code has none.
    #[default]
    Tables,
    /// By frame pointer only, as `perf record -g` does.
    FramePointers,
}

/// Rows the kernel holds for a recording of the whole system or a cgroup: 64 MiB.
pub const SYSTEM_ROWS: u32 = 8 << 20;
/// Rows the kernel holds at least for one process: room for the objects it loads later.
pub const MIN_PROCESS_ROWS: u32 = 1 << 20;

/// Rows for one process whose tables take `rows` now.
pub fn process_rows(rows: u64) -> u32 {
    u32::try_from(rows.saturating_mul(4))
        .unwrap_or(u32::MAX)
        .clamp(MIN_PROCESS_ROWS, SYSTEM_ROWS)
}

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

/// The rows of `primary` (sorted), with the addresses it leaves [`Cfa::Missing`] (and those
/// before its first row or from its last `Missing` row on) taken from `secondary` (sorted).
pub fn overlay(primary: &[Row], secondary: &[Row]) -> Vec<Row> {
    let missing = Row {
        pc: 0,
        cfa: Cfa::Missing,
        rbp: Rbp::Unchanged,
    };
    let at = |rows: &[Row], pc: u64| {
        let i = rows.partition_point(|r| r.pc <= pc);
        i.checked_sub(1).map_or(missing, |i| rows[i])
    };
    let mut pcs: Vec<u64> = primary.iter().chain(secondary).map(|r| r.pc).collect();
    pcs.sort_unstable();
    pcs.dedup();
    pcs.into_iter()
        .map(|pc| {
            let p = at(primary, pc);
            let rule = if p.cfa == Cfa::Missing {
                at(secondary, pc)
            } else {
                p
            };
            Row { pc, ..rule }
        })
        .collect()
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

/// Builds the table of each file and prints one JSON line per file: rows before and after
/// merging, bytes in the kernel, unsupported rows, entries left out (and why the first was),
/// build time, or why it has none.
pub fn describe_tables(files: &[std::path::PathBuf]) {
    for path in files {
        let t = std::time::Instant::now();
        let built = std::fs::File::open(path)
            .map_err(TableError::Io)
            .and_then(elf::read)
            .and_then(|(info, rows)| {
                let raw = rows.len();
                compact::compact(rows).map(|c| (info, raw, c))
            });
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let line = match built {
            Ok((info, raw, c)) => serde_json::json!({
                "file": path,
                "rows_parsed": raw,
                "rows": c.rows.len(),
                "bytes": c.bytes(),
                "unsupported": c.unsupported,
                "entries_skipped": info.skipped,
                "skipped_why": info.skipped_why,
                "build_ms": ms,
            }),
            Err(e) => serde_json::json!({"file": path, "error": e.to_string()}),
        };
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pc: u64, cfa: Cfa) -> Row {
        Row {
            pc,
            cfa,
            rbp: Rbp::Unchanged,
        }
    }

    #[test]
    fn overlay_fills_what_the_primary_table_leaves_out() {
        // Go functions at 0x100..0x120 and 0x140..0x150; C functions at 0x80..0x100 and
        // 0x120..0x140 (between the Go ones), and one the Go table also covers.
        let go = [
            row(0x100, Cfa::Rsp(8)),
            row(0x110, Cfa::Rsp(24)),
            row(0x120, Cfa::Missing),
            row(0x140, Cfa::Rsp(16)),
            row(0x150, Cfa::Missing),
        ];
        let c = [
            row(0x80, Cfa::Rsp(8)),
            row(0x100, Cfa::Rbp(16)),
            row(0x120, Cfa::Rsp(32)),
            row(0x140, Cfa::Missing),
        ];
        let rows = overlay(&go, &c);
        let at = |pc: u64| rows[rows.partition_point(|r| r.pc <= pc) - 1].cfa;
        assert_eq!(at(0x90), Cfa::Rsp(8));
        assert_eq!(at(0x105), Cfa::Rsp(8));
        assert_eq!(at(0x115), Cfa::Rsp(24));
        assert_eq!(at(0x130), Cfa::Rsp(32));
        assert_eq!(at(0x145), Cfa::Rsp(16));
        assert_eq!(at(0x160), Cfa::Missing);
    }
}
