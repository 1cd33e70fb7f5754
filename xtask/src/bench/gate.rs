//! `cargo xtask bench gate`: how often `bar-probe diff --fail-above` fails a build that did not
//! change (false alarms) and how often it fails one that did (detection), on real recordings of
//! the mix workload (requests in `parse_request`, `compute_response`, `encode_response`;
//! `--regress X` puts X % of the work in `slow_new_path`; clock-paced housekeeping whose share
//! moves with the machine's load). The base build runs as `svc_base`, the candidate as
//! `svc_cand`: the same binary, so a candidate without a regression differs only in its name.
//!
//! Every run of every kind is recorded once, the kinds spread evenly over the whole time, so
//! that the machine's load (other engineers' builds) falls on all of them alike; the trials then
//! compare disjoint groups of runs. Writes its section of `docs/benchmarks.md`.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// What `cargo xtask bench gate` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Same-build pairs (and detection trials of the 5-point regression).
    pub pairs: usize,
    /// Seconds per run.
    pub seconds: f64,
    /// The gate's threshold, in points of share.
    pub fail_above: f64,
    pub doc: PathBuf,
}

/// Kinds of runs: which build, which regression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The base build, for the base side of pairs.
    Base,
    /// The base build, for the store.
    Store,
    /// The renamed build without a regression.
    Same,
    /// The renamed build with a regression of this many points.
    Regress(u32),
}

impl Kind {
    fn exe(self) -> &'static str {
        match self {
            Self::Base | Self::Store => "svc_base",
            _ => "svc_cand",
        }
    }

    fn regress(self) -> u32 {
        match self {
            Self::Regress(x) => x,
            _ => 0,
        }
    }

    fn name(self) -> String {
        match self {
            Self::Base => "base".into(),
            Self::Store => "store".into(),
            Self::Same => "same".into(),
            Self::Regress(x) => format!("reg{x}"),
        }
    }
}

const SIZES: [u32; 4] = [2, 5, 10, 20];

/// Runs of each kind: pairs of 5 runs per side for the false alarms, 10 for the store, 3 per
/// detection trial (all the pairs for 5 points, the target; half as many for the others).
fn plan(pairs: usize) -> Vec<(Kind, usize)> {
    let mut v = vec![
        (Kind::Base, 5 * pairs),
        (Kind::Store, 10),
        (Kind::Same, 5 * pairs),
    ];
    for x in SIZES {
        let trials = if x == 5 { pairs } else { pairs.div_ceil(2) };
        v.push((Kind::Regress(x), 3 * trials));
    }
    v
}

