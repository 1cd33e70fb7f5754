//! The TCP workload: connects to a loopback listener, and to a closed port.

use std::{
    hint::black_box,
    net::{TcpListener, TcpStream},
};

use serde_json::{Value, json};

use super::WorkloadArgs;

#[inline(never)]
pub fn connect_to_listener(addr: std::net::SocketAddr) -> Option<TcpStream> {
    black_box(connect(addr))
}

#[inline(never)]
pub fn connect_to_closed_port(addr: std::net::SocketAddr) -> bool {
    black_box(connect(addr)).is_none()
}

#[inline(never)]
fn connect(addr: std::net::SocketAddr) -> Option<TcpStream> {
    TcpStream::connect(addr).ok()
}

/// Closes with a reset rather than a FIN, so the connection leaves no TIME_WAIT socket behind:
/// tens of thousands of them from earlier runs would slow later connects and, past
/// `tcp_max_tw_buckets`, change how the kernel closes.
fn close_with_reset(stream: TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and option value for the duration of the call.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// `--count` connects accepted and closed with a reset, then `--refused` to a closed port.
pub(super) fn run(args: &WorkloadArgs) -> anyhow::Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    // A port that was just bound and released is closed: connects get a reset.
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut ok = 0;
    for _ in 0..args.count {
        if let Some(stream) = connect_to_listener(addr) {
            ok += 1;
            // Accepted by this thread, one by one: a separate acceptor that falls
            // behind (a busy machine, a tracer) lets the backlog fill, and the kernel
            // then drops SYNs, which costs a 1 s retransmit each.
            drop(listener.accept());
            close_with_reset(stream);
        }
    }
    let mut refused = 0;
    for _ in 0..args.refused {
        refused += u64::from(connect_to_closed_port(closed));
    }
    Ok(
        json!({"workload": "tcp", "listener": addr.to_string(), "closed": closed.to_string(),
                   "established": ok, "refused": refused}),
    )
}
