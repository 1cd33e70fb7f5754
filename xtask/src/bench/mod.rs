//! `cargo xtask bench`: what bar costs the workload it records, next to its peers, in one run
//! that writes `docs/benchmarks.md`.
//!
//! The measuring is done by the scripts in `scripts/bench/` (one trial each: a workload of
//! bar-probe's own waits, a tracer attaches, the workload does a fixed amount of work and
//! reports its own elapsed time); this module decides what to run and in which order, reads
//! what the scripts leave behind, and writes the report. Every comparison is repeated with the
//! configurations interleaved (repetition r runs every configuration once, in an order rotated
//! by r), and every trial starts only once the machine is idle.

mod doc;
mod flight;
pub mod gate;
mod stats;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

pub use self::stats::Spread;

/// What `cargo xtask bench` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions of every configuration (at least 5 for the report).
    pub reps: usize,
    /// Small amounts of work, to try the harness; the figures mean little.
    pub quick: bool,
    /// A revision whose bar-probe is measured next to this one (the "before" of the product
    /// changes); None to leave it out.
    pub before: Option<String>,
    /// A trial starts when the other processes use at most this fraction of the CPUs.
    pub max_busy: f64,
    /// Where the report goes.
    pub doc: PathBuf,
}

/// One run of `scripts/bench/trial.sh`, as read back from what it left.
#[derive(Debug, Clone, Default)]
pub struct Trial {
    pub error: Option<String>,
    /// The workload's own elapsed time, from its go to its end.
    pub elapsed_us: Option<f64>,
    /// From starting the tracer to the tracer being attached.
    pub attach_ms: Option<f64>,
    pub workload: Value,
    /// bar-probe's summary.json.
    pub summary: Option<Value>,
    /// `/usr/bin/time -v` of the tracer.
    pub time: Option<TimeV>,
    /// Kernel time of the tracer's BPF programs while the workload ran.
    pub prog: Option<ProgStat>,
}

/// Run time of a tracer's BPF programs between two samples taken while its workload ran,
/// `window_ms` apart.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgStat {
    pub run_ns: u64,
    pub window_ms: f64,
}

impl Trial {
    pub const fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// Records bar lost: perf "lost" records and failed outputs counted by the programs (the
    /// same loss can show in both, so the larger).
    pub fn lost(&self) -> Option<u64> {
        let s = self.summary.as_ref()?;
        let perf = s["lost"]["total"].as_u64().unwrap_or(0);
        let dropped: u64 = s["kinds"]
            .as_object()
            .map(|k| k.values().filter_map(|v| v["lost"].as_u64()).sum())
            .unwrap_or(0);
        Some(perf.max(dropped))
    }

    /// Events bar recorded, all kinds.
    pub fn events(&self) -> Option<u64> {
        let s = self.summary.as_ref()?;
        s["kinds"]
            .as_object()
            .map(|k| k.values().filter_map(|v| v["events"].as_u64()).sum())
    }

    /// Units of work the workload reports under `key`.
    pub fn units(&self, key: &str) -> Option<f64> {
        self.workload[key].as_f64()
    }

    /// Kernel time of the tracer's programs per unit of work: the workload progresses
    /// evenly, so the sampling window saw `window / elapsed` of its units.
    pub fn prog_ns_per_unit(&self, key: &str) -> Option<f64> {
        let p = self.prog?;
        let units = self.units(key)? * (p.window_ms * 1000.0 / self.elapsed_us?).min(1.0);
        (units > 0.0).then(|| p.run_ns as f64 / units)
    }
}

/// The figures of `/usr/bin/time -v` the report uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeV {
    pub max_rss_kb: u64,
    pub user_s: f64,
    pub sys_s: f64,
}

