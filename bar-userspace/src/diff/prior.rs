//! Empirical Bayes for a frame's spread between runs. Three runs measure how much a frame
//! varies with two degrees of freedom: the t quantile a change must clear is then 4.3 at 95 %,
//! and one unlucky draw of three runs hides a regression twice as large as their true spread.
//! But a comparison holds dozens of frames, and how much their shares vary from run to run
//! follows one law: counts sampled from the run (binomial for a share, Poisson for a rate),
//! plus the run's own slowdowns and speedups, which move a frame by a proportion of its share,
//! as the count data of sequencing experiments vary (the negative binomial's variance
//! mu + c mu^2 of edgeR and DESeq2). Fitted across the frames of a comparison, that law is a
//! prior for each frame's variance, and a frame's variance is its own estimate shrunk toward
//! the prior, weighted by their degrees of freedom, as limma moderates genes' variances
//! (Smyth 2004): the prior's degrees of freedom are added to the frame's. Frames that vary
//! unlike the others make the prior's spread wide and its degrees of freedom few, so the
//! shrinkage adapts to how well the law holds.
//!
//! Measured on 360 recordings of the mix workload (2 s at 999 Hz; a 5-point regression in a
//! new function): the new function varies 1.2 times as much as sampling alone, the request
//! handlers 3 to 4 times, the housekeeping 30 times; the prior fitted over 3 runs per side has
//! about one degree of freedom, which is enough: 2 degrees of freedom become 3 and the t
//! quantile at 1 % falls from 7.0 to 4.5. `estimate::change` says which frames it moderates.

use std::collections::HashSet;

use statrs::function::gamma::digamma;

use super::estimate::RunValue;
use crate::stats;

/// Fewer runs than this on a side are not moderated: two runs agree by chance too often
/// (see `estimate::run_var`), and their one degree of freedom let shrinkage call 9 % of
/// unchanged pairs changed where three runs held 2 % (simulated on the recordings above).
pub const MIN_RUNS: usize = 3;
/// Fewer frames than this say nothing of a law across frames.
const MIN_FRAMES: usize = 3;
/// The prior's degrees of freedom are at most this: a law fitted on a few dozen frames is not
/// known better, however well they agree with it.
pub const MAX_DF: f64 = 20.0;

/// The law of a comparison's frames: the variance of one run's value of a frame with mean `m`
/// and sampling variance `s` is `scale * (s + dispersion * m^2)`, known with `df` degrees of
/// freedom.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    /// Squared coefficient of variation of a frame beyond sampling (the median over frames).
    pub dispersion: f64,
    pub scale: f64,
    pub df: f64,
}

/// One side's runs of one frame as the fit sees them.
struct Observed {
    mean: f64,
    var: f64,
    sampling: f64,
    df: f64,
}

fn observe(runs: &[RunValue]) -> Option<Observed> {
    if runs.len() < MIN_RUNS {
        return None;
    }
    let values: Vec<f64> = runs.iter().map(|r| r.value).collect();
    let (mean, var) = stats::mean_var(&values);
    let sampling = runs.iter().map(|r| r.sampling).sum::<f64>() / runs.len() as f64;
    let var = var?;
    (var > 0.0 && sampling > 0.0 && mean > 0.0).then_some(Observed {
        mean,
        var,
        sampling,
        df: (runs.len() - 1) as f64,
    })
}

