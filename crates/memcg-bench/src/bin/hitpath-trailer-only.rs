//! `hitpath-trailer-only`: the hit-path program (see `memcg_bench::hitpath`)
//! with a reference allocator that is `MemcgAlloc`'s shape without its
//! accounting: each block of `memcg::PlainMimalloc` gets an 8-byte word
//! right after the caller's bytes, written on allocation (a word loaded
//! from memory, as `MemcgAlloc` loads its charge word) and read and
//! compared on the free (as `MemcgAlloc` compares it with its cache's).
//!
//! Not an allocator anyone should use: it measures the floor of wrapping
//! an allocator with a per-block owner word, the part of `MemcgAlloc`'s
//! cost per pair that no accounting scheme can remove (the inner call
//! that is no longer a tail call, the registers kept across it, the null
//! check, the word's store and load). `ci/hitpath-budget.sh` prints it
//! between bare mimalloc and `MemcgAlloc`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The word written after each block; set by `main` before the pairs (a
/// store the optimizer sees, so it cannot fold the load into a constant).
static OWNER: AtomicUsize = AtomicUsize::new(0);
/// Frees whose word was not [`OWNER`]'s (none in this program).
static FOREIGN: AtomicUsize = AtomicUsize::new(0);

/// `PlainMimalloc` with an owner word after every block.
struct TrailerOnly(memcg::PlainMimalloc);

/// The free of a block whose word is not the current owner's: counted,
/// then freed, out of line and reached by a tail call, as `MemcgAlloc`'s
/// misses are (the block first, so that it stays in its register).
///
/// # Safety
/// As `GlobalAlloc::dealloc` of `TrailerOnly` for `ptr` and `layout`.
#[cold]
#[inline(never)]
unsafe fn foreign_free(ptr: *mut u8, layout: Layout) {
    FOREIGN.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the caller's guarantee.
    unsafe { memcg::PlainMimalloc.dealloc(ptr, TrailerOnly::inner(layout)) }
}

impl TrailerOnly {
    /// The inner layout of `layout`: 8 bytes more, same alignment.
    ///
    /// # Safety
    /// `layout.size() + 8`, rounded up to the alignment, fits `isize`.
    #[inline(always)]
    unsafe fn inner(layout: Layout) -> Layout {
        // SAFETY: the caller's guarantee; the alignment is a `Layout`'s.
        unsafe { Layout::from_size_align_unchecked(layout.size() + 8, layout.align()) }
    }
}

// SAFETY: every block comes from `PlainMimalloc` with the inner layout,
// which `dealloc` passes back; the word lies in the block's last 8 bytes,
// past the caller's.
unsafe impl GlobalAlloc for TrailerOnly {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // One compare (as `MemcgAlloc`'s cold path checks a layout): the
        // sizes it refuses could never be allocated anyway.
        if layout.size() > i32::MAX as usize {
            return std::ptr::null_mut();
        }
        // SAFETY: the size is below 2^31 and, by the `GlobalAlloc`
        // contract, not 0, so the alignment is at most 2^62 (the size
        // rounded up to it fits `isize`): the inner size rounded up to the
        // alignment is at most the larger of the alignment and 2^32, which
        // fits `isize`.
        let inner = unsafe { Self::inner(layout) };
        // SAFETY: `inner` has a non-zero size.
        let block = unsafe { self.0.alloc(inner) };
        if !block.is_null() {
            // The word is loaded after the call: only the size is kept
            // across it (the fewest registers `MemcgAlloc` could keep).
            let word = OWNER.load(Ordering::Relaxed);
            // SAFETY: the block has `layout.size() + 8` bytes.
            unsafe { (block.add(layout.size()) as *mut usize).write_unaligned(word) };
        }
        block
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with `layout`, which wrote the word.
        let word = unsafe { (ptr.add(layout.size()) as *const usize).read_unaligned() };
        if word != OWNER.load(Ordering::Relaxed) {
            // SAFETY: forwarded contract.
            return unsafe { foreign_free(ptr, layout) };
        }
        // SAFETY: `alloc` accepted `layout` and allocated the block with
        // its inner layout.
        unsafe { self.0.dealloc(ptr, Self::inner(layout)) }
    }
}

#[global_allocator]
static ALLOC: TrailerOnly = TrailerOnly(memcg::PlainMimalloc);

fn main() {
    OWNER.store(&FOREIGN as *const AtomicUsize as usize, Ordering::Relaxed);
    memcg_bench::hitpath::main(false);
    if FOREIGN.load(Ordering::Relaxed) != 0 {
        eprintln!("hitpath-trailer-only: a free found another word than the one written");
        std::process::exit(1);
    }
}
