//! `MemcgAlloc`: the `GlobalAlloc` adapter that charges every allocation.

use std::alloc::{GlobalAlloc, Layout, System};

use crate::runtime::thread::{self, HIT_ADDR_AT, REFUSED};

/// Bytes of the trailer that records each block's objcg.
pub const TRAILER_BYTES: usize = 8;

/// A `GlobalAlloc` that charges every allocation of the process to the
/// calling thread's group (or its active scope), wrapping another
/// allocator.
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: memcg::MemcgAlloc<std::alloc::System> = memcg::MemcgAlloc::new(std::alloc::System);
/// ```
/// (The line above is what a program writes; it is not compiled here
/// because a doc test cannot replace its own global allocator.)
///
/// Each block carries its objcg in an 8-byte trailer right after the
/// caller's bytes (at offset `size`, unaligned when `size` is not a
/// multiple of 8), so a free on any thread uncharges the group that was
/// charged, and the charge includes the trailer (`size + 8` bytes, the way
/// the kernel charges a slab object plus its objcg pointer). `realloc`
/// moves the trailer and charges or uncharges only the difference, to the
/// block's own group.
///
/// Over mimalloc, wrap `memcg::PlainMimalloc` (feature `mimalloc`), not
/// `mimalloc::MiMalloc`. The latter calls mimalloc's aligned entry points
/// for every layout, and mimalloc 3 serves a size that is exactly a size
/// class that is not a power of two from the next class, through its slow
/// path, every time. The trailer's 8 bytes put common Rust sizes there (a
/// `BTreeMap` leaf of 632 bytes becomes 640). `PlainMimalloc` calls the
/// plain entry points for every alignment up to 16: about 10 instructions
/// fewer per pair, and on a serde_json program 108,684 slow allocations
/// fewer and 3 % less peak RSS.
///
/// When a charge would exceed a group's `max`, the allocation drains the
/// group's stocks, waits (a bounded time, holding no lock of the engine)
/// for the reclaimer thread to run the group's reclaim callbacks, and then
/// takes the group's [`crate::OomPolicy`]: by default the allocation
/// succeeds and the group is killed ([`crate::Group::is_killed`]), so one
/// tenant over its limit never ends the process; under
/// [`crate::OomPolicy::Fail`], and inside [`crate::fallible`] regions,
/// `alloc` returns null (`Vec::try_reserve` reports an error; an
/// infallible allocation would go to `handle_alloc_error`). No user code
/// runs inside `alloc`: callbacks run on the reclaimer thread.
///
/// # Safety
/// The adapter keeps the `GlobalAlloc` contract:
/// - it never unwinds or panics (every fallible step is checked and
///   failures return null), and never allocates through itself except in
///   the engine's slow paths, which mark the thread so that nested calls
///   take a lock-free bypass that charges root;
/// - it passes the inner allocator layouts with the caller's alignment and
///   a size that is the caller's plus the trailer, and gives the inner
///   allocator back the same layout on `dealloc`/`realloc`;
/// - it never touches a live block except its own trailer, past the
///   caller's bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemcgAlloc<A = System> {
    inner: A,
}

impl<A> MemcgAlloc<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        MemcgAlloc { inner }
    }

    /// The wrapped allocator.
    pub const fn inner(&self) -> &A {
        &self.inner
    }
}

/// The largest new size `realloc`'s hit path grows a block to, with no
/// check of the new layout (larger growths take `realloc_cold`, which
/// checks it): 2^31 - 1 on 64-bit targets (so that the compare takes an
/// immediate on x86-64), `isize::MAX / 4` (2^29 - 1) on 32-bit ones. A
/// size up to this, plus the trailer, rounded up to a power-of-two
/// alignment, fits `isize` (`Layout`'s rule): it is at most the next power
/// of two above this plus 8 (2^32, or 2^30) when the alignment is not
/// larger, else the alignment itself, which a `Layout` already has.
const HIT_GROWTH_SIZE_LIMIT: usize = if (i32::MAX as usize) < isize::MAX as usize / 4 {
    i32::MAX as usize
} else {
    isize::MAX as usize / 4
};

