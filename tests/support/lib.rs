//! Helpers for bar's integration tests: find bar-probe, start the built-in workloads, run the
//! product as a user would, and read what it wrote.
//!
//! Tests that load programs need root. Without it they print why and pass, unless
//! `BAR_REQUIRE_ROOT=1` (set by `cargo xtask test`), where skipping would hide a failure.

mod go;
pub mod http;

pub use go::{go, go_sha_command, go_sha_or_skip, pprof_or_skip};

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use bar::capture::{Body, Reader, Writer, proto};

pub use serde_json::Value;

/// The bar-probe binary: `$BAR_PROBE`, or the one built next to this test.
pub fn bar_probe() -> PathBuf {
    if let Some(p) = std::env::var_os("BAR_PROBE") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/bar-probe
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join("bar-probe");
    assert!(
        p.exists(),
        "{} not built: run `cargo build -p bar-userspace` first or set BAR_PROBE",
        p.display()
    );
    p
}

/// Where the C workloads the tests build are (`frameless`, `libframeless_dl.so`):
/// `$BAR_WORKLOADS_DIR` where they were moved (the VMs), else where the build left them.
pub fn workloads_dir() -> PathBuf {
    std::env::var_os("BAR_WORKLOADS_DIR").map_or_else(
        || PathBuf::from(env!("BAR_WORKLOADS_BUILD_DIR")),
        PathBuf::from,
    )
}

/// The frameless C workload: built as Debian builds its libraries (`-O2
/// -fomit-frame-pointer`, no debug information).
pub fn frameless() -> PathBuf {
    workloads_dir().join("frameless")
}

/// The chain every cpu, fault and sleep of the frameless workload goes through, root first.
pub const CHAIN: &str =
    "frameless_run;frameless_stage_one;frameless_stage_two;frameless_stage_three;";

/// Weight of the stacks whose user part ends in `leaf` (kernel frames and annotations may
/// follow), and of those that are whole: from `_start`, through `chain` right above the leaf.
fn whole(folded: &Folded, chain: &str, leaf: &str) -> (u64, u64) {
    let mut total = 0;
    let mut good = 0;
    for (stack, w) in &folded.stacks {
        let Some(at) = stack.find(&format!(";{leaf}")) else {
            continue;
        };
        total += w;
        let (process, rest) = stack.split_once(';').unwrap_or_default();
        let upto = &stack[..at + 1];
        if !process.is_empty() && rest.starts_with("_start;") && upto.ends_with(chain) {
            good += w;
        }
    }
    (total, good)
}

/// Asserts that at least 90% of the weight in `leaf` has the whole chain (see [`whole`]),
/// reports the share as metric `unwind_WHAT_whole_pct`, and returns the weight in `leaf`.
pub fn assert_whole(folded: &Folded, chain: &str, leaf: &str, what: &str) -> u64 {
    let (total, good) = whole(folded, chain, leaf);
    assert!(
        total > 0 && good * 100 >= total * 90,
        "{what}: {good} of {total} of the weight in {leaf} has the whole chain\n{:#?}",
        folded.stacks
    );
    metric(&format!("unwind_{what}_whole_pct"), good * 100 / total);
    total
}

/// True when the test may load programs; prints the reason and returns false otherwise.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc_geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("BAR_REQUIRE_ROOT").is_none(),
        "{test}: needs root, and BAR_REQUIRE_ROOT is set"
    );
    eprintln!("skipped {test}: loading eBPF programs needs root");
    false
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// True when the tests run under full-system emulation (the test VMs set
/// `BAR_TEST_EMULATED=1`). A virtual CPU is then a host thread that other host work preempts:
/// guest timers fire late and periodic sampling loses periods. Only bounds that depend on
/// timer delivery are relaxed, and the test says so.
pub fn emulated() -> bool {
    std::env::var_os("BAR_TEST_EMULATED").is_some_and(|v| v == "1")
}

/// Prints a measurement for the test report, one line `bar-metric: NAME VALUE`; the VM matrix
/// collects these lines from every kernel.
pub fn metric(name: &str, value: impl std::fmt::Display) {
    println!("bar-metric: {name} {value}");
}

