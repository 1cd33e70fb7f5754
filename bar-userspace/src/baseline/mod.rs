//! Dynamic baselines: a store of per-run summaries of one workload, as the main branch records
//! it build after build (kept as a CI cache), so that a candidate's single run can be judged
//! against the history's own spread from run to run. `add` summarizes captures into it (per
//! frame the weights, per latency distribution its p50 and p99) and keeps the newest runs;
//! `show` tells the moving average, the spread and the drift per frame; `history` hands the
//! runs to `diff`. The files themselves are handled by `store`.

pub mod store;

use std::path::{Path, PathBuf};

use bar_ebpf_common::Family;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::diff::{
    DiffError, History,
    compare::{Norm, Run},
    frames,
    history::{self, Baseline, MIN_RUNS, RunSummary, SAME_WORKLOAD},
    input::{self, Input, ReadOptions, Select},
};

/// `bar-probe baseline`.
#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    #[command(subcommand)]
    pub command: BaselineCmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum BaselineCmd {
    /// Add captures to STORE (created if missing), one run each; the oldest beyond --keep go.
    Add {
        store: PathBuf,
        #[arg(required = true)]
        captures: Vec<PathBuf>,
        /// Event kind of a new store (default: the one the captures share, cpu first).
        #[arg(long, short, value_parser = parse_view)]
        event: Option<Family>,
        /// Newest runs to keep.
        #[arg(long, default_value_t = 20)]
        keep: usize,
        /// A new store keeps the process name as the root frame of stacks.
        #[arg(long)]
        by_process: bool,
    },
    /// Per frame, the baseline (moving average), its spread from run to run and its drift.
    Show {
        store: PathBuf,
        #[arg(long)]
        json: bool,
        /// Frames to show at most.
        #[arg(long, default_value_t = 30)]
        top: usize,
    },
}

fn parse_view(s: &str) -> Result<Family, String> {
    Family::from_name(s)
        .ok_or_else(|| format!("unknown event kind '{s}' (cpu, offcpu, faults, tcp, numa)"))
}

/// Runs `baseline add` or `baseline show`.
pub fn run(args: BaselineArgs) -> Result<(), BaselineError> {
    match args.command {
        BaselineCmd::Add {
            store,
            captures,
            event,
            keep,
            by_process,
        } => {
            let opts = AddOptions {
                store,
                captures,
                view: event,
                keep,
                by_process,
            };
            eprintln!("bar-probe: {}", add(&opts)?.describe(&opts));
        }
        BaselineCmd::Show { store, json, top } => print!("{}", show(&store, top)?.render(json)),
    }
    Ok(())
}

const MANIFEST: &str = "bar-baseline.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error(transparent)]
    Unsafe(#[from] store::Unsafe),
    #[error(transparent)]
    Diff(#[from] DiffError),
    #[error(
        "{0} is not a baseline store (it has no {MANIFEST}): create one with bar-probe baseline add"
    )]
    NotAStore(PathBuf),
    #[error("{0} is not empty and not a baseline store: give a new or empty directory")]
    Occupied(PathBuf),
    #[error("{path} is not a baseline file bar wrote ({why}): remove it, or start a new store")]
    Corrupt { path: PathBuf, why: String },
    #[error("{path} was written by a newer bar (format {found}): use that version")]
    Newer { path: PathBuf, found: u32 },
    #[error("{store} is a baseline of {kind} profiles, not {asked}: use a store of that kind")]
    Kind {
        store: PathBuf,
        kind: String,
        asked: String,
    },
    #[error(
        "{capture} and the baseline {store} look like different workloads: only {overlap:.0}% of its weight is in functions where the store's newest run has it; use a store of this workload"
    )]
    OtherWorkload {
        capture: PathBuf,
        store: PathBuf,
        overlap: f64,
    },
    #[error(
        "{store} holds {runs} run(s): a baseline needs at least {MIN_RUNS} to know its spread (bar-probe baseline add)"
    )]
    TooFew { store: PathBuf, runs: usize },
}

/// The store's description, in `bar-baseline.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// The event kind the store holds.
    kind: String,
    /// Whether the runs keep their process name as the root frame.
    by_process: bool,
    /// Newest runs kept.
    keep: usize,
    /// Number of the next run added.
    next: u64,
}

/// One run in the store, `run-NNNNNNNN.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    format: u32,
    kind: String,
    /// When the run was added (RFC 3339).
    added: String,
    /// The capture it was made from, as given.
    source: String,
    /// The recorded process, for the reader.
    target: String,
    summary: RunSummary,
}

