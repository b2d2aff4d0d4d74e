//! The task's byte cache (DESIGN §4.4 level 1): for one objcg,
//! pre-charged bytes (each carrying its reference on the objcg; see
//! `obj_cgroup.rs`) and pending statistics.
//!
//! A hit (charge or uncharge of an object of the cached objcg) touches only
//! the task's own fields: no atomic read-modify-write, no shared cache
//! line. The fields are atomics written only by the owner with plain loads
//! and stores, so that the checkers on another thread can read them. The
//! operations on it are `Task` methods (`task.rs`, and `fast_path.rs` for
//! the allocator's hit path).

use crate::engine::memcg::ChargeKind;
use crate::engine::obj_cgroup::ObjCgroup;
use crate::engine::task::Task;
use crate::engine::task_shared::{
    add_pending, fold_hits, get_u64, set_cache_bytes, set_u64, NO_HIT_ADDR, NO_HIT_COOKIE,
};
use crate::limit::PAGE_SIZE;
use crate::sync::Ordering;

/// Bytes a task cache keeps before handing the rest to the CPU stock: 4
/// pages, so that alternating charges and frees of objects up to about 3
/// pages stay in the cache.
pub(crate) const CACHE_MAX_BYTES: u64 = 4 * PAGE_SIZE;
/// Pending statistics flushed when they exceed this many bytes.
pub(crate) const STAT_FLUSH_BYTES: i64 = 4 * PAGE_SIZE as i64;
/// Bytes a task's foreign slot gathers before it returns them: a page,
/// about 50 frees of small objects per return.
pub(crate) const FOREIGN_MAX_BYTES: u64 = PAGE_SIZE;
/// A task's byte cache and foreign slot hold less than this many bytes
/// together at any time (part of the error bound of `memory.current`):
/// the cache under `CACHE_MAX_BYTES` plus a page's remainder, the slot at
/// most a page (`FOREIGN_MAX_BYTES`).
pub const TASK_CACHE_BOUND_BYTES: u64 = CACHE_MAX_BYTES + PAGE_SIZE + FOREIGN_MAX_BYTES;

impl Task {
    /// Serves a charge of `bytes` of the cached objcg from the byte cache
    /// (the bytes with their references) if it holds enough; the caller
    /// checked that the cache holds `objcg`.
    #[inline(always)]
    pub(crate) fn take_cached(&self, objcg: &ObjCgroup, bytes: u64, kind: ChargeKind) -> bool {
        let cache = &self.shared.cache;
        let have = get_u64(&cache.bytes);
        if have < bytes {
            return false;
        }
        set_cache_bytes(cache, have - bytes);
        set_u64(&self.shared.charges, get_u64(&self.shared.charges) + 1);
        self.pend(objcg, kind, bytes as i64);
        true
    }

    /// Records statistics for the cached objcg, flushing when large.
    #[inline(always)]
    pub(crate) fn pend(&self, objcg: &ObjCgroup, kind: ChargeKind, bytes: i64) {
        let v = add_pending(&self.shared.cache, kind, bytes);
        if !(-STAT_FLUSH_BYTES..=STAT_FLUSH_BYTES).contains(&v) {
            self.flush_stats(objcg);
        }
    }

    /// Moves pending statistics (with the hit path's, folded in first) to
    /// the objcg and its owner's counters.
    pub(crate) fn flush_stats(&self, objcg: &ObjCgroup) {
        let cache = &self.shared.cache;
        fold_hits(cache);
        for kind in ChargeKind::ALL {
            let bytes = cache.pending_bytes[kind.index()].swap(0, Ordering::Relaxed);
            if bytes != 0 {
                self.core.account(None, objcg, kind, bytes);
            }
        }
    }

