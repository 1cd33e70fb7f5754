//! The phases of `bar-probe run`, timed by the recording itself: a marker at each start, the
//! phase's command run for its duration.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{PlannedPhase, aggregator::Input};
use crate::{
    capture::proto,
    sys::{command, user},
    system,
};

/// Times the phases of `bar-probe run`: a marker at the start of each, its command (if any) run
/// for its duration in its own process group (as the sudo user, under sudo), and an end marker
/// after the last. A command that cannot run or ends with a failure before its phase does is
/// said at once and noted in `failures`.
pub(super) async fn run(
    plan: Vec<PlannedPhase>,
    tx: mpsc::Sender<Input>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let marker = |name: &str, end| {
        Input::Marker(proto::Marker {
            name: name.to_owned(),
            ts: system::monotonic_ns(),
            end,
        })
    };
    let identity = user::Identity::of_sudo_user();
    let fail = |msg: String| {
        eprintln!("bar-probe: {msg}");
        failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(msg);
    };
    let mut last = None;
    for phase in plan {
        if tx.send(marker(&phase.name, false)).await.is_err() {
            return;
        }
        let child = phase.command.as_ref().and_then(|c| {
            let mut cmd = tokio::process::Command::new("sh");
            cmd.arg("-c").arg(c).process_group(0).kill_on_drop(true);
            if let Some(id) = identity.clone() {
                cmd.envs(id.env());
                // SAFETY: between fork and exec the closure only makes system calls.
                unsafe { cmd.pre_exec(move || id.become_it()) };
            }
            cmd.spawn()
                .map_err(|e| fail(format!("phase {}: cannot run `{c}`: {e}", phase.name)))
                .ok()
                .map(|child| (child, c))
        });
        let sleep = tokio::time::sleep(phase.duration);
        let Some((mut child, command)) = child else {
            sleep.await;
            last = Some(phase.name);
            continue;
        };
        tokio::pin!(sleep);
        tokio::select! {
            () = &mut sleep => {
                if let Some(id) = child.id() {
                    // SAFETY: signalling the process group created for this command.
                    unsafe { libc::kill(-(id as i32), libc::SIGTERM) };
                }
                if tokio::time::timeout(Duration::from_secs(2), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
            status = child.wait() => {
                if let Ok(s) = status && !s.success() {
                    fail(format!(
                        "phase {}: `{command}` {}",
                        phase.name,
                        command::exit_text(s)
                    ));
                }
                sleep.await;
            }
        }
        last = Some(phase.name);
    }
    if let Some(name) = last {
        let _ = tx.send(marker(&name, true)).await;
    }
}
