//! The CI gate: fails only on a change that is surely larger than the threshold, so that a
//! real but irrelevant change does not fail a build. Per code frame (or latency distribution)
//! whose growth exceeds the threshold, "the growth is at most the threshold" is tested
//! one-sided; the p-values are adjusted for the frames judged at once (Benjamini-Hochberg),
//! and an offender is one whose adjusted value is under the level: its lower confidence bound,
//! at the level the adjustment leaves, lies above the threshold.

use serde::Serialize;

use super::{
    compare::{FrameChange, Norm},
    estimate::{self, Effect},
    latency::LatencyChange,
};

/// What the gate watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateOn {
    /// Frames: a growth of a frame's total by more than the threshold, in points of share
    /// (`Share`) or in percent of the base rate (`PerSecond`).
    Frames,
    /// Latencies: a growth of a p99 by more than the threshold, in percent.
    Latency,
}

/// A change that fails the gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offender {
    pub name: String,
    /// The growth, as the threshold measures it (points or percent).
    pub growth: f64,
    /// Its lower confidence bound at the level left after adjusting for the frames judged:
    /// above the threshold.
    pub lower: f64,
    /// Adjusted one-sided p-value of "grew by at most the threshold".
    pub p: f64,
}

/// A candidate for the gate: its name, its effect (in the unit it is measured in), the
/// threshold in that unit, and how to show a value of that unit as the threshold measures it.
struct Judged<'a> {
    name: &'a str,
    effect: Effect,
    threshold: f64,
    show: Box<dyn Fn(f64) -> f64 + 'a>,
}

/// Tests every candidate against its threshold and keeps those surely above it.
///
/// Only a candidate whose growth is above the threshold can offend, and of a hundred frames
/// most are far below it: the test is made on those selected, with p-values conditioned on the
/// selection (its growth above the threshold is its p-value under 1/2, so the conditional
/// p-value is twice the p-value, no smaller than uniform for a change at most the threshold),
/// adjusted over them alone. Adjusting over every frame would make a 3-run gate all but blind;
/// ignoring the selection would double its false alarms when changes sit at the threshold.
///
/// The adjustment is weighted (Benjamini-Hochberg on p / w, the weights averaging 1; Genovese,
/// Roeder and Wasserman 2006) by each candidate's precision, 1 / se^2: a frame whose share
/// wanders by 7 points from run to run (the housekeeping of a loaded machine, and every caller
/// of it) grows past a threshold of 1 point in half of all pairs and can never be shown to
/// exceed it, and it took its full share of the level from the one frame that could: a new
/// function's 4 points, known to within half a point, went unnoticed in 29 % of 3-run pairs
/// (the cause of most misses on the recordings of `cargo xtask bench gate`). Under no change
/// a frame's standard error says nothing of its growth (the sample mean and variance of
/// normal runs are independent), so weights from it keep the level.
fn judge(candidates: Vec<Judged<'_>>, alpha: f64) -> Vec<Offender> {
    let selected: Vec<&Judged<'_>> = candidates
        .iter()
        .filter(|c| c.effect.delta > c.threshold)
        .collect();
    let effects: Vec<Effect> = selected
        .iter()
        .map(|c| Effect {
            // The threshold moved into the effect: candidates alike in both are one hypothesis.
            delta: c.effect.delta - c.threshold,
            ..c.effect
        })
        .collect();
    let weight = precision_weights(&effects);
    let (qs, m) = estimate::adjust(&effects, |e| (2.0 * e.p_above(0.0)).min(1.0) / weight(e));
    // Weighted Benjamini-Hochberg at level alpha rejects the k smallest of the m distinct
    // weighted conditional p-values, each p at most alpha w k / m: the one-sided bounds at half
    // that level lie above the threshold.
    let mut rejected: Vec<(u64, u64, u64)> = effects
        .iter()
        .zip(&qs)
        .filter(|(_, q)| **q < alpha)
        .map(|(e, _)| e.key())
        .collect();
    rejected.sort_unstable();
    rejected.dedup();
    let level = alpha * rejected.len() as f64 / m.max(1) as f64 / 2.0;
    let mut out: Vec<Offender> = selected
        .iter()
        .zip(&effects)
        .zip(&qs)
        .filter(|(_, q)| **q < alpha)
        .map(|((c, e), q)| Offender {
            name: c.name.to_owned(),
            growth: (c.show)(c.effect.delta),
            lower: (c.show)(c.effect.lower((level * weight(e)).min(0.5))),
            p: *q,
        })
        .collect();
    out.sort_by(|a, b| b.growth.total_cmp(&a.growth));
    out
}

