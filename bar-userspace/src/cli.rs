//! The command line: clap definitions and the wiring of stages per subcommand. No stage logic
//! lives here.

use bar_ebpf_common::Family;
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    diff::{
        self,
        compare::{Norm, TestOptions},
        gate::GateOn,
        input::{Select, TimeRange},
    },
    export::{self, ExportOptions},
    markers, phases,
    probe::{self, Method},
    push::{self, PushArgs},
    record::{self, RecordOptions, Scope},
    report,
    sys::files::Dir,
    workload,
};

#[derive(Debug, Parser)]
#[command(
    name = "bar-probe",
    version,
    about = "eBPF profiler: on-CPU, off-CPU, page faults, TCP connects and NUMA migrations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Explain this kernel: BTF, tracefs, privileges, and per event family which attach point
    /// will be used and why the others cannot; or describe a capture file.
    Info {
        /// A capture.bar to describe instead of this machine.
        capture: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Record one process (every thread) and write flame graphs, folded stacks and a summary.
    Attach {
        /// Process to trace.
        #[arg(long, short)]
        pid: u32,
        #[command(flatten)]
        rec: RecordArgs,
    },
    /// Record every process of the host (or of one cgroup).
    Record {
        /// Trace every process except bar-probe itself.
        #[arg(long, conflicts_with = "cgroup")]
        all: bool,
        /// Trace the processes of this cgroup (v2 path, absolute or relative to the v2 mount).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[command(flatten)]
        rec: RecordArgs,
    },
    /// Run the built-in workload, attach to it for a few seconds and write the outputs.
    Demo {
        /// Output folder (default: ./bar-demo-<time>).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// How long to record.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long)]
        quiet: bool,
    },
    /// Render every output again from a capture file (no root needed).
    Report {
        capture: PathBuf,
        /// Output folder (default: the capture's folder).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Phases to cut the capture into, instead of the markers it holds: JSON
        /// `[{"name","start","end"}]` or CSV `name,start,end`, times as RFC 3339 or Unix seconds.
        #[arg(long)]
        phases: Option<PathBuf>,
    },
    /// Send a phase marker to every running recording: NAME starts phase NAME (and ends the
    /// phase before), `--end` ends it.
    Mark {
        name: String,
        #[arg(long)]
        end: bool,
    },
    /// Write what every flight recorder (`record --ring`) holds, with every output, while it
    /// goes on recording.
    Dump {
        /// Output folder (default: ./bar-dump-<time>; with several recorders, one folder per
        /// recorder's pid inside it).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Record through the phases of a load test, timing them itself: each `--phase NAME=DURATION`
    /// (optionally `NAME=DURATION:COMMAND`, run for the phase's duration) follows the one before.
    /// A LOAD_CMD after `--` runs through all phases, started once every program is attached;
    /// without --pid/--all/--cgroup, it is the process recorded. Under sudo, LOAD_CMD and the
    /// phase commands run as the user who ran sudo (SUDO_UID/SUDO_GID, with that user's
    /// groups), never as root. A command that cannot run or fails makes the exit status 1.
    Run {
        #[arg(long, short, conflicts_with_all = ["all", "cgroup"])]
        pid: Option<u32>,
        #[arg(long, conflicts_with = "cgroup")]
        all: bool,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// A phase: NAME=DURATION or NAME=DURATION:COMMAND (e.g. spike=20s:'wrk -c 400 ...').
        #[arg(long = "phase", required = true, value_parser = parse_planned_phase)]
        phases: Vec<record::PlannedPhase>,
        #[command(flatten)]
        rec: RecordArgs,
        /// A load command to run through every phase.
        #[arg(last = true)]
        load: Vec<String>,
    },
    /// Compare two profiles (captures, phases or time ranges of captures, folded files):
    /// differential flame graph, frames that changed with p-values, root-cause paths, and a
    /// gate for CI (exit status 3).
    Diff(DiffArgs),
    /// A store of per-run summaries of one workload (as main builds it, kept as a CI cache),
    /// for `diff STORE CAND...` to judge a candidate against its history.
    Baseline(crate::baseline::BaselineArgs),
    /// Write one kind of a capture for other tools: pprof for go tool pprof, Pyroscope, Parca
    /// (no root needed).
    Export {
        /// A capture.bar written by attach or record.
        capture: PathBuf,
        #[arg(long, value_enum, default_value = "pprof")]
        format: export::Format,
        /// Kind to export: cpu, offcpu, faults, tcp or numa (default: cpu).
        #[arg(long, short, value_parser = parse_view)]
        event: Option<Family>,
        /// Output file (default: <kind>.pb.gz next to the capture).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// A built-in workload with known behaviour (used by the demo, tests and benchmarks).
    #[command(hide = true)]
    Workload(workload::WorkloadArgs),
    /// Builds the unwind tables of object files and prints, per file, one JSON line with their
    /// size and build time (used by the benchmarks).
    #[command(hide = true)]
    Tables { files: Vec<PathBuf> },
}

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
}

/// A parsed phase file (parsed when the command line is, so a bad one stops before recording).
#[derive(Debug, Clone)]
pub struct PhaseFile(pub Vec<phases::WallPhase>);

fn parse_phase_file(s: &str) -> Result<PhaseFile, String> {
    phases::parse_file(Path::new(s))
        .map(PhaseFile)
        .map_err(|e| e.to_string())
}

fn parse_planned_phase(s: &str) -> Result<record::PlannedPhase, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=DURATION or NAME=DURATION:COMMAND"))?;
    let (dur, command) = match rest.split_once(':') {
        Some((d, c)) => (d, Some(c.to_owned())),
        None => (rest, None),
    };
    phases::check_name(name).map_err(|e| e.to_string())?;
    Ok(record::PlannedPhase {
        name: name.to_owned(),
        duration: parse_positive_duration(dur)?,
        command: command.filter(|c| !c.trim().is_empty()),
    })
}

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