fn parse_time_v(text: &str) -> Option<TimeV> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().trim_start_matches(':').trim().parse::<f64>().ok())
    };
    Some(TimeV {
        max_rss_kb: field("Maximum resident set size (kbytes)")? as u64,
        user_s: field("User time (seconds)")?,
        sys_s: field("System time (seconds)")?,
    })
}

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
fn cpu_busy(window: Duration) -> f64 {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Quiet {
    /// How long one trial waits for a quiet machine before it runs anyway (and is counted).
    const PATIENCE: Duration = Duration::from_secs(900);

    /// Returns once the other processes leave the CPUs idle.
    fn wait(&mut self) {
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

/// Everything the trials need.
pub struct Ctx {
    pub root: PathBuf,
    pub work: PathBuf,
    pub bar: PathBuf,
    pub before: Option<PathBuf>,
    path: OsString,
    pub quiet: Quiet,
    trials_run: usize,
}

impl Ctx {
    fn script(&self, name: &str) -> PathBuf {
        self.root.join("scripts/bench").join(name)
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("PATH", &self.path)
            .env("BAR_PROBE", &self.bar)
            .current_dir(&self.root);
        if let Some(b) = &self.before {
            c.env("BAR_PROBE_BEFORE", b);
        }
        c
    }

    /// Runs one trial and reads what it left; its folder is removed unless `keep`.
    pub fn trial(
        &mut self,
        tracer: &str,
        family: &str,
        workload: &[String],
        env: &[(&str, &str)],
        keep: Option<&Path>,
    ) -> Trial {
        self.quiet.wait();
        self.trials_run += 1;
        let dir = keep.map_or_else(
            || self.work.join(format!("trial-{}", self.trials_run)),
            Path::to_owned,
        );
        let mut cmd = self.command("bash");
        cmd.arg(self.script("trial.sh"))
            .arg(&dir)
            .arg(tracer)
            .arg(family)
            .arg("--")
            .args(workload)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let status = cmd.status();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
        let mut t = Trial::default();
        match (status, read("status")) {
            (Ok(s), Some(st)) if s.success() && st.trim() == "ok" => {}
            (Ok(s), st) => {
                t.error = Some(st.map_or_else(
                    || format!("trial.sh failed: {s}"),
                    |st| st.trim().to_owned(),
                ));
            }
            (Err(e), _) => t.error = Some(format!("cannot run trial.sh: {e}")),
        }
        t.workload = read("workload.json")
            .and_then(|s| serde_json::from_str(s.lines().last()?).ok())
            .unwrap_or(Value::Null);
        t.elapsed_us = t.workload["elapsed_us"].as_f64();
        t.attach_ms = read("attach_ms").and_then(|s| s.trim().parse().ok());
        t.summary = read("bar/summary.json").and_then(|s| serde_json::from_str(&s).ok());
        t.time = read("time.txt").and_then(|s| parse_time_v(&s));
        t.prog = (|| {
            let ids: Vec<u64> = read("prog_ids")?
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            let (first, last) = (
                prog_time(&read("progs-first.json")?, &ids)?,
                prog_time(&read("progs-last.json")?, &ids)?,
            );
            let ms: Vec<f64> = read("progs_ms")?
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some(ProgStat {
                run_ns: last.saturating_sub(first),
                window_ms: ms.get(1)? - ms.first()?,
            })
        })();
        if t.ok() && t.elapsed_us.is_none() {
            t.error = Some("the workload reported no elapsed time".into());
        }
        if t.ok() && tracer.starts_with("bar") && t.summary.is_none() {
            t.error = Some(format!(
                "bar-probe wrote no summary.json: {}",
                read("tracer.err")
                    .unwrap_or_default()
                    .lines()
                    .last()
                    .unwrap_or_default()
            ));
        }
        if let Some(e) = &t.error {
            eprintln!("bench: {tracer} {family} {}: {e}", workload.join(" "));
        }
        if keep.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        t
    }
}

/// Total run time of the programs `ids`, from `bpftool -j prog show`.
fn prog_time(json: &str, ids: &[u64]) -> Option<u64> {
    let v: Value = serde_json::from_str(json).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
            .filter_map(|p| p["run_time_ns"].as_u64())
            .sum(),
    )
}

/// Output of a command, trimmed; empty when it fails.
fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
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

fn machine(ctx: &Ctx, before: Option<&str>) -> Machine {
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

/// A workload of the slowdown comparison and the configurations measured on it.
#[derive(Debug, Clone)]
pub struct SlowCase {
    pub name: &'static str,
    pub family: &'static str,
    pub what: &'static str,
    /// The workload's report key that counts its units of work, and their name.
    pub unit_key: &'static str,
    pub unit: &'static str,
    pub args: Vec<String>,
    pub configs: Vec<Config>,
}

/// A tracer configuration and its trials (one per repetition, in repetition order).
#[derive(Debug, Clone)]
pub struct Config {
    pub label: String,
    pub tracer: String,
    pub family: String,
    pub trials: Vec<Trial>,
}

impl Config {
    fn new(label: &str, tracer: &str, family: &str) -> Self {
        Self {
            label: label.into(),
            tracer: tracer.into(),
            family: family.into(),
            trials: Vec::new(),
        }
    }
}

impl SlowCase {
    /// Slowdown of configuration `i`: per repetition, its elapsed time over the untraced one
    /// of the same repetition.
    pub fn slowdown(&self, i: usize) -> Option<Spread> {
        let base = &self.configs[0].trials;
        let ratios: Vec<f64> = self.configs[i]
            .trials
            .iter()
            .zip(base)
            .filter_map(|(t, b)| Some(t.elapsed_us? / b.elapsed_us?))
            .collect();
        Spread::of(&ratios)
    }

    pub fn config(&self, label: &str) -> Option<usize> {
        self.configs.iter().position(|c| c.label == label)
    }
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn slow_cases(quick: bool, before: bool) -> Vec<SlowCase> {
    let q = |full: &str, small: &str| args(if quick { small } else { full });
    let mut cases = vec![
        SlowCase {
            name: "pingpong",
            family: "offcpu",
            what: "context-switch storm: two threads, each pinned to a CPU of its own, pass a byte \
                   back and forth over pipes",
            unit_key: "round_trips",
            unit: "round trips",
            args: q("pingpong --count 100000", "pingpong --count 20000"),
            configs: vec![],
        },
        SlowCase {
            name: "faults",
            family: "faults",
            what: "page-fault storm: write one byte into each fresh anonymous page",
            unit_key: "pages",
            unit: "page faults",
            args: q("faults --count 300000", "faults --count 50000"),
            configs: vec![],
        },
        SlowCase {
            name: "tcp",
            family: "tcp",
            what: "TCP connect loop on loopback (connect, accept, close)",
            unit_key: "established",
            unit: "connects",
            args: q("tcp --count 8000", "tcp --count 1500"),
            configs: vec![],
        },
        SlowCase {
            name: "cpu",
            family: "cpu",
            what: "CPU-bound loop, a fixed number of iterations",
            unit_key: "",
            unit: "",
            args: q("cpu --count 200", "cpu --count 40"),
            configs: vec![],
        },
    ];
    for c in &mut cases {
        let f = c.family;
        c.configs = vec![
            Config::new("untraced", "none", "-"),
            Config::new("bar", "bar", f),
            Config::new("bar all", "bar", "all"),
            Config::new("floor", "bar-null", f),
            Config::new("floor all", "bar-null", "all"),
        ];
        // `--aggregate` sums the families that come in storms (Family::SUMMABLE).
        if matches!(f, "offcpu" | "faults") {
            c.configs.push(Config::new("bar summed", "bar-sum", f));
        }
        if before {
            c.configs.push(Config::new("bar before", "bar-before", f));
        }
        c.configs.push(Config::new("bpftrace", "bpftrace", f));
        c.configs.push(Config::new("perf", "perf", f));
        if f == "offcpu" {
            c.configs
                .push(Config::new("offcputime", "offcputime", "offcpu"));
        }
    }
    cases
}

/// Peers that do not run on this kernel, with the error they give.
#[derive(Debug, Clone)]
pub struct Broken {
    pub family: &'static str,
    pub command: String,
    pub error: String,
}

fn broken_peers(ctx: &Ctx) -> Vec<Broken> {
    let tries: [(&str, &[&str]); 3] = [
        ("tcp", &["tcpconnect", "-p", "1"]),
        ("tcp", &["tcpconnlat", "-p", "1"]),
        ("cpu", &["profile-bpfcc", "-F", "99", "-p", "1", "1"]),
    ];
    let mut out = Vec::new();
    for (family, argv) in tries {
        let o = ctx
            .command("timeout")
            .arg("60")
            .args(argv)
            .stdin(Stdio::null())
            .output();
        let (ok, text) = match o {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            ),
            Err(e) => (false, e.to_string()),
        };
        if ok {
            continue;
        }
        // The lines that say why, not the traceback around them.
        let why: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("File ")
                    && !l.starts_with("Traceback")
                    && !l.starts_with('^')
                    && !l.contains("= BPF(")
            })
            .collect();
        let error = why
            .iter()
            .rev()
            .take(2)
            .rev()
            .copied()
            .collect::<Vec<_>>()
            .join(" / ");
        out.push(Broken {
            family,
            command: argv.join(" "),
            error,
        });
    }
    out
}

fn run_slowdown(ctx: &mut Ctx, cases: &mut [SlowCase], reps: usize) {
    for case in cases.iter_mut() {
        eprintln!("bench: slowdown on {} ({} repetitions)", case.name, reps);
        let n = case.configs.len();
        let mut failed = vec![false; n];
        for r in 0..reps {
            for k in 0..n {
                let i = (k + r) % n;
                let c = &case.configs[i];
                if failed[i] {
                    let first = c.trials[0].clone();
                    case.configs[i].trials.push(first);
                    continue;
                }
                let (tracer, family) = (c.tracer.clone(), c.family.clone());
                let t = ctx.trial(&tracer, &family, &case.args, &[], None);
                // A tracer that cannot run here fails the same way every time.
                if r == 0 && !t.ok() && t.elapsed_us.is_none() {
                    failed[i] = true;
                }
                case.configs[i].trials.push(t);
            }
        }
        // Repetitions were pushed in rotated order per configuration, one per repetition, so
        // index r of every configuration is repetition r.
    }
}

/// One rate of the throughput ladder.
#[derive(Debug, Clone)]
pub struct Step {
    pub tracer: String,
    pub rate: f64,
    pub trials: Vec<Trial>,
}

impl Step {
    /// Achieved rates (page faults per second of the workload's own time).
    pub fn achieved(&self) -> Option<Spread> {
        let v: Vec<f64> = self
            .trials
            .iter()
            .filter_map(|t| Some(t.units("pages")? / (t.elapsed_us? / 1e6)))
            .collect();
        Spread::of(&v)
    }

    pub fn lost(&self) -> u64 {
        self.trials.iter().filter_map(Trial::lost).sum()
    }

    pub fn events(&self) -> u64 {
        self.trials.iter().filter_map(Trial::events).sum()
    }

    pub fn complete(&self) -> bool {
        !self.trials.is_empty() && self.trials.iter().all(|t| t.ok() && t.lost().is_some())
    }

    /// No record lost, and the workload kept to the rate asked (within 5%).
    pub fn sustained(&self) -> bool {
        self.complete()
            && self.lost() == 0
            && self
                .achieved()
                .is_some_and(|a| a.median >= 0.95 * self.rate)
    }
}

/// The throughput ladder and where bar stops keeping up.
#[derive(Debug, Clone, Default)]
pub struct Throughput {
    pub seconds: f64,
    pub steps: Vec<Step>,
}

impl Throughput {
    /// The highest rate `tracer` took with nothing lost, and every lower rate too.
    pub fn sustained(&self, tracer: &str) -> Option<f64> {
        let mut best = None;
        let mut steps: Vec<&Step> = self.steps.iter().filter(|s| s.tracer == tracer).collect();
        steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        for s in steps {
            if !s.sustained() {
                break;
            }
            best = Some(s.rate);
        }
        best
    }

    pub fn step(&self, tracer: &str, rate: f64) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| s.tracer == tracer && (s.rate - rate).abs() < 1.0)
    }
}

