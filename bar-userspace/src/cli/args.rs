//! Options shared by subcommands (recording, diff), and how they map to the options of the
//! stages, so the stages stay usable without the command line.

use bar_ebpf_common::Family;
use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use clap::Args;

use super::parse::{
    parse_alpha, parse_diff_window, parse_duration, parse_pages, parse_percent, parse_phase_file,
    parse_positive_duration, parse_ring, parse_size, parse_view, parse_window,
};
use crate::{
    analyze::phases,
    diff::{
        self,
        compare::{Norm, TestOptions},
        gate::GateOn,
        input::{Select, TimeRange},
    },
    probe::{self, Method},
    push::{self, PushArgs},
    record::{self, RecordOptions, Scope},
};

/// Options shared by every recording command.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Stop after this long (e.g. 10s, 500ms, 2m); default: until Ctrl-C or the target exits.
    #[arg(long, short, value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Event families: cpu, offcpu, faults, tcp, numa, or all.
    #[arg(long, short, default_value = "all", value_parser = probe::parse_families)]
    pub events: probe::FamilyList,
    /// On-CPU sampling frequency in Hz.
    #[arg(long, short = 'F', default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub frequency: u64,
    /// Off-CPU intervals shorter than this are not reported.
    #[arg(long, default_value = "1us", value_parser = parse_duration)]
    pub min_block: Duration,
    /// Output folder (default: ./bar-<pid>-<time> or ./bar-all-<time>).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// No live status on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Stop recording when the capture file reaches this size (e.g. 500M, 2G).
    #[arg(long, value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Pages per CPU of each perf ring buffer (a power of two).
    #[arg(long, default_value_t = 256, value_parser = parse_pages)]
    pub buffer_pages: usize,
    /// Stack traces the kernel can hold, user and kernel stacks each (1 to 262144, about 1 KiB
    /// of kernel memory each); more distinct stacks show as `[stack lost]`.
    #[arg(long, default_value_t = bar_ebpf_common::DEFAULT_STACK_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..=262_144))]
    pub stack_map_size: u32,
    /// Attach methods to pass over even where the kernel has them (e.g. tp_btf,kprobe).
    #[arg(long, value_delimiter = ',', value_parser = Method::from_str_arg)]
    pub avoid: Vec<Method>,
    /// Attach programs that only filter and return: measures the floor of bar's overhead.
    #[arg(long)]
    pub null: bool,
    /// Sum page faults and off-CPU intervals in the kernel, per thread and stack, and collect
    /// the sums every WINDOW (default 1s) instead of each event: several times cheaper for
    /// storms of them, but their events carry the time of their window (to within WINDOW in
    /// phases), fault addresses are not kept, and off-CPU percentiles are of window averages.
    #[arg(long, value_name = "WINDOW", num_args = 0..=1, default_missing_value = "1s",
          value_parser = parse_window)]
    pub aggregate: Option<Duration>,
    /// Phases to record as markers: JSON `[{"name","start","end"}]` or CSV `name,start,end`,
    /// times as RFC 3339 or Unix seconds.
    #[arg(long, value_parser = parse_phase_file)]
    pub phases: Option<PhaseFile>,
    /// Also read live markers (lines `NAME` or `NAME --end`) from this FIFO: created (0600,
    /// yours under sudo) if missing; an existing one must be root's or yours, and writable by
    /// no one else.
    #[arg(long)]
    pub marker_fifo: Option<PathBuf>,
    /// Flight recorder: keep only the last DUR of events, in memory, until stopped;
    /// `bar-probe dump` or SIGUSR1 writes them out, Ctrl-C writes them into the output folder.
    // A ring starts its frames and stacks over with each segment, while a pusher keeps one table
    // for the whole recording: the two do not go together yet.
    #[arg(long, value_name = "DUR", value_parser = parse_ring,
          conflicts_with_all = ["max_size", "pyroscope", "otlp"])]
    pub ring: Option<Duration>,
    /// With --ring: keep at most this much (deflated, e.g. 32M, 1G; default 64M), dropping
    /// the oldest.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub ring_size: Option<u64>,
    #[command(flatten)]
    pub push: PushArgs,
    /// With --ring: write the ring out by itself, half a window after FAMILY's events per
    /// second cross RATE (e.g. faults=50k; may be given again for other families).
    #[arg(long, value_name = "FAMILY=RATE", value_parser = record::parse_trigger)]
    pub ring_trigger: Vec<record::TriggerRule>,
    /// How user stacks are walked: with the objects' unwind tables (frame pointers where code
    /// has none), or by frame pointer only.
    #[arg(long, value_enum, default_value_t = crate::unwind::Mode::Tables)]
    pub unwind: crate::unwind::Mode,
    /// Show the functions the compiler inlined as frames of their own, marked `_[i]`, where
    /// DWARF describes them (recordings of one process only: --pid or a command). It reads
    /// the DWARF of every object in the stacks: twice the memory for a Rust program.
    #[arg(long, value_name = "BOOL", default_value_t = false, action = clap::ArgAction::Set)]
    pub inlined: bool,
}

/// A parsed phase file (parsed when the command line is, so a bad one stops before recording).
#[derive(Debug, Clone)]
pub struct PhaseFile(pub Vec<phases::WallPhase>);

