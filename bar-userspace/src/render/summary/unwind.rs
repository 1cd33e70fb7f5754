//! `summary.json`'s `unwind`: how user stacks were walked, how far, and what the unwind tables
//! held and cost.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::analyze::Profile;

/// How user stacks were walked (`summary.json`'s `unwind`).
#[derive(Debug, Serialize)]
pub struct UnwindSummary {
    /// "tables" or "frame-pointers" (with the reason tables were not used).
    method: String,
    /// Events whose user stack bar's programs walked.
    stacks: u64,
    /// Their frames, by how each was found.
    frames: BTreeMap<&'static str, u64>,
    /// Those stacks cut short, by reason.
    cut_short: BTreeMap<&'static str, u64>,
    /// Stack pages the walks could not read, which the collector faulted back in.
    stack_pages: StackPages,
    tables: UnwindTables,
}

#[derive(Debug, Serialize)]
struct StackPages {
    asked: u64,
    faulted_in: u64,
}

#[derive(Debug, Serialize)]
struct UnwindTables {
    objects: u64,
    rows: u64,
    bytes: u64,
    capacity_bytes: u64,
    build_ms: u64,
    evicted: u64,
    misses: u64,
    processes: u64,
    processes_gone: u64,
    failed: Vec<FailedObject>,
    /// Unparsable entries of the objects' tables, left out, and the objects that had them.
    entries_skipped: u64,
    partial: Vec<FailedObject>,
}

/// An object whose unwind table could not be built, and why.
#[derive(Debug, Serialize)]
struct FailedObject {
    object: String,
    reason: String,
}

pub(super) fn unwind_summary(profile: &Profile) -> Option<UnwindSummary> {
    use bar_ebpf_common::unwind::{UnwindRow, stop};
    let method = profile.meta.unwind.clone();
    let u = profile.counters.unwind.clone();
    if method.is_empty() && u.is_none() {
        // A capture from before unwind tables.
        return None;
    }
    let u = u.map(|u| *u).unwrap_or_default();
    let cut_short = (1..stop::COUNT)
        .map(|r| {
            (
                stop::name(r),
                u.cut_short.get(r as usize).copied().unwrap_or(0),
            )
        })
        .collect();
    Some(UnwindSummary {
        method,
        stacks: u.stacks,
        frames: BTreeMap::from([
            ("table", u.frames_table),
            ("frame_pointer", u.frames_frame_pointer),
            ("go", u.frames_go),
        ]),
        cut_short,
        stack_pages: StackPages {
            asked: u.stack_pages,
            faulted_in: u.stack_pages_back,
        },
        tables: UnwindTables {
            objects: u.objects,
            rows: u.rows,
            bytes: u.bytes,
            capacity_bytes: u.capacity_rows * size_of::<UnwindRow>() as u64,
            build_ms: u.build_ms,
            evicted: u.evicted,
            misses: u.misses,
            processes: u.processes,
            processes_gone: u.processes_gone,
            failed: rejected(&u.failed),
            entries_skipped: u.entries_skipped,
            partial: rejected(&u.partial),
        },
    })
}

/// Objects and why, as summary.json lists them.
fn rejected(objects: &[crate::capture::proto::Rejected]) -> Vec<FailedObject> {
    objects
        .iter()
        .map(|f| FailedObject {
            object: f.attach.clone(),
            reason: f.reason.clone(),
        })
        .collect()
}
