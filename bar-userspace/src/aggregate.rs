//! Aggregate: streams a capture's blocks into what the renderers need: weighted stacks per
//! view (folded form), latency histograms, TCP destinations, NUMA node pairs, loss counters.
//! Nothing here looks at the running system, so a capture aggregates the same anywhere.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use bar_ebpf_common::{kind, numa_task_kind, offcpu_reason};
use hdrhistogram::Histogram;

use crate::capture::{
    Body, Damage, Reader,
    proto::{self, event::Detail},
};

/// An output view: one folded file, one flame graph, one entry in `summary.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum View {
    Cpu,
    Offcpu,
    Faults,
    Tcp,
    Numa,
}

impl View {
    pub const ALL: [Self; 5] = [Self::Cpu, Self::Offcpu, Self::Faults, Self::Tcp, Self::Numa];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Offcpu => "offcpu",
            Self::Faults => "faults",
            Self::Tcp => "tcp",
            Self::Numa => "numa",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == s)
    }

    pub const fn of_kind(k: u32) -> Option<Self> {
        Some(match k {
            kind::CPU => Self::Cpu,
            kind::OFFCPU => Self::Offcpu,
            kind::FAULT => Self::Faults,
            kind::TCP => Self::Tcp,
            kind::NUMA_TASK | kind::NUMA_PAGES => Self::Numa,
            _ => return None,
        })
    }

    /// What one unit of weight is.
    pub const fn unit(self) -> &'static str {
        match self {
            Self::Cpu => "samples",
            Self::Offcpu => "us",
            Self::Faults => "faults",
            Self::Tcp => "connects",
            Self::Numa => "pages",
        }
    }
}

/// Latency histogram in microseconds (1 us to 1 hour, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Per-destination TCP statistics.
#[derive(Debug)]
pub struct TcpDest {
    pub attempts: u64,
    pub established: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub other: u64,
    pub latency_us: Histogram<u64>,
}

impl Default for TcpDest {
    fn default() -> Self {
        Self {
            attempts: 0,
            established: 0,
            refused: 0,
            timed_out: 0,
            other: 0,
            latency_us: new_histogram(),
        }
    }
}

/// NUMA activity between a pair of nodes (-1 when a node is not known).
#[derive(Debug, Default, Clone, Copy)]
pub struct NodePair {
    pub tasks: u64,
    pub pages: u64,
}

#[derive(Debug, Default)]
pub struct NumaStats {
    pub task_moves: u64,
    pub task_swaps: u64,
    pub task_sticks: u64,
    pub pages_migrated: u64,
    pub pages_failed: u64,
    pub batches_by_reason: BTreeMap<String, (u64, u64)>,
    pub node_pairs: BTreeMap<(i32, i32), NodePair>,
}

/// Everything aggregated for one view (in a phase, or for the whole capture).
#[derive(Debug)]
pub struct ViewAgg {
    pub events: u64,
    pub weight: u64,
    /// Folded stacks: (process name, stack id, leaf annotations) -> weight.
    pub stacks: HashMap<(u32, u32, Vec<String>), u64>,
    pub blocked_us: Histogram<u64>,
    pub preempted_us: Histogram<u64>,
    /// Off-CPU: blocked time per stack (process, stack), for the top stacks in the summary.
    pub per_stack_us: HashMap<(u32, u32), Histogram<u64>>,
    pub user_mode: u64,
    pub kernel_mode: u64,
    /// Faults whose attach point told major from minor, and those it could not.
    pub major: u64,
    pub minor: u64,
    pub severity_unknown: u64,
    pub tcp: BTreeMap<String, TcpDest>,
    pub numa: NumaStats,
}

impl Default for ViewAgg {
    fn default() -> Self {
        Self {
            events: 0,
            weight: 0,
            stacks: HashMap::new(),
            blocked_us: new_histogram(),
            preempted_us: new_histogram(),
            per_stack_us: HashMap::new(),
            user_mode: 0,
            kernel_mode: 0,
            major: 0,
            minor: 0,
            severity_unknown: 0,
            tcp: BTreeMap::new(),
            numa: NumaStats::default(),
        }
    }
}

/// Names of `enum migrate_reason` (include/linux/migrate_mode.h), stable since 5.x.
pub fn migrate_reason(r: u32) -> String {
    const NAMES: [&str; 10] = [
        "compaction",
        "memory_failure",
        "memory_hotplug",
        "syscall_or_cpuset",
        "mempolicy_mbind",
        "numa_misplaced",
        "contig_range",
        "longterm_pin",
        "demotion",
        "damon",
    ];
    NAMES
        .get(r as usize)
        .map_or_else(|| format!("reason_{r}"), |n| (*n).to_owned())
}

