//! The capture file as evidence: it renders the same outputs anywhere without root, survives
//! the death of the target and of bar itself, and `record` covers the host or one cgroup.

use std::{path::Path, process::Command, time::Duration};

use bar_tests::{
    Recording, Workload, attach_through, bar_probe, out_dir, read_json, root_or_skip, run,
};

fn files(dir: &Path) -> Vec<String> {
    // Files only: markers other recordings' users send to every recording may add phases/.
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn report_elsewhere_without_root_is_byte_identical() {
    if !root_or_skip("report_elsewhere_without_root_is_byte_identical") {
        return;
    }
    let dir = out_dir("identical");
    let (_, rec) = Workload::start(&["demo", "--seconds", "2"]).recorded(&[], &dir);
    // Only the capture travels; the report runs as an unprivileged user in another folder.
    let elsewhere = out_dir("identical-elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(dir.join("capture.bar"), elsewhere.join("capture.bar")).unwrap();
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&elsewhere)
        .status()
        .unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bar_probe())
        .arg("report")
        .arg(elsewhere.join("capture.bar"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let produced: Vec<String> = files(&rec.dir)
        .into_iter()
        .filter(|f| !f.starts_with("capture.bar"))
        .collect();
    assert!(produced.len() >= 11, "{produced:?}");
    for f in &produced {
        let a = std::fs::read(rec.dir.join(f)).unwrap();
        let b = std::fs::read(elsewhere.join(f))
            .unwrap_or_else(|e| panic!("{f} not rendered elsewhere: {e}"));
        assert!(a == b, "{f} differs between attach and report");
    }
    // The checksum beside the capture verifies it.
    let ok = Command::new("sha256sum")
        .arg("-c")
        .arg("capture.bar.sha256")
        .current_dir(&rec.dir)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}

#[test]
fn a_killed_target_keeps_its_symbols() {
    if !root_or_skip("a_killed_target_keeps_its_symbols") {
        return;
    }
    let dir = out_dir("killed-target");
    let mut w = Workload::start(&["cpu", "--seconds", "60"]);
    let pid = w.pid().to_string();
    let rec = Recording::start(&["attach", "--pid", &pid, "--events", "cpu"], &dir);
    w.go();
    std::thread::sleep(Duration::from_millis(1500));
    w.child.kill().unwrap();
    let _ = w.child.wait();
    let rec = rec.finish();
    let s = rec.summary();
    assert_eq!(s["stop_reason"], "target-exited");
    let folded = rec.folded("cpu");
    // Samples up to the very end are named, though the process is gone when they are resolved.
    assert!(
        folded.weight_with("burn_cpu_hot_loop") * 4 >= folded.total() * 3,
        "{:#?}",
        folded.stacks
    );
    assert!(folded.total() > 20, "{} samples", folded.total());
}

#[test]
fn a_killed_recorder_leaves_a_readable_capture() {
    if !root_or_skip("a_killed_recorder_leaves_a_readable_capture") {
        return;
    }
    let dir = out_dir("killed-bar");
    let mut w = Workload::start(&["cpu", "--seconds", "60"]);
    let pid = w.pid().to_string();
    let rec = Recording::start(&["attach", "--pid", &pid, "--events", "cpu"], &dir);
    w.go();
    std::thread::sleep(Duration::from_millis(2500));
    let mut child = rec.child;
    child.kill().unwrap();
    let _ = child.wait();
    let _ = w.child.kill();
    let _ = w.child.wait();
    let capture = dir.join("capture.bar");
    let out_dir2 = out_dir("killed-bar-report");
    let out = run(&[
        "report",
        capture.to_str().unwrap(),
        "-o",
        out_dir2.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("damaged") && stderr.contains("without a trailer"),
        "{stderr}"
    );
    let folded = bar_tests::Folded::read(&out_dir2.join("cpu.folded"));
    assert!(
        folded.weight_with("burn_cpu_hot_loop") > 20,
        "{:#?}",
        folded.stacks
    );
    let s = read_json(&out_dir2.join("summary.json"));
    assert_eq!(s["complete"], false);
    assert!(
        s["damage"]
            .as_str()
            .is_some_and(|d| d.contains("without a trailer"))
    );
    let info = run(&["info", capture.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("DAMAGED"));
}

#[test]
fn record_all_sees_the_host_but_not_itself() {
    if !root_or_skip("record_all_sees_the_host_but_not_itself") {
        return;
    }
    let dir = out_dir("all");
    let mut w = Workload::start(&["cpu", "--seconds", "2"]);
    // A second process of ours: an idle machine (a test VM) may have no other activity.
    let mut other = Workload::start(&["faults", "--count", "20000"]);
    let rec = Recording::start(
        &[
            "record",
            "--all",
            "--events",
            "cpu,faults",
            "--duration",
            "4s",
        ],
        &dir,
    );
    let recorder = rec.child.id();
    w.go();
    other.go();
    let workload = w.pid();
    let other = other.finish();
    w.finish();
    let rec = rec.finish();
    let s = rec.summary();
    assert_eq!(s["scope"], "all");
    let top = s["processes"]["top"].as_array().unwrap();
    let pids: Vec<u64> = top.iter().map(|p| p["pid"].as_u64().unwrap()).collect();
    assert!(
        pids.contains(&u64::from(workload)),
        "the workload is recorded: {pids:?}"
    );
    assert!(
        !pids.contains(&u64::from(recorder)),
        "bar-probe never records itself: {pids:?}"
    );
    assert!(
        pids.contains(&other["pid"].as_u64().unwrap()),
        "every process is recorded: {pids:?}"
    );
    assert!(s["processes"]["count"].as_u64() > Some(1));
    let row = top
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(workload)))
        .unwrap();
    assert!(row["kinds"]["cpu"]["events"].as_u64() > Some(20), "{row}");
    assert!(rec.folded("cpu").weight_with("burn_cpu_hot_loop") > 20);
    // Evidence: owner-only files and a checksum beside the capture.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.join("capture.bar"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(dir.join("capture.bar.sha256").exists());
    for key in ["hostname", "start", "end", "kernel_release"] {
        assert!(s[key].as_str().is_some_and(|v| !v.is_empty()), "{key}");
    }
}

#[test]
fn record_cgroup_only_sees_that_cgroup() {
    if !root_or_skip("record_cgroup_only_sees_that_cgroup") {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let Some(v2) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
    }) else {
        eprintln!("skipped record_cgroup_only_sees_that_cgroup: no cgroup v2 hierarchy mounted");
        return;
    };
    let cg = Path::new(&v2).join(format!("bar-test-{}", std::process::id()));
    std::fs::create_dir_all(&cg).expect("create a cgroup");
    let dir = out_dir("cgroup");
    let mut inside = Workload::start(&["cpu", "--seconds", "2"]);
    let mut outside = Workload::start(&["faults", "--count", "200000"]);
    std::fs::write(cg.join("cgroup.procs"), inside.pid().to_string()).unwrap();
    let rec = Recording::start(
        &[
            "record",
            "--cgroup",
            cg.to_str().unwrap(),
            "--events",
            "cpu,faults",
            "-d",
            "3s",
        ],
        &dir,
    );
    inside.go();
    outside.go();
    let inside_pid = inside.pid();
    let outside_pid = outside.pid();
    inside.finish();
    outside.finish();
    let rec = rec.finish();
    let _ = std::fs::remove_dir(&cg);
    let s = rec.summary();
    assert_eq!(s["scope"], "cgroup");
    let pids: Vec<u64> = s["processes"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        pids,
        vec![u64::from(inside_pid)],
        "only the cgroup's process (not {outside_pid})"
    );
}

#[test]
fn a_process_that_execs_is_symbolized_as_its_new_program() {
    if !root_or_skip("a_process_that_execs_is_symbolized_as_its_new_program") {
        return;
    }
    let dir = out_dir("exec");
    // A shell that waits for the recording, burns a little CPU, then becomes bar-probe's cpu
    // workload (same pid).
    let script = format!(
        "read go; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec {} workload cpu --seconds 2",
        bar_probe().display()
    );
    let mut sh = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = sh.id().to_string();
    let rec = Recording::start(&["attach", "--pid", &pid, "--events", "cpu"], &dir);
    {
        use std::io::Write as _;
        let mut stdin = sh.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
    }
    let _ = sh.wait();
    let rec = rec.finish();
    let folded = rec.folded("cpu");
    let after =
        folded.weight_where(|s| s.starts_with("bar-probe;") && s.contains("burn_cpu_hot_loop"));
    assert!(
        after > 20,
        "samples after the exec are named in the new program: {:#?}",
        folded.stacks
    );
    assert!(folded.weight_where(|s| s.starts_with("sh;") && s.contains("burn_cpu_hot_loop")) == 0);
}

#[test]
fn max_size_stops_the_recording() {
    if !root_or_skip("max_size_stops_the_recording") {
        return;
    }
    let dir = out_dir("max-size");
    let mut w = Workload::start(&["faults", "--count", "5000000"]);
    let pid = w.pid().to_string();
    let rec = Recording::start(
        &[
            "attach",
            "--pid",
            &pid,
            "--events",
            "faults",
            "--max-size",
            "300K",
        ],
        &dir,
    );
    w.go();
    let rec = rec.finish();
    let _ = w.child.kill();
    let _ = w.child.wait();
    let s = rec.summary();
    assert_eq!(s["stop_reason"], "max-size");
    assert_eq!(s["complete"], true);
    let size = std::fs::metadata(dir.join("capture.bar")).unwrap().len();
    assert!(
        size < 3 * 300 * 1024,
        "capture of {size} bytes for a 300K limit"
    );
    assert!(
        rec.stderr.iter().any(|l| l.contains("--max-size")),
        "{:?}",
        rec.stderr
    );
}

#[test]
fn files_belong_to_the_sudo_user() {
    if !root_or_skip("files_belong_to_the_sudo_user") {
        return;
    }
    let dir = out_dir("sudo-owner");
    let mut child = Command::new("sleep").arg("1").spawn().unwrap();
    let out = Command::new(bar_probe())
        .args([
            "attach",
            "--pid",
            &child.id().to_string(),
            "-e",
            "cpu",
            "-q",
            "-o",
        ])
        .arg(&dir)
        .env("SUDO_UID", "65534")
        .env("SUDO_GID", "65534")
        .output()
        .unwrap();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::MetadataExt as _;
    for f in std::iter::once(dir.clone())
        .chain(std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()))
    {
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{}", f.display());
    }
}

#[test]
fn jit_code_is_named_from_the_perf_map() {
    if !root_or_skip("jit_code_is_named_from_the_perf_map") {
        return;
    }
    let dir = out_dir("jit");
    let (_, rec) = attach_through(&["jit", "--seconds", "2"], &["--events", "cpu"], &dir);
    let folded = rec.folded("cpu");
    // The map file is gone when the process ends; the name survives in the capture.
    assert!(
        folded.weight_with("bar_jit_hot_loop") * 2 >= folded.total(),
        "{:#?}\n{}",
        folded.stacks,
        rec.stderr.join("\n")
    );
}
