//! Bad input gets one clear line on stderr and a non-zero exit, and leaves nothing behind.

use std::{os::unix::fs::DirBuilderExt as _, process::Command, time::Duration};

use bar_tests::{
    bar_probe, craft_capture, limit_memory, marker, one_line_error, out_dir, read_json,
    root_or_skip, run, wait_at_most,
};

#[test]
fn unknown_pid() {
    if !root_or_skip("unknown_pid") {
        return;
    }
    let dir = out_dir("bad-pid");
    let out = run(&[
        "attach",
        "--pid",
        "3999999",
        "-d",
        "1s",
        "-o",
        dir.to_str().unwrap(),
    ]);
    one_line_error(&out, "no process with PID 3999999");
    assert!(!dir.exists(), "no output folder for a failed start");
}

#[test]
fn kernel_thread() {
    if !root_or_skip("kernel_thread") {
        return;
    }
    // PID 2 is kthreadd on Linux.
    let out = run(&["attach", "--pid", "2", "-d", "1s"]);
    one_line_error(&out, "kernel thread");
}

#[test]
fn thread_id_instead_of_process() {
    if !root_or_skip("thread_id_instead_of_process") {
        return;
    }
    let mut child = Command::new(bar_probe())
        .args(["workload", "preempt", "--seconds", "5"])
        .spawn()
        .unwrap();
    let pid = child.id();
    let tid = (0..50)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .ok()?
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .find(|t| *t != pid)
        })
        .expect("a second thread");
    let out = run(&["attach", "--pid", &tid.to_string(), "-d", "1s"]);
    let _ = child.kill();
    let _ = child.wait();
    one_line_error(&out, &format!("use --pid {pid}"));
}

