//! Live phase markers: every recording listens on a Unix socket in [`DIR`]; `bar-probe mark`
//! (or a load tool writing lines to the socket, or to a FIFO given with `--marker-fifo`) sends
//! `NAME` to start phase NAME, or `NAME --end` to end it. A marker is stamped on the monotonic
//! clock when it arrives.

use std::{
    io::Write as _,
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
};

use crate::{analyze::phases, capture::proto};

/// Where recordings put their marker sockets.
pub const DIR: &str = "/run/bar";

/// Parses one marker line; None for a blank line. Names follow [`phases::check_name`].
pub fn parse_line(line: &str, ts: u64) -> Option<Result<proto::Marker, String>> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let (name, end) = match line.strip_suffix("--end") {
        Some(n) => (n.trim(), true),
        None => (line, false),
    };
    if let Err(e) = phases::check_name(name) {
        return Some(Err(format!("{e} (a marker is NAME or NAME --end)")));
    }
    Some(Ok(proto::Marker {
        name: name.to_owned(),
        ts,
        end,
    }))
}

/// The socket of the recording with this pid.
pub fn socket_path(pid: u32) -> PathBuf {
    Path::new(DIR).join(format!("{pid}.sock"))
}

/// A listening control socket of this recording in [`DIR`] (markers, dumps), owner only,
/// removed when dropped.
pub struct Listener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Listener {
    pub fn bind(path: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(DIR)?;
        std::fs::set_permissions(DIR, std::fs::Permissions::from_mode(0o755))?;
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self { listener, path })
    }

    /// Takes connections until `stop` changes: each from a peer whose uid `allowed` accepts
    /// goes to `serve` in a task of its own; any other is closed, and `refused` says so. The
    /// socket's mode admits only its owner, but only once it is set: the peer is checked too.
    pub fn serve<F, Fut>(
        self,
        allowed: fn(u32) -> bool,
        refused: fn(u32),
        mut stop: tokio::sync::watch::Receiver<bool>,
        serve: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(tokio::net::UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    conn = self.listener.accept() => {
                        let Ok((stream, _)) = conn else { continue };
                        match stream.peer_cred() {
                            Ok(c) if allowed(c.uid()) => {
                                tokio::spawn(serve(stream));
                            }
                            Ok(c) => refused(c.uid()),
                            Err(_) => {}
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends a marker to every running recording; returns how many got it.
pub fn send_all(name: &str, end: bool) -> anyhow::Result<usize> {
    let line = if end {
        format!("{name} --end\n")
    } else {
        format!("{name}\n")
    };
    if let Some(Err(e)) = parse_line(&line, 0) {
        anyhow::bail!("{e}");
    }
    let entries = match std::fs::read_dir(DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("no bar-probe recording is running")
        }
        Err(e) => anyhow::bail!("cannot list {DIR}: {e}"),
    };
    let mut sent = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "sock") {
            continue;
        }
        match UnixStream::connect(&path) {
            Ok(mut s) => {
                if s.write_all(line.as_bytes()).is_ok() {
                    sent += 1;
                }
            }
            // A recording that died without cleaning up leaves a dead socket behind.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                anyhow::bail!(
                    "not allowed to mark the recording behind {}: run bar-probe mark as its user (sudo)",
                    path.display()
                )
            }
            Err(_) => {}
        }
    }
    if sent == 0 {
        anyhow::bail!("no bar-probe recording is running");
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_and_end_lines() {
        assert_eq!(
            parse_line("steady\n", 5),
            Some(Ok(proto::Marker {
                name: "steady".into(),
                ts: 5,
                end: false
            }))
        );
        assert_eq!(
            parse_line("steady --end", 6),
            Some(Ok(proto::Marker {
                name: "steady".into(),
                ts: 6,
                end: true
            }))
        );
        assert_eq!(parse_line("  ", 6), None);
        assert_eq!(
            parse_line("two words --end", 1).unwrap().unwrap().name,
            "two words"
        );
        assert!(matches!(parse_line("a/b", 1), Some(Err(_))));
        assert!(matches!(parse_line("..", 1), Some(Err(_))));
        assert!(matches!(parse_line(&"x".repeat(300), 1), Some(Err(_))));
        assert!(matches!(parse_line("a\u{0}b", 1), Some(Err(_))));
    }
}