impl Prior {
    /// Fits the law to the sides' runs of the frames (each item one side's runs of one frame;
    /// sides of fewer than `MIN_RUNS` runs, absent or constant frames are left out, and the
    /// frames of one chain, identical in every run, count once). None without enough frames.
    ///
    /// The dispersion is the median of the frames' own excess over sampling (0 where sampling
    /// explains all); scale and degrees of freedom come from the distribution of the frames'
    /// log variances relative to the law, by the moments limma's `fitFDist` uses: the mean of
    /// a log chi-square is known from its degrees of freedom (digamma), its variance too
    /// (trigamma), and what the frames' log variances scatter beyond that is the prior's own
    /// spread, whose trigamma inverse is half the prior's degrees of freedom.
    pub fn fit<'a>(sides: impl IntoIterator<Item = &'a [RunValue]>) -> Option<Self> {
        let mut seen: HashSet<Vec<u64>> = HashSet::new();
        let obs: Vec<Observed> = sides
            .into_iter()
            .filter_map(|runs| {
                let o = observe(runs)?;
                seen.insert(runs.iter().map(|r| r.value.to_bits()).collect())
                    .then_some(o)
            })
            .collect();
        if obs.len() < MIN_FRAMES {
            return None;
        }
        let mut excess: Vec<f64> = obs
            .iter()
            .map(|o| ((o.var - o.sampling) / (o.mean * o.mean)).max(0.0))
            .collect();
        excess.sort_by(f64::total_cmp);
        let dispersion = excess[excess.len() / 2];
        let e: Vec<f64> = obs
            .iter()
            .map(|o| {
                let law = o.sampling + dispersion * o.mean * o.mean;
                (o.var / law).ln() - digamma(o.df / 2.0) + (o.df / 2.0).ln()
            })
            .collect();
        let n = e.len() as f64;
        let mean = e.iter().sum::<f64>() / n;
        let spread = e.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
            - obs.iter().map(|o| trigamma(o.df / 2.0)).sum::<f64>() / n;
        let df = if spread > 0.0 {
            (2.0 * trigamma_inverse(spread)).min(MAX_DF)
        } else {
            MAX_DF
        };
        Some(Self {
            dispersion,
            scale: (mean + digamma(df / 2.0) - (df / 2.0).ln()).exp(),
            df,
        })
    }

    /// The law's variance of one run's value of a frame of this mean and sampling variance.
    pub fn var(&self, mean: f64, sampling: f64) -> f64 {
        self.scale * (sampling + self.dispersion * mean * mean)
    }

    /// A side's variance of one run's value from its runs' own variance `var` (with one degree
    /// of freedom less than the runs), shrunk toward the law: the mean of the two weighted by
    /// their degrees of freedom, which add up.
    pub fn moderate(&self, runs: &[RunValue], var: f64) -> (f64, f64) {
        let n = runs.len();
        let mean = runs.iter().map(|r| r.value).sum::<f64>() / n as f64;
        let sampling = runs.iter().map(|r| r.sampling).sum::<f64>() / n as f64;
        let d = (n - 1) as f64;
        let prior = self.var(mean, sampling);
        ((self.df * prior + d * var) / (self.df + d), self.df + d)
    }
}

/// The trigamma function, the derivative of digamma: its recurrence up to 10, then its
/// asymptotic series (error under 1e-12 there).
pub fn trigamma(x: f64) -> f64 {
    let mut x = x;
    let mut acc = 0.0;
    while x < 10.0 {
        acc += 1.0 / (x * x);
        x += 1.0;
    }
    let x2 = 1.0 / (x * x);
    acc + 1.0 / x
        + x2 / 2.0
        + x2 / x * (1.0 / 6.0 - x2 * (1.0 / 30.0 - x2 * (1.0 / 42.0 - x2 / 30.0)))
}

