//! `bar-probe export --format pprof` read back by `go tool pprof` itself: a recording of a
//! workload of ours must show the same functions on top, with the same totals, as the folded
//! files rendered from the same capture.

use std::{collections::BTreeMap, path::Path, process::Output};

use bar_tests::{
    Folded, attach_through, go, one_line_error, out_dir, pprof_or_skip, root_or_skip, run,
};

/// `go tool pprof ARGS FILE`, which must succeed; returns its stdout.
fn pprof(args: &[&str], file: &Path) -> String {
    let out = go()
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .output()
        .expect("run go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One row of `go tool pprof -top`.
#[derive(Debug)]
struct Row {
    flat: u64,
    name: String,
}

/// Parses `-top` output (values must be plain numbers: a count sample index, or `-unit`).
/// Returns the total from the "Showing nodes accounting for X, Y% of TOTAL total" line and
/// the rows, heaviest first.
fn parse_top(text: &str) -> (u64, Vec<Row>) {
    let number = |s: &str| -> u64 {
        let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {s}"))
    };
    let total = text
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("Showing nodes accounting for ")?;
            let of = rest.split(" of ").nth(1)?;
            Some(number(of.trim_end_matches(" total")))
        })
        .unwrap_or_else(|| panic!("no total in:\n{text}"));
    let rows = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            // flat flat% sum% cum cum% name, where the name may contain spaces.
            let mut parts = l.split_whitespace();
            let flat = parts.next()?;
            let name: Vec<&str> = parts.skip(4).collect();
            Some(Row {
                flat: number(flat),
                name: name.join(" "),
            })
        })
        .collect();
    (total, rows)
}

/// Self weight per leaf frame of a folded file: what `pprof -top` calls flat.
fn flat_of(folded: &Folded) -> BTreeMap<String, u64> {
    let mut flat = BTreeMap::new();
    for (stack, w) in &folded.stacks {
        let frames: Vec<&str> = stack.split(';').collect();
        // A line with only the process name is a sample without a stack.
        let leaf = if frames.len() == 1 {
            "[no stack]"
        } else {
            frames[frames.len() - 1]
        };
        *flat.entry(leaf.to_owned()).or_default() += w;
    }
    flat
}

