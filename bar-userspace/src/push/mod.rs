//! Push: a live recording's profile, interval by interval, to the engines fleets run
//! (Pyroscope's ingest API, an OpenTelemetry Collector's OTLP profiles receiver). The
//! aggregator feeds every block it writes to the capture into a [`Pusher`] too, so an interval's
//! profile holds the frames the capture got; every `--push-every` the pusher cuts an interval
//! into pprof profiles (the builder of `export`) and offers it to one sender thread per backend
//! ([`queue`]), which never makes the recording wait.

pub mod otlp;
pub mod pyroscope;
pub mod queue;

use bar_ebpf_common::Family;
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    analyze::{Profile, phases},
    capture::{Body, proto},
    export::{pprof::Samples, pprof_proto as pb},
};

/// Intervals each backend's queue holds; a backend slower than the recording loses the
/// intervals that do not fit, and counts them as dropped.
pub const QUEUE_INTERVALS: usize = 8;

/// Environment variables read for credentials, so that they stay out of the command line
/// (which the capture keeps).
pub const ENV_BASIC_AUTH: &str = "BAR_PUSH_BASIC_AUTH";
pub const ENV_BEARER_TOKEN: &str = "BAR_PUSH_BEARER_TOKEN";
pub const ENV_TENANT: &str = "BAR_PUSH_TENANT";

/// Flags of `record`, `attach` and `run` for pushing profiles while recording.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PushArgs {
    /// Push every interval's profiles to this Pyroscope server (or Grafana Alloy's
    /// pyroscope.receive_http), e.g. http://pyroscope:4040.
    #[arg(long, value_name = "URL", value_parser = EndpointParser)]
    pub pyroscope: Option<Endpoint>,
    /// Push every interval's profiles as OTLP over HTTP to an OpenTelemetry Collector, e.g.
    /// http://collector:4318 (the path /v1development/profiles is added).
    #[arg(long, value_name = "URL", value_parser = EndpointParser)]
    pub otlp: Option<Endpoint>,
    /// Length of a pushed interval.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_every)]
    pub push_every: Duration,
    /// Application (Pyroscope) and service (OTLP) name; default: the target's process name,
    /// or the host's name with --all or --cgroup.
    #[arg(long, value_name = "NAME", value_parser = parse_app_name)]
    pub app_name: Option<String>,
    /// How long one request may take before it counts as failed (and is tried again).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_timeout)]
    pub push_timeout: Duration,
    /// Tenant sent as X-Scope-OrgID (also from BAR_PUSH_TENANT).
    #[arg(long, value_name = "ID", env = ENV_TENANT, hide_env_values = true)]
    pub push_tenant: Option<String>,
    /// USER:PASSWORD for HTTP basic auth; prefer BAR_PUSH_BASIC_AUTH, which stays out of the
    /// command line the capture records.
    #[arg(long, value_name = "USER:PASSWORD", env = ENV_BASIC_AUTH, hide_env_values = true)]
    pub push_basic_auth: Option<Secret>,
    /// Bearer token; prefer BAR_PUSH_BEARER_TOKEN.
    #[arg(long, value_name = "TOKEN", env = ENV_BEARER_TOKEN, hide_env_values = true)]
    pub push_bearer_token: Option<Secret>,
}

/// Flags whose value is a secret: the command line kept in the capture has them redacted.
const SECRET_FLAGS: [&str; 2] = ["--push-basic-auth", "--push-bearer-token"];
const REDACTED: &str = "REDACTED";

/// A credential. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A backend's base URL. Credentials in it (`http://user:pass@host`) become basic auth and
/// are never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URL without credentials, and without a trailing slash.
    pub url: String,
    pub basic_auth: Option<(String, Secret)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("'{}' is not an http:// or https:// URL", redact_url(s));
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        if !matches!(scheme, "http" | "https") {
            return Err(bad());
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() || host.contains(char::is_whitespace) || path.contains(['?', '#']) {
            return Err(bad());
        }
        let basic_auth = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (percent_decode(user), Secret(percent_decode(pass)))
        });
        Ok(Self {
            url: format!("{scheme}://{host}{}", path.trim_end_matches('/')),
            basic_auth,
        })
    }
}

/// Parses `--pyroscope` and `--otlp` with an error that names the flag but shows the URL only
/// redacted (clap's own message would repeat the value, password and all).
#[derive(Debug, Clone, Copy)]
pub struct EndpointParser;

impl clap::builder::TypedValueParser for EndpointParser {
    type Value = Endpoint;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Endpoint, clap::Error> {
        let flag = arg.and_then(clap::Arg::get_long).unwrap_or("URL");
        let s = value.to_string_lossy();
        Endpoint::parse(&s).map_err(|e| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("--{flag}: {e}\n"),
            )
            .with_cmd(cmd)
        })
    }
}

