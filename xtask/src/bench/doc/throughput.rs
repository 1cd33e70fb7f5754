//! Section 2: the event throughput ladder and what it means.

use super::*;

/// Section 2: the throughput ladder, one row per tracer and rate.
pub(super) fn ladder(d: &mut String, r: &Results) {
    let reps = r.opts.reps;
    // --- 2. Throughput.
    let tp = &r.throughput;
    w(d, "## 2. Event throughput".into());
    w(d, String::new());
    w(
        d,
        format!(
            "`bar-probe attach --pid PID -e faults` (default buffers: 256 pages per CPU) on \
             `bar-probe workload faults --rate RATE --seconds {} --threads {}`, whose threads (one \
             per CPU) touch fresh pages at a steady rate (in 1 ms slices). {reps} repetitions per \
             rate, interleaved. \"Achieved\" is the rate the workload kept while traced (pages \
             / its own elapsed time); a rate counts as sustained when the workload kept it \
             (within 5%) and no record was lost in any repetition. Lost = records the perf \
             buffers had no room for (`summary.json` `lost.total`, or the programs' failed outputs per kind when larger).",
            tp.seconds,
            crate::bench::fault_threads()
        ),
    );
    w(d, String::new());
    w(
        d,
        "| tracer | rate asked | achieved | events recorded | lost | lost % |".into(),
    );
    w(d, "|---|---|---|---|---|---|".into());
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
            d,
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
    w(d, String::new());
}

/// What the ladder says: the highest rate sustained, the fastest step, what a rate costs.
pub(super) fn ladder_notes(d: &mut String, r: &Results) {
    let tp = &r.throughput;
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
                    d,
                    format!(
                        "- {name}: highest rate sustained with 0 lost: **{}**; at twice that ({}): {at_double}.",
                        rate(s),
                        rate(2.0 * s)
                    ),
                );
            }
            None => w(
                d,
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
            d,
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
                crate::bench::fault_threads()
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
                d,
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
    w(d, String::new());
}
