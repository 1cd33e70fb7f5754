//! The store's files. A store is a directory that CI keeps between builds, so another user may
//! have put anything there: the directory is opened once without following links and every
//! file is reached relative to it (the `*at` calls), read only when it is a regular file of a
//! sane size owned by us, root or the user who ran sudo, and written by exclusive creation of a
//! temporary file renamed into place. All of the store's file system access is here, so that it
//! can move onto shared safe-file helpers in one edit.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

/// A file of a store larger than this is not one bar wrote.
pub const MAX_FILE: u64 = 16 << 20;

/// An open store directory.
pub struct Dir {
    fd: OwnedFd,
    pub path: PathBuf,
}

fn c_name(name: &str) -> io::Result<CString> {
    if name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Users whose files bar trusts: itself, root, and under sudo the user who ran it.
fn trusted(uid: u32) -> bool {
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    let sudo = std::env::var("SUDO_UID")
        .ok()
        .and_then(|u| u.parse::<u32>().ok());
    uid == me || uid == 0 || Some(uid) == sudo
}

/// Why a file of the store cannot be used, in words.
#[derive(Debug, thiserror::Error)]
pub enum Unsafe {
    #[error("{0} is not a directory")]
    NotDir(PathBuf),
    #[error("{0} is not a regular file")]
    NotFile(PathBuf),
    #[error(
        "{path} belongs to uid {uid}, not to you or root: bar does not read or write a store another user controls"
    )]
    Owner { path: PathBuf, uid: u32 },
    #[error("{0} is larger than 16 MiB: not a file bar wrote")]
    TooLarge(PathBuf),
    // Not `source`: the reason is in the sentence, and a source would be printed again after it.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

