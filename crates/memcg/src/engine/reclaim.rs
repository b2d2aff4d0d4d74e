//! Reclaim callbacks ("shrinkers") that a group's caches register.
//!
//! When a charge would take a group over `max` (or has taken it over
//! `high`), the engine asks the callbacks registered in the over-limit
//! group's subtree to free memory, largest group first, passing how many
//! bytes are wanted. A callback returns how many bytes it freed (an
//! estimate; the engine re-reads usage afterwards).
//!
//! A callback is never re-entered: while it runs, a nested reclaim (from a
//! charge it makes, on any thread) skips it. Charges that a callback makes
//! through the task that triggered reclaim are forced past `max` (the
//! kernel's `PF_MEMALLOC`), so reclaim cannot recurse through them.

use std::sync::{Arc, Weak};

use crate::engine::memcg::MemCgroup;
use crate::sync::{AtomicBool, Ordering};

/// What a reclaim callback is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReclaimRequest {
    /// Bytes the engine would like freed.
    pub wanted_bytes: u64,
    /// Why reclaim runs.
    pub reason: ReclaimReason,
}

/// Why a reclaim runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReclaimReason {
    /// A charge would exceed `memory.max`.
    Max,
    /// Usage exceeds `memory.high`.
    High,
    /// `memory.max` or `memory.high` was set below usage.
    LimitLowered,
}

type Callback = dyn Fn(&ReclaimRequest) -> u64 + Send + Sync;

/// A registered callback.
pub(crate) struct Reclaimer {
    callback: Box<Callback>,
    running: AtomicBool,
}

impl std::fmt::Debug for Reclaimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reclaimer")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Reclaimer {
    pub(crate) fn new(callback: Box<Callback>) -> Self {
        Reclaimer {
            callback,
            running: AtomicBool::new(false),
        }
    }

    /// Runs the callback unless it is already running; returns bytes freed.
    fn run(&self, request: &ReclaimRequest) -> u64 {
        if self
            .running
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return 0;
        }
        struct Reset<'a>(&'a AtomicBool);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _reset = Reset(&self.running);
        (self.callback)(request)
    }
}

/// Keeps a reclaim callback registered; dropping it unregisters the
/// callback (use [`ReclaimerHandle::keep`] to leave it registered for the
/// group's lifetime).
#[derive(Debug)]
#[must_use = "dropping the handle unregisters the callback at once"]
pub struct ReclaimerHandle {
    pub(crate) group: Weak<MemCgroup>,
    pub(crate) reclaimer: Option<Arc<Reclaimer>>,
}

impl ReclaimerHandle {
    /// Leaves the callback registered until the group is removed.
    pub fn keep(mut self) {
        self.reclaimer = None;
    }
}

impl Drop for ReclaimerHandle {
    fn drop(&mut self) {
        let (Some(group), Some(r)) = (self.group.upgrade(), self.reclaimer.take()) else {
            return;
        };
        group.reclaimers.lock().retain(|x| !Arc::ptr_eq(x, &r));
    }
}

/// Runs the callbacks of `over`'s subtree, largest usage first, until
/// `wanted_bytes` were freed. Returns the bytes the callbacks report.
pub(crate) fn reclaim_subtree(over: &MemCgroup, wanted_bytes: u64, reason: ReclaimReason) -> u64 {
    let mut candidates: Vec<(u64, Arc<Reclaimer>)> = Vec::new();
    collect(over, &mut candidates);
    if candidates.is_empty() {
        return 0;
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut freed = 0u64;
    for (_, r) in candidates {
        if freed >= wanted_bytes {
            break;
        }
        let request = ReclaimRequest {
            wanted_bytes: wanted_bytes - freed,
            reason,
        };
        freed = freed.saturating_add(r.run(&request));
    }
    freed
}

/// Whether any callback is registered in `group`'s subtree.
pub(crate) fn subtree_has_reclaimers(group: &MemCgroup) -> bool {
    if !group.reclaimers.lock().is_empty() {
        return true;
    }
    group
        .children_snapshot()
        .iter()
        .any(|c| subtree_has_reclaimers(c))
}

fn collect(group: &MemCgroup, out: &mut Vec<(u64, Arc<Reclaimer>)>) {
    let usage = group.counter.usage_pages();
    for r in group.reclaimers.lock().iter() {
        out.push((usage, Arc::clone(r)));
    }
    for child in group.children_snapshot() {
        collect(&child, out);
    }
}
