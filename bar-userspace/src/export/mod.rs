//! Export: one kind of a capture's events as a file other tools read (pprof's `profile.proto`).
//! It starts from the aggregated `Profile` that `report` renders, so frame names and leaf
//! annotations are those of the folded files, then reads the capture's events once more for
//! what folding leaves out: the thread, the phase and exact values.

pub mod pprof;
pub mod pprof_proto;

use bar_ebpf_common::Family;
use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
};

use crate::{
    analyze::{self, Profile, count},
    capture::Damage,
    sys::files::Dir,
};

/// Output formats of `bar-probe export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// gzipped profile.proto: go tool pprof, Pyroscope, Parca.
    Pprof,
}

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub capture: PathBuf,
    pub format: Format,
    /// The kind to export; `None` picks cpu, and fails when the capture has none.
    pub kind: Option<Family>,
    /// Output file; `None` writes `<kind>.pb.gz` next to the capture.
    pub output: Option<PathBuf>,
}

/// What `export` wrote.
#[derive(Debug)]
pub struct Exported {
    pub path: PathBuf,
    pub view: Family,
    pub events: u64,
    pub samples: usize,
    /// Set when the capture was damaged: the export holds what came before the damage.
    pub damage: Option<Damage>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path} has no {kind} events; it has {available}")]
    KindMissing {
        path: PathBuf,
        kind: &'static str,
        available: String,
    },
    #[error("{path} has no cpu samples; choose what to export with --event: {available}")]
    NoDefault { path: PathBuf, available: String },
    #[error("{0} has no events to export")]
    Empty(PathBuf),
    #[error("{0} changed while it was being read; export it again once it is complete")]
    Changed(PathBuf),
    /// The cause is the error's source, which the command line prints after this message.
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// Views a capture can export (those `report` renders) and their event counts.
pub fn kinds(profile: &Profile) -> Vec<(Family, u64)> {
    profile
        .recorded_views()
        .into_iter()
        .map(|v| (v, profile.views.get(&v).map_or(0, |a| a.events)))
        .collect()
}

/// The view to export: the one asked for, else cpu.
pub fn choose(
    profile: &Profile,
    asked: Option<Family>,
    path: &Path,
) -> Result<Family, ExportError> {
    let kinds = kinds(profile);
    if kinds.is_empty() {
        return Err(ExportError::Empty(path.to_owned()));
    }
    let available = kinds.iter().fold(String::new(), |mut s, (v, n)| {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let plural = if *n == 1 { "" } else { "s" };
        let _ = write!(s, "{} ({n} event{plural})", v.name());
        s
    });
    let want = asked.unwrap_or(Family::Cpu);
    if kinds.iter().any(|(v, _)| *v == want) {
        return Ok(want);
    }
    Err(match asked {
        Some(v) => ExportError::KindMissing {
            path: path.to_owned(),
            kind: v.name(),
            available,
        },
        None => ExportError::NoDefault {
            path: path.to_owned(),
            available,
        },
    })
}

