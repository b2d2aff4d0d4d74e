//! The seed: a task's per-node objcg cache (`task->objcgs`), its lookup
//! (`current_obj_cgroup`) and its refresh (`current_objcg_update`).
//!
//! [`TaskShared::objcgs`](crate::engine::task_shared::TaskShared) is a
//! tagged word: null, or a pointer to an array of one atomic objcg pointer
//! per node, with bit 0 ([`CURRENT_OBJCG_UPDATE_FLAG`]) meaning "stale,
//! refresh before use".
//! - `Task::new` (`mem_cgroup_fork`): the array is allocated eagerly, from
//!   the system allocator (never through accounting), and tagged stale, so
//!   the first charge fills it and no refresh ever allocates. Exempt tasks
//!   (the kthread analogue) and failed allocations get null: they charge
//!   root.
//! - [`Task::obj_cgroup`] (`current_obj_cgroup`): an active override wins;
//!   otherwise read the word, refresh if flagged, return `objcgs[nid]`, or
//!   root's objcg of `nid` when the array or the entry is null.
//! - `refresh` (`current_objcg_update`): loop { read the word; clear the
//!   flag with a CAS (retry if it changed); if there is an array, exchange
//!   in a fresh reference for every node, found by walking up from the
//!   task's group to the first objcg that can be `tryget`, dropping the
//!   stale ones; finish when the flag is still clear, else repeat }.
//! - [`crate::Group::attach`] (`mem_cgroup_kmem_attach`), from any thread:
//!   publish the new group, then set the flag with one atomic OR.
//! - [`Task::exit`] (`mem_cgroup_exit`): drop every reference, free the
//!   array, store null; later charges go to root.
//!
//! Departure from the seed as posted: the patch reads the tagged word,
//! refreshes, and then compare-and-swaps *the word it read* to the
//! flag-free pointer. When the flag was already set on entry, an attach
//! that lands after the refresh read the group sets a bit that is already
//! set, the word does not change, the CAS succeeds, and that attach is
//! lost until the next one. Clearing the flag first (as the pre-seed
//! `xchg` did) and checking it again at the end closes the window: a flag
//! set after the clear survives to the next lookup. The loom model
//! `loom_task` checks this.
//!
//! # Orderings and the loom models
//! The attached group travels under the task's `group` mutex; the tagged
//! word only says "refresh". Its AcqRel OR (attach) and Acquire loads and
//! CAS (refresh) order the attach's critical section before the refresh's
//! one when the refresh saw the flag, and the entries' AcqRel swaps (here
//! and in `Task::exit`) order the references they carry, as the stock
//! words do. loom serializes mutexes and keeps each atomic's modification
//! order in execution order, so no model fails with one of these weakened
//! alone (`scripts/loom-mutations.py`), except the fast-path key's pairing
//! (`Task::arm_fast_key`, `loom_task::arming_racing_attach_leaves_no_
//! stale_key`); `loom_task` checks the protocol's outcomes.
//!
//! # The pre-seed variant
//! With [`TaskCacheMode::Single`] the array has one entry, filled for the
//! node the task runs on when it refreshes, and refreshed only after an
//! attach: a task that moves to another node keeps charging its old
//! node's objcg.

use std::ptr::NonNull;

use crate::engine::memcg::MemCgroup;
use crate::engine::obj_cgroup::ObjCgroup;
use crate::engine::task::Task;
use crate::engine::task_shared::TaskCacheMode;
use crate::engine::task_shared::CURRENT_OBJCG_UPDATE_FLAG;
use crate::error::{Error, Result};
use crate::sync::Ordering;

/// An objcg to charge, with or without a temporary reference.
pub(crate) struct Pinned<'a> {
    pub(crate) objcg: &'a ObjCgroup,
    pub(crate) temporary: bool,
}

impl Task {
    /// `current_obj_cgroup()` for node `nid`: the active override's objcg
    /// if one is entered, else the cached objcg (refreshing a stale cache
    /// first), else root's. Returns the objcg's current `(group path,
    /// node)`.
    pub fn obj_cgroup(&self, nid: usize) -> Result<(String, usize)> {
        if nid >= self.core.topology.nr_node_ids() {
            return Err(Error::UnknownNode {
                node: nid,
                nr_node_ids: self.core.topology.nr_node_ids(),
            });
        }
        let p = self.pin(nid);
        let out = (p.objcg.memcg().path.to_string(), p.objcg.nid());
        self.unpin(p);
        Ok(out)
    }

