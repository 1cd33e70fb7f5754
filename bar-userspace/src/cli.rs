//! The command line: clap definitions and the wiring of stages per subcommand. No stage logic
//! lives here.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    aggregate::View,
    export::{self, ExportOptions},
    probe::{self, Family, Method},
    record::{self, RecordOptions, Scope},
    report, workload,
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
        /// Trace the processes of this cgroup (v2 path, absolute or under /sys/fs/cgroup).
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
    },
    /// Write one kind of a capture for other tools: pprof for go tool pprof, Pyroscope, Parca
    /// (no root needed).
    Export {
        /// A capture.bar written by attach or record.
        capture: PathBuf,
        #[arg(long, value_enum, default_value = "pprof")]
        format: export::Format,
        /// Kind to export: cpu, offcpu, faults, tcp or numa (default: cpu).
        #[arg(long, short, value_parser = parse_view)]
        event: Option<View>,
        /// Output file (default: <kind>.pb.gz next to the capture).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// A built-in workload with known behaviour (used by the demo, tests and benchmarks).
    #[command(hide = true)]
    Workload(workload::WorkloadArgs),
}

/// Options shared by every recording command.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Stop after this long (e.g. 10s, 500ms, 2m); default: until Ctrl-C or the target exits.
    #[arg(long, short, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Event families: cpu, offcpu, faults, tcp, numa, or all.
    #[arg(long, short, default_value = "all", value_parser = probe::parse_families)]
    pub events: probe::FamilyList,
    /// On-CPU sampling frequency in Hz.
    #[arg(long, short = 'F', default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub frequency: u64,
    /// Off-CPU intervals shorter than this are not reported.
    #[arg(long, default_value = "1us", value_parser = parse_duration)]
    pub min_block: Duration,
    /// Output folder (default: ./bar-<pid>-<time> or ./bar-all-<time>).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// No live status on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Stop recording when the capture file reaches this size (e.g. 500M, 2G).
    #[arg(long, value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Pages per CPU of each perf ring buffer (a power of two).
    #[arg(long, default_value_t = 256, value_parser = parse_pages)]
    pub buffer_pages: usize,
    /// Stack traces the kernel can hold; more distinct stacks show as `[stack lost]`.
    #[arg(long, default_value_t = bar_ebpf_common::DEFAULT_STACK_MAP_ENTRIES)]
    pub stack_map_size: u32,
    /// Attach methods to pass over even where the kernel has them (e.g. tp_btf,kprobe).
    #[arg(long, value_delimiter = ',', value_parser = Method::from_str_arg)]
    pub avoid: Vec<Method>,
    /// Attach programs that only filter and return: measures the floor of bar's overhead.
    #[arg(long)]
    pub null: bool,
}

impl Method {
    fn from_str_arg(s: &str) -> Result<Self, String> {
        s.parse()
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 10s, 500ms or 1us: {e}"))
}

fn parse_view(s: &str) -> Result<View, String> {
    View::from_name(s).ok_or_else(|| {
        format!("unknown event kind '{s}' (expected cpu, offcpu, faults, tcp or numa)")
    })
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..].to_ascii_uppercase().trim_end_matches(['B', 'I']) {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => return Err(format!("'{s}' is not a size like 500M or 2G")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("'{s}' is not a size like 500M or 2G"))
}

fn parse_pages(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n.is_power_of_two() => Ok(n),
        _ => Err(format!("'{s}' is not a power of two")),
    }
}

fn now_stamp() -> String {
    jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string()
}

impl RecordArgs {
    fn options(&self, scope: Scope, default_dir: String) -> RecordOptions {
        let families = self.events.0.clone();
        RecordOptions {
            explicit: families.len() < Family::ALL.len(),
            families,
            scope,
            duration: self.duration,
            frequency: self.frequency,
            min_block_ns: self.min_block.as_nanos() as u64,
            null_mode: self.null,
            stack_map_entries: self.stack_map_size,
            avoid: self.avoid.clone(),
            buffer_pages: self.buffer_pages,
            max_size: self.max_size,
            out_dir: self
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(default_dir)),
            quiet: self.quiet,
            command_line: std::env::args().collect(),
        }
    }
}

/// Records, then renders the capture into the same folder.
fn record_and_report(opts: &RecordOptions) -> anyhow::Result<()> {
    let recorded = record::record(opts)?;
    let rep = report::report(&recorded.capture, &opts.out_dir)?;
    if !opts.quiet {
        eprintln!(
            "bar-probe: stopped ({}): {} events, {} lost",
            recorded.stop_reason, recorded.events, recorded.lost
        );
        print_written(&rep.written, &recorded.capture);
    }
    Ok(())
}

fn print_written(written: &[PathBuf], capture: &Path) {
    println!("{}", capture.display());
    for p in written {
        println!("{}", p.display());
    }
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
            record_and_report(&rec.options(Scope::Pid(pid), dir))?;
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
            record_and_report(&rec.options(scope, dir))?;
        }
        Cmd::Demo {
            output,
            duration,
            quiet,
        } => demo(output, duration, quiet)?,
        Cmd::Report { capture, output } => {
            let out = output.unwrap_or_else(|| {
                capture
                    .parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            });
            let rep = report::report(&capture, &out)?;
            if let Some(d) = &rep.damage {
                eprintln!(
                    "bar-probe: warning: {} is damaged, rendered what was valid: {d}",
                    capture.display()
                );
            }
            print_written(&rep.written, &capture);
        }
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
        Cmd::Workload(args) => workload::run(&args)?,
    }
    Ok(0)
}

/// Starts the built-in workload as a child, records it, stops it.
fn demo(output: Option<PathBuf>, duration: Duration, quiet: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find bar-probe's own executable")?;
    let mut child = Command::new(exe)
        .args(["workload", "demo", "--seconds"])
        .arg((duration.as_secs_f64() + 30.0).to_string())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the demo workload")?;
    let pid = child.id();
    if !quiet {
        eprintln!(
            "bar-probe: demo workload started as pid {pid}; recording it for {}",
            humantime::format_duration(duration)
        );
    }
    let mut rec = RecordArgs {
        duration: Some(duration),
        events: probe::FamilyList(vec![Family::Cpu, Family::Faults]),
        frequency: 99,
        min_block: Duration::from_micros(1),
        output: Some(output.unwrap_or_else(|| PathBuf::from(format!("bar-demo-{}", now_stamp())))),
        quiet,
        max_size: None,
        buffer_pages: 256,
        stack_map_size: bar_ebpf_common::DEFAULT_STACK_MAP_ENTRIES,
        avoid: Vec::new(),
        null: false,
    }
    .options(Scope::Pid(pid), String::new());
    rec.explicit = true;
    let result = record_and_report(&rec);
    let _ = child.kill();
    let _ = child.wait();
    result?;
    if !quiet {
        let dir = rec.out_dir.display();
        eprintln!(
            "bar-probe: open {dir}/cpu.svg and {dir}/faults.svg in a browser; the hot frames are burn_cpu_hot_loop and touch_fresh_pages"
        );
    }
    Ok(())
}
