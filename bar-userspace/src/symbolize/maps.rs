//! User addresses: the executable mappings of a process as bar snapshots them, a JIT's perf
//! map, and where an address lies among them.

use std::{fs, os::unix::fs::MetadataExt, path::PathBuf};

use super::UNKNOWN_USER;

/// One line of /proc/PID/maps that maps a file or is anonymous executable memory.
#[derive(Debug, Clone)]
pub(super) struct Mapping {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) offset: u64,
    /// Path as the process sees it; empty for anonymous memory, `[vdso]` etc. for specials.
    pub(super) path: String,
    /// The path does not lead bar to the mapped file (another mount namespace that bar's
    /// view of the process's root does not show): read it through `/proc/PID/map_files`.
    pub(super) hidden: bool,
}

/// What the symbolizer knows about one process.
#[derive(Debug, Default)]
pub(super) struct ProcessInfo {
    pub(super) mappings: Vec<Mapping>,
    /// Prefix under which this process's paths are visible to us (`/proc/PID/root` for a
    /// process in another mount namespace, empty otherwise).
    pub(super) root: String,
    pub(super) alive: bool,
    pub(super) perf_map: PerfMap,
}

/// A JIT's `/tmp/perf-PID.map`: (start, end, name) sorted by start, and the stamp of the file
/// it was read from, so that it is read again only when the JIT has added to it.
#[derive(Debug, Default)]
pub(super) struct PerfMap {
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
    pub(super) fn refresh(&mut self, pid: u32) {
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

    pub(super) fn lookup(&self, a: u64) -> Option<&str> {
        let idx = self.entries.partition_point(|e| e.0 <= a);
        (idx > 0 && a < self.entries[idx - 1].1).then(|| self.entries[idx - 1].2.as_str())
    }
}

/// The effective uid of a process and its pid in its own pid namespace, from its status.
pub(super) fn perf_map_ids(pid: u32) -> Option<(u32, u32)> {
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
pub(super) fn read_maps(pid: u32, root: &str) -> Option<Vec<Mapping>> {
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
pub(super) fn process_root(pid: u32) -> String {
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

/// What a user address is: in a file (path to open, file offset, path to show), JIT code named
/// in the perf map, nothing bar can name, or in no executable mapping of a process whose map
/// bar has.
pub(super) enum Place {
    File(PathBuf, u64, String),
    Jit(String),
    Unknown(String),
    Outside,
}

/// Where user address `a` of a process whose map is `info` (read from process `pid`) is.
pub(super) fn locate(info: &ProcessInfo, pid: u32, a: u64) -> Place {
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
