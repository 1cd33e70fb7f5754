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
mod machine;
mod parse;
mod plan;
mod run;
mod section;
mod stats;
mod unwind;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;

pub use self::{
    machine::{Machine, Quiet},
    parse::{Memory, Post, PostRun, ProgCost, Step, Throughput, TimeV, Trial},
    plan::{PROG_COST_LABELS, SlowCase, fault_threads},
    run::{Broken, Ctx},
    stats::Spread,
};
use self::{
    machine::{loadavg, machine},
    parse::parse_time_v,
    plan::{args, faults_at, slow_cases},
    run::{
        broken_peers, build_before, output, run_memory, run_post, run_prog_cost, run_slowdown,
        run_throughput,
    },
};

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
    pub unwind: unwind::UnwindBench,
    pub commands: Vec<(String, String, String)>,
    pub minutes: f64,
}

pub fn run(root: &Path, opts: Options, path: OsString) -> anyhow::Result<()> {
    let started = Instant::now();
    let reps = opts.reps.max(1);
    let mut ctx = ctx(root, &opts, path)?;
    let machine = machine(&ctx, opts.before.as_deref());
    ctx.quiet.load_start = loadavg();

    let mut cases = slow_cases(opts.quick, ctx.before.is_some());
    let broken = broken_peers(&ctx);
    run_slowdown(&mut ctx, &mut cases, reps);
    let throughput = run_throughput(&mut ctx, opts.quick, reps);
    let post = run_post(&mut ctx, opts.quick, reps);
    let mem_rate = throughput.sustained("bar").unwrap_or(100e3);
    let memory = run_memory(&mut ctx, mem_rate, opts.quick, reps);
    let prog_cost = run_prog_cost(&mut ctx, &cases, &PROG_COST_LABELS, reps.min(3));
    let flight = flight::run(&mut ctx, opts.quick);
    let unwind = unwind::run(&mut ctx, opts.quick, reps, machine.before_rev.clone());

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
        unwind,
        commands,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    let doc_path = root.join(&opts.doc);
    let old = std::fs::read_to_string(&doc_path).unwrap_or_default();
    let text = section::keep(&old, doc::render(&results), "gate");
    std::fs::write(&doc_path, text)
        .with_context(|| format!("cannot write {}", doc_path.display()))?;
    eprintln!("bench: wrote {}", doc_path.display());
    Ok(())
}

/// The trials' context, in `target/bench`, with bar-probe as of `opts.before` built there when
/// a before is asked for.
fn ctx(root: &Path, opts: &Options, path: OsString) -> anyhow::Result<Ctx> {
    let work = root.join("target/bench");
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let before = match &opts.before {
        Some(rev) => Some(build_before(root, &work, rev, &path)?),
        None => None,
    };
    Ok(Ctx {
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
    })
}

/// A part of the benchmark that can run alone, into its own section of the report.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    Flight,
    Unwind,
}

/// Runs one part and replaces its section of the report, leaving the rest as the last full run
/// wrote it (a part takes minutes where the whole takes an hour of idle machine).
pub fn run_part(root: &Path, part: Part, opts: Options, path: OsString) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut ctx = ctx(root, &opts, path)?;
    let machine = machine(&ctx, opts.before.as_deref());
    ctx.quiet.load_start = loadavg();
    let (name, body) = match part {
        Part::Flight => ("flight", flight::render(&flight::run(&mut ctx, opts.quick))),
        Part::Unwind => {
            let u = unwind::run(
                &mut ctx,
                opts.quick,
                opts.reps.max(1),
                machine.before_rev.clone(),
            );
            ("unwind", unwind::render(&u))
        }
    };
    ctx.quiet.load_end = loadavg();
    let mut intro = format!(
        "Written by `cargo xtask bench {name}{}` on {} in {:.0} minutes, from bar at `{}`, on \
         its own: the rest of this document comes from the run named at its top.\n\n",
        if opts.quick { " --quick" } else { "" },
        machine.date,
        started.elapsed().as_secs_f64() / 60.0,
        machine.bar_rev,
    );
    doc::quiet(&mut intro, &ctx.quiet);
    // The part's own text opens with its heading: the note goes right under it.
    let (heading, rest) = body.split_once("\n\n").unwrap_or((&body, ""));
    let text = format!("{heading}\n\n{intro}\n{rest}");
    section::write(&root.join(&opts.doc), name, &text)
}
