//! The loader: keeps the kernel's tables in step with the traced processes. A process's
//! executable mappings are read when it is first seen, again when a walk meets code outside
//! them (dlopen, JIT code) and after it execs; each mapped object's table is built once (or
//! found by file identity or build id) and shared; entries of processes that exit are removed.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    time::Instant,
};

use bar_ebpf_common::unwind::{MappingKey, NO_OBJECT, UnwindMapping};

use super::{
    TableError, compact,
    elf::{self, ObjectInfo},
    kernel::Kernel,
    objects::{ObjectKey, Objects, TableStats},
    proc_maps::{self, Backing, ExecMapping},
};

/// Tables of more rows than this give back the memory their building took once they are in the
/// kernel.
const LARGE_TABLE_ROWS: usize = 100_000;

/// One executable mapping of a loaded process, as the kernel has it.
#[derive(Debug)]
struct Loaded {
    mapping: ExecMapping,
    object: Option<u32>,
    keys: Vec<(u32, MappingKey)>,
}

#[derive(Debug)]
struct Process {
    generation: u32,
    start_time: Option<u64>,
    mappings: Vec<Loaded>,
}

/// What the loader did, for the summary (with [`TableStats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoaderStats {
    pub tables: TableStats,
    pub processes: u64,
    /// Requests of the kernel to read a process's map again (a walk met unknown code).
    pub misses: u64,
    /// Processes that were gone before their tables were loaded.
    pub gone: u64,
}

/// A table built before the kernel's maps existed (to size them).
pub struct Prebuilt {
    tables: HashMap<ObjectKey, Result<Built, String>>,
}

struct Built {
    info: ObjectInfo,
    table: compact::Compact,
    ms: u64,
}

impl Prebuilt {
    /// Rows the tables built so far take.
    pub fn rows(&self) -> u64 {
        self.tables
            .values()
            .filter_map(|b| b.as_ref().ok())
            .map(|b| b.table.rows.len() as u64)
            .sum()
    }
}

/// Opens the file mapped at `m` in process `pid` the way the process sees it: through
/// `/proc/PID/map_files` (the very file, even if deleted, replaced or in another mount
/// namespace), else its path under `/proc/PID/root`.
fn open_mapped(pid: u32, m: &ExecMapping, path: &str) -> std::io::Result<File> {
    let open = |p: &str| {
        File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(p)
    };
    open(&format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)).or_else(|e| {
        let plain = path.strip_suffix(" (deleted)").unwrap_or(path);
        if plain.len() == path.len() {
            open(&format!("/proc/{pid}/root{plain}"))
        } else {
            Err(e)
        }
    })
}

/// Builds the table of bar's own vDSO, if it is `len` bytes long (as the target's is).
fn own_vdso(len: u64) -> Result<Built, TableError> {
    let t = Instant::now();
    // SAFETY: no preconditions.
    let at = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    let own = proc_maps::read(std::process::id()).map_err(TableError::Io)?;
    let Some(m) = own
        .iter()
        .find(|m| m.backing == Backing::Vdso && m.start == at && m.end - m.start == len)
    else {
        return Err(TableError::NotElf("not the vDSO bar has".into()));
    };
    // SAFETY: the vDSO stays mapped, readable, at these addresses for the life of the process.
    let data = unsafe { std::slice::from_raw_parts(m.start as *const u8, len as usize) };
    let (info, rows) = elf::parse_bytes(data)?;
    let table = compact::compact(rows)?;
    Ok(Built {
        info,
        table,
        ms: t.elapsed().as_millis() as u64,
    })
}

/// Builds the table of an open object file.
fn build(file: File) -> Result<Built, TableError> {
    let t = Instant::now();
    let (info, rows) = elf::read(file)?;
    let table = compact::compact(rows)?;
    Ok(Built {
        info,
        table,
        ms: t.elapsed().as_millis() as u64,
    })
}

