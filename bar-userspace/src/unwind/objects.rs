//! The objects whose tables are in the kernel: built once per file and shared by every process
//! that maps it, placed in the kernel's row array, and evicted, least recently used first,
//! when the array is full. What the kernel holds is written through a [`Sink`], so that this
//! bookkeeping is tested without one.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bar_ebpf_common::unwind::{MAX_OBJECTS, UnwindObject, UnwindRow, method};

use super::{compact::Compact, elf::ObjectInfo};

/// Where tables go in the kernel.
pub trait Sink {
    /// Writes `rows` into the row array from index `first`.
    fn write_rows(&mut self, first: u32, rows: &[UnwindRow]);
    /// Publishes (or with `len` 0, withdraws) object `id`'s rows.
    fn set_object(&mut self, id: u32, object: UnwindObject);
}

/// A file as the kernel tells it apart from others: device, inode, size, modification time.
/// A file replaced or rewritten in place is another object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

/// Freed rows are not reused for this long: a program may still be searching an object's rows
/// when the collector withdraws them (a walk takes microseconds).
const COOL_DOWN: Duration = Duration::from_millis(10);

/// Free ranges of the kernel's row array.
#[derive(Debug)]
pub struct RowSpace {
    capacity: u32,
    /// (first, len), sorted, no two adjacent.
    free: Vec<(u32, u32)>,
    cooling: Vec<(Instant, u32, u32)>,
}

impl RowSpace {
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity,
            free: vec![(0, capacity)],
            cooling: Vec::new(),
        }
    }

    pub const fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The first free range that holds `len` rows.
    pub fn alloc(&mut self, len: u32, now: Instant) -> Option<u32> {
        let cooled: Vec<(u32, u32)> = self
            .cooling
            .iter()
            .filter(|c| now.duration_since(c.0) >= COOL_DOWN)
            .map(|c| (c.1, c.2))
            .collect();
        self.cooling.retain(|c| now.duration_since(c.0) < COOL_DOWN);
        for (first, n) in cooled {
            self.insert_free(first, n);
        }
        let i = self.free.iter().position(|&(_, n)| n >= len)?;
        let (first, n) = self.free[i];
        if n == len {
            self.free.remove(i);
        } else {
            self.free[i] = (first + len, n - len);
        }
        Some(first)
    }

    /// Whether `len` rows would fit once the rows cooling down are free.
    pub fn fits_once_cooled(&self, len: u32) -> bool {
        let mut all = Self {
            capacity: self.capacity,
            free: self.free.clone(),
            cooling: Vec::new(),
        };
        for &(_, first, n) in &self.cooling {
            all.insert_free(first, n);
        }
        all.free.iter().any(|&(_, n)| n >= len)
    }

    /// Gives rows back, reusable after the cool-down.
    pub fn release(&mut self, first: u32, len: u32, now: Instant) {
        self.cooling.push((now, first, len));
    }

    fn insert_free(&mut self, first: u32, len: u32) {
        let i = self.free.partition_point(|&(f, _)| f < first);
        self.free.insert(i, (first, len));
        // Merge with the neighbours.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    /// Rows in use or cooling down.
    pub fn used(&self) -> u64 {
        u64::from(self.capacity) - self.free.iter().map(|&(_, n)| u64::from(n)).sum::<u64>()
    }
}

/// An object with a table.
#[derive(Debug)]
pub struct Object {
    pub name: String,
    pub info: ObjectInfo,
    /// The table's addresses are relative to this one.
    pub base: u64,
    /// The rows' place in the kernel, while they are there.
    pub placed: Option<(u32, u32)>,
    pub method: u32,
    /// Mappings of live processes that use it.
    pub refs: u32,
    pub last_used: Instant,
}

/// What the tables cost and what became of them, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub objects: u64,
    pub rows: u64,
    pub bytes: u64,
    pub build_ms: u64,
    pub evicted: u64,
    /// Objects that got no table, and why.
    pub failed: Vec<(String, String)>,
    /// Entries of the objects' call frame information left out as unparsable, in all and
    /// by object (with why the first was).
    pub entries_skipped: u64,
    pub partial: Vec<(String, String)>,
}

