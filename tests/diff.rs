//! `bar-probe diff` on real recordings of bar's own workloads: the phases workload's two time
//! ranges differ in which function burns the CPU, and the gate must say so with tiny p-values;
//! repeated recordings of one unchanged workload must not trip it.

use std::path::{Path, PathBuf};

use bar_tests::{
    Recording, Value, Workload, attach_through, out_dir, read_json, root_or_skip, run,
};

/// Records one run of a built-in workload's CPU samples; returns the capture and the
/// workload's own report.
fn record(workload: &[&str], dir: &Path) -> (PathBuf, Value) {
    let (report, _) = attach_through(workload, &["--events", "cpu", "-F", "499"], dir);
    (dir.join("capture.bar"), report)
}

/// Total weight of the frames whose name contains `needle`, from diff's JSON frame list.
fn frame<'a>(json: &'a Value, needle: &str) -> &'a Value {
    json["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .find(|f| f["frame"].as_str().is_some_and(|n| n.contains(needle)))
        .unwrap_or_else(|| panic!("no frame {needle} in {json:#}"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn phase_ranges_show_the_function_that_grew_and_the_gate_fails() {
    if !root_or_skip("phase_ranges_show_the_function_that_grew_and_the_gate_fails") {
        return;
    }
    let dir = out_dir("diff-phases");
    let (capture, report) = record(&["phases", "--seconds", "3"], &dir);
    let phases = report["phases"].as_array().expect("phases");
    let range = |p: &Value| {
        format!(
            "{}..{}",
            p["start"].as_str().unwrap(),
            p["end"].as_str().unwrap()
        )
    };
    let (a, b) = (range(&phases[0]), range(&phases[1]));
    let cap = capture.to_str().unwrap();
    let out_a = dir.join("diff");
    let args = [
        "diff",
        cap,
        "--base-range",
        &a,
        "--cand-range",
        &b,
        "--windows",
        "250ms",
        "--fail-above",
        "5",
        "--json",
        "-o",
        out_a.to_str().unwrap(),
    ];
    let out = run(&args);
    let json: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("phases diff: {json:#}");
    assert_eq!(out.status.code(), Some(3), "gate fails on a real change");
    assert_eq!(json["kind"], "cpu");
    // Three seconds in 250 ms windows: 12 per side, each one measurement of the same run.
    assert!(
        json["base"]["windows"].as_u64().unwrap() >= 10,
        "{}",
        json["base"]
    );
    assert!(
        json["cand"]["windows"].as_u64().unwrap() >= 10,
        "{}",
        json["cand"]
    );
    assert_eq!(
        json["test"]["frames"],
        "windows of the same run on both sides"
    );

    let grew = frame(&json, "phase_b_render");
    assert_eq!(grew["status"], "grew", "{grew}");
    assert!(grew["total"]["change"].as_f64().unwrap() > 50.0, "{grew}");
    assert!(grew["p_adjusted"].as_f64().unwrap() < 1e-4, "{grew}");
    let shrank = frame(&json, "phase_a_parse");
    assert_eq!(shrank["status"], "shrank", "{shrank}");
    assert!(
        shrank["total"]["change"].as_f64().unwrap() < -50.0,
        "{shrank}"
    );
    assert!(shrank["p_adjusted"].as_f64().unwrap() < 1e-4, "{shrank}");
    // The hot loop runs in both phases: its share hardly moves.
    let hot = frame(&json, "burn_cpu_hot_loop");
    assert!(
        hot["total"]["change"].as_f64().unwrap().abs() < 10.0,
        "{hot}"
    );

    let gate = &json["gate"];
    assert_eq!(gate["failed"], true);
    let offenders: Vec<&str> = gate["offenders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        offenders.iter().any(|o| o.contains("phase_b_render")),
        "{offenders:?}"
    );
    assert!(
        !offenders.iter().any(|o| o.contains("phase_a_parse")),
        "{offenders:?}"
    );
    // Two paths, one through each phase function, explain most of the change.
    let paths = json["paths"].as_array().unwrap();
    let through = |needle: &str| {
        paths
            .iter()
            .find(|p| {
                p["path"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f.as_str().unwrap().contains(needle))
            })
            .unwrap_or_else(|| panic!("no path through {needle}: {paths:#?}"))
    };
    assert!(
        through("phase_b_render")["share_of_change_pct"]
            .as_f64()
            .unwrap()
            > 30.0
    );
    assert!(
        through("phase_a_parse")["share_of_change_pct"]
            .as_f64()
            .unwrap()
            < -30.0
    );

    let svg = std::fs::read_to_string(out_a.join("diff.svg")).unwrap();
    assert!(svg.contains("phase_b_render"));
    let svg = std::fs::read_to_string(out_a.join("diff-base.svg")).unwrap();
    assert!(
        svg.contains("phase_a_parse"),
        "what vanished shows on the base widths"
    );
    assert_eq!(read_json(&out_a.join("diff.json"))["gate"]["failed"], true);

    // The same comparison for people: a table and the verdict.
    let table_args: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
    let out = run(&table_args);
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    assert!(text.contains("gate: FAILED"), "{text}");
    assert!(text.contains("phase_b_render"), "{text}");

    // Bad requests on a real capture: one line each, status 1.
    for (extra, needle) in [
        (&[cap, "--phase", "A"][..], "no phase 'A' in"),
        (
            &["--event", "faults", "--base-range", &a, "--cand-range", &b][..],
            "has no faults events",
        ),
        (
            &["--base-range", "1h..", "--cand-range", &b][..],
            "is empty",
        ),
    ] {
        let mut args = vec!["diff", cap];
        args.extend(extra);
        args.extend(["-o", out_a.to_str().unwrap()]);
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("bar-probe: ") && err.contains(needle),
            "{err}"
        );
    }
}

#[test]
fn an_unchanged_workload_does_not_trip_the_gate() {
    if !root_or_skip("an_unchanged_workload_does_not_trip_the_gate") {
        return;
    }
    let dir = out_dir("diff-same");
    let captures: Vec<String> = (0..10)
        .map(|i| {
            let (c, _) = record(&["cpu", "--seconds", "2"], &dir.join(i.to_string()));
            c.to_str().unwrap().to_owned()
        })
        .collect();
    let o = dir.join("diff");
    let gate = |base: &str, cand: &str, windows: bool| {
        let mut args = vec!["diff", base, cand, "--fail-above", "5", "--json"];
        if windows {
            args.extend(["--windows", "250ms"]);
        }
        args.extend(["-o", o.to_str().unwrap()]);
        run(&args)
    };
    // Two runs against two, twice, with and without windows; then five against five.
    for (b, c) in [(0..2, 2..4), (4..6, 6..8)] {
        let (base, cand) = (captures[b].join(","), captures[c].join(","));
        for windows in [false, true] {
            let out = gate(&base, &cand, windows);
            let json: Value = serde_json::from_str(&stdout(&out))
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
            let hot = frame(&json, "burn_cpu_hot_loop");
            eprintln!(
                "same workload: burn_cpu_hot_loop {} -> {} {} (p adj {}), offenders {}",
                hot["total"]["base"],
                hot["total"]["cand"],
                hot["ci"],
                hot["p_adjusted"],
                json["gate"]["offenders"]
            );
            assert_eq!(out.status.code(), Some(0), "false alarm: {json:#}");
            assert!(hot["p_adjusted"].is_f64(), "the hot loop is tested: {hot}");
        }
    }
    let out = gate(&captures[..5].join(","), &captures[5..].join(","), false);
    let json: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(json["base"]["runs"], 5);
    assert_eq!(out.status.code(), Some(0), "false alarm: {json:#}");
    // One run against one: the spread between runs is unknown, windows or not.
    for windows in [false, true] {
        let out = gate(&captures[8], &captures[9], windows);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot judge one run against one"), "{err}");
    }
}

#[test]
fn folded_files_diff_without_root_and_refuse_what_they_cannot_do() {
    let dir = out_dir("diff-folded");
    for side in ["a", "b"] {
        std::fs::create_dir_all(dir.join(side)).unwrap();
    }
    let a = dir.join("a/cpu.folded");
    let b = dir.join("b/cpu.folded");
    std::fs::write(&a, "app;main;parse 90\napp;main;render 10\n").unwrap();
    std::fs::write(&b, "app;main;parse 20\napp;main;render 80\n").unwrap();
    let out_dir = dir.join("out");
    let out = run(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("render"), "{text}");
    assert!(text.contains("+70.00"), "render grew by 70 points: {text}");
    assert!(text.contains("not tested"), "{text}");
    // One process on each side: compared below its name.
    let diff_folded = std::fs::read_to_string(out_dir.join("diff.folded")).unwrap();
    assert!(diff_folded.contains("main;render 10 80"), "{diff_folded}");
    assert!(!diff_folded.contains("app;"), "{diff_folded}");

    let offcpu = dir.join("b/offcpu.folded");
    std::fs::write(&offcpu, "app;main;[blocked] 5\n").unwrap();
    let missing = dir.join("missing.bar");
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, [0u8, 159, 146, 150]).unwrap();
    let o = out_dir.to_str().unwrap();
    for (args, needle) in [
        (
            vec![a.to_str().unwrap(), offcpu.to_str().unwrap()],
            "different kinds",
        ),
        (
            vec![a.to_str().unwrap(), missing.to_str().unwrap()],
            "cannot read",
        ),
        (
            vec![a.to_str().unwrap(), junk.to_str().unwrap()],
            "neither a bar capture nor a folded-stacks file",
        ),
        (
            vec![
                a.to_str().unwrap(),
                b.to_str().unwrap(),
                "--fail-above",
                "5",
            ],
            "cannot judge one run against one",
        ),
        (
            vec![a.to_str().unwrap(), b.to_str().unwrap(), "--windows", "1s"],
            "need captures",
        ),
        (vec![a.to_str().unwrap()], "nothing to compare"),
    ] {
        let mut full = vec!["diff"];
        full.extend(args);
        full.extend(["-o", o]);
        let out = run(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{full:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("bar-probe: ") && err.contains(needle),
            "{full:?}: {err}"
        );
    }
}

#[test]
fn longer_sleeps_fail_the_latency_gate() {
    if !root_or_skip("longer_sleeps_fail_the_latency_gate") {
        return;
    }
    let dir = out_dir("diff-latency");
    let record_sleeps = |count: &str, micros: &str, name: &str| -> String {
        let mut w = Workload::start(&["sleep", "--count", count, "--micros", micros]);
        let pid = w.pid().to_string();
        let d = dir.join(name);
        let rec = Recording::start(&["attach", "--pid", &pid, "--events", "offcpu"], &d);
        w.go();
        w.finish();
        rec.finish();
        d.join("capture.bar").to_str().unwrap().to_owned()
    };
    // Three runs per side: the p99 of each run is one measurement. The tail of 1 ms sleeps is
    // scheduling delay, several ms on a busy machine: the slow side's sleeps stand above it.
    let runs = |count: &str, micros: &str, name: &str| -> String {
        (0..3)
            .map(|i| record_sleeps(count, micros, &format!("{name}{i}")))
            .collect::<Vec<_>>()
            .join(",")
    };
    let base = runs("500", "1000", "base");
    let same = runs("500", "1000", "same");
    let slow = runs("100", "30000", "slow");
    let o = dir.join("diff");
    let gate = |cand: &str| {
        let out = run(&[
            "diff",
            &base,
            cand,
            "--event",
            "offcpu",
            "--latency",
            "--fail-above",
            "100",
            "--json",
            "-o",
            o.to_str().unwrap(),
        ]);
        let json: Value = serde_json::from_str(&stdout(&out))
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let blocked = json["latency"]
            .as_array()
            .expect("latency")
            .iter()
            .find(|l| l["name"] == "off-CPU blocked")
            .unwrap_or_else(|| panic!("no blocked latency in {json:#}"))
            .clone();
        eprintln!("offcpu blocked, base vs {cand}: {blocked}");
        (out.status.code(), blocked)
    };
    // Sleeps 30 times as long: the distributions hardly overlap.
    let (status, blocked) = gate(&slow);
    assert_eq!(status, Some(3), "{blocked}");
    let base_p50 = blocked["base"]["p50"].as_u64().unwrap();
    assert!((1000..2000).contains(&base_p50), "1 ms sleeps: {blocked}");
    assert!(
        blocked["p50_shift_pct"].as_f64().unwrap() > 1000.0,
        "{blocked}"
    );
    assert!(blocked["ks_p"].as_f64().unwrap() < 1e-6, "{blocked}");
    let ci = blocked["p99_ci_pct"]
        .as_array()
        .expect("an interval over runs");
    assert!(ci[0].as_f64().unwrap() > 100.0, "{blocked}");
    // The same sleeps again: whatever KS says of small differences, the p99 did not surely
    // double.
    let (status, blocked) = gate(&same);
    assert_eq!(status, Some(0), "{blocked}");
}
