//! Every attach point a family has on this kernel gives the same answers: each point of each
//! chain is forced in turn (`--avoid` for those before it) and checked against a workload of
//! ours. Points this kernel cannot use are named with the loader's reason and passed over,
//! unless `BAR_TEST_REQUIRE_ATTACH` (`family:method,...`, set by the test VMs for what their
//! kernels offer) says they must work here.

use bar_tests::{
    ChainPoint, Recording, Value, Workload, assert_blocked_matches_sleeps,
    assert_compaction_attributed, attach_through, avoid_before, family_chain, machine_info, metric,
    out_dir, root_or_skip, sleeps_counted,
};

/// Whether the environment says `family` must be able to attach by `method` here.
fn required(family: &str, method: &str) -> bool {
    std::env::var("BAR_TEST_REQUIRE_ATTACH")
        .unwrap_or_default()
        .split(',')
        .any(|r| r.trim() == format!("{family}:{method}"))
}

/// Records `workload` with only `family`, through `chain[i]`. Err with the loader's reason
/// when it did not use that point (it cannot, here).
fn record_through(
    family: &str,
    chain: &[ChainPoint],
    i: usize,
    workload: &[&str],
) -> Result<(Value, Recording), String> {
    let point = &chain[i];
    let dir = out_dir(&format!("via-{family}-{}", point.method));
    let mut args = vec!["--events", family];
    let avoid = forcing(chain, i);
    args.extend(avoid.iter().map(String::as_str));
    let (report, rec) = attach_through(workload, &args, &dir);
    let attach = rec.summary()["kinds"][family]["attach"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !attach.starts_with(&format!("{}:", point.method)) {
        let s = rec.summary();
        let reason = s["kinds"][family]["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["attach"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(&format!("{}:", point.method)))
            })
            .and_then(|r| r["reason"].as_str())
            .unwrap_or("no reason given")
            .to_owned();
        return Err(format!("{reason} (the loader used {attach})"));
    }
    Ok((report, rec))
}

fn check_offcpu(report: &Value, rec: &Recording) {
    let folded = rec.folded("offcpu");
    assert_blocked_matches_sleeps(report, &folded);
    // Each sleep once, the last one too, although the thread runs on after it.
    let offcpu = &rec.summary()["kinds"]["offcpu"];
    assert_eq!(sleeps_counted(rec), 40, "{offcpu}");
    assert!(
        folded
            .stacks
            .keys()
            .any(|s| s.contains("sleep_in_named_function") && s.contains(";schedule_[k]")),
        "{:#?}",
        folded.stacks
    );
}

fn check_faults(_report: &Value, rec: &Recording) {
    let folded = rec.folded("faults");
    let faults = folded.weight_with("touch_fresh_pages");
    assert!(
        (3600..=4400).contains(&faults),
        "{faults} faults in touch_fresh_pages for 4000 pages\n{:#?}",
        folded.stacks
    );
    assert!(
        folded
            .stacks
            .keys()
            .any(|s| s.contains("touch_fresh_pages") && s.contains("page_fault")),
        "{:#?}",
        folded.stacks
    );
}

fn check_tcp(report: &Value, rec: &Recording) {
    let folded = rec.folded("tcp");
    let ok =
        folded.weight_where(|s| s.contains("connect_to_listener") && s.ends_with("[established]"));
    let refused =
        folded.weight_where(|s| s.contains("connect_to_closed_port") && s.ends_with("[refused]"));
    assert_eq!((ok, refused), (5, 3), "{report}\n{:#?}", folded.stacks);
}

fn check_numa(report: &Value, rec: &Recording) {
    let s = rec.summary();
    let numa = &s["kinds"]["numa"];
    assert_compaction_attributed(report, rec);
    // With two nodes the workload also calls migrate_pages(2) from the first node to the
    // others; the migrate_pages() hooks know both ends of that.
    let attach = numa["attach"].as_str().unwrap_or_default();
    let syscall = numa["pages_by_reason"]["syscall_or_cpuset"]["succeeded"]
        .as_u64()
        .unwrap_or(0);
    if (attach.starts_with("fentry:") || attach.starts_with("kprobe:")) && syscall > 0 {
        let pairs = numa["node_pairs"].as_array().unwrap();
        let known: u64 = pairs
            .iter()
            .filter(|p| p["from"] == 0 && p["to"].as_u64().is_some_and(|t| t > 0))
            .map(|p| p["pages"].as_u64().unwrap_or(0))
            .sum();
        assert!(
            known >= syscall,
            "{syscall} pages by syscall, {known} from node 0 to another: {numa}"
        );
    }
}

