//! Render: writes an aggregated profile as files: `<view>.folded`, `<view>.svg` (inferno),
//! `summary.json`, `tcp.jsonl`, `numa.jsonl`; [`html`] writes `report.html`. Every file is
//! written through [`Dir::write_atomic`] (a temporary name renamed into place, never through a
//! link), so an output folder never holds a half-written file.

mod flame;
pub mod html;
mod summary;

pub use self::summary::{PushSummary, Summary, summary};

use bar_ebpf_common::Family;
use std::{io, path::PathBuf};

use inferno::flamegraph::{self, Palette, color::MultiPalette};
use serde_json::{Value, json};

use crate::analyze::{Profile, ViewAgg, format_endpoint, migrate_reason, phases, tcp_result};
use crate::capture::proto::event::Detail;
use crate::{sys::files::Dir, system::rfc3339};

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
    dir: &Dir,
    name: &str,
    lines: &[String],
    mut options: flamegraph::Options<'_>,
) -> io::Result<PathBuf> {
    dir.write_atomic(name, |w| {
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

pub fn write_lines(dir: &Dir, name: &str, lines: &[String]) -> io::Result<PathBuf> {
    dir.write_atomic(name, |w| {
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

/// What [`write_all`] wrote, and the phase outputs it could not write (each one line).
#[derive(Debug, Default)]
pub struct Written {
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

/// Writes every output of a profile into `dir`: the whole recording's first (summary.json
/// included), then each phase's under `phases/`. A phase whose outputs cannot be written is
/// a warning, never a reason to lose the others.
pub fn write_all(profile: &Profile, dir: &Dir) -> io::Result<Written> {
    let mut written = Written::default();
    let recorded = profile.recorded_views();
    let empty = ViewAgg::default();
    for view in &recorded {
        let agg = profile.views.get(view).unwrap_or(&empty);
        let lines = profile.folded(agg);
        written.files.push(write_lines(
            dir,
            &format!("{}.folded", view.name()),
            &lines,
        )?);
        let title = format!("bar {} ({})", view.name(), view.unit());
        written.files.push(write_svg(
            dir,
            &format!("{}.svg", view.name()),
            &flame::drawable(&lines),
            flame_options(profile, *view, &title),
        )?);
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
        written
            .files
            .push(write_lines(dir, &format!("{}.jsonl", view.name()), &lines)?);
    }
    let text = summary(profile).to_json().map_err(io::Error::other)?;
    written
        .files
        .push(dir.write_atomic("summary.json", |w| writeln!(w, "{text}"))?);
    if profile.phases.is_empty() {
        return Ok(written);
    }
    let phases_dir = match dir.subdir("phases") {
        Ok(d) => d,
        Err(e) => {
            written.warnings.push(format!("no per-phase outputs: {e}"));
            return Ok(written);
        }
    };
    let folders = phases::folder_names(&profile.phases);
    for ((phase, views), folder) in profile
        .phases
        .iter()
        .zip(&profile.phase_views)
        .zip(&folders)
    {
        let one = |files: &mut Vec<PathBuf>| -> io::Result<()> {
            let pdir = phases_dir.subdir(folder)?;
            for view in &recorded {
                let agg = views.get(view).unwrap_or(&empty);
                let lines = profile.folded(agg);
                files.push(write_lines(
                    &pdir,
                    &format!("{}.folded", view.name()),
                    &lines,
                )?);
                let title = format!(
                    "bar {} ({}), phase {}",
                    view.name(),
                    view.unit(),
                    phase.name
                );
                files.push(write_svg(
                    &pdir,
                    &format!("{}.svg", view.name()),
                    &flame::drawable(&lines),
                    flame_options(profile, *view, &title),
                )?);
            }
            Ok(())
        };
        if let Err(e) = one(&mut written.files) {
            written.warnings.push(format!(
                "the outputs of phase '{}' are incomplete: {e}",
                phase.name
            ));
        }
    }
    Ok(written)
}