pub fn tcp_result(error: i32) -> &'static str {
    match error {
        0 => "established",
        111 => "refused",
        110 => "timed_out",
        _ => "other",
    }
}

pub fn format_endpoint(family: u32, addr: &[u8], port: u32) -> String {
    let ip = if family == 10 && addr.len() >= 16 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&addr[..16]);
        IpAddr::V6(Ipv6Addr::from(b))
    } else if addr.len() >= 4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

/// Weight and leaf annotations of an event in its view.
fn weigh(ev: &proto::Event) -> (u64, Vec<String>) {
    match &ev.detail {
        None => (1, Vec::new()),
        // Major faults carry their own leaf, so a flame graph shows where I/O was waited for;
        // minor faults (and faults of unknown severity) have none.
        Some(Detail::Fault(f)) if f.major == Some(true) => (1, vec!["[major]".to_owned()]),
        Some(Detail::Fault(_)) => (1, Vec::new()),
        Some(Detail::Offcpu(o)) => {
            let state = if o.reason == offcpu_reason::PREEMPTED {
                "[preempted]"
            } else {
                "[blocked]"
            };
            (o.blocked_ns / 1000, vec![state.to_owned()])
        }
        Some(Detail::Tcp(t)) => (
            1,
            vec![
                format!("[connect {}]", format_endpoint(t.family, &t.daddr, t.dport)),
                format!("[{}]", tcp_result(t.error)),
            ],
        ),
        Some(Detail::NumaTask(n)) => {
            let what = match n.what {
                numa_task_kind::SWAP => "swap",
                numa_task_kind::STICK => "stick",
                _ => "move",
            };
            (
                1,
                vec![format!(
                    "[numa task {what} node {}->{}]",
                    n.src_nid, n.dst_nid
                )],
            )
        }
        Some(Detail::NumaPages(p)) => (
            p.succeeded,
            vec![format!("[migrate pages: {}]", migrate_reason(p.reason))],
        ),
    }
}

impl ViewAgg {
    pub fn add(&mut self, ev: &proto::Event) {
        let (weight, leaf) = weigh(ev);
        self.events += 1;
        self.weight += weight;
        if weight > 0 {
            *self.stacks.entry((ev.pid, ev.stack, leaf)).or_default() += weight;
        }
        match &ev.detail {
            Some(Detail::Fault(f)) => {
                if f.user_mode {
                    self.user_mode += 1;
                } else {
                    self.kernel_mode += 1;
                }
                match f.major {
                    Some(true) => self.major += 1,
                    Some(false) => self.minor += 1,
                    None => self.severity_unknown += 1,
                }
            }
            Some(Detail::Offcpu(o)) => {
                let us = (o.blocked_ns / 1000).max(1);
                let h = if o.reason == offcpu_reason::PREEMPTED {
                    &mut self.preempted_us
                } else {
                    &mut self.blocked_us
                };
                let _ = h.record(us);
                if o.reason != offcpu_reason::PREEMPTED {
                    let _ = self
                        .per_stack_us
                        .entry((ev.pid, ev.stack))
                        .or_insert_with(new_histogram)
                        .record(us);
                }
            }
            Some(Detail::Tcp(t)) => {
                let dest = self
                    .tcp
                    .entry(format_endpoint(t.family, &t.daddr, t.dport))
                    .or_default();
                dest.attempts += 1;
                match tcp_result(t.error) {
                    "established" => dest.established += 1,
                    "refused" => dest.refused += 1,
                    "timed_out" => dest.timed_out += 1,
                    _ => dest.other += 1,
                }
                let _ = dest.latency_us.record((t.latency_ns / 1000).max(1));
            }
            Some(Detail::NumaTask(n)) => {
                match n.what {
                    numa_task_kind::SWAP => self.numa.task_swaps += 1,
                    numa_task_kind::STICK => self.numa.task_sticks += 1,
                    _ => self.numa.task_moves += 1,
                }
                self.numa
                    .node_pairs
                    .entry((n.src_nid, n.dst_nid))
                    .or_default()
                    .tasks += 1;
            }
            Some(Detail::NumaPages(p)) => {
                self.numa.pages_migrated += p.succeeded;
                self.numa.pages_failed += p.failed;
                let e = self
                    .numa
                    .batches_by_reason
                    .entry(migrate_reason(p.reason))
                    .or_default();
                e.0 += p.succeeded;
                e.1 += p.failed;
                self.numa
                    .node_pairs
                    .entry((p.src_nid.unwrap_or(-1), p.dst_nid))
                    .or_default()
                    .pages += p.succeeded;
            }
            None => {}
        }
    }
}

