//! The worker's operations on groups: make and remove them, limits and
//! OOM policies, reservations (explicit charges), reviving killed groups.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use memcg::{Group, Limit, OomPolicy};

use super::{
    Worker, CACHE_CAP, KILL_CALLBACKS, MAX_DEPTH, RECLAIM_FREED_BYTES, RECLAIM_RUNS,
    RESERVATIONS_CAP,
};
use crate::block::Obj;
use crate::cli::InjectFault;
use crate::model::{lock, GroupEntry, Op, SOAK};

impl Worker<'_> {
    /// Make a group under a random online group (not too deep), sometimes
    /// with a reclaim callback and a kill callback.
    pub(super) fn create(&mut self) {
        self.sh.counters.op(Op::Create);
        let mut m = self.sh.model();
        if m.live.len() >= self.sh.cfg.max_groups {
            return;
        }
        let parent = m.live[self.rng.below(m.live.len() as u64) as usize];
        let depth = m.groups[parent as usize].depth + 1;
        if depth > MAX_DEPTH {
            return;
        }
        let Some(pg) = m.groups[parent as usize].group.clone() else {
            return;
        };
        let id = m.groups.len() as u32;
        let Ok(g) = pg.create_child(&format!("g{id}")) else {
            return; // the parent is being removed
        };
        let cache: Arc<Mutex<Vec<Obj>>> = Arc::new(Mutex::new(Vec::with_capacity(CACHE_CAP)));
        let reclaimer = self.rng.chance(60).then(|| {
            let cache = Arc::clone(&cache);
            let flavor = self.sh.flavor();
            g.register_reclaimer(move |req| {
                let mut c = lock(&cache);
                let mut freed = 0;
                while freed < req.wanted_bytes {
                    match c.pop() {
                        Some(o) => freed += flavor.charged_bytes(o.block.size_bytes()),
                        None => break,
                    }
                }
                // This thread's statistics must be exact at the next
                // quiescent point, which locks the caches: flush first.
                memcg::flush_current();
                drop(c);
                RECLAIM_RUNS.fetch_add(1, Ordering::Relaxed);
                RECLAIM_FREED_BYTES.fetch_add(freed, Ordering::Relaxed);
                freed
            })
        });
        let kill_cb = self.rng.chance(30).then(|| {
            g.on_oom_kill(|_| {
                KILL_CALLBACKS.fetch_add(1, Ordering::Relaxed);
            })
        });
        m.groups.push(GroupEntry {
            group: Some(g),
            parent: Some(parent),
            depth,
            ever_limited: false,
            ever_fail: false,
            cache,
            reclaimer,
            kill_cb,
        });
        m.live.push(id);
        self.sh.counters.created.fetch_add(1, Ordering::Relaxed);
    }

    /// Remove a random tenant with no online child; its objects (in any
    /// worker, cache or reservation) are then charged to its parent.
    pub(super) fn remove(&mut self) {
        self.sh.counters.op(Op::Remove);
        let _removal = self.sh.removal.write().unwrap_or_else(|e| e.into_inner());
        let (id, g) = {
            let m = self.sh.model();
            let leaves: Vec<u32> = m
                .live
                .iter()
                .copied()
                .filter(|&id| {
                    id != SOAK
                        && !m
                            .live
                            .iter()
                            .any(|&c| m.groups[c as usize].parent == Some(id))
                })
                .collect();
            if leaves.is_empty() {
                return;
            }
            let id = leaves[self.rng.below(leaves.len() as u64) as usize];
            (id, m.groups[id as usize].group.clone().expect("online"))
        };
        if g.remove().is_err() {
            self.sh
                .counters
                .remove_refused
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (handles, moved, parent_cache) = {
            let mut m = self.sh.model();
            let e = &mut m.groups[id as usize];
            e.group = None;
            let handles = (e.reclaimer.take(), e.kill_cb.take());
            let moved = std::mem::take(&mut *lock(&e.cache));
            let parent = m.groups[id as usize].parent.expect("a tenant has a parent");
            let parent = m.resolve(parent);
            m.live.retain(|&l| l != id);
            (handles, moved, Arc::clone(&m.groups[parent as usize].cache))
        };
        // The parent's cache takes them, up to its cap; the oldest beyond
        // it are freed (else the soak group's cache, which nobody
        // reclaims, would grow with every removal).
        let excess: Vec<Obj> = {
            let mut c = lock(&parent_cache);
            c.extend(moved);
            let n = c.len().saturating_sub(CACHE_CAP);
            c.drain(..n).collect()
        };
        drop(excess);
        drop(handles);
        self.sh.counters.removed.fetch_add(1, Ordering::Relaxed);
    }

    /// Change `max` or `high` of a tenant: unlimited, around its usage
    /// (often below it), or a small absolute limit.
    pub(super) fn limit(&mut self) {
        self.sh.counters.op(Op::Limit);
        let Some((id, g)) = self.pick(false) else {
            return;
        };
        let current = g.current_bytes();
        let limit = match self.rng.below(100) {
            0..=19 => Limit::Max,
            20..=69 => Limit::Bytes((current * self.rng.range(50, 200) / 100).max(64 << 10)),
            _ => Limit::Bytes(self.rng.range(64 << 10, 8 << 20)),
        };
        if limit != Limit::Max && self.sh.cfg.inject != Some(InjectFault::ForgetLimits) {
            self.sh.model().groups[id as usize].ever_limited = true;
        }
        let _ = if self.rng.chance(60) {
            g.set_max(limit)
        } else {
            g.set_high(limit)
        };
    }

    pub(super) fn policy(&mut self) {
        self.sh.counters.op(Op::Policy);
        let Some((id, g)) = self.pick(false) else {
            return;
        };
        let policy = match self.rng.below(100) {
            0..=49 => OomPolicy::Kill,
            50..=84 => OomPolicy::Fail,
            _ => OomPolicy::Force,
        };
        if policy == OomPolicy::Fail {
            self.sh.model().groups[id as usize].ever_fail = true;
        }
        g.set_oom_policy(policy);
    }

    /// Reserve (an explicit charge), or drop, grow or shrink a reservation.
    pub(super) fn reserve(&mut self) {
        self.sh.counters.op(Op::Reserve);
        let r = self.rng.below(100);
        if !self.reservations.is_empty() && (r < 30 || self.reservations.len() >= RESERVATIONS_CAP)
        {
            let i = self.rng.below(self.reservations.len() as u64) as usize;
            drop(self.reservations.swap_remove(i));
            return;
        }
        if !self.reservations.is_empty() && r < 50 {
            let i = self.rng.below(self.reservations.len() as u64) as usize;
            let delta = self.rng.range(1, 64 << 10);
            let (res, owner) = &mut self.reservations[i];
            if self.rng.chance(50) {
                if res.grow(delta).is_err() {
                    let owner = *owner;
                    self.charge_refused(owner);
                }
            } else {
                res.shrink(delta.min(res.bytes()));
            }
            return;
        }
        // Like a scope, a reservation of a group removed meanwhile is
        // charged to the parent's objcg (the group's `is_online` check
        // and its objcg lookup are two steps): no removal until it is made.
        let _no_removal = self.no_removal();
        let Some((id, g)) = self.pick(true) else {
            return;
        };
        let bytes = self.rng.range(1, 256 << 10);
        match g.try_charge(bytes) {
            Ok(res) => self.reservations.push((res, id)),
            Err(memcg::Error::Charge(_)) => self.charge_refused(id),
            Err(_) => {} // removed meanwhile
        }
    }

    pub(super) fn charge_refused(&self, owner: u32) {
        self.sh
            .counters
            .charge_refused
            .fetch_add(1, Ordering::Relaxed);
        let (limited, _) = self.sh.model().chain_flags(owner);
        if !limited {
            self.sh.fail(
                "refusal",
                format!(
                    "explicit charge to g{owner} refused but no limit was ever set in its chain"
                ),
            );
        }
    }

    /// A killed tenant: free this worker's blocks charged to it, sometimes
    /// lift its `max`, and revive it.
    pub(super) fn revive(&mut self) {
        self.sh.counters.op(Op::Revive);
        let killed: Option<(u32, Group)> = {
            let m = self.sh.model();
            m.live
                .iter()
                .filter_map(|&id| m.groups[id as usize].group.clone().map(|g| (id, g)))
                .find(|(_, g)| g.is_killed())
        };
        let Some((id, g)) = killed else {
            return;
        };
        let owners: Vec<u32> = {
            let m = self.sh.model();
            self.live.iter().map(|o| m.resolve(o.owner)).collect()
        };
        let mut i = owners.len();
        while i > 0 {
            i -= 1;
            if owners[i] == id {
                drop(self.take_live(i));
            }
        }
        if self.rng.chance(30) {
            let _ = g.set_max(Limit::Max);
        }
        if g.revive() {
            self.sh.counters.revived.fetch_add(1, Ordering::Relaxed);
        }
    }
}
