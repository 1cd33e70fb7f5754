//! User stacks through code built without frame pointers: a C workload of the project's own,
//! built as Debian builds its libraries (`-O2 -fomit-frame-pointer`, no debug information),
//! whose stacks must come out whole from `_start` to the leaf, through its own frames and
//! glibc's; Debian's python3.11 against `perf record --call-graph dwarf`; objects that appear
//! after the recording started (dlopen, exec); objects bar cannot or must not trust.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use bar_tests::{
    CHAIN, Folded, Recording, Workload, assert_whole, emulated, frameless, metric, out_dir,
    root_or_skip, workloads_dir,
};

/// A command of `program` with `args` (the workloads take it whole).
fn command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

#[test]
fn frameless_code_has_whole_stacks_in_cpu_faults_and_offcpu() {
    if !root_or_skip("frameless_code_has_whole_stacks_in_cpu_faults_and_offcpu") {
        return;
    }
    let dir = out_dir("unwind-frameless");
    let (report, rec) = Workload::spawn(command(
        frameless(),
        &["--wait", "mixed", "2", "32000", "100", "2000"],
    ))
    .recorded(&["--events", "cpu,faults,offcpu"], &dir);
    assert_whole(&rec.folded("cpu"), CHAIN, "frameless_burn_leaf", "cpu");
    let faults = rec.folded("faults");
    let touched = assert_whole(&faults, CHAIN, "frameless_touch_pages", "faults");
    let pages = report["pages"].as_u64().expect("pages");
    assert!(touched >= pages, "{touched} faults for {pages} pages");
    // Off CPU, the function that called into glibc's frameless nanosleep wrapper is there,
    // right above it: the frame a frame pointer walk cannot see.
    let offcpu = rec.folded("offcpu");
    let napper = format!("{CHAIN}frameless_napper;");
    let blocked = assert_whole(&offcpu, &napper, "nanosleep", "offcpu");
    let asked = report["total_us"].as_u64().expect("total_us");
    assert!(
        blocked * 100 >= asked * 98,
        "blocked {blocked} us of {asked} us asked"
    );
    let unwind = &rec.summary()["unwind"];
    assert_eq!(unwind["method"], "tables", "{unwind}");
    assert!(unwind["frames"]["table"].as_u64() > Some(0), "{unwind}");
    assert!(unwind["tables"]["objects"].as_u64() >= Some(2), "{unwind}");
}

/// Median of the user frames per sample (kernel frames and bar's markers left out).
fn median_user_depth(folded: &Folded) -> usize {
    let mut depths = Vec::new();
    for (stack, w) in &folded.stacks {
        let user = stack
            .split(';')
            .skip(1)
            .filter(|f| !f.ends_with("_[k]") && !f.starts_with("[truncated"))
            .count();
        depths.extend(std::iter::repeat_n(user, *w as usize));
    }
    depths.sort_unstable();
    depths.get(depths.len() / 2).copied().unwrap_or(0)
}

/// Median of the user frames per sample of `perf script` output.
fn perf_median_user_depth(script: &str) -> usize {
    let mut depths = Vec::new();
    let mut current: Option<usize> = None;
    for line in script.lines() {
        if line.starts_with('\t') || line.starts_with(' ') {
            let frame = line.trim();
            if let Some(n) = &mut current
                && !frame.is_empty()
                && !frame.contains("[kernel.kallsyms]")
                && !frame.contains("[unknown]")
            {
                *n += 1;
            }
        } else if !line.is_empty() {
            depths.extend(current.replace(0));
        }
    }
    depths.extend(current);
    depths.sort_unstable();
    depths.get(depths.len() / 2).copied().unwrap_or(0)
}

