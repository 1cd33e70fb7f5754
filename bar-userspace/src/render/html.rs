//! `report.html`: one self-contained page (no network, no external files) that tells the story
//! of a recording: what was recorded and how, the event rates over time with the phases as
//! bands, the flame graphs of the whole recording and of every phase, latency, TCP and NUMA
//! tables, losses, and any further sections (a diff) the caller adds.
//!
//! Flame graphs are the inferno SVGs already written beside it, embedded as `data:` URLs in
//! iframes so that each keeps its own search and zoom script.

use bar_ebpf_common::Family;
use std::{collections::BTreeMap, fmt::Write as _, io};

use base64::Engine as _;

use super::summary::{FamilyDetail, PhaseSummary, PushSummary, Summary};
use crate::system::rfc3339;
use crate::{
    analyze::{Profile, phases},
    sys::files::Dir,
};

/// A section added by the caller (e.g. a diff), as trusted HTML.
pub struct Section {
    pub title: String,
    pub html: String,
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
iframe{width:100%;border:1px solid #ddd}details{margin:.4em 0}summary{cursor:pointer;font-weight:600}
.note{color:#a33}.dim{color:#777}";

/// Colours of the kinds in the timeline, and the phase bands.
const KIND_COLOURS: [(Family, &str); 5] = [
    (Family::Cpu, "#d9480f"),
    (Family::Offcpu, "#1c7ed6"),
    (Family::Faults, "#2b8a3e"),
    (Family::Tcp, "#862e9c"),
    (Family::Numa, "#e67700"),
];
const BAND_COLOURS: [&str; 4] = ["#fff3bf", "#d3f9d8", "#d0ebff", "#f3d9fa"];
/// A week of seconds: more points than a page can show, and a bound on a damaged timestamp.
const MAX_TIMELINE_SECONDS: u64 = 7 * 86_400;

/// The largest flame graph embedded in a page.
const MAX_SVG: u64 = 256 << 20;

/// An inferno SVG file of `dir`, embedded so that its script still runs.
pub fn flame_iframe(dir: &Dir, name: &str) -> String {
    let svg = match dir.read_back(name, MAX_SVG) {
        Ok(svg) => svg,
        Err(e) => {
            return format!(
                "<p class=\"note\">{} is missing: {}</p>",
                escape(&dir.join(name).display().to_string()),
                escape(&e.to_string())
            );
        }
    };
    // The iframe takes the height the graph declares.
    let text = String::from_utf8_lossy(&svg);
    let height = text
        .split("<svg")
        .nth(1)
        .and_then(|s| s.split("height=\"").nth(1))
        .and_then(|s| s.split('"').next())
        .and_then(|h| h.parse::<u32>().ok())
        .unwrap_or(400);
    let data = base64::engine::general_purpose::STANDARD.encode(&svg);
    format!(
        "<iframe style=\"height:{}px\" src=\"data:image/svg+xml;base64,{data}\"></iframe>",
        height + 20
    )
}

/// Events per second of each kind over time, one row per kind, with phases as bands.
fn timeline(profile: &Profile) -> String {
    let views: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|v| profile.views.contains_key(v))
        .collect();
    let start = profile.meta.start_ns;
    let secs = (profile.end_ns().saturating_sub(start) as f64 / 1e9)
        .ceil()
        .max(1.0);
    let (w, row_h, left) = (1000.0, 70.0, 90.0);
    let h = row_h * views.len().max(1) as f64 + 30.0;
    let x = |s: f64| left + (w - left - 10.0) * s / secs;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-size=\"11\" font-family=\"sans-serif\">"
    );
    for (i, ph) in profile.phases.iter().enumerate() {
        let (a, b) = (
            (ph.start_ns - start) as f64 / 1e9,
            (ph.end_ns - start) as f64 / 1e9,
        );
        let colour = BAND_COLOURS[i % BAND_COLOURS.len()];
        let _ = write!(
            svg,
            "<rect class=\"phase-band\" x=\"{:.1}\" y=\"14\" width=\"{:.1}\" height=\"{}\" fill=\"{colour}\"><title>{}</title></rect><text x=\"{:.1}\" y=\"11\">{}</text>",
            x(a),
            (x(b) - x(a)).max(1.0),
            h - 34.0,
            escape(&ph.name),
            x(a) + 3.0,
            escape(&ph.name)
        );
    }
    for (row, view) in views.iter().enumerate() {
        let colour = KIND_COLOURS
            .iter()
            .find(|(v, _)| v == view)
            .map_or("#333", |c| c.1);
        let series: BTreeMap<u64, u64> = profile
            .timeline
            .iter()
            .map(|(s, per)| (*s, per.get(view).copied().unwrap_or(0)))
            .collect();
        let max = series.values().copied().max().unwrap_or(0).max(1) as f64;
        let top = row as f64 * row_h + 18.0;
        let y = |v: u64| top + (row_h - 16.0) * (1.0 - v as f64 / max);
        let points: Vec<String> = (0..(secs as u64).min(MAX_TIMELINE_SECONDS))
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    x(s as f64 + 0.5),
                    y(series.get(&s).copied().unwrap_or(0))
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" fill=\"{colour}\">{} /s</text><text x=\"4\" y=\"{:.1}\" class=\"dim\" fill=\"#777\">max {}</text><polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
            top + 14.0,
            view.name(),
            top + 28.0,
            max as u64,
            points.join(" ")
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{}\" fill=\"#777\">0 s</text><text x=\"{:.1}\" y=\"{}\" fill=\"#777\" text-anchor=\"end\">{secs} s</text></svg>",
        h - 20.0 + 12.0,
        w - 10.0,
        h - 20.0 + 12.0
    );
    svg
}

fn row(cells: &[String]) -> String {
    let mut s = String::from("<tr>");
    for c in cells {
        let numeric = c.parse::<f64>().is_ok();
        let _ = write!(
            s,
            "<td{}>{}</td>",
            if numeric { " class=\"n\"" } else { "" },
            escape(c)
        );
    }
    s.push_str("</tr>");
    s
}

fn table(head: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut s = String::from("<table><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str(&row(&r));
    }
    s.push_str("</table>");
    s
}

/// A page of sections alone (e.g. the report of a `diff`).
pub fn write_page(dir: &Dir, title: &str, sections: &[Section]) -> io::Result<std::path::PathBuf> {
    let mut h = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>",
        t = escape(title)
    );
    for s in sections {
        let _ = write!(h, "<h2>{}</h2>{}", escape(&s.title), s.html);
    }
    h.push_str("</body></html>\n");
    dir.write_atomic("report.html", |w| w.write_all(h.as_bytes()))
}

