//! Off-CPU workloads: sleeps in a named function, and two threads waking each other over pipes
//! (a context-switch storm).

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{WorkloadArgs, counted, cpu::burn_until, paced, set_affinity};

/// Sleeps through a helper: with frame pointers, the function that calls into libc's frameless
/// syscall wrapper is the one frame a stack walk cannot see, so the named function stays one
/// call above it.
#[inline(never)]
pub fn sleep_in_named_function(d: Duration) {
    nap(d);
    black_box(());
}

#[inline(never)]
fn nap(d: Duration) {
    std::thread::sleep(d);
}

/// The first CPUs the calling thread may run on, at most `n`.
fn allowed_cpus(n: usize) -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity of the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .take(n)
            .collect()
    }
}

#[inline(never)]
fn ping_pong_round_trips(count: u64, rate: Option<f64>) -> u64 {
    // Left to itself the scheduler sometimes keeps both threads on one CPU, where a round trip
    // takes a third of the time it takes across two, and a run's time depends on where they
    // happened to be: each gets a CPU of its own, and every wakeup crosses CPUs.
    let (mine, peers) = match allowed_cpus(2)[..] {
        [a, b] => (Some(a), Some(b)),
        _ => (None, None),
    };
    if let Some(cpu) = mine {
        set_affinity(&[cpu]);
    }
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    // SAFETY: valid out arrays.
    unsafe {
        libc::pipe(a.as_mut_ptr());
        libc::pipe(b.as_mut_ptr());
    }
    let (a_read, a_write, b_read, b_write) = (a[0], a[1], b[0], b[1]);
    let peer = std::thread::spawn(move || {
        if let Some(cpu) = peers {
            set_affinity(&[cpu]);
        }
        let mut byte = [0u8; 1];
        for _ in 0..count {
            // SAFETY: valid fds and buffer.
            unsafe {
                libc::read(a_read, byte.as_mut_ptr().cast(), 1);
                libc::write(b_write, byte.as_ptr().cast(), 1);
            }
        }
    });
    let mut byte = [7u8; 1];
    paced(count, rate, |n| {
        for _ in 0..n {
            // SAFETY: valid fds and buffer.
            unsafe {
                libc::write(a_write, byte.as_ptr().cast(), 1);
                libc::read(b_read, byte.as_mut_ptr().cast(), 1);
            }
        }
    });
    let _ = peer.join();
    count
}

/// `--count` sleeps of `--micros`, measured; then the hot loop for `--seconds`, if given.
pub(super) fn sleep(args: &WorkloadArgs) -> Value {
    // Each sleep lasts at least what was asked, plus however late the timer and the
    // wakeup were: the measured time is the truth an off-CPU profile should match.
    let d = Duration::from_micros(args.micros);
    let mut measured: Vec<u64> = (0..args.count)
        .map(|_| {
            let t = Instant::now();
            sleep_in_named_function(d);
            t.elapsed().as_micros() as u64
        })
        .collect();
    measured.sort_unstable();
    if let Some(s) = args.seconds {
        black_box(burn_until(Instant::now() + Duration::from_secs_f64(s)));
    }
    json!({"workload": "sleep", "sleeps": args.count, "micros_each": args.micros,
               "total_us": args.count * args.micros,
               "measured_us": measured.iter().sum::<u64>(),
               "measured_median_us": measured.get(measured.len() / 2).copied().unwrap_or(0)})
}

pub(super) fn pingpong(args: &WorkloadArgs) -> Value {
    let n = ping_pong_round_trips(counted(args), args.rate);
    json!({"workload": "pingpong", "round_trips": n})
}
