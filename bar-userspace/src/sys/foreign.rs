//! What other users control and bar reads as root: a file (a JIT's perf map) and a FIFO
//! (live markers). Each is opened without following a link and without blocking, then checked
//! on the open descriptor (type, owner, who else may write, size) before a byte is read. And a
//! traced process's stack, of which bar reads one word to fault its page back in.

use std::{
    fs::File,
    io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use rustix::fs::{CWD, FileType, Mode, OFlags, ResolveFlags};

use super::{files::read_bounded, user};

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

#[derive(Debug, thiserror::Error)]
pub enum FifoError {
    #[error(
        "refusing FIFO {path}: {why}; name a path that does not exist (bar-probe creates the FIFO) or a FIFO only you can write to"
    )]
    Refused { path: PathBuf, why: String },
    #[error("cannot create FIFO {path}")]
    Io { path: PathBuf, source: io::Error },
}

/// A FIFO bar reads input from (live markers): created by bar (0600, handed to the sudo user,
/// who writes into it), or an existing one owned by root or the invoking user that no one else
/// can write to. Opened for reading and writing, so that opening never blocks and reading never
/// meets the end of the file when a writer closes.
pub fn open_fifo(path: &Path) -> Result<OwnedFd, FifoError> {
    let io = |e: rustix::io::Errno| FifoError::Io {
        path: path.to_owned(),
        source: e.into(),
    };
    let refused = |why: &str| FifoError::Refused {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let name = path
        .file_name()
        .ok_or_else(|| refused("it does not name a file"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = rustix::fs::open(parent, DIR_FLAGS, Mode::empty()).map_err(io)?;
    let created =
        match rustix::fs::mknodat(&parent, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(io(e)),
        };
    let fd = match rustix::fs::openat(
        &parent,
        name,
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(refused("it is a symbolic link")),
        Err(e) => return Err(io(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(io)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Fifo {
        return Err(refused("it exists and is not a FIFO"));
    }
    if created {
        if st.st_uid != user::euid() {
            return Err(refused("it was replaced while bar created it"));
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(io)?;
        if let Some((uid, gid)) = user::sudo_user() {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(io)?;
        }
    } else if !user::trusted_owner(st.st_uid) {
        return Err(refused(&format!(
            "it belongs to uid {}, not to you or root",
            st.st_uid
        )));
    } else if st.st_mode & 0o022 != 0 {
        return Err(refused(&format!(
            "others can write to it (mode {:o})",
            st.st_mode & 0o7777
        )));
    }
    Ok(fd)
}

/// Why a file another user controls was not read.
#[derive(Debug, thiserror::Error)]
pub enum ForeignError {
    /// Not there (or its process is gone): nothing to say.
    #[error("{0} does not exist")]
    Missing(String),
    #[error("ignored {path}: {why}")]
    Refused { path: String, why: String },
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
}

/// Size and modification time of a file, to tell whether it changed since it was read.
pub type Stamp = (u64, i64, i64);

/// Reads `path` (absolute, as seen from `root`: a process's `/proc/PID/root`, or `/`) when it
/// is a regular file owned by one of `owners`, with a single link, at most `max` bytes. The
/// path is resolved inside `root` (a link there cannot lead out of it), its last component
/// must not be a link, and the open does not block (a FIFO is refused, not waited on).
/// Returns None, without reading, when the file's stamp is still `unchanged`.
pub fn read_foreign(
    root: &Path,
    path: &str,
    owners: &[u32],
    max: u64,
    unchanged: Option<Stamp>,
) -> Result<Option<(Vec<u8>, Stamp)>, ForeignError> {
    let shown = if root == Path::new("/") {
        path.to_owned()
    } else {
        format!("{}{path}", root.display())
    };
    let refused = |why: String| ForeignError::Refused {
        path: shown.clone(),
        why,
    };
    let io = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound => ForeignError::Missing(shown.clone()),
        _ => ForeignError::Io {
            path: shown.clone(),
            source,
        },
    };
    let root_fd = rustix::fs::openat(
        CWD,
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e.into()))?;
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let rel = path.trim_start_matches('/');
    let opened = match rustix::fs::openat2(
        &root_fd,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        // Kernels before 5.6: links in the folders on the way are followed from our root.
        Err(rustix::io::Errno::NOSYS) => rustix::fs::openat(&root_fd, rel, flags, Mode::empty()),
        r => r,
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return Err(refused("it is a symbolic link".into())),
        Err(e) => return Err(io(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| io(e.into()))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(refused("it is not a regular file".into()));
    }
    if !owners.contains(&st.st_uid) {
        return Err(refused(format!(
            "it belongs to uid {}, neither the process's user nor root",
            st.st_uid
        )));
    }
    if st.st_nlink != 1 {
        return Err(refused(format!(
            "it has {} hard links (another file's contents)",
            st.st_nlink
        )));
    }
    let stamp = (st.st_size as u64, st.st_mtime, st.st_mtime_nsec as i64);
    if unchanged == Some(stamp) {
        return Ok(None);
    }
    let data =
        read_bounded(File::from(fd), st.st_size as u64, max, Path::new(&shown)).map_err(|e| {
            if e.kind() == io::ErrorKind::FileTooLarge {
                refused(format!("it is larger than {} MiB", max >> 20))
            } else {
                io(e)
            }
        })?;
    Ok(Some((data, stamp)))
}

/// Reads the word at `address` of process `pid`'s memory, and throws it away: the read faults
/// the page in as the process's own access would (process_vm_readv takes its pages as
/// get_user_pages does, which resolves NUMA hinting faults), so that bar's programs, which
/// cannot take a fault, can read it again. False when the process or the address is gone.
pub fn fault_in(pid: u32, address: u64) -> bool {
    let mut word = [0u8; 8];
    let local = libc::iovec {
        iov_base: word.as_mut_ptr().cast(),
        iov_len: word.len(),
    };
    let remote = libc::iovec {
        iov_base: address as usize as *mut libc::c_void,
        iov_len: word.len(),
    };
    // SAFETY: `local` describes `word`, which outlives the call; the kernel checks `remote`
    // against the other process's memory and writes only into `local`.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    n == word.len() as isize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::scratch;

    #[test]
    fn foreign_files_are_checked_before_reading() {
        let base = scratch("foreign");
        std::fs::create_dir_all(&base).unwrap();
        let me = user::euid();
        let file = base.join("map");
        std::fs::write(&file, b"1 2 f\n").unwrap();
        let root = Path::new("/");
        let p = file.to_str().unwrap();
        let (data, stamp) = read_foreign(root, p, &[me], 100, None).unwrap().unwrap();
        assert_eq!(data, b"1 2 f\n");
        assert!(
            read_foreign(root, p, &[me], 100, Some(stamp))
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            read_foreign(root, p, &[me], 3, None),
            Err(ForeignError::Refused { .. })
        ));
        assert!(matches!(
            read_foreign(root, p, &[me + 1], 100, None),
            Err(ForeignError::Refused { .. })
        ));
        let link = base.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(matches!(
            read_foreign(root, link.to_str().unwrap(), &[me], 100, None),
            Err(ForeignError::Refused { .. })
        ));
        let fifo = base.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_foreign(root, fifo.to_str().unwrap(), &[me], 100, None),
            Err(ForeignError::Refused { .. })
        ));
        assert!(matches!(
            read_foreign(root, base.join("none").to_str().unwrap(), &[me], 100, None),
            Err(ForeignError::Missing(_))
        ));
        let _ = std::fs::remove_dir_all(&base);
    }
}
