//! Built-in workloads: processes with known behaviour in functions with telling names, for the
//! demo, the integration tests and the benchmarks. Each prints one JSON line to stdout with
//! what it did (pages touched, sleeps, connects...), so a test can compare bar's view with the
//! truth, and `elapsed_us`, the time its work took (from the go signal of `--wait` to the end),
//! which the benchmarks compare traced and untraced. Functions are `#[inline(never)]` so they
//! keep their own frames.

mod mix;
mod numa;
mod spawn;

use std::{
    hint::black_box,
    io::{BufRead as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Burns CPU in `burn_cpu_hot_loop` and page-faults in `touch_fresh_pages` (the demo).
    Demo,
    /// Burns CPU in `burn_cpu_hot_loop`: `--count` million iterations, or for `--seconds`.
    Cpu,
    /// Touches `--count` fresh pages in `touch_fresh_pages` (at `--rate` pages per second).
    Faults,
    /// Sleeps `--count` times for `--micros` in `sleep_in_named_function`, then burns CPU in
    /// `burn_cpu_hot_loop` for `--seconds` if given.
    Sleep,
    /// Two CPU-bound threads pinned to one CPU, preempting each other.
    Preempt,
    /// `--count` connects to a loopback listener and `--refused` to a closed port.
    Tcp,
    /// Two threads ping-ponging a byte over pipes `--count` times (context-switch storm), at
    /// `--rate` round trips per second, each on a CPU of its own when it may use two.
    Pingpong,
    /// Migrates its own pages with migrate_pages(2) and asks the kernel to compact memory.
    Migrate,
    /// Phase A in `phase_a_parse`, phase B in `phase_b_render`, `--seconds` each.
    Phases,
    /// Reads `--count` pages of a file in `--dir` whose page cache was dropped, one major fault
    /// each, in `read_cold_file_pages`; then `--count` fresh pages in `touch_fresh_pages`.
    Majorfaults,
    /// Cross-node NUMA activity (needs two nodes; NUMA balancing on for the first two parts):
    /// pages placed on one node and used from the other's CPU in `touch_remote_node_memory`,
    /// the thread chasing them in `chase_memory_from_other_node`, then pages moved by
    /// migrate_pages(2) in `migrate_pages_between_nodes` and move_pages(2) in
    /// `move_pages_to_node`. `--count` pages per part, `--seconds` at most per part.
    Numa,
    /// Runs generated machine code named only in `/tmp/perf-PID.map`, as a JIT does.
    Jit,
    /// Starts `--count` processes named `bar-shortlived` one after another, each living
    /// `--micros` (burning CPU in `burn_cpu_hot_loop`); a link to bar-probe is made in `--dir`
    /// (default: a new temporary folder).
    Spawn,
    /// Requests in `parse_request`, `compute_response` and `encode_response` for `--seconds`,
    /// `--regress` % of them in `slow_new_path`, and clock-paced `background_housekeeping`.
    Mix,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    #[arg(value_enum)]
    pub workload: Workload,
    /// How many units of work (pages, sleeps, connects, round trips).
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Connects to a closed port (tcp).
    #[arg(long, default_value_t = 0)]
    pub refused: u64,
    /// Length of each sleep (sleep).
    #[arg(long, default_value_t = 1000)]
    pub micros: u64,
    /// Run for this long instead of a count (cpu, demo, preempt, phases per phase; faults and
    /// pingpong with `--rate`: the count is rate x seconds; sleep: burn CPU this long after).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Units of work per second, spread evenly (faults, pingpong); default: as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Threads sharing the work and the rate (faults): one thread faults only as fast as one
    /// CPU handles its faults. cpu with --seconds: threads burning CPU side by side, a load
    /// that outnumbers the tracer's threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub threads: u64,
    /// Wait for a line on stdin before starting, so a tracer can attach first.
    #[arg(long)]
    pub wait: bool,
    /// Folder for the workload's files (majorfaults); it needs a file system with a page cache
    /// that can be dropped (not tmpfs).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Share of the main thread's work (in %) spent in `slow_new_path` (mix).
    #[arg(long, default_value_t = 0.0)]
    pub regress: f64,
}

const PAGE: usize = 4096;

#[inline(never)]
pub fn burn_cpu_hot_loop(iterations: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..iterations {
        x = black_box(x.rotate_left(5) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    x
}

/// Burns CPU in `burn_cpu_hot_loop` until `end`.
fn burn_until(end: Instant) -> u64 {
    let mut n = 0u64;
    while Instant::now() < end {
        n = n.wrapping_add(burn_cpu_hot_loop(100_000));
    }
    n
}

/// Anonymous memory of a known size, with transparent huge pages off so that pages migrate
/// and fault one by one (a kernel with THP "always" would fault 2 MiB at once).
struct Region {
    ptr: *mut u8,
    pages: usize,
}

impl Region {
    fn new(pages: usize) -> anyhow::Result<Self> {
        // SAFETY: anonymous private mapping, unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap of {pages} pages: {}", std::io::Error::last_os_error());
        }
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(p, pages * PAGE, libc::MADV_NOHUGEPAGE) };
        Ok(Self {
            ptr: p.cast(),
            pages,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new().
        unsafe { libc::munmap(self.ptr.cast(), self.pages * PAGE) };
    }
}

/// Maps `pages` fresh anonymous pages, writes one byte in each (one page fault per page) and
/// unmaps them. Returns the pages touched.
#[inline(never)]
pub fn touch_fresh_pages(pages: usize) -> usize {
    let Ok(r) = Region::new(pages) else {
        return 0;
    };
    for i in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(r.ptr.add(i * PAGE), 1) };
    }
    pages
}

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

/// Faults this thread has taken so far: (major, minor), as the kernel counts them.
fn thread_faults() -> (u64, u64) {
    // SAFETY: rusage is plain data, getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    (ru.ru_majflt as u64, ru.ru_minflt as u64)
}

/// Writes `pages` pages to a new file in `dir`, drops them from the page cache, and reads one
/// byte of each through a mapping with readahead off: one major fault per page. Returns the
/// major faults the kernel counted for this thread while reading.
#[inline(never)]
pub fn read_cold_file_pages(dir: &Path, pages: usize) -> anyhow::Result<u64> {
    let path = dir.join(format!("bar-cold-pages-{}", std::process::id()));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let result = (|| {
        std::io::Write::write_all(&mut &file, &vec![0x5a; pages * PAGE])?;
        file.sync_all()?;
        let fd = file.as_raw_fd();
        // SAFETY: advice on our own file descriptor.
        let rc = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // SAFETY: a shared read-only mapping of the file just written, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Random access: no readahead, so each page is read in by its own fault.
        // SAFETY: advice on the mapping made above.
        unsafe { libc::madvise(p, pages * PAGE, libc::MADV_RANDOM) };
        let (before, _) = thread_faults();
        let base = p.cast::<u8>();
        let mut sum = 0u64;
        for i in 0..pages {
            // SAFETY: inside the mapping.
            sum += u64::from(unsafe { std::ptr::read_volatile(base.add(i * PAGE)) });
        }
        let (after, _) = thread_faults();
        black_box(sum);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, pages * PAGE) };
        Ok(after - before)
    })();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("reading back {}", path.display()))
}

