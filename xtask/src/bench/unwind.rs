//! The unwinding part of `cargo xtask bench`: what walking user stacks with unwind tables
//! costs, next to frame pointers, bpftrace and perf's DWARF mode, on builds of the storms
//! without frame pointers (the frameless C workload of the tests); the cost of one frame of
//! each walk; the size of the tables and the time to build them; and what the tables cost code
//! with frame pointers, against the build that walked by frame pointer only.

use std::{fmt::Write as _, path::PathBuf, process::Command};

use serde_json::Value;

use super::{
    Ctx, ProgCost, SlowCase, Spread, Trial, output,
    plan::{Config, slow_cases},
    run_prog_cost,
};

/// One object's table, as `bar-probe tables` built it.
#[derive(Debug, Clone)]
pub struct TableSize {
    pub file: String,
    pub line: Value,
}

/// Program time per event of one walk at two stack depths.
#[derive(Debug, Clone)]
pub struct DepthCost {
    pub label: &'static str,
    pub shallow: Vec<Trial>,
    pub deep: Vec<Trial>,
}

impl DepthCost {
    fn per_event(trials: &[Trial]) -> Option<Spread> {
        let v: Vec<f64> = trials
            .iter()
            .filter_map(|t| t.prog_ns_per_unit("pages"))
            .collect();
        Spread::of(&v)
    }
}

/// Everything the unwinding benchmarks measured.
#[derive(Debug, Clone, Default)]
pub struct UnwindBench {
    pub tables: Vec<TableSize>,
    /// `summary.json`'s `unwind` of a `record --all` of the whole machine.
    pub system: Option<Value>,
    pub storms: Vec<SlowCase>,
    pub depth: Vec<DepthCost>,
    /// Frames the deep runs add.
    pub extra_frames: u32,
    /// The build `bar before` comes from, when there is one.
    pub before_rev: Option<String>,
    /// Program time per unit of the storms of the whole benchmark (built with frame pointers),
    /// `bar before` against `bar`.
    pub frame_pointer_code: Vec<ProgCost>,
    pub error: Option<String>,
}

/// Builds the C workload with and without frame pointers, next to the other trials' files.
fn build_workloads(ctx: &Ctx) -> anyhow::Result<(PathBuf, PathBuf)> {
    let src = ctx.root.join("tests/workloads/frameless.c");
    let mut out = Vec::new();
    for (name, fp) in [
        ("frameless", "-fomit-frame-pointer"),
        ("framed", "-fno-omit-frame-pointer"),
    ] {
        let bin = ctx.work.join(name);
        let status = Command::new("gcc")
            .args(["-O2", fp, "-g0", "-o"])
            .arg(&bin)
            .arg(&src)
            .args(["-ldl", "-pthread"])
            .status()?;
        anyhow::ensure!(status.success(), "gcc failed to build {}", src.display());
        out.push(bin);
    }
    Ok((out[0].clone(), out[1].clone()))
}

fn storm_cases(quick: bool) -> Vec<SlowCase> {
    let count = |full: u64, small: u64| if quick { small } else { full }.to_string();
    let mut cases = vec![
        SlowCase {
            name: "frameless faults",
            family: "faults",
            what: "the page-fault storm, built in C with -O2 -fomit-frame-pointer",
            unit_key: "pages",
            unit: "page faults",
            args: vec!["faults".into(), count(300_000, 50_000)],
            configs: vec![],
        },
        SlowCase {
            name: "frameless pingpong",
            family: "offcpu",
            what: "the context-switch storm, built in C with -O2 -fomit-frame-pointer",
            unit_key: "round_trips",
            unit: "round trips",
            args: vec!["pingpong".into(), count(100_000, 20_000)],
            configs: vec![],
        },
    ];
    for c in &mut cases {
        let f = c.family;
        c.configs = vec![
            Config::new("untraced", "none", "-"),
            Config::new("bar", "bar", f),
            Config::new("bar fp", "bar-fp", f),
            Config::new("bpftrace", "bpftrace", f),
            Config::new("perf", "perf", f),
            Config::new("perf dwarf", "perf-dwarf", f),
        ];
    }
    cases
}