/// Writes `report.html` into `dir`, next to the flame graphs `write_all` wrote there.
pub fn write(profile: &Profile, dir: &Dir, extra: &[Section]) -> io::Result<std::path::PathBuf> {
    let summary = super::summary(profile);
    let m = &profile.meta;
    let target = m.target.as_ref().map_or_else(
        || {
            format!(
                "{} ({})",
                m.scope,
                if m.cgroup.is_empty() {
                    "every process"
                } else {
                    &m.cgroup
                }
            )
        },
        |t| format!("{} (pid {}) {}", t.comm, t.pid, t.exe),
    );
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>bar report: {}</title><style>{STYLE}</style></head><body>",
        escape(&target)
    );
    let _ = write!(h, "<h1>bar report: {}</h1>", escape(&target));
    h.push_str(&table(
        &["", ""],
        [
            vec![
                "host".into(),
                format!(
                    "{} ({}), {} CPUs",
                    m.hostname, m.kernel_release, m.cpu_count
                ),
            ],
            vec!["from".into(), rfc3339(profile.wall_ns(m.start_ns))],
            vec!["to".into(), rfc3339(profile.wall_ns(profile.end_ns()))],
            vec!["duration".into(), format!("{:.2} s", summary.duration_s)],
            vec![
                "stopped by".into(),
                summary
                    .stop_reason
                    .as_deref()
                    .unwrap_or("(no trailer)")
                    .into(),
            ],
            vec!["command".into(), m.command_line.join(" ")],
            vec!["bar".into(), m.bar_version.clone()],
        ],
    ));
    if let Some(d) = &profile.damage {
        let _ = write!(
            h,
            "<p class=\"note\">The capture is damaged: {}. What was valid is shown.</p>",
            escape(&d.to_string())
        );
    }
    for n in &profile.phase_notes {
        let _ = write!(h, "<p class=\"note\">{}</p>", escape(n));
    }

    h.push_str("<h2>What was recorded</h2>");
    h.push_str(&table(
        &["kind", "attach point", "events", "weight", "unit", "lost"],
        Family::ALL.into_iter().filter_map(|v| {
            let k = summary.kinds.get(v.name())?;
            Some(vec![
                v.name().into(),
                k.attach.as_deref().unwrap_or("not attached").into(),
                k.events.to_string(),
                k.weight.to_string(),
                v.unit().into(),
                k.lost.to_string(),
            ])
        }),
    ));

    h.push_str("<h2>Timeline</h2><div id=\"timeline\">");
    h.push_str(&timeline(profile));
    h.push_str("</div>");

    if !profile.phases.is_empty() {
        h.push_str("<h2 id=\"phases\">Phases</h2>");
        h.push_str(&phase_table(&summary.phases));
    }

    h.push_str(&flame_graphs(profile, dir));

    for s in extra {
        let _ = write!(h, "<h2>{}</h2>{}", escape(&s.title), s.html);
    }

    h.push_str(&family_tables(&summary));
    h.push_str(&push_table(&summary.push));
    h.push_str(&losses(&summary));
    h.push_str("</body></html>\n");
    dir.write_atomic("report.html", |w| w.write_all(h.as_bytes()))
}

