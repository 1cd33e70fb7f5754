//! Dumps the flight recorder writes by itself (`--ring-trigger FAMILY=RATE`): when a family's
//! events per second cross a rate, the ring is written out half a window later, so that the
//! dump holds what led up to it and what followed, then not again until a whole window has
//! passed since.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use bar_ebpf_common::{Family, kind};

use super::dump::Request;

/// One rule: a family and the events per second that set it off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rule {
    pub family: Family,
    pub per_second: f64,
}

/// Parses `FAMILY=RATE`, RATE a number with an optional `k` or `M`.
pub fn parse_rule(s: &str) -> Result<Rule, String> {
    let bad = || format!("'{s}' is not FAMILY=RATE (events per second, e.g. faults=50k)");
    let (name, rate) = s.split_once('=').ok_or_else(bad)?;
    let family = Family::from_name(name.trim()).ok_or_else(bad)?;
    let rate = rate.trim();
    let (num, mult) = match rate.char_indices().last() {
        Some((i, 'k' | 'K')) => (&rate[..i], 1e3),
        Some((i, 'M')) => (&rate[..i], 1e6),
        _ => (rate, 1.0),
    };
    let per_second = num.parse::<f64>().map_err(|_| bad())? * mult;
    if !per_second.is_finite() || per_second <= 0.0 {
        return Err(bad());
    }
    Ok(Rule { family, per_second })
}

pub struct Triggers {
    rules: Vec<Rule>,
    out_dir: PathBuf,
    window: Duration,
    /// Events per kind at the last look, and when that was.
    seen: [u64; kind::COUNT as usize],
    looked: Instant,
    /// A dump is due at this time, set off by this family.
    due: Option<(Instant, Family)>,
    /// No rule sets one off before this time.
    quiet_until: Instant,
}

impl Triggers {
    pub fn new(rules: Vec<Rule>, out_dir: PathBuf, window: Duration) -> Self {
        let now = Instant::now();
        Self {
            rules,
            out_dir,
            window,
            seen: [0; kind::COUNT as usize],
            looked: now,
            due: None,
            quiet_until: now,
        }
    }

    /// Looks at the events per kind so far (about once a second); returns a dump to write now,
    /// if one is due.
    pub fn check(&mut self, per_kind: &[u64; kind::COUNT as usize]) -> Option<Request> {
        let now = Instant::now();
        let secs = now.duration_since(self.looked).as_secs_f64();
        if secs >= 1.0 {
            let rate = |f: Family| {
                let n: u64 = f
                    .kinds()
                    .iter()
                    .map(|&k| per_kind[k as usize] - self.seen[k as usize])
                    .sum();
                n as f64 / secs
            };
            if self.due.is_none()
                && now >= self.quiet_until
                && let Some(r) = self.rules.iter().find(|r| rate(r.family) > r.per_second)
            {
                eprintln!(
                    "\nbar-probe: {} at {:.0}/s, over {:.0}/s: the ring is written out in {}",
                    r.family,
                    rate(r.family),
                    r.per_second,
                    humantime::format_duration(self.window / 2)
                );
                self.due = Some((now + self.window / 2, r.family));
            }
            self.seen = *per_kind;
            self.looked = now;
        }
        let (at, family) = self.due?;
        if now < at {
            return None;
        }
        self.due = None;
        self.quiet_until = now + self.window;
        let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string();
        Some(Request {
            dir: self.out_dir.join(format!("trigger-{family}-{stamp}")),
            reply: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_family_and_rate() {
        assert_eq!(
            parse_rule("faults=50k"),
            Ok(Rule {
                family: Family::Faults,
                per_second: 50_000.0
            })
        );
        assert_eq!(parse_rule("cpu=2M").unwrap().per_second, 2e6);
        assert_eq!(parse_rule("tcp=300").unwrap().family, Family::Tcp);
        for bad in ["faults", "bogus=5", "faults=", "faults=-1", "faults=lots"] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rate_over_the_rule_dumps_half_a_window_later_and_then_rests() {
        let mut t = Triggers::new(
            vec![Rule {
                family: Family::Faults,
                per_second: 100.0,
            }],
            PathBuf::from("/out"),
            Duration::from_millis(200),
        );
        let mut counts = [0u64; kind::COUNT as usize];
        t.looked -= Duration::from_secs(1);
        counts[kind::FAULT as usize] = 50;
        assert!(t.check(&counts).is_none(), "under the rate");
        t.looked -= Duration::from_secs(1);
        counts[kind::FAULT as usize] += 500;
        assert!(t.check(&counts).is_none(), "due in 100 ms");
        std::thread::sleep(Duration::from_millis(120));
        let req = t.check(&counts).expect("a dump");
        assert!(req.dir.starts_with("/out"));
        assert!(req.dir.to_string_lossy().contains("trigger-faults-"));
        // Over the rate again at once: a window of rest first.
        t.looked -= Duration::from_secs(1);
        counts[kind::FAULT as usize] += 500;
        assert!(t.check(&counts).is_none());
        assert!(t.due.is_none());
    }
}
