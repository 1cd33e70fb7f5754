//! `cargo xtask vm-test`: the kernel matrix. The integration tests run on the host kernel, then
//! inside qemu on Debian's 6.1 and 6.12 cloud kernels, where kprobes and fentry work and the
//! machine has two NUMA nodes. The scripts in `scripts/vm/` fetch the kernels, build the
//! initramfs and boot it; this module drives them and reads what came out on the consoles.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{cargo, root, run};

/// Attach points a VM kernel must be able to use (`family:method`), handed to the tests so
/// that one failing there is a failure, not a point passed over. Debian's 6.1 and 6.12 cloud
/// kernels have kprobes and fentry, with two exceptions the kernels themselves explain:
/// offcpu has no fentry (their BTF does not describe finish_task_switch, whose only copy is
/// the compiler clone finish_task_switch.isra.0), and 6.1 cannot put fentry on
/// migrate_pages(), which has seven arguments (x86 trampolines take six before 6.6).
fn vm_required_attach(series: &str) -> &'static str {
    match series {
        "6.1" => "offcpu:kprobe,faults:fentry,faults:kprobe,tcp:fentry,tcp:kprobe,numa:kprobe",
        "6.12" => {
            "offcpu:kprobe,faults:fentry,faults:kprobe,tcp:fentry,tcp:kprobe,numa:fentry,numa:kprobe"
        }
        // Another series: every point it cannot use is reported with its reason.
        _ => "",
    }
}

pub struct Options {
    pub kernels: Vec<String>,
    pub host: bool,
    pub filter: Option<String>,
    pub timeout: Duration,
}

/// What one kernel's run produced.
#[derive(Default)]
struct Outcome {
    kernel: String,
    release: String,
    /// Family -> attach point in use, from `bar-probe info --json`.
    attach: BTreeMap<String, String>,
    /// Suite -> (passed, failed, ignored), from libtest's summaries.
    suites: BTreeMap<String, (u64, u64, u64)>,
    failed_tests: Vec<String>,
    /// Tests passed over with their reason, and anything else the reader should know.
    notes: Vec<String>,
    metrics: Vec<String>,
    /// Why the run as a whole failed (did not boot, timed out, a suite did not finish).
    error: Option<String>,
    elapsed: Duration,
    log: PathBuf,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.error.is_none() && self.failed_tests.is_empty()
    }
}

/// The integration suites that exercise the kernel (security: root against another user, with
/// the guest's own /tmp, setpriv and no user database). The others (diff, export, report_html)
/// only read files bar already wrote and need tools (go, chromium) the VMs do not carry: the
/// host run covers them.
const KERNEL_SUITES: [&str; 10] = [
    "attach",
    "bad_input",
    "capture",
    "families",
    "flight",
    "methods",
    "numa_vm",
    "phases",
    "security",
    "unwind",
];

/// The test binaries of the kernel suites, built in release mode, and the folder of the C
/// workloads their build script compiled (the VMs get them too).
fn test_binaries() -> anyhow::Result<(Vec<PathBuf>, PathBuf)> {
    let out = cargo()
        .current_dir(root())
        .args([
            "test",
            "--release",
            "-p",
            "bar-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut bins = Vec::new();
    let mut workloads = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] == "build-script-executed"
            && msg["package_id"]
                .as_str()
                .is_some_and(|p| p.contains("bar-tests") || p.contains("/tests#"))
            && let Some(out_dir) = msg["out_dir"].as_str()
        {
            workloads = Some(PathBuf::from(out_dir).join("workloads"));
        }
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let kernel_suite = msg["target"]["name"]
            .as_str()
            .is_some_and(|n| KERNEL_SUITES.contains(&n));
        if msg["reason"] == "compiler-artifact"
            && is_test
            && kernel_suite
            && let Some(exe) = msg["executable"].as_str()
        {
            bins.push(PathBuf::from(exe));
        }
    }
    if bins.is_empty() {
        bail!("cargo built no integration test binaries");
    }
    bins.sort();
    let workloads =
        workloads.context("cargo did not say where the tests' C workloads were built")?;
    Ok((bins, workloads))
}

/// Runs a command with its output going to the console (prefixed) and to `log`.
fn stream(cmd: &mut Command, prefix: &str, log: &Path) -> anyhow::Result<i32> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let mut file =
        std::fs::File::create(log).with_context(|| format!("cannot write {}", log.display()))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let err_thread = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        // The serial console has carriage returns and escape sequences; keep the text.
        let text: String = String::from_utf8_lossy(&line)
            .chars()
            .filter(|c| *c != '\r' && (*c == '\t' || !c.is_control()))
            .collect();
        let _ = writeln!(file, "{text}");
        eprintln!("{prefix} {text}");
    }
    for line in err_thread.join().unwrap_or_default() {
        let _ = writeln!(file, "{line}");
        eprintln!("{prefix} {line}");
    }
    Ok(child.wait()?.code().unwrap_or(-1))
}

