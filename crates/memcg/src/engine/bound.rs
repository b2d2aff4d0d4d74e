//! The error bound of `memory.current` and of the statistics, as a value:
//! [`Group::error_bound`] and [`Controller::error_bound`].
//!
//! `memory.current` ([`Group::current_bytes`]) is a page counter charged
//! ahead of use: whole pages go to the counters at once and the bytes not
//! yet handed to objects wait in caches (per-CPU stocks, task byte caches,
//! each objcg's sub-page pool), as in the kernel. The live-bytes statistics
//! (`alloc`, `runtime`, `reservation` of [`crate::MemoryStat`]) are
//! batched per task. So at any instant between two operations,
//! `live ≤ memory.current ≤ live + current_bytes` and the statistics are
//! within `stats_lag_bytes` of `live`, where `live` is the bytes of the
//! group's live objects and reservations. This module computes the two
//! bounds for one group from the controller's topology and its current
//! task and objcg counts; each term is derived on [`ErrorBound`].
//!
//! Above the charge path and the controller, it reads only counts: the
//! per-CPU stock array, the task list and the group tree.

use std::sync::Arc;

use crate::engine::byte_cache::{STAT_FLUSH_BYTES, TASK_CACHE_BOUND_BYTES};
use crate::engine::controller::Controller;
use crate::engine::core::Core;
use crate::engine::group::Group;
use crate::engine::locked_vec;
use crate::engine::memcg::{MemCgroup, NR_KINDS};
use crate::engine::stock::{MEMCG_CHARGE_BATCH, NR_MEMCG_STOCK, NR_OBJ_STOCK, SLOT_MAX_BYTES};
use crate::limit::PAGE_SIZE;

