//! OTLP profiles over HTTP/protobuf (`POST /v1development/profiles`), from the official protos
//! (opentelemetry-proto 1.10.0, the `opentelemetry-proto` crate's `profiles` types): an
//! interval's pprof profiles translated table by table into one request with one dictionary.
//!
//! A process is a resource (`service.name`, `host.name`, `process.pid`,
//! `process.executable.name`, `container.id`), as the OpenTelemetry eBPF profiler has it; each
//! of a family's pprof sample types becomes a profile of that resource (OTLP profiles hold one
//! sample type each), with the same names and units as `bar-probe export`. Samples carry
//! `thread.id`, and `bar.phase` where a phase was active.

use std::collections::{BTreeMap, HashMap, hash_map::RandomState};
use std::hash::{BuildHasher as _, Hasher as _};

use opentelemetry_proto::tonic::{
    collector::profiles::v1development::ExportProfilesServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    profiles::v1development as otlp,
    resource::v1::Resource,
};
use prost::Message as _;

use super::{Endpoint, Identity, Interval, queue::Request};
use crate::export::pprof_proto as pb;

/// The path of the Collector's OTLP/HTTP profiles receiver.
pub const PATH: &str = "/v1development/profiles";

/// The request of one interval.
pub fn request(interval: &Interval, id: &Identity, endpoint: &Endpoint) -> Request {
    let url = if endpoint.url.ends_with(PATH) {
        endpoint.url.clone()
    } else {
        format!("{}{PATH}", endpoint.url)
    };
    // The receiver takes gzip (OTLP/HTTP); a host's interval shrinks about fivefold.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let raw = build(interval, id).encode_to_vec();
    let body = match std::io::Write::write_all(&mut gz, &raw).and_then(|()| gz.finish()) {
        Ok(b) => b,
        Err(_) => raw,
    };
    Request {
        url,
        content_type: "application/x-protobuf".into(),
        content_encoding: Some("gzip"),
        body,
        what: "profiles".into(),
    }
}

/// A location: its mapping, address and lines (function, line number).
type LocationKey = (i32, u64, Vec<(i32, i64)>);

/// The dictionary under construction: every table starts with its zero element, as the spec
/// asks, and holds each entry once.
#[derive(Default)]
struct Dict {
    d: otlp::ProfilesDictionary,
    strings: HashMap<String, i32>,
    mappings: HashMap<(i32, i32), i32>,
    functions: HashMap<(i32, i32, i32), i32>,
    locations: HashMap<LocationKey, i32>,
    stacks: HashMap<Vec<i32>, i32>,
    attributes: HashMap<(i32, String), i32>,
}

impl Dict {
    fn new() -> Self {
        let mut d = Self::default();
        d.string("");
        d.d.mapping_table.push(otlp::Mapping::default());
        d.d.function_table.push(otlp::Function::default());
        d.d.location_table.push(otlp::Location::default());
        d.d.stack_table.push(otlp::Stack::default());
        d.d.link_table.push(otlp::Link::default());
        d.d.attribute_table.push(otlp::KeyValueAndUnit::default());
        d
    }

    fn string(&mut self, s: &str) -> i32 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.d.string_table.len() as i32;
        self.d.string_table.push(s.to_owned());
        self.strings.insert(s.to_owned(), i);
        i
    }

    fn attribute(&mut self, key: &str, value: Value) -> i32 {
        let k = self.string(key);
        let repr = format!("{value:?}");
        if let Some(&i) = self.attributes.get(&(k, repr.clone())) {
            return i;
        }
        let i = self.d.attribute_table.len() as i32;
        self.d.attribute_table.push(otlp::KeyValueAndUnit {
            key_strindex: k,
            value: Some(AnyValue { value: Some(value) }),
            unit_strindex: 0,
        });
        self.attributes.insert((k, repr), i);
        i
    }
}

/// One pprof profile's tables, mapped into the dictionary as they are used.
struct Tables<'p> {
    p: &'p pb::Profile,
    locations: HashMap<u64, i32>,
}