/// Every unwinding measurement; `before_rev` names the build `ctx.before` is, if any.
pub fn run(ctx: &mut Ctx, quick: bool, reps: usize, before_rev: Option<String>) -> UnwindBench {
    let mut u = UnwindBench {
        extra_frames: 32,
        before_rev,
        ..UnwindBench::default()
    };
    eprintln!("bench: unwind tables");
    let bar_bin = ctx.bar.to_string_lossy().into_owned();
    let files = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/bin/python3.11",
        bar_bin.as_str(),
    ];
    let text = output(ctx.command(&ctx.bar).arg("tables").args(files));
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line) {
            let file = match v["file"].as_str().unwrap_or_default() {
                f if f == bar_bin => "bar-probe".to_owned(),
                f => f.to_owned(),
            };
            u.tables.push(TableSize { file, line: v });
        }
    }
    // Every process of the machine, for a few seconds.
    ctx.quiet.wait();
    let dir = ctx.work.join("unwind-all");
    let _ = std::fs::remove_dir_all(&dir);
    let secs = if quick { "3s" } else { "10s" };
    let _ = output(
        ctx.command(&ctx.bar)
            .args(["record", "--all", "-e", "cpu", "-q", "-d", secs, "-o"])
            .arg(&dir),
    );
    u.system = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .map(|s| s["unwind"].clone());
    let (frameless, framed) = match build_workloads(ctx) {
        Ok(b) => b,
        Err(e) => {
            u.error = Some(e.to_string());
            return u;
        }
    };
    let frameless = frameless.to_string_lossy().into_owned();
    let framed = framed.to_string_lossy().into_owned();
    u.storms = storm_cases(quick);
    for case in &mut u.storms {
        eprintln!("bench: slowdown on {} ({reps} repetitions)", case.name);
        let n = case.configs.len();
        for r in 0..reps {
            for k in 0..n {
                let i = (k + r) % n;
                let (tracer, family) = (
                    case.configs[i].tracer.clone(),
                    case.configs[i].family.clone(),
                );
                let env = [("WORKLOAD_BIN", frameless.as_str())];
                let t = ctx.trial(&tracer, &family, &case.args, &env, None);
                case.configs[i].trials.push(t);
            }
        }
    }
    u.depth = run_depth(ctx, quick, reps, &frameless, &framed, u.extra_frames);
    if ctx.before.is_some() {
        let cases = slow_cases(quick, true);
        u.frame_pointer_code = run_prog_cost(ctx, &cases, &["bar before", "bar fp", "bar"], reps);
    }
    u
}

/// Program time per fault at the storm's depth and `extra` frames deeper, for each walk.
fn run_depth(
    ctx: &mut Ctx,
    quick: bool,
    reps: usize,
    frameless: &str,
    framed: &str,
    extra: u32,
) -> Vec<DepthCost> {
    let was = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    if std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").is_err() {
        return Vec::new();
    }
    eprintln!("bench: cost of a frame (kernel.bpf_stats_enabled=1)");
    let pages = if quick { "50000" } else { "300000" };
    let mut walks: Vec<(&'static str, &str, &str)> = vec![
        (
            "frame pointers (--unwind frame-pointers), framed build",
            "bar-fp",
            framed,
        ),
        ("tables, framed build", "bar", framed),
        ("tables, frameless build", "bar", frameless),
    ];
    if ctx.before.is_some() {
        walks.insert(0, ("bar before, framed build", "bar-before", framed));
    }
    let mut out: Vec<DepthCost> = walks
        .iter()
        .map(|w| DepthCost {
            label: w.0,
            shallow: Vec::new(),
            deep: Vec::new(),
        })
        .collect();
    for r in 0..reps.min(3) {
        for k in 0..walks.len() * 2 {
            let j = (k + r) % (walks.len() * 2);
            let (i, deep) = (j / 2, j % 2 == 1);
            let (_, tracer, bin) = walks[i];
            let depth = if deep { extra.to_string() } else { "0".into() };
            let args = vec!["faults".to_owned(), pages.to_owned(), depth];
            let env = [("WORKLOAD_BIN", bin), ("PROG_STATS", "1")];
            let t = ctx.trial(tracer, "faults", &args, &env, None);
            if deep {
                out[i].deep.push(t);
            } else {
                out[i].shallow.push(t);
            }
        }
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", was.trim());
    out
}

fn spread(s: Option<Spread>, f: impl Fn(&Spread) -> String) -> String {
    s.map_or_else(|| "–".into(), |s| f(&s))
}

/// Share of bar's stacks that reached their outermost frame, over a configuration's trials.
fn whole_share(trials: &[Trial]) -> Option<f64> {
    let (mut stacks, mut cut) = (0.0, 0.0);
    for t in trials {
        let u = &t.summary.as_ref()?["unwind"];
        stacks += u["stacks"].as_f64()?;
        cut += u["cut_short"]
            .as_object()?
            .values()
            .filter_map(Value::as_f64)
            .sum::<f64>();
    }
    (stacks > 0.0).then(|| 100.0 * (stacks - cut) / stacks)
}

