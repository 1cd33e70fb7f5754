//! `summary.json`: what a recording was (host, target, time range, attach points) and what it
//! holds per kind, per process and per phase, with losses and latency percentiles.

use bar_ebpf_common::Family;
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::analyze::{Profile, ViewAgg};
use crate::system::rfc3339;

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

/// What a recording pushed to one backend: `summary.json`'s `push`, which `report.html` reads
/// back as this type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushSummary {
    /// "pyroscope" or "otlp".
    pub backend: String,
    /// Where to, without credentials.
    pub url: String,
    /// Application (Pyroscope) or service (OTLP) name.
    pub name: String,
    pub every_s: f64,
    /// Intervals accepted, refused or undeliverable, and never tried.
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    pub last_error: Option<String>,
}

impl PushSummary {
    /// What the capture's trailer says about each backend.
    pub fn of(profile: &Profile) -> Vec<Self> {
        let Some(t) = &profile.trailer else {
            return Vec::new();
        };
        t.push
            .iter()
            .map(|p| Self {
                backend: p.backend.clone(),
                url: p.url.clone(),
                name: p.name.clone(),
                every_s: p.every_ms as f64 / 1000.0,
                sent: p.sent,
                failed: p.failed,
                dropped: p.dropped,
                last_error: (!p.last_error.is_empty()).then(|| p.last_error.clone()),
            })
            .collect()
    }

