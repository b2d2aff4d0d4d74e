//! loom models of the lock-free protocols (run them with `ci/loom.sh`).
//!
//! Each model is one `loom::model` with at most 3 threads and a few
//! operations, built from scratch in every execution (a `Controller` holds
//! loom atomics, which must not outlive the execution that made them), and
//! ends with [`Controller::check_invariants`] plus model-specific checks.
//!
//! - `loom_task`: the seed protocol (`task->objcgs`): refresh vs attach,
//!   exit vs attach.
//! - `loom_stock`: per-CPU byte and page stocks: consume and refill vs a
//!   remote drain.
//! - `loom_reparent`: a charge vs removal of its group (reparenting).
//! - `loom_heap_table`: `MemcgMimalloc`'s heap → objcg table: racing
//!   inserts and lookups.
//! - `loom_reclaim`: the reclaim hand-off (a charge over `max` waiting for
//!   the reclaimer's pass, with a callback that frees or blocks), and a
//!   charge racing a group removal and the reuse of its objcg's entry.
//! - `loom_table`: the objcg table itself: releases racing an allocation
//!   (the lock-free free list), a lookup by a stale slot word racing the
//!   entry's reuse (the generation check), and a group created in a new
//!   chunk racing a drain and a lookup (chunk publication).
//! - `loom_reuse`: a reservation and a charge on a group racing its
//!   removal and the reuse of its entry by a new group.
//! - `loom_stock_cpus`: two CPUs' stocks caching one objcg, racing its
//!   group's removal or a drain of every stock.
//! - `loom_heap_creation`: `MemcgMimalloc`'s heap creation (the cookie
//!   CAS, the cap and the fallback heap), restated over the real heap table.
//! - `loom_checkers`: `check_invariants` racing a task's exit.
//!
//! `mutation` holds the run-time switches of `scripts/loom-mutations.py`,
//! which weakens each ordering of `engine/` and `heap_table.rs` in turn and
//! reports the model that fails (the models' teeth).
//!
//! loom sees every engine atomic and mutex through `crate::sync`; it treats
//! SeqCst as AcqRel and does not model load buffering, so a pass is
//! evidence, not proof (STYLE R3).

#![warn(dead_code, unused_imports)]

#[cfg(not(debug_assertions))]
compile_error!(
    "loom models need debug assertions: RUSTFLAGS=\"--cfg memcg_loom -C debug-assertions\""
);

mod loom_checkers;
mod loom_heap_creation;
mod loom_heap_table;
mod loom_reclaim;
mod loom_reparent;
mod loom_reuse;
mod loom_stock;
mod loom_stock_cpus;
mod loom_table;
mod loom_task;
pub(crate) mod mutation;

use crate::{Controller, Group};

/// Preemption bound when `LOOM_MAX_PREEMPTIONS` is not set.
const DEFAULT_PREEMPTIONS: usize = 2;

/// Branch budget per execution when `LOOM_MAX_BRANCHES` is not set: a
/// charge through the slow path alone touches some hundred atomics, far
/// above loom's default of 1000 once setup and checking are counted.
const DEFAULT_MAX_BRANCHES: usize = 100_000;

/// Runs `f` under loom with the preemption bound of `LOOM_MAX_PREEMPTIONS`
/// (default 2) and a branch budget large enough for the engine's paths.
fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
    }
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = DEFAULT_MAX_BRANCHES;
    }
    // Counts executions for the report below (a std mutex: it lives
    // outside the model and must not be explored).
    let executions = std::sync::Arc::new(std::sync::Mutex::new(0_u64));
    let counter = std::sync::Arc::clone(&executions);
    let start = std::time::Instant::now();
    builder.check(move || {
        *counter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        f();
    });
    let executions = *executions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    eprintln!(
        "{}: {executions} executions in {:.1?} (preemption bound {:?})",
        std::thread::current().name().unwrap_or("loom model"),
        start.elapsed(),
        builder.preemption_bound,
    );
}

/// Panics with every violation unless the controller's invariants hold.
#[track_caller]
fn assert_invariants(ctrl: &Controller) {
    if let Err(e) = ctrl.check_invariants() {
        panic!("{e}");
    }
}

/// Reference count of the live objcg of `group` on `nid` (the group's slot
/// holds one reference, every other holder one more, and every byte of
/// its charge outside its pool and the page counters one).
fn live_objcg_refcnt(ctrl: &Controller, group: &Group, nid: usize) -> i64 {
    let word = group.memcg().nodeinfo[nid]
        .objcg
        .load(crate::sync::Ordering::Acquire);
    assert_ne!(word, 0, "group {:?} is offline", group.path());
    let objcg = ctrl
        .core()
        .table
        .get(word as u32)
        .expect("a group's slot names a table entry");
    objcg.refcnt()
}

/// The slot word (`generation << 32 | id`) of `group`'s objcg on node 0,
/// 0 once the group is offline.
fn slot_word(group: &Group) -> u64 {
    group.memcg().nodeinfo[0]
        .objcg
        .load(crate::sync::Ordering::Acquire)
}

/// The slot word of the objcg `reservation` holds.
fn reservation_word(reservation: &crate::Reservation) -> u64 {
    reservation.inner.objcg().slot_word()
}

/// Asserts that no per-CPU stock slot (byte or page) holds anything.
#[track_caller]
fn assert_stocks_empty(ctrl: &Controller) {
    for (cpu, stock) in ctrl.core().stocks.iter().enumerate() {
        for slot in stock.obj.iter().chain(stock.pages.iter()) {
            let word = slot.load(crate::sync::Ordering::Acquire);
            assert_eq!(word, 0, "CPU {cpu} still has a stock slot {word:#x}");
        }
    }
}

/// Asserts that each group's usage (`memory.current`) is zero.
#[track_caller]
fn assert_usage_zero(groups: &[&Group]) {
    for g in groups {
        assert_eq!(g.current_bytes(), 0, "group {:?} is not balanced", g.path());
    }
}
