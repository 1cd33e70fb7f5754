//! The kernel's side of the tables: the row array (written through a shared memory mapping of
//! the pages written, not a system call per row), the objects' places, the processes' mapping
//! entries.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, lpm_trie::Key},
};
use bar_ebpf_common::maps;
use bar_ebpf_common::unwind::{
    MAPPING_KEY_BITS, MappingKey, UnwindMapping, UnwindObject, UnwindRow, mapping_key,
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

/// The row array. Rows are written through a shared memory mapping of the pages they fall
/// in, made for the write and undone after it: a mapping of a BPF array maps all of its pages at
/// once, so keeping the whole array mapped would count its 64 MiB in bar's resident memory for
/// the whole recording, whatever the tables use of it.
struct Rows {
    array: Array<MapData, UnwindRow>,
    /// The array's descriptor, owned by `array`.
    fd: RawFd,
    len: u32,
}

impl Rows {
    /// Copies `rows` to index `first` through a mapping of their pages, or through one system
    /// call per row if the mapping cannot be made.
    fn write(&mut self, first: u32, rows: &[UnwindRow]) {
        if self.write_mapped(first, rows).is_err() {
            for (i, r) in rows.iter().enumerate() {
                let _ = self.array.set(first + i as u32, r, 0);
            }
        }
    }

    fn write_mapped(&self, first: u32, rows: &[UnwindRow]) -> io::Result<()> {
        let page = page_size();
        let start = first as usize * size_of::<UnwindRow>();
        let end = start + size_of_val(rows);
        let offset = start / page * page;
        let len = end.div_ceil(page) * page - offset;
        // SAFETY: a shared mapping of whole pages of the array map's memory (created
        // BPF_F_MMAPABLE), inside it (the caller checked `end`); unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `start - offset + size_of_val(rows)` bytes lie inside the `len` just mapped;
        // programs only read rows of objects published after this write (`set_object` is a
        // system call, a barrier).
        unsafe {
            std::ptr::copy_nonoverlapping(
                rows.as_ptr().cast::<u8>(),
                p.cast::<u8>().add(start - offset),
                size_of_val(rows),
            );
            libc::munmap(p, len);
        }
        Ok(())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
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
        let fd = rows.fd().as_fd().as_raw_fd();
        let rows = Rows {
            array: Array::try_from(Map::Array(rows))?,
            fd,
            len,
        };
        // A mapping of the first row says now, rather than at the first table, whether this
        // kernel maps the array at all.
        rows.write_mapped(0, &[UnwindRow::default()])
            .map_err(|e| anyhow::anyhow!("cannot map the unwind rows into memory: {e}"))?;
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
        self.rows.write(first, rows);
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
