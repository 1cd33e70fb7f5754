//! Aggregate: streams a capture's blocks into what the renderers need: weighted stacks per
//! view (folded form), latency histograms, TCP destinations, NUMA node pairs, loss counters.
//! Nothing here looks at the running system, so a capture aggregates the same anywhere.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use bar_ebpf_common::{Family, numa_task_kind, offcpu_reason};
use hdrhistogram::Histogram;

mod times;

pub use self::times::StackTimes;

use crate::{
    capture::{
        self, Body, Damage, Reader,
        proto::{self, event::Detail},
    },
    phases::{self, Phase, PhaseError, WallPhase},
};

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
    /// Folded stacks: (process name id, stack id, leaf annotations) -> weight.
    pub stacks: HashMap<(u32, u32, Vec<String>), u64>,
    pub blocked_us: Histogram<u64>,
    pub preempted_us: Histogram<u64>,
    /// Off-CPU: blocked time per (process name id, stack), for the top stacks in the summary.
    pub per_stack_us: HashMap<(u32, u32), StackTimes>,
    pub user_mode: u64,
    pub kernel_mode: u64,
    /// Faults whose attach point told major from minor, and those it could not.
    pub major: u64,
    pub minor: u64,
    pub severity_unknown: u64,
    pub tcp: BTreeMap<String, TcpDest>,
    /// TCP connect latency over every destination.
    pub tcp_latency_us: Histogram<u64>,
    pub numa: NumaStats,
    /// Events whose user or kernel stack the kernel could not store (a `[... stack lost]`
    /// frame stands for it).
    pub stacks_lost: u64,
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
            tcp_latency_us: new_histogram(),
            numa: NumaStats::default(),
            stacks_lost: 0,
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

/// How many events `ev` stands for (several when they were summed in the kernel).
pub fn count(ev: &proto::Event) -> u64 {
    ev.count.max(1)
}

/// Weight and leaf annotations of an event in its view (also the leaf frames of `export`).
pub fn weigh(ev: &proto::Event) -> (u64, Vec<String>) {
    let n = count(ev);
    match &ev.detail {
        None => (n, Vec::new()),
        // Major faults carry their own leaf, so a flame graph shows where I/O was waited for;
        // minor faults (and faults of unknown severity) have none.
        Some(Detail::Fault(f)) if f.major == Some(true) => (n, vec!["[major]".to_owned()]),
        Some(Detail::Fault(_)) => (n, Vec::new()),
        // Summed intervals carry their summed time.
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
    /// Adds one event; `process` is the id of its process name ([`Profile::name`]).
    pub fn add(&mut self, ev: &proto::Event, process: u32) {
        let (weight, leaf) = weigh(ev);
        let n = count(ev);
        self.events += n;
        self.weight = self.weight.saturating_add(weight);
        if weight > 0 {
            let w = self.stacks.entry((process, ev.stack, leaf)).or_default();
            *w = w.saturating_add(weight);
        }
        match &ev.detail {
            Some(Detail::Fault(f)) => {
                if f.user_mode {
                    self.user_mode += n;
                } else {
                    self.kernel_mode += n;
                }
                match f.major {
                    Some(true) => self.major += n,
                    Some(false) => self.minor += n,
                    None => self.severity_unknown += n,
                }
            }
            Some(Detail::Offcpu(o)) => {
                // Intervals summed in the kernel are known only by their mean.
                let us = (o.blocked_ns / n / 1000).max(1);
                let h = if o.reason == offcpu_reason::PREEMPTED {
                    &mut self.preempted_us
                } else {
                    &mut self.blocked_us
                };
                let _ = h.record_n(us, n);
                if o.reason != offcpu_reason::PREEMPTED {
                    self.per_stack_us
                        .entry((process, ev.stack))
                        .or_default()
                        .record_n(us, n);
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
                let us = (t.latency_ns / 1000).max(1);
                let _ = dest.latency_us.record(us);
                let _ = self.tcp_latency_us.record(us);
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
                self.numa.pages_migrated = self.numa.pages_migrated.saturating_add(p.succeeded);
                self.numa.pages_failed = self.numa.pages_failed.saturating_add(p.failed);
                let e = self
                    .numa
                    .batches_by_reason
                    .entry(migrate_reason(p.reason))
                    .or_default();
                e.0 = e.0.saturating_add(p.succeeded);
                e.1 = e.1.saturating_add(p.failed);
                let pair = self
                    .numa
                    .node_pairs
                    .entry((p.src_nid.unwrap_or(-1), p.dst_nid))
                    .or_default();
                pair.pages = pair.pages.saturating_add(p.succeeded);
            }
            None => {}
        }
    }
}

/// Events of `[start, end)` (monotonic ns) of a capture, aggregated apart from the whole: a
/// phase, a window of one, a range a user asked for. Slices may overlap.
#[derive(Debug, Default)]
pub struct Slice {
    pub start: u64,
    pub end: u64,
    pub views: BTreeMap<Family, ViewAgg>,
}

impl Slice {
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end,
            views: BTreeMap::new(),
        }
    }
}

