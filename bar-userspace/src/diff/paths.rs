//! Root-cause paths: the few paths from the root down to the frame where a change
//! concentrates, which explain most of it. Pure, on the pooled folded stacks of each side.

use std::collections::BTreeMap;

use serde::Serialize;

use super::compare::{Norm, Sample};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lines: &[(&str, u64)]) -> Sample {
        Sample {
            stacks: lines.iter().map(|(s, w)| ((*s).to_owned(), *w)).collect(),
            seconds: None,
        }
    }

    #[test]
    fn root_causes_follow_the_change_down_to_where_it_concentrates() {
        let base = sample(&[
            ("app;main;run;parse;hot", 90),
            ("app;main;run;parse;other", 5),
            ("app;main;idle", 5),
        ]);
        let cand = sample(&[
            ("app;main;run;render;hot", 85),
            ("app;main;run;render;cold", 10),
            ("app;main;idle", 5),
        ]);
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
        let base = sample(&[("a;keep", 100)]);
        let cand = sample(&[
            ("a;keep", 100),
            ("a;grow;w", 25),
            ("a;grow;x", 25),
            ("a;grow;y", 25),
            ("a;grow;z", 25),
        ]);
        let paths = root_causes(&base, &cand, Norm::Share, 5);
        let grow = paths.iter().find(|p| p.delta > 0.0).unwrap();
        assert_eq!(grow.path, ["a", "grow"]);
        assert!((grow.delta - 0.5).abs() < 1e-12);
        assert!((grow.share_of_change - 0.5).abs() < 1e-12);
    }
}
