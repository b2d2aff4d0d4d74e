//! `MemcgMimalloc`'s heap creation (`runtime/mimalloc.rs`: `heap_of_objcg`,
//! `new_heap`, `fallback_heap`) under loom.
//!
//! The runtime is not built under loom (mimalloc is FFI), so this model
//! restates its protocol over the real [`HeapTable`] with a fake mimalloc
//! whose heaps are numbered addresses: an objcg table entry's cookie is 0
//! until a heap is made for it; the first allocation reserves room in the
//! heap table (`reserve_up_to` the cap), makes a heap, records heap → objcg
//! (`insert_reserved`), and publishes the heap in the cookie with a CAS
//! (AcqRel); a racing creator that loses uses the winner's heap and leaves
//! its own empty in the table, still mapping to the same objcg. Without
//! room (the cap) the cookie is latched to `NO_HEAP` and the allocations
//! go to the shared fallback heap, made on first use by a CAS (the loser
//! deletes its heap), whose blocks carry their objcg in a trailer.
//! (Keep this in step with `runtime/mimalloc.rs`.)
//!
//! Checked: all allocations of one objcg use one heap; a free finds the
//! block's objcg (table lookup, or the trailer for a fallback block); the
//! table never holds more heaps than the cap; every heap made is recorded,
//! or deleted (a fallback loser), never leaked.

use std::sync::Arc;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use super::model;
use crate::heap_table::HeapTable;

/// A cookie of an entry that cannot get a heap.
const NO_HEAP: usize = 1;
/// `FALLBACK` before the fallback heap is made.
const NO_FALLBACK: usize = 1;

/// The allocator's shared state: the heap table, the cap, the fallback
/// heap, and the fake mimalloc's counters.
struct Heaps {
    table: HeapTable<8>,
    max_heaps: usize,
    fallback: AtomicUsize,
    /// Heaps made so far (the next one is `(made + 1) << 12`).
    made: AtomicUsize,
    /// Heaps deleted (a lost fallback race).
    deleted: AtomicUsize,
}

/// A block: the heap it was made in and, for a fallback block, the trailer.
#[derive(Debug, Clone, Copy)]
struct Block {
    heap: usize,
    trailer: Option<usize>,
}

impl Heaps {
    fn new(max_heaps: usize) -> Self {
        Heaps {
            table: HeapTable::new(),
            max_heaps,
            fallback: AtomicUsize::new(NO_FALLBACK),
            made: AtomicUsize::new(0),
            deleted: AtomicUsize::new(0),
        }
    }

    /// `mi_heap_new`: a fresh, aligned heap address.
    fn mi_heap_new(&self) -> usize {
        (self.made.fetch_add(1, Ordering::Relaxed) + 1) << 12
    }

    /// `heap_of_objcg`: the heap of the entry whose cookie is `cookie`, 0
    /// when it has none.
    fn heap_of_objcg(&self, cookie: &AtomicUsize, raw: usize) -> usize {
        match cookie.load(Ordering::Acquire) {
            0 => self.new_heap(cookie, raw),
            NO_HEAP => 0,
            heap => heap,
        }
    }

    /// `new_heap`.
    fn new_heap(&self, cookie: &AtomicUsize, raw: usize) -> usize {
        let heap = if self.table.reserve_up_to(self.max_heaps) {
            let heap = self.mi_heap_new();
            self.table.insert_reserved(heap, raw);
            heap
        } else {
            0
        };
        if heap == 0 {
            return match cookie.compare_exchange(0, NO_HEAP, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) | Err(NO_HEAP) => 0,
                Err(winner) => winner,
            };
        }
        match cookie.compare_exchange(0, heap, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => heap,
            // A thread that found the cap reached latched the entry first.
            Err(NO_HEAP) => 0,
            Err(winner) => winner,
        }
    }

    /// `fallback_heap`.
    fn fallback_heap(&self) -> usize {
        let heap = self.fallback.load(Ordering::Acquire);
        if heap != NO_FALLBACK {
            return heap;
        }
        let heap = self.mi_heap_new();
        match self
            .fallback
            .compare_exchange(NO_FALLBACK, heap, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => heap,
            Err(winner) => {
                self.deleted.fetch_add(1, Ordering::Relaxed);
                winner
            }
        }
    }

    /// An allocation charged to the objcg `raw` (whose cookie is `cookie`).
    fn alloc(&self, cookie: &AtomicUsize, raw: usize) -> Block {
        match self.heap_of_objcg(cookie, raw) {
            0 => Block {
                heap: self.fallback_heap(),
                trailer: Some(raw),
            },
            heap => Block {
                heap,
                trailer: None,
            },
        }
    }

    /// The objcg a free of `block` uncharges: the table's, else (the
    /// fallback heap, compared Relaxed as `is_fallback_heap` does) the
    /// trailer's.
    fn objcg_of_block(&self, block: Block) -> usize {
        match self.table.objcg_of(block.heap) {
            0 => {
                assert_eq!(
                    block.heap,
                    self.fallback.load(Ordering::Relaxed),
                    "a block in no objcg's heap and not in the fallback heap"
                );
                block.trailer.expect("a fallback block has a trailer")
            }
            raw => raw,
        }
    }
}

