//! The walks' requests to the collector: read a process's memory map again (code in a mapping
//! whose tables are not loaded), fault a page of a stack back in (a word the walk could not
//! read). Each is rate-limited per process, and costs one record.

use aya_ebpf::{EbpfContext, helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap};
use bar_ebpf_common::{Header, StackPageRecord, kind};

use super::EFAULT;
use crate::shared::{emit, now};

/// When a process last asked the collector to read its map again, by pid.
#[map]
static UNWIND_ASKED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// A process asks again at most this often: the collector needs one request to read its map.
const ASK_EVERY_NS: u64 = 200_000_000;

/// When a process last asked the collector to fault a page of its stack back in, by pid.
#[map]
static PAGE_ASKED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// A process asks for a stack page at most this often: each request brings one page back, and
/// a walk stops at the first it cannot read.
const ASK_PAGE_EVERY_NS: u64 = 5_000_000;

/// Asks the collector to read the memory map of process `pid` again, at most every
/// [`ASK_EVERY_NS`].
#[inline(always)]
pub(super) fn ask_for_tables<C: EbpfContext>(ctx: &C, pid_tgid: u64) {
    let pid = (pid_tgid >> 32) as u32;
    let t = now();
    if let Some(last) = UNWIND_ASKED.get_ptr_mut(pid) {
        // SAFETY: the value lives as long as the entry; a race only sends one more request.
        if t.wrapping_sub(unsafe { *last }) < ASK_EVERY_NS {
            return;
        }
        unsafe { *last = t };
    } else if UNWIND_ASKED.insert(pid, t, 0).is_err() {
        return;
    }
    let header = Header {
        ts_ns: t,
        kind: kind::UNWIND_MISS,
        pid,
        tid: pid_tgid as u32,
        user_stack: -EFAULT,
        kernel_stack: -EFAULT,
        _pad: 0,
    };
    emit(ctx, kind::UNWIND_MISS, &header);
}

/// Asks the collector to fault in the page of the current process's stack that holds `address`,
/// at most every [`ASK_PAGE_EVERY_NS`]: the programs cannot take a page fault, and a page that
/// NUMA balancing took away comes back only when something touches it.
#[inline(always)]
pub(super) fn ask_for_page<C: EbpfContext>(ctx: &C, address: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let t = now();
    if let Some(last) = PAGE_ASKED.get_ptr_mut(pid) {
        // SAFETY: the value lives as long as the entry; a race only sends one more request.
        if t.wrapping_sub(unsafe { *last }) < ASK_PAGE_EVERY_NS {
            return;
        }
        unsafe { *last = t };
    } else if PAGE_ASKED.insert(pid, t, 0).is_err() {
        return;
    }
    let record = StackPageRecord {
        header: Header {
            ts_ns: t,
            kind: kind::STACK_PAGE,
            pid,
            tid: pid_tgid as u32,
            user_stack: -EFAULT,
            kernel_stack: -EFAULT,
            _pad: 0,
        },
        address,
    };
    emit(ctx, kind::STACK_PAGE, &record);
}
