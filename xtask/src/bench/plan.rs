//! What to run: the workloads of the slowdown comparison and their tracer configurations, the
//! fault generator of the throughput ladder, the configurations whose program time is measured.

use super::{Spread, Trial};

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
    pub(super) fn new(label: &str, tracer: &str, family: &str) -> Self {
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

pub(super) fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

pub(super) fn slow_cases(quick: bool, before: bool) -> Vec<SlowCase> {
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
            // User stacks by frame pointer only: what the walk cost before unwind tables.
            Config::new("bar fp", "bar-fp", f),
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

/// Threads of the steady fault generator: one per CPU, as one thread faults only as fast as
/// one CPU handles its faults (about 400k/s traced here, short of the rates asked).
pub fn fault_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(super) fn faults_at(rate: f64, seconds: f64) -> Vec<String> {
    args(&format!(
        "faults --rate {rate:.0} --seconds {seconds} --threads {}",
        fault_threads()
    ))
}

/// The configurations whose programs' kernel time is measured (where a workload has them).
pub const PROG_COST_LABELS: [&str; 6] = [
    "bar",
    "bar fp",
    "bar summed",
    "floor",
    "bpftrace",
    "offcputime",
];
