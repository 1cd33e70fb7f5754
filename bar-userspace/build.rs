//! Builds the kernel programs (bar-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, so that `bar-probe` can embed the object and ship as one file.

use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    // scripts/setup.sh installs bpf-linker outside PATH (it is tied to the nightly's LLVM);
    // find it there when PATH does not have one.
    println!("cargo:rerun-if-env-changed=BAR_TOOLS_DIR");
    let tools = env::var_os("BAR_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/bar-tools")));
    if let Some(bin) = tools.map(|t| t.join("bin"))
        && bin.join("bpf-linker").exists()
    {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin];
        paths.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", env::join_paths(paths)?) };
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../bar-ebpf");
    println!("cargo:rerun-if-changed={root}/../bar-ebpf-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bar-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
