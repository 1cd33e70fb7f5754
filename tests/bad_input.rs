//! Bad input gets one clear line on stderr and a non-zero exit, and leaves nothing behind.

use std::process::Command;

use bar_tests::{bar_probe, one_line_error, out_dir, root_or_skip, run};

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
        !dir.join("capture.bar").exists(),
        "no capture for a recording that never started"
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
