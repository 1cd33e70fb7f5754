//! Render: writes an aggregated profile as files: `<view>.folded`, `<view>.svg` (inferno),
//! `summary.json`, `tcp.jsonl` and `numa.jsonl`. Every file is written to a temporary name and
//! renamed into place, so an output folder never holds a half-written file.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

use hdrhistogram::Histogram;
use inferno::flamegraph::{self, Palette, color::MultiPalette};
use serde::Serialize;
use serde_json::{Value, json};

use crate::aggregate::{Profile, View, ViewAgg, format_endpoint, migrate_reason, tcp_result};
use crate::capture::proto::event::Detail;

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

fn percentiles(h: &Histogram<u64>, qs: &[(&str, f64)]) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    let mut m = serde_json::Map::new();
    for (name, q) in qs {
        m.insert((*name).to_owned(), json!(h.value_at_quantile(*q)));
    }
    m.insert("max".into(), json!(h.max()));
    m.insert("count".into(), json!(h.len()));
    Value::Object(m)
}

const P50_P99: &[(&str, f64)] = &[("p50", 0.5), ("p99", 0.99)];
const P50_P90_P99: &[(&str, f64)] = &[("p50", 0.5), ("p90", 0.9), ("p99", 0.99)];

/// Options of a flame graph for one view.
fn flame_options(profile: &Profile, view: View, title: &str) -> flamegraph::Options<'static> {
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

#[derive(Serialize)]
struct SymbolSummary {
    stacks_lost: u64,
    frames: usize,
    unresolved_frames: usize,
}

/// Per-view summary entry.
fn view_summary(profile: &Profile, view: View, agg: Option<&ViewAgg>) -> Value {
    let meta = &profile.meta;
    let family = meta.families.iter().find(|f| f.name == view.name());
    let kinds: &[u32] = match view {
        View::Cpu => &[bar_ebpf_common::kind::CPU],
        View::Offcpu => &[bar_ebpf_common::kind::OFFCPU],
        View::Faults => &[bar_ebpf_common::kind::FAULT],
        View::Tcp => &[bar_ebpf_common::kind::TCP],
        View::Numa => &[
            bar_ebpf_common::kind::NUMA_TASK,
            bar_ebpf_common::kind::NUMA_PAGES,
        ],
    };
    let lost: u64 = kinds
        .iter()
        .map(|&k| {
            profile
                .counters
                .dropped_per_kind
                .get(k as usize)
                .copied()
                .unwrap_or(0)
        })
        .sum();
    let mut v = json!({
        "events": agg.map_or(0, |a| a.events),
        "weight": agg.map_or(0, |a| a.weight),
        "weight_unit": view.unit(),
        "lost": lost,
        "attach": family.map(|f| f.method.clone()).filter(|m| !m.is_empty()),
        "rejected": family.map(|f| f.rejected.iter().map(|r| json!({"attach": r.attach, "reason": r.reason})).collect::<Vec<_>>()).unwrap_or_default(),
    });
    let Some(agg) = agg else { return v };
    let obj = v.as_object_mut().unwrap_or_else(|| unreachable!());
    match view {
        View::Cpu => {
            obj.insert("frequency_hz".into(), json!(meta.frequency));
        }
        View::Faults => {
            obj.insert("user_mode".into(), json!(agg.user_mode));
            obj.insert("kernel_mode".into(), json!(agg.kernel_mode));
            // null when the attach point cannot tell (the exception tracepoints run before the
            // fault is resolved): unknown is not zero.
            let known = agg.major + agg.minor > 0 || agg.severity_unknown == 0;
            let count = |n: u64| if known { json!(n) } else { Value::Null };
            obj.insert("major".into(), count(agg.major));
            obj.insert("minor".into(), count(agg.minor));
        }
        View::Offcpu => {
            obj.insert("min_block_us".into(), json!(meta.min_block_ns / 1000));
            obj.insert("blocked_us".into(), percentiles(&agg.blocked_us, P50_P99));
            obj.insert(
                "preempted_us".into(),
                percentiles(&agg.preempted_us, P50_P99),
            );
            obj.insert("map_full".into(), json!(profile.counters.offcpu_map_full));
            let mut top: Vec<_> = agg.per_stack_us.iter().collect();
            top.sort_by(|a, b| {
                let total = |h: &Histogram<u64>| {
                    h.iter_recorded()
                        .map(|x| x.value_iterated_to() * x.count_at_value())
                        .sum::<u64>()
                };
                total(b.1).cmp(&total(a.1)).then(a.0.cmp(b.0))
            });
            let top: Vec<Value> = top
                .into_iter()
                .take(10)
                .map(|((pid, stack), h)| {
                    let mut frames = vec![profile.comm(*pid)];
                    frames.extend(profile.stack_names(*stack));
                    json!({ "stack": frames.join(";"), "blocked_us": percentiles(h, P50_P99) })
                })
                .collect();
            obj.insert("top_blocked_stacks".into(), json!(top));
        }
        View::Tcp => {
            obj.insert("map_full".into(), json!(profile.counters.tcp_map_full));
            let dests: Vec<Value> = agg
                .tcp
                .iter()
                .map(|(dest, d)| {
                    json!({
                        "destination": dest,
                        "attempts": d.attempts,
                        "established": d.established,
                        "failures": { "refused": d.refused, "timed_out": d.timed_out, "other": d.other },
                        "latency_us": percentiles(&d.latency_us, P50_P90_P99),
                    })
                })
                .collect();
            obj.insert("destinations".into(), json!(dests));
        }
        View::Numa => {
            let n = &agg.numa;
            obj.insert(
                "weight_note".into(),
                json!("pages migrated for page migrations, 1 per task placement"),
            );
            obj.insert("task_moves".into(), json!(n.task_moves));
            obj.insert("task_swaps".into(), json!(n.task_swaps));
            obj.insert("task_sticks".into(), json!(n.task_sticks));
            obj.insert("pages_migrated".into(), json!(n.pages_migrated));
            obj.insert("pages_failed".into(), json!(n.pages_failed));
            let by_reason: BTreeMap<&String, Value> = n
                .batches_by_reason
                .iter()
                .map(|(r, (ok, failed))| (r, json!({"succeeded": ok, "failed": failed})))
                .collect();
            obj.insert("pages_by_reason".into(), json!(by_reason));
            let pairs: Vec<Value> = n
                .node_pairs
                .iter()
                .map(|((from, to), p)| {
                    let node = |n: i32| if n < 0 { Value::Null } else { json!(n) };
                    json!({"from": node(*from), "to": node(*to), "tasks": p.tasks, "pages": p.pages})
                })
                .collect();
            obj.insert("node_pairs".into(), json!(pairs));
        }
    }
    v
}

