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
mod spaces;

pub use self::spaces::{ExecMaps, SpaceId};

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap as BpfHashMap, MapData, StackTraceMap};
use bar_ebpf_common::{USER_STACK_KEY, UserStack, unwind};
use blazesym::{
    MaybeDefault,
    symbolize::{
        Input, Symbolized, Symbolizer as Blaze,
        source::{Elf, Kernel, Source},
    },
};

use self::{evict::UserIds, spaces::Spaces};
use crate::capture::proto;

/// For the lookups made once per event: SipHash, the default, took a sixth of the collector's
/// time at 300k events/s.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// errno values bpf_get_stackid returns.
/// A stack that is not there to walk (see `bar_ebpf_common::NO_STACK`): no frames, no error.
const EFAULT: i32 = -bar_ebpf_common::NO_STACK;
const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;

/// Kernel functions that run a tracing program; they end every stack a program captures.
fn is_tracing_frame(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__bpf_prog_run",
        "bpf_get_stack",
        "perf_trace_",
        "perf_tp_event",
        "trace_call_bpf",
        "__traceiter_",
        "bpf_trampoline_",
    ];
    name.starts_with(BPF_CODE) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Name given to code in module space that no module owns: JITed BPF programs and
/// trampolines, which kallsyms lists only when `net.core.bpf_jit_kallsyms` is on, so that
/// blazesym would name them after whatever symbol precedes them.
const BPF_CODE: &str = "[bpf";

/// Resident memory of files bar-probe maps (its own code, its perf buffers, the objects
/// blazesym reads), in KiB.
fn mapped_files_kb() -> Option<u64> {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    })
}

/// blazesym as bar uses it: function names only.
fn new_blaze() -> Blaze {
    Blaze::builder()
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .build()
}

/// Kernel symbols from kallsyms (vmlinux with DWARF is rarely installed, and slow to parse).
fn kernel_source() -> Source<'static> {
    Source::Kernel(Kernel {
        vmlinux: MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    })
}

/// Code ranges of loaded modules, when the kernel shows them; `None` when module space cannot
/// be told apart (not x86-64, or addresses hidden from us).
fn module_code_ranges() -> Option<Vec<(u64, u64)>> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    // A kernel without module support has no /proc/modules: all of module space is BPF's.
    let Ok(text) = fs::read_to_string("/proc/modules") else {
        return Some(Vec::new());
    };
    text.lines()
        .map(|l| {
            // name size refcount deps state address
            let f: Vec<&str> = l.split_whitespace().collect();
            let size = f.get(1)?.parse::<u64>().ok()?;
            let base = u64::from_str_radix(f.get(5)?.trim_start_matches("0x"), 16).ok()?;
            (base != 0).then_some((base, base + size))
        })
        .collect()
}

/// Whether kernel address `a` is code of no module, in the space x86-64 kernels give modules
/// and JITed BPF (above the 1 GiB kernel image).
fn is_bpf_code(a: u64, modules: &[(u64, u64)]) -> bool {
    const MODULE_SPACE: u64 = 0xffff_ffff_c000_0000;
    a >= MODULE_SPACE && !modules.iter().any(|&(s, e)| s <= a && a < e)
}

/// One line of /proc/PID/maps that maps a file or is anonymous executable memory.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    /// Path as the process sees it; empty for anonymous memory, `[vdso]` etc. for specials.
    path: String,
    /// The path does not lead bar to the mapped file (another mount namespace that bar's
    /// view of the process's root does not show): read it through `/proc/PID/map_files`.
    hidden: bool,
}

/// What the symbolizer knows about one process.
#[derive(Debug, Default)]
struct ProcessInfo {
    mappings: Vec<Mapping>,
    /// Prefix under which this process's paths are visible to us (`/proc/PID/root` for a
    /// process in another mount namespace, empty otherwise).
    root: String,
    alive: bool,
    perf_map: PerfMap,
}

/// A JIT's `/tmp/perf-PID.map`: (start, end, name) sorted by start, and the stamp of the file
/// it was read from, so that it is read again only when the JIT has added to it.
#[derive(Debug, Default)]
struct PerfMap {
    entries: Vec<(u64, u64, String)>,
    stamp: Option<crate::sys::foreign::Stamp>,
    /// A map that was refused is said once per process.
    warned: bool,
}

/// The largest perf map read: a JIT with a hundred thousand functions writes about 10 MiB.
pub const MAX_PERF_MAP: u64 = 64 << 20;

