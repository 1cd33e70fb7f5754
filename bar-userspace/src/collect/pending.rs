//! Off-CPU intervals the kernel has not reported when the recording ends. The programs report
//! a thread's interval at its next switch-out, not when it runs again (bar-ebpf `offcpu.rs`),
//! so a thread that came back and still runs holds one complete interval: its switch-out in
//! `OFFCPU_START`, its return in the `SWITCHED_IN` slot of the CPU it runs on. This task reads
//! both once the programs are detached.

use std::collections::HashMap as StdHashMap;

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use bar_ebpf_common::{OffCpuStart, SwitchIn};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{Batch, Record};

/// The interval that began at `start` and ended at `back` (thread `tid` running on CPU), if
/// it is complete and long enough to be reported.
fn record(tid: u32, start: &OffCpuStart, back: &SwitchIn, min_block_ns: u64) -> Option<Record> {
    let blocked_ns = start.ended_by(tid, back)?;
    (blocked_ns >= min_block_ns).then(|| Record::OffCpu(start.record(tid, back.ts_ns)))
}

/// Starts the task that, at `stop` (the programs are detached by then), sends the complete
/// intervals left in `starts` and `switched_in`, one batch per CPU they ended on.
pub fn spawn_pending<T: From<Batch> + Send + 'static>(
    starts: Map,
    switched_in: Map,
    min_block_ns: u64,
    tx: mpsc::Sender<T>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let starts: HashMap<MapData, u32, OffCpuStart> = HashMap::try_from(starts)?;
    let switched_in: PerCpuArray<MapData, SwitchIn> = PerCpuArray::try_from(switched_in)?;
    Ok(tokio::spawn(async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        let running = match switched_in.get(&0, 0) {
            Ok(running) => running,
            Err(e) => {
                eprintln!(
                    "bar-probe: warning: the off-CPU intervals of threads running at the end \
                     are left out: {e}"
                );
                return;
            }
        };
        let on_cpu: StdHashMap<u32, (u32, SwitchIn)> = running
            .iter()
            .enumerate()
            .filter(|(_, back)| back.tid != 0)
            .map(|(cpu, back)| (back.tid, (cpu as u32, *back)))
            .collect();
        for (tid, start) in starts.iter().filter_map(Result::ok) {
            let Some((cpu, back)) = on_cpu.get(&tid) else {
                continue;
            };
            if let Some(r) = record(tid, &start, back, min_block_ns) {
                let batch = Batch {
                    cpu: *cpu,
                    records: vec![r],
                    ..Batch::default()
                };
                if tx.send(T::from(batch)).await.is_err() {
                    return;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
