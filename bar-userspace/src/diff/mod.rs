//! Diff: two profiles in (captures, phases or time ranges of captures, folded files), what
//! changed out: per-frame changes of normalized weight with a significance test each, the
//! paths that explain most of the change, latency shifts, and a gate for CI. `input` reads
//! the sides, `compare` decides, `output` writes the flame graphs, table and JSON.

pub mod compare;
pub mod input;
pub mod output;

use std::{path::PathBuf, time::Duration};

use self::{
    compare::{FrameChange, GateOn, LatencyChange, Norm, Offender, RootCause, TestOptions},
    input::{Input, ReadOptions, Select, Side},
};
use bar_ebpf_common::Family;

use crate::capture::CaptureError;

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Phases(#[from] crate::phases::PhaseError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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
        "--fail-above needs significance: give several inputs per side (BASE1,BASE2,... \
         CAND1,CAND2,...) or cut captures into --windows"
    )]
    GateNeedsReplicates,
    #[error("--latency compares off-CPU or TCP connect latencies: use --event offcpu or tcp")]
    LatencyNeedsKind,
    #[error("the {0} side has fewer than 2 windows: make --windows shorter than its time range")]
    TooFewWindows(&'static str),
}

/// Everything `diff` is asked.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Phases of a phase file, used instead of the captures' markers.
    pub phases: Option<Vec<crate::phases::WallPhase>>,
    pub base: Vec<PathBuf>,
    /// Empty: the base inputs again (two phases or ranges of the same captures).
    pub cand: Vec<PathBuf>,
    pub view: Option<Family>,
    pub base_select: Select,
    pub cand_select: Select,
    pub windows: Option<Duration>,
    pub norm: Norm,
    pub test: TestOptions,
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
    /// How replicates were made, for the reader ("windows of 250ms", "captures").
    pub replicates: String,
    pub base: Side,
    pub cand: Side,
    /// Every frame, largest change first.
    pub frames: Vec<FrameChange>,
    pub paths: Vec<RootCause>,
    pub latency: Vec<LatencyChange>,
    pub verdict: Option<Verdict>,
    /// Damaged inputs, compared up to their damage.
    pub warnings: Vec<String>,
}

