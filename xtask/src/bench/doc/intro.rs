//! The title, the targets with their results, the machine and the method.

use super::*;

/// The title, and the targets first: what a reader wants to know.
pub(super) fn header_and_targets(d: &mut String, r: &Results) {
    let m = &r.machine;
    w(d, "# Benchmarks".into());
    w(d, String::new());
    w(
        d,
        format!(
            "Written by `cargo xtask bench{}` on {} in {:.0} minutes, from bar at `{}`; every \
             figure below comes from that one run. Everything but the closing notes (a reading of \
             these figures, added after the run) is written by the harness: run it again rather \
             than edit it.",
            if r.opts.quick { " --quick" } else { "" },
            m.date,
            r.minutes,
            m.bar_rev
        ),
    );
    if r.opts.quick {
        w(
            d,
            "\n**Quick run**: small amounts of work to try the harness; the figures mean little."
                .into(),
        );
    }
    w(d, String::new());

    // --- Targets first: what a reader wants to know.
    w(d, "## Targets".into());
    w(d, String::new());
    w(d, "| target | result | |".into());
    w(d, "|---|---|---|".into());
    for (case, label) in r
        .cases
        .iter()
        .flat_map(|c| BAR_MODES.map(|label| (c, label)))
    {
        let Some(bar) = case.config(label).and_then(|i| case.slowdown(i)) else {
            continue;
        };
        let case_name = if label == "bar" {
            case.name.to_owned()
        } else {
            format!("{}, {label}", case.name)
        };
        if let Some((peer, ps)) = best_peer(case) {
            w(
                d,
                format!(
                    "| {case_name} ({}): slowdown at or below the best peer's | bar {}×, {peer} {}× | {} |",
                    case.family,
                    // A third decimal when two do not tell them apart.
                    three_if_tied(bar.median, ps.median),
                    three_if_tied(ps.median, bar.median),
                    yes(bar.median <= ps.median)
                ),
            );
        }
        if let Some(floor) = case.config("floor").and_then(|i| case.slowdown(i)) {
            let ratio = bar.median / floor.median;
            w(
                d,
                format!(
                    "| {case_name} ({}): within {MAX_FLOOR_RATIO}× of the floor (`--null`) | {:.2}× / {:.2}× = {ratio:.2} | {} |",
                    case.family,
                    bar.median,
                    floor.median,
                    yes(ratio <= MAX_FLOOR_RATIO)
                ),
            );
        }
    }
    let sustained = r.throughput.sustained("bar");
    let fastest = fastest_step(&r.throughput, "bar");
    w(
        d,
        format!(
            "| 0 lost at ≥ {} (default buffers) | {} | {} |",
            rate(MIN_RATE),
            {
                let mut v = sustained.map_or_else(
                    || "lost records at every rate tried".to_owned(),
                    |s| format!("0 lost up to {}", rate(s)),
                );
                if let Some((st, a)) = fastest {
                    let _ = write!(
                        v,
                        "; fastest the workload ran traced: {} with {} lost (see section 2)",
                        rate(a.median),
                        st.lost()
                    );
                }
                v
            },
            yes(sustained.is_some_and(|s| s >= MIN_RATE))
        ),
    );
    let post_speedup = post_speedup(r);
    w(
        d,
        format!(
            "| post-processing ≥ {MIN_POST_SPEEDUP}× faster than perf script + inferno | {} | {} |",
            post_speedup.map_or_else(|| "not measured".to_owned(), |s| format!("{s:.1}× faster")),
            yes(post_speedup.is_some_and(|s| s >= MIN_POST_SPEEDUP))
        ),
    );
    let rss = collector_rss(r);
    w(
        d,
        format!(
            "| collector RSS ≤ {MAX_RSS_MB} MB over {:.0} s at {} | {} | {} |",
            r.memory.seconds,
            rate(r.memory.rate),
            spread_or(rss, |s| format!(
                "{:.0} MB peak (largest of {} runs)",
                s.max, s.n
            )),
            yes(rss.is_some_and(|s| s.max <= MAX_RSS_MB))
        ),
    );
    w(d, crate::bench::flight::target_row(&r.flight));
    w(d, String::new());
}

