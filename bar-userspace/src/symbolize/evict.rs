//! Keeping the kernel's map of user stacks from filling up. bar's programs put each distinct
//! user stack in `USER_STACKS` once and refer to it by id; the kernel never removes one, and a
//! whole host makes new stacks all the time (a fork storm through code without frame pointers
//! makes a new one with nearly every child), so after a while every new stack found the map
//! full and was lost, for the rest of the recording. The collector sees every id that records
//! use: once the map is three-quarters full, or a record found it full, the ids no record used
//! for a while are removed, and forgotten here with everything resolved from them (another
//! stack may get the same id). A record of one of them still on its way then finds its stack
//! gone, and shows `[user stack lost: ...]`, as one that found the map full did.

use bar_ebpf_common::USER_STACK_KEY;

use super::{FastMap, Symbolizer};

/// Ids unused this long go first; if that frees too little, those unused for the shorter time.
const UNUSED_NS: [u64; 2] = [10_000_000_000, 2_000_000_000];

/// The user stack ids records used, and when last.
#[derive(Default)]
pub(super) struct UserIds {
    last_used: FastMap<u32, u64>,
    /// A record found the map full since the last removal.
    full: bool,
    /// Ids removed so far.
    pub(super) removed: u64,
}

impl UserIds {
    /// A record at `ts` uses user stack `id` (an id, or a negative errno).
    pub(super) fn used(&mut self, id: i32, ts: u64) {
        if id < 0 {
            self.full |= -id == super::ENOMEM;
            return;
        }
        let id = id as u32;
        if id & USER_STACK_KEY != 0 {
            let last = self.last_used.entry(id).or_default();
            *last = (*last).max(ts);
        }
    }
}

impl Symbolizer {
    /// Removes the user stacks no record used for a while when the map is nearly full, as of
    /// `now` (monotonic ns); returns how many.
    pub fn evict_user_stacks(&mut self, now: u64) -> usize {
        let capacity = self.user_stacks_capacity as usize;
        let ids = &mut self.user_ids;
        if !ids.full && ids.last_used.len() * 4 < capacity * 3 {
            return 0;
        }
        let mut gone: Vec<u32> = Vec::new();
        for unused in UNUSED_NS {
            let before = now.saturating_sub(unused);
            gone.extend(
                ids.last_used
                    .iter()
                    .filter(|&(_, &ts)| ts < before)
                    .map(|(&id, _)| id),
            );
            for id in &gone {
                ids.last_used.remove(id);
            }
            if ids.last_used.len() * 2 < capacity {
                break;
            }
        }
        ids.full = false;
        ids.removed += gone.len() as u64;
        if gone.is_empty() {
            return 0;
        }
        for id in &gone {
            let _ = self.user_stacks.remove(id);
        }
        let gone_ids: std::collections::HashSet<i32> = gone.iter().map(|&id| id as i32).collect();
        for frames in self.user_frames.values_mut() {
            frames.retain(|id, _| !gone_ids.contains(id));
        }
        for stacks in self.resolved.values_mut() {
            stacks.retain(|(user, _), _| !gone_ids.contains(user));
        }
        gone.len()
    }
}
