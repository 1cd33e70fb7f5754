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
        inlined: false,
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

/// Four cpu samples of two threads.
fn cpu_events() -> Vec<Event> {
    vec![
        ev(kind::CPU, 10, 7, 1, None),
        ev(kind::CPU, 11, 7, 1, None),
        ev(kind::CPU, 12, 8, 2, None),
        ev(kind::CPU, 13, 8, 0, None),
    ]
}

#[test]
fn tables_follow_the_spec() {
    let p = profile();
    let out = build(&p, Family::Cpu, cpu_events());
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
    let mut events = cpu_events();
    // Another view's event is not part of a cpu profile.
    events.push(ev(kind::OFFCPU, 14, 8, 2, offcpu(5_000, 1)));
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

#[test]
fn inlined_frames_are_lines_of_their_callers_location() {
    // main > work, with step and tiny inlined into work at one sampled address (innermost
    // last, as the capture lists them), and work alone at another.
    let mut p = profile();
    let inlined = |name: &str| proto::Frame {
        name: name.into(),
        module: "/bin/app".into(),
        kernel: false,
        inlined: true,
    };
    p.add_block(Body::Frames(proto::Frames {
        frames: vec![inlined("step"), inlined("tiny")],
    }));
    p.add_block(Body::Stacks(proto::Stacks {
        stacks: vec![proto::Stack {
            frames: vec![0, 1, 3, 4],
        }],
    }));
    let out = build(
        &p,
        Family::Cpu,
        vec![ev(kind::CPU, 10, 7, 3, None), ev(kind::CPU, 11, 7, 1, None)],
    );
    let name = |l: &pb::Line| {
        let f = &out.function[l.function_id as usize - 1];
        out.string_table[f.name as usize].clone()
    };
    let lines = |id: u64| -> Vec<String> {
        out.location[id as usize - 1]
            .line
            .iter()
            .map(name)
            .collect()
    };
    let stacks: Vec<Vec<Vec<String>>> = out
        .sample
        .iter()
        .map(|s| s.location_id.iter().map(|&id| lines(id)).collect())
        .collect();
    // Leaf first; in a location, the innermost function first and the caller last, with no
    // `_[i]`: pprof says "inlined" with the lines themselves.
    let with = vec![vec!["tiny", "step", "work"], vec!["main"]];
    let without = vec![vec!["work"], vec!["main"]];
    assert_eq!(stacks.len(), 2, "{stacks:?}");
    assert!(stacks.contains(&strings(&with)), "{stacks:?}");
    assert!(stacks.contains(&strings(&without)), "{stacks:?}");
    // The folded stack marks them.
    assert_eq!(p.stack_names(3), ["main", "work", "step_[i]", "tiny_[i]"]);
}

fn strings(v: &[Vec<&str>]) -> Vec<Vec<String>> {
    v.iter()
        .map(|l| l.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}