/// `bar-probe diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// Base: a capture.bar or a .folded file, or several separated by commas (repeated runs),
    /// or a baseline store (bar-probe baseline add).
    pub base: String,
    /// Candidate, as BASE; left out: BASE again (compare two phases or time ranges of it).
    pub cand: Option<String>,
    /// Event kind to compare (cpu, offcpu, faults, tcp, numa); default: the one the inputs
    /// share, cpu first.
    #[arg(long, short, value_parser = parse_view)]
    pub event: Option<Family>,
    /// Compare this phase of each side's captures.
    #[arg(long, conflicts_with_all = ["base_phase", "cand_phase", "base_range", "cand_range"])]
    pub phase: Option<String>,
    /// Take the phases from this phase file instead of the captures' markers.
    #[arg(long, value_parser = parse_phase_file)]
    pub phases: Option<PhaseFile>,
    /// Phase of the base captures.
    #[arg(long, conflicts_with = "base_range")]
    pub base_phase: Option<String>,
    /// Phase of the candidate captures.
    #[arg(long, conflicts_with = "cand_range")]
    pub cand_phase: Option<String>,
    /// Time range of the base captures: START..END, offsets from the capture's start (2s,
    /// 1500ms) or RFC 3339 times; either end may be left out.
    #[arg(long)]
    pub base_range: Option<TimeRange>,
    /// Time range of the candidate captures, as --base-range.
    #[arg(long)]
    pub cand_range: Option<TimeRange>,
    /// Cut each side's time into windows of this length (10ms or more); each window is one
    /// measurement for the significance tests.
    #[arg(long, value_parser = parse_diff_window)]
    pub windows: Option<Duration>,
    /// Compare weight per second instead of share of the total weight.
    #[arg(long)]
    pub per_second: bool,
    /// Exit with status 3 when a significant frame grows by more than PCT points of share
    /// (percent of its base rate with --per-second).
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub fail_above: Option<f64>,
    /// Gate on latency instead: a significant p99 growth by more than PCT percent (offcpu, tcp).
    #[arg(long, requires = "fail_above")]
    pub latency: bool,
    /// Significance level, for the Benjamini-Hochberg adjusted p-values of frames and the KS
    /// p-values of latencies.
    #[arg(long, default_value_t = 0.05, value_parser = parse_alpha)]
    pub alpha: f64,
    /// Test only frames with at least this share (in %) of the total on either side.
    #[arg(long, default_value_t = 0.5, value_parser = parse_percent)]
    pub min_share: f64,
    /// Compare stacks with their process name as the root frame even when the sides' names
    /// differ or each side is one process (by default they are compared below it).
    #[arg(long)]
    pub by_process: bool,
    /// Rows of the frame table.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Root-cause paths to show at most.
    #[arg(long, default_value_t = 5)]
    pub paths: usize,
    /// Print the JSON verdict instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Output folder for diff.svg, diff-base.svg, diff.folded and diff.json (default:
    /// ./bar-diff-<time>).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

impl RecordArgs {
    pub(super) fn options(
        &self,
        scope: Scope,
        default_dir: String,
    ) -> anyhow::Result<RecordOptions> {
        if self.ring_size.is_some() && self.ring.is_none() {
            bail!("--ring-size is the size of a flight recorder's ring: add --ring DUR");
        }
        if !self.ring_trigger.is_empty() && self.ring.is_none() {
            bail!("--ring-trigger writes out a flight recorder's ring: add --ring DUR");
        }
        // Only a recording of one process reads DWARF (see record::session).
        if self.inlined && !matches!(scope, Scope::Pid(_)) {
            bail!(
                "--inlined true needs DWARF, which bar reads for recordings of one process only: record one with --pid or a command, or leave --inlined out"
            );
        }
        let families = self.events.0.clone();
        Ok(RecordOptions {
            explicit: families.len() < Family::ALL.len(),
            families,
            scope,
            duration: self.duration,
            frequency: self.frequency,
            min_block_ns: self.min_block.as_nanos() as u64,
            null_mode: self.null,
            aggregate: self.aggregate,
            stack_map_entries: self.stack_map_size,
            avoid: self.avoid.clone(),
            buffer_pages: self.buffer_pages,
            max_size: self.max_size,
            out_dir: self
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(default_dir)),
            quiet: self.quiet,
            command_line: push::redact_args(std::env::args()),
            phases: self.phases.clone().map(|p| p.0).unwrap_or_default(),
            marker_fifo: self.marker_fifo.clone(),
            plan: Vec::new(),
            ring: self.ring.map(|window| record::RingOptions {
                window,
                size: self.ring_size.unwrap_or(record::DEFAULT_RING_SIZE),
            }),
            push: self.push.options(),
            ring_triggers: self.ring_trigger.clone(),
            unwind: self.unwind,
            inlined: self.inlined,
        })
    }
}

fn paths_list(s: &str) -> Vec<PathBuf> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

impl DiffArgs {
    pub(super) fn options(&self) -> diff::DiffOptions {
        let select = |phase: &Option<String>, range: &Option<TimeRange>| match (
            phase.as_ref().or(self.phase.as_ref()),
            range,
        ) {
            (Some(p), _) => Select::Phase(p.clone()),
            (None, Some(r)) => Select::Range(*r),
            (None, None) => Select::Whole,
        };
        diff::DiffOptions {
            phases: self.phases.clone().map(|p| p.0),
            base: paths_list(&self.base),
            history: None,
            cand: self.cand.as_deref().map(paths_list).unwrap_or_default(),
            view: self.event,
            base_select: select(&self.base_phase, &self.base_range),
            cand_select: select(&self.cand_phase, &self.cand_range),
            windows: self.windows,
            norm: if self.per_second {
                Norm::PerSecond
            } else {
                Norm::Share
            },
            test: TestOptions {
                alpha: self.alpha,
                min_share: self.min_share / 100.0,
            },
            by_process: self.by_process,
            top: self.top,
            paths: self.paths,
            gate: self.fail_above.map(|pct| {
                let on = if self.latency {
                    GateOn::Latency
                } else {
                    GateOn::Frames
                };
                (on, pct)
            }),
        }
    }
}
