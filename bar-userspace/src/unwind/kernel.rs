//! The kernel's side of the tables: the row array (written through a shared memory mapping of
//! it, not a system call per row), the objects' places, the processes' mapping entries.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, lpm_trie::Key},
};
use bar_ebpf_common::unwind::{
    MAPPING_KEY_BITS, MappingKey, UnwindMapping, UnwindObject, UnwindRow, mapping_key, maps,
};

use super::objects::Sink;

/// The blocks of addresses, each a power of two aligned to its size, that make up
/// `start..end`: an LPM trie entry matches a prefix, so a range takes one entry per block.
pub fn blocks(start: u64, end: u64) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let align = if at == 0 {
            63
        } else {
            at.trailing_zeros().min(63)
        };
        let fit = 63 - (end - at).leading_zeros();
        let bits = align.min(fit);
        out.push((at, 64 - bits));
        at += 1u64 << bits;
    }
    out
}

/// What the loader asks of the kernel besides the rows (a trait, so that it is tested without
/// one).
pub trait Kernel: Sink {
    /// Adds the entries of one mapping of `pid`; returns their keys, to remove them later.
    fn add_mapping(&mut self, pid: u32, value: UnwindMapping) -> Vec<(u32, MappingKey)>;
    fn remove_keys(&mut self, keys: &[(u32, MappingKey)]);
    /// Marks `pid`'s entries of `generation` as the ones to use.
    fn set_process(&mut self, pid: u32, generation: u32);
    fn remove_process(&mut self, pid: u32);
}

/// The rows, mapped into bar's memory.
struct Rows {
    ptr: NonNull<UnwindRow>,
    len: u32,
    _map: MapData,
}

// SAFETY: the mapping belongs to this value alone, which one thread uses at a time.
unsafe impl Send for Rows {}

impl Drop for Rows {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `KernelTables::take`, of this size.
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len as usize * size_of::<UnwindRow>(),
            );
        }
    }
}

pub struct KernelTables {
    rows: Rows,
    objects: Array<MapData, UnwindObject>,
    mappings: LpmTrie<MapData, MappingKey, UnwindMapping>,
    processes: HashMap<MapData, u32, u32>,
    epoch: Array<MapData, u64>,
    epoch_value: u64,
}

impl KernelTables {
    /// Tells walks that a process's generation changed (`UNWIND_EPOCH` in bar-ebpf: entry 1
    /// is the collector's, entry 0 the exec program's).
    fn bump_epoch(&mut self) {
        self.epoch_value += 1;
        let _ = self.epoch.set(1, self.epoch_value, 0);
    }

    /// Takes the table maps out of the loaded object.
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow::anyhow!("map {name} missing from the object"))
        };
        let Map::Array(rows) = take(maps::UNWIND_ROWS)? else {
            anyhow::bail!("map {} is not an array", maps::UNWIND_ROWS);
        };
        let len = rows.info()?.max_entries();
        let bytes = len as usize * size_of::<UnwindRow>();
        // SAFETY: a shared mapping of the array map's memory (created BPF_F_MMAPABLE), of its
        // size; unmapped on drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                rows.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            anyhow::bail!(
                "cannot map the unwind rows into memory: {}",
                io::Error::last_os_error()
            );
        }
        let rows = Rows {
            ptr: NonNull::new(p.cast()).ok_or_else(|| anyhow::anyhow!("null mapping"))?,
            len,
            _map: rows,
        };
        Ok(Self {
            rows,
            objects: Array::try_from(take(maps::UNWIND_OBJECTS)?)?,
            mappings: LpmTrie::try_from(take(maps::UNWIND_MAPPINGS)?)?,
            processes: HashMap::try_from(take(maps::UNWIND_PROCESSES)?)?,
            epoch: Array::try_from(take(maps::UNWIND_EPOCH)?)?,
            epoch_value: 0,
        })
    }

    /// Rows the array holds.
    pub const fn capacity(&self) -> u32 {
        self.rows.len
    }
}

impl Sink for KernelTables {
    fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) {
        let end = (first as usize).saturating_add(rows.len());
        if end > self.rows.len as usize {
            return;
        }
        // SAFETY: inside the mapping (checked above); programs only read rows of objects
        // published after this write (`set_object` is a system call, a barrier).
        unsafe {
            std::ptr::copy_nonoverlapping(
                rows.as_ptr(),
                self.rows.ptr.as_ptr().add(first as usize),
                rows.len(),
            );
        }
    }

    fn set_object(&mut self, id: u32, object: UnwindObject) {
        let _ = self.objects.set(id, object, 0);
    }
}

impl Kernel for KernelTables {
    fn add_mapping(&mut self, pid: u32, value: UnwindMapping) -> Vec<(u32, MappingKey)> {
        let mut keys = Vec::new();
        for (at, bits) in blocks(value.start, value.end) {
            let prefix = MAPPING_KEY_BITS - 64 + bits;
            let key = mapping_key(pid, at);
            if self
                .mappings
                .insert(&Key::new(prefix, key), value, 0)
                .is_ok()
            {
                keys.push((prefix, key));
            }
        }
        keys
    }

    fn remove_keys(&mut self, keys: &[(u32, MappingKey)]) {
        for &(prefix, key) in keys {
            let _ = self.mappings.remove(&Key::new(prefix, key));
        }
    }

    fn set_process(&mut self, pid: u32, generation: u32) {
        let _ = self.processes.insert(pid, generation, 0);
        self.bump_epoch();
    }

    fn remove_process(&mut self, pid: u32) {
        let _ = self.processes.remove(&pid);
        self.bump_epoch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_aligned_power_of_two_blocks() {
        assert_eq!(blocks(0x1000, 0x2000), [(0x1000, 52)]);
        assert_eq!(blocks(0x3000, 0x8000), [(0x3000, 52), (0x4000, 50)]);
        // A typical text mapping: a handful of blocks, covering exactly the range.
        let (start, end) = (0x7f12_3402_8000u64, 0x7f12_341a_d000u64);
        let b = blocks(start, end);
        assert!(b.len() < 2 * 64, "{}", b.len());
        let mut at = start;
        for &(s, bits) in &b {
            assert_eq!(s, at);
            at += 1 << (64 - bits);
        }
        assert_eq!(at, end);
        assert!(blocks(5, 5).is_empty());
    }
}
