//! Built-in workloads: processes with known behaviour in functions with telling names, for the
//! demo, the integration tests and the benchmarks. Each prints one JSON line to stdout with
//! what it did (pages touched, sleeps, connects...), so a test can compare bar's view with the
//! truth, and `elapsed_us`, the time its work took (from the go signal of `--wait` to the end),
//! which the benchmarks compare traced and untraced. Functions are `#[inline(never)]` so they
//! keep their own frames.

mod cpu;
mod faults;
#[cfg(target_arch = "x86_64")]
mod jit;
mod mix;
mod numa;
mod offcpu;
mod spawn;
mod tcp;

use self::faults::{PAGE, Region};
pub use self::{
    cpu::{burn_cpu_hot_loop, phase_a_parse, phase_b_render},
    faults::{read_cold_file_pages, touch_fresh_pages},
    offcpu::sleep_in_named_function,
    tcp::{connect_to_closed_port, connect_to_listener},
};

use std::{
    io::{BufRead as _, Write as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Burns CPU in `burn_cpu_hot_loop` and page-faults in `touch_fresh_pages` (the demo).
    Demo,
    /// Burns CPU in `burn_cpu_hot_loop`: `--count` million iterations, or for `--seconds`.
    Cpu,
    /// Touches `--count` fresh pages in `touch_fresh_pages` (at `--rate` pages per second).
    Faults,
    /// Sleeps `--count` times for `--micros` in `sleep_in_named_function`, then burns CPU in
    /// `burn_cpu_hot_loop` for `--seconds` if given.
    Sleep,
    /// Two CPU-bound threads pinned to one CPU, preempting each other.
    Preempt,
    /// `--count` connects to a loopback listener and `--refused` to a closed port.
    Tcp,
    /// Two threads ping-ponging a byte over pipes `--count` times (context-switch storm), at
    /// `--rate` round trips per second, each on a CPU of its own when it may use two.
    Pingpong,
    /// Migrates its own pages with migrate_pages(2) and asks the kernel to compact memory.
    Migrate,
    /// Phase A in `phase_a_parse`, phase B in `phase_b_render`, `--seconds` each.
    Phases,
    /// Reads `--count` pages of a file in `--dir` whose page cache was dropped, one major fault
    /// each, in `read_cold_file_pages`; then `--count` fresh pages in `touch_fresh_pages`.
    Majorfaults,
    /// Cross-node NUMA activity (needs two nodes; NUMA balancing on for the first two parts):
    /// pages placed on one node and used from the other's CPU in `touch_remote_node_memory`,
    /// the thread chasing them in `chase_memory_from_other_node`, then pages moved by
    /// migrate_pages(2) in `migrate_pages_between_nodes` and move_pages(2) in
    /// `move_pages_to_node`. `--count` pages per part, `--seconds` at most per part.
    Numa,
    /// Runs generated machine code named only in `/tmp/perf-PID.map`, as a JIT does.
    Jit,
    /// Starts `--count` processes named `bar-shortlived` one after another, each living
    /// `--micros` (burning CPU in `burn_cpu_hot_loop`); a link to bar-probe is made in `--dir`
    /// (default: a new temporary folder).
    Spawn,
    /// Requests in `parse_request`, `compute_response` and `encode_response` for `--seconds`,
    /// `--regress` % of them in `slow_new_path`, and clock-paced `background_housekeeping`.
    Mix,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    #[arg(value_enum)]
    pub workload: Workload,
    /// How many units of work (pages, sleeps, connects, round trips).
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Connects to a closed port (tcp).
    #[arg(long, default_value_t = 0)]
    pub refused: u64,
    /// Length of each sleep (sleep).
    #[arg(long, default_value_t = 1000)]
    pub micros: u64,
    /// Run for this long instead of a count (cpu, demo, preempt, phases per phase; faults and
    /// pingpong with `--rate`: the count is rate x seconds; sleep: burn CPU this long after).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Units of work per second, spread evenly (faults, pingpong); default: as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Threads sharing the work and the rate (faults): one thread faults only as fast as one
    /// CPU handles its faults. cpu with --seconds: threads burning CPU side by side, a load
    /// that outnumbers the tracer's threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub threads: u64,
    /// Wait for a line on stdin before starting, so a tracer can attach first.
    #[arg(long)]
    pub wait: bool,
    /// Folder for the workload's files (majorfaults); it needs a file system with a page cache
    /// that can be dropped (not tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Share of the main thread's work (in %) spent in `slow_new_path` (mix).
    #[arg(long, default_value_t = 0.0)]
    pub regress: f64,
}

/// Spreads `total` units of work over time at `rate` per second (as fast as possible without a
/// rate): calls `work(n)` with the units due since the last call, in slices of about a
/// millisecond, and sleeps when ahead.
pub(super) fn paced(total: u64, rate: Option<f64>, mut work: impl FnMut(u64)) {
    let Some(rate) = rate.filter(|r| *r > 0.0) else {
        work(total);
        return;
    };
    let start = Instant::now();
    let slice = ((rate / 1000.0) as u64).max(1);
    let mut done = 0;
    while done < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        if due > done {
            // Behind: catch up a slice at a time, so the clock is read often.
            let n = (due - done).min(slice);
            work(n);
            done += n;
        } else {
            let next = Duration::from_secs_f64((done + slice.min(total - done)) as f64 / rate);
            std::thread::sleep(next.saturating_sub(start.elapsed()));
        }
    }
}

