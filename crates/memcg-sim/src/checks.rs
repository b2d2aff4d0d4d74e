//! The invariant checks run after every step and at the end of a run.
//!
//! After every step (in this order; the first failure stops the run):
//! 1. `engine`: [`memcg::Controller::check_invariants`]: conservation per
//!    objcg (`pages × 4096 == live + stocks + pool`), reference counts,
//!    usage of every group == pages charged through its objcgs and page
//!    stocks, per-node balance, no page-counter underflow.
//! 2. `usage-floor` ("no negative usage"): for every online group,
//!    `memory.current >= exact live bytes of its subtree` as the
//!    simulator's own model counts them (objects and reservations, moved
//!    to the parent when a group is removed). The engine's counter clamps
//!    at zero, so a negative or lost usage shows up here as usage below
//!    what is live.
//! 3. `limit`: for every group with `memory.max = M`,
//!    `memory.current <= M + stock_bound` (see [`stock_bound_bytes`]).
//!    After `memory.max` is lowered below usage, the ceiling starts at the
//!    usage left and only goes down from there.
//!
//! At the end ([`crate::machine::Machine::finish`]): every object is freed,
//! every reservation dropped, every task exits, stocks are drained; then
//! `end-engine` (`check_invariants`), `end-usage` (every group's and root's
//! usage is 0), `end-remove` (every group can be removed: no task or child
//! left) and, after removing them all and draining again, `end-leak`
//! (`check_invariants` once more, which reports objcgs still referenced
//! and references dropped twice, and root's usage is 0).

use memcg::{MEMCG_CHARGE_BATCH, NR_MEMCG_STOCK, NR_OBJ_STOCK, PAGE_SIZE, TASK_CACHE_BOUND_BYTES};

/// Largest byte count a byte-stock slot holds (16 bits).
pub const OBJ_SLOT_MAX_BYTES: u64 = 0xffff;

/// The documented stock error bound of `memory.current`, in bytes: what
/// per-CPU stocks, task caches and objcg pools may hold charged beyond the
/// exact live bytes.
///
/// ```text
/// bound = nr_cpus  × (NR_MEMCG_STOCK × MEMCG_CHARGE_BATCH × PAGE_SIZE    page stocks: 7 × 64 pages
///                     + NR_OBJ_STOCK × 0xffff)                           byte stocks: 5 × < 64 KiB
///       + nr_tasks × TASK_CACHE_BOUND_BYTES                              task byte caches: < 5 pages
///       + nr_objcgs × PAGE_SIZE                                          objcg pools: < 1 page each
/// ```
/// On the default 2 × 4 machine with 8 tasks and 4 objcgs this is
/// 17,481,688 bytes (about 16.7 MiB).
pub fn stock_bound_bytes(nr_cpus: u64, nr_tasks: u64, nr_objcgs: u64) -> u64 {
    let per_cpu = NR_MEMCG_STOCK as u64 * MEMCG_CHARGE_BATCH * PAGE_SIZE
        + NR_OBJ_STOCK as u64 * OBJ_SLOT_MAX_BYTES;
    nr_cpus * per_cpu + nr_tasks * TASK_CACHE_BOUND_BYTES + nr_objcgs * PAGE_SIZE
}

/// A failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The check's name (`engine`, `usage-floor`, `limit`, `oom`,
    /// `engine-error`, `end-engine`, `end-usage`, `end-remove`, `end-leak`).
    pub check: &'static str,
    /// What was found.
    pub details: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "check `{}` failed: {}",
            self.check,
            self.details.trim_end()
        )
    }
}

/// Check 1: the engine's own invariants.
///
/// # Errors
/// A `engine`-named [`Violation`] listing what the engine found.
pub fn engine(ctrl: &memcg::Controller, name: &'static str) -> Result<(), Violation> {
    ctrl.check_invariants().map_err(|v| Violation {
        check: name,
        details: v.to_string(),
    })
}

/// Check 2 for one group: usage is at least the live bytes.
///
/// # Errors
/// A `usage-floor` [`Violation`].
pub fn usage_floor(path: &str, current_bytes: u64, live_bytes: u64) -> Result<(), Violation> {
    if current_bytes < live_bytes {
        return Err(Violation {
            check: "usage-floor",
            details: format!(
                "group {path:?}: memory.current {current_bytes} bytes < {live_bytes} live bytes"
            ),
        });
    }
    Ok(())
}

/// Check 3 for one group: usage is within `ceiling_bytes` (normally
/// `max + bound`).
///
/// # Errors
/// A `limit` [`Violation`].
pub fn limit(
    path: &str,
    current_bytes: u64,
    max_bytes: u64,
    ceiling_bytes: u64,
) -> Result<(), Violation> {
    if current_bytes > ceiling_bytes {
        return Err(Violation {
            check: "limit",
            details: format!(
                "group {path:?}: memory.current {current_bytes} bytes > memory.max {max_bytes} + stock bound = {ceiling_bytes} bytes"
            ),
        });
    }
    Ok(())
}

/// End check: a group's usage is back to zero.
///
/// # Errors
/// An `end-usage` [`Violation`].
pub fn usage_zero(path: &str, current_bytes: u64) -> Result<(), Violation> {
    if current_bytes != 0 {
        return Err(Violation {
            check: "end-usage",
            details: format!(
                "group {path:?}: memory.current is {current_bytes} bytes after everything was freed and stocks drained"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_bound_bytes_default_machine_matches_doc() {
        assert_eq!(stock_bound_bytes(8, 8, 4), 17_481_688);
    }

    #[test]
    fn usage_floor_below_live_fails() {
        assert!(usage_floor("a", 4096, 4097).is_err());
        assert!(usage_floor("a", 4096, 4096).is_ok());
    }

    #[test]
    fn limit_above_ceiling_fails() {
        assert!(limit("a", 10, 5, 9).is_err());
        assert!(limit("a", 9, 5, 9).is_ok());
    }

    #[test]
    fn usage_zero_nonzero_fails() {
        assert!(usage_zero("a", 4096).is_err());
        assert!(usage_zero("a", 0).is_ok());
    }
}
