//! Call frame information (`.eh_frame`, `.debug_frame`) to [`Row`]s: the tables compilers
//! emit for exception handling and debuggers, parsed with gimli, reduced to the few rules the
//! kernel walker follows. Anything else becomes `Unsupported`, never a guess.

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, EndianSlice, LittleEndian, Register, RegisterRule,
    UnwindContext, UnwindOffset, UnwindSection, UnwindTableRow,
};

use super::{Cfa, Rbp, Row, TableError};

/// DWARF numbers of the x86-64 registers the walker knows.
const RBP: Register = Register(6);
const RSP: Register = Register(7);
/// The return address column.
const RA: Register = Register(16);

/// The CFA expression GNU ld and gcc emit for a whole `.plt`: `rsp + 8`, plus 8 once the
/// stub's push has run, which is at byte 11 of each 16-byte entry:
/// `DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit11; DW_OP_ge;
/// DW_OP_lit3; DW_OP_shl; DW_OP_plus`.
const PLT_EXPRESSION: [u8; 11] = [
    0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
];

/// Rows an object may have: far beyond the largest seen (a browser's few million), so that
/// a hostile table cannot make bar allocate without bound.
pub const MAX_ROWS: usize = 1 << 24;

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// The sections of an object that hold call frame information, as found in the file.
pub struct Sections<'a> {
    /// `.eh_frame` and its address (pc-relative pointers are relative to it).
    pub eh_frame: Option<(&'a [u8], u64)>,
    /// The address of `.text` (for text-relative pointers, which x86-64 does not use).
    pub text: u64,
    /// `.debug_frame`, uncompressed.
    pub debug_frame: Option<&'a [u8]>,
}

/// An FDE: the functions' address range, and where it is in which section.
#[derive(Clone, Copy)]
struct Fde {
    start: u64,
    end: u64,
    offset: usize,
    eh: bool,
}

/// The rows of an object's call frame information, and what of it could not be read.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Sorted by address, with a `Missing` row at the end of each covered range that no
    /// other range continues.
    pub rows: Vec<Row>,
    /// Entries left out because they cannot be parsed: each FDE (or CIE shared by FDEs,
    /// counted once per FDE) on its own, and the rest of a section as one entry where a
    /// length field leaves nowhere to go on from. Their functions are walked by frame pointer.
    pub skipped: usize,
    /// Why the first of them was left out.
    pub first_error: Option<String>,
}

impl Parsed {
    fn skip(&mut self, why: impl std::fmt::Display) {
        self.skipped += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why.to_string());
        }
    }
}

