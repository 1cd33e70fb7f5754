//! The machine: how busy it is before each trial, and what it is, for the report's first table.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use super::{Ctx, run::output};

/// Whether the machine is quiet enough to measure, and how long we waited for it.
#[derive(Debug, Clone, Default)]
pub struct Quiet {
    pub max_busy: f64,
    pub checks: u32,
    pub waits: u32,
    pub waited_s: f64,
    /// Trials started although the machine never got quiet within the patience.
    pub gave_up: u32,
    pub busiest_start: f64,
    pub load_start: String,
    pub load_end: String,
    /// How busy the other processes kept the CPUs when each trial started.
    pub at_start: Vec<f64>,
}

/// Fraction of all CPUs that was busy (not idle, not waiting for I/O) over `window`.
pub(super) fn cpu_busy(window: Duration) -> f64 {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3)? + v.get(4)?;
        Some((total, idle))
    }
    let Some((t0, i0)) = sample() else { return 0.0 };
    std::thread::sleep(window);
    let Some((t1, i1)) = sample() else { return 0.0 };
    let total = t1.saturating_sub(t0).max(1) as f64;
    1.0 - i1.saturating_sub(i0) as f64 / total
}

pub(super) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Quiet {
    /// How long one trial waits for a quiet machine before it runs anyway (and is counted).
    const PATIENCE: Duration = Duration::from_secs(900);

    /// Returns once the other processes leave the CPUs idle.
    pub(super) fn wait(&mut self) {
        let start = Instant::now();
        let mut waited = false;
        loop {
            let busy = cpu_busy(Duration::from_millis(500));
            self.checks += 1;
            if busy <= self.max_busy {
                self.at_start.push(busy);
                break;
            }
            if start.elapsed() > Self::PATIENCE {
                self.gave_up += 1;
                self.busiest_start = self.busiest_start.max(busy);
                self.at_start.push(busy);
                break;
            }
            if !waited {
                eprintln!(
                    "bench: the machine is {:.0}% busy; waiting for it to be idle",
                    busy * 100.0
                );
            }
            waited = true;
            std::thread::sleep(Duration::from_secs(2));
        }
        if waited {
            self.waits += 1;
            self.waited_s += start.elapsed().as_secs_f64();
        }
    }
}

/// The machine and the tools, for the report's first table.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub date: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub os: String,
    pub bar_rev: String,
    pub before_rev: Option<String>,
    pub tools: Vec<(String, String)>,
}

pub(super) fn machine(ctx: &Ctx, before: Option<&str>) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let git = |args: &[&str]| output(ctx.command("git").args(args));
    let dirty = if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let first_line = |s: String| s.lines().next().unwrap_or_default().to_owned();
    Machine {
        date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        mem_gib: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / (1024.0 * 1024.0)),
        kernel: output(Command::new("uname").arg("-r")),
        os: os
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_default(),
        bar_rev: format!("{}{dirty}", git(&["rev-parse", "--short=12", "HEAD"])),
        before_rev: before.map(|r| git(&["rev-parse", "--short=12", r])),
        tools: vec![
            (
                "bpftrace".into(),
                first_line(output(ctx.command("bpftrace").arg("--version"))),
            ),
            (
                "perf".into(),
                first_line(output(ctx.command("perf").arg("--version"))),
            ),
            (
                "libbpf-tools".into(),
                output(
                    ctx.command("dpkg-query")
                        .args(["-W", "-f", "${Version}", "libbpf-tools"]),
                ),
            ),
            (
                "bpfcc-tools".into(),
                output(
                    ctx.command("dpkg-query")
                        .args(["-W", "-f", "${Version}", "bpfcc-tools"]),
                ),
            ),
            ("inferno".into(), "0.12.8".into()),
        ],
    }
}
