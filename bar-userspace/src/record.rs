//! A recording session: wires the stages together. Programs are loaded and attached (probe),
//! per-CPU readers drain the perf buffers (collect), and one aggregator thread resolves stacks
//! (symbolize) and appends blocks to the capture (store) while the target lives. The session
//! ends at the duration, on Ctrl-C/SIGTERM, when the target exits or when the capture reaches
//! its size limit, and always leaves a complete capture.

use bar_ebpf_common::Family;
use std::{
    collections::HashSet,
    io::IsTerminal as _,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, StackTraceMap};
use bar_ebpf_common::{counter, kind, maps};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};

use crate::{
    capture::{
        Body, Writer,
        proto::{self, event::Detail},
    },
    collect::{self, Batch, ReaderOptions, Record},
    markers,
    phases::{self, WallPhase},
    probe::{self, FamilyStatus, Method, ProbeOptions},
    symbolize::{self, RawStack, Symbolizer},
    system, target,
};

/// What to trace.
#[derive(Debug, Clone)]
pub enum Scope {
    Pid(u32),
    All,
    Cgroup(PathBuf),
}

#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub scope: Scope,
    pub families: Vec<Family>,
    /// The families were named by the user (not the default `all`).
    pub explicit: bool,
    pub duration: Option<Duration>,
    pub frequency: u64,
    pub min_block_ns: u64,
    pub null_mode: bool,
    /// Sum faults and off-CPU intervals in the kernel, collected every this long.
    pub aggregate: Option<Duration>,
    pub stack_map_entries: u32,
    pub avoid: Vec<Method>,
    pub buffer_pages: usize,
    pub max_size: Option<u64>,
    pub out_dir: PathBuf,
    pub quiet: bool,
    pub command_line: Vec<String>,
    /// Phases from a phase file, stored as markers at the start.
    pub phases: Vec<WallPhase>,
    /// A FIFO to read live markers from (created if missing).
    pub marker_fifo: Option<PathBuf>,
    /// Phases timed by the recording itself (`bar-probe run`), back to back from the start.
    pub plan: Vec<PlannedPhase>,
}

/// A phase of `bar-probe run`: its name, how long it lasts, and a command run for that long.
#[derive(Debug, Clone)]
pub struct PlannedPhase {
    pub name: String,
    pub duration: Duration,
    pub command: Option<String>,
}

pub struct Recorded {
    pub capture: PathBuf,
    pub stop_reason: String,
    pub status: Vec<FamilyStatus>,
    pub events: u64,
    pub lost: u64,
}

