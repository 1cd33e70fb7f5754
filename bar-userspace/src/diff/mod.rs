//! Diff: two profiles in (captures, phases or time ranges of captures, folded files), what
//! changed out: per-frame changes of normalized weight with a significance test each, the
//! paths that explain most of the change, latency shifts, and a gate for CI. `input` reads
//! the sides, `compare` decides, `output` writes the flame graphs, table and JSON.

pub mod compare;
pub mod estimate;
pub mod frames;
pub mod gate;
pub mod history;
pub mod input;
pub mod latency;
pub mod output;
pub mod paths;
pub mod prior;
#[cfg(test)]
mod simulate;
#[cfg(test)]
mod simulate_profile;

use std::{path::PathBuf, time::Duration};

use self::{
    compare::{Base, FrameChange, Norm, TestOptions},
    estimate::OneRun,
    frames::Quality,
    gate::{GateOn, Offender},
    history::RunSummary,
    input::{Input, ReadOptions, Select, Side},
    latency::LatencyChange,
    paths::RootCause,
};
use bar_ebpf_common::Family;

use crate::capture::CaptureError;

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Phases(#[from] crate::analyze::phases::PhaseError),
    // Not `source`: the reason is in the sentence, and a source would be printed again after it.
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{0} is a directory but not a baseline store (it has no bar-baseline.json): give captures, folded files, or a store made by bar-probe baseline add"
    )]
    NotAStore(PathBuf),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("{path} is neither a bar capture nor a folded-stacks file: {why}")]
    NotAProfile { path: PathBuf, why: String },
    #[error("{path} has no {kind} events (it has {has}); choose another kind with --event")]
    KindMissing {
        path: PathBuf,
        kind: &'static str,
        has: String,
    },
    #[error("{0} hold different kinds of events: compare profiles of the same kind")]
    KindMismatch(String),
    #[error("the inputs hold {0}: choose one with --event")]
    KindAmbiguous(String),
    #[error("no phase '{name}' in {capture} ({known})")]
    UnknownPhase {
        name: String,
        capture: PathBuf,
        known: String,
    },
    #[error("the time range {0} is empty")]
    EmptyRange(String),
    #[error("the {side} side has no {kind} events in {label}: nothing to compare")]
    EmptySide {
        side: String,
        kind: &'static str,
        label: String,
    },
    #[error("{0} is a folded file: phases, time ranges, --windows and --per-second need captures")]
    NeedsCapture(PathBuf),
    #[error(
        "--fail-above needs significance: to compare two parts of the same captures, cut them \
         into --windows"
    )]
    GateNeedsReplicates,
    #[error(
        "--fail-above cannot judge one run against one: how much runs differ from each other is \
         unknown (windows of a run do not show it); record 2 or more runs per side \
         (BASE1,BASE2 CAND1,CAND2), or gate against a baseline store (bar-probe baseline add)"
    )]
    GateNeedsRuns,
    #[error("--latency compares off-CPU or TCP connect latencies: use --event offcpu or tcp")]
    LatencyNeedsKind,
    #[error("the {0} side has fewer than 2 windows: make --windows shorter than its time range")]
    TooFewWindows(&'static str),
    #[error(
        "--windows would cut the {side} side into {count} windows, more than {max}: use longer windows",
        max = input::MAX_WINDOWS
    )]
    TooManyWindows { side: String, count: u64 },
    #[error("{0}")]
    Baseline(String),
}

/// A baseline store's runs, as the base of a diff.
#[derive(Debug, Clone)]
pub struct History {
    /// The store, for the reader.
    pub label: String,
    pub view: Family,
    /// Whether the runs keep the process name as their root frame.
    pub by_process: bool,
    /// Oldest first.
    pub runs: Vec<RunSummary>,
}

