//! What the kernel still holds when the recording ends, read once the programs are detached:
//!
//! - Records waiting in a CPU's batch (bar-ebpf `emit_batched`): a batch is sent when it is
//!   full or at the next record after a wait, so the last few records of a CPU may still be
//!   in it.
//! - Off-CPU intervals not reported yet. The programs report a thread's interval at its next
//!   switch-out, not when it runs again (bar-ebpf `offcpu.rs`), so a thread that came back and
//!   still runs holds one complete interval: its switch-out in `OFFCPU_START`, its return in
//!   the `SWITCHED_IN` slot of the CPU it runs on.

use std::collections::HashMap as StdHashMap;

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, PerCpuArray},
};
use bar_ebpf_common::{Batch as KernelBatch, FaultRecord, OffCpuRecord, OffCpuStart, SwitchIn};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{Batch, Record};

/// The maps [`spawn_pending`] reads.
pub struct PendingMaps {
    pub starts: Map,
    pub switched_in: Map,
    pub fault_batch: Map,
    pub offcpu_batch: Map,
}

/// The interval that began at `start` and ended at `back` (thread `tid` running on CPU), if
/// it is complete and long enough to be reported.
fn record(tid: u32, start: &OffCpuStart, back: &SwitchIn, min_block_ns: u64) -> Option<Record> {
    let blocked_ns = start.ended_by(tid, back)?;
    (blocked_ns >= min_block_ns).then(|| Record::OffCpu(start.record(tid, back.ts_ns)))
}

/// The records waiting in each CPU's batch, one collector batch per CPU that has any.
fn unsent<T: Copy>(per_cpu: &[KernelBatch<T>], as_record: fn(T) -> Record) -> Vec<Batch> {
    per_cpu
        .iter()
        .enumerate()
        .filter_map(|(cpu, b)| {
            let records: Vec<Record> = b
                .records
                .iter()
                .take(b.len as usize)
                .map(|r| as_record(*r))
                .collect();
            (!records.is_empty()).then(|| Batch {
                cpu: cpu as u32,
                records,
                ..Batch::default()
            })
        })
        .collect()
}

fn read_unsent<T: Pod>(
    map: &PerCpuArray<MapData, KernelBatch<T>>,
    as_record: fn(T) -> Record,
    what: &str,
) -> Vec<Batch> {
    match map.get(&0, 0) {
        Ok(per_cpu) => unsent(&per_cpu, as_record),
        Err(e) => {
            eprintln!("bar-probe: warning: the last {what} records of each CPU are left out: {e}");
            Vec::new()
        }
    }
}

/// The complete off-CPU intervals of threads running at the end, one batch per record.
fn running_intervals(
    starts: &HashMap<MapData, u32, OffCpuStart>,
    switched_in: &PerCpuArray<MapData, SwitchIn>,
    min_block_ns: u64,
) -> Vec<Batch> {
    let running = match switched_in.get(&0, 0) {
        Ok(running) => running,
        Err(e) => {
            eprintln!(
                "bar-probe: warning: the off-CPU intervals of threads running at the end are \
                 left out: {e}"
            );
            return Vec::new();
        }
    };
    let on_cpu: StdHashMap<u32, (u32, SwitchIn)> = running
        .iter()
        .enumerate()
        .filter(|(_, back)| back.tid != 0)
        .map(|(cpu, back)| (back.tid, (cpu as u32, *back)))
        .collect();
    starts
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(tid, start)| {
            let (cpu, back) = on_cpu.get(&tid)?;
            let r = record(tid, &start, back, min_block_ns)?;
            Some(Batch {
                cpu: *cpu,
                records: vec![r],
                ..Batch::default()
            })
        })
        .collect()
}

/// Starts the task that, at `stop` (the programs are detached by then), sends what the kernel
/// still holds: the records waiting in batches and the complete off-CPU intervals.
pub fn spawn_pending<T: From<Batch> + Send + 'static>(
    maps: PendingMaps,
    min_block_ns: u64,
    tx: mpsc::Sender<T>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let starts: HashMap<MapData, u32, OffCpuStart> = HashMap::try_from(maps.starts)?;
    let switched_in: PerCpuArray<MapData, SwitchIn> = PerCpuArray::try_from(maps.switched_in)?;
    let fault_batch: PerCpuArray<MapData, KernelBatch<FaultRecord>> =
        PerCpuArray::try_from(maps.fault_batch)?;
    let offcpu_batch: PerCpuArray<MapData, KernelBatch<OffCpuRecord>> =
        PerCpuArray::try_from(maps.offcpu_batch)?;
    Ok(tokio::spawn(async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        let batches = read_unsent(&fault_batch, Record::Fault, "page-fault")
            .into_iter()
            .chain(read_unsent(&offcpu_batch, Record::OffCpu, "off-CPU"))
            .chain(running_intervals(&starts, &switched_in, min_block_ns));
        for batch in batches {
            if tx.send(T::from(batch)).await.is_err() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_waiting_in_batches_are_taken_per_cpu() {
        let fault = |tid| FaultRecord {
            header: bar_ebpf_common::Header {
                tid,
                kind: bar_ebpf_common::kind::FAULT,
                ..Default::default()
            },
            ..FaultRecord::default()
        };
        let mut cpu0 = KernelBatch::<FaultRecord> {
            len: 2,
            ..KernelBatch::default()
        };
        for (i, r) in cpu0.records.iter_mut().enumerate() {
            *r = fault(i as u32 + 1);
        }
        // CPU 1 sent its batch (its records are stale); CPU 2 holds one.
        let cpu1 = KernelBatch { len: 0, ..cpu0 };
        let cpu2 = KernelBatch { len: 1, ..cpu0 };
        let got = unsent(&[cpu0, cpu1, cpu2], Record::Fault);
        let got: Vec<(u32, Vec<Record>)> = got.into_iter().map(|b| (b.cpu, b.records)).collect();
        assert_eq!(
            got,
            vec![
                (0, vec![Record::Fault(fault(1)), Record::Fault(fault(2))]),
                (2, vec![Record::Fault(fault(1))]),
            ]
        );
    }

    #[test]
    fn only_complete_intervals_of_the_running_thread_are_records() {
        let start = OffCpuStart {
            ts_ns: 1_000,
            pid: 7,
            reason: 1,
            state: 2,
            user_stack: 3,
            kernel_stack: 4,
            _pad: 0,
        };
        let back = SwitchIn {
            ts_ns: 5_000,
            tid: 8,
            _pad: 0,
        };
        let Some(Record::OffCpu(r)) = record(8, &start, &back, 0) else {
            panic!("a complete interval is a record");
        };
        assert_eq!((r.header.ts_ns, r.header.tid, r.header.pid), (5_000, 8, 7));
        assert_eq!((r.blocked_ns, r.reason, r.state), (4_000, 1, 2));
        assert_eq!((r.header.user_stack, r.header.kernel_stack), (3, 4));
        // Shorter than asked for, reported already, another thread's return, or a switch-out
        // after the last return (still off CPU).
        assert_eq!(record(8, &start, &back, 5_000), None);
        assert_eq!(
            record(8, &OffCpuStart { ts_ns: 0, ..start }, &back, 0),
            None
        );
        assert_eq!(record(9, &start, &back, 0), None);
        assert_eq!(
            record(
                8,
                &OffCpuStart {
                    ts_ns: 6_000,
                    ..start
                },
                &back,
                0
            ),
            None
        );
    }
}