/// How far a group's `memory.current` and its live-bytes statistics may be
/// from the bytes it really has live, on its controller now
/// ([`Group::error_bound`]).
///
/// With `live` the bytes of the subtree's live objects and reservations,
/// and `stats` the live bytes its statistics show (`alloc + runtime +
/// reservation`, hierarchical, summed over nodes), at any instant between
/// two operations:
///
/// - `live ≤ memory.current ≤ live + current_bytes`;
/// - `|stats − live| ≤ stats_lag_bytes`;
/// - so `−stats_lag_bytes ≤ memory.current − stats ≤ gap_bytes()`, which is
///   what a monitor that compares `memory.current` with the statistics can
///   check ([`ErrorBound::covers`]).
///
/// An operation in flight (a charge between its page counter update and
/// its statistics, a free between its statistics and its page counter
/// update) is not covered: it adds at most its own size, and only while it
/// runs. The counts are those at the call: a bound taken before more tasks
/// or groups exist does not cover them.
///
/// # Terms of `current_bytes`
/// `memory.current − live` is exactly what is charged to the subtree's
/// page counters without being in a live object:
///
/// - **page stocks** (`page_stocks_bytes`): per CPU, [`NR_MEMCG_STOCK`]
///   slots of pre-charged pages, each holding at most
///   [`MEMCG_CHARGE_BATCH`] pages, charged to the counters and not yet to
///   any objcg: `nr_cpus × 7 × 64 × 4096` bytes;
/// - **byte stocks** (`byte_stocks_bytes`): per CPU, the byte-stock slots
///   in use ([`crate::engine::Config::obj_stock_slots`], at most [`NR_OBJ_STOCK`]),
///   each holding at most 65,535 pre-charged bytes (a 16-bit field):
///   `nr_cpus × 5 × 65,535` bytes by default;
/// - **task caches** (`task_caches_bytes`): per task of the controller,
///   under [`TASK_CACHE_BOUND_BYTES`] pre-charged bytes in its byte cache
///   and its foreign slot (frees of another objcg's objects gathered
///   before they go back).
///   Every task counts, not only those attached to the group: a task in
///   a scope, or one that freed an object of the group, caches the group's
///   objcg too;
/// - **objcg pools** (`objcg_pools_bytes`): per objcg whose owner is in the
///   subtree, under a page of sub-page remainder in its pool (a drain, or
///   any uncharge into the pool, returns whole pages). This is also the
///   rounding of the objcg's live bytes up to whole pages: after every task
///   flushed and [`Controller::drain_stocks`], `memory.current` is exactly
///   `Σ ceil(live of the objcg / 4096)` pages. The objcgs counted are one
///   per node for each group of the subtree and for each removed
///   descendant still remembered (its objcgs were reparented into the
///   subtree and may still hold objects).
///
/// Only stock slots and task caches holding an objcg of the subtree count
/// in reality; the bound takes all of them, as any could.
///
/// # `stats_lag_bytes`
/// A task batches the statistics of the objcg its byte cache holds and
/// moves them to the group once one kind's pending bytes pass
/// `STAT_FLUSH_BYTES` (4 pages), so each kind's pending bytes stay within
/// 4 pages at every charge or free that is not served by the allocator's
/// hit path. The hit path (`MemcgAlloc`, `MemcgMimalloc`) moves bytes
/// between the byte cache and the `alloc` statistic without checking: at
/// most what the cache holds; and frees gathered in the task's foreign
/// slot leave the statistics when the slot goes back: together under
/// [`TASK_CACHE_BOUND_BYTES`]. Per task of the controller:
/// `3 kinds × 4 pages + 6 pages` = 73,728 bytes. A task's
/// [`crate::engine::Task::flush`] (`memcg::flush_current` in the runtime) brings
/// its share to 0.
///
/// # Examples
/// ```
/// use memcg::{ChargeKind, Controller, Topology};
///
/// let ctrl = Controller::new(Topology::from_spec("2x2")?);
/// let g = ctrl.create("tenant")?;
/// let task = ctrl.new_task(&g)?;
/// let c = task.charge(0, 1000, ChargeKind::Alloc)?;
///
/// let bound = g.error_bound();
/// // 4 CPUs × (7 × 64 pages + 5 × 65,535 bytes) + 1 task × 6 pages
/// // + 2 objcgs (one per node) × 1 page.
/// assert_eq!(bound.current_bytes, 4 * (7 * 64 * 4096 + 5 * 65_535) + 6 * 4096 + 2 * 4096);
/// let current = g.current_bytes();
/// let live = 1000;
/// assert!(live <= current && current <= live + bound.current_bytes);
/// let stats = g.stats().stat.alloc_bytes;
/// assert!(bound.covers(current, stats));
/// # task.uncharge(0, c)?;
/// # Ok::<(), memcg::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorBound {
    /// Bound on `memory.current − live` (never negative): the sum of the
    /// four terms below.
    pub current_bytes: u64,
    /// Bound on `|live statistics − live|`.
    pub stats_lag_bytes: u64,
    /// Per-CPU stocks of the controller (`nr_cpu_ids` of its topology).
    pub nr_cpus: u64,
    /// Tasks of the controller (live, not yet exited).
    pub nr_tasks: u64,
    /// Objcgs that may be owned by the subtree: one per node for each of
    /// its groups, online or removed and remembered.
    pub nr_objcgs: u64,
    /// `nr_cpus × NR_MEMCG_STOCK × MEMCG_CHARGE_BATCH × 4096`.
    pub page_stocks_bytes: u64,
    /// `nr_cpus × byte-stock slots × 65,535`.
    pub byte_stocks_bytes: u64,
    /// `nr_tasks × TASK_CACHE_BOUND_BYTES`.
    pub task_caches_bytes: u64,
    /// `nr_objcgs × 4096`.
    pub objcg_pools_bytes: u64,
}

impl ErrorBound {
    /// The bound for the given counts; `obj_slots` byte-stock slots per CPU.
    fn new(nr_cpus: u64, obj_slots: u64, nr_tasks: u64, nr_objcgs: u64) -> ErrorBound {
        let page_stocks_bytes =
            nr_cpus.saturating_mul(NR_MEMCG_STOCK as u64 * MEMCG_CHARGE_BATCH * PAGE_SIZE);
        let byte_stocks_bytes = nr_cpus.saturating_mul(obj_slots * SLOT_MAX_BYTES);
        let task_caches_bytes = nr_tasks.saturating_mul(TASK_CACHE_BOUND_BYTES);
        let objcg_pools_bytes = nr_objcgs.saturating_mul(PAGE_SIZE);
        let stats_lag_per_task = NR_KINDS as u64 * STAT_FLUSH_BYTES as u64 + TASK_CACHE_BOUND_BYTES;
        ErrorBound {
            current_bytes: page_stocks_bytes
                .saturating_add(byte_stocks_bytes)
                .saturating_add(task_caches_bytes)
                .saturating_add(objcg_pools_bytes),
            stats_lag_bytes: nr_tasks.saturating_mul(stats_lag_per_task),
            nr_cpus,
            nr_tasks,
            nr_objcgs,
            page_stocks_bytes,
            byte_stocks_bytes,
            task_caches_bytes,
            objcg_pools_bytes,
        }
    }