fn export(dir: &Path, kind: &str) -> (Output, std::path::PathBuf) {
    let file = dir.join(format!("{kind}.pb.gz"));
    let out = run(&[
        "export",
        dir.join("capture.bar").to_str().unwrap(),
        "--format",
        "pprof",
        "--event",
        kind,
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "export {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        file.to_str().unwrap(),
        "prints the file written"
    );
    (out, file)
}

#[test]
fn cpu_profile_opens_in_go_pprof_with_the_folded_top_functions() {
    if !root_or_skip("cpu_profile_opens_in_go_pprof_with_the_folded_top_functions")
        || !pprof_or_skip("cpu_profile_opens_in_go_pprof_with_the_folded_top_functions")
    {
        return;
    }
    let dir = out_dir("export-cpu");
    let (report, rec) = attach_through(
        &["cpu", "--seconds", "3"],
        &["--events", "cpu,offcpu", "--frequency", "199"],
        &dir,
    );
    let folded = rec.folded("cpu");
    let (_, file) = export(&dir, "cpu");

    let text = pprof(&["-top", "-nodecount=25", "-sample_index=samples"], &file);
    let (total, rows) = parse_top(&text);
    assert_eq!(total, folded.total(), "same samples in total\n{text}");
    let expected = flat_of(&folded);
    let (hottest, hottest_w) = expected
        .iter()
        .max_by_key(|(_, w)| **w)
        .expect("samples in cpu.folded");
    assert!(
        hottest.contains("burn_cpu_hot_loop"),
        "folded top is the hot loop: {expected:#?}"
    );
    assert_eq!(
        (&rows[0].name, rows[0].flat),
        (hottest, *hottest_w),
        "pprof's top function is the folded file's\n{text}"
    );
    // Every function pprof lists has exactly the folded self weight.
    for row in rows.iter().filter(|r| r.flat > 0) {
        assert_eq!(
            expected.get(&row.name).copied(),
            Some(row.flat),
            "{} in pprof vs folded\n{text}",
            row.name
        );
    }

    // The time sample type is the count times the period, 1e9/199 ns.
    let text = pprof(
        &["-top", "-nodecount=1", "-sample_index=cpu", "-unit=ns"],
        &file,
    );
    let (ns, _) = parse_top(&text);
    assert_eq!(ns, folded.total() * (1_000_000_000 / 199), "{text}");

    // Labels: the process, its thread and its name.
    let tags = pprof(&["-tags"], &file);
    let pid = &report["pid"];
    assert!(tags.contains(&format!(" {pid}")), "pid label: {tags}");
    assert!(tags.contains("bar-probe"), "comm label: {tags}");
    for key in ["pid:", "tid:", "comm:"] {
        assert!(tags.contains(key), "{key} in {tags}");
    }
    assert!(!tags.contains("phase:"), "no markers, no phase: {tags}");

    // A kind the capture does not have, and an output that cannot be written.
    let capture = dir.join("capture.bar");
    let out = run(&["export", capture.to_str().unwrap(), "--event", "tcp"]);
    one_line_error(&out, "has no tcp events; it has cpu (");
    let out = run(&[
        "export",
        capture.to_str().unwrap(),
        "-o",
        "/proc/bar-cannot-be-here.pb.gz",
    ]);
    one_line_error(&out, "cannot write /proc/bar-cannot-be-here.pb.gz");

    // A capture cut short exports what was valid, with a warning.
    let data = std::fs::read(&capture).unwrap();
    let cut = dir.join("cut.bar");
    std::fs::write(&cut, &data[..data.len() * 2 / 3]).unwrap();
    let partial = dir.join("partial.pb.gz");
    let out = run(&[
        "export",
        cut.to_str().unwrap(),
        "-o",
        partial.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is damaged, exported what was valid"),
        "{stderr}"
    );
    let (partial_total, _) = parse_top(&pprof(&["-top", "-sample_index=samples"], &partial));
    assert!(
        partial_total < folded.total(),
        "{partial_total} of {} samples before the cut",
        folded.total()
    );
}

#[test]
fn offcpu_profile_has_the_blocked_time_in_nanoseconds() {
    if !root_or_skip("offcpu_profile_has_the_blocked_time_in_nanoseconds")
        || !pprof_or_skip("offcpu_profile_has_the_blocked_time_in_nanoseconds")
    {
        return;
    }
    let dir = out_dir("export-offcpu");
    let (report, rec) = attach_through(
        &["sleep", "--count", "100", "--micros", "5000"],
        &["--events", "offcpu"],
        &dir,
    );
    let folded = rec.folded("offcpu");
    let (_, file) = export(&dir, "offcpu");

    let text = pprof(
        &["-top", "-nodecount=25", "-sample_index=offcpu", "-unit=ns"],
        &file,
    );
    let (total_ns, rows) = parse_top(&text);
    let switches = parse_top(&pprof(&["-top", "-sample_index=switches"], &file)).0;
    // folded rounds each interval down to whole microseconds, pprof keeps the nanoseconds: it
    // has less than 1 us more per interval, and more at all unless every interval was a whole
    // number of microseconds (about one chance in 1000 to the power of the intervals).
    let folded_ns = folded.total() * 1000;
    assert!(
        folded_ns < total_ns && total_ns < folded_ns + switches * 1000,
        "pprof {total_ns} ns, folded {folded_ns} ns, {switches} intervals\n{text}"
    );
    // The sleeps are blocked time, shown as the `[blocked]` leaf frame.
    assert_eq!(rows[0].name, "[blocked]", "{text}");
    let slept_ns = report["total_us"].as_u64().expect("total_us") * 1000;
    let text = pprof(
        &[
            "-top",
            "-sample_index=offcpu",
            "-unit=ns",
            "-focus=sleep_in_named_function",
        ],
        &file,
    );
    let in_sleep = parse_top(&text)
        .1
        .iter()
        .find(|r| r.name == "[blocked]")
        .unwrap_or_else(|| panic!("[blocked] under sleep_in_named_function\n{text}"))
        .flat;
    // One thread: it cannot be blocked for longer than its sleep loop took.
    let elapsed_ns = report["elapsed_us"].as_u64().expect("elapsed_us") * 1000;
    assert!(
        in_sleep >= slept_ns * 85 / 100 && in_sleep <= elapsed_ns * 105 / 100,
        "blocked {in_sleep} ns under sleep_in_named_function, slept {slept_ns} ns in {elapsed_ns} ns"
    );
}

#[test]
fn export_of_bad_input_is_one_line() {
    let dir = out_dir("export-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.bar");
    let out = run(&["export", missing.to_str().unwrap()]);
    one_line_error(&out, "cannot read");

    let junk = dir.join("junk.bar");
    std::fs::write(&junk, b"not a capture").unwrap();
    let out = run(&["export", junk.to_str().unwrap()]);
    one_line_error(&out, "is not a bar capture");

    let out = run(&["export", junk.to_str().unwrap(), "--event", "disk"]);
    one_line_error(&out, "unknown event kind 'disk'");
    assert_eq!(out.status.code(), Some(2));

    let out = run(&["export", junk.to_str().unwrap(), "--format", "svg"]);
    one_line_error(&out, "invalid value 'svg'");
}