#[inline(never)]
pub fn connect_to_listener(addr: std::net::SocketAddr) -> Option<TcpStream> {
    black_box(connect(addr))
}

#[inline(never)]
pub fn connect_to_closed_port(addr: std::net::SocketAddr) -> bool {
    black_box(connect(addr)).is_none()
}

#[inline(never)]
fn connect(addr: std::net::SocketAddr) -> Option<TcpStream> {
    TcpStream::connect(addr).ok()
}

/// Closes with a reset rather than a FIN, so the connection leaves no TIME_WAIT socket behind:
/// tens of thousands of them from earlier runs would slow later connects and, past
/// `tcp_max_tw_buckets`, change how the kernel closes.
fn close_with_reset(stream: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and option value for the duration of the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
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

/// Spreads `total` units of work over time at `rate` per second (as fast as possible without a
/// rate): calls `work(n)` with the units due since the last call, in slices of about a
/// millisecond, and sleeps when ahead.
fn paced(total: u64, rate: Option<f64>, mut work: impl FnMut(u64)) {
    let Some(rate) = rate.filter(|r| *r > 0.0) else {
        work(total);
        return;
    };
    let start = Instant::now();
    let slice = ((rate / 1000.0) as u64).max(1);
    let mut done = 0;
    while done < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64).min(total);
        if due > done {
            // Behind: catch up a slice at a time, so the clock is read often.
            let n = (due - done).min(slice);
            work(n);
            done += n;
        } else {
            let next = Duration::from_secs_f64((done + slice.min(total - done)) as f64 / rate);
            std::thread::sleep(next.saturating_sub(start.elapsed()));
        }
    }
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

