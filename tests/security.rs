//! bar runs as root on machines other users share. These tests play the other user (nobody,
//! through setpriv) against root's bar-probe, with real symbolic links, FIFOs, perf maps,
//! folders and crafted captures, and check that root neither writes, reads, hands over nor
//! runs anything that user chose.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use bar_tests::{
    Folded, NOBODY, as_nobody, bar_probe, craft_capture, marker, nobody_dir, nobody_sh,
    one_line_error, out_dir, read_json, root_or_skip, run, wait_at_most,
};

/// A root-owned file that must come out of every test untouched.
fn victim(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, b"precious\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn assert_untouched(path: &Path) {
    let meta = std::fs::metadata(path).unwrap();
    assert_eq!(
        std::fs::read(path).unwrap(),
        b"precious\n",
        "{}",
        path.display()
    );
    assert_eq!(meta.uid(), 0, "{} changed hands", path.display());
}

/// A process to point bar-probe at, killed when dropped.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn start() -> Self {
        Self(Command::new("sleep").arg("60").spawn().unwrap())
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_output_folder_another_user_controls_is_refused() {
    if !root_or_skip("an_output_folder_another_user_controls_is_refused") {
        return;
    }
    let ground = nobody_dir("outdir");
    let safe = out_dir("outdir-victims");
    std::fs::create_dir_all(&safe).unwrap();
    let precious = victim(&safe, "precious");
    // The other user makes the folder first (the default name is predictable) and fills it
    // with links to a root file, where bar puts its files.
    let out = ground.join("bar-out");
    nobody_sh(&format!(
        "mkdir {o} && for f in capture.bar .bar-write-test cpu.folded.tmp .cpu.folded.tmp; do ln -s {p} {o}/$f; done",
        o = out.display(),
        p = precious.display()
    ));
    let target = Sleeper::start();
    let o = run(&[
        "attach",
        "--pid",
        &target.pid(),
        "-e",
        "cpu",
        "-d",
        "1s",
        "-q",
        "-o",
        out.to_str().unwrap(),
    ]);
    one_line_error(&o, "refusing to write into");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("belongs to uid 65534"),
        "{o:?}"
    );
    assert_untouched(&precious);
    // A root folder that anyone can write to is no better.
    let open = safe.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = run(&[
        "attach",
        "--pid",
        &target.pid(),
        "-d",
        "1s",
        "-o",
        open.to_str().unwrap(),
    ]);
    one_line_error(&o, "others can write to it");
    // Nor is a link as the folder itself.
    let link = ground.join("link");
    std::os::unix::fs::symlink(&safe, &link).unwrap();
    let capture = safe.join("capture.bar");
    craft_capture(&capture, |_| Vec::new(), Some);
    let o = run(&[
        "report",
        capture.to_str().unwrap(),
        "-o",
        link.to_str().unwrap(),
    ]);
    one_line_error(&o, "symbolic link");
    assert!(!safe.join("summary.json").exists());
    let _ = std::fs::remove_dir_all(&ground);
    let _ = std::fs::remove_dir_all(&safe);
}

#[test]
fn a_new_output_folder_is_private_whatever_the_umask() {
    if !root_or_skip("a_new_output_folder_is_private_whatever_the_umask") {
        return;
    }
    let out = out_dir("private");
    let target = Sleeper::start();
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {} attach --pid {} -e cpu -d 1s -q -o {}",
            bar_probe().display(),
            target.pid(),
            out.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&out), 0o700);
    let mut entries = Vec::new();
    walk(&out, &mut entries);
    for (p, _, _) in entries {
        // Folders (phases/, should a marker reach this recording) are 0700 too.
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&p), want, "{}", p.display());
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Every entry under `dir` (itself included): its path, owner and whether it is a link.
fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    out.push((dir.to_owned(), meta.uid(), meta.file_type().is_symlink()));
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            walk(&e.unwrap().path(), out);
        }
    }
}