/// Everything `diff` is asked.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Phases of a phase file, used instead of the captures' markers.
    pub phases: Option<Vec<crate::analyze::phases::WallPhase>>,
    pub base: Vec<PathBuf>,
    /// A baseline store's history instead of `base`.
    pub history: Option<History>,
    /// Empty: the base inputs again (two phases or ranges of the same captures).
    pub cand: Vec<PathBuf>,
    pub view: Option<Family>,
    pub base_select: Select,
    pub cand_select: Select,
    pub windows: Option<Duration>,
    pub norm: Norm,
    pub test: TestOptions,
    /// Keep the process name as the root frame whatever the sides' names.
    pub by_process: bool,
    /// Rows of the frame table.
    pub top: usize,
    /// Root-cause paths at most.
    pub paths: usize,
    /// Gate: what it watches and its threshold.
    pub gate: Option<(GateOn, f64)>,
}

/// The gate's decision.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub on: GateOn,
    pub threshold: f64,
    pub offenders: Vec<Offender>,
}

impl Verdict {
    pub fn failed(&self) -> bool {
        !self.offenders.is_empty()
    }
}

/// What `diff` found.
#[derive(Debug)]
pub struct Outcome {
    pub view: Option<Family>,
    pub norm: Norm,
    pub test: TestOptions,
    /// How changes were judged, for the reader.
    pub method: String,
    /// Windows each run was cut into, if any.
    pub windows: Option<Duration>,
    pub base: Side,
    pub cand: Side,
    /// Runs of the baseline store the candidate was judged against.
    pub history_runs: Option<usize>,
    /// Whether stacks were compared below the process name.
    pub below_process: bool,
    /// Every frame, largest change first.
    pub frames: Vec<FrameChange>,
    /// The spread between runs as fitted across the frames, which frames one side lacks
    /// borrow (None with fewer than three runs a side or too few frames).
    pub spread_law: Option<prior::Prior>,
    pub paths: Vec<RootCause>,
    pub latency: Vec<LatencyChange>,
    pub verdict: Option<Verdict>,
    /// Weight in frames that are not code, per side (None for a baseline store).
    pub quality: [Option<Quality>; 2],
    /// Damaged inputs, drifting baselines, data of poor quality.
    pub warnings: Vec<String>,
}

/// How the changes were judged, in words.
fn method(base: &Side, cand: &Side, history: Option<&History>, one_run: OneRun) -> String {
    let (nb, nc) = (base.runs.len(), cand.runs.len());
    match (history, nb, nc) {
        (Some(h), _, _) => format!(
            "{nc} run{} against a baseline of {} runs (moving average, spread from run to run)",
            if nc == 1 { "" } else { "s" },
            h.runs.len()
        ),
        (None, 1, 1) if one_run == OneRun::SameRuns => {
            "windows of the same run on both sides".to_owned()
        }
        (None, 1, 1) => "none: one run per side".to_owned(),
        (None, 1, n) | (None, n, 1) => {
            format!("Student's t, the single run taken to vary as the other side's {n} runs")
        }
        (None, b, c) => format!("Welch's t over runs ({b} against {c})"),
    }
}

/// The inputs of both sides, each read once, and which of them each side uses.
pub struct Inputs {
    files: Vec<Input>,
    base: Vec<usize>,
    cand: Vec<usize>,
}

impl Inputs {
    /// One input both sides read (phases or ranges of one capture, as `report` compares).
    pub fn one(input: Input) -> Self {
        Self {
            files: vec![input],
            base: vec![0],
            cand: vec![0],
        }
    }
}

/// Reads the inputs of both sides, each once even when both sides use it.
fn open_inputs(opts: &DiffOptions) -> Result<Inputs, DiffError> {
    let mut files: Vec<Input> = Vec::new();
    let index = |path: &PathBuf, files: &mut Vec<Input>| -> Result<usize, DiffError> {
        if let Some(i) = files.iter().position(|f| f.path() == path) {
            return Ok(i);
        }
        files.push(Input::open(path)?);
        Ok(files.len() - 1)
    };
    let base_ix = opts
        .base
        .iter()
        .map(|p| index(p, &mut files))
        .collect::<Result<Vec<_>, _>>()?;
    let cand_paths = if opts.cand.is_empty() {
        &opts.base
    } else {
        &opts.cand
    };
    let cand_ix = cand_paths
        .iter()
        .map(|p| index(p, &mut files))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Inputs {
        files,
        base: base_ix,
        cand: cand_ix,
    })
}