/// `bar-probe info --json`.
pub fn machine_info() -> Value {
    let out = run(&["info", "--json"]);
    assert!(out.status.success(), "bar-probe info failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("info --json is JSON")
}

/// One attach point of a family, in its chain's order: how `info` names it, its method, and
/// why this machine cannot use it (None when it can).
#[derive(Debug, Clone)]
pub struct ChainPoint {
    pub attach: String,
    pub method: String,
    pub unusable: Option<String>,
}

/// The chain of a family as `info` found it here, best first. `info` lists the point in use
/// and the rejected ones; those rejected because a better one was used come after it.
pub fn family_chain(info: &Value, family: &str) -> Vec<ChainPoint> {
    let f = info["families"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["family"] == family))
        .unwrap_or_else(|| panic!("family {family} in {info}"));
    let point = |attach: &str, unusable: Option<String>| ChainPoint {
        attach: attach.to_owned(),
        method: attach.split(':').next().unwrap_or_default().to_owned(),
        unusable,
    };
    let mut before = Vec::new();
    let mut after = Vec::new();
    for r in f["rejected"].as_array().into_iter().flatten() {
        let attach = r["attach"].as_str().unwrap_or_default();
        let reason = r["reason"].as_str().unwrap_or_default();
        if reason.starts_with("not needed:") {
            after.push(point(attach, None));
        } else {
            before.push(point(attach, Some(reason.to_owned())));
        }
    }
    if let Some(m) = f["method"].as_str() {
        before.push(point(m, None));
    }
    before.extend(after);
    before
}

/// The `--avoid` list that makes the loader pass over every point before `chain[i]`.
pub fn avoid_before(chain: &[ChainPoint], i: usize) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for p in &chain[..i] {
        if p.method != chain[i].method && !methods.contains(&p.method.as_str()) {
            methods.push(&p.method);
        }
    }
    methods.join(",")
}

/// A fresh output folder under `$BAR_TEST_TMPDIR` (the test VMs point it at a disk), else the
/// target directory.
pub fn out_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("BAR_TEST_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("bar-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A built-in workload started with `--wait`: it runs when `go` is called.
pub struct Workload {
    pub child: Child,
}

impl Workload {
    pub fn start(args: &[&str]) -> Self {
        Self::start_as(&bar_probe(), args)
    }

    /// Starts the workload from `exe`, a copy of bar-probe under another name (the process
    /// name is the executable's).
    pub fn start_as(exe: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(exe);
        cmd.arg("workload").args(args).arg("--wait");
        Self::spawn(cmd)
    }

    /// Starts a workload program of another kind that follows the same protocol (waits for a
    /// line on stdin, ends with a JSON line on stdout), such as the Go workload.
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start workload {cmd:?}: {e}"));

        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the workload start its work.
    pub fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write go");
        stdin.flush().expect("flush");
    }

    /// Waits for the workload to finish and returns its JSON report.
    pub fn finish(self) -> Value {
        let out = self.child.wait_with_output().expect("workload output");
        assert!(out.status.success(), "workload failed: {:?}", out);
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.lines().last().expect("a report line")).expect("json report")
    }

    /// Records the whole of the workload's work with `bar-probe attach --pid PID ARGS -o DIR`:
    /// attaches, lets it go, and stops the recording once it is done. Returns the workload's
    /// report and the finished recording.
    pub fn recorded(mut self, args: &[&str], dir: &Path) -> (Value, Recording) {
        let pid = self.pid().to_string();
        let mut all = vec!["attach", "--pid", &pid];
        all.extend_from_slice(args);
        let rec = Recording::start(&all, dir);
        self.go();
        let report = self.finish();
        (report, rec.finish())
    }
}

/// A running `bar-probe` recording.
pub struct Recording {
    pub child: Child,
    pub dir: PathBuf,
    stderr_lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

impl Recording {
    /// Starts `bar-probe <args> -o DIR` and waits until it says it is recording.
    pub fn start(args: &[&str], dir: &Path) -> Self {
        Self::start_with_env(args, dir, &[])
    }

