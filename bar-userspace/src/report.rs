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
    let cannot = || format!("cannot write the outputs to {}", out.display());
    let mut written = render::write_all(&profile, out).with_context(cannot)?;
    let (sections, diff_files) = phase_diffs(capture, &profile, out, phases);
    written.extend(diff_files);
    written.push(render::html::write(&profile, out, &sections).with_context(cannot)?);
    Ok(Report {
        written,
        damage: profile.damage.clone(),
        profile,
    })
}

/// Everything a recording leaves beside its capture, as `attach`, `record` and a dump of the
/// flight recorder end: the checksum, every output, and all of it handed to the user who ran
/// `sudo bar-probe`. Returns the files, the capture first.
pub fn deliver(capture: &Path, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let checksum = crate::evidence::write_checksum(capture)
        .with_context(|| format!("cannot checksum {}", capture.display()))?;
    let rep = report(capture, out)?;
    let mut files = vec![capture.to_owned(), checksum];
    files.extend(rep.written);
    crate::evidence::hand_over(out, &files)
        .with_context(|| format!("cannot hand {} over to the sudo user", out.display()))?;
    Ok(files)
}

/// Each phase against the one before it, as sections of `report.html` (with their files under
/// `phases/diff-<before>-<after>/`). A pair that cannot be compared says why instead.
fn phase_diffs(
    capture: &Path,
    profile: &Profile,
    out: &Path,
    phases: Option<&[WallPhase]>,
) -> (Vec<render::html::Section>, Vec<PathBuf>) {
    use crate::diff::{
        self,
        compare::{Norm, TestOptions},
        input::Select,
    };
    let mut sections = Vec::new();
    let mut files = Vec::new();
    for pair in profile.phases.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        // About eight windows in the shorter phase are the measurements of the tests: both
        // phases are parts of the same run.
        let shorter = (a.end_ns - a.start_ns).min(b.end_ns - b.start_ns);
        let window =
            std::time::Duration::from_nanos((shorter / 8).clamp(50_000_000, 2_000_000_000));
        let opts = diff::DiffOptions {
            phases: phases.map(<[WallPhase]>::to_vec),
            base: vec![capture.to_owned()],
            history: None,
            cand: Vec::new(),
            view: None,
            base_select: Select::Phase(a.name.clone()),
            cand_select: Select::Phase(b.name.clone()),
            windows: Some(window),
            norm: Norm::Share,
            test: TestOptions {
                alpha: 0.05,
                min_share: 0.005,
            },
            by_process: false,
            top: 20,
            paths: 5,
            gate: None,
        };
        let title = format!("Diff: phase {} \u{2192} phase {}", a.name, b.name);
        let dir = out
            .join("phases")
            .join(format!("diff-{}-{}", a.name, b.name));
        let html = match diff::diff(&opts) {
            Ok(outcome) => match diff::output::write_files(&outcome, &dir) {
                Ok(w) => {
                    files.extend(w);
                    diff::output::html_section(&outcome, &dir)
                }
                Err(e) => format!(
                    "<p class=\"note\">cannot write the diff: {}</p>",
                    render::html::escape(&e.to_string())
                ),
            },
            Err(e) => format!(
                "<p class=\"note\">not compared: {}</p>",
                render::html::escape(&e.to_string())
            ),
        };
        sections.push(render::html::Section { title, html });
    }
    (sections, files)
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