/// Threads of the steady fault generator: one per CPU, as one thread faults only as fast as
/// one CPU handles its faults (about 400k/s traced here, short of the rates asked).
pub fn fault_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn faults_at(rate: f64, seconds: f64) -> Vec<String> {
    args(&format!(
        "faults --rate {rate:.0} --seconds {seconds} --threads {}",
        fault_threads()
    ))
}

fn run_ladder(ctx: &mut Ctx, tp: &mut Throughput, tracers: &[&str], rates: &[f64], reps: usize) {
    let mut configs: Vec<(String, f64)> = Vec::new();
    for t in tracers {
        for &r in rates {
            if tp.step(t, r).is_none() {
                tp.steps.push(Step {
                    tracer: (*t).to_owned(),
                    rate: r,
                    trials: Vec::new(),
                });
            }
            configs.push(((*t).to_owned(), r));
        }
    }
    let n = configs.len();
    for r in 0..reps {
        for k in 0..n {
            let (tracer, rate) = configs[(k + r) % n].clone();
            let t = ctx.trial(&tracer, "faults", &faults_at(rate, tp.seconds), &[], None);
            if let Some(s) = tp
                .steps
                .iter_mut()
                .find(|s| s.tracer == tracer && (s.rate - rate).abs() < 1.0)
            {
                s.trials.push(t);
            }
        }
    }
}

