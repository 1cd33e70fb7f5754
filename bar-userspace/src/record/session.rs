//! One recording, from loading the programs to the capture's trailer, in steps: the programs
//! are loaded (with the unwinder their tables need) and the maps the collector reads are taken
//! from them; `start` puts the readers in place, attaches, opens the capture and starts the
//! aggregator; `stop` detaches and lets the readers drain; `finish` writes the trailer.

use std::{
    os::fd::OwnedFd,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, StackTraceMap};
use bar_ebpf_common::{UserStack, maps};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    CAPTURE, RecordOptions, Recorded, Scope,
    aggregator::{Aggregator, Input, Sink, UnwindLink},
    check_attached, dump, meta, plan, ring, spawn_marker_sources, trigger,
};
use crate::{
    analyze::phases,
    capture::{Body, Writer, proto},
    collect::{self, PendingMaps, ReaderOptions},
    probe::{self, FamilyStatus, ProbeOptions},
    push::Pusher,
    symbolize::{ExecMaps, Symbolizer},
    sys::{files::Dir, sched},
    system, unwind,
};

/// What is recorded: the target process (its pid, a pidfd to see it exit, what it is) or
/// every process, and the cgroup they are limited to.
pub(super) struct Target {
    pub tgid: u32,
    pub pidfd: Option<OwnedFd>,
    pub meta: Option<proto::Target>,
    pub cgroup: String,
    pub cgroup_id: u64,
}

/// The programs, loaded and not yet attached, with the unwinder their tables need.
struct Probes {
    loaded: probe::Loaded,
    /// How user stacks are walked, for the capture: `tables`, or `frame-pointers` and why.
    unwind_method: String,
    unwinder: Option<unwind::service::Service>,
    /// Said once the recording is sure to start.
    unwind_warning: Option<String>,
}

impl Probes {
    fn load(opts: &RecordOptions, target: &Target) -> anyhow::Result<Self> {
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
            target_tgid: target.tgid,
            cgroup_id: target.cgroup_id,
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
        Ok(Self {
            loaded,
            unwind_method,
            unwinder,
            unwind_warning,
        })
    }
}

/// The maps of the object the collector reads, taken out of it.
struct KernelMaps {
    events: MapData,
    stacks: StackTraceMap<MapData>,
    user_stacks: BpfHashMap<MapData, u32, UserStack>,
    counters: PerCpuArray<MapData, u64>,
    /// With `--aggregate`: the window, the sums and their epoch.
    sums: Option<(Duration, Map, Map)>,
    pending: PendingMaps,
}

impl KernelMaps {
    fn take(loaded: &mut probe::Loaded, opts: &RecordOptions) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            loaded
                .ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        // The perf buffers are bar's own (collect::ring), put into the map by the readers.
        let events = match take(maps::EVENTS)? {
            Map::PerfEventArray(data) => data,
            _ => bail!("map {} is not a perf event array", maps::EVENTS),
        };
        let stacks = StackTraceMap::try_from(take(maps::STACKS)?)?;
        let user_stacks = BpfHashMap::try_from(take(maps::USER_STACKS)?)?;
        let counters = PerCpuArray::try_from(take(maps::COUNTERS)?)?;
        let sums = match opts.aggregate {
            Some(window) => Some((window, take(maps::SUMS)?, take(maps::SUM_EPOCH)?)),
            None => None,
        };
        let pending = PendingMaps {
            starts: take(maps::OFFCPU_START)?,
            switched_in: take(maps::SWITCHED_IN)?,
            fault_batch: take(maps::FAULT_BATCH)?,
            offcpu_batch: take(maps::OFFCPU_BATCH)?,
        };
        Ok(Self {
            events,
            stacks,
            user_stacks,
            counters,
            sums,
            pending,
        })
    }
}

