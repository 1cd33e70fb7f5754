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

/// The interned tables of a profile. Ids are positions plus one (0 means "none" in pprof).
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<pb::Function>,
    function_ids: HashMap<String, u64>,
    locations: Vec<pb::Location>,
    /// Locations of capture frames, by frame id.
    frame_locations: HashMap<u32, u64>,
    /// Locations of annotations, by name.
    annotation_locations: HashMap<String, u64>,
    mappings: Vec<pb::Mapping>,
    mapping_ids: HashMap<String, u64>,
}

impl Tables {
    fn string(&mut self, s: &str) -> i64 {
        if self.strings.is_empty() {
            // The spec reserves index 0 for the empty string.
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), i);
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> pb::ValueType {
        pb::ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        }
    }

    fn function(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.function_ids.get(name) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        // `system_name` (the mangled name) stays unset: bar keeps only the demangled one, and
        // pprof takes a system name equal to the name as not yet demangled and strips `<...>`
        // from it, turning `<std::time::Instant>::now` into `::now`.
        let name_idx = self.string(name);
        self.functions.push(pb::Function {
            id,
            name: name_idx,
            ..Default::default()
        });
        self.function_ids.insert(name.to_owned(), id);
        id
    }

    fn mapping(&mut self, file: &str) -> u64 {
        if file.is_empty() {
            return 0;
        }
        if let Some(&id) = self.mapping_ids.get(file) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(file);
        self.mappings.push(pb::Mapping {
            id,
            filename,
            // bar names frames while the process lives; pprof must not look for binaries that
            // may be gone (or belong to another machine) to name them again.
            has_functions: true,
            ..Default::default()
        });
        self.mapping_ids.insert(file.to_owned(), id);
        id
    }

    fn location(&mut self, name: &str, mapping_id: u64) -> u64 {
        let function_id = self.function(name);
        let id = self.locations.len() as u64 + 1;
        self.locations.push(pb::Location {
            id,
            mapping_id,
            line: vec![pb::Line {
                function_id,
                ..Default::default()
            }],
            ..Default::default()
        });
        id
    }

    fn annotation(&mut self, name: &str) -> u64 {
        if let Some(&id) = self.annotation_locations.get(name) {
            return id;
        }
        let id = self.location(name, 0);
        self.annotation_locations.insert(name.to_owned(), id);
        id
    }

    /// Location ids of a capture stack, root first. The capture interns frames per
    /// (name, module), so one location per frame id is one per function and object.
    fn stack(&mut self, profile: &Profile, stack: u32) -> Vec<u64> {
        let names = profile.stack_names(stack);
        let frame_ids = stack
            .checked_sub(1)
            .and_then(|i| profile.stacks.get(i as usize))
            .map(|s| s.frames.as_slice())
            .unwrap_or_default();
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let frame = frame_ids.get(i).copied();
                let known = frame.and_then(|f| profile.frames.get(f as usize).map(|fr| (f, fr)));
                match known {
                    Some((f, fr)) => {
                        if let Some(&id) = self.frame_locations.get(&f) {
                            return id;
                        }
                        let mapping = self.mapping(&fr.module);
                        let id = self.location(name, mapping);
                        self.frame_locations.insert(f, id);
                        id
                    }
                    // A placeholder `stack_names` put for a stack or frame the file lacks.
                    None => self.annotation(name),
                }
            })
            .collect()
    }
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
mod tests {
    use bar_ebpf_common::kind;

    use super::*;
    use crate::capture::{Body, proto};

