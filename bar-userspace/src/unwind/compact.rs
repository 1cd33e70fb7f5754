//! Compaction: [`Row`]s of any source to the 8-byte [`UnwindRow`]s the kernel searches. Rows
//! are sorted by address, offsets kept relative to the object's first row (so 32 bits do),
//! rules that do not fit the fixed fields marked unsupported, and neighbours with the same
//! rules merged: the kernel only needs to know where the rules change.

use bar_ebpf_common::unwind::{UnwindRow, cfa, rbp};

use super::{Cfa, Rbp, Row, TableError};

/// An object's table as the kernel reads it: rows with addresses relative to `base`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compact {
    pub base: u64,
    pub rows: Vec<UnwindRow>,
    /// Rows whose rules the walker does not follow (before merging), for the record.
    pub unsupported: usize,
}

/// Encodes one row's rules; what the fields cannot hold is unsupported.
fn encode(row: &Row, pc: u32) -> UnwindRow {
    let (kind, offset) = match row.cfa {
        Cfa::Rsp(o) => (cfa::RSP, u16::try_from(o).ok()),
        Cfa::Rbp(o) => (cfa::RBP, u16::try_from(o).ok()),
        Cfa::Plt => (cfa::PLT, Some(0)),
        Cfa::End => (cfa::END, Some(0)),
        Cfa::Missing => (cfa::MISSING, Some(0)),
        Cfa::Unsupported => (cfa::UNSUPPORTED, Some(0)),
    };
    let Some(offset) = offset else {
        return UnwindRow::new(pc, cfa::UNSUPPORTED, 0, rbp::UNCHANGED, 0);
    };
    if matches!(kind, cfa::END | cfa::MISSING | cfa::UNSUPPORTED) {
        // Nothing else of such a row is read.
        return UnwindRow::new(pc, kind, 0, rbp::UNCHANGED, 0);
    }
    let (rbp_kind, rbp_offset) = match row.rbp {
        Rbp::Unchanged => (rbp::UNCHANGED, 0),
        Rbp::AtCfa(o) if o % 8 == 0 => match i8::try_from(o / 8) {
            Ok(words) => (rbp::AT_CFA, words),
            Err(_) => (rbp::UNSUPPORTED, 0),
        },
        Rbp::AtCfa(_) | Rbp::Unsupported => (rbp::UNSUPPORTED, 0),
    };
    UnwindRow::new(pc, kind, offset, rbp_kind, rbp_offset)
}

/// Sorts, encodes and merges `rows`. Of rows at the same address, the last one stands (it is
/// the rule from that address on).
pub fn compact(mut rows: Vec<Row>) -> Result<Compact, TableError> {
    rows.sort_by_key(|r| r.pc);
    let Some(base) = rows.first().map(|r| r.pc) else {
        return Err(TableError::NoUnwindInfo);
    };
    let mut out: Vec<UnwindRow> = Vec::with_capacity(rows.len() / 2);
    let mut unsupported = 0;
    for row in &rows {
        let pc = u32::try_from(row.pc - base)
            .map_err(|_| TableError::TooBig("code spans more than 4 GiB".into()))?;
        let encoded = encode(row, pc);
        if encoded.cfa() == cfa::UNSUPPORTED || encoded.rbp() == rbp::UNSUPPORTED {
            unsupported += 1;
        }
        match out.last_mut() {
            Some(last) if last.pc == pc => *last = encoded,
            _ => out.push(encoded),
        }
        // The row replaced or pushed may now repeat the one before it.
        let n = out.len();
        if n >= 2 && same_rules(&out[n - 2], &out[n - 1]) {
            out.pop();
        }
    }
    out.shrink_to_fit();
    Ok(Compact {
        base,
        rows: out,
        unsupported,
    })
}

fn same_rules(a: &UnwindRow, b: &UnwindRow) -> bool {
    a.kind == b.kind && a.cfa_offset == b.cfa_offset && a.rbp_offset == b.rbp_offset
}