/// Decoded records that may wait for the aggregator (`collect::Backlog`): at 96 bytes a
/// record, 350 thousand, two to three seconds of a fork storm's events here (8.5 million a
/// minute). Beyond, the kernel's buffers hold what comes.
const BACKLOG_BYTES: u32 = 32 << 20;

/// What the aggregator thread ends with: the events and losses it counted, where it wrote
/// them, and the pusher to finish.
type AggregatorEnd = std::io::Result<((u64, u64), Sink, Option<Pusher>)>;

/// A recording under way: what `stop` ends, in order.
struct Running {
    loaded: probe::Loaded,
    /// The perf event array: the kernel empties one when its last descriptor in user space
    /// closes, and the programs' records would then go nowhere. Held to the end.
    events: MapData,
    readers: Vec<JoinHandle<()>>,
    backlog: collect::Backlog,
    ticker: JoinHandle<()>,
    marker_tasks: Vec<JoinHandle<()>>,
    stop_tx: watch::Sender<bool>,
    status: Vec<FamilyStatus>,
    aggregator: std::thread::JoinHandle<AggregatorEnd>,
    unwinder: Option<unwind::service::Service>,
}

/// Records into `dir`, once the target and the output folder are known to be fine.
pub(super) fn record_into(
    opts: &RecordOptions,
    dir: &Dir,
    fifo: Option<OwnedFd>,
    mut target: Target,
    on_start: impl FnOnce(),
) -> anyhow::Result<Recorded> {
    let mut probes = Probes::load(opts, &target)?;
    let kernel_maps = KernelMaps::take(&mut probes.loaded, opts)?;
    let capture_path = dir.join(CAPTURE);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pidfd = target.pidfd.take();
    let (reason, (status, aggregator, unwinder)) = rt.block_on(async {
        let (running, full_rx) =
            start(opts, dir, fifo, target, probes, kernel_maps, &failures).await?;
        on_start();
        let reason = wait_for_stop(opts.duration, pidfd, full_rx).await?;
        anyhow::Ok((reason, stop(running).await))
    })?;
    if let Some(u) = unwinder {
        // The aggregator, which sends it requests, has ended or ends now.
        std::thread::spawn(move || u.join());
    }
    let (events, lost, push) = finish(aggregator, &reason, dir, &capture_path)?;
    Ok(Recorded {
        capture: capture_path,
        dir: dir.clone(),
        stop_reason: reason,
        status,
        events,
        lost,
        push,
        command_failures: std::mem::take(
            &mut *failures.lock().unwrap_or_else(PoisonError::into_inner),
        ),
    })
}

