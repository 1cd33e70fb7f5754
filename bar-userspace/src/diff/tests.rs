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
        inlined: false,
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
        history: None,
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
        by_process: false,
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
    assert_eq!(o.base.runs.len(), 1);
    assert_eq!(o.base.runs[0].windows.len(), 10);
    assert_eq!(o.cand.runs[0].windows.len(), 10);
    assert_eq!(o.method, "windows of the same run on both sides");
    assert!(o.below_process, "one process on each side");
    let render = o.frames.iter().find(|c| c.frame == "render").unwrap();
    assert_eq!(render.status, compare::Status::Grew);
    assert!((render.cand.total - 0.9).abs() < 1e-12);
    // Every window of B has 90 % in render, every window of A none: only sampling varies.
    assert!(render.p.unwrap() < 1e-100, "{render:?}");
    let parse = o.frames.iter().find(|c| c.frame == "parse").unwrap();
    assert_eq!(parse.status, compare::Status::Shrank);
    let verdict = o.verdict.as_ref().unwrap();
    assert_eq!(verdict.offenders.len(), 1);
    assert_eq!(verdict.offenders[0].name, "render");
    assert!((verdict.offenders[0].growth - 90.0).abs() < 1e-9);
    let grew = o.paths.iter().find(|p| p.delta > 0.0).unwrap();
    assert_eq!(grew.path, ["main", "render"]);
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
    let dir = crate::sys::files::Dir::create(&path.with_extension("out")).unwrap();
    let written = output::write_files(&o, &dir).unwrap();
    assert_eq!(written.len(), 4);
    let folded = std::fs::read_to_string(dir.join("diff.folded")).unwrap();
    // Base scaled to the candidate's total (both 1000 here): before and after columns.
    assert!(folded.contains("main;parse 1000 100"), "{folded}");
    assert!(folded.contains("main;render 0 900"), "{folded}");
    assert!(
        !folded.contains("app;"),
        "compared below the process: {folded}"
    );
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
