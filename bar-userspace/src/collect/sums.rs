//! The sums the kernel keeps instead of sending faults and off-CPU intervals one by one
//! (`--aggregate`). Programs add to the half of `SUMS` whose parity `SUM_EPOCH` names; every
//! window this task moves `SUM_EPOCH` on, waits for programs that read the old value to finish,
//! and takes the old half out of the map: one record per key and CPU, stamped with the middle
//! of its window. Entries are deleted after they are read, so each event is counted once; one
//! added to an old entry late (a program that straddled the flip) stays in the map under the
//! old parity and is collected with that parity's next window.

use std::time::Duration;

use aya::maps::{Array, Map, MapData, PerCpuHashMap};
use bar_ebpf_common::{Header, SumKey, SumValue};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{Batch, Record};
use crate::system;

/// A BPF program runs for microseconds without being preempted: one that read the old epoch
/// has long finished after this.
const SETTLE: Duration = Duration::from_millis(2);

struct Sums {
    map: PerCpuHashMap<MapData, SumKey, SumValue>,
    epoch_map: Array<MapData, u32>,
    epoch: u32,
    window_start: u64,
}

impl Sums {
    /// Moves programs on to the next window; returns the time the last one ended.
    fn flip(&mut self) -> anyhow::Result<u64> {
        self.epoch = self.epoch.wrapping_add(1);
        self.epoch_map.set(0, self.epoch, 0)?;
        Ok(system::monotonic_ns())
    }

    /// Takes out the entries of `parity` as records stamped `ts`, in one batch per CPU.
    fn take(&mut self, parity: u32, ts: u64, batches: &mut Vec<Batch>) {
        let keys: Vec<SumKey> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.epoch == parity)
            .collect();
        for key in keys {
            let Ok(values) = self.map.get(&key, 0) else {
                continue;
            };
            let _ = self.map.remove(&key);
            for (cpu, v) in values.iter().enumerate() {
                if v.count == 0 {
                    continue;
                }
                while batches.len() <= cpu {
                    let cpu = batches.len() as u32;
                    batches.push(Batch {
                        cpu,
                        ..Batch::default()
                    });
                }
                batches[cpu].records.push(Record::Summed {
                    header: Header {
                        ts_ns: ts,
                        kind: key.kind,
                        pid: key.pid,
                        tid: key.tid,
                        user_stack: key.user_stack,
                        kernel_stack: key.kernel_stack,
                        _pad: 0,
                    },
                    detail: key.detail,
                    state: key.state,
                    count: v.count,
                    total: v.total,
                });
            }
        }
    }
}

/// Starts the task that collects `SUMS` every `window` and sends the records as `T`, like a
/// CPU's reader; at `stop` (the programs are detached by then) it takes what is left of both
/// halves and ends.
pub fn spawn_sums<T: From<Batch> + Send + 'static>(
    map: Map,
    epoch: Map,
    window: Duration,
    tx: mpsc::Sender<T>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let mut sums = Sums {
        map: PerCpuHashMap::try_from(map)?,
        epoch_map: Array::try_from(epoch)?,
        epoch: 0,
        window_start: system::monotonic_ns(),
    };
    sums.epoch_map.set(0, 0, 0)?;
    Ok(tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                () = tokio::time::sleep(window) => false,
                _ = stop.changed() => true,
            };
            let old = sums.epoch & 1;
            let Ok(end) = sums.flip() else {
                eprintln!("bar-probe: cannot switch the kernel's sums to a new window");
                return;
            };
            tokio::time::sleep(SETTLE).await;
            let ts = sums.window_start + (end - sums.window_start) / 2;
            let mut batches = Vec::new();
            sums.take(old, ts, &mut batches);
            if stopping {
                sums.take(old ^ 1, ts, &mut batches);
            }
            sums.window_start = end;
            for batch in batches.into_iter().filter(|b| !b.records.is_empty()) {
                if tx.send(T::from(batch)).await.is_err() {
                    return;
                }
            }
            // A stop that came while this window was taken out is seen by the next turn's
            // `changed()` at once, which takes both halves: returning here would lose what
            // the programs added since this window's flip (the last events of a recording).
            if stopping {
                return;
            }
        }
    }))
}