/// The inner layout (caller's bytes, then the trailer) and the trailer's
/// offset.
#[inline(always)]
fn with_trailer(layout: Layout) -> Option<(Layout, usize)> {
    // One compare: with `size <= isize::MAX - 15 - align`, the size plus
    // the trailer, rounded up to the alignment, fits `isize` (`Layout`'s
    // rule). The few larger sizes this refuses could never be allocated
    // anyway. `align <= isize::MAX` (a `Layout` rule), so the subtraction
    // does not wrap below 0 for the largest alignments.
    if layout.size() > (isize::MAX as usize - 15).saturating_sub(layout.align()) {
        return None;
    }
    let size = inner_bytes(layout);
    let offset = size - TRAILER_BYTES;
    // SAFETY: the alignment comes from a valid `Layout` (a power of two)
    // and the size, rounded up to it, does not overflow `isize` (checked).
    let inner = unsafe { Layout::from_size_align_unchecked(size, layout.align()) };
    Some((inner, offset))
}

/// The inner size (`size + 8`) of the block of a layout that `alloc`
/// accepted, in one instruction (no overflow: `size <= isize::MAX`).
///
/// The trailer is not aligned to 8 (it was at `round_up(size, 8)`, as
/// the project's DESIGN, §4.9, has it): the rounding cost an `and` on both halves of
/// a pair, and an unaligned 8-byte access costs nothing more on x86-64 and
/// aarch64 unless it crosses a cache line. The inner allocators round the
/// block's size up themselves, so the block is as large as before.
#[inline(always)]
fn inner_bytes(layout: Layout) -> usize {
    layout.size() + TRAILER_BYTES
}

/// The inner layout of a block that `alloc` made for `layout`: its
/// [`inner_bytes`] with the caller's alignment, without `with_trailer`'s
/// check.
///
/// # Safety
/// `alloc` accepted `layout` (so `with_trailer(layout)` is `Some`, and
/// this size is valid for the alignment).
#[inline(always)]
unsafe fn inner_layout_of_allocated(layout: Layout) -> Layout {
    // SAFETY: the caller's guarantee.
    unsafe { Layout::from_size_align_unchecked(inner_bytes(layout), layout.align()) }
}

/// # Safety
/// `block` starts a block of at least `offset + 8` bytes.
#[inline(always)]
pub(crate) unsafe fn write_trailer(block: *mut u8, offset: usize, raw: usize) {
    // SAFETY: in bounds by the caller's guarantee; the trailer is
    // unaligned when the caller's size is not a multiple of 8.
    unsafe { (block.add(offset) as *mut usize).write_unaligned(raw) }
}

/// # Safety
/// As [`write_trailer`], and the trailer was written.
#[inline(always)]
pub(crate) unsafe fn read_trailer(block: *const u8, offset: usize) -> usize {
    // The trailer's address is laundered, not the block's: the block's
    // pointer then stays in its register for the free that follows (one
    // copy less). `wrapping_add`: to the optimizer the address may lie
    // past the object it believes the block is, where `add` would be
    // undefined; the laundered address is an ordinary one.
    let trailer = launder(block.wrapping_add(offset));
    // SAFETY: as in `write_trailer`.
    unsafe { (trailer as *const usize).read_unaligned() }
}

/// The trailer word of `block`, read from the last 8 bytes of its
/// `bytes`-byte inner block, with `block` laundered ([`launder`]).
///
/// The free's form of [`read_trailer`]: the block is laundered in place,
/// so that it stays in its register for the free that follows, and the
/// trailer is read at `block + bytes - 8` with the inner size the free
/// needs anyway (one load, no address computed apart). The returned
/// pointer is the block's, with its exposed provenance, for the inner
/// free.
///
/// # Safety
/// `block` starts a block of `bytes >= 8` bytes whose last 8 are its
/// trailer, written by [`write_trailer`].
#[inline(always)]
unsafe fn read_trailer_at_end(block: *mut u8, bytes: usize) -> (*mut u8, usize) {
    let block = launder(block).cast_mut();
    // SAFETY: in bounds by the caller's guarantee; unaligned when the
    // caller's size is not a multiple of 8, as in `write_trailer`.
    let raw =
        unsafe { (block.wrapping_add(bytes - TRAILER_BYTES) as *const usize).read_unaligned() };
    (block, raw)
}

