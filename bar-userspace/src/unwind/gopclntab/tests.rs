//! The rows of real Go binaries, built here from the project's Go workload, checked against
//! their disassembly; and tables cut short or corrupted, which must be errors, not panics.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Instant,
};

use super::*;

/// The Go tool, kept off the network: no module proxy, no toolchain download.
fn go() -> Command {
    let mut c = Command::new("go");
    c.env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .current_dir(std::env::temp_dir());
    c
}

/// True when `go` runs here. `cargo xtask test` installs it (`scripts/setup.sh export`) and
/// sets BAR_REQUIRE_ROOT, under which a missing Go fails the test instead of skipping it.
fn go_or_skip(test: &str) -> bool {
    if go()
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    assert!(
        std::env::var_os("BAR_REQUIRE_ROOT").is_none(),
        "{test}: `go` does not run; `scripts/setup.sh export` installs it"
    );
    eprintln!("skipped {test}: `go` is not installed (scripts/setup.sh export)");
    false
}

/// How the workload is built: plain, position-independent, stripped (no symbols, no DWARF),
/// and position-independent through the system linker (cgo's way: the table then sits inside
/// `.data.rel.ro`, found by its symbols), also stripped (found by its header). Name,
/// CGO_ENABLED, flags.
const VARIANTS: [(&str, &str, &[&str]); 5] = [
    ("plain", "0", &[]),
    ("pie", "0", &["-buildmode=pie"]),
    ("stripped", "0", &["-ldflags=-s -w"]),
    (
        "pie-external",
        "1",
        &["-buildmode=pie", "-ldflags=-linkmode=external"],
    ),
    (
        "pie-external-stripped",
        "1",
        &["-buildmode=pie", "-ldflags=-linkmode=external -s -w"],
    ),
];

/// The Go workload (`tests/workloads/go-sha`) built as `variant`, once per test run.
fn workload(variant: &str) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(p) = built.get(variant) {
        return p.clone();
    }
    let (_, cgo, flags) = VARIANTS.iter().find(|v| v.0 == variant).expect("variant");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/go-sha/main.go");
    // target/<profile>/deps/<test> -> target/<profile>/go-workloads/<variant>/go-sha
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.ancestors().nth(2).expect("target dir");
    let out = dir.join("go-workloads").join(variant).join("go-sha");
    let status = go()
        .arg("build")
        .args(*flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .env("CGO_ENABLED", cgo)
        .status()
        .expect("run go build");
    assert!(
        status.success(),
        "go build {flags:?} {} failed",
        src.display()
    );
    built.insert(variant.to_owned(), out.clone());
    out
}

/// The row in force at `pc`.
fn row_at(rows: &[Row], pc: u64) -> (Cfa, Rbp) {
    let i = rows.partition_point(|r| r.pc <= pc);
    assert!(i > 0, "no row at or before {pc:#x}");
    (rows[i - 1].cfa, rows[i - 1].rbp)
}

/// The functions of a parsed table, by name.
fn functions(elf: &[u8]) -> HashMap<String, (u64, u64)> {
    let file = object::File::parse(elf).expect("ELF");
    let table = Table::parse(pclntab_location(&file).expect("pclntab"), || None).expect("table");
    (0..table.nfunc)
        .map(|i| table.func(i).expect("func"))
        .map(|f| {
            (
                String::from_utf8_lossy(f.name).into_owned(),
                (f.entry, f.end),
            )
        })
        .collect()
}

