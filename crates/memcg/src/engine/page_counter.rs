//! Hierarchical page counters (the kernel's `mm/page_counter.c`).
//!
//! A [`PageCounter`] counts 4 KiB pages charged to one group. Charging walks
//! from a group to the root, speculatively adding at every level
//! (`page_counter_try_charge`); the first level that goes over its `max`
//! undoes its own add and the levels already charged are rolled back. A
//! forced charge (`page_counter_charge`) ignores `max`. Uncharging
//! (`page_counter_uncharge`) subtracts at every level; a result below zero is
//! an accounting bug, recorded in [`PageCounter::underflows`], and clamped to
//! zero as the kernel does.
//!
//! # Orderings and the loom models
//! Every SeqCst here is one side of a store-load handshake: a charge's add
//! followed by its read of `max` against a limit write's swap followed by
//! its read of the usage (`set_max_pages`), and a charge's raise of the
//! watermark against `reset_watermark`. No data is published through these
//! counters, so Release/Acquire would add nothing; what SeqCst adds, one
//! total order in which the two sides cannot both miss each other's store,
//! is beyond loom, which treats SeqCst accesses as AcqRel. So no loom model
//! fails when one of them is weakened, even to Relaxed
//! (`scripts/loom-mutations.py`): they are argued here and exercised by the
//! threaded tests (`reset_watermark_concurrent_charges_keep_watermark_at_
//! least_usage` below) instead. Usage and max are otherwise plain counters
//! read Relaxed.

use crate::limit::PAGE_COUNTER_MAX;
use crate::sync::{AtomicI64, AtomicU64, Ordering};

/// One level of the hierarchical usage counter, in pages.
#[derive(Debug)]
pub(crate) struct PageCounter {
    usage_pages: AtomicI64,
    max_pages: AtomicU64,
    high_pages: AtomicU64,
    watermark_pages: AtomicU64,
    underflows: AtomicU64,
}

/// Something arranged in a tree whose levels each own a [`PageCounter`].
pub(crate) trait CounterChain {
    /// This level's counter.
    fn counter(&self) -> &PageCounter;
    /// The level above, or `None` at the root.
    fn parent_level(&self) -> Option<&Self>;
}

impl PageCounter {
    /// Pages that can still be charged before `max` (Relaxed reads).
    pub(crate) fn margin_pages(&self) -> u64 {
        self.max_pages().saturating_sub(self.usage_pages())
    }

    pub(crate) fn new() -> Self {
        PageCounter {
            usage_pages: AtomicI64::new(0),
            max_pages: AtomicU64::new(PAGE_COUNTER_MAX),
            high_pages: AtomicU64::new(PAGE_COUNTER_MAX),
            watermark_pages: AtomicU64::new(0),
            underflows: AtomicU64::new(0),
        }
    }

    /// Current usage in pages (never negative: underflows are clamped).
    pub(crate) fn usage_pages(&self) -> u64 {
        // Relaxed: a statistic; readers tolerate a value that is one
        // concurrent charge behind.
        self.usage_pages.load(Ordering::Relaxed).max(0) as u64
    }

    pub(crate) fn max_pages(&self) -> u64 {
        self.max_pages.load(Ordering::Relaxed)
    }

    /// `page_counter_set_max` without the `-EBUSY` check: the cgroup v2
    /// `memory.max` write stores unconditionally and reclaims afterwards.
    pub(crate) fn set_max_pages(&self, pages: u64) {
        // SeqCst: pairs with the speculative add in `try_charge` and its
        // SeqCst read of `max`, and with the SeqCst read of the usage in
        // `usage_pages_after_set_max`: a charge either sees the new limit
        // or its usage is seen by the writer's reclaim loop.
        self.max_pages
            .swap(pages.min(PAGE_COUNTER_MAX), Ordering::SeqCst);
    }

    /// The usage as the writer of a limit sees it right after the write
    /// (SeqCst, pairing with `try_charge`; see `set_max_pages`).
    pub(crate) fn usage_pages_after_set_max(&self) -> u64 {
        self.usage_pages.load(Ordering::SeqCst).max(0) as u64
    }

    pub(crate) fn high_pages(&self) -> u64 {
        self.high_pages.load(Ordering::Relaxed)
    }

    pub(crate) fn set_high_pages(&self, pages: u64) {
        self.high_pages
            .store(pages.min(PAGE_COUNTER_MAX), Ordering::Relaxed);
    }

    /// Highest usage seen since creation or the last
    /// [`reset_watermark`](Self::reset_watermark), in pages (`memory.peak`).
    pub(crate) fn watermark_pages(&self) -> u64 {
        self.watermark_pages.load(Ordering::Relaxed)
    }

