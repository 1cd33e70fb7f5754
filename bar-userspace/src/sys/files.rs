//! Files on a machine that other users share, where bar runs as root.
//!
//! Writing: an output folder is a [`Dir`], a descriptor of a folder bar created (mode 0700,
//! whatever the umask) or checked (owned by root or the invoking user, writable by no one
//! else). Every file in it is created relative to that descriptor, never through a symbolic
//! link and never over an existing file (a stale one is unlinked first, which removes the link,
//! not what it points to); atomic writes go to a temporary name and are renamed within the
//! folder. Under sudo, everything bar creates is handed to the invoking user through the
//! descriptor it was created with, so no later path lookup can be redirected.

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, BufWriter, Read as _, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

use super::user;

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error(
        "refusing to write into {path}: {why}; name a new folder, or one that only you (or root) can write to"
    )]
    Refused { path: PathBuf, why: String },
    #[error("cannot create output folder {path}")]
    Io { path: PathBuf, source: io::Error },
}

/// A folder bar writes into, held open.
#[derive(Clone)]
pub struct Dir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
    /// Handed to this user (and group) as they are created: the sudo user, if any.
    owner: Option<(u32, u32)>,
    journal: Journal,
}

impl std::fmt::Debug for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dir({})", self.path.display())
    }
}

/// What bar created under a [`Dir`], newest last, so that a start that failed can take it away
/// again and leave nothing behind.
#[derive(Clone, Default)]
struct Journal(Arc<Mutex<Vec<Created>>>);

struct Created {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    dir: bool,
}

impl Journal {
    fn note(&self, parent: &Arc<OwnedFd>, name: &[u8], dir: bool) {
        let mut entries = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !entries
            .iter()
            .any(|e| Arc::ptr_eq(&e.parent, parent) && e.name == name)
        {
            entries.push(Created {
                parent: parent.clone(),
                name: name.to_vec(),
                dir,
            });
        }
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// One name in a folder: not empty, no `/`, not `.` or `..`, no NUL.
fn check_name(name: &[u8]) -> io::Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' is not a file name", String::from_utf8_lossy(name)),
        ));
    }
    Ok(())
}

