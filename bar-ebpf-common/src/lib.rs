//! The contract between bar's kernel programs and its collector.
//!
//! Everything that crosses the user/kernel boundary is defined here once: the records the
//! programs write into the per-CPU perf buffers, the configuration the loader writes into the
//! programs' read-only data before loading, and the names of maps and programs. Records are
//! `#[repr(C)]`, plain old data, with explicit padding so both sides agree byte for byte.
#![no_std]

pub mod unwind;

/// Names of maps, as both sides spell them.
pub mod maps {
    /// Per-CPU perf event array every record goes through.
    pub const EVENTS: &str = "EVENTS";
    /// Stack traces referenced by id from records.
    pub const STACKS: &str = "STACKS";
    /// User stacks the programs walk themselves, keyed by [`crate::USER_STACK_KEY`] ids.
    pub const USER_STACKS: &str = "USER_STACKS";
    /// Per-CPU counters, indexed by [`crate::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Off-CPU: the switch-out state of target threads, keyed by thread id.
    pub const OFFCPU_START: &str = "OFFCPU_START";
    /// TCP: connect attempts in flight, keyed by socket address.
    pub const TCP_START: &str = "TCP_START";
    /// TCP: connects entered but not yet in SYN_SENT, keyed by thread id (kprobe/fentry).
    pub const TCP_CONNECTING: &str = "TCP_CONNECTING";
    /// Faults: arguments of `handle_mm_fault` between kprobe and kretprobe, by thread id.
    pub const FAULT_ARGS: &str = "FAULT_ARGS";
    /// NUMA: nodes of the page migration a thread is in, by thread id.
    pub const NUMA_PENDING: &str = "NUMA_PENDING";
    /// Records summed in the kernel instead of sent one by one, by [`crate::SumKey`].
    pub const SUMS: &str = "SUMS";
    /// Which half of `SUMS` programs add to now (its lowest bit), flipped by the collector.
    pub const SUM_EPOCH: &str = "SUM_EPOCH";
    /// Off-CPU: per CPU, the thread switched in last and when ([`crate::SwitchIn`]).
    pub const SWITCHED_IN: &str = "SWITCHED_IN";
    /// Per CPU: page-fault records waiting to be sent together ([`crate::Batch`]).
    pub const FAULT_BATCH: &str = "FAULT_BATCH";
    /// Per CPU: off-CPU records waiting to be sent together ([`crate::Batch`]).
    pub const OFFCPU_BATCH: &str = "OFFCPU_BATCH";
}

/// Name of the read-only global holding [`Config`].
pub const CONFIG_GLOBAL: &str = "BAR_CONFIG";

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
    /// ([`unwind::facts`]).
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
    /// One of [`kind`].
    pub kind: u32,
    pub pid: u32,
    pub tid: u32,
    pub user_stack: i32,
    pub kernel_stack: i32,
    /// [`fault_flag`] bits of a fault; [`offcpu_reason`] of an off-CPU interval.
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

/// Record kinds, the first field of every record after the timestamp.
pub mod kind {
    /// On-CPU sample from the cpu-clock perf event: [`crate::Header`] only.
    pub const CPU: u32 = 1;
    /// Page fault: [`crate::FaultRecord`].
    pub const FAULT: u32 = 2;
    /// A target thread ran again after being off CPU: [`crate::OffCpuRecord`].
    pub const OFFCPU: u32 = 3;
    /// A TCP connect attempt finished: [`crate::TcpRecord`].
    pub const TCP: u32 = 4;
    /// A task moved or swapped between NUMA nodes: [`crate::NumaTaskRecord`].
    pub const NUMA_TASK: u32 = 5;
    /// A batch of page migrations finished: [`crate::NumaPagesRecord`].
    pub const NUMA_PAGES: u32 = 6;
    /// A traced process called exec: [`crate::ProcessRecord`]. Its memory map and name change,
    /// so the collector starts a new generation of its symbols.
    pub const EXEC: u32 = 7;
    /// A traced process started a new process (not a thread): [`crate::ProcessRecord`] of the
    /// child, which runs its parent's program under its parent's name until it execs.
    pub const FORK: u32 = 8;
    /// A traced process ended (its main thread exited): [`crate::ProcessRecord`].
    pub const EXIT: u32 = 9;
    /// A stack walk of a traced process met code outside the mappings the collector loaded
    /// (dlopen, JIT code): [`crate::Header`] only, at most a few per second per process, so
    /// that the collector reads its memory map again.
    pub const UNWIND_MISS: u32 = 10;
    /// A stack walk of a traced process could not read a word of its stack:
    /// [`crate::StackPageRecord`], at most one per process every few milliseconds, so that
    /// the collector faults the page back in. NUMA balancing takes pages away from the
    /// process's page tables until it touches them again (to learn where it runs), and the
    /// programs cannot take a page fault: the outer frames of a stack, on pages the process
    /// seldom touches, would stay unreadable for seconds.
    pub const STACK_PAGE: u32 = 11;
    /// One past the largest kind; sizes arrays indexed by kind.
    pub const COUNT: u32 = 12;
    /// Not a kind of event: a perf sample that is a [`crate::Batch`] of records of one kind.
    pub const BATCH: u32 = 0x100;
}

