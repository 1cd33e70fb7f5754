//! The whole host under churn: processes too short-lived to be looked up keep the names the
//! kernel knew, and the flight recorder (`record --ring`, `bar-probe dump`) keeps the last
//! stretch of it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bar_tests::{
    Folded, Recording, Value, Workload, bar_probe, one_line_error, out_dir, read_json,
    root_or_skip, run,
};

/// The name the spawn workload's children have.
const CHILD: &str = "bar-shortlived";

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
    assert_named(&rec.dir, &pids);
}

/// Every child of the spawn workload (`pids`) is named in the outputs in `dir`.
fn assert_named(dir: &Path, pids: &[u64]) {
    // Every child faults in its program as it starts (tens of pages or more, by attach
    // point) and burns 50 ms.
    let faults = named_weight(&Folded::read(&dir.join("faults.folded")), pids, CHILD);
    let cpu = named_weight(&Folded::read(&dir.join("cpu.folded")), pids, CHILD);
    assert!(faults >= 40 * 20, "faults of {CHILD}: {faults}");
    assert!(cpu > 0, "cpu samples of {CHILD}: {cpu}");
}

/// `bar-probe dump -o DIR` of the recording `rec` (others may run on the machine), which must
/// succeed; returns DIR.
fn dump(rec: &Recording, name: &str) -> PathBuf {
    let dir = out_dir(name);
    let pid = rec.child.id().to_string();
    let out = run(&["dump", "--recorder", &pid, "-o", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "bar-probe dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dumped the last"), "{stderr}");
    dir
}

/// bar-probe under another name, which the kernel gives the processes that run it: a link in
/// `dir` named `name`.
fn named_probe(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let link = dir.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(bar_probe(), &link).unwrap();
    link
}

