//! Latency distributions compared (off-CPU blocked and preempted time, connect latency):
//! percentile shifts and a two-sample Kolmogorov-Smirnov test on the pooled events, and per
//! run the p99, whose change the latency gate judges with runs as units.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{
    compare::{Base, Run},
    estimate::{self, Effect, OneRun, RunValue},
    history::{Baseline, LatencySummary},
};
use crate::stats;

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
    }
}

/// A latency distribution compared: percentile shifts and a two-sample KS test on the pooled
/// events, and the change of the p99 with runs as units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyChange {
    pub name: String,
    pub base: Percentiles,
    pub cand: Percentiles,
    /// Relative shifts in percent of the base value.
    pub p50_shift_pct: f64,
    pub p99_shift_pct: f64,
    /// KS over the pooled events (None against a baseline store, which keeps no events).
    pub ks_d: Option<f64>,
    pub ks_p: Option<f64>,
    /// KS finds the distributions different (with hundreds of events it also finds the normal
    /// drift of scheduling between two runs of one program: the gate does not use it).
    pub significant: bool,
    /// Change of ln(p99) from the base's runs to the candidate's: what the gate judges.
    #[serde(skip)]
    pub effect: Option<Effect>,
}

impl LatencyChange {
    /// The p99 change in percent of the base, with its two-sided interval at 1 - `alpha`,
    /// from the runs.
    pub fn p99_change_pct(&self, alpha: f64) -> Option<(f64, f64, f64)> {
        let e = self.effect?;
        let (lo, hi) = e.interval(alpha);
        let pct = |x: f64| x.exp_m1() * 100.0;
        Some((pct(e.delta), pct(lo), pct(hi)))
    }
}

fn shift_pct(base: u64, cand: u64) -> f64 {
    if base == 0 {
        if cand == 0 { 0.0 } else { f64::INFINITY }
    } else {
        (cand as f64 - base as f64) / base as f64 * 100.0
    }
}

/// Values of a histogram with their counts, for the KS test.
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    h.iter_recorded()
        .map(|v| {
            (
                h.highest_equivalent(v.value_iterated_to()) as f64,
                v.count_at_value(),
            )
        })
        .collect()
}

/// A run's distribution as a baseline keeps it: count, p50, p99, and the standard error of
/// ln(p99) from sampling: the ranks n q +- z sqrt(n q (1 - q)) bound a 95 % interval of the
/// quantile (the order-statistic interval), whose width on the log scale is 2 z of them.
pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    const Q: f64 = 0.99;
    const Z: f64 = 1.96;
    let n = h.len() as f64;
    let half = Z * (Q * (1.0 - Q) / n.max(1.0)).sqrt();
    let at = |q: f64| (h.value_at_quantile(q.clamp(0.0, 1.0)).max(1) as f64).ln();
    LatencySummary {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(Q),
        p99_log_se: (at(Q + half) - at(Q - half)) / (2.0 * Z),
    }
}

fn log_p99(s: &LatencySummary) -> RunValue {
    RunValue {
        value: (s.p99.max(1) as f64).ln(),
        windows: Vec::new(),
        sampling: s.p99_log_se.powi(2),
    }
}

/// Per run, the summary of distribution `name` (runs without it are left out).
fn run_summaries(runs: &[Run], name: &str) -> Vec<LatencySummary> {
    runs.iter()
        .filter_map(|r| r.latency.get(name).map(summarize))
        .collect()
}