/// Lets the calling thread run only on `cpus`.
fn set_affinity(cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

#[inline(never)]
fn migrate_own_pages(pages: usize) -> (usize, bool, u64) {
    // Touch pages so there is something to migrate, then ask the kernel to move them from
    // every node to every node (on one node it migrates nothing but exercises the path), and
    // compact memory, which migrates movable pages in this thread's context.
    let mut v = vec![0u8; pages * PAGE];
    for i in (0..v.len()).step_by(PAGE) {
        v[i] = 1;
    }
    let nodes = crate::system::numa_nodes();
    let mask: u64 = nodes.iter().fold(0, |m, n| m | (1 << n));
    if nodes.len() > 1 {
        let from = 1u64 << nodes[0];
        let to = mask & !from;
        // SAFETY: valid masks of 64 nodes.
        unsafe { libc::syscall(libc::SYS_migrate_pages, 0, 64, &from, &to) };
    }
    // A compaction right after another can find nothing to move where memory sits idle (a
    // fresh machine that the previous test compacted a minute ago): the pages the kernel
    // says it migrated meanwhile (all of the machine's, on a quiet one this compaction's)
    // tell the test what to expect.
    let before = pages_migrated();
    let compacted = std::fs::write("/proc/sys/vm/compact_memory", b"1").is_ok();
    black_box(&v);
    (pages, compacted, pages_migrated().saturating_sub(before))
}

/// Pages the kernel has migrated since boot, for every reason (/proc/vmstat).
fn pages_migrated() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("pgmigrate_success ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Maps an executable page, writes a counting loop into it, names it `bar_jit_hot_loop` in the
/// perf map (as JIT runtimes do), and calls it until `until`. x86-64 only.
#[cfg(target_arch = "x86_64")]
fn run_jitted_code(until: Instant) -> anyhow::Result<u64> {
    // mov rcx, 1_000_000; 1: dec rcx; jnz 1b; ret
    let mut code = vec![0x48, 0xB9];
    code.extend(1_000_000u64.to_le_bytes());
    code.extend([0x48, 0xFF, 0xC9, 0x75, 0xFB, 0xC3]);
    // SAFETY: a fresh anonymous mapping, written before it is made executable.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    anyhow::ensure!(page != libc::MAP_FAILED, "mmap failed");
    // SAFETY: the page is PAGE bytes, the code is shorter.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), page.cast::<u8>(), code.len());
        anyhow::ensure!(
            libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_EXEC) == 0,
            "mprotect failed"
        );
    }
    let map = format!("/tmp/perf-{}.map", std::process::id());
    // /tmp is everyone's: whatever has the name goes (the link itself, not what it points
    // to), and the map is created new, never written through a link another user planted.
    let _ = std::fs::remove_file(&map);
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&map)?,
        format!("{:x} {:x} bar_jit_hot_loop\n", page as usize, code.len()).as_bytes(),
    )?;
    // SAFETY: the page holds a complete function with the C ABI and no arguments.
    let f: extern "C" fn() = unsafe { std::mem::transmute(page) };
    let mut calls = 0;
    while Instant::now() < until {
        f();
        calls += 1;
    }
    let _ = std::fs::remove_file(map);
    Ok(calls)
}

fn wait_for_go() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

