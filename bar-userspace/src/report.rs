//! Report: capture file in, every output out. `attach` and `record` end by calling this on the
//! capture they just wrote, so `bar-probe report` on a copied capture gives the same files.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    aggregate::Profile,
    capture::{Damage, Reader},
    phases::WallPhase,
    render,
};

pub struct Report {
    pub written: Vec<PathBuf>,
    pub damage: Option<Damage>,
    pub profile: Profile,
}

/// Reads a capture (up to any damage) into a profile.
pub fn load(capture: &Path) -> anyhow::Result<Profile> {
    load_with(capture, None)
}

/// Reads a capture into a profile cut into the given phases (or the capture's own markers).
pub fn load_with(capture: &Path, phases: Option<&[WallPhase]>) -> anyhow::Result<Profile> {
    let mut reader = Reader::open(capture)?;
    let profile = Profile::load(&mut reader, phases)?;
    if profile.meta.bar_version.is_empty() {
        return Err(crate::capture::CaptureError::NoMeta(capture.to_owned()).into());
    }
    Ok(profile)
}

/// Renders a capture into `out`.
pub fn report(capture: &Path, out: &Path) -> anyhow::Result<Report> {
    report_with(capture, out, None)
}

/// Renders a capture into `out`, cut into the given phases instead of its own markers.
pub fn report_with(
    capture: &Path,
    out: &Path,
    phases: Option<&[WallPhase]>,
) -> anyhow::Result<Report> {
    let profile = load_with(capture, phases)?;
    let written = render::write_all(&profile, out)
        .with_context(|| format!("cannot write the outputs to {}", out.display()))?;
    Ok(Report {
        written,
        damage: profile.damage.clone(),
        profile,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The real captures kept as the fuzz corpus read back: whole ones completely, the cut one
    /// up to its damage, and every output renders from each.
    #[test]
    fn corpus_captures_render() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/capture_reader");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus folder") {
            let path = entry.expect("entry").path();
            let profile = load(&path).expect("a capture");
            let truncated = path.to_string_lossy().contains("truncated");
            assert_eq!(profile.damage.is_some(), truncated, "{}", path.display());
            assert!(!profile.views.is_empty(), "{} has events", path.display());
            let out =
                std::env::temp_dir().join(format!("bar-corpus-{}-{seen}", std::process::id()));
            let written = crate::render::write_all(&profile, &out).expect("render");
            assert!(written.iter().any(|p| p.ends_with("summary.json")));
            let _ = std::fs::remove_dir_all(&out);
            seen += 1;
        }
        assert!(seen >= 3);
    }
}
