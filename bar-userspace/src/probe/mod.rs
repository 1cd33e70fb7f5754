//! Load and attach: the first stage of the data path. Each event family declares the attach
//! points it can use, best first; the loader checks what this kernel offers (tracefs formats,
//! BTF, kprobe support), then tries them in order and keeps the first that loads and attaches.
//! What was chosen and why every other point was passed over is kept for `info`, the live
//! status and `summary.json`.

pub mod layout;

use std::str::FromStr;

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        BtfTracePoint, PerfEvent, ProgramError, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use bar_ebpf_common::{CONFIG_GLOBAL, Config, Family, Layout, maps};
use serde::Serialize;

use self::layout::KernelBtf;

/// The kernel object, built for the BPF target by the build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bar"));

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

fn parse_family(s: &str) -> Result<Family, String> {
    Family::from_name(s).ok_or_else(|| {
        format!("unknown event kind '{s}' (expected cpu, offcpu, faults, tcp, numa or all)")
    })
}

fn family_name<S: serde::Serializer>(f: &Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

/// A set of families as given to `--events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyList(pub Vec<Family>);

/// Parses `--events`: a comma-separated list of families, or `all`.
pub fn parse_families(s: &str) -> Result<FamilyList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            out.extend(Family::ALL);
        } else {
            out.push(parse_family(part)?);
        }
    }
    if out.is_empty() {
        return Err("no event kind given".into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(FamilyList(out))
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::PerfEvent,
            Self::Kprobe,
            Self::Fentry,
            Self::TpBtf,
            Self::Tracepoint,
        ]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| {
            format!("unknown attach method '{s}' (perf_event, kprobe, fentry, tp_btf, tracepoint)")
        })
    }
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
    /// How `info` and `summary.json` name it, e.g. `tp_btf:sched_switch`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .programs
            .iter()
            .map(|p| match p {
                Prog::CpuClock { .. } => "cpu-clock".to_owned(),
                Prog::BtfTracepoint { tracepoint, .. } => (*tracepoint).to_owned(),
                Prog::Tracepoint { category, name, .. } => format!("{category}:{name}"),
            })
            .collect();
        format!("{}:{}", self.method.name(), names.join("+"))
    }
}

const CPU_CHAIN: &[AttachPoint] = &[AttachPoint {
    method: Method::PerfEvent,
    programs: &[Prog::CpuClock { prog: "bar_cpu" }],
    needs: &[],
}];

const FAULTS_CHAIN: &[AttachPoint] = &[
    AttachPoint {
        method: Method::TpBtf,
        programs: &[
            Prog::BtfTracepoint {
                prog: "bar_fault_user_btf",
                tracepoint: "page_fault_user",
                args: 3,
            },
            Prog::BtfTracepoint {
                prog: "bar_fault_kernel_btf",
                tracepoint: "page_fault_kernel",
                args: 3,
            },
        ],
        needs: &[("pt_regs.ip", |l| l.pt_regs_ip)],
    },
    AttachPoint {
        method: Method::Tracepoint,
        programs: &[
            Prog::Tracepoint {
                prog: "bar_fault_user_tp",
                category: "exceptions",
                name: "page_fault_user",
                optional: false,
            },
            Prog::Tracepoint {
                prog: "bar_fault_kernel_tp",
                category: "exceptions",
                name: "page_fault_kernel",
                optional: false,
            },
        ],
        needs: &[],
    },
];

const OFFCPU_CHAIN: &[AttachPoint] = &[
    AttachPoint {
        method: Method::TpBtf,
        programs: &[
            Prog::BtfTracepoint {
                prog: "bar_switch_btf",
                tracepoint: "sched_switch",
                args: 4,
            },
            Prog::Tracepoint {
                prog: "bar_thread_exit_tp",
                category: "sched",
                name: "sched_process_exit",
                optional: false,
            },
        ],
        needs: &[("task_struct.pid", |l| l.task_pid)],
    },
    AttachPoint {
        method: Method::Tracepoint,
        programs: &[
            Prog::Tracepoint {
                prog: "bar_switch_tp",
                category: "sched",
                name: "sched_switch",
                optional: false,
            },
            Prog::Tracepoint {
                prog: "bar_thread_exit_tp",
                category: "sched",
                name: "sched_process_exit",
                optional: false,
            },
        ],
        needs: &[],
    },
];