/// The recording order: each kind's runs spread evenly over the whole.
fn schedule(plan: &[(Kind, usize)]) -> Vec<(Kind, usize)> {
    let mut all: Vec<(f64, Kind, usize)> = Vec::new();
    for (k, n) in plan {
        for i in 0..*n {
            all.push(((i as f64 + 0.5) / *n as f64, *k, i));
        }
    }
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().map(|(_, k, i)| (k, i)).collect()
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// One recorded run.
struct Recorded {
    capture: String,
    load: f64,
    /// Samples per second of the process over the sampling rate: how much CPU it got.
    cpu: f64,
    /// Share of the samples in `slow_new_path`, from the recording's folded stacks.
    slow: f64,
}

/// Records one run: the workload from `exe` waits, bar-probe attaches, the workload goes.
fn record(
    bar: &Path,
    exe: &Path,
    regress: u32,
    seconds: f64,
    dir: &Path,
) -> anyhow::Result<Recorded> {
    let _ = std::fs::remove_dir_all(dir);
    let load = loadavg();
    let mut w = Command::new(exe)
        .args(["workload", "mix", "--wait", "--seconds"])
        .arg(seconds.to_string())
        .args(["--regress", &regress.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let mut rec = Command::new(bar)
        .args([
            "attach",
            "--pid",
            &w.id().to_string(),
            "-e",
            "cpu",
            "-F",
            "999",
            "-o",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start bar-probe")?;
    let stderr = rec.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("recording "));
    std::thread::spawn(move || lines.for_each(drop));
    if !ready {
        let _ = w.kill();
        let _ = w.wait();
        let _ = rec.wait();
        bail!("bar-probe did not start recording into {}", dir.display());
    }
    w.stdin.as_mut().expect("piped").write_all(b"go\n")?;
    let out = w.wait_with_output()?;
    let status = rec.wait()?;
    if !out.status.success() || !status.success() {
        bail!(
            "a run into {} failed: workload {}, bar-probe {status}",
            dir.display(),
            out.status
        );
    }
    let folded = std::fs::read_to_string(dir.join("cpu.folded"))?;
    let (mut all, mut slow) = (0u64, 0u64);
    for line in folded.lines() {
        let Some((stack, w)) = line.rsplit_once(' ') else {
            continue;
        };
        let w: u64 = w.parse().unwrap_or(0);
        all += w;
        if stack.contains("slow_new_path") {
            slow += w;
        }
    }
    Ok(Recorded {
        capture: dir.join("capture.bar").display().to_string(),
        load,
        cpu: all as f64 / (seconds * 999.0),
        slow: slow as f64 / all.max(1) as f64,
    })
}

/// One verdict of `bar-probe diff`.
struct Verdict {
    status: Option<i32>,
    offenders: Vec<String>,
}

fn diff(
    bar: &Path,
    base: &str,
    cand: &str,
    extra: &[&str],
    fail_above: f64,
    out: &Path,
) -> Verdict {
    let o = Command::new(bar)
        .args([
            "diff",
            base,
            cand,
            "--json",
            "--fail-above",
            &fail_above.to_string(),
        ])
        .args(extra)
        .arg("-o")
        .arg(out)
        .output();
    let Ok(o) = o else {
        return Verdict {
            status: None,
            offenders: Vec::new(),
        };
    };
    let json: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    Verdict {
        status: o.status.code(),
        offenders: json["gate"]["offenders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["name"].as_str().map(str::to_owned))
            .collect(),
    }
}

/// Rate of a count with its Wilson 95 % interval, as the report prints it.
fn rate(k: usize, n: usize) -> String {
    if n == 0 {
        return "-".into();
    }
    let (kf, nf, z) = (k as f64, n as f64, 1.96f64);
    let p = kf / nf;
    let d = 1.0 + z * z / nf;
    let c = (p + z * z / (2.0 * nf)) / d;
    let h = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / d;
    format!(
        "{k}/{n} = {:.0} % [{:.0}, {:.0}]",
        p * 100.0,
        (c - h).max(0.0) * 100.0,
        (c + h).min(1.0) * 100.0
    )
}

/// One configuration's outcome: counted trials.
struct Row {
    config: String,
    /// Trials the gate failed (false alarms, or detections naming `slow_new_path`).
    hits: usize,
    /// Trials the gate refused to judge (exit 1 with its reason).
    refused: usize,
    trials: usize,
    note: String,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

type Runs = std::collections::BTreeMap<String, Vec<Recorded>>;

/// Records every planned run, in the spread-out order; a run that fails is tried once more.
fn record_all(
    bar: &Path,
    work: &Path,
    plan: &[(Kind, usize)],
    seconds: f64,
) -> anyhow::Result<Runs> {
    let order = schedule(plan);
    let mut slots: std::collections::BTreeMap<String, Vec<Option<Recorded>>> = plan
        .iter()
        .map(|(k, n)| (k.name(), (0..*n).map(|_| None).collect()))
        .collect();
    for (done, (kind, i)) in order.iter().enumerate() {
        let dir = work.join(format!("{}-{i:03}", kind.name()));
        let exe = work.join(kind.exe());
        let r = record(bar, &exe, kind.regress(), seconds, &dir)
            .or_else(|_| record(bar, &exe, kind.regress(), seconds, &dir))?;
        slots.get_mut(&kind.name()).expect("planned")[*i] = Some(r);
        if done % 20 == 19 {
            eprintln!("bench gate: {} of {} runs recorded", done + 1, order.len());
        }
    }
    Ok(slots
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|r| r.expect("recorded")).collect()))
        .collect())
}

fn join(v: &[Recorded]) -> String {
    v.iter()
        .map(|r| r.capture.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The trials: bar-probe, where diff writes, the threshold, and the runs.
struct Trials<'a> {
    bar: &'a Path,
    out: PathBuf,
    threshold: f64,
    pairs: usize,
    runs: &'a Runs,
    store: String,
}

impl Trials<'_> {
    fn of(&self, k: Kind) -> &[Recorded] {
        &self.runs[&k.name()]
    }

    fn gate(&self, base: &str, cand: &str, extra: &[&str]) -> Verdict {
        diff(self.bar, base, cand, extra, self.threshold, &self.out)
    }

    /// A row of false alarms: pair p compares the base side `base(p)` with `cand(p)`.
    fn false_alarms(
        &self,
        config: String,
        note: &str,
        extra: &[&str],
        sides: impl Fn(usize) -> (String, String),
    ) -> Row {
        let mut row = Row {
            config,
            hits: 0,
            refused: 0,
            trials: self.pairs,
            note: note.to_owned(),
        };
        for p in 0..self.pairs {
            let (b, c) = sides(p);
            let v = self.gate(&b, &c, extra);
            row.hits += usize::from(v.status == Some(3));
            row.refused += usize::from(v.status == Some(1));
        }
        row
    }

    /// Disjoint groups of the base build against the renamed build, and against the store.
    fn all_false_alarms(&self) -> (Vec<Row>, Row) {
        let (base, same) = (self.of(Kind::Base), self.of(Kind::Same));
        let group = |v: &[Recorded], p: usize, n: usize| join(&v[5 * p..5 * p + n]);
        let mut rows = Vec::new();
        for n in [1, 3, 5] {
            for windows in [false, true] {
                let extra: &[&str] = if windows {
                    &["--windows", "250ms"]
                } else {
                    &[]
                };
                let config = format!(
                    "{n} against {n}{}",
                    if windows { ", 250 ms windows" } else { "" }
                );
                rows.push(self.false_alarms(config, "", extra, |p| {
                    (group(base, p, n), group(same, p, n))
                }));
            }
        }
        for n in [1, 3] {
            rows.push(
                self.false_alarms(format!("{n} against the store of 10"), "", &[], |p| {
                    (self.store.clone(), group(same, p, n))
                }),
            );
        }
        // The same pairs compared by process: what the gate did before it left the names out.
        let by_process = self.false_alarms(
            "3 against 3, `--by-process`".into(),
            "the renamed build compared by process name",
            &["--by-process"],
            |p| (group(base, p, 3), group(same, p, 3)),
        );
        (rows, by_process)
    }

    /// Per regression: its measured share, and how often the gate caught it 3 against 3 and
    /// against the store with 1 and 3 runs.
    fn detection(&self) -> Vec<(u32, Vec<String>)> {
        let base = self.of(Kind::Base);
        let caught = |v: &Verdict| {
            v.status == Some(3) && v.offenders.iter().any(|o| o.contains("slow_new_path"))
        };
        SIZES
            .iter()
            .map(|&x| {
                let reg = self.of(Kind::Regress(x));
                let trials = reg.len() / 3;
                let mut shares: Vec<f64> = reg.iter().map(|r| r.slow * 100.0).collect();
                let mut cells = vec![format!("{:.1}", median(&mut shares))];
                for (n, against_store) in [(3, false), (1, true), (3, true)] {
                    let hits = (0..trials)
                        .filter(|&p| {
                            let cand = join(&reg[3 * p..3 * p + n]);
                            let b = if against_store {
                                self.store.clone()
                            } else {
                                join(&base[5 * p..5 * p + 3])
                            };
                            caught(&self.gate(&b, &cand, &[]))
                        })
                        .count();
                    cells.push(rate(hits, trials));
                }
                (x, cells)
            })
            .collect()
    }
}

pub fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let work = root.join("target/bench/gate");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    // The binary measured is a copy: a build meanwhile does not change it under the trials.
    let bar = work.join("bar-probe");
    std::fs::copy(root.join("target/release/bar-probe"), &bar)
        .context("cannot copy target/release/bar-probe")?;
    for name in ["svc_base", "svc_cand"] {
        std::fs::copy(&bar, work.join(name))
            .with_context(|| format!("cannot copy bar-probe to {name}"))?;
    }
    let plan = plan(opts.pairs);
    let load_start = loadavg();
    let runs = record_all(&bar, &work, &plan, opts.seconds)?;
    let recorded_min = started.elapsed().as_secs_f64() / 60.0;
    let load_end = loadavg();
    // The store: ten runs of the base build recorded among the others.
    let store = work.join("store");
    let _ = std::fs::remove_dir_all(&store);
    let mut add = Command::new(&bar);
    add.args(["baseline", "add"]).arg(&store);
    add.args(runs[&Kind::Store.name()].iter().map(|r| r.capture.as_str()));
    let o = add.output()?;
    if !o.status.success() {
        bail!(
            "baseline add failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let trials = Trials {
        bar: &bar,
        out: work.join("diff"),
        threshold: opts.fail_above,
        pairs: opts.pairs,
        runs: &runs,
        store: store.display().to_string(),
    };
    let (rows, by_process) = trials.all_false_alarms();
    let detect = trials.detection();
    let all = || runs.values().flatten();
    let mut loads: Vec<f64> = all().map(|r| r.load).collect();
    let mut cpus: Vec<f64> = all().map(|r| r.cpu).collect();
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = Report {
        rev,
        rows,
        by_process,
        detect,
        load: Load {
            start: load_start,
            end: load_end,
            max: loads.iter().copied().fold(0.0, f64::max),
            median: median(&mut loads),
            cpu_min: cpus.iter().copied().fold(f64::INFINITY, f64::min),
            cpu_median: median(&mut cpus),
        },
        runs: all().count(),
        recorded_min,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    super::section::write(&root.join(&opts.doc), "gate", &render(opts, &report))
}

/// Everything the section reports.
struct Report {
    /// The revision measured.
    rev: String,
    rows: Vec<Row>,
    by_process: Row,
    detect: Vec<(u32, Vec<String>)>,
    load: Load,
    runs: usize,
    recorded_min: f64,
    minutes: f64,
}

/// How busy the machine was.
struct Load {
    start: f64,
    end: f64,
    median: f64,
    max: f64,
    cpu_median: f64,
    cpu_min: f64,
}

fn render(opts: &Options, r: &Report) -> String {
    let Report {
        rev,
        rows,
        by_process,
        detect,
        load,
        runs,
        recorded_min,
        minutes,
    } = r;
    let mut d = String::new();
    let _ = writeln!(d, "## The CI gate: false alarms and detection\n");
    let _ = writeln!(
        d,
        "Written by `cargo xtask bench gate` in {minutes:.0} minutes ({runs} recordings in \
         {recorded_min:.0}; the rest is `bar-probe diff`), from bar at `{rev}`. Each run is the mix workload for {} s \
         recorded with `bar-probe attach -e cpu -F 999`; the base build runs as `svc_base`, the \
         candidate as `svc_cand` (the same binary: without a regression, its only change is its \
         name); a regression of X points is `--regress X` (X % of the main thread's work in \
         `slow_new_path`). Every gate is `bar-probe diff BASE CAND --fail-above {}` (points of \
         share). The runs of all kinds were recorded interleaved, so the machine's load fell on \
         all alike, and each trial compares runs no other trial of its row uses.\n",
        opts.seconds, opts.fail_above
    );
    let _ = writeln!(
        d,
        "**Load.** Load average (1 min) {:.1} at the start, {:.1} at the end, {:.1} at the \
         median run's start ({:.1} at most). The workload got {:.0} % of a CPU's samples at the \
         median run, {:.0} % in the worst (its housekeeping's share rises as it gets less).\n",
        load.start,
        load.end,
        load.median,
        load.max,
        load.cpu_median * 100.0,
        load.cpu_min * 100.0
    );
    let _ = writeln!(d, "### False alarms (no regression; target: at most 5 %)\n");
    let _ = writeln!(d, "| runs per side | gate failed | refused to judge |");
    let _ = writeln!(d, "|---|---|---|");
    for r in rows {
        let _ = writeln!(
            d,
            "| {} | {} | {} |",
            r.config,
            rate(r.hits, r.trials),
            if r.refused == 0 {
                "0".to_owned()
            } else {
                format!(
                    "{} of {} (one run per side: exit 1, with the reason)",
                    r.refused, r.trials
                )
            }
        );
    }
    let _ = writeln!(
        d,
        "| {} | {} | {} |\n",
        by_process.config,
        rate(by_process.hits, by_process.trials),
        by_process.note
    );
    let _ = writeln!(
        d,
        "### Detection (the gate fails and names `slow_new_path`; target: 5 points in at least \
         95 % at 3 runs per side and against the store)\n"
    );
    let _ = writeln!(
        d,
        "| regression | measured (median share of `slow_new_path`, %) | 3 against 3 | 1 against \
         the store of 10 | 3 against the store of 10 |"
    );
    let _ = writeln!(d, "|---|---|---|---|---|");
    for (x, cells) in detect {
        let _ = writeln!(d, "| {x} points | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        d,
        "\nRates are counts of trials with a Wilson 95 % interval. The store holds 10 runs of the \
         base build recorded among the others."
    );
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_run_is_scheduled_once_and_kinds_are_spread() {
        let p = plan(20);
        let s = schedule(&p);
        assert_eq!(s.len(), p.iter().map(|x| x.1).sum::<usize>());
        // The store's ten runs spread over the whole: one in each tenth.
        let at: Vec<usize> = s
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| *k == Kind::Store)
            .map(|(i, _)| i * 10 / s.len())
            .collect();
        assert_eq!(at, (0..10).collect::<Vec<_>>());
        assert_eq!(rate(1, 20), "1/20 = 5 % [1, 24]");
    }
}
