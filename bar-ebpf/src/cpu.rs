//! On-CPU sampling: a perf_event program on the software cpu-clock event, opened on every CPU
//! at the requested frequency. The record is the header alone: who ran, and where.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::perf_event, programs::PerfEventContext};
use bar_ebpf_common::kind;

use crate::shared::{current_header, emit, null_mode, traced_current};

#[perf_event]
pub fn bar_cpu(ctx: PerfEventContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() {
        return 0;
    }
    let header = current_header(&ctx, kind::CPU, pid_tgid);
    emit(&ctx, kind::CPU, &header);
    0
}
