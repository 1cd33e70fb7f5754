//! The comparison itself, on folded stacks already read: normalization and the per-frame table
//! with each frame's change, its uncertainty and its test. Pure, so each rule is unit-tested on
//! small hand-made profiles.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    estimate::{self, Effect, OneRun, RunValue, Spread},
    frames,
    history::{self, Baseline, RunSummary},
    prior::Prior,
};

/// Folded stacks: `root;...;leaf` -> weight.
pub type Folded = BTreeMap<String, u64>;

/// What a frame's weight is divided by before the sides are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// Share of the side's total weight: tells where the time went, whatever the load.
    Share,
    /// Weight per second of the side's duration: tells how much more work there is.
    PerSecond,
}

/// One measurement of a side: a capture, a time range of one, a window, or a folded file.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub stacks: Folded,
    /// Length of the time covered, when known (not for folded files).
    pub seconds: Option<f64>,
}

impl Sample {
    pub fn weight(&self) -> u64 {
        self.stacks.values().sum()
    }

    /// What weights are divided by; None when that is not defined (no weight, no duration).
    pub fn denominator(&self, norm: Norm) -> Option<f64> {
        let d = match norm {
            Norm::Share => self.weight() as f64,
            Norm::PerSecond => self.seconds?,
        };
        (d > 0.0).then_some(d)
    }
}

/// Per frame, the weight of the stacks it appears in (total, once per stack even when it
/// recurses) and of those it is the leaf of (self).
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct FrameWeight {
    pub total: f64,
    #[serde(rename = "self")]
    pub self_: f64,
}

pub fn frame_weights(stacks: &Folded) -> HashMap<&str, FrameWeight> {
    let mut out: HashMap<&str, FrameWeight> = HashMap::new();
    for (stack, &w) in stacks {
        let frames: Vec<&str> = stack.split(';').collect();
        let distinct: BTreeSet<&str> = frames.iter().copied().collect();
        for f in distinct {
            out.entry(f).or_default().total += w as f64;
        }
        if let Some(leaf) = frames.last() {
            out.entry(leaf).or_default().self_ += w as f64;
        }
    }
    out
}

/// Frame weights of a sample, divided by its denominator.
fn normalized(sample: &Sample, norm: Norm) -> HashMap<&str, FrameWeight> {
    let d = sample.denominator(norm).unwrap_or(f64::INFINITY);
    frame_weights(&sample.stacks)
        .into_iter()
        .map(|(f, w)| {
            (
                f,
                FrameWeight {
                    total: w.total / d,
                    self_: w.self_ / d,
                },
            )
        })
        .collect()
}

/// How to decide whether a change is real.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TestOptions {
    /// Level for the Benjamini-Hochberg adjusted p-values.
    pub alpha: f64,
    /// Frames under this share of the total weight (as a fraction) on both sides are not
    /// tested: they cannot matter, and each test tested costs the others power.
    pub min_share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Significant growth.
    Grew,
    /// Significant shrinkage.
    Shrank,
    /// Tested, and within the spread of the measurements.
    Noise,
    /// Not tested: one run per side, below the share tested, or not code.
    Untested,
}

/// One run of a side: the whole of it, its windows when it was cut into them, and its latency
/// distributions (by name, in microseconds).
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub whole: Sample,
    pub windows: Vec<Sample>,
    pub latency: BTreeMap<String, Histogram<u64>>,
}