#[test]
fn rows_of_real_go_binaries_are_sorted_and_end_at_the_top_frames() {
    if !go_or_skip("rows_of_real_go_binaries") {
        return;
    }
    for (variant, _, _) in VARIANTS {
        let elf = std::fs::read(workload(variant)).expect("read the workload");
        assert!(
            is_go(&object::File::parse(&*elf).expect("ELF")),
            "{variant}"
        );
        let start = Instant::now();
        let rows = rows(&elf).unwrap_or_else(|e| panic!("{variant}: {e}"));
        let took = start.elapsed();
        println!(
            "gopclntab {variant}: {} rows from a {} KiB binary in {took:?}",
            rows.len(),
            elf.len() >> 10
        );
        assert!(rows.len() > 5000, "{variant}: only {} rows", rows.len());
        for w in rows.windows(2) {
            assert!(w[0].pc < w[1].pc, "{variant}: unsorted {w:?}");
            assert_ne!(
                (w[0].cfa, w[0].rbp),
                (w[1].cfa, w[1].rbp),
                "{variant}: unmerged"
            );
        }
        assert_eq!(rows.last().map(|r| r.cfa), Some(Cfa::Missing), "{variant}");
        let funcs = functions(&elf);
        for top in TOP_FRAMES {
            let (entry, end) = funcs[top];
            assert_eq!(row_at(&rows, entry).0, Cfa::End, "{variant}: {top}");
            assert_eq!(row_at(&rows, end - 1).0, Cfa::End, "{variant}: {top}");
        }
        // The workload's own function, and the stack switch that Go's table cannot follow.
        let (entry, _) = funcs["main.hashLoop"];
        assert_eq!(row_at(&rows, entry), (Cfa::Rsp(8), Rbp::Unchanged));
        let (entry, _) = funcs["runtime.systemstack"];
        assert_eq!(row_at(&rows, entry).0, Cfa::Missing, "{variant}");
    }
}

/// One instruction of `objdump -d`.
struct Insn {
    addr: u64,
    op: String,
    args: String,
}

/// `objdump -d` of a file: function name (without the `.abi0` suffix of assembly) ->
/// instructions.
fn disassemble(path: &Path) -> Vec<(String, Vec<Insn>)> {
    let out = Command::new("objdump")
        .args(["-d", "-w", "--no-show-raw-insn", "-j", ".text"])
        .arg(path)
        .output()
        .expect("run objdump (binutils)");
    assert!(out.status.success(), "objdump failed");
    let mut funcs: Vec<(String, Vec<Insn>)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")) {
            let name = name.1.trim_end_matches(".abi0").to_owned();
            funcs.push((name, Vec::new()));
        } else if let Some((addr, insn)) = line.trim_start().split_once(":\t")
            && let Ok(addr) = u64::from_str_radix(addr, 16)
            && let Some((_, insns)) = funcs.last_mut()
        {
            let (op, args) = insn.split_once(' ').unwrap_or((insn, ""));
            let args = args.split('#').next().unwrap_or("").trim().to_owned();
            insns.push(Insn {
                addr,
                op: op.to_owned(),
                args,
            });
        }
    }
    funcs
}

/// `0x18(%rsp)` or `(%rsp)` -> 0x18 or 0.
fn rsp_disp(arg: &str) -> Option<i64> {
    let disp = arg.strip_suffix("(%rsp)")?;
    if disp.is_empty() {
        return Some(0);
    }
    i64::from_str_radix(disp.strip_prefix("0x")?, 16).ok()
}

/// The frame a compiled Go function allocates, from its prologue as objdump shows it:
/// `sub $N,%rsp; mov %rbp,N-8(%rsp); lea N-8(%rsp),%rbp`. Returns N and the index of the SUB.
fn go_prologue(insns: &[Insn]) -> Option<(i64, usize)> {
    let i = insns
        .iter()
        .take(8)
        .position(|x| ["sub", "add"].contains(&&*x.op) && x.args.ends_with(",%rsp"))?;
    let imm = insns[i].args.strip_prefix("$0x")?.strip_suffix(",%rsp")?;
    let imm = u64::from_str_radix(imm, 16).ok()? as i64;
    let n = if insns[i].op == "sub" { imm } else { -imm };
    let (mov, lea) = (insns.get(i + 1)?, insns.get(i + 2)?);
    let saved = mov.op == "mov" && rsp_disp(mov.args.strip_prefix("%rbp,")?) == Some(n - 8);
    let set = lea.op == "lea" && rsp_disp(lea.args.strip_suffix(",%rbp")?) == Some(n - 8);
    (saved && set).then_some((n, i))
}

