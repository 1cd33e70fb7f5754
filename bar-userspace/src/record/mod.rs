//! A recording session: wires the stages together. Programs are loaded and attached (probe),
//! per-CPU readers drain the perf buffers (collect), and one aggregator thread resolves stacks
//! (symbolize) and appends blocks to the capture (store) while the target lives. The session
//! ends at the duration, on Ctrl-C/SIGTERM, when the target exits or when the capture reaches
//! its size limit, and always leaves a complete capture.

mod aggregator;
mod dump;
mod load;
mod ring;
mod trigger;

pub use self::{
    load::Load,
    ring::{DEFAULT_SIZE as DEFAULT_RING_SIZE, RingOptions},
    trigger::{Rule as TriggerRule, parse_rule as parse_trigger},
};

use self::aggregator::{Aggregator, Input, Sink, UnwindLink};

use bar_ebpf_common::Family;
use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, StackTraceMap};
use bar_ebpf_common::maps;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
};

use crate::{
    capture::{Body, Writer, proto},
    collect::{self, PendingMaps, ReaderOptions},
    markers,
    phases::{self, WallPhase},
    probe::{self, FamilyStatus, Method, ProbeOptions},
    push::{PushOptions, Pusher},
    symbolize::{ExecMaps, Symbolizer},
    sys::{command, files::Dir, foreign, sched, user},
    system, target, unwind,
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
    /// Keep only the last stretch of events, in memory, and write it out on demand and at the
    /// end (the flight recorder).
    pub ring: Option<RingOptions>,
    /// Profiling backends to push intervals to while recording.
    pub push: Option<PushOptions>,
    /// With a ring: rates of families that make it write itself out.
    pub ring_triggers: Vec<TriggerRule>,
    /// How user stacks are walked.
    pub unwind: unwind::Mode,
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
    /// The output folder, holding the capture.
    pub dir: Dir,
    pub stop_reason: String,
    pub status: Vec<FamilyStatus>,
    pub events: u64,
    pub lost: u64,
    /// How pushing to each backend went.
    pub push: Vec<proto::Push>,
    /// Phase commands (`bar-probe run`) that could not run or failed, one line each.
    pub command_failures: Vec<String>,
}

/// The capture's name in the output folder.
pub const CAPTURE: &str = "capture.bar";