    /// A process "app" (pid 7) with stacks `main;work` and `main;schedule_[k]`.
    fn profile() -> Profile {
        let mut p = Profile::default();
        p.meta = proto::Meta {
            bar_version: "0.1.0".into(),
            hostname: "h".into(),
            frequency: 100,
            start_ns: 1_000,
            monotonic_to_realtime_ns: 1_700_000_000_000_000_000,
            target: Some(proto::Target {
                pid: 7,
                comm: "app".into(),
                exe: "/bin/app".into(),
                build_id: "abcd".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        p.add_block(Body::Processes(proto::Processes {
            processes: vec![proto::Process {
                pid: 7,
                comm: "app".into(),
                since_ns: 0,
                ..Default::default()
            }],
        }));
        let frame = |name: &str, module: &str, kernel| proto::Frame {
            name: name.into(),
            module: module.into(),
            kernel,
        };
        p.add_block(Body::Frames(proto::Frames {
            frames: vec![
                frame("main", "/lib/libc.so.6", false),
                frame("work", "/bin/app", false),
                frame("schedule", "[kernel.kallsyms]", true),
            ],
        }));
        p.add_block(Body::Stacks(proto::Stacks {
            stacks: vec![
                proto::Stack { frames: vec![0, 1] },
                proto::Stack { frames: vec![0, 2] },
            ],
        }));
        p
    }

    fn ev(kind: u32, ts: u64, tid: u32, stack: u32, detail: Option<Detail>) -> Event {
        Event {
            ts,
            kind,
            cpu: 0,
            pid: 7,
            tid,
            stack,
            count: 0,
            detail,
        }
    }

    fn offcpu(ns: u64, reason: u32) -> Option<Detail> {
        Some(Detail::Offcpu(proto::OffCpu {
            blocked_ns: ns,
            reason,
            state: 1,
        }))
    }

    /// A sample resolved through the tables: frame names leaf first, labels as text.
    #[derive(Debug)]
    struct Resolved {
        frames: Vec<String>,
        mappings: Vec<String>,
        values: Vec<i64>,
        labels: BTreeMap<String, String>,
    }

    fn resolve(p: &pb::Profile) -> Vec<Resolved> {
        let s = |i: i64| p.string_table[i as usize].clone();
        p.sample
            .iter()
            .map(|smp| {
                let locs: Vec<&pb::Location> = smp
                    .location_id
                    .iter()
                    .map(|id| &p.location[*id as usize - 1])
                    .collect();
                Resolved {
                    frames: locs
                        .iter()
                        .map(|l| s(p.function[l.line[0].function_id as usize - 1].name))
                        .collect(),
                    mappings: locs
                        .iter()
                        .map(|l| match l.mapping_id {
                            0 => String::new(),
                            id => s(p.mapping.iter().find(|m| m.id == id).unwrap().filename),
                        })
                        .collect(),
                    values: smp.value.clone(),
                    labels: smp
                        .label
                        .iter()
                        .map(|l| {
                            let v = if l.str != 0 {
                                s(l.str)
                            } else {
                                l.num.to_string()
                            };
                            (s(l.key), v)
                        })
                        .collect(),
                }
            })
            .collect()
    }

    fn types(p: &pb::Profile) -> Vec<String> {
        p.sample_type
            .iter()
            .map(|t| {
                format!(
                    "{}/{}",
                    p.string_table[t.r#type as usize], p.string_table[t.unit as usize]
                )
            })
            .collect()
    }

    #[test]
    fn tables_follow_the_spec() {
        let p = profile();
        let events = vec![
            ev(kind::CPU, 10, 7, 1, None),
            ev(kind::CPU, 11, 7, 1, None),
            ev(kind::CPU, 12, 8, 2, None),
            ev(kind::CPU, 13, 8, 0, None),
        ];
        let out = build(&p, Family::Cpu, events);
        // String 0 is "", and every string appears once.
        assert_eq!(out.string_table[0], "");
        let mut uniq = out.string_table.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), out.string_table.len());
        // Ids are 1, 2, 3... in each table, and every reference resolves.
        for (i, f) in out.function.iter().enumerate() {
            assert_eq!(f.id, i as u64 + 1);
        }
        for (i, l) in out.location.iter().enumerate() {
            assert_eq!(l.id, i as u64 + 1);
            assert_eq!(l.line.len(), 1);
            assert!(l.line[0].function_id as usize <= out.function.len());
            assert!(l.mapping_id == 0 || out.mapping.iter().any(|m| m.id == l.mapping_id));
        }
        let mut ids: Vec<u64> = out.mapping.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=out.mapping.len() as u64).collect::<Vec<_>>());
        assert!(out.mapping.iter().all(|m| m.has_functions));
        // pprof "demangles" a function whose system name equals its name, cutting `<...>`.
        assert!(out.function.iter().all(|f| f.system_name == 0));
        // The traced program's mapping comes first, with its build id.
        let main = &out.mapping[0];
        assert_eq!(out.string_table[main.filename as usize], "/bin/app");
        assert_eq!(out.string_table[main.build_id as usize], "abcd");
        assert_eq!(
            out.string_table[out.default_sample_type as usize], "cpu",
            "default sample type"
        );
        assert!(out.sample.iter().all(|s| s.value.len() == 2));
        assert_eq!(out.time_nanos, 1_700_000_000_000_001_000);
        assert!(
            out.comment
                .iter()
                .any(|&c| out.string_table[c as usize].contains("100 Hz"))
        );
    }

