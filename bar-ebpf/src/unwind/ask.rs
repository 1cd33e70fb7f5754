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

/// Asks the collector to read the memory map of the current process again, at most every
/// [`ASK_EVERY_NS`].
#[inline(always)]
pub(super) fn ask_for_tables<C: EbpfContext>(ctx: &C) {
    if let Some(header) = due(&UNWIND_ASKED, ASK_EVERY_NS, kind::UNWIND_MISS) {
        emit(ctx, kind::UNWIND_MISS, &header);
    }
}

/// Asks the collector to fault in the page of the current process's stack that holds `address`,
/// at most every [`ASK_PAGE_EVERY_NS`]: the programs cannot take a page fault, and a page that
/// NUMA balancing took away comes back only when something touches it.
#[inline(always)]
pub(super) fn ask_for_page<C: EbpfContext>(ctx: &C, address: u64) {
    if let Some(header) = due(&PAGE_ASKED, ASK_PAGE_EVERY_NS, kind::STACK_PAGE) {
        emit(ctx, kind::STACK_PAGE, &StackPageRecord { header, address });
    }
}

/// The header of a request of `kind` from the current process, if it last asked (in `asked`)
/// at least `every` nanoseconds ago, or never.
#[inline(always)]
fn due(asked: &LruHashMap<u32, u64>, every: u64, kind: u32) -> Option<Header> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    let t = now();
    if let Some(last) = asked.get_ptr_mut(pid) {
        // SAFETY: the value lives as long as the entry; a race only sends one more request.
        if t.wrapping_sub(unsafe { *last }) < every {
            return None;
        }
        unsafe { *last = t };
    } else if asked.insert(pid, t, 0).is_err() {
        return None;
    }
    Some(Header {
        ts_ns: t,
        kind,
        pid,
        tid: pid_tgid as u32,
        user_stack: -EFAULT,
        kernel_stack: -EFAULT,
        _pad: 0,
    })
}
