//! Statistics for `diff`: the two-sample tests that decide whether a change between two sets
//! of measurements is larger than their own spread. Pure functions over plain numbers, checked
//! against reference values (R, SciPy) in the tests below, so the rest of bar can rely on them.

use statrs::{
    distribution::{ContinuousCDF, Normal, StudentsT},
    function::erf::erfc,
};

/// A two-sided Mann-Whitney U test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of the first sample: pairs (x, y) with x > y, ties counting one half.
    pub u: f64,
    pub p: f64,
    /// Whether `p` comes from the exact permutation distribution (else the normal
    /// approximation).
    pub exact: bool,
}

/// Pooled sizes up to this are tested with the exact permutation distribution of the rank
/// sum, ties included. Above it the normal approximation is accurate, and the exact count
/// (which grows with the cube of the pooled size) would cost more than it adds.
pub const EXACT_MAX: usize = 50;

/// Midranks of the pooled sample, doubled so that they are integers (a tie group over sorted
/// positions i..j, 1-based, has midrank (i + j) / 2), in the order of `values`, plus the tie
/// correction term: the sum of t^3 - t over groups of t tied values.
fn doubled_midranks(values: &[f64]) -> (Vec<u64>, f64) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0; values.len()];
    let mut ties = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && values[order[j]] == values[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) are ranks i+1..=j: doubled midrank i+1+j.
        for &k in &order[i..j] {
            ranks[k] = (i + 1 + j) as u64;
        }
        let t = (j - i) as f64;
        ties += t * t * t - t;
        i = j;
    }
    (ranks, ties)
}

/// Two-sided Mann-Whitney U (Wilcoxon rank-sum) test of `x` against `y`; None when either is
/// empty. Small samples get the exact p-value of the permutation distribution, which handles
/// ties (R's `wilcox.test` falls back to the normal approximation there); larger ones the
/// normal approximation with tie and continuity corrections, as R and SciPy compute it.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> Option<MannWhitney> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let pooled: Vec<f64> = x.iter().chain(y).copied().collect();
    let (ranks, ties) = doubled_midranks(&pooled);
    let r1_doubled: u64 = ranks[..n1].iter().sum();
    let u = r1_doubled as f64 / 2.0 - (n1 * (n1 + 1)) as f64 / 2.0;
    let n = n1 + n2;
    if n <= EXACT_MAX {
        return Some(MannWhitney {
            u,
            p: exact_rank_sum_p(&ranks, n1, r1_doubled),
            exact: true,
        });
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let mean = n1f * n2f / 2.0;
    let var = n1f * n2f / 12.0 * ((nf + 1.0) - ties / (nf * (nf - 1.0)));
    let p = if var <= 0.0 {
        // Every value tied: no evidence of any difference.
        1.0
    } else {
        let z = ((u - mean).abs() - 0.5) / var.sqrt();
        if z <= 0.0 {
            1.0
        } else {
            erfc(z / std::f64::consts::SQRT_2).min(1.0)
        }
    };
    Some(MannWhitney { u, p, exact: false })
}

/// Exact two-sided p-value of a rank sum: among all ways to choose `k` of the pooled
/// (doubled mid-)ranks, the share whose sum is at most / at least the observed one; the
/// smaller tail, doubled. Counted by dynamic programming over (chosen, sum); counts are f64
/// because C(50, 25) is beyond u32 and f64 holds it well within its 53 exact bits.
fn exact_rank_sum_p(ranks: &[u64], k: usize, observed: u64) -> f64 {
    let total_sum: u64 = ranks.iter().sum();
    // The complement has the same distribution of tails, so count with the smaller side.
    let (k, observed) = if k * 2 > ranks.len() {
        (ranks.len() - k, total_sum - observed)
    } else {
        (k, observed)
    };
    let width = total_sum as usize + 1;
    let mut ways = vec![0.0f64; (k + 1) * width];
    ways[0] = 1.0;
    for (seen, &r) in ranks.iter().enumerate() {
        let r = r as usize;
        for chosen in (1..=k.min(seen + 1)).rev() {
            let (below, row) = ways.split_at_mut(chosen * width);
            let prev = &below[(chosen - 1) * width..];
            for s in (r..width).rev() {
                row[s] += prev[s - r];
            }
        }
    }
    let last = &ways[k * width..];
    let all: f64 = last.iter().sum();
    let obs = observed as usize;
    let lower: f64 = last[..=obs].iter().sum::<f64>() / all;
    let upper: f64 = last[obs..].iter().sum::<f64>() / all;
    (2.0 * lower.min(upper)).min(1.0)
}