/// A family of events, as users name them in `--events`; each is one view of the outputs (a
/// folded file, a flame graph, an entry of the summary) made of one or more record kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Cpu,
    Offcpu,
    Faults,
    Tcp,
    Numa,
}

impl Family {
    pub const ALL: [Self; 5] = [Self::Cpu, Self::Offcpu, Self::Faults, Self::Tcp, Self::Numa];
    /// The families whose programs sum their records in the kernel with `--aggregate`: the
    /// ones that come in storms.
    pub const SUMMABLE: [Self; 2] = [Self::Offcpu, Self::Faults];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Offcpu => "offcpu",
            Self::Faults => "faults",
            Self::Tcp => "tcp",
            Self::Numa => "numa",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i].name().as_bytes() == s.as_bytes() {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }

    /// Record kinds of the family.
    pub const fn kinds(self) -> &'static [u32] {
        match self {
            Self::Cpu => &[kind::CPU],
            Self::Offcpu => &[kind::OFFCPU],
            Self::Faults => &[kind::FAULT],
            Self::Tcp => &[kind::TCP],
            Self::Numa => &[kind::NUMA_TASK, kind::NUMA_PAGES],
        }
    }

    /// The family a record kind belongs to.
    pub const fn of_kind(k: u32) -> Option<Self> {
        Some(match k {
            kind::CPU => Self::Cpu,
            kind::OFFCPU => Self::Offcpu,
            kind::FAULT => Self::Faults,
            kind::TCP => Self::Tcp,
            kind::NUMA_TASK | kind::NUMA_PAGES => Self::Numa,
            _ => return None,
        })
    }

    /// What one unit of the family's weight is.
    pub const fn unit(self) -> &'static str {
        match self {
            Self::Cpu => "samples",
            Self::Offcpu => "us",
            Self::Faults => "faults",
            Self::Tcp => "connects",
            Self::Numa => "pages",
        }
    }
}

impl core::fmt::Display for Family {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
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

/// Stack id of a record that has no stack to show, rather than one that failed: `-EFAULT`, what
/// `bpf_get_stackid` returns when there is no stack to walk (a kernel thread's user stack).
pub const NO_STACK: i32 = -14;

/// Common first part of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// One of [`kind`].
    pub kind: u32,
    /// Thread group id (the process id users see).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Id in the stack map of the user stack, or a negative errno when none was captured.
    pub user_stack: i32,
    /// Id in the stack map of the kernel stack, or a negative errno.
    pub kernel_stack: i32,
    pub _pad: u32,
}

/// A word of a traced process's stack a walk could not read ([`kind::STACK_PAGE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackPageRecord {
    pub header: Header,
    pub address: u64,
}

/// Length of a task's name (`comm`) in the kernel, with its NUL.
pub const COMM_LEN: usize = 16;

/// A process starting, replacing its program or ending ([`kind::FORK`], [`kind::EXEC`],
/// [`kind::EXIT`]), with the name the kernel has for it at that moment: a process too short-lived
/// for the collector to find in /proc keeps that name.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessRecord {
    /// `pid` and `tid` are the process concerned (the child of a fork); no stacks.
    pub header: Header,
    /// Fork: the parent process, whose memory map the child starts with. 0 otherwise.
    pub parent: u32,
    pub _pad: u32,
    /// `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// Flags of [`FaultRecord::flags`].