/// Why an existing folder may not be written into, if it may not.
fn untrusted_folder(st: &Stat) -> Option<String> {
    if !user::trusted_owner(st.st_uid) {
        return Some(format!(
            "it belongs to uid {}, not to you or root",
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Some(format!(
            "others can write to it (mode {:o})",
            st.st_mode & 0o7777
        ));
    }
    None
}

impl Dir {
    /// The output folder at `path`: created by bar (mode 0700), or an existing folder that
    /// only root or the invoking user owns and can write to. Its parents are created as needed
    /// (as `mkdir -p` would); a symbolic link as the folder itself is refused.
    pub fn create(path: &Path) -> Result<Self, DirError> {
        let io = |source| DirError::Io {
            path: path.to_owned(),
            source,
        };
        let refused = |why: String| DirError::Refused {
            path: path.to_owned(),
            why,
        };
        let owner = user::sudo_user();
        let journal = Journal::default();
        let name = match path.file_name() {
            // `.`, `..` or `/`: an existing folder by definition.
            None => {
                let fd =
                    rustix::fs::open(path, DIR_FLAGS.difference(OFlags::NOFOLLOW), Mode::empty())
                        .map_err(|e| io(e.into()))?;
                let st = rustix::fs::fstat(&fd).map_err(|e| io(e.into()))?;
                if let Some(why) = untrusted_folder(&st) {
                    return Err(refused(why));
                }
                return Ok(Self {
                    fd: Arc::new(fd),
                    path: path.to_owned(),
                    owner,
                    journal,
                });
            }
            Some(n) => n.as_bytes(),
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => {
                std::fs::create_dir_all(p).map_err(io)?;
                p
            }
            _ => Path::new("."),
        };
        let parent = Arc::new(
            rustix::fs::open(
                parent,
                DIR_FLAGS.difference(OFlags::NOFOLLOW),
                Mode::empty(),
            )
            .map_err(|e| io(e.into()))?,
        );
        let (fd, created) = open_subdir(&parent, name, owner).map_err(|e| match e {
            SubdirError::Io(e) => io(e),
            SubdirError::Refused(why) => refused(why),
        })?;
        if created {
            journal.note(&parent, name, true);
        }
        Ok(Self {
            fd: Arc::new(fd),
            path: path.to_owned(),
            owner,
            journal,
        })
    }

    /// The folder that will hold the file at `path` (an export, a single output), as it is:
    /// no owner check, because a file written through [`Dir::write_atomic`] can neither be
    /// redirected nor be half-written, wherever it lives. Returns the folder and the file name.
    pub fn of_file(path: &Path) -> io::Result<(Self, String)> {
        let name = path
            .file_name()
            .and_then(OsStr::to_str)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} does not name a file", path.display()),
                )
            })?
            .to_owned();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let fd = rustix::fs::open(
            parent,
            DIR_FLAGS.difference(OFlags::NOFOLLOW),
            Mode::empty(),
        )?;
        Ok((
            Self {
                fd: Arc::new(fd),
                path: parent.to_owned(),
                owner: user::sudo_user(),
                journal: Journal::default(),
            },
            name,
        ))
    }

    /// The path this folder was opened as (for messages and for the files printed).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this folder, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A subfolder, created like the output folder (0700, handed over) or, if it exists,
    /// checked like it.
    pub fn subdir(&self, name: &str) -> io::Result<Self> {
        check_name(name.as_bytes())?;
        let (fd, created) =
            open_subdir(&self.fd, name.as_bytes(), self.owner).map_err(|e| match e {
                SubdirError::Io(e) => e,
                SubdirError::Refused(why) => io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "refusing to write into {}: {why}",
                        self.join(name).display()
                    ),
                ),
            })?;
        if created {
            self.journal.note(&self.fd, name.as_bytes(), true);
        }
        Ok(Self {
            fd: Arc::new(fd),
            path: self.join(name),
            owner: self.owner,
            journal: self.journal.clone(),
        })
    }

    /// A subfolder that exists, checked like the output folder, to read back from.
    pub fn existing_subdir(&self, name: &str) -> io::Result<Self> {
        check_name(name.as_bytes())?;
        let fd = rustix::fs::openat(&*self.fd, name, DIR_FLAGS, Mode::empty())?;
        if let Some(why) = untrusted_folder(&rustix::fs::fstat(&fd)?) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refusing to read from {}: {why}", self.join(name).display()),
            ));
        }
        Ok(Self {
            fd: Arc::new(fd),
            path: self.join(name),
            owner: self.owner,
            journal: self.journal.clone(),
        })
    }

    /// An existing folder to read from (a baseline store), checked like the output folder:
    /// not a symbolic link, owned by root or the invoking user, writable by no one else. Never
    /// created.
    pub fn open_existing(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(path, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is a symbolic link or not a folder", path.display()),
            ),
            e => e.into(),
        })?;
        if let Some(why) = untrusted_folder(&rustix::fs::fstat(&fd)?) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refusing to read from {}: {why}", path.display()),
            ));
        }
        Ok(Self {
            fd: Arc::new(fd),
            path: path.to_owned(),
            owner: user::sudo_user(),
            journal: Journal::default(),
        })
    }

    /// Names in this folder (not `.` and `..`), sorted: the folder as opened, whatever its path
    /// names now. Names that are not UTF-8 are left out (bar writes none).
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&*self.fd)? {
            let entry = entry?;
            match entry.file_name().to_str() {
                Ok("." | "..") | Err(_) => {}
                Ok(n) => names.push(n.to_owned()),
            }
        }
        names.sort();
        Ok(names)
    }

    /// Writes `name` whole, as [`Dir::write_atomic`] does, but only where nothing has that name:
    /// false, and nothing written, when something does (another writer took the name first).
    pub fn write_new(&self, name: &str, data: &[u8]) -> io::Result<bool> {
        check_name(name.as_bytes())?;
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let result = (|| -> io::Result<()> {
            let mut f = self.create_file(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            rustix::fs::renameat_with(
                &*self.fd,
                tmp.as_str(),
                &*self.fd,
                name,
                rustix::fs::RenameFlags::NOREPLACE,
            )?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.journal.note(&self.fd, name.as_bytes(), false);
                Ok(true)
            }
            Err(e) => {
                let _ = rustix::fs::unlinkat(&*self.fd, tmp.as_str(), AtFlags::empty());
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates `name` for writing (mode 0600), replacing whatever had that name: never through
    /// a link, never into an existing file.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        check_name(name.as_bytes())?;
        remove_entry(&self.fd, name)?;
        let fd = rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::WRONLY
                | OFlags::CREATE
                | OFlags::EXCL
                | OFlags::NOFOLLOW
                | OFlags::CLOEXEC
                | OFlags::NOCTTY,
            Mode::from_raw_mode(0o600),
        )?;
        self.hand_over(&fd)?;
        self.journal.note(&self.fd, name.as_bytes(), false);
        Ok(File::from(fd))
    }

    /// Writes `name` whole or not at all: into a temporary file of this folder, renamed over
    /// `name` once complete. Returns the path of the file written.
    pub fn write_atomic(
        &self,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<PathBuf> {
        check_name(name.as_bytes())?;
        let tmp = format!(".{name}.tmp");
        let result = (|| -> io::Result<()> {
            let mut w = BufWriter::new(self.create_file(&tmp)?);
            write(&mut w)?;
            w.into_inner().map_err(io::IntoInnerError::into_error)?;
            rustix::fs::renameat(&*self.fd, tmp.as_str(), &*self.fd, name)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&*self.fd, tmp.as_str(), AtFlags::empty());
        }
        result?;
        self.journal.note(&self.fd, name.as_bytes(), false);
        Ok(self.join(name))
    }

    /// Reads back a file bar wrote into this folder: a regular file of bar's or the sudo
    /// user's, not a link, at most `max` bytes.
    pub fn read_back(&self, name: &str, max: u64) -> io::Result<Vec<u8>> {
        let (file, size) = self.open_back(name)?;
        read_bounded(file, size, max, &self.join(name))
    }

    /// Opens a file bar wrote into this folder for reading (see [`Dir::read_back`]), with its
    /// size.
    pub fn open_back(&self, name: &str) -> io::Result<(File, u64)> {
        check_name(name.as_bytes())?;
        let fd = rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || !user::trusted_owner(st.st_uid)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a file bar wrote", self.join(name).display()),
            ));
        }
        Ok((File::from(fd), st.st_size as u64))
    }

    /// Whether `name` is a regular file in this folder (a link is not).
    pub fn has_file(&self, name: &str) -> bool {
        rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    }

    /// Removes `name` from this folder if it is there (the link itself, never its target).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        check_name(name.as_bytes())?;
        remove_entry(&self.fd, name)
    }

    /// Takes away everything bar created under this folder, the folder included if bar made
    /// it: for a start that failed before it recorded anything.
    pub fn remove_created(&self) {
        let entries = std::mem::take(
            &mut *self
                .journal
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for e in entries.iter().rev() {
            let flags = if e.dir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            let _ = rustix::fs::unlinkat(&*e.parent, OsStr::from_bytes(&e.name), flags);
        }
    }

    fn hand_over(&self, fd: &impl AsFd) -> io::Result<()> {
        if let Some((uid, gid)) = self.owner {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
        }
        Ok(())
    }
}

