//! What the scripts leave behind, read back: a trial's folder, `/usr/bin/time -v`, `bpftool`
//! samples, and the results of the runs with the figures derived from them (rates achieved and
//! sustained, peaks).

use std::{path::Path, process::ExitStatus};

use serde_json::Value;

use super::Spread;

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

impl Trial {
    /// Reads what `trial.sh` left in `dir`, given how it ended; a trial that cannot be
    /// trusted gets the error that says why.
    pub fn read(dir: &Path, status: std::io::Result<ExitStatus>, tracer: &str) -> Self {
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
            let run_ns = last.saturating_sub(first);
            // Programs that ran not at all between the samples: the work was over before the
            // first, and nothing was measured (one such trial put 0 ns among the figures).
            if run_ns == 0 {
                return None;
            }
            Some(ProgStat {
                run_ns,
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
        t
    }
}

/// The figures of `/usr/bin/time -v` the report uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct TimeV {
    pub max_rss_kb: u64,
    pub user_s: f64,
    pub sys_s: f64,
}

pub(super) fn parse_time_v(text: &str) -> Option<TimeV> {
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

/// Total run time of the programs `ids`, from `bpftool -j prog show`.
pub(super) fn prog_time(json: &str, ids: &[u64]) -> Option<u64> {
    let v: Value = serde_json::from_str(json).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter(|p| p["id"].as_u64().is_some_and(|id| ids.contains(&id)))
            .filter_map(|p| p["run_time_ns"].as_u64())
            .sum(),
    )
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

/// Peak RSS of bar-probe through a long capture at a steady rate.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    pub rate: f64,
    pub seconds: f64,
    pub trials: Vec<Trial>,
}

/// Kernel time of each tracer's programs per unit of work.
#[derive(Debug, Clone)]
pub struct ProgCost {
    pub case: &'static str,
    pub unit: &'static str,
    pub unit_key: &'static str,
    pub rows: Vec<(String, Vec<Trial>)>,
}
