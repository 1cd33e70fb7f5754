//! A baseline's history as `diff` judges a candidate against it: per frame, the runs' values
//! in the order they were added, their exponentially weighted moving average (the baseline),
//! their spread from one run to the next, and whether the baseline itself drifted. Pure: the
//! runs come from a baseline store (`crate::baseline`), as summaries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    compare::{Norm, Run, frame_weights},
    estimate::{self, Effect, RunValue},
    latency,
    prior::Prior,
};
use crate::stats;

/// Weight of the newest run in the moving average: the last nine runs or so make it.
pub const EWMA_WEIGHT: f64 = 0.2;
/// A baseline whose average moved by more than this many spreads over the runs kept drifted.
pub const DRIFT_SPREADS: f64 = 3.0;
/// Fewer runs than this say too little of their own spread to judge a candidate.
pub const MIN_RUNS: usize = 3;

/// One run as a baseline keeps it: per frame (below the process name, unless the store
/// compares by process) the weight of the stacks it is in and of those it is the leaf of; the
/// run's weight and length; per latency distribution, its count, p50 and p99 (us).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub weight: u64,
    pub seconds: Option<f64>,
    /// frame -> [total, self].
    pub frames: BTreeMap<String, [u64; 2]>,
    #[serde(default)]
    pub latency: BTreeMap<String, LatencySummary>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    /// Standard error of ln(p99) from sampling (see `latency::summarize`).
    pub p99_log_se: f64,
}

/// Frames under this share of a run's weight are not kept in its summary: a store keeps what
/// can matter, not every kernel frame of a profile.
pub const KEEP_SHARE: f64 = 0.0005;

/// Two runs whose leaf functions share less than this of their weight are not of one workload.
pub const SAME_WORKLOAD: f64 = 0.3;

impl RunSummary {
    /// A run's summary: its frames' weights (those of at least `KEEP_SHARE`), its latency
    /// distributions summarized.
    pub fn of(run: &Run) -> Self {
        let weight = run.whole.weight();
        let keep = (weight as f64 * KEEP_SHARE).ceil() as u64;
        let frames = frame_weights(&run.whole.stacks)
            .into_iter()
            .filter(|(_, w)| w.total as u64 >= keep.max(1))
            .map(|(f, w)| (f.to_owned(), [w.total as u64, w.self_ as u64]))
            .collect();
        Self {
            weight,
            seconds: run.whole.seconds,
            frames,
            latency: run
                .latency
                .iter()
                .map(|(k, h)| (k.clone(), latency::summarize(h)))
                .collect(),
        }
    }

    /// The share of weight two runs have in the same leaf functions (self weight, the smaller
    /// of the two shares per frame): near 1 for runs of one program, near 0 for two programs.
    pub fn leaf_overlap(&self, other: &Self) -> f64 {
        if self.weight == 0 || other.weight == 0 {
            return 0.0;
        }
        self.frames
            .iter()
            .filter_map(|(f, w)| {
                let o = other.frames.get(f)?;
                Some((w[1] as f64 / self.weight as f64).min(o[1] as f64 / other.weight as f64))
            })
            .sum()
    }

    /// A frame's normalized total and self, 0 for a frame the run does not have.
    pub fn value(&self, frame: &str, norm: Norm) -> Option<[f64; 2]> {
        let d = match norm {
            Norm::Share => self.weight as f64,
            Norm::PerSecond => self.seconds?,
        };
        if d <= 0.0 {
            return None;
        }
        let w = self.frames.get(frame).copied().unwrap_or_default();
        Some([w[0] as f64 / d, w[1] as f64 / d])
    }

    /// Variance of a frame's value from sampling alone: binomial for a share of counted
    /// samples, Poisson for a rate.
    pub fn sampling_var(&self, frame: &str, norm: Norm) -> f64 {
        let total = self.frames.get(frame).map_or(0, |w| w[0]) as f64;
        match (norm, self.seconds) {
            (Norm::Share, _) if self.weight > 0 => {
                let p = total / self.weight as f64;
                p * (1.0 - p) / self.weight as f64
            }
            (Norm::PerSecond, Some(s)) if s > 0.0 => total / (s * s),
            _ => 0.0,
        }
    }
}

/// Per frame, what the history says of one value (a frame's total, or a log p99).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Baseline {
    /// The moving average after the newest run.
    pub ewma: f64,
    /// Standard deviation of one run's value.
    pub spread: f64,
    /// Degrees of freedom of the spread.
    pub df: f64,
    /// How far the average moved over the runs kept, in spreads (signed).
    pub drift: f64,
    /// Sum of the squared weights of the moving average: its variance is spread^2 times this.
    #[serde(skip)]
    weights_sq: f64,
}

