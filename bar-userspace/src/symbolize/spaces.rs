//! Which memory map each process's stacks resolve against, over time. A process's map is read
//! from /proc when it is first seen and again when it execs; a child that forks without exec
//! shares its parent's map (fork copies it), so a storm of short-lived children costs no read
//! of /proc each and keeps its frames named even when a child is gone before it could be read.
//! What is known of a process is forgotten a while after it exits, so that a host that starts
//! thousands of processes a minute does not make the collector grow with them.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Mutex,
};

use super::{FastMap, Mapping, ProcessInfo, Symbolizer, read_maps};
use crate::system;

/// Memory maps read the moment a reader of the kernel's buffers meets an exec record, for the
/// symbolizer to take when it gets to that record. It gets there behind every event before it,
/// which under a storm of events took longer than a short-lived program lived: its map was
/// gone, and all 30,000 faults of one were `[unknown]`.
#[derive(Default)]
pub struct ExecMaps(Mutex<HashMap<(u32, u64), (ProcessInfo, u64)>>);

/// Maps read ahead and not yet taken, at most (an exec storm reads no more until the
/// symbolizer catches up).
const EXEC_MAPS_HELD: usize = 4096;

impl ExecMaps {
    /// Reads the map of process `pid`, which exec'd at `ts`.
    pub fn read(&self, pid: u32, ts: u64) {
        if self.0.lock().map_or(true, |m| m.len() >= EXEC_MAPS_HELD) {
            return;
        }
        let info = Symbolizer::snapshot(pid);
        let taken = system::monotonic_ns();
        if let Ok(mut m) = self.0.lock() {
            m.insert((pid, ts), (info, taken));
        }
    }

    fn take(&self, pid: u32, ts: u64) -> Option<(ProcessInfo, u64)> {
        self.0.lock().ok()?.remove(&(pid, ts))
    }
}

/// A snapshot of one process's memory map, which stacks of one or more processes resolve
/// against (caches are keyed by it).
pub type SpaceId = u32;

pub(super) struct Space {
    pub(super) info: ProcessInfo,
    /// The process whose map this is (read from its /proc, or inherited by fork from it).
    pub(super) owner: u32,
    /// Periods of processes (entries of `Spaces::processes`) that resolve against it.
    users: u32,
    /// When it was read, on the monotonic clock.
    taken_ns: u64,
}

#[derive(Default)]
pub(super) struct Spaces {
    /// Maps read at exec, ahead of the records.
    pub(super) exec_maps: std::sync::Arc<ExecMaps>,
    /// Per pid, the space it resolves against from a time on (sorted by that time): one per
    /// program it ran, one per process that had the pid.
    processes: FastMap<u32, Vec<(u64, SpaceId)>>,
    spaces: FastMap<SpaceId, Space>,
    next: SpaceId,
    /// Processes that ended, and when, oldest first.
    exited: VecDeque<(u32, u64)>,
}

impl Spaces {
    fn add(&mut self, owner: u32) -> SpaceId {
        let info = Symbolizer::snapshot(owner);
        self.add_read(owner, info, system::monotonic_ns())
    }

    fn add_read(&mut self, owner: u32, info: ProcessInfo, taken_ns: u64) -> SpaceId {
        self.next += 1;
        self.spaces.insert(
            self.next,
            Space {
                info,
                owner,
                users: 1,
                taken_ns,
            },
        );
        self.next
    }

    pub(super) fn get(&self, id: SpaceId) -> Option<&Space> {
        self.spaces.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: SpaceId) -> Option<&mut Space> {
        self.spaces.get_mut(&id)
    }

    /// Reads a process's map the first time it is seen.
    pub(super) fn note(&mut self, pid: u32) {
        if !self.processes.contains_key(&pid) {
            let id = self.add(pid);
            self.processes.insert(pid, vec![(0, id)]);
        }
    }

