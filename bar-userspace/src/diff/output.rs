//! What `diff` writes: differential flame graphs (inferno's diff-folded, drawn by inferno's
//! flame graph: red grew, blue shrank), the diff-folded lines, the table for people and the
//! JSON verdict for machines.

use std::{
    fmt::Write as _,
    io::{self, Write as _},
    path::PathBuf,
};

use inferno::{differential, flamegraph};
use serde_json::{Value, json};

use super::{
    Outcome,
    compare::{FrameChange, Norm, Sample, Status},
    gate::GateOn,
};
use crate::{
    render::{write_lines, write_svg},
    sys::files::Dir,
};

/// What values are expressed in, as shown.
fn unit(o: &Outcome) -> String {
    match o.norm {
        Norm::Share => "%".to_owned(),
        Norm::PerSecond => format!("{}/s", o.view.map_or("weight", |v| v.unit())),
    }
}

/// Normalized value as shown: percent for shares.
fn shown(o: &Outcome, v: f64) -> f64 {
    match o.norm {
        Norm::Share => v * 100.0,
        Norm::PerSecond => v,
    }
}

fn folded_bytes(s: &Sample, scale: f64) -> Vec<u8> {
    let mut out = Vec::new();
    for (stack, w) in &s.stacks {
        let _ = writeln!(out, "{stack} {}", (*w as f64 * scale).round() as u64);
    }
    out
}

/// Diff-folded lines (`stack before after`), sorted, with `first` and `second` as inferno
/// compares them: widths are `second`'s. By share, inferno scales the first to the second's
/// total; per second, the first is scaled to the second's duration first.
fn diff_folded(o: &Outcome, first: &Sample, second: &Sample) -> io::Result<Vec<String>> {
    let (scale, normalize) = match (o.norm, first.seconds, second.seconds) {
        (Norm::PerSecond, Some(a), Some(b)) if a > 0.0 => (b / a, false),
        _ => (1.0, true),
    };
    let options = differential::Options {
        normalize,
        strip_hex: false,
    };
    let mut out = Vec::new();
    differential::from_readers(
        options,
        &folded_bytes(first, scale)[..],
        &folded_bytes(second, 1.0)[..],
        &mut out,
    )?;
    let mut lines: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines)
}

fn flame_options(o: &Outcome, widths_of: &str) -> flamegraph::Options<'static> {
    let mut f = flamegraph::Options::default();
    f.title = format!(
        "bar diff{}: {} -> {}",
        o.view.map_or(String::new(), |v| format!(" {}", v.name())),
        o.base.label,
        o.cand.label
    );
    f.subtitle = Some(format!(
        "red grew, blue shrank ({}); widths: {widths_of}",
        match o.norm {
            Norm::Share => "by share of total weight",
            Norm::PerSecond => "per second",
        }
    ));
    f.count_name = o.view.map_or("samples", |v| v.unit()).to_owned();
    f
}

/// Writes `diff.svg` (widths of the candidate), `diff-base.svg` (widths of the base, so what
/// vanished shows too), `diff.folded` and `diff.json` into `dir`.
pub fn write_files(o: &Outcome, dir: &Dir) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    if o.history_runs.is_some() {
        // A baseline store keeps per-frame summaries, not stacks: no flame graph to draw.
        let text = serde_json::to_string_pretty(&to_json(o)).map_err(io::Error::other)?;
        written.push(dir.write_atomic("diff.json", |w| writeln!(w, "{text}"))?);
        return Ok(written);
    }
    let lines = diff_folded(o, &o.base.pooled, &o.cand.pooled)?;
    written.push(write_lines(dir, "diff.folded", &lines)?);
    written.push(write_svg(
        dir,
        "diff.svg",
        &lines,
        flame_options(o, "candidate"),
    )?);
    let reversed = diff_folded(o, &o.cand.pooled, &o.base.pooled)?;
    let mut options = flame_options(o, "base");
    // Reversed inputs give base - candidate; negated, red is still growth.
    options.negate_differentials = true;
    written.push(write_svg(dir, "diff-base.svg", &reversed, options)?);
    let text = serde_json::to_string_pretty(&to_json(o)).map_err(io::Error::other)?;
    written.push(dir.write_atomic("diff.json", |w| writeln!(w, "{text}"))?);
    Ok(written)
}

fn side_json(o: &Outcome, side: &super::Side) -> Value {
    json!({
        "label": side.label,
        "weight": side.pooled.weight(),
        "seconds": side.pooled.seconds,
        "runs": side.runs.len(),
        "windows": side.runs.iter().map(|r| r.windows.len()).sum::<usize>(),
        "unit": o.view.map(|v| v.unit()),
    })
}