/// `%XX` escapes of a URL's user information.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL as it may be shown: user information replaced.
fn redact_url(s: &str) -> String {
    match (s.split_once("://"), s.find('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{REDACTED}@{host}{}", &rest[end..]),
                None => s.to_owned(),
            }
        }
        _ => s.to_owned(),
    }
}

/// The command line as the capture keeps it: secret flag values and URL credentials replaced.
pub fn redact_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut secret_next = false;
    for a in args {
        if secret_next {
            out.push(REDACTED.to_owned());
            secret_next = false;
            continue;
        }
        if let Some(flag) = SECRET_FLAGS.iter().find(|f| a.starts_with(*f)) {
            if a.len() == flag.len() {
                secret_next = true;
                out.push(a);
            } else if a[flag.len()..].starts_with('=') {
                out.push(format!("{flag}={REDACTED}"));
            } else {
                out.push(a);
            }
            continue;
        }
        out.push(if a.contains("://") { redact_url(&a) } else { a });
    }
    out
}

fn parse_every(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err(format!(
            "--push-every {s} is too short: backends keep profiles per interval, use 1s or more"
        ));
    }
    Ok(d)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration: {e}"))?;
    if d < Duration::from_millis(100) {
        return Err(format!(
            "--push-timeout {s} is too short, use 100ms or more"
        ));
    }
    Ok(d)
}

/// Characters Pyroscope takes in an application name.
fn app_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

fn parse_app_name(s: &str) -> Result<String, String> {
    if s.is_empty() || !s.chars().all(app_name_char) {
        return Err(format!(
            "'{s}' is not an application name: use letters, digits and _ . - /"
        ));
    }
    Ok(s.to_owned())
}

/// A process name made into an application name (other characters become `_`).
fn app_name_of(s: &str) -> String {
    let name: String = s
        .chars()
        .map(|c| if app_name_char(c) { c } else { '_' })
        .collect();
    if name.is_empty() { "bar".into() } else { name }
}

/// One line on how pushing to a backend went, for the end of a recording.
pub fn describe(p: &proto::Push) -> String {
    let mut line = format!(
        "pushed to {} {}: {} intervals sent, {} failed, {} dropped",
        p.backend, p.url, p.sent, p.failed, p.dropped
    );
    if !p.last_error.is_empty() {
        line.push_str(&format!(" (last error: {})", p.last_error));
    }
    line
}

/// Which engine a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pyroscope,
    Otlp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pyroscope => "pyroscope",
            Self::Otlp => "otlp",
        }
    }
}

/// Credentials and headers every request carries.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub basic: Option<(String, Secret)>,
    pub bearer: Option<Secret>,
    pub tenant: Option<String>,
}

/// What a recording pushes, and where (the library's side of [`PushArgs`]).
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub backends: Vec<(Kind, Endpoint)>,
    pub every: Duration,
    pub timeout: Duration,
    pub app_name: Option<String>,
    pub auth: Auth,
}

impl PushArgs {
    /// `None` when nothing is to be pushed.
    pub fn options(&self) -> Option<PushOptions> {
        let backends: Vec<(Kind, Endpoint)> =
            [(Kind::Pyroscope, &self.pyroscope), (Kind::Otlp, &self.otlp)]
                .into_iter()
                .filter_map(|(k, e)| e.clone().map(|e| (k, e)))
                .collect();
        if backends.is_empty() {
            return None;
        }
        let basic = self.push_basic_auth.as_ref().map(|s| {
            let (user, pass) = s.expose().split_once(':').unwrap_or((s.expose(), ""));
            (user.to_owned(), Secret(pass.to_owned()))
        });
        Some(PushOptions {
            backends,
            every: self.push_every,
            timeout: self.push_timeout,
            app_name: self.app_name.clone(),
            auth: Auth {
                basic,
                bearer: self.push_bearer_token.clone(),
                tenant: self.push_tenant.clone().filter(|t| !t.is_empty()),
            },
        })
    }
}

/// What the engines are told about a process: the resource of its OTLP samples, and its
/// Pyroscope labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Base name of the executable (`/proc/PID/exe`), else the process name.
    pub exe: String,
    pub container: Option<String>,
}

impl ProcessInfo {
    pub fn read(pid: u32) -> Self {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| n.trim_end_matches(" (deleted)").to_owned())
            .unwrap_or_default();
        let container = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|c| container_id(&c));
        Self { exe, container }
    }
}

