//! Writes `docs/benchmarks.md` from one run's results: every figure in it comes from this run,
//! next to the command that produced it.

mod costs;
mod intro;
mod slowdown;
mod throughput;

use std::fmt::Write as _;

pub(super) use self::intro::quiet;
use super::{Quiet, Results, SlowCase, Spread, Trial, section, stats::rate};

/// The targets bar sets itself (see the README's benchmarks section).
const MAX_FLOOR_RATIO: f64 = 1.3;
const MIN_RATE: f64 = 500e3;
const MIN_POST_SPEEDUP: f64 = 10.0;
const MAX_RSS_MB: f64 = 150.0;

/// The product changes measured by the "bar before" column: what and why.
const CHANGES: &[(&str, &str)] = &[(
    "User stacks walked with unwind tables",
    "the programs walk user stacks with the tables the collector builds from `.eh_frame`, \
     `.debug_frame` and Go's `.gopclntab` (`bar-ebpf/src/unwind/`), where the build before \
     walked by frame pointer only: stacks come out whole through code built without frame \
     pointers, and code with frame pointers pays for the frames only tables reach (glibc's \
     frameless start code) and a little per frame (see \"Unwinding user stacks\").",
)];

/// `x` with two decimals, or three when `other` has the same two.
fn three_if_tied(x: f64, other: f64) -> String {
    if format!("{x:.2}") == format!("{other:.2}") {
        format!("{x:.3}")
    } else {
        format!("{x:.2}")
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn spread_or(s: Option<Spread>, f: impl Fn(&Spread) -> String) -> String {
    s.map_or_else(|| "—".to_owned(), |s| f(&s))
}

fn trials_error(trials: &[Trial]) -> Option<String> {
    trials.iter().find_map(|t| t.error.clone())
}

/// The slowdown cell of a configuration: ratio with range, or why there is none.
fn cell(case: &SlowCase, label: &str) -> String {
    let Some(i) = case.config(label) else {
        return "—".into();
    };
    match case.slowdown(i) {
        Some(s) if s.n == case.configs[0].trials.len() => s.ratio(),
        Some(s) => format!(
            "{} ({} of {} runs)",
            s.ratio(),
            s.n,
            case.configs[0].trials.len()
        ),
        None => format!(
            "fails: {}",
            md_escape(&trials_error(&case.configs[i].trials).unwrap_or_default())
        ),
    }
}

const PEERS: [&str; 3] = ["bpftrace", "perf", "offcputime"];
/// bar as it records by default, and with `--aggregate` (faults and off-CPU summed in the
/// kernel, the way the peers count).
const BAR_MODES: [&str; 2] = ["bar", "bar summed"];

/// The peer with the smallest median slowdown on a case.
fn best_peer(case: &SlowCase) -> Option<(&'static str, Spread)> {
    PEERS
        .iter()
        .filter_map(|p| {
            let i = case.config(p)?;
            let s = case.slowdown(i)?;
            (s.n == case.configs[0].trials.len()).then_some((*p, s))
        })
        .min_by(|a, b| a.1.median.total_cmp(&b.1.median))
}

fn yes(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The whole document, section by section, in the order a reader wants them.
pub fn render(r: &Results) -> String {
    let mut d = String::new();
    intro::header_and_targets(&mut d, r);
    intro::machine(&mut d, r);
    intro::method(&mut d, r);
    slowdown::slowdown(&mut d, r);
    slowdown::program_time(&mut d, r);
    throughput::ladder(&mut d, r);
    throughput::ladder_notes(&mut d, r);
    costs::post_processing(&mut d, r);
    costs::memory(&mut d, r);
    d.push_str(&section::wrap("flight", &super::flight::render(&r.flight)));
    d.push('\n');
    costs::before_after(&mut d, r);
    d.push_str(&section::wrap("unwind", &super::unwind::render(&r.unwind)));
    d
}

/// Appends a line.
fn w(d: &mut String, s: String) {
    d.push_str(&s);
    d.push('\n');
}

/// Whether the run measured a "bar before".
fn has_before(r: &Results) -> bool {
    r.cases.iter().any(|c| c.config("bar before").is_some())
}

/// Peak RSS of the collector through the long captures of section 4, in MB.
fn collector_rss(r: &Results) -> Option<Spread> {
    Spread::of(
        &r.memory
            .trials
            .iter()
            .filter_map(|t| Some(t.time?.max_rss_kb as f64 / 1024.0))
            .collect::<Vec<_>>(),
    )
}

fn w_line(d: &mut String, s: String) {
    d.push_str(&s);
    d.push('\n');
}

/// The step of `tracer` where its workload ran fastest, and that rate.
fn fastest_step<'a>(tp: &'a super::Throughput, tracer: &str) -> Option<(&'a super::Step, Spread)> {
    tp.steps
        .iter()
        .filter(|s| s.tracer == tracer && s.complete())
        .filter_map(|s| Some((s, s.achieved()?)))
        .max_by(|a, b| a.1.median.total_cmp(&b.1.median))
}

fn post_speedup(r: &Results) -> Option<f64> {
    let bar = Spread::of(&r.post.bar.iter().map(|x| x.wall_ms).collect::<Vec<_>>())?;
    let perf = Spread::of(&r.post.perf.iter().map(|x| x.wall_ms).collect::<Vec<_>>())?;
    Some(perf.median / bar.median)
}
