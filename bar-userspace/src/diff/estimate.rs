//! How sure a change is. The unit of measurement is the run (a capture, or a phase or time
//! range of one); the windows of a run are repeated measures of that run: they tell how much
//! the run's own value wanders, nothing of how much one run differs from the next. Per frame,
//! a side's level is the mean of its runs' values, with the variance of that mean taken from
//! the spread between its runs and, where windows exist, never less than what the spread
//! within its runs implies; the effect is the difference of the levels, with Welch's t for its
//! confidence interval and tests. `simulate` (tests only) compares this with the alternatives.

use serde::Serialize;

use super::prior::{self, Prior};
use crate::stats;

/// One run's value of a frame (a share or a rate), the values of its windows (empty when the
/// run was not cut into windows), and the variance its value has from sampling alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunValue {
    pub value: f64,
    pub windows: Vec<f64>,
    pub sampling: f64,
}

impl RunValue {
    /// Runs of `values` not cut into windows, each with `sampling` variance (for tests).
    #[cfg(test)]
    pub fn runs(values: &[f64], sampling: f64) -> Vec<Self> {
        values
            .iter()
            .map(|&value| Self {
                value,
                windows: Vec::new(),
                sampling,
            })
            .collect()
    }
}

/// A side's level of a frame: the mean over its runs, the variance of that mean, and the
/// degrees of freedom of the variance estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub mean: f64,
    pub var: f64,
    pub df: f64,
}

/// How a run's value varies, as standard deviations of one run's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    /// Between the runs of a side (None with one run).
    pub between_runs: Option<f64>,
    /// What the windows of a run imply for the run's value (None without windows).
    pub within_run: Option<f64>,
}

/// Variance of a run's value implied by its windows, each window one measurement: the
/// variance of the windows' mean. None without at least two windows.
fn within_var(run: &RunValue) -> Option<(f64, f64)> {
    let (_, var) = stats::mean_var(&run.windows);
    var.map(|v| (v / run.windows.len() as f64, (run.windows.len() - 1) as f64))
}

/// Mean over the runs of the within-run variance of a run's value, with its degrees of
/// freedom (summed over runs); None when no run has windows.
fn pooled_within(runs: &[RunValue]) -> Option<(f64, f64)> {
    let parts: Vec<(f64, f64)> = runs.iter().filter_map(within_var).collect();
    if parts.len() < runs.len() || parts.is_empty() {
        return None;
    }
    let var = parts.iter().map(|p| p.0).sum::<f64>() / parts.len() as f64;
    Some((var, parts.iter().map(|p| p.1).sum()))
}

pub fn spread(runs: &[RunValue]) -> Spread {
    let values: Vec<f64> = runs.iter().map(|r| r.value).collect();
    Spread {
        between_runs: stats::mean_var(&values).1.map(f64::sqrt),
        within_run: pooled_within(runs).map(|(v, _)| v.sqrt()),
    }
}

/// The variance of one run's value the runs themselves show, with its degrees of freedom:
/// their sample variance (n - 1), shrunk toward the comparison's prior from `prior::MIN_RUNS`
/// runs on (its degrees of freedom added). None for one run.
pub fn own_var(runs: &[RunValue], prior: Option<&Prior>) -> Option<(f64, f64)> {
    let values: Vec<f64> = runs.iter().map(|r| r.value).collect();
    let var = stats::mean_var(&values).1?;
    Some(match prior {
        Some(p) if runs.len() >= prior::MIN_RUNS => p.moderate(runs, var),
        _ => (var, (runs.len() - 1) as f64),
    })
}