/// The y with trigamma(y) = x, for x > 0: trigamma decreases from infinity to 0, so bisection
/// on log y finds it without the derivative.
pub fn trigamma_inverse(x: f64) -> f64 {
    let (mut lo, mut hi) = (-30.0f64, 30.0f64);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if trigamma(mid.exp()) > x {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    ((lo + hi) / 2.0).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigamma_and_its_inverse_have_known_values() {
        // trigamma(1) = pi^2 / 6, trigamma(1/2) = pi^2 / 2, trigamma(3.7) = 0.310037857670038
        // (R, SciPy).
        let pi2 = std::f64::consts::PI.powi(2);
        assert!((trigamma(1.0) - pi2 / 6.0).abs() < 1e-10);
        assert!((trigamma(0.5) - pi2 / 2.0).abs() < 1e-10);
        assert!((trigamma(3.7) - 0.310_037_857_670_038).abs() < 1e-11);
        for y in [0.01, 0.3, 1.0, 4.5, 80.0] {
            assert!(
                (trigamma_inverse(trigamma(y)) / y - 1.0).abs() < 1e-9,
                "{y}"
            );
        }
    }

    #[test]
    fn frames_that_follow_one_law_give_a_confident_prior() {
        // Frames whose three runs vary exactly as sampling does, chi-square draws of two
        // degrees of freedom (the quantiles 1/6 .. 5/6 of an exponential of mean 1): the law
        // is sampling alone, and with so little scatter beyond what two degrees of freedom
        // give by chance the prior is worth its maximum.
        let draws = [0.182, 0.405, 0.693, 1.099, 1.792];
        let sides: Vec<Vec<RunValue>> = draws
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let m = 0.1 + 0.01 * i as f64;
                let sampling = m * (1.0 - m) / 1000.0;
                // Three values of mean m and sample variance d * sampling.
                let h = (d * sampling).sqrt();
                RunValue::runs(&[m - h, m, m + h], sampling)
            })
            .collect();
        // (m - h, m, m + h) has sample variance h^2: check the construction first.
        let (_, v) = stats::mean_var(&sides[0].iter().map(|r| r.value).collect::<Vec<_>>());
        let s0 = 0.1 * 0.9 / 1000.0;
        assert!(
            (v.unwrap() / s0 - draws[0]).abs() < 1e-9,
            "{}",
            v.unwrap() / s0
        );
        let p = Prior::fit(sides.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(p.dispersion, 0.0, "{p:?}");
        assert_eq!(p.df, MAX_DF, "{p:?}");
        // The scale: the geometric mean of the draws corrected by digamma(10) - ln(10) to the
        // mean, with the draws' own correction ln(1) - digamma(1).
        let geo = draws.iter().map(|d: &f64| d.ln()).sum::<f64>() / 5.0;
        let want = (geo - digamma(1.0) + digamma(10.0) - 10f64.ln()).exp();
        assert!((p.scale - want).abs() < 1e-9, "{p:?} {want}");
        // A side's variance moves toward the law: 20 parts of the law to 2 of its own.
        let (v, df) = p.moderate(&sides[4], 1.792 * sides[4][0].sampling);
        let law = p.var(0.14, sides[4][0].sampling);
        assert_eq!(df, 22.0);
        assert!((v - (20.0 * law + 2.0 * 1.792 * sides[4][0].sampling) / 22.0).abs() < 1e-15);
    }

    #[test]
    fn frames_that_vary_unlike_each_other_give_a_weak_prior() {
        // Variances a thousandfold apart: the prior is worth less than one run.
        let sides: Vec<Vec<RunValue>> = [0.001, 0.1, 1.0, 10.0, 1000.0]
            .iter()
            .map(|&k: &f64| {
                let sampling = 1e-5;
                let h = (k * sampling).sqrt();
                RunValue::runs(&[0.2 - h, 0.2, 0.2 + h], sampling)
            })
            .collect();
        let p = Prior::fit(sides.iter().map(Vec::as_slice)).unwrap();
        assert!(p.df < 1.0, "{p:?}");
        // Too few frames, two runs, constant or absent frames: no prior.
        assert!(Prior::fit(sides[..2].iter().map(Vec::as_slice)).is_none());
        let two: Vec<Vec<RunValue>> = sides.iter().map(|s| s[..2].to_vec()).collect();
        assert!(Prior::fit(two.iter().map(Vec::as_slice)).is_none());
        let flat = [
            RunValue::runs(&[0.1; 3], 1e-4),
            RunValue::runs(&[0.0; 3], 0.0),
            RunValue::runs(&[0.2; 3], 1e-4),
        ];
        assert!(Prior::fit(flat.iter().map(Vec::as_slice)).is_none());
    }
}
