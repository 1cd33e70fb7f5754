//! The lowest layer, under every stage: how bar touches the system where other users can reach
//! it. [`files`] creates what bar writes (relative to folders it checked, never through a
//! link); [`foreign`] reads what other users control (owner, type and size checked on the open
//! descriptor).
//! [`user`] says on whose behalf bar runs, and drops to that user for commands it starts.
//! [`memory`] gives back to the system what bar freed; [`sched`] keeps bar's recording threads ahead of the load they record; [`command`] starts
//! the commands bar runs for the user, as that user.

pub mod command;
pub mod files;
pub mod foreign;
pub mod memory;
pub mod sched;
pub mod user;

/// A fresh path under the temporary folder for one unit test (nothing there yet).
#[cfg(test)]
pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bar-sys-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