/// Every row of the object's call frame information, sorted by address. Functions
/// `.eh_frame` describes come from it; `.debug_frame` fills in the ones it lacks. An entry
/// that cannot be parsed is left out (and counted), not the whole object: one bad FDE in a
/// library (seen in Debian's libgcrypt) would otherwise cost every function of it its table.
pub fn rows(sections: &Sections<'_>) -> Result<Parsed, TableError> {
    let bases = BaseAddresses::default()
        .set_eh_frame(sections.eh_frame.map_or(0, |(_, a)| a))
        .set_text(sections.text);
    let eh = sections
        .eh_frame
        .map(|(data, _)| EhFrame::new(data, LittleEndian));
    let debug = sections.debug_frame.map(|data| {
        let mut d = DebugFrame::new(data, LittleEndian);
        d.set_address_size(8);
        d
    });
    let mut parsed = Parsed::default();
    let mut fdes = Vec::new();
    if let (Some(s), Some((data, _))) = (&eh, sections.eh_frame) {
        list_fdes(s, data, &bases, true, &mut fdes, &mut parsed)?;
    }
    if let (Some(s), Some(data)) = (&debug, sections.debug_frame) {
        list_fdes(s, data, &bases, false, &mut fdes, &mut parsed)?;
    }
    // By address; at the same address `.eh_frame` first, so that it wins the overlap below.
    fdes.sort_by_key(|f| (f.start, !f.eh));
    let mut ctx = Box::new(UnwindContext::new());
    let mut covered_to = 0u64;
    let out = &mut parsed.rows;
    let mut bad_rows = Vec::new();
    for fde in fdes {
        // An FDE that overlaps the one before (a function described twice, in both sections
        // or by a broken table) is left out: the first description stands.
        if fde.start < covered_to || fde.start >= fde.end {
            continue;
        }
        let before = out.len();
        if covered_to != 0 && fde.start > covered_to {
            out.push(Row {
                pc: covered_to,
                cfa: Cfa::Missing,
                rbp: Rbp::Unchanged,
            });
        }
        let done = match (fde.eh, &eh, &debug) {
            (true, Some(s), _) => fde_rows(s, &bases, fde, &mut ctx, out),
            (false, _, Some(s)) => fde_rows(s, &bases, fde, &mut ctx, out),
            _ => Ok(()),
        };
        if let Err(e) = done {
            // Its rows so far go too: the range stays uncovered, for another description
            // of it (in `.debug_frame`) or the frame-pointer walk.
            out.truncate(before);
            bad_rows.push(e);
            continue;
        }
        covered_to = fde.end;
        if out.len() > MAX_ROWS {
            return Err(TableError::TooBig(format!(
                "more than {MAX_ROWS} unwind rows"
            )));
        }
    }
    for e in bad_rows {
        parsed.skip(e);
    }
    if parsed.rows.is_empty() {
        return Err(match parsed.first_error {
            Some(e) => TableError::Malformed(e),
            None => TableError::NoUnwindInfo,
        });
    }
    parsed.rows.push(Row {
        pc: covered_to,
        cfa: Cfa::Missing,
        rbp: Rbp::Unchanged,
    });
    Ok(parsed)
}

/// Appends the address range and offset of every FDE of `section` (whose bytes are `data`)
/// to `out`. The entries are stepped through by their length fields here rather than by
/// gimli's iterator, which ends at the first entry it cannot parse: an FDE that gimli
/// refuses (or whose CIE it refuses) is counted in `parsed` and the next one read.
fn list_fdes<'a, S>(
    section: &S,
    data: &[u8],
    bases: &BaseAddresses,
    eh: bool,
    out: &mut Vec<Fde>,
    parsed: &mut Parsed,
) -> Result<(), TableError>
where
    S: UnwindSection<Slice<'a>>,
    S::Offset: UnwindOffset<usize>,
{
    // The CIE most FDEs share: parsed once rather than once per FDE.
    let mut last_cie = None;
    let mut at = 0;
    while at < data.len() {
        let Some(entry) = entry_at(data, at, eh) else {
            parsed.skip(format!(
                "the entry at offset {at:#x} of {} runs past its end",
                if eh { ".eh_frame" } else { ".debug_frame" }
            ));
            break;
        };
        match entry {
            Entry::Terminator => break,
            Entry::Cie { next } | Entry::Empty { next } => at = next,
            Entry::Fde { next } => {
                let fde = section
                    .partial_fde_from_offset(bases, S::Offset::from(at))
                    .and_then(|partial| {
                        partial.parse(|section, bases, offset| {
                            if let Some((o, cie)) = &last_cie
                                && *o == offset
                            {
                                return Ok(Clone::clone(cie));
                            }
                            let cie = section.cie_from_offset(bases, offset)?;
                            last_cie = Some((offset, cie.clone()));
                            Ok(cie)
                        })
                    });
                match fde {
                    Ok(fde) => {
                        let start = fde.initial_address();
                        out.push(Fde {
                            start,
                            end: start.saturating_add(fde.len()),
                            offset: fde.offset(),
                            eh,
                        });
                    }
                    Err(e) => parsed.skip(e),
                }
                at = next;
            }
        }
        if out.len() > MAX_ROWS {
            return Err(TableError::TooBig(format!(
                "more than {MAX_ROWS} functions in the unwind tables"
            )));
        }
    }
    Ok(())
}