/// The machine, the tools and how quiet the machine was.
pub(super) fn machine(d: &mut String, r: &Results) {
    let m = &r.machine;
    // --- Machine.
    w(d, "## Machine and tools".into());
    w(d, String::new());
    w(d, "| | |".into());
    w(d, "|---|---|".into());
    w(
        d,
        format!(
            "| CPU | {} × {} |\n| memory | {:.1} GiB |\n| kernel | {} |\n| system | {} |",
            m.cpus, m.cpu_model, m.mem_gib, m.kernel, m.os
        ),
    );
    w(d, format!("| bar | `{}` |", m.bar_rev));
    if let Some(b) = &m.before_rev {
        w(d, format!("| bar before (for before/after) | `{b}` |"));
    }
    for (k, v) in &m.tools {
        w(d, format!("| {k} | {v} |"));
    }
    w(d, String::new());
    quiet(d, &r.quiet);
    w(d, String::new());
}

/// How quiet the machine was when the trials started: the check, its waits, the load.
pub(in crate::bench) fn quiet(d: &mut String, q: &Quiet) {
    w(
        d,
        format!(
            "**Quiet machine.** Before each trial the harness sampled `/proc/stat` for 0.5 s and \
             started only when other processes used at most {:.0}% of the CPUs (otherwise it \
             waited, up to 15 minutes). {} checks; {} trials had to wait ({:.0} s in all); {} \
             started on a busy machine{}. Load average (1, 5, 15 min) before the run: {}; after: {}.",
            q.max_busy * 100.0,
            q.checks,
            q.waits,
            q.waited_s,
            q.gave_up,
            if q.gave_up > 0 {
                format!(" (up to {:.0}% busy)", q.busiest_start * 100.0)
            } else {
                String::new()
            },
            q.load_start,
            q.load_end
        ),
    );
    if let Some(b) = Spread::of(&q.at_start) {
        w(
            d,
            format!(
                "\nOther processes kept {:.0}% of the CPUs busy at the median trial start ({:.0}% at \
                 most).{}",
                b.median * 100.0,
                b.max * 100.0,
                if b.max > 0.25 {
                    " The machine was shared with other work during this run: every ratio \
                     compares configurations run in the same conditions, repetition by \
                     repetition, but absolute times are longer and the tracers' own processes \
                     (bar's collector, perf's writer) competed for the CPU left, which an idle \
                     machine would not have charged to the workload."
                } else {
                    ""
                }
            ),
        );
    }
}

/// How a trial measures, the workloads and the tracers' commands.
pub(super) fn method(d: &mut String, r: &Results) {
    let reps = r.opts.reps;
    // --- Method.
    w(d, "## How it is measured".into());
    w(d, String::new());
    w(
        d,
        format!(
            "Each trial (`scripts/bench/trial.sh`) starts one of bar-probe's built-in workloads \
             with `--wait`, so that it waits for a line on stdin; attaches the tracer to its pid; \
             waits until the tracer is attached (bar-probe's `bar-probe: recording` line, \
             bpftrace's `Attaching N probes`, perf started with `-D -1` and enabled through its \
             control FIFO, offcputime holding its BPF link), then 0.5 s more; sends the go; and \
             takes the time the workload reports for its own work (`elapsed_us`, from the go to \
             its end). The slowdown of a tracer is its workload time over the untraced time of \
             the same repetition. Every comparison runs {reps} repetitions, interleaved: \
             repetition r runs every configuration once, in an order rotated by r. Tables give \
             the median and, in brackets, the smallest and largest of the {reps}.",
        ),
    );
    w(d, String::new());
    w(d, "Workloads (`bar-probe workload ... --wait`):".into());
    w(d, String::new());
    for c in &r.cases {
        w(
            d,
            format!("- `{}` ({}): {}", c.args.join(" "), c.family, c.what),
        );
    }
    w(d, String::new());
    w(
        d,
        "Tracers (`scripts/bench/tracers.sh TRACER FAMILY` prints each; `PID` is the workload's, \
         `OUT` the trial's folder):"
            .into(),
    );
    w(d, String::new());
    w(d, "| workload | tracer | command |".into());
    w(d, "|---|---|---|".into());
    for (case, label, cmd) in &r.commands {
        w(d, format!("| {case} | {label} | `{}` |", md_escape(cmd)));
    }
    w(d, String::new());
    w(
        d,
        "`floor` is bar-probe with `--null`: the same programs on the same hooks, which filter on \
         the pid and return. `bar all` records every family at once (cpu, offcpu, faults, tcp, \
         numa) on each workload. `bar summed` is bar-probe with `--aggregate`: faults and \
         off-CPU intervals are summed per thread and stack in the kernel and collected once a \
         second, as the peers count, instead of sent to the collector one by one. `bar fp` is \
         bar-probe with `--unwind frame-pointers`: user stacks by frame pointer only, as before \
         unwind tables (`bar` walks with the tables of the objects, frame pointers where code \
         has none)."
            .into(),
    );
    w(d, String::new());
}
