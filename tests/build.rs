//! Builds the C workloads of the tests with the system's gcc, as Debian builds its libraries:
//! `-O2 -fomit-frame-pointer`, no debug information (but for `inlined`, whose inlined function
//! only DWARF describes). The tests find them through
//! `BAR_WORKLOADS_DIR` (set here, or at run time where the binaries were moved, as in the VMs).

use std::{path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let dir = out.join("workloads");
    std::fs::create_dir_all(&dir).expect("create the workloads folder");
    let flags = ["-O2", "-fomit-frame-pointer", "-g0", "-Wall"];
    let builds: [(&str, &str, &[&str]); 3] = [
        ("workloads/frameless.c", "frameless", &["-ldl", "-pthread"]),
        (
            "workloads/frameless_dl.c",
            "libframeless_dl.so",
            &["-shared", "-fPIC"],
        ),
        // The later -g wins over -g0.
        ("workloads/inlined.c", "inlined", &["-g"]),
    ];
    for (src, name, extra) in builds {
        println!("cargo:rerun-if-changed={src}");
        let status = Command::new("gcc")
            .args(flags)
            .arg("-o")
            .arg(dir.join(name))
            .arg(src)
            .args(extra)
            .status()
            .expect("gcc is needed to build the C workloads of the tests");
        assert!(status.success(), "gcc failed to build {src}");
    }
    println!("cargo:rustc-env=BAR_WORKLOADS_BUILD_DIR={}", dir.display());
}