    /// As [`Recording::start`], with these environment variables set for bar-probe.
    pub fn start_with_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bar_probe())
            .args(args)
            .arg("-o")
            .arg(dir)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bar-probe");
        let stderr: ChildStderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut rec = Self {
            child,
            dir: dir.to_owned(),
            stderr_lines: rx,
            stderr: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rec.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("recording ");
                    rec.stderr.push(line);
                    if ready {
                        return rec;
                    }
                }
                Err(_) => {
                    let _ = rec.child.kill();
                    let out = rec.child.wait_with_output().expect("bar-probe output");
                    panic!(
                        "bar-probe did not start recording: {:?}\nstderr: {}",
                        out.status,
                        rec.stderr.join("\n")
                    );
                }
            }
        }
    }

    /// Waits for bar-probe to finish and checks it succeeded.
    pub fn finish(mut self) -> Self {
        let status = self.child.wait().expect("wait bar-probe");
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(line);
        }
        assert!(
            status.success(),
            "bar-probe failed: {status:?}\nstderr:\n{}",
            self.stderr.join("\n")
        );
        self
    }

    /// Stops bar-probe with SIGINT (as Ctrl-C would) and waits for it.
    pub fn interrupt(self) -> Self {
        // SAFETY: sending a signal to our child.
        unsafe { kill(self.child.id() as i32, 2) };
        self.finish()
    }

    pub fn summary(&self) -> Value {
        read_json(&self.dir.join("summary.json"))
    }

    pub fn folded(&self, view: &str) -> Folded {
        Folded::read(&self.dir.join(format!("{view}.folded")))
    }
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Runs a built-in workload to its end under `bar-probe attach --pid PID ATTACH_ARGS -o DIR`:
/// starts it, attaches, lets it go once bar-probe records, and waits for both. Returns the
/// workload's report and the finished recording.
pub fn attach_through(workload: &[&str], attach_args: &[&str], dir: &Path) -> (Value, Recording) {
    let mut w = Workload::start(workload);
    let pid = w.pid().to_string();
    let mut args = vec!["attach", "--pid", &pid];
    args.extend_from_slice(attach_args);
    let rec = Recording::start(&args, dir);
    w.go();
    let report = w.finish();
    (report, rec.finish())
}

/// The `migrate` workload compacts memory from its own thread, so the pages compaction
/// migrates are counted under the workload's function: no more than the kernel migrated on
/// the whole machine meanwhile, and some when that was more than a few. Where memory was
/// already compact there is nothing to see here; the NUMA VMs check real cross-node moves.
pub fn assert_compaction_attributed(report: &Value, rec: &Recording) {
    assert_eq!(
        report["compacted"], true,
        "the workload could compact memory"
    );
    let meanwhile = report["pages_migrated_meanwhile"].as_u64().unwrap();
    let numa = &rec.summary()["kinds"]["numa"];
    let folded = rec.folded("numa");
    let attributed = folded.weight_where(|s| {
        s.contains("migrate_own_pages") && s.ends_with("[migrate pages: compaction]")
    });
    metric("compaction_pages_attributed", attributed);
    metric("compaction_pages_migrated_meanwhile", meanwhile);
    assert!(
        attributed <= meanwhile && (attributed > 0 || meanwhile < 16),
        "{attributed} pages under migrate_own_pages, {meanwhile} migrated by the machine \
         meanwhile: {numa}\n{:#?}",
        folded.stacks
    );
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// A folded-stacks file: stack -> weight.
#[derive(Debug, Default)]
pub struct Folded {
    pub stacks: BTreeMap<String, u64>,
}

impl Folded {
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut stacks = BTreeMap::new();
        for line in text.lines() {
            let (stack, weight) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad folded line: {line}"));
            let w: u64 = weight
                .parse()
                .unwrap_or_else(|_| panic!("bad weight in: {line}"));
            *stacks.entry(stack.to_owned()).or_default() += w;
        }
        Self { stacks }
    }

    pub fn total(&self) -> u64 {
        self.stacks.values().sum()
    }

    /// Total weight of stacks containing a frame that contains `needle`.
    pub fn weight_with(&self, needle: &str) -> u64 {
        self.stacks
            .iter()
            .filter(|(s, _)| s.split(';').any(|f| f.contains(needle)))
            .map(|(_, w)| w)
            .sum()
    }

    /// Total weight of stacks matching a predicate.
    pub fn weight_where(&self, f: impl Fn(&str) -> bool) -> u64 {
        self.stacks
            .iter()
            .filter(|(s, _)| f(s))
            .map(|(_, w)| w)
            .sum()
    }
}

/// Checks the off-CPU time recorded in `sleep_in_named_function` against the `sleep`
/// workload's report. A thread cannot be off CPU for less than the sleeps it asked for, nor for
/// longer than the time it measured around them (which also holds the CPU time of the calls,
/// large under emulation): bar's figure must fall between the two, give or take 2%.
pub fn assert_blocked_matches_sleeps(report: &Value, folded: &Folded) -> u64 {
    let asked = report["total_us"].as_u64().expect("total_us");
    let measured = report["measured_us"].as_u64().expect("measured_us");
    let blocked =
        folded.weight_where(|s| s.contains("sleep_in_named_function") && s.ends_with("[blocked]"));
    assert!(
        blocked * 100 >= asked * 98 && blocked * 100 <= measured * 102,
        "blocked {blocked} us in sleep_in_named_function; sleeps asked {asked} us, measured {measured} us\n{:#?}",
        folded.stacks
    );
    blocked
}

