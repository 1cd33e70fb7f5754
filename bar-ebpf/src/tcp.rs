//! TCP connect attempts, correlated by socket. When a socket enters SYN_SENT the connecting
//! thread is `current` (inside connect()): its stacks and the time are kept under the socket's
//! address. When the socket leaves SYN_SENT (established, or closed by a reset, a timeout or the
//! application) the attempt is reported with its latency and, for a failure, the socket error
//! the kernel set before closing it (ECONNREFUSED for a reset, ETIMEDOUT for a timeout).
//!
//! Attach points: `tcp_v4_connect`/`tcp_v6_connect` and `tcp_set_state` by fentry or kprobe
//! (as libbpf-tools' tcpconnlat: the attempt starts when connect() enters the protocol, and the
//! stacks are the caller's), then `tp_btf/inet_sock_set_state` (reads the socket through BTF
//! offsets), then the classic `sock:inet_sock_set_state` tracepoint (fields from tracefs). The
//! tracepoint fires inside `tcp_set_state`, so all of them see the same transitions; an
//! attempt is reported only once its socket entered SYN_SENT, whichever the start point.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fentry, kprobe, map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use bar_ebpf_common::{
    Header, Layout, TCP_ERROR_UNKNOWN, TCP_MAP_ENTRIES, THREAD_MAP_ENTRIES, TcpRecord, TcpStart,
    counter, kind,
};

use crate::shared::{bump, emit, now, null_mode, offset, read, stacks, traced_current};

#[map]
static TCP_START: HashMap<u64, TcpStart> = HashMap::with_max_entries(TCP_MAP_ENTRIES, 0);