/// A capture, aggregated.
#[derive(Debug, Default)]
pub struct Profile {
    pub meta: proto::Meta,
    pub processes: HashMap<u32, String>,
    pub frames: Vec<proto::Frame>,
    pub stacks: Vec<proto::Stack>,
    pub views: BTreeMap<View, ViewAgg>,
    pub counters: proto::Counters,
    pub markers: Vec<proto::Marker>,
    pub trailer: Option<proto::Trailer>,
    pub damage: Option<Damage>,
    pub first_ts: Option<u64>,
    pub last_ts: Option<u64>,
    /// Per-second event counts per view (for timelines), keyed by seconds since start.
    pub timeline: BTreeMap<u64, BTreeMap<View, u64>>,
    /// TCP and NUMA events, kept whole for their `.jsonl` files (they are rare next to
    /// samples and faults).
    pub detail_events: Vec<proto::Event>,
}

impl Profile {
    /// Reads and aggregates a whole capture. A damaged file aggregates up to the damage, which
    /// is kept in `damage`.
    pub fn from_reader(reader: &mut Reader) -> Self {
        let mut p = Self::default();
        while let Some(body) = reader.next_block() {
            p.add_block(body);
        }
        p.damage = reader.damage.clone();
        p
    }

    pub fn add_block(&mut self, body: Body) {
        match body {
            Body::Meta(m) => self.meta = m,
            Body::Processes(ps) => {
                for pr in ps.processes {
                    self.processes.insert(pr.pid, pr.comm);
                }
            }
            Body::Frames(f) => self.frames.extend(f.frames),
            Body::Stacks(s) => self.stacks.extend(s.stacks),
            Body::Events(evs) => {
                for ev in &evs.events {
                    self.add_event(ev);
                }
            }
            Body::Counters(c) => self.counters = c,
            Body::Marker(m) => self.markers.push(m),
            Body::Trailer(t) => self.trailer = Some(t),
        }
    }

    fn add_event(&mut self, ev: &proto::Event) {
        let Some(view) = View::of_kind(ev.kind) else {
            return;
        };
        self.first_ts = Some(self.first_ts.map_or(ev.ts, |t| t.min(ev.ts)));
        self.last_ts = Some(self.last_ts.map_or(ev.ts, |t| t.max(ev.ts)));
        let sec = ev.ts.saturating_sub(self.meta.start_ns) / 1_000_000_000;
        *self
            .timeline
            .entry(sec)
            .or_default()
            .entry(view)
            .or_default() += 1;
        self.views.entry(view).or_default().add(ev);
        if matches!(view, View::Tcp | View::Numa) {
            self.detail_events.push(ev.clone());
        }
    }

    /// The process name shown as the root frame.
    pub fn comm(&self, pid: u32) -> String {
        self.processes
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| format!("[pid {pid}]"))
    }

    /// Frame names of a stack, root first, kernel frames suffixed `_[k]` as perf does.
    pub fn stack_names(&self, stack: u32) -> Vec<String> {
        if stack == 0 {
            return Vec::new();
        }
        let Some(s) = self.stacks.get(stack as usize - 1) else {
            return vec!["[stack missing from capture]".into()];
        };
        s.frames
            .iter()
            .map(|&f| match self.frames.get(f as usize) {
                Some(fr) if fr.kernel => format!("{}_[k]", sanitize(&fr.name)),
                Some(fr) => sanitize(&fr.name),
                None => "[frame missing from capture]".into(),
            })
            .collect()
    }

    /// Folded lines of a view: `process;frame;...;frame weight`, sorted.
    pub fn folded(&self, agg: &ViewAgg) -> Vec<String> {
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for ((pid, stack, leaf), w) in &agg.stacks {
            let mut parts = vec![sanitize(&self.comm(*pid))];
            parts.extend(self.stack_names(*stack));
            parts.extend(leaf.iter().map(|l| sanitize(l)));
            *merged.entry(parts.join(";")).or_default() += w;
        }
        merged
            .into_iter()
            .map(|(k, w)| format!("{k} {w}"))
            .collect()
    }

    /// Wall-clock nanoseconds since the epoch of a monotonic timestamp.
    pub fn wall_ns(&self, mono: u64) -> i128 {
        i128::from(mono) + i128::from(self.meta.monotonic_to_realtime_ns)
    }

    /// End of the recording: the trailer's, or the last event's when the file was cut short.
    pub fn end_ns(&self) -> u64 {
        self.trailer
            .as_ref()
            .map(|t| t.end_ns)
            .or(self.last_ts)
            .unwrap_or(self.meta.start_ns)
    }
}

