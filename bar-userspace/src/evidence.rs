//! Evidence hygiene for the files a recording leaves: a SHA-256 beside the capture so a copy can
//! be checked, and ownership handed to the user who ran `sudo bar-probe` (the files stay 0600).

use std::{
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

/// Writes `<capture>.sha256` in the format `sha256sum -c` checks.
pub fn write_checksum(capture: &Path) -> io::Result<PathBuf> {
    let mut hasher = Sha256::new();
    let mut file = fs::File::open(capture)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = capture.file_name().map_or_else(
        || "capture.bar".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let path = capture.with_file_name(format!("{name}.sha256"));
    crate::render::write_atomic(&path, |w| writeln!(w, "{digest}  {name}"))?;
    Ok(path)
}

/// The user who invoked sudo, if bar-probe runs under it.
fn invoking_user() -> Option<(u32, u32)> {
    let uid = std::env::var("SUDO_UID").ok()?.parse().ok()?;
    let gid = std::env::var("SUDO_GID").ok()?.parse().ok()?;
    Some((uid, gid))
}

/// Gives the output folder and files to the invoking user when running under sudo, so the
/// evidence can be copied away without root.
pub fn hand_over(dir: &Path, files: &[PathBuf]) -> io::Result<()> {
    let Some((uid, gid)) = invoking_user() else {
        return Ok(());
    };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    for f in files {
        std::os::unix::fs::chown(f, Some(uid), Some(gid))?;
    }
    Ok(())
}