impl Compact {
    /// The row for `addr` (an address of the object as its program headers place it), as the
    /// kernel's binary search finds it: the last row at or before it.
    pub fn lookup(&self, addr: u64) -> Option<&UnwindRow> {
        let off = u32::try_from(addr.checked_sub(self.base)?).ok()?;
        let i = self.rows.partition_point(|r| r.pc <= off);
        i.checked_sub(1).map(|i| &self.rows[i])
    }

    /// Bytes the rows take in the kernel.
    pub fn bytes(&self) -> usize {
        self.rows.len() * size_of::<UnwindRow>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pc: u64, cfa: Cfa, rbp: Rbp) -> Row {
        Row { pc, cfa, rbp }
    }

    #[test]
    fn sorts_rebases_and_merges_neighbours() {
        let t = compact(vec![
            row(0x1010, Cfa::Rsp(8), Rbp::Unchanged),
            row(0x1000, Cfa::Rsp(8), Rbp::Unchanged),
            row(0x1001, Cfa::Rsp(16), Rbp::AtCfa(-16)),
            row(0x1004, Cfa::Rbp(16), Rbp::AtCfa(-16)),
            row(0x100f, Cfa::Rsp(8), Rbp::Unchanged),
            row(0x1020, Cfa::Missing, Rbp::Unchanged),
        ])
        .unwrap();
        assert_eq!(t.base, 0x1000);
        assert_eq!(
            t.rows,
            [
                UnwindRow::new(0, cfa::RSP, 8, rbp::UNCHANGED, 0),
                UnwindRow::new(1, cfa::RSP, 16, rbp::AT_CFA, -2),
                UnwindRow::new(4, cfa::RBP, 16, rbp::AT_CFA, -2),
                // 0x100f and 0x1010 have the same rules: one row.
                UnwindRow::new(0xf, cfa::RSP, 8, rbp::UNCHANGED, 0),
                UnwindRow::new(0x20, cfa::MISSING, 0, rbp::UNCHANGED, 0),
            ]
        );
        assert_eq!(t.lookup(0x1003).unwrap().cfa_offset, 16);
        assert_eq!(t.lookup(0x1011).unwrap().pc, 0xf);
        assert_eq!(t.lookup(0x2000).unwrap().cfa(), cfa::MISSING);
        assert!(t.lookup(0xfff).is_none());
        assert_eq!(t.unsupported, 0);
    }

    #[test]
    fn what_does_not_fit_is_unsupported() {
        let t = compact(vec![
            row(0, Cfa::Rsp(70_000), Rbp::Unchanged),
            row(1, Cfa::Rsp(-8), Rbp::Unchanged),
            row(2, Cfa::Rsp(16), Rbp::AtCfa(-12)),
            row(3, Cfa::Rsp(16), Rbp::AtCfa(-2048)),
            row(4, Cfa::Rsp(16), Rbp::AtCfa(-1024)),
        ])
        .unwrap();
        let kinds: Vec<(u8, u8)> = t.rows.iter().map(|r| (r.cfa(), r.rbp())).collect();
        assert_eq!(
            kinds,
            [
                (cfa::UNSUPPORTED, rbp::UNCHANGED),
                (cfa::RSP, rbp::UNSUPPORTED),
                (cfa::RSP, rbp::AT_CFA),
            ]
        );
        assert_eq!(t.rows[2].rbp_offset, -128);
        assert_eq!(t.unsupported, 4);
    }

    #[test]
    fn the_last_rule_at_an_address_stands_and_huge_spans_are_refused() {
        let t = compact(vec![
            row(0, Cfa::Rsp(8), Rbp::Unchanged),
            row(0, Cfa::End, Rbp::Unchanged),
        ])
        .unwrap();
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0].cfa(), cfa::END);
        assert!(compact(vec![]).is_err());
        assert!(
            compact(vec![
                row(0, Cfa::End, Rbp::Unchanged),
                row(1 << 33, Cfa::Missing, Rbp::Unchanged)
            ])
            .is_err()
        );
    }
}
