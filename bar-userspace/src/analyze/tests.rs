use bar_ebpf_common::{Family, kind};

use super::*;
use crate::capture::{
    Body,
    proto::{self, event::Detail},
};

fn ev(kind: u32, pid: u32, stack: u32, detail: Option<Detail>) -> proto::Event {
    proto::Event {
        ts: 1,
        kind,
        cpu: 0,
        pid,
        tid: pid,
        stack,
        count: 0,
        detail,
    }
}

fn profile() -> Profile {
    let mut p = Profile::default();
    p.add_block(Body::Processes(proto::Processes {
        processes: vec![proto::Process {
            pid: 7,
            since_ns: 0,
            comm: "app".into(),
            ..Default::default()
        }],
    }));
    p.add_block(Body::Frames(proto::Frames {
        frames: vec![
            proto::Frame {
                name: "main".into(),
                module: "/app".into(),
                kernel: false,
                inlined: false,
            },
            proto::Frame {
                name: "work;x".into(),
                module: "/app".into(),
                kernel: false,
                inlined: false,
            },
            proto::Frame {
                name: "schedule".into(),
                module: "[kernel.kallsyms]".into(),
                kernel: true,
                inlined: false,
            },
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

#[test]
fn folds_root_first_with_kernel_suffix_and_weights() {
    let mut p = profile();
    let events = vec![
        ev(kind::CPU, 7, 1, None),
        ev(kind::CPU, 7, 1, None),
        ev(kind::CPU, 8, 0, None),
        ev(
            kind::OFFCPU,
            7,
            2,
            Some(Detail::Offcpu(proto::OffCpu {
                blocked_ns: 2_500_000,
                reason: 1,
                state: 1,
            })),
        ),
        ev(
            kind::OFFCPU,
            7,
            2,
            Some(Detail::Offcpu(proto::OffCpu {
                blocked_ns: 500_000,
                reason: 2,
                state: 0,
            })),
        ),
    ];
    p.add_block(Body::Events(proto::Events { events }));
    let cpu = p.folded(&p.views[&Family::Cpu]);
    assert_eq!(
        cpu,
        vec!["[pid 8] 1".to_owned(), "app;main;work:x 2".to_owned()]
    );
    let off = p.folded(&p.views[&Family::Offcpu]);
    assert_eq!(
        off,
        vec![
            "app;main;schedule_[k];[blocked] 2500".to_owned(),
            "app;main;schedule_[k];[preempted] 500".to_owned()
        ]
    );
    let h = &p.views[&Family::Offcpu].blocked_us;
    let p50 = h.value_at_quantile(0.5);
    assert!(h.equivalent(p50, 2500), "{p50}");
}

#[test]
fn events_summed_in_the_kernel_count_as_many() {
    let mut p = profile();
    let fault = proto::Fault {
        user_mode: true,
        major: Some(false),
        ..Default::default()
    };
    let events = vec![
        proto::Event {
            count: 5,
            ..ev(kind::FAULT, 7, 1, Some(Detail::Fault(fault.clone())))
        },
        ev(kind::FAULT, 7, 1, Some(Detail::Fault(fault))),
        // Four intervals of 1 ms on average, 4 ms in all.
        proto::Event {
            count: 4,
            ..ev(
                kind::OFFCPU,
                7,
                2,
                Some(Detail::Offcpu(proto::OffCpu {
                    blocked_ns: 4_000_000,
                    reason: 1,
                    state: 1,
                })),
            )
        },
    ];
    p.add_block(Body::Events(proto::Events { events }));
    let faults = &p.views[&Family::Faults];
    assert_eq!((faults.events, faults.weight), (6, 6));
    assert_eq!((faults.user_mode, faults.minor), (6, 6));
    assert_eq!(p.folded(faults), vec!["app;main;work:x 6".to_owned()]);
    let off = &p.views[&Family::Offcpu];
    assert_eq!((off.events, off.weight), (4, 4000));
    assert_eq!(off.blocked_us.len(), 4);
    assert!(
        off.blocked_us
            .equivalent(off.blocked_us.value_at_quantile(0.5), 1000)
    );
}

#[test]
fn slices_aggregate_their_time_range_apart() {
    let mut p = profile();
    let mut slices = vec![Slice::new(0, 5), Slice::new(3, 8)];
    let events: Vec<_> = (0..10)
        .map(|ts| proto::Event {
            ts,
            ..ev(kind::CPU, 7, 1, None)
        })
        .collect();
    // As Capture::sliced sets them up before the blocks arrive.
    p.slices = std::mem::take(&mut slices);
    p.add_block(Body::Events(proto::Events { events }));
    assert_eq!(p.views[&Family::Cpu].events, 10);
    assert_eq!(p.slices[0].views[&Family::Cpu].events, 5);
    assert_eq!(p.slices[1].views[&Family::Cpu].events, 5);
    let folded = p.folded_map(&p.slices[1].views[&Family::Cpu]);
    assert_eq!(folded["app;main;work:x"], 5);
}

#[test]
fn events_whose_stack_the_kernel_could_not_store_are_counted_per_view() {
    let mut p = profile();
    p.add_block(Body::Frames(proto::Frames {
        frames: vec![proto::Frame {
            name: "[user stack lost: map full]".into(),
            module: String::new(),
            kernel: false,
            inlined: false,
        }],
    }));
    p.add_block(Body::Stacks(proto::Stacks {
        stacks: vec![proto::Stack { frames: vec![3, 2] }],
    }));
    let fault = || {
        Some(Detail::Fault(proto::Fault {
            user_mode: true,
            ..Default::default()
        }))
    };
    p.add_block(Body::Events(proto::Events {
        events: vec![
            proto::Event {
                count: 4,
                ..ev(kind::FAULT, 7, 3, fault())
            },
            ev(kind::FAULT, 7, 1, fault()),
            ev(kind::CPU, 7, 3, None),
        ],
    }));
    assert_eq!(p.views[&Family::Faults].stacks_lost, 4);
    assert_eq!(p.views[&Family::Cpu].stacks_lost, 1);
}

#[test]
fn processes_are_named_by_time_and_at_their_end_when_nothing_else_named_them() {
    let mut p = Profile::default();
    let named = |pid, comm: &str, since_ns, exited| proto::Process {
        pid,
        comm: comm.into(),
        since_ns,
        exited,
    };
    p.add_block(Body::Processes(proto::Processes {
        processes: vec![
            // Forked as the shell, exec'd as make, ended as make.
            named(5, "sh", 10, false),
            named(5, "make", 20, false),
            named(5, "make", 30, true),
            // Gone before it could be looked up: only its end names it.
            named(6, "cc1", 40, true),
            // The pid used again by another process afterwards keeps its own name.
            named(6, "ld", 50, false),
        ],
    }));
    let at = |p: &mut Profile, pid, ts| {
        let id = p.process_at(pid, ts);
        p.name(id).to_owned()
    };
    assert_eq!(at(&mut p, 5, 15), "sh");
    assert_eq!(at(&mut p, 5, 25), "make");
    assert_eq!(at(&mut p, 6, 35), "cc1");
    assert_eq!(at(&mut p, 6, 55), "ld");
    assert_eq!(at(&mut p, 7, 55), "[pid 7]");
}

#[test]
fn tcp_destinations_and_results() {
    let mut p = profile();
    let tcp = |error, dport| {
        ev(
            kind::TCP,
            7,
            1,
            Some(Detail::Tcp(proto::Tcp {
                latency_ns: 50_000,
                saddr: vec![127, 0, 0, 1],
                daddr: vec![127, 0, 0, 1],
                family: 2,
                sport: 1,
                dport,
                error,
            })),
        )
    };
    p.add_block(Body::Events(proto::Events {
        events: vec![tcp(0, 80), tcp(111, 81), tcp(111, 81)],
    }));
    let v = &p.views[&Family::Tcp];
    assert_eq!(v.tcp["127.0.0.1:81"].refused, 2);
    assert_eq!(v.tcp["127.0.0.1:80"].established, 1);
    assert!(
        p.folded(v)
            .contains(&"app;main;work:x;[connect 127.0.0.1:81];[refused] 2".to_owned())
    );
}