#[test]
fn inlined_functions_are_frames_of_their_own_between_caller_and_callee() {
    if !root_or_skip("inlined_functions_are_frames_of_their_own_between_caller_and_callee") {
        return;
    }
    // inlined_middle has no symbol and makes no call: only the workload's DWARF says that
    // the call to inlined_leaf is its code, inlined into inlined_outer.
    let exe = workloads_dir().join("inlined");
    let (_, rec) = Workload::spawn(command(&exe, &["--wait", "2"])).recorded(
        &["--events", "cpu", "--inlined", "true"],
        &out_dir("unwind-inlined"),
    );
    let folded = rec.folded("cpu");
    let chain = "main;inlined_outer;inlined_middle_[i];";
    assert_whole(&folded, chain, "inlined_leaf", "inlined");
    // By default bar shows the calls only.
    let (_, rec) = Workload::spawn(command(&exe, &["--wait", "2"]))
        .recorded(&["--events", "cpu"], &out_dir("unwind-not-inlined"));
    let folded = rec.folded("cpu");
    assert_whole(
        &folded,
        "main;inlined_outer;",
        "inlined_leaf",
        "not_inlined",
    );
    assert_eq!(folded.weight_with("_[i]"), 0, "{:#?}", folded.stacks);
}

#[test]
fn python_stacks_are_as_deep_as_perf_dwarf_unwinding() {
    if !root_or_skip("python_stacks_are_as_deep_as_perf_dwarf_unwinding") {
        return;
    }
    let python = Path::new("/usr/bin/python3.11");
    let perf = Command::new("perf").arg("--version").output();
    if !python.exists() || perf.is_err() {
        assert!(
            emulated(),
            "python3.11 and perf are needed (scripts/setup.sh stacks installs them)"
        );
        eprintln!("skipped: the test VMs carry neither Debian's python3.11 nor perf");
        return;
    }
    let dir = out_dir("unwind-python");
    std::fs::create_dir_all(&dir).expect("create the output folder");
    let code = "def leaf(n):\n s = 0\n for i in range(n):\n  s += i * i\n return s\n\
                def middle(n):\n return leaf(n) + 1\ndef outer(n):\n return middle(n) + 2\n\
                import sys\nsys.stdin.readline()\nimport time\nend = time.time() + 8\n\
                while time.time() < end:\n outer(10000)\nprint('{}')\n";
    let mut w = Workload::spawn(command(python, &["-c", code]));
    let pid = w.pid().to_string();
    let rec = Recording::start(
        &[
            "attach",
            "--pid",
            &pid,
            "--events",
            "cpu",
            "--duration",
            "4s",
        ],
        &dir.join("bar"),
    );
    w.go();
    let data = dir.join("perf.data");
    let perf = Command::new("perf")
        .args([
            "record",
            "-F",
            "99",
            "--call-graph",
            "dwarf",
            "-p",
            &pid,
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", "4"])
        .output()
        .expect("run perf record");
    assert!(perf.status.success(), "perf record failed: {perf:?}");
    let rec = rec.finish();
    w.finish();
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .output()
        .expect("run perf script");
    let theirs = perf_median_user_depth(&String::from_utf8_lossy(&script.stdout));
    let ours = median_user_depth(&rec.folded("cpu"));
    metric("unwind_python_median_depth_bar", ours);
    metric("unwind_python_median_depth_perf_dwarf", theirs);
    assert!(
        theirs >= 5,
        "perf's DWARF unwinding gave a median of {theirs} frames"
    );
    assert!(
        ours * 10 >= theirs * 8,
        "median user depth: bar {ours}, perf --call-graph dwarf {theirs}"
    );
}

#[test]
fn a_library_opened_during_the_recording_is_unwound() {
    if !root_or_skip("a_library_opened_during_the_recording_is_unwound") {
        return;
    }
    let rec = record_dlopen(&workloads_dir().join("libframeless_dl.so"), "unwind-dlopen");
    let unwind = &rec.summary()["unwind"];
    assert!(unwind["tables"]["misses"].as_u64() >= Some(1), "{unwind}");
}

/// Records the cpu samples of `frameless dlopen LIB 3` under a marker `loaded` at 1 s, and
/// checks that the stacks through the library are whole from then on.
fn record_dlopen(lib: &Path, name: &str) -> Recording {
    // The library's first samples come before its table is loaded (the walk that meets it
    // asks for it): they are walked by frame pointer, which ends in a marker. In the emulated
    // VMs that took a third of a second. The phase from 1 s on is held to the bar.
    let dir = out_dir(name);
    std::fs::create_dir_all(&dir).expect("create the output folder");
    let fifo = dir.join("markers");
    let fifo_arg = fifo.to_string_lossy().into_owned();
    let mut w = Workload::spawn(command(
        frameless(),
        &["--wait", "dlopen", &lib.to_string_lossy(), "3"],
    ));
    let pid = w.pid().to_string();
    let rec = Recording::start(
        &[
            "attach",
            "--pid",
            &pid,
            "--events",
            "cpu",
            "--marker-fifo",
            &fifo_arg,
        ],
        &dir.join("out"),
    );
    w.go();
    std::thread::sleep(std::time::Duration::from_secs(1));
    std::fs::write(&fifo, "loaded\n").expect("write a marker");
    w.finish();
    let rec = rec.finish();
    let loaded = Folded::read(&rec.dir.join("phases/loaded/cpu.folded"));
    let chain = format!("{CHAIN}dl_entry;dl_stage;");
    assert_whole(&loaded, &chain, "dl_burn_leaf", name);
    rec
}

#[test]
fn a_bad_entry_in_a_table_costs_only_its_own_function() {
    if !root_or_skip("a_bad_entry_in_a_table_costs_only_its_own_function") {
        return;
    }
    // The library's copy with the FDE of dl_spare (which nothing calls) made unparsable: a
    // DW_CFA_restore_state with no state remembered as its first instruction. Before, the
    // whole library fell back to frame pointers, which lose its frameless chain.
    let dir = shared_dir("unwind-bad-fde");
    let lib = dir.join("libbadfde.so");
    let spare = symbol_address(&workloads_dir().join("libframeless_dl.so"), "dl_spare");
    patch_eh_frame(
        &workloads_dir().join("libframeless_dl.so"),
        &lib,
        |header, data| damage_fde(u64_at(header, 0x10) as u64, data, spare),
    );
    let out = Command::new(bar_tests::bar_probe())
        .args(["tables", &lib.to_string_lossy()])
        .output()
        .expect("run bar-probe tables");
    let line: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(line["entries_skipped"], 1, "{line}");
    assert!(line["rows"].as_u64() > Some(4), "{line}");

    let rec = record_dlopen(&lib, "unwind-bad-fde");
    let warnings: Vec<&String> = rec
        .stderr
        .iter()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:#?}", rec.stderr);
    assert!(
        warnings[0].contains("libbadfde.so: 1 entry of its unwind tables cannot be parsed"),
        "{}",
        warnings[0]
    );
    let tables = &rec.summary()["unwind"]["tables"];
    assert_eq!(tables["entries_skipped"], 1, "{tables}");
    assert_eq!(
        tables["partial"].as_array().map(Vec::len),
        Some(1),
        "{tables}"
    );
    assert_eq!(
        tables["failed"].as_array().map(Vec::len),
        Some(0),
        "{tables}"
    );
}

/// The address of the dynamic symbol `name` of the ELF object at `path`.
fn symbol_address(path: &Path, name: &str) -> u64 {
    let b = std::fs::read(path).expect("read the object");
    let (shoff, shentsize, shnum) = (u64_at(&b, 0x28), u16_at(&b, 0x3a), u16_at(&b, 0x3c));
    let header = |i: usize| shoff + i * shentsize;
    // SHT_DYNSYM, whose sh_link is its string table.
    let dynsym = (0..shnum)
        .map(header)
        .find(|&h| b[h + 4] == 11)
        .expect("a .dynsym section");
    let link = u32::from_le_bytes(b[dynsym + 0x28..dynsym + 0x2c].try_into().expect("4"));
    let strings = u64_at(&b, header(link as usize) + 0x18);
    let (offset, size) = (u64_at(&b, dynsym + 0x18), u64_at(&b, dynsym + 0x20));
    (offset..offset + size)
        .step_by(24)
        .find_map(|sym| {
            let at = strings + u32::from_le_bytes(b[sym..sym + 4].try_into().ok()?) as usize;
            let found = b[at..].starts_with(name.as_bytes()) && b[at + name.len()] == 0;
            found.then(|| u64_at(&b, sym + 8) as u64)
        })
        .unwrap_or_else(|| panic!("no symbol {name} in {}", path.display()))
}

/// Makes the FDE of the function at `pc` in `.eh_frame` contents `data` (at address
/// `eh_addr`) unparsable. GNU ld's FDEs hold pc-relative 32-bit addresses (`zR`, pcrel
/// sdata4) and no augmentation data, so the instructions start 17 bytes in.
fn damage_fde(eh_addr: u64, data: &mut [u8], pc: u64) {
    let word = |d: &[u8], at: usize| u32::from_le_bytes(d[at..at + 4].try_into().expect("4"));
    let mut at = 0;
    while at + 8 <= data.len() && word(data, at) != 0 {
        let next = at + 4 + word(data, at) as usize;
        if word(data, at + 4) != 0 {
            let begin = eh_addr
                .wrapping_add((at + 8) as u64)
                .wrapping_add(i64::from(word(data, at + 8) as i32) as u64);
            if begin == pc {
                assert!(
                    next > at + 17,
                    "the FDE at {at:#x} has no room for an instruction"
                );
                data[at + 17] = 0x0b; // DW_CFA_restore_state
                return;
            }
        }
        at = next;
    }
    panic!("no FDE for {pc:#x} in .eh_frame");
}

#[test]
fn a_frameless_program_run_by_exec_during_the_recording_is_unwound() {
    if !root_or_skip("a_frameless_program_run_by_exec_during_the_recording_is_unwound") {
        return;
    }
    let dir = out_dir("unwind-exec");
    let (_, rec) = Workload::spawn(command(frameless(), &["--wait", "exec", "3"]))
        .recorded(&["--events", "cpu"], &dir);
    assert_whole(&rec.folded("cpu"), CHAIN, "frameless_burn_leaf", "exec");
}

#[test]
fn a_frameless_process_is_unwound_when_recording_all() {
    if !root_or_skip("a_frameless_process_is_unwound_when_recording_all") {
        return;
    }
    // With --all, a process's tables are loaded once it has events, behind those of every
    // other process that had some (on a machine busy building, that took a second here): its
    // first stacks may be walked by frame pointer. The phase from 3 s on is held to the bar.
    let dir = out_dir("unwind-all");
    std::fs::create_dir_all(&dir).expect("create the output folder");
    let fifo = dir.join("markers");
    let mut w = Workload::spawn(command(frameless(), &["--wait", "cpu", "6"]));
    let fifo_arg = fifo.to_string_lossy().into_owned();
    let rec = Recording::start(
        &[
            "record",
            "--all",
            "--events",
            "cpu",
            "--marker-fifo",
            &fifo_arg,
        ],
        &dir.join("out"),
    );
    w.go();
    std::thread::sleep(std::time::Duration::from_secs(3));
    std::fs::write(&fifo, "loaded\n").expect("write a marker");
    w.finish();
    let rec = rec.interrupt();
    let loaded = Folded::read(&rec.dir.join("phases/loaded/cpu.folded"));
    assert_whole(&loaded, CHAIN, "frameless_burn_leaf", "all");
    let unwind = &rec.summary()["unwind"];
    assert!(
        unwind["tables"]["processes"].as_u64() >= Some(1),
        "{unwind}"
    );
}

/// A return address in no mapping (behind code written at run time, called with a frame
/// pointer that leads there) is not a frame: the stack ends with one marker instead, whether
/// the walk used tables or frame pointers only.
#[test]
fn a_return_address_outside_every_mapping_ends_the_stack_with_one_marker() {
    if !root_or_skip("a_return_address_outside_every_mapping_ends_the_stack_with_one_marker") {
        return;
    }
    for mode in ["tables", "frame-pointers"] {
        let dir = out_dir(&format!("unwind-outside-{mode}"));
        let (_, rec) = Workload::spawn(command(frameless(), &["--wait", "jit", "2"]))
            .recorded(&["--events", "cpu", "--unwind", mode], &dir);
        let folded = rec.folded("cpu");
        let (mut jit, mut cut) = (0, 0);
        for (stack, w) in &folded.stacks {
            let user: Vec<&str> = stack
                .split(';')
                .skip(1)
                .filter(|f| !f.ends_with("_[k]"))
                .collect();
            // The code written at run time, in anonymous memory, has no name.
            if user.last() != Some(&"[unknown]") {
                continue;
            }
            jit += w;
            if user == ["[truncated: outside any mapping]", "[unknown]"] {
                cut += w;
            }
        }
        assert!(
            jit > 0 && cut * 100 >= jit * 90,
            "{mode}: {cut} of {jit} of the weight in the written code ends with one marker\n{:#?}",
            folded.stacks
        );
    }
}

/// A folder every user can read, for programs run as another user.
fn shared_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("BAR_TEST_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!("bar-shared-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a shared folder");
    set_mode(&dir, 0o755);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes")) as usize
}

/// Copies the ELF object `src` to `dst`, mode 0755, with `patch` applied to its `.eh_frame`
/// section header (64 bytes) and contents.
fn patch_eh_frame(src: &Path, dst: &Path, patch: impl FnOnce(&mut [u8], &mut [u8])) {
    let mut b = std::fs::read(src).expect("read the object");
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&b, 0x28),
        u16_at(&b, 0x3a),
        u16_at(&b, 0x3c),
        u16_at(&b, 0x3e),
    );
    let names = u64_at(&b, shoff + shstrndx * shentsize + 0x18);
    let at = (0..shnum)
        .map(|i| shoff + i * shentsize)
        .find(|&h| {
            let name = names + u32::from_le_bytes(b[h..h + 4].try_into().expect("4")) as usize;
            b[name..].starts_with(b".eh_frame\0")
        })
        .expect("an .eh_frame section");
    let (offset, size) = (u64_at(&b, at + 0x18), u64_at(&b, at + 0x20));
    let mut header = b[at..at + 64].to_vec();
    let mut contents = b[offset..offset + size].to_vec();
    patch(&mut header, &mut contents);
    b[at..at + 64].copy_from_slice(&header);
    b[offset..offset + size].copy_from_slice(&contents);
    std::fs::write(dst, &b).expect("write the copy");
    set_mode(dst, 0o755);
}