/// A store as read: its description and its runs, oldest first.
struct Loaded {
    dir: store::Dir,
    manifest: Manifest,
    entries: Vec<(String, Entry)>,
}

fn parse<T: serde::de::DeserializeOwned>(
    dir: &store::Dir,
    name: &str,
    data: &[u8],
) -> Result<T, BaselineError> {
    let path = dir.path.join(name);
    let v: Value = serde_json::from_slice(data).map_err(|e| BaselineError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let format = v["format"].as_u64().unwrap_or(0) as u32;
    if format > FORMAT {
        return Err(BaselineError::Newer {
            path,
            found: format,
        });
    }
    serde_json::from_value(v).map_err(|e| BaselineError::Corrupt {
        path,
        why: e.to_string(),
    })
}

fn is_entry(name: &str) -> bool {
    name.starts_with("run-") && name.ends_with(".json")
}

fn load_dir(dir: store::Dir) -> Result<Loaded, BaselineError> {
    let data = dir
        .read(MANIFEST)?
        .ok_or_else(|| BaselineError::NotAStore(dir.path.clone()))?;
    let manifest: Manifest = parse(&dir, MANIFEST, &data)?;
    let mut entries = Vec::new();
    for name in dir.names()?.into_iter().filter(|n| is_entry(n)) {
        let Some(data) = dir.read(&name)? else {
            continue;
        };
        let e: Entry = parse(&dir, &name, &data)?;
        if e.kind != manifest.kind {
            return Err(BaselineError::Corrupt {
                path: dir.path.join(&name),
                why: format!("a {} run in a store of {}", e.kind, manifest.kind),
            });
        }
        entries.push((name, e));
    }
    Ok(Loaded {
        dir,
        manifest,
        entries,
    })
}

fn load(path: &Path) -> Result<Loaded, BaselineError> {
    load_dir(store::Dir::open(path, false)?)
}

/// Whether a path is a baseline store (a directory with a manifest), for `diff` to tell a
/// store from captures.
pub fn is_store(path: &Path) -> bool {
    path.is_dir() && path.join(MANIFEST).exists()
}

/// The store's runs as `diff`'s base, refusing too short a history.
pub fn history(path: &Path) -> Result<History, BaselineError> {
    let l = load(path)?;
    if l.entries.len() < MIN_RUNS {
        return Err(BaselineError::TooFew {
            store: path.to_owned(),
            runs: l.entries.len(),
        });
    }
    Ok(History {
        label: path.display().to_string(),
        view: Family::from_name(&l.manifest.kind).ok_or_else(|| BaselineError::Corrupt {
            path: path.join(MANIFEST),
            why: format!("unknown kind {}", l.manifest.kind),
        })?,
        by_process: l.manifest.by_process,
        runs: l.entries.into_iter().map(|(_, e)| e.summary).collect(),
    })
}

/// What `baseline add` is asked.
#[derive(Debug, Clone)]
pub struct AddOptions {
    pub store: PathBuf,
    pub captures: Vec<PathBuf>,
    /// Kind for a new store (default: the one the captures share, cpu first); must match an
    /// existing store's.
    pub view: Option<Family>,
    /// Newest runs to keep.
    pub keep: usize,
    /// For a new store: keep the process name as the root frame.
    pub by_process: bool,
}

/// What `add` did.
#[derive(Debug)]
pub struct Added {
    pub kind: Family,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub runs: usize,
}

impl Added {
    /// One line for the user.
    pub fn describe(&self, opts: &AddOptions) -> String {
        format!(
            "{} now holds {} {} run{} (added {}, removed {} beyond the newest {})",
            opts.store.display(),
            self.runs,
            self.kind.name(),
            if self.runs == 1 { "" } else { "s" },
            self.added.len(),
            self.removed.len(),
            opts.keep.max(MIN_RUNS)
        )
    }
}

/// A capture as one run of the store: whole, below the process name unless the store keeps it.
fn summarize(
    path: &Path,
    view: Family,
    by_process: bool,
) -> Result<(RunSummary, String), BaselineError> {
    let input = Input::open(path)?;
    let read = ReadOptions {
        phases: None,
        view: Some(input::choose_view(&[&input], Some(view))?.unwrap_or(view)),
        windows: None,
        norm: Norm::Share,
    };
    let mut side = input::read_side("baseline", &[&input], &Select::Whole, read)?;
    let target = match &input {
        Input::Capture(c) => c.outline().meta.target.as_ref().map(|t| t.comm.clone()),
        Input::Folded { .. } => None,
    }
    .unwrap_or_default();
    let mut run: Run = side.runs.remove(0);
    if !by_process {
        frames::strip_run(&mut run);
    }
    Ok((RunSummary::of(&run), target))
}

/// Adds captures to a store (created when it does not exist), each one run, and removes the
/// oldest runs beyond `keep`.
pub fn add(opts: &AddOptions) -> Result<Added, BaselineError> {
    let dir = store::Dir::open(&opts.store, true)?;
    let existing = if dir.read(MANIFEST)?.is_some() {
        Some(load_dir(dir)?)
    } else {
        if !dir.names()?.is_empty() {
            return Err(BaselineError::Occupied(opts.store.clone()));
        }
        None
    };
    let (dir, mut manifest, entries) = match existing {
        Some(l) => (l.dir, l.manifest, l.entries),
        None => {
            let first = Input::open(&opts.captures[0])?;
            let kind = input::choose_view(&[&first], opts.view)?.unwrap_or(Family::Cpu);
            let m = Manifest {
                format: FORMAT,
                kind: kind.name().to_owned(),
                by_process: opts.by_process,
                keep: opts.keep,
                next: 1,
            };
            (store::Dir::open(&opts.store, false)?, m, Vec::new())
        }
    };
    let kind = Family::from_name(&manifest.kind).unwrap_or(Family::Cpu);
    if let Some(v) = opts.view
        && v != kind
    {
        return Err(BaselineError::Kind {
            store: opts.store.clone(),
            kind: manifest.kind.clone(),
            asked: v.name().to_owned(),
        });
    }
    manifest.keep = opts.keep.max(MIN_RUNS);
    // Every capture is read before anything is written: a bad one adds nothing.
    let mut newest = entries.last().map(|(_, e)| e.summary.clone());
    let mut new = Vec::new();
    for path in &opts.captures {
        let (summary, target) =
            summarize(path, kind, manifest.by_process).map_err(|e| match e {
                BaselineError::Diff(DiffError::KindMissing { .. }) => BaselineError::Kind {
                    store: opts.store.clone(),
                    kind: manifest.kind.clone(),
                    asked: format!("{} (which has none)", path.display()),
                },
                e => e,
            })?;
        if let Some(last) = &newest {
            let overlap = summary.leaf_overlap(last);
            if overlap < SAME_WORKLOAD {
                return Err(BaselineError::OtherWorkload {
                    capture: path.clone(),
                    store: opts.store.clone(),
                    overlap: overlap * 100.0,
                });
            }
        }
        newest = Some(summary.clone());
        new.push(Entry {
            format: FORMAT,
            kind: manifest.kind.clone(),
            added: jiff::Timestamp::now().to_string(),
            source: path.display().to_string(),
            target,
            summary,
        });
    }
    let mut names: Vec<String> = entries.into_iter().map(|(n, _)| n).collect();
    let mut added = Vec::new();
    for e in new {
        let text = serde_json::to_vec_pretty(&e).map_err(|e| BaselineError::Corrupt {
            path: opts.store.clone(),
            why: e.to_string(),
        })?;
        // Another `add` may have taken the number: take the next free one.
        loop {
            let name = format!("run-{:08}.json", manifest.next);
            manifest.next += 1;
            if dir.write(&name, &text, false)? {
                names.push(name.clone());
                added.push(name);
                break;
            }
        }
    }
    let text = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    dir.write(MANIFEST, &text, true)?;
    names.sort();
    let excess = names.len().saturating_sub(manifest.keep);
    let removed: Vec<String> = names.drain(..excess).collect();
    for name in &removed {
        dir.remove(name)?;
    }
    Ok(Added {
        kind,
        added,
        removed,
        runs: names.len(),
    })
}

/// One frame of `show`.
#[derive(Debug, Clone, Serialize)]
pub struct FrameBaseline {
    pub frame: String,
    #[serde(flatten)]
    pub baseline: Baseline,
    pub drifted: bool,
}

/// What `show` tells of a store.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub store: String,
    pub kind: String,
    pub by_process: bool,
    pub keep: usize,
    pub runs: usize,
    /// Sources of the runs, oldest first, with when they were added.
    pub sources: Vec<(String, String)>,
    /// Code frames of at least 0.5 % (share), largest first: moving average, spread, drift.
    pub frames: Vec<FrameBaseline>,
    /// Per latency distribution, the same of ln(p99).
    pub latency: Vec<FrameBaseline>,
}

