//! Section 1: the workloads' slowdown under each tracer, attach times, and the kernel time of the programs.

use super::*;

/// Section 1: slowdown per workload and tracer, peers that do not run, attach times.
pub(super) fn slowdown(d: &mut String, r: &Results) {
    let reps = r.opts.reps;
    // --- 1. Slowdown.
    w(d, "## 1. Workload slowdown".into());
    w(d, String::new());
    let has_before = r.cases.iter().any(|c| c.config("bar before").is_some());
    let mut cols = vec![
        "bar",
        "bar fp",
        "bar all",
        "bar summed",
        "floor",
        "floor all",
    ];
    if has_before {
        cols.push("bar before");
    }
    cols.extend(PEERS);
    w(
        d,
        format!(
            "Workload time traced / untraced (median of {reps}, range in brackets); lower is better.\n\n| workload | untraced | {} |",
            cols.join(" | ")
        ),
    );
    w(d, format!("|---|---|{}", "---|".repeat(cols.len())));
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
        w(d, row);
    }
    w(d, String::new());
    if !r.broken.is_empty() {
        w(d, "Peers that do not run on this kernel:".into());
        w(d, String::new());
        for b in &r.broken {
            w(
                d,
                format!("- {} (`{}`): `{}`", b.family, b.command, b.error),
            );
        }
        w(d, String::new());
    }
    // Attach times.
    w(
        d,
        "Time from starting the tracer to it being attached (median over all its trials):".into(),
    );
    w(d, String::new());
    w(d, "| tracer | attach |".into());
    w(d, "|---|---|".into());
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
            d,
            format!(
                "| {label} | {} |",
                spread_or(Spread::of(&v), |s| format!(
                    "{:.0} ms ({:.0}–{:.0})",
                    s.median, s.min, s.max
                ))
            ),
        );
    }
    w(d, String::new());
}

/// Where the time goes: the kernel time of the programs per unit of work.
pub(super) fn program_time(d: &mut String, r: &Results) {
    // --- Where the time goes.
    if !r.prog_cost.is_empty() {
        w(
            d,
            "### Where the time goes: kernel time of the programs".into(),
        );
        w(d, String::new());
        w(
            d,
            "With `kernel.bpf_stats_enabled=1` (only for these extra trials; it adds a clock read \
             per program run), `bpftool -j prog show` sampled at the go and every 100 ms while the \
             workload ran gives the run time of the tracer's own programs (found through \
             `/proc/PID/fdinfo`). Divided by the units of work done in that window (the workloads \
             progress evenly), next to the untraced time per unit:"
                .into(),
        );
        w(d, String::new());
        w(
            d,
            format!(
                "| workload | untraced per unit | {} |",
                crate::bench::PROG_COST_LABELS.join(" | ")
            ),
        );
        w(
            d,
            format!(
                "|---|---|{}",
                "---|".repeat(crate::bench::PROG_COST_LABELS.len())
            ),
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
            w(d, row);
        }
        w(d, String::new());
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
                let unit = pc.unit.trim_end_matches('s');
                let (slower, longer) = (b.median - f.median, pb.median - pf.median);
                // A workload that ran faster traced than under the floor says more about the
                // host's spread than about the tracer: there is no difference to explain.
                let share = if slower > 0.0 {
                    format!("{:.0}% of that difference", 100.0 * longer / slower)
                } else {
                    "a difference the run-to-run spread hides here".into()
                };
                w(
                    d,
                    format!(
                        "- {}: traced by {label} a {unit} takes {slower:.0} ns more than under \
                         the floor (section 1 medians); its programs run {longer:.0} ns longer \
                         per {unit} than the floor's (stack walks, the record or sum, its \
                         output): {share}.",
                        case.name,
                    ),
                );
            }
        }
        w(d, String::new());
    }
}