/// Weights of the distinct effects proportional to their precision, averaging 1 over them.
/// An effect known exactly (nothing varied: its p-value is 0 or 1 whatever its weight) weighs
/// 1 and takes nothing from the others.
fn precision_weights(effects: &[Effect]) -> impl Fn(&Effect) -> f64 {
    let mut distinct: Vec<Effect> = effects.to_vec();
    distinct.sort_unstable_by_key(Effect::key);
    distinct.dedup_by_key(|e| e.key());
    let varied: Vec<f64> = distinct
        .iter()
        .filter(|e| e.se > 0.0)
        .map(|e| 1.0 / (e.se * e.se))
        .collect();
    let mean = varied.iter().sum::<f64>() / varied.len().max(1) as f64;
    move |e: &Effect| {
        if e.se > 0.0 && mean > 0.0 {
            1.0 / (e.se * e.se) / mean
        } else {
            1.0
        }
    }
}

/// The frames that fail a gate of `threshold` (points of share, or percent of the base rate
/// per second): code frames whose change is known.
pub fn frames(threshold: f64, norm: Norm, frames: &[FrameChange], alpha: f64) -> Vec<Offender> {
    let candidates = frames
        .iter()
        .filter(|c| c.code)
        .filter_map(|c| {
            let effect = c.effect?;
            Some(match norm {
                Norm::Share => Judged {
                    name: &c.frame,
                    effect,
                    threshold: threshold / 100.0,
                    show: Box::new(|x| x * 100.0),
                },
                // Per second the threshold is a share of the base's rate; a frame the base
                // does not have grows without bound, so any sure growth offends.
                Norm::PerSecond => {
                    let base = c.base.total;
                    Judged {
                        name: &c.frame,
                        effect,
                        threshold: threshold / 100.0 * base,
                        show: Box::new(move |x| {
                            if base > 0.0 {
                                x / base * 100.0
                            } else {
                                f64::INFINITY
                            }
                        }),
                    }
                }
            })
        })
        .collect();
    judge(candidates, alpha)
}