/// Reads both sides and compares them.
pub fn diff(opts: &DiffOptions) -> Result<Outcome, DiffError> {
    diff_inputs(opts, &open_inputs(opts)?)
}

/// Compares the sides of inputs already open (`opts.base` and `opts.cand` are not read).
pub fn diff_inputs(opts: &DiffOptions, inputs: &Inputs) -> Result<Outcome, DiffError> {
    let Inputs {
        files,
        base: base_ix,
        cand: cand_ix,
    } = inputs;
    let all: Vec<&Input> = files.iter().collect();
    let view = match &opts.history {
        Some(h) => Some(history_view(h, opts.view, &all)?),
        None => input::choose_view(&all, opts.view)?,
    };
    if let Some((GateOn::Latency, _)) = opts.gate
        && !matches!(view, Some(Family::Offcpu | Family::Tcp))
    {
        return Err(DiffError::LatencyNeedsKind);
    }
    let mut warnings: Vec<String> = files
        .iter()
        .filter_map(|f| match f {
            Input::Capture(c) => c.outline().damage.as_ref().map(|d| {
                format!(
                    "{} is damaged, compared what was valid: {d}",
                    c.path().display()
                )
            }),
            Input::Folded { .. } => None,
        })
        .collect();
    let read = ReadOptions {
        phases: opts.phases.as_deref(),
        view,
        windows: opts.windows,
        norm: opts.norm,
    };
    let pick = |ix: &[usize]| -> Vec<&Input> { ix.iter().map(|&i| &files[i]).collect() };
    let mut cand = input::read_side("candidate", &pick(cand_ix), &opts.cand_select, read)?;
    let mut base = match &opts.history {
        Some(h) => Side {
            label: h.label.clone(),
            pooled: compare::Sample::default(),
            runs: Vec::new(),
            latency: Default::default(),
        },
        None => input::read_side("base", &pick(base_ix), &opts.base_select, read)?,
    };
    if opts.windows.is_some() {
        for (name, side) in [("base", &base), ("candidate", &cand)] {
            if side.runs.iter().any(|r| r.windows.len() < 2) {
                return Err(DiffError::TooFewWindows(name));
            }
        }
    }
    let same_runs = opts.history.is_none() && base_ix == cand_ix;
    let one_run = if same_runs && opts.windows.is_some() {
        OneRun::SameRuns
    } else {
        OneRun::Unknown
    };
    if opts.gate.is_some()
        && opts.history.is_none()
        && base.runs.len() == 1
        && cand.runs.len() == 1
        && one_run != OneRun::SameRuns
    {
        return Err(if same_runs {
            DiffError::GateNeedsReplicates
        } else {
            DiffError::GateNeedsRuns
        });
    }
    let below_process = match &opts.history {
        Some(h) => !h.by_process,
        None => !opts.by_process && frames::below_process(&base.pooled, &cand.pooled),
    };
    if below_process {
        for side in [&mut base, &mut cand] {
            side.pooled.stacks = frames::strip_root(&side.pooled.stacks);
            side.runs.iter_mut().for_each(frames::strip_run);
        }
    }
    if let Some(h) = &opts.history {
        same_workload(h, &cand)?;
        if opts.by_process && !h.by_process {
            warnings.push(format!(
                "{} keeps its runs below the process name: compared that way, not by process",
                h.label
            ));
        }
    }
    warnings.extend(quality_warnings(&base, &cand, opts));
    let mut o = finish(opts, view, base, cand, one_run, warnings)?;
    o.below_process = below_process;
    Ok(o)
}

/// Refuses a candidate that is not the store's workload: its leaf functions and the newest
/// run's share too little of their weight.
fn same_workload(h: &History, cand: &Side) -> Result<(), DiffError> {
    let Some(last) = h.runs.last() else {
        return Ok(());
    };
    let summary = RunSummary::of(&compare::Run {
        whole: cand.pooled.clone(),
        ..Default::default()
    });
    let overlap = summary.leaf_overlap(last);
    if overlap < history::SAME_WORKLOAD {
        return Err(DiffError::Baseline(format!(
            "{} and the baseline {} look like different workloads: only {:.0}% of the \
             candidate's weight is in functions where the baseline's is; compare against a store \
             of this workload",
            cand.label,
            h.label,
            overlap * 100.0
        )));
    }
    Ok(())
}

