//! The profile: a capture aggregated, block by block, into per-family views of the whole, of
//! each phase and of any slices asked for, with the processes, frames and stacks that name
//! them. Nothing here looks at the running system, so a capture aggregates the same anywhere.

use std::collections::{BTreeMap, HashMap};

use bar_ebpf_common::Family;

use super::{
    ViewAgg,
    labels::{count, sanitize},
    phases::Phase,
};
use crate::capture::{self, Body, Damage, proto};

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
    /// Time slices also aggregated (see [`Capture::sliced`](super::Capture::sliced)).
    pub slices: Vec<Slice>,
}

impl Profile {
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

    /// Frame names of a stack, root first, kernel frames suffixed `_[k]` as perf does and
    /// functions inlined into their caller `_[i]`, as the flame graph tools mark them.
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
                Some(fr) if fr.inlined => format!("{}_[i]", sanitize(&fr.name)),
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