fn frame_json(o: &Outcome, c: &FrameChange) -> Value {
    let alpha = o.test.alpha;
    let sd = |x: Option<f64>| x.map(|v| shown(o, v));
    json!({
        "frame": c.frame,
        "code": c.code,
        "total": {"base": shown(o, c.base.total), "cand": shown(o, c.cand.total), "change": shown(o, c.delta_total())},
        "self": {"base": shown(o, c.base.self_), "cand": shown(o, c.cand.self_), "change": shown(o, c.delta_self())},
        "ci": c.effect.map(|e| {
            let (lo, hi) = e.interval(alpha);
            [shown(o, lo), shown(o, hi)]
        }),
        "spread": {
            "base": {"between_runs": sd(c.spread[0].between_runs), "within_run": sd(c.spread[0].within_run)},
            "cand": {"between_runs": sd(c.spread[1].between_runs), "within_run": sd(c.spread[1].within_run)},
        },
        "p": c.p,
        "p_adjusted": c.p_adjusted,
        "status": c.status,
    })
}

fn latency_json(o: &Outcome) -> Vec<Value> {
    o.latency
        .iter()
        .map(|l| {
            let runs = l.p99_change_pct(o.test.alpha);
            json!({
                "name": l.name,
                "base": l.base,
                "cand": l.cand,
                "p50_shift_pct": l.p50_shift_pct,
                "p99_shift_pct": l.p99_shift_pct,
                "ks_d": l.ks_d,
                "ks_p": l.ks_p,
                "significant": l.significant,
                "p99_change_pct": runs.map(|r| r.0),
                "p99_ci_pct": runs.map(|r| [r.1, r.2]),
            })
        })
        .collect()
}

/// The machine-readable result: sides, method, top frames, paths, latencies and verdict.
pub fn to_json(o: &Outcome) -> Value {
    let top =
        |n: usize| -> Vec<Value> { o.frames.iter().take(n).map(|c| frame_json(o, c)).collect() };
    let gate = o.verdict.as_ref().map(|v| {
        json!({
            "on": v.on,
            "fail_above": v.threshold,
            "threshold_unit": threshold_unit(v.on, o.norm),
            "failed": v.failed(),
            "offenders": v.offenders,
        })
    });
    let quality = |q: &Option<super::frames::Quality>| {
        q.as_ref().map(|q| {
            json!({
                "not_code_pct": q.not_code * 100.0,
                "kinds": q.kinds.iter().map(|(k, f)| json!({"kind": k, "pct": f * 100.0})).collect::<Vec<_>>(),
            })
        })
    };
    json!({
        "kind": o.view.map(|v| v.name()),
        "normalization": o.norm,
        "unit": unit(o),
        "below_process": o.below_process,
        "base": side_json(o, &o.base),
        "cand": side_json(o, &o.cand),
        "baseline_runs": o.history_runs,
        "test": {
            "frames": o.method,
            "windows": o.windows.map(|w| humantime::format_duration(w).to_string()),
            "adjustment": "benjamini-hochberg",
            "alpha": o.test.alpha,
            "ci_level_pct": (1.0 - o.test.alpha) * 100.0,
            "min_share_pct": o.test.min_share * 100.0,
            "latency": "ln(p99) per run, as frames; kolmogorov-smirnov over the pooled events for reference",
            // A run's variance of a frame of mean m and sampling variance s is
            // scale * (s + dispersion * m^2), known with df degrees of freedom.
            "spread_law": o.spread_law.map(|l| json!({
                "dispersion": l.dispersion,
                "scale": l.scale,
                "df": l.df,
            })),
        },
        "frames": top(o.frames.len().min(MAX_JSON_FRAMES)),
        "paths": o.paths.iter().map(|p| json!({
            "path": p.path,
            "change": shown(o, p.delta),
            "share_of_change_pct": p.share_of_change * 100.0,
        })).collect::<Vec<_>>(),
        "latency": latency_json(o),
        "data_quality": {"base": quality(&o.quality[0]), "cand": quality(&o.quality[1])},
        "gate": gate,
        "warnings": o.warnings,
    })
}

/// Frames in the JSON: enough for any table, not every kernel frame of a large profile.
const MAX_JSON_FRAMES: usize = 200;

fn threshold_unit(on: GateOn, norm: Norm) -> &'static str {
    match (on, norm) {
        (GateOn::Frames, Norm::Share) => "points of share",
        (GateOn::Frames, Norm::PerSecond) => "percent of the base rate",
        (GateOn::Latency, _) => "percent of the base p99",
    }
}

/// Keeps the end of a long name (the function, not its crate path).
fn clip(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

fn p_text(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| format!("{p:.1e}"))
}