pub mod fault_flag {
    /// The fault was taken in user mode (`page_fault_user`), not kernel mode.
    pub const USER_MODE: u32 = 1;
    /// A major fault: the page had to be read in (`VM_FAULT_MAJOR`), or the fault was a retry
    /// after one that had to wait for it (`FAULT_FLAG_TRIED`), as the kernel's own `maj_flt`
    /// accounting counts them. Meaningful only with [`SEVERITY_KNOWN`].
    pub const MAJOR: u32 = 2;
    /// The attach point saw the outcome of the fault (`handle_mm_fault` returned), so
    /// [`MAJOR`] tells major from minor. The exception tracepoints run before the fault is
    /// handled and leave this clear.
    pub const SEVERITY_KNOWN: u32 = 4;
}

/// A page fault of a target thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRecord {
    pub header: Header,
    /// The faulting data address.
    pub address: u64,
    /// The instruction pointer at the fault.
    pub ip: u64,
    /// x86 page fault error code (bit 0 protection, 1 write, 2 user, 4 instruction fetch).
    pub error_code: u32,
    /// [`fault_flag`] bits.
    pub flags: u32,
}

/// Why an off-CPU thread left the CPU.
pub mod offcpu_reason {
    /// It went to sleep: I/O, a lock, a futex, a timer.
    pub const BLOCKED: u32 = 1;
    /// It was runnable but another task took the CPU.
    pub const PREEMPTED: u32 = 2;
}

/// A target thread was off CPU for `blocked_ns` and has just been switched back in. The stacks
/// in the header are those it had when it was switched out; `header.ts_ns` is the switch-in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffCpuRecord {
    pub header: Header,
    pub blocked_ns: u64,
    /// One of [`offcpu_reason`].
    pub reason: u32,
    /// Task state at switch-out as the attach point reports it.
    pub state: u32,
}

/// Records a batch holds at most.
pub const BATCH_RECORDS: usize = 8;

/// Records of one kind sent as one perf sample. The first record a program sends after a
/// while costs it about 200 ns more than the ones that follow at once (page-fault storm, 6.18:
/// 650 ns per fault sent one by one, 480 ns in batches of 8), so the hot families fill a
/// per-CPU batch and send it when it is full or its first record has waited long enough. Its
/// first two fields sit where a [`Header`]'s do, so a sample's kind is read at one place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch<T> {
    /// When the first record was added.
    pub ts_ns: u64,
    /// [`kind::BATCH`].
    pub kind: u32,
    /// Records in use, from the first.
    pub len: u32,
    pub records: [T; BATCH_RECORDS],
}

/// Bytes before the records of a [`Batch`].
pub const BATCH_HEADER: usize = 16;

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

/// A TCP connect attempt, from SYN sent to established or failed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpRecord {
    pub header: Header,
    /// Time from entering SYN_SENT to leaving it.
    pub latency_ns: u64,
    /// Source and destination address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Ports in host order.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    /// 0 when established, otherwise the socket error (`ECONNREFUSED`, `ETIMEDOUT`, ...);
    /// [`TCP_ERROR_UNKNOWN`] when the kernel did not say.
    pub error: i32,
    pub _pad2: u32,
}

/// [`TcpRecord::error`] of a failed attempt whose socket error could not be read.
pub const TCP_ERROR_UNKNOWN: i32 = -1;

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

/// What kind of NUMA task placement event a [`NumaTaskRecord`] is.
pub mod numa_task_kind {
    pub const MOVE: u32 = 1;
    pub const SWAP: u32 = 2;
    pub const STICK: u32 = 3;
}

/// A task placement decision of NUMA balancing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumaTaskRecord {
    pub header: Header,
    pub src_cpu: i32,
    pub dst_cpu: i32,
    pub src_nid: i32,
    pub dst_nid: i32,
    /// One of [`numa_task_kind`].
    pub what: u32,
    pub _pad: u32,
}

/// A `migrate_pages()` batch finished in the context of a target thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NumaPagesRecord {
    pub header: Header,
    pub succeeded: u64,
    pub failed: u64,
    pub thp_succeeded: u64,
    pub thp_failed: u64,
    /// `enum migrate_mode`.
    pub mode: u32,
    /// `enum migrate_reason`.
    pub reason: u32,
    /// Destination node when the attach point knows it, otherwise -1.
    pub dst_nid: i32,
    /// Node the (first) page of the batch was on when the attach point knows it, otherwise -1.
    pub src_nid: i32,
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