fn run_throughput(ctx: &mut Ctx, quick: bool, reps: usize) -> Throughput {
    let mut tp = Throughput {
        seconds: if quick { 2.0 } else { 3.0 },
        steps: Vec::new(),
    };
    let rates: Vec<f64> = if quick {
        vec![100e3, 300e3]
    } else {
        // Past what the workload reaches traced, a rate asked is a workload running flat out:
        // the top steps show the loss at the highest rate there is.
        vec![100e3, 200e3, 300e3, 400e3, 500e3, 700e3]
    };
    // bar only: the before/after comparison is the slowdown table's, and the ladder is the
    // longest part of the run.
    let tracers = ["bar"];
    eprintln!("bench: event throughput ({} rates)", rates.len());
    run_ladder(ctx, &mut tp, &tracers, &rates, reps);
    // Twice the sustained rate, if the ladder did not have it.
    for t in tracers {
        if let Some(s) = tp.sustained(t) {
            let double = 2.0 * s;
            if tp.step(t, double).is_none() {
                run_ladder(ctx, &mut tp, &[t], &[double], reps);
            }
        }
    }
    tp
}

/// One post-processing run: wall time, and per process its peak RSS and CPU time.
#[derive(Debug, Clone, Default)]
pub struct PostRun {
    pub wall_ms: f64,
    pub stages: Vec<(String, TimeV)>,
}