pub fn show(path: &Path, top: usize) -> Result<Shown, BaselineError> {
    let l = load(path)?;
    let runs: Vec<RunSummary> = l.entries.iter().map(|(_, e)| e.summary.clone()).collect();
    let mut names: Vec<&str> = runs
        .iter()
        .flat_map(|r| r.frames.keys().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut frames: Vec<FrameBaseline> = names
        .into_iter()
        .filter(|f| frames::is_code(f))
        .filter_map(|f| {
            let b = history::frame_baseline(&runs, f, Norm::Share)?;
            (b.ewma >= 0.005).then(|| FrameBaseline {
                frame: f.to_owned(),
                drifted: b.drifted(),
                baseline: b,
            })
        })
        .collect();
    frames.sort_by(|a, b| b.baseline.ewma.total_cmp(&a.baseline.ewma));
    frames.truncate(top);
    let mut lat: Vec<&String> = runs.iter().flat_map(|r| r.latency.keys()).collect();
    lat.sort_unstable();
    lat.dedup();
    let latency = lat
        .into_iter()
        .filter_map(|name| {
            let logs: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.latency.get(name))
                .map(|s| (s.p99.max(1) as f64).ln())
                .collect();
            let b = Baseline::new(&logs, 0.0)?;
            Some(FrameBaseline {
                frame: name.clone(),
                drifted: b.drifted(),
                baseline: b,
            })
        })
        .collect();
    Ok(Shown {
        store: path.display().to_string(),
        kind: l.manifest.kind,
        by_process: l.manifest.by_process,
        keep: l.manifest.keep,
        runs: runs.len(),
        sources: l
            .entries
            .iter()
            .map(|(_, e)| (e.added.clone(), e.source.clone()))
            .collect(),
        frames,
        latency,
    })
}