#[test]
fn objects_with_bad_tables_fall_back_to_frame_pointers_with_one_warning_each() {
    if !root_or_skip("objects_with_bad_tables_fall_back_to_frame_pointers_with_one_warning_each") {
        return;
    }
    // Made by another user, as anyone could: a program whose section header claims an
    // .eh_frame of a terabyte, and a library whose first CIE has a version no compiler emits.
    let dir = shared_dir("unwind-bad");
    let huge = dir.join("huge-frameless");
    patch_eh_frame(&frameless(), &huge, |header, _| {
        header[0x20..0x28].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    let bad_lib = dir.join("libmalformed.so");
    patch_eh_frame(
        &workloads_dir().join("libframeless_dl.so"),
        &bad_lib,
        |_, data| {
            data[8] = 0x63;
        },
    );
    let out = out_dir("unwind-bad");
    let (_, rec) = Workload::spawn(command(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &huge.to_string_lossy(),
            "--wait",
            "dlopen",
            &bad_lib.to_string_lossy(),
            "2",
        ],
    ))
    .recorded(&["--events", "cpu"], &out);
    let warnings: Vec<&String> = rec
        .stderr
        .iter()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 2, "{:#?}", rec.stderr);
    for (object, why) in [
        ("huge-frameless", "too big"),
        ("libmalformed.so", "malformed"),
    ] {
        let line = warnings
            .iter()
            .find(|l| l.contains(object))
            .unwrap_or_else(|| panic!("no warning about {object}: {warnings:#?}"));
        assert!(
            line.starts_with("bar-probe: warning: ")
                && line.contains(why)
                && line.ends_with("walked by frame pointer"),
            "{line}"
        );
    }
    // Nothing else is lost: the samples are there, named from the objects' symbols.
    let folded = rec.folded("cpu");
    assert!(
        folded.weight_with("dl_burn_leaf") > 0,
        "{:#?}",
        folded.stacks
    );
    let failed = rec.summary()["unwind"]["tables"]["failed"].clone();
    assert_eq!(failed.as_array().map(Vec::len), Some(2), "{failed}");
}