    /// Resets the watermark of this level (only) to its current usage, as
    /// the kernel's `memory.peak` write does (Linux 6.12). Returns the new
    /// watermark.
    ///
    /// A charge that runs concurrently is either counted in the usage read
    /// here or raises the watermark after it: the usage is read again after
    /// the store and the watermark raised to it, and charges raise it with
    /// SeqCst operations after their SeqCst add, so a charge whose add the
    /// second read misses sees the stored value and raises it itself.
    pub(crate) fn reset_watermark(&self) -> u64 {
        let usage = self.usage_pages();
        self.watermark_pages.store(usage, Ordering::SeqCst);
        let now = self.usage_pages.load(Ordering::SeqCst).max(0) as u64;
        self.watermark_pages
            .fetch_max(now, Ordering::SeqCst)
            .max(now)
    }

    /// Number of uncharges that would have taken usage below zero.
    pub(crate) fn underflows(&self) -> u64 {
        self.underflows.load(Ordering::Relaxed)
    }

    fn raise_watermark(&self, usage_pages: i64) {
        let usage = usage_pages.max(0) as u64;
        // fetch_max keeps the watermark monotonic under concurrent charges.
        // SeqCst (after the SeqCst add of the charge) pairs with
        // `reset_watermark`: a reset's store is either seen here, and
        // raised past, or followed by the reset's own read of this usage.
        if usage > self.watermark_pages.load(Ordering::SeqCst) {
            self.watermark_pages.fetch_max(usage, Ordering::SeqCst);
        }
    }

    /// Adds `nr_pages` at this level only, ignoring `max`.
    fn add(&self, nr_pages: u64) -> i64 {
        let delta = nr_pages as i64;
        // SeqCst pairs with the swap in `set_max_pages`.
        let new = self
            .usage_pages
            .fetch_add(delta, Ordering::SeqCst)
            .saturating_add(delta);
        self.raise_watermark(new);
        new
    }

    /// `page_counter_cancel`: subtracts at this level only.
    fn cancel(&self, nr_pages: u64) {
        let delta = nr_pages as i64;
        // SeqCst: as the add in `try_charge` (see the module doc).
        let old = self.usage_pages.fetch_sub(delta, Ordering::SeqCst);
        if old < delta {
            self.underflows.fetch_add(1, Ordering::Relaxed);
            // Clamp as the kernel does: add back what went below zero.
            let below = delta - old.max(0);
            // SeqCst: as the subtraction above.
            self.usage_pages.fetch_add(below, Ordering::SeqCst);
        }
    }
}

/// `page_counter_try_charge`: charge `nr_pages` at `leaf` and every
/// ancestor, or nothing. On failure returns the level whose `max` refused.
pub(crate) fn try_charge<C: CounterChain>(leaf: &C, nr_pages: u64) -> Result<(), &C> {
    let mut level = Some(leaf);
    while let Some(c) = level {
        let counter = c.counter();
        let new = counter
            .usage_pages
            .fetch_add(nr_pages as i64, Ordering::SeqCst)
            .saturating_add(nr_pages as i64);
        // SeqCst: the other half of the store-load pairing with
        // `set_max_pages` (see `usage_pages_after_set_max`): a charge and a
        // `memory.max` write cannot both miss each other.
        if new > counter.max_pages.load(Ordering::SeqCst) as i64 {
            // SeqCst: the undo of the add above (see the module doc).
            counter
                .usage_pages
                .fetch_sub(nr_pages as i64, Ordering::SeqCst);
            // Roll back the levels below `c` that were charged.
            let mut undo = Some(leaf);
            while let Some(u) = undo {
                if std::ptr::eq(u, c) {
                    break;
                }
                u.counter().cancel(nr_pages);
                undo = u.parent_level();
            }
            return Err(c);
        }
        counter.raise_watermark(new);
        level = c.parent_level();
    }
    Ok(())
}

/// Whether some level of the chain from `leaf` up has fewer than
/// `nr_pages` pages left before its `max` (Relaxed reads: a heuristic for
/// what to keep where, never a limit check).
pub(crate) fn margin_below<C: CounterChain>(leaf: &C, nr_pages: u64) -> bool {
    let mut level = Some(leaf);
    while let Some(c) = level {
        if c.counter().margin_pages() < nr_pages {
            return true;
        }
        level = c.parent_level();
    }
    false
}

/// `page_counter_charge`: charge `nr_pages` at every level, ignoring `max`.
pub(crate) fn charge<C: CounterChain>(leaf: &C, nr_pages: u64) {
    let mut level = Some(leaf);
    while let Some(c) = level {
        c.counter().add(nr_pages);
        level = c.parent_level();
    }
}