/// A capture, aggregated.
#[derive(Debug, Default)]
pub struct Profile {
    pub meta: proto::Meta,
    /// Names of a process over time: (since, name id), sorted by time.
    pub processes: HashMap<u32, Vec<(u64, u32)>>,
    /// Interned process names; stacks are keyed by name id.
    pub names: Vec<String>,
    name_ids: HashMap<String, u32>,
    pub frames: Vec<proto::Frame>,
    pub stacks: Vec<proto::Stack>,
    /// Per stack, whether the kernel could not store part of it.
    lost_stacks: Vec<bool>,
    pub views: BTreeMap<Family, ViewAgg>,
    pub counters: proto::Counters,
    pub markers: Vec<proto::Marker>,
    pub trailer: Option<proto::Trailer>,
    pub damage: Option<Damage>,
    pub first_ts: Option<u64>,
    pub last_ts: Option<u64>,
    /// Per-second event counts per view (for timelines), keyed by seconds since start.
    pub timeline: BTreeMap<u64, BTreeMap<Family, u64>>,
    /// TCP and NUMA events, kept whole for their `.jsonl` files (they are rare next to
    /// samples and faults).
    pub detail_events: Vec<proto::Event>,
    /// Per process (pid): events and weight per view.
    pub per_process: HashMap<u32, BTreeMap<Family, (u64, u64)>>,
    /// Phases, sorted and non-overlapping, and the views aggregated within each.
    pub phases: Vec<Phase>,
    pub phase_views: Vec<BTreeMap<Family, ViewAgg>>,
    /// Remarks on the phases (e.g. clipped to the capture).
    pub phase_notes: Vec<String>,
    /// Every counters block, in order, for losses per phase.
    pub counter_series: Vec<proto::Counters>,
    /// Time slices also aggregated (see [`Profile::from_reader_sliced`]).
    pub slices: Vec<Slice>,
}

impl Profile {
    /// Reads and aggregates a whole capture, with the phases its markers define. A damaged file
    /// aggregates up to the damage, which is kept in `damage`.
    pub fn from_reader(reader: &mut Reader) -> Self {
        // Phases from markers always lie within the capture, so this cannot fail.
        Self::load(reader, None).unwrap_or_default()
    }

    /// Reads and aggregates a capture in two passes: the first finds the time range and the
    /// phases (from `file_phases` when given, else from the capture's markers), the second
    /// aggregates every event into the whole-capture views and its phase's views.
    pub fn load(
        reader: &mut Reader,
        file_phases: Option<&[WallPhase]>,
    ) -> Result<Self, PhaseError> {
        let mut p = Self::default();
        let mut markers = Vec::new();
        let mut end = None;
        // Without a trailer (a capture cut short) the end is the last thing known to happen.
        let mut last_seen = 0;
        while let Some(body) = reader.next_block() {
            match body {
                Body::Meta(m) => p.meta = m,
                Body::Marker(m) => {
                    last_seen = last_seen.max(m.ts);
                    markers.push(m);
                }
                Body::Trailer(t) => end = Some(t.end_ns),
                Body::Counters(c) => last_seen = last_seen.max(c.ts),
                Body::Events(e) => {
                    last_seen = e
                        .events
                        .iter()
                        .fold(last_seen, |m, ev| m.max(ev.ts.saturating_add(1)));
                }
                _ => {}
            }
        }
        let start = p.meta.start_ns;
        let end = end.unwrap_or(last_seen).max(start);
        let offset = p.meta.monotonic_to_realtime_ns;
        let (phases, notes) = match file_phases {
            Some(fp) => phases::fit_wall(fp, offset, start, end)?,
            None => {
                let wall = |t: u64| crate::system::rfc3339(i128::from(t) + i128::from(offset));
                phases::fit(phases::from_markers(&markers, end), start, end, wall)?
            }
        };
        p.phase_views = phases.iter().map(|_| BTreeMap::new()).collect();
        p.phases = phases;
        p.phase_notes = notes;
        reader.rewind();
        while let Some(body) = reader.next_block() {
            p.add_block(body);
        }
        p.damage = reader.damage.clone();
        Ok(p)
    }