/// Buffers first, programs second (no event is produced with nowhere to go), then the capture
/// and the aggregator, then the sources of markers and ticks. Returns once the target's map
/// has been read, so that whoever waits for "recording" may let it run to its end at once.
async fn start(
    opts: &RecordOptions,
    dir: &Dir,
    fifo: Option<OwnedFd>,
    target: Target,
    probes: Probes,
    kernel_maps: KernelMaps,
    failures: &Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<(Running, oneshot::Receiver<()>)> {
    let Probes {
        mut loaded,
        unwind_method,
        unwinder,
        unwind_warning,
    } = probes;
    let KernelMaps {
        events,
        stacks,
        user_stacks,
        counters,
        sums,
        pending,
    } = kernel_maps;
    let cpus = system::online_cpus();
    let (tx, rx) = mpsc::channel::<Input>(4096);
    let backlog = collect::Backlog::new(BACKLOG_BYTES);
    let (stop_tx, stop_rx) = watch::channel(false);
    let exec_maps = Arc::new(ExecMaps::default());
    let on_exec = exec_hook(&exec_maps, unwinder.as_ref());
    let mut readers = collect::spawn_readers(
        &events,
        &cpus,
        ReaderOptions {
            pages: opts.buffer_pages,
            interval: Duration::from_millis(10),
            idle_interval: Duration::from_millis(250),
        },
        Some(on_exec),
        &backlog,
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
    let opened = attached.and_then(|()| {
        let meta = meta(
            opts,
            &status,
            target.meta,
            target.cgroup,
            &cpus,
            &unwind_method,
        );
        open_sink(opts, dir, meta)
    });
    let (sink, dumper, pusher) = match opened {
        Ok(w) => w,
        Err(e) => return Err(abandon(loaded, &stop_tx, readers, e).await),
    };
    let (full_tx, full_rx) = oneshot::channel::<()>();
    let agg_opts = (cpus.len(), opts.quiet, opts.max_size);
    let first = match opts.scope {
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
        stats: Arc::clone(&s.stats),
    });
    // DWARF is read for one process's binaries, not for every binary of a host: those of a
    // host with debug builds took hundreds of MB to read.
    let dwarf = matches!(opts.scope, Scope::Pid(_));
    let inlined = opts.inlined;
    let user_stacks_capacity = opts.stack_map_entries;
    // blazesym's symbolizer is not Send: it is created on the thread that uses it.
    let (sighted_tx, sighted_rx) = oneshot::channel::<()>();
    let aggregator = std::thread::Builder::new()
        .name("bar-aggregate".into())
        .spawn(move || {
            let _ = sched::run_ahead();
            let mut agg = Aggregator::new(
                sink,
                dumper,
                Symbolizer::new(stacks, user_stacks, user_stacks_capacity, dwarf, inlined),
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
            if let Some(pid) = first {
                agg.first_sight(pid, 0);
            }
            agg.symbolizer.prepare_kernel();
            let _ = sighted_tx.send(());
            agg.run(rx)
        })?;
    // Whoever waits for "recording" may let the target run to its end at once: its map
    // must be read before that is said (and kallsyms parsed, not to compete with it).
    let _ = sighted_rx.await;
    let (ticker, marker_tasks) = spawn_sources(opts, fifo, tx, &stop_tx, failures);
    if !opts.quiet {
        say_recording(opts);
    }
    let running = Running {
        loaded,
        events,
        readers,
        backlog,
        ticker,
        marker_tasks,
        stop_tx,
        status,
        aggregator,
        unwinder,
    };
    Ok((running, full_rx))
}

/// Ends a start that failed once the readers ran: the programs go first, then the readers
/// drain what came in meanwhile.
async fn abandon(
    loaded: probe::Loaded,
    stop_tx: &watch::Sender<bool>,
    readers: Vec<JoinHandle<()>>,
    error: anyhow::Error,
) -> anyhow::Error {
    drop(loaded);
    let _ = stop_tx.send(true);
    for r in readers {
        let _ = r.await;
    }
    error
}

/// At exec, while the program surely runs: the unwind tables' loader is told, and the
/// symbolizer's map is read.
fn exec_hook(
    exec_maps: &Arc<ExecMaps>,
    unwinder: Option<&unwind::service::Service>,
) -> collect::ExecHook {
    let maps = Arc::clone(exec_maps);
    let loader = unwinder.map(|u| u.tx.clone());
    Arc::new(move |pid, ts| {
        if let Some(tx) = &loader {
            let _ = tx.send(unwind::service::Request::Exec(pid));
        }
        maps.read(pid, ts);
    })
}

/// What sends the aggregator more than events: a tick, and the markers (live ones, the
/// flight recorder's dump requests, the phases of `run`). Takes the last sender of events
/// but theirs.
fn spawn_sources(
    opts: &RecordOptions,
    fifo: Option<OwnedFd>,
    tx: mpsc::Sender<Input>,
    stop_tx: &watch::Sender<bool>,
    failures: &Arc<Mutex<Vec<String>>>,
) -> (JoinHandle<()>, Vec<JoinHandle<()>>) {
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
    let mut marker_tasks = spawn_marker_sources(opts, fifo, &tx, stop_tx);
    if opts.ring.is_some() {
        marker_tasks.extend(dump::spawn_sources(&opts.out_dir, &tx, stop_tx));
    }
    if !opts.plan.is_empty() {
        marker_tasks.push(tokio::spawn(plan::run(
            opts.plan.clone(),
            tx.clone(),
            Arc::clone(failures),
        )));
    }
    (ticker, marker_tasks)
}

/// Where the events go (the capture file, or the flight recorder's ring), with the phases of
/// a phase file as its first markers; the dumper of a ring; the pusher, if any.
fn open_sink(
    opts: &RecordOptions,
    dir: &Dir,
    meta: proto::Meta,
) -> anyhow::Result<(Sink, Option<dump::Dumper>, Option<Pusher>)> {
    let offset = meta.monotonic_to_realtime_ns;
    let mut pusher = match &opts.push {
        Some(p) => Some(Pusher::start(p, &meta).context("cannot start the push threads")?),
        None => None,
    };
    let capture_path = dir.join(CAPTURE);
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
}

/// The line that says the recording runs, and how it ends.
fn say_recording(opts: &RecordOptions) {
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

/// Detaches first so nothing new is produced, then lets every reader drain once more.
/// Detaching takes a while (each link waits for the kernel to retire it: about 0.4 s for every
/// family here) and the target goes on meanwhile: on another thread, so that the readers keep
/// draining, rather than let the buffers fill and count as lost what the target did in that
/// time.
async fn stop(
    running: Running,
) -> (
    Vec<FamilyStatus>,
    std::thread::JoinHandle<AggregatorEnd>,
    Option<unwind::service::Service>,
) {
    let Running {
        loaded,
        events,
        readers,
        backlog,
        ticker,
        marker_tasks,
        stop_tx,
        status,
        aggregator,
        unwinder,
    } = running;
    let _ = tokio::task::spawn_blocking(move || {
        let _ = sched::run_ahead();
        drop(loaded);
    })
    .await;
    let _ = stop_tx.send(true);
    for r in readers {
        let _ = r.await;
    }
    if backlog.waits() > 0 {
        eprintln!(
            "bar-probe: warning: the collector fell behind {} times, with {} MB of records \
             waiting to be written: the kernel's buffers held what came meanwhile, and what \
             they could not hold is counted as lost",
            backlog.waits(),
            backlog.bytes() >> 20
        );
    }
    let _ = ticker.await;
    for t in marker_tasks {
        t.abort();
        let _ = t.await;
    }
    drop(events);
    (status, aggregator, unwinder)
}

/// Waits for the aggregator and completes the capture: the trailer of a file, or the last
/// ring written out. Returns the events written, those lost, and how pushing went.
fn finish(
    aggregator: std::thread::JoinHandle<AggregatorEnd>,
    reason: &str,
    dir: &Dir,
    capture_path: &Path,
) -> anyhow::Result<(u64, u64, Vec<proto::Push>)> {
    let (summary, sink, pusher) = aggregator
        .join()
        .map_err(|_| anyhow::anyhow!("the aggregator thread failed"))?
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write {}: {e}; the recording stopped there, and what was written reads with `bar-probe report`",
                capture_path.display()
            )
        })?;
    let now = system::monotonic_ns();
    // The last interval goes out too; the senders get a while to deliver what they hold,
    // which does not count as recording time.
    let push = pusher.map(|p| p.finish(now)).unwrap_or_default();
    match sink {
        Sink::File(writer) => {
            let trailer = proto::Trailer {
                end_ns: now,
                events: summary.0,
                stop_reason: reason.to_owned(),
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
            let events =
                dump::write_capture(&ring.snapshot(now), dir, CAPTURE, reason, push.clone())
                    .with_context(|| format!("cannot write {}", capture_path.display()))?;
            Ok((events, summary.1, push))
        }
    }
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

/// Waits for what ends the recording: its duration, Ctrl-C or SIGTERM, the target's exit, or
/// the aggregator (a full capture, or one it could not write). Returns why, as the capture
/// says it.
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
