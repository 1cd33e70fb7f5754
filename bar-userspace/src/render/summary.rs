//! `summary.json`: what a recording was (host, target, time range, attach points) and what it
//! holds per family, per process and per phase, with losses and latency percentiles. One typed
//! document: [`summary`] fills it from a profile, `report.html` and `info` read it as a struct,
//! and [`Summary::to_json`] writes it, its keys sorted as they always were.

use bar_ebpf_common::Family;
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

mod unwind;

pub use self::unwind::UnwindSummary;
use self::unwind::unwind_summary;
use crate::analyze::{Profile, ViewAgg};
use crate::system::rfc3339;

/// The whole `summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub bar_version: String,
    pub hostname: String,
    pub kernel_release: String,
    pub boot_id: String,
    pub cpus: u32,
    pub command_line: Vec<String>,
    pub scope: String,
    /// The cgroup recorded, when the scope was one.
    pub cgroup: Option<String>,
    pub target: Option<TargetSummary>,
    pub start: String,
    pub end: String,
    pub duration_s: f64,
    /// None without a trailer (a capture cut short).
    pub stop_reason: Option<String>,
    /// The flight recorder's ring, for a dump of one.
    pub ring: Option<RingSummary>,
    pub complete: bool,
    pub damage: Option<String>,
    pub lost: LostSummary,
    pub processes: ProcessTable,
    pub symbols: SymbolSummary,
    /// None for a capture from before unwind tables.
    pub unwind: Option<UnwindSummary>,
    /// Per family that attached or has events, by name.
    pub kinds: BTreeMap<&'static str, FamilySummary>,
    pub phases: Vec<PhaseSummary>,
    pub phase_notes: Vec<String>,
    pub push: Vec<PushSummary>,
}

impl Summary {
    /// The document as `summary.json` and `info --json` write it. It goes through serde_json's
    /// map, which keeps keys sorted: the order the file has always had.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(&serde_json::to_value(self)?)
    }
}

#[derive(Debug, Serialize)]
pub struct TargetSummary {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub exe: String,
    pub build_id: String,
}

#[derive(Debug, Serialize)]
pub struct RingSummary {
    pub window_s: f64,
    pub size_bytes: u64,
    pub cut_by_size: bool,
    pub held_bytes: u64,
}

/// Records lost on the way from the kernel.
#[derive(Debug, Serialize)]
pub struct LostSummary {
    /// Perf buffers full, over every CPU.
    pub total: u64,
    pub per_cpu: Vec<u64>,
    pub malformed: u64,
    pub discarded_at_max_size: u64,
}

#[derive(Debug, Serialize)]
pub struct SymbolSummary {
    pub stacks_lost: u64,
    pub frames: usize,
    pub unresolved_frames: usize,
}

/// Latency percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<u64>,
    pub p99: u64,
    pub max: u64,
    pub count: u64,
}

impl Percentiles {
    /// p50 and p99 (and p90 when asked) of `h`; None when it is empty (null in the document).
    fn of(h: &Histogram<u64>, with_p90: bool) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            p50: h.value_at_quantile(0.5),
            p90: with_p90.then(|| h.value_at_quantile(0.9)),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            count: h.len(),
        })
    }
}

/// An attach point tried and passed over, and why.
#[derive(Debug, Serialize)]
pub struct RejectedAttach {
    pub attach: String,
    pub reason: String,
}

/// What one family recorded over the whole capture.
#[derive(Debug, Serialize)]
pub struct FamilySummary {
    pub events: u64,
    pub weight: u64,
    pub weight_unit: &'static str,
    /// Records the programs dropped (their buffers full).
    pub lost: u64,
    pub stacks_lost: u64,
    /// The attach point used; None when the family did not attach.
    pub attach: Option<String>,
    pub rejected: Vec<RejectedAttach>,
    /// Set when the kernel summed the events (`--aggregate`): per-event details are gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summed_in_kernel_every_ms: Option<u64>,
    /// What the family's events tell beyond counts; None when it has no events.
    #[serde(flatten)]
    pub detail: Option<FamilyDetail>,
}