impl Baseline {
    /// From the values of the runs, oldest first, and the variance sampling alone gives a run's
    /// value (a floor for the spread: a few runs can agree by chance). None for fewer than two.
    ///
    /// The spread comes from successive differences (von Neumann's mean square successive
    /// difference), so a step in the baseline, a change that landed, does not widen it as the
    /// plain standard deviation would; its degrees of freedom are 2(n-1)^2 / (3n-4).
    pub fn new(values: &[f64], sampling_var: f64) -> Option<Self> {
        let n = values.len();
        if n < 2 {
            return None;
        }
        let mssd = values
            .windows(2)
            .map(|w| (w[1] - w[0]).powi(2))
            .sum::<f64>()
            / (2.0 * (n - 1) as f64);
        let spread = mssd.max(sampling_var).sqrt();
        let nf = n as f64;
        let df = 2.0 * (nf - 1.0).powi(2) / (3.0 * nf - 4.0);
        let mut ewma = values[0];
        let mut weights = vec![1.0];
        for &v in &values[1..] {
            ewma = EWMA_WEIGHT * v + (1.0 - EWMA_WEIGHT) * ewma;
            weights.iter_mut().for_each(|w| *w *= 1.0 - EWMA_WEIGHT);
            weights.push(EWMA_WEIGHT);
        }
        let drift = if spread > 0.0 {
            (ewma - values[0]) / spread
        } else {
            0.0
        };
        Some(Self {
            ewma,
            spread,
            df,
            drift,
            weights_sq: weights.iter().map(|w| w * w).sum(),
        })
    }

    pub fn drifted(&self) -> bool {
        self.drift.abs() > DRIFT_SPREADS
    }

    /// The change of a candidate's runs from the baseline: their mean against the moving
    /// average, each run varying as the history measured one run to vary (or as the
    /// candidate's own runs, or its sampling, show when that is more). A frame the history
    /// never had has only the candidate's runs to say how it varies: their spread is moderated
    /// by `prior`, the law of the comparison's frames (see `estimate::change`).
    pub fn effect(&self, runs: &[RunValue], prior: Option<&Prior>) -> Option<Effect> {
        if runs.is_empty() {
            return None;
        }
        let values: Vec<f64> = runs.iter().map(|r| r.value).collect();
        let mean = stats::mean_var(&values).0;
        let n = values.len() as f64;
        let sampling = runs.iter().map(|r| r.sampling).sum::<f64>() / n;
        if self.spread == 0.0 {
            // The same value in every run of the history, most often none (new code): the
            // base side does not vary, and the candidate's own runs, or its sampling alone
            // (a computed variance, not an estimate), say how sure the change is.
            let prior = prior.filter(|_| self.ewma == 0.0);
            let (var, df) = match estimate::own_var(runs, prior) {
                Some((v, df)) if v > sampling => (v, df),
                _ => (sampling, f64::INFINITY),
            };
            return Some(Effect {
                delta: mean - self.ewma,
                se: (var / n).sqrt(),
                df,
            });
        }
        let hist = self.spread.powi(2).max(sampling);
        let base_var = self.spread.powi(2) * self.weights_sq;
        let (var, df) = match estimate::own_var(runs, None) {
            Some((v, own_df)) if v > hist => (
                v,
                stats::satterthwaite(&[(v / n, own_df), (base_var, self.df)]),
            ),
            _ => (hist, self.df),
        };
        Some(Effect {
            delta: mean - self.ewma,
            se: (var / n + base_var).sqrt(),
            df,
        })
    }
}

