//! Phases of a load test (warmup, steady, spike...): named time ranges of a recording. They
//! come from a phase file (JSON or CSV), from live markers (`bar-probe mark`, a socket or a
//! FIFO) or from `bar-probe run`, and are stored in the capture as markers on the kernel's
//! monotonic clock, so every event falls in a phase by its own timestamp.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use crate::capture::proto;

/// A phase on the monotonic clock: `[start_ns, end_ns)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PhaseError {
    #[error("cannot read phase file {0}")]
    Read(String),
    #[error("phase file {file}: {msg}")]
    Format { file: String, msg: String },
    #[error("phase file {file}: phase '{name}' ends before it starts")]
    Backwards { file: String, name: String },
    #[error("phase file {file}: phases '{a}' and '{b}' overlap")]
    Overlap { file: String, a: String, b: String },
    #[error("phase '{name}' ({start} to {end}) lies outside the capture ({from} to {to})")]
    Outside {
        name: String,
        start: String,
        end: String,
        from: String,
        to: String,
    },
    #[error("'{name}' is not a phase name: {why}")]
    BadName { name: String, why: &'static str },
}

/// A phase as a file gives it, on the wall clock (nanoseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WallPhase {
    pub name: String,
    pub start: i128,
    pub end: i128,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPhase {
    name: String,
    start: serde_json::Value,
    end: serde_json::Value,
}

/// A time as RFC 3339 or Unix seconds (fractional allowed), to nanoseconds since the epoch.
pub fn parse_time(s: &str) -> Result<i128, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        // Up to the end of the year 9999, as RFC 3339 times go.
        if !secs.is_finite() || !(0.0..253_402_300_800.0).contains(&secs) {
            return Err(format!(
                "'{s}' is not a time (Unix seconds from 0 to the year 9999)"
            ));
        }
        // Split to keep nanosecond precision for large epoch values.
        let whole = secs.trunc();
        let frac = s.split_once('.').map_or(0, |(_, f)| {
            let digits: String = f.chars().take(9).collect();
            format!("{digits:0<9}").parse::<i128>().unwrap_or(0)
        });
        return Ok(whole as i128 * 1_000_000_000 + frac);
    }
    s.parse::<jiff::Timestamp>()
        .map(|t| t.as_nanosecond())
        .map_err(|_| format!("'{s}' is neither RFC 3339 nor Unix seconds"))
}

/// The longest phase name, in bytes.
pub const MAX_NAME: usize = 100;

/// The one rule for phase names, wherever they come from (phase file, FIFO, socket, `run`,
/// a capture): a name becomes a folder name and a line of the marker protocol, so it is
/// printable, holds no `/`, is not `.` or `..`, does not start or end with a space, and is at
/// most [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> Result<(), PhaseError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is longer than 100 bytes"
    } else if name.chars().any(char::is_control) {
        "it holds a control character (such as a newline or NUL)"
    } else if name.contains('/') {
        "it holds a '/'"
    } else if name == "." || name == ".." {
        "'.' and '..' name folders"
    } else if name.trim() != name {
        "it starts or ends with a space"
    } else {
        return Ok(());
    };
    Err(PhaseError::BadName {
        name: escaped(name),
        why,
    })
}