    #[test]
    fn cpu_samples_carry_counts_time_and_labels() {
        let p = profile();
        let events = vec![
            ev(kind::CPU, 10, 7, 1, None),
            ev(kind::CPU, 11, 7, 1, None),
            ev(kind::CPU, 12, 8, 2, None),
            ev(kind::CPU, 13, 8, 0, None),
            // Another view's event is not part of a cpu profile.
            ev(kind::OFFCPU, 14, 8, 2, offcpu(5_000, 1)),
        ];
        let out = build(&p, Family::Cpu, events);
        assert_eq!(types(&out), ["samples/count", "cpu/nanoseconds"]);
        let pt = out.period_type.clone().unwrap();
        assert_eq!(out.string_table[pt.r#type as usize], "cpu");
        assert_eq!(out.period, 10_000_000, "1e9 / 100 Hz");
        let r = resolve(&out);
        assert_eq!(r.len(), 3, "{r:#?}");
        let work = r.iter().find(|s| s.frames[0] == "work").unwrap();
        assert_eq!(work.frames, ["work", "main"], "leaf first");
        assert_eq!(work.mappings, ["/bin/app", "/lib/libc.so.6"]);
        assert_eq!(work.values, [2, 20_000_000]);
        assert_eq!(work.labels["pid"], "7");
        assert_eq!(work.labels["tid"], "7");
        assert_eq!(work.labels["comm"], "app");
        assert!(!work.labels.contains_key("phase"), "no markers, no phase");
        let kernel = r
            .iter()
            .find(|s| s.labels["tid"] == "8" && s.frames.len() == 2);
        let kernel = kernel.unwrap();
        assert_eq!(kernel.frames, ["schedule_[k]", "main"]);
        assert_eq!(kernel.mappings[0], "[kernel.kallsyms]");
        let bare = r.iter().find(|s| s.frames.len() == 1).unwrap();
        assert_eq!(bare.frames, [NO_STACK]);
        assert_eq!(bare.mappings, [""]);
        // Totals are the folded file's.
        let total: i64 = r.iter().map(|s| s.values[0]).sum();
        let mut agg = Profile::default();
        for e in [1, 1, 2, 0] {
            agg.add_block(Body::Events(proto::Events {
                events: vec![ev(kind::CPU, 1, 7, e, None)],
            }));
        }
        assert_eq!(total as u64, agg.views[&Family::Cpu].weight);
    }

    #[test]
    fn offcpu_keeps_exact_nanoseconds_and_annotations_as_leaf_frames() {
        let p = profile();
        let events = vec![
            ev(kind::OFFCPU, 10, 7, 2, offcpu(2_500_123, 1)),
            ev(kind::OFFCPU, 11, 7, 2, offcpu(999, 1)),
            ev(kind::OFFCPU, 12, 7, 2, offcpu(700_000, 2)),
            // Three intervals summed in the kernel.
            Event {
                count: 3,
                ..ev(kind::OFFCPU, 13, 7, 2, offcpu(3_000_000, 2))
            },
        ];
        let out = build(&p, Family::Offcpu, events);
        assert_eq!(types(&out), ["switches/count", "offcpu/nanoseconds"]);
        assert_eq!(out.string_table[out.default_sample_type as usize], "offcpu");
        let r = resolve(&out);
        let blocked = r.iter().find(|s| s.frames[0] == "[blocked]").unwrap();
        assert_eq!(blocked.frames, ["[blocked]", "schedule_[k]", "main"]);
        assert_eq!(blocked.mappings[0], "", "annotations have no mapping");
        // Not rounded to microseconds, and the sub-microsecond block is kept.
        assert_eq!(blocked.values, [2, 2_500_123 + 999]);
        let preempted = r.iter().find(|s| s.frames[0] == "[preempted]").unwrap();
        assert_eq!(preempted.values, [4, 3_700_000]);
    }

    #[test]
    fn tcp_and_numa_values() {
        let p = profile();
        let tcp = |error, latency_ns| {
            Some(Detail::Tcp(proto::Tcp {
                latency_ns,
                saddr: vec![127, 0, 0, 1],
                daddr: vec![127, 0, 0, 1],
                family: 2,
                sport: 1,
                dport: 81,
                error,
            }))
        };
        let events = vec![
            ev(kind::TCP, 1, 7, 1, tcp(111, 30_000)),
            ev(kind::TCP, 2, 7, 1, tcp(111, 50_000)),
        ];
        let out = build(&p, Family::Tcp, events);
        assert_eq!(types(&out), ["connects/count", "latency/nanoseconds"]);
        let r = resolve(&out);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].frames,
            ["[refused]", "[connect 127.0.0.1:81]", "work", "main"]
        );
        assert_eq!(r[0].values, [2, 80_000]);

        let pages = Some(Detail::NumaPages(proto::NumaPages {
            succeeded: 64,
            reason: 5,
            ..Default::default()
        }));
        let task = Some(Detail::NumaTask(proto::NumaTask {
            src_nid: 0,
            dst_nid: 1,
            what: 1,
            ..Default::default()
        }));
        let events = vec![
            ev(kind::NUMA_PAGES, 1, 7, 1, pages),
            ev(kind::NUMA_TASK, 2, 7, 1, task),
        ];
        let out = build(&p, Family::Numa, events);
        assert_eq!(types(&out), ["events/count", "pages/count"]);
        let r = resolve(&out);
        let migrate = r
            .iter()
            .find(|s| s.frames[0] == "[migrate pages: numa_misplaced]")
            .unwrap();
        assert_eq!(migrate.values, [1, 64]);
        let placed = r.iter().find(|s| s.frames[0].starts_with("[numa task"));
        assert_eq!(placed.unwrap().values, [1, 1], "1 per task placement");
    }

