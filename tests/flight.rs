//! The whole host under churn: processes too short-lived to be looked up keep the names the
//! kernel knew, and the flight recorder (`record --ring`, `bar-probe dump`) keeps the last
//! stretch of it.

use bar_tests::{Folded, Recording, Value, Workload, out_dir, root_or_skip};

/// The children of a finished `spawn` workload.
fn children(report: &Value) -> Vec<u64> {
    report["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|p| p.as_u64().expect("a pid"))
        .collect()
}

/// Checks that no stack of `folded` is rooted at one of `pids` without a name, and returns the
/// weight under `name`.
fn named_weight(folded: &Folded, pids: &[u64], name: &str) -> u64 {
    for stack in folded.stacks.keys() {
        let root = stack.split(';').next().unwrap_or_default();
        assert!(
            !pids.iter().any(|p| root == format!("[pid {p}]")),
            "a short-lived process lost its name: {stack}"
        );
    }
    folded.weight_where(|s| s.split(';').next() == Some(name))
}

#[test]
fn short_lived_processes_keep_the_names_the_kernel_knew() {
    if !root_or_skip("short_lived_processes_keep_the_names_the_kernel_knew") {
        return;
    }
    let dir = out_dir("shortlived");
    let mut w = Workload::start(&["spawn", "--count", "40", "--micros", "50000"]);
    let rec = Recording::start(
        &[
            "record",
            "--all",
            "--events",
            "cpu,faults",
            "--duration",
            "8s",
        ],
        &dir,
    );
    w.go();
    let report = w.finish();
    let rec = rec.finish();
    let pids = children(&report);
    assert_eq!(pids.len(), 40, "{report}");
    // Every child faults in its program as it starts (a few hundred pages) and burns 50 ms.
    let faults = named_weight(&rec.folded("faults"), &pids, "bar-shortlived");
    let cpu = named_weight(&rec.folded("cpu"), &pids, "bar-shortlived");
    assert!(faults >= 40 * 50, "faults of bar-shortlived: {faults}");
    assert!(cpu > 0, "cpu samples of bar-shortlived: {cpu}");
}
