//! One sender thread per backend, behind a bounded queue of intervals: the aggregator offers
//! an interval and goes on at once; a full queue drops it (counted). The thread sends each
//! interval's requests with a timeout, tries again after network errors and the statuses that
//! mean "later" (429, 502, 503, 504, as OTLP/HTTP asks), with backoff, and counts what
//! happened.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;

use super::{Auth, Endpoint, Identity, Interval, Kind, QUEUE_INTERVALS, otlp, pyroscope};
use crate::capture::proto;

/// Tries per request: the first and two more.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Bytes of an error response kept for the message.
const ERROR_BODY: u64 = 4096;

/// Where and how one backend is reached.
#[derive(Debug, Clone)]
pub struct Backend {
    pub kind: Kind,
    pub endpoint: Endpoint,
    pub auth: Auth,
    pub timeout: Duration,
    pub every: Duration,
    pub identity: Arc<Identity>,
}

/// One HTTP request of an interval.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    pub content_type: String,
    pub content_encoding: Option<&'static str>,
    pub body: Vec<u8>,
    /// What it holds, for error messages (e.g. "cpu").
    pub what: String,
}

/// Intervals per outcome.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Taken into the queue.
    pub queued: u64,
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    pub last_error: String,
}

struct Shared {
    counts: Mutex<Counts>,
    /// Set when the recording stops waiting: the thread stops retrying and sending.
    abandon: AtomicBool,
}

impl Shared {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic in the sender leaves the counts as they were; they are still the truth.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The aggregator's handle on a backend's queue and thread.
pub struct Sender {
    tx: Option<SyncSender<Arc<Interval>>>,
    shared: Arc<Shared>,
    /// Disconnected when the thread has ended.
    done: Receiver<()>,
    kind: Kind,
    url: String,
    every: Duration,
    name: String,
}

impl Sender {
    pub fn start(backend: Backend) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Arc<Interval>>(QUEUE_INTERVALS);
        let (done_tx, done) = mpsc::channel::<()>();
        let shared = Arc::new(Shared {
            counts: Mutex::new(Counts::default()),
            abandon: AtomicBool::new(false),
        });
        let sender = Self {
            tx: Some(tx),
            shared: shared.clone(),
            done,
            kind: backend.kind,
            url: backend.endpoint.url.clone(),
            every: backend.every,
            name: backend.identity.app_name.clone(),
        };
        std::thread::Builder::new()
            .name(format!("bar-push-{}", backend.kind.name()))
            .spawn(move || {
                let _done = done_tx;
                run(&backend, &rx, &shared);
            })?;
        Ok(sender)
    }

    /// Queues an interval, or drops it when the queue is full.
    pub fn offer(&mut self, interval: Arc<Interval>) {
        let outcome = match &self.tx {
            Some(tx) => tx.try_send(interval),
            None => return,
        };
        let mut c = self.shared.counts();
        match outcome {
            Ok(()) => c.queued += 1,
            Err(TrySendError::Full(_)) => c.dropped += 1,
            Err(TrySendError::Disconnected(_)) => {
                c.dropped += 1;
                c.last_error = "the sender thread stopped".into();
            }
        }
    }

    pub fn counts(&self) -> Counts {
        self.shared.counts().clone()
    }

    /// Closes the queue and waits until `deadline` for the thread to send what it holds; what
    /// it has not sent by then is dropped.
    pub fn finish(mut self, deadline: Instant) -> proto::Push {
        self.tx = None;
        let left = deadline.saturating_duration_since(Instant::now());
        let ended = !matches!(self.done.recv_timeout(left), Err(RecvTimeoutError::Timeout));
        if !ended {
            self.shared.abandon.store(true, Ordering::SeqCst);
        }
        let mut c = self.counts();
        let unsent = c.queued.saturating_sub(c.sent + c.failed);
        if unsent > 0 {
            c.dropped += unsent;
            if c.last_error.is_empty() {
                c.last_error = format!(
                    "{unsent} interval{} not sent before the recording ended",
                    if unsent == 1 { " was" } else { "s were" }
                );
            }
        }
        proto::Push {
            backend: self.kind.name().into(),
            url: self.url,
            every_ms: self.every.as_millis() as u64,
            sent: c.sent,
            failed: c.failed,
            dropped: c.dropped,
            last_error: c.last_error,
            name: self.name,
        }
    }
}

fn run(backend: &Backend, rx: &Receiver<Arc<Interval>>, shared: &Shared) {
    let agent = agent(backend);
    while let Ok(interval) = rx.recv() {
        if shared.abandon.load(Ordering::SeqCst) {
            return;
        }
        let requests = match backend.kind {
            Kind::Pyroscope => pyroscope::requests(&interval, &backend.identity, &backend.endpoint),
            Kind::Otlp => vec![otlp::request(
                &interval,
                &backend.identity,
                &backend.endpoint,
            )],
        };
        let outcome = requests
            .iter()
            .try_for_each(|r| deliver(&agent, backend, r, shared));
        let mut c = shared.counts();
        match outcome {
            Ok(()) => c.sent += 1,
            Err(e) => {
                c.failed += 1;
                c.last_error = e;
            }
        }
    }
}