const TCP_CHAIN: &[AttachPoint] = &[
    AttachPoint {
        method: Method::TpBtf,
        programs: &[Prog::BtfTracepoint {
            prog: "bar_sock_state_btf",
            tracepoint: "inet_sock_set_state",
            args: 3,
        }],
        needs: &[
            ("sock.sk_err", |l| l.sock_sk_err),
            ("sock_common.skc_family", |l| l.skc_family),
            ("sock_common.skc_daddr", |l| l.skc_daddr),
            ("sock_common.skc_rcv_saddr", |l| l.skc_rcv_saddr),
            ("sock_common.skc_dport", |l| l.skc_dport),
            ("sock_common.skc_num", |l| l.skc_num),
            ("sock_common.skc_v6_daddr", |l| l.skc_v6_daddr),
            ("sock_common.skc_v6_rcv_saddr", |l| l.skc_v6_rcv_saddr),
        ],
    },
    AttachPoint {
        method: Method::Tracepoint,
        programs: &[Prog::Tracepoint {
            prog: "bar_sock_state_tp",
            category: "sock",
            name: "inet_sock_set_state",
            optional: false,
        }],
        needs: &[],
    },
];

const NUMA_CHAIN: &[AttachPoint] = &[AttachPoint {
    method: Method::Tracepoint,
    programs: &[
        Prog::Tracepoint {
            prog: "bar_move_numa_tp",
            category: "sched",
            name: "sched_move_numa",
            optional: true,
        },
        Prog::Tracepoint {
            prog: "bar_swap_numa_tp",
            category: "sched",
            name: "sched_swap_numa",
            optional: true,
        },
        Prog::Tracepoint {
            prog: "bar_stick_numa_tp",
            category: "sched",
            name: "sched_stick_numa",
            optional: true,
        },
        Prog::Tracepoint {
            prog: "bar_migrate_pages_tp",
            category: "migrate",
            name: "mm_migrate_pages",
            optional: true,
        },
    ],
    needs: &[],
}];

/// What to record and how; filled from the command line.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub families: Vec<Family>,
    /// Families the user named explicitly: failing to attach one of these is an error.
    pub explicit: bool,
    pub target_tgid: u32,
    pub cgroup_id: u64,
    pub frequency: u64,
    pub min_block_ns: u64,
    pub null_mode: bool,
    pub stack_map_entries: u32,
    /// Attach methods the user asked to pass over.
    pub avoid: Vec<Method>,
}

/// The outcome for one family.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyStatus {
    #[serde(serialize_with = "family_name")]
    pub family: Family,
    /// The attach point in use, e.g. `tp_btf:sched_switch`; None when none worked.
    pub method: Option<String>,
    /// Attach points passed over, with the reason.
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub attach: String,
    pub reason: String,
}

/// What the kernel offers, gathered once before loading.
struct Offer {
    btf: Result<KernelBtf, String>,
    aya_btf: Option<Btf>,
    layout: Layout,
    /// Tracepoints whose format could not be read or did not match, with the reason.
    tracepoint_errors: Vec<(String, String)>,
}

impl Offer {
    fn gather(families: &[Family]) -> Self {
        let tracefs = crate::system::tracefs();
        let btf = if crate::system::btf_present() {
            KernelBtf::load()
        } else {
            Err(format!(
                "this kernel has no BTF ({} is missing)",
                crate::system::BTF_PATH
            ))
        };
        let mut layout = Layout::unknown();
        let mut tracepoint_errors = Vec::new();
        // The tracepoints of every attach point of the families, and the exec tracker's.
        let tracepoints = families
            .iter()
            .flat_map(|f| chain(*f))
            .flat_map(|p| p.programs)
            .filter_map(|prog| match prog {
                Prog::Tracepoint { category, name, .. } => Some((*category, *name)),
                _ => None,
            })
            .chain([("sched", "sched_process_exec")]);
        for (category, name) in tracepoints {
            let key = format!("{category}:{name}");
            if tracepoint_errors.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let result = match &tracefs {
                Ok(dir) => layout::fill_tracepoint(&mut layout, dir, category, name),
                Err(e) => Err(e.clone()),
            };
            if let Err(e) = result {
                tracepoint_errors.push((key, e));
            }
        }
        if let Ok(btf) = &btf {
            layout::fill_btf(&mut layout, btf);
        }
        let aya_btf = Btf::from_sys_fs().ok();
        Self {
            btf,
            aya_btf,
            layout,
            tracepoint_errors,
        }
    }

