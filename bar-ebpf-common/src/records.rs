//! The records the programs write into the per-CPU perf buffers, and the kinds and families
//! they are told apart by. Every record starts with a [`Header`] (or, for a batch, with the
//! same first two fields), so a sample's kind is read at one place.

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
