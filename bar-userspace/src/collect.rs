//! Collect: one tokio task per CPU drains that CPU's perf ring buffer, decodes the records
//! defined in bar-ebpf-common and hands them on in batches. Buffer overflows arrive as perf
//! "lost" records and are counted per CPU. With `--aggregate`, one more task collects the sums
//! the kernel keeps instead (`sums`); at the end, one takes the records the kernel still holds
//! (`pending`).

mod pending;
mod ring;
mod sums;

pub use self::{
    pending::{PendingMaps, spawn_pending},
    sums::spawn_sums,
};

use std::{
    mem::size_of,
    os::fd::AsFd as _,
    ptr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use self::ring::{PerfRing, RingEvent};
use aya::maps::MapData;
use bar_ebpf_common::{
    BATCH_HEADER, BATCH_RECORDS, FaultRecord, Header, NumaPagesRecord, NumaTaskRecord,
    OffCpuRecord, ProcessRecord, StackPageRecord, TcpRecord, kind,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinHandle,
};

/// A record as the kernel wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Cpu(Header),
    Fault(FaultRecord),
    OffCpu(OffCpuRecord),
    Tcp(TcpRecord),
    NumaTask(NumaTaskRecord),
    NumaPages(NumaPagesRecord),
    /// A process forked, exec'd or exited (the header's kind says which).
    Process(ProcessRecord),
    /// A walk met code outside the mappings loaded for the process.
    UnwindMiss(Header),
    /// A walk could not read a word of the process's stack.
    StackPage(StackPageRecord),
    /// `count` faults or off-CPU intervals of one window summed in the kernel: same thread,
    /// stacks, `detail` (fault flags, off-CPU reason) and `state`; `total` is their blocked
    /// nanoseconds (off-CPU). The header's time is the middle of the window.
    Summed {
        header: Header,
        detail: u32,
        state: u32,
        count: u64,
        total: u64,
    },
}

impl Record {
    pub const fn header(&self) -> &Header {
        match self {
            Self::Cpu(h) => h,
            Self::Fault(r) => &r.header,
            Self::OffCpu(r) => &r.header,
            Self::Tcp(r) => &r.header,
            Self::NumaTask(r) => &r.header,
            Self::NumaPages(r) => &r.header,
            Self::Process(r) => &r.header,
            Self::StackPage(r) => &r.header,
            Self::UnwindMiss(h) | Self::Summed { header: h, .. } => h,
        }
    }