fn parse_view(s: &str) -> Result<Family, String> {
    Family::from_name(s)
        .ok_or_else(|| format!("unknown event kind '{s}' (cpu, offcpu, faults, tcp, numa)"))
}

fn paths_list(s: &str) -> Vec<PathBuf> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

impl DiffArgs {
    fn options(&self) -> diff::DiffOptions {
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

/// Runs `diff`: outputs, table or JSON, and the exit status (3 when the gate fails).
fn diff_command(args: &DiffArgs) -> anyhow::Result<i32> {
    let mut opts = args.options();
    if let [one] = &opts.base[..]
        && crate::baseline::is_store(one)
    {
        if args.cand.is_none() {
            bail!(
                "give the candidate runs to judge against the baseline {}",
                one.display()
            );
        }
        opts.history = Some(crate::baseline::history(one)?);
        opts.base.clear();
    }
    if args.cand.is_none() && opts.base_select == opts.cand_select {
        bail!(
            "nothing to compare: give a candidate, or two phases or time ranges of {}              (--base-phase/--cand-phase, --base-range/--cand-range)",
            args.base
        );
    }
    let outcome = diff::diff(&opts)?;
    for w in &outcome.warnings {
        eprintln!("bar-probe: warning: {w}");
    }
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bar-diff-{}", now_stamp())));
    let dir = Dir::create(&dir)?;
    let mut written = diff::output::write_files(&outcome, &dir)
        .with_context(|| format!("cannot write the outputs to {}", dir.path().display()))?;
    let section = crate::render::html::Section {
        title: "Differential flame graph".into(),
        html: diff::output::html_section(&outcome, &dir),
    };
    written.push(
        crate::render::html::write_page(&dir, &format!("bar diff: {}", args.base), &[section])
            .with_context(|| format!("cannot write the outputs to {}", dir.path().display()))?,
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&diff::output::to_json(&outcome))?
        );
    } else {
        print!("{}", diff::output::table(&outcome, args.top));
        println!();
        for p in &written {
            println!("{}", p.display());
        }
    }
    Ok(match &outcome.verdict {
        Some(v) if v.failed() => 3,
        _ => 0,
    })
}

impl Method {
    fn from_str_arg(s: &str) -> Result<Self, String> {
        s.parse()
    }
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "a window of {s} is too short: collecting the sums takes milliseconds, use 10ms or more"
        ));
    }
    Ok(d)
}

fn parse_ring(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("a ring of {s} is too short: keep 1s or more"));
    }
    Ok(d)
}

fn parse_alpha(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(a) if a > 0.0 && a < 1.0 => Ok(a),
        _ => Err(format!(
            "'{s}' is not a significance level: give a number between 0 and 1, such as 0.05"
        )),
    }
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a percentage: give a number of 0 or more, such as 5"
        )),
    }
}

fn parse_diff_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "a window of {s} is too short: windows under 10ms hold too few events to compare, use 10ms or more"
        ));
    }
    Ok(d)
}

/// A duration that must be longer than zero (how long to record).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "'{s}' is no time at all: give a duration longer than 0"
        ));
    }
    Ok(d)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 10s, 500ms or 1us: {e}"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..].to_ascii_uppercase().trim_end_matches(['B', 'I']) {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => return Err(format!("'{s}' is not a size like 500M or 2G")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a size like 500M or 2G"))
}

