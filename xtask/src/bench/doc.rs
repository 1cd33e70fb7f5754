//! Writes `docs/benchmarks.md` from one run's results: every figure in it comes from this run,
//! next to the command that produced it.

use std::fmt::Write as _;

use super::{Results, SlowCase, Spread, Trial, stats::rate};

/// The targets bar sets itself (see the README's benchmarks section).
const MAX_FLOOR_RATIO: f64 = 1.3;
const MIN_RATE: f64 = 500e3;
const MIN_POST_SPEEDUP: f64 = 10.0;
const MAX_RSS_MB: f64 = 150.0;

/// The product changes measured by the "bar before" column: what and why.
const CHANGES: &[(&str, &str)] = &[
    (
        "Page-fault and off-CPU records sent in batches",
        "the first record a program sends after a while costs it about 200 ns more than the \
         ones that follow at once. Page-fault and off-CPU records now wait in a per-CPU batch \
         of up to 8, sent as one sample when full or when its first record is 20 ms old \
         (`emit_batched` in `bar-ebpf/src/shared.rs`); the collector takes what still waits \
         at the end (`bar-userspace/src/collect/pending.rs`). Program time per fault, \
         page-fault storm: 650 → 480 ns.",
    ),
    (
        "Fewer copies in the collector",
        "event blocks are built from the pending records directly instead of copied out of one \
         vector, and each block's checksum is folded into the file's rather than computed a \
         second time (collector CPU per fault on a storm: about 500 → 443 ns).",
    ),
];