    /// Empties the byte cache: its bytes, with their references, go to
    /// `cpu`'s stock (or, with no CPU, straight back to the objcg),
    /// statistics are flushed, and the cache's own reference is dropped.
    pub(crate) fn drain_cache(&self, cpu: Option<usize>) {
        self.clear_fast_key();
        self.flush_foreign(cpu);
        let cache = &self.shared.cache;
        let id = cache.objcg.load(Ordering::Relaxed);
        let Some(old) = (id != 0).then(|| self.core.table.get(id)).flatten() else {
            return;
        };
        self.flush_stats(old);
        let bytes = get_u64(&cache.bytes);
        set_cache_bytes(cache, 0);
        cache.objcg.store(0, Ordering::Relaxed);
        cache.objcg_addr.store(0, Ordering::Relaxed);
        cache.hit_addr.store(NO_HIT_ADDR, Ordering::Relaxed);
        cache.hit_cookie.store(NO_HIT_COOKIE, Ordering::Relaxed);
        match cpu {
            Some(_) => self.core.refill_obj_stock(cpu, old, bytes, true),
            None => self.core.uncharge_bytes(old, bytes),
        }
        // Last: the cache's own reference keeps `old` through the above.
        self.core.objcg_put(old, 1);
    }

    pub(crate) fn switch_cache(&self, cpu: Option<usize>, new: &ObjCgroup) {
        self.drain_cache(cpu);
        new.get(1);
        let cache = &self.shared.cache;
        let addr = new as *const ObjCgroup as usize;
        cache.objcg.store(new.id(), Ordering::Relaxed);
        cache.objcg_addr.store(addr, Ordering::Relaxed);
        cache.hit_addr.store(addr, Ordering::Relaxed);
        cache.refresh_hit_cookie();
    }

    /// Hands the bytes above a page fraction, with their references, to the
    /// CPU stock (which returns whole pages above one page to the
    /// counters).
    #[cold]
    pub(crate) fn trim_cache(&self, cpu: usize, objcg: &ObjCgroup) {
        let cache = &self.shared.cache;
        let bytes = get_u64(&cache.bytes);
        let keep_bytes = if bytes > CACHE_MAX_BYTES {
            bytes % PAGE_SIZE
        } else {
            bytes
        };
        set_cache_bytes(cache, keep_bytes);
        self.core
            .refill_obj_stock(Some(cpu), objcg, bytes - keep_bytes, true);
    }

    /// The slow path of a free of `bytes` of [`ChargeKind::Alloc`] of
    /// `objcg`, which is not the cached objcg: gathered in the foreign
    /// slot (after returning what the slot held for another objcg), and
    /// returned once the slot holds more than [`FOREIGN_MAX_BYTES`].
    ///
    /// Frees that cross groups (a batch made by one tenant's thread and
    /// freed by another's) so cost the shared atomic updates of a return
    /// (the objcg's live bytes, its group's statistics, the
    /// stock) once per slot, not once per object; the kernel batches the
    /// same updates in its per-CPU object stock. The slot is the task's
    /// own, like the byte cache: plain loads and stores.
    pub(crate) fn uncharge_foreign(&self, cpu: usize, objcg: &ObjCgroup, bytes: u64) {
        let cache = &self.shared.cache;
        if cache.foreign_objcg.load(Ordering::Relaxed) != objcg.id() {
            self.flush_foreign(Some(cpu));
            cache.foreign_objcg.store(objcg.id(), Ordering::Relaxed);
            cache
                .foreign_addr
                .store(objcg as *const ObjCgroup as usize, Ordering::Relaxed);
        }
        let total = get_u64(&cache.foreign_bytes) + bytes;
        set_u64(&cache.foreign_bytes, total);
        if total > FOREIGN_MAX_BYTES {
            self.flush_foreign(Some(cpu));
        }
    }

    /// Returns what the foreign slot holds: the objects leave their
    /// objcg's live bytes, and the bytes, with their references, go to
    /// `cpu`'s stock (with no CPU, straight back to the objcg).
    pub(crate) fn flush_foreign(&self, cpu: Option<usize>) {
        let cache = &self.shared.cache;
        let id = cache.foreign_objcg.load(Ordering::Relaxed);
        if id == 0 {
            return;
        }
        let bytes = get_u64(&cache.foreign_bytes);
        cache.foreign_objcg.store(0, Ordering::Relaxed);
        cache.foreign_addr.store(0, Ordering::Relaxed);
        set_u64(&cache.foreign_bytes, 0);
        // The slot's bytes (at least one object's while it is in use) keep
        // the entry on this objcg with their references.
        let Some(objcg) = self.core.table.get(id) else {
            return;
        };
        self.core
            .account(cpu, objcg, ChargeKind::Alloc, -(bytes as i64));
        // With no CPU, `refill_obj_stock` returns them to the objcg's pool.
        self.core.refill_obj_stock(cpu, objcg, bytes, true);
    }
}