/// Checks that `dir` can be created and written before anything is loaded.
fn prepare_out_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let probe = dir.join(".bar-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("cannot write to output folder {}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Records until a stop condition; returns the capture's path. `on_start` runs once the
/// programs are attached and events flow (e.g. to release a load that waits for it).
pub fn record(opts: &RecordOptions, on_start: impl FnOnce()) -> anyhow::Result<Recorded> {
    let missing = system::missing_capabilities();
    if !missing.is_empty() {
        bail!(
            "missing {}: run bar-probe as root (sudo) or grant it these capabilities",
            missing.join(" and ")
        );
    }
    let (target_tgid, pidfd, target_meta) = match &opts.scope {
        Scope::Pid(pid) => {
            let fd = target::open(*pid)?;
            (*pid, Some(fd), Some(target::describe(*pid)))
        }
        _ => (0, None, None),
    };
    let (cgroup, cgroup_id) = match &opts.scope {
        Scope::Cgroup(p) => {
            let (full, id) = system::cgroup_id(p).map_err(anyhow::Error::msg)?;
            (full.display().to_string(), id)
        }
        _ => (String::new(), 0),
    };
    prepare_out_dir(&opts.out_dir)?;
    if let Some(fifo) = &opts.marker_fifo {
        make_fifo(fifo)?;
    }

    let mut loaded = probe::load(&ProbeOptions {
        families: opts.families.clone(),
        explicit: opts.explicit,
        target_tgid,
        cgroup_id,
        frequency: opts.frequency,
        min_block_ns: opts.min_block_ns,
        null_mode: opts.null_mode,
        sum_records: opts.aggregate.is_some(),
        stack_map_entries: opts.stack_map_entries,
        avoid: opts.avoid.clone(),
    })?;
    let take = |ebpf: &mut aya::Ebpf, name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("map {name} missing from the object"))
    };
    // The perf buffers are bar's own (collect::ring), put into the map by the readers.
    let events = match take(&mut loaded.ebpf, maps::EVENTS)? {
        Map::PerfEventArray(data) => data,
        _ => bail!("map {} is not a perf event array", maps::EVENTS),
    };
    let stacks = StackTraceMap::try_from(take(&mut loaded.ebpf, maps::STACKS)?)?;
    let user_stacks = BpfHashMap::try_from(take(&mut loaded.ebpf, maps::USER_STACKS)?)?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(take(&mut loaded.ebpf, maps::COUNTERS)?)?;
    let sums = match opts.aggregate {
        Some(window) => Some((
            window,
            take(&mut loaded.ebpf, maps::SUMS)?,
            take(&mut loaded.ebpf, maps::SUM_EPOCH)?,
        )),
        None => None,
    };
    let cpus = system::online_cpus();
    let capture_path = opts.out_dir.join("capture.bar");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel::<Input>(4096);
    let (stop_tx, stop_rx) = watch::channel(false);
    let outcome = rt.block_on(async {
        // Buffers first, programs second: no event is produced with nowhere to go.
        let mut readers = collect::spawn_readers(
            &events,
            &cpus,
            ReaderOptions {
                pages: opts.buffer_pages,
                interval: Duration::from_millis(10),
            },
            tx.clone(),
            stop_rx.clone(),
        )?;
        if let Some((window, map, epoch)) = sums {
            readers.push(collect::spawn_sums(
                map,
                epoch,
                window,
                tx.clone(),
                stop_rx,
            )?);
        }
        let status = loaded.attach();
        if let Err(e) = loaded.attach_exec_tracking() {
            eprintln!(
                "bar-probe: warning: processes that exec while recorded may get wrong symbols: {e}"
            );
        }
        loaded.release_kernel_types();
        let attached = check_attached(&status, opts);
        let writer = attached.and_then(|()| {
            let meta = meta(opts, &status, target_meta, cgroup, &cpus);
            let offset = meta.monotonic_to_realtime_ns;
            let mut w = Writer::create(&capture_path, meta)
                .with_context(|| format!("cannot write {}", capture_path.display()))?;
            // Phases given as a file go in as markers, like live ones.
            for m in phases::markers_of(&opts.phases, offset) {
                w.write(Body::Marker(m))?;
            }
            Ok(w)
        });
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                drop(loaded);
                let _ = stop_tx.send(true);
                for r in readers {
                    let _ = r.await;
                }
                return Err(e);
            }
        };
        let (full_tx, full_rx) = oneshot::channel::<()>();
        let agg_opts = (cpus.len(), opts.quiet, opts.max_size);
        let target = match opts.scope {
            Scope::Pid(p) => Some(p),
            _ => None,
        };
        // blazesym's symbolizer is not Send: it is created on the thread that uses it.
        let (sighted_tx, sighted_rx) = oneshot::channel::<()>();
        let agg_thread = std::thread::Builder::new()
            .name("bar-aggregate".into())
            .spawn(move || {
                let mut agg = Aggregator::new(
                    writer,
                    Symbolizer::new(stacks, user_stacks),
                    counters,
                    agg_opts,
                    full_tx,
                );
                // The target's name and memory map now: a short-lived process may be gone by
                // the time its first events arrive.
                if let Some(pid) = target {
                    agg.first_sight(pid);
                }
                agg.symbolizer.prepare_kernel();
                let _ = sighted_tx.send(());
                agg.run(rx)
            })?;
        // Whoever waits for "recording" may let the target run to its end at once: its map
        // must be read before that is said (and kallsyms parsed, not to compete with it).
        let _ = sighted_rx.await;
        // A tick keeps the status line and the flushes going when no events arrive.
        let ticker = {
            let tx = tx.clone();
            let mut stop = stop_tx.subscribe();
            tokio::spawn(async move {
                let mut iv = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tokio::select! {
                        _ = iv.tick() => { if tx.send(Input::Tick).await.is_err() { return } }
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let mut marker_tasks = spawn_marker_sources(opts, &tx, &stop_tx);
        if !opts.plan.is_empty() {
            marker_tasks.push(tokio::spawn(run_plan(opts.plan.clone(), tx.clone())));
        }
        drop(tx);
        if !opts.quiet {
            let what = match &opts.scope {
                Scope::Pid(p) => format!("pid {p}"),
                Scope::All => "all processes".into(),
                Scope::Cgroup(c) => format!("cgroup {}", c.display()),
            };
            eprintln!(
                "bar-probe: recording {what} into {} (Ctrl-C to stop)",
                opts.out_dir.display()
            );
        }
        on_start();
        let reason = wait_for_stop(opts.duration, pidfd, full_rx).await?;
        // Detach first so nothing new is produced, then let every reader drain once more.
        drop(loaded);
        let _ = stop_tx.send(true);
        for r in readers {
            let _ = r.await;
        }
        let _ = ticker.await;
        for t in marker_tasks {
            t.abort();
            let _ = t.await;
        }
        anyhow::Ok((reason, status, agg_thread))
    });
    let (reason, status, agg_thread) = outcome?;
    let (events, lost) = agg_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the aggregator thread failed"))?
        .map_err(|e| anyhow::anyhow!("writing {} failed: {e}", capture_path.display()))
        .and_then(|(summary, writer)| {
            let trailer = proto::Trailer {
                end_ns: system::monotonic_ns(),
                events: summary.0,
                stop_reason: reason.clone(),
                ..Default::default()
            };
            writer
                .finish(trailer)
                .with_context(|| format!("cannot finish {}", capture_path.display()))?;
            Ok(summary)
        })?;
    Ok(Recorded {
        capture: capture_path,
        stop_reason: reason,
        status,
        events,
        lost,
    })
}

fn make_fifo(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_fifo() => Ok(()),
        Ok(_) => bail!("{} exists and is not a FIFO", path.display()),
        Err(_) => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                bail!(
                    "cannot create FIFO {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            Ok(())
        }
    }
}