/// Every object bar has built a table for.
pub struct Objects {
    objects: Vec<Option<Object>>,
    by_key: HashMap<ObjectKey, u32>,
    by_build_id: HashMap<Vec<u8>, u32>,
    space: RowSpace,
    pub stats: TableStats,
}

impl Objects {
    pub fn new(capacity: u32) -> Self {
        Self {
            objects: Vec::new(),
            by_key: HashMap::new(),
            by_build_id: HashMap::new(),
            space: RowSpace::new(capacity),
            stats: TableStats::default(),
        }
    }

    pub fn get(&self, id: u32) -> Option<&Object> {
        self.objects.get(id as usize).and_then(Option::as_ref)
    }

    /// The object already known for this file (or another copy with its build id).
    pub fn find(&self, key: &ObjectKey, build_id: Option<&[u8]>) -> Option<u32> {
        self.by_key
            .get(key)
            .or_else(|| build_id.and_then(|b| self.by_build_id.get(b)))
            .copied()
    }

    /// Adds an object and places its table in the kernel, evicting least recently used
    /// tables if it does not fit. `None` when it cannot have a table even so.
    pub fn add(
        &mut self,
        key: ObjectKey,
        name: String,
        info: ObjectInfo,
        table: &Compact,
        build_ms: u64,
        sink: &mut impl Sink,
    ) -> Option<u32> {
        let now = Instant::now();
        let len = u32::try_from(table.rows.len()).ok()?;
        if len == 0 || len > self.space.capacity() {
            return None;
        }
        let id = match self.objects.iter().position(Option::is_none) {
            Some(i) => i as u32,
            None if (self.objects.len() as u32) < MAX_OBJECTS => {
                self.objects.push(None);
                self.objects.len() as u32 - 1
            }
            None => self.evict_unused_slot(now, sink)?,
        };
        let first = loop {
            let now = Instant::now();
            if let Some(first) = self.space.alloc(len, now) {
                break first;
            }
            if self.space.fits_once_cooled(len) {
                std::thread::sleep(COOL_DOWN);
            } else if !self.evict_one(now, sink) {
                return None;
            }
        };
        sink.write_rows(first, &table.rows);
        let method = if info.go { method::GO } else { method::TABLE };
        sink.set_object(
            id,
            UnwindObject {
                first,
                len,
                method,
                _pad: 0,
            },
        );
        if let Some(b) = &info.build_id {
            self.by_build_id.insert(b.clone(), id);
        }
        self.by_key.insert(key, id);
        self.objects[id as usize] = Some(Object {
            name,
            info,
            base: table.base,
            placed: Some((first, len)),
            method,
            refs: 0,
            last_used: now,
        });
        self.stats.objects += 1;
        self.stats.rows += u64::from(len);
        self.stats.bytes += table.bytes() as u64;
        self.stats.build_ms += build_ms;
        Some(id)
    }

    /// A process maps object `id` (once more).
    pub fn hold(&mut self, id: u32) {
        if let Some(o) = self.objects.get_mut(id as usize).and_then(Option::as_mut) {
            o.refs += 1;
            o.last_used = Instant::now();
        }
    }

    /// A process no longer maps object `id`. Its table stays until the space is needed.
    pub fn release(&mut self, id: u32) {
        if let Some(o) = self.objects.get_mut(id as usize).and_then(Option::as_mut) {
            o.refs = o.refs.saturating_sub(1);
            o.last_used = Instant::now();
        }
    }

    /// Objects in use were just seen in an event of a process: they are the last to go.
    pub fn touch(&mut self, id: u32) {
        if let Some(o) = self.objects.get_mut(id as usize).and_then(Option::as_mut) {
            o.last_used = Instant::now();
        }
    }

