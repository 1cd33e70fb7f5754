//! Symbolize: turns the kernel's stack ids into interned stacks of named frames, in batches,
//! while the traced processes are still alive.
//!
//! User addresses are first mapped to (object file, file offset) with a snapshot of the
//! process's memory map taken when the process is first seen and refreshed when an address
//! falls outside it; names then come from the object files through blazesym, so a process
//! that exits mid-capture still gets named frames. JIT code is looked up in the process's perf
//! map (`/tmp/perf-PID.map`). Kernel addresses go through kallsyms (modules included). A frame
//! that cannot be named keeps its module and offset, e.g. `[libfoo.so+0x1a2b]`; a user address
//! in no mapping at all is `[unknown]` (often not code: a frame-pointer walk through code built
//! without frame pointers reads data as return addresses).

mod evict;
mod interner;
mod kernel;
mod maps;
mod names;
mod spaces;

pub use self::{
    interner::Interner,
    maps::{MAX_PERF_MAP, process_comm},
    spaces::{ExecMaps, SpaceId},
};

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap as BpfHashMap, MapData, StackTraceMap};
use bar_ebpf_common::{USER_STACK_KEY, UserStack, unwind};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};

use self::{
    evict::UserIds,
    kernel::{BPF_CODE, is_bpf_code, is_tracing_frame, kernel_source, module_code_ranges},
    maps::{Mapping, PerfMap, Place, ProcessInfo, locate, process_root, read_maps},
    names::{Lookup, new_blaze},
    spaces::Spaces,
};

/// For the lookups made once per event: SipHash, the default, took a sixth of the collector's
/// time at 300k events/s.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// errno values bpf_get_stackid returns.
/// A stack that is not there to walk (see `bar_ebpf_common::NO_STACK`): no frames, no error.
const EFAULT: i32 = -bar_ebpf_common::NO_STACK;
const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;

/// Resident memory of files bar-probe maps (its own code, its perf buffers, the objects
/// blazesym reads), in KiB.
fn mapped_files_kb() -> Option<u64> {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    })
}

/// A user stack's frames, and how bar's programs walked it ([`unwind::facts`]) if they did.
type UserFrames = (Vec<u32>, Option<u32>);

/// A stack as the kernel reported it for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawStack {
    pub pid: u32,
    /// The memory map the process had when the record was taken ([`Symbolizer::space`]).
    pub space: SpaceId,
    pub user: i32,
    pub kernel: i32,
    /// When the record was taken.
    pub ts: u64,
}

/// Name of a user address in no mapping of its process.
const UNKNOWN_USER: &str = "[unknown]";

/// Counters of what could not be resolved, for the summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct SymbolStats {
    /// Stacks the kernel could not store (stack map full or hash collision).
    pub stacks_lost: u64,
    pub frames_unresolved: u64,
}

pub struct Symbolizer {
    /// For the files processes map, started over when they take too much memory.
    blaze: Blaze,
    /// For kallsyms, read once.
    blaze_kernel: Blaze,
    /// Whether names not in a file's symbol table are looked for in its DWARF (and debug
    /// files): for one process, not for a whole host (see [`Symbolizer::new`]); and whether
    /// the functions inlined at an address are frames of their own (only with DWARF).
    lookup: Lookup,
    /// When the memory of mapped files was last looked at, and what it was at the first look
    /// (bar-probe's own code, the perf buffers).
    files_checked: std::time::Instant,
    files_at_start_kb: Option<u64>,
    stacks: StackTraceMap<MapData>,
    /// User stacks the programs walked themselves (ids with [`USER_STACK_KEY`]).
    user_stacks: BpfHashMap<MapData, u32, UserStack>,
    user_stacks_capacity: u32,
    user_ids: UserIds,
    /// The memory maps of processes over time.
    spaces: Spaces,
    kernel_frames: FastMap<i32, Vec<u32>>,
    /// Per memory map, its user stacks' frames; per map, its stacks' ids (by user and kernel
    /// stack id). Both go with the map when no process uses it any more.
    /// With the frames, how bar's programs walked the stack ([`unwind::facts`], after the cut
    /// of frames outside every mapping), if they did.
    user_frames: FastMap<SpaceId, FastMap<i32, UserFrames>>,
    resolved: FastMap<SpaceId, FastMap<(i32, i32), u32>>,
    pub interner: Interner,
    pub stats: SymbolStats,
}

