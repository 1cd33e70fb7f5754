//! The comparison itself, on folded stacks and histograms already read: normalization, the
//! per-frame table with its tests, the root-cause paths and the gate's decision. Pure, so each
//! rule is unit-tested on small hand-made profiles.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::stats;

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
    fn denominator(&self, norm: Norm) -> Option<f64> {
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
    /// Not tested: one measurement per side, or below the share tested.
    Untested,
}

/// One frame's change. Values are normalized (fractions for `Share`, per second otherwise).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameChange {
    pub frame: String,
    pub base: FrameWeight,
    pub cand: FrameWeight,
    /// Two-sided Mann-Whitney p-value of the frame's total over the replicates.
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

/// Compares every frame of the pooled samples, and tests those above `min_share` across the
/// replicates when both sides have at least two. Sorted by magnitude of change, largest first.
pub fn compare_frames(
    base: &Sample,
    cand: &Sample,
    base_reps: &[Sample],
    cand_reps: &[Sample],
    norm: Norm,
    test: TestOptions,
) -> Vec<FrameChange> {
    let b = normalized(base, norm);
    let c = normalized(cand, norm);
    // Whether a frame is big enough to test is judged on shares whatever the normalization,
    // so the same frames are tested per second as by share.
    let (bs, cs) = if norm == Norm::Share {
        (b.clone(), c.clone())
    } else {
        (normalized(base, Norm::Share), normalized(cand, Norm::Share))
    };
    let names: BTreeSet<&str> = b.keys().chain(c.keys()).copied().collect();
    let mut changes: Vec<FrameChange> = names
        .iter()
        .map(|&f| FrameChange {
            frame: f.to_owned(),
            base: b.get(f).copied().unwrap_or_default(),
            cand: c.get(f).copied().unwrap_or_default(),
            p: None,
            p_adjusted: None,
            status: Status::Untested,
        })
        .collect();
    let testable = base_reps.len() >= 2 && cand_reps.len() >= 2;
    if testable {
        fn per_rep(reps: &[Sample], norm: Norm) -> Vec<HashMap<&str, FrameWeight>> {
            reps.iter().map(|r| normalized(r, norm)).collect()
        }
        let (br, cr) = (per_rep(base_reps, norm), per_rep(cand_reps, norm));
        let values = |reps: &[HashMap<&str, FrameWeight>], f: &str| -> Vec<f64> {
            reps.iter()
                .map(|r| r.get(f).map_or(0.0, |w| w.total))
                .collect()
        };
        let share = |m: &HashMap<&str, FrameWeight>, f: &str| m.get(f).map_or(0.0, |w| w.total);
        let mut tested = Vec::new();
        for (i, ch) in changes.iter_mut().enumerate() {
            let f = ch.frame.as_str();
            if share(&bs, f).max(share(&cs, f)) < test.min_share {
                continue;
            }
            if let Some(t) = stats::mann_whitney(&values(&br, f), &values(&cr, f)) {
                ch.p = Some(t.p);
                tested.push(i);
            }
        }
        let ps: Vec<f64> = tested.iter().filter_map(|&i| changes[i].p).collect();
        for (&i, q) in tested.iter().zip(stats::benjamini_hochberg(&ps)) {
            let ch = &mut changes[i];
            ch.p_adjusted = Some(q);
            ch.status = if q >= test.alpha || ch.delta_total() == 0.0 {
                Status::Noise
            } else if ch.delta_total() > 0.0 {
                Status::Grew
            } else {
                Status::Shrank
            };
        }
    }
    changes.sort_by(|x, y| {
        y.magnitude()
            .total_cmp(&x.magnitude())
            .then_with(|| x.frame.cmp(&y.frame))
    });
    changes
}

/// A path from the root down to the frame where a part of the change concentrates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RootCause {
    pub path: Vec<String>,
    /// Normalized change of everything under the path.
    pub delta: f64,
    /// `delta` over the total change (the sum of |change| over all stacks), signed.
    pub share_of_change: f64,
}

struct Node {
    frame: String,
    parent: usize,
    delta: f64,
    children: BTreeMap<String, usize>,
}