/// A two-sample Kolmogorov-Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ks {
    /// Largest distance between the two empirical CDFs.
    pub d: f64,
    /// Asymptotic two-sided p-value.
    pub p: f64,
}

/// Two-sample Kolmogorov-Smirnov test of two samples given as (value, count) pairs, as a
/// histogram stores them; None when either is empty. The p-value is the asymptotic one
/// (Kolmogorov's limiting distribution at sqrt(n m / (n + m)) D, as R's `ks.test` uses for
/// large samples): latency histograms hold thousands of values. Values shared by both samples
/// (histogram buckets are ties) make the test conservative, never the reverse.
pub fn ks_two_sample(a: &[(f64, u64)], b: &[(f64, u64)]) -> Option<Ks> {
    let na: u64 = a.iter().map(|x| x.1).sum();
    let nb: u64 = b.iter().map(|x| x.1).sum();
    if na == 0 || nb == 0 {
        return None;
    }
    let sorted = |s: &[(f64, u64)]| {
        let mut v = s.to_vec();
        v.sort_by(|p, q| p.0.total_cmp(&q.0));
        v
    };
    let (a, b) = (sorted(a), sorted(b));
    let (mut i, mut j, mut ca, mut cb) = (0, 0, 0u64, 0u64);
    let mut d = 0.0f64;
    while i < a.len() || j < b.len() {
        let v = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.min(y.0),
            (Some(x), None) => x.0,
            (None, Some(y)) => y.0,
            (None, None) => break,
        };
        // Both CDFs step over every copy of v before they are compared.
        while let Some(x) = a.get(i).filter(|x| x.0 == v) {
            ca += x.1;
            i += 1;
        }
        while let Some(y) = b.get(j).filter(|y| y.0 == v) {
            cb += y.1;
            j += 1;
        }
        d = d.max((ca as f64 / na as f64 - cb as f64 / nb as f64).abs());
    }
    let (naf, nbf) = (na as f64, nb as f64);
    let en = (naf * nbf / (naf + nbf)).sqrt();
    Some(Ks {
        d,
        p: kolmogorov_sf(en * d),
    })
}

/// P(K > x) for Kolmogorov's distribution. Two series of the same function: the alternating
/// one converges fast for large x, the theta-function form for small x (Marsaglia, Tsang and
/// Wang 2003, and Numerical Recipes, switch at about the same point).
pub fn kolmogorov_sf(x: f64) -> f64 {
    use std::f64::consts::PI;
    if x <= 0.0 {
        return 1.0;
    }
    if x < 1.18 {
        let k = -PI * PI / (8.0 * x * x);
        let cdf: f64 = (1..=20)
            .map(|j| {
                let odd = f64::from(2 * j - 1);
                (k * odd * odd).exp()
            })
            .sum::<f64>()
            * (2.0 * PI).sqrt()
            / x;
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    let mut sum = 0.0;
    for j in 1..=100 {
        let jf = f64::from(j);
        let term = (-2.0 * jf * jf * x * x).exp();
        sum += if j % 2 == 1 { term } else { -term };
        if term < 1e-17 {
            break;
        }
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Benjamini-Hochberg adjusted p-values (R's `p.adjust(p, "BH")`), in the order given: a
/// change is called significant when its adjusted value is below the level, which keeps the
/// expected share of false discoveries among the frames flagged at that level.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let mut adjusted = vec![0.0; m];
    let mut running = 1.0f64;
    // From the largest p down: q(i) = min over j >= i of p(j) m / j.
    for (pos, &idx) in order.iter().enumerate() {
        let rank = (m - pos) as f64;
        running = running.min(p[idx] * m as f64 / rank);
        adjusted[idx] = running.min(1.0);
    }
    adjusted
}

/// P(T > t) for Student's t with `df` degrees of freedom (fractional, as Welch's
/// approximation gives them); the normal tail when `df` is infinite.
pub fn t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return 1.0;
    }
    match StudentsT::new(0.0, 1.0, df.max(f64::MIN_POSITIVE)) {
        Ok(d) => d.sf(t),
        Err(_) => 1.0,
    }
}

/// The `p` quantile of Student's t with `df` degrees of freedom (the normal's for an infinite
/// or huge `df`, where statrs' inverse does not converge).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    if df.is_nan() || df > 1e7 {
        return Normal::standard().inverse_cdf(p);
    }
    match StudentsT::new(0.0, 1.0, df.max(f64::MIN_POSITIVE)) {
        Ok(d) => d.inverse_cdf(p),
        Err(_) => f64::INFINITY,
    }
}

