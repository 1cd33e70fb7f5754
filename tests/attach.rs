//! `bar-probe attach` against workloads of bar's own, on the running kernel: the functions
//! that burn CPU and fault pages must show up by name, with the weights the workloads report.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bar_tests::{
    Folded, Recording, Workload, assert_blocked_matches_sleeps, attach_through, bar_probe,
    emulated, metric, out_dir, read_json, root_or_skip, run, sleeps_counted,
};

#[test]
fn a_storm_still_going_when_the_recording_stops_loses_nothing() {
    if !root_or_skip("a_storm_still_going_when_the_recording_stops_loses_nothing") {
        return;
    }
    // The recording stops while the target faults at 250k pages/s. Detaching every family
    // takes the kernel a while (about 0.4 s on a 2-CPU machine), and the programs record until
    // it is done: the buffers must be drained meanwhile, or they fill and what the target did
    // then is counted as lost.
    let dir = out_dir("storm-at-stop");
    let mut w = Workload::start(&["faults", "--rate", "250000", "--seconds", "4"]);
    let pid = w.pid().to_string();
    let rec = Recording::start(&["attach", "--pid", &pid, "--duration", "2s"], &dir);
    w.go();
    let rec = rec.finish();
    w.finish();
    let summary = rec.summary();
    let faults = &summary["kinds"]["faults"];
    assert!(
        faults["events"].as_u64().unwrap_or(0) > 0,
        "faults recorded: {faults}"
    );
    assert_eq!(summary["lost"]["total"], 0, "{}", summary["lost"]);
    for (kind, k) in summary["kinds"].as_object().expect("kinds") {
        assert_eq!(k["lost"], 0, "{kind}: {k}");
    }
}

#[test]
fn the_last_few_faults_and_sleeps_are_kept() {
    if !root_or_skip("the_last_few_faults_and_sleeps_are_kept") {
        return;
    }
    // Records go out in per-CPU batches of 8, or with the next record once the first is
    // 20 ms old. Three fresh pages and three 2 ms sleeps, then the process ends: fewer
    // records than fill a batch, all within 20 ms of each other, so every one of them is
    // still in the kernel's batch when the recording ends, and must be taken from there.
    let dir = out_dir("last-few");
    let (_, rec) = attach_through(&["faults", "--count", "3"], &["--events", "faults"], &dir);
    // The three pages' faults are those of touch_fresh_pages's own writes: its last user frame.
    // The thread may also fault in a page of its own stack under it (in Region::new), which is
    // no page of the three (seen on a busy machine and in the VMs, one run in two).
    let folded = rec.folded("faults");
    let faults = folded.weight_where(|s| {
        s.split(';')
            .rfind(|f| !f.ends_with("_[k]"))
            .is_some_and(|f| f.ends_with("touch_fresh_pages"))
    });
    // None of the three may be lost. The kernel may also take one write twice (the fault
    // handler gave up and the write faulted again: 4 faults of the same stack for 3 pages,
    // seen once on the 6.12 VM), and each is an exception bar records.
    assert!(
        (3..=4).contains(&faults),
        "faults in touch_fresh_pages: {faults}\n{:#?}",
        folded.stacks
    );

    let dir = out_dir("last-few-sleeps");
    let (report, rec) = attach_through(
        &["sleep", "--count", "3", "--micros", "2000"],
        &["--events", "offcpu"],
        &dir,
    );
    let folded = rec.folded("offcpu");
    let slept = report["measured_us"].as_u64().expect("measured_us");
    let blocked = folded.weight_with("sleep_in_named_function");
    assert!(
        blocked >= 6_000 && blocked * 100 <= slept * 102,
        "blocked in sleep_in_named_function: {blocked} us, the sleeps took {slept} us\n{:#?}",
        folded.stacks
    );
}

