//! `cargo xtask`: orchestration around cargo, as in aya's own xtask.
//!
//!   cargo xtask demo      set up, build, run `bar-probe demo` (the README's first command)
//!   cargo xtask test      set up, fmt, clippy, unit and integration tests as root (the second)
//!   cargo xtask bench     set up the peers, build, measure, write docs/benchmarks.md
//!   cargo xtask vm-test   the integration tests on the host kernel and on 6.1 and 6.12 in qemu
//!   cargo xtask setup     only install what the build needs

mod bench;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the build prerequisites (idempotent).
    Setup,
    /// Build bar-probe and run its demo.
    Demo {
        /// Arguments passed to `bar-probe demo`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure what bar costs the workloads it records, next to its peers, and write
    /// docs/benchmarks.md (about 35 minutes; needs root and an otherwise idle machine).
    Bench {
        /// One part alone, into its own section of the report: `gate` (the CI gate's false
        /// alarms and detection, about 25 minutes), `flight` (a whole host under a fork storm,
        /// about 16 minutes), `unwind` (the unwinding costs).
        #[arg(value_enum)]
        part: Option<BenchPart>,
        /// Same-build pairs and detection trials of `bench gate`.
        #[arg(long, default_value_t = 20)]
        pairs: usize,
        /// Threshold of `bench gate`, in points of share.
        #[arg(long, default_value_t = 1.0)]
        fail_above: f64,
        /// Repetitions of every configuration.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Small amounts of work, to try the harness (the figures mean little).
        #[arg(long)]
        quick: bool,
        /// Also measure bar-probe as of this revision, for before/after figures (by default
        /// the last one before the changes the report describes: before unwind tables).
        #[arg(long)]
        before: Option<String>,
        /// Leave out the before/after measurements (and the build they need).
        #[arg(long)]
        no_before: bool,
        /// Start a trial only when other processes use at most this fraction of the CPUs.
        #[arg(long, default_value_t = 0.10)]
        max_busy: f64,
        /// Where the report goes, relative to the workspace.
        #[arg(long, default_value = "docs/benchmarks.md")]
        doc: PathBuf,
    },
    /// Fuzz the capture reader from the corpus of real captures (needs nightly; installs
    /// cargo-fuzz once).
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// The whole test suite: formatting, lints, unit tests, root integration tests.
    Test {
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// The kernel matrix: the integration tests on the host kernel, then in qemu on Debian's
    /// cloud kernels (fetched with apt), where kprobes, fentry and two NUMA nodes exist.
    VmTest {
        /// Kernel series to boot, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "6.1,6.12")]
        kernels: Vec<String>,
        /// Leave out the host kernel.
        #[arg(long)]
        no_host: bool,
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
        /// Minutes one VM may take before it counts as hung.
        #[arg(long, default_value_t = 30)]
        timeout_minutes: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BenchPart {
    Gate,
    /// Only the whole host under a fork storm: `record --all` and the flight recorder.
    Flight,
    /// Only the unwinding costs: tables, frameless storms, the cost of a frame.
    Unwind,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A command run as root: directly when we are root, through sudo otherwise.
fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(program);
        c
    }
}

/// PATH with the tools scripts/setup.sh installs (bpf-linker) in front.
fn path_with_tools() -> std::ffi::OsString {
    let tools = std::env::var_os("BAR_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/bar-tools")
        });
    let mut paths = vec![tools.join("bin")];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap_or_default()
}

