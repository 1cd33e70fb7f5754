//! The subcommands that wire several stages together (record then report, diff, run, demo).

use bar_ebpf_common::Family;
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::args::{DiffArgs, RecordArgs};
use crate::{
    diff, probe,
    push::{self, PushArgs},
    record::{self, RecordOptions, Scope},
    report,
    sys::files::Dir,
};

/// Runs `diff`: outputs, table or JSON, and the exit status (3 when the gate fails).
pub(super) fn diff_command(args: &DiffArgs) -> anyhow::Result<i32> {
    let mut opts = args.options();
    if let [one] = &opts.base[..]
        && crate::baseline::is_store(one)
    {
        if args.cand.is_none() {
            bail!(
                "give the candidate runs to judge against the baseline {}",
                one.display()
            );
        }
        opts.history = Some(crate::baseline::history(one)?);
        opts.base.clear();
    }
    if args.cand.is_none() && opts.base_select == opts.cand_select {
        bail!(
            "nothing to compare: give a candidate, or two phases or time ranges of {}              (--base-phase/--cand-phase, --base-range/--cand-range)",
            args.base
        );
    }
    let outcome = diff::diff(&opts)?;
    for w in &outcome.warnings {
        eprintln!("bar-probe: warning: {w}");
    }
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("bar-diff-{}", now_stamp())));
    let dir = Dir::create(&dir)?;
    let mut written = diff::output::write_files(&outcome, &dir)
        .with_context(|| format!("cannot write the outputs to {}", dir.path().display()))?;
    let section = crate::render::html::Section {
        title: "Differential flame graph".into(),
        html: diff::output::html_section(&outcome, &dir),
    };
    written.push(
        crate::render::html::write_page(&dir, &format!("bar diff: {}", args.base), &[section])
            .with_context(|| format!("cannot write the outputs to {}", dir.path().display()))?,
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&diff::output::to_json(&outcome))?
        );
    } else {
        print!("{}", diff::output::table(&outcome, args.top));
        println!();
        for p in &written {
            println!("{}", p.display());
        }
    }
    Ok(match &outcome.verdict {
        Some(v) if v.failed() => 3,
        _ => 0,
    })
}

pub(super) fn now_stamp() -> String {
    jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string()
}

/// Records, then renders the capture into the same folder.
pub(super) fn record_and_report(opts: &RecordOptions) -> anyhow::Result<()> {
    record_and_report_then(opts, || {}).map(drop)
}

/// Records (calling `on_start` once recording), then renders the capture into the same folder.
/// Returns how phase commands failed, if any did.
pub(super) fn record_and_report_then(
    opts: &RecordOptions,
    on_start: impl FnOnce(),
) -> anyhow::Result<Vec<String>> {
    let recorded = record::record(opts, on_start)?;
    let files = report::deliver(&recorded.dir, record::CAPTURE)?;
    if !opts.quiet {
        eprintln!(
            "bar-probe: stopped ({}): {} events, {} lost",
            recorded.stop_reason, recorded.events, recorded.lost
        );
        for p in &recorded.push {
            eprintln!("bar-probe: {}", push::describe(p));
        }
    }
    print_written(&files);
    Ok(recorded.command_failures)
}

/// The files written, one per line on stdout (for scripts).
pub(super) fn print_written(written: &[PathBuf]) {
    for p in written {
        println!("{}", p.display());
    }
}

/// `bar-probe run`: records through timed phases, with a load command running through all of
/// them (and recorded itself when no other target is named). Under sudo, load commands run as/// the user who ran sudo, never as root.
pub(super) fn run_phases(
    pid: Option<u32>,
    all: bool,
    cgroup: Option<PathBuf>,
    plan: Vec<record::PlannedPhase>,
    rec: RecordArgs,
    load: &[String],
) -> anyhow::Result<()> {
    let total: Duration = plan.iter().map(|p| p.duration).sum();
    let mut load = match load.split_first() {
        Some((program, args)) => Some(record::Load::start(program, args)?),
        None => None,
    };
    let scope = match (pid, all, cgroup, &load) {
        (Some(p), _, _, _) => Scope::Pid(p),
        (None, true, _, _) => Scope::All,
        (None, false, Some(cg), _) => Scope::Cgroup(cg),
        (None, false, None, Some(l)) => Scope::Pid(l.pid()),
        (None, false, None, None) => {
            bail!("say what to record: --pid, --all, --cgroup, or a load command after --")
        }
    };
    let dir = match &scope {
        Scope::Pid(p) => format!("bar-{p}-{}", now_stamp()),
        _ => format!("bar-all-{}", now_stamp()),
    };
    if rec.ring.is_some() {
        bail!("--ring is for record and attach: a run lasts as long as its phases");
    }
    let mut opts = rec.options(scope, dir)?;
    opts.duration = Some(total);
    opts.plan = plan;
    let result = record_and_report_then(&opts, || {
        if let Some(l) = load.as_mut() {
            l.release();
        }
    });
    let load_failure = load.and_then(record::Load::finish);
    let failures = result?;
    match load_failure.into_iter().chain(failures).next() {
        Some(f) => bail!("{f}"),
        None => Ok(()),
    }
}

/// Starts the built-in workload as a child, records it, stops it.
pub(super) fn demo(output: Option<PathBuf>, duration: Duration, quiet: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find bar-probe's own executable")?;
    let mut child = Command::new(exe)
        .args(["workload", "demo", "--seconds"])
        .arg((duration.as_secs_f64() + 30.0).to_string())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the demo workload")?;
    let pid = child.id();
    if !quiet {
        eprintln!(
            "bar-probe: demo workload started as pid {pid}; recording it for {}",
            humantime::format_duration(duration)
        );
    }
    let mut rec = RecordArgs {
        duration: Some(duration),
        events: probe::FamilyList(vec![Family::Cpu, Family::Faults]),
        frequency: 99,
        min_block: Duration::from_micros(1),
        output: Some(output.unwrap_or_else(|| PathBuf::from(format!("bar-demo-{}", now_stamp())))),
        quiet,
        max_size: None,
        buffer_pages: 256,
        stack_map_size: bar_ebpf_common::DEFAULT_STACK_MAP_ENTRIES,
        avoid: Vec::new(),
        null: false,
        aggregate: None,
        phases: None,
        marker_fifo: None,
        ring: None,
        ring_size: None,
        push: PushArgs::default(),
        ring_trigger: Vec::new(),
        unwind: crate::unwind::Mode::Tables,
        inlined: false,
    }
    .options(Scope::Pid(pid), String::new())?;
    rec.explicit = true;
    let result = record_and_report(&rec);
    let _ = child.kill();
    let _ = child.wait();
    result?;
    if !quiet {
        let dir = rec.out_dir.display();
        eprintln!(
            "bar-probe: open {dir}/report.html in a browser (or cpu.svg, faults.svg); the hot frames are burn_cpu_hot_loop and touch_fresh_pages"
        );
    }
    Ok(())
}