/// What each instruction of a function should have, worked out from its disassembly alone:
/// the SP delta follows the SUBs, ADDs, pushes and pops on RSP from the entry on; after a RET
/// the frame is back (the code there is another path through the body), and from the target
/// of the prologue's stack check to the jump back to the entry (the call to morestack) there
/// is no frame. The caller's
/// RBP is at CFA-16 once the prologue has stored it and while there is a frame. `None` for a
/// function that moves SP otherwise, or saves RBP other than by Go's prologue.
fn expected_rows(insns: &[Insn]) -> Option<Vec<(u64, Cfa, Rbp)>> {
    let prologue = go_prologue(insns);
    let frame = prologue.map_or(0, |(n, _)| n);
    // The first instruction after which the caller's RBP is saved: after the MOV of Go's
    // prologue, or after the PUSH of assembly that begins `push %rbp; mov %rsp,%rbp`.
    let push = insns
        .iter()
        .position(|x| x.op == "push" && x.args == "%rbp");
    let saved_from = match (prologue, push) {
        (Some((_, sub)), _) => sub + 2,
        (None, Some(i)) if insns.get(i + 1)?.op == "mov" && insns[i + 1].args == "%rsp,%rbp" => {
            i + 1
        }
        (None, Some(_)) => return None,
        (None, None) => usize::MAX,
    };
    // Bytes that are data, not code (boring/sig's markers), do not disassemble as a function.
    if insns.iter().any(|x| x.op == "(bad)" || x.op == "hlt") {
        return None;
    }
    // The stack check: a compare of SP (or SP less the frame) with g.stackguard0 or, in
    // functions that C may call, g.stackguard1 (g is R14).
    let guard = |a: &str| a.starts_with("0x10(%r14),") || a.starts_with("0x18(%r14),");
    let tail = insns.windows(2).take(8).find_map(|w| {
        let check = w[0].op == "cmp" && guard(&w[0].args) && w[1].op == "jbe";
        check.then(|| u64::from_str_radix(w[1].args.split(' ').next()?, 16).ok())?
    });
    // Go writes a frame of 128 bytes as `add $-128,%rsp` (an 8-bit immediate).
    let imm = |x: &Insn| {
        let hex = x.args.strip_prefix("$0x")?.strip_suffix(",%rsp")?;
        u64::from_str_radix(hex, 16).ok().map(|v| v as i64)
    };
    let entry = format!("{:x} <", insns.first()?.addr);
    let (mut delta, mut in_tail) = (0i64, false);
    let mut want = Vec::new();
    for (i, x) in insns.iter().enumerate() {
        in_tail |= tail == Some(x.addr);
        let d = if in_tail { 0 } else { delta };
        let rbp = if d > 0 && i >= saved_from {
            Rbp::AtCfa(-16)
        } else {
            Rbp::Unchanged
        };
        // The INT3s that pad the function to the next one's alignment (debugCall's body
        // also has some, as breakpoints).
        let row = match insns[i..].iter().all(|x| x.op == "int3") {
            true => (Cfa::Missing, Rbp::Unchanged),
            false => (Cfa::Rsp(i32::try_from(d + 8).ok()?), rbp),
        };
        want.push((x.addr, row.0, row.1));
        match x.op.as_str() {
            "sub" if x.args.ends_with(",%rsp") => delta += imm(x)?,
            "add" if x.args.ends_with(",%rsp") => delta -= imm(x)?,
            "push" | "pushf" | "pushfq" => delta += 8,
            "pop" | "popf" | "popfq" => delta -= 8,
            "ret" => delta = frame,
            "jmp" if in_tail && x.args.starts_with(&entry) => (in_tail, delta) = (false, frame),
            "cmp" | "test" => {}
            _ if x.args.ends_with(",%rsp") => return None,
            _ => {}
        }
    }
    Some(want)
}

