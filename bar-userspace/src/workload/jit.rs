//! The JIT workload: machine code in an anonymous mapping, named only in the perf map.

use std::time::Instant;

use super::PAGE;

/// Maps an executable page, writes a counting loop into it, names it `bar_jit_hot_loop` in the
/// perf map (as JIT runtimes do), and calls it until `until`. x86-64 only.
#[cfg(target_arch = "x86_64")]
pub(super) fn run_jitted_code(until: Instant) -> anyhow::Result<u64> {
    // mov rcx, 1_000_000; 1: dec rcx; jnz 1b; ret
    let mut code = vec![0x48, 0xB9];
    code.extend(1_000_000u64.to_le_bytes());
    code.extend([0x48, 0xFF, 0xC9, 0x75, 0xFB, 0xC3]);
    // SAFETY: a fresh anonymous mapping, written before it is made executable.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    anyhow::ensure!(page != libc::MAP_FAILED, "mmap failed");
    // SAFETY: the page is PAGE bytes, the code is shorter.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), page.cast::<u8>(), code.len());
        anyhow::ensure!(
            libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_EXEC) == 0,
            "mprotect failed"
        );
    }
    let map = format!("/tmp/perf-{}.map", std::process::id());
    // /tmp is everyone's: whatever has the name goes (the link itself, not what it points
    // to), and the map is created new, never written through a link another user planted.
    let _ = std::fs::remove_file(&map);
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&map)?,
        format!("{:x} {:x} bar_jit_hot_loop\n", page as usize, code.len()).as_bytes(),
    )?;
    // SAFETY: the page holds a complete function with the C ABI and no arguments.
    let f: extern "C" fn() = unsafe { std::mem::transmute(page) };
    let mut calls = 0;
    while Instant::now() < until {
        f();
        calls += 1;
    }
    let _ = std::fs::remove_file(map);
    Ok(calls)
}
