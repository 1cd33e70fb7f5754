//! How bar's own threads are scheduled while they record. A traced load of many CPU-bound
//! threads outnumbers bar's few threads, and the fair scheduler gives each thread an equal
//! share: with 1000 such threads bar's main thread ran 70 ms in 143 s (the rest waiting for a
//! CPU) and had not finished loading its programs, so `--duration` meant nothing. From the
//! start of a recording to bar's exit, its threads run at the lowest real-time priority
//! (SCHED_FIFO 1, as `perf record --realtime 1` would), above every ordinary thread; the
//! kernel still keeps 5% of each CPU for ordinary threads (`kernel.sched_rt_runtime_us`).
//! What bar starts does not inherit it (SCHED_RESET_ON_FORK).

use std::io;

/// Puts the calling thread at the lowest real-time priority, for the rest of its life (a
/// recording's end, its outputs and bar's exit are as late as the load can make them). On
/// failure (no CAP_SYS_NICE, a cgroup without real-time time) it keeps its priority and the
/// error says why.
pub fn run_ahead() -> io::Result<()> {
    set(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, 1)
}

fn set(policy: libc::c_int, priority: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` lives across the call.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
