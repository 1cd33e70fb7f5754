//! Offsets the kernel programs need but cannot know at compile time: the fields of classic
//! tracepoint records, read from their tracefs `format` files, and members of kernel structures,
//! read from the kernel's BTF. Both differ between kernel versions; reading them from the running
//! kernel is what lets one object work on 6.1, 6.12 and 6.18 alike.

use std::{collections::HashMap, fs, path::Path};

use bar_ebpf_common::Layout;
use btf_rs::{Btf, Type};

use super::Error;

/// Fields of one tracepoint: name → (offset, size).
#[derive(Debug, Default, Clone)]
pub struct Format {
    pub fields: HashMap<String, (u32, u32)>,
}

impl Format {
    /// Reads `events/<category>/<name>/format` under tracefs.
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self, Error> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|e| Error::NoTracepoint {
            category: category.to_owned(),
            name: name.to_owned(),
            why: e.to_string(),
        })?;
        Ok(Self::parse(&text))
    }

    /// Parses a tracefs format description.
    pub fn parse(text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // The name is the last word of the declaration, without an array suffix.
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or_default();
            let name = name.split('[').next().unwrap_or_default();
            if let (Some(o), Some(s)) = (offset, size) {
                fields.insert(name.to_owned(), (o, s));
            }
        }
        Self { fields }
    }

    /// Offset of a field that must have the given size.
    pub fn offset(&self, field: &str, size: u32) -> Result<u32, Error> {
        match self.fields.get(field) {
            Some(&(o, s)) if s == size => Ok(o),
            Some(&(_, s)) => Err(Error::FieldSize {
                field: field.to_owned(),
                size: s,
                expected: size,
            }),
            None => Err(Error::NoField(field.to_owned())),
        }
    }
}