    /// Bound on `memory.current − stats` (`current_bytes +
    /// stats_lag_bytes`), where `stats` are the live bytes the statistics
    /// show.
    pub fn gap_bytes(&self) -> u64 {
        self.current_bytes.saturating_add(self.stats_lag_bytes)
    }

    /// Whether `current_bytes` (a reading of `memory.current`) and
    /// `stats_live_bytes` (the live bytes the statistics showed at the same
    /// instant) are within the bound: `current − stats ≤ gap_bytes()` and
    /// `stats − current ≤ stats_lag_bytes` (`current` is never below the
    /// true live bytes).
    pub fn covers(&self, current_bytes: u64, stats_live_bytes: u64) -> bool {
        if current_bytes >= stats_live_bytes {
            current_bytes - stats_live_bytes <= self.gap_bytes()
        } else {
            stats_live_bytes - current_bytes <= self.stats_lag_bytes
        }
    }
}

/// Groups of the subtree of `m` whose objcgs may be owned in it: `m`, its
/// online descendants and the removed ones still remembered
/// (`dead_children`, whose objcgs were reparented).
fn subtree_groups(m: &Arc<MemCgroup>) -> u64 {
    let mut n = 0u64;
    let mut stack = vec![Arc::clone(m)];
    while let Some(g) = stack.pop() {
        n += 1;
        // Snapshots: no allocation under the engine's locks.
        stack.extend(locked_vec::snapshot(&g.children));
        stack.extend(locked_vec::snapshot(&g.dead_children));
    }
    n
}

fn bound_of(core: &Core, m: &Arc<MemCgroup>) -> ErrorBound {
    let nr_cpus = core.stocks.len() as u64;
    let obj_slots = core
        .stocks
        .first()
        .map_or(NR_OBJ_STOCK, |s| s.obj_slots().len()) as u64;
    let nr_tasks = core.tasks.lock().len() as u64;
    let nr_objcgs = subtree_groups(m).saturating_mul(m.nodeinfo.len() as u64);
    ErrorBound::new(nr_cpus, obj_slots, nr_tasks, nr_objcgs)
}

impl Group {
    /// The bound on how far this group's `memory.current` and live-bytes
    /// statistics may be from its live bytes, for its controller's
    /// topology and its tasks and groups now; see [`ErrorBound`] for the
    /// terms (the `# Error bound` of [`Group::current_bytes`]).
    pub fn error_bound(&self) -> ErrorBound {
        bound_of(self.core(), self.memcg())
    }
}

impl Controller {
    /// [`Group::error_bound`] of the root group: the bound for the whole
    /// controller.
    pub fn error_bound(&self) -> ErrorBound {
        self.root().error_bound()
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn error_bound_terms_add_up_and_match_the_documented_constants() {
        let b = ErrorBound::new(4, 5, 3, 6);
        assert_eq!(b.page_stocks_bytes, 4 * 7 * 64 * 4096);
        assert_eq!(b.byte_stocks_bytes, 4 * 5 * 65_535);
        assert_eq!(b.task_caches_bytes, 3 * 6 * 4096);
        assert_eq!(b.objcg_pools_bytes, 6 * 4096);
        assert_eq!(
            b.current_bytes,
            b.page_stocks_bytes + b.byte_stocks_bytes + b.task_caches_bytes + b.objcg_pools_bytes
        );
        assert_eq!(b.stats_lag_bytes, 3 * 73_728);
        assert_eq!(b.gap_bytes(), b.current_bytes + b.stats_lag_bytes);
    }

    #[test]
    fn covers_accepts_gaps_within_the_bound_and_refuses_beyond() {
        let b = ErrorBound::new(1, 1, 1, 1);
        assert!(b.covers(b.gap_bytes(), 0));
        assert!(!b.covers(b.gap_bytes() + 1, 0));
        assert!(b.covers(0, b.stats_lag_bytes));
        assert!(!b.covers(0, b.stats_lag_bytes + 1));
    }
}