#[test]
fn faults_are_counted_and_attributed_with_kernel_stacks() {
    if !root_or_skip("faults_are_counted_and_attributed_with_kernel_stacks") {
        return;
    }
    let dir = out_dir("faults");
    let (report, rec) = attach_through(
        &["faults", "--count", "40000"],
        &["--events", "faults"],
        &dir,
    );
    let pages = report["pages"].as_u64().expect("pages");
    assert_eq!(pages, 40000);

    let folded = rec.folded("faults");
    let in_touch = folded.weight_with("touch_fresh_pages");
    assert!(
        in_touch * 10 >= pages * 9,
        "faults in touch_fresh_pages: {in_touch}, pages touched: {pages}\n{:#?}",
        folded.stacks
    );
    // No more than a few extra faults per page either (the workload touches each page once).
    assert!(
        in_touch <= pages + pages / 10,
        "{in_touch} faults for {pages} pages"
    );
    // Stacks are root first: the process name, then user frames, then kernel frames.
    let (stack, _) = folded
        .stacks
        .iter()
        .max_by_key(|(_, w)| **w)
        .expect("a stack");
    let frames: Vec<&str> = stack.split(';').collect();
    assert_eq!(
        frames[0], "bar-probe",
        "root frame is the process name: {stack}"
    );
    let touch = frames
        .iter()
        .position(|f| f.contains("touch_fresh_pages"))
        .expect("touch frame");
    let kernel = frames
        .iter()
        .position(|f| f.ends_with("_[k]"))
        .expect("kernel frames in fault stacks");
    assert!(touch < kernel, "user frames before kernel frames: {stack}");
    assert!(
        frames.iter().any(|f| f.contains("page_fault")),
        "fault entry in kernel part: {stack}"
    );

    let s = rec.summary();
    assert_eq!(s["target"]["pid"], report["pid"]);
    assert_eq!(s["target"]["comm"], "bar-probe");
    assert_eq!(s["stop_reason"], "target-exited");
    assert_eq!(s["complete"], true);
    let faults = &s["kinds"]["faults"];
    assert_eq!(faults["weight_unit"], "faults");
    assert!(
        faults["attach"].as_str().is_some_and(|a| !a.is_empty()),
        "{faults}"
    );
    assert_eq!(faults["events"].as_u64(), Some(folded.total()));
    assert!(faults["lost"].is_u64(), "lost is reported: {faults}");
    assert!(s["lost"]["total"].is_u64());
    assert_eq!(s["kernel_release"].as_str().map(str::is_empty), Some(false));
    assert!(s["start"].as_str().unwrap() < s["end"].as_str().unwrap());
    assert!(dir.join("faults.svg").exists());
}