/// Fills the tracepoint part of a layout: one tracepoint at a time, so that a missing or
/// different tracepoint only disables the attach points that need it.
pub fn fill_tracepoint(
    layout: &mut Layout,
    tracefs: &Path,
    category: &str,
    name: &str,
) -> Result<(), Error> {
    let f = Format::read(tracefs, category, name)?;
    let bad = |e: Error| Error::Tracepoint {
        tracepoint: format!("{category}:{name}"),
        error: Box::new(e),
    };
    match (category, name) {
        ("exceptions", "page_fault_user" | "page_fault_kernel") => {
            layout.fault_address = f.offset("address", 8).map_err(bad)?;
            layout.fault_ip = f.offset("ip", 8).map_err(bad)?;
            layout.fault_error_code = f.offset("error_code", 8).map_err(bad)?;
        }
        ("sched", "sched_switch") => {
            layout.switch_prev_state = f.offset("prev_state", 8).map_err(bad)?;
            layout.switch_next_pid = f.offset("next_pid", 4).map_err(bad)?;
        }
        ("sock", "inet_sock_set_state") => {
            layout.sock_skaddr = f.offset("skaddr", 8).map_err(bad)?;
            layout.sock_oldstate = f.offset("oldstate", 4).map_err(bad)?;
            layout.sock_newstate = f.offset("newstate", 4).map_err(bad)?;
            layout.sock_sport = f.offset("sport", 2).map_err(bad)?;
            layout.sock_dport = f.offset("dport", 2).map_err(bad)?;
            layout.sock_family = f.offset("family", 2).map_err(bad)?;
            layout.sock_protocol = f.offset("protocol", 2).map_err(bad)?;
            layout.sock_saddr = f.offset("saddr", 4).map_err(bad)?;
            layout.sock_daddr = f.offset("daddr", 4).map_err(bad)?;
            layout.sock_saddr_v6 = f.offset("saddr_v6", 16).map_err(bad)?;
            layout.sock_daddr_v6 = f.offset("daddr_v6", 16).map_err(bad)?;
        }
        ("sched", "sched_move_numa") => {
            layout.numa_tgid = f.offset("tgid", 4).map_err(bad)?;
            layout.numa_pid = f.offset("pid", 4).map_err(bad)?;
            layout.numa_src_cpu = f.offset("src_cpu", 4).map_err(bad)?;
            layout.numa_src_nid = f.offset("src_nid", 4).map_err(bad)?;
            layout.numa_dst_cpu = f.offset("dst_cpu", 4).map_err(bad)?;
            layout.numa_dst_nid = f.offset("dst_nid", 4).map_err(bad)?;
        }
        ("sched", "sched_stick_numa") => {
            // The move format (tgid, pid, ...) on older kernels, the swap format with the
            // task as src_ (and no dst_ task) since it became a pair event.
            let p = if f.fields.contains_key("src_tgid") {
                "src_"
            } else {
                ""
            };
            let at = |name: &str| f.offset(&format!("{p}{name}"), 4).map_err(bad);
            layout.stick_tgid = at("tgid")?;
            layout.stick_pid = at("pid")?;
            layout.stick_src_cpu = f.offset("src_cpu", 4).map_err(bad)?;
            layout.stick_src_nid = f.offset("src_nid", 4).map_err(bad)?;
            layout.stick_dst_cpu = f.offset("dst_cpu", 4).map_err(bad)?;
            layout.stick_dst_nid = f.offset("dst_nid", 4).map_err(bad)?;
        }
        ("sched", "sched_swap_numa") => {
            layout.swap_src_pid = f.offset("src_pid", 4).map_err(bad)?;
            layout.swap_dst_pid = f.offset("dst_pid", 4).map_err(bad)?;
            layout.swap_src_tgid = f.offset("src_tgid", 4).map_err(bad)?;
            layout.swap_src_cpu = f.offset("src_cpu", 4).map_err(bad)?;
            layout.swap_src_nid = f.offset("src_nid", 4).map_err(bad)?;
            layout.swap_dst_tgid = f.offset("dst_tgid", 4).map_err(bad)?;
            layout.swap_dst_cpu = f.offset("dst_cpu", 4).map_err(bad)?;
            layout.swap_dst_nid = f.offset("dst_nid", 4).map_err(bad)?;
        }
        ("migrate", "mm_migrate_pages") => {
            layout.mig_succeeded = f.offset("succeeded", 8).map_err(bad)?;
            layout.mig_failed = f.offset("failed", 8).map_err(bad)?;
            layout.mig_thp_succeeded = f.offset("thp_succeeded", 8).map_err(bad)?;
            layout.mig_thp_failed = f.offset("thp_failed", 8).map_err(bad)?;
            layout.mig_mode = f.offset("mode", 4).map_err(bad)?;
            layout.mig_reason = f.offset("reason", 4).map_err(bad)?;
        }
        ("task", "task_newtask") => {
            layout.newtask_pid = f.offset("pid", 4).map_err(bad)?;
            layout.newtask_clone_flags = f.offset("clone_flags", 8).map_err(bad)?;
        }
        // Tracepoints whose fields the programs do not read (sched_process_exec and _exit).
        _ => {}
    }
    Ok(())
}