/// A child that carries this much of its parent's change (same sign) stands for the parent:
/// it is the more specific explanation.
const DESCEND: f64 = 0.8;
/// Paths are added until they explain this much of the total change.
const COVER: f64 = 0.8;
/// Changes below this share of the total change are not worth a path.
const NEGLIGIBLE: f64 = 0.01;

/// The few paths that explain most of the change: stacks are put in a tree of prefixes, each
/// node holding the change of everything below it; the largest changes are taken first, each
/// followed down while one child carries most of it, skipping paths inside one already taken,
/// until they cover most of the total change or `max` paths.
pub fn root_causes(base: &Sample, cand: &Sample, norm: Norm, max: usize) -> Vec<RootCause> {
    let (Some(db), Some(dc)) = (base.denominator(norm), cand.denominator(norm)) else {
        return Vec::new();
    };
    let mut deltas: BTreeMap<&str, f64> = BTreeMap::new();
    for (s, w) in &base.stacks {
        *deltas.entry(s).or_default() -= *w as f64 / db;
    }
    for (s, w) in &cand.stacks {
        *deltas.entry(s).or_default() += *w as f64 / dc;
    }
    let mass: f64 = deltas.values().map(|d| d.abs()).sum();
    if mass <= 0.0 {
        return Vec::new();
    }
    let mut nodes = vec![Node {
        frame: String::new(),
        parent: 0,
        delta: 0.0,
        children: BTreeMap::new(),
    }];
    for (stack, d) in &deltas {
        let mut at = 0;
        for f in stack.split(';') {
            at = match nodes[at].children.get(f) {
                Some(&c) => c,
                None => {
                    nodes.push(Node {
                        frame: f.to_owned(),
                        parent: at,
                        delta: 0.0,
                        children: BTreeMap::new(),
                    });
                    let id = nodes.len() - 1;
                    nodes[at].children.insert(f.to_owned(), id);
                    id
                }
            };
            nodes[at].delta += d;
        }
    }
    let ancestors = |mut n: usize| {
        let mut v = vec![n];
        while n != 0 {
            n = nodes[n].parent;
            v.push(n);
        }
        v
    };
    let mut order: Vec<usize> = (1..nodes.len()).collect();
    order.sort_by(|&a, &b| nodes[b].delta.abs().total_cmp(&nodes[a].delta.abs()));
    let mut chosen: Vec<usize> = Vec::new();
    let mut covered = 0.0;
    for n in order {
        if chosen.len() >= max
            || covered >= COVER * mass
            || nodes[n].delta.abs() < NEGLIGIBLE * mass
        {
            break;
        }
        let mut t = n;
        loop {
            let d = nodes[t].delta;
            let best = nodes[t]
                .children
                .values()
                .copied()
                .filter(|&c| nodes[c].delta.signum() == d.signum())
                .max_by(|&a, &b| nodes[a].delta.abs().total_cmp(&nodes[b].delta.abs()));
            match best {
                Some(c) if nodes[c].delta.abs() >= DESCEND * d.abs() => t = c,
                _ => break,
            }
        }
        let overlaps = chosen
            .iter()
            .any(|&c| ancestors(c).contains(&n) || ancestors(t).contains(&c));
        if overlaps {
            continue;
        }
        chosen.push(t);
        covered += nodes[t].delta.abs();
    }
    chosen
        .into_iter()
        .map(|t| {
            let mut path: Vec<String> = ancestors(t)
                .into_iter()
                .filter(|&a| a != 0)
                .map(|a| nodes[a].frame.clone())
                .collect();
            path.reverse();
            RootCause {
                path,
                delta: nodes[t].delta,
                share_of_change: nodes[t].delta / mass,
            }
        })
        .collect()
}

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

/// A latency distribution compared: percentile shifts and a two-sample KS test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyChange {
    pub name: String,
    pub base: Percentiles,
    pub cand: Percentiles,
    /// Relative shifts in percent of the base value.
    pub p50_shift_pct: f64,
    pub p99_shift_pct: f64,
    pub ks_d: f64,
    pub ks_p: f64,
    pub significant: bool,
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

