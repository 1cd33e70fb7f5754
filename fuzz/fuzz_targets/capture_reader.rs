//! Any bytes given to the capture reader must end in data or a reported damage, never a panic,
//! all the way through aggregation and the summary (stack and frame ids out of range, empty
//! blocks, blocks in any order).
#![no_main]

use std::path::Path;

use bar::{analyze::Capture, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(capture) = Capture::from_bytes(data.to_vec(), Path::new("fuzz")) else {
        return;
    };
    let profile = capture.whole();
    for agg in profile.views.values() {
        let _ = profile.folded(agg);
    }
    let _ = render::summary(&profile);
});
