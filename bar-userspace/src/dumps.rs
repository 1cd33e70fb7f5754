//! Dumps of flight recorders on demand: every recording that keeps a ring (`--ring`) listens on
//! a Unix socket of its own beside its marker socket (`<pid>.dump` in [`markers::DIR`], owner
//! only); `bar-probe dump` sends each one JSON line with the folder to write into, and waits
//! for one JSON line back saying what was written or why not.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::markers;

/// What `bar-probe dump` asks of a recording.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ask {
    /// The folder to write into (absolute).
    pub dir: PathBuf,
}

/// What a recording answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Dumped {
        dir: PathBuf,
        events: u64,
        seconds: f64,
        cut_by_size: bool,
    },
    Failed(String),
}

/// How long `bar-probe dump` waits for a recording to write and render its ring.
const WAIT: Duration = Duration::from_secs(600);

/// The dump socket of the recording with this pid.
pub fn socket_path(pid: u32) -> PathBuf {
    Path::new(markers::DIR).join(format!("{pid}.dump"))
}

/// Asks every running flight recorder (or only the one whose bar-probe is `only`) for a dump
/// into `dir` (`dir/<pid>` each when there are several); returns each recording's pid and
/// answer.
pub fn ask_all(dir: &Path, only: Option<u32>) -> anyhow::Result<Vec<(u32, Answer)>> {
    let dir = std::path::absolute(dir)?;
    let entries = match std::fs::read_dir(markers::DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("no bar-probe recording with --ring is running")
        }
        Err(e) => bail!("cannot list {}: {e}", markers::DIR),
    };
    let mut sockets: Vec<(u32, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "dump"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
        .filter(|(pid, _)| only.is_none_or(|o| o == *pid))
        .collect();
    sockets.sort();
    let mut live = Vec::new();
    for (pid, path) in sockets {
        match UnixStream::connect(&path) {
            Ok(s) => live.push((pid, s)),
            // A recording that died without cleaning up leaves a dead socket behind.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "not allowed to ask the recording behind {} for a dump: run bar-probe dump as its user (sudo)",
                path.display()
            ),
            Err(_) => {}
        }
    }
    if live.is_empty() {
        match only {
            Some(pid) => bail!("no bar-probe recording with --ring runs as pid {pid}"),
            None => bail!("no bar-probe recording with --ring is running"),
        }
    }
    let several = live.len() > 1;
    let mut answers = Vec::new();
    for (pid, mut stream) in live {
        let dir = if several {
            dir.join(pid.to_string())
        } else {
            dir.clone()
        };
        answers.push((pid, ask(&mut stream, dir)));
    }
    Ok(answers)
}

fn ask(stream: &mut UnixStream, dir: PathBuf) -> Answer {
    let line = match serde_json::to_string(&Ask { dir }) {
        Ok(l) => l,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    if let Err(e) = writeln!(stream, "{line}") {
        return Answer::Failed(format!("cannot ask: {e}"));
    }
    let _ = stream.set_read_timeout(Some(WAIT));
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(0) => Answer::Failed("the recording stopped before it answered".into()),
        Ok(_) => serde_json::from_str(&reply)
            .unwrap_or_else(|e| Answer::Failed(format!("unreadable answer: {e}"))),
        Err(e) => Answer::Failed(format!("no answer within {} s: {e}", WAIT.as_secs())),
    }
}

/// One line on a dump that was written.
pub fn describe(dir: &Path, events: u64, seconds: f64, cut_by_size: bool) -> String {
    format!(
        "dumped the last {seconds:.1} s ({events} events{}) into {}",
        if cut_by_size {
            ", all --ring-size holds"
        } else {
            ""
        },
        dir.display()
    )
}

/// `bar-probe dump`: one line per flight recorder on what it wrote into `dir`, or why not;
/// status 1 when any could not.
pub fn command(dir: &Path, only: Option<u32>) -> anyhow::Result<i32> {
    let answers = ask_all(dir, only)?;
    let several = answers.len() > 1;
    let mut failed = false;
    for (pid, answer) in answers {
        let who = if several {
            format!("recording {pid}: ")
        } else {
            String::new()
        };
        match answer {
            Answer::Dumped {
                dir,
                events,
                seconds,
                cut_by_size,
            } => eprintln!(
                "bar-probe: {who}{}",
                describe(&dir, events, seconds, cut_by_size)
            ),
            Answer::Failed(e) => {
                failed = true;
                eprintln!("bar-probe: {who}{e}");
            }
        }
    }
    Ok(i32::from(failed))
}