#[test]
fn under_sudo_everything_goes_to_the_user_and_nothing_through_a_link() {
    if !root_or_skip("under_sudo_everything_goes_to_the_user_and_nothing_through_a_link") {
        return;
    }
    // The invoking user's own folder (sudo -u nobody's view: SUDO_UID=65534), with links
    // planted where bar creates and hands over files.
    let ground = nobody_dir("sudo");
    let safe = out_dir("sudo-victims");
    std::fs::create_dir_all(&safe).unwrap();
    let precious = victim(&safe, "precious");
    let out = ground.join("out");
    nobody_sh(&format!(
        "mkdir -m 0755 {o} && for f in capture.bar capture.bar.sha256 .bar-write-test summary.json .summary.json.tmp; do ln -s {p} {o}/$f; done",
        o = out.display(),
        p = precious.display()
    ));
    let o = Command::new(bar_probe())
        .args([
            "run", "-e", "cpu", "-q", "--phase", "one=1s", "--phase", "two=1s",
        ])
        .arg("-o")
        .arg(&out)
        .args(["--", "sleep", "10"])
        .env("SUDO_UID", NOBODY.to_string())
        .env("SUDO_GID", NOBODY.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_untouched(&precious);
    let mut entries = Vec::new();
    walk(&out, &mut entries);
    assert!(
        entries
            .iter()
            .any(|e| e.0.ends_with("phases/two/cpu.folded"))
    );
    for (path, uid, link) in &entries {
        assert!(!link, "{} is still a link", path.display());
        assert_eq!(*uid, NOBODY, "{} is not the sudo user's", path.display());
    }
    // What bar wrote reads back as its own outputs.
    read_json(&out.join("summary.json"));
    let _ = std::fs::remove_dir_all(&ground);
    let _ = std::fs::remove_dir_all(&safe);
}

/// Records `pid` for a second with on-CPU samples; returns the stderr and the folded stacks.
fn record_briefly(pid: &str, name: &str) -> (String, Folded) {
    let out = out_dir(name);
    let child = Command::new(bar_probe())
        .args(["attach", "--pid", pid, "-e", "cpu", "-d", "1s", "-q", "-o"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A perf map that blocks bar would keep it past its duration forever.
    let o = wait_at_most(child, Duration::from_secs(60), "a 1 s recording");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let folded = Folded::read(&out.join("cpu.folded"));
    let _ = std::fs::remove_dir_all(&out);
    (stderr, folded)
}

#[test]
fn perf_maps_that_are_links_fifos_huge_or_a_strangers_are_refused() {
    if !root_or_skip("perf_maps_that_are_links_fifos_huge_or_a_strangers_are_refused") {
        return;
    }
    let safe = out_dir("perfmap-secret");
    std::fs::create_dir_all(&safe).unwrap();
    // A root-only file whose lines would name every frame if bar read it as a perf map.
    let secret = safe.join("secret");
    std::fs::write(&secret, "0 7fffffffffff root_only_secret_line\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let target = Sleeper::start();
    let pid = target.pid();
    let map = std::env::temp_dir().join(format!("perf-{pid}.map"));
    // Each case: its name, how the other user plants the map, what bar must say.
    type Plant<'a> = Box<dyn Fn() + 'a>;
    let cases: [(&str, Plant, &str); 4] = [
        (
            "fifo",
            Box::new(|| nobody_sh(&format!("mkfifo -m 0666 {}", map.display()))),
            "not a regular file",
        ),
        (
            "stranger",
            Box::new(|| {
                nobody_sh(&format!(
                    "echo '0 7fffffffffff planted' > {}",
                    map.display()
                ))
            }),
            "belongs to uid 65534",
        ),
        (
            "link",
            Box::new(|| nobody_sh(&format!("ln -s {} {}", secret.display(), map.display()))),
            "symbolic link",
        ),
        (
            "huge",
            Box::new(|| {
                let f = std::fs::File::create(&map).unwrap();
                f.set_len(100 << 20).unwrap();
            }),
            "larger than 64 MiB",
        ),
    ];
    for (name, plant, said) in cases {
        let _ = std::fs::remove_file(&map);
        plant();
        let (stderr, folded) = record_briefly(&pid, &format!("perfmap-{name}"));
        assert!(
            stderr.contains("perf-") && stderr.contains(said),
            "{name}: expected '{said}' in:\n{stderr}"
        );
        assert_eq!(folded.weight_with("root_only_secret_line"), 0, "{name}");
        assert_eq!(folded.weight_with("planted"), 0, "{name}");
    }
    let _ = std::fs::remove_file(&map);
    let _ = std::fs::remove_dir_all(&safe);
}

#[test]
fn an_honest_perf_map_of_another_user_still_names_jit_frames() {
    if !root_or_skip("an_honest_perf_map_of_another_user_still_names_jit_frames") {
        return;
    }
    let safe = out_dir("jit-secret");
    std::fs::create_dir_all(&safe).unwrap();
    let secret = safe.join("secret");
    std::fs::write(&secret, "0 7fffffffffff root_only_secret_line\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The JIT runs as nobody and writes its own map, owned by nobody: that one is read.
    let mut jit = as_nobody(bar_probe())
        .args(["workload", "jit", "--seconds", "30", "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = jit.id().to_string();
    std::io::Write::write_all(jit.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let map = std::env::temp_dir().join(format!("perf-{pid}.map"));
    for _ in 0..100 {
        if map.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (stderr, folded) = record_briefly(&pid, "jit-honest");
    assert!(
        folded.weight_with("bar_jit_hot_loop") * 2 >= folded.total() && folded.total() > 0,
        "{stderr}\n{:#?}",
        folded.stacks
    );
    // The same user then swaps the map for a link to a root-only file: refused.
    nobody_sh(&format!(
        "rm {m} && ln -s {s} {m}",
        m = map.display(),
        s = secret.display()
    ));
    let (stderr, folded) = record_briefly(&pid, "jit-link");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(folded.weight_with("root_only_secret_line"), 0);
    assert!(folded.total() > 0);
    let _ = jit.kill();
    let _ = jit.wait();
    let _ = std::fs::remove_file(&map);
    let _ = std::fs::remove_dir_all(&safe);
}

#[test]
fn phase_names_in_a_capture_stay_inside_the_output_folder() {
    let dir = out_dir("phase-names");
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("plain.bar");
    craft_capture(&plain, |_| Vec::new(), Some);
    let abs = std::env::temp_dir().join(format!("bar-abs-phase-{}", std::process::id()));
    let crafted = dir.join("crafted.bar");
    let abs_name = abs.to_str().unwrap().to_owned();
    // Where `phases/../../../NAME` lands from the output folder below.
    let up = format!("escaped-{}", std::process::id());
    let escaped = dir.parent().unwrap().join(&up);
    let up = format!("../../../{up}");
    craft_capture(
        &crafted,
        |m| {
            vec![
                marker(m, &up, 1_000, false),
                marker(m, &abs_name, 2_000, false),
                marker(m, "..", 3_000, false),
                marker(m, ".", 4_000, false),
                marker(m, "dup", 5_000, false),
                marker(m, "dup", 6_000, false),
            ]
        },
        Some,
    );
    let out = dir.join("out");
    let o = run(&[
        "report",
        crafted.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!abs.exists(), "a phase wrote to {}", abs.display());
    assert!(!escaped.exists(), "a phase wrote to {}", escaped.display());
    // Six phases, six folders, all inside phases/.
    let folders: Vec<String> = std::fs::read_dir(out.join("phases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("diff-"))
        .collect();
    assert_eq!(folders.len(), 6, "{folders:?}");
    let s = read_json(&out.join("summary.json"));
    let names: Vec<&str> = s["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"dup") && names.contains(&"dup#2"),
        "{names:?}"
    );
    // The phase named '..' did not write over the whole recording's outputs.
    let whole = dir.join("whole");
    let o = run(&[
        "report",
        plain.to_str().unwrap(),
        "-o",
        whole.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(out.join("cpu.folded")).unwrap(),
        std::fs::read(whole.join("cpu.folded")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn load_commands_run_as_the_sudo_user() {
    if !root_or_skip("load_commands_run_as_the_sudo_user") {
        return;
    }
    let ground = nobody_dir("load");
    let out = out_dir("load");
    let ids = |f: &str| {
        format!(
            "id -u > {d}/{f}; id -g >> {d}/{f}; id -G >> {d}/{f}",
            d = ground.display()
        )
    };
    let o = Command::new(bar_probe())
        .args(["run", "-e", "cpu", "-q", "-o"])
        .arg(&out)
        .arg("--phase")
        .arg(format!("a=2s:{}", ids("phase")))
        .args(["--", "sh", "-c"])
        .arg(format!("{}; sleep 10", ids("load")))
        .env("SUDO_UID", NOBODY.to_string())
        .env("SUDO_GID", NOBODY.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["phase", "load"] {
        let text = std::fs::read_to_string(ground.join(f))
            .unwrap_or_else(|e| panic!("the {f} command wrote no ids: {e}"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["65534", "65534"], "{f}: {text}");
        assert!(
            !lines[2].split_whitespace().any(|g| g == "0"),
            "{f} kept root's groups: {text}"
        );
    }
    let help = run(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("SUDO_UID"));
    let _ = std::fs::remove_dir_all(&ground);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_marker_fifo_another_user_can_write_is_refused() {
    if !root_or_skip("a_marker_fifo_another_user_can_write_is_refused") {
        return;
    }
    let ground = nobody_dir("fifo");
    let fifo = ground.join("markers");
    nobody_sh(&format!("mkfifo -m 0600 {}", fifo.display()));
    let target = Sleeper::start();
    let out = out_dir("fifo");
    let o = run(&[
        "attach",
        "--pid",
        &target.pid(),
        "-e",
        "cpu",
        "-d",
        "1s",
        "--marker-fifo",
        fifo.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    one_line_error(&o, "refusing FIFO");
    assert!(!out.exists(), "nothing is created for a refused start");
    // One bar creates is private, and the sudo user's.
    let own = ground.join("own");
    let o = Command::new(bar_probe())
        .args([
            "attach",
            "--pid",
            &target.pid(),
            "-e",
            "cpu",
            "-d",
            "1s",
            "-q",
        ])
        .arg("--marker-fifo")
        .arg(&own)
        .arg("-o")
        .arg(&out)
        .env("SUDO_UID", NOBODY.to_string())
        .env("SUDO_GID", NOBODY.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta = std::fs::symlink_metadata(&own).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, NOBODY));
    let _ = std::fs::remove_dir_all(&ground);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_dump_of_the_flight_recorder_is_refused_a_folder_another_user_controls() {
    if !root_or_skip("a_dump_of_the_flight_recorder_is_refused_a_folder_another_user_controls") {
        return;
    }
    let ground = nobody_dir("dump");
    let safe = out_dir("dump-victims");
    std::fs::create_dir_all(&safe).unwrap();
    let precious = victim(&safe, "precious");
    let target = Sleeper::start();
    let rec_dir = out_dir("dump-ring");
    let rec = bar_tests::Recording::start(
        &[
            "attach",
            "--pid",
            &target.pid(),
            "-e",
            "cpu",
            "--ring",
            "2s",
        ],
        &rec_dir,
    );
    let me = rec.child.id();
    // The other user's folder, with links where the dump puts its files (the temporary names
    // of the checksum and the summary, as bar had them and has them).
    let theirs = ground.join("evidence");
    nobody_sh(&format!(
        "mkdir {o} && for f in capture.bar.sha256.tmp .capture.bar.sha256.tmp summary.json.tmp .summary.json.tmp; do ln -s {p} {o}/$f; done",
        o = theirs.display(),
        p = precious.display()
    ));
    let o = run(&["dump", "-o", theirs.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    // Other recordings with a ring, running meanwhile, get folders of their own inside, one
    // per pid, which bar creates; ours is then `<pid>/`, new and private, and the links in the
    // folder stay unused.
    let several = stderr.contains(&format!("recording {me}: "));
    if several {
        let mine = theirs.join(me.to_string());
        let meta = std::fs::symlink_metadata(&mine).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o700), "{stderr}");
    } else {
        one_line_error(&o, "refusing to write into");
        assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    }
    assert_untouched(&precious);
    // The recorder goes on, and its Ctrl-C ring is written where it was asked to.
    let rec = rec.interrupt();
    assert_eq!(rec.summary()["stop_reason"], "signal");
    assert_untouched(&precious);
    let _ = std::fs::remove_dir_all(&ground);
    let _ = std::fs::remove_dir_all(&safe);
    let _ = std::fs::remove_dir_all(&rec_dir);
}
