//! Running the trials: one trial through `scripts/bench/trial.sh`, and each part of the run
//! (slowdown, throughput ladder, post-processing, memory, program time) with its configurations
//! interleaved across repetitions.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::bail;

use super::{
    Memory, Post, PostRun, ProgCost, Quiet, SlowCase, Step, Throughput, Trial, args, faults_at,
    parse_time_v, stats,
};

/// Everything the trials need.
pub struct Ctx {
    pub root: PathBuf,
    pub work: PathBuf,
    pub bar: PathBuf,
    pub before: Option<PathBuf>,
    pub path: OsString,
    pub quiet: Quiet,
    pub trials_run: usize,
}

impl Ctx {
    pub(super) fn script(&self, name: &str) -> PathBuf {
        self.root.join("scripts/bench").join(name)
    }

    pub(super) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
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
        let t = Trial::read(&dir, status, tracer);
        if let Some(e) = &t.error {
            eprintln!("bench: {tracer} {family} {}: {e}", workload.join(" "));
        }
        if keep.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        t
    }
}

/// Output of a command, trimmed; empty when it fails.
pub(super) fn output(cmd: &mut Command) -> String {
    cmd.stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Peers that do not run on this kernel, with the error they give.
#[derive(Debug, Clone)]
pub struct Broken {
    pub family: &'static str,
    pub command: String,
    pub error: String,
}

pub(super) fn broken_peers(ctx: &Ctx) -> Vec<Broken> {
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

pub(super) fn run_slowdown(ctx: &mut Ctx, cases: &mut [SlowCase], reps: usize) {
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

pub(super) fn run_ladder(
    ctx: &mut Ctx,
    tp: &mut Throughput,
    tracers: &[&str],
    rates: &[f64],
    reps: usize,
) {
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

pub(super) fn run_throughput(ctx: &mut Ctx, quick: bool, reps: usize) -> Throughput {
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

pub(super) fn run_post(ctx: &mut Ctx, quick: bool, reps: usize) -> Post {
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

pub(super) fn run_memory(ctx: &mut Ctx, rate: f64, quick: bool, reps: usize) -> Memory {
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

/// Kernel time of the programs of the configurations `labels` (where a case has them) per unit
/// of work, interleaved.
pub(super) fn run_prog_cost(
    ctx: &mut Ctx,
    cases: &[SlowCase],
    labels: &[&str],
    reps: usize,
) -> Vec<ProgCost> {
    let was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    if std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").is_err() {
        return Vec::new();
    }
    eprintln!("bench: kernel time of the programs (kernel.bpf_stats_enabled=1)");
    let mut out = Vec::new();
    for case in cases.iter().filter(|c| !c.unit_key.is_empty()) {
        let mut rows: Vec<(String, Vec<Trial>)> = labels
            .iter()
            .map(|l| ((*l).to_owned(), Vec::new()))
            .collect();
        for r in 0..reps {
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
            unit_key: case.unit_key,
            rows,
        });
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", was.trim());
    out
}

/// Builds bar-probe as of `rev` from a clean export of that revision (its own target folder).
pub(super) fn build_before(
    root: &Path,
    work: &Path,
    rev: &str,
    path: &OsString,
) -> anyhow::Result<PathBuf> {
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
