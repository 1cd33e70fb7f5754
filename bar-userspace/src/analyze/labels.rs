//! Labels of events as every output shows them: leaf annotations of a stack, TCP endpoints and
//! results, NUMA migration reasons, and how much an event weighs in its family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bar_ebpf_common::{numa_task_kind, offcpu_reason};

use crate::capture::proto::{self, event::Detail};

/// Names of `enum migrate_reason` (include/linux/migrate_mode.h), stable since 5.x.
pub fn migrate_reason(r: u32) -> String {
    const NAMES: [&str; 10] = [
        "compaction",
        "memory_failure",
        "memory_hotplug",
        "syscall_or_cpuset",
        "mempolicy_mbind",
        "numa_misplaced",
        "contig_range",
        "longterm_pin",
        "demotion",
        "damon",
    ];
    NAMES
        .get(r as usize)
        .map_or_else(|| format!("reason_{r}"), |n| (*n).to_owned())
}

pub fn tcp_result(error: i32) -> &'static str {
    match error {
        0 => "established",
        111 => "refused",
        110 => "timed_out",
        _ => "other",
    }
}

pub fn format_endpoint(family: u32, addr: &[u8], port: u32) -> String {
    let ip = if family == 10 && addr.len() >= 16 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&addr[..16]);
        IpAddr::V6(Ipv6Addr::from(b))
    } else if addr.len() >= 4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

/// How many events `ev` stands for (several when they were summed in the kernel).
pub fn count(ev: &proto::Event) -> u64 {
    ev.count.max(1)
}

/// Weight and leaf annotations of an event in its view (also the leaf frames of `export`).
pub fn weigh(ev: &proto::Event) -> (u64, Vec<String>) {
    let n = count(ev);
    match &ev.detail {
        None => (n, Vec::new()),
        // Major faults carry their own leaf, so a flame graph shows where I/O was waited for;
        // minor faults (and faults of unknown severity) have none.
        Some(Detail::Fault(f)) if f.major == Some(true) => (n, vec!["[major]".to_owned()]),
        Some(Detail::Fault(_)) => (n, Vec::new()),
        // Summed intervals carry their summed time.
        Some(Detail::Offcpu(o)) => {
            let state = if o.reason == offcpu_reason::PREEMPTED {
                "[preempted]"
            } else {
                "[blocked]"
            };
            (o.blocked_ns / 1000, vec![state.to_owned()])
        }
        Some(Detail::Tcp(t)) => (
            1,
            vec![
                format!("[connect {}]", format_endpoint(t.family, &t.daddr, t.dport)),
                format!("[{}]", tcp_result(t.error)),
            ],
        ),
        Some(Detail::NumaTask(n)) => {
            let what = match n.what {
                numa_task_kind::SWAP => "swap",
                numa_task_kind::STICK => "stick",
                _ => "move",
            };
            (
                1,
                vec![format!(
                    "[numa task {what} node {}->{}]",
                    n.src_nid, n.dst_nid
                )],
            )
        }
        Some(Detail::NumaPages(p)) => (
            p.succeeded,
            vec![format!("[migrate pages: {}]", migrate_reason(p.reason))],
        ),
    }
}

/// Frame names must not contain the folded format's separators.
pub(super) fn sanitize(name: &str) -> String {
    if name.contains([';', '\n', '\r']) {
        name.replace(';', ":").replace(['\n', '\r'], " ")
    } else {
        name.to_owned()
    }
}