/// The first allocations of one objcg (raw word returned) on two threads
/// at once, under a cap of `max_heaps`: the heaps, the objcg's cookie, and
/// the two blocks (this thread's, the other's).
fn first_allocations_on_two_threads(
    max_heaps: usize,
) -> (Arc<Heaps>, Arc<AtomicUsize>, usize, Block, Block) {
    let heaps = Arc::new(Heaps::new(max_heaps));
    let cookie = Arc::new(AtomicUsize::new(0));
    let raw = 0x5000_0008;
    let other = {
        let (heaps, cookie) = (Arc::clone(&heaps), Arc::clone(&cookie));
        thread::spawn(move || heaps.alloc(&cookie, raw))
    };
    let mine = heaps.alloc(&cookie, raw);
    let theirs = other.join().expect("allocator");
    (heaps, cookie, raw, mine, theirs)
}

/// Two threads make the first allocations of one objcg at once: both may
/// make a heap; the cookie's CAS picks one, which both use, and the
/// loser's heap stays recorded (empty) for the same objcg. A free on the
/// other thread finds the objcg.
#[test]
fn racing_first_allocations_of_one_objcg_share_one_heap() {
    model(|| {
        let (heaps, cookie, raw, mine, theirs) = first_allocations_on_two_threads(4);

        assert_eq!(mine.heap, theirs.heap, "one objcg, two heaps in use");
        assert_eq!(cookie.load(Ordering::Relaxed), mine.heap);
        assert_eq!(heaps.objcg_of_block(theirs), raw);
        assert_eq!(heaps.objcg_of_block(mine), raw);
        let made = heaps.made.load(Ordering::Relaxed);
        assert!((1..=2).contains(&made));
        assert_eq!(heaps.table.len(), made, "a heap made and not recorded");
        for k in 1..=made {
            assert_eq!(heaps.table.objcg_of(k << 12), raw, "heap {k} not recorded");
        }
    });
}

/// The cap allows one heap: two objcgs' first allocations race for it on
/// two threads. One gets the heap, the other is latched to `NO_HEAP` and
/// allocates in the fallback heap, made by whichever allocation needs it
/// first; a third objcg's allocation on the main thread also races for
/// the fallback heap (the loser deletes its own). Every free finds its
/// objcg, and one fallback heap is in use.
#[test]
fn capped_heaps_racing_fallback_creation_lose_no_objcg() {
    model(|| {
        let heaps = Arc::new(Heaps::new(1));
        let cookies: Arc<[AtomicUsize; 3]> = Arc::new(std::array::from_fn(|_| AtomicUsize::new(0)));
        let raws = [0x5000_0008, 0x5000_0010, 0x5000_0018];
        let others: Vec<_> = (0..2)
            .map(|i| {
                let (heaps, cookies) = (Arc::clone(&heaps), Arc::clone(&cookies));
                thread::spawn(move || heaps.alloc(&cookies[i], raws[i]))
            })
            .collect();
        // The third objcg: the cap is taken by then or soon.
        let third = heaps.alloc(&cookies[2], raws[2]);
        let blocks: Vec<Block> = others
            .into_iter()
            .map(|h| h.join().expect("allocator"))
            .chain(std::iter::once(third))
            .collect();

        for (block, raw) in blocks.iter().zip(raws) {
            assert_eq!(heaps.objcg_of_block(*block), raw);
        }
        let own: Vec<&Block> = blocks.iter().filter(|b| b.trailer.is_none()).collect();
        assert_eq!(own.len(), 1, "the cap allows one heap: {blocks:?}");
        assert_eq!(heaps.table.len(), 1);
        let fallback = heaps.fallback.load(Ordering::Relaxed);
        assert!(blocks
            .iter()
            .filter(|b| b.trailer.is_some())
            .all(|b| b.heap == fallback));
        let made = heaps.made.load(Ordering::Relaxed);
        assert_eq!(
            made,
            1 + 1 + heaps.deleted.load(Ordering::Relaxed),
            "heaps made = the capped one + the fallback + deleted losers"
        );
    });
}

/// The cap allows one heap and two threads make the first allocations of
/// one objcg: one reserves the last room in the table and makes a heap;
/// the other, finding no room, latches the entry to `NO_HEAP` and may do
/// so before the first publishes its heap. The first then loses its CAS to
/// `NO_HEAP`, which is not a heap: both must use the fallback heap
/// (without the `Err(NO_HEAP)` arm in `new_heap` this fails: the first
/// allocates "in heap 1"; the soak crashed in mimalloc there).
#[test]
fn a_heap_made_after_the_entry_was_latched_is_not_used() {
    model(|| {
        let (heaps, _cookie, raw, mine, theirs) = first_allocations_on_two_threads(1);

        for block in [mine, theirs] {
            assert_ne!(block.heap, NO_HEAP, "an allocation in the NO_HEAP marker");
            assert_eq!(heaps.objcg_of_block(block), raw);
        }
        assert_eq!(
            mine.heap, theirs.heap,
            "one objcg, two heaps in use: {mine:?} {theirs:?}"
        );
    });
}