/// A name as it can be shown: control characters escaped, cut to [`MAX_NAME`] bytes with a
/// mark.
pub fn escaped(name: &str) -> String {
    let mut out: String = name
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if out.len() > MAX_NAME {
        let mut cut = MAX_NAME - '…'.len_utf8();
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Names of phases read from a capture, which anyone could have written: a valid name is kept,
/// another is shown escaped (its folder gets a safe name from [`folder_names`]).
fn shown(name: &str) -> String {
    match check_name(name) {
        Ok(()) => name.to_owned(),
        Err(_) => escaped(name),
    }
}

/// Gives a name used more than once a numbered suffix (`spike`, `spike#2`), so that no two
/// phases share outputs.
fn number_repeats(phases: &mut [Phase]) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for p in phases.iter_mut() {
        let n = seen.entry(p.name.clone()).or_default();
        *n += 1;
        if *n > 1 {
            p.name = format!("{}#{n}", p.name);
        }
    }
}

/// The folder of each phase under `phases/`: its name when that is a valid one, else the name
/// with `/`, control characters and outer spaces replaced, cut to [`MAX_NAME`] bytes; a folder
/// name already taken gets a numbered suffix.
pub fn folder_names(phases: &[Phase]) -> Vec<String> {
    let mut taken = std::collections::HashSet::new();
    phases
        .iter()
        .map(|p| {
            let base = if check_name(&p.name).is_ok() {
                p.name.clone()
            } else {
                let mut s: String = p
                    .name
                    .chars()
                    .map(|c| if c == '/' || c.is_control() { '_' } else { c })
                    .collect::<String>()
                    .trim()
                    .to_owned();
                let mut cut = s.len().min(MAX_NAME - 8);
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                if s.is_empty() || s == "." || s == ".." {
                    s = "phase".into();
                }
                s
            };
            let mut name = base.clone();
            let mut n = 1;
            while !taken.insert(name.clone()) {
                n += 1;
                name = format!("{base}-{n}");
            }
            name
        })
        .collect()
}

/// Parses a phase file: JSON `[{"name","start","end"}]` or CSV `name,start,end` (a header
/// line is allowed). Checks names, order within each phase, and overlaps.
pub fn parse_file(path: &Path) -> Result<Vec<WallPhase>, PhaseError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| PhaseError::Read(format!("{file}: {e}")))?;
    parse_text(&text, &file)
}

pub fn parse_text(text: &str, file: &str) -> Result<Vec<WallPhase>, PhaseError> {
    let fmt = |msg: String| PhaseError::Format {
        file: file.to_owned(),
        msg,
    };
    let mut phases = Vec::new();
    if text.trim_start().starts_with('[') {
        let items: Vec<JsonPhase> = serde_json::from_str(text).map_err(|e| fmt(e.to_string()))?;
        for p in items {
            let time = |v: &serde_json::Value, what: &str| match v {
                serde_json::Value::String(s) => parse_time(s),
                serde_json::Value::Number(n) => parse_time(&n.to_string()),
                _ => Err(format!(
                    "{what} of '{}' must be a string or a number",
                    p.name
                )),
            };
            let start = time(&p.start, "start").map_err(fmt)?;
            let end = time(&p.end, "end").map_err(fmt)?;
            phases.push(WallPhase {
                name: p.name,
                start,
                end,
            });
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if cols.len() != 3 {
                return Err(fmt(format!("line {}: expected name,start,end", i + 1)));
            }
            if i == 0 && cols[0].eq_ignore_ascii_case("name") {
                continue;
            }
            let start = parse_time(cols[1]).map_err(|e| fmt(format!("line {}: {e}", i + 1)))?;
            let end = parse_time(cols[2]).map_err(|e| fmt(format!("line {}: {e}", i + 1)))?;
            phases.push(WallPhase {
                name: cols[0].to_owned(),
                start,
                end,
            });
        }
    }
    if phases.is_empty() {
        return Err(fmt("no phases".into()));
    }
    for p in &phases {
        check_name(&p.name)?;
        if p.end <= p.start {
            return Err(PhaseError::Backwards {
                file: file.to_owned(),
                name: p.name.clone(),
            });
        }
    }
    let mut sorted = phases.clone();
    sorted.sort_by_key(|p| p.start);
    for w in sorted.windows(2) {
        if w[1].start < w[0].end {
            return Err(PhaseError::Overlap {
                file: file.to_owned(),
                a: w[0].name.clone(),
                b: w[1].name.clone(),
            });
        }
    }
    Ok(sorted)
}

/// Phases of a file on the capture's monotonic clock, checked against its time range
/// `[from, to)`: one wholly outside is an error, one partly outside is clipped (with a note).
pub fn fit_wall(
    phases: &[WallPhase],
    monotonic_to_realtime_ns: i64,
    from: u64,
    to: u64,
) -> Result<(Vec<Phase>, Vec<String>), PhaseError> {
    let offset = i128::from(monotonic_to_realtime_ns);
    let wall = |t: i128| crate::system::rfc3339(t);
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for p in phases {
        let (start, end) = (p.start - offset, p.end - offset);
        if end <= i128::from(from) || start >= i128::from(to) {
            return Err(PhaseError::Outside {
                name: p.name.clone(),
                start: wall(p.start),
                end: wall(p.end),
                from: wall(i128::from(from) + offset),
                to: wall(i128::from(to) + offset),
            });
        }
        if start < i128::from(from) || end > i128::from(to) {
            notes.push(format!(
                "phase '{}' is clipped to the capture's time range",
                p.name
            ));
        }
        out.push(Phase {
            name: p.name.clone(),
            start_ns: start.max(i128::from(from)) as u64,
            end_ns: end.min(i128::from(to)) as u64,
        });
    }
    number_repeats(&mut out);
    Ok((out, notes))
}