/// The figures of one family, beside its counts.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum FamilyDetail {
    Cpu {
        frequency_hz: u64,
    },
    Faults {
        user_mode: u64,
        kernel_mode: u64,
        /// None when the attach point cannot tell (the exception tracepoints run before the
        /// fault is resolved): unknown is not zero.
        major: Option<u64>,
        minor: Option<u64>,
    },
    Offcpu(OffcpuDetail),
    Tcp {
        map_full: u64,
        destinations: Vec<TcpDestination>,
    },
    Numa(NumaDetail),
}

#[derive(Debug, Serialize)]
pub struct OffcpuDetail {
    pub min_block_us: u64,
    pub blocked_us: Option<Percentiles>,
    pub preempted_us: Option<Percentiles>,
    pub map_full: u64,
    pub returns_unseen: Option<u64>,
    pub top_blocked_stacks: Vec<BlockedStack>,
}

#[derive(Debug, Serialize)]
pub struct BlockedStack {
    /// Folded: the process name, then the frames, root first.
    pub stack: String,
    pub blocked_us: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct TcpDestination {
    pub destination: String,
    pub attempts: u64,
    pub established: u64,
    pub failures: TcpFailures,
    pub latency_us: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
pub struct TcpFailures {
    pub refused: u64,
    pub timed_out: u64,
    pub other: u64,
}

#[derive(Debug, Serialize)]
pub struct NumaDetail {
    pub weight_note: &'static str,
    pub task_moves: u64,
    pub task_swaps: u64,
    pub task_sticks: u64,
    pub pages_migrated: u64,
    pub pages_failed: u64,
    pub pages_by_reason: BTreeMap<String, PagesOfReason>,
    pub node_pairs: Vec<NodePairSummary>,
}

#[derive(Debug, Serialize)]
pub struct PagesOfReason {
    pub succeeded: u64,
    pub failed: u64,
}

/// NUMA activity from one node to another (None: a node not known).
#[derive(Debug, Serialize)]
pub struct NodePairSummary {
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub tasks: u64,
    pub pages: u64,
}

/// Per-process totals, busiest first (at most 100; the count of all is kept).
#[derive(Debug, Serialize)]
pub struct ProcessTable {
    pub count: usize,
    pub top: Vec<ProcessRow>,
}

#[derive(Debug, Serialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: String,
    pub events: u64,
    pub kinds: BTreeMap<&'static str, EventsAndWeight>,
}

#[derive(Debug, Serialize)]
pub struct EventsAndWeight {
    pub events: u64,
    pub weight: u64,
}

/// One phase: its time range, and per family the events, their rate, the losses within it and
/// the latency percentiles of off-CPU and TCP.
#[derive(Debug, Serialize)]
pub struct PhaseSummary {
    pub name: String,
    pub start: String,
    pub end: String,
    pub duration_s: f64,
    pub lost: u64,
    pub kinds: BTreeMap<&'static str, PhaseFamily>,
}

#[derive(Debug, Serialize)]
pub struct PhaseFamily {
    pub events: u64,
    pub events_per_s: f64,
    pub weight: u64,
    pub lost: u64,
    #[serde(flatten)]
    pub latency: Option<PhaseLatency>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PhaseLatency {
    Offcpu {
        blocked_us: Option<Percentiles>,
        preempted_us: Option<Percentiles>,
    },
    Tcp {
        latency_us: Option<Percentiles>,
    },
}

/// What a recording pushed to one backend: `summary.json`'s `push`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
}

/// Fills the summary of a profile.
pub fn summary(profile: &Profile) -> Summary {
    let meta = &profile.meta;
    let start = meta.start_ns;
    let end = profile.end_ns();
    let kinds = Family::ALL
        .into_iter()
        .filter(|view| {
            meta.families.iter().any(|f| f.name == view.name()) || profile.views.contains_key(view)
        })
        .map(|view| {
            let entry = family_summary(profile, view, profile.views.get(&view));
            (view.name(), entry)
        })
        .collect();
    let unresolved = profile
        .frames
        .iter()
        .filter(|f| {
            f.name.starts_with("[unknown") || (f.name.starts_with('[') && f.name.contains("0x"))
        })
        .count();
    let stacks_lost = profile.views.values().map(|a| a.stacks_lost).sum::<u64>();
    let counters = &profile.counters;
    Summary {
        bar_version: meta.bar_version.clone(),
        hostname: meta.hostname.clone(),
        kernel_release: meta.kernel_release.clone(),
        boot_id: meta.boot_id.clone(),
        cpus: meta.cpu_count,
        command_line: meta.command_line.clone(),
        scope: meta.scope.clone(),
        cgroup: (!meta.cgroup.is_empty()).then(|| meta.cgroup.clone()),
        target: meta.target.as_ref().map(|t| TargetSummary {
            pid: t.pid,
            comm: t.comm.clone(),
            cmdline: t.cmdline.clone(),
            exe: t.exe.clone(),
            build_id: t.build_id.clone(),
        }),
        start: rfc3339(profile.wall_ns(start)),
        end: rfc3339(profile.wall_ns(end)),
        duration_s: (end.saturating_sub(start)) as f64 / 1e9,
        stop_reason: profile.trailer.as_ref().map(|t| t.stop_reason.clone()),
        ring: (meta.ring_window_ns > 0).then(|| RingSummary {
            window_s: meta.ring_window_ns as f64 / 1e9,
            size_bytes: meta.ring_size_bytes,
            cut_by_size: meta.ring_cut_by_size,
            held_bytes: meta.ring_held_bytes,
        }),
        complete: profile.trailer.is_some() && profile.damage.is_none(),
        damage: profile.damage.as_ref().map(ToString::to_string),
        lost: LostSummary {
            total: counters.lost_per_cpu.iter().sum::<u64>(),
            per_cpu: counters.lost_per_cpu.clone(),
            malformed: counters.malformed,
            discarded_at_max_size: counters.discarded_at_max_size,
        },
        processes: process_table(profile),
        symbols: SymbolSummary {
            stacks_lost,
            frames: profile.frames.len(),
            unresolved_frames: unresolved,
        },
        unwind: unwind_summary(profile),
        kinds,
        phases: phase_table(profile),
        phase_notes: profile.phase_notes.clone(),
        push: PushSummary::of(profile),
    }
}

/// One family's entry.
fn family_summary(profile: &Profile, view: Family, agg: Option<&ViewAgg>) -> FamilySummary {
    let meta = &profile.meta;
    let family = meta.families.iter().find(|f| f.name == view.name());
    let lost: u64 = view
        .kinds()
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
    let rejected = family.map(|f| {
        f.rejected
            .iter()
            .map(|r| RejectedAttach {
                attach: r.attach.clone(),
                reason: r.reason.clone(),
            })
            .collect()
    });
    FamilySummary {
        events: agg.map_or(0, |a| a.events),
        weight: agg.map_or(0, |a| a.weight),
        weight_unit: view.unit(),
        lost,
        stacks_lost: agg.map_or(0, |a| a.stacks_lost),
        attach: family.map(|f| f.method.clone()).filter(|m| !m.is_empty()),
        rejected: rejected.unwrap_or_default(),
        // Per-event details are gone: say so next to the figures they would have made.
        summed_in_kernel_every_ms: agg
            .and(profile.summed_every(view))
            .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
        detail: agg.map(|agg| family_detail(profile, view, agg)),
    }
}

fn family_detail(profile: &Profile, view: Family, agg: &ViewAgg) -> FamilyDetail {
    let counters = &profile.counters;
    match view {
        Family::Cpu => FamilyDetail::Cpu {
            frequency_hz: profile.meta.frequency,
        },
        Family::Faults => {
            let known = agg.major + agg.minor > 0 || agg.severity_unknown == 0;
            FamilyDetail::Faults {
                user_mode: agg.user_mode,
                kernel_mode: agg.kernel_mode,
                major: known.then_some(agg.major),
                minor: known.then_some(agg.minor),
            }
        }
        Family::Offcpu => {
            let mut top: Vec<_> = agg.per_stack_us.iter().collect();
            top.sort_by(|a, b| b.1.total_us.cmp(&a.1.total_us).then(a.0.cmp(b.0)));
            let top = top.into_iter().take(10).map(|((pid, stack), times)| {
                let mut frames = vec![profile.name(*pid).to_owned()];
                frames.extend(profile.stack_names(*stack));
                BlockedStack {
                    stack: frames.join(";"),
                    blocked_us: Percentiles::of(&times.histogram(), false),
                }
            });
            FamilyDetail::Offcpu(OffcpuDetail {
                min_block_us: profile.meta.min_block_ns / 1000,
                blocked_us: Percentiles::of(&agg.blocked_us, false),
                preempted_us: Percentiles::of(&agg.preempted_us, false),
                map_full: counters.offcpu_map_full,
                returns_unseen: counters.offcpu_returns_unseen,
                top_blocked_stacks: top.collect(),
            })
        }
        Family::Tcp => FamilyDetail::Tcp {
            map_full: counters.tcp_map_full,
            destinations: agg
                .tcp
                .iter()
                .map(|(dest, d)| TcpDestination {
                    destination: dest.clone(),
                    attempts: d.attempts,
                    established: d.established,
                    failures: TcpFailures {
                        refused: d.refused,
                        timed_out: d.timed_out,
                        other: d.other,
                    },
                    latency_us: Percentiles::of(&d.latency_us, true),
                })
                .collect(),
        },
        Family::Numa => {
            let n = &agg.numa;
            let node = |n: i32| (n >= 0).then_some(n);
            FamilyDetail::Numa(NumaDetail {
                weight_note: "pages migrated for page migrations, 1 per task placement",
                task_moves: n.task_moves,
                task_swaps: n.task_swaps,
                task_sticks: n.task_sticks,
                pages_migrated: n.pages_migrated,
                pages_failed: n.pages_failed,
                pages_by_reason: n
                    .batches_by_reason
                    .iter()
                    .map(|(r, &(succeeded, failed))| {
                        (r.clone(), PagesOfReason { succeeded, failed })
                    })
                    .collect(),
                node_pairs: n
                    .node_pairs
                    .iter()
                    .map(|(&(from, to), p)| NodePairSummary {
                        from: node(from),
                        to: node(to),
                        tasks: p.tasks,
                        pages: p.pages,
                    })
                    .collect(),
            })
        }
    }
}

/// Per-process totals, busiest first (at most 100; the count of all is kept).
fn process_table(profile: &Profile) -> ProcessTable {
    let mut rows: Vec<(u32, u64, _)> = profile
        .per_process
        .iter()
        .map(|(pid, kinds)| (*pid, kinds.values().map(|v| v.0).sum(), kinds))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let top = rows
        .iter()
        .take(100)
        .map(|(pid, events, kinds)| ProcessRow {
            pid: *pid,
            comm: profile.comm_at(*pid, u64::MAX),
            events: *events,
            kinds: kinds
                .iter()
                .map(|(v, &(events, weight))| (v.name(), EventsAndWeight { events, weight }))
                .collect(),
        })
        .collect();
    ProcessTable {
        count: rows.len(),
        top,
    }
}

/// Per phase: its time range, and per family the events, their rate, the losses within it and
/// the latency percentiles of off-CPU and TCP.
fn phase_table(profile: &Profile) -> Vec<PhaseSummary> {
    let losses = |ts: u64| {
        profile.counters_at(ts).map_or((0, Vec::new()), |c| {
            (
                c.lost_per_cpu.iter().sum::<u64>(),
                c.dropped_per_kind.clone(),
            )
        })
    };
    profile
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
            let kinds = views
                .iter()
                .map(|(view, agg)| {
                    let latency = match view {
                        Family::Offcpu => Some(PhaseLatency::Offcpu {
                            blocked_us: Percentiles::of(&agg.blocked_us, false),
                            preempted_us: Percentiles::of(&agg.preempted_us, false),
                        }),
                        Family::Tcp => Some(PhaseLatency::Tcp {
                            latency_us: Percentiles::of(&agg.tcp_latency_us, true),
                        }),
                        _ => None,
                    };
                    let entry = PhaseFamily {
                        events: agg.events,
                        events_per_s: if secs > 0.0 {
                            agg.events as f64 / secs
                        } else {
                            0.0
                        },
                        weight: agg.weight,
                        lost: view.kinds().iter().map(|&k| dropped(k)).sum::<u64>(),
                        latency,
                    };
                    (view.name(), entry)
                })
                .collect();
            PhaseSummary {
                name: ph.name.clone(),
                start: rfc3339(profile.wall_ns(ph.start_ns)),
                end: rfc3339(profile.wall_ns(ph.end_ns)),
                duration_s: secs,
                lost: lost1.saturating_sub(lost0),
                kinds,
            }
        })
        .collect()
}
