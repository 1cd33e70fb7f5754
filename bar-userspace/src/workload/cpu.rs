//! CPU-bound workloads: the hot loop every test and the demo look for, the phases that burn it
//! from two named functions, and two threads made to preempt each other.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{WorkloadArgs, set_affinity, touch_fresh_pages};

#[inline(never)]
pub fn burn_cpu_hot_loop(iterations: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..iterations {
        x = black_box(x.rotate_left(5) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

/// Burns CPU in `burn_cpu_hot_loop` until `end`.
pub(super) fn burn_until(end: Instant) -> u64 {
    let mut n = 0u64;
    while Instant::now() < end {
        n = n.wrapping_add(burn_cpu_hot_loop(100_000));
    }
    n
}

// Both phases run the same hot loop, each from its own body: the bodies must differ, or the
// compiler merges the two functions into one symbol and both phases show as one frame.
#[inline(never)]
pub fn phase_a_parse(until: Instant) -> u64 {
    let mut n = 0;
    while Instant::now() < until {
        n += burn_cpu_hot_loop(10_000);
    }
    n
}

#[inline(never)]
pub fn phase_b_render(until: Instant) -> u64 {
    let mut n = 0;
    while Instant::now() < until {
        n ^= burn_cpu_hot_loop(20_000);
    }
    n
}

/// The demo: the hot loop and fresh pages, in turns, until `end`.
pub(super) fn demo(end: Instant) -> Value {
    let (mut spins, mut pages) = (0u64, 0usize);
    while Instant::now() < end {
        spins += black_box(burn_cpu_hot_loop(2_000_000)) & 1;
        pages += touch_fresh_pages(256);
    }
    json!({"workload": "demo", "spins": spins, "pages": pages})
}

/// `--count` million iterations of the hot loop, or `--threads` burning it until `end`.
pub(super) fn cpu(args: &WorkloadArgs, end: Instant) -> anyhow::Result<Value> {
    let n = if args.seconds.is_some() {
        let others: Vec<_> = (1..args.threads)
            .map(|_| {
                std::thread::Builder::new()
                    .stack_size(64 << 10)
                    .spawn(move || burn_until(end))
            })
            .collect::<Result<_, _>>()?;
        others
            .into_iter()
            .fold(burn_until(end), |n, t| n ^ t.join().unwrap_or(0))
    } else {
        // A fixed amount of work, so that a slowdown shows as a longer run.
        (0..args.count).fold(0u64, |n, _| n.wrapping_add(burn_cpu_hot_loop(1_000_000)))
    };
    Ok(json!({"workload": "cpu", "result": n & 1}))
}

/// Two threads burning CPU 0 for `--seconds` (default 3).
pub(super) fn preempt(args: &WorkloadArgs) -> Value {
    // The clock starts once both threads sit on CPU 0: moving a thread waits for the
    // kernel's stopper, which under an emulated CPU took seconds, and the threads must
    // share the CPU for the whole time asked.
    let pinned = std::sync::Arc::new(std::sync::Barrier::new(2));
    let length = Duration::from_secs_f64(args.seconds.unwrap_or(3.0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let pinned = pinned.clone();
            std::thread::spawn(move || {
                set_affinity(&[0]);
                pinned.wait();
                burn_until(Instant::now() + length)
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    json!({"workload": "preempt"})
}

/// Phase A then phase B, `--seconds` each (default 2), from `start`; says when each began and
/// ended, for phase files.
pub(super) fn phases(args: &WorkloadArgs, start: Instant) -> Value {
    let each = args.seconds.unwrap_or(2.0);
    let a_end = start + Duration::from_secs_f64(each);
    let a_start_wall = jiff::Timestamp::now();
    black_box(phase_a_parse(a_end));
    let b_start_wall = jiff::Timestamp::now();
    black_box(phase_b_render(a_end + Duration::from_secs_f64(each)));
    let b_end_wall = jiff::Timestamp::now();
    // The same instants as Unix seconds, for phase files in CSV.
    let unix = |t: jiff::Timestamp| {
        let ns = t.as_nanosecond();
        format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
    };
    json!({"workload": "phases",
               "phases": [{"name": "A", "start": a_start_wall.to_string(), "end": b_start_wall.to_string()},
                          {"name": "B", "start": b_start_wall.to_string(), "end": b_end_wall.to_string()}],
               "phases_unix": [["A", unix(a_start_wall), unix(b_start_wall)],
                               ["B", unix(b_start_wall), unix(b_end_wall)]]})
}
