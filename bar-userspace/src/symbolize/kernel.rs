//! Kernel addresses: which kernel functions run tracing programs (they end every stack a
//! program captures), kallsyms as blazesym's source, and module space without a module (JITed
//! BPF code).

use std::fs;

use blazesym::{
    MaybeDefault,
    symbolize::source::{Kernel, Source},
};

/// Kernel functions that run a tracing program; they end every stack a program captures.
pub(super) fn is_tracing_frame(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__bpf_prog_run",
        "bpf_get_stack",
        "perf_trace_",
        "perf_tp_event",
        "trace_call_bpf",
        "__traceiter_",
        "bpf_trampoline_",
    ];
    name.starts_with(BPF_CODE) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Name given to code in module space that no module owns: JITed BPF programs and
/// trampolines, which kallsyms lists only when `net.core.bpf_jit_kallsyms` is on, so that
/// blazesym would name them after whatever symbol precedes them.
pub(super) const BPF_CODE: &str = "[bpf";

/// Kernel symbols from kallsyms (vmlinux with DWARF is rarely installed, and slow to parse).
pub(super) fn kernel_source() -> Source<'static> {
    Source::Kernel(Kernel {
        vmlinux: MaybeDefault::None,
        debug_syms: false,
        ..Kernel::default()
    })
}

/// Code ranges of loaded modules, when the kernel shows them; `None` when module space cannot
/// be told apart (not x86-64, or addresses hidden from us).
pub(super) fn module_code_ranges() -> Option<Vec<(u64, u64)>> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    // A kernel without module support has no /proc/modules: all of module space is BPF's.
    let Ok(text) = fs::read_to_string("/proc/modules") else {
        return Some(Vec::new());
    };
    text.lines()
        .map(|l| {
            // name size refcount deps state address
            let f: Vec<&str> = l.split_whitespace().collect();
            let size = f.get(1)?.parse::<u64>().ok()?;
            let base = u64::from_str_radix(f.get(5)?.trim_start_matches("0x"), 16).ok()?;
            (base != 0).then_some((base, base + size))
        })
        .collect()
}

/// Whether kernel address `a` is code of no module, in the space x86-64 kernels give modules
/// and JITed BPF (above the 1 GiB kernel image).
pub(super) fn is_bpf_code(a: u64, modules: &[(u64, u64)]) -> bool {
    const MODULE_SPACE: u64 = 0xffff_ffff_c000_0000;
    a >= MODULE_SPACE && !modules.iter().any(|&(s, e)| s <= a && a < e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_in_module_space_outside_modules_is_bpf() {
        let ext4 = (0xffff_ffff_c010_0000, 0xffff_ffff_c020_0000);
        assert!(is_bpf_code(0xffff_ffff_c000_1000, &[ext4]));
        assert!(!is_bpf_code(0xffff_ffff_c010_1000, &[ext4]));
        // The kernel image, below module space.
        assert!(!is_bpf_code(0xffff_ffff_8100_0000, &[]));
    }
}
