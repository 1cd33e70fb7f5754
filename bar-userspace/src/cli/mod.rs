//! The command line: clap definitions and the dispatch of subcommands to the stages (through
//! commands.rs where one wires several). No stage logic lives here.

mod args;
mod commands;
mod parse;

pub use self::args::{DiffArgs, PhaseFile, RecordArgs};

use bar_ebpf_common::Family;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::bail;
use clap::{Parser, Subcommand};

use self::{
    commands::{demo, diff_command, now_stamp, print_written, record_and_report, run_phases},
    parse::{parse_duration, parse_planned_phase, parse_view},
};
use crate::{
    analyze::phases,
    export::{self, ExportOptions},
    markers,
    record::{self, Scope},
    report,
    sys::files::Dir,
    workload,
};

#[derive(Debug, Parser)]
#[command(
    name = "bar-probe",
    version,
    about = "eBPF profiler: on-CPU, off-CPU, page faults, TCP connects and NUMA migrations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Explain this kernel: BTF, tracefs, privileges, and per event family which attach point
    /// will be used and why the others cannot; or describe a capture file.
    Info {
        /// A capture.bar to describe instead of this machine.
        capture: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Record one process (every thread) and write flame graphs, folded stacks and a summary.
    Attach {
        /// Process to trace.
        #[arg(long, short)]
        pid: u32,
        #[command(flatten)]
        rec: RecordArgs,
    },
    /// Record every process of the host (or of one cgroup).
    Record {
        /// Trace every process except bar-probe itself.
        #[arg(long, conflicts_with = "cgroup")]
        all: bool,
        /// Trace the processes of this cgroup (v2 path, absolute or relative to the v2 mount).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[command(flatten)]
        rec: RecordArgs,
    },
    /// Run the built-in workload, attach to it for a few seconds and write the outputs.
    Demo {
        /// Output folder (default: ./bar-demo-<time>).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// How long to record.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long)]
        quiet: bool,
    },
    /// Render every output again from a capture file (no root needed).
    Report {
        capture: PathBuf,
        /// Output folder (default: the capture's folder).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Phases to cut the capture into, instead of the markers it holds: JSON
        /// `[{"name","start","end"}]` or CSV `name,start,end`, times as RFC 3339 or Unix seconds.
        #[arg(long)]
        phases: Option<PathBuf>,
    },
    /// Send a phase marker to every running recording: NAME starts phase NAME (and ends the
    /// phase before), `--end` ends it.
    Mark {
        name: String,
        #[arg(long)]
        end: bool,
    },
    /// Write what every flight recorder (`record --ring`) holds, with every output, while it
    /// goes on recording.
    Dump {
        /// Output folder (default: ./bar-dump-<time>; with several recorders, one folder per
        /// recorder's pid inside it).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Only the recording whose bar-probe has this pid (default: every one with --ring).
        #[arg(long, value_name = "PID")]
        recorder: Option<u32>,
    },
    /// Record through the phases of a load test, timing them itself: each `--phase NAME=DURATION`
    /// (optionally `NAME=DURATION:COMMAND`, run for the phase's duration) follows the one before.
    /// A LOAD_CMD after `--` runs through all phases, started once every program is attached;
    /// without --pid/--all/--cgroup, it is the process recorded. Under sudo, LOAD_CMD and the
    /// phase commands run as the user who ran sudo (SUDO_UID/SUDO_GID, with that user's
    /// groups), never as root. A command that cannot run or fails makes the exit status 1.
    Run {
        #[arg(long, short, conflicts_with_all = ["all", "cgroup"])]
        pid: Option<u32>,
        #[arg(long, conflicts_with = "cgroup")]
        all: bool,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// A phase: NAME=DURATION or NAME=DURATION:COMMAND (e.g. spike=20s:'wrk -c 400 ...').
        #[arg(long = "phase", required = true, value_parser = parse_planned_phase)]
        phases: Vec<record::PlannedPhase>,
        #[command(flatten)]
        rec: RecordArgs,
        /// A load command to run through every phase.
        #[arg(last = true)]
        load: Vec<String>,
    },
    /// Compare two profiles (captures, phases or time ranges of captures, folded files):
    /// differential flame graph, frames that changed with p-values, root-cause paths, and a
    /// gate for CI (exit status 3).
    Diff(DiffArgs),
    /// A store of per-run summaries of one workload (as main builds it, kept as a CI cache),
    /// for `diff STORE CAND...` to judge a candidate against its history.
    Baseline(crate::baseline::BaselineArgs),
    /// Write one kind of a capture for other tools: pprof for go tool pprof, Pyroscope, Parca
    /// (no root needed).
    Export {
        /// A capture.bar written by attach or record.
        capture: PathBuf,
        #[arg(long, value_enum, default_value = "pprof")]
        format: export::Format,
        /// Kind to export: cpu, offcpu, faults, tcp or numa (default: cpu).
        #[arg(long, short, value_parser = parse_view)]
        event: Option<Family>,
        /// Output file (default: <kind>.pb.gz next to the capture).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// A built-in workload with known behaviour (used by the demo, tests and benchmarks).
    #[command(hide = true)]
    Workload(workload::WorkloadArgs),
    /// Builds the unwind tables of object files and prints, per file, one JSON line with their
    /// size and build time (used by the benchmarks).
    #[command(hide = true)]
    Tables { files: Vec<PathBuf> },
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Cmd::Info {
            capture: Some(path),
            json,
        } => crate::info::capture(&path, json)?,
        Cmd::Info {
            capture: None,
            json,
        } => crate::info::machine(json)?,
        Cmd::Attach { pid, rec } => {
            let dir = format!("bar-{pid}-{}", now_stamp());
            record_and_report(&rec.options(Scope::Pid(pid), dir)?)?;
        }
        Cmd::Record { all, cgroup, rec } => {
            let scope = match (all, cgroup) {
                (_, Some(cg)) => Scope::Cgroup(cg),
                (true, None) => Scope::All,
                (false, None) => {
                    bail!("say what to record: --all or --cgroup PATH (or use `attach --pid`)")
                }
            };
            let dir = format!("bar-all-{}", now_stamp());
            record_and_report(&rec.options(scope, dir)?)?;
        }
        Cmd::Demo {
            output,
            duration,
            quiet,
        } => demo(output, duration, quiet)?,
        Cmd::Dump { output, recorder } => {
            let dir = output.unwrap_or_else(|| PathBuf::from(format!("bar-dump-{}", now_stamp())));
            return crate::dumps::command(&dir, recorder);
        }
        Cmd::Mark { name, end } => {
            let n = markers::send_all(&name, end)?;
            eprintln!(
                "bar-probe: marked {n} recording{}",
                if n == 1 { "" } else { "s" }
            );
        }
        Cmd::Run {
            pid,
            all,
            cgroup,
            phases,
            rec,
            load,
        } => run_phases(pid, all, cgroup, phases, rec, &load)?,
        Cmd::Report {
            capture,
            output,
            phases,
        } => {
            let out = output.unwrap_or_else(|| {
                capture
                    .parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            });
            let phases = phases.map(|p| phases::parse_file(&p)).transpose()?;
            // The capture first: one that cannot be read leaves no output folder behind.
            let profile = report::load_with(&capture, phases.as_deref())?;
            let out = Dir::create(&out)?;
            let rep = report::render_profile(&capture, profile, &out, phases.as_deref())?;
            for w in &rep.warnings {
                eprintln!("bar-probe: warning: {w}");
            }
            for note in &rep.profile.phase_notes {
                eprintln!("bar-probe: note: {note}");
            }
            if let Some(d) = &rep.damage {
                eprintln!(
                    "bar-probe: warning: {} is damaged, rendered what was valid: {d}",
                    capture.display()
                );
            }
            print_written(&rep.written);
        }
        Cmd::Diff(args) => return diff_command(&args),
        Cmd::Export {
            capture,
            format,
            event,
            output,
        } => {
            let done = export::export(&ExportOptions {
                capture: capture.clone(),
                format,
                kind: event,
                output,
            })?;
            if let Some(d) = &done.damage {
                eprintln!(
                    "bar-probe: warning: {} is damaged, exported what was valid: {d}",
                    capture.display()
                );
            }
            eprintln!(
                "bar-probe: exported {} events of {} as {} samples",
                done.events,
                done.view.name(),
                done.samples
            );
            println!("{}", done.path.display());
        }
        Cmd::Baseline(args) => crate::baseline::run(args)?,
        Cmd::Workload(args) => workload::run(&args)?,
        Cmd::Tables { files } => crate::unwind::describe_tables(&files),
    }
    Ok(0)
}