/// What the length and id fields of the entry at `at` say it is.
enum Entry {
    /// `.eh_frame`'s zero length: the end of the section.
    Terminator,
    /// A zero length in `.debug_frame` (an old assembler's bug): skipped.
    Empty {
        next: usize,
    },
    Cie {
        next: usize,
    },
    Fde {
        next: usize,
    },
}

/// The entry at `at`, or `None` if its fields run past the section's end (nothing after it
/// can be found then).
fn entry_at(data: &[u8], at: usize, eh: bool) -> Option<Entry> {
    let word = |at: usize| {
        let b = data.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    };
    let len = word(at)?;
    if len == 0 {
        return Some(if eh {
            Entry::Terminator
        } else {
            Entry::Empty { next: at + 4 }
        });
    }
    // DWARF64 (a length of 0xffffffff, then the real one in 64 bits) has a 64-bit id in
    // `.debug_frame`; `.eh_frame`'s CIE pointer stays 32 bits.
    let (id_at, len) = if len == u32::MAX {
        let b = data.get(at + 4..at.checked_add(12)?)?;
        (
            at + 12,
            usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok()?,
        )
    } else {
        (at + 4, len as usize)
    };
    let next = id_at.checked_add(len).filter(|&n| n <= data.len())?;
    let id_len = if eh || at + 12 != id_at { 4 } else { 8 };
    let id = data
        .get(id_at..id_at + id_len)
        .filter(|_| id_at + id_len <= next)?;
    let cie = if eh {
        id.iter().all(|&b| b == 0)
    } else {
        id.iter().all(|&b| b == 0xff)
    };
    Some(if cie {
        Entry::Cie { next }
    } else {
        Entry::Fde { next }
    })
}

/// Appends the rows of one FDE, each clipped to the FDE's range.
fn fde_rows<'a, S>(
    section: &S,
    bases: &BaseAddresses,
    fde: Fde,
    ctx: &mut UnwindContext<usize>,
    out: &mut Vec<Row>,
) -> Result<(), gimli::Error>
where
    S: UnwindSection<Slice<'a>>,
    S::Offset: UnwindOffset<usize>,
{
    let parsed = section.fde_from_offset(bases, S::Offset::from(fde.offset), S::cie_from_offset)?;
    let mut table = parsed.rows(section, bases, ctx)?;
    while let Some(row) = table.next_row()? {
        if row.start_address() >= fde.end {
            break;
        }
        let (cfa, rbp) = rules(row, section);
        out.push(Row {
            pc: row.start_address(),
            cfa,
            rbp,
        });
    }
    Ok(())
}

