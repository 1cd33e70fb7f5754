//! pprof: one view of a capture as a gzipped `profile.proto`, the format `go tool pprof`,
//! Pyroscope and Parca read. One sample per distinct (stack, leaf annotations, pid, tid,
//! phase), with the values of the view's sample types summed over its events.
//!
//! Frames keep the names of the folded files (`Profile::stack_names`), so the same functions
//! come out on top: kernel frames carry perf's `_[k]` suffix and also belong to a mapping named
//! after the kernel image or module; bar's leaf annotations (`[blocked]`, `[connect ...]`, ...)
//! are frames of their own, without a mapping, below the stack they annotate. The process name
//! is the `comm` label rather than a root frame.

use bar_ebpf_common::Family;
use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

mod tables;

use self::tables::Tables;
use super::pprof_proto as pb;
use crate::{
    analyze::{Profile, count, weigh},
    capture::proto::{Event, event::Detail},
};

/// The sample types of a view, the preferred one, and the sampling period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleTypes {
    /// (type, unit) of each value, in order; a count of events first, by pprof's convention.
    pub types: Vec<(&'static str, &'static str)>,
    pub default: &'static str,
    pub period_type: (&'static str, &'static str),
    pub period: i64,
}

/// Frame of a sample that has no stack at all, so its weight still shows in a function.
pub const NO_STACK: &str = "[no stack]";

impl SampleTypes {
    /// Sample types of `view`; `frequency` is the on-CPU sampling rate in Hz (0 if unknown).
    pub fn of(view: Family, frequency: u64) -> Self {
        // Every off-CPU interval, fault, connect and NUMA event is recorded, not sampled, so
        // the period of those kinds is one event.
        let exact = |types: Vec<_>, default| {
            let period_type = types[0];
            Self {
                types,
                default,
                period_type,
                period: 1,
            }
        };
        match view {
            Family::Cpu if frequency > 0 => Self {
                types: vec![("samples", "count"), ("cpu", "nanoseconds")],
                default: "cpu",
                period_type: ("cpu", "nanoseconds"),
                period: i64::try_from(1_000_000_000 / frequency).unwrap_or(i64::MAX),
            },
            // Without a frequency there is no honest time per sample.
            Family::Cpu => exact(vec![("samples", "count")], "samples"),
            Family::Offcpu => exact(
                vec![("switches", "count"), ("offcpu", "nanoseconds")],
                "offcpu",
            ),
            Family::Faults => exact(vec![("faults", "count")], "faults"),
            Family::Tcp => exact(
                vec![("connects", "count"), ("latency", "nanoseconds")],
                "connects",
            ),
            Family::Numa => exact(vec![("events", "count"), ("pages", "count")], "pages"),
        }
    }

    /// Values of one event, in the order of `types`.
    fn values(&self, ev: &Event, weight: u64) -> Vec<i64> {
        let ns = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let n = count(ev);
        if self.types.len() == 1 {
            return vec![ns(n)];
        }
        let second = match &ev.detail {
            // Exact, where the folded file rounds down to microseconds.
            Some(Detail::Offcpu(o)) => ns(o.blocked_ns),
            Some(Detail::Tcp(t)) => ns(t.latency_ns),
            // Pages migrated, or 1 per task placement: the weight of numa.folded.
            Some(Detail::NumaTask(_) | Detail::NumaPages(_)) => ns(weight),
            // A cpu sample stands for one period of CPU time.
            _ => self.period.saturating_mul(ns(n)),
        };
        vec![ns(n), second]
    }
}

/// What makes two events the same sample.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    pid: u32,
    tid: u32,
    phase: Option<String>,
    stack: u32,
    leaf: Vec<String>,
}

/// The samples of one view, summed as its events come: the whole of a capture for `export`,
/// one interval of a recording for the pusher. Memory grows with distinct samples, not events.
#[derive(Debug)]
pub struct Samples {
    view: Family,
    types: SampleTypes,
    samples: BTreeMap<Key, Vec<i64>>,
    events: u64,
}

impl Samples {
    /// Samples of `view`; `frequency` is the on-CPU sampling rate in Hz (0 if unknown).
    pub fn new(view: Family, frequency: u64) -> Self {
        Self {
            view,
            types: SampleTypes::of(view, frequency),
            samples: BTreeMap::new(),
            events: 0,
        }
    }

    /// Adds an event of this view (others are skipped), in `phase` when one was active.
    pub fn add(&mut self, ev: &Event, phase: Option<&str>) {
        if Family::of_kind(ev.kind) != Some(self.view) {
            return;
        }
        let (weight, leaf) = weigh(ev);
        let values = self.types.values(ev, weight);
        let key = Key {
            pid: ev.pid,
            tid: ev.tid,
            phase: phase.map(str::to_owned),
            stack: ev.stack,
            leaf,
        };
        let sum = self
            .samples
            .entry(key)
            .or_insert_with(|| vec![0; values.len()]);
        for (s, v) in sum.iter_mut().zip(values) {
            *s = s.saturating_add(v);
        }
        self.events += count(ev);
    }

    pub fn view(&self) -> Family {
        self.view
    }