/// Compares the latency distributions both sides have (by name). Against a baseline's history,
/// the base's p50 and p99 are the moving averages of its runs'.
pub fn compare_latency(
    base: Base<'_>,
    base_pooled: &BTreeMap<String, Histogram<u64>>,
    cand: &[Run],
    cand_pooled: &BTreeMap<String, Histogram<u64>>,
    alpha: f64,
) -> Vec<LatencyChange> {
    cand_pooled
        .iter()
        .filter_map(|(name, hc)| {
            let pc = percentiles(hc);
            let cand_runs: Vec<RunValue> = run_summaries(cand, name).iter().map(log_p99).collect();
            let (pb, ks, effect) = match base {
                Base::Runs(runs) => {
                    let hb = base_pooled.get(name)?;
                    let ks = stats::ks_two_sample(&buckets(hb), &buckets(hc))?;
                    let b: Vec<RunValue> = run_summaries(runs, name).iter().map(log_p99).collect();
                    (
                        percentiles(hb),
                        Some(ks),
                        estimate::change(&b, &cand_runs, OneRun::Unknown, None),
                    )
                }
                Base::History(history) => {
                    let kept: Vec<&LatencySummary> =
                        history.iter().filter_map(|r| r.latency.get(name)).collect();
                    let logs: Vec<RunValue> = kept.iter().map(|s| log_p99(s)).collect();
                    let values: Vec<f64> = logs.iter().map(|v| v.value).collect();
                    let floor =
                        logs.iter().map(|v| v.sampling).sum::<f64>() / logs.len().max(1) as f64;
                    let b = Baseline::new(&values, floor)?;
                    let p50s: Vec<f64> = kept.iter().map(|s| (s.p50.max(1) as f64).ln()).collect();
                    let p50 = Baseline::new(&p50s, 0.0).map_or(0.0, |x| x.ewma);
                    let pb = Percentiles {
                        count: kept.last().map_or(0, |s| s.count),
                        p50: p50.exp().round() as u64,
                        p99: b.ewma.exp().round() as u64,
                    };
                    (pb, None, b.effect(&cand_runs, None))
                }
            };
            Some(LatencyChange {
                name: name.clone(),
                p50_shift_pct: shift_pct(pb.p50, pc.p50),
                p99_shift_pct: shift_pct(pb.p99, pc.p99),
                base: pb,
                cand: pc,
                ks_d: ks.map(|k| k.d),
                ks_p: ks.map(|k| k.p),
                significant: ks.is_some_and(|k| k.p < alpha),
                effect,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: impl Iterator<Item = u64>) -> Histogram<u64> {
        let mut h = crate::analyze::new_histogram();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    /// `n` runs of 2000 latencies from `low` up, `spread` wide, each run a little slower
    /// than the one before.
    fn runs(n: u64, low: u64, spread: u64) -> (Vec<Run>, BTreeMap<String, Histogram<u64>>) {
        let mut pooled = BTreeMap::new();
        let runs = (0..n)
            .map(|r| {
                let h = histogram((0..2000).map(|i| low + r * low / 50 + i % spread));
                pooled
                    .entry("blocked".to_owned())
                    .or_insert_with(crate::analyze::new_histogram)
                    .add(&h)
                    .unwrap();
                Run {
                    latency: BTreeMap::from([("blocked".to_owned(), h)]),
                    ..Run::default()
                }
            })
            .collect();
        (runs, pooled)
    }

    #[test]
    fn p99_changes_are_judged_over_runs_and_ks_over_events() {
        let (base, bp) = runs(3, 100, 50);
        let (slow, sp) = runs(3, 200, 100);
        let l = compare_latency(Base::Runs(&base), &bp, &slow, &sp, 0.05);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].ks_d, Some(1.0));
        assert!(l[0].significant);
        assert!(l[0].p99_shift_pct > 90.0, "{}", l[0].p99_shift_pct);
        let (c, lo, hi) = l[0].p99_change_pct(0.05).unwrap();
        assert!(c > 90.0 && lo > 50.0 && hi < 150.0, "{c} [{lo}, {hi}]");
        // The same runs again: KS finds nothing, the runs' p99 change is about 0.
        let (again, ap) = runs(3, 100, 50);
        let l = compare_latency(Base::Runs(&base), &bp, &again, &ap, 0.05);
        assert_eq!(l[0].ks_d, Some(0.0));
        let (c, lo, hi) = l[0].p99_change_pct(0.05).unwrap();
        assert!(c.abs() < 1e-9 && lo < 0.0 && hi > 0.0, "{c} [{lo}, {hi}]");
    }

    #[test]
    fn a_p99_has_the_sampling_error_of_its_rank() {
        // 10000 values 1..=10000: p99 = 9900; the ranks 99 % +- 1.96 sqrt(0.99 0.01 / 10000)
        // are 9880.5 and 9919.5, so about ln(9920 / 9881) / 3.92 = 0.001.
        let s = summarize(&histogram(1..=10_000));
        assert_eq!(s.count, 10_000);
        assert!((s.p99 as f64 - 9900.0).abs() <= 10.0, "{s:?}");
        assert!((s.p99_log_se - 0.001).abs() < 0.0003, "{s:?}");
    }
}
