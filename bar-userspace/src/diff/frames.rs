//! What a frame is before the sides are compared. The root of every folded stack is the
//! process name: by default it is dropped when the sides' names differ or each side is one
//! process (a renamed build is the same code, and one process per side has nothing to compare
//! by name). Frames that are not code, markers put where an address or a stack could not be
//! had, are never gate offenders; their share is a measure of the data's quality.

use std::collections::BTreeSet;

use serde::Serialize;

use super::compare::{Folded, Run, Sample};

/// Stands for a stack that had nothing below the process name.
pub const NO_STACK: &str = "[no stack]";

/// Prefixes of the frames that mark missing information rather than code.
const NOT_CODE: [&str; 6] = [
    "[unknown",
    "[truncated",
    "[user stack",
    "[kernel stack",
    "[no stack]",
    "[stack lost",
];

/// Whether a frame names code (a function, a module offset, a state such as `[blocked]`),
/// rather than marks something missing.
pub fn is_code(frame: &str) -> bool {
    !NOT_CODE.iter().any(|p| frame.starts_with(p))
}

/// The kind of a marker frame, for the data-quality line: `[unknown 0x1234]` is `unknown`,
/// `[user stack lost: collision]` is `user stack lost`.
fn marker_kind(frame: &str) -> String {
    let inner = frame.trim_start_matches('[').trim_end_matches(']');
    let end = inner.find([':', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    inner[..end.unwrap_or(inner.len())].trim().to_owned()
}

/// Process names: the root frames of a sample's stacks.
fn roots(s: &Sample) -> BTreeSet<&str> {
    s.stacks
        .keys()
        .map(|k| k.split_once(';').map_or(k.as_str(), |(root, _)| root))
        .collect()
}

/// Whether to compare below the process names: they differ between the sides, or each side is
/// one process.
pub fn below_process(base: &Sample, cand: &Sample) -> bool {
    let (b, c) = (roots(base), roots(cand));
    b != c || (b.len() == 1 && c.len() == 1)
}

/// The stacks without their root frame; a stack that was only a process name becomes
/// `[no stack]`.
pub fn strip_root(stacks: &Folded) -> Folded {
    let mut out = Folded::new();
    for (k, w) in stacks {
        let rest = k.split_once(';').map_or(NO_STACK, |(_, rest)| rest);
        *out.entry(rest.to_owned()).or_default() += w;
    }
    out
}

/// `strip_root` over every sample of a run.
pub fn strip_run(run: &mut Run) {
    run.whole.stacks = strip_root(&run.whole.stacks);
    for w in &mut run.windows {
        w.stacks = strip_root(&w.stacks);
    }
}

/// Share of a side's weight in stacks with a frame that is not code, in all and per kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quality {
    /// Fraction of the weight in stacks with at least one such frame.
    pub not_code: f64,
    /// Per kind of marker (`unknown`, `user stack lost`...), fraction of the weight.
    pub kinds: Vec<(String, f64)>,
}

pub fn quality(s: &Sample) -> Quality {
    let total = s.weight() as f64;
    if total == 0.0 {
        return Quality::default();
    }
    let mut any = 0u64;
    let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
    for (stack, &w) in &s.stacks {
        let marks: BTreeSet<String> = stack
            .split(';')
            .filter(|f| !is_code(f))
            .map(marker_kind)
            .collect();
        if !marks.is_empty() {
            any += w;
        }
        for m in marks {
            *kinds.entry(m).or_default() += w;
        }
    }
    let mut kinds: Vec<(String, f64)> = kinds
        .into_iter()
        .map(|(k, w)| (k, w as f64 / total))
        .collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Quality {
        not_code: any as f64 / total,
        kinds,
    }
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
    fn markers_are_not_code_and_states_are() {
        for f in [
            "[unknown 0x7f00deadbeef]",
            "[truncated: 127 frames]",
            "[user stack lost: collision]",
            "[kernel stack lost: map full]",
            "[user stack error 14]",
            "[no stack]",
        ] {
            assert!(!is_code(f), "{f}");
        }
        for f in [
            "main",
            "[blocked]",
            "[preempted]",
            "[major]",
            "libc.so.6+0x1234",
        ] {
            assert!(is_code(f), "{f}");
        }
        assert_eq!(marker_kind("[unknown 0x7f00]"), "unknown");
        assert_eq!(
            marker_kind("[user stack lost: collision]"),
            "user stack lost"
        );
        assert_eq!(marker_kind("[user stack error 14]"), "user stack error");
    }

    #[test]
    fn process_names_go_when_they_differ_or_each_side_is_one_process() {
        let a = sample(&[("svc_base;main;work", 9), ("svc_base", 1)]);
        let b = sample(&[("svc_cand;main;work", 10)]);
        assert!(below_process(&a, &b));
        assert!(below_process(&a, &a), "one process on each side");
        let many = sample(&[("web;main", 5), ("db;main", 5)]);
        assert!(!below_process(&many, &many));
        assert!(below_process(
            &many,
            &sample(&[("web;main", 5), ("cache;main", 5)])
        ));
        let s = strip_root(&a.stacks);
        assert_eq!(s["main;work"], 9);
        assert_eq!(s[NO_STACK], 1);
    }

    #[test]
    fn quality_counts_each_stack_once_and_each_kind() {
        let s = sample(&[
            ("main;work", 80),
            ("main;[unknown 0x1];[unknown 0x2]", 10),
            ("[user stack lost: collision];do_syscall_64_[k]", 6),
            ("main;[unknown 0x3];[truncated: 127 frames]", 4),
        ]);
        let q = quality(&s);
        assert!((q.not_code - 0.2).abs() < 1e-12, "{q:?}");
        assert_eq!(q.kinds[0], ("unknown".to_owned(), 0.14));
        assert_eq!(q.kinds.len(), 3);
        assert_eq!(quality(&Sample::default()), Quality::default());
    }
}