/// The phases, their time ranges, event rates and losses.
fn phase_table(phases: &[PhaseSummary]) -> String {
    table(
        &["phase", "from", "to", "duration (s)", "events/s", "lost"],
        phases.iter().map(|p| {
            let rates: Vec<String> = p
                .kinds
                .iter()
                .map(|(n, v)| format!("{n} {:.0}", v.events_per_s))
                .collect();
            vec![
                p.name.clone(),
                p.start.clone(),
                p.end.clone(),
                format!("{:.3}", p.duration_s),
                rates.join(", "),
                p.lost.to_string(),
            ]
        }),
    )
}

/// The flame graph of each family recorded, of the whole and of each phase.
fn flame_graphs(profile: &Profile, dir: &Dir) -> String {
    let mut h = String::from("<h2>Flame graphs</h2>");
    let recorded: Vec<Family> = Family::ALL
        .into_iter()
        .filter(|v| dir.has_file(&format!("{}.svg", v.name())))
        .collect();
    for v in &recorded {
        let _ = write!(
            h,
            "<details class=\"flame\" open><summary>{} ({}), whole recording</summary>{}</details>",
            v.name(),
            v.unit(),
            flame_iframe(dir, &format!("{}.svg", v.name()))
        );
    }
    let folders = phases::folder_names(&profile.phases);
    for (ph, folder) in profile.phases.iter().zip(&folders) {
        let _ = write!(
            h,
            "<details class=\"phase-flames\" open><summary>phase {}</summary>",
            escape(&ph.name)
        );
        let pdir = dir
            .existing_subdir("phases")
            .and_then(|d| d.existing_subdir(folder));
        for v in &recorded {
            let svg = match &pdir {
                Ok(d) => flame_iframe(d, &format!("{}.svg", v.name())),
                Err(e) => format!(
                    "<p class=\"note\">no flame graph: {}</p>",
                    escape(&e.to_string())
                ),
            };
            let _ = write!(h, "<p>{} ({})</p>{svg}", v.name(), v.unit());
        }
        h.push_str("</details>");
    }
    h
}