/// Byte offsets the programs cannot know at compile time: fields of classic tracepoint records
/// (read from tracefs `format` files) and of kernel structures (read from BTF). The loader fills
/// what the chosen attach points need; a field that is not known stays [`Layout::UNKNOWN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    // exceptions:page_fault_{user,kernel}
    pub fault_address: u32,
    pub fault_ip: u32,
    pub fault_error_code: u32,
    // sched:sched_switch
    pub switch_prev_state: u32,
    pub switch_next_pid: u32,
    // sock:inet_sock_set_state
    pub sock_skaddr: u32,
    pub sock_oldstate: u32,
    pub sock_newstate: u32,
    pub sock_sport: u32,
    pub sock_dport: u32,
    pub sock_family: u32,
    pub sock_protocol: u32,
    pub sock_saddr: u32,
    pub sock_daddr: u32,
    pub sock_saddr_v6: u32,
    pub sock_daddr_v6: u32,
    // sched:sched_move_numa
    pub numa_tgid: u32,
    pub numa_pid: u32,
    pub numa_src_cpu: u32,
    pub numa_src_nid: u32,
    pub numa_dst_cpu: u32,
    pub numa_dst_nid: u32,
    // sched:sched_swap_numa
    pub swap_src_pid: u32,
    pub swap_dst_pid: u32,
    pub swap_src_tgid: u32,
    pub swap_src_cpu: u32,
    pub swap_src_nid: u32,
    pub swap_dst_tgid: u32,
    pub swap_dst_cpu: u32,
    pub swap_dst_nid: u32,
    // sched:sched_stick_numa: the task's own fields (pid, tgid, cpu, nid) and where it did not
    // go; older kernels give it the move format, newer ones the swap format's src_/dst_.
    pub stick_tgid: u32,
    pub stick_pid: u32,
    pub stick_src_cpu: u32,
    pub stick_src_nid: u32,
    pub stick_dst_cpu: u32,
    pub stick_dst_nid: u32,
    // migrate:mm_migrate_pages
    pub mig_succeeded: u32,
    pub mig_failed: u32,
    pub mig_thp_succeeded: u32,
    pub mig_thp_failed: u32,
    pub mig_mode: u32,
    pub mig_reason: u32,
    // Kernel structures (BTF)
    pub task_pid: u32,
    pub task_tgid: u32,
    pub sock_sk_err: u32,
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_state: u32,
    pub pt_regs_ip: u32,
    pub pt_regs_bp: u32,
    pub pt_regs_cs: u32,
    pub task_state: u32,
    pub page_flags: u32,
    pub page_lru: u32,
    pub migration_target_nid: u32,
    /// Width of the node field at the top of `page->flags` (`NODES_SHIFT`), derived from BTF.
    pub page_nid_bits: u32,
    // Values of kernel enums the programs test (BTF), not offsets.
    pub mr_syscall: u32,
    pub mr_numa_misplaced: u32,
    pub vm_fault_major: u32,
    pub vm_fault_retry: u32,
    pub fault_flag_write: u32,
    pub fault_flag_user: u32,
    pub fault_flag_tried: u32,
    pub fault_flag_instruction: u32,
    /// `task:task_newtask`: the new task's id and its clone flags.
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    pub pt_regs_sp: u32,
    /// `task_struct.se.sum_exec_runtime` and `.prev_sum_exec_runtime` (its value when the task
    /// was last put on a CPU): how long a running task has run since it came back.
    pub task_sum_exec: u32,
    pub task_prev_sum_exec: u32,
}

impl Layout {
    /// Marks an offset the loader did not find.
    pub const UNKNOWN: u32 = u32::MAX;

    /// A layout with every offset unknown.
    pub const fn unknown() -> Self {
        let u = Self::UNKNOWN;
        Self {
            fault_address: u,
            fault_ip: u,
            fault_error_code: u,
            switch_prev_state: u,
            switch_next_pid: u,
            sock_skaddr: u,
            sock_oldstate: u,
            sock_newstate: u,
            sock_sport: u,
            sock_dport: u,
            sock_family: u,
            sock_protocol: u,
            sock_saddr: u,
            sock_daddr: u,
            sock_saddr_v6: u,
            sock_daddr_v6: u,
            numa_tgid: u,
            numa_pid: u,
            swap_src_pid: u,
            swap_dst_pid: u,
            stick_tgid: u,
            stick_pid: u,
            stick_src_cpu: u,
            stick_src_nid: u,
            stick_dst_cpu: u,
            stick_dst_nid: u,
            numa_src_cpu: u,
            numa_src_nid: u,
            numa_dst_cpu: u,
            numa_dst_nid: u,
            swap_src_tgid: u,
            swap_src_cpu: u,
            swap_src_nid: u,
            swap_dst_tgid: u,
            swap_dst_cpu: u,
            swap_dst_nid: u,
            mig_succeeded: u,
            mig_failed: u,
            mig_thp_succeeded: u,
            mig_thp_failed: u,
            mig_mode: u,
            mig_reason: u,
            task_pid: u,
            task_tgid: u,
            sock_sk_err: u,
            skc_family: u,
            skc_daddr: u,
            skc_rcv_saddr: u,
            skc_dport: u,
            skc_num: u,
            skc_v6_daddr: u,
            skc_v6_rcv_saddr: u,
            skc_state: u,
            pt_regs_ip: u,
            pt_regs_bp: u,
            pt_regs_cs: u,
            task_state: u,
            page_flags: u,
            page_lru: u,
            migration_target_nid: u,
            page_nid_bits: u,
            mr_syscall: u,
            mr_numa_misplaced: u,
            vm_fault_major: u,
            vm_fault_retry: u,
            fault_flag_write: u,
            fault_flag_user: u,
            fault_flag_tried: u,
            fault_flag_instruction: u,
            newtask_pid: u,
            newtask_clone_flags: u,
            pt_regs_sp: u,
            task_sum_exec: u,
            task_prev_sum_exec: u,
        }
    }
}

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

