//! The process being traced: checks that it can be traced, a pidfd to learn when it exits, and
//! the metadata kept in the capture.

use std::{
    fs,
    os::fd::{FromRawFd, OwnedFd},
};

use crate::capture::proto;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no process with PID {0}")]
    NoSuchProcess(u32),
    #[error(
        "PID {0} is a kernel thread; bar attaches to user processes (use `bar-probe record --all` to include kernel threads)"
    )]
    KernelThread(u32),
    #[error("PID {0} is bar-probe itself; bar never traces itself")]
    Myself(u32),
    #[error("{tid} is a thread of process {tgid}; bar traces whole processes: use --pid {tgid}")]
    Thread { tid: u32, tgid: u32 },
    #[error("PID {0} has exited (its parent has not reaped it yet): there is nothing to record")]
    Exited(u32),
    #[error("cannot watch PID {pid}: {source}")]
    Watch { pid: u32, source: std::io::Error },
}

const PF_KTHREAD: u64 = 0x0020_0000;

/// Checks the PID and opens a pidfd on it, which both pins the process (no PID reuse confusion)
/// and becomes readable when it exits.
pub fn open(pid: u32) -> Result<OwnedFd, TargetError> {
    // SAFETY: no preconditions.
    if pid == unsafe { libc::getpid() } as u32 {
        return Err(TargetError::Myself(pid));
    }
    if pid == 0 {
        return Err(TargetError::NoSuchProcess(pid));
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| TargetError::NoSuchProcess(pid))?;
    // A thread id is not a process: bar filters on thread groups.
    if let Some(tgid) = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        && tgid != pid
    {
        return Err(TargetError::Thread { tid: pid, tgid });
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|_| TargetError::NoSuchProcess(pid))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let flags = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    if flags & PF_KTHREAD != 0 {
        return Err(TargetError::KernelThread(pid));
    }
    // A zombie (or one being torn down) runs nothing any more, and its pidfd says so at once.
    if matches!(fields.first(), Some(&("Z" | "X" | "x"))) {
        return Err(TargetError::Exited(pid));
    }
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::ESRCH) {
            TargetError::NoSuchProcess(pid)
        } else {
            TargetError::Watch { pid, source: e }
        });
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    Ok(fd)
}

/// Metadata of a process for the capture: name, command line, executable and its build id.
pub fn describe(pid: u32) -> proto::Target {
    let comm = crate::symbolize::process_comm(pid).unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let build_id = blazesym::helper::read_elf_build_id(&format!("/proc/{pid}/exe"))
        .ok()
        .flatten()
        .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
        .unwrap_or_default();
    proto::Target {
        pid,
        comm,
        cmdline,
        exe,
        build_id,
    }
}
