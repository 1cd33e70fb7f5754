//! Render: writes an aggregated profile as files: `<view>.folded`, `<view>.svg` (inferno),
//! `summary.json`, `tcp.jsonl`, `numa.jsonl`; [`html`] writes `report.html`. Every file is written to a temporary name and
//! renamed into place, so an output folder never holds a half-written file.

mod flame;
pub mod html;
mod summary;

pub use self::summary::{PushSummary, summary};

use bar_ebpf_common::Family;
use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use inferno::flamegraph::{self, Palette, color::MultiPalette};
use serde_json::{Value, json};

use crate::aggregate::{Profile, ViewAgg, format_endpoint, migrate_reason, tcp_result};
use crate::capture::proto::event::Detail;

/// Writes `path` atomically (temporary file + rename), mode 0600 like the capture.
/// Writes `path` atomically (temporary file + rename), mode 0600 like the capture.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
    ));
    let result = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut w = io::BufWriter::new(file);
        write(&mut w)?;
        w.flush()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(ns: i128) -> String {
    jiff::Timestamp::from_nanosecond(ns).map_or_else(|_| ns.to_string(), |t| t.to_string())
}

/// Options of a flame graph for one view.
fn flame_options(profile: &Profile, view: Family, title: &str) -> flamegraph::Options<'static> {
    let mut o = flamegraph::Options::default();
    o.title = title.to_owned();
    o.subtitle = Some(format!(
        "{} on {} ({}), {}",
        profile.meta.target.as_ref().map_or_else(
            || format!("scope {}", profile.meta.scope),
            |t| format!("{} (pid {})", t.comm, t.pid)
        ),
        profile.meta.hostname,
        profile.meta.kernel_release,
        rfc3339(profile.wall_ns(profile.meta.start_ns)),
    ));
    o.count_name = view.unit().to_owned();
    // Colours from a hash of the name: the same input always draws the same picture.
    o.hash = true;
    o.deterministic = true;
    o.colors = Palette::Multi(MultiPalette::Java);
    o
}

/// Writes a flame graph of folded lines; an empty profile gets a picture saying so (inferno
/// has nothing to draw without weight).
pub fn write_svg(
    path: &Path,
    lines: &[String],
    mut options: flamegraph::Options<'_>,
) -> io::Result<()> {
    write_atomic(path, |w| {
        if lines.is_empty() {
            let title = options.title.replace('&', "&amp;").replace('<', "&lt;");
            return write!(
                w,
                "<?xml version=\"1.0\" standalone=\"no\"?>\n\
                 <svg version=\"1.1\" width=\"1200\" height=\"80\" xmlns=\"http://www.w3.org/2000/svg\">\n\
                 <text x=\"600\" y=\"30\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"17\">{title}</text>\n\
                 <text x=\"600\" y=\"60\" text-anchor=\"middle\" font-family=\"Verdana\" font-size=\"12\">no events were recorded</text>\n\
                 </svg>\n"
            );
        }
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), w)
            .map_err(|e| io::Error::other(e.to_string()))
    })
}

fn write_lines(path: &Path, lines: &[String]) -> io::Result<()> {
    write_atomic(path, |w| {
        for l in lines {
            writeln!(w, "{l}")?;
        }
        Ok(())
    })
}

/// One JSON object per line for each TCP attempt or NUMA event, with wall-clock times.
fn jsonl_line(profile: &Profile, ev: &crate::capture::proto::Event) -> Option<(Family, Value)> {
    let at = rfc3339(profile.wall_ns(ev.ts));
    let comm = profile.comm_at(ev.pid, ev.ts);
    let stack = profile.stack_names(ev.stack);
    match &ev.detail {
        Some(Detail::Tcp(t)) => Some((
            Family::Tcp,
            json!({
                "time": at, "pid": ev.pid, "tid": ev.tid, "comm": comm,
                "source": format_endpoint(t.family, &t.saddr, t.sport),
                "destination": format_endpoint(t.family, &t.daddr, t.dport),
                "result": tcp_result(t.error), "errno": t.error,
                "latency_us": t.latency_ns as f64 / 1000.0,
                "stack": stack,
            }),
        )),
        Some(Detail::NumaTask(n)) => Some((
            Family::Numa,
            json!({
                "time": at, "pid": ev.pid, "tid": ev.tid, "comm": comm, "type": "task",
                "what": match n.what { 2 => "swap", 3 => "stick", _ => "move" },
                "from_node": n.src_nid, "to_node": n.dst_nid, "from_cpu": n.src_cpu, "to_cpu": n.dst_cpu,
                "stack": stack,
            }),
        )),
        Some(Detail::NumaPages(p)) => Some((
            Family::Numa,
            json!({
                "time": at, "pid": ev.pid, "tid": ev.tid, "comm": comm, "type": "pages",
                "reason": migrate_reason(p.reason), "mode": p.mode,
                "succeeded": p.succeeded, "failed": p.failed, "thp_succeeded": p.thp_succeeded, "thp_failed": p.thp_failed,
                "from_node": p.src_nid.filter(|n| *n >= 0),
                "to_node": if p.dst_nid < 0 { Value::Null } else { json!(p.dst_nid) },
                "stack": stack,
            }),
        )),
        _ => None,
    }
}

/// Writes every output of a profile into `dir`; returns the files written.
pub fn write_all(profile: &Profile, dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let recorded = profile.recorded_views();
    let empty = ViewAgg::default();
    for view in &recorded {
        let agg = profile.views.get(view).unwrap_or(&empty);
        let lines = profile.folded(agg);
        let folded = dir.join(format!("{}.folded", view.name()));
        write_lines(&folded, &lines)?;
        written.push(folded);
        let svg = dir.join(format!("{}.svg", view.name()));
        let title = format!("bar {} ({})", view.name(), view.unit());
        write_svg(
            &svg,
            &flame::drawable(&lines),
            flame_options(profile, *view, &title),
        )?;
        written.push(svg);
    }
    for view in [Family::Tcp, Family::Numa] {
        if !recorded.contains(&view) {
            continue;
        }
        let lines: Vec<String> = profile
            .detail_events
            .iter()
            .filter_map(|ev| jsonl_line(profile, ev))
            .filter(|(v, _)| *v == view)
            .map(|(_, j)| j.to_string())
            .collect();
        let path = dir.join(format!("{}.jsonl", view.name()));
        write_lines(&path, &lines)?;
        written.push(path);
    }
    for (phase, views) in profile.phases.iter().zip(&profile.phase_views) {
        let pdir = dir.join("phases").join(&phase.name);
        fs::create_dir_all(&pdir)?;
        for view in &recorded {
            let agg = views.get(view).unwrap_or(&empty);
            let lines = profile.folded(agg);
            let folded = pdir.join(format!("{}.folded", view.name()));
            write_lines(&folded, &lines)?;
            written.push(folded);
            let svg = pdir.join(format!("{}.svg", view.name()));
            let title = format!(
                "bar {} ({}), phase {}",
                view.name(),
                view.unit(),
                phase.name
            );
            write_svg(
                &svg,
                &flame::drawable(&lines),
                flame_options(profile, *view, &title),
            )?;
            written.push(svg);
        }
    }
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary(profile)).map_err(io::Error::other)?;
    write_atomic(&path, |w| writeln!(w, "{text}"))?;
    written.push(path);
    Ok(written)
}