    /// Events added so far (summed ones counted as many).
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The processes of the samples (a pid once per sample).
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.samples.keys().map(|k| k.pid)
    }

    /// The profile of these samples, covering `[start_ns, end_ns)` (monotonic), with frame
    /// and process names from `profile`'s tables.
    pub fn build(self, profile: &Profile, (start_ns, end_ns): (u64, u64)) -> pb::Profile {
        finish(
            profile,
            self.view,
            &self.types,
            self.samples,
            start_ns,
            end_ns,
        )
    }
}

/// Builds the pprof profile of `view` from its events (the other views' events are skipped).
pub fn build(
    profile: &Profile,
    view: Family,
    events: impl IntoIterator<Item = Event>,
) -> pb::Profile {
    let mut samples = Samples::new(view, profile.meta.frequency);
    for ev in events {
        let phase = profile
            .phase_at(ev.ts)
            .map(|i| profile.phases[i].name.as_str());
        samples.add(&ev, phase);
    }
    samples.build(profile, (profile.meta.start_ns, profile.end_ns()))
}

fn finish(
    profile: &Profile,
    view: Family,
    types: &SampleTypes,
    samples: BTreeMap<Key, Vec<i64>>,
    start_ns: u64,
    end_ns: u64,
) -> pb::Profile {
    let mut t = Tables::default();
    let mut out = pb::Profile {
        sample_type: types
            .types
            .iter()
            .map(|&(ty, unit)| t.value_type(ty, unit))
            .collect(),
        period_type: Some(t.value_type(types.period_type.0, types.period_type.1)),
        period: types.period,
        default_sample_type: t.string(types.default),
        time_nanos: clamp_i64(profile.wall_ns(start_ns)),
        duration_nanos: clamp_i64(i128::from(end_ns.saturating_sub(start_ns))),
        ..Default::default()
    };
    let keys = [
        t.string("pid"),
        t.string("tid"),
        t.string("comm"),
        t.string("phase"),
    ];
    let mut stacks: HashMap<u32, Vec<u64>> = HashMap::new();
    for (key, value) in samples {
        // pprof lists locations leaf first; bar's stacks and annotations are root first.
        let mut location_id: Vec<u64> = key
            .leaf
            .iter()
            .rev()
            .map(|name| t.annotation(name))
            .collect();
        let stack = stacks
            .entry(key.stack)
            .or_insert_with(|| t.stack(profile, key.stack));
        location_id.extend(stack.iter().rev());
        if location_id.is_empty() {
            location_id.push(t.annotation(NO_STACK));
        }
        let mut label = vec![
            pb::Label {
                key: keys[0],
                num: i64::from(key.pid),
                ..Default::default()
            },
            pb::Label {
                key: keys[1],
                num: i64::from(key.tid),
                ..Default::default()
            },
            pb::Label {
                key: keys[2],
                str: t.string(&profile.comm_at(key.pid, u64::MAX)),
                ..Default::default()
            },
        ];
        if let Some(phase) = &key.phase {
            label.push(pb::Label {
                key: keys[3],
                str: t.string(phase),
                ..Default::default()
            });
        }
        out.sample.push(pb::Sample {
            location_id,
            value,
            label,
        });
    }

    out.comment = comments(profile, view)
        .iter()
        .map(|c| t.string(c))
        .collect();
    // pprof takes mapping[0] as the main binary: the traced program's, when it was one.
    if let Some(exe) = profile.meta.target.as_ref().map(|t| t.exe.as_str())
        && let Some(&id) = t.mapping_ids.get(exe)
        && let Some(i) = t.mappings.iter().position(|m| m.id == id)
    {
        let main = t.mappings.remove(i);
        t.mappings.insert(0, main);
    }
    if let Some(target) = &profile.meta.target
        && !target.build_id.is_empty()
        && let Some(&id) = t.mapping_ids.get(target.exe.as_str())
    {
        let build_id = t.string(&target.build_id);
        if let Some(m) = t.mappings.iter_mut().find(|m| m.id == id) {
            m.build_id = build_id;
        }
    }
    out.mapping = t.mappings;
    out.location = t.locations;
    out.function = t.functions;
    out.string_table = t.strings;
    out
}

/// Lines a person sees in `go tool pprof`'s header: where and how it was recorded.
fn comments(profile: &Profile, view: Family) -> Vec<String> {
    let m = &profile.meta;
    let mut c = vec![format!(
        "bar {} {} on {} ({})",
        m.bar_version,
        view.name(),
        m.hostname,
        m.kernel_release
    )];
    c.push(match &m.target {
        Some(t) => format!("target: {} (pid {})", t.comm, t.pid),
        None => format!("scope: {}", m.scope),
    });
    if view == Family::Cpu && m.frequency > 0 {
        c.push(format!("sampled at {} Hz", m.frequency));
    }
    if let Some(d) = &profile.damage {
        c.push(format!("damaged capture, exported what was valid: {d}"));
    }
    c
}

fn clamp_i64(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

/// Writes the profile gzip-compressed, as the spec asks for files on disk.
pub fn write_gz(profile: &pb::Profile, w: &mut dyn Write) -> io::Result<()> {
    let mut gz = GzEncoder::new(w, Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()?;
    Ok(())
}

/// Reads a profile as [`write_gz`] writes it (or uncompressed), for tools and tests that
/// check what bar sent.
pub fn read_gz(data: &[u8]) -> io::Result<pb::Profile> {
    let raw = if data.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut raw)?;
        raw
    } else {
        data.to_vec()
    };
    pb::Profile::decode(&raw[..]).map_err(io::Error::other)
}

#[cfg(test)]
mod tests;
