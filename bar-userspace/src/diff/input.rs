//! The inputs of `diff`: captures (whole, a phase, a time range, cut into windows) and folded
//! files, read into the samples `compare` works on. The unit is a time range of a capture:
//! phases, ranges and windows all become lists of `[start, end)` in the capture's monotonic
//! clock, aggregated in one pass by `Capture::sliced`.

use bar_ebpf_common::Family;
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use hdrhistogram::Histogram;

use super::{
    DiffError,
    compare::{Folded, Norm, Run, Sample},
};
use crate::{
    analyze::{
        Capture, Outline, Slice, ViewAgg,
        phases::{self, Phase, WallPhase},
    },
    capture,
};

/// The time ranges of phase `name`: every time it happened (a name marked again is numbered
/// `name#2`, `name#3`... by the phases module); an unknown name is an error that lists the
/// known ones.
pub fn phase_ranges(
    phases: &[Phase],
    name: &str,
    source: &Path,
) -> Result<Vec<(u64, u64)>, DiffError> {
    let base = |n: &str| n.split_once('#').map_or(n, |(b, _)| b).to_owned();
    let ranges: Vec<(u64, u64)> = phases
        .iter()
        .filter(|p| p.name == name || base(&p.name) == name)
        .map(|p| (p.start_ns, p.end_ns))
        .collect();
    if ranges.is_empty() {
        let known: BTreeSet<String> = phases.iter().map(|p| base(&p.name)).collect();
        return Err(DiffError::UnknownPhase {
            name: name.to_owned(),
            capture: source.to_owned(),
            known: if known.is_empty() {
                "it has no phase markers".to_owned()
            } else {
                format!(
                    "it has {}",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                )
            },
        });
    }
    Ok(ranges)
}

/// A point in a capture's time: an offset from its start, or a wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimePoint {
    Offset(Duration),
    Wall(jiff::Timestamp),
}

/// `START..END`, either end left out for the capture's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeRange {
    pub start: Option<TimePoint>,
    pub end: Option<TimePoint>,
}

impl std::str::FromStr for TimeRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "'{s}' is not a time range START..END (offsets from the capture's start like 2s \
                 or 1500ms, or RFC 3339 times; either end may be left out)"
            )
        };
        let (a, b) = s.split_once("..").ok_or_else(bad)?;
        let point = |p: &str| -> Result<Option<TimePoint>, String> {
            let p = p.trim();
            if p.is_empty() {
                return Ok(None);
            }
            if let Ok(d) = humantime::parse_duration(p) {
                return Ok(Some(TimePoint::Offset(d)));
            }
            p.parse::<jiff::Timestamp>()
                .map(|t| Some(TimePoint::Wall(t)))
                .map_err(|_| bad())
        };
        Ok(Self {
            start: point(a)?,
            end: point(b)?,
        })
    }
}

impl std::fmt::Display for TimeRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |p: &Option<TimePoint>| match p {
            None => String::new(),
            Some(TimePoint::Offset(d)) => humantime::format_duration(*d).to_string(),
            Some(TimePoint::Wall(t)) => t.to_string(),
        };
        write!(f, "{}..{}", show(&self.start), show(&self.end))
    }
}

/// Which part of each capture of a side is compared.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    Whole,
    Phase(String),
    Range(TimeRange),
}

impl std::fmt::Display for Select {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Whole => Ok(()),
            Self::Phase(p) => write!(f, " [phase {p}]"),
            Self::Range(r) => write!(f, " [{r}]"),
        }
    }
}

/// One side as read: the pooled sample (flame graph, root-cause paths), its runs (one per
/// input, the unit of the significance tests) and its latency distributions pooled (by name, in
/// microseconds).
#[derive(Debug)]
pub struct Side {
    pub label: String,
    pub pooled: Sample,
    pub runs: Vec<Run>,
    pub latency: BTreeMap<String, Histogram<u64>>,
}

/// An input file, opened and recognized.
pub enum Input {
    // Boxed: the metadata is large next to a folded file's map.
    Capture(Box<Capture>),
    Folded { path: PathBuf, stacks: Folded },
}

