//! The aggregator stage of a recording: one thread takes the collectors' batches and the
//! markers, resolves stacks (symbolize), appends blocks to the capture (store) and prints the
//! live status.

use std::{
    collections::{HashMap, HashSet},
    io::IsTerminal as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use bar_ebpf_common::{
    ProcessRecord, counter, kind,
    unwind::{self, stop},
};
use tokio::sync::{mpsc, oneshot};

use super::{dump, ring::Ring, trigger::Triggers};
use crate::{
    analyze,
    capture::{
        Body, Writer,
        proto::{self, event::Detail},
    },
    collect::{Batch, Record},
    push::Pusher,
    symbolize::{self, RawStack, Symbolizer},
    sys::foreign,
    system,
    unwind::service::{Request, Snapshot},
};

/// What the aggregator thread receives.
pub(super) enum Input {
    Batch(Batch),
    Marker(proto::Marker),
    /// Time passes: flush and print status even when no event arrives.
    Tick,
    /// Write the flight recorder's ring out (`bar-probe dump`, SIGUSR1).
    Dump(dump::Request),
}

/// Where the blocks go: the capture file, or the flight recorder's ring (`--ring`).
pub(super) enum Sink {
    File(Writer),
    Ring(Box<Ring>),
}

impl Sink {
    pub(super) fn write(&mut self, body: Body) -> std::io::Result<()> {
        match self {
            Self::File(w) => w.write(body),
            Self::Ring(r) => r.write(body),
        }
    }

    fn size(&self) -> u64 {
        match self {
            Self::File(w) => w.size(),
            Self::Ring(r) => r.size(),
        }
    }
}

impl From<Batch> for Input {
    fn from(b: Batch) -> Self {
        Self::Batch(b)
    }
}

/// Receives batches, keeps the capture growing, prints the live status.
pub(super) struct Aggregator {
    sink: Sink,
    /// Writes the ring's dumps beside collecting (ring recordings only).
    dumper: Option<dump::Dumper>,
    /// Rates that make the ring write itself out (`--ring-trigger`).
    pub(super) triggers: Option<Triggers>,
    pub(super) symbolizer: Symbolizer,
    counters: PerCpuArray<MapData, u64>,
    pending: Vec<(u32, Record)>,
    seen_pids: HashSet<u32>,
    new_processes: Vec<proto::Process>,
    lost_per_cpu: Vec<u64>,
    malformed: u64,
    per_kind: [u64; kind::COUNT as usize],
    per_kind_at_status: [u64; kind::COUNT as usize],
    events: u64,
    started: Instant,
    last_flush: Instant,
    last_status: Instant,
    quiet: bool,
    tty: bool,
    max_size: Option<u64>,
    /// Taken (and fired) when the capture reaches --max-size; from then on events are
    /// discarded and counted.
    full_tx: Option<oneshot::Sender<()>>,
    discarded: u64,
    /// Gets every block the capture gets, and cuts intervals for the backends (`--pyroscope`,
    /// `--otlp`).
    push: Option<Pusher>,
    /// The unwind tables' loader, when user stacks are walked with them.
    pub(super) unwind: Option<UnwindLink>,
    /// How the user stacks of the events so far were walked.
    walks: proto::Unwind,
}

/// Where the aggregator tells the unwind tables' loader what it sees, and reads its counts.
pub(super) struct UnwindLink {
    pub tx: std::sync::mpsc::Sender<Request>,
    pub stats: Arc<Mutex<Snapshot>>,
}

impl UnwindLink {
    fn send(&self, r: Request) {
        // The loader ends only after the aggregator: a failed send changes nothing.
        let _ = self.tx.send(r);
    }
}

const FLUSH_EVERY: Duration = Duration::from_millis(250);
const FLUSH_AT: usize = 65536;
const EVENTS_PER_BLOCK: usize = 8192;
/// Records the pending list keeps room for between flushes.
const PENDING_KEPT: usize = 16384;
/// How long after a process ends what the collector knows of it (memory map, resolved stacks)
/// is kept: records taken before the end may still be on their way from other CPUs' buffers.
const FORGET_AFTER_NS: u64 = 5_000_000_000;

impl Aggregator {
    pub(super) fn new(
        sink: Sink,
        dumper: Option<dump::Dumper>,
        symbolizer: Symbolizer,
        counters: PerCpuArray<MapData, u64>,
        (cpus, quiet, max_size): (usize, bool, Option<u64>),
        full_tx: oneshot::Sender<()>,
        push: Option<Pusher>,
    ) -> Self {
        let now = Instant::now();
        Self {
            sink,
            dumper,
            triggers: None,
            symbolizer,
            counters,
            pending: Vec::new(),
            seen_pids: HashSet::new(),
            new_processes: Vec::new(),
            lost_per_cpu: vec![0; cpus],
            malformed: 0,
            per_kind: [0; kind::COUNT as usize],
            per_kind_at_status: [0; kind::COUNT as usize],
            events: 0,
            started: now,
            last_flush: now,
            last_status: now,
            quiet,
            tty: std::io::stderr().is_terminal(),
            max_size,
            full_tx: Some(full_tx),
            discarded: 0,
            push,
            unwind: None,
            walks: proto::Unwind {
                cut_short: vec![0; stop::COUNT as usize],
                ..proto::Unwind::default()
            },
        }
    }

    pub(super) fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
    ) -> std::io::Result<((u64, u64), Sink, Option<Pusher>)> {
        while let Some(input) = rx.blocking_recv() {
            match input {
                Input::Batch(batch) => self.take(batch),
                Input::Marker(m) => {
                    if !self.quiet {
                        let what = if m.end { "ends" } else { "starts" };
                        eprintln!("\nbar-probe: phase {} {what}", m.name);
                    }
                    self.write(Body::Marker(m))?;
                }
                Input::Tick => {}
                Input::Dump(req) => self.dump(req)?,
            }
            let push_due = self.push.as_ref().is_some_and(Pusher::due);
            if push_due
                || self.last_flush.elapsed() >= FLUSH_EVERY
                || self.pending.len() >= FLUSH_AT
            {
                self.flush()?;
            }
            if push_due && let Some(p) = &mut self.push {
                p.cut(system::monotonic_ns());
            }
            self.status();
            if let Some(req) = self.triggers.as_mut().and_then(|t| t.check(&self.per_kind)) {
                self.dump(req)?;
            }
        }
        self.flush()?;
        self.write_counters()?;
        if !self.quiet && self.tty {
            eprintln!();
        }
        let lost = self.lost_per_cpu.iter().sum();
        if let Some(d) = self.dumper.take() {
            d.finish();
        }
        Ok(((self.events, lost), self.sink, self.push))
    }

    /// Name and memory map of a process the first time it is seen (at `ts`), while it likely
    /// exists; the kernel's word on a fork, exec or exit comes as a record of its own. A
    /// process already gone gets no name here rather than an empty one, which would hide the
    /// name its fork record gave it.
    pub(super) fn first_sight(&mut self, pid: u32, ts: u64) {
        if self.seen_pids.insert(pid) {
            if let Some(u) = &self.unwind {
                u.send(Request::Seen(pid));
            }
            self.symbolizer.note_process(pid);
            if let Some(p) = &mut self.push {
                p.note_process(pid);
            }
            if let Some(comm) = symbolize::process_comm(pid) {
                self.new_processes.push(proto::Process {
                    pid,
                    comm,
                    since_ns: ts,
                    exited: false,
                });
            }
        }
    }

    /// A process forked, exec'd or exited: its name as the kernel had it, and its memory map
    /// (the parent's after a fork, read anew after an exec, forgotten a while after an exit).
    fn lifecycle(&mut self, p: &ProcessRecord) {
        let h = &p.header;
        let end = p.comm.iter().position(|&b| b == 0).unwrap_or(p.comm.len());
        let comm = String::from_utf8_lossy(&p.comm[..end]).into_owned();
        match h.kind {
            kind::FORK => self.symbolizer.fork(p.parent, h.pid, h.ts_ns),
            kind::EXEC => self.symbolizer.exec(h.pid, h.ts_ns),
            _ => self.symbolizer.exited(h.pid, h.ts_ns),
        }
        if h.kind != kind::EXIT {
            self.seen_pids.insert(h.pid);
            if let Some(push) = &mut self.push {
                push.note_process(h.pid);
            }
        }
        self.new_processes.push(proto::Process {
            pid: h.pid,
            comm,
            since_ns: h.ts_ns,
            exited: h.kind == kind::EXIT,
        });
    }

    fn take(&mut self, batch: Batch) {
        if let Some(l) = self.lost_per_cpu.get_mut(batch.cpu as usize) {
            *l += batch.lost;
        }
        self.malformed += batch.malformed;
        for r in batch.records {
            let h = *r.header();
            if let Record::UnwindMiss(_) = r {
                if let Some(u) = &self.unwind {
                    u.send(Request::Miss(h.pid));
                }
                continue;
            }
            if let Record::StackPage(p) = r {
                self.walks.stack_pages += 1;
                if foreign::fault_in(h.pid, p.address) {
                    self.walks.stack_pages_back += 1;
                }
                continue;
            }
            if let Record::Process(p) = r {
                // The loader heard of an exec from the reader that met it.
                if let Some(u) = &self.unwind
                    && h.kind == kind::EXIT
                {
                    u.send(Request::Exit(h.pid));
                }
                self.lifecycle(&p);
                continue;
            }
            self.first_sight(h.pid, h.ts_ns);
            if let Some(c) = self.per_kind.get_mut(h.kind as usize) {
                *c += r.count();
            }
            self.pending.push((batch.cpu, r));
        }
    }

    /// Seals the ring's open segment when its time is up (or `now` is asked): the symbolizer
    /// starts its frames and stacks over, so that the next segment holds its own.
    fn seal(&mut self, now: bool) -> std::io::Result<()> {
        let Sink::Ring(ring) = &mut self.sink else {
            return Ok(());
        };
        let ts = system::monotonic_ns();
        if now || ring.seal_due(ts) {
            ring.seal(ts)?;
            self.symbolizer.forget_ids();
        }
        Ok(())
    }

    /// Hands the ring as it is now to the dump thread, after what has arrived so far.
    fn dump(&mut self, req: dump::Request) -> std::io::Result<()> {
        let Some(dumper) = self.dumper.as_ref() else {
            req.answer(Err("this recording keeps no ring (--ring)".into()));
            return Ok(());
        };
        if dumper.busy() {
            req.answer(Err(
                "a dump of this recording is being written; ask again when it is done".into(),
            ));
            return Ok(());
        }
        self.flush()?;
        self.seal(true)?;
        if let (Sink::Ring(ring), Some(dumper)) = (&self.sink, &self.dumper) {
            dumper.start(ring.snapshot(system::monotonic_ns()), req);
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.last_flush = Instant::now();
        self.seal(false)?;
        if self.pending.is_empty() && self.new_processes.is_empty() {
            return Ok(());
        }
        let raws: Vec<RawStack> = self
            .pending
            .iter()
            .map(|(_, r)| {
                let h = r.header();
                RawStack {
                    pid: h.pid,
                    space: self.symbolizer.space(h.pid, h.ts_ns),
                    user: h.user_stack,
                    kernel: h.kernel_stack,
                    ts: h.ts_ns,
                }
            })
            .collect();
        let stack_ids = self.symbolizer.resolve(&raws);
        self.count_walks(&raws);
        // Processes that ended a while ago: every record of theirs is in by now.
        let now = system::monotonic_ns();
        for pid in self.symbolizer.prune(now.saturating_sub(FORGET_AFTER_NS)) {
            self.seen_pids.remove(&pid);
        }
        self.symbolizer.evict_user_stacks(now);
        self.symbolizer.release_files_if_large();
        let (frames, stacks) = self.symbolizer.interner.take_new();
        if !self.new_processes.is_empty() {
            let processes = std::mem::take(&mut self.new_processes);
            self.write(Body::Processes(proto::Processes { processes }))?;
        }
        if !frames.is_empty() {
            self.write(Body::Frames(proto::Frames { frames }))?;
        }
        if !stacks.is_empty() {
            self.write(Body::Stacks(proto::Stacks { stacks }))?;
        }
        let mut events = self
            .pending
            .drain(..)
            .zip(stack_ids)
            .map(|((cpu, r), stack)| to_event(cpu, &r, stack))
            .peekable();
        // Blocks of bounded size, so that --max-size is kept to within one block.
        while events.peek().is_some() {
            let chunk: Vec<proto::Event> = events.by_ref().take(EVENTS_PER_BLOCK).collect();
            let represented: u64 = chunk.iter().map(analyze::count).sum();
            if self.full_tx.is_none() {
                self.discarded += represented;
                continue;
            }
            self.events += represented;
            // Field by field: `events` still borrows the pending records.
            let body = Body::Events(proto::Events { events: chunk });
            if let Some(p) = &mut self.push {
                p.block(&body);
            }
            self.sink.write(body)?;
            if let Some(max) = self.max_size
                && self.sink.size() >= max
                && let Some(tx) = self.full_tx.take()
            {
                if !self.quiet {
                    eprintln!(
                        "\nbar-probe: the capture reached --max-size ({max} bytes); stopping"
                    );
                }
                let _ = tx.send(());
            }
        }
        drop(events);
        // A burst (the first flush, while the kernel's symbols were read) can leave room for
        // far more records than a quarter of a second brings: 13 MB kept unused.
        self.pending.shrink_to(PENDING_KEPT);
        self.write_counters()
    }

    /// Appends a block to the capture, and gives it to the pusher first.
    fn write(&mut self, body: Body) -> std::io::Result<()> {
        if let Some(p) = &mut self.push {
            p.block(&body);
        }
        self.sink.write(body)
    }

    /// Adds how the user stacks of a batch of events were walked to the counts, and tells the
    /// loader which processes were active.
    fn count_walks(&mut self, raws: &[RawStack]) {
        let Some(u) = &self.unwind else {
            return;
        };
        let mut active: HashMap<u32, u64> = HashMap::new();
        for ((_, r), raw) in self.pending.iter().zip(raws) {
            *active.entry(raw.pid).or_default() += r.count();
            let Some(facts) = self.symbolizer.unwind_facts(raw) else {
                continue;
            };
            let n = r.count();
            let (table, fp, go, reason) = unwind::unpack_facts(facts);
            let w = &mut self.walks;
            w.stacks += n;
            w.frames_table += u64::from(table) * n;
            w.frames_frame_pointer += u64::from(fp) * n;
            w.frames_go += u64::from(go) * n;
            if reason != stop::COMPLETE
                && let Some(c) = w.cut_short.get_mut(reason as usize)
            {
                *c += n;
            }
        }
        u.send(Request::Active(active.into_iter().collect()));
    }

    /// The walk counts with the loader's.
    fn unwind_counters(&self) -> Option<Box<proto::Unwind>> {
        let Some(u) = self.unwind.as_ref() else {
            // Frame pointers only: no tables to count, but the walks still ask for stack pages.
            return (self.walks.stack_pages > 0).then(|| Box::new(self.walks.clone()));
        };
        let snap = u.stats.lock().map(|s| s.clone()).unwrap_or_default();
        let t = &snap.stats.tables;
        Some(Box::new(proto::Unwind {
            objects: t.objects,
            rows: t.rows,
            bytes: t.bytes,
            build_ms: t.build_ms,
            capacity_rows: snap.capacity_rows,
            evicted: t.evicted,
            misses: snap.stats.misses,
            processes: snap.stats.processes,
            processes_gone: snap.stats.gone,
            failed: rejected(&t.failed),
            entries_skipped: t.entries_skipped,
            partial: rejected(&t.partial),
            ..self.walks.clone()
        }))
    }

    fn write_counters(&mut self) -> std::io::Result<()> {
        let mut sums = vec![0u64; counter::COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *sum = values.iter().sum();
            }
        }
        let d = counter::DROPPED as usize;
        self.sink.write(Body::Counters(proto::Counters {
            lost_per_cpu: self.lost_per_cpu.clone(),
            dropped_per_kind: sums[d..d + kind::COUNT as usize].to_vec(),
            malformed: self.malformed,
            offcpu_map_full: sums[counter::OFFCPU_MAP_FULL as usize],
            tcp_map_full: sums[counter::TCP_MAP_FULL as usize],
            offcpu_returns_unseen: Some(sums[counter::OFFCPU_RETURN_UNSEEN as usize]),
            discarded_at_max_size: self.discarded,
            ts: system::monotonic_ns(),
            unwind: self.unwind_counters(),
        }))
    }

    fn status(&mut self) {
        let every = if self.tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        let elapsed = self.last_status.elapsed();
        if self.quiet || elapsed < every {
            return;
        }
        self.last_status = Instant::now();
        let secs = elapsed.as_secs_f64();
        let mut parts = vec![format!(
            "bar-probe: {:>5.1}s",
            self.started.elapsed().as_secs_f64()
        )];
        for (k, name) in [
            (kind::CPU, "cpu"),
            (kind::OFFCPU, "offcpu"),
            (kind::FAULT, "faults"),
            (kind::TCP, "tcp"),
            (kind::NUMA_TASK, "numa-task"),
            (kind::NUMA_PAGES, "numa-pages"),
        ] {
            let (now, before) = (
                self.per_kind[k as usize],
                self.per_kind_at_status[k as usize],
            );
            if now > 0 {
                parts.push(format!("{name} {}/s", human((now - before) as f64 / secs)));
            }
        }
        self.per_kind_at_status = self.per_kind;
        parts.push(format!("lost {}", self.lost_per_cpu.iter().sum::<u64>()));
        if let Some(p) = &self.push {
            parts.push(p.status());
        }
        let line = parts.join("  ");
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn fault_detail(address: u64, ip: u64, error_code: u32, flags: u32) -> Detail {
    use bar_ebpf_common::fault_flag;
    Detail::Fault(proto::Fault {
        address,
        ip,
        error_code,
        user_mode: flags & fault_flag::USER_MODE != 0,
        major: (flags & fault_flag::SEVERITY_KNOWN != 0).then_some(flags & fault_flag::MAJOR != 0),
    })
}

fn to_event(cpu: u32, r: &Record, stack: u32) -> proto::Event {
    let h = r.header();
    let detail = match r {
        Record::Cpu(_) => None,
        Record::Fault(f) => Some(fault_detail(f.address, f.ip, f.error_code, f.flags)),
        Record::OffCpu(o) => Some(Detail::Offcpu(proto::OffCpu {
            blocked_ns: o.blocked_ns,
            reason: o.reason,
            state: o.state,
        })),
        Record::Tcp(t) => {
            let n = if t.family == 10 { 16 } else { 4 };
            Some(Detail::Tcp(proto::Tcp {
                latency_ns: t.latency_ns,
                saddr: t.saddr[..n].to_vec(),
                daddr: t.daddr[..n].to_vec(),
                family: u32::from(t.family),
                sport: u32::from(t.sport),
                dport: u32::from(t.dport),
                error: t.error,
            }))
        }
        Record::NumaTask(n) => Some(Detail::NumaTask(proto::NumaTask {
            src_cpu: n.src_cpu,
            dst_cpu: n.dst_cpu,
            src_nid: n.src_nid,
            dst_nid: n.dst_nid,
            what: n.what,
        })),
        Record::Process(_) | Record::UnwindMiss(_) | Record::StackPage(_) => None,
        Record::Summed {
            header,
            detail,
            state,
            total,
            ..
        } => match header.kind {
            kind::OFFCPU => Some(Detail::Offcpu(proto::OffCpu {
                blocked_ns: *total,
                reason: *detail,
                state: *state,
            })),
            _ => Some(fault_detail(0, 0, 0, *detail)),
        },
        Record::NumaPages(p) => Some(Detail::NumaPages(proto::NumaPages {
            succeeded: p.succeeded,
            failed: p.failed,
            thp_succeeded: p.thp_succeeded,
            thp_failed: p.thp_failed,
            mode: p.mode,
            reason: p.reason,
            dst_nid: p.dst_nid,
            src_nid: Some(p.src_nid),
        })),
    };
    proto::Event {
        ts: h.ts_ns,
        kind: h.kind,
        cpu,
        pid: h.pid,
        tid: h.tid,
        stack,
        count: match r {
            Record::Summed { count, .. } => *count,
            _ => 0,
        },
        detail,
    }
}

/// Objects and why, as the capture holds them.
fn rejected(objects: &[(String, String)]) -> Vec<proto::Rejected> {
    objects
        .iter()
        .map(|(attach, reason)| proto::Rejected {
            attach: attach.clone(),
            reason: reason.clone(),
        })
        .collect()
}
