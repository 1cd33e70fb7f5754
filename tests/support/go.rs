//! The Go toolchain for the tests that need it: the `go-sha` workload, built once, and `go tool
//! pprof`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use crate::out_dir;

/// The Go workload `go-sha` (source in `tests/workloads/go-sha`): `main.hashLoop` calls
/// `crypto/sha256`, whose assembly uses RBP as data, for the seconds asked. Built with `go
/// build` once per test binary, into the test's temporary folder; `$BAR_GO_SHA` names a
/// build to use instead (for machines without Go). `None`, with the reason printed, when Go
/// is missing, unless `BAR_REQUIRE_ROOT` is set (`cargo xtask test` installs Go): then the
/// test fails.
pub fn go_sha_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BAR_GO_SHA") {
        return Some(p.into());
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_go_sha) {
        Ok(p) => Some(p.clone()),
        Err(why) => {
            assert!(
                std::env::var_os("BAR_REQUIRE_ROOT").is_none(),
                "{test}: {why}"
            );
            eprintln!("skipped {test}: {why}");
            None
        }
    }
}

/// `go-sha [--wait] SECONDS`, ready for [`Workload::spawn`].
pub fn go_sha_command(exe: &Path, seconds: f64) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("--wait").arg(seconds.to_string());
    cmd
}

/// The Go tool, kept off the network: no module proxy, no toolchain download.
pub fn go() -> Command {
    let mut c = Command::new("go");
    c.env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .current_dir(std::env::temp_dir());
    c
}

/// True when `go tool pprof` runs here; `cargo xtask test` installs it, so there a missing Go
/// is a failure, not a skip.
pub fn pprof_or_skip(test: &str) -> bool {
    let ok = go().args(["tool", "pprof", "-h"]).output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout).contains("usage")
            || String::from_utf8_lossy(&o.stderr).contains("usage")
    });
    if ok {
        return true;
    }
    assert!(
        std::env::var_os("BAR_REQUIRE_ROOT").is_none(),
        "{test}: `go tool pprof` does not run; `scripts/setup.sh export` installs it"
    );
    eprintln!("skipped {test}: `go tool pprof` is not installed (scripts/setup.sh export)");
    false
}

fn build_go_sha() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/go-sha/main.go");
    let dir = out_dir("go-sha");
    let exe = dir.join("go-sha");
    // Free of cgo, so that only Go itself is needed.
    let out = go()
        .args(["build", "-o"])
        .arg(&exe)
        .arg(&src)
        .env("CGO_ENABLED", "0")
        .output()
        .map_err(|e| format!("cannot run `go` ({e}); `scripts/setup.sh export` installs it"))?;
    if !out.status.success() {
        return Err(format!(
            "go build {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(exe)
}