/// Unlinks `name` if present; a folder of that name is an error.
fn remove_entry(dir: &OwnedFd, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

enum SubdirError {
    Io(io::Error),
    Refused(String),
}

/// Creates (0700, handed to `owner`) or opens and checks folder `name` under `parent`. Returns
/// its descriptor and whether bar created it.
fn open_subdir(
    parent: &OwnedFd,
    name: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(OwnedFd, bool), SubdirError> {
    let name = OsStr::from_bytes(name);
    let created = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => true,
        Err(rustix::io::Errno::EXIST) => false,
        Err(e) => return Err(SubdirError::Io(e.into())),
    };
    let fd = match rustix::fs::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            return Err(SubdirError::Refused(
                "it is a symbolic link or not a folder".into(),
            ));
        }
        Err(e) => return Err(SubdirError::Io(e.into())),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| SubdirError::Io(e.into()))?;
    if created {
        // Someone may have swapped another folder in between mkdir and open.
        if st.st_uid != user::euid() {
            return Err(SubdirError::Refused(
                "it was replaced while bar created it".into(),
            ));
        }
        // mkdir's mode went through the umask; this one does not.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
            .map_err(|e| SubdirError::Io(e.into()))?;
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| SubdirError::Io(e.into()))?;
        }
    } else if let Some(why) = untrusted_folder(&st) {
        return Err(SubdirError::Refused(why));
    }
    Ok((fd, created))
}

/// Reads at most `max` bytes of a file `size` bytes long (as fstat said: it may grow).
pub(super) fn read_bounded(file: File, size: u64, max: u64, path: &Path) -> io::Result<Vec<u8>> {
    let too_big = || {
        io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("{} is larger than {max} bytes", path.display()),
        )
    };
    if size > max {
        return Err(too_big());
    }
    let mut data = Vec::with_capacity(size as usize);
    file.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(too_big());
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;
    use crate::sys::scratch;

    #[test]
    fn a_new_folder_is_private_and_files_replace_links() {
        let base = scratch("new");
        let dir = Dir::create(&base.join("out")).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        // A link planted where a file goes is replaced, its target untouched.
        let target = base.join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("a.txt")).unwrap();
        dir.write_atomic("a.txt", |w| w.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"new");
        assert!(
            !std::fs::symlink_metadata(dir.join("a.txt"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // Reading back refuses a link.
        std::os::unix::fs::symlink(&target, dir.join("b.txt")).unwrap();
        assert!(dir.read_back("b.txt", 100).is_err());
        assert_eq!(dir.read_back("a.txt", 100).unwrap(), b"new");
        std::fs::remove_file(dir.join("b.txt")).unwrap();
        dir.remove_created();
        assert!(!dir.path().exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn folders_others_can_write_or_links_are_refused() {
        let base = scratch("refuse");
        std::fs::create_dir_all(base.join("open")).unwrap();
        std::fs::set_permissions(base.join("open"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let e = Dir::create(&base.join("open")).unwrap_err().to_string();
        assert!(e.contains("others can write to it"), "{e}");
        std::fs::create_dir_all(base.join("real")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
        let e = Dir::create(&base.join("link")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // An existing private folder is fine, and what bar did not create stays.
        std::fs::set_permissions(base.join("real"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let dir = Dir::create(&base.join("real")).unwrap();
        dir.write_atomic("x", |w| w.write_all(b"1")).unwrap();
        dir.remove_created();
        assert!(base.join("real").exists() && !base.join("real/x").exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
