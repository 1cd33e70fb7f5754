//! Process lifecycle the collector needs to symbolize correctly: an exec replaces a process's
//! memory map and name, so stacks recorded after it must be resolved against the new program.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use bar_ebpf_common::{Header, kind};

use crate::shared::{emit, now, traced_current};

/// `sched:sched_process_exec` runs in the new program's context once the exec succeeded.
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn bar_exec_tp(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) {
        return 0;
    }
    // No stacks: the header only marks the time of the exec (-14 is EFAULT, "no stack").
    let header = Header {
        ts_ns: now(),
        kind: kind::EXEC,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        user_stack: -14,
        kernel_stack: -14,
        _pad: 0,
    };
    emit(&ctx, kind::EXEC, &header);
    0
}