/// The container id in a `/proc/PID/cgroup` file: the 64 hex digits a runtime names a
/// container's cgroup after (`docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>`,
/// `libpod-<id>.scope`, or a bare `<id>` under `/docker/` or `/kubepods/...`).
pub fn container_id(cgroup_file: &str) -> Option<String> {
    cgroup_file.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(|part| {
            let part = part.strip_suffix(".scope").unwrap_or(part);
            let id = part.rsplit(['-', ':']).next()?;
            (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
        })
    })
}

/// One interval's profiles, shared by the backends' queues.
#[derive(Debug)]
pub struct Interval {
    /// Wall-clock nanoseconds since the epoch.
    pub start_ns: i128,
    pub end_ns: i128,
    pub profiles: Vec<(Family, pb::Profile)>,
    /// The processes of these profiles (pid -> what to say about it).
    pub processes: BTreeMap<u32, ProcessInfo>,
}

/// What stays the same for every interval of a recording.
#[derive(Debug, Clone)]
pub struct Identity {
    pub app_name: String,
    pub hostname: String,
    pub version: String,
    /// The traced process, with `attach`/`run --pid` (else every process is its own resource).
    pub target: Option<(u32, ProcessInfo)>,
    /// On-CPU sampling rate, Hz.
    pub frequency: u64,
}

impl Identity {
    pub fn of(meta: &proto::Meta, opts: &PushOptions) -> Self {
        let target = meta.target.as_ref().map(|t| {
            let mut info = ProcessInfo::read(t.pid);
            if info.exe.is_empty() {
                info.exe = t.exe.rsplit('/').next().unwrap_or_default().to_owned();
            }
            (t.pid, info)
        });
        let default_name = match &meta.target {
            Some(t) => &t.comm,
            None => &meta.hostname,
        };
        Self {
            app_name: opts
                .app_name
                .clone()
                .unwrap_or_else(|| app_name_of(default_name)),
            hostname: meta.hostname.clone(),
            version: meta.bar_version.clone(),
            target,
            frequency: meta.frequency,
        }
    }
}

/// The aggregator's side of pushing: names (as the capture has them), the samples of the
/// interval under way, and the queues of the backends.
pub struct Pusher {
    tables: Profile,
    current: BTreeMap<Family, Samples>,
    /// Monotonic start of the interval under way.
    started_ns: u64,
    every: Duration,
    next_cut: Instant,
    /// How long the senders get at the end to deliver what they hold.
    grace: Duration,
    processes: HashMap<u32, ProcessInfo>,
    senders: Vec<queue::Sender>,
}

