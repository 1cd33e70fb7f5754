//! Sections 3 and 4, and the product changes: post-processing, collector memory, before and after.

use super::*;

/// Section 3: post-processing a capture against perf script and inferno.
pub(super) fn post_processing(d: &mut String, r: &Results) {
    let reps = r.opts.reps;
    let post_speedup = post_speedup(r);
    // --- 3. Post-processing.
    let p = &r.post;
    w(d, "## 3. Post-processing".into());
    w(d, String::new());
    if let Some(e) = &p.error {
        w(d, format!("Failed: {}", md_escape(e)));
        w(d, String::new());
    }
    w(
        d,
        format!(
            "The same page-fault workload (`{}` faults) recorded once by `bar-probe attach -e \
             faults` ({} events, capture.bar {:.1} MB) and once by `perf record -g -e \
             exceptions:page_fault_user` ({} samples, perf.data {:.1} MB). Then, {reps} times \
             interleaved, each turned into folded stacks and a flame graph \
             (`scripts/bench/postproc.sh`): `bar-probe report capture.bar -o DIR` (folded, SVG, \
             summary) against `perf script -i perf.data | inferno-collapse-perf | \
             inferno-flamegraph > perf.svg`. Wall time of the whole; peak RSS from `/usr/bin/time \
             -v` of each process (for the pipeline, the sum of its three processes' peaks, as \
             they run at once).",
            p.bar_record.units("pages").unwrap_or(0.0),
            p.bar_events,
            p.capture_bytes as f64 / 1e6,
            p.perf_samples,
            p.perf_data_bytes as f64 / 1e6
        ),
    );
    w(d, String::new());
    w(d, "| | wall time | peak RSS | CPU (user + sys) |".into());
    w(d, "|---|---|---|---|".into());
    for (name, runs) in [
        ("bar-probe report", &p.bar),
        ("perf script \\| inferno", &p.perf),
    ] {
        let wall = Spread::of(&runs.iter().map(|x| x.wall_ms / 1000.0).collect::<Vec<_>>());
        let rss = Spread::of(
            &runs
                .iter()
                .map(|x| x.rss_kb() as f64 / 1024.0)
                .collect::<Vec<_>>(),
        );
        let cpu = Spread::of(
            &runs
                .iter()
                .map(|x| x.stages.iter().map(|s| s.1.user_s + s.1.sys_s).sum::<f64>())
                .collect::<Vec<_>>(),
        );
        w(
            d,
            format!(
                "| {name} | {} s | {} MB | {} s |",
                spread_or(wall, |s| s.value(2)),
                spread_or(rss, |s| s.value(0)),
                spread_or(cpu, |s| s.value(2))
            ),
        );
    }
    w(d, String::new());
    if let Some(s) = post_speedup {
        w(
            d,
            format!("bar-probe report is **{s:.1}×** faster (ratio of the medians)."),
        );
    }
    if let Some(t) = p.bar_record.time {
        w(
            d,
            format!(
                " The work bar does instead while recording (resolving stacks, writing the \
                 capture) shows in the recording's own cost: bar-probe used {:.2} s of CPU \
                 (user + sys) and {:.0} MB at peak to record these {} events.",
                t.user_s + t.sys_s,
                t.max_rss_kb as f64 / 1024.0,
                p.bar_events
            ),
        );
    }
    w(d, String::new());
}

/// Section 4: the collector's memory through a long capture.
pub(super) fn memory(d: &mut String, r: &Results) {
    let rss = collector_rss(r);
    // --- 4. Memory.
    let mem = &r.memory;
    w(d, "## 4. Collector memory".into());
    w(d, String::new());
    w(
        d,
        format!(
            "`/usr/bin/time -v bar-probe attach --pid PID -e faults` on `bar-probe workload faults \
             --rate {:.0} --seconds {} --threads {}` (the sustained rate of section 2), {} runs.",
            mem.rate,
            mem.seconds,
            crate::bench::fault_threads(),
            mem.trials.len()
        ),
    );
    w(d, String::new());
    w(d, "| peak RSS | CPU (user + sys) | events | lost |".into());
    w(d, "|---|---|---|---|".into());
    let cpu = Spread::of(
        &mem.trials
            .iter()
            .filter_map(|t| t.time.map(|x| x.user_s + x.sys_s))
            .collect::<Vec<_>>(),
    );
    let events = Spread::of(
        &mem.trials
            .iter()
            .filter_map(|t| t.events().map(|e| e as f64))
            .collect::<Vec<_>>(),
    );
    w(
        d,
        format!(
            "| {} MB | {} s | {} | {} |{}",
            spread_or(rss, |s| s.value(0)),
            spread_or(cpu, |s| s.value(1)),
            spread_or(events, |s| format!("{:.0}", s.median)),
            mem.trials.iter().filter_map(Trial::lost).sum::<u64>(),
            trials_error(&mem.trials)
                .map(|e| format!(" {}", md_escape(&e)))
                .unwrap_or_default()
        ),
    );
    w(d, String::new());
}

/// The product changes measured by the "bar before" column, when there is one.
pub(super) fn before_after(d: &mut String, r: &Results) {
    let m = &r.machine;
    let tp = &r.throughput;
    let has_before = has_before(r);
    // --- Before/after.
    if has_before {
        w(d, "## Product changes measured here".into());
        w(d, String::new());
        w(
            d,
            format!(
                "`bar before` is bar-probe built from `{}` (before these changes) by the same run:",
                m.before_rev.clone().unwrap_or_default()
            ),
        );
        w(d, String::new());
        for (title, text) in CHANGES {
            w(d, format!("- **{title}.** {text}"));
        }
        w(d, String::new());
        w(d, "| | before | after |".into());
        w(d, "|---|---|---|".into());
        for case in &r.cases {
            w(
                d,
                format!(
                    "| slowdown, {} ({}) | {} | {} |",
                    case.name,
                    case.family,
                    cell(case, "bar before"),
                    cell(case, "bar")
                ),
            );
        }
        let fmt_s = |t: &str| {
            tp.sustained(t).map_or_else(
                || "lost at every rate".to_owned(),
                |s| format!("0 lost up to {}", rate(s)),
            )
        };
        if tp.steps.iter().any(|s| s.tracer == "bar-before") {
            w(
                d,
                format!(
                    "| throughput | {} | {} |",
                    fmt_s("bar-before"),
                    fmt_s("bar")
                ),
            );
        }
        w(d, String::new());
    }
}