#[test]
fn faults_and_offcpu_summed_in_the_kernel_keep_their_counts() {
    if !root_or_skip("faults_and_offcpu_summed_in_the_kernel_keep_their_counts") {
        return;
    }
    let dir = out_dir("summed-faults");
    let (report, rec) = attach_through(
        &["faults", "--count", "40000"],
        &["--events", "faults", "--aggregate", "100ms"],
        &dir,
    );
    let pages = report["pages"].as_u64().expect("pages");
    let folded = rec.folded("faults");
    let in_touch = folded.weight_with("touch_fresh_pages");
    // The same bounds as faults sent one by one.
    assert!(
        in_touch * 10 >= pages * 9 && in_touch <= pages + pages / 10,
        "{in_touch} faults in touch_fresh_pages for {pages} pages\n{:#?}",
        folded.stacks
    );
    assert!(
        folded
            .stacks
            .keys()
            .any(|s| s.contains("touch_fresh_pages") && s.contains("_[k]")),
        "{:#?}",
        folded.stacks
    );
    let faults = &rec.summary()["kinds"]["faults"];
    assert_eq!(faults["summed_in_kernel_every_ms"], 100, "{faults}");
    assert_eq!(faults["events"].as_u64(), Some(folded.total()));
    assert_eq!(faults["lost"], 0, "{faults}");

    let dir = out_dir("summed-offcpu");
    let (report, rec) = attach_through(
        &["sleep", "--count", "200", "--micros", "5000"],
        &["--events", "offcpu", "--aggregate", "100ms"],
        &dir,
    );
    let folded = rec.folded("offcpu");
    assert_blocked_matches_sleeps(&report, &folded);
    let offcpu = &rec.summary()["kinds"]["offcpu"];
    // 200 sleeps of 5 ms, each interval counted although summed; the percentiles are of the
    // windows' means, which are the mean sleep.
    let p50 = offcpu["blocked_us"]["p50"].as_u64().expect("p50");
    let mean = report["measured_us"].as_u64().expect("measured_us") / 200;
    // Each sleep is one interval, summed or not.
    assert_eq!(sleeps_counted(&rec), 200, "{offcpu}");
    assert!(
        p50 >= 4900 && p50 * 10 <= mean * 13,
        "p50 {p50} us, mean sleep {mean} us: {offcpu}"
    );

    // The capture alone renders the same sums.
    let again = out_dir("summed-offcpu-report");
    let capture = dir.join("capture.bar");
    let out = run(&[
        "report",
        capture.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        Folded::read(&again.join("offcpu.folded")).stacks,
        folded.stacks
    );
}

#[test]
fn every_sleep_is_one_interval_when_cpu_work_follows() {
    if !root_or_skip("every_sleep_is_one_interval_when_cpu_work_follows") {
        return;
    }
    // 200 sleeps of 5 ms, then 0.3 s of CPU work: the last interval ends while the thread
    // runs on, and some of the others end where no program sees it (a switch the tracepoint
    // is not run for: on a busy 6.18 host, one return in a few hundred). Each must still be
    // one interval, sent one by one or summed in the kernel.
    let workload = [
        "sleep",
        "--count",
        "200",
        "--micros",
        "5000",
        "--seconds",
        "0.3",
    ];
    for (name, sums) in [
        ("one-by-one", &[][..]),
        ("summed", &["--aggregate", "100ms"][..]),
    ] {
        let dir = out_dir(&format!("sleeps-then-cpu-{name}"));
        let mut args = vec!["--events", "offcpu"];
        args.extend_from_slice(sums);
        let (report, rec) = attach_through(&workload, &args, &dir);
        assert_blocked_matches_sleeps(&report, &rec.folded("offcpu"));
        let offcpu = &rec.summary()["kinds"]["offcpu"];
        metric(
            &format!("offcpu_returns_unseen_{name}"),
            &offcpu["returns_unseen"],
        );
        assert_eq!(sleeps_counted(&rec), 200, "{name}: {offcpu}");
        assert_eq!(offcpu["lost"], 0, "{name}: {offcpu}");
    }
}

#[test]
fn cpu_samples_land_in_the_burning_function_at_the_asked_frequency() {
    if !root_or_skip("cpu_samples_land_in_the_burning_function_at_the_asked_frequency") {
        return;
    }
    let dir = out_dir("cpu");
    let (report, rec) = attach_through(
        &["cpu", "--seconds", "3"],
        &["--events", "cpu", "--frequency", "199"],
        &dir,
    );
    let folded = rec.folded("cpu");
    let total = folded.total();
    let hot = folded.weight_with("burn_cpu_hot_loop");
    // The clock fires per CPU, so a thread gets about one sample per period it spends on a
    // CPU: 199 a second of its CPU time. That time is the workload's own count (3 s when the
    // machine is idle, less when other work shares the CPUs), not the wall clock's.
    let cpu_s = report["cpu_us"].as_u64().expect("cpu_us") as f64 / 1e6;
    let expected = cpu_s * 199.0;
    metric("cpu_samples_3s_199hz", total);
    assert!(
        expected >= 50.0,
        "the workload got only {cpu_s:.2} s of CPU in 3 s: the machine is too busy for this test"
    );
    let low = if emulated() {
        // The cpu-clock timer of an emulated CPU skips the periods during which the host did
        // not run it; how many depends on the host's load, not on bar.
        eprintln!(
            "emulated CPUs: accepting from a fifth of the expected samples, as timer periods are lost"
        );
        expected * 0.2
    } else {
        expected * 0.75
    };
    assert!(
        (low..=expected * 1.15 + 10.0).contains(&(total as f64)),
        "{total} samples for {cpu_s:.2} s on CPU at 199 Hz (expected about {expected:.0})"
    );
    // Frame-pointer unwinding loses the caller of a sample taken in a callee's prologue, so a
    // few samples miss the frame; most must have it.
    assert!(
        hot * 4 >= total * 3,
        "{hot} of {total} samples in burn_cpu_hot_loop"
    );
    let s = rec.summary();
    assert_eq!(s["kinds"]["cpu"]["attach"], "perf_event:cpu-clock");
    assert_eq!(s["kinds"]["cpu"]["frequency_hz"], 199);
    assert_eq!(s["kinds"]["cpu"]["events"].as_u64(), Some(total));
    assert!(dir.join("cpu.svg").exists());
    let svg = std::fs::read_to_string(dir.join("cpu.svg")).unwrap();
    assert!(
        svg.contains("burn_cpu_hot_loop"),
        "flame graph names the hot function"
    );
}

#[test]
fn ctrl_c_stops_and_writes_complete_outputs() {
    if !root_or_skip("ctrl_c_stops_and_writes_complete_outputs") {
        return;
    }
    let dir = out_dir("sigint");
    let mut w = Workload::start(&["cpu", "--seconds", "30"]);
    let pid = w.pid().to_string();
    let rec = Recording::start(&["attach", "--pid", &pid, "--events", "cpu,faults"], &dir);
    w.go();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rec = rec.interrupt();
    let _ = w.child.kill();
    let s = rec.summary();
    assert_eq!(s["stop_reason"], "signal");
    assert_eq!(s["complete"], true);
    assert!(rec.folded("cpu").weight_with("burn_cpu_hot_loop") > 50);
    for f in [
        "cpu.folded",
        "cpu.svg",
        "faults.folded",
        "faults.svg",
        "summary.json",
        "capture.bar",
    ] {
        assert!(dir.join(f).exists(), "{f} written");
    }
    // Nothing half-written is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn faults_tell_major_from_minor_where_the_kernel_says() {
    if !root_or_skip("faults_tell_major_from_minor_where_the_kernel_says") {
        return;
    }
    let dir = out_dir("majfaults");
    // The cold file must be on a file system with a page cache that can be dropped.
    let files = out_dir("majfaults-file");
    std::fs::create_dir_all(&files).unwrap();
    let files_arg = files.to_str().unwrap();
    let (report, rec) = attach_through(
        &["majorfaults", "--count", "400", "--dir", files_arg],
        &["--events", "faults"],
        &dir,
    );
    let _ = std::fs::remove_dir_all(&files);
    let s = rec.summary();
    let faults = &s["kinds"]["faults"];
    let attach = faults["attach"].as_str().unwrap_or_default();
    let folded = rec.folded("faults");
    let major_cold =
        folded.weight_where(|s| s.contains("read_cold_file_pages") && s.ends_with(";[major]"));
    if faults["major"].is_null() {
        // The exception tracepoints run before a fault is resolved: they cannot tell, and
        // must not pretend (no count, no [major] frame).
        assert!(faults["minor"].is_null(), "{faults}");
        assert_eq!(folded.weight_with("[major]"), 0);
        eprintln!(
            "major/minor not checked: faults attach via {attach}, which runs before a fault is resolved"
        );
        return;
    }
    let kernel_major = report["major_faults"].as_u64().unwrap();
    assert!(
        kernel_major >= 360,
        "the workload's cold reads were not major faults ({report}): is its folder on tmpfs?"
    );
    metric("major_faults_kernel", kernel_major);
    metric("major_faults_bar", major_cold);
    // bar counts as the kernel's own accounting does: the same number, in the reading
    // function, each with the [major] leaf.
    assert!(
        major_cold * 100 >= kernel_major * 95 && major_cold <= kernel_major + 5,
        "{major_cold} major faults in read_cold_file_pages, the kernel counted {kernel_major}\n{:#?}",
        folded.stacks
    );
    let minor_fresh =
        folded.weight_where(|s| s.contains("touch_fresh_pages") && !s.ends_with("[major]"));
    assert!(
        minor_fresh * 10 >= 400 * 9,
        "{minor_fresh} minor faults in touch_fresh_pages for 400 pages"
    );
    assert_eq!(
        folded.weight_where(|s| s.contains("touch_fresh_pages") && s.ends_with("[major]")),
        0
    );
    let (major, minor) = (
        faults["major"].as_u64().unwrap(),
        faults["minor"].as_u64().unwrap(),
    );
    assert_eq!(
        major + minor,
        faults["events"].as_u64().unwrap(),
        "{faults}"
    );
    assert!(major >= major_cold, "{faults}");
}

#[test]
fn duration_holds_against_a_load_of_many_cpu_bound_threads() {
    if !root_or_skip("duration_holds_against_a_load_of_many_cpu_bound_threads") {
        return;
    }
    if emulated() {
        // Stopping waits for the kernel's RCU threads to retire the programs; on emulated
        // CPUs under this load they take minutes (the recording itself stops on time).
        eprintln!("skipped under emulation: the kernel's own threads retire programs too late");
        return;
    }
    // 400 threads burning CPU at normal priority: to the fair scheduler each is worth as much
    // as one of bar's, so a bar that competes as their equal waits minutes for a CPU.
    let mut w = Workload::start(&["cpu", "--threads", "400", "--seconds", "60"]);
    w.go();
    // Stopped whatever happens below: left running, it would starve the tests after it.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let w = Stop(w.child);
    std::thread::sleep(Duration::from_millis(500));
    let dir = out_dir("crowded");
    let started = Instant::now();
    let child = Command::new(bar_probe())
        .args([
            "attach",
            "--pid",
            &w.0.id().to_string(),
            "-e",
            "cpu,offcpu",
            "-d",
            "3s",
        ])
        .arg("-o")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bar_tests::wait_at_most(child, Duration::from_secs(50), "a 3 s recording");
    let took = started.elapsed();
    drop(w);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let s = read_json(&dir.join("summary.json"));
    assert_eq!(s["stop_reason"], "duration", "{s}");
    // Stopping waits for the kernel to retire the programs, and its RCU threads run late under
    // this load too (3 to 7 s recorded here while other work shared the machine); before, the
    // load stretched -d 3s to half a minute and its return to over a minute.
    let recorded = s["duration_s"].as_f64().unwrap();
    assert!((2.9..10.0).contains(&recorded), "recorded {recorded} s");
    assert!(took < Duration::from_secs(30), "took {took:?}\n{stderr}");
    assert!(s["kinds"]["cpu"]["events"].as_u64() > Some(0), "{s}");
    metric("crowded_recording_wall_s", took.as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}