/// Times the phases of `bar-probe run`: a marker at the start of each, its command (if any) run
/// for its duration in its own process group, and an end marker after the last.
async fn run_plan(plan: Vec<PlannedPhase>, tx: mpsc::Sender<Input>) {
    let marker = |name: &str, end| {
        Input::Marker(proto::Marker {
            name: name.to_owned(),
            ts: system::monotonic_ns(),
            end,
        })
    };
    let mut last = None;
    for phase in plan {
        if tx.send(marker(&phase.name, false)).await.is_err() {
            return;
        }
        let child = phase.command.as_ref().and_then(|c| {
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg(c)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| eprintln!("bar-probe: phase {}: cannot run `{c}`: {e}", phase.name))
                .ok()
        });
        tokio::time::sleep(phase.duration).await;
        if let Some(mut child) = child {
            if let Some(id) = child.id() {
                // SAFETY: signalling the process group created for this command.
                unsafe { libc::kill(-(id as i32), libc::SIGTERM) };
            }
            if tokio::time::timeout(Duration::from_secs(2), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        last = Some(phase.name);
    }
    if let Some(name) = last {
        let _ = tx.send(marker(&name, true)).await;
    }
}

/// What the aggregator thread receives.
enum Input {
    Batch(Batch),
    Marker(proto::Marker),
    /// Time passes: flush and print status even when no event arrives.
    Tick,
}

impl From<Batch> for Input {
    fn from(b: Batch) -> Self {
        Self::Batch(b)
    }
}

/// Starts the live marker sources: this recording's socket (for `bar-probe mark`) and the
/// `--marker-fifo`, if any. Both turn lines into markers stamped on arrival.
fn spawn_marker_sources(
    opts: &RecordOptions,
    tx: &mpsc::Sender<Input>,
    stop: &watch::Sender<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::io::AsyncBufReadExt as _;
    let mut tasks = Vec::new();
    let lines_to_markers = |reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                            tx: mpsc::Sender<Input>| async move {
        let mut lines = tokio::io::BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let sent = match markers::parse_line(&line, system::monotonic_ns()) {
                Some(Ok(m)) => tx.send(Input::Marker(m)).await.is_ok(),
                Some(Err(e)) => {
                    eprintln!("bar-probe: ignored marker: {e}");
                    true
                }
                None => true,
            };
            if !sent {
                return;
            }
        }
    };
    match markers::Listener::bind() {
        Ok(listener) => {
            let tx = tx.clone();
            let mut stop = stop.subscribe();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        conn = listener.listener.accept() => {
                            if let Ok((stream, _)) = conn {
                                tokio::spawn(lines_to_markers(Box::new(stream), tx.clone()));
                            }
                        }
                        _ = stop.changed() => return,
                    }
                }
            }));
        }
        Err(e) if !opts.quiet => {
            eprintln!(
                "bar-probe: warning: no live markers (`bar-probe mark`) for this recording: cannot listen in {}: {e}",
                markers::DIR
            );
        }
        Err(_) => {}
    }
    if let Some(fifo) = &opts.marker_fifo {
        let tx = tx.clone();
        let fifo = fifo.clone();
        tasks.push(tokio::spawn(async move {
            // Reopen after each writer closes, so several tools can write in turn.
            loop {
                match tokio::net::unix::pipe::OpenOptions::new()
                    .read_write(true)
                    .open_receiver(&fifo)
                {
                    Ok(rx) => lines_to_markers(Box::new(rx), tx.clone()).await,
                    Err(e) => {
                        eprintln!(
                            "bar-probe: warning: cannot read markers from {}: {e}",
                            fifo.display()
                        );
                        return;
                    }
                }
            }
        }));
    }
    tasks
}

