//! Analyze: the stage between the capture and its outputs. [`Capture`] is the one reader of a
//! capture file for report, diff, export and info; [`Profile`] is what it aggregates into
//! (per-family views of the whole, of phases and of slices), with the labels every output
//! shows and the phases that cut a recording.

mod labels;
pub mod phases;
mod profile;
mod read;
#[cfg(test)]
mod tests;
mod times;
mod view;

pub use self::{
    labels::{count, format_endpoint, migrate_reason, tcp_result, weigh},
    profile::{Profile, Slice},
    read::{AnalyzeError, Capture, Outline, load},
    times::StackTimes,
    view::{NodePair, NumaStats, TcpDest, ViewAgg, new_histogram},
};
