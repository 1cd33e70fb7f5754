//! The attach points of every family, best first: which programs each needs, on which kernel
//! hooks, and which kernel facts (BTF offsets, function prototypes) it cannot do without. The
//! loader (the parent module) tries them in this order.

use std::str::FromStr;

use bar_ebpf_common::{Family, Layout, programs};
use serde::Serialize;

/// Attach points of a family, best first.
pub const fn chain(family: Family) -> &'static [AttachPoint] {
    match family {
        Family::Cpu => CPU_CHAIN,
        Family::Offcpu => OFFCPU_CHAIN,
        Family::Faults => FAULTS_CHAIN,
        Family::Tcp => TCP_CHAIN,
        Family::Numa => NUMA_CHAIN,
    }
}

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    PerfEvent,
    Kprobe,
    Fentry,
    TpBtf,
    Tracepoint,
}

impl Method {
    pub const fn name(self) -> &'static str {
        match self {
            Self::PerfEvent => "perf_event",
            Self::Kprobe => "kprobe",
            Self::Fentry => "fentry",
            Self::TpBtf => "tp_btf",
            Self::Tracepoint => "tracepoint",
        }
    }
}

impl FromStr for Method {
    type Err = super::Error;
    fn from_str(s: &str) -> Result<Self, super::Error> {
        [
            Self::PerfEvent,
            Self::Kprobe,
            Self::Fentry,
            Self::TpBtf,
            Self::Tracepoint,
        ]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| super::Error::UnknownMethod(s.to_owned()))
    }
}

/// A kernel function an fentry/fexit or kprobe/kretprobe program attaches to.
#[derive(Debug)]
pub struct KernelFn {
    pub name: &'static str,
    /// Arguments the program reads, by position and name. They are checked against the
    /// function's BTF prototype, so a kernel where the signature changed refuses the attach
    /// point instead of handing the program the wrong argument.
    pub params: &'static [(usize, &'static str)],
}

/// One program of an attach point.
#[derive(Debug)]
pub enum Prog {
    /// A perf_event program on the software cpu-clock, one event per online CPU.
    CpuClock { prog: &'static str },
    /// A BTF-enabled raw tracepoint; `args` is the argument count the program reads.
    BtfTracepoint {
        prog: &'static str,
        tracepoint: &'static str,
        args: usize,
    },
    /// A classic tracepoint; an optional one may be missing as long as one of its siblings
    /// attaches.
    Tracepoint {
        prog: &'static str,
        category: &'static str,
        name: &'static str,
        optional: bool,
    },
    /// fentry (or fexit, on return) on a kernel function named in BTF.
    Fentry {
        prog: &'static str,
        function: KernelFn,
        exit: bool,
    },
    /// kprobe (or kretprobe, on return) on a kernel function found in kallsyms.
    Kprobe {
        prog: &'static str,
        function: KernelFn,
        ret: bool,
    },
}

impl Prog {
    /// A classic tracepoint that must attach.
    const fn tracepoint(prog: &'static str, category: &'static str, name: &'static str) -> Self {
        Self::Tracepoint {
            prog,
            category,
            name,
            optional: false,
        }
    }

