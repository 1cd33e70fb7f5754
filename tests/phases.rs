//! Phases of a load test: from a phase file, from live markers (`bar-probe mark`, a FIFO), and
//! timed by `bar-probe run`; per-phase outputs separate what each phase did.

use std::{io::Write as _, process::Command, time::Duration};

use bar_tests::{Folded, Recording, Workload, bar_probe, out_dir, read_json, root_or_skip, run};

/// Records the phases workload (A in phase_a_parse, then B in phase_b_render) and returns the
/// recording with the workload's own account of its phase boundaries.
fn record_phases_workload(name: &str, seconds: &str) -> (Recording, bar_tests::Value) {
    let dir = out_dir(name);
    let (report, rec) =
        Workload::start(&["phases", "--seconds", seconds]).recorded(&["--events", "cpu"], &dir);
    (rec, report)
}

fn assert_separated(dir: &std::path::Path) {
    let a = Folded::read(&dir.join("phases/A/cpu.folded"));
    let b = Folded::read(&dir.join("phases/B/cpu.folded"));
    assert!(
        a.weight_with("phase_a_parse") * 10 >= a.total() * 8,
        "A: {:#?}",
        a.stacks
    );
    assert!(
        b.weight_with("phase_b_render") * 10 >= b.total() * 8,
        "B: {:#?}",
        b.stacks
    );
    assert!(
        a.weight_with("phase_b_render") * 20 <= a.total(),
        "B leaks into A: {:#?}",
        a.stacks
    );
    assert!(
        b.weight_with("phase_a_parse") * 20 <= b.total(),
        "A leaks into B: {:#?}",
        b.stacks
    );
    assert!(dir.join("phases/A/cpu.svg").exists() && dir.join("phases/B/cpu.svg").exists());
}