fn parse_pages(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n.is_power_of_two() => Ok(n),
        _ => Err(format!("'{s}' is not a power of two")),
    }
}

fn now_stamp() -> String {
    jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string()
}

impl RecordArgs {
    fn options(&self, scope: Scope, default_dir: String) -> anyhow::Result<RecordOptions> {
        if self.ring_size.is_some() && self.ring.is_none() {
            bail!("--ring-size is the size of a flight recorder's ring: add --ring DUR");
        }
        if !self.ring_trigger.is_empty() && self.ring.is_none() {
            bail!("--ring-trigger writes out a flight recorder's ring: add --ring DUR");
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
        })
    }
}

/// Records, then renders the capture into the same folder.
fn record_and_report(opts: &RecordOptions) -> anyhow::Result<()> {
    record_and_report_then(opts, || {}).map(drop)
}

/// Records (calling `on_start` once recording), then renders the capture into the same folder.
/// Returns how phase commands failed, if any did.
fn record_and_report_then(
    opts: &RecordOptions,
    on_start: impl FnOnce(),
) -> anyhow::Result<Vec<String>> {
    let recorded = record::record(opts, on_start)?;
    let files = report::deliver(&recorded.dir, record::CAPTURE)?;
    if !opts.quiet {
        eprintln!(
            "bar-probe: stopped ({}): {} events, {} lost",
            recorded.stop_reason, recorded.events, recorded.lost
        );
        for p in &recorded.push {
            eprintln!("bar-probe: {}", push::describe(p));
        }
    }
    print_written(&files);
    Ok(recorded.command_failures)
}

/// The files written, one per line on stdout (for scripts).
fn print_written(written: &[PathBuf]) {
    for p in written {
        println!("{}", p.display());
    }
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Info {
            capture: Some(path),
            json,
        } => crate::info::capture(&path, json)?,
        Cmd::Info {
            capture: None,
            json,
        } => crate::info::machine(json)?,
        Cmd::Attach { pid, rec } => {
            let dir = format!("bar-{pid}-{}", now_stamp());
            record_and_report(&rec.options(Scope::Pid(pid), dir)?)?;
        }
        Cmd::Record { all, cgroup, rec } => {
            let scope = match (all, cgroup) {
                (_, Some(cg)) => Scope::Cgroup(cg),
                (true, None) => Scope::All,
                (false, None) => {
                    bail!("say what to record: --all or --cgroup PATH (or use `attach --pid`)")
                }
            };
            let dir = format!("bar-all-{}", now_stamp());
            record_and_report(&rec.options(scope, dir)?)?;
        }
        Cmd::Demo {
            output,
            duration,
            quiet,
        } => demo(output, duration, quiet)?,
        Cmd::Dump { output } => {
            let dir = output.unwrap_or_else(|| PathBuf::from(format!("bar-dump-{}", now_stamp())));
            return crate::dumps::command(&dir);
        }
        Cmd::Mark { name, end } => {
            let n = markers::send_all(&name, end)?;
            eprintln!(
                "bar-probe: marked {n} recording{}",
                if n == 1 { "" } else { "s" }
            );
        }
        Cmd::Run {
            pid,
            all,
            cgroup,
            phases,
            rec,
            load,
        } => run_phases(pid, all, cgroup, phases, rec, &load)?,
        Cmd::Report {
            capture,
            output,
            phases,
        } => {
            let out = output.unwrap_or_else(|| {
                capture
                    .parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            });
            let phases = phases.map(|p| phases::parse_file(&p)).transpose()?;
            // The capture first: one that cannot be read leaves no output folder behind.
            let profile = report::load_with(&capture, phases.as_deref())?;
            let out = Dir::create(&out)?;
            let rep = report::render_profile(&capture, profile, &out, phases.as_deref())?;
            for w in &rep.warnings {
                eprintln!("bar-probe: warning: {w}");
            }
            for note in &rep.profile.phase_notes {
                eprintln!("bar-probe: note: {note}");
            }
            if let Some(d) = &rep.damage {
                eprintln!(
                    "bar-probe: warning: {} is damaged, rendered what was valid: {d}",
                    capture.display()
                );
            }
            print_written(&rep.written);
        }
        Cmd::Diff(args) => return diff_command(&args),
        Cmd::Export {
            capture,
            format,
            event,
            output,
        } => {
            let done = export::export(&ExportOptions {
                capture: capture.clone(),
                format,
                kind: event,
                output,
            })?;
            if let Some(d) = &done.damage {
                eprintln!(
                    "bar-probe: warning: {} is damaged, exported what was valid: {d}",
                    capture.display()
                );
            }
            eprintln!(
                "bar-probe: exported {} events of {} as {} samples",
                done.events,
                done.view.name(),
                done.samples
            );
            println!("{}", done.path.display());
        }
        Cmd::Baseline(args) => crate::baseline::run(args)?,
        Cmd::Workload(args) => workload::run(&args)?,
        Cmd::Tables { files } => crate::unwind::describe_tables(&files),
    }
    Ok(0)
}