/// Exports one kind of a capture.
pub fn export(opts: &ExportOptions) -> anyhow::Result<Exported> {
    let capture = &opts.capture;
    let (opened, profile) = analyze::load(capture, None)?;
    let view = choose(&profile, opts.kind, capture)?;
    let path = opts.output.clone().unwrap_or_else(|| {
        capture
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(format!("{}.pb.gz", view.name()))
    });
    // The aggregated profile keeps no per-event detail, so the events are read again. Taking
    // exactly as many as the aggregation saw keeps both passes on the same events, even for a
    // capture that is still being written.
    let expected = profile.views.get(&view).map_or(0, |a| a.events);
    let mut seen = 0u64;
    let events = opened
        .events()
        .filter(|ev| Family::of_kind(ev.kind) == Some(view))
        .scan(0u64, |taken, ev| {
            (*taken < expected).then(|| {
                *taken += count(&ev);
                ev
            })
        })
        .inspect(|ev| seen += count(ev));
    let built = match opts.format {
        Format::Pprof => pprof::build(&profile, view, events),
    };
    if seen != expected {
        return Err(ExportError::Changed(capture.clone()).into());
    }
    Dir::of_file(&path)
        .and_then(|(dir, name)| dir.write_atomic(&name, |w| pprof::write_gz(&built, w)))
        .map_err(|source| ExportError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(Exported {
        path,
        view,
        events: expected,
        samples: built.sample.len(),
        damage: profile.damage.clone(),
    })
}

#[cfg(test)]
mod tests {
    use bar_ebpf_common::kind;
    use prost::Message as _;

    use super::*;
    use crate::capture::{Body, Writer, proto};

    fn marker(name: &str, ts: u64, end: bool) -> proto::Marker {
        proto::Marker {
            name: name.into(),
            ts,
            end,
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bar-export-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A small complete capture: cpu samples in two phases and one off-CPU interval.
    fn capture(dir: &Path) -> PathBuf {
        let meta = proto::Meta {
            bar_version: "0.1.0".into(),
            frequency: 99,
            families: vec![
                proto::FamilyStatus {
                    name: "cpu".into(),
                    method: "perf_event:cpu-clock".into(),
                    rejected: vec![],
                },
                proto::FamilyStatus {
                    name: "offcpu".into(),
                    method: "tp_btf:sched_switch".into(),
                    rejected: vec![],
                },
            ],
            ..Default::default()
        };
        let mut w = Writer::create(&dir.join("capture.bar"), meta).unwrap();
        w.write(Body::Processes(proto::Processes {
            processes: vec![proto::Process {
                pid: 7,
                comm: "app".into(),
                since_ns: 0,
                ..Default::default()
            }],
        }))
        .unwrap();
        w.write(Body::Frames(proto::Frames {
            frames: vec![
                proto::Frame {
                    name: "main".into(),
                    module: "/bin/app".into(),
                    kernel: false,
                    inlined: false,
                },
                proto::Frame {
                    name: "hot".into(),
                    module: "/bin/app".into(),
                    kernel: false,
                    inlined: false,
                },
            ],
        }))
        .unwrap();
        w.write(Body::Stacks(proto::Stacks {
            stacks: vec![proto::Stack { frames: vec![0, 1] }],
        }))
        .unwrap();
        w.write(Body::Marker(marker("warmup", 0, false))).unwrap();
        let ev = |ts, kind, detail| proto::Event {
            ts,
            kind,
            pid: 7,
            tid: 7,
            stack: 1,
            cpu: 0,
            count: 0,
            detail,
        };
        let mut events: Vec<proto::Event> = (0..30).map(|i| ev(i, kind::CPU, None)).collect();
        events.push(ev(
            5,
            kind::OFFCPU,
            Some(proto::event::Detail::Offcpu(proto::OffCpu {
                blocked_ns: 1_234_567,
                reason: 1,
                state: 1,
            })),
        ));
        w.write(Body::Events(proto::Events { events })).unwrap();
        // The marker block comes after events it precedes in time, as it may in a recording.
        w.write(Body::Marker(marker("steady", 20, false))).unwrap();
        w.finish(proto::Trailer {
            end_ns: 1_000,
            events: 31,
            stop_reason: "duration".into(),
            ..Default::default()
        })
        .unwrap()
    }

    fn read_pprof(path: &Path) -> pprof_proto::Profile {
        let gz = std::fs::read(path).unwrap();
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
        pprof_proto::Profile::decode(&raw[..]).unwrap()
    }

    fn opts(capture: &Path, kind: Option<Family>, output: Option<PathBuf>) -> ExportOptions {
        ExportOptions {
            capture: capture.to_owned(),
            format: Format::Pprof,
            kind,
            output,
        }
    }

    #[test]
    fn exports_cpu_by_default_next_to_the_capture() {
        let dir = tempdir("default");
        let cap = capture(&dir);
        let done = export(&opts(&cap, None, None)).unwrap();
        assert_eq!(done.view, Family::Cpu);
        assert_eq!(done.path, dir.join("cpu.pb.gz"));
        assert_eq!(done.events, 30);
        assert!(done.damage.is_none());
        let p = read_pprof(&done.path);
        let phase_of = |s: &pprof_proto::Sample| {
            s.label
                .iter()
                .find(|l| p.string_table[l.key as usize] == "phase")
                .map(|l| p.string_table[l.str as usize].clone())
        };
        let mut by_phase: Vec<(Option<String>, i64)> =
            p.sample.iter().map(|s| (phase_of(s), s.value[0])).collect();
        by_phase.sort();
        assert_eq!(
            by_phase,
            [(Some("steady".into()), 10), (Some("warmup".into()), 20)]
        );
        // Nothing half-written is left.
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn exports_the_asked_kind_and_refuses_missing_ones() {
        let dir = tempdir("kinds");
        let cap = capture(&dir);
        let out = dir.join("off.pb.gz");
        let done = export(&opts(&cap, Some(Family::Offcpu), Some(out.clone()))).unwrap();
        assert_eq!(done.path, out);
        let p = read_pprof(&out);
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value, [1, 1_234_567]);

        let err = export(&opts(&cap, Some(Family::Tcp), None)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("has no tcp events"), "{msg}");
        assert!(
            msg.contains("cpu (30 events), offcpu (1 event)"),
            "names what there is: {msg}"
        );
    }

    #[test]
    fn a_damaged_capture_exports_what_was_valid() {
        let dir = tempdir("damaged");
        let data = std::fs::read(capture(&dir)).unwrap();
        // Cut inside the trailer: every event block is intact.
        let cut = dir.join("cut.bar");
        std::fs::write(&cut, &data[..data.len() - 3]).unwrap();
        let done = export(&opts(&cut, None, None)).unwrap();
        assert!(done.damage.is_some());
        assert_eq!(done.events, 30);
        let p = read_pprof(&done.path);
        assert!(
            p.comment
                .iter()
                .any(|&c| p.string_table[c as usize].starts_with("damaged capture"))
        );
    }

    #[test]
    fn unwritable_output_is_an_error_naming_the_file() {
        let dir = tempdir("unwritable");
        let cap = capture(&dir);
        let out = dir.join("no-such-dir/cpu.pb.gz");
        let err = export(&opts(&cap, None, Some(out.clone()))).unwrap_err();
        // As the command line prints it: the message, then its cause, once.
        let line = format!("{err:#}");
        assert_eq!(
            line,
            format!(
                "cannot write {}: No such file or directory (os error 2)",
                out.display()
            )
        );
    }

    #[test]
    fn no_cpu_and_no_event_asks_for_a_kind() {
        let mut p = Profile::default();
        p.add_block(Body::Events(proto::Events {
            events: vec![proto::Event {
                kind: kind::FAULT,
                ..Default::default()
            }],
        }));
        let err = choose(&p, None, Path::new("c.bar")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.bar has no cpu samples; choose what to export with --event: faults (1 event)"
        );
        let err = choose(&Profile::default(), None, Path::new("c.bar")).unwrap_err();
        assert!(matches!(err, ExportError::Empty(_)));
    }
}