/// Variance of one run's value, with its degrees of freedom: between the runs (`own_var`),
/// never less than what the windows show within the runs nor than sampling alone gives (three
/// runs can agree by chance; their windows and their sample counts say how close they can
/// really be). When a floor is what binds with three runs or more, its own degrees of freedom
/// go with it: the windows' (one less than their count, summed over runs), or none lost for
/// the sampling variance, which is computed rather than estimated. Two runs keep their one
/// degree of freedom: they agree by chance too often (a chi-square of one degree is under a
/// quarter of its mean 38 % of the time), and where runs differ by more than their windows
/// show, trusting the floor then called 5.9 % of unchanged pairs changed at a 5 % level
/// (simulated, page faults). None for one run.
fn run_var(runs: &[RunValue], prior: Option<&Prior>) -> Option<(f64, f64)> {
    let (between, between_df) = own_var(runs, prior)?;
    let (within, within_df) = pooled_within(runs).unwrap_or((0.0, f64::INFINITY));
    let sampling = runs.iter().map(|r| r.sampling).sum::<f64>() / runs.len() as f64;
    let (floor, floor_df) = if within > sampling {
        (within, within_df)
    } else {
        (sampling, f64::INFINITY)
    };
    let n = runs.len();
    Some(if between >= floor {
        (between, between_df)
    } else if n >= 3 {
        (floor, floor_df)
    } else {
        (floor, (n - 1) as f64)
    })
}

/// A side's level from its runs: their mean, and the variance of that mean from `run_var`.
/// One run has no spread between runs to measure: None, unless `one_run_inflation` is given,
/// in which case its windows stand in for runs with their variance multiplied by it.
pub fn level(
    runs: &[RunValue],
    one_run_inflation: Option<f64>,
    prior: Option<&Prior>,
) -> Option<Level> {
    let n = runs.len();
    let mean = stats::mean_var(&runs.iter().map(|r| r.value).collect::<Vec<_>>()).0;
    if let Some((v, df)) = run_var(runs, prior) {
        return Some(Level {
            mean,
            var: v / n as f64,
            df,
        });
    }
    let (w, df) = pooled_within(runs)?;
    one_run_inflation.map(|k| Level {
        mean,
        var: w * k,
        df,
    })
}

/// What to do when each side has one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OneRun {
    /// Nothing can be said: the spread between runs is unknown.
    Unknown,
    /// Both sides are parts of the same runs (two phases of one capture): what varies between
    /// runs varies both sides alike, and the windows are the measurements.
    SameRuns,
}

/// The change of a frame from the base's runs to the candidate's. Both sides with two runs or
/// more: Welch's t. One side with a single run: that run is taken to vary as the other side's
/// runs do (Student's t with their degrees of freedom). One run each: only for parts of the
/// same runs, from their windows.
///
/// A frame one side lacks in every run (new code, or code removed) has its spread measured by
/// the other side alone: with three runs, two degrees of freedom, and a t quantile of 4.3 to
/// clear at 95 % (9.9 at the 0.5 % a gate adjusted over a few frames may need). There
/// `prior`, the law of the comparison's frames, moderates it (`prior::Prior::moderate`). A
/// frame both sides have is measured by both, and is not moderated: frames that vary unlike
/// the law (the housekeeping of a loaded machine varies 15 times as much as the law of the
/// request handlers says) would be shrunk far below their spread, and a simulated profile of
/// the mix workload then failed 7 % of unchanged 3-run pairs.
pub fn change(
    base: &[RunValue],
    cand: &[RunValue],
    one_run: OneRun,
    prior: Option<&Prior>,
) -> Option<Effect> {
    let (nb, nc) = (base.len(), cand.len());
    if nb == 0 || nc == 0 {
        return None;
    }
    let absent = |r: &[RunValue]| r.iter().all(|x| x.value == 0.0);
    let (base_prior, cand_prior) = (
        prior.filter(|_| absent(cand)),
        prior.filter(|_| absent(base)),
    );
    if nb >= 2 && nc >= 2 {
        return Some(effect(
            level(base, None, base_prior)?,
            level(cand, None, cand_prior)?,
        ));
    }
    if nb >= 2 || nc >= 2 {
        let (many, one, prior) = if nb >= 2 {
            (base, cand, base_prior)
        } else {
            (cand, base, cand_prior)
        };
        let (v, df) = run_var(many, prior)?;
        let mean =
            |r: &[RunValue]| stats::mean_var(&r.iter().map(|x| x.value).collect::<Vec<_>>()).0;
        let n = many.len() as f64;
        // The single run's own windows and samples still set a floor for its variance.
        let single = one[0].sampling.max(pooled_within(one).map_or(0.0, |w| w.0));
        return Some(Effect {
            delta: mean(cand) - mean(base),
            se: (v / n + v.max(single)).sqrt(),
            df,
        });
    }
    match one_run {
        OneRun::Unknown => None,
        OneRun::SameRuns => Some(effect(
            level(base, Some(1.0), None)?,
            level(cand, Some(1.0), None)?,
        )),
    }
}