    /// Why an attach point cannot work here before even trying, if that can be told.
    fn precheck(&self, point: &AttachPoint) -> Result<(), String> {
        for (name, get) in point.needs {
            if get(&self.layout) == Layout::UNKNOWN {
                return Err(match &self.btf {
                    Err(e) => e.clone(),
                    Ok(_) => format!("BTF has no {name}"),
                });
            }
        }
        let mut tracepoints = 0;
        let mut missing = Vec::new();
        for prog in point.programs {
            match prog {
                Prog::CpuClock { .. } => {}
                Prog::BtfTracepoint {
                    tracepoint, args, ..
                } => {
                    let btf = self.btf.as_ref().map_err(Clone::clone)?;
                    let have = btf.tracepoint_args(tracepoint)?;
                    if have < *args {
                        return Err(format!(
                            "BTF tracepoint {tracepoint} passes {have} arguments, the program needs {args}"
                        ));
                    }
                }
                Prog::Tracepoint {
                    category,
                    name,
                    optional,
                    ..
                } => {
                    let key = format!("{category}:{name}");
                    match self.tracepoint_errors.iter().find(|(k, _)| *k == key) {
                        Some((_, e)) if !optional => return Err(e.clone()),
                        Some((_, e)) => missing.push(e.clone()),
                        None => tracepoints += 1,
                    }
                }
            }
        }
        if tracepoints == 0 && !missing.is_empty() {
            return Err(missing.join("; "));
        }
        Ok(())
    }
}

/// A short, one-line reason from a program error (the verifier log can be thousands of lines).
fn short_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let last = log
                .lines()
                .map(str::trim)
                .rfind(|l| {
                    !l.is_empty()
                        && !l.starts_with("processed ")
                        && !l.starts_with("verification time")
                })
                .unwrap_or_default()
                .to_owned();
            if last.is_empty() {
                format!("the kernel refused to load it: {io_error}")
            } else {
                format!("the kernel refused to load it: {io_error} ({last})")
            }
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// The object loaded into the kernel (maps created, configuration set), no program yet.
pub struct Loaded {
    pub ebpf: Ebpf,
    offer: Offer,
    opts: ProbeOptions,
}

/// Loads the object with the configuration. Programs are loaded and attached by
/// [`Loaded::attach`], after the caller has put the perf buffers in place, so that no event is
/// produced with nowhere to go.
pub fn load(opts: &ProbeOptions) -> anyhow::Result<Loaded> {
    let offer = Offer::gather(&opts.families);
    let mut config = Config::new();
    config.target_tgid = opts.target_tgid;
    // SAFETY: no preconditions.
    config.self_tgid = unsafe { libc::getpid() } as u32;
    config.cgroup_id = opts.cgroup_id;
    config.min_block_ns = opts.min_block_ns;
    config.null_mode = u32::from(opts.null_mode);
    config.layout = offer.layout;
    config.user_walk = u32::from(
        offer
            .btf
            .as_ref()
            .is_ok_and(|btf| layout::can_walk_user_stacks(&offer.layout, btf)),
    );
    let ebpf = EbpfLoader::new()
        .override_global(CONFIG_GLOBAL, &config, true)
        .map_max_entries(maps::STACKS, opts.stack_map_entries)
        .map_max_entries(maps::USER_STACKS, opts.stack_map_entries)
        .load(OBJECT)
        .map_err(|e| anyhow::anyhow!("loading bar's eBPF object failed: {e}"))?;
    Ok(Loaded {
        ebpf,
        offer,
        opts: opts.clone(),
    })
}

impl Loaded {
    /// Attaches every requested family through the best attach point that works here.
    pub fn attach(&mut self) -> Vec<FamilyStatus> {
        let mut status = Vec::new();
        for &family in &self.opts.families {
            let mut st = FamilyStatus {
                family,
                method: None,
                rejected: Vec::new(),
            };
            for point in chain(family) {
                let describe = point.describe();
                if let Some(chosen) = &st.method {
                    let reason = format!("not needed: {chosen} is preferred");
                    st.rejected.push(Rejected {
                        attach: describe,
                        reason,
                    });
                    continue;
                }
                let result = if self.opts.avoid.contains(&point.method) {
                    Err(format!(
                        "{} was turned off with --avoid",
                        point.method.name()
                    ))
                } else {
                    self.offer.precheck(point).and_then(|()| {
                        try_attach(&mut self.ebpf, &self.offer, point, self.opts.frequency)
                    })
                };
                match result {
                    Ok(()) => st.method = Some(describe),
                    Err(reason) => st.rejected.push(Rejected {
                        attach: describe,
                        reason,
                    }),
                }
            }
            status.push(st);
        }
        status
    }