/// Runs a built-in workload through `probe` and returns its report.
fn workload(probe: &Path, args: &[&str]) -> Value {
    let out = Command::new(probe)
        .arg("workload")
        .args(args)
        .output()
        .expect("run workload");
    assert!(out.status.success(), "workload failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("a report line")).expect("json report")
}

/// Weight of stacks under process `name` with a frame containing `frame`.
fn under(folded: &Folded, name: &str, frame: &str) -> u64 {
    folded.weight_where(|s| s.split(';').next() == Some(name) && s.contains(frame))
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb / 1024
}

#[test]
fn the_ring_keeps_the_last_stretch_through_dumps_and_ctrl_c() {
    if !root_or_skip("the_ring_keeps_the_last_stretch_through_dumps_and_ctrl_c") {
        return;
    }
    let dir = out_dir("ring");
    let links = out_dir("ring-links");
    let burn = named_probe(&links, "bar-ring-burn");
    let storm = named_probe(&links, "bar-ring-storm");
    let rec = Recording::start(
        &["record", "--all", "--events", "cpu,faults", "--ring", "5s"],
        &dir,
    );
    // A CPU burn, dumped at once: the ring has it.
    workload(&burn, &["cpu", "--seconds", "2"]);
    let first = dump(&rec, "ring-dump-burn");
    let burned = under(
        &Folded::read(&first.join("cpu.folded")),
        "bar-ring-burn",
        "burn_cpu_hot_loop",
    );
    assert!(
        burned >= 20,
        "{burned} samples of the burn in the first dump"
    );
    // Ten seconds later, a fault storm; a dump a second after it ended holds all of it and
    // nothing of the burn, which is older than the ring.
    std::thread::sleep(Duration::from_secs(10));
    let report = workload(&storm, &["faults", "--count", "30000"]);
    std::thread::sleep(Duration::from_secs(1));
    let second = dump(&rec, "ring-dump-storm");
    let pages = report["pages"].as_u64().expect("pages");
    let faults = Folded::read(&second.join("faults.folded"));
    let stormed = under(&faults, "bar-ring-storm", "touch_fresh_pages");
    assert!(
        stormed * 10 >= pages * 9 && stormed <= pages + pages / 10,
        "{stormed} faults of the storm for {pages} pages"
    );
    for view in ["cpu", "faults"] {
        let folded = Folded::read(&second.join(format!("{view}.folded")));
        let old = folded.weight_where(|s| s.starts_with("bar-ring-burn;"));
        assert_eq!(
            old, 0,
            "the burn ended 10 s before a 5 s ring was dumped ({view})"
        );
    }
    let s = read_json(&second.join("summary.json"));
    assert_eq!(s["complete"], true, "{s}");
    assert_eq!(s["stop_reason"], "dump");
    assert_eq!(s["ring"]["window_s"], 5.0, "{s}");
    let held = s["duration_s"].as_f64().unwrap();
    assert!(
        (4.0..=5.5).contains(&held),
        "a dump of a 5 s ring holds {held} s"
    );
    // A folder that cannot be made: one line to the caller, and the ring goes on.
    let pid = rec.child.id().to_string();
    let out = run(&[
        "dump",
        "--recorder",
        &pid,
        "-o",
        "/proc/bar-no-such-dir/dump",
    ]);
    one_line_error(&out, "cannot create output folder");
    // Asking a pid that is no flight recorder: one line, the ring goes on.
    let out = run(&["dump", "--recorder", "1", "-o", "/tmp/bar-never-written"]);
    one_line_error(&out, "no bar-probe recording with --ring runs as pid 1");
    assert!(!Path::new("/tmp/bar-never-written").exists());
    let third = dump(&rec, "ring-dump-again");
    assert_eq!(read_json(&third.join("summary.json"))["complete"], true);
    // Whole-host rings stay small; the benchmark measures them under load.
    let rss = peak_rss_mib(rec.child.id());
    assert!(rss < 512, "the recorder's peak RSS: {rss} MiB");
    // Ctrl-C writes the last ring where the recording was asked to write.
    let rec = rec.interrupt();
    let s = rec.summary();
    assert_eq!(s["complete"], true, "{s}");
    assert_eq!(s["stop_reason"], "signal");
    assert_eq!(s["ring"]["window_s"], 5.0);
    let _ = std::fs::remove_dir_all(&links);
}

#[test]
fn short_lived_processes_are_named_in_a_dump() {
    if !root_or_skip("short_lived_processes_are_named_in_a_dump") {
        return;
    }
    let dir = out_dir("ring-shortlived");
    let mut w = Workload::start(&["spawn", "--count", "40", "--micros", "50000"]);
    let rec = Recording::start(
        &["record", "--all", "--events", "cpu,faults", "--ring", "30s"],
        &dir,
    );
    w.go();
    let report = w.finish();
    let dumped = dump(&rec, "ring-shortlived-dump");
    rec.interrupt();
    assert_named(&dumped, &children(&report));
}

#[test]
fn ring_options_that_cannot_work_get_one_line() {
    let out = run(&["record", "--all", "--ring", "500ms"]);
    one_line_error(&out, "too short");
    let out = run(&["record", "--all", "--ring", "10s", "--max-size", "1M"]);
    one_line_error(&out, "--max-size");
    let out = run(&["record", "--all", "--ring-size", "1M"]);
    one_line_error(&out, "add --ring DUR");
    let out = run(&["record", "--all", "--ring", "10s", "--ring-size", "lots"]);
    one_line_error(&out, "not a size");
}

#[test]
fn a_rate_over_the_trigger_writes_the_ring_out_by_itself() {
    if !root_or_skip("a_rate_over_the_trigger_writes_the_ring_out_by_itself") {
        return;
    }
    // A cgroup of its own, so that no other process's faults set the trigger off.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let Some(v2) = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_owned())
    }) else {
        eprintln!("skipped a_rate_over_the_trigger_writes_the_ring_out_by_itself: no cgroup v2");
        return;
    };
    let cg = Path::new(&v2).join(format!("bar-test-trigger-{}", std::process::id()));
    std::fs::create_dir_all(&cg).expect("create a cgroup");
    let dir = out_dir("ring-trigger");
    let mut storm = Workload::start(&["faults", "--count", "60000"]);
    std::fs::write(cg.join("cgroup.procs"), storm.pid().to_string()).unwrap();
    let rec = Recording::start(
        &[
            "record",
            "--cgroup",
            cg.to_str().unwrap(),
            "--events",
            "faults",
            "--ring",
            "8s",
            "--ring-trigger",
            "faults=10k",
        ],
        &dir,
    );
    storm.go();
    let report = storm.finish();
    // Written half a window (4 s) after the rate crossed: the storm is over by then, even in
    // the emulated VMs (with a 4 s ring, 11% of its faults came after a dump written 2 s in).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let dumped = loop {
        let found = std::fs::read_dir(&dir).unwrap().flatten().find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("trigger-faults-")
                && e.path().join("summary.json").exists()
        });
        if let Some(e) = found {
            break e.path();
        }
        assert!(std::time::Instant::now() < deadline, "no dump by trigger");
        std::thread::sleep(Duration::from_millis(200));
    };
    rec.interrupt();
    let _ = std::fs::remove_dir(&cg);
    let pages = report["pages"].as_u64().unwrap();
    let faults = Folded::read(&dumped.join("faults.folded")).weight_with("touch_fresh_pages");
    assert!(
        faults * 10 >= pages * 9 && faults <= pages + pages / 10,
        "{faults} faults of the storm in the dump for {pages} pages"
    );
    assert_eq!(
        read_json(&dumped.join("summary.json"))["stop_reason"],
        "dump"
    );
}