/// The change from base to candidate of one frame, with the standard error of the change and
/// its degrees of freedom (Welch-Satterthwaite).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Effect {
    pub delta: f64,
    pub se: f64,
    pub df: f64,
}

pub fn effect(base: Level, cand: Level) -> Effect {
    Effect {
        delta: cand.mean - base.mean,
        se: (base.var + cand.var).sqrt(),
        df: stats::satterthwaite(&[(base.var, base.df), (cand.var, cand.df)]),
    }
}

impl Effect {
    /// The effect's identity: effects alike in all three are one hypothesis.
    pub fn key(&self) -> (u64, u64, u64) {
        (self.delta.to_bits(), self.se.to_bits(), self.df.to_bits())
    }

    /// Standardized distance of the change from `x`; infinite when nothing varies.
    fn t(&self, x: f64) -> f64 {
        let d = self.delta - x;
        if self.se > 0.0 {
            d / self.se
        } else if d == 0.0 {
            0.0
        } else {
            d.signum() * f64::INFINITY
        }
    }

    /// Two-sided p-value of "no change".
    pub fn p(&self) -> f64 {
        (2.0 * stats::t_sf(self.t(0.0).abs(), self.df)).min(1.0)
    }

    /// One-sided p-value of "the change is at most `threshold`": small when the change is
    /// surely larger.
    pub fn p_above(&self, threshold: f64) -> f64 {
        stats::t_sf(self.t(threshold), self.df)
    }

    /// Lower confidence bound of the change at one-sided level `alpha`.
    pub fn lower(&self, alpha: f64) -> f64 {
        self.delta - stats::t_quantile(1.0 - alpha, self.df) * self.se
    }

    /// Two-sided confidence interval at level 1 - `alpha`.
    pub fn interval(&self, alpha: f64) -> (f64, f64) {
        let h = stats::t_quantile(1.0 - alpha / 2.0, self.df) * self.se;
        (self.delta - h, self.delta + h)
    }
}