impl Tables<'_> {
    fn text(&self, i: i64) -> &str {
        self.p
            .string_table
            .get(i as usize)
            .map_or("", String::as_str)
    }

    fn mapping(&self, dict: &mut Dict, id: u64) -> i32 {
        let Some(m) = self.p.mapping.iter().find(|m| m.id == id) else {
            return 0;
        };
        let file = dict.string(self.text(m.filename));
        let build_id = self.text(m.build_id).to_owned();
        let bid = dict.string(&build_id);
        if let Some(&i) = dict.mappings.get(&(file, bid)) {
            return i;
        }
        let mut attribute_indices = Vec::new();
        if !build_id.is_empty() {
            attribute_indices.push(dict.attribute(
                "process.executable.build_id.gnu",
                Value::StringValue(build_id),
            ));
        }
        let i = dict.d.mapping_table.len() as i32;
        dict.d.mapping_table.push(otlp::Mapping {
            memory_start: m.memory_start,
            memory_limit: m.memory_limit,
            file_offset: m.file_offset,
            filename_strindex: file,
            attribute_indices,
        });
        dict.mappings.insert((file, bid), i);
        i
    }

    fn function(&self, dict: &mut Dict, id: u64) -> i32 {
        let Some(f) = self.p.function.get((id as usize).wrapping_sub(1)) else {
            return 0;
        };
        let key = (
            dict.string(self.text(f.name)),
            dict.string(self.text(f.system_name)),
            dict.string(self.text(f.filename)),
        );
        if let Some(&i) = dict.functions.get(&key) {
            return i;
        }
        let i = dict.d.function_table.len() as i32;
        dict.d.function_table.push(otlp::Function {
            name_strindex: key.0,
            system_name_strindex: key.1,
            filename_strindex: key.2,
            start_line: f.start_line,
        });
        dict.functions.insert(key, i);
        i
    }

    fn location(&mut self, dict: &mut Dict, id: u64) -> i32 {
        if let Some(&i) = self.locations.get(&id) {
            return i;
        }
        // bar's location ids are positions plus one.
        let Some(l) = self.p.location.get((id as usize).wrapping_sub(1)) else {
            return 0;
        };
        let mapping = self.mapping(dict, l.mapping_id);
        let lines: Vec<(i32, i64)> = l
            .line
            .iter()
            .map(|ln| (self.function(dict, ln.function_id), ln.line))
            .collect();
        let key = (mapping, l.address, lines);
        let i = match dict.locations.get(&key) {
            Some(&i) => i,
            None => {
                let i = dict.d.location_table.len() as i32;
                dict.d.location_table.push(otlp::Location {
                    mapping_index: mapping,
                    address: l.address,
                    lines: key
                        .2
                        .iter()
                        .map(|&(function_index, line)| otlp::Line {
                            function_index,
                            line,
                            column: 0,
                        })
                        .collect(),
                    attribute_indices: Vec::new(),
                });
                dict.locations.insert(key, i);
                i
            }
        };
        self.locations.insert(id, i);
        i
    }

    fn stack(&mut self, dict: &mut Dict, ids: &[u64]) -> i32 {
        let locs: Vec<i32> = ids.iter().map(|&id| self.location(dict, id)).collect();
        if let Some(&i) = dict.stacks.get(&locs) {
            return i;
        }
        let i = dict.d.stack_table.len() as i32;
        dict.d.stack_table.push(otlp::Stack {
            location_indices: locs.clone(),
        });
        dict.stacks.insert(locs, i);
        i
    }

    /// A sample's numeric or string label.
    fn label<'s>(&self, s: &'s pb::Sample, key: &str) -> Option<&'s pb::Label> {
        s.label.iter().find(|l| self.text(l.key) == key)
    }
}

/// Per process: its resource's profiles, by (family, sample type).
type ByProcess = BTreeMap<u32, (String, Vec<otlp::Profile>)>;