    #[test]
    fn phases_label_the_samples_inside_them() {
        let mut p = profile();
        let phase = |name: &str, start_ns, end_ns| crate::analyze::phases::Phase {
            name: name.into(),
            start_ns,
            end_ns,
        };
        p.phases = vec![phase("load", 100, 200), phase("serve", 300, 400)];
        let events = vec![
            ev(kind::CPU, 50, 7, 1, None),
            ev(kind::CPU, 150, 7, 1, None),
            ev(kind::CPU, 250, 7, 1, None),
            ev(kind::CPU, 350, 7, 1, None),
        ];
        let out = build(&p, Family::Cpu, events);
        let r = resolve(&out);
        let mut phased: Vec<(Option<&str>, i64)> = r
            .iter()
            .map(|s| (s.labels.get("phase").map(String::as_str), s.values[0]))
            .collect();
        phased.sort_unstable();
        assert_eq!(phased, [(None, 2), (Some("load"), 1), (Some("serve"), 1)]);
    }

    #[test]
    fn gzip_round_trip() {
        let p = profile();
        let out = build(&p, Family::Cpu, vec![ev(kind::CPU, 10, 7, 1, None)]);
        let mut buf = Vec::new();
        write_gz(&out, &mut buf).unwrap();
        assert_eq!(&buf[..2], &[0x1f, 0x8b], "gzip magic");
        let mut raw = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&buf[..]), &mut raw).unwrap();
        assert_eq!(pb::Profile::decode(&raw[..]).unwrap(), out);
    }

    #[test]
    fn unknown_frequency_gives_counts_only() {
        let mut p = profile();
        p.meta.frequency = 0;
        let out = build(&p, Family::Cpu, vec![ev(kind::CPU, 10, 7, 1, None)]);
        assert_eq!(types(&out), ["samples/count"]);
        assert_eq!(out.sample[0].value, [1]);
    }
}