/// Off-CPU intervals blocked in `sleep_in_named_function`, as summary.json counts them per
/// stack (each interval once, summed in the kernel or not).
pub fn sleeps_counted(rec: &Recording) -> u64 {
    rec.summary()["kinds"]["offcpu"]["top_blocked_stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["stack"]
                .as_str()
                .is_some_and(|s| s.contains("sleep_in_named_function"))
        })
        .map(|s| s["blocked_us"]["count"].as_u64().unwrap_or(0))
        .sum()
}

/// Asserts a failure with exactly one stderr line, `bar-probe: ...`, containing `needle`.
pub fn one_line_error(out: &Output, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got {:?}; stderr: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line expected, got:\n{stderr}");
    assert!(lines[0].starts_with("bar-probe: "), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "expected '{needle}' in: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    stderr
}

/// Runs bar-probe to completion and returns its output.
pub fn run(args: &[&str]) -> Output {
    Command::new(bar_probe())
        .args(args)
        .output()
        .expect("run bar-probe")
}

/// The other user of the privilege tests: nobody (uid and gid 65534), with no groups. It needs
/// no entry in the user database (the test VMs have none).
pub const NOBODY: u32 = 65534;

/// A command run as [`NOBODY`].
pub fn as_nobody(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    c
}

/// Runs a shell command line as [`NOBODY`] and checks that it succeeded.
pub fn nobody_sh(script: &str) {
    let out = as_nobody("sh")
        .args(["-c", script])
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh folder in the shared temporary folder that belongs to [`NOBODY`]: ground the other
/// user controls.
pub fn nobody_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bar-sec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create a folder in the temporary folder");
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown to nobody");
    dir
}

/// A real capture (on-CPU and off-CPU samples of a small workload, from the fuzz corpus),
/// carried in the test binary so that the test VMs have it too.
pub const SMALL_CAPTURE: &[u8] = include_bytes!("../../fuzz/corpus/capture_reader/offcpu-cpu.bar");

/// Writes [`SMALL_CAPTURE`] to `path` rewritten: `insert` after its metadata, and every later
/// block through `edit` (None drops it), with a new trailer that matches. What a user could
/// hand to `bar-probe report`.
pub fn craft_capture(
    path: &Path,
    insert: impl FnOnce(&mut proto::Meta) -> Vec<Body>,
    mut edit: impl FnMut(Body) -> Option<Body>,
) {
    let mut reader =
        Reader::from_bytes(SMALL_CAPTURE.to_vec(), Path::new("small")).expect("capture");
    let Some(Body::Meta(mut meta)) = reader.next() else {
        panic!("the capture starts with its metadata")
    };
    let extra = insert(&mut meta);
    let mut w = Writer::create(path, meta).expect("write a capture");
    for b in extra {
        w.write(b).expect("write a block");
    }
    let mut trailer = None;
    for body in reader.by_ref() {
        match body {
            Body::Trailer(t) => trailer = Some(t),
            b => {
                if let Some(b) = edit(b) {
                    w.write(b).expect("write a block");
                }
            }
        }
    }
    w.finish(trailer.expect("a complete capture"))
        .expect("finish the capture");
}

/// A marker block `offset_ns` after the capture's start.
pub fn marker(meta: &proto::Meta, name: &str, offset_ns: u64, end: bool) -> Body {
    Body::Marker(proto::Marker {
        name: name.to_owned(),
        ts: meta.start_ns + offset_ns,
        end,
    })
}

/// Waits for a child at most `limit`; kills it and panics if it takes longer.
pub fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "{what} did not finish within {limit:?}; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

unsafe extern "C" {
    fn setrlimit(resource: i32, rlim: *const [u64; 2]) -> i32;
}

/// Holds a command to `bytes` of address space, so that a runaway allocation fails in the
/// child instead of taking the machine's memory from everyone.
pub fn limit_memory(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt as _;
    const RLIMIT_AS: i32 = 9;
    // SAFETY: setrlimit is a plain system call, fine between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if setrlimit(RLIMIT_AS, &[bytes, bytes]) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