impl PerfMap {
    /// Reads the map again if the file changed since it was last read. A JIT writes its map as
    /// it generates code, possibly after bar first looked at the process. The file belongs to
    /// whoever can write in the process's `/tmp`, so it is read as perf reads it: in the
    /// process's mount namespace, only a regular file owned by the process's user or root,
    /// not through a link, without blocking, and no larger than [`MAX_PERF_MAP`]; otherwise
    /// its JIT frames stay unnamed, with one warning.
    fn refresh(&mut self, pid: u32) {
        use crate::sys::foreign::{ForeignError, read_foreign};
        let Some((uid, nspid)) = perf_map_ids(pid) else {
            return;
        };
        // The JIT names the file with its pid as it sees it (in its own pid namespace).
        let path = format!("/tmp/perf-{nspid}.map");
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let text = match read_foreign(&root, &path, &[uid, 0], MAX_PERF_MAP, self.stamp) {
            Ok(Some((data, stamp))) => {
                self.stamp = Some(stamp);
                data
            }
            Ok(None) | Err(ForeignError::Missing(_)) => return,
            Err(e) => {
                if !std::mem::replace(&mut self.warned, true) {
                    eprintln!("bar-probe: warning: {e}; JIT frames of pid {pid} stay unnamed");
                }
                return;
            }
        };
        self.entries = String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let start = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
                Some((start, start.checked_add(size)?, it.next()?.to_owned()))
            })
            .collect();
        self.entries.sort_by_key(|e| e.0);
    }

    fn lookup(&self, a: u64) -> Option<&str> {
        let idx = self.entries.partition_point(|e| e.0 <= a);
        (idx > 0 && a < self.entries[idx - 1].1).then(|| self.entries[idx - 1].2.as_str())
    }
}

/// The effective uid of a process and its pid in its own pid namespace, from its status.
fn perf_map_ids(pid: u32) -> Option<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    };
    let uid = field("Uid:")?.get(1)?.parse().ok()?;
    // NSpid lists the pid in each namespace from ours inwards; old kernels lack it.
    let nspid = field("NSpid:")
        .and_then(|v| v.last()?.parse().ok())
        .unwrap_or(pid);
    Some((uid, nspid))
}

/// The executable mappings of `pid`, whose files bar sees under `root` (see [`process_root`]).
fn read_maps(pid: u32, root: &str) -> Option<Vec<Mapping>> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !perms.contains('x') {
            continue;
        }
        let dev = parts.next().and_then(crate::unwind::proc_maps::dev_of);
        let inode = parts.next().and_then(|i| i.parse::<u64>().ok());
        let path = parts.collect::<Vec<_>>().join(" ");
        // A file whose path leads elsewhere, or nowhere (not deleted: those say so).
        let hidden = path.starts_with('/')
            && !path.ends_with(" (deleted)")
            && fs::metadata(format!("{root}{path}"))
                .map_or(true, |m| Some(m.dev()) != dev || Some(m.ino()) != inode);
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        out.push(Mapping {
            start,
            end,
            offset,
            path,
            hidden,
        });
    }
    // A process that has exited but not been reaped (a zombie) still has a maps file, and it
    // is empty: that is not a snapshot to replace a good one with. A live process always has
    // executable mappings.
    if out.is_empty() {
        return None;
    }
    Some(out)
}

/// `/proc/PID/root` when the process lives in another mount namespace than ours.
fn process_root(pid: u32) -> String {
    let theirs = fs::metadata(format!("/proc/{pid}/root"));
    let ours = fs::metadata("/");
    match (theirs, ours) {
        (Ok(t), Ok(o)) if t.dev() != o.dev() || t.ino() != o.ino() => format!("/proc/{pid}/root"),
        _ => String::new(),
    }
}

/// Reads a process's name (`comm`).
pub fn process_comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
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

/// Interns frames and stacks and remembers which are new since the last `take_new`.
#[derive(Default)]
pub struct Interner {
    frame_ids: HashMap<(bool, String, String), u32>,
    stack_ids: HashMap<Vec<u32>, u32>,
    new_frames: Vec<proto::Frame>,
    new_stacks: Vec<proto::Stack>,
}

impl Interner {
    pub fn frame(&mut self, kernel: bool, name: String, module: String) -> u32 {
        let (name, module) = (
            crate::capture::bounded_name(name),
            crate::capture::bounded_name(module),
        );
        let next = self.frame_ids.len() as u32;
        *self
            .frame_ids
            .entry((kernel, name.clone(), module.clone()))
            .or_insert_with(|| {
                self.new_frames.push(proto::Frame {
                    name,
                    module,
                    kernel,
                });
                next
            })
    }

    /// Stack id as stored in events: position + 1 (0 is "no stack").
    pub fn stack(&mut self, frames: Vec<u32>) -> u32 {
        if frames.is_empty() {
            return 0;
        }
        let next = self.stack_ids.len() as u32 + 1;
        *self.stack_ids.entry(frames.clone()).or_insert_with(|| {
            self.new_stacks.push(proto::Stack { frames });
            next
        })
    }

