//! The Go workload that the tests of Go stacks record (`tests/workloads/go-sha`): built here
//! with the Go toolchain, it hashes in its named loop for the time asked and says how much.

use bar_tests::{Workload, go_sha_command, go_sha_or_skip};

#[test]
fn go_sha_hashes_in_its_loop_for_the_time_asked() {
    let Some(exe) = go_sha_or_skip("go_sha_hashes_in_its_loop") else {
        return;
    };
    let mut w = Workload::spawn(go_sha_command(&exe, 0.3));
    w.go();
    let report = w.finish();
    let hashes = report["hashes"].as_u64().expect("hashes");
    let elapsed = report["elapsed_us"].as_u64().expect("elapsed_us");
    // It hashes 64 times per clock read until the deadline, so at least once and for at
    // least the time asked.
    assert!(hashes >= 64, "{report}");
    assert!(elapsed >= 300_000, "{report}");
    assert_eq!(report["bytes_per_hash"], 4096, "{report}");
}
