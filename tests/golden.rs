//! Golden outputs: `bar-probe report` renders checked-in captures, and the folded stacks, the
//! JSON lines of events and the JSON documents (summary.json, a phase diff's diff.json) must be
//! byte for byte the expected files beside them. Moving code around the back end must not
//! change a byte of what users read; this is the proof, and it needs no root.
//!
//! `BAR_BLESS=1 cargo test --release -p bar-tests --test golden` rewrites the expected files
//! (as inferno's tests do); review the diff before committing it.
//!
//! The captures were recorded by bar-probe itself from its own workloads (copied to a folder
//! of its own first, so the capture names no checkout), as root, and are remade so:
//!
//! ```text
//! mkdir /tmp/bar-golden && cp target/release/bar-probe /tmp/bar-golden && cd /tmp/bar-golden
//! mkfifo go && exec 3<>go   # the workloads start on a line from it, once bar records
//! # tests/golden/phases.bar: `run` with two timed phases, each in a function of its own
//! ./bar-probe workload phases --seconds 1 --wait <&3 >/dev/null & W=$!
//! ./bar-probe run --pid $W --phase parse=1s --phase render=1s -o phases 2>rec.err & R=$!
//! until grep -q recording rec.err; do sleep 0.1; done; echo go >&3; wait $R
//! # tests/golden/tcp.bar: `attach` to 20 loopback connects and 3 refused ones
//! ./bar-probe workload tcp --count 20 --refused 3 --wait <&3 >/dev/null & W=$!
//! ./bar-probe attach --pid $W -o tcp 2>rec.err & R=$!
//! until grep -q recording rec.err; do sleep 0.1; done; echo go >&3; wait $R
//! ```
//!
//! then copy each `capture.bar` over its file here and bless.

use std::path::{Path, PathBuf};

use bar_tests::{out_dir, run};

/// What is compared: text outputs whose every byte is derived from the capture. Flame graphs
/// (inferno's SVG) and report.html embed the same data and are left out, so a new inferno
/// release does not show up as a change of bar's.
fn compared(name: &str) -> bool {
    [".folded", ".jsonl", ".json"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// The one place where rendered text is made independent of the run. Everything else in the
/// outputs (bar's version, host, kernel, times, command lines) comes from the capture itself,
/// so it is the same on every machine and at every time. What varies is only where the test
/// finds the capture: a diff names its inputs by the path it was given.
fn normalise(text: &str, capture: &Path) -> String {
    text.replace(capture.to_str().expect("UTF-8 path"), "<capture>")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden")
}

/// Relative paths of the compared files under `dir`, sorted.
fn listing(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = e.expect("dir entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if compared(&path.file_name().unwrap().to_string_lossy()) {
                out.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

/// Renders `golden/NAME.bar` and compares (or, with `BAR_BLESS=1`, rewrites) `golden/NAME/`.
fn check(name: &str) {
    let capture = golden_dir().join(format!("{name}.bar"));
    let expected = golden_dir().join(name);
    let rendered = out_dir(&format!("golden-{name}"));
    let out = run(&[
        "report",
        capture.to_str().unwrap(),
        "-o",
        rendered.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "report of {}: {}",
        capture.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let files = listing(&rendered);
    assert!(
        files.iter().any(|f| f == Path::new("summary.json")),
        "{files:?}"
    );
    let text = |f: &Path| {
        let raw = std::fs::read_to_string(rendered.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        normalise(&raw, &capture)
    };
    if std::env::var_os("BAR_BLESS").is_some_and(|v| v == "1") {
        let _ = std::fs::remove_dir_all(&expected);
        for f in &files {
            let dest = expected.join(f);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(&dest, text(f)).unwrap();
        }
        eprintln!("blessed {} files in {}", files.len(), expected.display());
        return;
    }
    assert_eq!(
        files,
        listing(&expected),
        "{name}: the files rendered differ from the expected ones (BAR_BLESS=1 rewrites them)"
    );
    let mut differ = Vec::new();
    for f in &files {
        let want = std::fs::read_to_string(expected.join(f)).unwrap();
        let got = text(f);
        if got != want {
            let line = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| got.lines().count().min(want.lines().count()));
            differ.push(format!(
                "{}: first difference at line {}\n  got:  {}\n  want: {}",
                f.display(),
                line + 1,
                got.lines().nth(line).unwrap_or("<end>"),
                want.lines().nth(line).unwrap_or("<end>")
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{name}: rendered outputs differ from {} (BAR_BLESS=1 rewrites them after review):\n{}",
        expected.display(),
        differ.join("\n")
    );
    let _ = std::fs::remove_dir_all(&rendered);
}

#[test]
fn phases_capture_renders_the_expected_outputs() {
    check("phases");
}

#[test]
fn tcp_capture_renders_the_expected_outputs() {
    check("tcp");
}
