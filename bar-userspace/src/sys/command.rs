//! Commands bar starts on behalf of the user (`run`'s load and phase commands): as the
//! invoking user under sudo, never as root, and told apart by how they ended.

use std::{
    io::{self, PipeWriter},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command, ExitStatus},
};

use super::user::Identity;

/// Starts a load command that waits on a pipe (its fd 3) until the recording runs, then
/// execs: its whole life is recorded, and the exec is followed like any other. Under sudo it
/// runs as the user who ran sudo. Returns the child and the pipe's end that lets it go.
pub fn start_gated(program: &str, args: &[String]) -> io::Result<(Child, PipeWriter)> {
    let (reader, writer) = std::io::pipe()?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("read _ <&3 || exit 125; exec 3<&-; exec \"$@\"")
        .arg("sh")
        .arg(program)
        .args(args)
        .process_group(0);
    let identity = Identity::of_sudo_user();
    if let Some(id) = &identity {
        cmd.envs(id.env());
    }
    let raw = reader.as_raw_fd();
    // SAFETY: between fork and exec the closure only makes system calls, on a descriptor we
    // keep open until the child is spawned.
    unsafe {
        cmd.pre_exec(move || {
            // The pipe is close-on-exec: dup2 makes a copy without that flag, but a dup2 onto
            // itself does nothing, so when it already is fd 3 the flag is cleared instead.
            let ok = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(raw, 3) == 3
            };
            if !ok {
                return Err(io::Error::last_os_error());
            }
            if let Some(id) = &identity {
                id.become_it()?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(reader);
    Ok((child, writer))
}

/// How a command ended, for a message: "exited with status N" or "was killed by signal N".
pub fn exit_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        // sh's status for a command it cannot find or run.
        (Some(127), _) => "could not be found (status 127)".into(),
        (Some(126), _) => "could not be run (status 126)".into(),
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => "ended".into(),
    }
}