/// Welch-Satterthwaite degrees of freedom of a sum of independent variance estimates, each
/// given as (variance, its degrees of freedom).
pub fn satterthwaite(parts: &[(f64, f64)]) -> f64 {
    let total: f64 = parts.iter().map(|p| p.0).sum();
    let denom: f64 = parts
        .iter()
        .filter(|p| p.0 > 0.0)
        .map(|(v, df)| v * v / df)
        .sum();
    if denom > 0.0 {
        total * total / denom
    } else {
        f64::INFINITY
    }
}

/// Sample mean and variance (n - 1 in the denominator); the variance is None for fewer than
/// two values.
pub fn mean_var(x: &[f64]) -> (f64, Option<f64>) {
    let n = x.len() as f64;
    if x.is_empty() {
        return (0.0, None);
    }
    let mean = x.iter().sum::<f64>() / n;
    let var = (x.len() >= 2).then(|| x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0));
    (mean, var)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-300)
    }

    #[test]
    fn mann_whitney_exact_without_ties_matches_r() {
        // R: wilcox.test(x, y) on the example of its help page: W = 35, p-value = 0.2544.
        let x = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46];
        let y = [1.15, 0.88, 0.90, 0.74, 1.21];
        let t = mann_whitney(&x, &y).unwrap();
        assert!(t.exact);
        assert_eq!(t.u, 35.0);
        assert!(close(t.p, 0.254_412_254_412_254_4, 1e-9), "{}", t.p);
        // Swapping the samples gives the other U and the same p.
        let s = mann_whitney(&y, &x).unwrap();
        assert_eq!(s.u, 15.0);
        assert!(close(s.p, t.p, 1e-12));
    }

    #[test]
    fn mann_whitney_exact_with_ties_matches_a_full_permutation_count() {
        // Reference: SciPy's permutation_test over all 3432 splits of the statistic U,
        // two-sided (twice the smaller tail).
        let x = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0];
        let y = [3.0, 4.0, 4.0, 5.0, 5.0, 6.0, 2.0];
        let t = mann_whitney(&x, &y).unwrap();
        assert!(t.exact);
        assert_eq!(t.u, 8.5);
        assert!(close(t.p, 0.050_116_550_116_550_12, 1e-9), "{}", t.p);
    }

    #[test]
    fn mann_whitney_separated_samples_reach_the_smallest_exact_p() {
        // Complete separation of 12 against 12: 2 of C(24, 12) splits are as extreme.
        let x: Vec<f64> = (0..12).map(f64::from).collect();
        let y: Vec<f64> = (100..112).map(f64::from).collect();
        let t = mann_whitney(&x, &y).unwrap();
        assert!(close(t.p, 2.0 / 2_704_156.0, 1e-12), "{}", t.p);
        assert_eq!(t.u, 0.0);
    }

    #[test]
    fn mann_whitney_normal_approximation_matches_scipy() {
        // SciPy: mannwhitneyu(x, y, method="asymptotic", use_continuity=True), with ties.
        let x: Vec<f64> = (0..30).map(|i| f64::from(i % 7)).collect();
        let y: Vec<f64> = (0..31)
            .map(|i| f64::from(i % 9) + 0.5 * f64::from(i % 2))
            .collect();
        let t = mann_whitney(&x, &y).unwrap();
        assert!(!t.exact);
        assert_eq!(t.u, 356.0);
        assert!(close(t.p, 0.116_170_296_798_523_5, 1e-9), "{}", t.p);
    }

    #[test]
    fn mann_whitney_degenerate_inputs() {
        assert!(mann_whitney(&[], &[1.0]).is_none());
        let t = mann_whitney(&[0.0; 4], &[0.0; 5]).unwrap();
        assert_eq!(t.p, 1.0);
        let big = mann_whitney(&[0.0; 40], &[0.0; 40]).unwrap();
        assert!(!big.exact);
        assert_eq!(big.p, 1.0);
    }

    #[test]
    fn ks_matches_scipy_on_raw_samples() {
        // SciPy: ks_2samp(a, b) statistic, and kstwobign.sf(sqrt(n m / (n + m)) D).
        let a: Vec<(f64, u64)> = (0..60).map(|i| (f64::from(i * i % 53), 1)).collect();
        let b: Vec<(f64, u64)> = (0..45).map(|i| (f64::from(i * 7 % 61) + 3.0, 1)).collect();
        let t = ks_two_sample(&a, &b).unwrap();
        assert!(close(t.d, 0.2, 1e-12), "{}", t.d);
        assert!(close(t.p, 0.255_103_473_096_965, 1e-9), "{}", t.p);
    }

    #[test]
    fn ks_counts_weigh_like_repeated_values() {
        let a = [(1.0, 3), (2.0, 1)];
        let b = [(1.0, 1), (1.0, 1), (1.0, 1), (2.0, 1)];
        assert_eq!(ks_two_sample(&a, &b).unwrap().d, 0.0);
        let far = ks_two_sample(&[(1.0, 500)], &[(9.0, 500)]).unwrap();
        assert_eq!(far.d, 1.0);
        assert!(far.p < 1e-100);
        assert!(ks_two_sample(&[], &a).is_none());
    }

    #[test]
    fn kolmogorov_distribution_matches_tables() {
        // SciPy kstwobign.sf at points on both sides of the switch between the series.
        for (x, p) in [
            (0.3, 0.999_990_694_198_665_5),
            (0.8, 0.544_142_411_574_198_1),
            (1.0, 0.269_999_671_677_354_56),
            (1.17, 0.129_390_042_185_618_84),
            (1.19, 0.117_742_292_879_771_66),
            (1.358, 0.050_026_797_334_446_98),
            (2.0, 6.709_252_557_796_953e-4),
        ] {
            let got = kolmogorov_sf(x);
            assert!(close(got, p, 1e-9), "sf({x}) = {got}, want {p}");
        }
        assert_eq!(kolmogorov_sf(0.0), 1.0);
    }

    #[test]
    fn benjamini_hochberg_matches_r() {
        // R: p.adjust(c(0.01, 0.04, 0.03, 0.005, 0.5), "BH").
        let q = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005, 0.5]);
        let want = [0.025, 0.05, 0.05, 0.025, 0.5];
        for (g, w) in q.iter().zip(want) {
            assert!(close(*g, w, 1e-12), "{q:?}");
        }
        assert!(benjamini_hochberg(&[]).is_empty());
    }

    #[test]
    fn student_t_matches_r() {
        // R: qt(0.975, 4); qt(0.95, 2.5) and pt(3, 4, lower.tail = FALSE) checked by numerical
        // integration of the density.
        assert!(close(t_quantile(0.975, 4.0), 2.776_445_105_197_8, 1e-9));
        assert!(close(t_quantile(0.95, 2.5), 2.558_218_5, 1e-6));
        assert!(close(t_sf(3.0, 4.0), 0.019_970_984_037_85, 1e-7));
        assert!(close(
            t_sf(1.959_963_984_540_054, f64::INFINITY),
            0.025,
            1e-9
        ));
        // R: t.test(c(1, 2, 4), c(3, 5, 8, 9))$parameter, Welch's df = 4.7638.
        let (ma, va) = mean_var(&[1.0, 2.0, 4.0]);
        let (mb, vb) = mean_var(&[3.0, 5.0, 8.0, 9.0]);
        assert!(close(ma, 7.0 / 3.0, 1e-12) && close(mb, 6.25, 1e-12));
        let df = satterthwaite(&[(va.unwrap() / 3.0, 2.0), (vb.unwrap() / 4.0, 3.0)]);
        assert!(close(df, 4.763_779_527_559_05, 1e-9), "{df}");
        assert_eq!(mean_var(&[2.0]), (2.0, None));
    }
}
