//! What the programs keep in maps between events (per thread, per CPU, per stack), and how
//! many entries each map holds. The names of the maps are in [`crate::maps`].

use crate::records::{Header, OffCpuRecord, kind};

/// Default number of stack traces the kernel keeps. A stack map entry is 1016 bytes (127
/// frames); 32768 entries is 32 MiB of locked kernel memory, enough for tens of thousands of
/// distinct stacks before collisions show up as `[stack lost]` frames.
pub const DEFAULT_STACK_MAP_ENTRIES: u32 = 32768;
/// Frames of a user stack, as many as a stack map entry holds.
pub const USER_STACK_FRAMES: usize = 127;
/// A stack id with this bit set is the key of a [`UserStack`] in `USER_STACKS` (a walk of the
/// user frame pointers by bar's programs); without it, an id in `STACKS` (`bpf_get_stackid`).
/// Stack map ids are below the map's size, far below this bit.
pub const USER_STACK_KEY: u32 = 1 << 30;

/// A user stack as bar's programs walk it: the instruction pointer at entry to the kernel,
/// then the return addresses of the frames, innermost first (as in a stack map entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStack {
    /// Frames in `ips`.
    pub nr: u32,
    /// How the walk went: frames per unwinding method and why it ended
    /// ([`crate::unwind::facts`]).
    pub unwind: u32,
    /// 64-bit hash of the frames: the map key is 30 bits of it, so two stacks under one key
    /// are told apart by this without comparing frames.
    pub hash: u64,
    pub ips: [u64; USER_STACK_FRAMES],
}

/// Threads that can be off-CPU at once in the off-CPU start map (LRU: the oldest is evicted).
pub const OFFCPU_MAP_ENTRIES: u32 = 65536;
/// TCP connects that can be in flight at once.
pub const TCP_MAP_ENTRIES: u32 = 16384;
/// Threads that can be inside connect(), a page fault or a page migration at once, in the
/// per-thread maps of the kprobe and fentry attach points (LRU: a thread that never came back
/// is evicted first).
pub const THREAD_MAP_ENTRIES: u32 = 16384;

/// Distinct (stack, thread, detail) keys `SUMS` holds over two windows; a record that finds
/// the map full is counted as dropped for its kind.
pub const SUM_MAP_ENTRIES: u32 = 16384;

/// What records of a window with the same thread, stacks and details have in common: summed
/// in the kernel (`--aggregate`), they become one entry of `SUMS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SumKey {
    /// One of [`crate::kind`].
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub user_stack: i32,
    pub kernel_stack: i32,
    /// [`crate::fault_flag`] bits of a fault; [`crate::offcpu_reason`] of an off-CPU interval.
    pub detail: u32,
    /// The task state at switch-out of an off-CPU interval; 0 for faults.
    pub state: u32,
    /// The window parity (`SUM_EPOCH & 1`) the record was added in.
    pub epoch: u32,
}

/// The records summed under a [`SumKey`], on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SumValue {
    pub count: u64,
    /// Off-CPU: nanoseconds blocked, summed; 0 for faults.
    pub total: u64,
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// `bpf_perf_event_output` failed (buffer full) for a record of kind `k`: index `DROPPED + k`.
    pub const DROPPED: u32 = 0;
    /// The off-CPU start map refused an insert.
    pub const OFFCPU_MAP_FULL: u32 = super::kind::COUNT;
    /// The TCP start map refused an insert.
    pub const TCP_MAP_FULL: u32 = super::kind::COUNT + 1;
    /// Off-CPU intervals whose end no program saw (the kernel ran no program for the thread's
    /// return), ended where the thread's own run time since says it came back.
    pub const OFFCPU_RETURN_UNSEEN: u32 = super::kind::COUNT + 2;
    /// Number of counters.
    pub const COUNT: u32 = super::kind::COUNT + 3;
}

/// A thread's last switch-out, kept per thread in the kernel until its interval is reported
/// (`ts_ns` 0 then).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuStart {
    pub ts_ns: u64,
    pub pid: u32,
    pub reason: u32,
    pub state: u32,
    pub user_stack: i32,
    pub kernel_stack: i32,
    pub _pad: u32,
}

impl OffCpuStart {
    /// How long thread `tid` was off CPU since this switch-out, if `back` (its CPU's last
    /// switch-in) is its return from it: not yet reported, the same thread, and later.
    pub const fn ended_by(&self, tid: u32, back: &SwitchIn) -> Option<u64> {
        if self.ts_ns != 0 && back.tid == tid && back.ts_ns > self.ts_ns {
            Some(back.ts_ns - self.ts_ns)
        } else {
            None
        }
    }

    /// The record of this interval of thread `tid`, back on CPU at `ts_ns`.
    pub const fn record(&self, tid: u32, ts_ns: u64) -> OffCpuRecord {
        OffCpuRecord {
            header: Header {
                ts_ns,
                kind: kind::OFFCPU,
                pid: self.pid,
                tid,
                user_stack: self.user_stack,
                kernel_stack: self.kernel_stack,
                _pad: 0,
            },
            blocked_ns: ts_ns.saturating_sub(self.ts_ns),
            reason: self.reason,
            state: self.state,
        }
    }
}

/// The thread a CPU switched in last, and when (per CPU, in the kernel). A thread runs on the
/// CPU it was switched in on until it is switched out there, so at its switch-out, or when the
/// recording ends while it runs, this says when its off-CPU interval ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchIn {
    pub ts_ns: u64,
    pub tid: u32,
    pub _pad: u32,
}

/// A connect attempt in flight, keyed by socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStart {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub user_stack: i32,
    pub kernel_stack: i32,
}

/// The nodes of a page migration a thread has entered, kept until `mm_migrate_pages` reports
/// the batch (kprobe/fentry on `migrate_pages`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumaPending {
    /// `enum migrate_reason` of the batch, so a nested migration of another reason (direct
    /// compaction while allocating the destination pages) does not take these nodes.
    pub reason: u32,
    pub src_nid: i32,
    pub dst_nid: i32,
    pub _pad: u32,
}

/// Arguments of a `handle_mm_fault` call, kept from its kprobe to its kretprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultArgs {
    pub address: u64,
    pub ip: u64,
    /// `enum fault_flag` bits.
    pub flags: u32,
    pub _pad: u32,
}