    /// The process replaced its program at `ts`: stacks from then on use a new map.
    pub(super) fn exec(&mut self, pid: u32, ts: u64) {
        let previous = self.space(pid, u64::MAX);
        if let Some(s) = previous.and_then(|id| self.spaces.get_mut(&id))
            && s.owner == pid
        {
            s.info.alive = false;
        }
        let id = match self.exec_maps.take(pid, ts) {
            Some((info, taken)) => self.add_read(pid, info, taken),
            None => self.add(pid),
        };
        self.insert(pid, ts, id);
    }

    /// `parent` started process `child` at `ts`, with a copy of its map.
    pub(super) fn fork(&mut self, parent: u32, child: u32, ts: u64) {
        // Read before the fork was heard of (the child's first records came first): a map
        // read from the child itself is as good, unless it was gone by then.
        let read_since = self
            .processes
            .get(&child)
            .and_then(|gens| gens.last())
            .and_then(|&(_, id)| self.spaces.get(&id))
            .is_some_and(|s| s.owner == child && s.taken_ns >= ts && s.info.alive);
        if read_since {
            return;
        }
        self.note(parent);
        let Some(id) = self.space(parent, ts) else {
            return;
        };
        if let Some(s) = self.spaces.get_mut(&id) {
            s.users += 1;
        }
        self.insert(child, ts, id);
    }

    fn insert(&mut self, pid: u32, ts: u64, id: SpaceId) {
        let gens = self.processes.entry(pid).or_default();
        let at = gens.partition_point(|g| g.0 <= ts);
        gens.insert(at, (ts, id));
    }

    /// The process ended at `ts`; it is forgotten by [`Self::prune`]. Its map is not read
    /// again: the pid may soon be another process's.
    pub(super) fn exit(&mut self, pid: u32, ts: u64) {
        if let Some(id) = self.space(pid, ts)
            && let Some(s) = self.spaces.get_mut(&id)
            && s.owner == pid
        {
            s.info.alive = false;
        }
        self.exited.push_back((pid, ts));
    }

    /// The space process `pid` resolves against at time `ts` (before its first known time,
    /// the first: records can precede the first sighting by a few milliseconds).
    pub(super) fn space(&self, pid: u32, ts: u64) -> Option<SpaceId> {
        let gens = self.processes.get(&pid)?;
        gens.get(gens.partition_point(|g| g.0 <= ts).saturating_sub(1))
            .map(|g| g.1)
    }

    /// Gives `pid` a map of its own, read now, in place of `shared` (inherited from its parent)
    /// from `since` on; None when the process is gone and the inherited map is all there is.
    pub(super) fn unshare(&mut self, pid: u32, shared: SpaceId) -> Option<SpaceId> {
        let info = Symbolizer::snapshot(pid);
        if !info.alive {
            return None;
        }
        self.next += 1;
        let id = self.next;
        let mut users = 0;
        for g in self.processes.get_mut(&pid).into_iter().flatten() {
            if g.1 == shared {
                g.1 = id;
                users += 1;
            }
        }
        self.release(shared, users);
        self.spaces.insert(
            id,
            Space {
                info,
                owner: pid,
                users,
                taken_ns: system::monotonic_ns(),
            },
        );
        Some(id)
    }

    /// `n` fewer periods use space `id`; returns true when it was dropped.
    fn release(&mut self, id: SpaceId, n: u32) -> bool {
        let Some(s) = self.spaces.get_mut(&id) else {
            return false;
        };
        s.users = s.users.saturating_sub(n);
        if s.users == 0 {
            self.spaces.remove(&id);
            return true;
        }
        false
    }

    /// Forgets processes that ended before `before`: their periods up to their end, and the
    /// spaces no process uses any more. Returns the pids forgotten and the spaces dropped.
    pub(super) fn prune(&mut self, before: u64) -> (Vec<u32>, Vec<SpaceId>) {
        let mut pids = Vec::new();
        let mut dropped = Vec::new();
        while let Some(&(pid, ts)) = self.exited.front() {
            if ts >= before {
                break;
            }
            self.exited.pop_front();
            let Some(gens) = self.processes.get_mut(&pid) else {
                continue;
            };
            // A pid used again since (by a process forked after the exit) keeps that period.
            let ended = gens.partition_point(|g| g.0 <= ts);
            let gone: Vec<SpaceId> = gens.drain(..ended).map(|g| g.1).collect();
            if gens.is_empty() {
                self.processes.remove(&pid);
                pids.push(pid);
            }
            for id in gone {
                if self.release(id, 1) {
                    dropped.push(id);
                }
            }
        }
        (pids, dropped)
    }