fn key_of(file: &File) -> std::io::Result<ObjectKey> {
    let m = file.metadata()?;
    Ok(ObjectKey {
        dev: m.dev(),
        inode: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

/// Builds the tables of process `pid`'s objects before the kernel's maps exist.
pub fn prebuild(pid: u32) -> Prebuilt {
    let mut tables = HashMap::new();
    for m in proc_maps::read(pid).unwrap_or_default() {
        let Backing::File { path, .. } = &m.backing else {
            continue;
        };
        let Ok(file) = open_mapped(pid, &m, path) else {
            continue;
        };
        let Ok(key) = key_of(&file) else {
            continue;
        };
        tables
            .entry(key)
            .or_insert_with(|| build(file).map_err(|e| e.to_string()));
    }
    Prebuilt { tables }
}

pub struct Loader<K: Kernel> {
    kernel: K,
    objects: Objects,
    /// Files that got no table, so that they are tried (and reported) once.
    failed: HashMap<ObjectKey, ()>,
    prebuilt: HashMap<ObjectKey, Result<Built, String>>,
    processes: HashMap<u32, Process>,
    next_generation: u32,
    pub stats: LoaderStats,
    /// Warnings go to stderr (not in tests).
    pub warn: bool,
}

impl<K: Kernel> Loader<K> {
    pub fn new(kernel: K, capacity: u32, prebuilt: Option<Prebuilt>) -> Self {
        Self {
            kernel,
            objects: Objects::new(capacity),
            failed: HashMap::new(),
            prebuilt: prebuilt.map(|p| p.tables).unwrap_or_default(),
            processes: HashMap::new(),
            next_generation: 1,
            stats: LoaderStats::default(),
            warn: true,
        }
    }

    pub fn knows(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Loads the tables and mappings of a process seen for the first time.
    pub fn load(&mut self, pid: u32) -> Result<(), String> {
        if self.processes.contains_key(&pid) {
            return Ok(());
        }
        let maps = match proc_maps::read(pid) {
            Ok(m) => m,
            Err(e) => {
                self.stats.gone += 1;
                return Err(format!("cannot read the memory map of process {pid}: {e}"));
            }
        };
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let mut process = Process {
            generation,
            start_time: proc_maps::start_time(pid),
            mappings: Vec::new(),
        };
        for m in maps {
            let loaded = self.load_mapping(pid, generation, m);
            process.mappings.push(loaded);
        }
        self.kernel.set_process(pid, generation);
        self.processes.insert(pid, process);
        self.stats.processes += 1;
        Ok(())
    }

    /// Reads the map of a known process again and brings its entries in line (a walk met
    /// code outside them).
    pub fn refresh(&mut self, pid: u32) {
        self.stats.misses += 1;
        let Some(mut process) = self.processes.remove(&pid) else {
            let _ = self.load(pid);
            return;
        };
        let Ok(maps) = proc_maps::read(pid) else {
            self.forget_loaded(pid, process);
            return;
        };
        if !process.mappings.iter().all(|l| maps.contains(&l.mapping)) {
            // A mapping went away (dlclose, munmap): the rules the programs keep for its
            // addresses must not outlive it, so the process starts over under a new
            // generation. The new one is loaded before the old is let go: the objects still
            // mapped (libc) stay held, so their tables never leave the kernel, and only the
            // entries the new generation did not write over are removed. Forgetting first
            // left a moment without libc's table on every reload, and the walk met libc by
            // frame pointer in a third of one test's samples.
            if self.load(pid).is_err() {
                self.forget_loaded(pid, process);
                return;
            }
            // The same process, not another.
            self.stats.processes -= 1;
            let current: Vec<(u32, MappingKey)> = self.processes[&pid]
                .mappings
                .iter()
                .flat_map(|l| l.keys.iter().copied())
                .collect();
            for mut old in process.mappings {
                old.keys.retain(|k| !current.contains(k));
                self.drop_loaded(old);
            }
            return;
        }
        for m in maps {
            if !process.mappings.iter().any(|l| l.mapping == m) {
                let loaded = self.load_mapping(pid, process.generation, m);
                process.mappings.push(loaded);
            }
        }
        self.processes.insert(pid, process);
    }

    /// The process replaced its program: the kernel already stopped using its entries.
    pub fn exec(&mut self, pid: u32) {
        if let Some(p) = self.processes.remove(&pid) {
            self.forget_loaded(pid, p);
        }
        let _ = self.load(pid);
    }

    /// The process ended: its entries go.
    pub fn exited(&mut self, pid: u32) {
        if let Some(p) = self.processes.remove(&pid) {
            self.forget_loaded(pid, p);
        }
    }

    /// Removes the entries of processes that have exited (or whose pid is another process's
    /// now).
    pub fn sweep(&mut self) {
        let gone: Vec<u32> = self
            .processes
            .iter()
            .filter(|(pid, p)| proc_maps::start_time(**pid) != p.start_time)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            if let Some(p) = self.processes.remove(&pid) {
                self.forget_loaded(pid, p);
            }
        }
    }

    /// Processes that had events just now: their objects are the last to be evicted.
    pub fn touch(&mut self, pids: &[u32]) {
        for pid in pids {
            if let Some(p) = self.processes.get(pid) {
                for id in p.mappings.iter().filter_map(|l| l.object) {
                    self.objects.touch(id);
                }
            }
        }
    }

    pub fn rows_used(&self) -> u64 {
        self.objects.rows_used()
    }

    fn forget_loaded(&mut self, pid: u32, p: Process) {
        self.kernel.remove_process(pid);
        for l in p.mappings {
            self.drop_loaded(l);
        }
    }

    fn drop_loaded(&mut self, l: Loaded) {
        self.kernel.remove_keys(&l.keys);
        if let Some(id) = l.object {
            self.objects.release(id);
        }
    }

    fn load_mapping(&mut self, pid: u32, generation: u32, m: ExecMapping) -> Loaded {
        let (object, bias) = match &m.backing {
            Backing::File { path, .. } => {
                let path = path.clone();
                self.object_for(pid, &m, &path)
                    .map_or((None, 0), |(id, bias)| (Some(id), bias))
            }
            Backing::Vdso => self
                .vdso_object(&m)
                .map_or((None, 0), |(id, bias)| (Some(id), bias)),
            // JIT code: walked by frame pointer, but known to be code.
            Backing::Other => (None, 0),
        };
        if let Some(id) = object {
            self.objects.hold(id);
        }
        let keys = self.kernel.add_mapping(
            pid,
            UnwindMapping {
                start: m.start,
                end: m.end,
                bias,
                object: object.unwrap_or(NO_OBJECT),
                generation,
            },
        );
        Loaded {
            mapping: m,
            object,
            keys,
        }
    }

    /// The object mapped at `m` and the bias of the mapping (an address minus the bias is the
    /// table's offset), building its table if it is new.
    fn object_for(&mut self, pid: u32, m: &ExecMapping, path: &str) -> Option<(u32, u64)> {
        let file = open_mapped(pid, m, path).ok()?;
        let key = key_of(&file).ok()?;
        if self.failed.contains_key(&key) {
            return None;
        }
        let id = match self.objects.find(&key, None) {
            Some(id) => id,
            None => self.add_object(key, file, path)?,
        };
        let o = self.objects.get(id)?;
        o.placed?;
        let vaddr = o.info.vaddr_of_offset(m.offset)?;
        Some((id, m.start.wrapping_sub(vaddr).wrapping_add(o.base)))
    }

    /// The vDSO's object and the mapping's bias. The kernel maps the same image into every
    /// 64-bit process, so bar's own copy (read from its memory) serves all of them.
    fn vdso_object(&mut self, m: &ExecMapping) -> Option<(u32, u64)> {
        let len = m.end - m.start;
        let key = ObjectKey {
            dev: 0,
            inode: 0,
            size: len,
            mtime_ns: -1,
        };
        if self.failed.contains_key(&key) {
            return None;
        }
        let id = match self.objects.find(&key, None) {
            Some(id) => id,
            None => {
                let built = own_vdso(len).map_err(|e| e.to_string());
                self.add_built(key, "[vdso]", built)?
            }
        };
        let o = self.objects.get(id)?;
        o.placed?;
        let vaddr = o.info.vaddr_of_offset(m.offset)?;
        Some((id, m.start.wrapping_sub(vaddr).wrapping_add(o.base)))
    }

    fn add_object(&mut self, key: ObjectKey, file: File, path: &str) -> Option<u32> {
        let built = match self.prebuilt.remove(&key) {
            Some(b) => b,
            None => build(file).map_err(|e| e.to_string()),
        };
        self.add_built(key, path, built)
    }

    fn add_built(
        &mut self,
        key: ObjectKey,
        path: &str,
        built: Result<Built, String>,
    ) -> Option<u32> {
        // A large library's table takes tens of megabytes to build (librustc_driver's 1.2
        // million rows about 80 MB) that are free again once its rows are in the kernel.
        let large = built
            .as_ref()
            .is_ok_and(|b| b.table.rows.len() > LARGE_TABLE_ROWS);
        let result = built.and_then(|b| {
            if let Some(id) = self.objects.find(&key, b.info.build_id.as_deref()) {
                return Ok(id);
            }
            if b.info.skipped > 0 {
                self.partial(path, &b.info);
            }
            self.objects
                .add(
                    key,
                    path.to_owned(),
                    b.info,
                    &b.table,
                    b.ms,
                    &mut self.kernel,
                )
                .ok_or_else(|| "the unwind table memory is full".to_owned())
        });
        if large {
            crate::sys::memory::give_back();
        }
        match result {
            Ok(id) => Some(id),
            Err(why) => {
                if self.warn {
                    eprintln!(
                        "bar-probe: warning: {path}: {why}; its frames are walked by frame pointer"
                    );
                }
                self.objects.stats.failed.push((path.to_owned(), why));
                self.failed.insert(key, ());
                None
            }
        }
    }

    /// Says (once per object) that entries of its call frame information were left out.
    fn partial(&mut self, path: &str, info: &ObjectInfo) {
        let why = format!(
            "{} {} of its unwind tables cannot be parsed ({}); the functions they describe are \
             walked by frame pointer",
            info.skipped,
            if info.skipped == 1 {
                "entry"
            } else {
                "entries"
            },
            info.skipped_why.as_deref().unwrap_or("malformed"),
        );
        if self.warn {
            eprintln!("bar-probe: warning: {path}: {why}");
        }
        let stats = &mut self.objects.stats;
        stats.entries_skipped += info.skipped as u64;
        if !stats.partial.iter().any(|(p, _)| p == path) {
            stats.partial.push((path.to_owned(), why));
        }
    }

    /// What the loader did so far.
    pub fn stats(&self) -> LoaderStats {
        LoaderStats {
            tables: self.objects.stats.clone(),
            ..self.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::objects::Sink;
    use bar_ebpf_common::unwind::{UnwindObject, UnwindRow, cfa};

    #[derive(Default)]
    struct FakeKernel {
        rows: Vec<UnwindRow>,
        objects: HashMap<u32, UnwindObject>,
        mappings: Vec<(u32, UnwindMapping)>,
        processes: HashMap<u32, u32>,
    }

    impl Sink for FakeKernel {
        fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) {
            let end = first as usize + rows.len();
            if self.rows.len() < end {
                self.rows.resize(end, UnwindRow::default());
            }
            self.rows[first as usize..end].copy_from_slice(rows);
        }
        fn set_object(&mut self, id: u32, object: UnwindObject) {
            self.objects.insert(id, object);
        }
    }

    impl Kernel for FakeKernel {
        fn add_mapping(&mut self, pid: u32, value: UnwindMapping) -> Vec<(u32, MappingKey)> {
            // As the trie does: a key written again holds the new value.
            let key = bar_ebpf_common::unwind::mapping_key(pid, value.start);
            self.mappings
                .retain(|(p, m)| bar_ebpf_common::unwind::mapping_key(*p, m.start) != key);
            self.mappings.push((pid, value));
            vec![(0, key)]
        }
        fn remove_keys(&mut self, keys: &[(u32, MappingKey)]) {
            self.mappings.retain(|(pid, m)| {
                !keys.contains(&(0, bar_ebpf_common::unwind::mapping_key(*pid, m.start)))
            });
        }
        fn set_process(&mut self, pid: u32, generation: u32) {
            self.processes.insert(pid, generation);
        }
        fn remove_process(&mut self, pid: u32) {
            self.processes.remove(&pid);
        }
    }

    /// The row the kernel would find for `addr` of process `pid`.
    fn kernel_row(k: &FakeKernel, pid: u32, addr: u64) -> Option<UnwindRow> {
        let (_, m) = k
            .mappings
            .iter()
            .find(|(p, m)| *p == pid && m.start <= addr && addr < m.end)?;
        let o = k.objects.get(&m.object)?;
        let target = u32::try_from(addr.checked_sub(m.bias)?).ok()?;
        let rows = &k.rows[o.first as usize..(o.first + o.len) as usize];
        let i = rows.partition_point(|r| r.pc <= target);
        i.checked_sub(1).map(|i| rows[i])
    }

    #[inline(never)]
    fn a_function_of_this_binary(x: u64) -> u64 {
        std::hint::black_box(x).wrapping_mul(3)
    }

    #[test]
    fn loads_own_process_with_the_right_bias() {
        let pid = std::process::id();
        let mut loader = Loader::new(FakeKernel::default(), 1 << 22, Some(prebuild(pid)));
        loader.warn = false;
        loader.load(pid).unwrap();
        let k = &loader.kernel;
        assert_eq!(k.processes.get(&pid), Some(&1));
        // The first instruction of a function: the return address was just pushed.
        let f = a_function_of_this_binary as *const () as u64;
        let row = kernel_row(k, pid, f).expect("a row for a function of this binary");
        assert_eq!((row.cfa(), row.cfa_offset), (cfa::RSP, 8));
        // libc's too, shared by file.
        let getpid = libc::getpid as *const () as u64;
        let row = kernel_row(k, pid, getpid).expect("a row for libc's getpid");
        assert_eq!((row.cfa(), row.cfa_offset), (cfa::RSP, 8));
        let stats = loader.stats();
        assert!(stats.tables.objects >= 3, "{stats:?}");
        // The vDSO, from bar's own copy.
        // SAFETY: no preconditions.
        let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
        assert!(
            k.mappings
                .iter()
                .any(|(_, m)| m.start == vdso && m.object != NO_OBJECT),
            "{:?}",
            k.mappings
        );
        // Reading the map again changes nothing that did not change.
        let before = loader.kernel.mappings.len();
        loader.refresh(pid);
        assert_eq!(loader.kernel.mappings.len(), before);
        // A mapping that went away: the process is loaded again under a new generation,
        // the vanished mapping's entry goes, and libc's table never left.
        let objects = loader.stats().tables.objects;
        let process = loader.processes.get_mut(&pid).unwrap();
        let mut gone = process.mappings[0].mapping.clone();
        gone.start = 0x1000;
        gone.end = 0x2000;
        let value = UnwindMapping {
            start: gone.start,
            end: gone.end,
            ..loader.kernel.mappings[0].1
        };
        let keys = loader.kernel.add_mapping(pid, value);
        loader
            .processes
            .get_mut(&pid)
            .unwrap()
            .mappings
            .push(Loaded {
                mapping: gone,
                object: None,
                keys,
            });
        loader.refresh(pid);
        assert_eq!(loader.kernel.processes.get(&pid), Some(&2));
        assert_eq!(loader.kernel.mappings.len(), before);
        assert!(kernel_row(&loader.kernel, pid, getpid).is_some());
        assert_eq!(loader.stats().tables.objects, objects);
        assert_eq!(loader.stats().processes, stats.processes);
        // A process that exec'd starts over with a new generation.
        loader.exec(pid);
        assert_eq!(loader.kernel.processes.get(&pid), Some(&3));
        assert_eq!(loader.kernel.mappings.len(), before);
        assert_eq!(loader.stats().tables.objects, stats.tables.objects);
    }

    #[test]
    fn a_process_that_is_gone_is_an_error_and_counted() {
        let mut loader = Loader::new(FakeKernel::default(), 1024, None);
        loader.warn = false;
        // Pids are below 2^22.
        assert!(loader.load(u32::MAX - 7).is_err());
        assert_eq!(loader.stats().gone, 1);
    }
}
