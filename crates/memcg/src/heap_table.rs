//! The lock-free heap → objcg table of `MemcgMimalloc`
//! (`runtime/mimalloc.rs`): insert-only open addressing, so that a free
//! finds the objcg of its block's mimalloc heap without a lock.
//!
//! The publish protocol: an insert claims an empty slot with a CAS to the
//! sentinel 1, stores the value, then stores the key with Release; a lookup
//! loads the key with Acquire and then the value. A lookup therefore sees
//! no key, or the key with its value, never a torn entry (checked by the
//! loom model in `tests/loom_heap_table.rs` and a threaded test below).
#![cfg_attr(any(not(feature = "mimalloc"), memcg_loom), allow(dead_code))]

use crate::sync::{AtomicUsize, Ordering};

/// One slot: the heap's address (0: empty, 1: being written) and the
/// objcg's raw word.
pub(crate) struct Slot {
    heap: AtomicUsize,
    objcg: AtomicUsize,
}

/// Heap → objcg with `SLOTS` slots (a power of two) for at most `SLOTS / 2`
/// heaps: open addressing, insert-only (heaps are never deleted), lock-free.
pub(crate) struct HeapTable<const SLOTS: usize> {
    slots: [Slot; SLOTS],
    created: AtomicUsize,
}

impl<const SLOTS: usize> HeapTable<SLOTS> {
    /// Heaps the table takes (load at most 1/2, so probes stay short).
    const CAPACITY: usize = SLOTS / 2;

    /// An empty table (`const`, for a static).
    #[cfg(not(memcg_loom))]
    pub(crate) const fn new() -> Self {
        HeapTable {
            slots: [const {
                Slot {
                    heap: AtomicUsize::new(0),
                    objcg: AtomicUsize::new(0),
                }
            }; SLOTS],
            created: AtomicUsize::new(0),
        }
    }

    /// An empty table (loom's atomics are not `const`).
    #[cfg(memcg_loom)]
    pub(crate) fn new() -> Self {
        HeapTable {
            slots: std::array::from_fn(|_| Slot {
                heap: AtomicUsize::new(0),
                objcg: AtomicUsize::new(0),
            }),
            created: AtomicUsize::new(0),
        }
    }