impl Dir {
    /// Opens the store's directory, creating it (and no parent) when `create`; a symbolic link
    /// in its place is refused.
    pub fn open(path: &Path, create: bool) -> Result<Self, Unsafe> {
        let io_err = |error| Unsafe::Io {
            path: path.to_owned(),
            error,
        };
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
        if create {
            // SAFETY: a valid C string; EEXIST is fine, the open below checks what is there.
            let rc = unsafe { libc::mkdir(c.as_ptr(), 0o755) };
            if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::AlreadyExists {
                return Err(io_err(io::Error::last_os_error()));
            }
        }
        // SAFETY: a valid C string; the descriptor is owned below.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => Unsafe::NotDir(path.to_owned()),
            _ => io_err(e),
        })?;
        // SAFETY: a descriptor just opened and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let meta = File::from(fd.try_clone().map_err(io_err)?)
            .metadata()
            .map_err(io_err)?;
        if !trusted(meta.uid()) {
            return Err(Unsafe::Owner {
                path: path.to_owned(),
                uid: meta.uid(),
            });
        }
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    /// Names of the directory's entries (not `.` and `..`), sorted.
    pub fn names(&self) -> Result<Vec<String>, Unsafe> {
        // The directory as opened, not whatever the path names now.
        let proc = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let mut names: Vec<String> = std::fs::read_dir(&proc)
            .map_err(|error| Unsafe::Io {
                path: self.path.clone(),
                error,
            })?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Reads a file of the store: a regular file, not a link, of a trusted owner, at most
    /// `MAX_FILE` bytes. None when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, Unsafe> {
        let path = self.path.join(name);
        let io_err = |error| Unsafe::Io {
            path: path.clone(),
            error,
        };
        let c = c_name(name).map_err(io_err)?;
        // SAFETY: a valid directory descriptor and C string.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                Some(libc::ELOOP) => Err(Unsafe::NotFile(path)),
                _ => Err(io_err(e)),
            };
        }
        // SAFETY: a descriptor just opened and owned by nobody else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let meta = file.metadata().map_err(io_err)?;
        if !meta.is_file() {
            return Err(Unsafe::NotFile(path));
        }
        if !trusted(meta.uid()) {
            return Err(Unsafe::Owner {
                path,
                uid: meta.uid(),
            });
        }
        if meta.len() > MAX_FILE {
            return Err(Unsafe::TooLarge(path));
        }
        let mut data = Vec::with_capacity(meta.len() as usize);
        std::io::Read::by_ref(&mut file)
            .take(MAX_FILE + 1)
            .read_to_end(&mut data)
            .map_err(io_err)?;
        Ok(Some(data))
    }

    /// Writes `name` whole or not at all: a temporary file created exclusively, written,
    /// synced, then renamed over `name` (or, with `replace` false, onto `name` only if nothing
    /// is there: false then, and nothing written).
    pub fn write(&self, name: &str, data: &[u8], replace: bool) -> Result<bool, Unsafe> {
        let path = self.path.join(name);
        let io_err = |error| Unsafe::Io {
            path: path.clone(),
            error,
        };
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let (c, ct) = (c_name(name).map_err(io_err)?, c_name(&tmp).map_err(io_err)?);
        let dir = self.fd.as_raw_fd();
        // SAFETY: a valid directory descriptor and C string; O_EXCL with O_NOFOLLOW never
        // writes through a link someone left there.
        let fd = cvt(unsafe {
            libc::openat(
                dir,
                ct.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644,
            )
        })
        .map_err(io_err)?;
        // SAFETY: a descriptor just opened and owned by nobody else.
        let mut file = unsafe { File::from_raw_fd(fd) };
        let written = file.write_all(data).and_then(|()| file.sync_all());
        drop(file);
        let renamed = written.and_then(|()| {
            let flags = if replace { 0 } else { libc::RENAME_NOREPLACE };
            // SAFETY: valid descriptors and C strings.
            cvt(unsafe { libc::renameat2(dir, ct.as_ptr(), dir, c.as_ptr(), flags) }).map(drop)
        });
        match renamed {
            Ok(()) => Ok(true),
            Err(e) => {
                // SAFETY: valid descriptor and C string: our own temporary file.
                unsafe { libc::unlinkat(dir, ct.as_ptr(), 0) };
                if e.kind() == io::ErrorKind::AlreadyExists && !replace {
                    Ok(false)
                } else {
                    Err(io_err(e))
                }
            }
        }
    }

    /// Removes a file of the store (not a directory).
    pub fn remove(&self, name: &str) -> Result<(), Unsafe> {
        let path = self.path.join(name);
        let c = c_name(name).map_err(|error| Unsafe::Io {
            path: path.clone(),
            error,
        })?;
        // SAFETY: a valid directory descriptor and C string.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
            .map(drop)
            .map_err(|error| Unsafe::Io { path, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("bar-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn files_are_written_whole_and_read_back() {
        let p = scratch("rw");
        let d = Dir::open(&p, true).unwrap();
        assert!(d.write("a.json", b"{}", false).unwrap());
        assert!(!d.write("a.json", b"[]", false).unwrap(), "no replacing");
        assert_eq!(d.read("a.json").unwrap().unwrap(), b"{}");
        assert!(d.write("a.json", b"[1]", true).unwrap());
        assert_eq!(d.read("a.json").unwrap().unwrap(), b"[1]");
        assert_eq!(d.read("missing").unwrap(), None);
        assert_eq!(d.names().unwrap(), ["a.json"], "no temporary file left");
        d.remove("a.json").unwrap();
        assert!(d.names().unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn links_and_odd_files_are_refused() {
        let p = scratch("links");
        let d = Dir::open(&p, true).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", p.join("link.json")).unwrap();
        assert!(matches!(d.read("link.json"), Err(Unsafe::NotFile(_))));
        // Writing over a link replaces the link, never the file it points to.
        assert!(d.write("link.json", b"{}", true).unwrap());
        assert!(
            std::fs::symlink_metadata(p.join("link.json"))
                .unwrap()
                .is_file()
        );
        std::fs::create_dir(p.join("sub.json")).unwrap();
        assert!(matches!(d.read("sub.json"), Err(Unsafe::NotFile(_))));
        let link = scratch("dirlink");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(Dir::open(&link, false), Err(Unsafe::NotDir(_))));
        assert!(matches!(Dir::open(&link, true), Err(Unsafe::NotDir(_))));
        assert!(d.read("../x").is_err());
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&p);
    }
}
