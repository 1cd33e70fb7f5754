//! The loader's thread: takes requests from the aggregator (a process seen, an exec, a walk
//! that met unknown code) so that reading maps and building tables never holds up the
//! collection of events, and looks for exited processes every second.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    kernel::KernelTables,
    loader::{Loader, LoaderStats},
};

/// What the loader is asked to do.
#[derive(Debug)]
pub enum Request {
    /// A process had its first event: load its tables if they are not.
    Seen(u32),
    /// A process exec'd.
    Exec(u32),
    /// A walk in this process met code outside its loaded mappings.
    Miss(u32),
    /// A process ended: its entries go.
    Exit(u32),
    /// Processes that had events since the last time, with how many: the busiest waiting
    /// process is loaded first, and the tables of idle ones go first when memory runs out.
    Active(Vec<(u32, u64)>),
}

/// The running loader: where to send requests, and what it has done so far.
pub struct Service {
    pub tx: mpsc::Sender<Request>,
    pub stats: Arc<Mutex<Snapshot>>,
    thread: JoinHandle<()>,
}

/// The loader's counts, and the size of the kernel's row array.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub stats: LoaderStats,
    pub capacity_rows: u64,
}

const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Service {
    pub fn spawn(mut loader: Loader<KernelTables>, capacity_rows: u64) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        let stats = Arc::new(Mutex::new(Snapshot {
            stats: loader.stats(),
            capacity_rows,
        }));
        let shared = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("bar-unwind".into())
            .spawn(move || {
                // Building tables is background work: on a busy machine the collector must
                // still read the maps of short-lived processes before they exit, or their
                // stacks lose every name. The loader yields to it (nice 10, this thread only).
                // SAFETY: setpriority on this thread's own id changes only its scheduling.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
                }
                run(&mut loader, &rx, &shared);
            })?;
        Ok(Self { tx, stats, thread })
    }

    /// Waits for the thread once every sender is gone.
    pub fn join(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// The loader's loop. Processes seen for the first time wait in a set, and the one with the
/// most events is loaded first: with `record --all` on a busy machine, the first events name
/// hundreds of processes, and building a big object's table takes up to a second (LLVM's
/// library, 1.4 million rows: 0.85 s here), which the process that does the work should not
/// wait behind.
fn run(loader: &mut Loader<KernelTables>, rx: &mpsc::Receiver<Request>, shared: &Mutex<Snapshot>) {
    let mut swept = Instant::now();
    let mut waiting: HashSet<u32> = HashSet::new();
    // Processes loaded, or tried: a process is read once (and again on request).
    let mut tried: HashSet<u32> = HashSet::new();
    let mut activity: HashMap<u32, u64> = HashMap::new();
    loop {
        // Block only when nothing waits.
        let next = if waiting.is_empty() {
            rx.recv_timeout(SWEEP_EVERY)
        } else {
            rx.try_recv().map_err(|e| match e {
                mpsc::TryRecvError::Empty => mpsc::RecvTimeoutError::Timeout,
                mpsc::TryRecvError::Disconnected => mpsc::RecvTimeoutError::Disconnected,
            })
        };
        match next {
            Ok(Request::Seen(pid)) => {
                if !loader.knows(pid) && tried.insert(pid) {
                    waiting.insert(pid);
                }
                continue;
            }
            Ok(Request::Exec(pid)) => {
                waiting.remove(&pid);
                tried.insert(pid);
                loader.exec(pid);
            }
            Ok(Request::Miss(pid)) => loader.refresh(pid),
            Ok(Request::Exit(pid)) => {
                waiting.remove(&pid);
                tried.remove(&pid);
                loader.exited(pid);
            }
            Ok(Request::Active(counts)) => {
                let pids: Vec<u32> = counts.iter().map(|c| c.0).collect();
                loader.touch(&pids);
                for (pid, n) in counts {
                    *activity.entry(pid).or_default() += n;
                    // A process that had events without being seen first: a child forked by
                    // a recorded process (it starts with its parent's program).
                    if !loader.knows(pid) && tried.insert(pid) {
                        waiting.insert(pid);
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let busiest = waiting
                    .iter()
                    .copied()
                    .max_by_key(|p| activity.get(p).copied().unwrap_or(0));
                if let Some(pid) = busiest {
                    waiting.remove(&pid);
                    let _ = loader.load(pid);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if swept.elapsed() >= SWEEP_EVERY {
            loader.sweep();
            activity.retain(|pid, _| loader.knows(*pid) || waiting.contains(pid));
            tried.retain(|pid| loader.knows(*pid) || waiting.contains(pid));
            swept = Instant::now();
        }
        if let Ok(mut s) = shared.lock() {
            s.stats = loader.stats();
        }
    }
}
