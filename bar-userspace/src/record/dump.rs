//! Dumps of the flight recorder: a snapshot of the ring written as a self-contained capture
//! (the process names, frames and stacks its events need, numbered anew; losses counted from
//! the start of the time it holds), then rendered like any recording. Live dumps run on a
//! thread of their own, so that collecting goes on meanwhile, one at a time.

use std::{
    io::{self, Read as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use anyhow::Context as _;
use flate2::read::DeflateDecoder;
use prost::Message as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc as channel, oneshot, watch},
};

use super::{
    CAPTURE,
    aggregator::Input,
    ring::{Segment, Snapshot},
};
use crate::{
    analyze,
    capture::{Body, Writer, proto},
    dumps, markers,
    symbolize::Interner,
    sys::files::Dir,
};

/// What a dump wrote.
#[derive(Debug, Clone)]
pub struct Done {
    pub dir: PathBuf,
    /// Events in the capture, and the time they cover.
    pub events: u64,
    pub seconds: f64,
    /// `--ring-size` dropped older events of the time asked for.
    pub cut_by_size: bool,
}

/// A dump asked for: where to write it, and whom to tell how it went (a `bar-probe dump`
/// caller), if anyone (SIGUSR1 has no one to answer: the outcome goes to stderr).
pub struct Request {
    pub dir: PathBuf,
    pub reply: Option<oneshot::Sender<Result<Done, String>>>,
}

impl Request {
    pub fn answer(self, outcome: Result<Done, String>) {
        match self.reply {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => match outcome {
                Ok(d) => eprintln!(
                    "\nbar-probe: {}",
                    dumps::describe(&d.dir, d.events, d.seconds, d.cut_by_size)
                ),
                Err(e) => eprintln!("\nbar-probe: dump failed: {e}"),
            },
        }
    }
}

/// The thread that writes live dumps.
pub struct Dumper {
    tx: mpsc::Sender<(Snapshot, Request)>,
    busy: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Dumper {
    pub fn spawn() -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Snapshot, Request)>();
        let busy = Arc::new(AtomicBool::new(false));
        let done = busy.clone();
        let thread = std::thread::Builder::new()
            .name("bar-dump".into())
            .spawn(move || {
                for (snap, req) in rx {
                    let outcome = dump(&snap, &req.dir).map_err(|e| format!("{e:#}"));
                    // Free the snapshot's segments before saying so, and give back to the
                    // system what rendering took: the allocator would keep it for this thread.
                    drop(snap);
                    crate::sys::memory::give_back();
                    done.store(false, Ordering::Release);
                    req.answer(outcome);
                }
            })?;
        Ok(Self { tx, busy, thread })
    }

    /// Whether a dump is being written.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    pub fn start(&self, snap: Snapshot, req: Request) {
        self.busy.store(true, Ordering::Release);
        if let Err(mpsc::SendError((_, req))) = self.tx.send((snap, req)) {
            self.busy.store(false, Ordering::Release);
            req.answer(Err("the dump thread is gone".into()));
        }
    }

    /// Waits for a dump under way to be written.
    pub fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// Writes a snapshot into `dir` as `capture.bar` with every output. The folder is an output
/// folder like a recording's (created by bar, or one only root or the invoking user can write
/// to); one that already holds a capture is refused.
pub fn dump(snap: &Snapshot, dir: &Path) -> anyhow::Result<Done> {
    let out = Dir::create(dir)?;
    if out.has_file(CAPTURE) {
        anyhow::bail!(
            "{} already holds a capture: name a new folder",
            dir.display()
        );
    }
    let events = write_capture(snap, &out, CAPTURE, "dump", Vec::new())
        .with_context(|| format!("cannot write {}", out.join(CAPTURE).display()))?;
    crate::report::deliver(&out, CAPTURE)?;
    Ok(Done {
        dir: dir.to_owned(),
        events,
        seconds: snap.end_ns.saturating_sub(snap.start_ns) as f64 / 1e9,
        cut_by_size: snap.cut_by_size,
    })
}