/// A change with its interval, as the table shows it: `+20.00 [+19.1, +20.9]`.
fn change_text(o: &Outcome, c: &FrameChange) -> String {
    match c.effect {
        Some(e) => {
            let (lo, hi) = e.interval(o.test.alpha);
            format!(
                "{:>+8.2} [{:+.1}, {:+.1}]",
                shown(o, c.delta_total()),
                shown(o, lo),
                shown(o, hi)
            )
        }
        None => format!("{:>+8.2}", shown(o, c.delta_total())),
    }
}

/// The lines that say what was compared and how.
fn header(o: &Outcome, t: &mut String) {
    let u = unit(o);
    let _ = writeln!(
        t,
        "bar diff{}, {}",
        o.view.map_or(String::new(), |v| format!(" {}", v.name())),
        match o.norm {
            Norm::Share => "share of total weight (%)".to_owned(),
            Norm::PerSecond => format!("per second ({u})"),
        }
    );
    for (name, s) in [("base", &o.base), ("cand", &o.cand)] {
        if name == "base"
            && let Some(n) = o.history_runs
        {
            let _ = writeln!(t, "  base: baseline {}: {n} runs", s.label);
            continue;
        }
        let windows: usize = s.runs.iter().map(|r| r.windows.len()).sum();
        let _ = writeln!(
            t,
            "  {name}: {}: weight {}{}, {} run{}{}",
            s.label,
            s.pooled.weight(),
            s.pooled
                .seconds
                .map_or(String::new(), |x| format!(" in {x:.2} s")),
            s.runs.len(),
            if s.runs.len() == 1 { "" } else { "s" },
            if windows > 0 {
                format!(", {windows} windows")
            } else {
                String::new()
            }
        );
    }
    if o.below_process {
        let _ = writeln!(
            t,
            "  stacks compared below the process name (--by-process keeps it)"
        );
    }
    let tested = o.frames.iter().any(|c| c.p.is_some());
    let _ = writeln!(
        t,
        "  significance: {}",
        if tested {
            format!(
                "{}; {:.0}% intervals, Benjamini-Hochberg adjusted at {}; frames under {}% and \
                 markers of missing stacks not tested",
                o.method,
                (1.0 - o.test.alpha) * 100.0,
                o.test.alpha,
                o.test.min_share * 100.0
            )
        } else if o.cand.runs.len() == 1 && o.base.runs.len() == 1 {
            "not tested: with one run per side, how much runs differ is unknown (give 2 or more \
             runs per side, or a baseline store)"
                .to_owned()
        } else {
            "not tested".to_owned()
        }
    );
}

/// The table for people: sides, frames with the largest change, paths, latencies, verdict.
pub fn table(o: &Outcome, top: usize) -> String {
    let mut t = String::new();
    let u = unit(o);
    header(o, &mut t);
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "{:<44} {:>8} {:>8} {:>24} {:>8} {:>8}  {:>7}  verdict",
        "frame", "total", "", "change [interval]", "self", "", "p adj"
    );
    let _ = writeln!(
        t,
        "{:<44} {:>8} {:>8} {:>24} {:>8} {:>8}",
        "", "base", "cand", "", "base", "cand"
    );
    for c in o.frames.iter().take(top) {
        let _ = writeln!(
            t,
            "{:<44} {:>8.2} {:>8.2} {:>24} {:>8.2} {:>8.2}  {:>7}  {}",
            clip(&c.frame, 44),
            shown(o, c.base.total),
            shown(o, c.cand.total),
            change_text(o, c),
            shown(o, c.base.self_),
            shown(o, c.cand.self_),
            p_text(c.p_adjusted),
            match c.status {
                Status::Grew => "grew",
                Status::Shrank => "shrank",
                Status::Noise => "noise",
                Status::Untested if !c.code => "not code",
                Status::Untested => "-",
            }
        );
    }
    if !o.paths.is_empty() {
        let _ = writeln!(t, "\nroot-cause paths (change, share of the total change):");
        for p in &o.paths {
            let shown_path = if p.path.len() > 6 {
                format!("{};…;{}", p.path[0], p.path[p.path.len() - 4..].join(";"))
            } else {
                p.path.join(";")
            };
            let _ = writeln!(
                t,
                "  {:>+9.2} {u:<3} {:>+6.1}%  {shown_path}",
                shown(o, p.delta),
                p.share_of_change * 100.0
            );
        }
    }
    latency_table(o, &mut t);
    verdict_lines(o, &mut t);
    t
}