    /// Processes and spaces known, for the collector's own accounting.
    #[cfg(test)]
    pub(super) fn sizes(&self) -> (usize, usize) {
        (self.processes.len(), self.spaces.len())
    }
}

impl Symbolizer {
    /// Takes a snapshot of a process's mappings the first time it is seen.
    pub fn note_process(&mut self, pid: u32) {
        self.spaces.note(pid);
    }

    /// The process replaced its program at `ts`: stacks from before keep the old snapshot,
    /// stacks from then on use a new one (read by [`ExecMaps::read`] if it was).
    pub fn exec(&mut self, pid: u32, ts: u64) {
        self.spaces.exec(pid, ts);
    }

    /// Takes the maps that the readers of the kernel's buffers read at exec from `maps`.
    pub fn use_exec_maps(&mut self, maps: std::sync::Arc<ExecMaps>) {
        self.spaces.exec_maps = maps;
    }

    /// `parent` started process `child` at `ts`: the child has its parent's map.
    pub fn fork(&mut self, parent: u32, child: u32, ts: u64) {
        self.spaces.fork(parent, child, ts);
    }

    /// Process `pid` ended at `ts`; [`Self::prune`] forgets it.
    pub fn exited(&mut self, pid: u32, ts: u64) {
        self.spaces.exit(pid, ts);
    }

    /// Forgets the processes that ended before `before` (monotonic ns), with the stacks
    /// resolved against maps no process uses any more; returns the pids forgotten.
    pub fn prune(&mut self, before: u64) -> Vec<u32> {
        let (pids, dropped) = self.spaces.prune(before);
        for id in dropped {
            self.user_frames.remove(&id);
            self.resolved.remove(&id);
        }
        pids
    }

    /// The memory map process `pid` had at time `ts`.
    pub fn space(&mut self, pid: u32, ts: u64) -> SpaceId {
        if let Some(id) = self.spaces.space(pid, ts) {
            return id;
        }
        self.spaces.note(pid);
        self.spaces.space(pid, ts).unwrap_or_default()
    }

