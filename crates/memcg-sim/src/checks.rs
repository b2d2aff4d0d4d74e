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
//!    usage left and only goes down from there. Groups whose subtree has a
//!    group with OOM policy `force` are skipped (their limit is a
//!    threshold).
//!
//! The step itself may stop the run with `oom` (a refusal or a kill, with
//! `on_oom = "fail"`), `spend` (a spent reservation paid wrongly) or
//! `reclaimer` (a wait for reclaim timed out, a callback panicked); see
//! [`crate::machine`].
//!
//! At the end ([`crate::machine::Machine::finish`]): every object is freed,
//! every reservation dropped, every task exits, stocks are drained; then
//! `end-engine` (`check_invariants`), `end-usage` (every group's and root's
//! usage is 0), `end-remove` (every group can be removed: no task or child
//! left) and, after removing them all and draining again, `end-leak`
//! (`check_invariants` once more, which reports objcgs still referenced
//! and references dropped twice, and root's usage is 0).

use memcg::engine::{MEMCG_CHARGE_BATCH, NR_MEMCG_STOCK, NR_OBJ_STOCK, TASK_CACHE_BOUND_BYTES};
use memcg::PAGE_SIZE;

/// Largest byte count a byte-stock slot holds (16 bits).
pub const OBJ_SLOT_MAX_BYTES: u64 = 0xffff;

/// The documented stock error bound of `memory.current`, in bytes: what
/// per-CPU stocks, task caches and objcg pools may hold charged beyond the
/// exact live bytes.
///
/// ```text
/// bound = nr_cpus  × (NR_MEMCG_STOCK × MEMCG_CHARGE_BATCH × PAGE_SIZE    page stocks: 7 × 64 pages
///                     + NR_OBJ_STOCK × 0xffff)                           byte stocks: 5 × < 64 KiB
///       + nr_tasks × TASK_CACHE_BOUND_BYTES                              task byte caches and foreign slots: < 6 pages
///       + nr_objcgs × PAGE_SIZE                                          objcg pools: < 1 page each
/// ```
/// On the default 2 × 4 machine with 8 tasks and 4 objcgs this is
/// 17,514,456 bytes (about 16.7 MiB).
pub fn stock_bound_bytes(nr_cpus: u64, nr_tasks: u64, nr_objcgs: u64) -> u64 {
    let per_cpu = NR_MEMCG_STOCK as u64 * MEMCG_CHARGE_BATCH * PAGE_SIZE
        + NR_OBJ_STOCK as u64 * OBJ_SLOT_MAX_BYTES;
    nr_cpus * per_cpu + nr_tasks * TASK_CACHE_BOUND_BYTES + nr_objcgs * PAGE_SIZE
}

/// A failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The check's name (`engine`, `usage-floor`, `limit`, `oom`, `spend`,
    /// `reclaimer`, `engine-error`, `end-engine`, `end-usage`,
    /// `end-remove`, `end-leak`).
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

/// The `spend` check of an allocation of `bytes` made while reservation
/// `res` was spent (`before`/`after`: the reservation's bytes; `charged`:
/// whether the allocation succeeded; `root_*`: root's `memory.current`):
/// it takes what the reservation has, up to `bytes` (a refusal gives it
/// all back), and taking all of it charges nothing. Returns the bytes
/// taken.
///
/// # Errors
/// A `spend` [`Violation`].
pub fn spend(
    res: u64,
    bytes: u64,
    (before, after): (u64, u64),
    (root_before, root_after): (u64, u64),
    charged: bool,
) -> Result<u64, Violation> {
    let taken = if charged { before.min(bytes) } else { 0 };
    if before.checked_sub(after) != Some(taken) {
        return Err(Violation {
            check: "spend",
            details: format!(
                "reservation {res} of {before} bytes went to {after} bytes for an allocation of {bytes} bytes (charged: {charged}): it must give {taken}"
            ),
        });
    }
    if taken == bytes && root_before != root_after {
        return Err(Violation {
            check: "spend",
            details: format!(
                "an allocation of {bytes} bytes paid from reservation {res} changed root's memory.current from {root_before} to {root_after} bytes"
            ),
        });
    }
    Ok(taken)
}

/// The `reclaimer` check after a step: the reclaimer thread got `idle`, no
/// charge stopped waiting for reclaim at its deadline (`timeouts`), no
/// callback panicked: otherwise the run depends on timing.
///
/// # Errors
/// A `reclaimer` [`Violation`].
pub fn reclaimer(
    idle: bool,
    timeouts: u64,
    panics: u64,
    wait: std::time::Duration,
) -> Result<(), Violation> {
    if !idle || timeouts > 0 || panics > 0 {
        return Err(Violation {
            check: "reclaimer",
            details: format!(
                "reclaimer idle: {idle}; {timeouts} charges stopped waiting for reclaim after {wait:?}; \
                 {panics} reclaim callbacks panicked: the run is no longer deterministic"
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
        assert_eq!(stock_bound_bytes(8, 8, 4), 17_514_456);
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
    fn spend_wrong_payment_fails() {
        // 100 bytes from 300: 100 taken, usage unchanged.
        assert_eq!(spend(0, 100, (300, 200), (8192, 8192), true), Ok(100));
        assert!(spend(0, 100, (300, 300), (8192, 8192), true).is_err());
        assert!(spend(0, 100, (300, 250), (8192, 8192), true).is_err());
        assert!(spend(0, 100, (300, 200), (8192, 12288), true).is_err());
        // 500 bytes from 300: all taken, the rest charged (usage moves).
        assert_eq!(spend(0, 500, (300, 0), (8192, 12288), true), Ok(300));
        assert!(spend(0, 500, (300, 300), (8192, 12288), true).is_err());
        // Refused: everything given back.
        assert_eq!(spend(0, 500, (300, 300), (8192, 8192), false), Ok(0));
        assert!(spend(0, 500, (300, 0), (8192, 8192), false).is_err());
        // Spent out: nothing taken.
        assert_eq!(spend(0, 500, (0, 0), (8192, 12288), true), Ok(0));
    }

    #[test]
    fn reclaimer_timeout_panic_or_busy_fails() {
        let wait = std::time::Duration::from_secs(30);
        assert!(reclaimer(true, 0, 0, wait).is_ok());
        assert!(reclaimer(false, 0, 0, wait).is_err());
        assert!(reclaimer(true, 1, 0, wait).is_err());
        assert!(reclaimer(true, 0, 1, wait).is_err());
    }

    #[test]
    fn usage_zero_nonzero_fails() {
        assert!(usage_zero("a", 4096).is_err());
        assert!(usage_zero("a", 0).is_ok());
    }
}