/// Reads both sides and compares them.
pub fn diff(opts: &DiffOptions) -> Result<Outcome, DiffError> {
    // Each file is read once even when both sides use it (two phases of one capture).
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
    let all: Vec<&Input> = files.iter().collect();
    let view = input::choose_view(&all, opts.view)?;
    if let Some((GateOn::Latency, _)) = opts.gate
        && !matches!(view, Some(Family::Offcpu | Family::Tcp))
    {
        return Err(DiffError::LatencyNeedsKind);
    }
    let replicated = opts.windows.is_some() || (base_ix.len() >= 2 && cand_ix.len() >= 2);
    if let Some((GateOn::Frames, _)) = opts.gate
        && !replicated
    {
        return Err(DiffError::GateNeedsReplicates);
    }
    let warnings = files
        .iter()
        .filter_map(|f| match f {
            Input::Capture { path, outline, .. } => outline.damage.as_ref().map(|d| {
                format!(
                    "{} is damaged, compared what was valid: {d}",
                    path.display()
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
    let base = input::read_side("base", &pick(&base_ix), &opts.base_select, read)?;
    let cand = input::read_side("candidate", &pick(&cand_ix), &opts.cand_select, read)?;
    if opts.windows.is_some() {
        for (name, side) in [("base", &base), ("candidate", &cand)] {
            if side.replicates.len() < 2 {
                return Err(DiffError::TooFewWindows(name));
            }
        }
    }
    let frames = compare::compare_frames(
        &base.pooled,
        &cand.pooled,
        &base.replicates,
        &cand.replicates,
        opts.norm,
        opts.test,
    );
    let paths = compare::root_causes(&base.pooled, &cand.pooled, opts.norm, opts.paths);
    let latency = compare::compare_latency(&base.latency, &cand.latency, opts.test.alpha);
    let verdict = opts.gate.map(|(on, threshold)| Verdict {
        on,
        threshold,
        offenders: compare::gate(on, threshold, opts.norm, &frames, &latency),
    });
    let replicates = match opts.windows {
        Some(w) => format!("windows of {}", humantime::format_duration(w)),
        None if replicated => "inputs".to_owned(),
        None => "none".to_owned(),
    };
    Ok(Outcome {
        view,
        norm: opts.norm,
        test: opts.test,
        replicates,
        base,
        cand,
        frames,
        paths,
        latency,
        verdict,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Body, Writer, proto};

    const SEC: u64 = 1_000_000_000;

    /// A capture of 2 s in which the first second (phase A) is spent in `parse` and the
    /// second (phase B) mostly in `render`, at 1 kHz, with markers as `bar-probe mark` writes
    /// them.
    fn two_phase_capture(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bar-diff-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let meta = proto::Meta {
            bar_version: "test".into(),
            start_ns: SEC,
            families: vec![proto::FamilyStatus {
                name: "cpu".into(),
                method: "perf_event:cpu-clock".into(),
                rejected: vec![],
            }],
            ..Default::default()
        };
        let mut w = Writer::create(&path, meta).unwrap();
        w.write(Body::Processes(proto::Processes {
            processes: vec![proto::Process {
                pid: 9,
                comm: "app".into(),
                since_ns: 0,
                ..Default::default()
            }],
        }))
        .unwrap();
        let frame = |n: &str| proto::Frame {
            name: n.into(),
            module: "/app".into(),
            kernel: false,
        };
        w.write(Body::Frames(proto::Frames {
            frames: vec![frame("main"), frame("parse"), frame("render")],
        }))
        .unwrap();
        w.write(Body::Stacks(proto::Stacks {
            stacks: vec![
                proto::Stack { frames: vec![0, 1] },
                proto::Stack { frames: vec![0, 2] },
            ],
        }))
        .unwrap();
        let events = |from: u64, stack_of: &dyn Fn(u64) -> u32| proto::Events {
            events: (0..1000)
                .map(|i| proto::Event {
                    ts: from + i * 1_000_000,
                    kind: bar_ebpf_common::kind::CPU,
                    pid: 9,
                    tid: 9,
                    stack: stack_of(i),
                    ..Default::default()
                })
                .collect(),
        };
        let marker = |name: &str, ts| {
            Body::Marker(proto::Marker {
                name: name.into(),
                ts,
                end: false,
            })
        };
        w.write(marker("A", SEC)).unwrap();
        w.write(Body::Events(events(SEC, &|_| 1))).unwrap();
        w.write(marker("B", 2 * SEC)).unwrap();
        // One sample in ten stays in parse during B.
        w.write(Body::Events(events(2 * SEC, &|i| {
            if i % 10 == 0 { 1 } else { 2 }
        })))
        .unwrap();
        w.finish(proto::Trailer {
            end_ns: 3 * SEC,
            events: 2000,
            stop_reason: "duration".into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn options(path: &std::path::Path) -> DiffOptions {
        DiffOptions {
            phases: None,
            base: vec![path.to_path_buf()],
            cand: vec![],
            view: None,
            base_select: Select::Phase("A".into()),
            cand_select: Select::Phase("B".into()),
            windows: Some(Duration::from_millis(100)),
            norm: Norm::Share,
            test: TestOptions {
                alpha: 0.05,
                min_share: 0.005,
            },
            top: 10,
            paths: 5,
            gate: Some((GateOn::Frames, 5.0)),
        }
    }

    #[test]
    fn phases_of_one_capture_are_diffed_tested_and_gated() {
        let path = two_phase_capture("phases.bar");
        let o = diff(&options(&path)).unwrap();
        assert_eq!(o.view, Some(Family::Cpu));
        assert_eq!(o.base.pooled.weight(), 1000);
        assert_eq!(o.base.replicates.len(), 10);
        assert_eq!(o.cand.replicates.len(), 10);
        let render = o.frames.iter().find(|c| c.frame == "render").unwrap();
        assert_eq!(render.status, compare::Status::Grew);
        assert!((render.cand.total - 0.9).abs() < 1e-12);
        // Separated 10 against 10: 2 / C(20, 10), tested with main and parse.
        assert!((render.p.unwrap() - 2.0 / 184_756.0).abs() < 1e-15);
        let parse = o.frames.iter().find(|c| c.frame == "parse").unwrap();
        assert_eq!(parse.status, compare::Status::Shrank);
        let verdict = o.verdict.as_ref().unwrap();
        assert_eq!(verdict.offenders.len(), 1);
        assert_eq!(verdict.offenders[0].name, "render");
        assert!((verdict.offenders[0].growth - 90.0).abs() < 1e-9);
        let grew = o.paths.iter().find(|p| p.delta > 0.0).unwrap();
        assert_eq!(grew.path, ["app", "main", "render"]);
        assert!((grew.share_of_change - 0.5).abs() < 1e-12);
        // The threshold is a threshold: 90 points is not more than 90.
        let mut high = options(&path);
        high.gate = Some((GateOn::Frames, 90.0));
        assert!(!diff(&high).unwrap().verdict.unwrap().failed());
    }

    #[test]
    fn outputs_are_written_and_name_the_frames() {
        let path = two_phase_capture("outputs.bar");
        let o = diff(&options(&path)).unwrap();
        let dir = path.with_extension("out");
        let written = output::write_files(&o, &dir).unwrap();
        assert_eq!(written.len(), 4);
        let folded = std::fs::read_to_string(dir.join("diff.folded")).unwrap();
        // Base scaled to the candidate's total (both 1000 here): before and after columns.
        assert!(folded.contains("app;main;parse 1000 100"), "{folded}");
        assert!(folded.contains("app;main;render 0 900"), "{folded}");
        let svg = std::fs::read_to_string(dir.join("diff.svg")).unwrap();
        assert!(svg.contains("render"));
        let json = output::to_json(&o);
        assert_eq!(json["gate"]["failed"], true);
        // parse (-90) and render (+90) change as much; equal changes sort by name.
        assert_eq!(json["frames"][0]["frame"], "parse");
        assert_eq!(json["frames"][1]["frame"], "render");
        assert_eq!(json["frames"][1]["status"], "grew");
        assert_eq!(json["frames"][1]["total"]["change"], 90.0);
        let table = output::table(&o, 5);
        assert!(table.contains("gate: FAILED"), "{table}");
    }

    #[test]
    fn bad_requests_are_one_clear_error() {
        let path = two_phase_capture("errors.bar");
        let mut o = options(&path);
        o.cand_select = Select::Phase("C".into());
        let e = diff(&o).unwrap_err().to_string();
        assert!(
            e.contains("no phase 'C'") && e.contains("it has A, B"),
            "{e}"
        );
        let mut o = options(&path);
        o.view = Some(Family::Offcpu);
        let e = diff(&o).unwrap_err().to_string();
        assert!(e.contains("has no offcpu events (it has cpu)"), "{e}");
        let mut o = options(&path);
        o.windows = None;
        assert!(matches!(diff(&o), Err(DiffError::GateNeedsReplicates)));
        let mut o = options(&path);
        o.gate = Some((GateOn::Latency, 5.0));
        assert!(matches!(diff(&o), Err(DiffError::LatencyNeedsKind)));
        let mut o = options(&path);
        o.cand_select = Select::Range("10s..".parse().unwrap());
        let e = diff(&o).unwrap_err().to_string();
        assert!(e.contains("the time range 10s.. is empty"), "{e}");
        let mut o = options(&path);
        // After the last sample (at 1.999 s from the start) and before the end.
        o.cand_select = Select::Range("1999500us..".parse().unwrap());
        let e = diff(&o).unwrap_err().to_string();
        assert!(e.contains("the candidate side has no cpu events in"), "{e}");
    }
}