    /// Makes sure each map covers the addresses of its new stacks: a forked child whose code
    /// is outside the map it shares with its parent (it loaded a library, or a JIT wrote code)
    /// gets a map of its own, read now; a process's own map is read again when it misses an
    /// address, and its perf map when a JIT address is not in it. Returns the children given a
    /// map of their own: (pid, shared map) -> own map.
    pub(super) fn cover(
        &mut self,
        stacks: &mut [((SpaceId, i32), u32, Vec<u64>)],
    ) -> HashMap<(u32, SpaceId), SpaceId> {
        let covered = |m: &[Mapping], a: u64| m.iter().any(|x| x.start <= a && a < x.end);
        // Only the leaf is surely code: the return addresses of a frame-pointer walk through
        // code without frame pointers may be anything.
        let mut children: HashSet<(SpaceId, u32)> = HashSet::new();
        for ((space, _), pid, addrs) in stacks.iter() {
            if let (Some(sp), Some(&leaf)) = (self.spaces.get(*space), addrs.last())
                && sp.owner != *pid
                && !covered(&sp.info.mappings, leaf)
            {
                children.insert((*space, *pid));
            }
        }
        let mut moved = HashMap::new();
        for (space, pid) in children {
            if let Some(own) = self.spaces.unshare(pid, space) {
                moved.insert((pid, space), own);
            }
        }
        let mut by_space: HashMap<SpaceId, Vec<u64>> = HashMap::new();
        for ((space, _), pid, addrs) in stacks.iter_mut() {
            if let Some(&own) = moved.get(&(*pid, *space)) {
                *space = own;
            }
            by_space.entry(*space).or_default().extend(addrs.iter());
        }
        for (space, addrs) in &by_space {
            let Some(sp) = self.spaces.get_mut(*space) else {
                continue;
            };
            let (pid, info) = (sp.owner, &mut sp.info);
            if info.alive && addrs.iter().any(|&a| !covered(&info.mappings, a)) {
                match read_maps(pid, &info.root) {
                    Some(m) => info.mappings = m,
                    None => info.alive = false,
                }
            }
            // Code in anonymous memory is a JIT's: its names are in the perf map, which may
            // have grown since it was read.
            let anonymous = |a: u64| {
                info.mappings
                    .iter()
                    .find(|x| x.start <= a && a < x.end)
                    .is_none_or(|x| x.path.is_empty() || x.path.starts_with("[anon"))
            };
            if info.alive
                && addrs
                    .iter()
                    .any(|&a| anonymous(a) && info.perf_map.lookup(a).is_none())
            {
                info.perf_map.refresh(pid);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pids no process has here (above the largest pid_max).
    const GONE: u32 = 4_194_304 + 10;

    #[test]
    fn a_forked_child_shares_its_parents_map_until_it_execs() {
        let mut s = Spaces::default();
        let me = std::process::id();
        s.note(me);
        let parent = s.space(me, 5).unwrap();
        assert!(s.get(parent).unwrap().info.alive);
        s.fork(me, GONE, 10);
        assert_eq!(s.space(GONE, 11), Some(parent));
        s.exec(GONE, 20);
        let own = s.space(GONE, 21).unwrap();
        assert_ne!(own, parent);
        // Before the exec, the inherited map still holds.
        assert_eq!(s.space(GONE, 15), Some(parent));
        // The child ends: forgotten, and the parent's map stays for the parent.
        s.exit(GONE, 30);
        assert_eq!(s.prune(25), (vec![], vec![]));
        let (pids, dropped) = s.prune(31);
        assert_eq!(pids, vec![GONE]);
        assert_eq!(dropped, vec![own]);
        assert_eq!(s.space(GONE, 31), None);
        assert!(s.get(parent).is_some());
        assert_eq!(s.sizes(), (1, 1));
    }

    #[test]
    fn a_map_read_at_exec_serves_a_process_gone_before_its_record_is_handled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("run sleep");
        let pid = child.id();
        // Until exec has mapped the program, the map is the parent's (or has no program).
        while !std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|m| {
            m.lines()
                .any(|l| l.contains(" r-xp ") && l.ends_with("/sleep"))
        }) {
            std::thread::yield_now();
        }
        let mut s = Spaces::default();
        s.exec_maps.read(pid, 10);
        let _ = child.kill();
        let _ = child.wait();
        s.exec(pid, 10);
        let info = &s.get(s.space(pid, 11).unwrap()).unwrap().info;
        assert!(info.alive, "the map read at exec is the one used");
        assert!(
            info.mappings.iter().any(|m| m.path.ends_with("/sleep")),
            "{:?}",
            info.mappings
        );
        // A record of another exec (or one the readers missed) is read when it is handled:
        // gone by then, it has no map.
        s.exec(pid, 20);
        assert!(!s.get(s.space(pid, 21).unwrap()).unwrap().info.alive);
    }

    #[test]
    fn a_pid_used_again_after_an_exit_keeps_its_new_process() {
        let mut s = Spaces::default();
        let me = std::process::id();
        s.fork(me, GONE, 10);
        s.exit(GONE, 20);
        s.fork(me, GONE, 30);
        let (pids, _) = s.prune(25);
        assert!(pids.is_empty(), "the second process with the pid stays");
        assert!(s.space(GONE, 31).is_some());
        s.exit(GONE, 40);
        assert_eq!(s.prune(41).0, vec![GONE]);
        // Only our own process is left, with its one map.
        assert_eq!(s.sizes(), (1, 1));
    }
}