pub fn render(u: &UnwindBench) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Unwinding user stacks\n");
    if let Some(e) = &u.error {
        let _ = writeln!(s, "Not measured: {e}.\n");
    }
    let _ = writeln!(
        s,
        "Tables built by `bar-probe tables` (the rows after merging, as the kernel holds them, 8 \
         bytes each):\n\n| object | rows | in the kernel | build time |\n|---|---:|---:|---:|"
    );
    for t in &u.tables {
        let l = &t.line;
        if let Some(e) = l["error"].as_str() {
            let _ = writeln!(s, "| `{}` | {e} | | |", t.file);
            continue;
        }
        let _ = writeln!(
            s,
            "| `{}` | {} | {:.0} KiB | {:.0} ms |",
            t.file,
            l["rows"],
            l["bytes"].as_f64().unwrap_or(0.0) / 1024.0,
            l["build_ms"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(sys) = &u.system {
        let t = &sys["tables"];
        let _ = writeln!(
            s,
            "\n`record --all` of this machine: {} objects, {} rows, {:.1} MB in the kernel (of \
             {:.0} MB reserved), built in {:.1} s of CPU, {} evicted, {} processes.\n",
            t["objects"],
            t["rows"],
            t["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            t["capacity_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            t["build_ms"].as_f64().unwrap_or(0.0) / 1e3,
            t["evicted"],
            t["processes"]
        );
    }
    render_storms(&mut s, u);
    render_depth(&mut s, u);
    render_frame_pointer_code(&mut s, u);
    s
}

fn render_storms(s: &mut String, u: &UnwindBench) {
    for case in &u.storms {
        let _ = writeln!(
            s,
            "\n### {} ({})\n\nSlowdown of the workload (its own elapsed time over the untraced \
             run of the same repetition), and the share of bar's stacks walked to their \
             outermost frame:\n\n| tracer | slowdown | whole stacks |\n|---|---:|---:|",
            case.name, case.what
        );
        for (i, c) in case.configs.iter().enumerate().skip(1) {
            let whole = whole_share(&c.trials).map_or_else(|| "–".into(), |w| format!("{w:.0}%"));
            let _ = writeln!(
                s,
                "| {} | {} | {whole} |",
                c.label,
                spread(case.slowdown(i), Spread::ratio)
            );
        }
    }
}

fn render_depth(s: &mut String, u: &UnwindBench) {
    if u.depth.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n### Cost of a frame\n\nProgram time per fault of the fault storm (C, -O2), at its \
         own depth and with {} more frames between the chain and the faulting function; a \
         frame costs the difference over {}. The framed build has frame pointers, so both walks \
         follow the same frames there.\n\n| walk | per fault | {} frames deeper | per frame \
         |\n|---|---:|---:|---:|",
        u.extra_frames, u.extra_frames, u.extra_frames
    );
    for d in &u.depth {
        let (a, b) = (
            DepthCost::per_event(&d.shallow),
            DepthCost::per_event(&d.deep),
        );
        let per_frame = a
            .zip(b)
            .map(|(a, b)| {
                format!(
                    "{:.1} ns",
                    (b.median - a.median) / f64::from(u.extra_frames)
                )
            })
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            s,
            "| {} | {} | {} | {per_frame} |",
            d.label,
            spread(a, |x| format!("{:.0} ns", x.median)),
            spread(b, |x| format!("{:.0} ns", x.median)),
        );
    }
}

/// Program time per unit of work of the whole benchmark's storms, before unwind tables and now.
fn render_frame_pointer_code(s: &mut String, u: &UnwindBench) {
    let Some(rev) = u.before_rev.as_deref() else {
        return;
    };
    let _ = writeln!(
        s,
        "\n### Code with frame pointers, before unwind tables and now\n\nProgram time per unit \
         of work (as in \"Where the time goes\", median of the repetitions, range in brackets) \
         on the storms of section 1, whose code (bar-probe's own workloads) keeps frame \
         pointers, by `bar before` (bar-probe built from `{rev}`, which walked user stacks by \
         frame pointer only), by bar with `--unwind frame-pointers` (the same walk as before, \
         in today's walker) and by bar. Target: at most 5% more.\n\n| storm | bar before \
         | bar fp | bar | change fp | change |\n|---|---:|---:|---:|---:|---:|"
    );
    for pc in &u.frame_pointer_code {
        let per_unit = |label: &str| {
            let (_, trials) = pc.rows.iter().find(|(l, _)| l == label)?;
            let v: Vec<f64> = trials
                .iter()
                .filter_map(|t| t.prog_ns_per_unit(pc.unit_key))
                .collect();
            Spread::of(&v)
        };
        let before = per_unit("bar before");
        let (fp, now) = (per_unit("bar fp"), per_unit("bar"));
        let ns = |x: &Spread| format!("{:.0} ns ({:.0}–{:.0})", x.median, x.min, x.max);
        let change = |after: Option<Spread>| {
            before
                .zip(after)
                .map(|(b, n)| format!("{:+.1}%", 100.0 * (n.median / b.median - 1.0)))
                .unwrap_or_else(|| "–".into())
        };
        let _ = writeln!(
            s,
            "| {} (per {}) | {} | {} | {} | {} | {} |",
            pc.case,
            pc.unit.trim_end_matches('s'),
            spread(before, ns),
            spread(fp, ns),
            spread(now, ns),
            change(fp),
            change(now),
        );
    }
}