/// Refuses a recording where a family the user asked for cannot attach; says which families
/// fell back or were skipped.
fn check_attached(status: &[FamilyStatus], opts: &RecordOptions) -> anyhow::Result<()> {
    for st in status {
        if st.method.is_some() {
            continue;
        }
        let why: Vec<String> = st
            .rejected
            .iter()
            .map(|r| format!("{}: {}", r.attach, r.reason))
            .collect();
        if opts.explicit {
            bail!("cannot record {}: {}", st.family, why.join("; "));
        }
        eprintln!(
            "bar-probe: warning: skipping {}: {}",
            st.family,
            why.join("; ")
        );
    }
    if status.iter().all(|s| s.method.is_none()) {
        bail!("no event family could be attached on this kernel");
    }
    if !opts.quiet {
        for st in status {
            let Some(m) = &st.method else { continue };
            match st
                .rejected
                .iter()
                .find(|r| !r.reason.starts_with("not needed"))
            {
                Some(r) => eprintln!(
                    "bar-probe: {} via {m} (fell back: {} {})",
                    st.family, r.attach, r.reason
                ),
                None => eprintln!("bar-probe: {} via {m}", st.family),
            }
        }
    }
    Ok(())
}

fn meta(
    opts: &RecordOptions,
    status: &[FamilyStatus],
    target: Option<proto::Target>,
    cgroup: String,
    cpus: &[u32],
) -> proto::Meta {
    proto::Meta {
        bar_version: env!("CARGO_PKG_VERSION").to_owned(),
        command_line: opts.command_line.clone(),
        hostname: system::hostname(),
        kernel_release: system::kernel_release(),
        boot_id: system::boot_id(),
        cpu_count: cpus.len() as u32,
        monotonic_to_realtime_ns: system::monotonic_to_realtime_offset(),
        start_ns: system::monotonic_ns(),
        target,
        scope: match opts.scope {
            Scope::Pid(_) => "pid",
            Scope::All => "all",
            Scope::Cgroup(_) => "cgroup",
        }
        .to_owned(),
        cgroup,
        families: status
            .iter()
            .map(|s| proto::FamilyStatus {
                name: s.family.name().to_owned(),
                method: s.method.clone().unwrap_or_default(),
                rejected: s
                    .rejected
                    .iter()
                    .map(|r| proto::Rejected {
                        attach: r.attach.clone(),
                        reason: r.reason.clone(),
                    })
                    .collect(),
            })
            .collect(),
        frequency: opts.frequency,
        min_block_ns: opts.min_block_ns,
        numa_nodes: system::numa_nodes(),
        numa_balancing: system::numa_balancing().map_or(-1, |v| v as i32),
        stack_map_entries: opts.stack_map_entries,
        null_mode: opts.null_mode,
        aggregate_window_ns: opts.aggregate.map_or(0, |w| w.as_nanos() as u64),
    }
}

async fn wait_for_stop(
    duration: Option<Duration>,
    pidfd: Option<OwnedFd>,
    full: oneshot::Receiver<()>,
) -> anyhow::Result<String> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let exited = async {
        match pidfd {
            Some(fd) => {
                // SAFETY: the AsyncFd owns the pidfd for its whole life.
                let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?;
                let _ = fd.readable().await?;
                Ok::<(), std::io::Error>(())
            }
            None => std::future::pending().await,
        }
    };
    let sleep = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let full = async {
        // A dropped sender (aggregator gone) is not a size stop: wait for another reason.
        if full.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    Ok(tokio::select! {
        () = sleep => "duration",
        _ = int.recv() => "signal",
        _ = term.recv() => "signal",
        r = exited => { r?; "target-exited" }
        () = full => "max-size",
    }
    .to_owned())
}

/// Receives batches, keeps the capture growing, prints the live status.
struct Aggregator {
    writer: Writer,
    symbolizer: Symbolizer,
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
}

const FLUSH_EVERY: Duration = Duration::from_millis(250);
const FLUSH_AT: usize = 65536;
const EVENTS_PER_BLOCK: usize = 8192;