/// Markers for phases given with explicit start and end (a file, or `bar-probe run`).
pub fn markers_of(phases: &[WallPhase], monotonic_to_realtime_ns: i64) -> Vec<proto::Marker> {
    let mono = |wall: i128| (wall - i128::from(monotonic_to_realtime_ns)).max(0) as u64;
    phases
        .iter()
        .flat_map(|p| {
            [
                proto::Marker {
                    name: p.name.clone(),
                    ts: mono(p.start),
                    end: false,
                },
                proto::Marker {
                    name: p.name.clone(),
                    ts: mono(p.end),
                    end: true,
                },
            ]
        })
        .collect()
}

/// Phases from markers: a marker starts its phase and ends the one before; an end marker ends
/// its phase; the last phase lasts until `capture_end`. A phase name used twice gets the time
/// of both ranges merged under one name in the outputs, so only the first range is kept as
/// the phase and later ones get a numbered name (`spike`, `spike#2`). Names are the capture's,
/// which anyone could have written: one that breaks the rule of [`check_name`] is escaped.
pub fn from_markers(markers: &[proto::Marker], capture_end: u64) -> Vec<Phase> {
    let mut sorted: Vec<&proto::Marker> = markers.iter().collect();
    // Ends before starts at the same instant, so back-to-back phases do not overlap.
    sorted.sort_by_key(|m| (m.ts, !m.end));
    let mut out: Vec<Phase> = Vec::new();
    let mut open: Option<(String, u64)> = None;
    let close = |open: &mut Option<(String, u64)>, at: u64, out: &mut Vec<Phase>| {
        if let Some((name, start)) = open.take()
            && at > start
        {
            out.push(Phase {
                name,
                start_ns: start,
                end_ns: at,
            });
        }
    };
    for m in sorted {
        if m.end {
            if open.as_ref().is_some_and(|(n, _)| *n == m.name) {
                close(&mut open, m.ts, &mut out);
            }
        } else {
            close(&mut open, m.ts, &mut out);
            open = Some((m.name.clone(), m.ts));
        }
    }
    close(&mut open, capture_end.max(1), &mut out);
    for p in &mut out {
        p.name = shown(&p.name);
    }
    number_repeats(&mut out);
    out
}