/// Where the base side's level of each frame comes from.
#[derive(Debug, Clone, Copy)]
pub enum Base<'a> {
    /// Its own runs.
    Runs(&'a [Run]),
    /// A baseline's history, oldest run first: the candidate is judged against its moving
    /// average and its spread from run to run.
    History(&'a [RunSummary]),
}

/// One frame's change. Values are normalized (fractions for `Share`, per second otherwise):
/// each side's mean over its runs (a baseline's moving average).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameChange {
    pub frame: String,
    pub base: FrameWeight,
    pub cand: FrameWeight,
    /// Not a marker of missing information (see `frames::is_code`): only code can offend.
    pub code: bool,
    /// The change of the frame's total, with its uncertainty; None when it cannot be known.
    pub effect: Option<Effect>,
    /// How the frame's total varies from run to run and within runs, per side.
    pub spread: [Spread; 2],
    /// Two-sided p-value of "no change" of the frame's total.
    pub p: Option<f64>,
    pub p_adjusted: Option<f64>,
    pub status: Status,
}

impl FrameChange {
    pub fn delta_total(&self) -> f64 {
        self.cand.total - self.base.total
    }
    pub fn delta_self(&self) -> f64 {
        self.cand.self_ - self.base.self_
    }
    /// Size of the change for ranking: the larger of total and self.
    pub fn magnitude(&self) -> f64 {
        self.delta_total().abs().max(self.delta_self().abs())
    }
}

/// A side's runs, each normalized once.
struct Normalized<'a> {
    runs: Vec<HashMap<&'a str, FrameWeight>>,
    windows: Vec<Vec<HashMap<&'a str, FrameWeight>>>,
    /// Per run, its weight and seconds (for the sampling noise).
    sizes: Vec<(f64, Option<f64>)>,
    norm: Norm,
}

impl<'a> Normalized<'a> {
    fn new(runs: &'a [Run], norm: Norm) -> Self {
        Self {
            runs: runs.iter().map(|r| normalized(&r.whole, norm)).collect(),
            windows: runs
                .iter()
                .map(|r| r.windows.iter().map(|w| normalized(w, norm)).collect())
                .collect(),
            sizes: runs
                .iter()
                .map(|r| (r.whole.weight() as f64, r.whole.seconds))
                .collect(),
            norm,
        }
    }

    fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.runs.iter().flat_map(|r| r.keys().copied())
    }

    /// Mean over the runs.
    fn mean(&self, f: &str) -> FrameWeight {
        let n = self.runs.len().max(1) as f64;
        let mut m = FrameWeight::default();
        for r in &self.runs {
            let w = r.get(f).copied().unwrap_or_default();
            m.total += w.total / n;
            m.self_ += w.self_ / n;
        }
        m
    }

    fn values(&self, f: &str) -> Vec<RunValue> {
        let total = |m: &HashMap<&str, FrameWeight>| m.get(f).map_or(0.0, |w| w.total);
        self.runs
            .iter()
            .zip(&self.windows)
            .zip(&self.sizes)
            .map(|((r, ws), &(weight, seconds))| {
                let v = total(r);
                RunValue {
                    value: v,
                    windows: ws.iter().map(total).collect(),
                    sampling: match (self.norm, seconds) {
                        (Norm::Share, _) if weight > 0.0 => v * (1.0 - v) / weight,
                        (Norm::PerSecond, Some(s)) if s > 0.0 => v / s,
                        _ => 0.0,
                    },
                }
            })
            .collect()
    }
}

/// The base side of one frame from a baseline's history: its moving averages (total and self)
/// and the baseline of its total.
fn history_of(history: &[RunSummary], f: &str, norm: Norm) -> (FrameWeight, Option<Baseline>) {
    let selfs: Vec<f64> = history
        .iter()
        .filter_map(|r| r.value(f, norm).map(|v| v[1]))
        .collect();
    let total = history::frame_baseline(history, f, norm);
    let self_ =
        Baseline::new(&selfs, 0.0).map_or(selfs.first().copied().unwrap_or(0.0), |b| b.ewma);
    (
        FrameWeight {
            total: total.map_or(0.0, |b| b.ewma),
            self_,
        },
        total,
    )
}

