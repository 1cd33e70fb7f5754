//! Value parsers of the command line (durations, sizes, rates, phases, event kinds): each turns
//! bad input into one sentence that says what to give instead, before anything is recorded.

use bar_ebpf_common::Family;
use std::{path::Path, time::Duration};

use super::args::PhaseFile;
use crate::{analyze::phases, probe::Method, record};

pub(super) fn parse_phase_file(s: &str) -> Result<PhaseFile, String> {
    phases::parse_file(Path::new(s))
        .map(PhaseFile)
        .map_err(|e| e.to_string())
}

pub(super) fn parse_planned_phase(s: &str) -> Result<record::PlannedPhase, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=DURATION or NAME=DURATION:COMMAND"))?;
    let (dur, command) = match rest.split_once(':') {
        Some((d, c)) => (d, Some(c.to_owned())),
        None => (rest, None),
    };
    phases::check_name(name).map_err(|e| e.to_string())?;
    Ok(record::PlannedPhase {
        name: name.to_owned(),
        duration: parse_positive_duration(dur)?,
        command: command.filter(|c| !c.trim().is_empty()),
    })
}

pub(super) fn parse_view(s: &str) -> Result<Family, String> {
    Family::from_name(s)
        .ok_or_else(|| format!("unknown event kind '{s}' (cpu, offcpu, faults, tcp, numa)"))
}

impl Method {
    pub(super) fn from_str_arg(s: &str) -> Result<Self, String> {
        s.parse().map_err(|e: crate::probe::Error| e.to_string())
    }
}

pub(super) fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "a window of {s} is too short: collecting the sums takes milliseconds, use 10ms or more"
        ));
    }
    Ok(d)
}

pub(super) fn parse_ring(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("a ring of {s} is too short: keep 1s or more"));
    }
    Ok(d)
}

pub(super) fn parse_alpha(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(a) if a > 0.0 && a < 1.0 => Ok(a),
        _ => Err(format!(
            "'{s}' is not a significance level: give a number between 0 and 1, such as 0.05"
        )),
    }
}

pub(super) fn parse_percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        _ => Err(format!(
            "'{s}' is not a percentage: give a number of 0 or more, such as 5"
        )),
    }
}

pub(super) fn parse_diff_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "a window of {s} is too short: windows under 10ms hold too few events to compare, use 10ms or more"
        ));
    }
    Ok(d)
}

/// A duration that must be longer than zero (how long to record).
pub(super) fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!(
            "'{s}' is no time at all: give a duration longer than 0"
        ));
    }
    Ok(d)
}

pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 10s, 500ms or 1us: {e}"))
}

pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..].to_ascii_uppercase().trim_end_matches(['B', 'I']) {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => return Err(format!("'{s}' is not a size like 500M or 2G")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("'{s}' is not a size like 500M or 2G"))
}

pub(super) fn parse_pages(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n.is_power_of_two() => Ok(n),
        _ => Err(format!("'{s}' is not a power of two")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_the_rest() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("32MiB"), Ok(32 << 20));
        assert_eq!(parse_size(" 4 KB "), Ok(4 << 10));
        for bad in ["", "M", "5T", "-1M", "99999999999999G"] {
            assert_eq!(
                parse_size(bad),
                Err(format!("'{}' is not a size like 500M or 2G", bad.trim()))
            );
        }
    }

    #[test]
    fn durations_say_what_to_give() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_positive_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(
            parse_positive_duration("0s")
                .unwrap_err()
                .contains("longer than 0")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("like 10s, 500ms or 1us")
        );
        assert!(parse_window("5ms").unwrap_err().contains("10ms or more"));
        assert!(parse_ring("500ms").unwrap_err().contains("1s or more"));
        assert_eq!(parse_pages("256"), Ok(256));
        assert!(parse_pages("100").is_err());
    }

    #[test]
    fn planned_phases_split_at_the_first_equals_and_colon() {
        let p = parse_planned_phase("spike=20s:wrk -c 400 http://a:80/").unwrap();
        assert_eq!(p.name, "spike");
        assert_eq!(p.duration, Duration::from_secs(20));
        assert_eq!(p.command.as_deref(), Some("wrk -c 400 http://a:80/"));
        assert!(parse_planned_phase("idle=5s: ").unwrap().command.is_none());
        assert!(parse_planned_phase("idle").is_err());
        assert!(parse_planned_phase("idle=0s").is_err());
    }
}
