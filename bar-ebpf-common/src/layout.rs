//! Byte offsets of kernel records and structures, which the loader finds at run time (tracefs
//! formats, BTF) and the programs read their fields with.

/// Declares [`Layout`], every field a `u32`, and [`Layout::unknown`] with each of them
/// unknown, from one list of the fields.
macro_rules! layout {
    ($(#[$attr:meta])* pub struct Layout {
        $($(#[$field_attr:meta])* pub $field:ident: u32,)*
    }) => {
        $(#[$attr])*
        pub struct Layout {
            $($(#[$field_attr])* pub $field: u32,)*
        }

        impl Layout {
            /// Marks an offset the loader did not find.
            pub const UNKNOWN: u32 = u32::MAX;

            /// A layout with every offset unknown.
            pub const fn unknown() -> Self {
                Self {
                    $($field: Self::UNKNOWN,)*
                }
            }
        }
    };
}

layout! {
    /// Byte offsets the programs cannot know at compile time: fields of classic tracepoint records
    /// (read from tracefs `format` files) and of kernel structures (read from BTF). The loader fills
    /// what the chosen attach points need; a field that is not known stays [`Layout::UNKNOWN`].
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Layout {
        // exceptions:page_fault_{user,kernel}
        pub fault_address: u32,
        pub fault_ip: u32,
        pub fault_error_code: u32,
        // sched:sched_switch
        pub switch_prev_state: u32,
        pub switch_next_pid: u32,
        // sock:inet_sock_set_state
        pub sock_skaddr: u32,
        pub sock_oldstate: u32,
        pub sock_newstate: u32,
        pub sock_sport: u32,
        pub sock_dport: u32,
        pub sock_family: u32,
        pub sock_protocol: u32,
        pub sock_saddr: u32,
        pub sock_daddr: u32,
        pub sock_saddr_v6: u32,
        pub sock_daddr_v6: u32,
        // sched:sched_move_numa
        pub numa_tgid: u32,
        pub numa_pid: u32,
        pub numa_src_cpu: u32,
        pub numa_src_nid: u32,
        pub numa_dst_cpu: u32,
        pub numa_dst_nid: u32,
        // sched:sched_swap_numa
        pub swap_src_pid: u32,
        pub swap_dst_pid: u32,
        pub swap_src_tgid: u32,
        pub swap_src_cpu: u32,
        pub swap_src_nid: u32,
        pub swap_dst_tgid: u32,
        pub swap_dst_cpu: u32,
        pub swap_dst_nid: u32,
        // sched:sched_stick_numa: the task's own fields (pid, tgid, cpu, nid) and where it did not
        // go; older kernels give it the move format, newer ones the swap format's src_/dst_.
        pub stick_tgid: u32,
        pub stick_pid: u32,
        pub stick_src_cpu: u32,
        pub stick_src_nid: u32,
        pub stick_dst_cpu: u32,
        pub stick_dst_nid: u32,
        // migrate:mm_migrate_pages
        pub mig_succeeded: u32,
        pub mig_failed: u32,
        pub mig_thp_succeeded: u32,
        pub mig_thp_failed: u32,
        pub mig_mode: u32,
        pub mig_reason: u32,
        // Kernel structures (BTF)
        pub task_pid: u32,
        pub task_tgid: u32,
        pub sock_sk_err: u32,
        pub skc_family: u32,
        pub skc_daddr: u32,
        pub skc_rcv_saddr: u32,
        pub skc_dport: u32,
        pub skc_num: u32,
        pub skc_v6_daddr: u32,
        pub skc_v6_rcv_saddr: u32,
        pub skc_state: u32,
        pub pt_regs_ip: u32,
        pub pt_regs_bp: u32,
        pub pt_regs_cs: u32,
        pub task_state: u32,
        pub page_flags: u32,
        pub page_lru: u32,
        pub migration_target_nid: u32,
        /// Width of the node field at the top of `page->flags` (`NODES_SHIFT`), derived from BTF.
        pub page_nid_bits: u32,
        // Values of kernel enums the programs test (BTF), not offsets.
        pub mr_syscall: u32,
        pub mr_numa_misplaced: u32,
        pub vm_fault_major: u32,
        pub vm_fault_retry: u32,
        pub fault_flag_write: u32,
        pub fault_flag_user: u32,
        pub fault_flag_tried: u32,
        pub fault_flag_instruction: u32,
        /// `task:task_newtask`: the new task's id and its clone flags.
        pub newtask_pid: u32,
        pub newtask_clone_flags: u32,
        pub pt_regs_sp: u32,
        /// `task_struct.se.sum_exec_runtime` and `.prev_sum_exec_runtime` (its value when the task
        /// was last put on a CPU): how long a running task has run since it came back.
        pub task_sum_exec: u32,
        pub task_prev_sum_exec: u32,
    }
}