/// `bar-probe run`: records through timed phases, with a load command running through all of
/// them (and recorded itself when no other target is named). Under sudo, load commands run as
/// the user who ran sudo, never as root.
fn run_phases(
    pid: Option<u32>,
    all: bool,
    cgroup: Option<PathBuf>,
    plan: Vec<record::PlannedPhase>,
    rec: RecordArgs,
    load: &[String],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let total: Duration = plan.iter().map(|p| p.duration).sum();
    let mut gate = None;
    let mut child = None;
    if let Some((program, args)) = load.split_first() {
        let (c, writer) = crate::sys::command::start_gated(program, args)
            .with_context(|| format!("cannot start {program}"))?;
        gate = Some(writer);
        child = Some(c);
    }
    let scope = match (pid, all, cgroup, &child) {
        (Some(p), _, _, _) => Scope::Pid(p),
        (None, true, _, _) => Scope::All,
        (None, false, Some(cg), _) => Scope::Cgroup(cg),
        (None, false, None, Some(c)) => Scope::Pid(c.id()),
        (None, false, None, None) => {
            bail!("say what to record: --pid, --all, --cgroup, or a load command after --")
        }
    };
    let dir = match &scope {
        Scope::Pid(p) => format!("bar-{p}-{}", now_stamp()),
        _ => format!("bar-all-{}", now_stamp()),
    };
    if rec.ring.is_some() {
        bail!("--ring is for record and attach: a run lasts as long as its phases");
    }
    let mut opts = rec.options(scope, dir)?;
    opts.duration = Some(total);
    opts.plan = plan;
    let result = record_and_report_then(&opts, || {
        if let Some(mut g) = gate.take() {
            let _ = g.write_all(b"go\n");
        }
    });
    // The load ends with the last phase; one that ended before, other than well, failed.
    let load_failure = child.and_then(|mut c| {
        let ended = c.try_wait().ok().flatten();
        if ended.is_none() {
            // SAFETY: signalling the process group we created.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGTERM) };
            let _ = c.wait();
        }
        ended.filter(|s| !s.success()).map(|s| {
            format!(
                "the load command `{}` {}",
                load.join(" "),
                crate::sys::command::exit_text(s)
            )
        })
    });
    let failures = result?;
    match load_failure.into_iter().chain(failures).next() {
        Some(f) => bail!("{f}"),
        None => Ok(()),
    }
}

/// Starts the built-in workload as a child, records it, stops it.
fn demo(output: Option<PathBuf>, duration: Duration, quiet: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find bar-probe's own executable")?;
    let mut child = Command::new(exe)
        .args(["workload", "demo", "--seconds"])
        .arg((duration.as_secs_f64() + 30.0).to_string())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the demo workload")?;
    let pid = child.id();
    if !quiet {
        eprintln!(
            "bar-probe: demo workload started as pid {pid}; recording it for {}",
            humantime::format_duration(duration)
        );
    }
    let mut rec = RecordArgs {
        duration: Some(duration),
        events: probe::FamilyList(vec![Family::Cpu, Family::Faults]),
        frequency: 99,
        min_block: Duration::from_micros(1),
        output: Some(output.unwrap_or_else(|| PathBuf::from(format!("bar-demo-{}", now_stamp())))),
        quiet,
        max_size: None,
        buffer_pages: 256,
        stack_map_size: bar_ebpf_common::DEFAULT_STACK_MAP_ENTRIES,
        avoid: Vec::new(),
        null: false,
        aggregate: None,
        phases: None,
        marker_fifo: None,
        ring: None,
        ring_size: None,
        push: PushArgs::default(),
        ring_trigger: Vec::new(),
        unwind: crate::unwind::Mode::Tables,
    }
    .options(Scope::Pid(pid), String::new())?;
    rec.explicit = true;
    let result = record_and_report(&rec);
    let _ = child.kill();
    let _ = child.wait();
    result?;
    if !quiet {
        let dir = rec.out_dir.display();
        eprintln!(
            "bar-probe: open {dir}/report.html in a browser (or cpu.svg, faults.svg); the hot frames are burn_cpu_hot_loop and touch_fresh_pages"
        );
    }
    Ok(())
}
