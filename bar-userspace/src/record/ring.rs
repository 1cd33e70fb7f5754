//! The flight recorder's store (`--ring DUR`): the blocks the aggregator produces are kept in
//! memory instead of a file, deflated, in segments of a fraction of DUR, and segments older
//! than DUR, or beyond `--ring-size`, are dropped. Each segment holds the frames and stacks its
//! events use (the symbolizer starts them over with each segment), so dropping a segment drops
//! what only it used. Process names are kept apart, for as long as a process lives and then as
//! long as its last events may be held. A dump takes the segments as they are (shared, not
//! copied): see `dump.rs`.

use std::{
    collections::{HashMap, VecDeque},
    io::{self, Write as _},
    sync::Arc,
    time::Duration,
};

use flate2::{Compression, write::DeflateEncoder};
use prost::Message as _;

use crate::capture::{Body, proto};

/// What `--ring` asks for.
#[derive(Debug, Clone, Copy)]
pub struct RingOptions {
    /// Keep the events of this long before now.
    pub window: Duration,
    /// And at most this many bytes of deflated blocks.
    pub size: u64,
}

/// Default `--ring-size`: a minute of a host under a fork storm (2 to 5 million events here,
/// by how busy the host is otherwise) deflates to 20 to 38 MB, so this holds two to three
/// minutes of one, and ten of a host recording 10 thousand events a second; with the
/// collector's own memory and a dump's, bar-probe then stays within 256 MB.
pub const DEFAULT_SIZE: u64 = 64 << 20;

/// Blocks are deflated together once this many bytes of them wait.
const CHUNK: usize = 1 << 20;

/// Segments per window: dropping one drops this fraction of the ring at once.
const SEGMENTS: u32 = 8;

/// A stretch of the ring: deflated blocks of frames, stacks and events, in the order written,
/// and the counters and markers of its time.
#[derive(Debug, Default)]
pub struct Segment {
    /// Monotonic time from which (and until which) its events were taken.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Each chunk is deflated `[payload length: u32 LE][Block payload]...`.
    pub chunks: Vec<Vec<u8>>,
    pub counters: Vec<proto::Counters>,
    pub markers: Vec<proto::Marker>,
    pub bytes: u64,
}

/// The names of processes, kept for as long as events of theirs may be in the ring.
#[derive(Debug, Default)]
struct ProcessBook {
    entries: HashMap<u32, Vec<proto::Process>>,
    /// Ends of processes, oldest first: (time, pid).
    ended: VecDeque<(u64, u32)>,
}

impl ProcessBook {
    fn add(&mut self, p: proto::Process) {
        if p.exited {
            self.ended.push_back((p.since_ns, p.pid));
        }
        self.entries.entry(p.pid).or_default().push(p);
    }

    /// Forgets the processes that ended before `before`: no event of theirs is left.
    fn prune(&mut self, before: u64) {
        while let Some(&(ts, pid)) = self.ended.front() {
            if ts >= before {
                break;
            }
            self.ended.pop_front();
            if let Some(list) = self.entries.get_mut(&pid) {
                list.retain(|p| p.since_ns > ts);
                if list.is_empty() {
                    self.entries.remove(&pid);
                }
            }
        }
    }
}

/// The ring as a dump takes it.
pub struct Snapshot {
    pub meta: proto::Meta,
    pub options: RingOptions,
    pub segments: Vec<Arc<Segment>>,
    pub processes: Vec<proto::Process>,
    /// The counters as they were when the oldest segment kept began (losses are cumulative).
    pub baseline: Option<proto::Counters>,
    /// The phase under way when the oldest segment kept began, if any.
    pub open_phase: Option<proto::Marker>,
    /// The time range held: events from `start_ns` on, up to `end_ns`.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Older events within the window were dropped to keep `--ring-size`.
    pub cut_by_size: bool,
}