/// Starts the flight recorder's dump sources: its socket (for `bar-probe dump`), whose callers
/// are answered once their dump is written, and SIGUSR1, which dumps into a new folder inside
/// the recording's (`out_dir`).
pub(super) fn spawn_sources(
    out_dir: &Path,
    tx: &channel::Sender<Input>,
    stop: &watch::Sender<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut tasks = Vec::new();
    let answer = |stream: tokio::net::UnixStream, tx: channel::Sender<Input>| async move {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        // One request line, of a bounded length.
        let mut read = tokio::io::AsyncReadExt::take(read, 1 << 16);
        let mut lines = tokio::io::BufReader::new(&mut read);
        if lines.read_line(&mut line).await.is_err() {
            return;
        }
        let answer = match serde_json::from_str::<dumps::Ask>(&line) {
            Err(e) => dumps::Answer::Failed(format!("not a dump request: {e}")),
            Ok(ask) => {
                let (reply, outcome) = oneshot::channel();
                let req = Request {
                    dir: ask.dir,
                    reply: Some(reply),
                };
                if tx.send(Input::Dump(req)).await.is_err() {
                    dumps::Answer::Failed("the recording is stopping".into())
                } else {
                    match outcome.await {
                        Ok(Ok(d)) => dumps::Answer::Dumped {
                            dir: d.dir,
                            events: d.events,
                            seconds: d.seconds,
                            cut_by_size: d.cut_by_size,
                        },
                        Ok(Err(e)) => dumps::Answer::Failed(e),
                        Err(_) => dumps::Answer::Failed("the recording stopped".into()),
                    }
                }
            }
        };
        if let Ok(mut text) = serde_json::to_string(&answer) {
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        }
    };
    match markers::Listener::bind(dumps::socket_path(std::process::id())) {
        Ok(listener) => {
            let tx = tx.clone();
            // A dump creates folders and files wherever it is told, as the recording's user:
            // only that user may ask.
            tasks.push(listener.serve(
                |uid| uid == rustix::process::geteuid().as_raw(),
                |uid| {
                    eprintln!(
                        "bar-probe: warning: ignored a dump request from uid {uid}: only the recording's user may ask for one"
                    );
                },
                stop.subscribe(),
                move |stream| answer(stream, tx.clone()),
            ));
        }
        Err(e) => eprintln!(
            "bar-probe: warning: `bar-probe dump` cannot reach this recording (SIGUSR1 still dumps): cannot listen in {}: {e}",
            markers::DIR
        ),
    }
    match signal(SignalKind::user_defined1()) {
        Ok(mut usr1) => {
            let tx = tx.clone();
            let out = out_dir.to_owned();
            tasks.push(tokio::spawn(async move {
                while usr1.recv().await.is_some() {
                    let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S%.3f").to_string();
                    let req = Request {
                        dir: out.join(format!("dump-{stamp}")),
                        reply: None,
                    };
                    if tx.send(Input::Dump(req)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        Err(e) => eprintln!("bar-probe: warning: SIGUSR1 will not dump this recording: {e}"),
    }
    tasks
}

/// One segment's own frames and stacks, and what they became in the capture.
#[derive(Default)]
struct Local {
    frames: Vec<(proto::Frame, Option<u32>)>,
    stacks: Vec<(proto::Stack, Option<u32>)>,
}

impl Local {
    /// The capture's id of the segment's stack `id` (position + 1; 0 is no stack).
    fn stack(&mut self, id: u32, ids: &mut Interner) -> u32 {
        let Some((stack, known)) = id
            .checked_sub(1)
            .and_then(|i| self.stacks.get_mut(i as usize))
        else {
            return 0;
        };
        if let Some(known) = known {
            return *known;
        }
        let frames = stack
            .frames
            .iter()
            .map(|&f| match self.frames.get_mut(f as usize) {
                Some((_, Some(g))) => *g,
                Some((fr, g)) => {
                    let global = ids.frame_of(fr.clone());
                    *g = Some(global);
                    global
                }
                None => ids.frame(false, "[frame missing from capture]".into(), String::new()),
            })
            .collect();
        let global = ids.stack(frames);
        *known = Some(global);
        global
    }
}

/// Losses since `base` (the counters are cumulative from the start of the recording).
fn rebase(c: &proto::Counters, base: Option<&proto::Counters>) -> proto::Counters {
    let Some(b) = base else {
        return c.clone();
    };
    let minus = |now: &[u64], then: &[u64]| -> Vec<u64> {
        now.iter()
            .enumerate()
            .map(|(i, v)| v.saturating_sub(then.get(i).copied().unwrap_or(0)))
            .collect()
    };
    proto::Counters {
        lost_per_cpu: minus(&c.lost_per_cpu, &b.lost_per_cpu),
        dropped_per_kind: minus(&c.dropped_per_kind, &b.dropped_per_kind),
        malformed: c.malformed.saturating_sub(b.malformed),
        offcpu_map_full: c.offcpu_map_full.saturating_sub(b.offcpu_map_full),
        tcp_map_full: c.tcp_map_full.saturating_sub(b.tcp_map_full),
        offcpu_returns_unseen: c
            .offcpu_returns_unseen
            .map(|n| n.saturating_sub(b.offcpu_returns_unseen.unwrap_or(0))),
        discarded_at_max_size: 0,
        ts: c.ts,
        // How the stacks of the dumped time were walked; the tables as they are now.
        unwind: c.unwind.as_ref().map(|u| {
            let then = b.unwind.as_deref().cloned().unwrap_or_default();
            Box::new(proto::Unwind {
                stacks: u.stacks.saturating_sub(then.stacks),
                frames_table: u.frames_table.saturating_sub(then.frames_table),
                frames_frame_pointer: u
                    .frames_frame_pointer
                    .saturating_sub(then.frames_frame_pointer),
                frames_go: u.frames_go.saturating_sub(then.frames_go),
                cut_short: minus(&u.cut_short, &then.cut_short),
                ..(**u).clone()
            })
        }),
    }
}

/// The blocks of a segment, one deflated chunk in memory at a time.
fn blocks(seg: &Segment, mut each: impl FnMut(Body) -> io::Result<()>) -> io::Result<()> {
    let mut raw = Vec::new();
    for chunk in &seg.chunks {
        raw.clear();
        DeflateDecoder::new(&chunk[..]).read_to_end(&mut raw)?;
        let mut at = 0;
        while at + 4 <= raw.len() {
            let len = u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
            let end = at + 4 + len as usize;
            let payload = raw.get(at + 4..end).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "a ring block is cut short")
            })?;
            let block = proto::Block::decode(payload).map_err(io::Error::other)?;
            if let Some(body) = block.body {
                each(body)?;
            }
            at = end;
        }
    }
    Ok(())
}

/// Writes a snapshot as capture `name` of `dir`; returns the events written.
pub fn write_capture(
    snap: &Snapshot,
    dir: &Dir,
    name: &str,
    stop_reason: &str,
    push: Vec<proto::Push>,
) -> io::Result<u64> {
    let mut meta = snap.meta.clone();
    meta.start_ns = snap.start_ns;
    meta.ring_window_ns = snap.options.window.as_nanos() as u64;
    meta.ring_size_bytes = snap.options.size;
    meta.ring_cut_by_size = snap.cut_by_size;
    meta.ring_held_bytes = snap.segments.iter().map(|s| s.bytes).sum();
    let mut w = Writer::new(dir.create_file(name)?, dir.join(name), meta)?;
    w.write(Body::Processes(proto::Processes {
        processes: snap.processes.clone(),
    }))?;
    if let Some(m) = &snap.open_phase {
        w.write(Body::Marker(m.clone()))?;
    }
    let mut ids = Interner::default();
    let mut events = 0u64;
    for seg in &snap.segments {
        let mut local = Local::default();
        blocks(seg, |body| {
            match body {
                Body::Frames(f) => local.frames.extend(f.frames.into_iter().map(|f| (f, None))),
                Body::Stacks(s) => local.stacks.extend(s.stacks.into_iter().map(|s| (s, None))),
                Body::Events(e) => {
                    let kept: Vec<proto::Event> = e
                        .events
                        .into_iter()
                        .filter(|ev| (snap.start_ns..=snap.end_ns).contains(&ev.ts))
                        .map(|mut ev| {
                            ev.stack = local.stack(ev.stack, &mut ids);
                            ev
                        })
                        .collect();
                    if kept.is_empty() {
                        return Ok(());
                    }
                    events += kept.iter().map(analyze::count).sum::<u64>();
                    let (frames, stacks) = ids.take_new();
                    if !frames.is_empty() {
                        w.write(Body::Frames(proto::Frames { frames }))?;
                    }
                    if !stacks.is_empty() {
                        w.write(Body::Stacks(proto::Stacks { stacks }))?;
                    }
                    w.write(Body::Events(proto::Events { events: kept }))?;
                }
                _ => {}
            }
            Ok(())
        })?;
        for c in &seg.counters {
            w.write(Body::Counters(rebase(c, snap.baseline.as_ref())))?;
        }
        for m in &seg.markers {
            w.write(Body::Marker(m.clone()))?;
        }
    }
    w.finish(proto::Trailer {
        end_ns: snap.end_ns,
        events,
        stop_reason: stop_reason.to_owned(),
        push,
        ..Default::default()
    })?;
    Ok(events)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        analyze::Capture,
        record::ring::{Ring, RingOptions},
    };

    const S: u64 = 1_000_000_000;

    /// A segment's worth of blocks as the aggregator writes them: the symbolizer numbers
    /// frames and stacks from 0 (1 for stacks) again in each segment.
    fn segment(r: &mut Ring, sec: u64, leaf: &str) {
        let frame = |name: &str| proto::Frame {
            name: name.into(),
            module: "/app".into(),
            kernel: false,
            inlined: false,
        };
        r.write(Body::Frames(proto::Frames {
            frames: vec![frame("main"), frame(leaf)],
        }))
        .unwrap();
        r.write(Body::Stacks(proto::Stacks {
            stacks: vec![proto::Stack { frames: vec![0, 1] }],
        }))
        .unwrap();
        r.write(Body::Events(proto::Events {
            events: (0..10)
                .map(|i| proto::Event {
                    ts: sec * S + i * S / 10,
                    kind: bar_ebpf_common::kind::CPU,
                    pid: 7,
                    tid: 7,
                    stack: 1,
                    ..Default::default()
                })
                .collect(),
        }))
        .unwrap();
        r.write(Body::Counters(proto::Counters {
            lost_per_cpu: vec![sec, 0],
            ts: (sec + 1) * S,
            ..Default::default()
        }))
        .unwrap();
        r.seal((sec + 1) * S).unwrap();
    }

    #[test]
    fn a_dump_holds_the_window_with_its_own_frames_and_losses() {
        let mut r = Ring::new(
            RingOptions {
                window: Duration::from_millis(2500),
                size: 1 << 30,
            },
            proto::Meta {
                bar_version: "t".into(),
                ..Default::default()
            },
        );
        r.write(Body::Processes(proto::Processes {
            processes: vec![proto::Process {
                pid: 7,
                comm: "app".into(),
                ..Default::default()
            }],
        }))
        .unwrap();
        for (sec, leaf) in [(0, "old"), (1, "old"), (2, "mid"), (3, "new"), (4, "new")] {
            segment(&mut r, sec, leaf);
        }
        let snap = r.snapshot(5 * S);
        let dir = std::env::temp_dir().join(format!("bar-dump-test-{}", std::process::id()));
        let out = Dir::create(&dir).unwrap();
        let events = write_capture(&snap, &out, "capture.bar", "dump", Vec::new()).unwrap();
        let path = dir.join("capture.bar");
        // The last 2.5 s: half of second 2, seconds 3 and 4.
        assert_eq!(events, 25);
        let p = Capture::open(&path).unwrap().whole();
        // Whole: the trailer read, and its checksum matched.
        assert!(p.damage.is_none() && p.trailer.is_some(), "{:?}", p.damage);
        assert_eq!(p.meta.start_ns, 2 * S + S / 2);
        let cpu = p.folded(&p.views[&bar_ebpf_common::Family::Cpu]);
        assert_eq!(
            cpu,
            vec!["app;main;mid 5".to_owned(), "app;main;new 20".to_owned()]
        );
        // Frames and stacks each once, though every segment had its own.
        assert_eq!(p.frames.len(), 3);
        assert_eq!(p.stacks.len(), 2);
        // Losses from the start of what the dump holds (the first segment's counters are the
        // baseline: it ended before the window).
        assert_eq!(p.counters.lost_per_cpu, vec![3, 0]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