    /// The objcg this task charges on `nid` now.
    #[inline]
    pub(crate) fn pin(&self, nid: usize) -> Pinned<'_> {
        if self.has_active.get() {
            return self.pin_active(nid);
        }
        Pinned {
            objcg: self.cached_objcg(nid),
            temporary: false,
        }
    }

    #[inline]
    pub(crate) fn unpin(&self, p: Pinned<'_>) {
        if p.temporary {
            self.core.objcg_put(p.objcg, 1);
        }
    }

    /// The seed's lookup through the per-node array.
    #[inline]
    pub(crate) fn cached_objcg(&self, nid: usize) -> &ObjCgroup {
        // Acquire: pairs with the AcqRel OR of an attach so that, if we see
        // the flag, the refresh sees the group published before it (module
        // doc: orderings and loom).
        let mut tagged = self.shared.objcgs.load(Ordering::Acquire);
        if tagged & CURRENT_OBJCG_UPDATE_FLAG != 0 {
            tagged = self.refresh(nid);
        }
        match NonNull::new(self.entry(tagged, nid)) {
            // SAFETY: entries point into the controller's type-stable table
            // and hold a reference (taken in `refresh`).
            Some(p) => unsafe { p.as_ref() },
            None => self.root_objcg(nid),
        }
    }

    /// The per-node array's entry for node `nid` behind the word `tagged`
    /// (entry 0 in single mode); null when there is none. Owner only.
    pub(crate) fn entry(&self, tagged: usize, nid: usize) -> *mut ObjCgroup {
        let idx = match self.shared.mode {
            TaskCacheMode::PerNode => nid,
            TaskCacheMode::Single => 0,
        };
        // SAFETY: we are the owning task; only our `exit` frees the array.
        unsafe { self.shared.entries(tagged) }
            .and_then(|entries| entries.get(idx))
            // Relaxed: entries are written only by this task.
            .map_or(std::ptr::null_mut(), |e| e.load(Ordering::Relaxed))
    }

    pub(crate) fn root_objcg(&self, nid: usize) -> &ObjCgroup {
        match self
            .core
            .root_objcg(nid)
            .or_else(|| self.core.root_objcg(0))
        {
            Some(o) => o,
            // The controller makes one root objcg per node at creation.
            None => std::process::abort(),
        }
    }

    /// The byte cache's objcg if it is the objcg a charge for `memcg` on
    /// `nid` goes to now, else `None`: `memcg`'s own (its slot names it,
    /// same incarnation), or, for a removed group, whose slots are empty,
    /// that of the nearest ancestor whose slot names one, as
    /// `Core::get_obj_cgroup_from_memcg` walks.
    pub(crate) fn cached_objcg_of(&self, memcg: &MemCgroup, nid: usize) -> Option<&ObjCgroup> {
        let cached_id = self.shared.cache.objcg.load(Ordering::Relaxed);
        if cached_id == 0 {
            return None;
        }
        let mut m = Some(memcg);
        let word = loop {
            let info = m?.nodeinfo.get(nid)?;
            // Acquire: pairs with the slot's Release store when the objcg
            // is installed (`group.rs`), as every slot read does; no model
            // kills it alone (the cache's own reference keeps the entry,
            // and its fields are read only after `get`).
            let word = info.objcg.load(Ordering::Acquire);
            if word != 0 {
                break word;
            }
            m = m?.parent();
        };
        if word as u32 != cached_id {
            return None;
        }
        let o = self.core.table.get(cached_id)?;
        // The cache holds a reference, so this incarnation is alive; the
        // generation tells it is the same one.
        (o.generation() == (word >> 32) as u32).then_some(o)
    }

    /// The override path (`from_memcg`): the objcg of the active group on
    /// `nid`, walking up past removed groups. Uses the byte cache's
    /// reference when it already caches that objcg, else a temporary one.
    #[cold]
    pub(crate) fn pin_active(&self, nid: usize) -> Pinned<'_> {
        let active = self.active.borrow();
        let Some(memcg) = active.as_ref() else {
            return Pinned {
                objcg: self.cached_objcg(nid),
                temporary: false,
            };
        };
        if let Some(o) = self.cached_objcg_of(memcg, nid) {
            return Pinned {
                objcg: o,
                temporary: false,
            };
        }
        match self.core.get_obj_cgroup_from_memcg(memcg, nid) {
            Some(o) => Pinned {
                objcg: o,
                temporary: !o.is_root(),
            },
            None => Pinned {
                objcg: self.root_objcg(nid),
                temporary: false,
            },
        }
    }

    /// `current_objcg_update`: refreshes every entry; returns the untagged
    /// word.
    #[cold]
    #[inline(never)]
    pub(crate) fn refresh(&self, nid: usize) -> usize {
        let shared = &*self.shared;
        self.clear_fast_key();
        shared.refreshes.store(
            shared.refreshes.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        self.core.refreshes.fetch_add(1, Ordering::Relaxed);
        loop {
            // Acquire: pairs with the AcqRel OR of the flag by `attach`
            // (`task_shared.rs`), so that what the attach wrote before it
            // (the task's new group) is seen by the refresh that follows
            // (see the module doc).
            let tagged = shared.objcgs.load(Ordering::Acquire);
            let untagged = tagged & !CURRENT_OBJCG_UPDATE_FLAG;
            if tagged & CURRENT_OBJCG_UPDATE_FLAG != 0
                && shared
                    .objcgs
                    // AcqRel: the Acquire pairs with the attach's OR (its
                    // group store is then visible to the read below).
                    .compare_exchange(tagged, untagged, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                continue;
            }
            // SAFETY: we are the owning task; only our `exit` frees it.
            if let Some(entries) = unsafe { shared.entries(untagged) } {
                let group = shared.group.lock().clone();
                let exempt = shared.exempt.load(Ordering::Relaxed);
                for (i, entry) in entries.iter().enumerate() {
                    let fresh = match (&group, exempt) {
                        (Some(g), false) => {
                            let node = match shared.mode {
                                TaskCacheMode::PerNode => i,
                                TaskCacheMode::Single => nid,
                            };
                            self.core
                                .get_obj_cgroup_from_memcg(g, node)
                                .map_or(std::ptr::null_mut(), |o| {
                                    o as *const ObjCgroup as *mut ObjCgroup
                                })
                        }
                        // Exited or exempt: drop the references, charge root.
                        _ => std::ptr::null_mut(),
                    };
                    // AcqRel: the entry's reference (module doc).
                    let stale = entry.swap(fresh, Ordering::AcqRel);
                    if let Some(old) = NonNull::new(stale) {
                        // SAFETY: entries point into the type-stable table.
                        self.core.objcg_put(unsafe { old.as_ref() }, 1);
                    }
                }
            }
            // Acquire: pairs with the attach's OR; if it landed after our
            // clear, we either see it here and repeat, or it stays set for
            // the next lookup.
            if shared.objcgs.load(Ordering::Acquire) & CURRENT_OBJCG_UPDATE_FLAG == 0 {
                return untagged;
            }
        }
    }
}