/// `page_counter_uncharge`: subtract `nr_pages` at every level.
pub(crate) fn uncharge<C: CounterChain>(leaf: &C, nr_pages: u64) {
    let mut level = Some(leaf);
    while let Some(c) = level {
        c.counter().cancel(nr_pages);
        level = c.parent_level();
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    struct Level {
        counter: PageCounter,
        parent: Option<Box<Level>>,
    }
    impl CounterChain for Level {
        fn counter(&self) -> &PageCounter {
            &self.counter
        }
        fn parent_level(&self) -> Option<&Self> {
            self.parent.as_deref()
        }
    }
    fn chain(maxes: &[u64]) -> Level {
        // maxes[0] is the root.
        let mut level: Option<Box<Level>> = None;
        for &m in maxes {
            let c = PageCounter::new();
            c.set_max_pages(m);
            level = Some(Box::new(Level {
                counter: c,
                parent: level,
            }));
        }
        *level.expect("non-empty")
    }

    #[test]
    fn try_charge_within_limits_charges_every_level() {
        let leaf = chain(&[100, 50, 10]);
        assert!(try_charge(&leaf, 7).is_ok());
        assert_eq!(leaf.counter.usage_pages(), 7);
        let mid = leaf.parent.as_ref().unwrap();
        assert_eq!(mid.counter.usage_pages(), 7);
        assert_eq!(mid.parent.as_ref().unwrap().counter.usage_pages(), 7);
    }

    #[test]
    fn try_charge_over_ancestor_max_rolls_back_lower_levels() {
        let leaf = chain(&[100, 5, 10]);
        let Err(err) = try_charge(&leaf, 7) else {
            panic!("the middle level must refuse");
        };
        assert_eq!(err.counter.max_pages(), 5);
        let mid = leaf.parent.as_ref().unwrap();
        assert_eq!(leaf.counter.usage_pages(), 0);
        assert_eq!(mid.counter.usage_pages(), 0);
        assert_eq!(mid.parent.as_ref().unwrap().counter.usage_pages(), 0);
        assert_eq!(leaf.counter.underflows(), 0);
    }

    #[test]
    fn charge_forced_ignores_max_and_raises_watermark() {
        let leaf = chain(&[100, 5]);
        charge(&leaf, 9);
        assert_eq!(leaf.counter.usage_pages(), 9);
        assert_eq!(leaf.counter.watermark_pages(), 9);
        uncharge(&leaf, 9);
        assert_eq!(leaf.counter.usage_pages(), 0);
        assert_eq!(leaf.counter.watermark_pages(), 9);
    }

    #[test]
    fn reset_watermark_sets_current_usage_at_this_level_only() {
        let leaf = chain(&[100, 100]);
        let parent = leaf.parent.as_ref().unwrap();
        charge(&leaf, 9);
        uncharge(&leaf, 6);
        assert_eq!(leaf.counter.watermark_pages(), 9);
        assert_eq!(leaf.counter.reset_watermark(), 3);
        assert_eq!(leaf.counter.watermark_pages(), 3);
        assert_eq!(leaf.counter.usage_pages(), 3);
        // The level above keeps its own watermark.
        assert_eq!(parent.counter.watermark_pages(), 9);
        // Later charges raise the reset watermark again.
        charge(&leaf, 2);
        assert_eq!(leaf.counter.watermark_pages(), 5);
        uncharge(&leaf, 5);
        assert_eq!(leaf.counter.reset_watermark(), 0);
        assert_eq!(parent.counter.watermark_pages(), 9);
    }

    #[test]
    fn reset_watermark_concurrent_charges_keep_watermark_at_least_usage() {
        let leaf = std::sync::Arc::new(chain(&[u64::MAX]));
        let stop = std::sync::Arc::new(crate::sync::AtomicBool::new(false));
        let charger = {
            let (leaf, stop) = (leaf.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut held = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    charge(&*leaf, 1);
                    held += 1;
                    if held == 64 {
                        uncharge(&*leaf, held);
                        held = 0;
                    }
                }
                held
            })
        };
        for _ in 0..2000 {
            // Never above the most the charger holds.
            assert!(leaf.counter.reset_watermark() <= 64);
        }
        stop.store(true, Ordering::Relaxed);
        let held = charger.join().unwrap();
        // No raise was lost to a reset: once the charges are done, the
        // watermark covers the usage they left.
        assert_eq!(leaf.counter.usage_pages(), held);
        assert!(leaf.counter.watermark_pages() >= held);
        assert!(leaf.counter.watermark_pages() <= 64);
    }

    #[test]
    fn uncharge_below_zero_records_underflow_and_clamps() {
        let leaf = chain(&[100]);
        charge(&leaf, 2);
        uncharge(&leaf, 3);
        assert_eq!(leaf.counter.usage_pages(), 0);
        assert_eq!(leaf.counter.underflows(), 1);
    }

    #[test]
    fn margin_over_max_is_zero() {
        let leaf = chain(&[4]);
        charge(&leaf, 6);
        assert_eq!(leaf.counter.margin_pages(), 0);
        leaf.counter.set_max_pages(10);
        assert_eq!(leaf.counter.margin_pages(), 4);
    }
}
