//! The store's files. A store is a directory that CI keeps between builds, so another user may
//! have put anything there. Everything goes through the shared safe-file helpers
//! (`crate::sys::files`): the directory is opened once without following links and checked
//! like an output folder (owned by us, root or the user who ran sudo, writable by no one
//! else), every file is reached relative to it, read only when it is a regular file of a sane
//! size owned by such a user, and written whole under a temporary name renamed into place.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::sys::files::{self, DirError};

/// A file of a store larger than this is not one bar wrote.
pub const MAX_FILE: u64 = 16 << 20;

/// An open store directory.
pub struct Dir {
    inner: files::Dir,
    pub path: PathBuf,
}

/// Why a file of the store cannot be used, in words.
#[derive(Debug, thiserror::Error)]
pub enum Unsafe {
    #[error("{0} is not a directory")]
    NotDir(PathBuf),
    #[error("{0} is not a regular file")]
    NotFile(PathBuf),
    /// The helpers' own sentence (an owner or mode that is not safe, a file bar did not write).
    #[error("{0}")]
    Refused(String),
    // Not `source`: the reason is in the sentence, and a source would be printed again after it.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

impl Dir {
    /// Opens the store's directory, creating it (and its parents) when `create`; a symbolic
    /// link in its place is refused.
    pub fn open(path: &Path, create: bool) -> Result<Self, Unsafe> {
        let inner = if create {
            files::Dir::create(path).map_err(|e| match e {
                DirError::Refused { .. } => Unsafe::Refused(e.to_string()),
                DirError::Io { path, source } => Unsafe::Io {
                    path,
                    error: source,
                },
            })?
        } else {
            files::Dir::open_existing(path).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidInput => Unsafe::NotDir(path.to_owned()),
                io::ErrorKind::PermissionDenied if e.get_ref().is_some() => {
                    Unsafe::Refused(e.to_string())
                }
                _ => Unsafe::Io {
                    path: path.to_owned(),
                    error: e,
                },
            })?
        };
        Ok(Self {
            inner,
            path: path.to_owned(),
        })
    }

    fn io(&self, name: &str) -> impl Fn(io::Error) -> Unsafe {
        let path = self.path.join(name);
        move |error| Unsafe::Io {
            path: path.clone(),
            error,
        }
    }

    /// Names of the directory's entries (not `.` and `..`), sorted.
    pub fn names(&self) -> Result<Vec<String>, Unsafe> {
        self.inner.names().map_err(self.io(""))
    }

    /// Reads a file of the store: a regular file, not a link, of a trusted owner, at most
    /// `MAX_FILE` bytes. None when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, Unsafe> {
        match self.inner.read_back(name, MAX_FILE) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            // Opened without following links: a link is not a file of the store.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                Err(Unsafe::NotFile(self.path.join(name)))
            }
            Err(e) if e.get_ref().is_some() => Err(Unsafe::Refused(e.to_string())),
            Err(e) => Err(self.io(name)(e)),
        }
    }

    /// Writes `name` whole or not at all, over what had that name (`replace`) or only where
    /// nothing has it (false then, and nothing written).
    pub fn write(&self, name: &str, data: &[u8], replace: bool) -> Result<bool, Unsafe> {
        if replace {
            self.inner
                .write_atomic(name, |w| w.write_all(data))
                .map(|_| true)
        } else {
            self.inner.write_new(name, data)
        }
        .map_err(self.io(name))
    }

    /// Removes a file of the store (the link itself, never its target).
    pub fn remove(&self, name: &str) -> Result<(), Unsafe> {
        self.inner.remove(name).map_err(self.io(name))
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
        let e = d.read("sub.json").unwrap_err().to_string();
        assert!(e.contains("not a file bar wrote"), "{e}");
        let link = scratch("dirlink");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(Dir::open(&link, false), Err(Unsafe::NotDir(_))));
        let e = Dir::open(&link, true).err().unwrap().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(d.read("../x").is_err());
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&p);
    }
}