fn setup(group: &str) -> anyhow::Result<()> {
    run(Command::new(root().join("scripts/setup.sh")).arg(group))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The last revision before the product changes that `docs/benchmarks.md` reports (the
/// last one that walked user stacks by frame pointer only).
const BEFORE_REV: &str = "ecb23ef";

/// What clippy holds both sides of the workspace to. Functions over clippy.toml's length fail
/// too: split them, don't allow them.
const LINTS: [&str; 4] = ["-D", "warnings", "-W", "clippy::too_many_lines"];

fn main() {
    // One line, not a backtrace: what failed is already above it.
    if let Err(e) = xtask() {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn xtask() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Bench {
            part: Some(BenchPart::Gate),
            pairs,
            fail_above,
            quick,
            doc,
            ..
        } => {
            if !is_root() {
                bail!("the benchmark records: run `sudo -E cargo xtask bench gate`");
            }
            setup("build")?;
            run(cargo().args(["build", "--release", "-p", "bar-userspace"]))?;
            bench::gate::run(
                &root(),
                &bench::gate::Options {
                    pairs: if quick { pairs.min(4) } else { pairs },
                    seconds: if quick { 1.0 } else { 2.0 },
                    fail_above,
                    doc,
                },
            )
        }
        Cmd::Bench {
            part,
            reps,
            quick,
            before,
            no_before,
            max_busy,
            doc,
            ..
        } => {
            if !is_root() {
                bail!("the benchmarks load eBPF programs: run `sudo -E cargo xtask bench`");
            }
            setup("bench")?;
            run(cargo().args(["build", "--release", "-p", "bar-userspace"]))?;
            let opts = bench::Options {
                reps,
                quick,
                before: match part {
                    None | Some(BenchPart::Unwind) if !no_before => {
                        Some(before.unwrap_or_else(|| BEFORE_REV.into()))
                    }
                    _ => None,
                },
                max_busy,
                doc,
            };
            match part {
                None => bench::run(&root(), opts, path_with_tools()),
                Some(BenchPart::Flight) => {
                    bench::run_part(&root(), bench::Part::Flight, opts, path_with_tools())
                }
                Some(BenchPart::Unwind) => {
                    bench::run_part(&root(), bench::Part::Unwind, opts, path_with_tools())
                }
                Some(BenchPart::Gate) => unreachable!("matched above"),
            }
        }
        Cmd::Setup => setup("build"),
        Cmd::Demo { args } => {
            setup("build")?;
            run(cargo().args(["build", "--release", "-p", "bar-userspace"]))?;
            run(as_root(&root().join("target/release/bar-probe"))
                .arg("demo")
                .args(args))
        }
        Cmd::VmTest {
            kernels,
            no_host,
            filter,
            timeout_minutes,
        } => {
            if !is_root() {
                bail!("the kernel matrix loads eBPF programs: run `sudo -E cargo xtask vm-test`");
            }
            vm::vm_test(&vm::Options {
                kernels,
                host: !no_host,
                filter,
                timeout: std::time::Duration::from_secs(timeout_minutes * 60),
            })
        }
        Cmd::Fuzz { seconds } => fuzz(seconds),
        Cmd::Test { filter } => test(filter),
    }
}

/// `cargo xtask fuzz`: the capture reader from the committed corpus.
fn fuzz(seconds: u64) -> anyhow::Result<()> {
    setup("build")?;
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        run(cargo().args(["install", "--locked", "cargo-fuzz"]))?;
    }
    // New inputs go to a working corpus under target/, seeded from the committed one.
    let work = root().join("target/fuzz-corpus");
    std::fs::create_dir_all(&work)?;
    for e in std::fs::read_dir(root().join("fuzz/corpus/capture_reader"))? {
        let e = e?;
        std::fs::copy(e.path(), work.join(e.file_name()))?;
    }
    // cargo fuzz finds fuzz/ from the workspace root, where `run` starts commands.
    run(Command::new("cargo")
        .args([
            "+nightly",
            "fuzz",
            "run",
            "--sanitizer",
            "none",
            "capture_reader",
        ])
        .arg(&work)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-max_len=262144",
            "-rss_limit_mb=4096",
        ])
        .env("PATH", path_with_tools()))
}

/// `cargo xtask test`: fmt, clippy, unit tests, then the integration suite as root.
fn test(filter: Option<String>) -> anyhow::Result<()> {
    setup("build")?;
    // Headless Chromium for the report test.
    setup("report")?;
    // The export test reads bar's pprof files with `go tool pprof`.
    setup("export")?;
    // The unwinding test measures python3.11's stacks against perf's DWARF mode.
    setup("stacks")?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    long_files(700)?;
    // The kernel programs only build for the BPF target, with the nightly toolchain.
    run(cargo()
        .args([
            "clippy",
            "--workspace",
            "--exclude",
            "bar-ebpf",
            "--all-targets",
            "--release",
            "--",
        ])
        .args(LINTS))?;
    run(Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "-p",
            "bar-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
        ])
        .args(LINTS)
        .env("PATH", path_with_tools()))?;
    run(cargo().args(["build", "--release", "-p", "bar-userspace"]))?;
    // Unit tests of every crate but the integration suite. Some read real binaries
    // built with tools installed above (Go): here, a missing one fails them.
    run(cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "bar-tests",
            "--exclude",
            "bar-ebpf",
        ])
        .env("BAR_REQUIRE_ROOT", "1"))?;
    // Integration tests load programs into the running kernel: root, one at a time
    // (they share the kernel and the CPUs), and no silent skipping.
    run(cargo().args(["test", "--release", "-p", "bar-tests", "--no-run"]))?;
    let mut cmd = cargo();
    cmd.args(["test", "--release", "-p", "bar-tests", "--"]);
    cmd.arg("--test-threads=1");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    cmd.env("BAR_REQUIRE_ROOT", "1")
        .env("BAR_PROBE", root().join("target/release/bar-probe"));
    if !is_root() {
        bail!("the integration tests load eBPF programs: run `sudo -E cargo xtask test`");
    }
    run(&mut cmd)
}

/// Fails on Rust sources longer than `max` lines: past that a file holds more than one thing,
/// and splits by what its parts do (clippy.toml bounds the functions).
fn long_files(max: usize) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "--cached",
            "--others",
            "--exclude-standard",
            "*.rs",
        ])
        .current_dir(root())
        .output()?;
    if !out.status.success() {
        eprintln!("xtask: not a git checkout: file lengths not checked");
        return Ok(());
    }
    let mut long = Vec::new();
    for path in String::from_utf8_lossy(&out.stdout).lines() {
        // A file listed but deleted from the work tree is not one to measure.
        let Ok(text) = std::fs::read_to_string(root().join(path)) else {
            continue;
        };
        let lines = text.lines().count();
        if lines > max {
            long.push(format!("{path} ({lines})"));
        }
    }
    if !long.is_empty() {
        bail!("over {max} lines, split them: {}", long.join(", "));
    }
    Ok(())
}