/// Names of the programs in the object, grouped by the attach point they are written for.
pub mod programs {
    pub const CPU_PERF_EVENT: &str = "bar_cpu";
    pub const FAULT_USER_BTF: &str = "bar_fault_user_btf";
    pub const FAULT_KERNEL_BTF: &str = "bar_fault_kernel_btf";
    pub const FAULT_USER_TP: &str = "bar_fault_user_tp";
    pub const FAULT_KERNEL_TP: &str = "bar_fault_kernel_tp";
}

// The two sides must agree byte for byte and Pod must hold: no implicit padding anywhere.
const _: () = {
    assert!(size_of::<Header>() == 32);
    assert!(size_of::<FaultRecord>() == 56);
    assert!(size_of::<OffCpuRecord>() == 48);
    assert!(size_of::<OffCpuStart>() == 32);
    assert!(size_of::<SwitchIn>() == 16);
    assert!(size_of::<TcpRecord>() == 88);
    assert!(size_of::<TcpStart>() == 24);
    assert!(size_of::<NumaTaskRecord>() == 56);
    assert!(size_of::<NumaPagesRecord>() == 80);
    assert!(size_of::<NumaPending>() == 16);
    assert!(size_of::<FaultArgs>() == 24);
    assert!(size_of::<SumKey>() == 32);
    assert!(core::mem::offset_of!(Batch<FaultRecord>, records) == BATCH_HEADER);
    assert!(core::mem::offset_of!(Batch<OffCpuRecord>, records) == BATCH_HEADER);
    assert!(size_of::<SumValue>() == 16);
    // An even number of u32 fields, so Config (8-byte aligned) has no trailing padding.
    assert!(size_of::<Layout>() == 74 * 4);
    assert!(size_of::<Config>() == 48 + 74 * 4);
    assert!(size_of::<ProcessRecord>() == 56);
    assert!(size_of::<UserStack>() == 16 + USER_STACK_FRAMES * 8);
};

#[cfg(feature = "user")]
mod user {
    use super::{
        Config, FaultArgs, FaultRecord, Header, NumaPagesRecord, NumaPending, NumaTaskRecord,
        OffCpuRecord, OffCpuStart, ProcessRecord, SumKey, SumValue, SwitchIn, TcpRecord, TcpStart,
        UserStack,
    };

    // SAFETY: all of these are #[repr(C)] structs of integers with explicit padding fields, so
    // every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Header {}
    unsafe impl aya::Pod for FaultRecord {}
    unsafe impl aya::Pod for OffCpuRecord {}
    unsafe impl aya::Pod for OffCpuStart {}
    unsafe impl aya::Pod for SwitchIn {}
    unsafe impl aya::Pod for TcpRecord {}
    unsafe impl aya::Pod for TcpStart {}
    unsafe impl aya::Pod for NumaTaskRecord {}
    unsafe impl aya::Pod for NumaPagesRecord {}
    unsafe impl aya::Pod for UserStack {}
    unsafe impl aya::Pod for ProcessRecord {}
    unsafe impl aya::Pod for NumaPending {}
    unsafe impl aya::Pod for FaultArgs {}
    unsafe impl aya::Pod for SumKey {}
    unsafe impl<T: aya::Pod> aya::Pod for super::Batch<T> {}
    unsafe impl aya::Pod for SumValue {}
}