/// The kernel's BTF, for structure offsets and for checking what tp_btf/fentry can attach to.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, Error> {
        // bar reads a few dozen of the kernel's tens of thousands of types: mapped and looked
        // up on demand, the BTF costs a tenth of the time and memory of parsing it all (which
        // was most of bar-probe's start-up). Kernels that cannot map it get it read whole.
        let path = crate::system::BTF_PATH;
        Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
            .or_else(|_| {
                std::fs::read(path)
                    .map_err(btf_rs::Error::from)
                    .and_then(|bytes| Btf::from_bytes(&bytes))
            })
            .map(|btf| Self { btf })
            .map_err(|e| Error::BtfUnreadable {
                path: crate::system::BTF_PATH,
                why: e.to_string(),
            })
    }

    /// The members of `struct name`. Each lookup by name scans every type, so callers look a
    /// structure up once and then find its members with [`Self::offset_in`].
    pub fn struct_members(&self, name: &str) -> Result<Vec<btf_rs::Member>, Error> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| Error::StructLookup {
                name: name.to_owned(),
                why: e.to_string(),
            })?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s.members),
                _ => None,
            })
            .ok_or_else(|| Error::NoStruct(name.to_owned()))
    }

    /// Byte offset of `member` among `members`, looking through anonymous unions and structs.
    pub fn offset_in(&self, members: &[btf_rs::Member], member: &str) -> Option<u32> {
        self.find_member(members, member, 0).map(|bits| bits / 8)
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous unions and structs.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, Error> {
        let members = self.struct_members(name)?;
        self.offset_in(&members, member)
            .ok_or_else(|| Error::NoMember {
                name: name.to_owned(),
                member: member.to_owned(),
            })
    }

    fn find_member(&self, members: &[btf_rs::Member], wanted: &str, base_bits: u32) -> Option<u32> {
        for m in members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let off = base_bits + m.bit_offset();
            if name == wanted {
                return Some(off);
            }
            if name.is_empty() {
                let inner = match self.btf.resolve_chained_type(m).ok()? {
                    Type::Struct(s) => s.members,
                    Type::Union(u) => u.members,
                    _ => continue,
                };
                if let Some(found) = self.find_member(&inner, wanted, off) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// Number of arguments a BTF-enabled tracepoint passes (from `btf_trace_<name>`, whose
    /// prototype has the context pointer first), or why it has none.
    pub fn tracepoint_args(&self, tp: &str) -> Result<usize, Error> {
        let name = format!("btf_trace_{tp}");
        let types = self
            .btf
            .resolve_types_by_name(&name)
            .map_err(|_| Error::NoBtfTracepoint(tp.to_owned()))?;
        let Some(Type::Typedef(td)) = types.first() else {
            return Err(Error::NoBtfTracepoint(tp.to_owned()));
        };
        let mut ty = self
            .btf
            .resolve_chained_type(td)
            .map_err(|e| Error::Btf(e.to_string()))?;
        loop {
            match ty {
                Type::Ptr(p) => {
                    ty = self
                        .btf
                        .resolve_chained_type(&p)
                        .map_err(|e| Error::Btf(e.to_string()))?;
                }
                Type::FuncProto(fp) => return Ok(fp.parameters.len().saturating_sub(1)),
                _ => return Err(Error::UnexpectedBtfType(name)),
            }
        }
    }

    /// Whether the kernel knows the BPF helper `name` (`BPF_FUNC_...`, a member of its
    /// `enum bpf_func_id`): what this kernel's programs may call, without guessing by version.
    pub fn has_helper(&self, name: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name("bpf_func_id") else {
            return false;
        };
        types.iter().any(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == name)),
            _ => false,
        })
    }

    /// Parameter names of a kernel function, from its BTF prototype; None when BTF has no
    /// function of that name (an fentry/fexit target must have one).
    pub fn function_params(&self, name: &str) -> Option<Vec<String>> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        let func = types.iter().find_map(|t| match t {
            Type::Func(f) => Some(f),
            _ => None,
        })?;
        let Ok(Type::FuncProto(proto)) = self.btf.resolve_chained_type(func) else {
            return None;
        };
        Some(
            proto
                .parameters
                .iter()
                .map(|p| self.btf.resolve_name(p).unwrap_or_default())
                .collect(),
        )
    }

    /// Value of `member` in `enum name`.
    pub fn enum_value(&self, name: &str, member: &str) -> Result<u32, Error> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| Error::NoEnum(name.to_owned()))?;
        let e = types
            .iter()
            .find_map(|t| match t {
                Type::Enum(e) => Some(e),
                _ => None,
            })
            .ok_or_else(|| Error::NoEnum(name.to_owned()))?;
        e.members
            .iter()
            .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == member))
            .map(btf_rs::EnumMember::val)
            .ok_or_else(|| Error::NoEnumMember {
                name: name.to_owned(),
                member: member.to_owned(),
            })
    }

    /// Number of elements of the array `member` of `struct name`.
    fn array_len(&self, name: &str, member: &str) -> Result<usize, Error> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| Error::StructLookup {
                name: name.to_owned(),
                why: e.to_string(),
            })?;
        let st = types
            .iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| Error::NoStruct(name.to_owned()))?;
        let m = st
            .members
            .iter()
            .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == member))
            .ok_or_else(|| Error::NoMember {
                name: name.to_owned(),
                member: member.to_owned(),
            })?;
        match self.btf.resolve_chained_type(m) {
            Ok(Type::Array(a)) => Ok(a.len()),
            _ => Err(Error::NotArray {
                name: name.to_owned(),
                member: member.to_owned(),
            }),
        }
    }

    /// `NODES_SHIFT`, the width of the node field in `page->flags`. The kernel does not export
    /// it, but sizes `struct zonelist` by it: `_zonerefs[MAX_NUMNODES * MAX_NR_ZONES + 1]`,
    /// with `MAX_NUMNODES = 1 << NODES_SHIFT` and `MAX_NR_ZONES` the last `enum zone_type`.
    pub fn nodes_shift(&self) -> Result<u32, Error> {
        let refs = self.array_len("zonelist", "_zonerefs")?;
        let zones = self.enum_value("zone_type", "__MAX_NR_ZONES")? as usize;
        let nodes = refs.saturating_sub(1) / zones.max(1);
        if zones == 0 || !nodes.is_power_of_two() || nodes * zones + 1 != refs {
            return Err(Error::NodeCount { refs, zones });
        }
        Ok(nodes.trailing_zeros())
    }

    pub fn raw(&self) -> &Btf {
        &self.btf
    }
}