#[test]
fn rows_agree_with_the_disassembly_at_every_instruction() {
    if !go_or_skip("rows_agree_with_the_disassembly") {
        return;
    }
    for variant in ["plain", "pie"] {
        let path = workload(variant);
        let rows = rows(&std::fs::read(&path).expect("read")).expect("rows");
        agree_with_the_disassembly(variant, &path, &rows);
    }
}

fn agree_with_the_disassembly(variant: &str, path: &Path, rows: &[Row]) {
    let (mut functions, mut framed, mut checked) = (0, 0, 0);
    for (name, insns) in disassemble(path) {
        // Top frames (Go flags a few more than TOP_FRAMES, e.g. the signal handler) end the
        // stack whatever their code does.
        let top = insns
            .first()
            .is_some_and(|x| row_at(rows, x.addr).0 == Cfa::End);
        let Some(want) = expected_rows(&insns).filter(|_| !top) else {
            continue;
        };
        for (i, &(addr, cfa, rbp)) in want.iter().enumerate() {
            let x = &insns[i];
            assert_eq!(
                row_at(rows, addr),
                (cfa, rbp),
                "{variant}: {name} at {addr:#x}: {} {}",
                x.op,
                x.args
            );
        }
        checked += want.len();
        functions += 1;
        if let Some((_, sub)) = go_prologue(&insns) {
            // Between the SUB and the MOV that saves RBP, the frame exists but its slot
            // does not hold the caller's RBP yet.
            assert_eq!(want[sub + 1].2, Rbp::Unchanged);
            assert!(matches!(want[sub + 1].1, Cfa::Rsp(n) if n > 8));
        }
        if want.iter().any(|w| w.2 == Rbp::AtCfa(-16)) {
            framed += 1;
        }
    }
    println!(
        "gopclntab {variant}: {checked} instructions of {functions} functions ({framed} with a frame pointer) agree with objdump"
    );
    assert!(functions > 1000 && framed > 1000 && checked > 100_000);
}

#[test]
fn sha256_block_is_unwound_by_its_stack_delta_while_it_uses_rbp_for_data() {
    if !go_or_skip("sha256_block_is_unwound") {
        return;
    }
    let path = workload("plain");
    let rows = rows(&std::fs::read(&path).expect("read")).expect("rows");
    let funcs = disassemble(&path);
    let (_, insns) = funcs
        .iter()
        .find(|(name, _)| name == "crypto/sha256.block")
        .expect("crypto/sha256.block in the disassembly");
    let (n, sub) = go_prologue(insns).expect("sha256.block keeps Go's prologue");
    let frame = (Cfa::Rsp(n as i32 + 8), Rbp::AtCfa(-16));
    // The body loads RBP with data (the digest's address, the message schedule's base).
    let writes_rbp: Vec<usize> = (sub + 3..insns.len())
        .filter(|&i| insns[i].op == "mov" && insns[i].args.ends_with(",%rbp"))
        .collect();
    assert!(writes_rbp.len() >= 2, "sha256.block no longer writes RBP");
    let mut checked = 0;
    let mut in_frame = true;
    for (i, x) in insns.iter().enumerate().skip(sub + 2) {
        let row = row_at(&rows, x.addr);
        if x.op == "int3" {
            break;
        }
        if in_frame {
            assert_eq!(
                row, frame,
                "sha256.block at {:#x}: {} {}",
                x.addr, x.op, x.args
            );
            checked += 1;
        }
        // After the ADD that releases the frame comes the RET; after the RET the frame is
        // back (another path), until the stack-growth call at the end.
        match x.op.as_str() {
            "add" if x.args.ends_with(",%rsp") => in_frame = false,
            "ret" => {
                assert_eq!(row, (Cfa::Rsp(8), Rbp::Unchanged), "ret at {:#x}", x.addr);
                in_frame = !insns[i + 1..]
                    .iter()
                    .take(3)
                    .any(|x| x.args.contains("morestack"));
            }
            _ => {}
        }
    }
    assert!(
        checked > 1000,
        "only {checked} instructions of sha256.block checked"
    );
    for i in writes_rbp {
        assert_eq!(row_at(&rows, insns[i].addr + 1), frame);
    }
}

