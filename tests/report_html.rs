//! `report.html` opens offline in a real browser (headless Chromium) without console errors,
//! and shows the phases, the timeline and the flame graphs of a real recording.

use std::process::Command;

use bar_tests::{Recording, Workload, out_dir, root_or_skip};

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[test]
fn report_html_renders_phases_and_flame_graphs_without_errors() {
    if !root_or_skip("report_html_renders_phases_and_flame_graphs_without_errors") {
        return;
    }
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("BAR_REQUIRE_ROOT").is_none(),
            "chromium is missing: scripts/setup.sh report installs it"
        );
        eprintln!("skipped: no chromium (scripts/setup.sh report installs it)");
        return;
    };
    let dir = out_dir("html");
    let mut w = Workload::start(&["phases", "--seconds", "1.5"]);
    let pid = w.pid().to_string();
    let rec = Recording::start(&["attach", "--pid", &pid, "--events", "cpu,offcpu"], &dir);
    Command::new(bar_tests::bar_probe())
        .args(["mark", "A"])
        .status()
        .unwrap();
    w.go();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    Command::new(bar_tests::bar_probe())
        .args(["mark", "B"])
        .status()
        .unwrap();
    w.finish();
    let rec = rec.finish();
    let html = rec.dir.join("report.html");
    assert!(html.exists());
    let profile = out_dir("html-browser");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    // Phases: the table, the bands on the timeline, and a section of flame graphs per phase.
    assert!(dom.contains("id=\"phases\""), "no phase table");
    assert_eq!(
        dom.matches("class=\"phase-band\"").count(),
        2,
        "two phase bands"
    );
    assert_eq!(dom.matches("class=\"phase-flames\"").count(), 2);
    // Flame graphs: whole recording per kind plus per phase per kind, each a real SVG.
    assert_eq!(
        dom.matches("<iframe").count(),
        2 + 2 * 2 + 1,
        "flame graph frames: whole, per phase, and the phase diff"
    );
    // The diff of phase B against phase A names the function that grew, with its root cause.
    assert!(
        dom.contains("Diff: phase A \u{2192} phase B"),
        "no phase diff section"
    );
    let table = dom
        .split("class=\"diff-frames\"")
        .nth(1)
        .expect("a diff table");
    let row = table
        .split("<tr>")
        .find(|r| r.contains("phase_b_render"))
        .expect("phase_b_render in the diff table");
    assert!(row.contains("grew"), "{row}");
    assert!(dom.contains("class=\"diff-paths\""));
    assert!(dom.contains("data:image/svg+xml;base64,"));
    assert!(!dom.contains("is missing"));
    // Works offline: nothing is fetched from anywhere.
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(
        !text.contains("http://")
            || text
                .matches("http://")
                .all(|_| text.contains("xmlns=\"http://www.w3.org/2000/svg\""))
    );
    assert!(!text.contains("https://"));
    let _ = std::fs::remove_dir_all(profile);
}
