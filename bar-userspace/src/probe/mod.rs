//! Load and attach: the first stage of the data path. Each event family declares the attach
//! points it can use, best first; the loader checks what this kernel offers (tracefs formats,
//! BTF, kprobe support), then tries them in order and keeps the first that loads and attaches.
//! What was chosen and why every other point was passed over is kept for `info`, the live
//! status and `summary.json`.

mod chains;
mod error;
pub mod layout;
mod object;

use self::chains::{KernelFn, Prog};
pub use self::{
    chains::{AttachPoint, Method, chain},
    error::Error,
};

use std::cell::OnceCell;

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{
        BtfTracePoint, FEntry, FExit, KProbe, PerfEvent, ProgramError, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
};
use bar_ebpf_common::{CONFIG_GLOBAL, Config, Family, Layout, maps, programs};
use serde::Serialize;

use self::{layout::KernelBtf, object::OBJECT};
use crate::system::{self, KernelSymbols};

fn parse_family(s: &str) -> Result<Family, Error> {
    Family::from_name(s).ok_or_else(|| Error::UnknownFamily(s.to_owned()))
}

fn family_name<S: serde::Serializer>(f: &Family, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

/// A set of families as given to `--events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyList(pub Vec<Family>);

/// Parses `--events`: a comma-separated list of families, or `all`.
pub fn parse_families(s: &str) -> Result<FamilyList, Error> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            out.extend(Family::ALL);
        } else {
            out.push(parse_family(part)?);
        }
    }
    if out.is_empty() {
        return Err(Error::NoFamily);
    }
    out.sort_unstable();
    out.dedup();
    Ok(FamilyList(out))
}

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
    /// Faults and off-CPU intervals are summed in the kernel (`SUMS`), not sent one by one.
    pub sum_records: bool,
    pub stack_map_entries: u32,
    /// Attach methods the user asked to pass over.
    pub avoid: Vec<Method>,
    /// Rows of unwind tables the kernel holds; 0 walks user stacks by frame pointer only.
    pub unwind_rows: u32,
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
    /// Tried here and refused (false: one preferred to it was attached, and it was not tried).
    #[serde(skip)]
    pub tried: bool,
}

/// What the kernel offers, gathered once before loading.
struct Offer {
    btf: Result<KernelBtf, Error>,
    aya_btf: Option<Btf>,
    layout: Layout,
    /// Tracepoints whose format could not be read or did not match, with the reason.
    tracepoint_errors: Vec<(String, Error)>,
    /// Why kprobes cannot be used here, if they cannot.
    kprobes: Option<system::Error>,
    /// Kernel text symbols, read the first time a kprobe target is looked up.
    symbols: OnceCell<Result<KernelSymbols, system::Error>>,
}

