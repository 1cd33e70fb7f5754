//! Sections of `docs/benchmarks.md` that a part of the bench writes on its own (`cargo xtask
//! bench gate`, `bench flight`, `bench unwind`), between two comment lines, so that running one
//! part replaces its section and leaves the rest of the document as the last run wrote it.

fn begin(name: &str) -> String {
    format!("<!-- bench {name}: begin -->")
}

fn end(name: &str) -> String {
    format!("<!-- bench {name}: end -->")
}

use std::path::Path;

use anyhow::Context as _;

/// Writes `body` as the section `name` of the document at `path`, the rest of it unchanged.
pub fn write(path: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    std::fs::write(path, replace(&old, name, &wrap(name, body)))
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("bench {name}: wrote {}", path.display());
    Ok(())
}

/// `body` between the section's markers.
pub fn wrap(name: &str, body: &str) -> String {
    format!(
        "{}\n{}\n{}\n",
        begin(name),
        body.trim_end_matches('\n'),
        end(name)
    )
}

/// Where the section `name` lies in `doc`, markers included, with the newline after it.
fn find(doc: &str, name: &str) -> Option<(usize, usize)> {
    let (b, e) = (begin(name), end(name));
    let a = doc.find(&b)?;
    let z = a + doc[a..].find(&e)? + e.len();
    Some((a, z + usize::from(doc[z..].starts_with('\n'))))
}

/// `doc` with its section `name` replaced by `section` (already wrapped), or with `section`
/// added at the end when the document has none yet.
pub fn replace(doc: &str, name: &str, section: &str) -> String {
    match find(doc, name) {
        Some((a, z)) => format!("{}{section}{}", &doc[..a], &doc[z..]),
        None if doc.trim().is_empty() => section.to_owned(),
        None => format!("{}\n\n{section}", doc.trim_end_matches('\n')),
    }
}

/// `new` with the section `name` that `old` has (a part this run did not measure) carried over.
pub fn keep(old: &str, new: String, name: &str) -> String {
    match find(old, name) {
        Some((a, z)) => replace(&new, name, &old[a..z]),
        None => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_added_and_kept() {
        let s1 = wrap("gate", "A");
        let s2 = wrap("gate", "B\n");
        let doc = replace("# Benchmarks\n\ntext\n", "gate", &s1);
        assert_eq!(doc, format!("# Benchmarks\n\ntext\n\n{s1}"));
        let doc2 = replace(&doc, "gate", &s2);
        assert_eq!(doc2, format!("# Benchmarks\n\ntext\n\n{s2}"));
        let rewritten = keep(&doc2, "# Benchmarks\n\nnew run\n".into(), "gate");
        assert_eq!(rewritten, format!("# Benchmarks\n\nnew run\n\n{s2}"));
        // A section in the middle stays where it is, and another's markers do not match.
        let mid = format!("head\n{}tail\n", wrap("flight", "old"));
        let fresh = wrap("flight", "new");
        assert_eq!(
            replace(&mid, "flight", &fresh),
            format!("head\n{fresh}tail\n")
        );
        assert_eq!(keep("no sections", "doc".into(), "unwind"), "doc");
    }
}