/// The latency distributions whose p99 surely grew by more than `threshold` percent, judged on
/// ln(p99) with runs as units.
pub fn latency(threshold: f64, latency: &[LatencyChange], alpha: f64) -> Vec<Offender> {
    let candidates = latency
        .iter()
        .filter_map(|l| {
            Some(Judged {
                name: &l.name,
                effect: l.effect?,
                threshold: (threshold / 100.0).ln_1p(),
                show: Box::new(|x: f64| x.exp_m1() * 100.0),
            })
        })
        .collect();
    judge(candidates, alpha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{
        compare::{FrameWeight, Status},
        estimate::Spread,
    };

    fn change(frame: &str, base: f64, delta: f64, se: f64) -> FrameChange {
        FrameChange {
            frame: frame.into(),
            base: FrameWeight {
                total: base,
                self_: 0.0,
            },
            cand: FrameWeight {
                total: base + delta,
                self_: 0.0,
            },
            code: !frame.starts_with('['),
            effect: Some(Effect { delta, se, df: 4.0 }),
            spread: [Spread::default(); 2],
            p: None,
            p_adjusted: None,
            status: Status::Grew,
        }
    }

    #[test]
    fn only_a_change_surely_above_the_threshold_offends() {
        let all = [
            // 10 points, known to within half a point: surely more than 5.
            change("grew_a_lot", 0.10, 0.10, 0.005),
            // 2 points: real (4 standard errors) but below the threshold.
            change("grew_a_little", 0.10, 0.02, 0.005),
            // 8 points, but known only to within 3: could be under 5.
            change("noisy_big", 0.10, 0.08, 0.03),
            // Markers are never offenders.
            change("[unknown 0x1234]", 0.0, 0.30, 0.001),
            change("shrank", 0.30, -0.20, 0.005),
        ];
        let off = frames_gate(5.0, &all);
        assert_eq!(off.len(), 1, "{off:?}");
        assert_eq!(off[0].name, "grew_a_lot");
        assert!((off[0].growth - 10.0).abs() < 1e-9);
        assert!(off[0].lower > 5.0 && off[0].lower < 10.0, "{off:?}");
        assert!(frames_gate(10.0, &all).is_empty());
        // Per second, the threshold is percent of the base rate: +100 % and +20 %.
        let off = frames(50.0, Norm::PerSecond, &all, 0.05);
        assert_eq!(off.len(), 1, "{off:?}");
        assert_eq!(off[0].name, "grew_a_lot");
        let mut new = change("new", 0.0, 1.0, 0.01);
        new.base.total = 0.0;
        let off = frames(1e9, Norm::PerSecond, &[new], 0.05);
        assert_eq!(off[0].growth, f64::INFINITY);
    }

    fn frames_gate(t: f64, f: &[FrameChange]) -> Vec<Offender> {
        frames(t, Norm::Share, f, 0.05)
    }

    #[test]
    fn a_frame_that_wanders_does_not_take_the_level_from_one_that_is_known() {
        // 3.7 points over a gate of 1, known to within 0.9 (df 4): conditional p 0.040, under
        // the level alone. Beside it, a frame that wanders by 10 points and grew by 2 by
        // chance: with equal weights, the first needs p under 0.025; by precision, under
        // 0.0496.
        let known = change("slow", 0.0, 0.037, 0.009);
        let wanders = change("housekeeping", 0.14, 0.02, 0.10);
        let p = 2.0 * known.effect.unwrap().p_above(0.01);
        assert!(p > 0.025 && p < 0.0496, "{p}");
        let off = frames(1.0, Norm::Share, &[known.clone(), wanders.clone()], 0.05);
        assert_eq!(off.len(), 1, "{off:?}");
        assert_eq!(off[0].name, "slow");
        // Its weight: (1 / 0.009^2) / mean(1 / 0.009^2, 1 / 0.1^2) = 1.984; its bound, at
        // half of the level BH leaves it (0.05 * 1.984 / 2), lies above the threshold.
        let w = 2.0 / (1.0 + (0.009f64 / 0.1).powi(2));
        let lower = known.effect.unwrap().lower(0.05 * w / 2.0 / 2.0) * 100.0;
        assert!(
            (off[0].lower - lower).abs() < 1e-9 && lower > 1.0,
            "{off:?} {lower}"
        );
        // Weighed alike (the same standard error), neither offends.
        let mut alike = wanders;
        alike.effect = Some(Effect {
            se: 0.009,
            ..alike.effect.unwrap()
        });
        assert!(frames(1.0, Norm::Share, &[known, alike], 0.05).is_empty());
    }

    #[test]
    fn frames_far_below_the_threshold_do_not_dilute_the_test() {
        // 5 points known to within 1.25 (df 4): with a hundred unchanged frames counted, a
        // gate of 1 point would need 7.2 standard errors; among the selected it needs 2.8.
        let mut all: Vec<FrameChange> = (0..100)
            .map(|i| change(&format!("f{i}"), 0.1, 0.0001 * i as f64, 0.003))
            .collect();
        all.push(change("slow", 0.0, 0.05, 0.0125));
        let off = frames(1.0, Norm::Share, &all, 0.05);
        assert_eq!(off.len(), 1, "{off:?}");
        assert_eq!(off[0].name, "slow");
        // Changes that sit at the threshold: selected about half the time, and then judged
        // at half the level, not caught more than the level allows.
        let at = [change("at", 0.1, 0.0101, 0.0001)];
        assert!(frames(1.0, Norm::Share, &at, 0.05).is_empty());
    }

    #[test]
    fn the_latency_gate_judges_the_p99_in_percent() {
        let l = |name: &str, ratio: f64, se: f64| LatencyChange {
            name: name.into(),
            base: super::super::latency::Percentiles {
                count: 100,
                p50: 10,
                p99: 100,
            },
            cand: super::super::latency::Percentiles {
                count: 100,
                p50: 10,
                p99: (100.0 * ratio) as u64,
            },
            p50_shift_pct: 0.0,
            p99_shift_pct: (ratio - 1.0) * 100.0,
            ks_d: None,
            ks_p: None,
            significant: false,
            effect: Some(Effect {
                delta: ratio.ln(),
                se,
                df: 4.0,
            }),
        };
        let all = [
            l("slow", 3.0, 0.05),
            l("same", 1.05, 0.05),
            l("wild", 3.0, 2.0),
        ];
        let off = latency(100.0, &all, 0.05);
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].name, "slow");
        assert!((off[0].growth - 200.0).abs() < 1e-9);
        assert!(off[0].lower > 100.0);
        assert!(latency(250.0, &all, 0.05).is_empty());
    }
}