impl Pusher {
    /// Starts one sender thread per backend; `meta` is the capture's.
    pub fn start(opts: &PushOptions, meta: &proto::Meta) -> std::io::Result<Self> {
        let identity = Arc::new(Identity::of(meta, opts));
        let senders = opts
            .backends
            .iter()
            .map(|(kind, endpoint)| {
                queue::Sender::start(queue::Backend {
                    kind: *kind,
                    endpoint: endpoint.clone(),
                    auth: opts.auth.clone(),
                    timeout: opts.timeout,
                    every: opts.every,
                    identity: identity.clone(),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut tables = Profile::default();
        tables.add_block(Body::Meta(meta.clone()));
        Ok(Self {
            tables,
            current: BTreeMap::new(),
            started_ns: meta.start_ns,
            every: opts.every,
            next_cut: Instant::now() + opts.every,
            grace: opts.timeout,
            processes: HashMap::new(),
            senders,
        })
    }

    /// A block the capture got: its names and markers are kept, its events summed into the
    /// interval under way.
    pub fn block(&mut self, body: &Body) {
        match body {
            Body::Events(evs) => {
                for ev in &evs.events {
                    let Some(view) = Family::of_kind(ev.kind) else {
                        continue;
                    };
                    let phase = self
                        .tables
                        .phase_at(ev.ts)
                        .map(|i| self.tables.phases[i].name.as_str());
                    self.current
                        .entry(view)
                        .or_insert_with(|| Samples::new(view, self.tables.meta.frequency))
                        .add(ev, phase);
                }
            }
            Body::Marker(m) => {
                self.tables.markers.push(m.clone());
                // The phase under way has no end yet.
                self.tables.phases = phases::from_markers(&self.tables.markers, u64::MAX);
            }
            Body::Processes(_) | Body::Frames(_) | Body::Stacks(_) | Body::Meta(_) => {
                self.tables.add_block(body.clone());
            }
            Body::Counters(_) | Body::Trailer(_) => {}
        }
    }

    /// What the engines will be told about a process seen for the first time (or that ran a
    /// new program).
    pub fn note_process(&mut self, pid: u32) {
        self.processes.insert(pid, ProcessInfo::read(pid));
    }

    /// Whether the interval under way is over.
    pub fn due(&self) -> bool {
        Instant::now() >= self.next_cut
    }

    /// Ends the interval under way at `now_ns` (monotonic) and offers its profiles to every
    /// backend. An interval without events is not sent.
    pub fn cut(&mut self, now_ns: u64) {
        self.next_cut = Instant::now() + self.every;
        let span = (self.started_ns, now_ns.max(self.started_ns));
        self.started_ns = span.1;
        let current = std::mem::take(&mut self.current);
        let mut pids: BTreeMap<u32, ProcessInfo> = BTreeMap::new();
        let profiles: Vec<(Family, pb::Profile)> = current
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(view, s)| {
                for pid in s.pids() {
                    let info = self.processes.get(&pid).cloned().unwrap_or_default();
                    pids.insert(pid, info);
                }
                (view, s.build(&self.tables, span))
            })
            .collect();
        if profiles.is_empty() {
            return;
        }
        let interval = Arc::new(Interval {
            start_ns: self.tables.wall_ns(span.0),
            end_ns: self.tables.wall_ns(span.1),
            profiles,
            processes: pids,
        });
        for s in &mut self.senders {
            s.offer(interval.clone());
        }
    }

    /// Intervals sent, failed and dropped so far, over every backend (for the status line).
    pub fn status(&self) -> String {
        let (mut sent, mut failed, mut dropped) = (0, 0, 0);
        for s in &self.senders {
            let c = s.counts();
            sent += c.sent;
            failed += c.failed;
            dropped += c.dropped;
        }
        format!("pushed {sent} (failed {failed}, dropped {dropped})")
    }

    /// Ends the last interval at `now_ns`, gives the senders up to the request timeout to
    /// deliver what they hold, and says how each backend fared. What is still unsent then
    /// counts as dropped; the threads are left to end with the process.
    pub fn finish(mut self, now_ns: u64) -> Vec<proto::Push> {
        self.cut(now_ns);
        let deadline = Instant::now() + self.grace;
        self.senders
            .into_iter()
            .map(|s| s.finish(deadline))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_credentials_out_of_the_url() {
        let e = Endpoint::parse("https://u%40x:p%3Ass@prof.example:4040/base/").unwrap();
        assert_eq!(e.url, "https://prof.example:4040/base");
        let (user, pass) = e.basic_auth.clone().unwrap();
        assert_eq!((user.as_str(), pass.expose()), ("u@x", "p:ss"));
        assert_eq!(format!("{e:?}"), "https://prof.example:4040/base");
        assert_eq!(format!("{pass:?}"), "REDACTED");
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:4040").unwrap().url,
            "http://127.0.0.1:4040"
        );
        for bad in ["ftp://x", "localhost:4040", "http://", "http://h/p?q=1"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        let err = Endpoint::parse("gopher://me:secret@h").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn command_lines_lose_their_secrets() {
        let args = [
            "bar-probe",
            "record",
            "--push-basic-auth",
            "me:pw",
            "--push-bearer-token=tok",
            "--pyroscope",
            "http://me:pw@h:4040",
            "--push-tenant",
            "team",
        ]
        .map(String::from);
        let out = redact_args(args).join(" ");
        assert_eq!(
            out,
            "bar-probe record --push-basic-auth REDACTED --push-bearer-token=REDACTED \
             --pyroscope http://REDACTED@h:4040 --push-tenant team"
        );
    }

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "4f1e2b3c".repeat(8);
        for file in [
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope\n"
            ),
            format!("12:cpu,cpuacct:/docker/{id}\n0::/\n"),
            format!("0::/machine.slice/libpod-{id}.scope/container\n"),
            format!("0::/kubepods/besteffort/pod9/crio-{id}\n"),
        ] {
            assert_eq!(container_id(&file).as_deref(), Some(id.as_str()), "{file}");
        }
        assert_eq!(
            container_id("0::/user.slice/user-1000.slice/session-2.scope\n"),
            None
        );
        assert_eq!(container_id("0::/\n"), None);
    }

    #[test]
    fn app_names() {
        assert_eq!(app_name_of("bar-probe"), "bar-probe");
        assert_eq!(app_name_of("kworker/0:1 x"), "kworker/0_1_x");
        assert_eq!(app_name_of(""), "bar");
        assert!(parse_app_name("my.app/v1").is_ok());
        assert!(parse_app_name("my app").is_err());
        assert!(parse_every("500ms").is_err());
        assert_eq!(parse_every("2s"), Ok(Duration::from_secs(2)));
    }
}