/// Compares the latency distributions both sides have (by name); each distribution is one
/// test, so they are judged at `alpha` without adjustment across names.
pub fn compare_latency(
    base: &BTreeMap<String, Histogram<u64>>,
    cand: &BTreeMap<String, Histogram<u64>>,
    alpha: f64,
) -> Vec<LatencyChange> {
    base.iter()
        .filter_map(|(name, hb)| {
            let hc = cand.get(name)?;
            let ks = stats::ks_two_sample(&buckets(hb), &buckets(hc))?;
            let (pb, pc) = (percentiles(hb), percentiles(hc));
            Some(LatencyChange {
                name: name.clone(),
                p50_shift_pct: shift_pct(pb.p50, pc.p50),
                p99_shift_pct: shift_pct(pb.p99, pc.p99),
                base: pb,
                cand: pc,
                ks_d: ks.d,
                ks_p: ks.p,
                significant: ks.p < alpha,
            })
        })
        .collect()
}

/// What the gate watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateOn {
    /// Frames: a significant growth of a frame's total by more than the threshold, in points
    /// of share (`Share`) or in percent of the base rate (`PerSecond`).
    Frames,
    /// Latencies: a significant growth of a p99 by more than the threshold, in percent.
    Latency,
}

/// A change that fails the gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offender {
    pub name: String,
    /// The growth compared with the threshold (points or percent, as the gate measures).
    pub growth: f64,
    pub p: f64,
}

/// Growth of a frame as the gate measures it: points of share, or percent of the base rate.
pub fn frame_growth(ch: &FrameChange, norm: Norm) -> f64 {
    match norm {
        Norm::Share => ch.delta_total() * 100.0,
        Norm::PerSecond if ch.base.total > 0.0 => ch.delta_total() / ch.base.total * 100.0,
        Norm::PerSecond if ch.cand.total > 0.0 => f64::INFINITY,
        Norm::PerSecond => 0.0,
    }
}