impl Input {
    pub fn open(path: &Path) -> Result<Self, DiffError> {
        if path.is_dir() {
            return Err(DiffError::NotAStore(path.to_owned()));
        }
        let data = std::fs::read(path).map_err(|error| DiffError::Read {
            path: path.to_owned(),
            error,
        })?;
        if data.starts_with(capture::MAGIC) {
            let capture = Capture::from_bytes(data, path)?.require_meta()?;
            return Ok(Self::Capture(Box::new(capture)));
        }
        let stacks = parse_folded(&data, path)?;
        Ok(Self::Folded {
            path: path.to_owned(),
            stacks,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Self::Capture(c) => c.path(),
            Self::Folded { path, .. } => path,
        }
    }

    /// The kinds this input can be compared as; None when any (a folded file whose name does
    /// not say).
    pub fn kinds(&self) -> Option<BTreeSet<Family>> {
        match self {
            Self::Capture(c) => Some(c.outline().families.clone()),
            Self::Folded { path, .. } => path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(Family::from_name)
                .map(|v| BTreeSet::from([v])),
        }
    }
}

/// Reads folded stacks (`frame;frame;... weight` per line, blank lines ignored).
pub fn parse_folded(data: &[u8], path: &Path) -> Result<Folded, DiffError> {
    let not = |line: usize, why: &str| DiffError::NotAProfile {
        path: path.to_owned(),
        why: format!("line {line} {why}"),
    };
    let text = std::str::from_utf8(data).map_err(|_| DiffError::NotAProfile {
        path: path.to_owned(),
        why: "it is not text".to_owned(),
    })?;
    let mut stacks = Folded::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let (stack, weight) = line
            .rsplit_once(' ')
            .ok_or_else(|| not(i + 1, "is not `stack weight`"))?;
        let w: u64 = weight
            .parse()
            .map_err(|_| not(i + 1, "does not end in an integer weight"))?;
        *stacks.entry(stack.to_owned()).or_default() += w;
    }
    Ok(stacks)
}

/// Picks the kind to compare: the one asked for, or the one all inputs share (on-CPU first
/// when they share several); None when no input says.
pub fn choose_view(inputs: &[&Input], asked: Option<Family>) -> Result<Option<Family>, DiffError> {
    let mut common: Option<BTreeSet<Family>> = None;
    for input in inputs {
        let Some(kinds) = input.kinds() else { continue };
        if let Some(v) = asked
            && !kinds.contains(&v)
        {
            return Err(DiffError::KindMissing {
                path: input.path().to_owned(),
                kind: v.name(),
                has: names(&kinds),
            });
        }
        common = Some(match common {
            None => kinds,
            Some(c) => c.intersection(&kinds).copied().collect(),
        });
    }
    if asked.is_some() {
        return Ok(asked);
    }
    let Some(common) = common else {
        return Ok(None);
    };
    if common.contains(&Family::Cpu) || common.len() == 1 {
        return Ok(common
            .iter()
            .copied()
            .find(|v| *v == Family::Cpu)
            .or(common.first().copied()));
    }
    let paths: Vec<String> = inputs
        .iter()
        .map(|i| i.path().display().to_string())
        .collect();
    if common.is_empty() {
        return Err(DiffError::KindMismatch(paths.join(", ")));
    }
    Err(DiffError::KindAmbiguous(names(&common)))
}