#[test]
fn sp_writing_functions_are_unwound_through_their_frame_pointer() {
    if !go_or_skip("sp_writing_functions") {
        return;
    }
    let path = workload("plain");
    let rows = rows(&std::fs::read(&path).expect("read")).expect("rows");
    let funcs = disassemble(&path);
    // nanotime1 moves SP to the g0 stack around the vDSO call: after the call, only RBP leads
    // back to the goroutine's frame.
    let (_, insns) = funcs
        .iter()
        .find(|(name, _)| name == "runtime.nanotime1")
        .expect("runtime.nanotime1");
    let switch = insns
        .iter()
        .position(|x| x.op == "mov" && x.args.ends_with(",%rsp"))
        .expect("nanotime1 switches stacks");
    let call = insns
        .iter()
        .position(|x| x.op == "call")
        .expect("the vDSO call");
    assert!(switch < call);
    let after_call = insns[call + 1].addr;
    assert_eq!(row_at(&rows, after_call), (Cfa::Rbp(16), Rbp::AtCfa(-16)));
    let ret = insns.iter().position(|x| x.op == "ret").expect("ret");
    assert_eq!(
        row_at(&rows, insns[ret].addr),
        (Cfa::Rsp(8), Rbp::Unchanged)
    );
    // The ADD that releases the frame runs after RBP was restored: SP is right again there.
    assert_eq!(insns[ret - 1].op, "add");
    assert_eq!(
        row_at(&rows, insns[ret - 1].addr),
        (Cfa::Rsp(32), Rbp::AtCfa(-16))
    );
}

#[test]
fn objects_without_a_go_table_say_so() {
    let own = std::fs::read(std::env::current_exe().expect("current_exe")).expect("read self");
    assert!(!is_go(&object::File::parse(&*own).expect("ELF")));
    assert!(
        matches!(rows(&own), Err(Error::NoPclntab)),
        "{:?}",
        rows(&own).err()
    );
    assert!(matches!(rows(b"not an ELF file"), Err(Error::Elf(_))));
}

/// The offset of the function table in the file, and the file.
fn pclntab_in(variant: &str) -> (usize, Vec<u8>) {
    let elf = std::fs::read(workload(variant)).expect("read");
    let file = object::File::parse(&*elf).expect("ELF");
    let table = file.section_by_name(".gopclntab").expect(".gopclntab");
    let (off, _) = table.file_range().expect("in the file");
    (off as usize, elf)
}