    /// The phase an instant falls in.
    pub fn phase_at(&self, ts: u64) -> Option<usize> {
        let i = self.phases.partition_point(|ph| ph.start_ns <= ts);
        (i > 0 && ts < self.phases[i - 1].end_ns).then(|| i - 1)
    }

    /// Loss counts (total, per kind) as of `ts`: the last counters read at or before it.
    pub fn counters_at(&self, ts: u64) -> Option<&proto::Counters> {
        let i = self.counter_series.partition_point(|c| c.ts <= ts);
        i.checked_sub(1).map(|i| &self.counter_series[i])
    }

    /// As [`Profile::from_reader`], and each event also goes to every slice whose
    /// `[start, end)` holds its time.
    pub fn from_reader_sliced(reader: &mut Reader, slices: Vec<Slice>) -> Self {
        let mut p = Self {
            slices,
            ..Self::default()
        };
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
                    self.add_process(pr);
                }
            }
            // Names are bounded as they are read: a capture may come from anyone.
            Body::Frames(f) => self.frames.extend(f.frames.into_iter().map(|mut f| {
                f.name = capture::bounded_name(f.name);
                f.module = capture::bounded_name(f.module);
                f
            })),
            Body::Stacks(s) => {
                for st in &s.stacks {
                    let lost = st.frames.iter().any(|&f| {
                        self.frames
                            .get(f as usize)
                            .is_some_and(|fr| fr.name.contains(" stack lost: "))
                    });
                    self.lost_stacks.push(lost);
                }
                self.stacks.extend(s.stacks);
            }
            Body::Events(evs) => {
                for ev in &evs.events {
                    self.add_event(ev);
                }
            }
            Body::Counters(c) => {
                self.counter_series.push(c.clone());
                self.counters = c;
            }
            Body::Marker(m) => self.markers.push(m),
            Body::Trailer(t) => self.trailer = Some(t),
        }
    }

    fn add_event(&mut self, ev: &proto::Event) {
        let Some(view) = Family::of_kind(ev.kind) else {
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
        let process = self.process_at(ev.pid, ev.ts);
        let lost = ev
            .stack
            .checked_sub(1)
            .and_then(|i| self.lost_stacks.get(i as usize))
            .is_some_and(|l| *l);
        let agg = self.views.entry(view).or_default();
        if lost {
            agg.stacks_lost += count(ev);
        }
        let weight_before = agg.weight;
        agg.add(ev, process);
        let weight = agg.weight - weight_before;
        let totals = self
            .per_process
            .entry(ev.pid)
            .or_default()
            .entry(view)
            .or_default();
        totals.0 += 1;
        totals.1 = totals.1.saturating_add(weight);
        if let Some(i) = self.phase_at(ev.ts) {
            self.phase_views[i]
                .entry(view)
                .or_default()
                .add(ev, process);
        }
        // A handful of slices (windows of a diff): a scan is cheaper than keeping them sorted.
        for s in &mut self.slices {
            if (s.start..s.end).contains(&ev.ts) {
                s.views.entry(view).or_default().add(ev, process);
            }
        }
        if matches!(view, Family::Tcp | Family::Numa) {
            self.detail_events.push(ev.clone());
        }
    }

    /// A name a process has from a time on; or, at its end, the name it had, for the time it
    /// had none known (it was gone before it could be looked up).
    fn add_process(&mut self, pr: proto::Process) {
        let id = self.intern_name(capture::bounded_name(pr.comm));
        let names = &self.names;
        let gens = self.processes.entry(pr.pid).or_default();
        if !pr.exited {
            let at = gens.partition_point(|g| g.0 <= pr.since_ns);
            gens.insert(at, (pr.since_ns, id));
            return;
        }
        let before = gens.partition_point(|g| g.0 <= pr.since_ns);
        if before == 0 {
            gens.insert(0, (0, id));
        }
        for g in gens[..before].iter_mut().rev() {
            if !names[g.1 as usize].is_empty() {
                break;
            }
            g.1 = id;
        }
    }

    /// Views the capture recorded: a family that attached, or events of its kind.
    pub fn recorded_views(&self) -> Vec<Family> {
        Family::ALL
            .into_iter()
            .filter(|v| {
                self.views.contains_key(v)
                    || self
                        .meta
                        .families
                        .iter()
                        .any(|f| f.name == v.name() && !f.method.is_empty())
            })
            .collect()
    }

    fn intern_name(&mut self, name: String) -> u32 {
        if let Some(&id) = self.name_ids.get(&name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.name_ids.insert(name, id);
        id
    }

    /// Name id of process `pid` at time `ts` (its name changes when it execs).
    pub fn process_at(&mut self, pid: u32, ts: u64) -> u32 {
        let found = self.processes.get(&pid).and_then(|gens| {
            let i = gens.partition_point(|g| g.0 <= ts);
            // Before the first known name (events can precede the first sighting's timestamp
            // by a few milliseconds), the first name holds.
            gens.get(i.saturating_sub(1)).map(|g| g.1)
        });
        match found {
            Some(id) if !self.names[id as usize].is_empty() => id,
            _ => self.intern_name(format!("[pid {pid}]")),
        }
    }

    /// A process name by id: the root frame of its stacks.
    pub fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map_or("[unknown process]", String::as_str)
    }

    /// The name of process `pid` at time `ts`, for per-event outputs.
    pub fn comm_at(&self, pid: u32, ts: u64) -> String {
        self.processes
            .get(&pid)
            .and_then(|gens| gens.get(gens.partition_point(|g| g.0 <= ts).saturating_sub(1)))
            .map(|g| self.name(g.1).to_owned())
            .filter(|n| !n.is_empty())
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

    /// Folded stacks of a view: `process;frame;...;frame` -> weight.
    pub fn folded_map(&self, agg: &ViewAgg) -> BTreeMap<String, u64> {
        let mut merged: BTreeMap<String, u64> = BTreeMap::new();
        for ((process, stack, leaf), w) in &agg.stacks {
            let mut parts = vec![sanitize(self.name(*process))];
            parts.extend(self.stack_names(*stack));
            parts.extend(leaf.iter().map(|l| sanitize(l)));
            let total = merged.entry(parts.join(";")).or_default();
            *total = total.saturating_add(*w);
        }
        merged
    }

    /// Folded lines of a view: `process;frame;...;frame weight`, sorted.
    pub fn folded(&self, agg: &ViewAgg) -> Vec<String> {
        self.folded_map(agg)
            .into_iter()
            .map(|(k, w)| format!("{k} {w}"))
            .collect()
    }

    /// Wall-clock nanoseconds since the epoch of a monotonic timestamp.
    pub fn wall_ns(&self, mono: u64) -> i128 {
        i128::from(mono) + i128::from(self.meta.monotonic_to_realtime_ns)
    }

    /// How often the kernel's sums of `view` were collected, when the recording summed it
    /// there (`--aggregate`).
    pub fn summed_every(&self, view: Family) -> Option<std::time::Duration> {
        (self.meta.aggregate_window_ns > 0 && Family::SUMMABLE.contains(&view))
            .then(|| std::time::Duration::from_nanos(self.meta.aggregate_window_ns))
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
    use bar_ebpf_common::kind;

    use super::*;

    fn ev(kind: u32, pid: u32, stack: u32, detail: Option<Detail>) -> proto::Event {
        proto::Event {
            ts: 1,
            kind,
            cpu: 0,
            pid,
            tid: pid,
            stack,
            count: 0,
            detail,
        }
    }

    fn profile() -> Profile {
        let mut p = Profile::default();
        p.add_block(Body::Processes(proto::Processes {
            processes: vec![proto::Process {
                pid: 7,
                since_ns: 0,
                comm: "app".into(),
                ..Default::default()
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
        let cpu = p.folded(&p.views[&Family::Cpu]);
        assert_eq!(
            cpu,
            vec!["[pid 8] 1".to_owned(), "app;main;work:x 2".to_owned()]
        );
        let off = p.folded(&p.views[&Family::Offcpu]);
        assert_eq!(
            off,
            vec![
                "app;main;schedule_[k];[blocked] 2500".to_owned(),
                "app;main;schedule_[k];[preempted] 500".to_owned()
            ]
        );
        let h = &p.views[&Family::Offcpu].blocked_us;
        let p50 = h.value_at_quantile(0.5);
        assert!(h.equivalent(p50, 2500), "{p50}");
    }

    #[test]
    fn events_summed_in_the_kernel_count_as_many() {
        let mut p = profile();
        let fault = proto::Fault {
            user_mode: true,
            major: Some(false),
            ..Default::default()
        };
        let events = vec![
            proto::Event {
                count: 5,
                ..ev(kind::FAULT, 7, 1, Some(Detail::Fault(fault.clone())))
            },
            ev(kind::FAULT, 7, 1, Some(Detail::Fault(fault))),
            // Four intervals of 1 ms on average, 4 ms in all.
            proto::Event {
                count: 4,
                ..ev(
                    kind::OFFCPU,
                    7,
                    2,
                    Some(Detail::Offcpu(proto::OffCpu {
                        blocked_ns: 4_000_000,
                        reason: 1,
                        state: 1,
                    })),
                )
            },
        ];
        p.add_block(Body::Events(proto::Events { events }));
        let faults = &p.views[&Family::Faults];
        assert_eq!((faults.events, faults.weight), (6, 6));
        assert_eq!((faults.user_mode, faults.minor), (6, 6));
        assert_eq!(p.folded(faults), vec!["app;main;work:x 6".to_owned()]);
        let off = &p.views[&Family::Offcpu];
        assert_eq!((off.events, off.weight), (4, 4000));
        assert_eq!(off.blocked_us.len(), 4);
        assert!(
            off.blocked_us
                .equivalent(off.blocked_us.value_at_quantile(0.5), 1000)
        );
    }

    #[test]
    fn slices_aggregate_their_time_range_apart() {
        let mut p = profile();
        let mut slices = vec![Slice::new(0, 5), Slice::new(3, 8)];
        let events: Vec<_> = (0..10)
            .map(|ts| proto::Event {
                ts,
                ..ev(kind::CPU, 7, 1, None)
            })
            .collect();
        // As from_reader_sliced sets them up before the blocks arrive.
        p.slices = std::mem::take(&mut slices);
        p.add_block(Body::Events(proto::Events { events }));
        assert_eq!(p.views[&Family::Cpu].events, 10);
        assert_eq!(p.slices[0].views[&Family::Cpu].events, 5);
        assert_eq!(p.slices[1].views[&Family::Cpu].events, 5);
        let folded = p.folded_map(&p.slices[1].views[&Family::Cpu]);
        assert_eq!(folded["app;main;work:x"], 5);
    }

    #[test]
    fn events_whose_stack_the_kernel_could_not_store_are_counted_per_view() {
        let mut p = profile();
        p.add_block(Body::Frames(proto::Frames {
            frames: vec![proto::Frame {
                name: "[user stack lost: map full]".into(),
                module: String::new(),
                kernel: false,
            }],
        }));
        p.add_block(Body::Stacks(proto::Stacks {
            stacks: vec![proto::Stack { frames: vec![3, 2] }],
        }));
        let fault = || {
            Some(Detail::Fault(proto::Fault {
                user_mode: true,
                ..Default::default()
            }))
        };
        p.add_block(Body::Events(proto::Events {
            events: vec![
                proto::Event {
                    count: 4,
                    ..ev(kind::FAULT, 7, 3, fault())
                },
                ev(kind::FAULT, 7, 1, fault()),
                ev(kind::CPU, 7, 3, None),
            ],
        }));
        assert_eq!(p.views[&Family::Faults].stacks_lost, 4);
        assert_eq!(p.views[&Family::Cpu].stacks_lost, 1);
    }

    #[test]
    fn processes_are_named_by_time_and_at_their_end_when_nothing_else_named_them() {
        let mut p = Profile::default();
        let named = |pid, comm: &str, since_ns, exited| proto::Process {
            pid,
            comm: comm.into(),
            since_ns,
            exited,
        };
        p.add_block(Body::Processes(proto::Processes {
            processes: vec![
                // Forked as the shell, exec'd as make, ended as make.
                named(5, "sh", 10, false),
                named(5, "make", 20, false),
                named(5, "make", 30, true),
                // Gone before it could be looked up: only its end names it.
                named(6, "cc1", 40, true),
                // The pid used again by another process afterwards keeps its own name.
                named(6, "ld", 50, false),
            ],
        }));
        let at = |p: &mut Profile, pid, ts| {
            let id = p.process_at(pid, ts);
            p.name(id).to_owned()
        };
        assert_eq!(at(&mut p, 5, 15), "sh");
        assert_eq!(at(&mut p, 5, 25), "make");
        assert_eq!(at(&mut p, 6, 35), "cc1");
        assert_eq!(at(&mut p, 6, 55), "ld");
        assert_eq!(at(&mut p, 7, 55), "[pid 7]");
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
        let v = &p.views[&Family::Tcp];
        assert_eq!(v.tcp["127.0.0.1:81"].refused, 2);
        assert_eq!(v.tcp["127.0.0.1:80"].established, 1);
        assert!(
            p.folded(v)
                .contains(&"app;main;work:x;[connect 127.0.0.1:81];[refused] 2".to_owned())
        );
    }
}
