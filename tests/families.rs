//! Off-CPU, TCP connect and NUMA migration families against workloads of bar's own.

use bar_tests::{
    Recording, Workload, assert_blocked_matches_sleeps, assert_compaction_attributed,
    attach_through, out_dir, root_or_skip,
};

#[test]
fn offcpu_blocked_time_matches_the_sleeps() {
    if !root_or_skip("offcpu_blocked_time_matches_the_sleeps") {
        return;
    }
    let dir = out_dir("offcpu");
    let (report, rec) = attach_through(
        &["sleep", "--count", "200", "--micros", "5000"],
        &["--events", "offcpu"],
        &dir,
    );
    let folded = rec.folded("offcpu");
    assert_blocked_matches_sleeps(&report, &folded);
    // The kernel part shows where it blocked.
    assert!(
        folded
            .stacks
            .keys()
            .any(|s| s.contains("sleep_in_named_function") && s.contains("schedule_[k]"))
    );
    let s = rec.summary();
    let off = &s["kinds"]["offcpu"];
    let p50 = off["blocked_us"]["p50"].as_u64().expect("p50");
    let median = report["measured_median_us"].as_u64().expect("median");
    // As for the total: at least the 5 ms asked, at most what a sleep measured from outside.
    assert!(
        p50 >= 4900 && p50 * 100 <= median * 102,
        "p50 of 5 ms sleeps: {p50} us, measured median {median} us"
    );
    assert!(off["blocked_us"]["p99"].as_u64() >= Some(p50));
    assert!(off["blocked_us"]["max"].as_u64() >= off["blocked_us"]["p99"].as_u64());
    assert!(
        off["attach"]
            .as_str()
            .is_some_and(|a| a.contains("sched_switch"))
    );
}

#[test]
fn offcpu_interval_of_a_thread_still_running_at_the_end_is_kept() {
    if !root_or_skip("offcpu_interval_of_a_thread_still_running_at_the_end_is_kept") {
        return;
    }
    // One 300 ms sleep, then CPU work that outlasts the recording: the sleep ended while the
    // recording ran, and must be in it, although the thread may never leave the CPU again
    // before bar-probe stops (the programs report an interval at the next switch-out).
    let dir = out_dir("offcpu-running");
    let mut w = Workload::start(&[
        "sleep",
        "--count",
        "1",
        "--micros",
        "300000",
        "--seconds",
        "4",
    ]);
    let pid = w.pid().to_string();
    let rec = Recording::start(
        &[
            "attach",
            "--pid",
            &pid,
            "--events",
            "offcpu",
            "--duration",
            "2s",
        ],
        &dir,
    );
    w.go();
    let rec = rec.finish();
    let report = w.finish();
    let slept = report["measured_us"].as_u64().expect("measured_us");
    let folded = rec.folded("offcpu");
    let blocked = folded.weight_with("sleep_in_named_function");
    // The kernel's interval runs from the switch away to the switch back, inside the sleep the
    // workload timed: the timer is armed before the switch, so it can be some microseconds
    // short of the 300 ms asked (299,947 us seen on a 6.1 VM).
    assert!(
        blocked * 100 >= 300_000 * 98 && blocked * 100 <= slept * 102,
        "blocked in sleep_in_named_function: {blocked} us, the sleep took {slept} us\n{:#?}",
        folded.stacks
    );
}

#[test]
fn offcpu_shows_preemption_of_threads_sharing_a_cpu() {
    if !root_or_skip("offcpu_shows_preemption_of_threads_sharing_a_cpu") {
        return;
    }
    let dir = out_dir("preempt");
    let (_, rec) = attach_through(
        &["preempt", "--seconds", "2"],
        &["--events", "offcpu,cpu"],
        &dir,
    );
    let folded = rec.folded("offcpu");
    let preempted =
        folded.weight_where(|s| s.ends_with("[preempted]") && s.contains("burn_cpu_hot_loop"));
    // Two busy threads on one CPU for 2 s: each waits about half the time.
    assert!(
        preempted > 1_000_000,
        "preempted time in burn_cpu_hot_loop: {preempted} us\n{:#?}",
        folded.stacks
    );
}