pub struct Ring {
    options: RingOptions,
    meta: proto::Meta,
    sealed: VecDeque<Arc<Segment>>,
    open: Segment,
    /// Blocks of the open segment not yet deflated.
    pending: Vec<u8>,
    book: ProcessBook,
    baseline: Option<proto::Counters>,
    open_phase: Option<proto::Marker>,
    /// Deflated bytes of every segment.
    bytes: u64,
    /// The end of the last segment dropped for size rather than age.
    cut_until: u64,
}

impl Ring {
    pub fn new(options: RingOptions, meta: proto::Meta) -> Self {
        let start = meta.start_ns;
        Self {
            options,
            meta,
            sealed: VecDeque::new(),
            open: Segment {
                start_ns: start,
                ..Segment::default()
            },
            pending: Vec::new(),
            book: ProcessBook::default(),
            baseline: None,
            open_phase: None,
            bytes: 0,
            cut_until: 0,
        }
    }

    /// Bytes held: deflated segments and the blocks waiting to be.
    pub fn size(&self) -> u64 {
        self.bytes + self.open.bytes + self.pending.len() as u64
    }

    /// The time a segment covers.
    fn segment_ns(&self) -> u64 {
        let w = self.options.window.as_nanos() as u64 / u64::from(SEGMENTS);
        w.clamp(1_000_000_000, 30_000_000_000)
    }

    /// Whether the open segment has covered its time, at `now` (monotonic ns).
    pub fn seal_due(&self, now: u64) -> bool {
        now.saturating_sub(self.open.start_ns) >= self.segment_ns()
    }

    pub fn write(&mut self, body: Body) -> io::Result<()> {
        match body {
            Body::Processes(ps) => {
                for p in ps.processes {
                    self.book.add(p);
                }
            }
            Body::Counters(c) => self.open.counters.push(c),
            Body::Marker(m) => self.open.markers.push(m),
            Body::Meta(m) => self.meta = m,
            Body::Trailer(_) => {}
            body @ (Body::Frames(_) | Body::Stacks(_) | Body::Events(_)) => {
                let block = proto::Block { body: Some(body) };
                let len = block.encoded_len();
                self.pending.extend_from_slice(&(len as u32).to_le_bytes());
                block.encode(&mut self.pending).map_err(io::Error::other)?;
                if self.pending.len() >= CHUNK {
                    self.deflate()?;
                }
                self.evict(None);
            }
        }
        Ok(())
    }

    fn deflate(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Level 3 of zlib-rs: on a minute of a fork storm's capture, 5.2 times smaller at
        // 190 MB/s; level 1 (its quick deflate) 4.0 times at 217 MB/s, level 6 5.4 at 38 MB/s.
        let mut z = DeflateEncoder::new(Vec::new(), Compression::new(3));
        z.write_all(&self.pending)?;
        let mut chunk = z.finish()?;
        // The encoder's buffer grew by doubling: up to half of it would be kept unused.
        chunk.shrink_to_fit();
        self.pending.clear();
        self.open.bytes += chunk.len() as u64;
        self.open.chunks.push(chunk);
        Ok(())
    }

    /// Closes the open segment at `now` and starts the next; the symbolizer must start its
    /// frames and stacks over with it.
    pub fn seal(&mut self, now: u64) -> io::Result<()> {
        self.deflate()?;
        let next = Segment {
            start_ns: now,
            ..Segment::default()
        };
        let mut done = std::mem::replace(&mut self.open, next);
        done.end_ns = now;
        self.bytes += done.bytes;
        self.sealed.push_back(Arc::new(done));
        self.evict(Some(now));
        Ok(())
    }

    /// Drops the oldest segments: those that ended before the window (given the time now), and
    /// as many as the size limit asks.
    fn evict(&mut self, now: Option<u64>) {
        let window = self.options.window.as_nanos() as u64;
        let mut dropped = false;
        while let Some(oldest) = self.sealed.front() {
            let old = now.is_some_and(|now| oldest.end_ns < now.saturating_sub(window));
            let over = self.size() > self.options.size;
            if !old && !over {
                break;
            }
            if over && !old {
                self.cut_until = oldest.end_ns;
            }
            let Some(gone) = self.sealed.pop_front() else {
                break;
            };
            dropped = true;
            self.bytes -= gone.bytes;
            if let Some(c) = gone.counters.last() {
                self.baseline = Some(c.clone());
            }
            for m in &gone.markers {
                self.open_phase = (!m.end).then(|| m.clone());
            }
            self.book.prune(gone.end_ns);
        }
        if dropped {
            crate::sys::memory::give_back();
        }
    }