/// Reads a run's console: the info JSON, libtest's summaries, failures, skips and metrics.
fn parse(out: &mut Outcome, text: &str) {
    let mut info = String::new();
    let mut in_info = false;
    let mut suite = String::new();
    for line in text.lines() {
        // In a VM console, init's markers may follow other output on the same line.
        let marker = line.find("BAR-VM: ").map(|i| &line[i + 8..]);
        match marker {
            Some(m) if m.starts_with("info-begin") => in_info = true,
            Some(m) if m.starts_with("info-end") => in_info = false,
            Some(m) if m.starts_with("boot ") => {
                out.release = m[5..].split_whitespace().next().unwrap_or("").to_owned();
            }
            Some(m) if m.starts_with("suite-begin ") => suite = m[12..].trim().to_owned(),
            Some(m) if m.starts_with("suite-end ") => {
                let rc = m.split("rc=").nth(1).and_then(|r| r.split(' ').next());
                if rc != Some("0") && !out.suites.contains_key(&suite) {
                    out.error
                        .get_or_insert(format!("suite {suite} ended without a summary ({m})"));
                }
            }
            Some(m) if m.starts_with("error") => {
                out.error.get_or_insert(m.to_owned());
            }
            _ if in_info => {
                info.push_str(line);
                info.push('\n');
            }
            _ => {}
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |what: &str| {
                rest.split(';')
                    .find(|p| p.trim().ends_with(what))
                    .and_then(|p| p.split_whitespace().rev().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            out.suites.insert(
                suite.clone(),
                (num("passed"), num("failed"), num("ignored")),
            );
        } else if let Some(rest) = line.strip_prefix("thread '")
            && rest.contains("panicked at")
        {
            let name = rest.split('\'').next().unwrap_or_default();
            out.failed_tests.push(format!("{suite}::{name}"));
        } else if let Some(i) = line.find("bar-metric: ") {
            // Test output is not captured: a metric may follow libtest's "test name ... ".
            out.metrics.push(line[i + 12..].to_owned());
        } else if line.starts_with("skipped ")
            || line.contains(": not on this kernel: ")
            || line.contains(" not checked: ")
        {
            out.notes.push(line.to_owned());
        }
    }
    if let Ok(v) = serde_json::from_str::<Value>(&info) {
        if out.release.is_empty() {
            out.release = v["kernel_release"].as_str().unwrap_or_default().to_owned();
        }
        for f in v["families"].as_array().into_iter().flatten() {
            out.attach.insert(
                f["family"].as_str().unwrap_or_default().to_owned(),
                f["method"].as_str().unwrap_or("UNAVAILABLE").to_owned(),
            );
        }
    } else {
        out.error
            .get_or_insert("bar-probe info --json printed no JSON".to_owned());
    }
}

/// The integration tests on the host kernel, run the way the VMs run them.
fn host_run(probe: &Path, bins: &[PathBuf], opts: &Options, dir: &Path) -> Outcome {
    let start = Instant::now();
    let log = dir.join("host.log");
    let mut out = Outcome {
        kernel: "host".into(),
        log: log.clone(),
        ..Outcome::default()
    };
    // The same script the VMs run as init, with the host's own mounts.
    let mut text = String::new();
    let info = Command::new(probe).args(["info", "--json"]).output();
    match info {
        Ok(o) if o.status.success() => {
            let _ = writeln!(
                text,
                "BAR-VM: info-begin\n{}\nBAR-VM: info-end",
                String::from_utf8_lossy(&o.stdout)
            );
        }
        Ok(o) => out.error = Some(format!("bar-probe info failed: {o:?}")),
        Err(e) => out.error = Some(format!("cannot run bar-probe: {e}")),
    }
    for bin in bins {
        let name = suite_name(bin);
        let suite_log = dir.join(format!("host-{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.args(["--test-threads=1", "--nocapture"])
            .args(&opts.filter)
            .env("BAR_PROBE", probe)
            .env("BAR_REQUIRE_ROOT", "1")
            .current_dir(root());
        let rc = stream(&mut cmd, "host |", &suite_log).unwrap_or(-1);
        let _ = writeln!(text, "BAR-VM: suite-begin {name}");
        text.push_str(&std::fs::read_to_string(&suite_log).unwrap_or_default());
        let _ = writeln!(text, "BAR-VM: suite-end {name} rc={rc}");
    }
    let _ = std::fs::write(&log, &text);
    parse(&mut out, &text);
    out.elapsed = start.elapsed();
    out
}

/// cargo names test binaries `<name>-<hash>`.
fn suite_name(bin: &Path) -> String {
    let file = bin.file_name().unwrap_or_default().to_string_lossy();
    file.rsplit_once('-')
        .map_or(file.to_string(), |(n, _)| n.to_owned())
}

/// One kernel in qemu: fetch, boot with the initramfs, read the console.
fn vm_run(series: &str, initrd: &Path, opts: &Options, dir: &Path) -> Outcome {
    let start = Instant::now();
    let log = dir.join(format!("{series}.log"));
    let mut out = Outcome {
        kernel: series.to_owned(),
        log: log.clone(),
        ..Outcome::default()
    };
    let result = (|| -> anyhow::Result<()> {
        let fetched = Command::new(root().join("scripts/vm/kernel.sh"))
            .arg(series)
            .arg(dir)
            .stderr(Stdio::inherit())
            .output()
            .context("cannot run scripts/vm/kernel.sh")?;
        if !fetched.status.success() {
            bail!("the {series} kernel could not be fetched (see above)");
        }
        let line = String::from_utf8_lossy(&fetched.stdout).trim().to_owned();
        let (package, vmlinuz) = line
            .split_once(' ')
            .with_context(|| format!("kernel.sh printed {line:?}"))?;
        out.kernel = format!("{series} ({package})");
        let disk = dir.join(format!("{series}-scratch.img"));
        let kernel_args = vec![
            "bar.env=BAR_TEST_EMULATED=1".to_owned(),
            format!(
                "bar.env=BAR_TEST_REQUIRE_ATTACH={}",
                vm_required_attach(series)
            ),
        ];
        // Why a kernel refuses a program is what one most often needs to see from inside.
        let verifier_log = std::env::var("BAR_VERIFIER_LOG").ok();
        let kernel_args: Vec<String> = kernel_args
            .into_iter()
            .chain(opts.filter.iter().map(|f| format!("bar.filter={f}")))
            .chain(verifier_log.map(|v| format!("bar.env=BAR_VERIFIER_LOG={v}")))
            .collect();
        let boot = || -> anyhow::Result<(i32, String)> {
            // A fresh scratch disk for each boot: nothing left over from an earlier run.
            let _ = std::fs::remove_file(&disk);
            run(Command::new("mke2fs")
                .args(["-q", "-t", "ext4", "-L", "bar-scratch"])
                .arg(&disk)
                .arg("2G"))?;
            let rc = stream(
                Command::new(root().join("scripts/vm/run.sh"))
                    .arg(vmlinuz)
                    .arg(initrd)
                    .arg(&disk)
                    .arg(dir.join(format!("{series}.raw.log")))
                    .arg(opts.timeout.as_secs().to_string())
                    .args(&kernel_args),
                &format!("{series} |"),
                &log,
            )?;
            let _ = std::fs::remove_file(&disk);
            Ok((rc, std::fs::read_to_string(&log).unwrap_or_default()))
        };
        let (mut rc, mut text) = boot()?;
        // Live patching of kernel text (when a tracepoint or kprobe is switched on) is where
        // emulation has crashed guests (scripts/vm/run.sh): such a VM is booted once more, and
        // the report says so. A second crash fails the kernel.
        if !text.contains("BAR-VM: done")
            && let Some(crash) = kernel_crash(&text)
        {
            let note = format!(
                "the VM crashed in the kernel ({crash}); booted it once more, first console kept in {series}.crash.log"
            );
            eprintln!("xtask: {series}: {note}");
            let _ = std::fs::copy(&log, dir.join(format!("{series}.crash.log")));
            out.notes.push(note);
            (rc, text) = boot()?;
        }
        if let Some(crash) = kernel_crash(&text) {
            bail!(
                "the {series} kernel crashed: {crash}; console in {}",
                log.display()
            );
        }
        if let Some(stall) = soft_lockup(&text) {
            out.notes.push(format!(
                "the kernel reported a stall and went on ({stall}); console in {}",
                log.display()
            ));
        }
        if !text.contains("BAR-VM: boot ") {
            bail!(
                "the {series} kernel did not boot to bar's init (qemu exit {rc}); console in {}",
                log.display()
            );
        }
        if rc == 124 || rc == 137 {
            bail!(
                "the {series} VM did not finish within {} minutes",
                opts.timeout.as_secs() / 60
            );
        }
        if !text.contains("BAR-VM: done") {
            bail!("the {series} VM stopped before its tests finished (qemu exit {rc})");
        }
        parse(&mut out, &text);
        Ok(())
    })();
    if let Err(e) = result {
        out.error = Some(format!("{e:#}"));
    }
    out.elapsed = start.elapsed();
    out
}

/// The first line of a kernel crash on a console, if there is one. A soft lockup is not one:
/// the watchdog saw a CPU in kernel code for over 20 s and the kernel went on. Under emulation,
/// with both vCPUs on one host thread, live text patching or compaction can take that long
/// (khugepaged in a 6.1 guest whose tests all passed); it is noted by [`soft_lockup`].
fn kernel_crash(text: &str) -> Option<String> {
    console_line(text, |l| {
        l.contains("Oops:")
            || l.contains("Kernel panic")
            || (l.contains("BUG:") && !l.contains("soft lockup"))
    })
}

/// The first soft lockup the kernel reported, if any.
fn soft_lockup(text: &str) -> Option<String> {
    console_line(text, |l| l.contains("BUG: soft lockup"))
}

/// The first console line `f` picks, without the kernel's timestamp.
fn console_line(text: &str, f: impl Fn(&str) -> bool) -> Option<String> {
    text.lines()
        .find(|l| f(l))
        .map(|l| l.split("] ").nth(1).unwrap_or(l).trim().to_owned())
}

fn report(outcomes: &[Outcome], total: Duration) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\n==== kernel matrix ({:.1} min) ====",
        total.as_secs_f64() / 60.0
    );
    for o in outcomes {
        let (p, f, i) = o
            .suites
            .values()
            .fold((0, 0, 0), |a, s| (a.0 + s.0, a.1 + s.1, a.2 + s.2));
        let _ = writeln!(
            r,
            "\n{} {} [{}] {:.1} min: {p} passed, {f} failed, {i} ignored",
            if o.ok() { "PASS" } else { "FAIL" },
            o.kernel,
            o.release,
            o.elapsed.as_secs_f64() / 60.0,
        );
        if let Some(e) = &o.error {
            let _ = writeln!(r, "  error: {e}");
        }
        for (family, attach) in &o.attach {
            let _ = writeln!(r, "  {family:<7} {attach}");
        }
        for (suite, (p, f, i)) in &o.suites {
            let _ = writeln!(r, "  suite {suite}: {p} passed, {f} failed, {i} ignored");
        }
        for t in &o.failed_tests {
            let _ = writeln!(r, "  FAILED {t}");
        }
        for s in &o.notes {
            let _ = writeln!(r, "  note: {s}");
        }
        for m in &o.metrics {
            let _ = writeln!(r, "  metric: {m}");
        }
        let _ = writeln!(r, "  console: {}", o.log.display());
    }
    r
}

pub fn vm_test(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    crate::setup("vm")?;
    run(cargo().args(["build", "--release", "-p", "bar-userspace"]))?;
    let (bins, workloads) = test_binaries()?;
    let probe = root().join("target/release/bar-probe");
    let dir = root().join("target/vm");
    std::fs::create_dir_all(&dir)?;
    let mut outcomes = Vec::new();
    if opts.host {
        outcomes.push(host_run(&probe, &bins, opts, &dir));
    }
    if !opts.kernels.is_empty() {
        let initrd = dir.join("initramfs.cpio");
        run(Command::new(root().join("scripts/vm/initramfs.sh"))
            .arg(&initrd)
            .arg(&probe)
            .arg(&workloads)
            .args(&bins))?;
        for series in &opts.kernels {
            outcomes.push(vm_run(series, &initrd, opts, &dir));
        }
    }
    let text = report(&outcomes, started.elapsed());
    eprintln!("{text}");
    let _ = std::fs::write(dir.join("report.txt"), &text);
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| o.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_soft_lockup_is_noted_not_a_crash() {
        let stall =
            "[  189.104512] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [khugepaged:39]";
        assert_eq!(kernel_crash(stall), None);
        assert_eq!(
            soft_lockup(stall).as_deref(),
            Some("watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [khugepaged:39]")
        );
        let oops = "[   12.5] BUG: kernel NULL pointer dereference, address: 0000000000000000";
        assert!(kernel_crash(&format!("{stall}\n{oops}")).is_some_and(|c| c.contains("NULL")));
        assert!(kernel_crash("[ 1.0] Oops: int3: 0000 [#1] SMP").is_some());
    }
}