impl PostRun {
    /// Peak memory of the whole: the sum of the stages' peaks (a pipeline's stages run at once).
    pub fn rss_kb(&self) -> u64 {
        self.stages.iter().map(|s| s.1.max_rss_kb).sum()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Post {
    pub bar_record: Trial,
    pub perf_record: Trial,
    pub bar_events: u64,
    pub perf_samples: u64,
    pub capture_bytes: u64,
    pub perf_data_bytes: u64,
    pub bar: Vec<PostRun>,
    pub perf: Vec<PostRun>,
    pub error: Option<String>,
}

fn run_post(ctx: &mut Ctx, quick: bool, reps: usize) -> Post {
    let count = if quick { "100000" } else { "1000000" };
    let workload = args(&format!("faults --count {count}"));
    eprintln!("bench: post-processing a capture of {count} page faults");
    let mut post = Post::default();
    let bar_dir = ctx.work.join("post-bar");
    let perf_dir = ctx.work.join("post-perf");
    post.bar_record = ctx.trial(
        "bar",
        "faults",
        &workload,
        &[("TIME_TRACER", "1")],
        Some(&bar_dir),
    );
    post.perf_record = ctx.trial("perf", "faults", &workload, &[], Some(&perf_dir));
    if let Some(e) = post
        .bar_record
        .error
        .clone()
        .or(post.perf_record.error.clone())
    {
        post.error = Some(e);
        return post;
    }
    let capture = bar_dir.join("bar/capture.bar");
    let perf_data = perf_dir.join("perf.data");
    post.bar_events = post.bar_record.events().unwrap_or(0);
    post.capture_bytes = std::fs::metadata(&capture).map_or(0, |m| m.len());
    post.perf_data_bytes = std::fs::metadata(&perf_data).map_or(0, |m| m.len());
    let stats = output(
        ctx.command("perf")
            .args(["report", "--stats", "-i"])
            .arg(&perf_data),
    );
    post.perf_samples = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("SAMPLE events:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    for r in 0..reps {
        let order: [(&str, &Path); 2] = [("bar", &capture), ("perf", &perf_data)];
        for k in 0..2 {
            let (what, input) = order[(k + r) % 2];
            ctx.quiet.wait();
            let out = ctx.work.join(format!("post-{what}-out"));
            let status = ctx
                .command("bash")
                .arg(ctx.script("postproc.sh"))
                .args([what])
                .arg(input)
                .arg(&out)
                .status();
            let mut run = PostRun::default();
            if status.is_ok_and(|s| s.success()) {
                run.wall_ms = std::fs::read_to_string(out.join("wall_ms"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(f64::NAN);
                for stage in ["report", "script", "collapse", "flamegraph"] {
                    if let Some(t) = std::fs::read_to_string(out.join(format!("time-{stage}.txt")))
                        .ok()
                        .and_then(|s| parse_time_v(&s))
                    {
                        run.stages.push((stage.to_owned(), t));
                    }
                }
            } else {
                post.error = Some(format!("postproc.sh {what} failed"));
                run.wall_ms = f64::NAN;
            }
            if what == "bar" {
                post.bar.push(run);
            } else {
                post.perf.push(run);
            }
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    let _ = std::fs::remove_dir_all(&perf_dir);
    post
}

/// Peak RSS of bar-probe through a long capture at a steady rate.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub rate: f64,
    pub seconds: f64,
    pub trials: Vec<Trial>,
}

fn run_memory(ctx: &mut Ctx, rate: f64, quick: bool, reps: usize) -> Memory {
    let seconds = if quick { 5.0 } else { 60.0 };
    eprintln!(
        "bench: collector memory over {seconds} s at {}",
        stats::rate(rate)
    );
    let mut m = Memory {
        rate,
        seconds,
        trials: Vec::new(),
    };
    // A peak, not a comparison: three long runs show whether it varies, in a third of the time.
    for _ in 0..reps.min(3) {
        let t = ctx.trial(
            "bar",
            "faults",
            &faults_at(rate, seconds),
            &[("TIME_TRACER", "1")],
            None,
        );
        m.trials.push(t);
    }
    m
}

/// Kernel time of each tracer's programs per unit of work.
#[derive(Debug, Clone)]
pub struct ProgCost {
    pub case: &'static str,
    pub unit: &'static str,
    pub rows: Vec<(String, Vec<Trial>)>,
}

/// The configurations whose programs' kernel time is measured (where a workload has them).
pub const PROG_COST_LABELS: [&str; 5] = ["bar", "bar summed", "floor", "bpftrace", "offcputime"];

fn run_prog_cost(ctx: &mut Ctx, cases: &[SlowCase], reps: usize) -> Vec<ProgCost> {
    let was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    if std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").is_err() {
        return Vec::new();
    }
    eprintln!("bench: kernel time of the programs (kernel.bpf_stats_enabled=1)");
    let mut out = Vec::new();
    for case in cases.iter().filter(|c| !c.unit_key.is_empty()) {
        let labels = PROG_COST_LABELS;
        let mut rows: Vec<(String, Vec<Trial>)> = labels
            .iter()
            .map(|l| ((*l).to_owned(), Vec::new()))
            .collect();
        for r in 0..reps.min(3) {
            for k in 0..labels.len() {
                let i = (k + r) % labels.len();
                let Some(c) = case.config(labels[i]).map(|j| &case.configs[j]) else {
                    continue;
                };
                let (tracer, family) = (c.tracer.clone(), c.family.clone());
                let t = ctx.trial(&tracer, &family, &case.args, &[("PROG_STATS", "1")], None);
                rows[i].1.push(t);
            }
        }
        out.push(ProgCost {
            case: case.name,
            unit: case.unit,
            rows,
        });
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", was.trim());
    out
}

/// Everything one run measured, for the report.
pub struct Results {
    pub opts: Options,
    pub machine: Machine,
    pub quiet: Quiet,
    pub cases: Vec<SlowCase>,
    pub broken: Vec<Broken>,
    pub throughput: Throughput,
    pub post: Post,
    pub memory: Memory,
    pub flight: flight::Flight,
    pub prog_cost: Vec<ProgCost>,
    pub commands: Vec<(String, String, String)>,
    pub minutes: f64,
}

/// Builds bar-probe as of `rev` from a clean export of that revision (its own target folder).
fn build_before(root: &Path, work: &Path, rev: &str, path: &OsString) -> anyhow::Result<PathBuf> {
    let src = work.join("before-src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    let archive = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git archive --format=tar '{rev}' | tar -x -C '{}'",
            src.display()
        ))
        .current_dir(root)
        .status()?;
    if !archive.success() {
        bail!("cannot export revision {rev}");
    }
    eprintln!("bench: building bar-probe as of {rev} for the before/after figures");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet", "-p", "bar-userspace"])
        .env("CARGO_TARGET_DIR", work.join("before-target"))
        .env("PATH", path)
        .current_dir(&src)
        .status()?;
    if !status.success() {
        bail!("building revision {rev} failed");
    }
    let bin = work.join("bar-probe-before");
    std::fs::copy(work.join("before-target/release/bar-probe"), &bin)?;
    Ok(bin)
}

pub fn run(root: &Path, opts: Options, path: OsString) -> anyhow::Result<()> {
    let started = Instant::now();
    let reps = opts.reps.max(1);
    let work = root.join("target/bench");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let before = match &opts.before {
        Some(rev) => Some(build_before(root, &work, rev, &path)?),
        None => None,
    };
    let mut ctx = Ctx {
        root: root.to_owned(),
        work,
        bar: root.join("target/release/bar-probe"),
        before,
        path,
        quiet: Quiet {
            max_busy: opts.max_busy,
            ..Quiet::default()
        },
        trials_run: 0,
    };
    let machine = machine(&ctx, opts.before.as_deref());
    ctx.quiet.load_start = loadavg();

    let mut cases = slow_cases(opts.quick, ctx.before.is_some());
    let broken = broken_peers(&ctx);
    run_slowdown(&mut ctx, &mut cases, reps);
    let throughput = run_throughput(&mut ctx, opts.quick, reps);
    let post = run_post(&mut ctx, opts.quick, reps);
    let mem_rate = throughput.sustained("bar").unwrap_or(100e3);
    let memory = run_memory(&mut ctx, mem_rate, opts.quick, reps);
    let prog_cost = run_prog_cost(&mut ctx, &cases, reps);
    let flight = flight::run(&mut ctx, opts.quick);
    ctx.quiet.load_end = loadavg();

    let mut commands = Vec::new();
    for case in &cases {
        for c in &case.configs {
            if c.tracer == "none" {
                continue;
            }
            let text = output(
                ctx.command("bash")
                    .arg(ctx.script("tracers.sh"))
                    .args([&c.tracer, &c.family]),
            );
            commands.push((case.name.to_owned(), c.label.clone(), text));
        }
    }
    let results = Results {
        opts: opts.clone(),
        machine,
        quiet: ctx.quiet.clone(),
        cases,
        broken,
        throughput,
        post,
        memory,
        flight,
        prog_cost,
        commands,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    let doc_path = root.join(&opts.doc);
    let old = std::fs::read_to_string(&doc_path).unwrap_or_default();
    let text = gate::keep_section(&old, doc::render(&results));
    std::fs::write(&doc_path, text)
        .with_context(|| format!("cannot write {}", doc_path.display()))?;
    eprintln!("bench: wrote {}", doc_path.display());
    Ok(())
}
