//! Report: capture file in, every output out. `attach` and `record` end by calling this on the
//! capture they just wrote, so `bar-probe report` on a copied capture gives the same files.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    aggregate::Profile,
    capture::{Damage, Reader},
    render,
};

pub struct Report {
    pub written: Vec<PathBuf>,
    pub damage: Option<Damage>,
    pub profile: Profile,
}

/// Reads a capture (up to any damage) into a profile.
pub fn load(capture: &Path) -> anyhow::Result<Profile> {
    let mut reader = Reader::open(capture)?;
    let profile = Profile::from_reader(&mut reader);
    if profile.meta.bar_version.is_empty() {
        return Err(crate::capture::CaptureError::NoMeta(capture.to_owned()).into());
    }
    Ok(profile)
}

/// Renders a capture into `out`.
pub fn report(capture: &Path, out: &Path) -> anyhow::Result<Report> {
    let profile = load(capture)?;
    let written = render::write_all(&profile, out)
        .with_context(|| format!("cannot write the outputs to {}", out.display()))?;
    Ok(Report {
        written,
        damage: profile.damage.clone(),
        profile,
    })
}