/// `x`, which the optimizer can no longer relate to what it was computed
/// from (an empty `asm!`, no instruction).
#[inline(always)]
fn opaque(mut x: usize) -> usize {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    // SAFETY: an empty instruction sequence that only passes a register
    // through; it touches no memory, stack or flags.
    unsafe {
        std::arch::asm!("/* {0} */", inout(reg) x, options(pure, nomem, nostack, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        x = std::hint::black_box(x);
    }
    x
}

/// Hides where `p` came from from the optimizer.
///
/// The compiler treats the pointer a `#[global_allocator]` returns as a
/// fresh object of exactly the requested size (`__rust_alloc` carries
/// `allocsize`). When the allocator's code is inlined next to the
/// allocation (the global allocator defined in the same crate, or LTO),
/// the trailer read at the caller's size would look out of bounds and
/// the optimizer may treat the path as unreachable (seen: a release build
/// of a test compiled a `ud2` after the free). An empty `asm!` that
/// returns the pointer makes its origin unknown, so the read is an
/// ordinary access to memory the inner allocator handed out, which is
/// what it is.
#[inline(always)]
fn launder(p: *const u8) -> *const u8 {
    // The address leaves through an exposed-provenance integer and comes
    // back from one the optimizer cannot follow.
    std::ptr::with_exposed_provenance(opaque(p.expose_provenance()))
}

impl<A: GlobalAlloc> MemcgAlloc<A> {
    /// The hit path of `alloc`: a charge served by the thread's byte cache
    /// ([`thread::charge_hit`]), the inner allocation, the trailer. Every
    /// miss goes to [`MemcgAlloc::alloc_cold`], whole, so that this path
    /// makes one call (the inner allocator's) and keeps only the charge
    /// and the trailer's offset across it.
    ///
    /// The layout is not checked before the charge: `size + 8` cannot
    /// overflow (`size <= isize::MAX`), and a hit means the
    /// byte cache held that many bytes, which is less than
    /// [`crate::TASK_CACHE_BOUND_BYTES`] (an invariant the checker
    /// verifies); every larger layout misses and takes the cold path,
    /// which checks it.
    #[inline(always)]
    unsafe fn alloc_with(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let bytes = inner_bytes(layout) as u64;
        let Some(raw) = thread::charge_hit(bytes) else {
            // SAFETY: forwarded contract (the size and alignment of a
            // `Layout`).
            return unsafe { Self::alloc_cold(layout.size(), layout.align(), zeroed, self) };
        };
        // The inner size is made opaque to the optimizer (no instruction):
        // it would otherwise see that the trailer's offset is the caller's
        // size and keep that in a register of its own across the call.
        let bytes = opaque(bytes as usize) as u64;
        let offset = bytes as usize - TRAILER_BYTES;
        // SAFETY: the size is at most the byte cache's bound (a hit), so
        // below 2^32. The alignment is a power of two, and at most 2^62:
        // the caller's size is not 0 (the `GlobalAlloc` contract) and,
        // rounded up to the alignment, fits `isize` (a `Layout` rule). So
        // the size rounded up to the alignment is at most the larger of
        // the alignment and twice the size, which fits `isize`.
        let inner = unsafe { Layout::from_size_align_unchecked(bytes as usize, layout.align()) };
        // SAFETY: `inner` has a non-zero size (it includes the trailer) and
        // the caller's alignment.
        let block = unsafe { self.inner_alloc(inner, zeroed) };
        if block.is_null() {
            uncharge_failed(raw, bytes);
            return block;
        }
        // SAFETY: the block has `inner.size() = offset + 8` bytes.
        unsafe { write_trailer(block, offset, raw) };
        block
    }

    /// The inner allocator's block of `inner`, zeroed or not.
    ///
    /// # Safety
    /// `inner` has a non-zero size.
    #[inline(always)]
    unsafe fn inner_alloc(&self, inner: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: the caller's guarantee; `inner` is a valid layout.
        unsafe {
            if zeroed {
                self.inner.alloc_zeroed(inner)
            } else {
                self.inner.alloc(inner)
            }
        }
    }

    /// `alloc` off the hit path: any layout, any state of the thread.
    ///
    /// The layout comes as its size and alignment, first, and the
    /// allocator last, so that both are in the registers `alloc` received
    /// them in (no moves on the hit path to keep them for this call).
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc` for the layout of `size` bytes aligned to
    /// `align` (valid: `size` and `align` are a `Layout`'s).
    #[cold]
    #[inline(never)]
    unsafe fn alloc_cold(size: usize, align: usize, zeroed: bool, this: &Self) -> *mut u8 {
        // SAFETY: the caller's guarantee.
        let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
        let Some((inner, offset)) = with_trailer(layout) else {
            return std::ptr::null_mut();
        };
        let bytes = inner.size() as u64;
        let raw = thread::charge_alloc(bytes);
        if raw == REFUSED {
            return std::ptr::null_mut();
        }
        // SAFETY: `inner` has a non-zero size (it includes the trailer) and
        // the caller's alignment.
        let block = unsafe { this.inner_alloc(inner, zeroed) };
        if block.is_null() {
            if raw != 0 {
                thread::uncharge_alloc(raw, bytes);
            }
            return block;
        }
        // SAFETY: the block has `inner.size() = offset + 8` bytes.
        unsafe { write_trailer(block, offset, raw) };
        block
    }

    /// `dealloc` off the hit path (after `uncharge_hit` missed): frees the
    /// block, then uncharges it.
    ///
    /// # Safety
    /// `ptr` came from the inner allocator with `inner`; `raw` is its
    /// trailer word, of a charge of `inner.size()` bytes (0: not
    /// accounted, nothing to uncharge).
    ///
    /// The block comes first and the allocator last, so that the block's
    /// pointer is in the first argument's register for this call and for
    /// the hit path's tail call of the inner free alike (no moves).
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_cold(ptr: *mut u8, inner: Layout, raw: usize, this: &Self) {
        // SAFETY: the caller's guarantee.
        unsafe { this.inner.dealloc(ptr, inner) };
        if raw != 0 {
            thread::uncharge_alloc_missed(raw, inner.size() as u64);
        }
    }
}

/// Gives back the charge of an allocation the inner allocator refused.
#[cold]
#[inline(never)]
fn uncharge_failed(raw: usize, bytes: u64) {
    thread::uncharge_alloc(raw, bytes);
}

// SAFETY: see the type's `# Safety` section: layouts passed to the inner
// allocator are valid and consistent between alloc and dealloc, nothing
// unwinds, and live blocks are only touched past the caller's bytes.
unsafe impl<A: GlobalAlloc> GlobalAlloc for MemcgAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_with(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.alloc_with(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `alloc` accepted `layout` (the caller's contract).
        let inner = unsafe { inner_layout_of_allocated(layout) };
        let bytes = inner.size();
        // SAFETY: `ptr` was returned by `alloc` with `layout`, which wrote
        // the trailer in the last 8 bytes of the inner block of `bytes`.
        let (ptr, raw) = unsafe { read_trailer_at_end(ptr, bytes) };
        // The charge goes back first, so that the inner free is a tail call
        // and the hit path keeps nothing across a call (the block is not
        // touched after its trailer was read).
        // A block not accounted (`raw` 0) misses the hit path and is
        // freed by `dealloc_cold`, which then uncharges nothing.
        // SAFETY: `raw` is the block's trailer word, of a charge of
        // `inner.size()` bytes (or 0), uncharged once (here, or by
        // `dealloc_cold`).
        if !unsafe { thread::uncharge_hit(raw, inner.size() as u64) } {
            // SAFETY: `ptr` came from the inner allocator with `inner`.
            return unsafe { Self::dealloc_cold(ptr, inner, raw, self) };
        }
        // SAFETY: `ptr` came from the inner allocator with `inner`.
        unsafe { self.inner.dealloc(ptr, inner) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_size = layout.size();
        // The hit path: a growth paid from the task's byte cache, then the
        // inner `realloc` and the trailer, with no check of the new layout
        // and nothing else inline (every other case is `realloc_cold`'s),
        // so that it keeps only the charge word, the new size and the old
        // one (for a failed call) across the inner call.
        if new_size > old_size && new_size <= HIT_GROWTH_SIZE_LIMIT {
            // SAFETY: `ptr` was returned by `alloc` with `layout`, which
            // wrote the trailer at offset `layout.size()`.
            let raw = unsafe { read_trailer(ptr, old_size) };
            let growth_bytes = (new_size - old_size) as u64;
            // A block not accounted (`raw` 0) misses: no task's hit word
            // is 0.
            // SAFETY: `raw` is the block's charge word, of the global
            // controller, for `old_size + 8` bytes; on a hit the block is
            // charged `new_size + 8`, as the trailer written below says
            // (or, if the inner call fails, the growth is given back).
            if unsafe { thread::grow_hit::<HIT_ADDR_AT>(growth_bytes, raw) } {
                // SAFETY: `alloc` accepted `layout` (the caller's contract).
                let old_inner = unsafe { inner_layout_of_allocated(layout) };
                // SAFETY: `ptr` came from the inner allocator with
                // `old_inner`; the new size is not 0 and, at most
                // `HIT_GROWTH_SIZE_LIMIT` plus the trailer, valid for the
                // alignment.
                let block = unsafe { self.inner.realloc(ptr, old_inner, new_size + TRAILER_BYTES) };
                if block.is_null() {
                    give_back_growth(raw, old_size, new_size);
                    return block;
                }
                // SAFETY: the new block has `new_size + 8` bytes.
                unsafe { write_trailer(block, new_size, raw) };
                return block;
            }
        }
        // SAFETY: forwarded contract.
        unsafe { Self::realloc_cold(ptr, old_size, layout.align(), new_size, self) }
    }
}

impl<A: GlobalAlloc> MemcgAlloc<A> {
    /// `realloc` off the hit path: a growth the byte cache did not pay
    /// for or past `HIT_GROWTH_SIZE_LIMIT`, a shrink, the same size, a
    /// block not accounted, any state of the thread. The block and the
    /// layout come in the registers `realloc` received them in, the
    /// allocator last.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc` for `ptr`, the layout of `old_size` bytes
    /// aligned to `align`, and `new_size`.
    #[cold]
    #[inline(never)]
    unsafe fn realloc_cold(
        ptr: *mut u8,
        old_size: usize,
        align: usize,
        new_size: usize,
        this: &Self,
    ) -> *mut u8 {
        // SAFETY: the caller's guarantee (a `Layout` the block was made
        // with, which `alloc` accepted).
        let old_inner = unsafe {
            inner_layout_of_allocated(Layout::from_size_align_unchecked(old_size, align))
        };
        // SAFETY: `GlobalAlloc::realloc`'s contract: `new_size`, rounded up
        // to `align` (a power of two), does not overflow `isize` (the
        // default `realloc` builds its layout the same way).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let Some((new_inner, new_offset)) = with_trailer(new_layout) else {
            return std::ptr::null_mut();
        };
        let (old_bytes, new_bytes) = (old_inner.size() as u64, new_inner.size() as u64);
        // SAFETY: `ptr` was returned by `alloc` with the old layout.
        let mut raw = unsafe { read_trailer(ptr, old_size) };
        // Grow: charge first, so a refusal leaves the block untouched.
        // The byte cache first again: `realloc`'s hit path did not try it
        // for a size past `HIT_GROWTH_SIZE_LIMIT` (on a miss of its own
        // this costs the few instructions of another miss).
        if raw != 0 && new_bytes > old_bytes {
            match thread::resize_alloc(raw, old_bytes, new_bytes) {
                Some(r) => raw = r,
                None => return std::ptr::null_mut(),
            }
        }
        // SAFETY: `ptr` came from the inner allocator with `old_inner`;
        // `new_inner.size()` is non-zero and valid for the alignment.
        let block = unsafe { this.inner.realloc(ptr, old_inner, new_inner.size()) };
        if block.is_null() {
            if raw != 0 && new_bytes > old_bytes {
                give_back_growth(raw, old_size, new_size);
            }
            return block;
        }
        // Shrink: uncharge once the block really shrank; the hit path
        // first, which puts the difference back in the byte cache.
        if raw != 0 && new_bytes < old_bytes {
            // SAFETY: `raw` is the block's charge word (not 0), of the
            // global controller, for `old_bytes`; on a hit `old_bytes -
            // new_bytes` of them are uncharged and the block keeps
            // `new_bytes`.
            let hit = unsafe { thread::uncharge_hit(raw, old_bytes - new_bytes) };
            if !hit {
                if let Some(r) = thread::resize_alloc_slow(raw, old_bytes, new_bytes) {
                    raw = r;
                }
            }
        }
        // SAFETY: the new block has `new_inner.size() = new_offset + 8` bytes.
        unsafe { write_trailer(block, new_offset, raw) };
        block
    }
}

/// Gives back the growth from `old_size` to `new_size` bytes (the
/// caller's sizes) that `realloc` charged to the block whose charge word
/// is `raw`, on its hit path or in `realloc_cold`, when the inner
/// `realloc` failed: the block keeps
/// its old size, and its charge of `old_size + 8` bytes (shrinking never
/// fails).
#[cold]
#[inline(never)]
fn give_back_growth(raw: usize, old_size: usize, new_size: usize) {
    let _ = thread::resize_alloc(
        raw,
        (new_size + TRAILER_BYTES) as u64,
        (old_size + TRAILER_BYTES) as u64,
    );
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn with_trailer_adds_8_after_the_callers_bytes() {
        let (l, off) = with_trailer(Layout::from_size_align(13, 1).unwrap()).unwrap();
        assert_eq!((l.size(), l.align(), off), (21, 1, 13));
        let (l, off) = with_trailer(Layout::from_size_align(64, 64).unwrap()).unwrap();
        assert_eq!((l.size(), l.align(), off), (72, 64, 64));
        assert!(
            with_trailer(Layout::from_size_align(isize::MAX as usize - 100, 1).unwrap()).is_some()
        );
        assert!(
            with_trailer(Layout::from_size_align(isize::MAX as usize - 3, 1).unwrap()).is_none()
        );
    }
}
