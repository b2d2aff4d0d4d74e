//! Reclaim callbacks ("shrinkers") that a group's caches register.
//!
//! When a charge would take a group over `max` (or has taken it over
//! `high`), the engine asks the callbacks registered in the over-limit
//! group's subtree to free memory, largest group first, passing how many
//! bytes are wanted. A callback returns how many bytes it freed (an
//! estimate; the engine re-reads usage afterwards).
//!
//! A callback may run on several threads at once (up to
//! [`MAX_CONCURRENT_RUNS`]; past that a reclaim yields and counts the busy
//! callback as progress, so its charge retries while the others free
//! memory), but it is never re-entered on one thread: a charge the
//! callback makes that needs reclaim again skips it. Charges that a callback makes
//! through the task that triggered reclaim are forced past `max` (the
//! kernel's `PF_MEMALLOC`), so reclaim cannot recurse through them.

use std::sync::{Arc, Weak};

use crate::engine::memcg::MemCgroup;
use crate::sync::{AtomicI32, Ordering};

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

/// How many threads may run one callback at the same time.
pub const MAX_CONCURRENT_RUNS: usize = 8;

/// A registered callback.
pub(crate) struct Reclaimer {
    callback: Box<Callback>,
    /// Kernel thread ids of the threads running the callback (0 = free).
    running: [AtomicI32; MAX_CONCURRENT_RUNS],
}

impl std::fmt::Debug for Reclaimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reclaimer").finish_non_exhaustive()
    }
}

/// Why a callback did not run.
enum Skipped {
    /// It is running on this very thread (a charge it made).
    Recursion,
    /// Too many threads run it now.
    Busy,
}

impl Reclaimer {
    pub(crate) fn new(callback: Box<Callback>) -> Self {
        Reclaimer {
            callback,
            running: std::array::from_fn(|_| AtomicI32::new(0)),
        }
    }

    /// Runs the callback unless this thread is already running it or too
    /// many threads are; returns the bytes freed.
    fn run(&self, request: &ReclaimRequest) -> Result<u64, Skipped> {
        // SAFETY: `gettid` has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        if self
            .running
            .iter()
            .any(|t| t.load(Ordering::Acquire) == tid)
        {
            return Err(Skipped::Recursion);
        }
        let slot = self
            .running
            .iter()
            .find(|t| {
                t.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(Skipped::Busy)?;
        struct Release<'a>(&'a AtomicI32);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Release);
            }
        }
        let _release = Release(slot);
        Ok((self.callback)(request))
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

/// What a reclaim pass achieved.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReclaimOutcome {
    /// Bytes the callbacks reported freed.
    pub(crate) freed_bytes: u64,
    /// Some callback was busy (running elsewhere): progress is likely.
    pub(crate) busy: bool,
}

impl ReclaimOutcome {
    pub(crate) fn progress(self) -> bool {
        self.freed_bytes > 0 || self.busy
    }
}

/// Runs the callbacks of `over`'s subtree, largest usage first, until
/// `wanted_bytes` were freed.
pub(crate) fn reclaim_subtree(
    over: &MemCgroup,
    wanted_bytes: u64,
    reason: ReclaimReason,
) -> ReclaimOutcome {
    let mut candidates: Vec<(u64, Arc<Reclaimer>)> = Vec::new();
    collect(over, &mut candidates);
    let mut out = ReclaimOutcome::default();
    if candidates.is_empty() {
        return out;
    }
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, r) in candidates {
        if out.freed_bytes >= wanted_bytes {
            break;
        }
        let request = ReclaimRequest {
            wanted_bytes: wanted_bytes - out.freed_bytes,
            reason,
        };
        match r.run(&request) {
            Ok(freed) => out.freed_bytes = out.freed_bytes.saturating_add(freed),
            Err(Skipped::Busy) => out.busy = true,
            Err(Skipped::Recursion) => {}
        }
    }
    if out.busy {
        crate::sync::spin_yield();
    }
    out
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