/// The whole `summary.json`.
pub fn summary(profile: &Profile) -> Value {
    let meta = &profile.meta;
    let start = meta.start_ns;
    let end = profile.end_ns();
    let mut kinds = serde_json::Map::new();
    for view in View::ALL {
        let recorded = meta.families.iter().any(|f| f.name == view.name())
            || profile.views.contains_key(&view);
        if recorded {
            kinds.insert(
                view.name().into(),
                view_summary(profile, view, profile.views.get(&view)),
            );
        }
    }
    let unresolved = profile
        .frames
        .iter()
        .filter(|f| f.name.starts_with('[') && f.name.contains("0x"))
        .count();
    let stacks_lost = profile
        .views
        .values()
        .flat_map(|a| a.stacks.iter())
        .filter(|((_, s, _), _)| {
            *s != 0
                && profile
                    .stack_names(*s)
                    .iter()
                    .any(|n| n.contains("stack lost"))
        })
        .map(|(_, w)| *w)
        .sum::<u64>();
    json!({
        "bar_version": meta.bar_version,
        "hostname": meta.hostname,
        "kernel_release": meta.kernel_release,
        "boot_id": meta.boot_id,
        "cpus": meta.cpu_count,
        "command_line": meta.command_line,
        "scope": meta.scope,
        "cgroup": if meta.cgroup.is_empty() { Value::Null } else { json!(meta.cgroup) },
        "target": meta.target.as_ref().map(|t| json!({
            "pid": t.pid, "comm": t.comm, "cmdline": t.cmdline, "exe": t.exe, "build_id": t.build_id,
        })),
        "start": rfc3339(profile.wall_ns(start)),
        "end": rfc3339(profile.wall_ns(end)),
        "duration_s": (end.saturating_sub(start)) as f64 / 1e9,
        "stop_reason": profile.trailer.as_ref().map(|t| t.stop_reason.clone()),
        "complete": profile.trailer.is_some() && profile.damage.is_none(),
        "damage": profile.damage.as_ref().map(ToString::to_string),
        "lost": {
            "total": profile.counters.lost_per_cpu.iter().sum::<u64>(),
            "per_cpu": profile.counters.lost_per_cpu,
            "malformed": profile.counters.malformed,
        },
        "symbols": SymbolSummary { stacks_lost, frames: profile.frames.len(), unresolved_frames: unresolved },
        "kinds": kinds,
        "phases": profile.markers.iter().map(|m| json!({"name": m.name, "at": rfc3339(profile.wall_ns(m.ts)), "end": m.end})).collect::<Vec<_>>(),
    })
}

/// One JSON object per line for each TCP attempt or NUMA event, with wall-clock times.
fn jsonl_line(profile: &Profile, ev: &crate::capture::proto::Event) -> Option<(View, Value)> {
    let at = rfc3339(profile.wall_ns(ev.ts));
    let comm = profile.comm(ev.pid);
    let stack = profile.stack_names(ev.stack);
    match &ev.detail {
        Some(Detail::Tcp(t)) => Some((
            View::Tcp,
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
            View::Numa,
            json!({
                "time": at, "pid": ev.pid, "tid": ev.tid, "comm": comm, "type": "task",
                "what": match n.what { 2 => "swap", 3 => "stick", _ => "move" },
                "from_node": n.src_nid, "to_node": n.dst_nid, "from_cpu": n.src_cpu, "to_cpu": n.dst_cpu,
                "stack": stack,
            }),
        )),
        Some(Detail::NumaPages(p)) => Some((
            View::Numa,
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
    let recorded: Vec<View> = View::ALL
        .into_iter()
        .filter(|v| {
            profile
                .meta
                .families
                .iter()
                .any(|f| f.name == v.name() && !f.method.is_empty())
                || profile.views.contains_key(v)
        })
        .collect();
    let empty = ViewAgg::default();
    for view in &recorded {
        let agg = profile.views.get(view).unwrap_or(&empty);
        let lines = profile.folded(agg);
        let folded = dir.join(format!("{}.folded", view.name()));
        write_lines(&folded, &lines)?;
        written.push(folded);
        let svg = dir.join(format!("{}.svg", view.name()));
        let title = format!("bar {} ({})", view.name(), view.unit());
        write_svg(&svg, &lines, flame_options(profile, *view, &title))?;
        written.push(svg);
    }
    for view in [View::Tcp, View::Numa] {
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
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary(profile)).map_err(io::Error::other)?;
    write_atomic(&path, |w| writeln!(w, "{text}"))?;
    written.push(path);
    Ok(written)
}