    /// Withdraws the table of the least recently used object that has one, unused objects
    /// first. False when none has.
    fn evict_one(&mut self, now: Instant, sink: &mut impl Sink) -> bool {
        let victim = self
            .objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().filter(|o| o.placed.is_some()).map(|o| (i, o)))
            .min_by_key(|(_, o)| (o.refs > 0, o.last_used))
            .map(|(i, _)| i);
        let Some(i) = victim else {
            return false;
        };
        self.withdraw(i as u32, now, sink);
        true
    }

    fn withdraw(&mut self, id: u32, now: Instant, sink: &mut impl Sink) {
        let Some(o) = self.objects.get_mut(id as usize).and_then(Option::as_mut) else {
            return;
        };
        if let Some((first, len)) = o.placed.take() {
            sink.set_object(id, UnwindObject::default());
            self.space.release(first, len, now);
            self.stats.evicted += 1;
        }
    }

    /// Frees the slot of the least recently used object no process maps.
    fn evict_unused_slot(&mut self, now: Instant, sink: &mut impl Sink) -> Option<u32> {
        let (i, _) = self
            .objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().filter(|o| o.refs == 0).map(|o| (i, o)))
            .min_by_key(|(_, o)| o.last_used)?;
        let id = i as u32;
        self.withdraw(id, now, sink);
        self.by_key.retain(|_, v| *v != id);
        self.by_build_id.retain(|_, v| *v != id);
        self.objects[i] = None;
        Some(id)
    }

    /// Rows in the kernel now.
    pub fn rows_used(&self) -> u64 {
        self.space.used()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Kernel {
        rows: HashMap<u32, UnwindRow>,
        objects: HashMap<u32, UnwindObject>,
    }

    impl Sink for Kernel {
        fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) {
            for (i, r) in rows.iter().enumerate() {
                self.rows.insert(first + i as u32, *r);
            }
        }
        fn set_object(&mut self, id: u32, object: UnwindObject) {
            self.objects.insert(id, object);
        }
    }

    fn table(n: u32) -> Compact {
        Compact {
            base: 0x1000,
            rows: (0..n).map(|i| UnwindRow::new(i * 4, 1, 8, 0, 0)).collect(),
            unsupported: 0,
        }
    }

    fn key(inode: u64) -> ObjectKey {
        ObjectKey {
            dev: 1,
            inode,
            size: 10,
            mtime_ns: 0,
        }
    }

    #[test]
    fn row_space_first_fit_merges_and_cools_down() {
        let t0 = Instant::now();
        let mut s = RowSpace::new(100);
        assert_eq!(s.alloc(40, t0), Some(0));
        assert_eq!(s.alloc(40, t0), Some(40));
        assert_eq!(s.alloc(40, t0), None);
        s.release(0, 40, t0);
        // Still cooling: a program may be reading them.
        assert_eq!(s.alloc(30, t0), None);
        let later = t0 + COOL_DOWN;
        assert_eq!(s.alloc(30, later), Some(0));
        s.release(40, 40, later);
        // 30..100 is free once cooled, in one piece.
        assert_eq!(s.alloc(70, later + COOL_DOWN), Some(30));
        assert_eq!(s.used(), 100);
    }

    #[test]
    fn objects_are_shared_by_key_and_build_id_and_evicted_lru() {
        let mut k = Kernel::default();
        let mut objs = Objects::new(10);
        let info = |b: u8| ObjectInfo {
            build_id: Some(vec![b]),
            ..ObjectInfo::default()
        };
        let a = objs
            .add(key(1), "a".into(), info(1), &table(6), 1, &mut k)
            .unwrap();
        assert_eq!(
            k.objects[&a],
            UnwindObject {
                first: 0,
                len: 6,
                method: method::TABLE,
                _pad: 0
            }
        );
        assert_eq!(k.rows.len(), 6);
        // The same file under another key (another mount namespace) by its build id.
        assert_eq!(objs.find(&key(9), Some(&[1])), Some(a));
        assert_eq!(objs.find(&key(1), None), Some(a));
        assert_eq!(objs.find(&key(2), Some(&[2])), None);
        objs.hold(a);
        // b does not fit beside a: a goes, although in use, as nothing else can.
        let b = objs
            .add(key(2), "b".into(), info(2), &table(8), 1, &mut k)
            .unwrap();
        assert_eq!(k.objects[&a].len, 0);
        assert_eq!(k.objects[&b].len, 8);
        assert_eq!(objs.stats.evicted, 1);
        // Bigger than everything: refused, nothing evicted.
        assert!(
            objs.add(key(3), "c".into(), info(3), &table(11), 1, &mut k)
                .is_none()
        );
        assert_eq!(objs.stats.evicted, 1);
    }
}
