//! A recording session: wires the stages together. Programs are loaded and attached (probe),
//! per-CPU readers drain the perf buffers (collect), and one aggregator thread resolves stacks
//! (symbolize) and appends blocks to the capture (store) while the target lives. The session
//! ends at the duration, on Ctrl-C/SIGTERM, when the target exits or when the capture reaches
//! its size limit, and always leaves a complete capture.
//!
//! [`record`] checks what can be checked before anything is loaded (privileges, the target,
//! the output folder); session.rs then runs the steps: load, start, wait, stop, finish.

mod aggregator;
mod dump;
mod load;
mod plan;
mod ring;
mod session;
mod trigger;

pub use self::{
    load::Load,
    ring::{DEFAULT_SIZE as DEFAULT_RING_SIZE, RingOptions},
    trigger::{Rule as TriggerRule, parse_rule as parse_trigger},
};

use self::{aggregator::Input, session::Target};

use bar_ebpf_common::Family;
use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::bail;
use tokio::sync::{mpsc, watch};

use crate::{
    analyze::phases::WallPhase,
    capture::proto,
    markers,
    probe::{FamilyStatus, Method},
    push::PushOptions,
    sys::{files::Dir, foreign, sched, user},
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
    /// Whether inlined functions are frames of their own (where DWARF is read: one process).
    pub inlined: bool,
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
    let (tgid, pidfd, meta) = match &opts.scope {
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
    let target = Target {
        tgid,
        pidfd,
        meta,
        cgroup,
        cgroup_id,
    };
    let recorded = session::record_into(opts, &dir, fifo, target, on_start);
    // A start that failed leaves nothing behind; a recording that began keeps its capture.
    if recorded.is_err() && !dir.has_file(CAPTURE) {
        dir.remove_created();
    }
    recorded
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
