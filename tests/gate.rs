//! The CI gate on real recordings of the mix workload (requests in `parse_request`,
//! `compute_response` and `encode_response`; `--regress PCT` puts PCT % of the work in
//! `slow_new_path`): runs as the unit, process names left out, baseline stores.

use std::path::{Path, PathBuf};

use bar_tests::{Value, Workload, bar_probe, one_line_error, out_dir, root_or_skip, run};

/// Records one 2 s run of the mix workload started from `exe` (its process name), with
/// `regress` % in `slow_new_path`; returns the capture.
fn record(exe: &Path, regress: &str, dir: &Path) -> String {
    Workload::start_as(exe, &["mix", "--seconds", "2", "--regress", regress])
        .recorded(&["-e", "cpu", "-F", "499"], dir);
    dir.join("capture.bar").to_str().unwrap().to_owned()
}

/// A copy of bar-probe named `name`, so its workloads run under that process name.
fn renamed(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::copy(bar_probe(), &p).unwrap();
    p
}

fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn offenders(json: &Value) -> Vec<String> {
    json["gate"]["offenders"]
        .as_array()
        .expect("offenders")
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect()
}

fn frame<'a>(json: &'a Value, needle: &str) -> &'a Value {
    json["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .find(|f| f["frame"].as_str().is_some_and(|n| n.contains(needle)))
        .unwrap_or_else(|| panic!("no frame {needle} in {json:#}"))
}