    /// How many events the record stands for.
    pub const fn count(&self) -> u64 {
        match self {
            Self::Summed { count, .. } => *count,
            _ => 1,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than a header")]
    Short(usize),
    #[error("record of kind {kind} has {len} bytes, needs {need}")]
    Truncated { kind: u32, len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

fn read_as<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Truncated {
            kind,
            len: bytes.len(),
            need,
        });
    }
    // SAFETY: T is a plain-old-data record from bar-ebpf-common and the slice holds at least
    // size_of::<T>() bytes; perf data carries no alignment guarantee, hence read_unaligned.
    Ok(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one record, and says how many bytes it takes. The kernel pads samples to 8 bytes,
/// so trailing bytes are allowed.
fn decode_sized(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
    fn body<T: Copy>(
        bytes: &[u8],
        kind: u32,
        wrap: fn(T) -> Record,
    ) -> Result<(Record, usize), DecodeError> {
        Ok((wrap(read_as(bytes, kind)?), size_of::<T>()))
    }
    if bytes.len() < size_of::<Header>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let header: Header = read_as(bytes, 0)?;
    match header.kind {
        kind::CPU => Ok((Record::Cpu(header), size_of::<Header>())),
        kind::FAULT => body(bytes, header.kind, Record::Fault),
        kind::OFFCPU => body(bytes, header.kind, Record::OffCpu),
        kind::TCP => body(bytes, header.kind, Record::Tcp),
        kind::NUMA_TASK => body(bytes, header.kind, Record::NumaTask),
        kind::NUMA_PAGES => body(bytes, header.kind, Record::NumaPages),
        kind::EXEC | kind::FORK | kind::EXIT => body(bytes, header.kind, Record::Process),
        kind::UNWIND_MISS => Ok((Record::UnwindMiss(header), size_of::<Header>())),
        kind::STACK_PAGE => body(bytes, header.kind, Record::StackPage),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Decodes one record. The kernel pads samples to 8 bytes, so trailing bytes are allowed.
pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    decode_sized(bytes).map(|(r, _)| r)
}

/// Decodes one perf sample, a record or a [`bar_ebpf_common::Batch`] of records of one kind,
/// into `out`. A batch that does not decode whole adds nothing.
pub fn decode_sample(bytes: &[u8], out: &mut Vec<Record>) -> Result<(), DecodeError> {
    if bytes.len() < size_of::<Header>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    let header: Header = read_as(bytes, 0)?;
    if header.kind != kind::BATCH {
        out.push(decode(bytes)?);
        return Ok(());
    }
    // The kind and length of a batch are where a header's kind and pid are; every record has
    // the kind and size of the first.
    let len = header.pid as usize;
    let records = &bytes[BATCH_HEADER..];
    let (first, size) = decode_sized(records)?;
    let kind = first.header().kind;
    let need = BATCH_HEADER + len * size;
    if len == 0 || len > BATCH_RECORDS || bytes.len() < need {
        return Err(DecodeError::Truncated {
            kind: kind::BATCH,
            len: bytes.len(),
            need,
        });
    }
    let start = out.len();
    let decoded = records[..len * size]
        .chunks_exact(size)
        .try_for_each(|r| match decode(r)? {
            r if r.header().kind == kind => {
                out.push(r);
                Ok(())
            }
            r => Err(DecodeError::UnknownKind(r.header().kind)),
        });
    if decoded.is_err() {
        out.truncate(start);
    }
    decoded
}

/// What one CPU's reader handed on after one drain.
#[derive(Debug, Default)]
pub struct Batch {
    pub cpu: u32,
    pub records: Vec<Record>,
    /// Records the kernel could not write to this buffer since the last batch.
    pub lost: u64,
    /// Samples that did not decode (a bug if ever non-zero).
    pub malformed: u64,
    /// Its share of the backlog, given back when the batch is dropped.
    pub held: Option<OwnedSemaphorePermit>,
}

/// The bytes of decoded records that may wait for the aggregator. Without a bound, a host too
/// busy to give the aggregator its share of CPU (a dump rendering on a host at load 19) let
/// the queue grow by hundreds of megabytes. At the bound a reader waits, its kernel buffer
/// fills, and what the kernel cannot hold is counted as lost, as perf does.
#[derive(Clone, Debug)]
pub struct Backlog {
    room: Arc<Semaphore>,
    bytes: u32,
    waits: Arc<AtomicU64>,
}

impl Backlog {
    pub fn new(bytes: u32) -> Self {
        Self {
            room: Arc::new(Semaphore::new(bytes as usize)),
            bytes,
            waits: Arc::default(),
        }
    }

    /// Waits until `batch` fits, and gives it its share.
    async fn hold(&self, batch: &mut Batch) {
        let size = batch.records.capacity() * size_of::<Record>();
        // A batch larger than the whole bound waits for it all.
        let size = u32::try_from(size).unwrap_or(u32::MAX).min(self.bytes);
        let permit = match Arc::clone(&self.room).try_acquire_many_owned(size) {
            Ok(p) => Some(p),
            Err(_) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                // The semaphore is never closed.
                Arc::clone(&self.room).acquire_many_owned(size).await.ok()
            }
        };
        batch.held = permit;
    }

    /// How often a reader found the bound reached and waited.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    pub const fn bytes(&self) -> u32 {
        self.bytes
    }
}

/// Perf buffer sizing and pacing.
#[derive(Debug, Clone, Copy)]
pub struct ReaderOptions {
    /// Pages per CPU buffer (a power of two).
    pub pages: usize,
    /// A reader drains its buffer this often, and earlier when the buffer is half full: the
    /// kernel signals the reader only then, so a storm of events costs a few wakeups per
    /// second rather than one per event.
    pub interval: Duration,
    /// A reader that found its buffer empty waits twice as long before the next look, up to
    /// this: a CPU without events (or a family summed in the kernel) is not woken a hundred
    /// times a second for nothing, as each wakeup takes a CPU from the traced threads.
    pub idle_interval: Duration,
}

fn drain(buf: &mut PerfRing, cpu: u32) -> Batch {
    let mut batch = Batch {
        cpu,
        ..Batch::default()
    };
    // Room for the largest sample: no batch is larger than one of the largest records.
    let mut scratch = [0u8; size_of::<bar_ebpf_common::Batch<TcpRecord>>()];
    buf.drain(|event| match event {
        RingEvent::Sample { head, tail } => {
            let len = head.len() + tail.len();
            // A record that straddles the end of the ring comes in two pieces.
            let bytes = if tail.is_empty() {
                head
            } else if len <= scratch.len() {
                scratch[..head.len()].copy_from_slice(head);
                scratch[head.len()..len].copy_from_slice(tail);
                &scratch[..len]
            } else {
                batch.malformed += 1;
                return;
            };
            if decode_sample(bytes, &mut batch.records).is_err() {
                batch.malformed += 1;
            }
        }
        RingEvent::Lost(count) => batch.lost += count,
    });
    batch
}

/// Called by a reader for each exec record it drains (pid, time), before the batch goes on:
/// what must be read of a process while it is surely there is read here, not behind every
/// event queued before the record.
pub type ExecHook = Arc<dyn Fn(u32, u64) + Send + Sync>;

/// Opens a buffer per CPU, puts it in the `EVENTS` perf event array and spawns its reader,
/// which sends its batches as `T`. Readers drain one last time and end when `stop` turns true.
pub fn spawn_readers<T: From<Batch> + Send + 'static>(
    events: &MapData,
    cpus: &[u32],
    opts: ReaderOptions,
    on_exec: Option<ExecHook>,
    backlog: &Backlog,
    tx: mpsc::Sender<T>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::new();
    // A reader that found records wakes the others: a process's exec record can sit in the
    // buffer of a CPU whose reader waits its idle interval out, while the events the process
    // then makes on another CPU arrive and are resolved against the map it had before the exec
    // (a short-lived program's 30,000 faults all [unknown], in about half the runs of a test).
    // The readers share one thread, so the extra looks at empty buffers cost next to nothing.
    let poke = Arc::new(tokio::sync::Notify::new());
    for &cpu in cpus {
        let buf = PerfRing::open(cpu, opts.pages)
            .and_then(|ring| ring.insert_into(events.fd().as_fd(), cpu).map(|()| ring))
            .map_err(|e| anyhow::anyhow!("opening the perf buffer of CPU {cpu} failed: {e}"))?;
        // SAFETY: the buffer owns its perf event fd until it is dropped with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(buf, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the perf buffer of CPU {cpu} failed: {e}"))?;
        let tx = tx.clone();
        let mut stop = stop.clone();
        let on_exec = on_exec.clone();
        let poke = Arc::clone(&poke);
        let backlog = backlog.clone();
        handles.push(tokio::spawn(async move {
            let mut fd = fd;
            let mut wait = opts.interval;
            loop {
                let (stopping, poked) = tokio::select! {
                    ready = fd.readable_mut() => {
                        match ready {
                            Ok(mut guard) => { guard.clear_ready(); (false, false) }
                            Err(_) => (true, false),
                        }
                    }
                    () = tokio::time::sleep(wait) => (false, false),
                    () = poke.notified() => (false, true),
                    _ = stop.changed() => (true, false),
                };
                let mut batch = drain(fd.get_mut(), cpu);
                // Not when poked itself: two busy readers would wake each other without end.
                if !poked && !batch.records.is_empty() {
                    poke.notify_waiters();
                }
                if let Some(hook) = &on_exec {
                    for r in &batch.records {
                        if let Record::Process(p) = r
                            && p.header.kind == kind::EXEC
                        {
                            hook(p.header.pid, p.header.ts_ns);
                        }
                    }
                }
                if batch.records.is_empty() && batch.lost == 0 && batch.malformed == 0 {
                    wait = (wait * 2).min(opts.idle_interval);
                } else {
                    wait = opts.interval;
                    backlog.hold(&mut batch).await;
                    if tx.send(T::from(batch)).await.is_err() {
                        return;
                    }
                }
                if stopping || *stop.borrow() {
                    return;
                }
            }
        }));
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: records are plain data without uninitialised padding.
        unsafe { std::slice::from_raw_parts(ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_each_kind_with_kernel_padding() {
        let header = Header {
            ts_ns: 7,
            kind: kind::FAULT,
            pid: 10,
            tid: 11,
            user_stack: 3,
            kernel_stack: -14,
            _pad: 0,
        };
        let fault = FaultRecord {
            header,
            address: 0x1000,
            ip: 0x4000,
            error_code: 6,
            flags: 1,
        };
        let mut bytes = bytes_of(&fault);
        bytes.extend([0, 0, 0, 0]);
        assert_eq!(decode(&bytes), Ok(Record::Fault(fault)));

        let cpu = Header {
            kind: kind::CPU,
            ..header
        };
        assert_eq!(decode(&bytes_of(&cpu)), Ok(Record::Cpu(cpu)));

        let off = OffCpuRecord {
            header: Header {
                kind: kind::OFFCPU,
                ..header
            },
            blocked_ns: 5,
            reason: 1,
            state: 1,
        };
        assert_eq!(decode(&bytes_of(&off)), Ok(Record::OffCpu(off)));
    }

    #[test]
    fn decodes_a_batch_into_its_records() {
        let fault = |ts_ns| FaultRecord {
            header: Header {
                ts_ns,
                kind: kind::FAULT,
                pid: 10,
                tid: 11,
                ..Header::default()
            },
            address: ts_ns * 0x1000,
            ..FaultRecord::default()
        };
        let mut batch = bar_ebpf_common::Batch {
            ts_ns: 1,
            kind: kind::BATCH,
            len: 3,
            records: [FaultRecord::default(); BATCH_RECORDS],
        };
        for (i, r) in batch.records.iter_mut().enumerate() {
            *r = fault(i as u64 + 1);
        }
        // As the kernel sends it: the records in use, padded to 8 bytes.
        let mut bytes = bytes_of(&batch)[..BATCH_HEADER + 3 * size_of::<FaultRecord>()].to_vec();
        bytes.extend([0, 0, 0, 0]);
        let mut out = vec![Record::Cpu(Header::default())];
        decode_sample(&bytes, &mut out).unwrap();
        let want: Vec<Record> = (1..=3).map(|t| Record::Fault(fault(t))).collect();
        assert_eq!(out[1..], want);

        // Cut short, or holding a record of another kind: nothing is added.
        let mut out = Vec::new();
        assert!(decode_sample(&bytes[..BATCH_HEADER + 100], &mut out).is_err());
        batch.records[2].header.kind = kind::CPU;
        assert!(decode_sample(&bytes_of(&batch), &mut out).is_err());
        batch.len = BATCH_RECORDS as u32 + 1;
        assert!(decode_sample(&bytes_of(&batch), &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(decode(&[0; 8]), Err(DecodeError::Short(8)));
        let header = Header {
            kind: kind::TCP,
            ..Header::default()
        };
        assert_eq!(
            decode(&bytes_of(&header)),
            Err(DecodeError::Truncated {
                kind: kind::TCP,
                len: 32,
                need: size_of::<TcpRecord>()
            })
        );
        let header = Header {
            kind: 99,
            ..Header::default()
        };
        assert_eq!(
            decode(&bytes_of(&header)),
            Err(DecodeError::UnknownKind(99))
        );
    }
}