#[test]
fn unknown_event_kind() {
    let out = run(&["attach", "--pid", "1", "--events", "cpu,bogus"]);
    one_line_error(&out, "unknown event kind 'bogus'");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_duration() {
    let out = run(&["attach", "--pid", "1", "--duration", "soon"]);
    one_line_error(&out, "not a duration");
}

#[test]
fn unwritable_output_folder() {
    if !root_or_skip("unwritable_output_folder") {
        return;
    }
    let out = run(&[
        "attach",
        "--pid",
        "1",
        "-d",
        "1s",
        "-o",
        "/proc/bar-cannot-be-here",
    ]);
    one_line_error(&out, "cannot create output folder /proc/bar-cannot-be-here");
}

#[test]
fn without_privileges() {
    if !root_or_skip("without_privileges") {
        return;
    }
    // Drop to nobody with no capabilities, as an unprivileged user would run it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bar_probe())
        .args(["attach", "--pid", "1", "-d", "1s", "-o", "/tmp"])
        .output()
        .expect("setpriv (util-linux)");
    one_line_error(&out, "missing CAP_BPF and CAP_PERFMON");
}

#[test]
fn requested_family_with_no_usable_attach_point() {
    if !root_or_skip("requested_family_with_no_usable_attach_point") {
        return;
    }
    // As on a kernel without BTF, kprobes or the tracepoints: every attach point refused.
    let dir = out_dir("no-attach");
    let out = run(&[
        "attach",
        "--pid",
        "1",
        "--events",
        "faults",
        "--avoid",
        "fentry,kprobe,tp_btf,tracepoint",
        "-d",
        "1s",
        "-o",
        dir.to_str().unwrap(),
    ]);
    one_line_error(&out, "cannot record faults");
    assert!(
        !dir.exists(),
        "a recording that never started leaves no output folder"
    );
}

#[test]
fn target_exits_during_recording() {
    if !root_or_skip("target_exits_during_recording") {
        return;
    }
    let dir = out_dir("short-target");
    let mut child = Command::new("sleep").arg("1").spawn().unwrap();
    let out = run(&[
        "attach",
        "--pid",
        &child.id().to_string(),
        "-d",
        "30s",
        "-q",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = bar_tests::read_json(&dir.join("summary.json"));
    assert_eq!(s["stop_reason"], "target-exited");
    assert_eq!(s["complete"], true);
}

#[test]
fn corrupt_capture() {
    let dir = out_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("capture.bar");
    std::fs::write(&file, b"this is not a capture at all").unwrap();
    let out = run(&[
        "report",
        file.to_str().unwrap(),
        "-o",
        dir.join("out").to_str().unwrap(),
    ]);
    one_line_error(&out, "is not a bar capture");
    assert!(!dir.join("out").exists());
}

#[test]
fn a_zombie_is_an_exited_process() {
    if !root_or_skip("a_zombie_is_an_exited_process") {
        return;
    }
    // Exited and not reaped yet: a zombie, with no memory and nothing to run.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id().to_string();
    let zombie = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    });
    assert!(zombie, "pid {pid} did not become a zombie");
    let dir = out_dir("zombie");
    let out = run(&[
        "attach",
        "--pid",
        &pid,
        "-d",
        "1s",
        "-o",
        dir.to_str().unwrap(),
    ]);
    let _ = child.wait();
    one_line_error(&out, &format!("PID {pid} has exited"));
    assert!(!dir.exists());
}

#[test]
fn numbers_out_of_range_are_refused() {
    for (args, needle) in [
        (&["attach", "--pid", "1", "-d", "0"][..], "no time at all"),
        (
            &["attach", "--pid", "1", "--stack-map-size", "0"][..],
            "--stack-map-size",
        ),
        (
            &["attach", "--pid", "1", "--stack-map-size", "4000000000"][..],
            "--stack-map-size",
        ),
        (
            &["run", "--phase", "a=0s", "--", "true"][..],
            "no time at all",
        ),
        (&["run", "--", "true"][..], "--phase"),
        (
            &["run", "--phase", "..=1s", "--", "true"][..],
            "not a phase name",
        ),
        (
            &["diff", "a.bar", "b.bar", "--alpha", "2"][..],
            "not a significance level",
        ),
        (
            &["diff", "a.bar", "b.bar", "--fail-above", "NaN"][..],
            "not a percentage",
        ),
        (
            &["diff", "a.bar", "b.bar", "--windows", "0s"][..],
            "too short",
        ),
        (
            &["diff", "a.bar", "b.bar", "--windows", "1ns"][..],
            "too short",
        ),
        (
            &["attach", "--pid", "1", "--max-size", "99999999999G"][..],
            "not a size",
        ),
    ] {
        let out = run(args);
        one_line_error(&out, needle);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    one_line_error(&run(&["mark", "a/b"]), "not a phase name");
}

#[test]
fn bad_phase_files_are_refused() {
    let dir = out_dir("bad-phase-files");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, needle) in [
        ("far.csv", "a,1,1e30\n", "'1e30' is not a time"),
        (
            "nul.json",
            r#"[{"name":"a\u0000b","start":1,"end":2}]"#,
            "control character",
        ),
        (
            "long.csv",
            &format!("{},1,2\n", "x".repeat(101)),
            "longer than 100 bytes",
        ),
        ("dots.csv", "..,1,2\n", "not a phase name"),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let out = run(&["report", "x.bar", "--phases", file.to_str().unwrap()]);
        one_line_error(&out, needle);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_metadata_block_is_called_so() {
    let dir = out_dir("damaged-meta");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("capture.bar");
    craft_capture(&file, |_| Vec::new(), Some);
    let mut data = std::fs::read(&file).unwrap();
    // Past the 16-byte file header and the 8-byte block header: inside the metadata.
    data[30] ^= 0xff;
    std::fs::write(&file, &data).unwrap();
    let out = run(&[
        "report",
        file.to_str().unwrap(),
        "-o",
        dir.join("out").to_str().unwrap(),
    ]);
    one_line_error(&out, "metadata block is damaged");
    assert!(!dir.join("out").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_phase_that_cannot_be_written_never_loses_the_main_outputs() {
    let dir = out_dir("phase-outputs");
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("capture.bar");
    let long = "x".repeat(300);
    craft_capture(
        &capture,
        |m| {
            vec![
                marker(m, &long, 1_000, false),
                marker(m, "a\u{0}b", 2_000, false),
                marker(m, "fine", 3_000, false),
            ]
        },
        Some,
    );
    let out = dir.join("out");
    let o = run(&[
        "report",
        capture.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "summary.json",
        "report.html",
        "cpu.folded",
        "phases/fine/cpu.folded",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let names: Vec<String> = read_json(&out.join("summary.json"))["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"a\\u{0}b".to_owned()), "{names:?}");
    assert!(names.iter().all(|n| n.len() <= 100), "{names:?}");
    // Where the phases' folder cannot be made, the rest is still written, with a warning.
    let out = dir.join("blocked");
    std::fs::DirBuilder::new().mode(0o700).create(&out).unwrap();
    std::fs::write(out.join("phases"), b"in the way").unwrap();
    let o = run(&[
        "report",
        capture.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("warning: no per-phase outputs"), "{stderr}");
    for f in ["summary.json", "report.html", "cpu.folded", "cpu.svg"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_windows_are_bounded() {
    let dir = out_dir("diff-windows");
    std::fs::create_dir_all(&dir).unwrap();
    // A capture that claims 1000 s: 10 ms windows would be 100000 of them.
    let capture = dir.join("long.bar");
    craft_capture(
        &capture,
        |m| {
            m.start_ns -= 1_000_000_000_000;
            Vec::new()
        },
        Some,
    );
    let c = capture.to_str().unwrap();
    let mut cmd = Command::new(bar_probe());
    cmd.args(["diff", c, c, "--windows", "10ms", "-o"])
        .arg(dir.join("out"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    limit_memory(&mut cmd, 2 << 30);
    let out = wait_at_most(
        cmd.spawn().unwrap(),
        Duration::from_secs(60),
        "diff --windows 10ms",
    );
    one_line_error(&out, "more than 10000");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_huge_frame_name_is_cut_not_copied() {
    let dir = out_dir("huge-name");
    std::fs::create_dir_all(&dir).unwrap();
    let capture = dir.join("capture.bar");
    // One frame named with 10 MB: every stack that holds it would copy it.
    let mut first = true;
    craft_capture(
        &capture,
        |_| Vec::new(),
        |b| match b {
            bar::capture::Body::Frames(mut f) if first => {
                first = false;
                f.frames[0].name = "f".repeat(10 << 20);
                Some(bar::capture::Body::Frames(f))
            }
            b => Some(b),
        },
    );
    assert!(!first, "the capture has frames");
    let mut cmd = Command::new(bar_probe());
    cmd.args(["report", capture.to_str().unwrap(), "-o"])
        .arg(dir.join("out"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    limit_memory(&mut cmd, 1 << 30);
    let out = wait_at_most(cmd.spawn().unwrap(), Duration::from_secs(120), "report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let folded: String = ["cpu", "offcpu"]
        .iter()
        .map(|k| std::fs::read_to_string(dir.join(format!("out/{k}.folded"))).unwrap())
        .collect();
    assert!(
        folded.contains("…[cut]"),
        "no cut name in the folded stacks"
    );
    // At most 4 KiB a frame, whatever the capture says.
    assert!(folded.lines().all(|l| l.len() < 130 * 4096));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_stops_the_recording_at_once() {
    if !root_or_skip("a_full_disk_stops_the_recording_at_once") {
        return;
    }
    // A file system of 1 MiB, filled in well under a second by a fault storm.
    let mnt = out_dir("full-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "bar-test-full",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a small tmpfs");
    let mut w = bar_tests::Workload::start(&["faults", "--rate", "100000", "--seconds", "90"]);
    w.go();
    let out = mnt.join("out");
    let started = std::time::Instant::now();
    let o = run(&[
        "attach",
        "--pid",
        &w.pid().to_string(),
        "-e",
        "faults",
        "-d",
        "60s",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ]);
    let took = started.elapsed();
    let _ = w.child.kill();
    let _ = w.child.wait();
    let stopped = || {
        one_line_error(&o, "No space left on device");
        // Starting takes seconds under emulation; a recording that went on would take 60.
        let limit = if bar_tests::emulated() { 40 } else { 20 };
        assert!(took < Duration::from_secs(limit), "stopped after {took:?}");
        // What was written before the error reads back.
        let info = run(&["info", out.join("capture.bar").to_str().unwrap()]);
        assert!(info.status.success(), "{info:?}");
        assert!(String::from_utf8_lossy(&info.stdout).contains("faults"));
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(stopped));
    let _ = Command::new("umount").arg(&mnt).status();
    let _ = std::fs::remove_dir_all(&mnt);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn inlined_functions_asked_of_a_whole_host_recording() {
    if !root_or_skip("inlined_functions_asked_of_a_whole_host_recording") {
        return;
    }
    // Only a recording of one process reads DWARF, which alone says what was inlined.
    let dir = out_dir("bad-inlined-all");
    let out = run(&[
        "record",
        "--all",
        "--inlined",
        "true",
        "-d",
        "1s",
        "-o",
        dir.to_str().unwrap(),
    ]);
    one_line_error(&out, "--inlined true needs DWARF");
    assert!(!dir.exists(), "no output folder for a failed start");
}