#[test]
fn every_attach_point_of_every_family_gives_the_same_answers() {
    if !root_or_skip("every_attach_point_of_every_family_gives_the_same_answers") {
        return;
    }
    let info = machine_info();
    type Check = fn(&Value, &Recording);
    let families: [(&str, &[&str], Check); 4] = [
        (
            "offcpu",
            &[
                "sleep",
                "--count",
                "40",
                "--micros",
                "5000",
                "--seconds",
                "0.2",
            ],
            check_offcpu,
        ),
        ("faults", &["faults", "--count", "4000"], check_faults),
        ("tcp", &["tcp", "--count", "5", "--refused", "3"], check_tcp),
        ("numa", &["migrate", "--count", "2000"], check_numa),
    ];
    for (family, workload, check) in families {
        let chain = family_chain(&info, family);
        let mut proven = 0;
        for (i, point) in chain.iter().enumerate() {
            let recorded = match &point.unusable {
                Some(why) => Err(why.clone()),
                None => record_through(family, &chain, i, workload),
            };
            let (report, rec) = match recorded {
                Ok(r) => r,
                Err(why) => {
                    assert!(
                        !required(family, &point.method),
                        "{family} must attach via {} here: {why}",
                        point.method
                    );
                    eprintln!("{family} via {}: not on this kernel: {why}", point.attach);
                    metric("attach_unusable", format!("{family} {}", point.attach));
                    continue;
                }
            };
            check(&report, &rec);
            let used = rec.summary()["kinds"][family]["attach"].clone();
            metric(
                "attach_ok",
                format!("{family} {}", used.as_str().unwrap_or_default()),
            );
            proven += 1;
        }
        assert!(
            proven > 0,
            "no attach point of {family} could be checked: {chain:?}"
        );
    }
}

/// The `--avoid` arguments that make the loader use `chain[i]`.
fn forcing(chain: &[ChainPoint], i: usize) -> Vec<String> {
    let avoid = avoid_before(chain, i);
    if avoid.is_empty() {
        Vec::new()
    } else {
        vec!["--avoid".to_owned(), avoid]
    }
}

/// Attach point and p50 latency (us) to the listener of one tcp recording.
fn listener_p50(report: &Value, rec: &Recording) -> (String, u64) {
    let listener = report["listener"].as_str().unwrap();
    let s = rec.summary();
    let dest = s["kinds"]["tcp"]["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == listener)
        .unwrap_or_else(|| panic!("{listener} in {s}"))
        .clone();
    assert_eq!(dest["established"], report["established"], "{dest}");
    let attach = s["kinds"]["tcp"]["attach"].as_str().unwrap().to_owned();
    (attach, dest["latency_us"]["p50"].as_u64().unwrap())
}

#[test]
fn tcp_connect_latency_agrees_between_function_hooks_and_tracepoints() {
    if !root_or_skip("tcp_connect_latency_agrees_between_function_hooks_and_tracepoints") {
        return;
    }
    let info = machine_info();
    let chain = family_chain(&info, "tcp");
    // The reference is the socket tracepoint (tp_btf, else the classic one).
    let reference = chain
        .iter()
        .position(|p| p.unusable.is_none() && (p.method == "tp_btf" || p.method == "tracepoint"))
        .expect("a tracepoint attach point for tcp");
    let mut compared = 0;
    for (i, point) in chain.iter().enumerate() {
        let hook = point.method == "fentry" || point.method == "kprobe";
        if !hook || point.unusable.is_some() {
            continue;
        }
        // Two recordings of the same connects, one through this point and one through the
        // reference: the same handshakes measured twice, whatever the machine's load.
        let dirs = [out_dir(&format!("tcp-lat-{i}")), out_dir("tcp-lat-ref")];
        let mut w = Workload::start(&["tcp", "--count", "100"]);
        let pid = w.pid().to_string();
        let recs: Vec<Recording> = [i, reference]
            .iter()
            .zip(&dirs)
            .map(|(&p, dir)| {
                let mut args = vec!["attach", "--pid", &pid, "--events", "tcp"];
                let avoid = forcing(&chain, p);
                args.extend(avoid.iter().map(String::as_str));
                Recording::start(&args, dir)
            })
            .collect();
        w.go();
        let report = w.finish();
        let recs: Vec<Recording> = recs.into_iter().map(Recording::finish).collect();
        let (attach, p50) = listener_p50(&report, &recs[0]);
        let (ref_attach, ref_p50) = listener_p50(&report, &recs[1]);
        if !attach.starts_with(&format!("{}:", point.method)) {
            eprintln!(
                "tcp via {}: not on this kernel ({attach} was used)",
                point.attach
            );
            continue;
        }
        metric(
            "tcp_p50_us",
            format!("{attach} {p50} vs {ref_attach} {ref_p50}"),
        );
        // The function hooks start the clock at connect()'s entry, a little before the socket
        // enters SYN_SENT where the tracepoint starts it; the rest is the same handshake.
        let tolerance = (ref_p50 / 2).max(100);
        assert!(
            p50 * 10 >= ref_p50 * 8 && p50 <= ref_p50 + tolerance,
            "p50 {p50} us via {attach}, {ref_p50} us via {ref_attach} for the same connects"
        );
        compared += 1;
    }
    if compared == 0 {
        eprintln!("tcp: no function hook attaches here, nothing to compare the tracepoint with");
    }
}