impl Shown {
    pub fn to_json(&self) -> Value {
        json!(self)
    }

    /// The table, or the JSON with `json`.
    pub fn render(&self, json: bool) -> String {
        if json {
            format!("{:#}\n", self.to_json())
        } else {
            self.table()
        }
    }

    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "baseline {}: {} profiles, {} runs (newest {} kept){}",
            self.store,
            self.kind,
            self.runs,
            self.keep,
            if self.by_process {
                ", by process"
            } else {
                ", below the process name"
            }
        );
        if let (Some(first), Some(last)) = (self.sources.first(), self.sources.last()) {
            let _ = writeln!(t, "  oldest run added {}: {}", first.0, first.1);
            let _ = writeln!(t, "  newest run added {}: {}", last.0, last.1);
        }
        if self.runs < MIN_RUNS {
            let _ = writeln!(
                t,
                "  too few runs to judge a candidate: {MIN_RUNS} are needed"
            );
        }
        let _ = writeln!(
            t,
            "\n{:<60} {:>9} {:>8} {:>8}",
            "frame (share of total weight, %)", "baseline", "spread", "drift"
        );
        for f in &self.frames {
            let b = &f.baseline;
            let _ = writeln!(
                t,
                "{:<60} {:>9.2} {:>8.2} {:>+7.1}{}",
                clip(&f.frame, 60),
                b.ewma * 100.0,
                b.spread * 100.0,
                b.drift,
                if f.drifted { "  drifted" } else { "" }
            );
        }
        if !self.latency.is_empty() {
            let _ = writeln!(
                t,
                "\n{:<60} {:>9} {:>8} {:>8}",
                "latency p99 (us)", "baseline", "spread", "drift"
            );
            for f in &self.latency {
                let b = &f.baseline;
                let _ = writeln!(
                    t,
                    "{:<60} {:>9.0} {:>7.0}% {:>+7.1}{}",
                    clip(&f.frame, 60),
                    b.ewma.exp(),
                    b.spread.exp_m1() * 100.0,
                    b.drift,
                    if f.drifted { "  drifted" } else { "" }
                );
            }
        }
        let _ = writeln!(
            t,
            "\nbaseline: moving average (newest run weighs {}); spread: one run's standard deviation, \
             from successive runs; drift: how far the average moved over the runs kept, in spreads \
             (drifted beyond {})",
            history::EWMA_WEIGHT,
            history::DRIFT_SPREADS
        );
        t
    }
}

fn clip(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}
