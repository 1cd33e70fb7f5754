//! Facts about the machine bar runs on, read before anything is loaded: kernel release, BTF,
//! tracefs, privileges, kprobe support, NUMA nodes, clocks. Nothing here guesses from the
//! kernel version; every answer comes from what the kernel exposes.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;

/// What this machine does not offer bar, or what it refused: one sentence each, as `info`
/// shows them and the probe stage passes them on as reasons.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The bpf() system call refused to create a map.
    #[error("{0}")]
    Bpf(Arc<io::Error>),
    #[error("tracefs is not mounted and only root can mount it")]
    TracefsNotMounted,
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}")]
    TracefsMount(Arc<io::Error>),
    #[error(
        "this kernel has no kprobe support (no kprobe PMU, no kprobe_events; CONFIG_KPROBES \
         is off)"
    )]
    NoKprobes,
    #[error("/proc/kallsyms is not readable: {0}")]
    Kallsyms(Arc<io::Error>),
    #[error("the kernel has no function {0}")]
    NoFunction(String),
    #[error(
        "the kernel has several copies of {name} ({}), a kprobe on one would miss the others",
        .copies.join(", ")
    )]
    SeveralCopies { name: String, copies: Vec<String> },
    #[error("this system has no cgroup v2 hierarchy mounted")]
    NoCgroup2,
    #[error("no cgroup at {}: {error}", .path.display())]
    NoCgroup {
        path: PathBuf,
        error: Arc<io::Error>,
    },
    /// A cgroup path with a NUL byte in it.
    #[error("{0}")]
    CgroupPath(std::ffi::NulError),
    #[error(
        "{} is not a cgroup v2 directory (the v2 hierarchy is mounted at {})",
        .path.display(),
        .mount.display()
    )]
    NotCgroup2 { path: PathBuf, mount: PathBuf },
}

/// Written as its message, as `info --json` always wrote these reasons.
impl Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// `uname -r`.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data, uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates the field.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

pub fn btf_present() -> bool {
    Path::new(BTF_PATH).exists()
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// CPUs that perf buffers and cpu-clock events are opened on.
pub fn online_cpus() -> Vec<u32> {
    aya::util::online_cpus().unwrap_or_else(|_| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n as u32).collect()
    })
}

/// Capabilities the effective set lacks among those bar needs.
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Whether the bpf() syscall lets this process create a map: the cheapest real test of "may
/// I use eBPF here".
pub fn bpf_allowed() -> Result<(), Error> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, ...
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    // SAFETY: a valid attr buffer of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, // BPF_MAP_CREATE
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(Error::Bpf(Arc::new(io::Error::last_os_error())));
    }
    // SAFETY: we own the fd just returned.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Where tracefs is mounted, mounting it at /sys/kernel/tracing when it is not and we may.
pub fn tracefs() -> Result<PathBuf, Error> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(dir.into());
        }
    }
    if !is_root() {
        return Err(Error::TracefsNotMounted);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::TracefsMount(Arc::new(io::Error::last_os_error())));
    }
    Ok("/sys/kernel/tracing".into())
}

/// Why kprobes cannot be used here, if they cannot.
pub fn kprobes_unavailable(tracefs: Option<&Path>) -> Option<Error> {
    if Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        return None;
    }
    if tracefs.is_some_and(|t| t.join("kprobe_events").exists()) {
        return None;
    }
    Some(Error::NoKprobes)
}

/// Text symbols of the running kernel (`/proc/kallsyms`), for kprobe targets.
pub struct KernelSymbols {
    names: std::collections::HashSet<String>,
}

impl KernelSymbols {
    pub fn read() -> Result<Self, Error> {
        let text =
            fs::read_to_string("/proc/kallsyms").map_err(|e| Error::Kallsyms(Arc::new(e)))?;
        Ok(Self::parse(&text))
    }

    /// Parses kallsyms lines: `address type name [module]`.
    fn parse(text: &str) -> Self {
        let names = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                let (_addr, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
                // Functions of the kernel proper and of modules (`t`/`T`).
                matches!(kind, "t" | "T").then(|| name.to_owned())
            })
            .collect();
        Self { names }
    }

    /// The symbol a kprobe on function `name` attaches to: `name` itself, or the compiler's
    /// only clone of it (`name.isra.0`, `name.constprop.0`, ...), which is what a static
    /// function the compiler specialised is called in kallsyms.
    pub fn resolve(&self, name: &str) -> Result<String, Error> {
        if self.names.contains(name) {
            return Ok(name.to_owned());
        }
        let prefix = format!("{name}.");
        let mut clones: Vec<&String> = self
            .names
            .iter()
            // `.cold` parts are split-off code of the function, not entry points.
            .filter(|n| n.starts_with(&prefix) && !n.contains(".cold"))
            .collect();
        clones.sort();
        match clones.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(Error::NoFunction(name.to_owned())),
            many => Err(Error::SeveralCopies {
                name: name.to_owned(),
                copies: many.iter().map(|s| (*s).clone()).collect(),
            }),
        }
    }
}

/// Node ids the kernel may use (`/sys/devices/system/node/possible`, e.g. `0-1`): one past the
/// highest.
pub fn possible_node_ids() -> u32 {
    fs::read_to_string("/sys/devices/system/node/possible")
        .ok()
        .and_then(|s| {
            s.trim()
                .split(',')
                .filter_map(|r| r.rsplit('-').next()?.parse::<u32>().ok())
                .max()
        })
        .map_or(1, |n| n + 1)
}

