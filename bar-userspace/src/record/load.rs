//! The load command of `bar-probe run`: started before the recording and held at a gate until
//! every program is attached (so its whole life is recorded), then stopped with the last phase.
//! Under sudo it runs as the user who ran sudo, never as root.

use std::{
    io::{PipeWriter, Write as _},
    process::Child,
};

use anyhow::Context as _;

use crate::sys::command;

/// A load command, started and waiting at its gate.
pub struct Load {
    child: Child,
    gate: Option<PipeWriter>,
    /// The command line, for messages.
    line: String,
}

impl Load {
    /// Starts `program args...` in a process group of its own, waiting until [`Load::release`].
    pub fn start(program: &str, args: &[String]) -> anyhow::Result<Self> {
        let (child, gate) = command::start_gated(program, args)
            .with_context(|| format!("cannot start {program}"))?;
        let line = std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Self {
            child,
            gate: Some(gate),
            line,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the command run (once; later calls do nothing).
    pub fn release(&mut self) {
        if let Some(mut g) = self.gate.take() {
            let _ = g.write_all(b"go\n");
        }
    }

    /// Stops the command if it still runs (the load ends with the last phase) and says how it
    /// failed if it ended before, other than well.
    pub fn finish(mut self) -> Option<String> {
        let ended = self.child.try_wait().ok().flatten();
        if ended.is_none() {
            // SAFETY: signalling the process group we created.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
            let _ = self.child.wait();
        }
        ended
            .filter(|s| !s.success())
            .map(|s| format!("the load command `{}` {}", self.line, command::exit_text(s)))
    }
}
