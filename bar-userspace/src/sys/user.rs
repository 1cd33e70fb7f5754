//! On whose behalf bar runs. Under `sudo bar-probe`, bar is root but works for the user who ran
//! sudo (`SUDO_UID`/`SUDO_GID`): what it writes is handed to that user, what it reads may belong
//! to them, and the commands it starts (`run`'s load commands) run as them, never as root.

use std::{ffi::CStr, io};

/// A user and the groups their processes get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, as a login of that user would have them.
    pub groups: Vec<u32>,
    /// Name and home folder from the user database, when it has the user.
    pub name: Option<String>,
    pub home: Option<String>,
}

/// The effective user id of bar.
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The user who ran `sudo bar-probe`: only when bar runs as root and sudo said who it was.
pub fn sudo_user() -> Option<(u32, u32)> {
    if euid() != 0 {
        return None;
    }
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}

/// Whether files and folders owned by `uid` may be trusted: root's, bar's own user's, and those
/// of the user who invoked it through sudo. Anyone else could change them under bar.
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == euid() || sudo_user().is_some_and(|(u, _)| u == uid)
}

impl Identity {
    /// The sudo user with their supplementary groups (from the group database, as `initgroups`
    /// would set them; only their primary group when the database does not know them).
    pub fn of_sudo_user() -> Option<Self> {
        let (uid, gid) = sudo_user()?;
        let (name, home) = passwd_entry(uid).unzip();
        let mut groups = name
            .as_deref()
            .and_then(|n| group_list(n, gid))
            .unwrap_or_default();
        if !groups.contains(&gid) {
            groups.push(gid);
        }
        Some(Self {
            uid,
            gid,
            groups,
            name,
            home,
        })
    }

    /// Becomes this user: groups, then group, then user, all three ids of each, so that there
    /// is no way back. Meant for a child between fork and exec: only system calls.
    pub fn become_it(&self) -> io::Result<()> {
        // SAFETY: plain system calls on values we own; the group list outlives the call.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0
                || libc::setresgid(self.gid, self.gid, self.gid) != 0
                || libc::setresuid(self.uid, self.uid, self.uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The variables a program started for this user should see instead of root's.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(n) = &self.name {
            env.push(("USER", n.clone()));
            env.push(("LOGNAME", n.clone()));
        }
        if let Some(h) = &self.home {
            env.push(("HOME", h.clone()));
        }
        env
    }
}

/// Name and home folder of `uid` in the user database.
fn passwd_entry(uid: u32) -> Option<(String, String)> {
    let mut buf = vec![0u8; 16 << 10];
    // SAFETY: getpwuid_r fills `pw` with pointers into `buf`, both alive while we read them.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found);
        if rc != 0 || found.is_null() || pw.pw_name.is_null() {
            return None;
        }
        let name = CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned();
        let home = if pw.pw_dir.is_null() {
            String::new()
        } else {
            CStr::from_ptr(pw.pw_dir).to_string_lossy().into_owned()
        };
        Some((name, home))
    }
}

/// The groups a login of `name` gets (its primary group `gid` included).
fn group_list(name: &str, gid: u32) -> Option<Vec<u32>> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let asked = n;
        // SAFETY: `groups` has room for `n` entries; getgrouplist sets `n` to the count.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return Some(groups);
        }
        // Too small: `n` now holds the count needed (some libcs leave it; grow anyway).
        if n <= asked {
            n = asked.checked_mul(2)?;
        }
        if n > 65_536 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_knows_its_own_groups() {
        // Every system has uid 0 in its user database.
        let (name, home) = passwd_entry(0).expect("root in the user database");
        assert_eq!(name, "root");
        assert!(!home.is_empty());
        let groups = group_list(&name, 0).expect("root's groups");
        assert!(groups.contains(&0), "{groups:?}");
    }
}