/// A frame's baseline in a history of runs (oldest first): its totals, with the mean sampling
/// noise of a run as the floor of its spread.
pub fn frame_baseline(runs: &[RunSummary], frame: &str, norm: Norm) -> Option<Baseline> {
    let totals: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.value(frame, norm).map(|v| v[0]))
        .collect();
    let sampling = runs
        .iter()
        .map(|r| r.sampling_var(frame, norm))
        .sum::<f64>()
        / runs.len().max(1) as f64;
    Baseline::new(&totals, sampling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_moving_average_spread_and_drift_have_known_values() {
        let b = Baseline::new(&[1.0, 3.0, 2.0, 4.0], 0.0).unwrap();
        // EWMA: 1 -> 1.4 -> 1.52 -> 2.016.
        assert!((b.ewma - 2.016).abs() < 1e-12, "{b:?}");
        // Successive differences 2, -1, 2: (4 + 1 + 4) / (2 * 3) = 1.5.
        assert!((b.spread - 1.5f64.sqrt()).abs() < 1e-12);
        assert!((b.df - 18.0 / 8.0).abs() < 1e-12);
        assert!((b.drift - 1.016 / 1.5f64.sqrt()).abs() < 1e-12);
        // Weights 0.512, 0.128, 0.16, 0.2.
        let w2 = 0.512f64.powi(2) + 0.128f64.powi(2) + 0.16f64.powi(2) + 0.04;
        assert!((b.weights_sq - w2).abs() < 1e-12);
        assert!(Baseline::new(&[1.0], 0.0).is_none());
    }

    #[test]
    fn a_step_in_the_baseline_does_not_widen_its_spread_but_shows_as_drift() {
        let mut v = vec![0.10; 10];
        v.extend([0.20; 10]);
        // Alternate by 0.002 around each level: the noise from run to run.
        for (i, x) in v.iter_mut().enumerate() {
            *x += if i % 2 == 0 { 0.001 } else { -0.001 };
        }
        let b = Baseline::new(&v, 0.0).unwrap();
        // One jump of 0.1 among 19 differences of 0.002: far less than the plain SD (0.05).
        assert!(b.spread < 0.025, "{b:?}");
        assert!(b.drifted(), "{b:?}");
        assert!((b.ewma - 0.2).abs() < 0.015, "{b:?}");
    }

    #[test]
    fn a_candidate_is_judged_against_the_spread_of_one_run() {
        let b = Baseline::new(&[0.10, 0.11, 0.10, 0.11, 0.10, 0.11], 0.0).unwrap();
        let one = |value: f64| {
            [RunValue {
                value,
                ..RunValue::default()
            }]
        };
        let same = b.effect(&one(0.105), None).unwrap();
        assert!(same.p() > 0.5, "{same:?}");
        let up = b.effect(&one(0.20), None).unwrap();
        assert!(up.p_above(0.05) < 0.01, "{up:?}");
        // The sampling floor: runs that agree exactly still have sampling noise.
        let flat = Baseline::new(&[0.1; 5], 0.0004).unwrap();
        assert!((flat.spread - 0.02).abs() < 1e-12);
        assert!(b.effect(&[], None).is_none());
        // A frame no run of the history had: only the candidate's sampling varies.
        let absent = Baseline::new(&[0.0; 4], 0.0).unwrap();
        let new = absent
            .effect(
                &[RunValue {
                    value: 0.2,
                    windows: Vec::new(),
                    sampling: 0.0001,
                }],
                None,
            )
            .unwrap();
        assert_eq!((new.delta, new.se, new.df), (0.2, 0.01, f64::INFINITY));
    }

    #[test]
    fn summaries_give_shares_rates_and_sampling_noise() {
        let s = RunSummary {
            weight: 1000,
            seconds: Some(2.0),
            frames: BTreeMap::from([("f".to_owned(), [200, 50])]),
            latency: BTreeMap::new(),
        };
        assert_eq!(s.value("f", Norm::Share), Some([0.2, 0.05]));
        assert_eq!(s.value("f", Norm::PerSecond), Some([100.0, 25.0]));
        assert_eq!(s.value("g", Norm::Share), Some([0.0, 0.0]));
        assert!((s.sampling_var("f", Norm::Share) - 0.2 * 0.8 / 1000.0).abs() < 1e-15);
        assert!((s.sampling_var("f", Norm::PerSecond) - 50.0).abs() < 1e-12);
    }

    #[test]
    fn runs_of_one_workload_overlap_and_of_two_do_not() {
        let run = |lines: &[(&str, u64)]| {
            RunSummary::of(&Run {
                whole: super::super::compare::Sample {
                    stacks: lines.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect(),
                    seconds: Some(1.0),
                },
                ..Run::default()
            })
        };
        let base = run(&[("main;parse", 40), ("main;compute", 60)]);
        let regressed = run(&[("main;parse", 32), ("main;compute", 48), ("main;slow", 20)]);
        let other = run(&[("main;serve", 90), ("main;parse", 10)]);
        assert!((base.leaf_overlap(&regressed) - 0.8).abs() < 1e-12);
        assert!((base.leaf_overlap(&other) - 0.1).abs() < 1e-12);
        assert_eq!(base.frames["main"], [100, 0]);
        assert_eq!(base.weight, 100);
        // A frame under KEEP_SHARE of the weight is not kept.
        let big = run(&[("main;hot", 100_000), ("main;rare", 10)]);
        assert!(!big.frames.contains_key("rare"));
    }
}
