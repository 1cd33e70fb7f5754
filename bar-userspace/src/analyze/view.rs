//! The aggregate of one family's events (in a phase, a slice, or the whole capture): weighted
//! stacks, latency histograms, TCP destinations, NUMA node pairs.

use std::collections::{BTreeMap, HashMap};

use bar_ebpf_common::{numa_task_kind, offcpu_reason};
use hdrhistogram::Histogram;

use super::{
    StackTimes,
    labels::{count, format_endpoint, migrate_reason, tcp_result, weigh},
};
use crate::capture::proto::{self, event::Detail};

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
