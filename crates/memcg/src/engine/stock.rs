//! Per-CPU byte and page stocks (the kernel's `obj_stock_pcp` and
//! `memcg_stock_pcp`), lock-free.
//!
//! # Byte stock (`consume_obj_stock`, `refill_obj_stock`, `drain_obj_stock`)
//! Each CPU has [`NR_OBJ_STOCK`] slots. A slot is one atomic word
//! `objcg id:32 | bytes:16 | 0:16`, 0 when empty. The bytes are pre-charged
//! to the objcg (whole pages were charged and the remainder sits here), and
//! each carries one reference on it (the objcg's references are counted in
//! bytes; see `obj_cgroup.rs`), so that handing bytes to an object or a
//! task cache moves their references with them and touches no shared
//! counter. A slot holds no reference of its own: one with no bytes pins
//! nothing, and its id may name a later incarnation of the entry, whose
//! deposits may then merge into it (the bytes are the same entry's).
//!
//! In the kernel the stock is protected by a per-CPU lock with preemption
//! off. Userspace cannot disable preemption: a thread may migrate between
//! reading its CPU id and touching the slot, and a try-lock holder can be
//! preempted for a whole timeslice. So every operation here is a single
//! compare-and-swap or swap of the whole word: consume and refill CAS the
//! slot of the objcg they mean; replacement and drain swap the word out and
//! then own its contents. The CPU id is only a locality hint; correctness
//! never depends on staying on that CPU.
//!
//! # Page stock (`consume_stock`, `refill_stock`, `drain_stock`)
//! [`NR_MEMCG_STOCK`] slots per CPU of `objcg id:32 | tag:24 | pages:8`
//! caching pages charged in batches of [`MEMCG_CHARGE_BATCH`] to an objcg's
//! owner chain but not yet handed out. The kernel keys these slots by memcg;
//! here they are keyed by objcg, whose id fits the word and whose reference
//! (held by the slot) keeps the id meaningful. A CPU charges its own node's
//! objcg almost always, so the difference is one slot per (group, node)
//! instead of per group.
//!
//! # Orderings and the loom models
//! A slot word carries references on its objcg and bytes or pages charged
//! to its owner chain; whoever takes the word (a drain's CAS to 0, a
//! replacement's swap) puts those references and uncharges those pages.
//! The AcqRel of installing and taking a word orders the depositor's
//! increments (`get`, page-counter adds) before the taker's decrements:
//! without it, a decrement could come first in the counter's modification
//! order, and a count reach zero (a premature release) while a holder
//! still runs. loom keeps every atomic's modification order in execution
//! order, so it cannot exhibit that, and no model fails with one of these
//! weakened (`scripts/loom-mutations.py`; the taker's lookup of a new table
//! chunk, the one plain datum behind a word, is ordered by the table's own
//! pairing, see `ObjcgTable::get`). The same holds for a refill that
//! merges into a slot and a consume that takes from one: a merge's bytes
//! carry references the depositor has just taken (a page charge takes all
//! its pages' bytes' references with a Relaxed add), and a drainer that
//! takes the word after the merge puts them, so the merge's CAS is a
//! release (AcqRel: a merge that overflows takes bytes out, whose
//! references it puts) and a consume's an acquire (its taker puts the
//! references later); the page stock's merge and consume likewise for its
//! page-counter charges. No instruction changes on x86-64.

use crate::limit::PAGE_SIZE;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Byte-stock slots per CPU (the kernel's `NR_OBJ_STOCK`).
pub const NR_OBJ_STOCK: usize = 5;
/// Page-stock slots per CPU (the kernel's `NR_MEMCG_STOCK`).
pub const NR_MEMCG_STOCK: usize = 7;
/// Pages charged to the page counters at once (`MEMCG_CHARGE_BATCH`).
pub const MEMCG_CHARGE_BATCH: u64 = 64;

/// Largest byte count a byte-stock slot holds.
pub(crate) const SLOT_MAX_BYTES: u64 = 0xffff;

/// Contents of a byte-stock slot word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjSlot {
    pub(crate) id: u32,
    pub(crate) bytes: u64,
}

