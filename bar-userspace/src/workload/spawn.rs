//! The spawn workload: short-lived processes under a name of their own, one after another, as
//! a host under a fork storm or a build has them. Each child is bar-probe's cpu workload run
//! through a link named [`CHILD_NAME`], so that the kernel names it so at exec (a process takes
//! the name of the file it executes), for as long as it lives.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use serde_json::{Value, json};

/// The name every child has (at most 15 bytes: the kernel keeps no more).
pub const CHILD_NAME: &str = "bar-shortlived";

/// Starts `count` children one after another, each living about `life` (burning CPU in
/// `burn_cpu_hot_loop`, after the page faults of its start); `dir` gets the link to
/// bar-probe (default: a new folder under the temporary folder). Returns their pids.
pub fn run(count: u64, life: Duration, dir: Option<&Path>) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("cannot find bar-probe's own executable")?;
    let own = dir.is_none();
    let dir = dir.map_or_else(
        || {
            std::env::temp_dir().join(format!(
                "bar-spawn-{}-{}",
                std::process::id(),
                crate::system::monotonic_ns()
            ))
        },
        Path::to_path_buf,
    );
    if own {
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let link: PathBuf = dir.join(CHILD_NAME);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&exe, &link)
        .with_context(|| format!("cannot create {}", link.display()))?;
    let mut children = Vec::new();
    let mut result = Ok(());
    for _ in 0..count {
        let child = Command::new(&link)
            .args(["workload", "cpu", "--seconds"])
            .arg(life.as_secs_f64().to_string())
            .stdout(Stdio::null())
            .spawn();
        match child.and_then(|mut c| c.wait().map(|_| c.id())) {
            Ok(pid) => children.push(pid),
            Err(e) => {
                result = Err(e).context("cannot run a child");
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&link);
    if own {
        let _ = std::fs::remove_dir(&dir);
    }
    result?;
    Ok(json!({"workload": "spawn", "name": CHILD_NAME, "children": children}))
}