/// The changes that fail a gate of `threshold`: significant and grown by more than it.
pub fn gate(
    on: GateOn,
    threshold: f64,
    norm: Norm,
    frames: &[FrameChange],
    latency: &[LatencyChange],
) -> Vec<Offender> {
    match on {
        GateOn::Frames => frames
            .iter()
            .filter(|c| c.status == Status::Grew && frame_growth(c, norm) > threshold)
            .map(|c| Offender {
                name: c.frame.clone(),
                growth: frame_growth(c, norm),
                p: c.p_adjusted.unwrap_or(1.0),
            })
            .collect(),
        GateOn::Latency => latency
            .iter()
            .filter(|l| l.significant && l.p99_shift_pct > threshold)
            .map(|l| Offender {
                name: l.name.clone(),
                growth: l.p99_shift_pct,
                p: l.ks_p,
            })
            .collect(),
    }
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

    #[test]
    fn share_and_per_second_normalization() {
        // Base: 100 samples in 1 s, half in f. Candidate: 400 in 2 s, a quarter in f.
        let base = sample(&[("m;f", 50), ("m;g", 50)], Some(1.0));
        let cand = sample(&[("m;f", 100), ("m;g", 300)], Some(2.0));
        let share = compare_frames(&base, &cand, &[], &[], Norm::Share, TEST);
        let f = share.iter().find(|c| c.frame == "f").unwrap();
        assert_eq!((f.base.total, f.cand.total), (0.5, 0.25));
        assert_eq!(f.status, Status::Untested);
        assert_eq!(frame_growth(f, Norm::Share), -25.0);
        let rate = compare_frames(&base, &cand, &[], &[], Norm::PerSecond, TEST);
        let f = rate.iter().find(|c| c.frame == "f").unwrap();
        assert_eq!((f.base.total, f.cand.total), (50.0, 50.0));
        let g = rate.iter().find(|c| c.frame == "g").unwrap();
        assert_eq!((g.base.total, g.cand.total), (50.0, 150.0));
        assert_eq!(frame_growth(g, Norm::PerSecond), 200.0);
        // Largest change first: g (+100/s) before f (0).
        assert_eq!(rate[0].frame, "g");
    }

    fn reps(f: u64, g: u64, n: usize, jitter: u64) -> Vec<Sample> {
        (0..n as u64)
            .map(|i| {
                sample(
                    &[
                        ("m;f", f + i % (jitter + 1)),
                        ("m;g", g + (i * 7) % (jitter + 1)),
                    ],
                    Some(1.0),
                )
            })
            .collect()
    }

    fn pooled(reps: &[Sample]) -> Sample {
        let mut s = Sample::default();
        for r in reps {
            for (k, w) in &r.stacks {
                *s.stacks.entry(k.clone()).or_default() += w;
            }
        }
        s
    }

    #[test]
    fn a_consistent_shift_is_significant_and_a_jitter_is_noise() {
        let base = reps(80, 20, 8, 3);
        let cand = reps(20, 80, 8, 3);
        let changes = compare_frames(
            &pooled(&base),
            &pooled(&cand),
            &base,
            &cand,
            Norm::Share,
            TEST,
        );
        let f = changes.iter().find(|c| c.frame == "f").unwrap();
        let g = changes.iter().find(|c| c.frame == "g").unwrap();
        assert_eq!(f.status, Status::Shrank);
        assert_eq!(g.status, Status::Grew);
        // Complete separation of 8 against 8: 2 of C(16, 8) splits, then BH over 3 tests
        // (m, f and g; m never changes and is noise).
        assert!((g.p.unwrap() - 2.0 / 12870.0).abs() < 1e-12);
        let m = changes.iter().find(|c| c.frame == "m").unwrap();
        assert_eq!(m.status, Status::Noise);

        let same_a = reps(50, 50, 8, 5);
        let mut same_b = reps(50, 50, 8, 5);
        same_b.reverse();
        let changes = compare_frames(
            &pooled(&same_a),
            &pooled(&same_b),
            &same_a,
            &same_b,
            Norm::Share,
            TEST,
        );
        assert!(
            changes.iter().all(|c| c.status == Status::Noise),
            "{changes:#?}"
        );
    }

    #[test]
    fn small_frames_are_not_tested() {
        let mk = |tiny| -> Vec<Sample> {
            (0..5)
                .map(|_| sample(&[("m;big", 10_000), ("m;tiny", tiny)], Some(1.0)))
                .collect()
        };
        let (b, c) = (mk(1), mk(20));
        let t = TestOptions {
            alpha: 0.05,
            min_share: 0.01,
        };
        let changes = compare_frames(&pooled(&b), &pooled(&c), &b, &c, Norm::Share, t);
        let tiny = changes.iter().find(|c| c.frame == "tiny").unwrap();
        assert_eq!(tiny.status, Status::Untested);
        assert_eq!(tiny.p, None);
    }

    #[test]
    fn root_causes_follow_the_change_down_to_where_it_concentrates() {
        let base = sample(
            &[
                ("app;main;run;parse;hot", 90),
                ("app;main;run;parse;other", 5),
                ("app;main;idle", 5),
            ],
            None,
        );
        let cand = sample(
            &[
                ("app;main;run;render;hot", 85),
                ("app;main;run;render;cold", 10),
                ("app;main;idle", 5),
            ],
            None,
        );
        let paths = root_causes(&base, &cand, Norm::Share, 5);
        assert_eq!(paths.len(), 2, "{paths:#?}");
        // Shrink of parse (-0.95) and growth of render (+0.95), each half of the change.
        // render's biggest child (hot, 0.85) carries 89 % of it, so the path goes down to it;
        // parse;hot (0.90 of 0.95) too.
        let render = paths.iter().find(|p| p.delta > 0.0).unwrap();
        assert_eq!(render.path, ["app", "main", "run", "render", "hot"]);
        assert!((render.delta - 0.85).abs() < 1e-12);
        assert!((render.share_of_change - 0.85 / 1.9).abs() < 1e-12);
        let parse = paths.iter().find(|p| p.delta < 0.0).unwrap();
        assert_eq!(parse.path, ["app", "main", "run", "parse", "hot"]);
        // Identical sides: nothing to explain.
        assert!(root_causes(&base, &base, Norm::Share, 5).is_empty());
    }

    #[test]
    fn root_causes_stop_at_a_spread_change() {
        // The growth is spread evenly over four leaves: no child carries 80 % of it, so the
        // path ends at their parent.
        let base = sample(&[("a;keep", 100)], None);
        let cand = sample(
            &[
                ("a;keep", 100),
                ("a;grow;w", 25),
                ("a;grow;x", 25),
                ("a;grow;y", 25),
                ("a;grow;z", 25),
            ],
            None,
        );
        let paths = root_causes(&base, &cand, Norm::Share, 5);
        let grow = paths.iter().find(|p| p.delta > 0.0).unwrap();
        assert_eq!(grow.path, ["a", "grow"]);
        assert!((grow.delta - 0.5).abs() < 1e-12);
        assert!((grow.share_of_change - 0.5).abs() < 1e-12);
    }

    fn change(frame: &str, base: f64, cand: f64, status: Status) -> FrameChange {
        FrameChange {
            frame: frame.into(),
            base: FrameWeight {
                total: base,
                self_: 0.0,
            },
            cand: FrameWeight {
                total: cand,
                self_: 0.0,
            },
            p: Some(0.001),
            p_adjusted: Some(0.002),
            status,
        }
    }

    #[test]
    fn the_gate_fails_only_on_significant_growth_above_the_threshold() {
        let frames = [
            change("grew_a_lot", 0.10, 0.20, Status::Grew),
            change("grew_a_little", 0.10, 0.12, Status::Grew),
            change("noisy_big", 0.10, 0.30, Status::Noise),
            change("untested_big", 0.10, 0.30, Status::Untested),
            change("shrank", 0.30, 0.10, Status::Shrank),
        ];
        let off = gate(GateOn::Frames, 5.0, Norm::Share, &frames, &[]);
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].name, "grew_a_lot");
        assert!((off[0].growth - 10.0).abs() < 1e-9);
        assert!(gate(GateOn::Frames, 10.0, Norm::Share, &frames, &[]).is_empty());
        // Per second, the threshold is percent of the base rate: +20 % and +100 %.
        let off = gate(GateOn::Frames, 50.0, Norm::PerSecond, &frames, &[]);
        assert_eq!(off.len(), 1);
        // A new frame grows without bound.
        let new = [change("new", 0.0, 1.0, Status::Grew)];
        assert_eq!(
            gate(GateOn::Frames, 1e9, Norm::PerSecond, &new, &[]).len(),
            1
        );
    }

    #[test]
    fn latency_shifts_and_ks_feed_the_latency_gate() {
        let mk = |values: &[u64]| {
            let mut h = crate::aggregate::new_histogram();
            for &v in values {
                h.record(v).unwrap();
            }
            h
        };
        let base_vals: Vec<u64> = (0..2000).map(|i| 100 + i % 50).collect();
        let slow_vals: Vec<u64> = (0..2000).map(|i| 200 + i % 100).collect();
        let base = BTreeMap::from([("blocked".to_owned(), mk(&base_vals))]);
        let same = BTreeMap::from([("blocked".to_owned(), mk(&base_vals))]);
        let slow = BTreeMap::from([
            ("blocked".to_owned(), mk(&slow_vals)),
            ("only here".to_owned(), mk(&[1])),
        ]);
        let l = compare_latency(&base, &slow, 0.05);
        assert_eq!(l.len(), 1, "only distributions both sides have");
        assert_eq!(l[0].base.p50, 124);
        assert!(
            l[0].cand.p50 >= 249 && l[0].cand.p50 <= 250,
            "{:?}",
            l[0].cand
        );
        assert!(l[0].p99_shift_pct > 90.0, "{}", l[0].p99_shift_pct);
        assert_eq!(l[0].ks_d, 1.0);
        assert!(l[0].significant);
        assert_eq!(gate(GateOn::Latency, 50.0, Norm::Share, &[], &l).len(), 1);
        assert!(gate(GateOn::Latency, 150.0, Norm::Share, &[], &l).is_empty());
        let l = compare_latency(&base, &same, 0.05);
        assert_eq!(l[0].ks_d, 0.0);
        assert!(!l[0].significant);
        assert!(gate(GateOn::Latency, 0.0, Norm::Share, &[], &l).is_empty());
    }
}