impl ObjSlot {
    #[inline]
    pub(crate) fn unpack(word: u64) -> Self {
        ObjSlot {
            id: (word >> 32) as u32,
            bytes: (word >> 16) & 0xffff,
        }
    }

    #[inline]
    pub(crate) fn pack(self) -> u64 {
        debug_assert!(self.bytes <= SLOT_MAX_BYTES);
        (u64::from(self.id) << 32) | ((self.bytes & 0xffff) << 16)
    }
}

/// Contents of a page-stock slot word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageSlot {
    pub(crate) id: u32,
    pub(crate) tag: u32,
    pub(crate) pages: u64,
}

impl PageSlot {
    #[inline]
    pub(crate) fn unpack(word: u64) -> Self {
        PageSlot {
            id: (word >> 32) as u32,
            tag: ((word >> 8) & 0xff_ffff) as u32,
            pages: word & 0xff,
        }
    }

    #[inline]
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.id) << 32) | ((u64::from(self.tag) & 0xff_ffff) << 8) | (self.pages & 0xff)
    }
}

/// Engine counters kept per CPU (updated on slow paths only).
#[derive(Debug, Default)]
pub(crate) struct CpuCounters {
    /// Byte-stock slots taken over by another objcg.
    pub(crate) obj_replacements: AtomicU64,
    /// Byte-stock slots drained (replacement, remote drain, overflow).
    pub(crate) obj_drains: AtomicU64,
    /// Page-stock slots taken over or drained.
    pub(crate) page_drains: AtomicU64,
    /// Read-modify-writes on counters shared by all CPUs (objcg reference
    /// counts and pools, page counters, shared statistics).
    pub(crate) shared_atomics: AtomicU64,
    /// Charges that needed more than the task cache.
    pub(crate) slow_charges: AtomicU64,
}

/// One CPU's stocks.
#[derive(Debug)]
pub(crate) struct CpuStock {
    pub(crate) obj: [AtomicU64; NR_OBJ_STOCK],
    /// Byte-stock slots in use (`1..=NR_OBJ_STOCK`; see
    /// [`crate::engine::Config::obj_stock_slots`]).
    nr_obj: usize,
    obj_victim: AtomicU32,
    pub(crate) pages: [AtomicU64; NR_MEMCG_STOCK],
    page_victim: AtomicU32,
    page_tag: AtomicU32,
    pub(crate) counters: CpuCounters,
}

/// What [`Stock::take_obj`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    /// Bytes taken, with their references.
    pub(crate) bytes: u64,
}

/// Result of a byte-stock refill: work the caller finishes outside.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefillOutcome {
    /// Whole pages to uncharge from the refilled objcg (and then the
    /// references of their bytes to put).
    pub(crate) uncharge_pages: u64,
    /// A word that was swapped out of the slot (replacement), to drain.
    pub(crate) evicted: Option<u64>,
}