#[test]
fn a_phase_file_cuts_a_capture_into_clean_phases() {
    if !root_or_skip("a_phase_file_cuts_a_capture_into_clean_phases") {
        return;
    }
    let (rec, report) = record_phases_workload("phase-file", "2");
    // JSON with RFC 3339 times, as the workload reported them.
    let file = rec.dir.join("phases.json");
    std::fs::write(&file, report["phases"].to_string()).unwrap();
    let out = out_dir("phase-file-report");
    let r = run(&[
        "report",
        rec.dir.join("capture.bar").to_str().unwrap(),
        "--phases",
        file.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_separated(&out);
    let s = read_json(&out.join("summary.json"));
    let phases = s["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    for p in phases {
        let d = p["duration_s"].as_f64().unwrap();
        assert!((1.8..2.5).contains(&d), "{p}");
        assert!(
            p["kinds"]["cpu"]["events_per_s"].as_f64() > Some(10.0),
            "{p}"
        );
        assert!(p["lost"].is_u64());
    }
    // The same phases as CSV with Unix seconds give the same cut.
    let csv: String = report["phases_unix"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{},{},{}\n",
                p[0].as_str().unwrap(),
                p[1].as_str().unwrap(),
                p[2].as_str().unwrap()
            )
        })
        .collect();
    let csv_file = rec.dir.join("phases.csv");
    std::fs::write(&csv_file, format!("name,start,end\n{csv}")).unwrap();
    let out2 = out_dir("phase-csv-report");
    let r = run(&[
        "report",
        rec.dir.join("capture.bar").to_str().unwrap(),
        "--phases",
        csv_file.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for f in ["phases/A/cpu.folded", "phases/B/cpu.folded"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(out2.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn bad_phase_files_are_refused_in_one_line() {
    if !root_or_skip("bad_phase_files_are_refused_in_one_line") {
        return;
    }
    let (rec, _) = record_phases_workload("bad-phases", "1");
    let capture = rec.dir.join("capture.bar");
    let cases = [
        ("overlap.csv", "A,1000,1002\nB,1001,1003\n", "overlap"),
        (
            "unknown.json",
            r#"[{"name":"A","start":1,"end":2,"colour":"red"}]"#,
            "unknown field",
        ),
        ("outside.csv", "A,1000,1002\n", "lies outside the capture"),
        (
            "garbage.csv",
            "A,yesterday,today\n",
            "neither RFC 3339 nor Unix seconds",
        ),
    ];
    for (name, text, needle) in cases {
        let file = rec.dir.join(name);
        std::fs::write(&file, text).unwrap();
        let r = run(&[
            "report",
            capture.to_str().unwrap(),
            "--phases",
            file.to_str().unwrap(),
            "-o",
            out_dir("bad-phases-out").to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "{name}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
    }
    // At record time a bad file stops before anything is loaded.
    let file = rec.dir.join("overlap.csv");
    let r = run(&["attach", "--pid", "1", "--phases", file.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("overlap"));
}

#[test]
fn live_markers_from_mark_and_a_fifo() {
    if !root_or_skip("live_markers_from_mark_and_a_fifo") {
        return;
    }
    let dir = out_dir("markers");
    let fifo = dir.with_extension("fifo");
    let _ = std::fs::remove_file(&fifo);
    let mut w = Workload::start(&["phases", "--seconds", "2"]);
    let pid = w.pid().to_string();
    let rec = Recording::start(
        &[
            "attach",
            "--pid",
            &pid,
            "--events",
            "cpu",
            "--marker-fifo",
            fifo.to_str().unwrap(),
        ],
        &dir,
    );
    let mark = |args: &[&str]| {
        let out = Command::new(bar_probe())
            .arg("mark")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    mark(&["A"]);
    w.go();
    std::thread::sleep(Duration::from_millis(2000));
    // The load tool's side: a line in the FIFO starts phase B.
    let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    f.write_all(b"B\n").unwrap();
    drop(f);
    // The end marker while the workload still runs its phase B (2 s): once the target exits,
    // the recording ends with it and no longer takes markers.
    std::thread::sleep(Duration::from_millis(1000));
    mark(&["B", "--end"]);
    w.finish();
    let rec = rec.finish();
    let s = rec.summary();
    let names: Vec<&str> = s["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["A", "B"]);
    let a = Folded::read(&dir.join("phases/A/cpu.folded"));
    let b = Folded::read(&dir.join("phases/B/cpu.folded"));
    assert!(a.weight_with("phase_a_parse") > b.weight_with("phase_a_parse"));
    assert!(b.weight_with("phase_b_render") > a.weight_with("phase_b_render"));
}

#[test]
fn run_times_phases_and_runs_their_commands() {
    if !root_or_skip("run_times_phases_and_runs_their_commands") {
        return;
    }
    let dir = out_dir("run");
    // The capture is system-wide: the phase's command runs under a name of its own, so that
    // other processes burning CPU in the same function (another run of the workload) do not
    // count. The kernel names a process after the file it executed, here a link to bar-probe.
    let bin = out_dir("run-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("phase-busy");
    std::os::unix::fs::symlink(bar_probe(), &exe).unwrap();
    let busy = format!("{} workload cpu --seconds 30", exe.display());
    let out = Command::new(bar_probe())
        .args(["run", "--all", "-e", "cpu", "-q", "--phase", "idle=1s"])
        .arg(format!("--phase=busy=2s:{busy}"))
        .args(["--phase", "cooldown=1s", "-o"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = read_json(&dir.join("summary.json"));
    let phases = s["phases"].as_array().unwrap();
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["idle", "busy", "cooldown"]);
    let busy = Folded::read(&dir.join("phases/busy/cpu.folded"));
    let idle = Folded::read(&dir.join("phases/idle/cpu.folded"));
    let cool = Folded::read(&dir.join("phases/cooldown/cpu.folded"));
    let ours = |f: &Folded| {
        f.weight_where(|s| s.starts_with("phase-busy;") && s.contains("burn_cpu_hot_loop"))
    };
    let _ = std::fs::remove_dir_all(&bin);
    assert!(ours(&busy) > 50, "{:#?}", busy.stacks);
    assert_eq!(ours(&idle), 0, "{:#?}", idle.stacks);
    // The phase's command was stopped when the phase ended.
    assert!(ours(&cool) <= 2, "{:#?}", cool.stacks);
}

#[test]
fn run_starts_its_load_once_attached_and_fails_with_it() {
    if !root_or_skip("run_starts_its_load_once_attached_and_fails_with_it") {
        return;
    }
    // 300 connects right at the start: all of them are recorded only if the load waited for
    // the programs to be attached.
    let dir = out_dir("run-gate");
    let out = Command::new(bar_probe())
        .args(["run", "-e", "tcp", "-q", "--phase", "all=30s", "-o"])
        .arg(&dir)
        .arg("--")
        .arg(bar_probe())
        .args(["workload", "tcp", "--count", "300"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Bad file descriptor"), "{stderr}");
    let s = read_json(&dir.join("summary.json"));
    assert_eq!(s["stop_reason"], "target-exited", "{s}");
    let attempts = s["kinds"]["tcp"]["events"].as_u64().unwrap();
    assert!(
        attempts >= 300,
        "{attempts} of 300 connects recorded\n{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // A load or phase command that cannot run, or fails, fails the run.
    for (args, needle) in [
        (
            &["--phase", "a=1s", "--", "/nonexistent/cmd"][..],
            "`/nonexistent/cmd` could not be found",
        ),
        (
            &["--phase", "a=1s:exit 3", "--", "sleep", "5"][..],
            "`exit 3` exited with status 3",
        ),
    ] {
        let dir = out_dir("run-fails");
        let out = Command::new(bar_probe())
            .args(["run", "-e", "cpu", "-q", "-o"])
            .arg(&dir)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("bar-probe: ") && last.contains(needle),
            "{args:?}: {stderr}"
        );
        // The recording itself is complete.
        assert!(dir.join("summary.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