    /// The first slot to probe for `heap` (Fibonacci hashing of the
    /// address).
    #[inline(always)]
    pub(crate) fn home(heap: usize) -> usize {
        (heap.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - SLOTS.trailing_zeros()))
            & (SLOTS - 1)
    }

    /// The objcg raw word of `heap`, 0 if it is not an objcg's heap.
    #[inline(always)]
    pub(crate) fn objcg_of(&self, heap: usize) -> usize {
        self.get(heap).unwrap_or(0)
    }

    /// The value recorded for `heap`, if its key is published.
    #[inline(always)]
    pub(crate) fn get(&self, heap: usize) -> Option<usize> {
        let mut i = Self::home(heap);
        // At most `CAPACITY` keys, so an empty slot ends every probe.
        loop {
            // Acquire: pairs with `insert`'s Release store of the key, so
            // the value stored before it is visible.
            let k = self.slots[i].heap.load(Ordering::Acquire);
            if k == heap {
                return Some(self.slots[i].objcg.load(Ordering::Relaxed));
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & (SLOTS - 1);
        }
    }

    /// Records `heap → objcg` (`heap` is not in the table and is neither 0
    /// nor 1); `false` when the table is full. (The allocator reserves room
    /// before it makes a heap; tests insert in one step.)
    #[cfg(test)]
    pub(crate) fn insert(&self, heap: usize, objcg: usize) -> bool {
        if !self.reserve() {
            return false;
        }
        self.insert_reserved(heap, objcg);
        true
    }

    /// Takes room for one heap; `false` when the table is full.
    #[cfg(test)]
    pub(crate) fn reserve(&self) -> bool {
        self.reserve_up_to(Self::CAPACITY)
    }

    /// Takes room for one heap if fewer than `limit` (and than the
    /// capacity) are recorded or reserved; `false` otherwise. Exact under
    /// concurrency: the count is taken with one read-modify-write.
    pub(crate) fn reserve_up_to(&self, limit: usize) -> bool {
        if self.created.fetch_add(1, Ordering::Relaxed) >= limit.min(Self::CAPACITY) {
            self.created.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Heaps recorded or reserved (at most `SLOTS / 2`).
    pub(crate) fn len(&self) -> usize {
        // Relaxed: a statistic. A refused reservation adds one for a
        // moment (the `min` hides it at the capacity, not below a lower
        // limit).
        self.created.load(Ordering::Relaxed).min(Self::CAPACITY)
    }

    /// Gives back room taken by [`HeapTable::reserve_up_to`] and not used.
    pub(crate) fn unreserve(&self) {
        self.created.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records `heap → objcg` in room taken by [`HeapTable::reserve_up_to`]
    /// (`heap` is not in the table and is neither 0 nor 1).
    pub(crate) fn insert_reserved(&self, heap: usize, objcg: usize) {
        let mut i = Self::home(heap);
        // Reserved room guarantees an empty slot (at most half are taken).
        loop {
            let slot = &self.slots[i];
            // Claim the slot with the sentinel 1 (heaps are aligned, never
            // at address 1), write the value, then publish the key.
            if slot
                .heap
                // Relaxed: an empty slot holds nothing to acquire.
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                slot.objcg.store(objcg, Ordering::Relaxed);
                slot.heap.store(heap, Ordering::Release);
                return;
            }
            i = (i + 1) & (SLOTS - 1);
        }
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn heap_table_maps_every_inserted_heap_and_nothing_else() {
        let t: Box<HeapTable<64>> = Box::new(HeapTable::new());
        for i in 1..=32usize {
            assert!(t.insert(i * 4096, i * 8), "heap {i}");
        }
        assert!(!t.insert(33 * 4096, 33 * 8), "full at half the slots");
        for i in 1..=32usize {
            assert_eq!(t.objcg_of(i * 4096), i * 8);
        }
        assert_eq!(t.objcg_of(40 * 4096), 0);
        assert_eq!(t.objcg_of(0x1234_5678_9000), 0);
    }

    #[test]
    fn room_is_reserved_before_a_heap_is_made_and_can_be_given_back() {
        let t: Box<HeapTable<8>> = Box::new(HeapTable::new());
        assert!(t.reserve());
        assert!(t.reserve());
        assert!(t.reserve());
        assert!(t.reserve());
        assert!(!t.reserve(), "four heaps fill eight slots");
        assert_eq!(t.len(), 4, "a refused reservation is not counted");
        t.unreserve();
        assert!(t.reserve(), "room given back is taken again");
        t.insert_reserved(0x1000, 7);
        assert_eq!(t.objcg_of(0x1000), 7);
    }

    #[test]
    fn reserve_up_to_stops_at_the_lower_of_limit_and_capacity() {
        let t: Box<HeapTable<8>> = Box::new(HeapTable::new());
        assert!(t.reserve_up_to(2));
        assert!(t.reserve_up_to(2));
        assert!(!t.reserve_up_to(2), "two heaps under a limit of two");
        assert!(t.reserve_up_to(100), "a higher limit takes more");
        assert!(t.reserve_up_to(100));
        assert!(!t.reserve_up_to(100), "the capacity caps any limit");
        assert!(!t.reserve_up_to(0));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn concurrent_inserts_and_lookups_see_complete_entries() {
        let t: &'static HeapTable<1024> = Box::leak(Box::new(HeapTable::new()));
        let threads: Vec<_> = (0..4usize)
            .map(|k| {
                std::thread::spawn(move || {
                    for i in 0..128usize {
                        let heap = (k * 1000 + i + 1) * 64;
                        assert!(t.insert(heap, heap + 1));
                        // Every key another thread published reads whole.
                        for j in 0..4usize {
                            let other = (j * 1000 + i + 1) * 64;
                            let v = t.objcg_of(other);
                            assert!(v == 0 || v == other + 1, "torn entry for {other}: {v}");
                        }
                    }
                })
            })
            .collect();
        for h in threads {
            h.join().expect("thread");
        }
        for k in 0..4usize {
            for i in 0..128usize {
                let heap = (k * 1000 + i + 1) * 64;
                assert_eq!(t.objcg_of(heap), heap + 1);
            }
        }
    }
}