/// Frame names must not contain the folded format's separators.
fn sanitize(name: &str) -> String {
    if name.contains([';', '\n', '\r']) {
        name.replace(';', ":").replace(['\n', '\r'], " ")
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u32, pid: u32, stack: u32, detail: Option<Detail>) -> proto::Event {
        proto::Event {
            ts: 1,
            kind,
            cpu: 0,
            pid,
            tid: pid,
            stack,
            detail,
        }
    }

    fn profile() -> Profile {
        let mut p = Profile::default();
        p.add_block(Body::Processes(proto::Processes {
            processes: vec![proto::Process {
                pid: 7,
                comm: "app".into(),
            }],
        }));
        p.add_block(Body::Frames(proto::Frames {
            frames: vec![
                proto::Frame {
                    name: "main".into(),
                    module: "/app".into(),
                    kernel: false,
                },
                proto::Frame {
                    name: "work;x".into(),
                    module: "/app".into(),
                    kernel: false,
                },
                proto::Frame {
                    name: "schedule".into(),
                    module: "[kernel.kallsyms]".into(),
                    kernel: true,
                },
            ],
        }));
        p.add_block(Body::Stacks(proto::Stacks {
            stacks: vec![
                proto::Stack { frames: vec![0, 1] },
                proto::Stack { frames: vec![0, 2] },
            ],
        }));
        p
    }

    #[test]
    fn folds_root_first_with_kernel_suffix_and_weights() {
        let mut p = profile();
        let events = vec![
            ev(kind::CPU, 7, 1, None),
            ev(kind::CPU, 7, 1, None),
            ev(kind::CPU, 8, 0, None),
            ev(
                kind::OFFCPU,
                7,
                2,
                Some(Detail::Offcpu(proto::OffCpu {
                    blocked_ns: 2_500_000,
                    reason: 1,
                    state: 1,
                })),
            ),
            ev(
                kind::OFFCPU,
                7,
                2,
                Some(Detail::Offcpu(proto::OffCpu {
                    blocked_ns: 500_000,
                    reason: 2,
                    state: 0,
                })),
            ),
        ];
        p.add_block(Body::Events(proto::Events { events }));
        let cpu = p.folded(&p.views[&View::Cpu]);
        assert_eq!(
            cpu,
            vec!["[pid 8] 1".to_owned(), "app;main;work:x 2".to_owned()]
        );
        let off = p.folded(&p.views[&View::Offcpu]);
        assert_eq!(
            off,
            vec![
                "app;main;schedule_[k];[blocked] 2500".to_owned(),
                "app;main;schedule_[k];[preempted] 500".to_owned()
            ]
        );
        let h = &p.views[&View::Offcpu].blocked_us;
        let p50 = h.value_at_quantile(0.5);
        assert!(h.equivalent(p50, 2500), "{p50}");
    }

    #[test]
    fn tcp_destinations_and_results() {
        let mut p = profile();
        let tcp = |error, dport| {
            ev(
                kind::TCP,
                7,
                1,
                Some(Detail::Tcp(proto::Tcp {
                    latency_ns: 50_000,
                    saddr: vec![127, 0, 0, 1],
                    daddr: vec![127, 0, 0, 1],
                    family: 2,
                    sport: 1,
                    dport,
                    error,
                })),
            )
        };
        p.add_block(Body::Events(proto::Events {
            events: vec![tcp(0, 80), tcp(111, 81), tcp(111, 81)],
        }));
        let v = &p.views[&View::Tcp];
        assert_eq!(v.tcp["127.0.0.1:81"].refused, 2);
        assert_eq!(v.tcp["127.0.0.1:80"].established, 1);
        assert!(
            p.folded(v)
                .contains(&"app;main;work:x;[connect 127.0.0.1:81];[refused] 2".to_owned())
        );
    }
}