/// Creates (or checks) the output folder and that it can be written, before anything is
/// loaded.
fn prepare_out_dir(path: &Path) -> anyhow::Result<Dir> {
    let dir = Dir::create(path)?;
    let probe = ".bar-write-test";
    if let Err(e) = dir.create_file(probe) {
        dir.remove_created();
        return Err(anyhow::Error::new(e)
            .context(format!("cannot write to output folder {}", path.display())));
    }
    let _ = dir.remove(probe);
    Ok(dir)
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
    // Ahead of the recorded load from here on: loading, recording, and then rendering and
    // exiting, so that a busy machine cannot stretch --duration (the recording's other
    // threads do the same).
    if let Err(e) = sched::run_ahead()
        && !opts.quiet
    {
        eprintln!(
            "bar-probe: warning: cannot run ahead of the recorded load ({e}): on a busy machine the recording may start and stop late"
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
    let fifo = match &opts.marker_fifo {
        Some(path) => Some(foreign::open_fifo(path)?),
        None => None,
    };
    let dir = prepare_out_dir(&opts.out_dir)?;
    let recorded = record_into(
        opts,
        &dir,
        fifo,
        (target_tgid, pidfd, target_meta),
        (cgroup, cgroup_id),
        on_start,
    );
    // A start that failed leaves nothing behind; a recording that began keeps its capture.
    if recorded.is_err() && !dir.has_file(CAPTURE) {
        dir.remove_created();
    }
    recorded
}

/// Records into `dir`, once the target and the output folder are known to be fine.
fn record_into(
    opts: &RecordOptions,
    dir: &Dir,
    fifo: Option<OwnedFd>,
    (target_tgid, pidfd, target_meta): (u32, Option<OwnedFd>, Option<proto::Target>),
    (cgroup, cgroup_id): (String, u64),
    on_start: impl FnOnce(),
) -> anyhow::Result<Recorded> {
    // The target's unwind tables are built first, to size the kernel's array for them.
    let prebuilt = match (&opts.scope, opts.unwind) {
        (Scope::Pid(pid), unwind::Mode::Tables) => Some(unwind::loader::prebuild(*pid)),
        _ => None,
    };
    let unwind_rows = match (opts.unwind, &prebuilt) {
        (unwind::Mode::FramePointers, _) => 0,
        (unwind::Mode::Tables, Some(p)) => unwind::process_rows(p.rows()),
        (unwind::Mode::Tables, None) => unwind::SYSTEM_ROWS,
    };
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
        unwind_rows,
    })?;
    let unwind_method = match (&loaded.unwind, opts.unwind) {
        (Ok(()), _) => "tables".to_owned(),
        (Err(_), unwind::Mode::FramePointers) => "frame-pointers".to_owned(),
        (Err(why), unwind::Mode::Tables) => format!("frame-pointers: {why}"),
    };
    let (unwinder, unwind_warning) = start_unwinder(&mut loaded, opts, prebuilt)?;
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
    let user_stacks_capacity = opts.stack_map_entries;
    // DWARF is read for one process's binaries, not for every binary of a host: those of a
    // host with debug builds took hundreds of MB to read.
    let dwarf = matches!(opts.scope, Scope::Pid(_));
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
    let pending = PendingMaps {
        starts: take(&mut loaded.ebpf, maps::OFFCPU_START)?,
        switched_in: take(&mut loaded.ebpf, maps::SWITCHED_IN)?,
        fault_batch: take(&mut loaded.ebpf, maps::FAULT_BATCH)?,
        offcpu_batch: take(&mut loaded.ebpf, maps::OFFCPU_BATCH)?,
    };
    let cpus = system::online_cpus();
    let capture_path = dir.join(CAPTURE);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::channel::<Input>(4096);
    let (stop_tx, stop_rx) = watch::channel(false);
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // At exec, while the program surely runs: the unwind tables' loader is told, and the
    // symbolizer's map is read.
    let exec_maps = std::sync::Arc::new(ExecMaps::default());
    let on_exec: collect::ExecHook = {
        let maps = std::sync::Arc::clone(&exec_maps);
        let loader = unwinder.as_ref().map(|u| u.tx.clone());
        std::sync::Arc::new(move |pid, ts| {
            if let Some(tx) = &loader {
                let _ = tx.send(unwind::service::Request::Exec(pid));
            }
            maps.read(pid, ts);
        })
    };
    let outcome = rt.block_on(async {
        // Buffers first, programs second: no event is produced with nowhere to go.
        let mut readers = collect::spawn_readers(
            &events,
            &cpus,
            ReaderOptions {
                pages: opts.buffer_pages,
                interval: Duration::from_millis(10),
                idle_interval: Duration::from_millis(250),
            },
            Some(on_exec),
            tx.clone(),
            stop_rx.clone(),
        )?;
        readers.push(collect::spawn_pending(
            pending,
            opts.min_block_ns,
            tx.clone(),
            stop_rx.clone(),
        )?);
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
        for e in loaded.attach_process_tracking() {
            eprintln!("bar-probe: warning: {e}");
        }
        loaded.release_kernel_types();
        let attached = check_attached(&status, opts);
        if let (Ok(()), Some(w)) = (&attached, &unwind_warning) {
            eprintln!("{w}");
        }
        let writer = attached.and_then(|()| {
            let meta = meta(opts, &status, target_meta, cgroup, &cpus, &unwind_method);
            let offset = meta.monotonic_to_realtime_ns;
            let mut pusher = match &opts.push {
                Some(p) => Some(Pusher::start(p, &meta).context("cannot start the push threads")?),
                None => None,
            };
            let mut sink = match opts.ring {
                Some(ring) => Sink::Ring(Box::new(ring::Ring::new(ring, meta))),
                None => Sink::File(
                    dir.create_file(CAPTURE)
                        .and_then(|file| Writer::new(file, capture_path.clone(), meta))
                        .with_context(|| format!("cannot write {}", capture_path.display()))?,
                ),
            };
            // Phases given as a file go in as markers, like live ones.
            for m in phases::markers_of(&opts.phases, offset) {
                let body = Body::Marker(m);
                if let Some(p) = &mut pusher {
                    p.block(&body);
                }
                sink.write(body)?;
            }
            let dumper = match opts.ring {
                Some(_) => Some(dump::Dumper::spawn()?),
                None => None,
            };
            Ok((sink, dumper, pusher))
        });
        let (sink, dumper, pusher) = match writer {
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
        let triggers = opts
            .ring
            .filter(|_| !opts.ring_triggers.is_empty())
            .map(|r| {
                trigger::Triggers::new(opts.ring_triggers.clone(), opts.out_dir.clone(), r.window)
            });
        let unwind_link = unwinder.as_ref().map(|s| UnwindLink {
            tx: s.tx.clone(),
            stats: std::sync::Arc::clone(&s.stats),
        });
        // blazesym's symbolizer is not Send: it is created on the thread that uses it.
        let (sighted_tx, sighted_rx) = oneshot::channel::<()>();
        let agg_thread = std::thread::Builder::new()
            .name("bar-aggregate".into())
            .spawn(move || {
                let _ = sched::run_ahead();
                let mut agg = Aggregator::new(
                    sink,
                    dumper,
                    Symbolizer::new(stacks, user_stacks, user_stacks_capacity, dwarf),
                    counters,
                    agg_opts,
                    full_tx,
                    pusher,
                );
                agg.triggers = triggers;
                agg.unwind = unwind_link;
                agg.symbolizer.use_exec_maps(exec_maps);
                // The target's name and memory map now: a short-lived process may be gone by
                // the time its first events arrive.
                if let Some(pid) = target {
                    agg.first_sight(pid, 0);
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
        let mut marker_tasks = spawn_marker_sources(opts, fifo, &tx, &stop_tx);
        if opts.ring.is_some() {
            marker_tasks.extend(dump::spawn_sources(&opts.out_dir, &tx, &stop_tx));
        }
        if !opts.plan.is_empty() {
            marker_tasks.push(tokio::spawn(run_plan(
                opts.plan.clone(),
                tx.clone(),
                failures.clone(),
            )));
        }
        drop(tx);
        if !opts.quiet {
            let what = match &opts.scope {
                Scope::Pid(p) => format!("pid {p}"),
                Scope::All => "all processes".into(),
                Scope::Cgroup(c) => format!("cgroup {}", c.display()),
            };
            match opts.ring {
                Some(r) => eprintln!(
                    "bar-probe: recording {what}, keeping the last {} (`bar-probe dump` or SIGUSR1 writes it out; Ctrl-C writes it into {} and stops)",
                    humantime::format_duration(r.window),
                    opts.out_dir.display()
                ),
                None => eprintln!(
                    "bar-probe: recording {what} into {} (Ctrl-C to stop)",
                    opts.out_dir.display()
                ),
            }
        }
        on_start();
        let reason = wait_for_stop(opts.duration, pidfd, full_rx).await?;
        // Detach first so nothing new is produced, then let every reader drain once more.
        // Detaching takes a while (each link waits for the kernel to retire it: about 0.4 s
        // for every family here) and the target goes on meanwhile: on another thread, so that
        // the readers keep draining, rather than let the buffers fill and count as lost what
        // the target did in that time.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = sched::run_ahead();
            drop(loaded);
        })
        .await;
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
    if let Some(u) = unwinder {
        // The aggregator, which sends it requests, has ended or ends now.
        std::thread::spawn(move || u.join());
    }
    let (events, lost, push) = agg_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the aggregator thread failed"))?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write {}: {e}; the recording stopped there, and what was written reads with `bar-probe report`",
                capture_path.display()
            )
        })
        .and_then(|(summary, sink, pusher)| {
            let now = system::monotonic_ns();
            // The last interval goes out too; the senders get a while to deliver what they
            // hold, which does not count as recording time.
            let push = pusher.map(|p| p.finish(now)).unwrap_or_default();
            match sink {
                Sink::File(writer) => {
                    let trailer = proto::Trailer {
                        end_ns: now,
                        events: summary.0,
                        stop_reason: reason.clone(),
                        push: push.clone(),
                        ..Default::default()
                    };
                    writer
                        .finish(trailer)
                        .with_context(|| format!("cannot finish {}", capture_path.display()))?;
                    Ok((summary.0, summary.1, push))
                }
                // The flight recorder ends with its last ring.
                Sink::Ring(mut ring) => {
                    ring.seal(now)?;
                    let events = dump::write_capture(
                        &ring.snapshot(now),
                        dir,
                        CAPTURE,
                        &reason,
                        push.clone(),
                    )
                    .with_context(|| format!("cannot write {}", capture_path.display()))?;
                    Ok((events, summary.1, push))
                }
            }
        })?;
    Ok(Recorded {
        capture: capture_path,
        dir: dir.clone(),
        stop_reason: reason,
        status,
        events,
        lost,
        push,
        command_failures: std::mem::take(
            &mut *failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ),
    })
}

/// Starts the loader of unwind tables when the programs walk with them, with the target's
/// tables in place. Says why when they cannot; a target whose tables could not be loaded is
/// said once the recording is sure to start (the second value).
fn start_unwinder(
    loaded: &mut probe::Loaded,
    opts: &RecordOptions,
    prebuilt: Option<unwind::loader::Prebuilt>,
) -> anyhow::Result<(Option<unwind::service::Service>, Option<String>)> {
    if let Err(why) = &loaded.unwind {
        if opts.unwind == unwind::Mode::Tables && !opts.quiet {
            eprintln!("bar-probe: note: user stacks are walked by frame pointer only: {why}");
        }
        return Ok((None, None));
    }
    let kernel = unwind::kernel::KernelTables::take(&mut loaded.ebpf)?;
    let capacity = kernel.capacity();
    let mut loader = unwind::loader::Loader::new(kernel, capacity, prebuilt);
    let mut warning = None;
    if let Scope::Pid(pid) = opts.scope
        && let Err(e) = loader.load(pid)
    {
        warning = Some(format!(
            "bar-probe: warning: {e}; its user stacks are walked by frame pointer"
        ));
    }
    let service = unwind::service::Service::spawn(loader, u64::from(capacity))?;
    Ok((Some(service), warning))
}

/// Times the phases of `bar-probe run`: a marker at the start of each, its command (if any) run
/// for its duration in its own process group (as the sudo user, under sudo), and an end marker
/// after the last. A command that cannot run or ends with a failure before its phase does is
/// said at once and noted in `failures`.
async fn run_plan(
    plan: Vec<PlannedPhase>,
    tx: mpsc::Sender<Input>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let marker = |name: &str, end| {
        Input::Marker(proto::Marker {
            name: name.to_owned(),
            ts: system::monotonic_ns(),
            end,
        })
    };
    let identity = user::Identity::of_sudo_user();
    let fail = |msg: String| {
        eprintln!("bar-probe: {msg}");
        failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(msg);
    };
    let mut last = None;
    for phase in plan {
        if tx.send(marker(&phase.name, false)).await.is_err() {
            return;
        }
        let child = phase.command.as_ref().and_then(|c| {
            let mut cmd = tokio::process::Command::new("sh");
            cmd.arg("-c").arg(c).process_group(0).kill_on_drop(true);
            if let Some(id) = identity.clone() {
                cmd.envs(id.env());
                // SAFETY: between fork and exec the closure only makes system calls.
                unsafe { cmd.pre_exec(move || id.become_it()) };
            }
            cmd.spawn()
                .map_err(|e| fail(format!("phase {}: cannot run `{c}`: {e}", phase.name)))
                .ok()
                .map(|child| (child, c))
        });
        let sleep = tokio::time::sleep(phase.duration);
        let Some((mut child, command)) = child else {
            sleep.await;
            last = Some(phase.name);
            continue;
        };
        tokio::pin!(sleep);
        tokio::select! {
            () = &mut sleep => {
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
            status = child.wait() => {
                if let Ok(s) = status && !s.success() {
                    fail(format!(
                        "phase {}: `{command}` {}",
                        phase.name,
                        command::exit_text(s)
                    ));
                }
                sleep.await;
            }
        }
        last = Some(phase.name);
    }
    if let Some(name) = last {
        let _ = tx.send(marker(&name, true)).await;
    }
}

/// Starts the live marker sources: this recording's socket (for `bar-probe mark`) and the
/// `--marker-fifo`, if any. Both turn lines into markers stamped on arrival.
fn spawn_marker_sources(
    opts: &RecordOptions,
    fifo: Option<OwnedFd>,
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
    match markers::Listener::bind(markers::socket_path(std::process::id())) {
        Ok(listener) => {
            let tx = tx.clone();
            // Only root and the user the recording is for may set its phases.
            tasks.push(listener.serve(
                user::trusted_owner,
                |uid| {
                    eprintln!(
                        "bar-probe: warning: ignored markers from uid {uid}: only root and the recording's user may mark it"
                    );
                },
                stop.subscribe(),
                move |stream| lines_to_markers(Box::new(stream), tx.clone()),
            ));
        }
        Err(e) if !opts.quiet => {
            eprintln!(
                "bar-probe: warning: no live markers (`bar-probe mark`) for this recording: cannot listen in {}: {e}",
                markers::DIR
            );
        }
        Err(_) => {}
    }
    if let (Some(fd), Some(path)) = (fifo, &opts.marker_fifo) {
        let tx = tx.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            // Opened for writing too: writers may come and go without an end of file.
            match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                Ok(rx) => lines_to_markers(Box::new(rx), tx).await,
                Err(e) => eprintln!(
                    "bar-probe: warning: cannot read markers from {}: {e}",
                    path.display()
                ),
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
            match st.rejected.iter().find(|r| r.tried) {
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
    unwind_method: &str,
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
        // Set in each dump of the ring.
        ring_window_ns: 0,
        ring_size_bytes: 0,
        ring_cut_by_size: false,
        ring_held_bytes: 0,
        unwind: unwind_method.to_owned(),
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
    // The aggregator says when the capture is full; it is gone before the end only when it
    // could not write (a full disk...): then there is no point in recording on, and its error
    // is what the recording ends with.
    let full = async { full.await.is_ok() };
    Ok(tokio::select! {
        () = sleep => "duration",
        _ = int.recv() => "signal",
        _ = term.recv() => "signal",
        r = exited => { r?; "target-exited" }
        ok = full => if ok { "max-size" } else { "write-error" },
    }
    .to_owned())
}