/// Fills the structure part of a layout from BTF. Each offset is independent: a member that is
/// missing leaves its offset unknown and only the programs that need it are refused.
pub fn fill_btf(layout: &mut Layout, btf: &KernelBtf) {
    let task = btf.struct_members("task_struct").unwrap_or_default();
    let sock = btf.struct_members("sock").unwrap_or_default();
    let common = btf.struct_members("sock_common").unwrap_or_default();
    let regs = btf.struct_members("pt_regs").unwrap_or_default();
    let page = btf.struct_members("page").unwrap_or_default();
    let migration = btf
        .struct_members("migration_target_control")
        .unwrap_or_default();
    let get = |s: &[btf_rs::Member], m: &str| btf.offset_in(s, m).unwrap_or(Layout::UNKNOWN);
    layout.task_pid = get(&task, "pid");
    layout.task_tgid = get(&task, "tgid");
    layout.sock_sk_err = get(&sock, "sk_err");
    // struct sock starts with struct sock_common, so its offsets are offsets in the socket.
    layout.skc_family = get(&common, "skc_family");
    layout.skc_daddr = get(&common, "skc_daddr");
    layout.skc_rcv_saddr = get(&common, "skc_rcv_saddr");
    layout.skc_dport = get(&common, "skc_dport");
    layout.skc_num = get(&common, "skc_num");
    layout.skc_v6_daddr = get(&common, "skc_v6_daddr");
    layout.skc_v6_rcv_saddr = get(&common, "skc_v6_rcv_saddr");
    layout.skc_state = get(&common, "skc_state");
    layout.pt_regs_ip = get(&regs, "ip");
    layout.pt_regs_bp = get(&regs, "bp");
    layout.pt_regs_cs = get(&regs, "cs");
    layout.pt_regs_sp = get(&regs, "sp");
    layout.task_state = get(&task, "__state");
    // The run-time sums sit in the task's scheduling entity, embedded in task_struct.
    let entity = btf.struct_members("sched_entity").unwrap_or_default();
    let in_entity = |m: &str| match (btf.offset_in(&task, "se"), btf.offset_in(&entity, m)) {
        (Some(se), Some(off)) => se + off,
        _ => Layout::UNKNOWN,
    };
    layout.task_sum_exec = in_entity("sum_exec_runtime");
    layout.task_prev_sum_exec = in_entity("prev_sum_exec_runtime");
    layout.page_flags = get(&page, "flags");
    layout.page_lru = get(&page, "lru");
    layout.migration_target_nid = get(&migration, "nid");
    layout.page_nid_bits = btf.nodes_shift().unwrap_or(Layout::UNKNOWN);
    let value = |e: &str, m: &str| btf.enum_value(e, m).unwrap_or(Layout::UNKNOWN);
    layout.mr_syscall = value("migrate_reason", "MR_SYSCALL");
    layout.mr_numa_misplaced = value("migrate_reason", "MR_NUMA_MISPLACED");
    layout.vm_fault_major = value("vm_fault_reason", "VM_FAULT_MAJOR");
    layout.vm_fault_retry = value("vm_fault_reason", "VM_FAULT_RETRY");
    layout.fault_flag_write = value("fault_flag", "FAULT_FLAG_WRITE");
    layout.fault_flag_user = value("fault_flag", "FAULT_FLAG_USER");
    layout.fault_flag_tried = value("fault_flag", "FAULT_FLAG_TRIED");
    layout.fault_flag_instruction = value("fault_flag", "FAULT_FLAG_INSTRUCTION");
}