/// A figure that may be unknown, as the summary shows it.
fn or_null<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// The tables of what off-CPU, TCP and NUMA events tell beyond counts.
fn family_tables(summary: &Summary) -> String {
    let mut h = String::new();
    let detail = |name: &str| summary.kinds.get(name).and_then(|k| k.detail.as_ref());
    if let Some(FamilyDetail::Offcpu(off)) = detail("offcpu")
        && off.blocked_us.is_some()
    {
        h.push_str("<h2>Off-CPU time</h2>");
        let rows = [
            ("blocked", &off.blocked_us),
            ("preempted", &off.preempted_us),
        ]
        .into_iter()
        .filter_map(|(label, p)| {
            let p = p.as_ref()?;
            Some(vec![
                label.to_owned(),
                p.p50.to_string(),
                p.p99.to_string(),
                p.max.to_string(),
                p.count.to_string(),
            ])
        });
        h.push_str(&table(
            &["state", "p50 (us)", "p99 (us)", "max (us)", "intervals"],
            rows,
        ));
    }
    if let Some(FamilyDetail::Tcp { destinations, .. }) = detail("tcp") {
        h.push_str("<h2>TCP connects</h2>");
        h.push_str(&table(
            &[
                "destination",
                "attempts",
                "established",
                "refused",
                "timed out",
                "other",
                "p50 (us)",
                "p90 (us)",
                "p99 (us)",
                "max (us)",
            ],
            destinations.iter().map(|d| {
                let l = d.latency_us.as_ref();
                vec![
                    d.destination.clone(),
                    d.attempts.to_string(),
                    d.established.to_string(),
                    d.failures.refused.to_string(),
                    d.failures.timed_out.to_string(),
                    d.failures.other.to_string(),
                    or_null(l.map(|l| l.p50)),
                    or_null(l.and_then(|l| l.p90)),
                    or_null(l.map(|l| l.p99)),
                    or_null(l.map(|l| l.max)),
                ]
            }),
        ));
    }
    if let Some(FamilyDetail::Numa(numa)) = detail("numa")
        && summary.kinds.get("numa").is_some_and(|k| k.events > 0)
    {
        h.push_str("<h2>NUMA</h2>");
        let node = |n: Option<i32>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        h.push_str(&table(
            &["from node", "to node", "task placements", "pages"],
            numa.node_pairs.iter().map(|p| {
                vec![
                    node(p.from),
                    node(p.to),
                    p.tasks.to_string(),
                    p.pages.to_string(),
                ]
            }),
        ));
        h.push_str(&table(
            &["migration reason", "pages migrated", "pages failed"],
            numa.pages_by_reason
                .iter()
                .map(|(r, v)| vec![r.clone(), v.succeeded.to_string(), v.failed.to_string()]),
        ));
    }
    h
}

/// What the recording pushed, per backend (nothing when it pushed nothing).
fn push_table(pushed: &[PushSummary]) -> String {
    if pushed.is_empty() {
        return String::new();
    }
    let mut h = String::from("<h2 id=\"push\">Pushed</h2>");
    h.push_str(&table(
        &[
            "backend",
            "url",
            "name",
            "every (s)",
            "sent",
            "failed",
            "dropped",
            "last error",
        ],
        pushed.iter().map(|p| {
            vec![
                p.backend.clone(),
                p.url.clone(),
                p.name.clone(),
                format!("{}", p.every_s),
                p.sent.to_string(),
                p.failed.to_string(),
                p.dropped.to_string(),
                p.last_error.clone().unwrap_or_default(),
            ]
        }),
    ));
    h
}

/// Losses, and the busiest processes when there were several.
fn losses(summary: &Summary) -> String {
    let mut h = String::from("<h2>Losses</h2>");
    let lost = &summary.lost;
    let per_cpu: Vec<String> = lost.per_cpu.iter().map(ToString::to_string).collect();
    h.push_str(&table(
        &["", ""],
        [
            vec![
                "records lost (perf buffers full)".into(),
                lost.total.to_string(),
            ],
            vec!["per CPU".into(), per_cpu.join(", ")],
            vec![
                "stacks lost (stack map)".into(),
                summary.symbols.stacks_lost.to_string(),
            ],
            vec![
                "discarded at --max-size".into(),
                lost.discarded_at_max_size.to_string(),
            ],
        ],
    ));
    let top = &summary.processes.top;
    if top.len() > 1 {
        h.push_str("<h2>Processes</h2>");
        h.push_str(&table(
            &["pid", "name", "events"],
            top.iter()
                .take(30)
                .map(|p| vec![p.pid.to_string(), p.comm.clone(), p.events.to_string()]),
        ));
    }
    h
}