/// The HTTP client: a timeout on the whole exchange, no redirects (a redirected POST would
/// lose its body), TLS with the system's trust store (where a fleet's own CA is).
fn agent(backend: &Backend) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(backend.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(format!("bar/{}", backend.identity.version))
        .tls_config(tls)
        .build()
        .into()
}

/// Why a try failed, and whether (and after how long) to try again.
struct Failure {
    msg: String,
    retry: Option<Option<Duration>>,
}

/// Sends one request, trying again while that may help. Every failed try is the last error
/// until another comes, so that a backend that hangs says so even before its interval fails.
fn deliver(
    agent: &ureq::Agent,
    backend: &Backend,
    req: &Request,
    shared: &Shared,
) -> Result<(), String> {
    let abandon = &shared.abandon;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let f = match send_once(agent, backend, req) {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        shared.counts().last_error = f.msg.clone();
        let Some(after) = f.retry else {
            return Err(f.msg);
        };
        if attempt == ATTEMPTS || abandon.load(Ordering::SeqCst) {
            return Err(f.msg);
        }
        sleep_unless(after.unwrap_or(backoff).min(MAX_BACKOFF), abandon);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    Ok(())
}

fn sleep_unless(d: Duration, abandon: &AtomicBool) {
    let end = Instant::now() + d;
    while !abandon.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn send_once(agent: &ureq::Agent, backend: &Backend, req: &Request) -> Result<(), Failure> {
    let mut rb = agent
        .post(&req.url)
        .header("Content-Type", &req.content_type);
    if let Some(enc) = req.content_encoding {
        rb = rb.header("Content-Encoding", enc);
    }
    let basic = backend
        .endpoint
        .basic_auth
        .as_ref()
        .or(backend.auth.basic.as_ref());
    if let Some((user, pass)) = basic {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", pass.expose()));
        rb = rb.header("Authorization", format!("Basic {token}"));
    } else if let Some(token) = &backend.auth.bearer {
        rb = rb.header("Authorization", format!("Bearer {}", token.expose()));
    }
    if let Some(tenant) = &backend.auth.tenant {
        rb = rb.header("X-Scope-OrgID", tenant);
    }
    let what = &req.what;
    // Where, without the query (Pyroscope's holds the labels and times).
    let url = req.url.split('?').next().unwrap_or_default();
    let mut resp = match rb.send(&req.body[..]) {
        Ok(r) => r,
        Err(e) => {
            return Err(Failure {
                msg: format!("{what}: {url}: {}", describe(&e, backend.timeout)),
                retry: Some(None),
            });
        }
    };
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp
        .body_mut()
        .with_config()
        .limit(ERROR_BODY)
        .read_to_string()
        .unwrap_or_default();
    let text: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    Err(Failure {
        msg: format!("{what}: {url} answered HTTP {status} {}", text.trim())
            .trim_end()
            .to_owned(),
        retry: matches!(status, 429 | 502 | 503 | 504).then_some(retry_after),
    })
}

/// A network error in a few words, without anything secret (ureq's messages carry no
/// headers; the URL shown is the redacted one).
fn describe(e: &ureq::Error, timeout: Duration) -> String {
    match e {
        ureq::Error::Timeout(_) => {
            format!("no answer within {}", humantime::format_duration(timeout))
        }
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::push::{Auth, Endpoint, Identity};

    fn backend(url: &str, timeout: Duration) -> Backend {
        Backend {
            kind: Kind::Otlp,
            endpoint: Endpoint::parse(url).unwrap(),
            auth: Auth::default(),
            timeout,
            every: Duration::from_secs(1),
            identity: Arc::new(Identity {
                app_name: "app".into(),
                hostname: "h".into(),
                version: "0".into(),
                target: None,
                frequency: 99,
            }),
        }
    }

    fn interval() -> Arc<Interval> {
        Arc::new(Interval {
            start_ns: 1,
            end_ns: 2,
            profiles: Vec::new(),
            processes: BTreeMap::new(),
        })
    }

    /// A backend that takes connections and never answers: the queue fills, what does not fit
    /// is dropped at once, and what is left at the end is dropped too.
    #[test]
    fn a_full_queue_drops_and_the_end_does_not_wait_past_its_deadline() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let mut s = Sender::start(backend(&url, Duration::from_secs(30))).unwrap();
        let offered = QUEUE_INTERVALS as u64 + 4;
        for _ in 0..offered {
            s.offer(interval());
        }
        let c = s.counts();
        assert_eq!(c.queued + c.dropped, offered);
        assert!(c.dropped >= 3, "{c:?}");
        let t0 = Instant::now();
        let push = s.finish(Instant::now() + Duration::from_millis(300));
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "waited {:?}",
            t0.elapsed()
        );
        assert_eq!((push.sent, push.failed, push.dropped), (0, 0, offered));
        assert!(push.last_error.contains("not sent"), "{}", push.last_error);
        drop(silent);
    }

    #[test]
    fn refused_connections_are_tried_again_then_fail() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let mut s = Sender::start(backend(&url, Duration::from_secs(1))).unwrap();
        s.offer(interval());
        let push = s.finish(Instant::now() + Duration::from_secs(10));
        assert_eq!((push.sent, push.failed, push.dropped), (0, 1, 0));
        assert!(push.last_error.contains("refused"), "{}", push.last_error);
        assert!(push.last_error.contains("/v1development/profiles"));
    }
}
