//! The NUMA workload: real cross-node activity, in functions named after it, with the truth
//! (where the pages are, where the thread runs) read back from the kernel.
//!
//! 1. Pages are placed on the first node (`mbind(MPOL_BIND)` while they are first touched,
//!    then the policy is reset to the default, which leaves them there) and used by the thread
//!    pinned to a CPU of the second node. NUMA balancing finds them misplaced and migrates
//!    them to the second node (`migrate_misplaced_*`, reason NUMA_MISPLACED).
//! 2. The thread is put back on the first node and allowed everywhere, and keeps using the
//!    pages, now on the second node: NUMA balancing moves the task to them, or swaps it with a
//!    thread there (`sched_move_numa`, `sched_swap_numa`).
//! 3. Fresh pages on the first node are moved to the second by migrate_pages(2), then others by
//!    move_pages(2) (reason SYSCALL for both).
//!
//! Parts 1 and 2 need `kernel.numa_balancing` on; the caller turns it on (it is a machine-wide
//! setting), the workload reports what it found.
//!
//! The migrate workload is here too: it needs no second node, only the kernel's paths of page
//! migration (migrate_pages(2) and compaction) run from its own thread.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{PAGE, Region, set_affinity};

const MPOL_DEFAULT: i64 = 0;
const MPOL_BIND: i64 = 2;
const MPOL_MF_MOVE: i32 = 1 << 1;
/// Bits in the node masks passed to the kernel.
const MASK_BITS: u64 = 64;
/// Rounds of part 2: the load balancer may take the thread to its memory first (an ordinary
/// migration, not a NUMA placement); the other rounds give NUMA balancing its chances.
const CHASE_ROUNDS: usize = 3;

impl Region {
    /// mbind(2) on the whole region.
    fn mbind(&self, mode: i64, nodes: u64, flags: i32) -> anyhow::Result<()> {
        let (mask, maxnode) = if mode == MPOL_DEFAULT {
            (std::ptr::null(), 0)
        } else {
            (&raw const nodes, MASK_BITS + 1)
        };
        // SAFETY: the region is mapped; the mask outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                self.ptr,
                self.pages * PAGE,
                mode,
                mask,
                maxnode,
                flags,
            )
        };
        if rc != 0 {
            bail!("mbind: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Pages on `node`, allocated there by touching them under a policy bound to it. With
    /// `movable`, the policy is then reset to the default (the pages stay), so that NUMA
    /// balancing may move them; otherwise it stays, and NUMA balancing leaves the region alone
    /// (it neither scans nor moves memory whose policy is a plain bind), so that only the
    /// syscalls move those pages and where they are can be read back at any time.
    fn on_node(pages: usize, node: u32, movable: bool) -> anyhow::Result<Self> {
        let r = Self::new(pages)?;
        r.mbind(MPOL_BIND, 1 << node, 0)?;
        r.write_all(1);
        if movable {
            r.mbind(MPOL_DEFAULT, 0, 0)?;
        }
        Ok(r)
    }

    fn page(&self, i: usize) -> *mut u8 {
        // SAFETY: callers pass i < pages.
        unsafe { self.ptr.add(i * PAGE) }
    }

    fn write_all(&self, v: u8) {
        for i in 0..self.pages {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile(self.page(i), v) };
        }
    }

    /// move_pages(2) on every page of the region: to `node`, or with None only to ask where
    /// each page is. Returns the per-page status (a node, or a negative errno).
    fn move_pages(&self, node: Option<u32>) -> anyhow::Result<Vec<i32>> {
        let addrs: Vec<*mut u8> = (0..self.pages).map(|i| self.page(i)).collect();
        let nodes: Vec<i32> = node.map_or_else(Vec::new, |n| vec![n as i32; self.pages]);
        let mut status = vec![0i32; self.pages];
        let nodes_ptr = if node.is_some() {
            nodes.as_ptr()
        } else {
            std::ptr::null()
        };
        let flags = if node.is_some() { MPOL_MF_MOVE } else { 0 };
        // SAFETY: arrays of `pages` elements; pid 0 is this process.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_pages,
                0,
                self.pages,
                addrs.as_ptr(),
                nodes_ptr,
                status.as_mut_ptr(),
                flags,
            )
        };
        if rc < 0 {
            bail!("move_pages: {}", std::io::Error::last_os_error());
        }
        Ok(status)
    }

    fn count_on(&self, node: u32) -> anyhow::Result<usize> {
        Ok(self
            .move_pages(None)?
            .iter()
            .filter(|&&s| s == node as i32)
            .count())
    }
}

/// CPUs of a node, from `/sys/devices/system/node/nodeN/cpulist` (`0-3,8`).
fn node_cpus(node: u32) -> Vec<usize> {
    let text = std::fs::read_to_string(format!("/sys/devices/system/node/node{node}/cpulist"))
        .unwrap_or_default();
    text.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .flat_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let a: usize = a.parse().unwrap_or(usize::MAX);
            let b: usize = b.parse().unwrap_or(0);
            a..=b
        })
        .collect()
}

#[inline(always)]
fn current_cpu() -> usize {
    // Without a call: glibc's sched_getcpu reads the thread's rseq area without a frame of its
    // own, so a NUMA hinting fault taken there (on the TLS page) showed in its caller's caller,
    // not in the loop that chases the memory. Linux keeps the CPU number in the low 12 bits
    // of TSC_AUX, which rdtscp reads.
    #[cfg(target_arch = "x86_64")]
    {
        let mut aux = 0u32;
        // SAFETY: rdtscp has no preconditions on x86-64 CPUs Linux runs on.
        unsafe { core::arch::x86_64::__rdtscp(&mut aux) };
        (aux & 0xfff) as usize
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: no preconditions.
        unsafe { libc::sched_getcpu() }.max(0) as usize
    }
}