impl Symbolizer {
    pub fn new(
        stacks: StackTraceMap<MapData>,
        user_stacks: BpfHashMap<MapData, u32, UserStack>,
        user_stacks_capacity: u32,
        dwarf: bool,
        inlined: bool,
    ) -> Self {
        let lookup = Lookup {
            dwarf,
            inlined: inlined && dwarf,
        };
        Self {
            blaze: new_blaze(lookup.inlined),
            blaze_kernel: new_blaze(false),
            lookup,
            files_checked: std::time::Instant::now(),
            files_at_start_kb: mapped_files_kb(),
            stacks,
            user_stacks,
            user_stacks_capacity,
            user_ids: UserIds::default(),
            spaces: Spaces::default(),
            kernel_frames: FastMap::default(),
            user_frames: FastMap::default(),
            resolved: FastMap::default(),
            interner: Interner::default(),
            stats: SymbolStats::default(),
        }
    }

    /// Starts blazesym over when the files it keeps mapped hold too much of bar-probe's
    /// resident memory (checked every few seconds, beyond what was mapped at the first look). It maps every object it names frames of
    /// and keeps them: on a host that runs compilers, libraries of hundreds of MB whose symbol
    /// tables alone took over 100 MB of RSS within minutes. What was resolved stays resolved;
    /// only new addresses have their files mapped again.
    pub fn release_files_if_large(&mut self) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
        const MAPPED_FILES_KB: u64 = 32 << 10;
        if self.files_checked.elapsed() < EVERY {
            return;
        }
        self.files_checked = std::time::Instant::now();
        let Some(mapped) = mapped_files_kb() else {
            return;
        };
        let start = *self.files_at_start_kb.get_or_insert(mapped);
        if mapped > start + MAPPED_FILES_KB {
            self.blaze = new_blaze(self.lookup.inlined);
        }
    }

    /// Reads the kernel's symbols now rather than at the first kernel stack: parsing
    /// kallsyms takes about 0.1 s of CPU (seconds on an emulated one), better spent before the
    /// recording starts than beside the process being recorded.
    pub fn prepare_kernel(&mut self) {
        let _ = self
            .blaze_kernel
            .symbolize(&kernel_source(), Input::AbsAddr(&[0xffff_ffff_8100_0000]));
    }

    fn snapshot(pid: u32) -> ProcessInfo {
        let root = process_root(pid);
        let maps = read_maps(pid, &root);
        let mut perf_map = PerfMap::default();
        perf_map.refresh(pid);
        ProcessInfo {
            alive: maps.is_some(),
            mappings: maps.unwrap_or_default(),
            perf_map,
            root,
        }
    }

    /// Starts frames and stacks over: from now on they are numbered from the first again and
    /// reported as new (the flight recorder's segments each hold their own). Memory maps stay.
    pub fn forget_ids(&mut self) {
        self.interner = Interner::default();
        self.kernel_frames.clear();
        self.user_frames.clear();
        self.resolved.clear();
    }

    fn cached(&self, r: &RawStack) -> Option<u32> {
        self.resolved
            .get(&r.space)?
            .get(&(r.user, r.kernel))
            .copied()
    }

    /// Resolves a batch of raw stacks to capture stack ids.
    pub fn resolve(&mut self, raws: &[RawStack]) -> Vec<u32> {
        let mut new_kernel: HashSet<i32> = HashSet::new();
        let mut new_user: HashMap<(SpaceId, i32), u32> = HashMap::new();
        for r in raws {
            self.user_ids.used(r.user, r.ts);
            if self.cached(r).is_some() {
                continue;
            }
            if r.kernel >= 0 && !self.kernel_frames.contains_key(&r.kernel) {
                new_kernel.insert(r.kernel);
            }
            let known = self
                .user_frames
                .get(&r.space)
                .is_some_and(|m| m.contains_key(&r.user));
            if r.user >= 0 && !known {
                new_user.entry((r.space, r.user)).or_insert(r.pid);
            }
        }
        // User frames first: their process may exit at any moment, taking its memory map and
        // perf map along, while kallsyms stays. The first kernel lookup parses kallsyms, which
        // took seconds on an emulated CPU: enough for a short-lived target to be gone.
        let moved = self.resolve_user(new_user);
        self.resolve_kernel(new_kernel);
        raws.iter()
            .map(|r| {
                let r = RawStack {
                    space: moved.get(&(r.pid, r.space)).copied().unwrap_or(r.space),
                    ..*r
                };
                if let Some(id) = self.cached(&r) {
                    return id;
                }
                let mut frames = Vec::new();
                self.push_part(&mut frames, r.user, false, |s| {
                    s.user_frames
                        .get(&r.space)
                        .and_then(|m| m.get(&r.user))
                        .map(|f| &f.0)
                });
                self.push_part(&mut frames, r.kernel, true, |s| {
                    s.kernel_frames.get(&r.kernel)
                });
                let id = self.interner.stack(frames);
                self.resolved
                    .entry(r.space)
                    .or_default()
                    .insert((r.user, r.kernel), id);
                id
            })
            .collect()
    }

    /// How the user stack of `r` was walked, if bar's programs walked it.
    pub fn unwind_facts(&self, r: &RawStack) -> Option<u32> {
        self.user_frames.get(&r.space)?.get(&r.user)?.1
    }

    fn push_part(
        &mut self,
        frames: &mut Vec<u32>,
        id: i32,
        kernel: bool,
        get: impl Fn(&Self) -> Option<&Vec<u32>>,
    ) {
        if id >= 0 {
            if let Some(f) = get(self) {
                frames.extend_from_slice(f);
            }
            return;
        }
        // A stack that exists but could not be stored is shown, never silently dropped.
        if -id == EEXIST || -id == ENOMEM {
            self.stats.stacks_lost += 1;
            let why = if -id == EEXIST {
                "collision"
            } else {
                "map full"
            };
            let name = format!(
                "[{} stack lost: {why}]",
                if kernel { "kernel" } else { "user" }
            );
            frames.push(self.interner.frame(kernel, name, String::new()));
        } else if -id != EFAULT {
            let name = format!(
                "[{} stack error {}]",
                if kernel { "kernel" } else { "user" },
                -id
            );
            frames.push(self.interner.frame(kernel, name, String::new()));
        }
    }

    /// Addresses of a stack id, root first, with return addresses moved back into the call
    /// instruction (all but the leaf), as perf does.
    fn read_stack(&self, id: i32) -> Vec<u64> {
        self.read_walked(id).0
    }

    /// [`Self::read_stack`], and the facts of the walk when bar's programs walked it.
    fn read_walked(&self, id: i32) -> (Vec<u64>, Option<u32>) {
        let id = id as u32;
        let mut facts = None;
        let ips: Vec<u64> = if id & USER_STACK_KEY != 0 {
            match self.user_stacks.get(&id, 0) {
                Ok(s) => {
                    facts = Some(s.unwind);
                    s.ips.iter().take(s.nr as usize).copied().collect()
                }
                Err(_) => return (Vec::new(), None),
            }
        } else {
            match self.stacks.get(&id, 0) {
                Ok(trace) => trace.frames().iter().map(|f| f.ip).collect(),
                Err(_) => return (Vec::new(), None),
            }
        };
        let mut addrs: Vec<u64> = ips
            .iter()
            .enumerate()
            .map(|(i, &ip)| if i == 0 { ip } else { ip.saturating_sub(1) })
            .collect();
        addrs.reverse();
        (addrs, facts)
    }

    fn resolve_kernel(&mut self, ids: HashSet<i32>) {
        if ids.is_empty() {
            return;
        }
        let stacks: Vec<(i32, Vec<u64>)> = ids
            .into_iter()
            .map(|id| (id, self.read_stack(id)))
            .collect();
        let mut all: Vec<u64> = stacks.iter().flat_map(|(_, a)| a.iter().copied()).collect();
        all.sort_unstable();
        all.dedup();
        let src = kernel_source();
        let modules = module_code_ranges();
        let names: HashMap<u64, (String, String)> =
            match self.blaze_kernel.symbolize(&src, Input::AbsAddr(&all)) {
                Ok(syms) => all
                    .iter()
                    .zip(syms)
                    .map(|(&a, s)| {
                        let named = match s {
                            _ if modules.as_deref().is_some_and(|m| is_bpf_code(a, m)) => {
                                (format!("{BPF_CODE} 0x{a:x}]"), String::new())
                            }
                            Symbolized::Sym(sym) => {
                                let module = sym
                                    .module
                                    .as_ref()
                                    .map(|m| m.to_string_lossy().into_owned())
                                    .unwrap_or_default();
                                (sym.name.into_owned(), module)
                            }
                            Symbolized::Unknown(_) => (format!("[unknown 0x{a:x}]"), String::new()),
                        };
                        (a, named)
                    })
                    .collect(),
                Err(_) => HashMap::new(),
            };
        for (id, addrs) in stacks {
            let mut named: Vec<(String, String)> = addrs
                .iter()
                .map(|a| {
                    names
                        .get(a)
                        .cloned()
                        .unwrap_or_else(|| (format!("[unknown 0x{a:x}]"), String::new()))
                })
                .collect();
            // The leaf end of a stack taken inside a tracing program is the tracing machinery
            // (bpf_trace_run, perf_trace_*, the JITed program, which kallsyms may even name
            // after an unrelated symbol): it is bar, not the target. Cut at the outermost
            // machinery frame among the last few.
            let tail = named.len().saturating_sub(8);
            if let Some(cut) = named[tail..].iter().position(|(n, _)| is_tracing_frame(n)) {
                named.truncate(tail + cut);
            }
            let frames = named
                .into_iter()
                .map(|(name, module)| {
                    if name.starts_with("[unknown") {
                        self.stats.frames_unresolved += 1;
                    }
                    let module = if module.is_empty() {
                        "[kernel.kallsyms]".to_owned()
                    } else {
                        module
                    };
                    self.interner.frame(true, name, module)
                })
                .collect();
            self.kernel_frames.insert(id, frames);
        }
    }

    fn resolve_user(
        &mut self,
        keys: HashMap<(SpaceId, i32), u32>,
    ) -> HashMap<(u32, SpaceId), SpaceId> {
        if keys.is_empty() {
            return HashMap::new();
        }
        let mut facts: HashMap<i32, u32> = HashMap::new();
        let mut stacks: Vec<((SpaceId, i32), u32, Vec<u64>)> = keys
            .into_iter()
            .map(|(k, pid)| {
                let (addrs, walk) = self.read_walked(k.1);
                if let Some(f) = walk {
                    facts.insert(k.1, f);
                }
                (k, pid, addrs)
            })
            .collect();
        let moved = self.cover(&mut stacks);
        let mut by_space: HashMap<SpaceId, Vec<u64>> = HashMap::new();
        for ((space, _), _, addrs) in &stacks {
            by_space.entry(*space).or_default().extend(addrs);
        }
        // Map every address to (object, file offset) and group by object for batch lookup.
        let mut places: HashMap<(SpaceId, u64), Place> = HashMap::new();
        let mut per_object: HashMap<PathBuf, Vec<u64>> = HashMap::new();
        for (&space, addrs) in &by_space {
            let sp = self.spaces.get(space);
            for &a in addrs {
                if places.contains_key(&(space, a)) {
                    continue;
                }
                let place = sp.map_or(Place::Unknown(UNKNOWN_USER.to_owned()), |sp| {
                    locate(&sp.info, sp.owner, a)
                });
                if let Place::File(path, off, _) = &place {
                    per_object.entry(path.clone()).or_default().push(*off);
                }
                places.insert((space, a), place);
            }
        }
        let names = names::name_offsets(&self.blaze, per_object, self.lookup);
        for ((space, id), _, mut addrs) in stacks {
            let owner = self.spaces.get(space).map_or(0, |sp| sp.owner);
            let mut facts = facts.get(&id).copied();
            // No garbage frames: a return address in no executable mapping (a frame pointer
            // walk that went astray in code that uses rbp for data) ends the stack there, and
            // everything past it, derived from it, goes too.
            if let Some(cut) = addrs
                .iter()
                .rposition(|a| matches!(places.get(&(space, *a)), Some(Place::Outside)))
                .filter(|&i| i + 1 < addrs.len())
            {
                addrs.drain(..=cut);
                facts = Some(unwind::with_reason(
                    facts.unwrap_or(0),
                    unwind::stop::OUTSIDE,
                ));
            }
            let mut frames: Vec<u32> = Vec::with_capacity(addrs.len() + 1);
            if let Some(f) = facts {
                let reason = unwind::unpack_facts(f).3;
                if reason != unwind::stop::COMPLETE {
                    let name = format!("[truncated: {}]", unwind::stop::name(reason));
                    frames.push(self.interner.frame(false, name, String::new()));
                }
            }
            for a in &addrs {
                let (name, module) = match places.get(&(space, *a)) {
                    Some(Place::File(path, off, module)) => {
                        match names.get(&(path.clone(), *off)) {
                            // The function, then what was inlined into it there, innermost
                            // last, as if each had called the next.
                            Some(n) => {
                                let called = n.name.clone();
                                frames.push(self.interner.frame(false, called, module.clone()));
                                for f in &n.inlined {
                                    let inlined =
                                        self.interner.inlined_frame(f.clone(), module.clone());
                                    frames.push(inlined);
                                }
                                continue;
                            }
                            None => {
                                self.stats.frames_unresolved += 1;
                                let base = Path::new(module).file_name().map_or_else(
                                    || module.clone(),
                                    |b| b.to_string_lossy().into_owned(),
                                );
                                (format!("[{base}+0x{off:x}]"), module.clone())
                            }
                        }
                    }
                    Some(Place::Jit(n)) => (n.clone(), format!("[perf-{owner}.map]")),
                    Some(Place::Unknown(n)) => {
                        self.stats.frames_unresolved += 1;
                        (n.clone(), String::new())
                    }
                    // The leaf, which is kept: code being run, though in no mapping bar
                    // read.
                    Some(Place::Outside) | None => (UNKNOWN_USER.to_owned(), String::new()),
                };
                frames.push(self.interner.frame(false, name, module));
            }
            self.user_frames
                .entry(space)
                .or_default()
                .insert(id, (frames, facts));
        }
        moved
    }
}