/// Benjamini-Hochberg adjusted p-values of `p` over the effects, counting identical effects
/// once: the frames of one chain that every sample passes through (`main` and the functions
/// that call it) have the same values in every run and are one hypothesis, not many. Returns
/// the adjusted values in order, and the number of distinct hypotheses.
pub fn adjust(effects: &[Effect], p: impl Fn(&Effect) -> f64) -> (Vec<f64>, usize) {
    let key = Effect::key;
    let mut distinct: Vec<(u64, u64, u64)> = effects.iter().map(key).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let ps: Vec<f64> = distinct
        .iter()
        .map(|k| {
            let e = effects
                .iter()
                .find(|e| key(e) == *k)
                .expect("a key of an effect");
            p(e)
        })
        .collect();
    let qs = stats::benjamini_hochberg(&ps);
    let out = effects
        .iter()
        .map(|e| qs[distinct.binary_search(&key(e)).expect("every key is kept")])
        .collect();
    (out, distinct.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(values: &[f64]) -> Vec<RunValue> {
        values
            .iter()
            .map(|&value| RunValue {
                value,
                ..RunValue::default()
            })
            .collect()
    }

    #[test]
    fn three_runs_against_three_is_welchs_t() {
        // R: t.test(c(0.25, 0.26, 0.24), c(0.05, 0.06, 0.04)): t = 24.495, df = 4,
        // p-value = 1.648e-05, 95 % CI 0.1773 0.2227.
        let b = level(&runs(&[0.05, 0.06, 0.04]), None, None).unwrap();
        let c = level(&runs(&[0.25, 0.26, 0.24]), None, None).unwrap();
        let e = effect(b, c);
        assert!((e.delta - 0.2).abs() < 1e-12);
        assert!((e.df - 4.0).abs() < 1e-9);
        assert!((e.p() - 1.6483e-5).abs() < 1e-8, "{}", e.p());
        let (lo, hi) = e.interval(0.05);
        assert!((lo - 0.177_33).abs() < 1e-4 && (hi - 0.222_67).abs() < 1e-4);
        // The 20-point change surely exceeds 5 points, not 21.
        assert!(e.p_above(0.05) < 1e-4);
        assert!(e.p_above(0.21) > 0.5);
        assert!(e.lower(0.05) > 0.18);
    }

    #[test]
    fn windows_keep_agreeing_runs_from_claiming_too_much() {
        let noisy = |value: f64| RunValue {
            value,
            windows: vec![value - 0.02, value + 0.02, value - 0.02, value + 0.02],
            sampling: 0.0,
        };
        // Three runs that agree to 1e-4 but whose windows wander by 2 points: the run's value
        // is only known to within about a point, whatever the runs' own agreement says.
        let b = [noisy(0.1), noisy(0.1001), noisy(0.0999)];
        let l = level(&b, None, None).unwrap();
        let within = (0.02f64 * 0.02 * 4.0 / 3.0) / 4.0;
        assert!((l.var - within / 3.0).abs() < 1e-12, "{l:?}");
        // The floor that binds brings its degrees of freedom: 3 windows less than 12.
        assert_eq!(l.df, 9.0);
        let two = level(&b[..2], None, None).unwrap();
        assert_eq!(two.df, 1.0, "two runs keep theirs");
        let s = spread(&b);
        assert!((s.between_runs.unwrap() - 1e-4).abs() < 1e-9);
        assert!((s.within_run.unwrap() - within.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn one_run_has_no_level_unless_its_windows_are_allowed_to_stand_in() {
        let one = [RunValue {
            value: 0.3,
            windows: vec![0.29, 0.31, 0.3, 0.3],
            sampling: 0.0,
        }];
        assert_eq!(level(&one, None, None), None);
        let l = level(&one, Some(2.0), None).unwrap();
        assert_eq!(l.df, 3.0);
        assert!((l.var - 2.0 * (0.0002 / 3.0) / 4.0).abs() < 1e-15, "{l:?}");
        assert_eq!(level(&runs(&[0.3]), Some(2.0), None), None);
    }

    #[test]
    fn nothing_varies() {
        let same = level(&runs(&[0.5, 0.5]), None, None).unwrap();
        let e = effect(same, same);
        assert_eq!(e.p(), 1.0);
        assert_eq!(e.p_above(0.0), 0.5);
        let up = level(&runs(&[0.6, 0.6]), None, None).unwrap();
        let e = effect(same, up);
        assert_eq!(e.p(), 0.0);
        assert_eq!(e.p_above(0.05), 0.0);
        assert_eq!(e.p_above(0.2), 1.0);
    }

    #[test]
    fn one_run_against_several_varies_as_they_do() {
        // Student's t of one value against three: se^2 = s^2 (1 + 1/3) with s^2 = 1e-4.
        let e = change(
            &runs(&[0.05, 0.06, 0.04]),
            &runs(&[0.09]),
            OneRun::Unknown,
            None,
        )
        .unwrap();
        assert!((e.delta - 0.04).abs() < 1e-12);
        assert!((e.se - (1e-4f64 * 4.0 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(e.df, 2.0);
        let swapped = change(
            &runs(&[0.09]),
            &runs(&[0.05, 0.06, 0.04]),
            OneRun::Unknown,
            None,
        )
        .unwrap();
        assert!((swapped.delta + 0.04).abs() < 1e-12 && swapped.se == e.se);
        // One run each: unknown, unless both are parts of the same runs.
        assert!(change(&runs(&[0.1]), &runs(&[0.2]), OneRun::Unknown, None).is_none());
        let w = |value: f64| RunValue {
            value,
            windows: vec![value - 0.01, value + 0.01, value],
            sampling: 0.0,
        };
        let e = change(&[w(0.1)], &[w(0.2)], OneRun::SameRuns, None).unwrap();
        assert!((e.delta - 0.1).abs() < 1e-12);
        assert!(e.p() < 0.01, "{e:?}");
    }

    #[test]
    fn only_a_frame_one_side_lacks_borrows_the_law() {
        let prior = Prior {
            dispersion: 0.0,
            scale: 2.0,
            df: 4.0,
        };
        // New code: the candidate's runs 0.03, 0.05, 0.04 (variance 1e-4, 2 degrees of
        // freedom), sampling 5e-5, the law 2 * 5e-5: (4 * 1e-4 + 2 * 1e-4) / 6 = 1e-4 with
        // 6 degrees of freedom, the base side nothing.
        let base = RunValue::runs(&[0.0; 3], 0.0);
        let cand = RunValue::runs(&[0.03, 0.05, 0.04], 5e-5);
        let e = change(&base, &cand, OneRun::Unknown, Some(&prior)).unwrap();
        assert!((e.delta - 0.04).abs() < 1e-12);
        assert!((e.se - (1e-4f64 / 3.0).sqrt()).abs() < 1e-12, "{e:?}");
        assert!((e.df - 6.0).abs() < 1e-9, "{e:?}");
        let plain = change(&base, &cand, OneRun::Unknown, None).unwrap();
        assert!((plain.df - 2.0).abs() < 1e-9, "{plain:?}");
        // Against one run of the base, the same.
        let e1 = change(&base[..1], &cand, OneRun::Unknown, Some(&prior)).unwrap();
        assert_eq!(e1.df, 6.0);
        // A frame both sides have keeps its own spread, and two runs are not moderated.
        let both = change(&cand, &cand, OneRun::Unknown, Some(&prior)).unwrap();
        assert!((both.df - 4.0).abs() < 1e-9, "{both:?}");
        let two = change(&base[..2], &cand[..2], OneRun::Unknown, Some(&prior)).unwrap();
        assert_eq!(two.df, 1.0);
    }

    #[test]
    fn sampling_noise_is_a_floor_for_runs_that_agree_by_chance() {
        let agree = |value: f64| RunValue {
            value,
            windows: Vec::new(),
            sampling: 1e-4,
        };
        let l = level(&[agree(0.2), agree(0.2), agree(0.2)], None, None).unwrap();
        assert!((l.var - 1e-4 / 3.0).abs() < 1e-15, "{l:?}");
    }

    #[test]
    fn identical_effects_are_one_hypothesis() {
        let e = |delta: f64| Effect {
            delta,
            se: 0.01,
            df: 4.0,
        };
        // Three frames of one chain and one other: BH over two p-values, not four.
        let effects = [e(0.03), e(0.03), e(0.03), e(0.0)];
        let (q, m) = adjust(&effects, Effect::p);
        assert_eq!(m, 2);
        let alone = stats::benjamini_hochberg(&[e(0.03).p(), e(0.0).p()]);
        assert_eq!(q, [alone[0], alone[0], alone[0], alone[1]]);
    }
}