/// The kind compared against a store: the store's, which the candidate must have.
fn history_view(
    h: &History,
    asked: Option<Family>,
    inputs: &[&Input],
) -> Result<Family, DiffError> {
    let other = |what: &str| {
        DiffError::Baseline(format!(
            "{} is a baseline of {} profiles, not {what}: use a store of that kind",
            h.label,
            h.view.name()
        ))
    };
    if let Some(v) = asked
        && v != h.view
    {
        return Err(other(v.name()));
    }
    match input::choose_view(inputs, Some(h.view)) {
        Err(DiffError::KindMissing { has, .. }) => Err(other(&has)),
        Err(e) => Err(e),
        Ok(_) => Ok(h.view),
    }
}

/// Warns of a side whose weight is much in frames that are not code.
fn quality_warnings(base: &Side, cand: &Side, opts: &DiffOptions) -> Vec<String> {
    let mut out = Vec::new();
    for (name, side) in [("base", base), ("candidate", cand)] {
        if side.runs.is_empty() {
            continue;
        }
        let q = frames::quality(&side.pooled);
        if q.not_code >= opts.test.min_share {
            let kinds: Vec<String> = q
                .kinds
                .iter()
                .map(|(k, f)| format!("{k} {:.1}%", f * 100.0))
                .collect();
            out.push(format!(
                "data quality: {:.1}% of the {name}'s weight is in stacks with frames that are not \
                 code ({}); they are never gate offenders",
                q.not_code * 100.0,
                kinds.join(", ")
            ));
        }
    }
    out
}

/// Compares the sides once read.
fn finish(
    opts: &DiffOptions,
    view: Option<Family>,
    base: Side,
    cand: Side,
    one_run: OneRun,
    mut warnings: Vec<String>,
) -> Result<Outcome, DiffError> {
    let base_src = match &opts.history {
        Some(h) => Base::History(&h.runs),
        None => Base::Runs(&base.runs),
    };
    let (frames, spread_law) =
        compare::compare_frames_with_law(base_src, &cand.runs, opts.norm, opts.test, one_run);
    let paths = if opts.history.is_some() {
        Vec::new()
    } else {
        paths::root_causes(&base.pooled, &cand.pooled, opts.norm, opts.paths)
    };
    let latency = latency::compare_latency(
        base_src,
        &base.latency,
        &cand.runs,
        &cand.latency,
        opts.test.alpha,
    );
    if let Some(h) = &opts.history {
        warnings.extend(drift_warnings(h, opts.norm, &frames));
    }
    let verdict = opts.gate.map(|(on, threshold)| Verdict {
        on,
        threshold,
        offenders: match on {
            GateOn::Frames => gate::frames(threshold, opts.norm, &frames, opts.test.alpha),
            GateOn::Latency => gate::latency(threshold, &latency, opts.test.alpha),
        },
    });
    let quality = [
        (!base.runs.is_empty()).then(|| frames::quality(&base.pooled)),
        Some(frames::quality(&cand.pooled)),
    ];
    Ok(Outcome {
        view,
        norm: opts.norm,
        test: opts.test,
        method: method(&base, &cand, opts.history.as_ref(), one_run),
        windows: opts.windows,
        history_runs: opts.history.as_ref().map(|h| h.runs.len()),
        below_process: false,
        base,
        cand,
        frames,
        spread_law,
        paths,
        latency,
        verdict,
        quality,
        warnings,
    })
}

/// Frames of the comparison whose baseline moved by more than `DRIFT_SPREADS` spreads over
/// the runs it keeps.
fn drift_warnings(h: &History, norm: Norm, frames: &[FrameChange]) -> Vec<String> {
    frames
        .iter()
        .filter(|c| c.effect.is_some())
        .filter_map(|c| {
            let b = history::frame_baseline(&h.runs, &c.frame, norm)?;
            b.drifted().then(|| {
                format!(
                    "the baseline of {} drifted by {:+.1} spreads over its {} runs: a change \
                     may have landed before this candidate",
                    c.frame,
                    b.drift,
                    h.runs.len()
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