#[test]
fn tcp_connects_established_and_refused_with_caller_stacks() {
    if !root_or_skip("tcp_connects_established_and_refused_with_caller_stacks") {
        return;
    }
    let dir = out_dir("tcp");
    let (report, rec) = attach_through(
        &["tcp", "--count", "20", "--refused", "7"],
        &["--events", "tcp"],
        &dir,
    );
    assert_eq!(report["established"], 20);
    assert_eq!(report["refused"], 7);
    let folded = rec.folded("tcp");
    let ok =
        folded.weight_where(|s| s.contains("connect_to_listener") && s.ends_with("[established]"));
    let refused =
        folded.weight_where(|s| s.contains("connect_to_closed_port") && s.ends_with("[refused]"));
    assert_eq!((ok, refused), (20, 7), "{:#?}", folded.stacks);
    // The kernel side ends in the connect path itself, whichever hook saw it: no frame of the
    // tracing machinery (a trampoline, a JITed program) is left at the leaf.
    for stack in folded.stacks.keys() {
        let leaf = stack.split(';').rfind(|f| f.ends_with("_[k]"));
        assert!(
            leaf.is_some_and(|f| f.starts_with("tcp_") || f.starts_with("inet_")),
            "kernel leaf of {stack}"
        );
    }
    let listener = report["listener"].as_str().unwrap();
    let closed = report["closed"].as_str().unwrap();
    let s = rec.summary();
    let dests = s["kinds"]["tcp"]["destinations"]
        .as_array()
        .expect("destinations");
    let find = |d: &str| {
        dests
            .iter()
            .find(|x| x["destination"] == d)
            .unwrap_or_else(|| panic!("{d} in {dests:?}"))
    };
    assert_eq!(find(listener)["attempts"], 20);
    assert_eq!(find(listener)["established"], 20);
    assert_eq!(find(closed)["failures"]["refused"], 7);
    for d in [find(listener), find(closed)] {
        let lat = &d["latency_us"];
        assert!(lat["p50"].as_u64() > Some(0), "{lat}");
        assert!(lat["max"].as_u64() < Some(100_000), "{lat}");
        assert!(lat["p90"].as_u64() <= lat["p99"].as_u64());
    }
    // One line per attempt, with wall-clock time and the caller's stack.
    let jsonl = std::fs::read_to_string(dir.join("tcp.jsonl")).unwrap();
    let lines: Vec<bar_tests::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 27);
    assert!(
        lines
            .iter()
            .all(|l| l["time"].as_str().is_some_and(|t| t.starts_with("20")))
    );
    assert_eq!(lines.iter().filter(|l| l["result"] == "refused").count(), 7);
    assert!(lines.iter().any(|l| {
        l["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().contains("connect_to_closed_port"))
    }));
}

#[test]
fn numa_page_migrations_are_recorded_with_reason() {
    if !root_or_skip("numa_page_migrations_are_recorded_with_reason") {
        return;
    }
    let dir = out_dir("numa");
    let (report, rec) = attach_through(
        &["migrate", "--count", "20000"],
        &["--events", "numa"],
        &dir,
    );
    assert_compaction_attributed(&report, &rec);
    let s = rec.summary();
    let numa = &s["kinds"]["numa"];
    assert!(
        numa["attach"]
            .as_str()
            .is_some_and(|a| a.contains("mm_migrate_pages"))
    );
}

#[test]
fn every_family_attaches_by_default() {
    if !root_or_skip("every_family_attaches_by_default") {
        return;
    }
    let dir = out_dir("all");
    let (_, rec) = Workload::start(&["demo", "--seconds", "1"]).recorded(&[], &dir);
    let s = rec.summary();
    for kind in ["cpu", "offcpu", "faults", "tcp", "numa"] {
        let k = &s["kinds"][kind];
        assert!(
            k["attach"].as_str().is_some_and(|a| !a.is_empty()),
            "{kind}: {k}"
        );
        assert!(dir.join(format!("{kind}.folded")).exists());
        assert!(dir.join(format!("{kind}.svg")).exists());
    }
}

#[test]
fn fallback_to_classic_tracepoints_when_tp_btf_is_off() {
    if !root_or_skip("fallback_to_classic_tracepoints_when_tp_btf_is_off") {
        return;
    }
    // Turning off everything better than the classic tracepoints (function hooks where the
    // kernel has them, tp_btf) must land each family on its tracepoint, with the same results.
    let dir = out_dir("fallback");
    let (_, rec) = attach_through(
        &["tcp", "--count", "5", "--refused", "3"],
        &[
            "--events",
            "offcpu,faults,tcp",
            "--avoid",
            "fentry,kprobe,tp_btf",
        ],
        &dir,
    );
    let s = rec.summary();
    for (kind, tp) in [
        ("offcpu", "tracepoint:sched:sched_switch"),
        ("faults", "tracepoint:exceptions:page_fault_user"),
        ("tcp", "tracepoint:sock:inet_sock_set_state"),
    ] {
        let k = &s["kinds"][kind];
        assert!(
            k["attach"].as_str().is_some_and(|a| a.starts_with(tp)),
            "{kind}: {k}"
        );
        let rejected = k["rejected"].as_array().unwrap();
        assert!(
            rejected
                .iter()
                .any(|r| r["attach"].as_str().unwrap().starts_with("tp_btf")
                    && r["reason"].as_str().unwrap().contains("--avoid")),
            "{k}"
        );
    }
    assert!(
        rec.stderr
            .iter()
            .any(|l| l.contains("tcp via tracepoint") && l.contains("fell back")),
        "{:?}",
        rec.stderr
    );
    let folded = rec.folded("tcp");
    assert_eq!(folded.weight_where(|s| s.ends_with("[refused]")), 3);
    assert_eq!(folded.weight_where(|s| s.ends_with("[established]")), 5);
}