fn names(kinds: &BTreeSet<Family>) -> String {
    if kinds.is_empty() {
        return "nothing".to_owned();
    }
    kinds
        .iter()
        .map(|v| v.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// How a side's inputs are read.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions<'a> {
    /// Phases of a phase file, used instead of the captures' markers.
    pub phases: Option<&'a [WallPhase]>,
    pub view: Option<Family>,
    /// Cut each compared range into windows of this length, each one replicate.
    pub windows: Option<Duration>,
    pub norm: Norm,
}

/// Ranges of a capture a selection stands for.
fn ranges(
    outline: &Outline,
    select: &Select,
    path: &Path,
    file_phases: Option<&[WallPhase]>,
) -> Result<Vec<(u64, u64)>, DiffError> {
    let start = outline.meta.start_ns;
    let end = outline.range_end();
    match select {
        Select::Whole => Ok(vec![(start, end)]),
        Select::Phase(name) => {
            let offset = outline.meta.monotonic_to_realtime_ns;
            let list = match file_phases {
                Some(fp) => phases::fit_wall(fp, offset, start, end)?.0,
                None => phases::from_markers(&outline.markers, end),
            };
            phase_ranges(&list, name, path)
        }
        Select::Range(r) => {
            let at = |p: Option<TimePoint>, default: u64| match p {
                None => default,
                Some(TimePoint::Offset(d)) => start.saturating_add(d.as_nanos() as u64),
                Some(TimePoint::Wall(t)) => {
                    let mono =
                        t.as_nanosecond() - i128::from(outline.meta.monotonic_to_realtime_ns);
                    mono.clamp(0, i128::from(u64::MAX)) as u64
                }
            };
            let (a, b) = (at(r.start, start), at(r.end, end));
            if a >= b {
                return Err(DiffError::EmptyRange(r.to_string()));
            }
            Ok(vec![(a, b)])
        }
    }
}

/// The most windows one side is cut into: each is a slice every event is checked against, and
/// a significance test has nothing to gain from more.
pub const MAX_WINDOWS: u64 = 10_000;

/// Windows of `len` over a range; a last window shorter than half of `len` is left out, as
/// too short to say much next to the others.
fn windows(range: (u64, u64), len: Duration) -> Vec<(u64, u64)> {
    let len = (len.as_nanos() as u64).max(1);
    let mut out = Vec::new();
    let mut at = range.0;
    while at < range.1 {
        let end = at.saturating_add(len).min(range.1);
        if (end - at) * 2 >= len {
            out.push((at, end));
        }
        at = end;
    }
    out
}

fn seconds(range: (u64, u64)) -> f64 {
    (range.1 - range.0) as f64 / 1e9
}

/// Adds a sample's stacks and seconds into another.
fn merge(into: &mut Sample, s: &Sample) {
    for (k, w) in &s.stacks {
        *into.stacks.entry(k.clone()).or_default() += w;
    }
    // Unknown as soon as one part is (a folded file).
    into.seconds = into.seconds.zip(s.seconds).map(|(a, b)| a + b);
}

/// Adds a latency distribution into the one of that name.
fn add_histogram(into: &mut BTreeMap<String, Histogram<u64>>, name: String, h: &Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    let e = into
        .entry(name)
        .or_insert_with(crate::analyze::new_histogram);
    // Same bounds on both sides: adding cannot fail.
    let _ = e.add(h);
}

/// Latency distributions of an aggregate, by name.
fn latencies(agg: &ViewAgg, into: &mut BTreeMap<String, Histogram<u64>>) {
    let mut add = |name: String, h: &Histogram<u64>| add_histogram(into, name, h);
    add("off-CPU blocked".to_owned(), &agg.blocked_us);
    add("off-CPU preempted".to_owned(), &agg.preempted_us);
    for (dest, d) in &agg.tcp {
        add("connect (all)".to_owned(), &d.latency_us);
        add(format!("connect {dest}"), &d.latency_us);
    }
}

/// Reads one side: every input restricted to `select` is one run (cut into windows when
/// asked), and all of them pooled.
pub fn read_side(
    name: &str,
    inputs: &[&Input],
    select: &Select,
    opts: ReadOptions<'_>,
) -> Result<Side, DiffError> {
    let mut pooled = Sample {
        seconds: Some(0.0),
        ..Sample::default()
    };
    let mut latency = BTreeMap::new();
    let mut runs = Vec::new();
    for input in inputs {
        let run = match input {
            Input::Folded { path, stacks } => {
                if *select != Select::Whole
                    || opts.windows.is_some()
                    || opts.norm == Norm::PerSecond
                {
                    return Err(DiffError::NeedsCapture(path.clone()));
                }
                Run {
                    whole: Sample {
                        stacks: stacks.clone(),
                        seconds: None,
                    },
                    ..Run::default()
                }
            }
            Input::Capture(capture) => read_run(name, capture, select, opts)?,
        };
        merge(&mut pooled, &run.whole);
        for (name, h) in &run.latency {
            add_histogram(&mut latency, name.clone(), h);
        }
        runs.push(run);
    }
    let label = match inputs {
        [one] => format!("{}{select}", one.path().display()),
        many => format!("{} inputs{select}", many.len()),
    };
    if pooled.weight() == 0 {
        return Err(DiffError::EmptySide {
            side: name.to_owned(),
            kind: opts.view.map_or("weighted", |v| v.name()),
            label,
        });
    }
    Ok(Side {
        label,
        pooled,
        runs,
        latency,
    })
}

/// One capture as one run: the selected ranges merged, their windows, their latencies.
fn read_run(
    side: &str,
    capture: &Capture,
    select: &Select,
    opts: ReadOptions<'_>,
) -> Result<Run, DiffError> {
    let ranges = ranges(capture.outline(), select, capture.path(), opts.phases)?;
    let mut slices: Vec<Slice> = ranges.iter().map(|r| Slice::new(r.0, r.1)).collect();
    let window_ranges: Vec<(u64, u64)> = match opts.windows {
        Some(len) => {
            let ns = (len.as_nanos() as u64).max(1);
            let count: u64 = ranges.iter().map(|r| (r.1 - r.0).div_ceil(ns)).sum();
            if count > MAX_WINDOWS {
                return Err(DiffError::TooManyWindows {
                    side: side.to_owned(),
                    count,
                });
            }
            ranges.iter().flat_map(|r| windows(*r, len)).collect()
        }
        None => Vec::new(),
    };
    slices.extend(window_ranges.iter().map(|r| Slice::new(r.0, r.1)));
    let profile = capture.sliced(slices);
    let empty = ViewAgg::default();
    let sample_of = |slice: &Slice| -> Sample {
        let agg = opts
            .view
            .and_then(|v| slice.views.get(&v))
            .unwrap_or(&empty);
        Sample {
            stacks: profile.folded_map(agg),
            seconds: Some(seconds((slice.start, slice.end))),
        }
    };
    let mut run = Run {
        whole: Sample {
            seconds: Some(0.0),
            ..Sample::default()
        },
        ..Run::default()
    };
    for slice in &profile.slices[..ranges.len()] {
        merge(&mut run.whole, &sample_of(slice));
        if let Some(agg) = opts.view.and_then(|v| slice.views.get(&v)) {
            latencies(agg, &mut run.latency);
        }
    }
    for slice in &profile.slices[ranges.len()..] {
        let s = sample_of(slice);
        // A window without weight has no shares; per second it is a real zero.
        if opts.norm == Norm::PerSecond || s.weight() > 0 {
            run.windows.push(s);
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::proto;

    fn marker(name: &str, ts: u64, end: bool) -> proto::Marker {
        proto::Marker {
            name: name.into(),
            ts,
            end,
        }
    }

    #[test]
    fn phases_last_until_the_next_phase_their_end_or_the_capture_end() {
        let m = [
            marker("B", 20, false),
            marker("A", 10, false),
            marker("C", 40, false),
            marker("C", 45, true),
            marker("A", 50, false),
        ];
        let p = phases::from_markers(&m, 100);
        let got: Vec<(&str, u64, u64)> = p
            .iter()
            .map(|p| (p.name.as_str(), p.start_ns, p.end_ns))
            .collect();
        assert_eq!(
            got,
            vec![
                ("A", 10, 20),
                ("B", 20, 40),
                ("C", 40, 45),
                ("A#2", 50, 100)
            ]
        );
        assert_eq!(
            phase_ranges(&p, "A", Path::new("c.bar")).unwrap(),
            vec![(10, 20), (50, 100)]
        );
        let err = phase_ranges(&p, "D", Path::new("c.bar"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no phase 'D' in c.bar (it has A, B, C)"),
            "{err}"
        );
        let err = phase_ranges(&[], "A", Path::new("c.bar"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("it has no phase markers"), "{err}");
    }

    #[test]
    fn time_ranges_parse_offsets_and_wall_clock() {
        let r: TimeRange = "2s..3500ms".parse().unwrap();
        assert_eq!(r.start, Some(TimePoint::Offset(Duration::from_secs(2))));
        assert_eq!(r.end, Some(TimePoint::Offset(Duration::from_millis(3500))));
        let r: TimeRange = "..2025-01-02T03:04:05.5Z".parse().unwrap();
        assert_eq!(r.start, None);
        assert!(matches!(r.end, Some(TimePoint::Wall(_))));
        assert!("2s".parse::<TimeRange>().is_err());
        assert!("soon..later".parse::<TimeRange>().is_err());
    }

    #[test]
    fn windows_cover_the_range_and_drop_a_short_tail() {
        assert_eq!(
            windows((0, 1000), Duration::from_nanos(300)),
            [(0, 300), (300, 600), (600, 900)]
        );
        assert_eq!(
            windows((0, 1000), Duration::from_nanos(400)),
            [(0, 400), (400, 800), (800, 1000)]
        );
    }

    #[test]
    fn folded_files_parse_and_bad_ones_say_where() {
        let f = parse_folded(b"a;b 3\n\na;b 2\nc 1\n", Path::new("x")).unwrap();
        assert_eq!(f["a;b"], 5);
        assert_eq!(f["c"], 1);
        let e = parse_folded(b"a;b 3\nnonsense\n", Path::new("x.folded")).unwrap_err();
        assert!(e.to_string().contains("x.folded"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse_folded(&[0xff, 0xfe], Path::new("x")).is_err());
    }
}