impl Offer {
    fn gather(families: &[Family]) -> Self {
        let tracefs = system::tracefs();
        let btf = if system::btf_present() {
            KernelBtf::load()
        } else {
            Err(Error::NoBtf(system::BTF_PATH))
        };
        let mut layout = Layout::unknown();
        let mut tracepoint_errors = Vec::new();
        // The tracepoints of every attach point of the families, and the process tracker's.
        let tracepoints = families
            .iter()
            .flat_map(|f| chain(*f))
            .flat_map(|p| p.programs)
            .filter_map(|prog| match prog {
                Prog::Tracepoint { category, name, .. } => Some((*category, *name)),
                _ => None,
            })
            .chain(PROCESS_TRACKING.iter().map(|(_, c, n, _)| (*c, *n)));
        for (category, name) in tracepoints {
            let key = format!("{category}:{name}");
            if tracepoint_errors.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let result = match &tracefs {
                Ok(dir) => layout::fill_tracepoint(&mut layout, dir, category, name),
                Err(e) => Err(Error::System(e.clone())),
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
            kprobes: system::kprobes_unavailable(tracefs.as_deref().ok()),
            symbols: OnceCell::new(),
        }
    }

    /// The kallsyms symbol a kprobe on `function` attaches to.
    fn kprobe_symbol(&self, function: &KernelFn) -> Result<String, Error> {
        if let Some(why) = &self.kprobes {
            return Err(why.clone().into());
        }
        let symbols = self
            .symbols
            .get_or_init(KernelSymbols::read)
            .as_ref()
            .map_err(Clone::clone)?;
        Ok(symbols.resolve(function.name)?)
    }

    /// Checks that the arguments the program reads are where it reads them. For fentry the
    /// prototype must be in BTF (the program is verified against it); a kprobe target that BTF
    /// does not describe (a compiler clone) is taken as it is.
    fn check_params(&self, function: &KernelFn, required: bool) -> Result<(), Error> {
        let btf = self.btf.as_ref().map_err(Clone::clone)?;
        let Some(params) = btf.function_params(function.name) else {
            return if required {
                Err(Error::NoBtfFunction(function.name))
            } else {
                Ok(())
            };
        };
        for &(index, want) in function.params {
            if params.get(index).map(String::as_str) != Some(want) {
                return Err(Error::Params {
                    function: function.name,
                    params: params.join(", "),
                    index,
                    want,
                });
            }
        }
        Ok(())
    }

    /// Why an attach point cannot work here before even trying, if that can be told.
    fn precheck(&self, point: &AttachPoint) -> Result<(), Error> {
        for (name, get) in point.needs {
            if get(&self.layout) == Layout::UNKNOWN {
                return Err(match &self.btf {
                    Err(e) => e.clone(),
                    Ok(_) => Error::BtfLacks(name),
                });
            }
        }
        let mut tracepoints = 0;
        let mut missing = Vec::new();
        for prog in point.programs {
            match prog {
                Prog::CpuClock { .. } => {}
                Prog::Fentry { function, .. } => self.check_params(function, true)?,
                Prog::Kprobe { function, .. } => {
                    self.kprobe_symbol(function)?;
                    self.check_params(function, false)?;
                }
                Prog::BtfTracepoint {
                    tracepoint, args, ..
                } => {
                    let btf = self.btf.as_ref().map_err(Clone::clone)?;
                    let have = btf.tracepoint_args(tracepoint)?;
                    if have < *args {
                        return Err(Error::TracepointArgs {
                            tracepoint: (*tracepoint).to_owned(),
                            have,
                            needs: *args,
                        });
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
            return Err(Error::NoneOf(missing));
        }
        Ok(())
    }
}

/// The object loaded into the kernel (maps created, configuration set), no program yet.
pub struct Loaded {
    pub ebpf: Ebpf,
    offer: Offer,
    opts: ProbeOptions,
    /// Whether user stacks are walked with unwind tables, or why not.
    pub unwind: Result<(), Error>,
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
    config.sum_records = u32::from(opts.sum_records);
    config.nr_node_ids = system::possible_node_ids();
    config.layout = offer.layout;
    config.user_walk = u32::from(
        offer
            .btf
            .as_ref()
            .is_ok_and(|btf| layout::can_walk_user_stacks(&offer.layout, btf)),
    );
    let unwind = if opts.unwind_rows == 0 {
        Err(Error::FramePointersAsked)
    } else {
        layout::can_walk_with_tables(&config)
    };
    config.unwind_tables = u32::from(unwind.is_ok());
    let rows = if unwind.is_ok() { opts.unwind_rows } else { 1 };
    let ebpf = EbpfLoader::new()
        .override_global(CONFIG_GLOBAL, &config, true)
        .map_max_entries(maps::STACKS, opts.stack_map_entries)
        .map_max_entries(maps::USER_STACKS, opts.stack_map_entries)
        .map_max_entries(maps::UNWIND_ROWS, rows)
        .load(OBJECT)
        .map_err(|e| anyhow::anyhow!("loading bar's eBPF object failed: {e}"))?;
    Ok(Loaded {
        ebpf,
        offer,
        opts: opts.clone(),
        unwind,
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
                        tried: false,
                    });
                    continue;
                }
                let result = if self.opts.avoid.contains(&point.method) {
                    Err(Error::Avoided(point.method))
                } else {
                    self.offer.precheck(point).and_then(|()| {
                        try_attach(&mut self.ebpf, &self.offer, point, self.opts.frequency)
                    })
                };
                match result {
                    Ok(()) => {
                        st.method = Some(point.describe_with(|f| {
                            self.offer
                                .kprobe_symbol(f)
                                .unwrap_or_else(|_| f.name.to_owned())
                        }));
                    }
                    Err(reason) => st.rejected.push(Rejected {
                        attach: describe,
                        reason: reason.to_string(),
                        tried: true,
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
        self.offer.btf = Err(Error::BtfReleased);
        self.offer.aya_btf = None;
    }

    /// Attaches the process tracker every recording needs to name and symbolize processes
    /// that fork, exec and exit; returns what could not be attached, each with what is lost and
    /// why.
    pub fn attach_process_tracking(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for (prog, category, name, loss) in PROCESS_TRACKING {
            let key = format!("{category}:{name}");
            let result = match self.offer.tracepoint_errors.iter().find(|(k, _)| *k == key) {
                Some((_, e)) => Err(e.clone()),
                None => attach_tracepoint(&mut self.ebpf, prog, category, name),
            };
            if let Err(e) = result {
                failed.push(format!("{loss}: {e}"));
            }
        }
        failed
    }
}

/// The process tracker's programs: (program, tracepoint category and name, what is lost
/// without it).
const PROCESS_TRACKING: [(&str, &str, &str, &str); 3] = [
    (
        programs::EXEC_TP,
        "sched",
        "sched_process_exec",
        "processes that exec while recorded may get wrong symbols",
    ),
    (
        programs::FORK_TP,
        "task",
        "task_newtask",
        "processes that end before bar reads them may be unnamed",
    ),
    (
        programs::EXIT_TP,
        "sched",
        "sched_process_exit",
        "what bar knows of ended processes is kept to the end of the recording",
    ),
];

/// Loads and attaches every program of an attach point; on failure unloads what it loaded.
fn try_attach(
    ebpf: &mut Ebpf,
    offer: &Offer,
    point: &AttachPoint,
    frequency: u64,
) -> Result<(), Error> {
    let mut loaded: Vec<&'static str> = Vec::new();
    let mut attached_optional = 0;
    let mut result = Ok(());
    for prog in point.programs {
        let (name, r) = match prog {
            Prog::CpuClock { prog } => (*prog, attach_cpu_clock(ebpf, prog, frequency)),
            Prog::BtfTracepoint {
                prog, tracepoint, ..
            } => (*prog, attach_btf_tracepoint(ebpf, offer, prog, tracepoint)),
            Prog::Fentry {
                prog,
                function,
                exit,
            } => (
                *prog,
                attach_fentry(ebpf, offer, prog, function.name, *exit),
            ),
            Prog::Kprobe { prog, function, .. } => (
                *prog,
                offer
                    .kprobe_symbol(function)
                    .and_then(|symbol| attach_kprobe(ebpf, prog, &symbol)),
            ),
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
        result = Err(Error::NoTracepointAttached);
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

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::NoProgram(name.to_owned()))?
        .try_into()
        .map_err(|e: ProgramError| Error::from(&e))
}

fn attach_cpu_clock(ebpf: &mut Ebpf, prog: &str, frequency: u64) -> Result<(), Error> {
    let p: &mut PerfEvent = program(ebpf, prog)?;
    p.load()?;
    for cpu in system::online_cpus() {
        p.attach(
            PerfEventConfig::Software(SoftwareEvent::CpuClock),
            PerfEventScope::AllProcessesOneCpu { cpu },
            SamplePolicy::Frequency(frequency),
            false,
        )
        .map_err(|e| Error::CpuClock {
            cpu,
            error: Box::new(e.into()),
        })?;
    }
    Ok(())
}

fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    offer: &Offer,
    prog: &str,
    tracepoint: &str,
) -> Result<(), Error> {
    let btf = offer.aya_btf.as_ref().ok_or(Error::BtfUnparsed)?;
    let p: &mut BtfTracePoint = program(ebpf, prog)?;
    p.load(tracepoint, btf)?;
    p.attach()?;
    Ok(())
}

fn attach_fentry(
    ebpf: &mut Ebpf,
    offer: &Offer,
    prog: &str,
    function: &str,
    exit: bool,
) -> Result<(), Error> {
    let btf = offer.aya_btf.as_ref().ok_or(Error::BtfUnparsed)?;
    if exit {
        let p: &mut FExit = program(ebpf, prog)?;
        p.load(function, btf)?;
        p.attach()?;
    } else {
        let p: &mut FEntry = program(ebpf, prog)?;
        p.load(function, btf)?;
        p.attach()?;
    }
    Ok(())
}

/// A kprobe or kretprobe (the object says which); one program may be attached to several
/// functions, so it is loaded once.
fn attach_kprobe(ebpf: &mut Ebpf, prog: &str, symbol: &str) -> Result<(), Error> {
    let p: &mut KProbe = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load()?;
    }
    p.attach(symbol, 0).map_err(|e| Error::Kprobe {
        symbol: symbol.to_owned(),
        error: Box::new(e.into()),
    })?;
    Ok(())
}

fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<(), Error> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    if p.fd().is_err() {
        p.load()?;
    }
    p.attach(category, name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_points_are_named_by_method_and_targets() {
        let names: Vec<String> = chain(Family::Faults)
            .iter()
            .map(AttachPoint::describe)
            .collect();
        assert_eq!(
            names,
            [
                "fentry:handle_mm_fault%return",
                "kprobe:handle_mm_fault+handle_mm_fault%return",
                "tp_btf:page_fault_user+page_fault_kernel",
                "tracepoint:exceptions:page_fault_user+exceptions:page_fault_kernel",
            ]
        );
        // A kprobe is named by the symbol it really attached to.
        let offcpu = &chain(Family::Offcpu)[2];
        assert_eq!(offcpu.method, Method::Kprobe);
        assert_eq!(
            offcpu.describe_with(|f| format!("{}.isra.0", f.name)),
            "kprobe:finish_task_switch.isra.0+sched:sched_process_exit"
        );
    }

    #[test]
    fn every_chain_ends_with_a_point_that_needs_no_btf() {
        // A kernel without BTF or kprobes still has somewhere to attach each family.
        for f in Family::ALL {
            let last = chain(f).last().unwrap();
            assert!(last.needs.is_empty(), "{f}: {}", last.describe());
            assert!(
                last.programs
                    .iter()
                    .all(|p| matches!(p, Prog::Tracepoint { .. } | Prog::CpuClock { .. })),
                "{f}"
            );
        }
    }
}