/// NUMA nodes with memory or CPUs.
pub fn numa_nodes() -> Vec<u32> {
    let mut nodes: Vec<u32> = fs::read_dir("/sys/devices/system/node")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    nodes.sort_unstable();
    if nodes.is_empty() {
        nodes.push(0);
    }
    nodes
}

/// `kernel.numa_balancing`, when the kernel has it.
pub fn numa_balancing() -> Option<u32> {
    fs::read_to_string("/proc/sys/kernel/numa_balancing")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Nanoseconds of CLOCK_MONOTONIC now (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Nanoseconds since the Unix epoch now.
pub fn realtime_ns() -> i64 {
    clock_ns(libc::CLOCK_REALTIME) as i64
}

/// Wall-clock nanoseconds since the epoch as RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(ns: i128) -> String {
    jiff::Timestamp::from_nanosecond(ns).map_or_else(|_| ns.to_string(), |t| t.to_string())
}

/// Offset to add to a CLOCK_MONOTONIC timestamp to get wall-clock nanoseconds since the epoch,
/// from the tightest of several paired readings.
pub fn monotonic_to_realtime_offset() -> i64 {
    let mut best: Option<(i128, i128)> = None;
    for _ in 0..16 {
        let m0 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let m1 = clock_ns(libc::CLOCK_MONOTONIC);
        let gap = m1 - m0;
        let offset = r - (m0 + gap / 2);
        if best.is_none_or(|(g, _)| gap < g) {
            best = Some((gap, offset));
        }
    }
    best.map_or(0, |(_, o)| o as i64)
}

/// The machine-level part of `bar-probe info`.
#[derive(Debug, Serialize)]
pub struct Facts {
    pub kernel_release: String,
    pub btf: bool,
    pub tracefs: Result<PathBuf, Error>,
    pub root: bool,
    pub missing_capabilities: Vec<&'static str>,
    pub bpf: Result<(), Error>,
    pub kprobes: Option<Error>,
    pub numa_nodes: Vec<u32>,
    pub numa_balancing: Option<u32>,
    pub cpus: usize,
}

impl Facts {
    pub fn gather() -> Self {
        let tracefs = tracefs();
        Self {
            kernel_release: kernel_release(),
            btf: btf_present(),
            kprobes: kprobes_unavailable(tracefs.as_deref().ok()),
            tracefs,
            root: is_root(),
            missing_capabilities: missing_capabilities(),
            bpf: bpf_allowed(),
            numa_nodes: numa_nodes(),
            numa_balancing: numa_balancing(),
            cpus: online_cpus().len(),
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` on unified systems,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Resolves a cgroup given as a path (absolute, or relative to the cgroup v2 mount) to its
/// directory and its id, which is what `bpf_get_current_cgroup_id()` returns: the inode number
/// of the directory in the v2 hierarchy.
pub fn cgroup_id(path: &Path) -> Result<(PathBuf, u64), Error> {
    use std::os::unix::fs::MetadataExt as _;
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let mount = cgroup2_mount().ok_or(Error::NoCgroup2)?;
    let full = if path.is_absolute() && path.starts_with(&mount) {
        path.to_owned()
    } else {
        mount.join(path.strip_prefix("/").unwrap_or(path))
    };
    let meta = fs::metadata(&full).map_err(|e| Error::NoCgroup {
        path: full.clone(),
        error: Arc::new(e),
    })?;
    let c =
        std::ffi::CString::new(full.as_os_str().as_encoded_bytes()).map_err(Error::CgroupPath)?;
    // SAFETY: statfs is plain data filled by the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let on_cgroup2 =
        unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type == CGROUP2_SUPER_MAGIC;
    if !meta.is_dir() || !on_cgroup2 {
        return Err(Error::NotCgroup2 { path: full, mount });
    }
    Ok((full, meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff810d1000 T handle_mm_fault
ffffffff810d2000 t handle_mm_fault.cold
ffffffff810e1000 t finish_task_switch.isra.0
ffffffff810e2000 t finish_task_switch.cold
ffffffff810f1000 t two.constprop.0
ffffffff810f2000 t two.isra.0
ffffffff810f3000 D migrate_pages_data
ffffffffc0001000 t tcp_v6_connect\t[ipv6]
";

    #[test]
    fn kprobe_targets_resolve_to_the_function_or_its_only_clone() {
        let syms = KernelSymbols::parse(KALLSYMS);
        assert_eq!(syms.resolve("handle_mm_fault").unwrap(), "handle_mm_fault");
        assert_eq!(
            syms.resolve("finish_task_switch").unwrap(),
            "finish_task_switch.isra.0"
        );
        assert_eq!(syms.resolve("tcp_v6_connect").unwrap(), "tcp_v6_connect");
        let two = syms.resolve("two").unwrap_err().to_string();
        assert!(two.contains("two.constprop.0, two.isra.0"), "{two}");
        // Data symbols are not functions.
        assert!(syms.resolve("migrate_pages_data").is_err());
        assert!(
            syms.resolve("migrate_pages")
                .unwrap_err()
                .to_string()
                .contains("no function")
        );
    }
}
