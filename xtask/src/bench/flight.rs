//! A whole host under a fork storm (`stress-ng --fork 2 --vm 1`): the peak memory of
//! `record --all` over 60 s, and of the flight recorder (`record --all --ring`) kept running
//! for longer than its window and dumped at the end, with what they recorded, how much of it
//! was named, and how long the dump took. bar-probe runs under `/usr/bin/time -v`, whose
//! maximum RSS covers rendering too (the recording's outputs, the dump's and the last ring's).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{Ctx, TimeV, parse_time_v};

/// The storm every run records.
pub const STORM: &str = "stress-ng --fork 2 --vm 1";

/// The memory bar-probe sets itself for these runs (README, "Limits and costs").
pub const MAX_RSS_MB: f64 = 256.0;

/// One run: what was asked, and what came out.
#[derive(Debug, Clone, Default)]
pub struct Run {
    pub label: String,
    pub command: String,
    /// How long the storm ran while bar-probe recorded.
    pub seconds: f64,
    pub time: Option<TimeV>,
    /// The outputs written (the recording's, or the dump's).
    pub summary: Option<Value>,
    /// How long `bar-probe dump` took to answer.
    pub dump_s: Option<f64>,
    /// Weight of the faults of processes known only by pid, over all faults.
    pub unnamed: Option<(u64, u64)>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Flight {
    pub runs: Vec<Run>,
}

/// The runs: 60 s of `record --all`, a 60 s ring kept three minutes, and a 10-minute ring kept
/// ten (seconds instead of minutes with `quick`).
pub fn run(ctx: &mut Ctx, quick: bool) -> Flight {
    let (minute, ten) = if quick { (10, 20) } else { (60, 600) };
    let mut out = Flight::default();
    let cases: [(&str, Vec<String>, u64, bool); 3] = [
        (
            "record --all",
            vec!["-d".into(), format!("{minute}s")],
            minute,
            false,
        ),
        (
            "ring of 60 s, kept 3 min",
            vec!["--ring".into(), format!("{minute}s")],
            minute * 3,
            true,
        ),
        (
            "ring of 10 min, kept 10 min",
            vec!["--ring".into(), format!("{ten}s")],
            ten,
            true,
        ),
    ];
    for (label, args, seconds, ring) in cases {
        eprintln!("bench: whole host under `{STORM}`: {label}");
        ctx.quiet.wait();
        let dir = ctx.work.join("flight");
        let _ = std::fs::remove_dir_all(&dir);
        let r = one(ctx, &dir, label, &args, seconds, ring).unwrap_or_else(|e| Run {
            label: label.into(),
            error: Some(e),
            ..Run::default()
        });
        if let Some(e) = &r.error {
            eprintln!("bench: {label}: {e}");
        }
        out.runs.push(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
    out
}

fn spawn(cmd: &mut Command) -> Result<Child, String> {
    cmd.stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))
}

fn one(
    ctx: &Ctx,
    dir: &Path,
    label: &str,
    args: &[String],
    seconds: u64,
    ring: bool,
) -> Result<Run, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let (out, time_txt) = (dir.join("bar"), dir.join("time.txt"));
    let mut bar_args = vec!["record".to_owned(), "--all".into(), "-q".into()];
    bar_args.extend(args.iter().cloned());
    bar_args.extend(["-o".into(), out.display().to_string()]);
    let mut storm = spawn(
        ctx.command("stress-ng")
            .args(["--fork", "2", "--vm", "1", "--timeout"])
            .arg(format!("{}s", seconds + 30))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let mut bar = spawn(
        ctx.command("/usr/bin/time")
            .arg("-v")
            .arg("-o")
            .arg(&time_txt)
            .arg(&ctx.bar)
            .args(&bar_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let mut run = Run {
        label: label.into(),
        // The report names the output folder as the other sections do, not this machine's path.
        command: format!("bar-probe {} OUT", bar_args[..bar_args.len() - 1].join(" ")),
        seconds: seconds as f64,
        ..Run::default()
    };
    let summary_dir = if ring {
        std::thread::sleep(Duration::from_secs(seconds));
        let dumped = dir.join("dump");
        let t = Instant::now();
        let status = ctx
            .command(&ctx.bar)
            .args(["dump", "-o"])
            .arg(&dumped)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        run.dump_s = Some(t.elapsed().as_secs_f64());
        if !status.success() {
            run.error = Some(format!("bar-probe dump: {status}"));
        }
        // Ctrl-C to the recorder, the child of time.
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", bar.id()))
            .unwrap_or_default();
        for pid in children.split_whitespace() {
            let _ = Command::new("kill").args(["-INT", pid]).status();
        }
        dumped
    } else {
        out.clone()
    };
    let status = bar.wait().map_err(|e| e.to_string())?;
    let _ = storm.kill();
    let _ = storm.wait();
    if !status.success() && run.error.is_none() {
        run.error = Some(format!("bar-probe record: {status}"));
    }
    run.time = std::fs::read_to_string(&time_txt)
        .ok()
        .and_then(|t| parse_time_v(&t));
    run.summary = std::fs::read_to_string(summary_dir.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    run.unnamed = std::fs::read_to_string(summary_dir.join("faults.folded"))
        .ok()
        .map(|text| {
            text.lines()
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(s, w)| Some((s.starts_with("[pid "), w.parse::<u64>().ok()?)))
                .fold((0, 0), |(u, all), (unnamed, w)| {
                    (u + if unnamed { w } else { 0 }, all + w)
                })
        });
    Ok(run)
}

/// The row of the report's table of targets.
pub fn target_row(f: &Flight) -> String {
    let rss: Vec<f64> = f
        .runs
        .iter()
        .filter_map(|r| Some(r.time?.max_rss_kb as f64 / 1024.0))
        .collect();
    let max = rss.iter().copied().fold(0.0, f64::max);
    let all = !rss.is_empty() && rss.len() == f.runs.len();
    format!(
        "| RSS ≤ {MAX_RSS_MB:.0} MB recording the whole host under `{STORM}` (60 s, and rings) | {} | {} |",
        if all {
            format!("{max:.0} MB at most ({} runs)", rss.len())
        } else {
            "not measured".to_owned()
        },
        if all && max <= MAX_RSS_MB {
            "yes"
        } else {
            "no"
        }
    )
}

/// The report's section on it.
pub fn render(f: &Flight) -> String {
    let mut d = String::new();
    d.push_str("## 5. A whole host under a fork storm\n\n");
    d.push_str(&format!(
        "`{STORM}` runs while bar-probe records every process; peak RSS from `/usr/bin/time \
         -v` (rendering included), target {MAX_RSS_MB:.0} MB. A ring is dumped with `bar-probe \
         dump` at the end of its time, then stopped with Ctrl-C (which writes the last ring \
         too); its figures are the dump's.\n\n"
    ));
    d.push_str(
        "| run | storm | peak RSS | events | lost | stacks lost | faults of processes known only by pid | held | dump took |\n",
    );
    d.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in &f.runs {
        let s = r.summary.as_ref();
        let events: u64 = s
            .and_then(|s| s["kinds"].as_object())
            .map_or(0, |k| k.values().filter_map(|v| v["events"].as_u64()).sum());
        let lost = s.and_then(|s| s["lost"]["total"].as_u64()).unwrap_or(0);
        let stacks = s.map_or_else(String::new, |s| s["symbols"]["stacks_lost"].to_string());
        let unnamed = r.unnamed.map_or_else(String::new, |(u, all)| {
            format!("{:.2}% of {all}", u as f64 * 100.0 / all.max(1) as f64)
        });
        let held = s
            .and_then(|s| s["duration_s"].as_f64())
            .map_or_else(String::new, |h| {
                let ring = s.map(|s| &s["ring"]);
                let cut = ring.is_some_and(|r| r["cut_by_size"] == true);
                let bytes = ring
                    .and_then(|r| r["held_bytes"].as_u64())
                    .map(|b| format!(", {:.0} MB deflated", b as f64 / f64::from(1 << 20)))
                    .unwrap_or_default();
                format!("{h:.0} s{bytes}{}", if cut { ", size limit" } else { "" })
            });
        d.push_str(&format!(
            "| {} | {:.0} s | {} | {events} | {lost} | {stacks} | {unnamed} | {held} | {} |{}\n",
            r.label,
            r.seconds,
            r.time.map_or_else(String::new, |t| format!(
                "{:.0} MB",
                t.max_rss_kb as f64 / 1024.0
            )),
            r.dump_s.map_or_else(String::new, |t| format!("{t:.1} s")),
            r.error
                .as_ref()
                .map(|e| format!(" {e}"))
                .unwrap_or_default()
        ));
    }
    d.push('\n');
    for r in &f.runs {
        d.push_str(&format!("- {}: `{}`\n", r.label, r.command));
    }
    d.push('\n');
    d
}
