//! Report: capture file in, every output out. `attach` and `record` end by calling this on the
//! capture they just wrote, so `bar-probe report` on a copied capture gives the same files.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    analyze::{
        self, Capture, Profile,
        phases::{self, WallPhase},
    },
    capture::Damage,
    diff::{
        self,
        compare::{Norm, TestOptions},
        input::{Input, Select},
    },
    render,
    sys::files::Dir,
};

pub struct Report {
    pub written: Vec<PathBuf>,
    /// Outputs that could not be written (of a phase), one line each; the rest were.
    pub warnings: Vec<String>,
    pub damage: Option<Damage>,
    pub profile: Profile,
}

/// A capture read into a profile, kept open for the comparisons of its phases, which read it
/// again.
pub struct Loaded {
    pub capture: Capture,
    pub profile: Profile,
}

/// Reads a capture (up to any damage) into a profile cut into the given phases (or the
/// capture's own markers).
pub fn load_with(capture: &Path, phases: Option<&[WallPhase]>) -> anyhow::Result<Loaded> {
    let (capture, profile) = analyze::load(capture, phases)?;
    Ok(Loaded { capture, profile })
}

/// Renders a capture into `out`.
pub fn report(capture: &Path, out: &Dir) -> anyhow::Result<Report> {
    report_with(capture, out, None)
}

/// Renders a capture into `out`, cut into the given phases instead of its own markers.
pub fn report_with(
    capture: &Path,
    out: &Dir,
    phases: Option<&[WallPhase]>,
) -> anyhow::Result<Report> {
    render_profile(capture, load_with(capture, phases)?, out, phases)
}

/// Renders a capture already read into `loaded` into `out`.
pub fn render_profile(
    capture: &Path,
    loaded: Loaded,
    out: &Dir,
    phases: Option<&[WallPhase]>,
) -> anyhow::Result<Report> {
    let Loaded {
        capture: opened,
        profile,
    } = loaded;
    let cannot = || format!("cannot write the outputs to {}", out.path().display());
    let render::Written {
        files: mut written,
        mut warnings,
    } = render::write_all(&profile, out).with_context(cannot)?;
    let opened = diff::Inputs::one(Input::Capture(Box::new(opened)));
    let (sections, diff_files) =
        phase_diffs(capture, &opened, &profile, out, phases, &mut warnings);
    written.extend(diff_files);
    written.push(render::html::write(&profile, out, &sections).with_context(cannot)?);
    Ok(Report {
        written,
        warnings,
        damage: profile.damage.clone(),
        profile,
    })
}

/// Everything a recording leaves beside its capture `name` in `out`, as `attach`, `record` and
/// a dump of the flight recorder end: the checksum and every output (under sudo, each handed to
/// the user who ran `sudo bar-probe` as it is created). Outputs that could not be written (of a
/// phase) are said on stderr. Returns the files, the capture first.
pub fn deliver(out: &Dir, name: &str) -> anyhow::Result<Vec<PathBuf>> {
    let capture = out.join(name);
    let checksum = crate::evidence::write_checksum(out, name)
        .with_context(|| format!("cannot checksum {}", capture.display()))?;
    let rep = report(&capture, out)?;
    for w in &rep.warnings {
        eprintln!("bar-probe: warning: {w}");
    }
    let mut files = vec![capture, checksum];
    files.extend(rep.written);
    Ok(files)
}

/// Each phase against the one before it, as sections of `report.html` (with their files under
/// `phases/diff-<before>-<after>/`), read from the capture already open. A pair that cannot be
/// compared says why instead.
fn phase_diffs(
    capture: &Path,
    opened: &diff::Inputs,
    profile: &Profile,
    out: &Dir,
    phases: Option<&[WallPhase]>,
    warnings: &mut Vec<String>,
) -> (Vec<render::html::Section>, Vec<PathBuf>) {
    let mut sections = Vec::new();
    let mut files = Vec::new();
    let folders = phases::folder_names(&profile.phases);
    for (pair, names) in profile.phases.windows(2).zip(folders.windows(2)) {
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
            .subdir("phases")
            .and_then(|d| d.subdir(&format!("diff-{}-{}", names[0], names[1])));
        let written = |outcome| {
            let dir = dir
                .as_ref()
                .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
            diff::output::write_files(outcome, dir).map(|w| (w, dir))
        };
        let html = match diff::diff_inputs(&opts, opened) {
            Ok(outcome) => match written(&outcome) {
                Ok((w, dir)) => {
                    files.extend(w);
                    diff::output::html_section(&outcome, dir)
                }
                Err(e) => {
                    warnings.push(format!(
                        "no diff of phases '{}' and '{}': {e}",
                        a.name, b.name
                    ));
                    format!(
                        "<p class=\"note\">cannot write the diff: {}</p>",
                        render::html::escape(&e.to_string())
                    )
                }
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
            let (_, profile) = analyze::load(&path, None).expect("a capture");
            let truncated = path.to_string_lossy().contains("truncated");
            assert_eq!(profile.damage.is_some(), truncated, "{}", path.display());
            assert!(!profile.views.is_empty(), "{} has events", path.display());
            let out =
                std::env::temp_dir().join(format!("bar-corpus-{}-{seen}", std::process::id()));
            let dir = Dir::create(&out).expect("output folder");
            let written = crate::render::write_all(&profile, &dir).expect("render");
            assert!(written.files.iter().any(|p| p.ends_with("summary.json")));
            assert!(written.warnings.is_empty(), "{:?}", written.warnings);
            let _ = std::fs::remove_dir_all(&out);
            seen += 1;
        }
        assert!(seen >= 3);
    }
}