#[test]
fn truncated_and_corrupted_tables_are_errors_not_panics() {
    if !go_or_skip("truncated_and_corrupted_tables") {
        return;
    }
    let (off, elf) = pclntab_in("plain");
    let file = object::File::parse(&*elf).expect("ELF");
    let table = pclntab_location(&file).expect("pclntab");
    // Cut short anywhere, the table is an error: the header, the sub-tables, functab or a
    // _func then lies beyond its end.
    let full = Table::parse(table, || None).expect("the whole table");
    let pcln = table.len() - full.pcln.len();
    let (_, last_func) = full.functab(full.nfunc - 1).expect("functab");
    let cuts = [
        0,
        3,
        8,
        20,
        71,
        72,
        200,
        4096,
        pcln - 1,
        pcln + 1000,
        pcln + last_func + 10,
    ];
    for len in cuts {
        let cut = &table[..len];
        let result = Table::parse(cut, || None).and_then(|t| {
            (0..t.nfunc).try_for_each(|i| {
                let f = t.func(i)?;
                pc_values(t.pctab, f.pcsp, f.entry, f.end, &mut Vec::new())
            })
        });
        assert!(result.is_err(), "a table cut to {len} bytes was read");
    }
    let with = |at: usize, bytes: &[u8]| {
        let mut e = elf.clone();
        e[off + at..off + at + bytes.len()].copy_from_slice(bytes);
        rows(&e)
    };
    let err = with(0, &MAGIC_GO1_2.to_le_bytes()).expect_err("Go 1.2 magic");
    assert!(err.to_string().contains("Go 1.2-1.15"), "{err}");
    assert!(matches!(
        with(0, &[1, 2, 3, 4]),
        Err(Error::UnsupportedVersion(_))
    ));
    assert!(matches!(with(7, &[4]), Err(Error::Malformed(_))));
    // A function count far beyond the table must not allocate or loop for it.
    let err = with(8, &(u64::MAX / 2).to_le_bytes()).expect_err("huge nfunc");
    assert!(matches!(err, Error::Truncated(_)), "{err}");
    // Sub-table offsets out of order or past the end.
    let err = with(8 + 8 * 7, &u64::MAX.to_le_bytes()).expect_err("pclnOffset");
    assert!(matches!(err, Error::Malformed(_)), "{err}");
    // A text start elsewhere puts the functions outside the executable segments.
    assert!(matches!(
        with(24, &[0, 0, 0, 0x70, 0, 0, 0, 0]),
        Err(Error::Malformed(_))
    ));
    // Random damage anywhere in the table: an answer or an error, never a panic, and any
    // answer is still sorted.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut errors, mut answers) = (0, 0);
    for _ in 0..300 {
        let mut e = elf.clone();
        for _ in 0..1 + next() % 8 {
            // Mostly in the header, functab and _funcs, where one byte moves everything.
            let span = if next() % 2 == 0 { 4096 } else { table.len() };
            e[off + (next() as usize % span)] = next() as u8;
        }
        match rows(&e) {
            Ok(rows) => {
                assert!(rows.windows(2).all(|w| w[0].pc < w[1].pc));
                answers += 1;
            }
            Err(_) => errors += 1,
        }
    }
    println!("gopclntab: 300 damaged tables, {errors} errors, {answers} read");
    assert!(errors > 0);
}

fn put(t: &mut [u8], at: usize, v: u64, len: usize) {
    t[at..at + len].copy_from_slice(&v.to_le_bytes()[..len]);
}

/// A table in the given layout with two functions at 0x401000 and 0x401020: `main.f`, with a
/// frame of 0x18 bytes, and `main.g`, without a pcsp table.
fn synthetic(version: Version) -> Vec<u8> {
    let (magic, entry_len, flag_at) = match version {
        Version::Go116 => (MAGIC_GO1_16, 8, 41),
        Version::Go118 => (MAGIC_GO1_18, 4, 37),
        Version::Go120 => (MAGIC_GO1_20, 4, 41),
    };
    let words = if version == Version::Go116 { 7 } else { 8 };
    let names = b"main.f\0main.g\0";
    // A zero byte first (offset 0 means "no table"), then main.f's pcsp: (zigzag(+1), 4),
    // (zigzag(+0x18), 16), (zigzag(-0x18), 1), end: 0 for 4 bytes, 0x18 for 16, 0 for 1.
    let pcsp = [0u8, 2, 4, 0x30, 16, 0x2f, 1, 0];
    let funcnames = 8 + 8 * words;
    let pctab = funcnames + names.len();
    let pcln = pctab + pcsp.len();
    let (ftab_len, func_len) = (3 * 2 * entry_len, flag_at + 3);
    let text = 0x40_1000u64;
    let mut t = vec![0u8; pcln + ftab_len + 2 * func_len];
    t[..4].copy_from_slice(&magic.to_le_bytes());
    (t[6], t[7]) = (1, 8);
    put(&mut t, 8, 2, 8);
    if version != Version::Go116 {
        put(&mut t, 24, text, 8);
    }
    // funcname, cu, filetab (both empty here), pctab, pcln.
    for (i, o) in [funcnames, pctab, pctab, pctab, pcln]
        .into_iter()
        .enumerate()
    {
        put(&mut t, 8 + 8 * (words - 5 + i), o as u64, 8);
    }
    t[funcnames..pctab].copy_from_slice(names);
    t[pctab..pcln].copy_from_slice(&pcsp);
    let entry = |i: u64| match version {
        Version::Go116 => text + 0x20 * i,
        _ => 0x20 * i,
    };
    for i in 0..3 {
        let func = ftab_len + i.min(1) * func_len;
        put(&mut t, pcln + i * 2 * entry_len, entry(i as u64), entry_len);
        put(
            &mut t,
            pcln + (i * 2 + 1) * entry_len,
            func as u64,
            entry_len,
        );
    }
    for (i, (name, pcsp)) in [(0, 1), (7, 0)].into_iter().enumerate() {
        let at = pcln + ftab_len + i * func_len;
        put(&mut t, at, entry(i as u64), entry_len);
        put(&mut t, at + entry_len, name, 4);
        put(&mut t, at + entry_len + 12, pcsp, 4);
        if version != Version::Go116 {
            t[at + flag_at] = FLAG_TOPFRAME * i as u8;
        }
    }
    t
}

