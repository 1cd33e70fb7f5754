//! The configuration the loader writes into the programs' read-only data before loading.

use crate::layout::Layout;

/// Configuration written into the programs' read-only data before loading; the verifier sees
/// these as constants, so a disabled branch costs nothing at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Thread group to trace; 0 traces every process (except `self_tgid` and the idle task).
    pub target_tgid: u32,
    /// The collector itself, never traced.
    pub self_tgid: u32,
    /// When non-zero, only tasks in this cgroup (v2 id) are traced.
    pub cgroup_id: u64,
    /// Off-CPU intervals shorter than this are not reported.
    pub min_block_ns: u64,
    /// Non-zero: programs return right after the filter without recording anything. This is the
    /// floor against which the cost of recording is measured.
    pub null_mode: u32,
    /// Non-zero: programs walk user frame pointers themselves into `USER_STACKS` (the kernel
    /// has `bpf_task_pt_regs` and `bpf_loop`, and the layout has the `pt_regs` offsets); zero:
    /// user stacks come from `bpf_get_stackid`.
    pub user_walk: u32,
    /// Node ids below this are possible on this machine; a node read from a page that is not
    /// is reported as unknown rather than trusted.
    pub nr_node_ids: u32,
    /// Non-zero: faults and off-CPU intervals are summed in `SUMS` (`--aggregate`) instead of
    /// sent one by one; the collector drains the sums every window.
    pub sum_records: u32,
    /// Non-zero: user stacks are walked with the unwind tables the collector loads
    /// ([`unwind`]) where it has them, by frame pointer elsewhere (needs `user_walk`).
    pub unwind_tables: u32,
    pub _pad: u32,
    pub layout: Layout,
}

impl Config {
    pub const fn new() -> Self {
        Self {
            target_tgid: 0,
            self_tgid: 0,
            cgroup_id: 0,
            min_block_ns: 0,
            null_mode: 0,
            user_walk: 0,
            nr_node_ids: 0,
            sum_records: 0,
            unwind_tables: 0,
            _pad: 0,
            layout: Layout::unknown(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}