    /// A classic tracepoint that may be missing as long as a sibling attaches.
    const fn optional_tracepoint(
        prog: &'static str,
        category: &'static str,
        name: &'static str,
    ) -> Self {
        Self::Tracepoint {
            prog,
            category,
            name,
            optional: true,
        }
    }
}

/// A layout offset an attach point needs, by name for messages.
type Need = (&'static str, fn(&Layout) -> u32);

/// One way of attaching a family: all its programs must load and attach.
#[derive(Debug)]
pub struct AttachPoint {
    pub method: Method,
    pub programs: &'static [Prog],
    /// Offsets from BTF the programs read.
    pub needs: &'static [Need],
}

impl AttachPoint {
    /// How `info` and `summary.json` name it, e.g. `tp_btf:sched_switch`; a return probe is
    /// `function%return`, as perf-probe writes it.
    pub fn describe(&self) -> String {
        self.describe_with(|f| f.name.to_owned())
    }

    /// As [`Self::describe`], with kprobe targets named by `symbol` (the kernel's actual
    /// symbol, which may be a compiler clone such as `finish_task_switch.isra.0`).
    pub(super) fn describe_with(&self, symbol: impl Fn(&KernelFn) -> String) -> String {
        let ret = |name: String, ret: bool| if ret { format!("{name}%return") } else { name };
        let mut names: Vec<String> = Vec::new();
        for p in self.programs {
            let name = match p {
                Prog::CpuClock { .. } => "cpu-clock".to_owned(),
                Prog::BtfTracepoint { tracepoint, .. } => (*tracepoint).to_owned(),
                Prog::Tracepoint { category, name, .. } => format!("{category}:{name}"),
                Prog::Fentry { function, exit, .. } => ret(function.name.to_owned(), *exit),
                Prog::Kprobe {
                    function, ret: r, ..
                } => ret(symbol(function), *r),
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
        format!("{}:{}", self.method.name(), names.join("+"))
    }
}

const CPU_CHAIN: &[AttachPoint] = &[AttachPoint {
    method: Method::PerfEvent,
    programs: &[Prog::CpuClock {
        prog: programs::CPU_PERF_EVENT,
    }],
    needs: &[],
}];

/// `handle_mm_fault(vma, address, flags, regs)`: what the fault programs read of it.
const HANDLE_MM_FAULT: KernelFn = KernelFn {
    name: "handle_mm_fault",
    params: &[(1, "address"), (2, "flags"), (3, "regs")],
};

const FAULT_OUTCOME_NEEDS: &[Need] = &[
    ("pt_regs.ip", |l| l.pt_regs_ip),
    ("enum vm_fault_reason VM_FAULT_MAJOR", |l| l.vm_fault_major),
    ("enum vm_fault_reason VM_FAULT_RETRY", |l| l.vm_fault_retry),
    ("enum fault_flag FAULT_FLAG_WRITE", |l| l.fault_flag_write),
    ("enum fault_flag FAULT_FLAG_USER", |l| l.fault_flag_user),
    ("enum fault_flag FAULT_FLAG_TRIED", |l| l.fault_flag_tried),
    ("enum fault_flag FAULT_FLAG_INSTRUCTION", |l| {
        l.fault_flag_instruction
    }),
];

// Where the outcome of a fault can be seen (major or minor), that is preferred.
const FAULTS_CHAIN: &[AttachPoint] = &[
    AttachPoint {
        method: Method::Fentry,
        programs: &[Prog::Fentry {
            prog: programs::FAULT_FEXIT,
            function: HANDLE_MM_FAULT,
            exit: true,
        }],
        needs: FAULT_OUTCOME_NEEDS,
    },
    AttachPoint {
        method: Method::Kprobe,
        programs: &[
            Prog::Kprobe {
                prog: programs::FAULT_KPROBE,
                function: HANDLE_MM_FAULT,
                ret: false,
            },
            Prog::Kprobe {
                prog: programs::FAULT_KRETPROBE,
                function: HANDLE_MM_FAULT,
                ret: true,
            },
        ],
        needs: FAULT_OUTCOME_NEEDS,
    },
    AttachPoint {
        method: Method::TpBtf,
        programs: &[
            Prog::BtfTracepoint {
                prog: programs::FAULT_USER_BTF,
                tracepoint: "page_fault_user",
                args: 3,
            },
            Prog::BtfTracepoint {
                prog: programs::FAULT_KERNEL_BTF,
                tracepoint: "page_fault_kernel",
                args: 3,
            },
        ],
        needs: &[("pt_regs.ip", |l| l.pt_regs_ip)],
    },
    AttachPoint {
        method: Method::Tracepoint,
        programs: &[
            Prog::tracepoint(programs::FAULT_USER_TP, "exceptions", "page_fault_user"),
            Prog::tracepoint(programs::FAULT_KERNEL_TP, "exceptions", "page_fault_kernel"),
        ],
        needs: &[],
    },
];

/// `finish_task_switch(prev)`, in the context of the task switched in.
const FINISH_TASK_SWITCH: KernelFn = KernelFn {
    name: "finish_task_switch",
    params: &[(0, "prev")],
};

const THREAD_EXIT: Prog = Prog::tracepoint(programs::THREAD_EXIT_TP, "sched", "sched_process_exit");

/// The exit program of the `tp_btf` chain, whose last intervals wait for it (see bar-ebpf's
/// offcpu.rs).
const THREAD_EXIT_BTF: Prog = Prog::BtfTracepoint {
    prog: programs::THREAD_EXIT_BTF,
    tracepoint: "sched_process_exit",
    args: 1,
};

const FINISH_SWITCH_NEEDS: &[Need] = &[
    ("task_struct.pid", |l| l.task_pid),
    ("task_struct.tgid", |l| l.task_tgid),
    ("task_struct.__state", |l| l.task_state),
];

// tp_btf first: it passes prev_state and runs in the task switched out, the cheapest and most
// direct; finish_task_switch is for kernels without the four-argument tracepoint.
const OFFCPU_CHAIN: &[AttachPoint] = &[
    AttachPoint {
        method: Method::TpBtf,
        programs: &[
            Prog::BtfTracepoint {
                prog: programs::SWITCH_BTF,
                tracepoint: "sched_switch",
                args: 4,
            },
            THREAD_EXIT_BTF,
        ],
        needs: &[("task_struct.pid", |l| l.task_pid)],
    },
    AttachPoint {
        method: Method::Fentry,
        programs: &[
            Prog::Fentry {
                prog: programs::FINISH_SWITCH_FENTRY,
                function: FINISH_TASK_SWITCH,
                exit: false,
            },
            THREAD_EXIT,
        ],
        needs: FINISH_SWITCH_NEEDS,
    },
    AttachPoint {
        method: Method::Kprobe,
        programs: &[
            Prog::Kprobe {
                prog: programs::FINISH_SWITCH_KPROBE,
                function: FINISH_TASK_SWITCH,
                ret: false,
            },
            THREAD_EXIT,
        ],
        needs: FINISH_SWITCH_NEEDS,
    },
    AttachPoint {
        method: Method::Tracepoint,
        programs: &[
            Prog::tracepoint(programs::SWITCH_TP, "sched", "sched_switch"),
            THREAD_EXIT,
        ],
        needs: &[],
    },
];

const TCP_V4_CONNECT: KernelFn = KernelFn {
    name: "tcp_v4_connect",
    params: &[(0, "sk")],
};
const TCP_V6_CONNECT: KernelFn = KernelFn {
    name: "tcp_v6_connect",
    params: &[(0, "sk")],
};
const TCP_SET_STATE: KernelFn = KernelFn {
    name: "tcp_set_state",
    params: &[(0, "sk"), (1, "state")],
};

const SOCK_NEEDS: &[Need] = &[
    ("sock.sk_err", |l| l.sock_sk_err),
    ("sock_common.skc_family", |l| l.skc_family),
    ("sock_common.skc_daddr", |l| l.skc_daddr),
    ("sock_common.skc_rcv_saddr", |l| l.skc_rcv_saddr),
    ("sock_common.skc_dport", |l| l.skc_dport),
    ("sock_common.skc_num", |l| l.skc_num),
    ("sock_common.skc_v6_daddr", |l| l.skc_v6_daddr),
    ("sock_common.skc_v6_rcv_saddr", |l| l.skc_v6_rcv_saddr),
    ("sock_common.skc_state", |l| l.skc_state),
];

// The function hooks first: the attempt is timed from connect()'s entry into the protocol, as
// tcpconnlat does, rather than from the state change a few steps later.
const TCP_CHAIN: &[AttachPoint] = &[
    AttachPoint {
        method: Method::Fentry,
        programs: &[
            Prog::Fentry {
                prog: programs::TCP_V4_CONNECT_FENTRY,
                function: TCP_V4_CONNECT,
                exit: false,
            },
            Prog::Fentry {
                prog: programs::TCP_V6_CONNECT_FENTRY,
                function: TCP_V6_CONNECT,
                exit: false,
            },
            Prog::Fentry {
                prog: programs::TCP_SET_STATE_FENTRY,
                function: TCP_SET_STATE,
                exit: false,
            },
        ],
        needs: SOCK_NEEDS,
    },
    AttachPoint {
        method: Method::Kprobe,
        programs: &[
            Prog::Kprobe {
                prog: programs::TCP_CONNECT_KPROBE,
                function: TCP_V4_CONNECT,
                ret: false,
            },
            Prog::Kprobe {
                prog: programs::TCP_CONNECT_KPROBE,
                function: TCP_V6_CONNECT,
                ret: false,
            },
            Prog::Kprobe {
                prog: programs::TCP_SET_STATE_KPROBE,
                function: TCP_SET_STATE,
                ret: false,
            },
        ],
        needs: SOCK_NEEDS,
    },
    AttachPoint {
        method: Method::TpBtf,
        programs: &[Prog::BtfTracepoint {
            prog: programs::SOCK_STATE_BTF,
            tracepoint: "inet_sock_set_state",
            args: 3,
        }],
        needs: SOCK_NEEDS,
    },
    AttachPoint {
        method: Method::Tracepoint,
        programs: &[Prog::tracepoint(
            programs::SOCK_STATE_TP,
            "sock",
            "inet_sock_set_state",
        )],
        needs: &[],
    },
];

/// `migrate_pages(from, get_new, put_new, private, mode, reason, ret_succeeded)`.
const MIGRATE_PAGES: KernelFn = KernelFn {
    name: "migrate_pages",
    params: &[(0, "from"), (3, "private"), (5, "reason")],
};

const MOVE_NUMA: Prog =
    Prog::optional_tracepoint(programs::MOVE_NUMA_TP, "sched", "sched_move_numa");
const SWAP_NUMA: Prog =
    Prog::optional_tracepoint(programs::SWAP_NUMA_TP, "sched", "sched_swap_numa");
const STICK_NUMA: Prog =
    Prog::optional_tracepoint(programs::STICK_NUMA_TP, "sched", "sched_stick_numa");
/// With a migrate_pages() hook, the batch tracepoint is what reports: it cannot be missing.
const MIGRATE_PAGES_TP: Prog =
    Prog::tracepoint(programs::MIGRATE_PAGES_TP, "migrate", "mm_migrate_pages");

const MIGRATE_NODE_NEEDS: &[Need] = &[
    ("page.flags", |l| l.page_flags),
    ("page.lru", |l| l.page_lru),
    ("migration_target_control.nid", |l| l.migration_target_nid),
    ("the node width of page flags (zonelist, zone_type)", |l| {
        l.page_nid_bits
    }),
    ("enum migrate_reason MR_SYSCALL", |l| l.mr_syscall),
    ("enum migrate_reason MR_NUMA_MISPLACED", |l| {
        l.mr_numa_misplaced
    }),
];

// The migrate_pages() hooks add the node pair of each batch to the tracepoints.
const NUMA_CHAIN: &[AttachPoint] = &[
    AttachPoint {
        method: Method::Fentry,
        programs: &[
            Prog::Fentry {
                prog: programs::MIGRATE_PAGES_FENTRY,
                function: MIGRATE_PAGES,
                exit: false,
            },
            MOVE_NUMA,
            SWAP_NUMA,
            STICK_NUMA,
            MIGRATE_PAGES_TP,
        ],
        needs: MIGRATE_NODE_NEEDS,
    },
    AttachPoint {
        method: Method::Kprobe,
        programs: &[
            Prog::Kprobe {
                prog: programs::MIGRATE_PAGES_KPROBE,
                function: MIGRATE_PAGES,
                ret: false,
            },
            MOVE_NUMA,
            SWAP_NUMA,
            STICK_NUMA,
            MIGRATE_PAGES_TP,
        ],
        needs: MIGRATE_NODE_NEEDS,
    },
    AttachPoint {
        method: Method::Tracepoint,
        programs: &[
            MOVE_NUMA,
            SWAP_NUMA,
            STICK_NUMA,
            Prog::optional_tracepoint(programs::MIGRATE_PAGES_TP, "migrate", "mm_migrate_pages"),
        ],
        needs: &[],
    },
];