/// The OTLP request of an interval.
pub fn build(interval: &Interval, id: &Identity) -> ExportProfilesServiceRequest {
    let mut dict = Dict::new();
    let mut by_pid: ByProcess = BTreeMap::new();
    let duration = u64::try_from(interval.end_ns - interval.start_ns).unwrap_or(0);
    let start = u64::try_from(interval.start_ns).unwrap_or(0);
    for (_, p) in &interval.profiles {
        let mut t = Tables {
            p,
            locations: HashMap::new(),
        };
        let value_type = |dict: &mut Dict, vt: &pb::ValueType| otlp::ValueType {
            type_strindex: dict.string(t.text(vt.r#type)),
            unit_strindex: dict.string(t.text(vt.unit)),
        };
        let sample_types: Vec<otlp::ValueType> = p
            .sample_type
            .iter()
            .map(|vt| value_type(&mut dict, vt))
            .collect();
        let period_type = p.period_type.as_ref().map(|vt| value_type(&mut dict, vt));
        // Samples per process, each with its value of every sample type.
        let mut samples: BTreeMap<u32, Vec<(otlp::Sample, Vec<i64>)>> = BTreeMap::new();
        for s in &p.sample {
            let pid = t.label(s, "pid").map_or(0, |l| l.num as u32);
            let comm = t.label(s, "comm").map(|l| t.text(l.str).to_owned());
            let mut attribute_indices = Vec::new();
            if let Some(tid) = t.label(s, "tid") {
                attribute_indices.push(dict.attribute("thread.id", Value::IntValue(tid.num)));
            }
            if let Some(phase) = t.label(s, "phase") {
                let v = Value::StringValue(t.text(phase.str).to_owned());
                attribute_indices.push(dict.attribute("bar.phase", v));
            }
            let sample = otlp::Sample {
                stack_index: t.stack(&mut dict, &s.location_id),
                attribute_indices,
                ..Default::default()
            };
            by_pid
                .entry(pid)
                .or_insert_with(|| (comm.unwrap_or_default(), Vec::new()));
            samples
                .entry(pid)
                .or_default()
                .push((sample, s.value.clone()));
        }
        for (pid, samples) in samples {
            let profiles = &mut by_pid.entry(pid).or_default().1;
            for (i, st) in sample_types.iter().enumerate() {
                profiles.push(otlp::Profile {
                    sample_type: Some(*st),
                    samples: samples
                        .iter()
                        .map(|(s, values)| otlp::Sample {
                            values: vec![values.get(i).copied().unwrap_or(0)],
                            ..s.clone()
                        })
                        .collect(),
                    time_unix_nano: start,
                    duration_nano: duration,
                    period_type,
                    period: p.period,
                    profile_id: profile_id(),
                    ..Default::default()
                });
            }
        }
    }
    let resource_profiles = by_pid
        .into_iter()
        .map(|(pid, (comm, profiles))| otlp::ResourceProfiles {
            resource: Some(resource(id, interval, pid, &comm)),
            scope_profiles: vec![otlp::ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "bar".into(),
                    version: id.version.clone(),
                    ..Default::default()
                }),
                profiles,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dict.d),
    }
}

fn resource(id: &Identity, interval: &Interval, pid: u32, comm: &str) -> Resource {
    let info = interval.processes.get(&pid).cloned().unwrap_or_default();
    let exe = if info.exe.is_empty() { comm } else { &info.exe };
    let kv = |key: &str, value: Value| KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    };
    let mut attributes = vec![
        kv("service.name", Value::StringValue(id.app_name.clone())),
        kv("host.name", Value::StringValue(id.hostname.clone())),
        kv("process.pid", Value::IntValue(i64::from(pid))),
    ];
    if !exe.is_empty() {
        attributes.push(kv(
            "process.executable.name",
            Value::StringValue(exe.to_owned()),
        ));
    }
    if let Some(c) = info.container {
        attributes.push(kv("container.id", Value::StringValue(c)));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// 16 random bytes: a profile's id.
fn profile_id() -> Vec<u8> {
    let half = || RandomState::new().build_hasher().finish().to_le_bytes();
    [half(), half()].concat()
}

#[cfg(test)]
mod tests {
    use bar_ebpf_common::{Family, kind};

    use super::*;
    use crate::{
        analyze::Profile,
        capture::{Body, proto},
        export::pprof::Samples,
        push::ProcessInfo,
    };

    fn text(d: &otlp::ProfilesDictionary, i: i32) -> &str {
        &d.string_table[i as usize]
    }

    /// Two processes' cpu samples become two resources, each with a profile per sample type,
    /// over one dictionary whose tables start with their zero elements.
    #[test]
    fn pprof_tables_become_one_dictionary_and_a_resource_per_process() {
        let mut p = Profile::default();
        p.meta.frequency = 100;
        p.add_block(Body::Processes(proto::Processes {
            processes: vec![
                proto::Process {
                    pid: 7,
                    comm: "app".into(),
                    since_ns: 0,
                    exited: false,
                },
                proto::Process {
                    pid: 8,
                    comm: "db".into(),
                    since_ns: 0,
                    exited: false,
                },
            ],
        }));
        let frame = |name: &str| proto::Frame {
            name: name.into(),
            module: "/bin/app".into(),
            kernel: false,
            inlined: false,
        };
        p.add_block(Body::Frames(proto::Frames {
            frames: vec![frame("main"), frame("work")],
        }));
        p.add_block(Body::Stacks(proto::Stacks {
            stacks: vec![proto::Stack { frames: vec![0, 1] }],
        }));
        let mut s = Samples::new(Family::Cpu, 100);
        for (pid, n) in [(7, 3), (8, 2)] {
            for _ in 0..n {
                let ev = proto::Event {
                    kind: kind::CPU,
                    pid,
                    tid: pid + 100,
                    stack: 1,
                    ..Default::default()
                };
                s.add(&ev, Some("load"));
            }
        }
        let interval = Interval {
            start_ns: 1_000,
            end_ns: 3_000,
            profiles: vec![(Family::Cpu, s.build(&p, (0, 2_000)))],
            processes: [(
                7,
                ProcessInfo {
                    exe: "app-bin".into(),
                    container: Some("c1".into()),
                },
            )]
            .into_iter()
            .collect(),
        };
        let id = Identity {
            app_name: "svc".into(),
            hostname: "h1".into(),
            version: "0.1.0".into(),
            target: None,
            frequency: 100,
        };
        let req = build(&interval, &id);
        let d = req.dictionary.as_ref().unwrap();
        assert_eq!(d.string_table[0], "");
        assert_eq!(d.function_table[0], otlp::Function::default());
        assert_eq!(d.stack_table[0], otlp::Stack::default());
        assert_eq!(d.location_table[0], otlp::Location::default());
        assert_eq!(d.mapping_table[0], otlp::Mapping::default());
        assert_eq!(d.attribute_table[0], otlp::KeyValueAndUnit::default());
        assert_eq!(req.resource_profiles.len(), 2);
        let attrs = |rp: &otlp::ResourceProfiles| -> Vec<(String, String)> {
            rp.resource
                .as_ref()
                .unwrap()
                .attributes
                .iter()
                .map(|kv| {
                    let v = match kv.value.as_ref().unwrap().value.as_ref().unwrap() {
                        Value::StringValue(s) => s.clone(),
                        Value::IntValue(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), v)
                })
                .collect()
        };
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            attrs(&req.resource_profiles[0]),
            [
                kv("service.name", "svc"),
                kv("host.name", "h1"),
                kv("process.pid", "7"),
                kv("process.executable.name", "app-bin"),
                kv("container.id", "c1"),
            ]
        );
        // Without /proc facts, the process name stands for the executable.
        assert!(attrs(&req.resource_profiles[1]).contains(&kv("process.executable.name", "db")));
        let profiles = &req.resource_profiles[0].scope_profiles[0].profiles;
        let types: Vec<(&str, &str)> = profiles
            .iter()
            .map(|p| {
                let st = p.sample_type.unwrap();
                (text(d, st.type_strindex), text(d, st.unit_strindex))
            })
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        let (counts, time) = (&profiles[0], &profiles[1]);
        assert_eq!(counts.samples[0].values, [3]);
        assert_eq!(time.samples[0].values, [30_000_000]);
        assert_eq!(counts.period, 10_000_000);
        assert_eq!(
            (counts.time_unix_nano, counts.duration_nano),
            (1_000, 2_000)
        );
        assert_eq!(counts.profile_id.len(), 16);
        // Leaf first, as in pprof: work, then main.
        let stack = &d.stack_table[counts.samples[0].stack_index as usize];
        let names: Vec<&str> = stack
            .location_indices
            .iter()
            .map(|&l| {
                let f = d.location_table[l as usize].lines[0].function_index;
                text(d, d.function_table[f as usize].name_strindex)
            })
            .collect();
        assert_eq!(names, ["work", "main"]);
        let sample_attrs: Vec<(&str, String)> = counts.samples[0]
            .attribute_indices
            .iter()
            .map(|&a| {
                let kv = &d.attribute_table[a as usize];
                (
                    text(d, kv.key_strindex),
                    format!("{:?}", kv.value.as_ref().unwrap().value),
                )
            })
            .collect();
        assert_eq!(sample_attrs[0].0, "thread.id");
        assert!(sample_attrs[0].1.contains("107"));
        assert_eq!(sample_attrs[1].0, "bar.phase");
        // The second process shares the dictionary's stack.
        let other = &req.resource_profiles[1].scope_profiles[0].profiles[0];
        assert_eq!(other.samples[0].stack_index, counts.samples[0].stack_index);
        assert_eq!(other.samples[0].values, [2]);
    }
}