/// Whether bar's programs can walk user stacks themselves (see `user_stack` in bar-ebpf): the
/// helpers that find a task's user registers, and where the registers are.
pub fn can_walk_user_stacks(layout: &Layout, btf: &KernelBtf) -> bool {
    [layout.pt_regs_ip, layout.pt_regs_bp, layout.pt_regs_cs]
        .iter()
        .all(|&off| off != Layout::UNKNOWN)
        && btf.has_helper("BPF_FUNC_get_current_task_btf")
        && btf.has_helper("BPF_FUNC_task_pt_regs")
        && btf.has_helper("BPF_FUNC_loop")
}

/// Whether the programs can walk user stacks with unwind tables, given the rest of their
/// configuration, or why not: they need their own walk and the stack pointer's place.
pub fn can_walk_with_tables(config: &bar_ebpf_common::Config) -> Result<(), Error> {
    if config.user_walk == 0 {
        return Err(Error::NoOwnWalk);
    }
    if config.layout.pt_regs_sp == Layout::UNKNOWN {
        return Err(Error::BtfLacks("pt_regs.sp"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
ID: 316
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;

print fmt: \"prev_comm=%s\"";

    /// The running kernel's BTF, where the machine has one (the build and test machines do).
    fn host_btf() -> Option<KernelBtf> {
        crate::system::btf_present()
            .then(KernelBtf::load)
            .and_then(Result::ok)
    }

    #[test]
    fn reads_function_prototypes_enums_and_the_node_width_from_btf() {
        let Some(btf) = host_btf() else {
            eprintln!("skipped: this machine has no kernel BTF");
            return;
        };
        let params = btf
            .function_params("handle_mm_fault")
            .expect("handle_mm_fault");
        assert_eq!(&params[..4], ["vma", "address", "flags", "regs"]);
        assert!(btf.function_params("no_such_function_here").is_none());
        for (e, m) in [
            ("fault_flag", "FAULT_FLAG_USER"),
            ("fault_flag", "FAULT_FLAG_TRIED"),
            ("vm_fault_reason", "VM_FAULT_MAJOR"),
            ("vm_fault_reason", "VM_FAULT_RETRY"),
        ] {
            let v = btf.enum_value(e, m).unwrap();
            assert!(v.is_power_of_two(), "{e} {m} = {v} is a flag bit");
        }
        assert!(btf.enum_value("fault_flag", "NO_SUCH").is_err());
        // NODES_SHIFT is between 0 (no NUMA) and 10 (MAX_NUMNODES 1024) on every x86 config.
        let shift = btf.nodes_shift().unwrap();
        assert!(shift <= 10, "{shift}");
        let mut layout = Layout::unknown();
        fill_btf(&mut layout, &btf);
        assert_eq!(layout.page_nid_bits, shift);
        assert_ne!(layout.task_state, Layout::UNKNOWN);
        // Two u64 of struct sched_entity, one after the other, inside task_struct.
        assert_ne!(layout.task_prev_sum_exec, Layout::UNKNOWN);
        assert!(layout.task_prev_sum_exec > layout.task_sum_exec);
        assert_ne!(layout.migration_target_nid, Layout::UNKNOWN);
    }

    #[test]
    fn parses_fields_with_arrays_and_sizes() {
        let f = Format::parse(SCHED_SWITCH);
        assert_eq!(f.fields["prev_comm"], (8, 16));
        assert_eq!(f.offset("prev_state", 8).ok(), Some(32));
        assert_eq!(f.offset("next_pid", 4).ok(), Some(56));
        // The words users read in `info` and summary.json.
        assert_eq!(
            f.offset("next_pid", 8).unwrap_err().to_string(),
            "field next_pid has size 4, expected 8"
        );
        assert_eq!(
            f.offset("nope", 4).unwrap_err().to_string(),
            "field nope is missing"
        );
    }
}