impl Aggregator {
    fn new(
        writer: Writer,
        symbolizer: Symbolizer,
        counters: PerCpuArray<MapData, u64>,
        (cpus, quiet, max_size): (usize, bool, Option<u64>),
        full_tx: oneshot::Sender<()>,
    ) -> Self {
        let now = Instant::now();
        Self {
            writer,
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
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Input>) -> std::io::Result<((u64, u64), Writer)> {
        while let Some(input) = rx.blocking_recv() {
            match input {
                Input::Batch(batch) => self.take(batch),
                Input::Marker(m) => {
                    if !self.quiet {
                        let what = if m.end { "ends" } else { "starts" };
                        eprintln!("\nbar-probe: phase {} {what}", m.name);
                    }
                    self.writer.write(Body::Marker(m))?;
                }
                Input::Tick => {}
            }
            if self.last_flush.elapsed() >= FLUSH_EVERY || self.pending.len() >= FLUSH_AT {
                self.flush()?;
            }
            self.status();
        }
        self.flush()?;
        self.write_counters()?;
        if !self.quiet && self.tty {
            eprintln!();
        }
        let lost = self.lost_per_cpu.iter().sum();
        Ok(((self.events, lost), self.writer))
    }

    /// Name and memory map of a process the first time it is seen, while it surely exists.
    fn first_sight(&mut self, pid: u32) {
        if self.seen_pids.insert(pid) {
            self.symbolizer.note_process(pid);
            self.new_processes.push(proto::Process {
                pid,
                comm: symbolize::process_comm(pid).unwrap_or_default(),
                since_ns: 0,
            });
        }
    }

    fn take(&mut self, batch: Batch) {
        if let Some(l) = self.lost_per_cpu.get_mut(batch.cpu as usize) {
            *l += batch.lost;
        }
        self.malformed += batch.malformed;
        for r in batch.records {
            let h = *r.header();
            self.first_sight(h.pid);
            if let Record::Exec(_) = r {
                // A new program: new memory map and name from now on.
                self.symbolizer.exec(h.pid, h.ts_ns);
                self.new_processes.push(proto::Process {
                    pid: h.pid,
                    comm: symbolize::process_comm(h.pid).unwrap_or_default(),
                    since_ns: h.ts_ns,
                });
                continue;
            }
            if let Some(c) = self.per_kind.get_mut(h.kind as usize) {
                *c += r.count();
            }
            self.pending.push((batch.cpu, r));
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.last_flush = Instant::now();
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
                    generation: self.symbolizer.generation(h.pid, h.ts_ns),
                    user: h.user_stack,
                    kernel: h.kernel_stack,
                }
            })
            .collect();
        let stack_ids = self.symbolizer.resolve(&raws);
        let (frames, stacks) = self.symbolizer.interner.take_new();
        if !self.new_processes.is_empty() {
            self.writer.write(Body::Processes(proto::Processes {
                processes: std::mem::take(&mut self.new_processes),
            }))?;
        }
        if !frames.is_empty() {
            self.writer.write(Body::Frames(proto::Frames { frames }))?;
        }
        if !stacks.is_empty() {
            self.writer.write(Body::Stacks(proto::Stacks { stacks }))?;
        }
        let events: Vec<proto::Event> = self
            .pending
            .drain(..)
            .zip(stack_ids)
            .map(|((cpu, r), stack)| to_event(cpu, &r, stack))
            .collect();
        // Blocks of bounded size, so that --max-size is kept to within one block.
        for chunk in events.chunks(EVENTS_PER_BLOCK) {
            let represented: u64 = chunk.iter().map(|e| e.count.max(1)).sum();
            if self.full_tx.is_none() {
                self.discarded += represented;
                continue;
            }
            self.events += represented;
            self.writer.write(Body::Events(proto::Events {
                events: chunk.to_vec(),
            }))?;
            if let Some(max) = self.max_size
                && self.writer.size() >= max
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
        self.write_counters()
    }

    fn write_counters(&mut self) -> std::io::Result<()> {
        let mut sums = vec![0u64; counter::COUNT as usize];
        for (i, sum) in sums.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(i as u32), 0) {
                *sum = values.iter().sum();
            }
        }
        let d = counter::DROPPED as usize;
        self.writer.write(Body::Counters(proto::Counters {
            lost_per_cpu: self.lost_per_cpu.clone(),
            dropped_per_kind: sums[d..d + kind::COUNT as usize].to_vec(),
            malformed: self.malformed,
            offcpu_map_full: sums[counter::OFFCPU_MAP_FULL as usize],
            tcp_map_full: sums[counter::TCP_MAP_FULL as usize],
            discarded_at_max_size: self.discarded,
            ts: system::monotonic_ns(),
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
        Record::Exec(_) => None,
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