    /// The ring as it is, for a dump of the window before `now`; seal first, so that every
    /// block written so far is in a sealed segment.
    pub fn snapshot(&self, now: u64) -> Snapshot {
        let window_start = now.saturating_sub(self.options.window.as_nanos() as u64);
        let (mut baseline, mut open_phase) = (self.baseline.clone(), self.open_phase.clone());
        let mut segments = Vec::new();
        for s in &self.sealed {
            if s.end_ns > window_start {
                segments.push(s.clone());
                continue;
            }
            // Kept until the next seal, but all before the window.
            if let Some(c) = s.counters.last() {
                baseline = Some(c.clone());
            }
            for m in &s.markers {
                open_phase = (!m.end).then(|| m.clone());
            }
        }
        let held_from = segments.first().map_or(now, |s| s.start_ns);
        Snapshot {
            meta: self.meta.clone(),
            options: self.options,
            processes: self.book.entries.values().flatten().cloned().collect(),
            baseline,
            open_phase,
            start_ns: window_start.max(held_from).max(self.meta.start_ns),
            end_ns: now,
            cut_by_size: self.cut_until > window_start,
            segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(ts: &[u64]) -> Body {
        Body::Events(proto::Events {
            events: ts
                .iter()
                .map(|&ts| proto::Event {
                    ts,
                    kind: 1,
                    ..Default::default()
                })
                .collect(),
        })
    }

    fn ring(window_s: u64, size: u64) -> Ring {
        Ring::new(
            RingOptions {
                window: Duration::from_secs(window_s),
                size,
            },
            proto::Meta::default(),
        )
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn segments_older_than_the_window_are_dropped_with_their_processes() {
        let mut r = ring(8, DEFAULT_SIZE);
        assert_eq!(r.segment_ns(), S);
        let named = |pid, since_ns, exited| proto::Process {
            pid,
            comm: "p".into(),
            since_ns,
            exited,
        };
        r.write(Body::Processes(proto::Processes {
            processes: vec![
                named(1, 0, false),
                named(2, 0, false),
                named(2, S / 2, true),
            ],
        }))
        .unwrap();
        for sec in 0..20 {
            r.write(events(&[sec * S + 1])).unwrap();
            r.write(Body::Marker(proto::Marker {
                name: format!("m{sec}"),
                ts: sec * S + 2,
                end: false,
            }))
            .unwrap();
            assert!(r.seal_due((sec + 1) * S));
            r.seal((sec + 1) * S).unwrap();
        }
        let snap = r.snapshot(20 * S);
        // Segments that end within the last 8 s: [12, 13) ... [19, 20).
        assert_eq!(snap.segments.len(), 8);
        assert_eq!(snap.start_ns, 12 * S);
        assert!(!snap.cut_by_size);
        // Process 2 ended long before; process 1 lives on.
        let pids: Vec<u32> = snap.processes.iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![1]);
        // The phase started by the last marker of a dropped segment is still under way.
        assert_eq!(snap.open_phase.map(|m| m.name), Some("m11".to_owned()));
    }

    #[test]
    fn the_size_limit_drops_the_oldest_and_says_so() {
        let mut r = ring(60, 1);
        for sec in 0..3 {
            r.write(events(&[sec * S])).unwrap();
            r.seal((sec + 1) * S).unwrap();
        }
        // One byte holds nothing sealed: only what is still open is left.
        let snap = r.snapshot(3 * S);
        assert!(snap.segments.is_empty());
        assert!(snap.cut_by_size);
        assert!(r.size() <= 1);
    }
}