#[test]
fn the_layouts_of_go_1_16_and_1_20_read_like_that_of_1_18() {
    for version in [Version::Go116, Version::Go118, Version::Go120] {
        let t = synthetic(version);
        let table = Table::parse(&t, || None).unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!((table.version, table.nfunc), (version, 2));
        let f = table.func(0).expect("main.f");
        assert_eq!(
            (f.name, f.entry, f.end, f.pcsp),
            (&b"main.f"[..], 0x40_1000, 0x40_1020, 1)
        );
        let g = table.func(1).expect("main.g");
        assert_eq!(
            (g.name, g.entry, g.end, g.pcsp),
            (&b"main.g"[..], 0x40_1020, 0x40_1040, 0)
        );
        // Go 1.16's _func has no flags: what is read there is padding.
        let want_flag = if version == Version::Go116 {
            0
        } else {
            FLAG_TOPFRAME
        };
        assert_eq!((f.flag, g.flag), (0, want_flag), "{version:?}");
        let mut ranges = Vec::new();
        pc_values(table.pctab, f.pcsp, f.entry, f.end, &mut ranges).expect("pcsp");
        let values: Vec<_> = ranges
            .iter()
            .map(|r| (r.start - f.entry, r.end - f.entry, r.value))
            .collect();
        assert_eq!(
            values,
            [(0, 4, 0), (4, 20, 0x18), (20, 21, 0)],
            "{version:?}"
        );
    }
}

#[test]
fn a_pushed_frame_pointer_is_saved_as_soon_as_sp_moves() {
    // PUSHQ BP; MOVQ SP, BP; SUBQ $0x10, SP; ... ADDQ $0x10, SP; POPQ BP; RET
    let code = [
        0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0x90, 0x48, 0x83, 0xc4, 0x10, 0x5d, 0xc3,
    ];
    let text = Text {
        segments: vec![(0x1000, &code[..])],
    };
    let r = |start: u64, end: u64, value: i32| PcRange {
        start: 0x1000 + start,
        end: 0x1000 + end,
        value,
    };
    let ranges = [
        r(0, 1, 0),
        r(1, 8, 8),
        r(8, 13, 24),
        r(13, 14, 8),
        r(14, 15, 0),
    ];
    let save = frame_save(&text, &ranges).expect("a pushed RBP");
    assert_eq!(
        (save.saved, save.rbp_set, save.pushed),
        (0x1001, 0x1004, true)
    );
    assert_eq!(epilogues(&text, &ranges, save), Some(vec![]));
    // The same bytes without the push save nothing.
    let moved = [r(0, 1, 0), r(1, 8, 16)];
    assert_eq!(frame_save(&text, &moved), None);
}
