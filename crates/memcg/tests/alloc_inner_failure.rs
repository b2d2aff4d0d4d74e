//! `MemcgAlloc` when its inner allocator refuses: an allocation or a
//! growth whose inner call fails returns null, leaves the block as it was,
//! and gives its charge back exactly, on the hit path too (there the
//! charge is taken from the task's byte cache before the inner call).
//!
//! The inner allocator is `System` with a switch that makes its `alloc`
//! and `realloc` fail on the thread that set it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

use memcg::MemcgAlloc;

/// `System`, whose `alloc` and `realloc` return null on a thread that
/// set [`REFUSE`].
struct Refusing;

thread_local! {
    /// Set: this thread's inner `alloc` and `realloc` fail.
    static REFUSE: Cell<bool> = const { Cell::new(false) };
    /// Inner calls refused on this thread.
    static REFUSED: Cell<u64> = const { Cell::new(0) };
}

fn refused() -> bool {
    let r = REFUSE.with(Cell::get);
    if r {
        REFUSED.with(|c| c.set(c.get() + 1));
    }
    r
}

// SAFETY: `System`'s calls, forwarded unchanged, or null (a refusal,
// which the `GlobalAlloc` contract allows; a refused `realloc` leaves the
// block alone).
unsafe impl GlobalAlloc for Refusing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if refused() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if refused() {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: MemcgAlloc<Refusing> = MemcgAlloc::new(Refusing);

fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

fn alloc_bytes(g: &memcg::Group) -> u64 {
    memcg::flush_current();
    g.stats().stat.alloc_bytes
}

/// Runs `f` with this thread's inner calls refused; returns what it
/// returned and how many inner calls were refused.
fn refusing<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let before = REFUSED.with(Cell::get);
    REFUSE.with(|r| r.set(true));
    let r = f();
    REFUSE.with(|r| r.set(false));
    (r, REFUSED.with(Cell::get) - before)
}

/// Growths of small blocks paid from the byte cache (`realloc`'s hit
/// path), a growth too large for it (`realloc_cold`), a small allocation
/// (`alloc`'s hit path) and a large one (`alloc_cold`), each with its
/// inner call refused: the blocks keep their size and contents, and the
/// group's usage stays that of the blocks.
///
/// Which path each stage takes was checked by removing each give-back in
/// turn: without the hit path's, the first stage leaves 6,600 bytes
/// charged (44 growths of 150 paid from the cache before it runs dry, the
/// others then taking `realloc_cold`); without `realloc_cold`'s, the
/// second leaves 4 MiB; without `alloc`'s hit path's, the third leaves
/// 208; without `alloc_cold`'s, the fourth leaves 4 MiB and 8 bytes.
#[test]
fn refused_inner_calls_give_the_charge_back() {
    let root = memcg::controller().root();
    let g = memcg::controller().create("inner-failure").expect("group");
    g.attach_current().expect("attach");
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(64);
    for i in 0..64 {
        let mut v: Vec<u8> = Vec::with_capacity(100);
        v.resize(100, i as u8);
        blocks.push(black_box(v));
    }
    // Made before: nothing inside `refusing` may need the allocator but
    // the calls under test. `alloc_bytes` flushes the byte cache; the
    // allocation of `grown` that follows fills it again (a page charge
    // tops it up to four pages), so the first stage's 64 growths of 150
    // bytes (9,600) are paid from it, and each refused one gives its
    // bytes back to it.
    let held = charged(64 * std::mem::size_of::<Vec<u8>>()) + 64 * charged(100);
    assert_eq!(alloc_bytes(&g), held);
    let mut grown: Vec<bool> = Vec::with_capacity(blocks.len());
    let held = held + charged(grown.capacity());

    let ((), refused) = refusing(|| {
        for b in blocks.iter_mut() {
            grown.push(b.try_reserve_exact(150).is_ok());
        }
    });
    assert_eq!(refused, 64, "every inner realloc refused");
    assert!(grown.iter().all(|&ok| !ok), "no growth succeeded");
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b.capacity(), 100, "block {i} kept its size");
        assert!(b.iter().all(|&x| x == i as u8), "block {i} kept its bytes");
    }
    assert_eq!(
        alloc_bytes(&g),
        held,
        "the refused growths' charges given back"
    );

    // A growth the byte cache cannot pay for: `realloc_cold` charges it
    // first, then gives it back.
    let (big_grown, refused) = refusing(|| blocks[0].try_reserve_exact(4 << 20).is_ok());
    assert_eq!(refused, 1, "the inner realloc refused");
    assert!(!big_grown, "the large growth failed");
    assert_eq!(blocks[0].capacity(), 100, "the block kept its size");
    assert!(
        blocks[0].iter().all(|&x| x == 0),
        "the block kept its bytes"
    );
    assert_eq!(
        alloc_bytes(&g),
        held,
        "the refused large growth's charge given back"
    );

    // A small allocation (the hit path of `alloc`), then a large one
    // (`alloc_cold`).
    let mut fresh: Vec<u8> = Vec::new();
    for (bytes, what) in [(200, "small"), (4 << 20, "large")] {
        let (made, refused) = refusing(|| fresh.try_reserve_exact(bytes).is_ok());
        assert_eq!(refused, 1, "the {what} allocation's inner alloc refused");
        assert!(!made, "the {what} allocation failed");
        assert_eq!(
            alloc_bytes(&g),
            held,
            "the refused {what} allocation's charge given back"
        );
    }
    drop(grown);

    // The same growths succeed once the inner allocator gives again.
    for b in blocks.iter_mut() {
        b.reserve_exact(150);
    }
    let grown_bytes = blocks.iter().map(|b| charged(b.capacity())).sum::<u64>();
    assert_eq!(
        alloc_bytes(&g),
        charged(64 * std::mem::size_of::<Vec<u8>>()) + grown_bytes
    );
    drop(blocks);
    root.attach_current().expect("attach root");
    memcg::controller().drain_stocks();
    assert_eq!(alloc_bytes(&g), 0, "everything freed");
    g.remove().expect("remove");
    memcg::check_invariants().expect("invariants");
}