/// Compares every frame of the sides, and tests the code frames above `min_share` whose change
/// can be known (see `estimate::change`), adjusting for the many frames tested at once
/// (Benjamini-Hochberg). Sorted by magnitude of change, largest first.
pub fn compare_frames(
    base: Base<'_>,
    cand: &[Run],
    norm: Norm,
    test: TestOptions,
    one_run: OneRun,
) -> Vec<FrameChange> {
    compare_frames_with_law(base, cand, norm, test, one_run).0
}

/// As [`compare_frames`], with the law of the spread between runs fitted across the frames
/// (None when too few frames have enough runs), which the reader of a verdict may check.
pub fn compare_frames_with_law(
    base: Base<'_>,
    cand: &[Run],
    norm: Norm,
    test: TestOptions,
    one_run: OneRun,
) -> (Vec<FrameChange>, Option<Prior>) {
    let c = Normalized::new(cand, norm);
    let cs = Normalized::new(cand, Norm::Share);
    let mut names: BTreeSet<&str> = c.names().collect();
    let (b, bs) = match base {
        Base::Runs(runs) => (
            Some(Normalized::new(runs, norm)),
            Some(Normalized::new(runs, Norm::Share)),
        ),
        Base::History(_) => (None, None),
    };
    match (&b, base) {
        (Some(b), _) => names.extend(b.names()),
        (None, Base::History(h)) => {
            names.extend(h.iter().flat_map(|r| r.frames.keys().map(String::as_str)))
        }
        (None, Base::Runs(_)) => {}
    }
    // The prior of the spread between runs, from the sides of the code frames big enough to
    // test (on that side) in this comparison.
    let big_on = |n: &Normalized<'_>, shares: &Normalized<'_>, f: &str| {
        (frames::is_code(f) && shares.mean(f).total >= test.min_share).then(|| n.values(f))
    };
    let mut sides: Vec<Vec<RunValue>> = names.iter().filter_map(|f| big_on(&c, &cs, f)).collect();
    if let (Some(b), Some(bs)) = (&b, &bs) {
        sides.extend(names.iter().filter_map(|f| big_on(b, bs, f)));
    }
    let fitted = Prior::fit(sides.iter().map(Vec::as_slice));
    let prior = fitted.as_ref();
    let mut changes: Vec<FrameChange> = names
        .into_iter()
        .map(|f| {
            let cand_values = c.values(f);
            let (base_w, effect, base_share, base_spread) = match (&b, &bs, base) {
                (Some(b), Some(bs), _) => {
                    let bv = b.values(f);
                    (
                        b.mean(f),
                        estimate::change(&bv, &cand_values, one_run, prior),
                        bs.mean(f).total,
                        estimate::spread(&bv),
                    )
                }
                (_, _, Base::History(h)) => {
                    let (w, hist) = history_of(h, f, norm);
                    let share = history_of(h, f, Norm::Share).0.total;
                    let spread = Spread {
                        between_runs: hist.map(|x| x.spread),
                        within_run: None,
                    };
                    (
                        w,
                        hist.and_then(|x| x.effect(&cand_values, prior)),
                        share,
                        spread,
                    )
                }
                _ => unreachable!("a base of runs is normalized above"),
            };
            let cand_w = c.mean(f);
            // Whether a frame is big enough to test is judged on shares whatever the
            // normalization, so the same frames are tested per second as by share.
            let big = base_share.max(cs.mean(f).total) >= test.min_share;
            let code = frames::is_code(f);
            FrameChange {
                frame: f.to_owned(),
                base: base_w,
                cand: cand_w,
                code,
                effect: effect.filter(|_| big && code),
                spread: [base_spread, estimate::spread(&cand_values)],
                p: None,
                p_adjusted: None,
                status: Status::Untested,
            }
        })
        .collect();
    let tested: Vec<usize> = (0..changes.len())
        .filter(|&i| changes[i].effect.is_some())
        .collect();
    let effects: Vec<Effect> = tested.iter().filter_map(|&i| changes[i].effect).collect();
    let (qs, _) = estimate::adjust(&effects, Effect::p);
    for (&i, q) in tested.iter().zip(qs) {
        let ch = &mut changes[i];
        let e = ch.effect.expect("tested frames have an effect");
        ch.p = Some(e.p());
        ch.p_adjusted = Some(q);
        ch.status = if q >= test.alpha || e.delta == 0.0 {
            Status::Noise
        } else if e.delta > 0.0 {
            Status::Grew
        } else {
            Status::Shrank
        };
    }
    changes.sort_by(|x, y| {
        y.magnitude()
            .total_cmp(&x.magnitude())
            .then_with(|| x.frame.cmp(&y.frame))
    });
    (changes, fitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lines: &[(&str, u64)], seconds: Option<f64>) -> Sample {
        Sample {
            stacks: lines.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect(),
            seconds,
        }
    }

    const TEST: TestOptions = TestOptions {
        alpha: 0.05,
        min_share: 0.005,
    };

    #[test]
    fn frame_weights_count_recursion_once_and_self_at_the_leaf() {
        let s = sample(&[("a;b;a;c", 3), ("a;b", 2), ("x", 1)], None);
        let w = frame_weights(&s.stacks);
        assert_eq!(
            w["a"],
            FrameWeight {
                total: 5.0,
                self_: 0.0
            }
        );
        assert_eq!(
            w["b"],
            FrameWeight {
                total: 5.0,
                self_: 2.0
            }
        );
        assert_eq!(
            w["c"],
            FrameWeight {
                total: 3.0,
                self_: 3.0
            }
        );
        assert_eq!(
            w["x"],
            FrameWeight {
                total: 1.0,
                self_: 1.0
            }
        );
    }

    fn run(s: Sample) -> Run {
        Run {
            whole: s,
            ..Run::default()
        }
    }

    #[test]
    fn share_and_per_second_normalization() {
        // Base: 100 samples in 1 s, half in f. Candidate: 400 in 2 s, a quarter in f.
        let base = [run(sample(&[("m;f", 50), ("m;g", 50)], Some(1.0)))];
        let cand = [run(sample(&[("m;f", 100), ("m;g", 300)], Some(2.0)))];
        let share = compare_frames(Base::Runs(&base), &cand, Norm::Share, TEST, OneRun::Unknown);
        let f = share.iter().find(|c| c.frame == "f").unwrap();
        assert_eq!((f.base.total, f.cand.total), (0.5, 0.25));
        assert_eq!(f.status, Status::Untested);
        assert_eq!(
            f.effect, None,
            "one run per side: the spread between runs is unknown"
        );
        let rate = compare_frames(
            Base::Runs(&base),
            &cand,
            Norm::PerSecond,
            TEST,
            OneRun::Unknown,
        );
        let f = rate.iter().find(|c| c.frame == "f").unwrap();
        assert_eq!((f.base.total, f.cand.total), (50.0, 50.0));
        let g = rate.iter().find(|c| c.frame == "g").unwrap();
        assert_eq!((g.base.total, g.cand.total), (50.0, 150.0));
        // Largest change first: g (+100/s) before f (0).
        assert_eq!(rate[0].frame, "g");
    }

    /// `n` runs of 10000 samples with `f` and `g` in the given thousandths, the i-th run
    /// moved by `jitter` thousandths in turn.
    fn runs(f: u64, g: u64, n: usize, jitter: u64) -> Vec<Run> {
        (0..n as u64)
            .map(|i| {
                let j = i % (jitter + 1);
                run(sample(
                    &[("m;f", (f + j) * 10), ("m;g", (g - j) * 10)],
                    Some(1.0),
                ))
            })
            .collect()
    }

    #[test]
    fn three_runs_per_side_find_a_consistent_twenty_point_change() {
        // The measured case Mann-Whitney could not see: 3 against 3 never goes below p = 0.1.
        let base = runs(500, 500, 3, 1);
        let cand = runs(700, 300, 3, 1);
        let changes = compare_frames(Base::Runs(&base), &cand, Norm::Share, TEST, OneRun::Unknown);
        let f = changes.iter().find(|c| c.frame == "f").unwrap();
        let g = changes.iter().find(|c| c.frame == "g").unwrap();
        assert_eq!(f.status, Status::Grew, "{f:#?}");
        assert_eq!(g.status, Status::Shrank);
        assert!(f.p_adjusted.unwrap() < 1e-4, "{f:#?}");
        let e = f.effect.unwrap();
        assert!((e.delta - 0.2).abs() < 1e-12);
        // The runs agree more closely than 10000 samples can: the sampling floor binds, and
        // it is computed, not estimated.
        assert_eq!(e.df, f64::INFINITY, "{e:?}");
        // m is every stack: it never changes.
        let m = changes.iter().find(|c| c.frame == "m").unwrap();
        assert_eq!(m.status, Status::Noise);
    }

    #[test]
    fn the_same_runs_in_another_order_are_noise() {
        let a = runs(500, 500, 5, 8);
        let mut b = runs(500, 500, 5, 8);
        b.reverse();
        let changes = compare_frames(Base::Runs(&a), &b, Norm::Share, TEST, OneRun::Unknown);
        assert!(
            changes.iter().all(|c| c.status == Status::Noise),
            "{changes:#?}"
        );
    }

    #[test]
    fn small_frames_and_markers_are_not_tested() {
        let mk = |tiny, unknown| -> Vec<Run> {
            (0..5)
                .map(|i| {
                    run(sample(
                        &[
                            ("m;big", 10_000 + i),
                            ("m;tiny", tiny),
                            ("m;[unknown 0x1234]", unknown),
                        ],
                        Some(1.0),
                    ))
                })
                .collect()
        };
        let (b, c) = (mk(1, 100), mk(20, 3000));
        let t = TestOptions {
            alpha: 0.05,
            min_share: 0.01,
        };
        let changes = compare_frames(Base::Runs(&b), &c, Norm::Share, t, OneRun::Unknown);
        let tiny = changes.iter().find(|c| c.frame == "tiny").unwrap();
        assert_eq!(tiny.status, Status::Untested);
        assert_eq!(tiny.p, None);
        let unknown = changes
            .iter()
            .find(|c| c.frame == "[unknown 0x1234]")
            .unwrap();
        assert!(!unknown.code);
        assert_eq!(unknown.status, Status::Untested);
        assert!(unknown.delta_total() > 0.1);
    }

    #[test]
    fn a_candidate_against_a_history() {
        let summary = |f: u64| RunSummary {
            weight: 10_000,
            seconds: Some(1.0),
            frames: BTreeMap::from([
                ("m".to_owned(), [10_000, 0]),
                ("f".to_owned(), [f, f]),
                ("g".to_owned(), [10_000 - f, 10_000 - f]),
            ]),
            latency: BTreeMap::new(),
        };
        let history: Vec<RunSummary> = [1000, 1050, 980, 1020, 1000, 990]
            .into_iter()
            .map(summary)
            .collect();
        let same = runs(101, 899, 1, 0);
        let changes = compare_frames(
            Base::History(&history),
            &same,
            Norm::Share,
            TEST,
            OneRun::Unknown,
        );
        assert!(
            changes.iter().all(|c| c.status == Status::Noise),
            "{changes:#?}"
        );
        let worse = runs(160, 840, 1, 0);
        let changes = compare_frames(
            Base::History(&history),
            &worse,
            Norm::Share,
            TEST,
            OneRun::Unknown,
        );
        let f = changes.iter().find(|c| c.frame == "f").unwrap();
        assert_eq!(f.status, Status::Grew, "{f:#?}");
        assert!((f.base.total - 0.1).abs() < 0.003, "{f:#?}");
    }
}