/// Checks phases against the capture's time range: a phase wholly outside is an error, one
/// partly outside is clipped (and reported by the caller).
pub fn fit(
    phases: Vec<Phase>,
    from: u64,
    to: u64,
    wall: impl Fn(u64) -> String,
) -> Result<(Vec<Phase>, Vec<String>), PhaseError> {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for p in phases {
        if p.end_ns <= from || p.start_ns >= to {
            return Err(PhaseError::Outside {
                name: p.name,
                start: wall(p.start_ns),
                end: wall(p.end_ns),
                from: wall(from),
                to: wall(to),
            });
        }
        if p.start_ns < from || p.end_ns > to {
            notes.push(format!(
                "phase '{}' is clipped to the capture's time range",
                p.name
            ));
        }
        out.push(Phase {
            start_ns: p.start_ns.max(from),
            end_ns: p.end_ns.min(to),
            ..p
        });
    }
    Ok((out, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_csv_with_both_time_forms() {
        let json = r#"[{"name":"warmup","start":"2026-01-01T00:00:00Z","end":1767225610.5},
                       {"name":"steady","start":1767225610.5,"end":"2026-01-01T00:01:00+00:00"}]"#;
        let p = parse_text(json, "p.json").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].start, 1_767_225_600_000_000_000);
        assert_eq!(p[0].end, 1_767_225_610_500_000_000);
        assert_eq!(p[1].end, 1_767_225_660_000_000_000);
        let csv = "name,start,end\nA,100,101.25\nB,101.25,103\n";
        let p = parse_text(csv, "p.csv").unwrap();
        assert_eq!(p[1].name, "B");
        assert_eq!(p[0].end, 101_250_000_000);
    }

    #[test]
    fn refuses_bad_phase_files() {
        let over = "A,100,102\nB,101,103\n";
        assert!(matches!(
            parse_text(over, "f"),
            Err(PhaseError::Overlap { .. })
        ));
        let unknown = r#"[{"name":"A","start":1,"end":2,"colour":"red"}]"#;
        let e = parse_text(unknown, "f").unwrap_err().to_string();
        assert!(e.contains("unknown field"), "{e}");
        assert!(matches!(
            parse_text("A,5,4\n", "f"),
            Err(PhaseError::Backwards { .. })
        ));
        assert!(matches!(
            parse_text("A,x,4\n", "f"),
            Err(PhaseError::Format { .. })
        ));
        let e = parse_text("A,1,1e30\n", "f").unwrap_err().to_string();
        assert!(e.contains("'1e30' is not a time"), "{e}");
        assert!(check_name(" lead").is_err() && check_name("in side").is_ok());
        for bad in ["a/b", "..", "x\u{0}y", &"n".repeat(101)] {
            let e = parse_text(&format!("{bad},1,4\n"), "f").unwrap_err();
            assert!(matches!(e, PhaseError::BadName { .. }), "{bad}: {e}");
        }
        let json = r#"[{"name":"a\u0000b","start":1,"end":2}]"#;
        assert!(matches!(
            parse_text(json, "f"),
            Err(PhaseError::BadName { .. })
        ));
        assert!(matches!(
            parse_text("", "f"),
            Err(PhaseError::Format { .. })
        ));
    }

    #[test]
    fn markers_make_back_to_back_phases() {
        let m = |name: &str, ts, end| proto::Marker {
            name: name.into(),
            ts,
            end,
        };
        let phases = from_markers(
            &[
                m("warmup", 10, false),
                m("steady", 20, false),
                m("steady", 30, true),
                m("spike", 40, false),
            ],
            50,
        );
        let got: Vec<(&str, u64, u64)> = phases
            .iter()
            .map(|p| (p.name.as_str(), p.start_ns, p.end_ns))
            .collect();
        assert_eq!(
            got,
            vec![("warmup", 10, 20), ("steady", 20, 30), ("spike", 40, 50)]
        );
    }

    #[test]
    fn names_from_a_capture_are_escaped_and_get_safe_unique_folders() {
        let m = |name: &str, ts| proto::Marker {
            name: name.into(),
            ts,
            end: false,
        };
        let long = "x".repeat(300);
        let phases = from_markers(
            &[
                m("../../../x", 10),
                m("a\u{0}b", 20),
                m(&long, 30),
                m("..", 40),
                m("ok", 50),
                m("ok", 60),
                m("a_b", 70),
            ],
            80,
        );
        let names: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names[0], "../../../x");
        assert_eq!(names[1], "a\\u{0}b");
        assert!(names[2].len() <= MAX_NAME && names[2].ends_with('…'));
        assert_eq!(&names[4..6], ["ok", "ok#2"]);
        let folders = folder_names(&phases);
        let unique: std::collections::HashSet<&String> = folders.iter().collect();
        assert_eq!(unique.len(), folders.len(), "{folders:?}");
        for f in &folders {
            assert!(check_name(f).is_ok(), "{f:?} of {folders:?}");
        }
        assert_eq!(folders[0], ".._.._.._x");
        assert_eq!(folders[3], "phase");
    }

    #[test]
    fn phases_outside_the_capture_are_refused_or_clipped() {
        let p = |s, e| Phase {
            name: "x".into(),
            start_ns: s,
            end_ns: e,
        };
        assert!(matches!(
            fit(vec![p(1, 5)], 10, 20, |t| t.to_string()),
            Err(PhaseError::Outside { .. })
        ));
        let (fitted, notes) = fit(vec![p(5, 15)], 10, 20, |t| t.to_string()).unwrap();
        assert_eq!(fitted[0].start_ns, 10);
        assert_eq!(notes.len(), 1);
    }
}