/// `x` with two decimals, or three when `other` has the same two.
fn three_if_tied(x: f64, other: f64) -> String {
    if format!("{x:.2}") == format!("{other:.2}") {
        format!("{x:.3}")
    } else {
        format!("{x:.2}")
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn spread_or(s: Option<Spread>, f: impl Fn(&Spread) -> String) -> String {
    s.map_or_else(|| "—".to_owned(), |s| f(&s))
}

fn trials_error(trials: &[Trial]) -> Option<String> {
    trials.iter().find_map(|t| t.error.clone())
}

/// The slowdown cell of a configuration: ratio with range, or why there is none.
fn cell(case: &SlowCase, label: &str) -> String {
    let Some(i) = case.config(label) else {
        return "—".into();
    };
    match case.slowdown(i) {
        Some(s) if s.n == case.configs[0].trials.len() => s.ratio(),
        Some(s) => format!(
            "{} ({} of {} runs)",
            s.ratio(),
            s.n,
            case.configs[0].trials.len()
        ),
        None => format!(
            "fails: {}",
            md_escape(&trials_error(&case.configs[i].trials).unwrap_or_default())
        ),
    }
}

const PEERS: [&str; 3] = ["bpftrace", "perf", "offcputime"];
/// bar as it records by default, and with `--aggregate` (faults and off-CPU summed in the
/// kernel, the way the peers count).
const BAR_MODES: [&str; 2] = ["bar", "bar summed"];

/// The peer with the smallest median slowdown on a case.
fn best_peer(case: &SlowCase) -> Option<(&'static str, Spread)> {
    PEERS
        .iter()
        .filter_map(|p| {
            let i = case.config(p)?;
            let s = case.slowdown(i)?;
            (s.n == case.configs[0].trials.len()).then_some((*p, s))
        })
        .min_by(|a, b| a.1.median.total_cmp(&b.1.median))
}

fn yes(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

pub fn render(r: &Results) -> String {
    let mut d = String::new();
    let m = &r.machine;
    let reps = r.opts.reps;
    let w = |d: &mut String, s: String| {
        d.push_str(&s);
        d.push('\n');
    };
    w(&mut d, "# Benchmarks".into());
    w(&mut d, String::new());
    w(
        &mut d,
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
            &mut d,
            "\n**Quick run**: small amounts of work to try the harness; the figures mean little."
                .into(),
        );
    }
    w(&mut d, String::new());

    // --- Targets first: what a reader wants to know.
    w(&mut d, "## Targets".into());
    w(&mut d, String::new());
    w(&mut d, "| target | result | |".into());
    w(&mut d, "|---|---|---|".into());
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
                &mut d,
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
                &mut d,
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
        &mut d,
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
        &mut d,
        format!(
            "| post-processing ≥ {MIN_POST_SPEEDUP}× faster than perf script + inferno | {} | {} |",
            post_speedup.map_or_else(|| "not measured".to_owned(), |s| format!("{s:.1}× faster")),
            yes(post_speedup.is_some_and(|s| s >= MIN_POST_SPEEDUP))
        ),
    );
    let rss = Spread::of(
        &r.memory
            .trials
            .iter()
            .filter_map(|t| Some(t.time?.max_rss_kb as f64 / 1024.0))
            .collect::<Vec<_>>(),
    );
    w(
        &mut d,
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
    w(&mut d, super::flight::target_row(&r.flight));
    w(&mut d, String::new());

    // --- Machine.
    w(&mut d, "## Machine and tools".into());
    w(&mut d, String::new());
    w(&mut d, "| | |".into());
    w(&mut d, "|---|---|".into());
    w(
        &mut d,
        format!(
            "| CPU | {} × {} |\n| memory | {:.1} GiB |\n| kernel | {} |\n| system | {} |",
            m.cpus, m.cpu_model, m.mem_gib, m.kernel, m.os
        ),
    );
    w(&mut d, format!("| bar | `{}` |", m.bar_rev));
    if let Some(b) = &m.before_rev {
        w(&mut d, format!("| bar before (for before/after) | `{b}` |"));
    }
    for (k, v) in &m.tools {
        w(&mut d, format!("| {k} | {v} |"));
    }
    w(&mut d, String::new());
    let q = &r.quiet;
    w(
        &mut d,
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
            &mut d,
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
    w(&mut d, String::new());

    // --- Method.
    w(&mut d, "## How it is measured".into());
    w(&mut d, String::new());
    w(
        &mut d,
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
    w(&mut d, String::new());
    w(
        &mut d,
        "Workloads (`bar-probe workload ... --wait`):".into(),
    );
    w(&mut d, String::new());
    for c in &r.cases {
        w(
            &mut d,
            format!("- `{}` ({}): {}", c.args.join(" "), c.family, c.what),
        );
    }
    w(&mut d, String::new());
    w(
        &mut d,
        "Tracers (`scripts/bench/tracers.sh TRACER FAMILY` prints each; `PID` is the workload's, \
         `OUT` the trial's folder):"
            .into(),
    );
    w(&mut d, String::new());
    w(&mut d, "| workload | tracer | command |".into());
    w(&mut d, "|---|---|---|".into());
    for (case, label, cmd) in &r.commands {
        w(
            &mut d,
            format!("| {case} | {label} | `{}` |", md_escape(cmd)),
        );
    }
    w(&mut d, String::new());
    w(
        &mut d,
        "`floor` is bar-probe with `--null`: the same programs on the same hooks, which filter on \
         the pid and return. `bar all` records every family at once (cpu, offcpu, faults, tcp, \
         numa) on each workload. `bar summed` is bar-probe with `--aggregate`: faults and \
         off-CPU intervals are summed per thread and stack in the kernel and collected once a \
         second, as the peers count, instead of sent to the collector one by one."
            .into(),
    );
    w(&mut d, String::new());

    // --- 1. Slowdown.
    w(&mut d, "## 1. Workload slowdown".into());
    w(&mut d, String::new());
    let has_before = r.cases.iter().any(|c| c.config("bar before").is_some());
    let mut cols = vec!["bar", "bar all", "bar summed", "floor", "floor all"];
    if has_before {
        cols.push("bar before");
    }
    cols.extend(PEERS);
    w(
        &mut d,
        format!(
            "Workload time traced / untraced (median of {reps}, range in brackets); lower is better.\n\n| workload | untraced | {} |",
            cols.join(" | ")
        ),
    );
    w(&mut d, format!("|---|---|{}", "---|".repeat(cols.len())));
    for case in &r.cases {
        let base = Spread::of(
            &case.configs[0]
                .trials
                .iter()
                .filter_map(|t| t.elapsed_us)
                .collect::<Vec<_>>(),
        );
        let mut row = format!(
            "| {} ({}) | {} |",
            case.name,
            case.family,
            spread_or(base, |s| format!("{:.0} ms", s.median / 1000.0))
        );
        for c in &cols {
            let _ = write!(row, " {} |", cell(case, c));
        }
        w(&mut d, row);
    }
    w(&mut d, String::new());
    if !r.broken.is_empty() {
        w(&mut d, "Peers that do not run on this kernel:".into());
        w(&mut d, String::new());
        for b in &r.broken {
            w(
                &mut d,
                format!("- {} (`{}`): `{}`", b.family, b.command, b.error),
            );
        }
        w(&mut d, String::new());
    }
    // Attach times.
    w(
        &mut d,
        "Time from starting the tracer to it being attached (median over all its trials):".into(),
    );
    w(&mut d, String::new());
    w(&mut d, "| tracer | attach |".into());
    w(&mut d, "|---|---|".into());
    let mut labels: Vec<String> = Vec::new();
    for case in &r.cases {
        for c in case.configs.iter().skip(1) {
            if !labels.contains(&c.label) {
                labels.push(c.label.clone());
            }
        }
    }
    for label in &labels {
        let v: Vec<f64> = r
            .cases
            .iter()
            .filter_map(|c| c.config(label).map(|i| &c.configs[i]))
            .flat_map(|c| c.trials.iter().filter_map(|t| t.attach_ms))
            .collect();
        w(
            &mut d,
            format!(
                "| {label} | {} |",
                spread_or(Spread::of(&v), |s| format!(
                    "{:.0} ms ({:.0}–{:.0})",
                    s.median, s.min, s.max
                ))
            ),
        );
    }
    w(&mut d, String::new());

    // --- Where the time goes.
    if !r.prog_cost.is_empty() {
        w(
            &mut d,
            "### Where the time goes: kernel time of the programs".into(),
        );
        w(&mut d, String::new());
        w(
            &mut d,
            "With `kernel.bpf_stats_enabled=1` (only for these extra trials; it adds a clock read \
             per program run), `bpftool -j prog show` sampled at the go and every 100 ms while the \
             workload ran gives the run time of the tracer's own programs (found through \
             `/proc/PID/fdinfo`). Divided by the units of work done in that window (the workloads \
             progress evenly), next to the untraced time per unit:"
                .into(),
        );
        w(&mut d, String::new());
        w(
            &mut d,
            format!(
                "| workload | untraced per unit | {} |",
                super::PROG_COST_LABELS.join(" | ")
            ),
        );
        w(
            &mut d,
            format!("|---|---|{}", "---|".repeat(super::PROG_COST_LABELS.len())),
        );
        for pc in &r.prog_cost {
            let Some(case) = r.cases.iter().find(|c| c.name == pc.case) else {
                continue;
            };
            let per_unit = Spread::of(
                &case.configs[0]
                    .trials
                    .iter()
                    .filter_map(|t| Some(t.elapsed_us? * 1000.0 / t.units(case.unit_key)?))
                    .collect::<Vec<_>>(),
            );
            let mut row = format!(
                "| {} (per {}) | {} |",
                case.name,
                pc.unit.trim_end_matches('s'),
                spread_or(per_unit, |s| format!("{:.0} ns", s.median))
            );
            for (_, trials) in &pc.rows {
                let v: Vec<f64> = trials
                    .iter()
                    .filter_map(|t| t.prog_ns_per_unit(case.unit_key))
                    .collect();
                let _ = write!(
                    row,
                    " {} |",
                    spread_or(Spread::of(&v), |s| format!("{:.0} ns", s.median))
                );
            }
            w(&mut d, row);
        }
        w(&mut d, String::new());
        // How much of bar's distance to the floor its own programs explain.
        for pc in &r.prog_cost {
            let Some(case) = r.cases.iter().find(|c| c.name == pc.case) else {
                continue;
            };
            let per_unit = |label: &str| {
                let i = case.config(label)?;
                Spread::of(
                    &case.configs[i]
                        .trials
                        .iter()
                        .filter_map(|t| Some(t.elapsed_us? * 1000.0 / t.units(case.unit_key)?))
                        .collect::<Vec<_>>(),
                )
            };
            let prog = |label: &str| {
                let (_, trials) = pc.rows.iter().find(|(l, _)| l == label)?;
                Spread::of(
                    &trials
                        .iter()
                        .filter_map(|t| t.prog_ns_per_unit(case.unit_key))
                        .collect::<Vec<_>>(),
                )
            };
            for label in BAR_MODES {
                let (Some(b), Some(f), Some(pb), Some(pf)) = (
                    per_unit(label),
                    per_unit("floor"),
                    prog(label),
                    prog("floor"),
                ) else {
                    continue;
                };
                w(
                    &mut d,
                    format!(
                        "- {}: traced by {label} a {} takes {:.0} ns more than under the floor \
                         (section 1 medians); its programs run {:.0} ns longer per {} than \
                         the floor's (stack walks, the record or sum, its output), {:.0}% of \
                         that difference.",
                        case.name,
                        pc.unit.trim_end_matches('s'),
                        b.median - f.median,
                        pb.median - pf.median,
                        pc.unit.trim_end_matches('s'),
                        100.0 * (pb.median - pf.median) / (b.median - f.median).max(1.0)
                    ),
                );
            }
        }
        w(&mut d, String::new());
    }

    // --- 2. Throughput.
    let tp = &r.throughput;
    w(&mut d, "## 2. Event throughput".into());
    w(&mut d, String::new());
    w(
        &mut d,
        format!(
            "`bar-probe attach --pid PID -e faults` (default buffers: 256 pages per CPU) on \
             `bar-probe workload faults --rate RATE --seconds {} --threads {}`, whose threads (one \
             per CPU) touch fresh pages at a steady rate (in 1 ms slices). {reps} repetitions per \
             rate, interleaved. \"Achieved\" is the rate the workload kept while traced (pages \
             / its own elapsed time); a rate counts as sustained when the workload kept it \
             (within 5%) and no record was lost in any repetition. Lost = records the perf \
             buffers had no room for (`summary.json` `lost.total`, or the programs' failed outputs per kind when larger).",
            tp.seconds,
            super::fault_threads()
        ),
    );
    w(&mut d, String::new());
    w(
        &mut d,
        "| tracer | rate asked | achieved | events recorded | lost | lost % |".into(),
    );
    w(&mut d, "|---|---|---|---|---|---|".into());
    let mut steps: Vec<_> = tp.steps.iter().collect();
    steps.sort_by(|a, b| a.tracer.cmp(&b.tracer).then(a.rate.total_cmp(&b.rate)));
    for s in steps {
        let lost = s.lost();
        let events = s.events();
        let pct = if events + lost > 0 {
            100.0 * lost as f64 / (events + lost) as f64
        } else {
            0.0
        };
        let label = if s.tracer == "bar-before" {
            "bar before"
        } else {
            "bar"
        };
        w(
            &mut d,
            format!(
                "| {label} | {} | {} | {events} | {lost} | {pct:.2}% |{}",
                rate(s.rate),
                spread_or(s.achieved(), |a| format!(
                    "{} ({}–{})",
                    rate(a.median),
                    rate(a.min),
                    rate(a.max)
                )),
                trials_error(&s.trials)
                    .map(|e| format!(" {}", md_escape(&e)))
                    .unwrap_or_default()
            ),
        );
    }
    w(&mut d, String::new());
    for t in ["bar", "bar-before"] {
        if !tp.steps.iter().any(|s| s.tracer == t) {
            continue;
        }
        let name = if t == "bar" { "bar" } else { "bar before" };
        match tp.sustained(t) {
            Some(s) => {
                let double = tp.step(t, 2.0 * s);
                let at_double = double.map_or_else(
                    || "not measured".to_owned(),
                    |st| {
                        let (lost, ev) = (st.lost(), st.events());
                        format!(
                            "{:.2}% of records lost ({lost} of {}), workload achieved {}",
                            if ev + lost > 0 {
                                100.0 * lost as f64 / (ev + lost) as f64
                            } else {
                                0.0
                            },
                            ev + lost,
                            spread_or(st.achieved(), |a| rate(a.median))
                        )
                    },
                );
                w(
                    &mut d,
                    format!(
                        "- {name}: highest rate sustained with 0 lost: **{}**; at twice that ({}): {at_double}.",
                        rate(s),
                        rate(2.0 * s)
                    ),
                );
            }
            None => w(
                &mut d,
                format!(
                    "- {name}: records lost (or the rate not kept) already at the lowest rate."
                ),
            ),
        }
    }
    if let Some((st, a)) = fastest_step(tp, "bar") {
        let untraced = r.cases.iter().find(|c| c.family == "faults").and_then(|c| {
            Spread::of(
                &c.configs[0]
                    .trials
                    .iter()
                    .filter_map(|t| Some(t.units(c.unit_key)? / (t.elapsed_us? / 1e6)))
                    .collect::<Vec<_>>(),
            )
        });
        w(
            &mut d,
            format!(
                "- bar, fastest step: asked {}, the workload reached {} (median) with {} of {} \
                 records lost. That is the generator's ceiling, not bar's: untraced, one thread \
                 touches {} (section 1's faults run), its {} threads share one memory map and \
                 the page allocator, and traced every fault also pays for bar's program and its \
                 share of the collector's CPU.",
                rate(st.rate),
                rate(a.median),
                st.lost(),
                st.events() + st.lost(),
                spread_or(untraced, |u| format!("{} at most", rate(u.median))),
                super::fault_threads()
            ),
        );
        // What a rate costs in CPUs: the traced workload's time per fault (section 1) plus the
        // collector's CPU per event (section 4), against the CPUs there are.
        let traced_us = r.cases.iter().find(|c| c.family == "faults").and_then(|c| {
            let i = c.config("bar")?;
            Spread::of(
                &c.configs[i]
                    .trials
                    .iter()
                    .filter_map(|t| Some(t.elapsed_us? / t.units(c.unit_key)?))
                    .collect::<Vec<_>>(),
            )
        });
        let collector_us = Spread::of(
            &r.memory
                .trials
                .iter()
                .filter_map(|t| {
                    let time = t.time?;
                    Some((time.user_s + time.sys_s) * 1e6 / t.events()? as f64)
                })
                .collect::<Vec<_>>(),
        );
        if let (Some(w), Some(c)) = (traced_us, collector_us) {
            let cpus = (w.median + c.median) * MIN_RATE / 1e6;
            w_line(
                &mut d,
                format!(
                    "- What {} costs here: a traced fault takes the workload {:.2} µs (section \
                     1, bar) and the collector {:.2} µs of CPU per event (section 4), so {} \
                     needs {cpus:.2} CPUs of the {}{}",
                    rate(MIN_RATE),
                    w.median,
                    c.median,
                    rate(MIN_RATE),
                    r.machine.cpus,
                    if cpus > r.machine.cpus as f64 {
                        ": out of reach for this workload on this machine, whatever the buffers."
                    } else {
                        "."
                    }
                ),
            );
        }
    }
    w(&mut d, String::new());

    // --- 3. Post-processing.
    let p = &r.post;
    w(&mut d, "## 3. Post-processing".into());
    w(&mut d, String::new());
    if let Some(e) = &p.error {
        w(&mut d, format!("Failed: {}", md_escape(e)));
        w(&mut d, String::new());
    }
    w(
        &mut d,
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
    w(&mut d, String::new());
    w(
        &mut d,
        "| | wall time | peak RSS | CPU (user + sys) |".into(),
    );
    w(&mut d, "|---|---|---|---|".into());
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
            &mut d,
            format!(
                "| {name} | {} s | {} MB | {} s |",
                spread_or(wall, |s| s.value(2)),
                spread_or(rss, |s| s.value(0)),
                spread_or(cpu, |s| s.value(2))
            ),
        );
    }
    w(&mut d, String::new());
    if let Some(s) = post_speedup {
        w(
            &mut d,
            format!("bar-probe report is **{s:.1}×** faster (ratio of the medians)."),
        );
    }
    if let Some(t) = p.bar_record.time {
        w(
            &mut d,
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
    w(&mut d, String::new());

    // --- 4. Memory.
    let mem = &r.memory;
    w(&mut d, "## 4. Collector memory".into());
    w(&mut d, String::new());
    w(
        &mut d,
        format!(
            "`/usr/bin/time -v bar-probe attach --pid PID -e faults` on `bar-probe workload faults \
             --rate {:.0} --seconds {} --threads {}` (the sustained rate of section 2), {} runs.",
            mem.rate,
            mem.seconds,
            super::fault_threads(),
            mem.trials.len()
        ),
    );
    w(&mut d, String::new());
    w(
        &mut d,
        "| peak RSS | CPU (user + sys) | events | lost |".into(),
    );
    w(&mut d, "|---|---|---|---|".into());
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
        &mut d,
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
    w(&mut d, String::new());

    d.push_str(&super::flight::render(&r.flight));

    // --- Before/after.
    if has_before {
        w(&mut d, "## Product changes measured here".into());
        w(&mut d, String::new());
        w(
            &mut d,
            format!(
                "`bar before` is bar-probe built from `{}` (before these changes) by the same run:",
                m.before_rev.clone().unwrap_or_default()
            ),
        );
        w(&mut d, String::new());
        for (title, text) in CHANGES {
            w(&mut d, format!("- **{title}.** {text}"));
        }
        w(&mut d, String::new());
        w(&mut d, "| | before | after |".into());
        w(&mut d, "|---|---|---|".into());
        for case in &r.cases {
            w(
                &mut d,
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
                &mut d,
                format!(
                    "| throughput | {} | {} |",
                    fmt_s("bar-before"),
                    fmt_s("bar")
                ),
            );
        }
        w(&mut d, String::new());
    }
    d
}

fn w_line(d: &mut String, s: String) {
    d.push_str(&s);
    d.push('\n');
}

/// The step of `tracer` where its workload ran fastest, and that rate.
fn fastest_step<'a>(tp: &'a super::Throughput, tracer: &str) -> Option<(&'a super::Step, Spread)> {
    tp.steps
        .iter()
        .filter(|s| s.tracer == tracer && s.complete())
        .filter_map(|s| Some((s, s.achieved()?)))
        .max_by(|a, b| a.1.median.total_cmp(&b.1.median))
}

fn post_speedup(r: &Results) -> Option<f64> {
    let bar = Spread::of(&r.post.bar.iter().map(|x| x.wall_ms).collect::<Vec<_>>())?;
    let perf = Spread::of(&r.post.perf.iter().map(|x| x.wall_ms).collect::<Vec<_>>())?;
    Some(perf.median / bar.median)
}