    /// Frames and stacks interned since the last call, to be written before the events that
    /// use them.
    pub fn take_new(&mut self) -> (Vec<proto::Frame>, Vec<proto::Stack>) {
        (
            std::mem::take(&mut self.new_frames),
            std::mem::take(&mut self.new_stacks),
        )
    }
}

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
    /// files): for one process, not for a whole host (see [`Symbolizer::new`]).
    dwarf: bool,
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
    ) -> Self {
        Self {
            blaze: new_blaze(),
            blaze_kernel: new_blaze(),
            dwarf,
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
            self.blaze = new_blaze();
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
        let mut names: HashMap<(PathBuf, u64), String> = HashMap::new();
        for (path, mut offs) in per_object {
            offs.sort_unstable();
            offs.dedup();
            // The ELF symbol table first: it names nearly every function, and parsing DWARF
            // for the rest costs far more (about 50 ms of CPU for bar-probe's own binary,
            // spent while the target runs). DWARF, and debug files found by debug link, only
            // for what the table does not name.
            for debug_syms in [false, true] {
                if offs.is_empty() || (debug_syms && !self.dwarf) {
                    break;
                }
                let mut elf = Elf::new(&path);
                elf.debug_syms = debug_syms;
                let Ok(syms) = self
                    .blaze
                    .symbolize(&Source::Elf(elf), Input::FileOffset(&offs))
                else {
                    continue;
                };
                let mut unnamed = Vec::new();
                for (off, s) in offs.iter().zip(syms) {
                    match s {
                        Symbolized::Sym(sym) => {
                            names.insert((path.clone(), *off), sym.name.into_owned());
                        }
                        Symbolized::Unknown(_) => unnamed.push(*off),
                    }
                }
                offs = unnamed;
            }
        }
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
            frames.extend(addrs.iter().map(|a| {
                let (name, module) = match places.get(&(space, *a)) {
                    Some(Place::File(path, off, module)) => {
                        match names.get(&(path.clone(), *off)) {
                            Some(n) => (n.clone(), module.clone()),
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
                self.interner.frame(false, name, module)
            }));
            self.user_frames
                .entry(space)
                .or_default()
                .insert(id, (frames, facts));
        }
        moved
    }
}

/// What a user address is: in a file (path to open, file offset, path to show), JIT code named
/// in the perf map, nothing bar can name, or in no executable mapping of a process whose map
/// bar has.
enum Place {
    File(PathBuf, u64, String),
    Jit(String),
    Unknown(String),
    Outside,
}

/// Where user address `a` of a process whose map is `info` (read from process `pid`) is.
fn locate(info: &ProcessInfo, pid: u32, a: u64) -> Place {
    let mapped = info.mappings.iter().find(|m| m.start <= a && a < m.end);
    if let Some(m) = mapped {
        let file_offset = a - m.start + m.offset;
        if m.path.starts_with('/') {
            let (path, deleted) = match m.path.strip_suffix(" (deleted)") {
                Some(p) => (p, true),
                None => (m.path.as_str(), false),
            };
            let open = if (deleted || m.hidden) && info.alive {
                PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end))
            } else {
                PathBuf::from(format!("{}{path}", info.root))
            };
            return Place::File(open, file_offset, path.to_owned());
        }
        if !m.path.is_empty() && m.path != "[anon]" && !m.path.starts_with("[anon:") {
            return Place::Unknown(format!(
                "[{}+0x{:x}]",
                m.path.trim_matches(['[', ']']),
                a - m.start
            ));
        }
    }
    if let Some(name) = info.perf_map.lookup(a) {
        return Place::Jit(name.to_owned());
    }
    if mapped.is_none() && !info.mappings.is_empty() {
        return Place::Outside;
    }
    Place::Unknown(UNKNOWN_USER.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_dedups_and_reports_new_once() {
        let mut i = Interner::default();
        let a = i.frame(false, "main".into(), "/bin/x".into());
        let b = i.frame(true, "schedule".into(), "[kernel.kallsyms]".into());
        assert_eq!(i.frame(false, "main".into(), "/bin/x".into()), a);
        assert_ne!(a, b);
        let s1 = i.stack(vec![a, b]);
        assert_eq!(i.stack(vec![a, b]), s1);
        assert_eq!(s1, 1);
        assert_eq!(i.stack(vec![]), 0);
        let (frames, stacks) = i.take_new();
        assert_eq!(frames.len(), 2);
        assert_eq!(stacks.len(), 1);
        assert_eq!(i.take_new().0.len(), 0);
    }

    #[test]
    fn code_in_module_space_outside_modules_is_bpf() {
        let ext4 = (0xffff_ffff_c010_0000, 0xffff_ffff_c020_0000);
        assert!(is_bpf_code(0xffff_ffff_c000_1000, &[ext4]));
        assert!(!is_bpf_code(0xffff_ffff_c010_1000, &[ext4]));
        // The kernel image, below module space.
        assert!(!is_bpf_code(0xffff_ffff_8100_0000, &[]));
    }

    #[test]
    fn reads_own_maps_and_symbolizes_own_function() {
        let pid = std::process::id();
        let maps = read_maps(pid, "").unwrap();
        assert!(maps.iter().any(|m| {
            m.path.ends_with(
                std::env::current_exe()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap(),
            )
        }));
    }
}
