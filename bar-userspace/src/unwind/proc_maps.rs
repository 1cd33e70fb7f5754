//! The executable mappings of a process, as `/proc/PID/maps` lists them: what the kernel's
//! mapping table ([`super::loader`]) is made of.

use std::{fs, io};

/// What is mapped executable at a range of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backing {
    /// A file: its device and inode as the kernel names them, and its path as the process
    /// sees it (possibly ` (deleted)`).
    File { dev: u64, inode: u64, path: String },
    /// The kernel's vDSO.
    Vdso,
    /// Anything else: anonymous memory (JIT code), `[vsyscall]`.
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecMapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    pub backing: Backing,
}

/// A device as a maps file writes it (`MAJOR:MINOR` in hex), as `st_dev` encodes it (glibc's
/// `makedev`).
pub fn dev_of(s: &str) -> Option<u64> {
    let (ma, mi) = s.split_once(':')?;
    let (ma, mi) = (
        u64::from_str_radix(ma, 16).ok()?,
        u64::from_str_radix(mi, 16).ok()?,
    );
    Some(((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12))
}

/// Parses the executable lines of a maps file.
pub fn parse(text: &str) -> Vec<ExecMapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset), Some(dev), Some(inode)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            continue;
        };
        if perms.as_bytes().get(2) != Some(&b'x') {
            continue;
        }
        let path = parts.collect::<Vec<_>>().join(" ");
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset), Ok(inode)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(offset, 16),
            inode.parse::<u64>(),
        ) else {
            continue;
        };
        let backing = if inode != 0 && path.starts_with('/') {
            let dev = dev_of(dev).unwrap_or(0);
            Backing::File { dev, inode, path }
        } else if path == "[vdso]" {
            Backing::Vdso
        } else {
            Backing::Other
        };
        out.push(ExecMapping {
            start,
            end,
            offset,
            backing,
        });
    }
    out
}

/// The executable mappings of process `pid`; an error when it is gone (a zombie's map is
/// empty, which is no map either).
pub fn read(pid: u32) -> io::Result<Vec<ExecMapping>> {
    let text = fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let maps = parse(&text);
    if maps.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the process has exited",
        ));
    }
    Ok(maps)
}

/// When process `pid` started (clock ticks after boot, field 22 of its stat file): tells a
/// process from a later one that got the same pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name may hold spaces and parentheses: fields are counted after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_executable_mappings_and_tells_what_backs_them() {
        let text = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 08:01 1311 /usr/bin/python3.11
55d0c0a28000-55d0c0d18000 r-xp 00028000 08:01 1311 /usr/bin/python3.11
7f0000000000-7f0000001000 rwxp 00000000 00:00 0
7f1000000000-7f1000100000 r-xp 00026000 103:02 4242 /tmp/lib with space.so (deleted)
7ffd1b5f4000-7ffd1b5f6000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";
        let maps = parse(text);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].start, 0x55d0_c0a2_8000);
        assert_eq!(maps[0].offset, 0x28000);
        assert_eq!(
            maps[0].backing,
            Backing::File {
                dev: 0x801,
                inode: 1311,
                path: "/usr/bin/python3.11".into()
            }
        );
        assert_eq!(maps[1].backing, Backing::Other);
        assert_eq!(
            maps[2].backing,
            Backing::File {
                dev: (0x103 << 8) | 2,
                inode: 4242,
                path: "/tmp/lib with space.so (deleted)".into()
            }
        );
        assert_eq!(maps[3].backing, Backing::Vdso);
        assert_eq!(maps[4].backing, Backing::Other);
    }

    #[test]
    fn own_map_and_start_time() {
        let pid = std::process::id();
        let maps = read(pid).unwrap();
        assert!(
            maps.iter()
                .any(|m| matches!(m.backing, Backing::File { .. }))
        );
        assert!(start_time(pid).is_some_and(|t| t > 0));
    }
}
