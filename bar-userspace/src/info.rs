//! `bar-probe info`: what this machine offers bar, family by family, or what a capture holds.

use bar_ebpf_common::Family;
use std::path::Path;

use serde_json::json;

use crate::{
    analyze::Capture,
    probe::{self, ProbeOptions},
    system::Facts,
};

/// Describes the machine: kernel, BTF, tracefs, privileges, and for each family the attach
/// point that will be used (found by loading and attaching, as a recording would).
pub fn machine(as_json: bool) -> anyhow::Result<()> {
    let facts = Facts::gather();
    let can_try = facts.missing_capabilities.is_empty() && facts.bpf.is_ok();
    let status = if can_try {
        let mut loaded = probe::load(&ProbeOptions {
            families: Family::ALL.to_vec(),
            explicit: false,
            // No process has this id: the programs attach but record nothing.
            target_tgid: u32::MAX,
            cgroup_id: 0,
            frequency: 1,
            min_block_ns: 0,
            null_mode: true,
            sum_records: false,
            stack_map_entries: 1,
            avoid: Vec::new(),
            unwind_rows: 1,
        })?;
        Some((loaded.attach(), loaded.unwind.clone()))
    } else {
        None
    };
    let (status, unwind) = match status {
        Some((s, u)) => (Some(s), Some(u)),
        None => (None, None),
    };
    // Frame pointers always work (bar's own walk, or the kernel's); tables need more.
    let unwinders: Vec<&str> = match &unwind {
        Some(Ok(())) => vec!["tables", "frame-pointers"],
        _ => vec!["frame-pointers"],
    };
    if as_json {
        let v = json!({
            "kernel_release": facts.kernel_release,
            "btf": facts.btf,
            "tracefs": facts.tracefs.as_ref().map(|p| p.display().to_string()).ok(),
            "tracefs_error": facts.tracefs.as_ref().err(),
            "root": facts.root,
            "missing_capabilities": facts.missing_capabilities,
            "bpf_allowed": facts.bpf.is_ok(),
            "bpf_error": facts.bpf.as_ref().err(),
            "kprobes": facts.kprobes.is_none(),
            "kprobes_error": facts.kprobes,
            "numa_nodes": facts.numa_nodes,
            "numa_balancing": facts.numa_balancing,
            "cpus": facts.cpus,
            "families": status,
            "unwinders": unwind.as_ref().map(|_| &unwinders),
            "unwind_tables_error": unwind.as_ref().and_then(|u| u.as_ref().err()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let yes_no = |ok: bool| if ok { "yes" } else { "no" };
    println!("kernel       {}", facts.kernel_release);
    println!("cpus         {}", facts.cpus);
    println!(
        "BTF          {}",
        if facts.btf {
            format!("yes ({})", crate::system::BTF_PATH)
        } else {
            "no: tp_btf and fentry cannot be used".into()
        }
    );
    match &facts.tracefs {
        Ok(p) => println!("tracefs      {}", p.display()),
        Err(e) => println!("tracefs      no: {e}"),
    }
    if facts.missing_capabilities.is_empty() {
        println!(
            "privileges   {}",
            if facts.root {
                "root"
            } else {
                "CAP_BPF and CAP_PERFMON"
            }
        );
    } else {
        println!(
            "privileges   missing {}: run as root (sudo)",
            facts.missing_capabilities.join(", ")
        );
    }
    match &facts.bpf {
        Ok(()) => println!("bpf()        allowed"),
        Err(e) => println!("bpf()        refused: {e}"),
    }
    match &facts.kprobes {
        None => println!("kprobes      yes"),
        Some(e) => println!("kprobes      no: {e}"),
    }
    let nodes = &facts.numa_nodes;
    println!(
        "NUMA         {} node{} ({}), numa_balancing {}{}",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        facts
            .numa_balancing
            .map_or_else(|| "absent".into(), |v| v.to_string()),
        if nodes.len() == 1 {
            ": no cross-node migrations can happen here; page migrations of other reasons (compaction, migrate_pages) are still recorded"
        } else {
            ""
        },
    );
    match &unwind {
        Some(Ok(())) => println!(
            "user stacks  unwind tables (.eh_frame, .debug_frame), frame pointers where code has none"
        ),
        Some(Err(e)) => println!("user stacks  frame pointers only: {e}"),
        None => println!("user stacks  not checked (loading programs needs root)"),
    }
    println!();
    match status {
        None => {
            println!(
                "event families: not checked (loading programs needs root); attach points, best first:"
            );
            for f in Family::ALL {
                let points: Vec<String> = probe::chain(f)
                    .iter()
                    .map(probe::AttachPoint::describe)
                    .collect();
                println!("  {:<7} {}", f.name(), points.join(", "));
            }
        }
        Some(status) => {
            println!("event families (attach point in use, and why the others are not):");
            for st in status {
                match &st.method {
                    Some(m) => println!("  {:<7} {m}", st.family.name()),
                    None => println!("  {:<7} UNAVAILABLE", st.family.name()),
                }
                for r in &st.rejected {
                    println!("  {:<7}   {}: {}", "", r.attach, r.reason);
                }
            }
        }
    }
    let _ = yes_no;
    Ok(())
}

/// Describes a capture: where and how it was recorded, what it holds, whether it is whole.
pub fn capture(path: &Path, as_json: bool) -> anyhow::Result<()> {
    let profile = Capture::open(path)?.whole();
    let summary = crate::render::summary(&profile);
    if as_json {
        println!("{}", summary.to_json()?);
        return Ok(());
    }
    let m = &profile.meta;
    println!("capture      {}", path.display());
    println!(
        "recorded by  bar {} on {} ({})",
        m.bar_version, m.hostname, m.kernel_release
    );
    println!("command      {}", m.command_line.join(" "));
    if let Some(t) = &m.target {
        println!("target       pid {} {} ({})", t.pid, t.comm, t.exe);
    } else {
        println!("scope        {}", m.scope);
    }
    println!("from         {}", summary.start);
    println!("to           {}", summary.end);
    println!(
        "stopped by   {}",
        summary.stop_reason.as_deref().unwrap_or("(no trailer)")
    );
    match &profile.damage {
        None => println!("integrity    complete, checksum verified"),
        Some(d) => println!("integrity    DAMAGED: {d}"),
    }
    for (view, agg) in &profile.views {
        let summed = profile.summed_every(*view).map_or_else(String::new, |w| {
            format!(
                " (summed in the kernel every {})",
                humantime::format_duration(w)
            )
        });
        println!(
            "{:<12} {} events, weight {} {}{summed}",
            view.name(),
            agg.events,
            agg.weight,
            view.unit()
        );
    }
    println!(
        "lost         {}",
        profile.counters.lost_per_cpu.iter().sum::<u64>()
    );
    Ok(())
}