/// CPU time the whole process has used so far (user and system), in microseconds.
fn process_cpu_us() -> u64 {
    // SAFETY: rusage is plain data, getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// Prints the workload's JSON line, with the time its work took, on the wall clock and on
/// CPU (what a busy machine gave it: tests hold on-CPU samples to the latter).
fn report(mut v: serde_json::Value, start: Instant) {
    v["elapsed_us"] = json!(start.elapsed().as_micros() as u64);
    v["cpu_us"] = json!(process_cpu_us());
    v["pid"] = json!(std::process::id());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Units of work: `--count`, or rate x seconds when both `--rate` and `--seconds` are given.
fn counted(args: &WorkloadArgs) -> u64 {
    match (args.rate, args.seconds) {
        (Some(rate), Some(secs)) => (rate * secs) as u64,
        _ => args.count,
    }
}

pub fn run(args: &WorkloadArgs) -> anyhow::Result<()> {
    if args.wait {
        wait_for_go();
    }
    let start = Instant::now();
    let until = |default: f64| start + Duration::from_secs_f64(args.seconds.unwrap_or(default));
    match args.workload {
        Workload::Demo => {
            let end = until(3600.0);
            let (mut spins, mut pages) = (0u64, 0usize);
            while Instant::now() < end {
                spins += black_box(burn_cpu_hot_loop(2_000_000)) & 1;
                pages += touch_fresh_pages(256);
            }
            report(
                json!({"workload": "demo", "spins": spins, "pages": pages}),
                start,
            );
        }
        Workload::Cpu => {
            let n = if args.seconds.is_some() {
                let end = until(0.0);
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
            report(json!({"workload": "cpu", "result": n & 1}), start);
        }
        Workload::Faults => {
            let (total, threads) = (counted(args), args.threads);
            let rate = args.rate.map(|r| r / threads as f64);
            let pages: usize = std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    // Thread t takes its share of the pages, the first ones the remainder.
                    .map(|t| total / threads + u64::from(t < total % threads))
                    .map(|share| {
                        s.spawn(move || {
                            let mut pages = 0;
                            paced(share, rate, |n| {
                                let mut left = n as usize;
                                while left > 0 {
                                    let chunk = left.min(1024);
                                    pages += touch_fresh_pages(chunk);
                                    left -= chunk;
                                }
                            });
                            pages
                        })
                    })
                    .collect();
                workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
            });
            report(
                json!({"workload": "faults", "pages": pages, "threads": threads}),
                start,
            );
        }
        Workload::Sleep => {
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
            report(
                json!({"workload": "sleep", "sleeps": args.count, "micros_each": args.micros,
                           "total_us": args.count * args.micros,
                           "measured_us": measured.iter().sum::<u64>(),
                           "measured_median_us": measured.get(measured.len() / 2).copied().unwrap_or(0)}),
                start,
            );
        }
        Workload::Preempt => {
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
            report(json!({"workload": "preempt"}), start);
        }
        Workload::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            // A port that was just bound and released is closed: connects get a reset.
            let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let mut ok = 0;
            for _ in 0..args.count {
                if let Some(stream) = connect_to_listener(addr) {
                    ok += 1;
                    // Accepted by this thread, one by one: a separate acceptor that falls
                    // behind (a busy machine, a tracer) lets the backlog fill, and the kernel
                    // then drops SYNs, which costs a 1 s retransmit each.
                    drop(listener.accept());
                    close_with_reset(stream);
                }
            }
            let mut refused = 0;
            for _ in 0..args.refused {
                refused += u64::from(connect_to_closed_port(closed));
            }
            report(
                json!({"workload": "tcp", "listener": addr.to_string(), "closed": closed.to_string(),
                           "established": ok, "refused": refused}),
                start,
            );
        }
        Workload::Pingpong => {
            let n = ping_pong_round_trips(counted(args), args.rate);
            report(json!({"workload": "pingpong", "round_trips": n}), start);
        }
        Workload::Migrate => {
            let (pages, compacted, moved) = migrate_own_pages(args.count as usize);
            report(
                json!({"workload": "migrate", "pages": pages, "compacted": compacted,
                       "pages_migrated_meanwhile": moved}),
                start,
            );
        }
        Workload::Majorfaults => {
            let dir = args
                .dir
                .as_deref()
                .context("the majorfaults workload needs --dir")?;
            let pages = args.count as usize;
            let major = read_cold_file_pages(dir, pages)?;
            let (_, minor_before) = thread_faults();
            let touched = touch_fresh_pages(pages);
            let (_, minor_after) = thread_faults();
            report(
                json!({"workload": "majorfaults", "cold_pages": pages, "major_faults": major,
                           "fresh_pages": touched, "minor_faults": minor_after - minor_before}),
                start,
            );
        }
        Workload::Mix => report(mix::run(args.seconds.unwrap_or(3.0), args.regress), start),
        Workload::Numa => report(numa::run(args.count as usize, until(30.0) - start)?, start),
        Workload::Spawn => {
            let life = Duration::from_micros(args.micros);
            report(spawn::run(args.count, life, args.dir.as_deref())?, start);
        }
        #[cfg(target_arch = "x86_64")]
        Workload::Jit => {
            let calls = run_jitted_code(until(2.0))?;
            report(json!({"workload": "jit", "calls": calls}), start);
        }
        #[cfg(not(target_arch = "x86_64"))]
        Workload::Jit => anyhow::bail!("the jit workload generates x86-64 code"),
        Workload::Phases => {
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
            report(
                json!({"workload": "phases",
                           "phases": [{"name": "A", "start": a_start_wall.to_string(), "end": b_start_wall.to_string()},
                                      {"name": "B", "start": b_start_wall.to_string(), "end": b_end_wall.to_string()}],
                           "phases_unix": [["A", unix(a_start_wall), unix(b_start_wall)],
                                           ["B", unix(b_start_wall), unix(b_end_wall)]]}),
                start,
            );
        }
    }
    Ok(())
}
