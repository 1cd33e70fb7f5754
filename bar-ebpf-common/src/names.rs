//! The one table of the object's names: every program and every map, as the collector looks
//! them up. The kernel side cannot use these constants (a program's name is its function's,
//! a map's its static's, given by aya's macros), so a test of the collector opens the built
//! object and holds both lists to it, both ways.

/// Declares a module of name constants and `ALL`, the list of them, so that a name cannot be
/// added without the test seeing it.
macro_rules! names {
    ($(#[$doc:meta])* pub mod $module:ident {
        $($(#[$attr:meta])* $name:ident = $value:literal,)*
    }) => {
        $(#[$doc])*
        pub mod $module {
            $($(#[$attr])* pub const $name: &str = $value;)*
            /// Every name of this table.
            pub const ALL: &[&str] = &[$($name),*];
        }
    };
}

names! {
    /// Names of the programs in the object, grouped by family and then by the attach point
    /// they are written for.
    pub mod programs {
        /// On-CPU samples: a perf event on the cpu-clock software event, one per CPU.
        CPU_PERF_EVENT = "bar_cpu",

        /// Faults: `tp_btf/page_fault_user` and `tp_btf/page_fault_kernel`.
        FAULT_USER_BTF = "bar_fault_user_btf",
        FAULT_KERNEL_BTF = "bar_fault_kernel_btf",
        /// Faults: the classic `exceptions` tracepoints.
        FAULT_USER_TP = "bar_fault_user_tp",
        FAULT_KERNEL_TP = "bar_fault_kernel_tp",
        /// Faults: `fexit/handle_mm_fault`, which sees the outcome (major or minor).
        FAULT_FEXIT = "bar_fault_fexit",
        /// Faults: `handle_mm_fault` by kprobe and kretprobe.
        FAULT_KPROBE = "bar_fault_kprobe",
        FAULT_KRETPROBE = "bar_fault_kretprobe",

        /// Off-CPU: `sched_switch` as a BTF tracepoint and as a classic one.
        SWITCH_BTF = "bar_switch_btf",
        SWITCH_TP = "bar_switch_tp",
        /// Off-CPU: `finish_task_switch`, where a thread is back on its CPU.
        FINISH_SWITCH_FENTRY = "bar_finish_switch_fentry",
        FINISH_SWITCH_KPROBE = "bar_finish_switch_kprobe",
        /// Off-CPU: `sched_process_exit`, which forgets an exiting thread's switch-out.
        THREAD_EXIT_BTF = "bar_thread_exit_btf",
        THREAD_EXIT_TP = "bar_thread_exit_tp",

        /// TCP: `inet_sock_set_state` as a BTF tracepoint and as a classic one.
        SOCK_STATE_BTF = "bar_sock_state_btf",
        SOCK_STATE_TP = "bar_sock_state_tp",
        /// TCP: `tcp_v4_connect`, `tcp_v6_connect` and `tcp_set_state` by fentry.
        TCP_V4_CONNECT_FENTRY = "bar_tcp_v4_connect_fentry",
        TCP_V6_CONNECT_FENTRY = "bar_tcp_v6_connect_fentry",
        TCP_SET_STATE_FENTRY = "bar_tcp_set_state_fentry",
        /// TCP: the connects and `tcp_set_state` by kprobe.
        TCP_CONNECT_KPROBE = "bar_tcp_connect_kprobe",
        TCP_SET_STATE_KPROBE = "bar_tcp_set_state_kprobe",

        /// NUMA: the `sched` tracepoints of task placement.
        MOVE_NUMA_TP = "bar_move_numa_tp",
        SWAP_NUMA_TP = "bar_swap_numa_tp",
        STICK_NUMA_TP = "bar_stick_numa_tp",
        /// NUMA: `migrate:mm_migrate_pages`, and `migrate_pages` entered (for the nodes).
        MIGRATE_PAGES_TP = "bar_migrate_pages_tp",
        MIGRATE_PAGES_FENTRY = "bar_migrate_pages_fentry",
        MIGRATE_PAGES_KPROBE = "bar_migrate_pages_kprobe",

        /// The process tracker: `sched_process_exec`, `task_newtask`, `sched_process_exit`.
        EXEC_TP = "bar_exec_tp",
        FORK_TP = "bar_fork_tp",
        EXIT_TP = "bar_exit_tp",
    }
}

names! {
    /// Names of the maps in the object.
    pub mod maps {
        /// Per-CPU perf event array every record goes through.
        EVENTS = "EVENTS",
        /// Stack traces referenced by id from records.
        STACKS = "STACKS",
        /// User stacks the programs walk themselves, keyed by [`crate::USER_STACK_KEY`] ids.
        USER_STACKS = "USER_STACKS",
        /// Per-CPU counters, indexed by [`crate::counter`].
        COUNTERS = "COUNTERS",
        /// Off-CPU: the switch-out state of target threads, keyed by thread id.
        OFFCPU_START = "OFFCPU_START",
        /// TCP: connect attempts in flight, keyed by socket address.
        TCP_START = "TCP_START",
        /// TCP: connects entered but not yet in SYN_SENT, keyed by thread id (kprobe/fentry).
        TCP_CONNECTING = "TCP_CONNECTING",
        /// Faults: arguments of `handle_mm_fault` between kprobe and kretprobe, by thread id.
        FAULT_ARGS = "FAULT_ARGS",
        /// NUMA: nodes of the page migration a thread is in, by thread id.
        NUMA_PENDING = "NUMA_PENDING",
        /// Records summed in the kernel instead of sent one by one, by [`crate::SumKey`].
        SUMS = "SUMS",
        /// Which half of `SUMS` programs add to now (its lowest bit), flipped by the collector.
        SUM_EPOCH = "SUM_EPOCH",
        /// Off-CPU: per CPU, the thread switched in last and when ([`crate::SwitchIn`]).
        SWITCHED_IN = "SWITCHED_IN",
        /// Per CPU: page-fault records waiting to be sent together ([`crate::Batch`]).
        FAULT_BATCH = "FAULT_BATCH",
        /// Per CPU: off-CPU records waiting to be sent together ([`crate::Batch`]).
        OFFCPU_BATCH = "OFFCPU_BATCH",
        /// Every object's rows, back to back ([`crate::unwind::UnwindRow`]), written by the
        /// collector through a memory mapping of the array.
        UNWIND_ROWS = "UNWIND_ROWS",
        /// Where each object's rows are ([`crate::unwind::UnwindObject`]), by object index.
        UNWIND_OBJECTS = "UNWIND_OBJECTS",
        /// Executable mappings of traced processes: an LPM trie keyed by pid and address
        /// ([`crate::unwind::MappingKey`]) to [`crate::unwind::UnwindMapping`].
        UNWIND_MAPPINGS = "UNWIND_MAPPINGS",
        /// Processes whose mappings are loaded, by pid, to the generation of their entries.
        UNWIND_PROCESSES = "UNWIND_PROCESSES",
        /// Bumped on every change of `UNWIND_PROCESSES` (one u64).
        UNWIND_EPOCH = "UNWIND_EPOCH",
        /// When each process last asked the collector for its tables, by pid (rate limit).
        UNWIND_ASKED = "UNWIND_ASKED",
        /// The kernel side's own, which the collector never opens: when each process last
        /// asked for a page of its stack (rate limit), the walks in progress per CPU and their
        /// nesting, and the kernel stack of a user-mode fault.
        PAGE_ASKED = "PAGE_ASKED",
        USER_WALK = "USER_WALK",
        IN_STACK_WALK = "IN_STACK_WALK",
        USER_FAULT_KSTACK = "USER_FAULT_KSTACK",
    }
}

/// Name of the read-only global holding [`crate::Config`].
pub const CONFIG_GLOBAL: &str = "BAR_CONFIG";
