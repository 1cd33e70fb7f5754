//! Evidence hygiene for the files a recording leaves: a SHA-256 beside the capture so a copy can
//! be checked. (Under sudo, the folder and files already belong to the invoking user: the
//! output folder hands each over as it creates it, see [`crate::sys::files::Dir`].)

use std::{
    io::{self, Read as _},
    path::PathBuf,
};

use sha2::{Digest as _, Sha256};

use crate::sys::files::Dir;

/// Writes `<capture>.sha256` beside capture `name` of `dir`, in the format `sha256sum -c`
/// checks.
pub fn write_checksum(dir: &Dir, name: &str) -> io::Result<PathBuf> {
    let mut hasher = Sha256::new();
    let (mut file, _) = dir.open_back(name)?;
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
    dir.write_atomic(&format!("{name}.sha256"), |w| {
        writeln!(w, "{digest}  {name}")
    })
}