/// Connect attempts between the entry of `tcp_v*_connect` and SYN_SENT, by thread: the socket
/// enters SYN_SENT inside that call, on the same thread. An attempt that fails before (no
/// route, bad address) never gets there and its entry is overwritten by the thread's next
/// connect, or evicted.
#[map]
static TCP_CONNECTING: LruHashMap<u32, TcpStart> =
    LruHashMap::with_max_entries(THREAD_MAP_ENTRIES, 0);

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Addresses and ports of the socket at the end of the attempt.
struct Endpoints {
    family: u16,
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

/// The start of an attempt by the current thread, with its stacks.
#[inline(always)]
fn start_now<C: StackIdContext>(ctx: &C, pid_tgid: u64) -> TcpStart {
    let (user_stack, kernel_stack) = stacks(ctx);
    TcpStart {
        ts_ns: now(),
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        user_stack,
        kernel_stack,
    }
}

/// A state change of socket `sk` from `old` to `new`. `started` gives the start of the attempt
/// when the attach point took it earlier than SYN_SENT (at connect entry).
#[inline(always)]
fn transition<C: StackIdContext>(
    ctx: &C,
    sk: u64,
    old: i32,
    new: i32,
    started: impl FnOnce(u64) -> Option<TcpStart>,
    endpoints: impl FnOnce() -> Endpoints,
) {
    if new == TCP_SYN_SENT {
        let pid_tgid = bpf_get_current_pid_tgid();
        if !traced_current(pid_tgid) || null_mode() {
            return;
        }
        let start = started(pid_tgid).unwrap_or_else(|| start_now(ctx, pid_tgid));
        if TCP_START.insert(sk, start, 0).is_err() {
            bump(counter::TCP_MAP_FULL);
        }
        return;
    }
    if old != TCP_SYN_SENT {
        return;
    }
    // SAFETY: copied out before removal.
    let Some(start) = (unsafe { TCP_START.get(sk) }).copied() else {
        return;
    };
    let _ = TCP_START.remove(sk);
    let ts = now();
    let error = if new == TCP_ESTABLISHED {
        0
    } else {
        let off = offset!(sock_sk_err);
        if off == Layout::UNKNOWN as usize {
            TCP_ERROR_UNKNOWN
        } else {
            read::<i32>(sk as *const c_void, off).unwrap_or(TCP_ERROR_UNKNOWN)
        }
    };
    let ep = endpoints();
    let record = TcpRecord {
        header: Header {
            ts_ns: ts,
            kind: kind::TCP,
            pid: start.pid,
            tid: start.tid,
            user_stack: start.user_stack,
            kernel_stack: start.kernel_stack,
            _pad: 0,
        },
        latency_ns: ts.saturating_sub(start.ts_ns),
        saddr: ep.saddr,
        daddr: ep.daddr,
        family: ep.family,
        sport: ep.sport,
        dport: ep.dport,
        _pad: 0,
        error,
        _pad2: 0,
    };
    emit(ctx, kind::TCP, &record);
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn bar_sock_state_tp(ctx: TracePointContext) -> u32 {
    let base = ctx.as_ptr().cast_const();
    if read::<u16>(base, offset!(sock_protocol)) != Some(IPPROTO_TCP) {
        return 0;
    }
    let sk = read::<u64>(base, offset!(sock_skaddr)).unwrap_or(0);
    let old = read::<i32>(base, offset!(sock_oldstate)).unwrap_or(0);
    let new = read::<i32>(base, offset!(sock_newstate)).unwrap_or(0);
    transition(
        &ctx,
        sk,
        old,
        new,
        |_| None,
        || {
            let family = read::<u16>(base, offset!(sock_family)).unwrap_or(0);
            let mut ep = Endpoints {
                family,
                sport: read::<u16>(base, offset!(sock_sport)).unwrap_or(0),
                dport: read::<u16>(base, offset!(sock_dport)).unwrap_or(0),
                saddr: [0; 16],
                daddr: [0; 16],
            };
            if family == AF_INET6 {
                ep.saddr = read(base, offset!(sock_saddr_v6)).unwrap_or([0; 16]);
                ep.daddr = read(base, offset!(sock_daddr_v6)).unwrap_or([0; 16]);
            } else {
                ep.saddr = ipv4(read(base, offset!(sock_saddr)).unwrap_or([0; 4]));
                ep.daddr = ipv4(read(base, offset!(sock_daddr)).unwrap_or([0; 4]));
            }
            ep
        },
    );
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn bar_sock_state_btf(ctx: BtfTracePointContext) -> u32 {
    // inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)
    let sk: *const c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // Only TCP sockets take SYN_SENT; other protocols never match the states below.
    transition(&ctx, sk as u64, old, new, |_| None, || sock_endpoints(sk));
    0
}

/// An IPv4 address in the first 4 bytes of 16, the rest zero, as one 16-byte value: copied
/// into a zeroed array, the 12 bytes left zero became a call of `memset`, a loop over bytes on
/// the BPF target.
#[inline(always)]
fn ipv4(addr: [u8; 4]) -> [u8; 16] {
    u128::from(u32::from_le_bytes(addr)).to_le_bytes()
}

/// Endpoints of a socket, read through BTF offsets of `struct sock_common`.
#[inline(always)]
fn sock_endpoints(sk: *const c_void) -> Endpoints {
    let family = read::<u16>(sk, offset!(skc_family)).unwrap_or(0);
    let mut ep = Endpoints {
        family,
        // skc_num is in host order, skc_dport in network order.
        sport: read::<u16>(sk, offset!(skc_num)).unwrap_or(0),
        dport: u16::from_be(read::<u16>(sk, offset!(skc_dport)).unwrap_or(0)),
        saddr: [0; 16],
        daddr: [0; 16],
    };
    if family == AF_INET6 {
        ep.saddr = read(sk, offset!(skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        ep.daddr = read(sk, offset!(skc_v6_daddr)).unwrap_or([0; 16]);
    } else if family == AF_INET {
        ep.saddr = ipv4(read(sk, offset!(skc_rcv_saddr)).unwrap_or([0; 4]));
        ep.daddr = ipv4(read(sk, offset!(skc_daddr)).unwrap_or([0; 4]));
    }
    ep
}

/// Entry of `tcp_v4_connect`/`tcp_v6_connect(struct sock *sk, ...)`: the caller is current.
/// A v4-mapped connect on an IPv6 socket enters both; the inner, later start wins, a few
/// microseconds apart.
#[inline(always)]
fn connect_entry<C: StackIdContext>(ctx: &C) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced_current(pid_tgid) || null_mode() {
        return;
    }
    let start = start_now(ctx, pid_tgid);
    if TCP_CONNECTING.insert(pid_tgid as u32, start, 0).is_err() {
        bump(counter::TCP_MAP_FULL);
    }
}

/// Entry of `tcp_set_state(struct sock *sk, int state)`: the old state is still in the socket.
#[inline(always)]
fn set_state<C: StackIdContext>(ctx: &C, sk: *const c_void, new: i32) {
    let old = i32::from(read::<u8>(sk, offset!(skc_state)).unwrap_or(0));
    let started = |pid_tgid: u64| {
        let tid = pid_tgid as u32;
        // SAFETY: copied out before removal.
        let start = unsafe { TCP_CONNECTING.get(tid) }.copied();
        if start.is_some() {
            let _ = TCP_CONNECTING.remove(tid);
        }
        start
    };
    transition(ctx, sk as u64, old, new, started, || sock_endpoints(sk));
}

#[fentry]
pub fn bar_tcp_v4_connect_fentry(ctx: FEntryContext) -> u32 {
    connect_entry(&ctx);
    0
}

#[fentry]
pub fn bar_tcp_v6_connect_fentry(ctx: FEntryContext) -> u32 {
    connect_entry(&ctx);
    0
}

#[fentry]
pub fn bar_tcp_set_state_fentry(ctx: FEntryContext) -> u32 {
    set_state(&ctx, ctx.arg(0), ctx.arg(1));
    0
}

/// Attached to both `tcp_v4_connect` and `tcp_v6_connect`.
#[kprobe]
pub fn bar_tcp_connect_kprobe(ctx: ProbeContext) -> u32 {
    connect_entry(&ctx);
    0
}

#[kprobe]
pub fn bar_tcp_set_state_kprobe(ctx: ProbeContext) -> u32 {
    let sk: *const c_void = ctx.arg(0).unwrap_or(core::ptr::null());
    set_state(&ctx, sk, ctx.arg(1).unwrap_or(0));
    0
}