#[test]
fn three_runs_against_three_catch_a_regression_and_name_it() {
    if !root_or_skip("three_runs_against_three_catch_a_regression_and_name_it") {
        return;
    }
    let dir = out_dir("gate-regression");
    let exe = bar_probe();
    // Interleaved, so that the machine's load falls on both sides alike.
    let (mut base, mut cand) = (Vec::new(), Vec::new());
    for i in 0..3 {
        base.push(record(&exe, "0", &dir.join(format!("base{i}"))));
        cand.push(record(&exe, "20", &dir.join(format!("cand{i}"))));
    }
    let o = dir.join("diff");
    let args = |base: &str, cand: &str| -> Vec<String> {
        [
            base,
            cand,
            "--fail-above",
            "5",
            "--json",
            "-o",
            o.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (b, c) = (base.join(","), cand.join(","));
    let a = args(&b, &c);
    let mut full = vec!["diff"];
    full.extend(a.iter().map(String::as_str));
    let out = run(&full);
    let json = json_of(&out);
    let slow = frame(&json, "slow_new_path");
    eprintln!(
        "3 against 3: slow_new_path {slow}; offenders {:?}",
        offenders(&json)
    );
    assert_eq!(out.status.code(), Some(3), "{json:#}");
    assert_eq!(json["test"]["frames"], "Welch's t over runs (3 against 3)");
    // Three runs a side: the law of the spread between runs is fitted across the frames.
    let law = &json["test"]["spread_law"];
    assert!(law["df"].as_f64().is_some_and(|df| df > 0.0), "{law}");
    assert_eq!(slow["status"], "grew", "{slow}");
    // 20 % of the main thread's work, a little less of the process's (housekeeping).
    let change = slow["total"]["change"].as_f64().unwrap();
    assert!((15.0..21.0).contains(&change), "{slow}");
    let ci = slow["ci"].as_array().unwrap();
    assert!(
        ci[0].as_f64().unwrap() > 5.0,
        "the interval lies above 5 points: {slow}"
    );
    assert!(
        offenders(&json).iter().any(|n| n.contains("slow_new_path")),
        "{json:#}"
    );
    let off = json["gate"]["offenders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"].as_str().unwrap().contains("slow_new_path"))
        .unwrap();
    assert!(off["lower"].as_f64().unwrap() > 5.0, "{off}");
    // A real change under the threshold does not fail: nothing grew by 30 points.
    let mut high = full.clone();
    high[4] = "30";
    assert_eq!(run(&high).status.code(), Some(0));
    // One run against one cannot be judged: said in one line, not guessed.
    let out = run(&[
        "diff",
        &base[0],
        &cand[0],
        "--fail-above",
        "5",
        "-o",
        o.to_str().unwrap(),
    ]);
    one_line_error(&out, "cannot judge one run against one");
    // The table for people names it too.
    let out = run(&[
        "diff",
        &b,
        &c,
        "--fail-above",
        "5",
        "-o",
        o.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("gate: FAILED") && text.contains("slow_new_path"),
        "{text}"
    );
}

#[test]
fn the_same_build_under_two_names_passes() {
    if !root_or_skip("the_same_build_under_two_names_passes") {
        return;
    }
    let dir = out_dir("gate-renamed");
    let (a, b) = (renamed(&dir, "svc_base"), renamed(&dir, "svc_cand"));
    let o = dir.join("diff");
    for pair in 0..3 {
        let (mut base, mut cand) = (Vec::new(), Vec::new());
        for i in 0..2 {
            base.push(record(&a, "0", &dir.join(format!("p{pair}-base{i}"))));
            cand.push(record(&b, "0", &dir.join(format!("p{pair}-cand{i}"))));
        }
        let (bs, cs) = (base.join(","), cand.join(","));
        let gate = |extra: &[&str]| {
            let mut args = vec!["diff", &bs, &cs, "--fail-above", "5", "--json"];
            args.extend(extra);
            args.extend(["-o", o.to_str().unwrap()]);
            let out = run(&args);
            (out.status.code(), json_of(&out))
        };
        let (status, json) = gate(&[]);
        eprintln!("pair {pair}: offenders {:?}", offenders(&json));
        assert_eq!(status, Some(0), "false alarm: {json:#}");
        assert_eq!(json["below_process"], true);
        assert!(
            !json["frames"].to_string().contains("svc_"),
            "process names are not frames: {json:#}"
        );
        assert!(frame(&json, "parse_request")["p_adjusted"].is_f64());
        // Compared by process, the renamed build is all new: what the gate did before.
        let (status, json) = gate(&["--by-process"]);
        assert_eq!(status, Some(3), "{json:#}");
        assert!(offenders(&json).iter().any(|n| n == "svc_cand"), "{json:#}");
    }
}

#[test]
fn a_baseline_store_keeps_runs_shows_them_and_judges_a_candidate() {
    if !root_or_skip("a_baseline_store_keeps_runs_shows_them_and_judges_a_candidate") {
        return;
    }
    let dir = out_dir("gate-store");
    let exe = bar_probe();
    let runs: Vec<String> = (0..6)
        .map(|i| record(&exe, "0", &dir.join(format!("main{i}"))))
        .collect();
    let same = record(&exe, "0", &dir.join("same"));
    let worse = record(&exe, "20", &dir.join("worse"));
    let store = dir.join("store");
    let s = store.to_str().unwrap();
    let out = run(&["baseline", "add", s, &runs[0], &runs[1], &runs[2]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Later builds of main add their runs; four are kept.
    let out = run(&[
        "baseline", "add", s, &runs[3], &runs[4], &runs[5], "--keep", "4",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("now holds 4 cpu runs (added 3, removed 2"),
        "{err}"
    );
    let names: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 5, "manifest and four runs: {names:?}");
    assert!(names.contains(&"run-00000006.json".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"run-00000002.json".to_owned()),
        "{names:?}"
    );

    let out = run(&["baseline", "show", s, "--json"]);
    let shown = json_of(&out);
    assert_eq!(shown["runs"], 4);
    assert_eq!(shown["kind"], "cpu");
    let parse = shown["frames"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["frame"].as_str().unwrap().contains("parse_request"))
        .unwrap_or_else(|| panic!("{shown:#}"));
    // 40 % of the main thread's work, a little less of the process's.
    let ewma = parse["ewma"].as_f64().unwrap();
    assert!((0.30..0.41).contains(&ewma), "{parse}");
    assert!(parse["spread"].as_f64().unwrap() > 0.0, "{parse}");
    let table = String::from_utf8_lossy(&run(&["baseline", "show", s]).stdout).into_owned();
    assert!(
        table.contains("parse_request") && table.contains("drift"),
        "{table}"
    );

    let o = dir.join("diff");
    let judge = |cand: &str| {
        let out = run(&[
            "diff",
            s,
            cand,
            "--fail-above",
            "5",
            "--json",
            "-o",
            o.to_str().unwrap(),
        ]);
        (out.status.code(), json_of(&out))
    };
    let (status, json) = judge(&same);
    eprintln!("same against the store: offenders {:?}", offenders(&json));
    assert_eq!(status, Some(0), "{json:#}");
    assert_eq!(json["baseline_runs"], 4);
    let (status, json) = judge(&worse);
    assert_eq!(status, Some(3), "{json:#}");
    assert!(
        offenders(&json).iter().any(|n| n.contains("slow_new_path")),
        "{json:#}"
    );
    // A store keeps summaries, not stacks: the verdict, no flame graph.
    assert!(o.join("diff.json").exists());
}

/// A store made of folded files (no root needed): cpu profiles of one program.
fn folded_store(dir: &Path, runs: usize) -> (PathBuf, Vec<PathBuf>) {
    let mut files = Vec::new();
    for i in 0..runs {
        let d = dir.join(format!("run{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("cpu.folded");
        let j = i as u64 * 7 % 5;
        std::fs::write(
            &f,
            format!(
                "app;main;parse {}\napp;main;compute {}\napp;main;[unknown 0x1234] 3\n",
                400 + j,
                600 - j
            ),
        )
        .unwrap();
        files.push(f);
    }
    let store = dir.join("store");
    let mut args = vec![
        "baseline".to_owned(),
        "add".to_owned(),
        store.display().to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (store, files)
}

#[test]
fn bad_stores_and_candidates_are_one_clear_line_each() {
    let dir = out_dir("gate-bad-store");
    let (store, files) = folded_store(&dir, 4);
    let s = store.to_str().unwrap();
    let o = dir.join("diff");
    let diff = |cand: &Path| {
        run(&[
            "diff",
            s,
            cand.to_str().unwrap(),
            "--fail-above",
            "5",
            "-o",
            o.to_str().unwrap(),
        ])
    };
    // A run of the store's own workload passes.
    assert_eq!(diff(&files[0]).status.code(), Some(0));

    let offcpu = dir.join("offcpu.folded");
    std::fs::write(&offcpu, "app;main;[blocked] 500\n").unwrap();
    one_line_error(&diff(&offcpu), "is a baseline of cpu profiles, not offcpu");
    one_line_error(
        &run(&["baseline", "add", s, offcpu.to_str().unwrap()]),
        "is a baseline of cpu profiles",
    );
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = other_dir.join("cpu.folded");
    std::fs::write(&other, "db;main;serve 900\ndb;main;flush 100\n").unwrap();
    one_line_error(&diff(&other), "look like different workloads");
    one_line_error(
        &run(&["baseline", "add", s, other.to_str().unwrap()]),
        "look like different workloads",
    );

    // Too short a history.
    let (small, _) = folded_store(&dir.join("small"), 2);
    one_line_error(
        &run(&[
            "diff",
            small.to_str().unwrap(),
            files[0].to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ]),
        "a baseline needs at least 3",
    );
    // A corrupt entry, a link in place of one, a directory that is not a store.
    std::fs::write(
        store.join("run-00000002.json"),
        "{\"format\": 1, \"kind\": ",
    )
    .unwrap();
    one_line_error(
        &diff(&files[0]),
        "run-00000002.json is not a baseline file bar wrote",
    );
    one_line_error(
        &run(&["baseline", "show", s]),
        "is not a baseline file bar wrote",
    );
    std::fs::remove_file(store.join("run-00000002.json")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", store.join("run-00000002.json")).unwrap();
    one_line_error(&diff(&files[0]), "is not a regular file");
    std::fs::remove_file(store.join("run-00000002.json")).unwrap();
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("notes.txt"), "x").unwrap();
    one_line_error(
        &run(&[
            "baseline",
            "add",
            plain.to_str().unwrap(),
            files[0].to_str().unwrap(),
        ]),
        "not empty and not a baseline store",
    );
    let newer = dir.join("newer");
    let (n, _) = folded_store(&newer, 3);
    let m = std::fs::read_to_string(n.join("bar-baseline.json")).unwrap();
    std::fs::write(
        n.join("bar-baseline.json"),
        m.replace("\"format\": 1", "\"format\": 9"),
    )
    .unwrap();
    one_line_error(&run(&["baseline", "show", n.to_str().unwrap()]), "format 9");
    // No store at all, and a folder that is not one given as the base: said once, in one line.
    let nowhere = dir.join("nowhere");
    let e = one_line_error(
        &run(&["baseline", "show", nowhere.to_str().unwrap()]),
        "No such file or directory",
    );
    assert_eq!(e.matches("No such file").count(), 1, "{e}");
    one_line_error(
        &run(&[
            "diff",
            plain.to_str().unwrap(),
            files[0].to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ]),
        "is a directory but not a baseline store",
    );
}

#[test]
fn a_store_another_user_controls_is_refused() {
    if !root_or_skip("a_store_another_user_controls_is_refused") {
        return;
    }
    let dir = out_dir("gate-store-owner");
    let (store, files) = folded_store(&dir, 3);
    let s = store.to_str().unwrap();
    // An entry that another user could have written is not read.
    let entry = store.join("run-00000002.json");
    std::os::unix::fs::chown(&entry, Some(65534), Some(65534)).unwrap();
    one_line_error(&run(&["baseline", "show", s]), "is not a file bar wrote");
    std::os::unix::fs::chown(&entry, Some(0), Some(0)).unwrap();
    // Nor a whole store of theirs.
    std::os::unix::fs::chown(&store, Some(65534), Some(65534)).unwrap();
    one_line_error(
        &run(&["baseline", "add", s, files[0].to_str().unwrap()]),
        "belongs to uid 65534",
    );
    std::os::unix::fs::chown(&store, Some(0), Some(0)).unwrap();
    // An unprivileged user cannot add to root's store: one line, nothing changed.
    let before = std::fs::read_dir(&store).unwrap().count();
    let world = dir.join("world");
    std::fs::create_dir_all(&world).unwrap();
    let copy = world.join("cpu.folded");
    std::fs::copy(&files[0], &copy).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    for p in [&dir, &world] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bar_probe())
        .args(["baseline", "add", s, copy.to_str().unwrap()])
        .output()
        .unwrap();
    one_line_error(&out, "Permission denied");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), before);
}
