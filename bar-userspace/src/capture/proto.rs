//! The messages of a capture file, as protobuf (prost). `docs/capture.proto` is the same schema
//! for readers in other languages; field numbers are the compatibility contract: add fields,
//! never renumber or reuse them.

/// One block of the file; exactly one body is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Block {
    #[prost(oneof = "block::Body", tags = "1, 2, 3, 4, 5, 6, 7, 8")]
    pub body: Option<block::Body>,
}

pub mod block {
    #[derive(Clone, PartialEq, prost::Oneof)]
    #[expect(
        clippy::large_enum_variant,
        reason = "one block at a time is alive; boxing buys nothing"
    )]
    pub enum Body {
        #[prost(message, tag = "1")]
        Meta(super::Meta),
        #[prost(message, tag = "2")]
        Processes(super::Processes),
        #[prost(message, tag = "3")]
        Frames(super::Frames),
        #[prost(message, tag = "4")]
        Stacks(super::Stacks),
        #[prost(message, tag = "5")]
        Events(super::Events),
        #[prost(message, tag = "6")]
        Counters(super::Counters),
        #[prost(message, tag = "7")]
        Marker(super::Marker),
        #[prost(message, tag = "8")]
        Trailer(super::Trailer),
    }
}

/// The first block: where, when, what and how it was recorded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Meta {
    #[prost(string, tag = "1")]
    pub bar_version: String,
    #[prost(string, repeated, tag = "2")]
    pub command_line: Vec<String>,
    #[prost(string, tag = "3")]
    pub hostname: String,
    #[prost(string, tag = "4")]
    pub kernel_release: String,
    #[prost(string, tag = "5")]
    pub boot_id: String,
    #[prost(uint32, tag = "6")]
    pub cpu_count: u32,
    /// Add to a CLOCK_MONOTONIC timestamp to get nanoseconds since the Unix epoch.
    #[prost(int64, tag = "7")]
    pub monotonic_to_realtime_ns: i64,
    /// CLOCK_MONOTONIC when recording started.
    #[prost(uint64, tag = "8")]
    pub start_ns: u64,
    #[prost(message, optional, tag = "9")]
    pub target: Option<Target>,
    /// "pid", "all" or "cgroup".
    #[prost(string, tag = "10")]
    pub scope: String,
    #[prost(string, tag = "11")]
    pub cgroup: String,
    #[prost(message, repeated, tag = "12")]
    pub families: Vec<FamilyStatus>,
    #[prost(uint64, tag = "13")]
    pub frequency: u64,
    #[prost(uint64, tag = "14")]
    pub min_block_ns: u64,
    #[prost(uint32, repeated, tag = "15")]
    pub numa_nodes: Vec<u32>,
    /// `kernel.numa_balancing`, -1 when the kernel has no such setting.
    #[prost(int32, tag = "16")]
    pub numa_balancing: i32,
    #[prost(uint32, tag = "17")]
    pub stack_map_entries: u32,
    #[prost(bool, tag = "18")]
    pub null_mode: bool,
    /// Faults and off-CPU intervals were summed in the kernel and collected every this many
    /// nanoseconds (`--aggregate`); 0 when each was recorded.
    #[prost(uint64, tag = "19")]
    pub aggregate_window_ns: u64,
    /// A dump of the flight recorder (`--ring`): the time it keeps (0 otherwise), its size
    /// limit, and whether that limit dropped events of the time asked for.
    #[prost(uint64, tag = "20")]
    pub ring_window_ns: u64,
    #[prost(uint64, tag = "21")]
    pub ring_size_bytes: u64,
    #[prost(bool, tag = "22")]
    pub ring_cut_by_size: bool,
    /// Deflated bytes the ring held for the time dumped.
    #[prost(uint64, tag = "23")]
    pub ring_held_bytes: u64,
    /// How user stacks were walked: "tables" (unwind tables, frame pointers where code has
    /// none) or "frame-pointers", with the reason after a colon when tables could not be used.
    #[prost(string, tag = "24")]
    pub unwind: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Target {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(string, tag = "2")]
    pub comm: String,
    #[prost(string, repeated, tag = "3")]
    pub cmdline: Vec<String>,
    #[prost(string, tag = "4")]
    pub exe: String,
    /// Hex GNU build id of the executable, empty when it has none.
    #[prost(string, tag = "5")]
    pub build_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FamilyStatus {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The attach point in use; empty when none worked.
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(message, repeated, tag = "3")]
    pub rejected: Vec<Rejected>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Rejected {
    #[prost(string, tag = "1")]
    pub attach: String,
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// Processes seen, by thread group id, with their name: when first seen, and again after each
/// exec (`since_ns` says from when the name holds).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Processes {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<Process>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(string, tag = "2")]
    pub comm: String,
    /// CLOCK_MONOTONIC from which this name holds (0: from the start).
    #[prost(uint64, tag = "3")]
    pub since_ns: u64,
    /// The process ended at `since_ns`, named `comm` then; it had no other name since its
    /// previous entry that was not empty.
    #[prost(bool, tag = "4")]
    pub exited: bool,
}