impl CpuStock {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        CpuStock::with_obj_slots(NR_OBJ_STOCK)
    }

    /// A stock using the first `nr_obj` byte-stock slots (clamped to
    /// `1..=NR_OBJ_STOCK`).
    pub(crate) fn with_obj_slots(nr_obj: usize) -> Self {
        CpuStock {
            nr_obj: nr_obj.clamp(1, NR_OBJ_STOCK),
            obj: std::array::from_fn(|_| AtomicU64::new(0)),
            obj_victim: AtomicU32::new(0),
            pages: std::array::from_fn(|_| AtomicU64::new(0)),
            page_victim: AtomicU32::new(0),
            page_tag: AtomicU32::new(0),
            counters: CpuCounters::default(),
        }
    }

    /// The byte-stock slots in use.
    #[inline(always)]
    pub(crate) fn obj_slots(&self) -> &[AtomicU64] {
        self.obj.get(..self.nr_obj).unwrap_or(&self.obj)
    }

    /// `consume_obj_stock`: takes `bytes` (with their references) from the
    /// slot caching objcg `id`; `false` when no slot holds that many.
    #[inline]
    pub(crate) fn consume_obj(&self, id: u32, bytes: u64) -> bool {
        self.take_obj(id, bytes, bytes).is_some()
    }

    /// Takes at least `min_bytes` (at least 1) and at most `max_bytes` (as
    /// much as the slot holds up to that), with their references, from the
    /// slot caching objcg `id`, in one CAS: how a task cache refills itself
    /// from its CPU's stock.
    #[inline]
    pub(crate) fn take_obj(&self, id: u32, min_bytes: u64, max_bytes: u64) -> Option<Taken> {
        // A slot with no bytes pins nothing (its id may be a released
        // entry's): only bytes, which carry references, may be taken.
        let min_bytes = min_bytes.max(1);
        for slot in self.obj_slots() {
            // Relaxed: the CAS below validates the value, and is the
            // acquire (module doc).
            let mut word = slot.load(Ordering::Relaxed);
            loop {
                let s = ObjSlot::unpack(word);
                if s.id != id || s.bytes < min_bytes {
                    break;
                }
                let bytes = s.bytes.min(max_bytes.max(min_bytes));
                let new = ObjSlot {
                    id,
                    bytes: s.bytes - bytes,
                };
                match slot.compare_exchange_weak(
                    word,
                    new.pack(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(Taken { bytes }),
                    Err(actual) => word = actual,
                }
            }
        }
        None
    }

    /// `refill_obj_stock`: deposits `bytes` of objcg `id`, with their
    /// references. When a slot is installed for it, `adopt()` is called
    /// first and its bytes are deposited too: the caller empties the
    /// objcg's `nr_charged_bytes` pool there and takes those bytes'
    /// references, before the word that holds them is visible. With
    /// `allow_uncharge`, whole pages above one page are handed back.
    pub(crate) fn refill_obj(
        &self,
        id: u32,
        bytes: u64,
        allow_uncharge: bool,
        adopt: impl FnOnce() -> u64,
    ) -> RefillOutcome {
        // 1. A slot already caching `id`.
        for slot in self.obj_slots() {
            let mut word = slot.load(Ordering::Relaxed);
            loop {
                let s = ObjSlot::unpack(word);
                if s.id != id {
                    break;
                }
                let (new, out) = merge(s, bytes, allow_uncharge);
                match slot.compare_exchange_weak(
                    word,
                    new.pack(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return out,
                    Err(actual) => word = actual,
                }
            }
        }
        // 2. Install: adopt the central pool, and always allow handing back
        // whole pages.
        let adopted = adopt();
        let empty = ObjSlot { id, bytes: 0 };
        let (new, mut out) = merge(empty, bytes.saturating_add(adopted), true);
        let new_word = new.pack();
        for slot in self.obj_slots() {
            // AcqRel: see the module doc (orderings and loom).
            if slot
                .compare_exchange(0, new_word, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return out;
            }
        }
        // 3. Replace a victim, rotating like the kernel's `drain_idx`.
        let victim = self.obj_victim.fetch_add(1, Ordering::Relaxed) as usize % self.nr_obj;
        // AcqRel: the evicted word is drained by this thread; pairs with
        // the other swaps and CASes of the slot (module doc).
        let old = self.obj[victim].swap(new_word, Ordering::AcqRel);
        if old != 0 {
            out.evicted = Some(old);
            self.counters
                .obj_replacements
                .fetch_add(1, Ordering::Relaxed);
            self.counters.obj_drains.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// Empties every byte-stock slot for which `matches(id)` holds and
    /// returns the words taken (the caller drains them).
    pub(crate) fn take_obj_slots(
        &self,
        mut matches: impl FnMut(u32) -> bool,
        mut drained: impl FnMut(u64),
    ) {
        for slot in self.obj_slots() {
            let word = slot.load(Ordering::Relaxed);
            if word == 0 {
                continue;
            }
            let s = ObjSlot::unpack(word);
            if s.bytes == 0 {
                // Holds nothing (its id may be a released entry's): cleared
                // whatever its id, without asking `matches` (which would
                // take a reference on the entry) and with nothing to drain.
                // Relaxed: no bytes, no references; a deposit racing with
                // this retries or installs anew.
                let _ = slot.compare_exchange(word, 0, Ordering::Relaxed, Ordering::Relaxed);
                continue;
            }
            if !matches(s.id) {
                continue;
            }
            // AcqRel: this thread drains the word (module doc).
            if slot
                .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.counters.obj_drains.fetch_add(1, Ordering::Relaxed);
                drained(word);
            }
        }
    }

    /// `consume_stock`: takes `nr_pages` pre-charged pages cached for objcg `id`.
    pub(crate) fn consume_pages(&self, id: u32, nr_pages: u64) -> bool {
        if nr_pages > MEMCG_CHARGE_BATCH {
            return false;
        }
        for slot in &self.pages {
            let mut word = slot.load(Ordering::Relaxed);
            loop {
                let s = PageSlot::unpack(word);
                if s.id != id || s.pages < nr_pages {
                    break;
                }
                let new = PageSlot {
                    pages: s.pages - nr_pages,
                    ..s
                };
                match slot.compare_exchange_weak(
                    word,
                    new.pack(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return true,
                    Err(actual) => word = actual,
                }
            }
        }
        false
    }

    /// `refill_stock`: caches `nr_pages` pre-charged pages for objcg `id`.
    /// Returns (pages to uncharge directly, evicted or overflowing slot
    /// words to drain, whether a new slot was installed and needs a
    /// reference on the objcg).
    pub(crate) fn refill_pages(&self, id: u32, nr_pages: u64) -> PageRefill {
        if nr_pages > MEMCG_CHARGE_BATCH {
            return PageRefill {
                uncharge_pages: nr_pages,
                ..PageRefill::default()
            };
        }
        for slot in &self.pages {
            let mut word = slot.load(Ordering::Relaxed);
            loop {
                let s = PageSlot::unpack(word);
                if s.id != id {
                    break;
                }
                let total = s.pages + nr_pages;
                if total > MEMCG_CHARGE_BATCH {
                    // Drain that whole slot, as the kernel does (AcqRel: this
                    // thread drains the word, see the module doc).
                    match slot.compare_exchange_weak(word, 0, Ordering::AcqRel, Ordering::Relaxed) {
                        Ok(_) => {
                            self.counters.page_drains.fetch_add(1, Ordering::Relaxed);
                            return PageRefill {
                                uncharge_pages: nr_pages,
                                evicted: Some(word),
                                installed: false,
                            };
                        }
                        Err(actual) => word = actual,
                    }
                    continue;
                }
                let new = PageSlot { pages: total, ..s };
                match slot.compare_exchange_weak(
                    word,
                    new.pack(),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return PageRefill::default(),
                    Err(actual) => word = actual,
                }
            }
        }
        let tag = self.page_tag.fetch_add(1, Ordering::Relaxed);
        let new_word = PageSlot {
            id,
            tag,
            pages: nr_pages,
        }
        .pack();
        for slot in &self.pages {
            // AcqRel: see the module doc.
            if slot
                .compare_exchange(0, new_word, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return PageRefill {
                    installed: true,
                    ..PageRefill::default()
                };
            }
        }
        let victim = self.page_victim.fetch_add(1, Ordering::Relaxed) as usize % NR_MEMCG_STOCK;
        // AcqRel: the evicted word is drained by the caller (module doc).
        let old = self.pages[victim].swap(new_word, Ordering::AcqRel);
        if old != 0 {
            self.counters.page_drains.fetch_add(1, Ordering::Relaxed);
        }
        PageRefill {
            uncharge_pages: 0,
            evicted: (old != 0).then_some(old),
            installed: true,
        }
    }

    /// Empties every page-stock slot for which `matches(id)` holds.
    pub(crate) fn take_page_slots(
        &self,
        mut matches: impl FnMut(u32) -> bool,
        mut drained: impl FnMut(u64),
    ) {
        for slot in &self.pages {
            let word = slot.load(Ordering::Relaxed);
            if word == 0 || !matches(PageSlot::unpack(word).id) {
                continue;
            }
            // AcqRel: this thread drains the word (module doc).
            if slot
                .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.counters.page_drains.fetch_add(1, Ordering::Relaxed);
                drained(word);
            }
        }
    }
}

/// Outcome of a page-stock refill.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageRefill {
    pub(crate) uncharge_pages: u64,
    pub(crate) evicted: Option<u64>,
    pub(crate) installed: bool,
}

/// Adds a deposit to a slot's contents, trimming what the 16-bit field
/// cannot hold and, with `allow_uncharge`, whole pages above one page.
fn merge(s: ObjSlot, bytes: u64, allow_uncharge: bool) -> (ObjSlot, RefillOutcome) {
    let mut out = RefillOutcome::default();
    let mut total_bytes = s.bytes.saturating_add(bytes);
    if (allow_uncharge && total_bytes > PAGE_SIZE) || total_bytes > SLOT_MAX_BYTES {
        out.uncharge_pages = total_bytes / PAGE_SIZE;
        total_bytes %= PAGE_SIZE;
    }
    (
        ObjSlot {
            id: s.id,
            bytes: total_bytes,
        },
        out,
    )
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    /// An `adopt` for a stock refill: empties `pool`.
    fn adopt(pool: &AtomicU64) -> impl FnOnce() -> u64 + '_ {
        || pool.swap(0, Ordering::Relaxed)
    }

    #[test]
    fn obj_slot_pack_roundtrip_keeps_fields() {
        let s = ObjSlot {
            id: 0xdead_beef,
            bytes: 4095,
        };
        assert_eq!(ObjSlot::unpack(s.pack()), s);
        assert_eq!(s.pack() & 0xffff, 0, "the low 16 bits stay 0");
        let p = PageSlot {
            id: 9,
            tag: 0xab_cdef,
            pages: 64,
        };
        assert_eq!(PageSlot::unpack(p.pack()), p);
    }

    #[test]
    fn consume_obj_with_enough_bytes_takes_bytes() {
        let st = CpuStock::new();
        let pool = AtomicU64::new(0);
        st.refill_obj(3, 1000, false, adopt(&pool));
        assert!(st.consume_obj(3, 600));
        assert!(!st.consume_obj(3, 600));
        assert!(!st.consume_obj(4, 1));
        let s = ObjSlot::unpack(st.obj[0].load(Ordering::Relaxed));
        assert_eq!(s.bytes, 400);
    }

    #[test]
    fn take_obj_takes_between_min_and_max_or_nothing() {
        let st = CpuStock::new();
        let pool = AtomicU64::new(0);
        st.refill_obj(3, 1000, false, adopt(&pool));
        // Up to `max`, and all the slot has when that is less.
        assert_eq!(st.take_obj(3, 100, 300), Some(Taken { bytes: 300 }));
        assert_eq!(st.take_obj(3, 100, 5000), Some(Taken { bytes: 700 }));
        // An emptied slot gives nothing, not even with a minimum of 0: its
        // id pins no entry.
        assert_eq!(st.take_obj(3, 0, 5000), None);
        // Less than `min` left: nothing is taken.
        st.refill_obj(3, 50, false, adopt(&pool));
        assert_eq!(st.take_obj(3, 51, 5000), None);
        assert_eq!(st.take_obj(4, 1, 5000), None, "another objcg");
        // `max` below `min` takes `min`.
        assert_eq!(st.take_obj(3, 20, 10), Some(Taken { bytes: 20 }));
        let s = ObjSlot::unpack(st.obj[0].load(Ordering::Relaxed));
        assert_eq!(s.bytes, 30);
    }

    #[test]
    fn refill_obj_above_a_page_with_uncharge_returns_whole_pages() {
        let st = CpuStock::new();
        let pool = AtomicU64::new(100);
        let out = st.refill_obj(3, 4000, true, adopt(&pool));
        assert_eq!(out.uncharge_pages, 1);
        let s = ObjSlot::unpack(st.obj[0].load(Ordering::Relaxed));
        assert_eq!(s.bytes, 4100 - 4096);
        assert_eq!(pool.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn refill_obj_adopts_only_when_it_installs() {
        let st = CpuStock::new();
        let pool = AtomicU64::new(0);
        st.refill_obj(3, 100, true, adopt(&pool));
        let mut called = false;
        st.refill_obj(3, 10, true, || {
            called = true;
            0
        });
        assert!(!called, "a merge into the slot adopts nothing");
    }

    #[test]
    fn refill_obj_without_uncharge_keeps_more_than_a_page() {
        let st = CpuStock::new();
        let pool = AtomicU64::new(0);
        st.refill_obj(3, 100, true, adopt(&pool));
        let out = st.refill_obj(3, 4090, false, adopt(&pool));
        assert_eq!(out.uncharge_pages, 0);
        assert_eq!(
            ObjSlot::unpack(st.obj[0].load(Ordering::Relaxed)).bytes,
            4190
        );
    }

    #[test]
    fn refill_obj_full_stock_evicts_a_victim() {
        let st = CpuStock::new();
        let pool = AtomicU64::new(0);
        for id in 1..=NR_OBJ_STOCK as u32 {
            assert!(st.refill_obj(id, 10, false, adopt(&pool)).evicted.is_none());
        }
        let out = st.refill_obj(99, 10, false, adopt(&pool));
        assert_eq!(out.evicted.map(|w| ObjSlot::unpack(w).id), Some(1));
        assert_eq!(st.counters.obj_replacements.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn take_obj_slots_clears_empty_slots_unasked_and_drains_matching_ones() {
        let st = CpuStock::new();
        let pool = AtomicU64::new(0);
        st.refill_obj(3, 100, false, adopt(&pool));
        st.refill_obj(4, 100, false, adopt(&pool));
        st.refill_obj(5, 100, false, adopt(&pool));
        assert!(st.consume_obj(3, 100), "slot 3 emptied");
        let mut asked = Vec::new();
        let mut drained = Vec::new();
        st.take_obj_slots(
            |id| {
                asked.push(id);
                id == 4
            },
            |w| drained.push(ObjSlot::unpack(w)),
        );
        assert_eq!(asked, [4, 5], "the empty slot's id is not asked about");
        assert_eq!(drained, [ObjSlot { id: 4, bytes: 100 }]);
        let left: Vec<u64> = st.obj.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        assert_eq!(left[0], 0, "the empty slot was cleared");
        assert_eq!(left[1], 0, "the matching slot was drained");
        assert_eq!(ObjSlot::unpack(left[2]), ObjSlot { id: 5, bytes: 100 });
    }

    #[test]
    fn page_stock_over_batch_drains_slot() {
        let st = CpuStock::new();
        assert!(st.refill_pages(5, 60).installed);
        assert!(st.consume_pages(5, 10));
        let r = st.refill_pages(5, 20);
        assert_eq!(r.uncharge_pages, 20);
        assert_eq!(r.evicted.map(|w| PageSlot::unpack(w).pages), Some(50));
        assert!(!st.consume_pages(5, 1));
    }
}