/// Lets the calling thread run only on `cpus`.
pub(super) fn set_affinity(cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn wait_for_go() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// CPU time the whole process has used so far (user and system), in microseconds.
fn process_cpu_us() -> u64 {
    // SAFETY: rusage is plain data, getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Prints the workload's JSON line, with the time its work took, on the wall clock and on
/// CPU (what a busy machine gave it: tests hold on-CPU samples to the latter).
fn report(mut v: serde_json::Value, start: Instant) {
    v["elapsed_us"] = json!(start.elapsed().as_micros() as u64);
    v["cpu_us"] = json!(process_cpu_us());
    v["pid"] = json!(std::process::id());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Units of work: `--count`, or rate x seconds when both `--rate` and `--seconds` are given.
pub(super) fn counted(args: &WorkloadArgs) -> u64 {
    match (args.rate, args.seconds) {
        (Some(rate), Some(secs)) => (rate * secs) as u64,
        _ => args.count,
    }
}

pub fn run(args: &WorkloadArgs) -> anyhow::Result<()> {
    if args.wait {
        wait_for_go();
    }
    let start = Instant::now();
    let until = |default: f64| start + Duration::from_secs_f64(args.seconds.unwrap_or(default));
    let line = match args.workload {
        Workload::Demo => cpu::demo(until(3600.0)),
        Workload::Cpu => cpu::cpu(args, until(0.0))?,
        Workload::Faults => faults::faults(args),
        Workload::Sleep => offcpu::sleep(args),
        Workload::Preempt => cpu::preempt(args),
        Workload::Tcp => tcp::run(args)?,
        Workload::Pingpong => offcpu::pingpong(args),
        Workload::Migrate => {
            let (pages, compacted, moved) = numa::migrate_own_pages(args.count as usize);
            json!({"workload": "migrate", "pages": pages, "compacted": compacted,
                   "pages_migrated_meanwhile": moved})
        }
        Workload::Majorfaults => faults::major(args)?,
        Workload::Mix => mix::run(args.seconds.unwrap_or(3.0), args.regress),
        Workload::Numa => numa::run(args.count as usize, until(30.0) - start)?,
        Workload::Spawn => {
            let life = Duration::from_micros(args.micros);
            spawn::run(args.count, life, args.dir.as_deref())?
        }
        #[cfg(target_arch = "x86_64")]
        Workload::Jit => {
            let calls = jit::run_jitted_code(until(2.0))?;
            json!({"workload": "jit", "calls": calls})
        }
        #[cfg(not(target_arch = "x86_64"))]
        Workload::Jit => anyhow::bail!("the jit workload generates x86-64 code"),
        Workload::Phases => cpu::phases(args, start),
    };
    report(line, start);
    Ok(())
}
