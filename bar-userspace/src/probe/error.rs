//! Why a family's attach point cannot be used here, or why loading failed: one enum for the
//! probe stage. Its text is what users read in `info`, the live status and `summary.json`
//! (each rejected attach point with its reason), so every message is one sentence about this
//! kernel, and an error is cloned where one cause rules out several attach points.

use aya::programs::ProgramError;
use serde::Serialize;

use super::Method;
use crate::system;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("unknown event kind '{0}' (expected cpu, offcpu, faults, tcp, numa or all)")]
    UnknownFamily(String),
    #[error("no event kind given")]
    NoFamily,
    #[error("unknown attach method '{0}' (perf_event, kprobe, fentry, tp_btf, tracepoint)")]
    UnknownMethod(String),
    #[error("{} was turned off with --avoid", .0.name())]
    Avoided(Method),

    /// What the machine lacks (tracefs, kallsyms, kprobes, a kernel function).
    #[error(transparent)]
    System(#[from] system::Error),

    #[error("tracepoint {category}:{name} is not available ({why})")]
    NoTracepoint {
        category: String,
        name: String,
        why: String,
    },
    #[error("field {field} has size {size}, expected {expected}")]
    FieldSize {
        field: String,
        size: u32,
        expected: u32,
    },
    #[error("field {0} is missing")]
    NoField(String),
    /// A field of a tracepoint's format that is not what the program reads.
    #[error("tracepoint {tracepoint}: {error}")]
    Tracepoint {
        tracepoint: String,
        error: Box<Error>,
    },
    /// Several optional tracepoints, none of them usable.
    #[error("{}", join(.0))]
    NoneOf(Vec<Error>),
    #[error("none of its tracepoints attached")]
    NoTracepointAttached,

    #[error("this kernel has no BTF ({0} is missing)")]
    NoBtf(&'static str),
    #[error("kernel BTF is not readable at {path}: {why}")]
    BtfUnreadable { path: &'static str, why: String },
    #[error("this kernel's BTF could not be parsed")]
    BtfUnparsed,
    #[error("released after attaching")]
    BtfReleased,
    /// A BTF lookup failed inside btf-rs.
    #[error("{0}")]
    Btf(String),
    #[error("struct {name} not in BTF: {why}")]
    StructLookup { name: String, why: String },
    #[error("struct {0} not in BTF")]
    NoStruct(String),
    #[error("struct {name} has no member {member}")]
    NoMember { name: String, member: String },
    #[error("{name}.{member} is not an array")]
    NotArray { name: String, member: String },
    #[error("enum {0} not in BTF")]
    NoEnum(String),
    #[error("enum {name} has no {member}")]
    NoEnumMember { name: String, member: String },
    #[error("zonelist has {refs} zonerefs for {zones} zones: not a power-of-two node count")]
    NodeCount { refs: usize, zones: usize },
    #[error("no BTF tracepoint {0} in this kernel")]
    NoBtfTracepoint(String),
    #[error("unexpected BTF type for {0}")]
    UnexpectedBtfType(String),
    #[error("BTF tracepoint {tracepoint} passes {have} arguments, the program needs {needs}")]
    TracepointArgs {
        tracepoint: String,
        have: usize,
        needs: usize,
    },
    /// An offset the attach point needs (`pt_regs.sp`, `task_struct.pid`, ...).
    #[error("BTF has no {0}")]
    BtfLacks(&'static str),
    #[error("BTF has no function {0}")]
    NoBtfFunction(&'static str),
    #[error("{function}() takes ({params}) here, the program reads argument {index} as `{want}`")]
    Params {
        function: &'static str,
        params: String,
        index: usize,
        want: &'static str,
    },

    #[error("frame pointers were asked for")]
    FramePointersAsked,
    #[error(
        "this kernel lacks what bar's own stack walk needs (bpf_loop, bpf_task_pt_regs or BTF \
         for struct pt_regs)"
    )]
    NoOwnWalk,

    #[error("program {0} is missing from the object")]
    NoProgram(String),
    #[error(
        "the kernel cannot attach it: ENOTSUPP (524), which is what x86 kernels before 6.6 \
         answer for fentry on functions with more than six arguments"
    )]
    NotSupported,
    /// The verifier's last word, without the thousands of lines before it.
    #[error("the kernel refused to load it: {io_error}{}", parenthesized(.last))]
    Refused { io_error: String, last: String },
    /// Any other failure of aya, with its causes.
    #[error("{0}")]
    Program(String),
    #[error("cpu-clock on CPU {cpu}: {error}")]
    CpuClock { cpu: u32, error: Box<Error> },
    #[error("{symbol}: {error}")]
    Kprobe { symbol: String, error: Box<Error> },
}