/// The walker's rules for one row of a table.
fn rules<'a, S>(row: &UnwindTableRow<usize>, section: &S) -> (Cfa, Rbp)
where
    S: UnwindSection<Slice<'a>>,
{
    // The return address must be where calls leave it, just below the CFA; undefined marks
    // the outermost frame (`_start`, a thread's first function).
    match row.register(RA) {
        Some(RegisterRule::Undefined) => return (Cfa::End, Rbp::Unchanged),
        Some(RegisterRule::Offset(-8)) => {}
        _ => return (Cfa::Unsupported, Rbp::Unsupported),
    }
    let cfa = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } => {
            match (i32::try_from(*offset), *register) {
                (Ok(off), RSP) => Cfa::Rsp(off),
                (Ok(off), RBP) => Cfa::Rbp(off),
                _ => Cfa::Unsupported,
            }
        }
        CfaRule::Expression(e) => match e.get(section) {
            Ok(expr) if expr.0.slice() == PLT_EXPRESSION => Cfa::Plt,
            _ => Cfa::Unsupported,
        },
    };
    let rbp = match row.register(RBP) {
        // Undefined: the caller's rbp is not preserved here (seen at entry points, which
        // clear it); the walker keeps the current value, as for same-value.
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => Rbp::Unchanged,
        Some(RegisterRule::Offset(off)) => i32::try_from(off).map_or(Rbp::Unsupported, Rbp::AtCfa),
        Some(_) => Rbp::Unsupported,
    };
    (cfa, rbp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIE for x86-64 (code alignment 1, data alignment -8, return address column 16) whose
    /// initial instructions are `def_cfa rsp+8; offset ra at cfa-8`, followed by an FDE with
    /// absolute addresses and `instructions`.
    fn eh_frame(start: u64, len: u64, instructions: &[u8]) -> Vec<u8> {
        eh_frame_of(&[(start, len, instructions)])
    }

    /// [`eh_frame`] with one FDE per `(start, len, instructions)`.
    fn eh_frame_of(fdes: &[(u64, u64, &[u8])]) -> Vec<u8> {
        let mut cie = vec![];
        cie.extend_from_slice(&0u32.to_le_bytes()); // CIE id
        cie.push(1); // version
        cie.extend_from_slice(b"zR\0");
        cie.push(1); // code alignment
        cie.push(0x78); // data alignment -8 (sleb)
        cie.push(16); // return address register
        cie.push(1); // augmentation length
        cie.push(0x00); // FDE pointer encoding: absolute
        cie.extend_from_slice(&[0x0c, 7, 8]); // def_cfa rsp+8
        cie.extend_from_slice(&[0x90, 1]); // offset r16 at cfa-8
        while (cie.len() + 4) % 8 != 0 {
            cie.push(0); // nop
        }
        let mut out = vec![];
        out.extend_from_slice(&(cie.len() as u32).to_le_bytes());
        out.extend_from_slice(&cie);
        for (start, len, instructions) in fdes {
            let fde_at = out.len();
            let mut fde = vec![];
            fde.extend_from_slice(&((fde_at + 4) as u32).to_le_bytes()); // back to the CIE
            fde.extend_from_slice(&start.to_le_bytes());
            fde.extend_from_slice(&len.to_le_bytes());
            fde.push(0); // augmentation length
            fde.extend_from_slice(instructions);
            while (fde.len() + 4) % 8 != 0 {
                fde.push(0);
            }
            out.extend_from_slice(&(fde.len() as u32).to_le_bytes());
            out.extend_from_slice(&fde);
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // terminator
        out
    }

    fn parse_all(data: &[u8]) -> Result<Parsed, TableError> {
        rows(&Sections {
            eh_frame: Some((data, 0x1000)),
            text: 0,
            debug_frame: None,
        })
    }

    fn parse(data: &[u8]) -> Result<Vec<Row>, TableError> {
        parse_all(data).map(|p| p.rows)
    }

    /// The rule at `pc`, as the kernel's search finds it.
    fn at(rows: &[Row], pc: u64) -> Cfa {
        rows[rows.partition_point(|r| r.pc <= pc) - 1].cfa
    }

    #[test]
    fn a_bad_fde_is_left_out_and_counted_and_the_others_kept() {
        // restore_state with nothing remembered: gimli refuses the FDE's instructions. An
        // unknown opcode (0x3f) in the next one; the outer two are good.
        let good: &[u8] = &[0x41, 0x0e, 16];
        let data = eh_frame_of(&[
            (0x1000, 0x20, good),
            (0x1020, 0x20, &[0x41, 0x0b]),
            (0x1040, 0x20, &[0x3f]),
            (0x1060, 0x20, good),
        ]);
        let p = parse_all(&data).unwrap();
        assert_eq!(p.skipped, 2, "{p:?}");
        assert!(p.first_error.is_some());
        assert_eq!(at(&p.rows, 0x1001), Cfa::Rsp(16));
        assert_eq!(at(&p.rows, 0x1021), Cfa::Missing);
        assert_eq!(at(&p.rows, 0x1041), Cfa::Missing);
        assert_eq!(at(&p.rows, 0x1061), Cfa::Rsp(16));
        assert_eq!(at(&p.rows, 0x1080), Cfa::Missing);
    }

    #[test]
    fn a_length_past_the_end_ends_the_section_and_keeps_what_came_before() {
        let good: &[u8] = &[0x41, 0x0e, 16];
        let mut data = eh_frame_of(&[(0x1000, 0x20, good), (0x1020, 0x20, good)]);
        // The second FDE's length, after the CIE's and the first FDE's.
        let len_at =
            |at: usize| 4 + u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let second = len_at(0) + len_at(len_at(0));
        data[second..second + 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        let p = parse_all(&data).unwrap();
        assert_eq!(p.skipped, 1, "{p:?}");
        assert_eq!(at(&p.rows, 0x1001), Cfa::Rsp(16));
        assert_eq!(at(&p.rows, 0x1021), Cfa::Missing);
    }

    #[test]
    fn a_table_of_nothing_but_bad_entries_is_malformed() {
        let mut data = eh_frame(0x4000, 0x40, &[0x41, 0x0e, 16]);
        data[8] = 0x63; // a CIE version no compiler emits
        assert!(matches!(parse_all(&data), Err(TableError::Malformed(_))));
    }

    #[test]
    fn push_rbp_prologue_gives_rsp_then_rbp_rules() {
        // advance 1; def_cfa_offset 16; offset rbp at cfa-16; advance 3; def_cfa_register rbp
        let data = eh_frame(0x4000, 0x40, &[0x41, 0x0e, 16, 0x86, 2, 0x43, 0x0d, 6]);
        let rows = parse(&data).unwrap();
        assert_eq!(
            rows,
            [
                Row {
                    pc: 0x4000,
                    cfa: Cfa::Rsp(8),
                    rbp: Rbp::Unchanged
                },
                Row {
                    pc: 0x4001,
                    cfa: Cfa::Rsp(16),
                    rbp: Rbp::AtCfa(-16)
                },
                Row {
                    pc: 0x4004,
                    cfa: Cfa::Rbp(16),
                    rbp: Rbp::AtCfa(-16)
                },
                Row {
                    pc: 0x4040,
                    cfa: Cfa::Missing,
                    rbp: Rbp::Unchanged
                },
            ]
        );
    }

    #[test]
    fn plt_expression_and_undefined_return_address() {
        // def_cfa_expression with the PLT expression; advance 16; undefined r16
        let mut ins = vec![0x0f, PLT_EXPRESSION.len() as u8];
        ins.extend_from_slice(&PLT_EXPRESSION);
        ins.extend_from_slice(&[0x50, 0x07, 16]);
        let rows = parse(&eh_frame(0x2000, 0x20, &ins)).unwrap();
        assert_eq!(rows[0].cfa, Cfa::Plt);
        assert_eq!(
            rows[1],
            Row {
                pc: 0x2010,
                cfa: Cfa::End,
                rbp: Rbp::Unchanged
            }
        );
    }

    #[test]
    fn other_registers_and_expressions_are_unsupported() {
        // def_cfa r10+0 (a stack realignment), then a CFA expression that is not the PLT one
        let rows = parse(&eh_frame(
            0x3000,
            0x10,
            &[0x0c, 10, 0, 0x41, 0x0f, 2, 0x76, 0x78],
        ))
        .unwrap();
        assert_eq!(rows[0].cfa, Cfa::Unsupported);
        assert_eq!(rows[1].cfa, Cfa::Unsupported);
    }

    #[test]
    fn truncated_or_garbled_sections_are_errors_not_panics() {
        let data = eh_frame(0x4000, 0x40, &[0x41, 0x0e, 16]);
        for cut in 1..data.len() {
            let _ = parse(&data[..cut]);
        }
        let mut garbled = data.clone();
        for i in 0..garbled.len() {
            garbled[i] ^= 0xa5;
            let _ = parse(&garbled);
            garbled[i] ^= 0xa5;
        }
        // A length that claims more than the section holds.
        let mut long = data;
        long[0..4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        assert!(parse(&long).is_err());
    }
}