fn latency_table(o: &Outcome, t: &mut String) {
    if o.latency.is_empty() {
        return;
    }
    let _ = writeln!(
        t,
        "\nlatency (us): p50 and p99, base -> cand; p99 change over runs [interval]; KS over events"
    );
    for l in &o.latency {
        let runs = l.p99_change_pct(o.test.alpha).map_or_else(
            || "-".to_owned(),
            |(c, lo, hi)| format!("{c:+.0}% [{lo:+.0}, {hi:+.0}]"),
        );
        let ks = match (l.ks_d, l.ks_p) {
            (Some(d), Some(p)) => format!("D {d:.3} p {p:.1e}"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            t,
            "  {:<28} p50 {} -> {} ({:+.0}%)  p99 {} -> {} ({:+.0}%)  runs {runs}  KS {ks}",
            l.name,
            l.base.p50,
            l.cand.p50,
            l.p50_shift_pct,
            l.base.p99,
            l.cand.p99,
            l.p99_shift_pct,
        );
    }
}

/// The threshold with its unit, as a sentence says it: 1 point of share, 5 points of share.
fn threshold_text(threshold: f64, unit: &str) -> String {
    match unit.strip_prefix("points") {
        Some(rest) if threshold == 1.0 => format!("1 point{rest}"),
        _ => format!("{threshold} {unit}"),
    }
}

fn verdict_lines(o: &Outcome, t: &mut String) {
    let Some(v) = &o.verdict else { return };
    let what = threshold_text(v.threshold, threshold_unit(v.on, o.norm));
    if v.failed() {
        let names: Vec<String> = v
            .offenders
            .iter()
            .map(|x| {
                format!(
                    "{} ({:+.2}, surely above {:+.2})",
                    x.name, x.growth, x.lower
                )
            })
            .collect();
        let _ = writeln!(
            t,
            "\ngate: FAILED: grew by more than {what}: {}",
            names.join(", ")
        );
    } else {
        let _ = writeln!(t, "\ngate: passed: nothing surely grew by more than {what}");
    }
}

/// The diff as a section of `report.html`: the differential flame graph, the frames that
/// changed most with their p-values, the root-cause paths, latency shifts and the verdict.
pub fn html_section(o: &Outcome, dir: &Dir) -> String {
    use crate::render::html::{escape, flame_iframe};
    let json = to_json(o);
    let unit = escape(json["unit"].as_str().unwrap_or_default());
    let num = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
    };
    let mut h = format!(
        "<p>base: {} ({} runs) &rarr; candidate: {} ({} runs); red grew, blue shrank.</p>",
        escape(json["base"]["label"].as_str().unwrap_or_default()),
        json["base"]["runs"],
        escape(json["cand"]["label"].as_str().unwrap_or_default()),
        json["cand"]["runs"],
    );
    if o.history_runs.is_none() {
        h.push_str(&flame_iframe(dir, "diff.svg"));
    }
    h.push_str(&format!(
        "<table class=\"diff-frames\"><tr><th>frame</th><th>base ({unit})</th><th>candidate ({unit})</th><th>change</th><th>p (adjusted)</th><th>status</th></tr>"
    ));
    for f in json["frames"].as_array().into_iter().flatten().take(15) {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(f["frame"].as_str().unwrap_or_default()),
            num(&f["total"]["base"]),
            num(&f["total"]["cand"]),
            num(&f["total"]["change"]),
            f["p_adjusted"].as_f64().map_or_else(|| "-".to_owned(), |p| format!("{p:.2e}")),
            escape(&f["status"].to_string().replace('"', "")),
        ));
    }
    h.push_str("</table><p><b>Root-cause paths</b> (the paths that explain most of the change):</p><table class=\"diff-paths\"><tr><th>path</th><th>change</th><th>share of the change</th></tr>");
    for p in json["paths"].as_array().into_iter().flatten() {
        h.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1} %</td></tr>",
            escape(
                &p["path"]
                    .as_array()
                    .map(|f| f
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(";"))
                    .unwrap_or_default()
            ),
            num(&p["change"]),
            p["share_of_change_pct"].as_f64().unwrap_or(0.0),
        ));
    }
    h.push_str("</table>");
    if let Some(lat) = json["latency"].as_array().filter(|l| !l.is_empty()) {
        h.push_str("<p><b>Latency</b> (two-sample Kolmogorov-Smirnov):</p><pre>");
        for l in lat {
            h.push_str(&escape(&l.to_string()));
            h.push('\n');
        }
        h.push_str("</pre>");
    }
    if let Some(g) = json["gate"].as_object() {
        h.push_str(&format!(
            "<p><b>Gate</b>: {} (fail above {} {})</p>",
            if g["failed"] == true {
                "FAILED"
            } else {
                "passed"
            },
            g["fail_above"],
            escape(g["threshold_unit"].as_str().unwrap_or_default())
        ));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_said_in_the_singular_and_plural() {
        assert_eq!(threshold_text(1.0, "points of share"), "1 point of share");
        assert_eq!(threshold_text(5.0, "points of share"), "5 points of share");
        assert_eq!(
            threshold_text(1.0, "percent of the base p99"),
            "1 percent of the base p99"
        );
    }
}