    /// The `push` entry of a `summary.json` (empty when nothing was pushed or it is unreadable).
    pub fn from_summary(summary: &Value) -> Vec<Self> {
        serde_json::from_value(summary["push"].clone()).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct SymbolSummary {
    stacks_lost: u64,
    frames: usize,
    unresolved_frames: usize,
}

/// Per-view summary entry.
fn view_summary(profile: &Profile, view: Family, agg: Option<&ViewAgg>) -> Value {
    let meta = &profile.meta;
    let family = meta.families.iter().find(|f| f.name == view.name());
    let kinds = view.kinds();
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
        "stacks_lost": agg.map_or(0, |a| a.stacks_lost),
        "attach": family.map(|f| f.method.clone()).filter(|m| !m.is_empty()),
        "rejected": family.map(|f| f.rejected.iter().map(|r| json!({"attach": r.attach, "reason": r.reason})).collect::<Vec<_>>()).unwrap_or_default(),
    });
    let Some(agg) = agg else { return v };
    let obj = v.as_object_mut().unwrap_or_else(|| unreachable!());
    if let Some(window) = profile.summed_every(view) {
        // Per-event details are gone: say so next to the figures they would have made.
        obj.insert(
            "summed_in_kernel_every_ms".into(),
            json!(window.as_millis()),
        );
    }
    match view {
        Family::Cpu => {
            obj.insert("frequency_hz".into(), json!(meta.frequency));
        }
        Family::Faults => {
            obj.insert("user_mode".into(), json!(agg.user_mode));
            obj.insert("kernel_mode".into(), json!(agg.kernel_mode));
            // null when the attach point cannot tell (the exception tracepoints run before the
            // fault is resolved): unknown is not zero.
            let known = agg.major + agg.minor > 0 || agg.severity_unknown == 0;
            let count = |n: u64| if known { json!(n) } else { Value::Null };
            obj.insert("major".into(), count(agg.major));
            obj.insert("minor".into(), count(agg.minor));
        }
        Family::Offcpu => {
            obj.insert("min_block_us".into(), json!(meta.min_block_ns / 1000));
            obj.insert("blocked_us".into(), percentiles(&agg.blocked_us, P50_P99));
            obj.insert(
                "preempted_us".into(),
                percentiles(&agg.preempted_us, P50_P99),
            );
            obj.insert("map_full".into(), json!(profile.counters.offcpu_map_full));
            obj.insert(
                "returns_unseen".into(),
                json!(profile.counters.offcpu_returns_unseen),
            );
            let mut top: Vec<_> = agg.per_stack_us.iter().collect();
            top.sort_by(|a, b| b.1.total_us.cmp(&a.1.total_us).then(a.0.cmp(b.0)));
            let top: Vec<Value> = top
                .into_iter()
                .take(10)
                .map(|((pid, stack), times)| {
                    let mut frames = vec![profile.name(*pid).to_owned()];
                    frames.extend(profile.stack_names(*stack));
                    let blocked = percentiles(&times.histogram(), P50_P99);
                    json!({ "stack": frames.join(";"), "blocked_us": blocked })
                })
                .collect();
            obj.insert("top_blocked_stacks".into(), json!(top));
        }
        Family::Tcp => {
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
        Family::Numa => {
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

/// Per-process totals, busiest first (at most 100; the count of all is kept).
fn process_table(profile: &Profile) -> Value {
    let mut rows: Vec<(u32, u64, _)> = profile
        .per_process
        .iter()
        .map(|(pid, kinds)| (*pid, kinds.values().map(|v| v.0).sum(), kinds))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top: Vec<Value> = rows
        .iter()
        .take(100)
        .map(|(pid, events, kinds)| {
            let per_kind: BTreeMap<&str, Value> = kinds
                .iter()
                .map(|(v, (e, w))| (v.name(), json!({"events": e, "weight": w})))
                .collect();
            json!({
                "pid": pid,
                "comm": profile.comm_at(*pid, u64::MAX),
                "events": events,
                "kinds": per_kind,
            })
        })
        .collect();
    json!({ "count": rows.len(), "top": top })
}

/// The whole `summary.json`.
pub fn summary(profile: &Profile) -> Value {
    let meta = &profile.meta;
    let start = meta.start_ns;
    let end = profile.end_ns();
    let mut kinds = serde_json::Map::new();
    for view in Family::ALL {
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
        .filter(|f| {
            f.name.starts_with("[unknown") || (f.name.starts_with('[') && f.name.contains("0x"))
        })
        .count();
    let stacks_lost = profile.views.values().map(|a| a.stacks_lost).sum::<u64>();
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
        "ring": (meta.ring_window_ns > 0).then(|| json!({
            "window_s": meta.ring_window_ns as f64 / 1e9,
            "size_bytes": meta.ring_size_bytes,
            "cut_by_size": meta.ring_cut_by_size,
            "held_bytes": meta.ring_held_bytes,
        })),
        "complete": profile.trailer.is_some() && profile.damage.is_none(),
        "damage": profile.damage.as_ref().map(ToString::to_string),
        "lost": {
            "total": profile.counters.lost_per_cpu.iter().sum::<u64>(),
            "per_cpu": profile.counters.lost_per_cpu,
            "malformed": profile.counters.malformed,
            "discarded_at_max_size": profile.counters.discarded_at_max_size,
        },
        "processes": process_table(profile),
        "symbols": SymbolSummary { stacks_lost, frames: profile.frames.len(), unresolved_frames: unresolved },
        "unwind": unwind_summary(profile),
        "kinds": kinds,
        "phases": phase_table(profile),
        "phase_notes": profile.phase_notes,
        "push": PushSummary::of(profile),
    })
}

/// Per phase: its time range, and per kind the events, their rate, the losses within it and
/// the latency percentiles of off-CPU and TCP.
fn phase_table(profile: &Profile) -> Value {
    let losses = |ts: u64| {
        profile.counters_at(ts).map_or((0, Vec::new()), |c| {
            (
                c.lost_per_cpu.iter().sum::<u64>(),
                c.dropped_per_kind.clone(),
            )
        })
    };
    let rows: Vec<Value> = profile
        .phases
        .iter()
        .zip(&profile.phase_views)
        .map(|(ph, views)| {
            let secs = (ph.end_ns - ph.start_ns) as f64 / 1e9;
            let (lost0, dropped0) = losses(ph.start_ns);
            let (lost1, dropped1) = losses(ph.end_ns);
            let dropped = |k: u32| {
                let at = |v: &Vec<u64>| v.get(k as usize).copied().unwrap_or(0);
                at(&dropped1).saturating_sub(at(&dropped0))
            };
            let kinds: BTreeMap<&str, Value> = views
                .iter()
                .map(|(view, agg)| {
                    let mut k = json!({
                        "events": agg.events,
                        "events_per_s": if secs > 0.0 { agg.events as f64 / secs } else { 0.0 },
                        "weight": agg.weight,
                        "lost": view.kinds().iter().map(|&k| dropped(k)).sum::<u64>(),
                    });
                    let obj = k.as_object_mut().unwrap_or_else(|| unreachable!());
                    match view {
                        Family::Offcpu => {
                            obj.insert("blocked_us".into(), percentiles(&agg.blocked_us, P50_P99));
                            obj.insert(
                                "preempted_us".into(),
                                percentiles(&agg.preempted_us, P50_P99),
                            );
                        }
                        Family::Tcp => {
                            obj.insert(
                                "latency_us".into(),
                                percentiles(&agg.tcp_latency_us, P50_P90_P99),
                            );
                        }
                        _ => {}
                    }
                    (view.name(), k)
                })
                .collect();
            json!({
                "name": ph.name,
                "start": rfc3339(profile.wall_ns(ph.start_ns)),
                "end": rfc3339(profile.wall_ns(ph.end_ns)),
                "duration_s": secs,
                "lost": lost1.saturating_sub(lost0),
                "kinds": kinds,
            })
        })
        .collect();
    json!(rows)
}

/// How user stacks were walked (`summary.json`'s `unwind`).
#[derive(Serialize)]
struct UnwindSummary {
    /// "tables" or "frame-pointers" (with the reason tables were not used).
    method: String,
    /// Events whose user stack bar's programs walked.
    stacks: u64,
    /// Their frames, by how each was found.
    frames: BTreeMap<&'static str, u64>,
    /// Those stacks cut short, by reason.
    cut_short: BTreeMap<&'static str, u64>,
    /// Stack pages the walks could not read, which the collector faulted back in.
    stack_pages: StackPages,
    tables: UnwindTables,
}

#[derive(Serialize)]
struct StackPages {
    asked: u64,
    faulted_in: u64,
}

#[derive(Serialize)]
struct UnwindTables {
    objects: u64,
    rows: u64,
    bytes: u64,
    capacity_bytes: u64,
    build_ms: u64,
    evicted: u64,
    misses: u64,
    processes: u64,
    processes_gone: u64,
    failed: Vec<Value>,
}

fn unwind_summary(profile: &Profile) -> Option<UnwindSummary> {
    use bar_ebpf_common::unwind::{UnwindRow, stop};
    let method = profile.meta.unwind.clone();
    let u = profile.counters.unwind.clone();
    if method.is_empty() && u.is_none() {
        // A capture from before unwind tables.
        return None;
    }
    let u = u.map(|u| *u).unwrap_or_default();
    let cut_short = (1..stop::COUNT)
        .map(|r| {
            (
                stop::name(r),
                u.cut_short.get(r as usize).copied().unwrap_or(0),
            )
        })
        .collect();
    Some(UnwindSummary {
        method,
        stacks: u.stacks,
        frames: BTreeMap::from([
            ("table", u.frames_table),
            ("frame_pointer", u.frames_frame_pointer),
            ("go", u.frames_go),
        ]),
        cut_short,
        stack_pages: StackPages {
            asked: u.stack_pages,
            faulted_in: u.stack_pages_back,
        },
        tables: UnwindTables {
            objects: u.objects,
            rows: u.rows,
            bytes: u.bytes,
            capacity_bytes: u.capacity_rows * size_of::<UnwindRow>() as u64,
            build_ms: u.build_ms,
            evicted: u.evicted,
            misses: u.misses,
            processes: u.processes,
            processes_gone: u.processes_gone,
            failed: u
                .failed
                .iter()
                .map(|f| json!({"object": f.attach, "reason": f.reason}))
                .collect(),
        },
    })
}