#[test]
fn deleted_replaced_and_hidden_objects_are_unwound_from_the_mapped_file() {
    if !root_or_skip("deleted_replaced_and_hidden_objects_are_unwound_from_the_mapped_file") {
        return;
    }
    let dir = shared_dir("unwind-files");
    let copy = |name: &str| {
        let p = dir.join(name);
        std::fs::copy(frameless(), &p).expect("copy the workload");
        set_mode(&p, 0o755);
        p
    };
    // Deleted after it started.
    let deleted = copy("deleted");
    let w = Workload::spawn(command(&deleted, &["--wait", "cpu", "2"]));
    std::fs::remove_file(&deleted).expect("delete the program");
    check_whole_cpu(w, "deleted", "deleted");
    // Replaced by another file under its name after it started.
    let replaced = copy("replaced");
    let w = Workload::spawn(command(&replaced, &["--wait", "cpu", "2"]));
    let other = dir.join("other");
    std::fs::write(&other, b"#!/bin/sh\nexit 0\n").expect("write another file");
    std::fs::rename(&other, &replaced).expect("replace the program");
    check_whole_cpu(w, "replaced", "replaced");
    // Visible only in its own mount namespace, from a tmpfs mounted there.
    let hidden = dir.join("hidden");
    std::fs::create_dir(&hidden).expect("create a mount point");
    let script = format!(
        "mount -t tmpfs tmpfs {h} && cp {src} {h}/frameless && exec {h}/frameless --wait cpu 2",
        h = hidden.display(),
        src = frameless().display()
    );
    let w = Workload::spawn(command(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    ));
    check_whole_cpu(w, "namespace", "hidden/frameless");
}

/// Records the cpu samples of a waiting `frameless cpu` workload until it ends, and checks
/// its stacks are whole. `exe` is part of the path the workload runs from.
fn check_whole_cpu(w: Workload, what: &str, exe: &str) {
    // A shell that execs the workload may still be running: wait until the pid runs it.
    let link = format!("/proc/{}/exe", w.pid());
    for _ in 0..500 {
        if std::fs::read_link(&link).is_ok_and(|p| p.to_string_lossy().contains(exe)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let dir = out_dir(&format!("unwind-{what}"));
    let (_, rec) = w.recorded(&["--events", "cpu"], &dir);
    let warnings: Vec<&String> = rec
        .stderr
        .iter()
        .filter(|l| l.contains("warning"))
        .collect();
    assert!(warnings.is_empty(), "{what}: {warnings:#?}");
    assert_whole(&rec.folded("cpu"), CHAIN, "frameless_burn_leaf", what);
}
