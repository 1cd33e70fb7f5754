//! The mix workload: a service-like CPU profile with known shares, for the CI gate's tests and
//! benchmark. The main thread handles requests in `parse_request` (40 % of its work),
//! `compute_response` (35 %) and `encode_response` (25 %); `--regress PCT` adds work in
//! `slow_new_path` until it is PCT % of the main thread's work, as a regressed build would. A
//! second thread wakes every 10 ms for a fixed amount of work in `background_housekeeping`,
//! paced by the clock and not by the requests: when the machine is busy the main thread gets
//! less done while the housekeeping does not, so its share moves from run to run with the
//! load, as a runtime's garbage collector does (the gate must not take that for a change).

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// Units of work of one request, split 40/35/25; a unit is one call of a loop of 1000
/// iterations (a few microseconds).
const REQUEST_UNITS: u64 = 100;
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(10);
/// Units of one housekeeping round: a few percent of a CPU on an idle machine.
const HOUSEKEEPING_UNITS: u64 = 350;

/// Each named function spins its own loop with its own constant: bodies that differ, so the
/// compiler cannot merge them into one symbol.
macro_rules! spin {
    ($units:expr, $k:expr) => {{
        let mut x = $k;
        for _ in 0..$units {
            for i in 0..1000u64 {
                x = black_box(x.rotate_left(7) ^ i).wrapping_mul($k | 1);
            }
        }
        x
    }};
}

#[inline(never)]
pub fn parse_request(units: u64) -> u64 {
    spin!(units, 0x51_7cc1_b727_220a_u64)
}

#[inline(never)]
pub fn compute_response(units: u64) -> u64 {
    spin!(units, 0x2545_f491_4f6c_dd1d_u64)
}

#[inline(never)]
pub fn encode_response(units: u64) -> u64 {
    spin!(units, 0x9e37_79b9_7f4a_7c15_u64)
}

#[inline(never)]
pub fn slow_new_path(units: u64) -> u64 {
    spin!(units, 0xbf58_476d_1ce4_e5b9_u64)
}

#[inline(never)]
pub fn background_housekeeping(units: u64) -> u64 {
    spin!(units, 0x94d0_49bb_1331_11eb_u64)
}

/// Units of `slow_new_path` per request so that it is `pct` % of the main thread's work.
fn regress_units(pct: f64) -> f64 {
    let pct = pct.clamp(0.0, 90.0);
    REQUEST_UNITS as f64 * pct / (100.0 - pct)
}

#[inline(never)]
fn handle_request(slow: u64) -> u64 {
    let mut x = parse_request(REQUEST_UNITS * 40 / 100);
    x ^= compute_response(REQUEST_UNITS * 35 / 100);
    x ^= encode_response(REQUEST_UNITS * 25 / 100);
    if slow > 0 {
        x ^= slow_new_path(slow);
    }
    x
}

/// Runs the mix for `seconds`; `regress` is the share of the main thread's work (in %) spent in
/// `slow_new_path`.
pub fn run(seconds: f64, regress: f64) -> Value {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let housekeeper = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || {
                let mut rounds = 0u64;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    black_box(background_housekeeping(HOUSEKEEPING_UNITS));
                    rounds += 1;
                    next += HOUSEKEEPING_EVERY;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                rounds
            })
    };
    // Fractional units carry over from request to request, so small shares come out right.
    let per_request = regress_units(regress);
    let (mut requests, mut owed, mut slow_units) = (0u64, 0.0f64, 0u64);
    while Instant::now() < end {
        owed += per_request;
        let slow = owed as u64;
        owed -= slow as f64;
        slow_units += slow;
        black_box(handle_request(slow));
        requests += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = housekeeper.ok().and_then(|h| h.join().ok()).unwrap_or(0);
    json!({"workload": "mix", "requests": requests, "regress_pct": regress,
           "slow_units": slow_units, "housekeeping_rounds": rounds})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_regression_is_its_share_of_the_main_threads_work() {
        assert_eq!(regress_units(0.0), 0.0);
        for pct in [2.0, 5.0, 10.0, 20.0] {
            let slow = regress_units(pct);
            let share = slow / (REQUEST_UNITS as f64 + slow) * 100.0;
            assert!((share - pct).abs() < 1e-9, "{pct}: {share}");
        }
    }
}