/// Symbolized frames; a frame's id is its position among all frames of the file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frames {
    #[prost(message, repeated, tag = "1")]
    pub frames: Vec<Frame>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// Function name, or `[module+0xoffset]` when it could not be resolved.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Object file (path of the ELF, `[kernel.kallsyms]`, a kernel module...).
    #[prost(string, tag = "2")]
    pub module: String,
    #[prost(bool, tag = "3")]
    pub kernel: bool,
    /// A function the compiler inlined into the frame before it in a stack (its caller) at
    /// that frame's address: it made no call of its own; DWARF says it is there.
    #[prost(bool, tag = "4")]
    pub inlined: bool,
}

/// Interned stacks; a stack's id is its position among all stacks of the file, plus one
/// (0 means "no stack").
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stacks {
    #[prost(message, repeated, tag = "1")]
    pub stacks: Vec<Stack>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Stack {
    /// Frame ids, outermost (root) first: user frames, then kernel frames.
    #[prost(uint32, repeated, tag = "1")]
    pub frames: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Events {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    #[prost(uint64, tag = "1")]
    pub ts: u64,
    /// Record kind (bar-ebpf-common `kind`).
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(uint32, tag = "3")]
    pub cpu: u32,
    #[prost(uint32, tag = "4")]
    pub pid: u32,
    #[prost(uint32, tag = "5")]
    pub tid: u32,
    /// Stack id (see `Stacks`), 0 for none.
    #[prost(uint32, tag = "6")]
    pub stack: u32,
    /// How many events this one stands for, when they were summed in the kernel: their time
    /// is the middle of their window, an off-CPU `blocked_ns` is their sum. 0 means 1.
    #[prost(uint64, tag = "7")]
    pub count: u64,
    #[prost(oneof = "event::Detail", tags = "10, 11, 12, 13, 14")]
    pub detail: Option<event::Detail>,
}

pub mod event {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Detail {
        #[prost(message, tag = "10")]
        Fault(super::Fault),
        #[prost(message, tag = "11")]
        Offcpu(super::OffCpu),
        #[prost(message, tag = "12")]
        Tcp(super::Tcp),
        #[prost(message, tag = "13")]
        NumaTask(super::NumaTask),
        #[prost(message, tag = "14")]
        NumaPages(super::NumaPages),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Fault {
    #[prost(uint64, tag = "1")]
    pub address: u64,
    #[prost(uint64, tag = "2")]
    pub ip: u64,
    #[prost(uint32, tag = "3")]
    pub error_code: u32,
    #[prost(bool, tag = "4")]
    pub user_mode: bool,
    /// Major (true) or minor (false); absent when the attach point could not tell.
    #[prost(bool, optional, tag = "5")]
    pub major: Option<bool>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OffCpu {
    #[prost(uint64, tag = "1")]
    pub blocked_ns: u64,
    /// 1 blocked, 2 preempted.
    #[prost(uint32, tag = "2")]
    pub reason: u32,
    #[prost(uint32, tag = "3")]
    pub state: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Tcp {
    #[prost(uint64, tag = "1")]
    pub latency_ns: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub saddr: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub daddr: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub family: u32,
    #[prost(uint32, tag = "5")]
    pub sport: u32,
    #[prost(uint32, tag = "6")]
    pub dport: u32,
    /// 0 established, else errno; -1 unknown.
    #[prost(int32, tag = "7")]
    pub error: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NumaTask {
    #[prost(int32, tag = "1")]
    pub src_cpu: i32,
    #[prost(int32, tag = "2")]
    pub dst_cpu: i32,
    #[prost(int32, tag = "3")]
    pub src_nid: i32,
    #[prost(int32, tag = "4")]
    pub dst_nid: i32,
    /// 1 move, 2 swap, 3 stick.
    #[prost(uint32, tag = "5")]
    pub what: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NumaPages {
    #[prost(uint64, tag = "1")]
    pub succeeded: u64,
    #[prost(uint64, tag = "2")]
    pub failed: u64,
    #[prost(uint64, tag = "3")]
    pub thp_succeeded: u64,
    #[prost(uint64, tag = "4")]
    pub thp_failed: u64,
    #[prost(uint32, tag = "5")]
    pub mode: u32,
    #[prost(uint32, tag = "6")]
    pub reason: u32,
    #[prost(int32, tag = "7")]
    pub dst_nid: i32,
    /// Node the pages came from; absent in captures from before it was recorded, -1 when the
    /// attach point did not know it.
    #[prost(int32, optional, tag = "8")]
    pub src_nid: Option<i32>,
}

/// Loss counters so far (cumulative: the last block wins).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counters {
    /// Records lost because a CPU's perf buffer was full, per CPU.
    #[prost(uint64, repeated, tag = "1")]
    pub lost_per_cpu: Vec<u64>,
    /// Records the kernel could not output, per record kind (index = kind).
    #[prost(uint64, repeated, tag = "2")]
    pub dropped_per_kind: Vec<u64>,
    #[prost(uint64, tag = "3")]
    pub malformed: u64,
    #[prost(uint64, tag = "4")]
    pub offcpu_map_full: u64,
    #[prost(uint64, tag = "5")]
    pub tcp_map_full: u64,
    /// Records received after the capture reached --max-size, not written.
    #[prost(uint64, tag = "6")]
    pub discarded_at_max_size: u64,
    /// CLOCK_MONOTONIC when these counts were read.
    #[prost(uint64, tag = "7")]
    pub ts: u64,
    #[prost(message, optional, boxed, tag = "8")]
    pub unwind: Option<Box<Unwind>>,
    /// Off-CPU intervals whose end no program saw, ended by the thread's run time since (None
    /// in captures recorded before bar counted them).
    #[prost(uint64, optional, tag = "9")]
    pub offcpu_returns_unseen: Option<u64>,
}

/// How the user stacks of the recorded events were walked, and what the unwind tables cost.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unwind {
    /// Events whose user stack bar's programs walked.
    #[prost(uint64, tag = "1")]
    pub stacks: u64,
    /// Frames of those stacks found by unwind table, by frame pointer, by Go's table.
    #[prost(uint64, tag = "2")]
    pub frames_table: u64,
    #[prost(uint64, tag = "3")]
    pub frames_frame_pointer: u64,
    #[prost(uint64, tag = "4")]
    pub frames_go: u64,
    /// Stacks cut short, by reason (`bar_ebpf_common::unwind::stop`; index 0, complete, unused).
    #[prost(uint64, repeated, tag = "5")]
    pub cut_short: Vec<u64>,
    /// Objects with a table in the kernel, their rows and bytes, and the time to build them.
    #[prost(uint64, tag = "6")]
    pub objects: u64,
    #[prost(uint64, tag = "7")]
    pub rows: u64,
    #[prost(uint64, tag = "8")]
    pub bytes: u64,
    #[prost(uint64, tag = "9")]
    pub build_ms: u64,
    /// Rows the kernel's array holds.
    #[prost(uint64, tag = "10")]
    pub capacity_rows: u64,
    /// Tables withdrawn to make room for others.
    #[prost(uint64, tag = "11")]
    pub evicted: u64,
    /// Times a walk met code outside the mappings loaded (the map was read again).
    #[prost(uint64, tag = "12")]
    pub misses: u64,
    /// Processes whose tables were loaded, and those gone before they could be.
    #[prost(uint64, tag = "13")]
    pub processes: u64,
    #[prost(uint64, tag = "14")]
    pub processes_gone: u64,
    /// Objects that got no table (walked by frame pointer), and why.
    #[prost(message, repeated, tag = "15")]
    pub failed: Vec<Rejected>,
    /// Stack pages a walk could not read that the collector was asked to fault in, and those
    /// it did (the others belonged to processes or mappings gone by then).
    #[prost(uint64, tag = "16")]
    pub stack_pages: u64,
    #[prost(uint64, tag = "17")]
    pub stack_pages_back: u64,
    /// Entries of the objects' call frame information that could not be parsed and were left
    /// out (their functions walked by frame pointer), and the objects that had such entries.
    #[prost(uint64, tag = "18")]
    pub entries_skipped: u64,
    #[prost(message, repeated, tag = "19")]
    pub partial: Vec<Rejected>,
}

/// A phase marker: `name` starts at `ts` (or ends there when `end`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Marker {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub ts: u64,
    #[prost(bool, tag = "3")]
    pub end: bool,
}

/// The last block of a complete file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Trailer {
    /// CLOCK_MONOTONIC when recording stopped.
    #[prost(uint64, tag = "1")]
    pub end_ns: u64,
    #[prost(uint64, tag = "2")]
    pub events: u64,
    /// duration, signal, target-exited, max-size.
    #[prost(string, tag = "3")]
    pub stop_reason: String,
    /// Blocks before this one.
    #[prost(uint64, tag = "4")]
    pub blocks: u64,
    /// CRC-32 of the payloads of all blocks before this one, in order.
    #[prost(uint32, tag = "5")]
    pub checksum: u32,
    /// What went to each profiling backend (`--pyroscope`, `--otlp`) while recording. Older
    /// readers skip the field.
    #[prost(message, repeated, tag = "6")]
    pub push: Vec<Push>,
}

/// One backend the recording pushed its intervals to, and how that went. Counts are of
/// intervals (every family's profile of one `--push-every` period).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Push {
    /// "pyroscope" or "otlp".
    #[prost(string, tag = "1")]
    pub backend: String,
    /// Where to, without credentials.
    #[prost(string, tag = "2")]
    pub url: String,
    #[prost(uint64, tag = "3")]
    pub every_ms: u64,
    /// Intervals the backend accepted.
    #[prost(uint64, tag = "4")]
    pub sent: u64,
    /// Intervals it refused, or that could not be delivered after the retries.
    #[prost(uint64, tag = "5")]
    pub failed: u64,
    /// Intervals never tried: the queue was full, or the recording ended first.
    #[prost(uint64, tag = "6")]
    pub dropped: u64,
    #[prost(string, tag = "7")]
    pub last_error: String,
    /// The application name (Pyroscope) or service name (OTLP) sent.
    #[prost(string, tag = "8")]
    pub name: String,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    /// Per message, its field numbers and their names (None for the members of a oneof, which
    /// the two sides name differently: a Rust variant, a proto field).
    type Schema = BTreeMap<String, BTreeMap<u32, Option<String>>>;

    /// The messages of this file, from its `#[prost(...)]` attributes.
    fn from_rust(text: &str) -> Schema {
        let mut out = Schema::new();
        let mut current: Option<String> = None;
        let mut pending: Vec<(u32, bool)> = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("pub struct ") {
                current = rest.split([' ', '{']).next().map(str::to_owned);
            } else if line.starts_with("pub mod ") || line.starts_with("mod ") {
                current = None;
            } else if let Some(attr) = line.strip_prefix("#[prost(") {
                pending = if let Some(list) = attr.split("tags = \"").nth(1) {
                    let list = list.split('"').next().unwrap_or_default();
                    list.split(',')
                        .filter_map(|t| t.trim().parse().ok())
                        .map(|t| (t, false))
                        .collect()
                } else {
                    attr.split("tag = \"")
                        .nth(1)
                        .and_then(|t| t.split('"').next()?.parse().ok())
                        .map(|t| vec![(t, true)])
                        .unwrap_or_default()
                };
            } else if let (Some(m), Some(field)) = (&current, line.strip_prefix("pub ")) {
                let name = field.split(':').next().unwrap_or_default().to_owned();
                for (tag, named) in pending.drain(..) {
                    let fields = out.entry(m.clone()).or_default();
                    fields.insert(tag, named.then(|| name.clone()));
                }
            }
        }
        out
    }

    /// The messages of the published schema.
    fn from_proto(text: &str) -> Schema {
        let mut out = Schema::new();
        let mut current: Option<String> = None;
        let mut in_oneof = false;
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default().trim();
            if let Some(rest) = code.strip_prefix("message ") {
                current = rest.split([' ', '{']).next().map(str::to_owned);
                out.entry(current.clone().unwrap_or_default()).or_default();
            } else if code.starts_with("oneof ") {
                in_oneof = true;
            } else if code == "}" {
                if in_oneof {
                    in_oneof = false;
                } else {
                    current = None;
                }
            } else if let (Some(m), Some((decl, tag))) = (&current, code.split_once('=')) {
                let name = decl
                    .split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .to_owned();
                if let Ok(tag) = tag.trim().trim_end_matches(';').trim().parse() {
                    let fields = out.entry(m.clone()).or_default();
                    fields.insert(tag, (!in_oneof).then_some(name));
                }
            }
        }
        out
    }

    #[test]
    fn the_published_schema_is_this_one() {
        let rust = from_rust(include_str!("proto.rs"));
        let proto = from_proto(include_str!("../../../docs/capture.proto"));
        // The parsers found the messages (a parser gone blind would compare two empty sets).
        assert!(rust.len() >= 20 && rust.contains_key("Event"), "{rust:?}");
        for (message, fields) in &rust {
            assert_eq!(
                Some(fields),
                proto.get(message),
                "message {message}: docs/capture.proto differs from capture/proto.rs"
            );
        }
        let extra: Vec<&String> = proto.keys().filter(|m| !rust.contains_key(*m)).collect();
        assert!(extra.is_empty(), "only in docs/capture.proto: {extra:?}");
    }
}