/// Uses the pages (pinned to a CPU of `away`) until NUMA balancing has moved nearly all of
/// them to `away` (a few may stay for a long while: the scanner does not revisit every page
/// each pass), or `until`. Returns how many of them are there.
#[inline(never)]
fn touch_remote_node_memory(r: &Region, away: u32, until: Instant) -> anyhow::Result<usize> {
    let mut on_away = r.count_on(away)?;
    let mut pass = 0u8;
    while on_away * 100 < r.pages * 98 && Instant::now() < until {
        pass = pass.wrapping_add(1);
        r.write_all(pass);
        on_away = r.count_on(away)?;
    }
    Ok(on_away)
}

/// Keeps using the pages (on the node of `memory_cpus`) from `start_cpu`, free to run
/// anywhere, until the scheduler has moved this thread to the pages' node, or `until`; up to
/// [`CHASE_ROUNDS`] times. Each round starts after a pause, so that whatever else runs (a
/// tracer) has settled: NUMA balancing only moves a thread to a CPU with room for it. Returns
/// the rounds that ended on the pages' node.
#[inline(never)]
fn chase_memory_from_other_node(
    r: &Region,
    start_cpu: usize,
    memory_cpus: &[usize],
    until: Instant,
) -> usize {
    let all: Vec<usize> = std::iter::once(start_cpu)
        .chain(memory_cpus.iter().copied())
        .collect();
    let mut arrived = 0;
    let mut pass = 0u8;
    for _ in 0..CHASE_ROUNDS {
        set_affinity(&[start_cpu]);
        std::thread::sleep(Duration::from_millis(500));
        set_affinity(&all);
        while Instant::now() < until && !memory_cpus.contains(&current_cpu()) {
            pass = pass.wrapping_add(1);
            r.write_all(pass);
        }
        if !memory_cpus.contains(&current_cpu()) {
            break;
        }
        arrived += 1;
    }
    arrived
}

/// migrate_pages(2) of this whole process from node `from` to node `to`; returns the pages
/// the kernel could not move, and the pages of `r` that ended up on `to`.
#[inline(never)]
fn migrate_pages_between_nodes(r: &Region, from: u32, to: u32) -> anyhow::Result<(u64, usize)> {
    // The syscall is one call further down: a stack walk by frame pointers cannot see the
    // caller of libc's frameless syscall().
    let left = black_box(migrate_process_pages(1 << from, 1 << to))?;
    Ok((left, r.count_on(to)?))
}

#[inline(never)]
fn migrate_process_pages(old: u64, new: u64) -> anyhow::Result<u64> {
    // SAFETY: masks of MASK_BITS bits that outlive the call; pid 0 is this process.
    let rc = unsafe { libc::syscall(libc::SYS_migrate_pages, 0, MASK_BITS + 1, &old, &new) };
    if rc < 0 {
        bail!("migrate_pages: {}", std::io::Error::last_os_error());
    }
    Ok(rc as u64)
}

/// move_pages(2) of every page of `r` to `to`; returns how many the kernel put there.
#[inline(never)]
fn move_pages_to_node(r: &Region, to: u32) -> anyhow::Result<usize> {
    let status = r.move_pages(Some(to))?;
    Ok(status.iter().filter(|&&s| s == to as i32).count())
}

pub fn run(pages: usize, per_part: Duration) -> anyhow::Result<Value> {
    let nodes = crate::system::numa_nodes();
    let (home, away) = match nodes[..] {
        [a, b, ..] => (a, b),
        _ => bail!(
            "the numa workload needs two NUMA nodes; this machine has {} (node {})",
            nodes.len(),
            nodes[0]
        ),
    };
    let (home_cpus, away_cpus) = (node_cpus(home), node_cpus(away));
    if home_cpus.is_empty() || away_cpus.is_empty() {
        bail!("the numa workload needs CPUs on nodes {home} and {away}");
    }
    let balancing = crate::system::numa_balancing().unwrap_or(0);

    let mut out = json!({"workload": "numa", "home": home, "away": away, "pages": pages,
                         "numa_balancing": balancing});
    if balancing != 0 {
        // Part 1: placed on `home`, used from `away`.
        set_affinity(&home_cpus);
        let r = Region::on_node(pages, home, true).context("placing pages")?;
        let placed = r.count_on(home)?;
        set_affinity(&away_cpus[..1]);
        let misplaced = touch_remote_node_memory(&r, away, Instant::now() + per_part)?;
        // Part 2: the thread on `home`, free to go where its memory is.
        let arrived =
            chase_memory_from_other_node(&r, home_cpus[0], &away_cpus, Instant::now() + per_part);
        out["placed_on_home"] = json!(placed);
        out["misplaced_moved_to_away"] = json!(misplaced);
        out["chase_rounds_arrived"] = json!(arrived);
    }
    // Part 3: the syscalls, from `home`.
    set_affinity(&home_cpus);
    let b = Region::on_node(pages, home, false).context("placing pages")?;
    let (left, moved) = migrate_pages_between_nodes(&b, home, away)?;
    out["migrate_pages_moved"] = json!(moved);
    out["migrate_pages_not_moved"] = json!(left);
    let c = Region::on_node(pages, home, false).context("placing pages")?;
    out["move_pages_moved"] = json!(move_pages_to_node(&c, away)?);
    Ok(out)
}

#[inline(never)]
pub(super) fn migrate_own_pages(pages: usize) -> (usize, bool, u64) {
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