    /// Frees the kernel's type information once everything is attached: it is only needed to
    /// choose and load programs, and is otherwise the largest thing bar-probe would hold for
    /// the whole recording (tens of MB).
    pub fn release_kernel_types(&mut self) {
        self.offer.btf = Err("released after attaching".into());
        self.offer.aya_btf = None;
    }

    /// Attaches the exec tracker every recording needs to symbolize processes that exec.
    pub fn attach_exec_tracking(&mut self) -> Result<(), String> {
        if let Some((_, e)) = self
            .offer
            .tracepoint_errors
            .iter()
            .find(|(k, _)| k == "sched:sched_process_exec")
        {
            return Err(e.clone());
        }
        attach_tracepoint(&mut self.ebpf, "bar_exec_tp", "sched", "sched_process_exec")
    }
}

/// Loads and attaches every program of an attach point; on failure unloads what it loaded.
fn try_attach(
    ebpf: &mut Ebpf,
    offer: &Offer,
    point: &AttachPoint,
    frequency: u64,
) -> Result<(), String> {
    let mut loaded: Vec<&'static str> = Vec::new();
    let mut attached_optional = 0;
    let mut result = Ok(());
    for prog in point.programs {
        let (name, r) = match prog {
            Prog::CpuClock { prog } => (*prog, attach_cpu_clock(ebpf, prog, frequency)),
            Prog::BtfTracepoint {
                prog, tracepoint, ..
            } => (*prog, attach_btf_tracepoint(ebpf, offer, prog, tracepoint)),
            Prog::Tracepoint {
                prog,
                category,
                name,
                optional,
            } => {
                let key = format!("{category}:{name}");
                if *optional && offer.tracepoint_errors.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let r = attach_tracepoint(ebpf, prog, category, name);
                if *optional && r.is_ok() {
                    attached_optional += 1;
                }
                (*prog, r)
            }
        };
        loaded.push(name);
        if let Err(e) = r {
            result = Err(e);
            break;
        }
    }
    let all_optional = point
        .programs
        .iter()
        .all(|p| matches!(p, Prog::Tracepoint { optional: true, .. }));
    if result.is_ok() && all_optional && attached_optional == 0 {
        result = Err("none of its tracepoints attached".into());
    }
    if result.is_err() {
        for name in loaded {
            unload(ebpf, name);
        }
    }
    result
}

/// Unloads a program (and detaches its links) so a later attach point can load it afresh.
fn unload(ebpf: &mut Ebpf, name: &str) {
    use aya::programs::Program;
    let Some(p) = ebpf.program_mut(name) else {
        return;
    };
    let _ = match p {
        Program::PerfEvent(p) => p.unload(),
        Program::BtfTracePoint(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        _ => Ok(()),
    };
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object"))?
        .try_into()
        .map_err(|e: ProgramError| short_error(&e))
}

fn attach_cpu_clock(ebpf: &mut Ebpf, prog: &str, frequency: u64) -> Result<(), String> {
    let p: &mut PerfEvent = program(ebpf, prog)?;
    p.load().map_err(|e| short_error(&e))?;
    for cpu in crate::system::online_cpus() {
        p.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(frequency),
            false,
        )
        .map_err(|e| format!("cpu-clock on CPU {cpu}: {}", short_error(&e)))?;
    }
    Ok(())
}

fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    offer: &Offer,
    prog: &str,
    tracepoint: &str,
) -> Result<(), String> {
    let btf = offer
        .aya_btf
        .as_ref()
        .ok_or("this kernel's BTF could not be parsed")?;
    let p: &mut BtfTracePoint = program(ebpf, prog)?;
    p.load(tracepoint, btf).map_err(|e| short_error(&e))?;
    p.attach().map_err(|e| short_error(&e))?;
    Ok(())
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<(), String> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load().map_err(|e| short_error(&e))?;
    }
    p.attach(category, name).map_err(|e| short_error(&e))?;
    Ok(())
}