/// Written as its message, as the reasons of `info --json` always were.
impl Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn parenthesized(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
    }
}

/// ENOTSUPP, the kernel-internal "not supported" (524) that reaches user space from BPF
/// attach paths, and that libc cannot name.
const ENOTSUPP: i32 = 524;

impl From<&ProgramError> for Error {
    /// A short, one-line reason (the verifier log can be thousands of lines).
    fn from(e: &ProgramError) -> Self {
        let mut src: Option<&dyn std::error::Error> = Some(e);
        while let Some(err) = src {
            if let Some(io) = err.downcast_ref::<std::io::Error>()
                && io.raw_os_error() == Some(ENOTSUPP)
            {
                return Self::NotSupported;
            }
            src = err.source();
        }
        match e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                let log = verifier_log.to_string();
                // The whole log, for whoever has to find out why a kernel refuses a program.
                if std::env::var_os("BAR_VERIFIER_LOG").is_some() {
                    eprintln!("bar-probe: verifier log:\n{log}");
                }
                let last = log
                    .lines()
                    .map(str::trim)
                    .rfind(|l| {
                        !l.is_empty()
                            && !l.starts_with("processed ")
                            && !l.starts_with("verification time")
                            && !l.starts_with("stack depth")
                    })
                    .unwrap_or_default()
                    .to_owned();
                Self::Refused {
                    io_error: io_error.to_string(),
                    last,
                }
            }
            other => {
                let mut s = other.to_string();
                let mut src = std::error::Error::source(other);
                while let Some(inner) = src {
                    s.push_str(": ");
                    s.push_str(&inner.to_string());
                    src = inner.source();
                }
                Self::Program(s)
            }
        }
    }
}

impl From<ProgramError> for Error {
    fn from(e: ProgramError) -> Self {
        Self::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What users read in `info` and summary.json, spelled as it was when these were strings.
    #[test]
    fn reasons_read_as_they_always_did() {
        let cases = [
            (
                Error::Avoided(Method::TpBtf),
                "tp_btf was turned off with --avoid",
            ),
            (
                Error::NoneOf(vec![
                    Error::NoTracepoint {
                        category: "sched".into(),
                        name: "sched_move_numa".into(),
                        why: "No such file or directory (os error 2)".into(),
                    },
                    Error::NoBtfTracepoint("sched_stick_numa".into()),
                ]),
                "tracepoint sched:sched_move_numa is not available (No such file or directory \
                 (os error 2)); no BTF tracepoint sched_stick_numa in this kernel",
            ),
            (
                Error::Tracepoint {
                    tracepoint: "sched:sched_switch".into(),
                    error: Box::new(Error::NoField("prev_state".into())),
                },
                "tracepoint sched:sched_switch: field prev_state is missing",
            ),
            (
                Error::Refused {
                    io_error: "Permission denied (os error 13)".into(),
                    last: String::new(),
                },
                "the kernel refused to load it: Permission denied (os error 13)",
            ),
            (
                Error::Refused {
                    io_error: "Invalid argument (os error 22)".into(),
                    last: "R1 invalid mem access 'scalar'".into(),
                },
                "the kernel refused to load it: Invalid argument (os error 22) (R1 invalid mem \
                 access 'scalar')",
            ),
            (
                Error::Kprobe {
                    symbol: "finish_task_switch.isra.0".into(),
                    error: Box::new(Error::Program("boom".into())),
                },
                "finish_task_switch.isra.0: boom",
            ),
            (
                Error::System(system::Error::NoFunction("tcp_v6_connect".into())),
                "the kernel has no function tcp_v6_connect",
            ),
            (
                Error::Params {
                    function: "handle_mm_fault",
                    params: "vma, address, flags, regs".into(),
                    index: 2,
                    want: "flags",
                },
                "handle_mm_fault() takes (vma, address, flags, regs) here, the program reads \
                 argument 2 as `flags`",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
            // info --json writes the reason itself, not a tagged enum.
            assert_eq!(
                serde_json::to_value(&error).unwrap(),
                serde_json::Value::String(text.to_owned())
            );
        }
    }
}
