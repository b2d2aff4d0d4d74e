//! `MemcgMimalloc`: the allocator that charges every allocation with no
//! per-block overhead, by giving each objcg a mimalloc heap of its own.
//!
//! The kernel keeps the objcg of a slab object outside the object, in a
//! vector per slab page (`slabobj_ext`), so that charging adds no bytes to
//! the object and freeing does not read it. [`crate::MemcgAlloc`] cannot
//! do that over an opaque allocator and stores the objcg in an 8-byte
//! trailer: objects move to larger size classes and a free reads the
//! block's last word, a cache miss when the block is cold. Over mimalloc
//! (version 3, its crate's default) this module does what the kernel does:
//!
//! - each objcg gets a first-class mimalloc heap (`mi_heap_new`), created
//!   on its first allocation and kept in the objcg's table entry (its
//!   `alloc_cookie`, which outlives the incarnation: the next objcg of the
//!   entry reuses the heap, empty by then);
//! - an allocation is charged first (the runtime's task cache, exactly as
//!   for `MemcgAlloc`), then made in the objcg's heap
//!   (`mi_heap_malloc_small`, `mi_heap_malloc` or, for an alignment past
//!   what mimalloc's blocks have, `mi_heap_malloc_aligned`), so all blocks
//!   of a page belong to one
//!   objcg, like a kernel slab page of one memcg's cache;
//! - a free finds the block's heap in mimalloc's page map (two loads, as
//!   mimalloc's own free does, from the thread's copy of the map pointer;
//!   `runtime/mi_page_map.rs`, which falls back to `mi_heap_of` on a
//!   mimalloc whose layout it does not know; neither reads the block) and
//!   compares it with the heap of the objcg the thread's cache holds, or
//!   finds the objcg in a
//!   lock-free table from heap to objcg; each thread keeps the last
//!   (heap, objcg) pair its frees found (a heap's objcg entry never
//!   changes), so a run of frees of one objcg's blocks probes the table
//!   once.
//!
//! Allocations that are not accounted (before the controller exists)
//! come from mimalloc's main heap, whose blocks are not in the table, so
//! their frees uncharge nothing.
//!
//! # Past [`MAX_OBJCG_HEAPS`]: the fallback heap
//! Heaps are capped (mimalloc 3 has a bounded number of thread-local heap
//! slots, and each heap costs memory; [`MemcgMimalloc::set_max_heaps`]
//! lowers the cap). An objcg table entry that cannot get a heap (the cap
//! is reached, or `mi_heap_new` fails) is latched to `NO_HEAP`, and its
//! allocations stay charged: they are made in one shared *fallback heap*
//! with an 8-byte trailer holding the objcg's raw word, like
//! [`crate::MemcgAlloc`]'s blocks. A free tells them apart by their heap:
//! the table has no entry for the fallback heap, so a block whose heap maps
//! to no objcg is either unaccounted (main heap) or a fallback block
//! (fallback heap), and only then, out of line, is the heap compared with
//! the fallback heap and the trailer read.
//!
//! The path of blocks with a heap of their own does nothing for the
//! fallback: the allocation's hit path runs only under a key armed with
//! the objcg's heap (`fast_path::HEAP_KEY`); an objcg with no heap arms
//! its task's key with `fast_path::NO_HEAP_KEY` instead, whose
//! allocations miss the hit path and charge from the byte cache in the
//! cold one, which calls [`alloc_fallback`]; a free or `realloc` looks at
//! the fallback only when the table lookup found no objcg
//! ([`dealloc_without_objcg`], [`realloc_fallback`]). A fallback pair
//! costs more (the cold allocation, the table probe that misses, the
//! trailer, a shared counter).
//!
//! Fallback blocks are charged what a block with a heap is (the caller's
//! size; the trailer is allocator overhead, as mimalloc's
//! page metadata is), so a group's usage does not depend on whether its
//! objcgs got heaps. They are counted
//! ([`MemcgMimalloc::fallback_allocations`]); if even the fallback heap
//! cannot be made, the allocation is made unaccounted in the main heap and
//! counted in [`MemcgMimalloc::unaccounted_fallbacks`].
//!
//! # Node-bound heaps
//! On a real machine with two or more nodes, the heap of a (group, node)
//! objcg is made in that node's arena (`runtime/node_arena.rs`): an
//! address range bound to the node with `mbind(MPOL_PREFERRED)`, so the
//! pages of objects charged to node N are on node N while N has free
//! memory, whichever thread touches or reuses them. Pages the kernel had
//! to put elsewhere (N full) are counted by
//! [`MemcgMimalloc::node_fallback_bytes`]; allocations a full arena cannot
//! hold go to the fallback heap, counted by
//! [`MemcgMimalloc::node_fallback_allocations`] (a `realloc` that a full
//! arena cannot serve moves the block there, counted the same way).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;

use crate::engine::fast_path::{COOKIE_KEY_HITS, HEAP_KEY_HITS, HIT_COOKIE_AT};
use crate::heap_table::HeapTable;
use crate::runtime::alloc::{read_trailer, write_trailer};
use crate::runtime::plain_mimalloc::{plain_alloc, plain_realloc_size, plain_size, PlainMimalloc};
use crate::runtime::thread::{self, REFUSED};
use crate::runtime::{mi_page_map, node_arena};
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

// The C symbols come from the static library of `libmimalloc-sys` (the
// same one the `mimalloc` crate links); heaps and `mi_heap_of` are part of
// mimalloc 3's public API (`mimalloc.h`).
use libmimalloc_sys as _;

extern "C" {
    fn mi_free(p: *mut c_void);
    fn mi_heap_malloc(heap: *mut c_void, size: usize) -> *mut c_void;
    fn mi_heap_zalloc(heap: *mut c_void, size: usize) -> *mut c_void;
    fn mi_heap_realloc(heap: *mut c_void, p: *mut c_void, newsize: usize) -> *mut c_void;
    fn mi_heap_new() -> *mut c_void;
    fn mi_heap_delete(heap: *mut c_void);
    fn mi_heap_malloc_aligned(heap: *mut c_void, size: usize, alignment: usize) -> *mut c_void;
    fn mi_heap_malloc_small(heap: *mut c_void, size: usize) -> *mut c_void;
    fn mi_heap_zalloc_small(heap: *mut c_void, size: usize) -> *mut c_void;
    fn mi_heap_zalloc_aligned(heap: *mut c_void, size: usize, alignment: usize) -> *mut c_void;
    fn mi_heap_realloc_aligned(
        heap: *mut c_void,
        p: *mut c_void,
        newsize: usize,
        alignment: usize,
    ) -> *mut c_void;
}

/// Heaps the process may create for objcgs: one per objcg table entry
/// that ever allocated, up to this many (or fewer, set by
/// [`MemcgMimalloc::set_max_heaps`]: each heap costs mimalloc resident
/// memory per thread that allocated from it, from about 280 KiB for a
/// heap barely used to about 6 MiB for one in steady use). mimalloc
/// 3 gives every heap a dynamic thread-local slot and has fewer than
/// 65,535 of them; half of that leaves room for the process's own.
///
/// An entry keeps its heap for the objcgs that reuse it after its objcg is
/// released (a removed group's, once its last object is freed), so the cap
/// counts the most objcg table entries ever in use at once, not the objcgs
/// ever made: with one group per query, it is reached by 32,768 (group,
/// node) objcgs alive or still holding objects at the same time.
///
/// Past the cap, accounting goes on: the allocations of an entry without a
/// heap are charged as usual and made in one shared fallback heap, each
/// block with an 8-byte trailer naming its objcg, and counted by
/// [`MemcgMimalloc::fallback_allocations`] (see [`MemcgMimalloc`]).
pub const MAX_OBJCG_HEAPS: usize = 1 << 15;

/// The cookie of an objcg table entry that could not get a heap (the table
/// was full or mimalloc refused): its allocations go to the fallback heap
/// and do not try again.
const NO_HEAP: usize = 1;

/// Slots of the heap → objcg table (open addressing, load ≤ 1/2).
const TABLE_SLOTS: usize = 2 * MAX_OBJCG_HEAPS;

static TABLE: HeapTable<TABLE_SLOTS> = HeapTable::new();

/// The most heaps made for objcgs ([`MemcgMimalloc::set_max_heaps`]).
static MAX_HEAPS: AtomicUsize = AtomicUsize::new(MAX_OBJCG_HEAPS);

/// [`FALLBACK`] before the fallback heap is made (never a heap's address,
/// nor the null a failed `mi_heap_of` returns).
const NO_FALLBACK: usize = 1;

/// The shared heap of the objcgs without a heap of their own (made on
/// first use), or [`NO_FALLBACK`]. It is not in [`TABLE`], so the table
/// lookup of one of its blocks finds no objcg, and only then is the block's
/// heap compared with this one.
static FALLBACK: AtomicUsize = AtomicUsize::new(NO_FALLBACK);

/// Allocations made in the fallback heap (charged, with a trailer).
static FALLBACK_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Allocations of objcgs without a heap made unaccounted because the
/// fallback heap could not be made either.
static UNACCOUNTED_FALLBACKS: AtomicU64 = AtomicU64::new(0);

/// Bytes of a fallback block's trailer (the objcg's raw word).
const FALLBACK_TRAILER_BYTES: usize = 8;

/// The heap of the objcg whose raw word is `raw`, creating it on first
/// use; null when it has no heap (the caller then uses the fallback heap).
#[inline(always)]
fn heap_of_objcg(raw: usize) -> *mut c_void {
    // SAFETY: `raw` is the raw word of a live charge of the global
    // controller (`thread::charge_alloc`), i.e. the address of an entry of
    // its type-stable objcg table, which lives as long as the process.
    let cookie = unsafe { crate::engine::alloc_cookie(raw) };
    match cookie.load(Ordering::Acquire) {
        0 => new_heap(cookie, raw),
        NO_HEAP => std::ptr::null_mut(),
        heap => heap as *mut c_void,
    }
}

#[cold]
#[inline(never)]
fn new_heap(cookie: &AtomicUsize, raw: usize) -> *mut c_void {
    // Room in the table first, so that no heap is made that cannot be
    // recorded.
    // Relaxed: a limit read on the cold path; a change races with heap
    // creations and applies to the ones that read it.
    let heap = if TABLE.reserve_up_to(MAX_HEAPS.load(Ordering::Relaxed)) {
        // SAFETY: `raw` is a live charge's word (see `heap_of_objcg`).
        let nid = unsafe { crate::engine::objcg_nid(raw) };
        // A heap in the node's arena when heaps are node-bound, else an
        // ordinary one.
        let heap = node_arena::new_heap_for_node(nid).unwrap_or_else(|| {
            // SAFETY: plain FFI call; mimalloc allocates the heap from the
            // OS, not through the Rust global allocator.
            unsafe { mi_heap_new() }
        });
        if heap.is_null() {
            TABLE.unreserve();
        } else {
            mi_page_map::validate(heap);
            TABLE.insert_reserved(heap as usize, raw);
        }
        heap
    } else {
        std::ptr::null_mut()
    };
    if heap.is_null() {
        // No heap, now or later: this entry's allocations go to the
        // fallback heap (latched, so they do not retry).
        return match cookie.compare_exchange(0, NO_HEAP, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(NO_HEAP) => std::ptr::null_mut(),
            Err(winner) => winner as *mut c_void,
        };
    }
    // AcqRel: publishes the table entry before the cookie; on a lost race
    // the winner's heap is used and ours stays empty in the table, still
    // mapping to the same objcg. The winner may be a thread that found the
    // cap reached and latched `NO_HEAP` meanwhile: then this entry has no
    // heap (`NO_HEAP` is not a heap's address; the soak crashed in
    // `mi_heap_malloc_small` on it before this was checked).
    match cookie.compare_exchange(0, heap as usize, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => heap,
        Err(NO_HEAP) => std::ptr::null_mut(),
        Err(winner) => winner as *mut c_void,
    }
}

/// The fallback heap, made on first use; null if mimalloc cannot make it.
#[cold]
fn fallback_heap() -> *mut c_void {
    // Acquire: pairs with the AcqRel exchange below, so the heap mimalloc
    // initialised is seen whole.
    let heap = FALLBACK.load(Ordering::Acquire);
    if heap != NO_FALLBACK {
        return heap as *mut c_void;
    }
    // SAFETY: plain FFI call (mimalloc allocates the heap from the OS).
    let heap = unsafe { mi_heap_new() };
    if heap.is_null() {
        return heap;
    }
    mi_page_map::validate(heap);
    match FALLBACK.compare_exchange(
        NO_FALLBACK,
        heap as usize,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => heap,
        Err(winner) => {
            // SAFETY: `heap` was made above, holds no block and was never
            // published.
            unsafe { mi_heap_delete(heap) };
            winner as *mut c_void
        }
    }
}

/// Whether `heap` (the heap of a block with no objcg in the table) is the
/// fallback heap.
#[inline(always)]
fn is_fallback_heap(heap: *mut c_void) -> bool {
    // Relaxed: the block was allocated in the fallback heap after this
    // thread-independent value was published (the allocating thread loaded
    // it with Acquire or stored it), and the allocation happens before this
    // free or `realloc` (the `GlobalAlloc` contract), so coherence makes
    // the load see the published heap. A block of another heap never
    // compares equal, whatever the load returns.
    heap as usize == FALLBACK.load(Ordering::Relaxed)
}

/// Bytes charged for a block of `layout`: its size (no trailer: the objcg
/// is found from the block's heap; a fallback block's trailer is not
/// charged either).
#[inline(always)]
fn charged_bytes(layout: Layout) -> u64 {
    charged_size(layout.size())
}

/// [`charged_bytes`] of a layout of `size` bytes: the size itself, with
/// no instruction (it was rounded up to 8, two instructions on each half
/// of a pair and four in a `realloc`; mimalloc rounds the block up to
/// its size class anyway, so neither figure is the block's). A size of 0,
/// which the `GlobalAlloc` contract excludes, would make a charge of 0
/// bytes, which the slow path refuses (the allocation then returns null).
#[inline(always)]
fn charged_size(size: usize) -> u64 {
    size as u64
}

/// A small size (at most [`SMALL_SIZE_MAX`]) placed, on x86-64, in the
/// register of a call's second argument, where the hit path passes it to
/// mimalloc's `mi_heap_malloc_small(heap, size)` and charges it: left to
/// itself, the compiler keeps the size in the register it arrived in (the
/// first argument's) and moves it, and the heap, to the call's registers
/// before the call (one instruction more per allocation, callgrind).
#[inline(always)]
fn small_size_in_call_register(size: usize) -> usize {
    debug_assert!(size <= SMALL_SIZE_MAX);
    #[cfg(all(target_arch = "x86_64", not(memcg_loom)))]
    {
        let placed: usize;
        // SAFETY: one register move: no memory, no stack, no flags. `size`
        // is at most `SMALL_SIZE_MAX`, so it fits 32 bits, and the 32-bit
        // move zero-extends into the whole register.
        unsafe {
            std::arch::asm!(
                "mov esi, {size:e}",
                size = in(reg) size,
                out("rsi") placed,
                options(pure, nomem, nostack, preserves_flags),
            );
        }
        placed
    }
    #[cfg(not(all(target_arch = "x86_64", not(memcg_loom))))]
    {
        size
    }
}

/// Offset of a fallback block's trailer (the caller's bytes rounded up to
/// 8), or `None` when the block with its trailer would not fit `isize`.
#[inline]
fn trailer_offset(layout: Layout) -> Option<usize> {
    // With `size <= isize::MAX - 15 - align`, the padded size plus the
    // trailer, rounded up to the alignment, fits `isize`; `align <=
    // isize::MAX`, so the subtraction does not wrap below 0.
    if layout.size() > (isize::MAX as usize - 15).saturating_sub(layout.align()) {
        return None;
    }
    Some((layout.size() + 7) & !7)
}

/// [`trailer_offset`] of a layout of `size` bytes a fallback block was
/// allocated with.
#[inline]
fn trailer_offset_of_size(size: usize) -> usize {
    (size + 7) & !7
}

/// An allocation of `bytes` charged to the objcg `raw`, which has no heap:
/// made in the fallback heap with a trailer, the charge kept.
///
/// # Safety
/// `layout` has a non-zero size (the `GlobalAlloc` contract); `raw` is a
/// live charge of `bytes` bytes made for this allocation.
#[cold]
#[inline(never)]
unsafe fn alloc_fallback(raw: usize, bytes: u64, layout: Layout, zeroed: bool) -> *mut u8 {
    let Some(offset) = trailer_offset(layout) else {
        thread::uncharge_alloc(raw, bytes);
        return std::ptr::null_mut();
    };
    let heap = fallback_heap();
    if heap.is_null() {
        // Not even the fallback heap: unaccounted, and counted as such.
        UNACCOUNTED_FALLBACKS.fetch_add(1, Ordering::Relaxed);
        thread::uncharge_alloc(raw, bytes);
        // SAFETY: `layout` has a non-zero size (the caller's guarantee).
        return unsafe { plain_alloc(layout, zeroed) };
    }
    let size = offset + FALLBACK_TRAILER_BYTES;
    // SAFETY: the fallback heap (made by `mi_heap_new`), a size that fits
    // `isize` (checked by `trailer_offset`) and the caller's power-of-two
    // alignment.
    let block = unsafe { heap_alloc_sized(heap, size, layout.align(), zeroed) } as *mut u8;
    if block.is_null() {
        thread::uncharge_alloc(raw, bytes);
        return block;
    }
    // SAFETY: the block has `offset + 8` bytes.
    unsafe { write_trailer(block, offset, raw) };
    // Relaxed: a statistic; readers need no ordering with the block.
    FALLBACK_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    block
}

/// Frees a block of the fallback heap: uncharges the objcg in its trailer.
/// Takes the size alone, not the layout: the free path of blocks with a
/// heap then keeps no more registers alive than before the fallback.
///
/// # Safety
/// `ptr` is a live block of the fallback heap allocated by
/// [`alloc_fallback`] or [`realloc_fallback`] with a layout of `size`
/// bytes.
#[cold]
#[inline(never)]
unsafe fn dealloc_fallback(ptr: *mut u8, size: usize) {
    // SAFETY: fallback blocks carry their trailer at this offset.
    let raw = unsafe { read_trailer(ptr, trailer_offset_of_size(size)) };
    // SAFETY: `ptr` came from mimalloc.
    unsafe { mi_free(ptr as *mut c_void) };
    thread::uncharge_alloc(raw, charged_size(size));
}

/// Frees a block whose heap maps to no objcg: a fallback block (charged,
/// see [`dealloc_fallback`]) or an unaccounted block of the main heap.
/// Out of line and cold, so that the free path of blocks with a heap of
/// their own is laid out as before the fallback existed.
///
/// # Safety
/// `ptr` is a live block of `heap` (or `heap` is null), allocated by this
/// allocator with a layout of `size` bytes.
#[cold]
#[inline(never)]
unsafe fn dealloc_without_objcg(ptr: *mut u8, heap: *mut c_void, size: usize) {
    if is_fallback_heap(heap) {
        // SAFETY: a block of the fallback heap (the caller's guarantee).
        return unsafe { dealloc_fallback(ptr, size) };
    }
    // SAFETY: `ptr` came from mimalloc (the main heap).
    unsafe { mi_free(ptr as *mut c_void) };
}

/// `realloc` of a block of the fallback heap `heap`: the difference is
/// charged to the objcg in its trailer, and the block stays in the
/// fallback heap with its trailer moved.
///
/// # Safety
/// As [`dealloc_fallback`]; `heap` is the fallback heap.
#[cold]
#[inline(never)]
unsafe fn realloc_fallback(
    heap: *mut c_void,
    ptr: *mut u8,
    layout: Layout,
    new_layout: Layout,
) -> *mut u8 {
    let Some(new_offset) = trailer_offset(new_layout) else {
        return std::ptr::null_mut();
    };
    // SAFETY: fallback blocks carry their trailer at this offset.
    let raw = unsafe { read_trailer(ptr, trailer_offset_of_size(layout.size())) };
    let (old_bytes, new_bytes) = (charged_bytes(layout), charged_bytes(new_layout));
    // Grow: charge first, so a refusal leaves the block untouched.
    if new_bytes > old_bytes && thread::resize_alloc(raw, old_bytes, new_bytes).is_none() {
        return std::ptr::null_mut();
    }
    // SAFETY: `ptr` is a block of `heap`; the size fits `isize` (checked by
    // `trailer_offset`) and the alignment is the block's.
    let block = unsafe {
        heap_realloc(
            heap,
            ptr as *mut c_void,
            new_offset + FALLBACK_TRAILER_BYTES,
            layout.align(),
        )
    } as *mut u8;
    if block.is_null() {
        if new_bytes > old_bytes {
            let _ = thread::resize_alloc(raw, new_bytes, old_bytes);
        }
        return block;
    }
    if new_bytes < old_bytes {
        let _ = thread::resize_alloc(raw, old_bytes, new_bytes);
    }
    // SAFETY: the block has `new_offset + 8` bytes.
    unsafe { write_trailer(block, new_offset, raw) };
    block
}

/// Moves a block of a node-bound objcg heap whose arena is full into the
/// fallback heap with a trailer naming `raw`, for a `realloc` to
/// `new_layout`; null (the block untouched) if that fails. The charge is
/// the caller's business: the block keeps its objcg.
///
/// # Safety
/// `ptr` is a live block of an objcg heap, allocated with `layout`.
#[cold]
#[inline(never)]
unsafe fn realloc_to_fallback(
    ptr: *mut u8,
    layout: Layout,
    new_layout: Layout,
    raw: usize,
) -> *mut u8 {
    let Some(offset) = trailer_offset(new_layout) else {
        return std::ptr::null_mut();
    };
    let heap = fallback_heap();
    if heap.is_null() {
        return heap as *mut u8;
    }
    // SAFETY: FFI call with the fallback heap, a size that fits `isize`
    // (checked by `trailer_offset`) and the block's power-of-two alignment.
    let block = unsafe {
        heap_alloc_sized(
            heap,
            offset + FALLBACK_TRAILER_BYTES,
            new_layout.align(),
            false,
        )
    } as *mut u8;
    if block.is_null() {
        return block;
    }
    // SAFETY: both blocks are live, distinct, and hold at least the bytes
    // copied; the new block has `offset + 8` bytes for the trailer; `ptr`
    // came from mimalloc and is not used after.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr, block, layout.size().min(new_layout.size()));
        write_trailer(block, offset, raw);
        mi_free(ptr as *mut c_void);
    }
    node_arena::note_fallback_allocation();
    // Relaxed: a statistic.
    FALLBACK_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    block
}

/// A `GlobalAlloc` over mimalloc that charges every allocation of the
/// process to the calling thread's group (or active scope) like
/// [`crate::MemcgAlloc`], with **no per-block overhead**: each objcg
/// allocates from a mimalloc heap of its own, and a free finds the objcg
/// from the block's heap (see the module documentation of
/// `runtime/mimalloc.rs`). Needs the `mimalloc` feature.
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: memcg::MemcgMimalloc = memcg::MemcgMimalloc::new();
/// ```
/// (Not compiled here: a doc test cannot replace its own global
/// allocator.)
///
/// A block is charged its layout's size. Limits, reclaim, scopes,
/// `realloc` (the difference is charged to the block's own objcg, and a
/// moved block stays in its heap) and the re-entrancy rules are those of
/// `MemcgAlloc`.
///
/// # Past [`MAX_OBJCG_HEAPS`] heaps
/// At most [`MAX_OBJCG_HEAPS`] objcg table entries get a heap of their own
/// (mimalloc 3 has a bounded number of heaps; an entry's heap is reused by
/// the later objcgs of the entry). The allocations of an objcg that gets
/// none are still charged, exactly as much: they come from one shared
/// fallback heap, each block with an 8-byte trailer naming its objcg (not
/// charged), and a free finds the objcg there. Such allocations are
/// counted by [`MemcgMimalloc::fallback_allocations`]; the heaps made so
/// far by [`MemcgMimalloc::objcg_heaps`]. Only if mimalloc cannot make
/// even the fallback heap is an allocation left unaccounted, counted by
/// [`MemcgMimalloc::unaccounted_fallbacks`]. Blocks with a heap of their
/// own take the same path as before the fallback existed.
///
/// # Safety
/// The adapter keeps the `GlobalAlloc` contract: it never unwinds or
/// panics, never allocates through itself outside the engine's slow paths
/// (which take the re-entrant bypass), and hands mimalloc back every block
/// it got from it.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemcgMimalloc;

impl MemcgMimalloc {
    /// The allocator (a unit value; all state is global).
    pub const fn new() -> Self {
        MemcgMimalloc
    }

    /// Heaps made for objcg table entries so far (at most
    /// [`MAX_OBJCG_HEAPS`]; the fallback heap is not counted).
    pub fn objcg_heaps() -> usize {
        TABLE.len()
    }

    /// Sets the most heaps made for objcg table entries (clamped to
    /// [`MAX_OBJCG_HEAPS`]) and returns the value set. Entries that already
    /// have a heap keep it; entries that get to their first allocation
    /// once that many heaps exist use the shared fallback heap for good
    /// (charged as usual, counted by
    /// [`MemcgMimalloc::fallback_allocations`]).
    ///
    /// A heap costs mimalloc memory of its own once it allocated, per
    /// thread that allocated from it: about 280 KiB for a heap barely
    /// used (measured with mimalloc 3.3: 4,096 heaps with one freed block
    /// each added 1.1 GiB, which `mi_collect` did not return), and about
    /// 6 MiB for a heap in steady use by a thread (4 threads keeping
    /// 255 MiB live over 1, 16 and 64 groups: 373 MiB, 689 MiB and
    /// 1.85 GiB resident; `crates/memcg-soak/examples/heaps_rss_mixed.rs`).
    /// The cost is per heap in use at once: groups made and removed one at
    /// a time do not add up. A process with many groups live at once may
    /// want fewer heaps than [`MAX_OBJCG_HEAPS`]. The fallback heap's blocks cost an 8-byte
    /// trailer (not charged) and a cold path at allocation and free. Tests
    /// use it to reach the fallback without making 32,768 heaps.
    pub fn set_max_heaps(max_heaps: usize) -> usize {
        let max_heaps = max_heaps.min(MAX_OBJCG_HEAPS);
        MAX_HEAPS.store(max_heaps, Ordering::Relaxed);
        max_heaps
    }

    /// Allocations made in the shared fallback heap since the process
    /// started: charged allocations of objcgs that got no heap of their
    /// own (past [`MAX_OBJCG_HEAPS`], or when mimalloc refused a heap).
    /// `realloc`s of such blocks are not counted again.
    pub fn fallback_allocations() -> u64 {
        FALLBACK_ALLOCATIONS.load(Ordering::Relaxed)
    }

    /// Allocations of node-bound objcgs that their node's arena could not
    /// hold (more than [`NODE_ARENA_BYTES`](crate::NODE_ARENA_BYTES) live
    /// on the node), made in the shared fallback heap instead: charged to
    /// the objcg's node as usual, but not held by that node's arena. Also
    /// counted by [`MemcgMimalloc::fallback_allocations`]. 0 when heaps are
    /// not node-bound ([`MemcgMimalloc::node_arenas`] is 0).
    pub fn node_fallback_allocations() -> u64 {
        node_arena::node_fallback_allocations()
    }

    /// Bytes of node arenas that the kernel placed on another node than
    /// the arena's (the node was full: the policy is *preferred*, so the
    /// kernel falls back rather than fail), estimated when mimalloc commits
    /// a range: the whole range counts when its first page, faulted in and
    /// asked with `move_pages`, is elsewhere. Memory decommitted and
    /// committed again is counted again.
    pub fn node_fallback_bytes() -> u64 {
        node_arena::node_fallback_bytes()
    }

    /// Node arenas made so far: one per node whose objcgs got a heap while
    /// heaps are node-bound (on when the real topology has two or more
    /// nodes with CPUs; `MEMCG_NODE_HEAPS=0` turns it off, `=1` forces it).
    pub fn node_arenas() -> usize {
        node_arena::node_arenas()
    }

    /// Allocations of objcgs without a heap that were made unaccounted
    /// because mimalloc could not make the fallback heap either (0 unless
    /// mimalloc refused it: out of memory or heap slots).
    pub fn unaccounted_fallbacks() -> u64 {
        UNACCOUNTED_FALLBACKS.load(Ordering::Relaxed)
    }

    /// Whether frees find a block's heap by reading mimalloc's page map
    /// inline (`true` once a heap was made and the reading agreed with
    /// `mi_heap_of`), rather than by calling `mi_heap_of` (before that, or
    /// for ever on a mimalloc whose page layout differs from the one this
    /// crate knows: a `libmimalloc-sys` debug build or another version).
    /// Both are correct; the inline reading is about 23 instructions
    /// cheaper per free.
    pub fn frees_read_page_map() -> bool {
        mi_page_map::page_map_in_use()
    }

    /// The hit path of `alloc`: a charge served by the thread's byte cache
    /// ([`thread::charge_hit_and`]) under a key armed with the objcg's
    /// heap, then the heap (the cache's copy of the objcg's cookie,
    /// `TaskCache::alloc_heap`) and the allocation in it, the thread still
    /// marked busy. Every miss goes whole to a cold function, so that the hit
    /// path keeps little across its one call (mimalloc's).
    ///
    /// The layouts of mimalloc's small-object entry point ([`is_small`]:
    /// most allocations) are told apart first, and the others go whole to
    /// [`alloc_not_small`]: the path of small ones then never needs the
    /// alignment again (a block of a small size class is word-aligned,
    /// and its misses ask for `SMALL_ALIGN`, which serves every alignment
    /// a small layout has), so it keeps no register for it.
    #[inline(always)]
    unsafe fn alloc_with(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // Two tests with a branch each (`is_small`, or `||`, compiled to
        // flag arithmetic: two instructions more).
        if layout.size() > SMALL_SIZE_MAX {
            // SAFETY: forwarded contract (a `Layout`'s size and alignment).
            return unsafe { alloc_not_small(layout.size(), layout.align(), zeroed) };
        }
        if layout.align() > SMALL_ALIGN {
            // SAFETY: as above.
            return unsafe { alloc_not_small(layout.size(), layout.align(), zeroed) };
        }
        // One register holds the size for the charge, the call and a miss
        // (the size charged is the caller's, which mimalloc rounds up to
        // its size class itself). At most `SMALL_SIZE_MAX`.
        let size = small_size_in_call_register(layout.size());
        // mimalloc is called with the thread still busy (see
        // `thread::charge_alloc_and`: a fork waits for it).
        let hit = thread::charge_hit_and::<HEAP_KEY_HITS, _>(size as u64, |hit| {
            // The size is kept in memory across the call, read back only
            // if it fails (`thread::keep_hit_size`), as the charge's word
            // is (`hit.raw_again()`): the call then keeps no register.
            thread::keep_hit_size(size);
            // The objcg's heap, which the key's arming copied from its
            // cookie (one load and no test: a key armed so means the heap
            // was made). The slow path picked the cookie up after the heap
            // was made (which published it with an AcqRel exchange, read
            // with Acquire there), before this thread allocated from the
            // heap.
            let heap = hit.heap();
            // SAFETY: FFI calls with a heap made by `mi_heap_new` and a
            // size the small entry points serve.
            let block = unsafe {
                if zeroed {
                    mi_heap_zalloc_small(heap as *mut c_void, size)
                } else {
                    mi_heap_malloc_small(heap as *mut c_void, size)
                }
            } as *mut u8;
            if !block.is_null() {
                return block;
            }
            // Mimalloc refused: the cold path, with the size and the
            // charge's word read back.
            let size = thread::kept_hit_size();
            // SAFETY: forwarded contract; `hit.raw_again()` is the charge
            // just made, of `size` bytes, which is `charged_bytes` of this
            // layout too (the caller's size); its block serves the
            // caller's layout (as many bytes or more, aligned to
            // `SMALL_ALIGN`), and its free, with the caller's layout,
            // uncharges the same bytes.
            unsafe { alloc_charged_cold(hit.raw_again(), small_layout(size), zeroed) }
        });
        match hit {
            Some(block) => block,
            // SAFETY: forwarded contract; a block of `size` bytes aligned
            // to `SMALL_ALIGN` serves the caller's layout (at most that
            // alignment, at most `size` bytes), and is charged what the
            // caller's layout's free uncharges.
            None => unsafe { alloc_cold(size, SMALL_ALIGN, zeroed) },
        }
    }
}

/// The layout a small allocation of `size` bytes is made with off its hit
/// path: `SMALL_ALIGN`, at least the caller's alignment (a small layout's
/// is at most that), so the block serves the caller's layout too; frees
/// and resizes of it read only the size (and give mimalloc an alignment
/// the block has).
#[inline(always)]
fn small_layout(size: usize) -> Layout {
    // SAFETY: a size up to `SMALL_SIZE_MAX` and a power-of-two alignment
    // make a valid layout.
    unsafe { Layout::from_size_align_unchecked(size, SMALL_ALIGN) }
}

/// [`MemcgMimalloc`]'s `alloc` of a layout that is not small
/// ([`is_small`]): its own hit path, out of line (a jump from `alloc`),
/// through [`heap_alloc_sized`].
///
/// # Safety
/// As `GlobalAlloc::alloc` for the layout of `size` bytes aligned to
/// `align` (valid: `size` and `align` are a `Layout`'s).
#[inline(never)]
unsafe fn alloc_not_small(size: usize, align: usize, zeroed: bool) -> *mut u8 {
    // SAFETY: the caller's guarantee.
    let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
    let hit = thread::charge_hit_and::<HEAP_KEY_HITS, _>(charged_bytes(layout), |hit| {
        // As in `alloc_with`: a key armed with the heap.
        let heap = hit.heap();
        // SAFETY: FFI calls with a heap made by `mi_heap_new` and a valid
        // size and power-of-two alignment (from `layout`).
        let block = unsafe { heap_alloc(heap as *mut c_void, layout, zeroed) } as *mut u8;
        if !block.is_null() {
            return block;
        }
        // SAFETY: forwarded contract; `hit.raw()` is the charge just made.
        unsafe { alloc_charged_cold(hit.raw(), layout, zeroed) }
    });
    match hit {
        Some(block) => block,
        // SAFETY: forwarded contract.
        None => unsafe { alloc_cold(size, align, zeroed) },
    }
}

/// The largest size served by mimalloc's small-object entry points
/// (`MI_SMALL_SIZE_MAX`: 128 words).
const SMALL_SIZE_MAX: usize = 128 * std::mem::size_of::<usize>();

/// The alignment every block of mimalloc's small size classes has: their
/// sizes are whole words and their pages start aligned to at least 16
/// bytes, so every block is word-aligned (checked by
/// `small_blocks_are_word_aligned` below for every small size).
const SMALL_ALIGN: usize = std::mem::size_of::<usize>();

/// Whether `layout` is served by mimalloc's small-object entry points
/// (see [`heap_alloc`]).
#[inline(always)]
fn is_small(layout: Layout) -> bool {
    layout.size() <= SMALL_SIZE_MAX && layout.align() <= SMALL_ALIGN
}

/// A block of `layout` from `heap`: through mimalloc's small-object entry
/// point when the layout fits it (most allocations: up to 1 KiB and an
/// alignment of at most a word), which skips the alignment handling of
/// `mi_heap_malloc_aligned` (about 14 instructions per pair; the
/// `mimalloc` crate's own `GlobalAlloc` always takes the aligned one),
/// else through [`heap_alloc_sized`] (the plain heap entry points for
/// alignments up to 16).
///
/// # Safety
/// `heap` is a heap made by `mi_heap_new` (or a node arena's); `layout`
/// has a non-zero size.
#[inline(always)]
unsafe fn heap_alloc(heap: *mut c_void, layout: Layout, zeroed: bool) -> *mut c_void {
    // SAFETY: FFI calls with a live heap, a size that fits `isize` and a
    // power-of-two alignment (from `layout`); the small entry points only
    // for sizes up to `SMALL_SIZE_MAX` and alignments their blocks have.
    unsafe {
        if is_small(layout) {
            if zeroed {
                mi_heap_zalloc_small(heap, layout.size())
            } else {
                mi_heap_malloc_small(heap, layout.size())
            }
        } else {
            heap_alloc_sized(heap, layout.size(), layout.align(), zeroed)
        }
    }
}

/// A block of `size` bytes aligned to `align` from `heap`, zeroed or not:
/// through mimalloc's plain heap entry points for alignments up to 16,
/// with the size rounded up to the alignment (`plain_size`; see
/// [`PlainMimalloc`] for why not the aligned ones), else through the
/// aligned ones.
///
/// # Safety
/// `heap` is a heap made by `mi_heap_new` (or a node arena's); `size` is
/// not 0 and, rounded up to `align` (a power of two), fits `isize`.
#[inline(always)]
unsafe fn heap_alloc_sized(
    heap: *mut c_void,
    size: usize,
    align: usize,
    zeroed: bool,
) -> *mut c_void {
    // SAFETY: FFI calls with a live heap, a valid size and a power-of-two
    // alignment; the plain ones only where they give that alignment.
    unsafe {
        match (plain_size(size, align), zeroed) {
            (Some(plain), false) => mi_heap_malloc(heap, plain),
            (Some(plain), true) => mi_heap_zalloc(heap, plain),
            (None, false) => mi_heap_malloc_aligned(heap, size, align),
            (None, true) => mi_heap_zalloc_aligned(heap, size, align),
        }
    }
}

/// `p`, a block of `heap` aligned to `align`, resized to `newsize` bytes
/// (moved within `heap` if needed): through `mi_heap_realloc` when
/// `plain_realloc_size` gives a size (alignments up to a word, as
/// mimalloc's aligned `realloc` does itself but without its extra layers,
/// about 20 instructions per call on the `rayon` program; up to 16 with
/// the size rounded up), else through `mi_heap_realloc_aligned`.
///
/// # Safety
/// As [`heap_alloc_sized`] for `newsize`; `p` is a live block of mimalloc
/// aligned to `align`.
#[inline(always)]
unsafe fn heap_realloc(
    heap: *mut c_void,
    p: *mut c_void,
    newsize: usize,
    align: usize,
) -> *mut c_void {
    // SAFETY: as in `heap_alloc_sized`.
    unsafe {
        if let Some(plain) = plain_realloc_size(newsize, align) {
            mi_heap_realloc(heap, p, plain)
        } else {
            mi_heap_realloc_aligned(heap, p, newsize, align)
        }
    }
}

/// `alloc` off the hit path: any state of the thread. The layout comes
/// as its size and alignment, in the registers `alloc` received them in.
///
/// # Safety
/// As `GlobalAlloc::alloc` for the layout of `size` bytes aligned to
/// `align` (valid: `size` and `align` are a `Layout`'s).
#[cold]
#[inline(never)]
unsafe fn alloc_cold(size: usize, align: usize, zeroed: bool) -> *mut u8 {
    // SAFETY: the caller's guarantee.
    let layout = unsafe { Layout::from_size_align_unchecked(size, align) };
    let bytes = charged_bytes(layout);
    // mimalloc is called with the thread still busy (see
    // `thread::charge_alloc_and`: a fork waits for it).
    thread::charge_alloc_and::<COOKIE_KEY_HITS, _>(bytes, |raw| {
        // SAFETY: forwarded contract.
        unsafe { alloc_charged(raw, bytes, layout, zeroed) }
    })
}

/// [`alloc_charged`] out of line, for the hit path's misses after its
/// charge (its heap refused: a full node arena). Takes no
/// byte count (it is [`charged_bytes`] of `layout`): the hit path then
/// keeps one register less across its call.
///
/// # Safety
/// As [`alloc_charged`], with `raw` a charge of `charged_bytes(layout)`.
#[cold]
#[inline(never)]
unsafe fn alloc_charged_cold(raw: usize, layout: Layout, zeroed: bool) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { alloc_charged(raw, charged_bytes(layout), layout, zeroed) }
}

/// The rest of [`MemcgMimalloc`]'s `alloc` once `raw` is charged.
///
/// # Safety
/// As `GlobalAlloc::alloc`; `raw` is the charge of `bytes` just made for
/// `layout` (or 0, or `REFUSED`).
#[inline(always)]
unsafe fn alloc_charged(raw: usize, bytes: u64, layout: Layout, zeroed: bool) -> *mut u8 {
    if raw == REFUSED {
        return std::ptr::null_mut();
    }
    let heap = if raw == 0 {
        std::ptr::null_mut()
    } else {
        heap_of_objcg(raw)
    };
    if heap.is_null() && raw != 0 {
        // SAFETY: forwarded contract; `raw` is the charge just made.
        return unsafe { alloc_fallback(raw, bytes, layout, zeroed) };
    }
    // SAFETY: FFI calls with a valid size and power-of-two alignment
    // (from `layout`) and, if non-null, a heap made by `mi_heap_new`.
    let block = unsafe {
        if heap.is_null() {
            plain_alloc(layout, zeroed) as *mut c_void
        } else {
            heap_alloc(heap, layout, zeroed)
        }
    };
    if block.is_null() && raw != 0 {
        if node_arena::is_bound() {
            // The node's arena is full: the shared fallback heap, counted.
            // SAFETY: forwarded contract; `raw` is the charge made above.
            let block = unsafe { alloc_fallback(raw, bytes, layout, zeroed) };
            if !block.is_null() {
                node_arena::note_fallback_allocation();
            }
            return block;
        }
        thread::uncharge_alloc(raw, bytes);
    }
    block as *mut u8
}

/// The heap of a block and the objcg raw word of that heap (0: not
/// accounted, or a block of the fallback heap).
#[inline(always)]
fn heap_and_objcg_of_block(ptr: *const u8) -> (*mut c_void, usize) {
    // SAFETY: `ptr` is a live block from mimalloc.
    let heap = unsafe { mi_page_map::heap_of_block(ptr) };
    if heap.is_null() {
        return (heap, 0);
    }
    (heap, TABLE.objcg_of(heap as usize))
}

thread_local! {
    /// The last heap whose objcg a free of this thread found in [`TABLE`]
    /// (`usize::MAX` for none: no heap's address, not even a null heap's),
    /// and that objcg's raw word (never 0): a heap maps to one objcg
    /// table entry for the life of the process (the table is insert-only
    /// and an entry's raw word is its type-stable address), so the pair
    /// never goes stale. Read and written only while the thread is marked
    /// busy ([`thread::uncharge_hit_with`]'s `resolve`): a signal handler
    /// then takes the re-entrant path, which does not touch them, so it
    /// never sees a pair half written. `const`, `!Drop`: plain
    /// thread-locals, valid in every TLS destructor.
    static LAST_HEAP: Cell<usize> = const { Cell::new(usize::MAX) };
    static LAST_OBJCG: Cell<usize> = const { Cell::new(0) };
}

/// The objcg raw word of `heap` if it is the thread's last heap, else
/// [`thread::UNRESOLVED`] (the cold path then probes [`TABLE`]), for a
/// free marked busy. No call, so that the free's hit path keeps nothing
/// more across calls.
#[inline(always)]
fn objcg_of_heap_busy(heap: usize) -> usize {
    if heap == LAST_HEAP.with(Cell::get) {
        return LAST_OBJCG.with(Cell::get);
    }
    thread::UNRESOLVED
}

/// The objcg raw word of `heap` from [`TABLE`], or
/// [`thread::UNRESOLVED`] when it has none (or is null), for a free marked
/// busy: the pair is kept when the heap has an objcg.
#[cold]
#[inline(never)]
fn objcg_of_heap_busy_probe(heap: usize) -> usize {
    if heap == 0 {
        return thread::UNRESOLVED;
    }
    let raw = TABLE.objcg_of(heap);
    if raw == 0 {
        return thread::UNRESOLVED;
    }
    LAST_HEAP.with(|h| h.set(heap));
    LAST_OBJCG.with(|o| o.set(raw));
    raw
}

/// `dealloc` off the hit path. `raw` is what
/// [`thread::uncharge_hit_cached_or`] returned: the block's objcg word,
/// [`thread::UNRESOLVED`] (then looked up here; 0 when the block has
/// none), or [`thread::COOKIE_STALE`] (uncharged already; the thread's
/// copy of its objcg's heap is refreshed here). The size comes second, as
/// in `dealloc`'s own arguments, so the hit path moves no register for
/// this call.
///
/// # Safety
/// `ptr` is a live block of `heap` (or `heap` is null), allocated by this
/// allocator with a layout of `size` bytes; `raw`, if resolved, is the
/// objcg of `heap`.
#[cold]
#[inline(never)]
unsafe fn dealloc_miss(ptr: *mut u8, size: usize, heap: *mut c_void, raw: usize) {
    if raw == thread::COOKIE_STALE {
        // Uncharged already, by the cached objcg's address: its cookie (its
        // heap, made after the cache took it) is picked up for next time.
        thread::refresh_hit_cookie();
        // SAFETY: `ptr` came from mimalloc.
        return unsafe { mi_free(ptr as *mut c_void) };
    }
    let raw = if raw == thread::UNRESOLVED {
        // Not the thread's last heap (or not on the hit path): again, with
        // the table probed while busy, which keeps the pair.
        // SAFETY: `objcg_of_heap_busy_probe` returns the objcg of the
        // block's heap, charged `charged_size(size)`; uncharged once.
        match unsafe {
            thread::uncharge_hit_with(charged_size(size), || {
                objcg_of_heap_busy_probe(heap as usize)
            })
        } {
            None => {
                // SAFETY: `ptr` came from mimalloc.
                return unsafe { mi_free(ptr as *mut c_void) };
            }
            Some(raw) => raw,
        }
    } else {
        raw
    };
    let raw = if raw == thread::UNRESOLVED {
        if heap.is_null() {
            0
        } else {
            TABLE.objcg_of(heap as usize)
        }
    } else {
        raw
    };
    if raw == 0 {
        // SAFETY: the caller's guarantee.
        return unsafe { dealloc_without_objcg(ptr, heap, size) };
    }
    // SAFETY: `raw` is the objcg of the block's heap, charged
    // `charged_size(size)` for it.
    unsafe { dealloc_cold(ptr, raw, charged_size(size)) }
}

/// `dealloc` of a block with an objcg off the hit path: uncharges it,
/// then frees it.
///
/// # Safety
/// `ptr` is a live block of the heap of the objcg `raw`, charged `bytes`.
#[cold]
#[inline(never)]
unsafe fn dealloc_cold(ptr: *mut u8, raw: usize, bytes: u64) {
    // Reached after the hit path missed for this charge (in `dealloc`, or
    // in `dealloc_miss` when the table gave it).
    thread::uncharge_alloc_missed(raw, bytes);
    // SAFETY: `ptr` came from mimalloc.
    unsafe { mi_free(ptr as *mut c_void) };
}

/// `dealloc` once the block's heap is known: the hit path (the thread's
/// task takes the charge back into its byte cache), else
/// [`dealloc_miss`]. Inlined into `dealloc` with the page map's heap,
/// which then makes no call but the final `mi_free` (a tail call: no
/// registers saved), and into [`dealloc_unmapped`] with `mi_heap_of`'s.
///
/// # Safety
/// `ptr` is a live block of `heap` (null: of the main heap), allocated by
/// this allocator with `layout`.
#[inline(always)]
unsafe fn dealloc_with_heap(ptr: *mut u8, layout: Layout, heap: *mut c_void) {
    let bytes = charged_bytes(layout);
    // SAFETY: an objcg's cookie is its heap, and a heap's blocks are all
    // charged to the one objcg whose cookie it is (a heap maps to one
    // table entry for the life of the process, and an entry's blocks are
    // all freed before it gets another heap); the main heap's blocks read
    // as null, which no cookie the cache compares is; `objcg_of_heap_busy`
    // returns the objcg of the block's heap; uncharged once.
    let miss = unsafe {
        thread::uncharge_hit_cached_or(bytes, heap as usize, || objcg_of_heap_busy(heap as usize))
    };
    if let Some(raw) = miss {
        // SAFETY: `ptr` is a live block of `heap` allocated with `layout`
        // (the caller's contract), charged `raw` if resolved.
        return unsafe { dealloc_miss(ptr, layout.size(), heap, raw) };
    }
    // SAFETY: `ptr` came from mimalloc (one of the calls in `alloc_with`
    // or `realloc`).
    unsafe { mi_free(ptr as *mut c_void) };
}

/// `dealloc` when the thread has no copy of mimalloc's validated page map
/// (its first frees, every free before the map is validated, or on a
/// mimalloc whose layout it does not know): takes a copy if the map was
/// validated since, then the heap from the map or `mi_heap_of`. Out of
/// line, so that `dealloc`'s hit path makes no call of its own.
///
/// # Safety
/// As [`dealloc_with_heap`].
#[cold]
#[inline(never)]
unsafe fn dealloc_unmapped(ptr: *mut u8, layout: Layout) {
    mi_page_map::refresh_validated_map();
    // SAFETY: the caller's guarantee.
    unsafe { dealloc_with_heap(ptr, layout, mi_page_map::heap_of_block(ptr)) }
}

/// `realloc` off its hit path: finds the block's heap and objcg, charges a
/// growth first (so a refusal leaves the block untouched), reallocates in
/// the block's heap and uncharges a shrink after. Out of line, so that
/// `realloc`'s hit path saves no registers for it. `grow_missed`: the
/// growth already missed [`thread::grow_hit_and`], so it is charged by the
/// slow path directly (not tried again on the cache, nor counted again).
///
/// # Safety
/// `ptr` is a live block of this allocator allocated with `layout`;
/// `new_layout` has its alignment.
#[inline(never)]
unsafe fn realloc_resolved(
    ptr: *mut u8,
    layout: Layout,
    new_layout: Layout,
    grow_missed: bool,
) -> *mut u8 {
    let (heap, raw) = heap_and_objcg_of_block(ptr);
    if raw == 0 {
        if is_fallback_heap(heap) {
            // SAFETY: a block of the fallback heap, allocated with
            // `layout` (the caller's contract).
            return unsafe { realloc_fallback(heap, ptr, layout, new_layout) };
        }
        // SAFETY: `ptr` came from mimalloc (an unaccounted block of
        // the main heap).
        return unsafe { PlainMimalloc.realloc(ptr, layout, new_layout.size()) };
    }
    let (old_bytes, new_bytes) = (charged_bytes(layout), charged_bytes(new_layout));
    // Grow: charge first, so a refusal leaves the block untouched.
    if new_bytes > old_bytes {
        let grown = if grow_missed {
            thread::resize_alloc_slow(raw, old_bytes, new_bytes)
        } else {
            thread::resize_alloc(raw, old_bytes, new_bytes)
        };
        if grown.is_none() {
            return std::ptr::null_mut();
        }
    }
    // SAFETY: `ptr` came from mimalloc; the heap is the block's own, so
    // a moved block stays with its objcg.
    let block =
        unsafe { heap_realloc(heap, ptr as *mut c_void, new_layout.size(), layout.align()) };
    if block.is_null() {
        // SAFETY: the block is unchanged, charged `max(old, new)` bytes
        // of `raw`.
        return unsafe { realloc_failed(ptr, layout, new_layout, raw) };
    }
    if new_bytes < old_bytes {
        let _ = thread::resize_alloc(raw, old_bytes, new_bytes);
    }
    block as *mut u8
}

/// [`realloc_failed`] after `realloc`'s hit path charged the growth: finds
/// the block's objcg again (from the block, so that the hit path keeps no
/// register across mimalloc's call for this rare case).
///
/// # Safety
/// As [`realloc_failed`], the block charged to its heap's objcg.
#[cold]
#[inline(never)]
unsafe fn realloc_failed_after_hit(ptr: *mut u8, layout: Layout, new_layout: Layout) -> *mut u8 {
    let (_, raw) = heap_and_objcg_of_block(ptr);
    // SAFETY: the caller's guarantee; `raw` is the objcg of the block's
    // heap, which the hit path matched with the cached objcg's cookie.
    unsafe { realloc_failed(ptr, layout, new_layout, raw) }
}

/// A `realloc` whose `mi_heap_realloc_aligned` failed, the block unchanged
/// and charged to `raw` the larger of its old and new bytes: if the
/// thread's node arena is full, the block moves to the fallback heap
/// keeping its objcg (and its new size's charge); otherwise a growth's
/// charge is taken back and the `realloc` fails (null).
///
/// # Safety
/// `ptr` is a live block of an objcg heap allocated with `layout`, charged
/// to `raw` as said; `new_layout` has its alignment.
#[cold]
#[inline(never)]
unsafe fn realloc_failed(ptr: *mut u8, layout: Layout, new_layout: Layout, raw: usize) -> *mut u8 {
    let (old_bytes, new_bytes) = (charged_bytes(layout), charged_bytes(new_layout));
    if node_arena::is_bound() {
        // SAFETY: the caller's guarantee.
        let moved = unsafe { realloc_to_fallback(ptr, layout, new_layout, raw) };
        if !moved.is_null() {
            if new_bytes < old_bytes {
                let _ = thread::resize_alloc(raw, old_bytes, new_bytes);
            }
            return moved;
        }
    }
    if new_bytes > old_bytes {
        let _ = thread::resize_alloc(raw, new_bytes, old_bytes);
    }
    std::ptr::null_mut()
}

// SAFETY: see the type's `# Safety` section.
unsafe impl GlobalAlloc for MemcgMimalloc {
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
        let map = mi_page_map::validated_map();
        if map.is_null() {
            // SAFETY: forwarded contract.
            return unsafe { dealloc_unmapped(ptr, layout) };
        }
        // SAFETY: `ptr` is a live block from mimalloc, whose page map was
        // validated.
        let heap = unsafe { mi_page_map::heap_from_map(map, ptr) };
        // SAFETY: forwarded contract; `heap` is the block's.
        unsafe { dealloc_with_heap(ptr, layout, heap) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc`'s contract: `new_size`, rounded up
        // to `layout.align()` (a power of two), does not overflow `isize`
        // (the default `realloc` builds its layout the same way).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old_bytes, new_bytes) = (charged_bytes(layout), charged_bytes(new_layout));
        // The hit path: a growing block of the cached objcg's heap, its
        // growth paid from the task's byte cache (a `Vec` or `String` that
        // grows on the thread that made it). Shrinks, other heaps and
        // misses take `realloc_resolved`. (Two tests with a branch each:
        // `&&` compiled to flag arithmetic, three instructions more.)
        if new_bytes <= old_bytes {
            // SAFETY: forwarded contract.
            return unsafe { realloc_resolved(ptr, layout, new_layout, false) };
        }
        let map = mi_page_map::validated_map();
        if map.is_null() {
            // SAFETY: forwarded contract.
            return unsafe { realloc_resolved(ptr, layout, new_layout, false) };
        }
        // SAFETY: `ptr` is a live block from mimalloc, whose page map
        // was validated.
        let heap = unsafe { mi_page_map::heap_from_map(map, ptr) };
        // Mimalloc is called with the thread still marked busy, the
        // block and the layouts kept in memory for a failure rather
        // than in registers across the call (`thread::keep_hit_realloc`).
        let then = || {
            thread::keep_hit_realloc(ptr, layout.size(), layout.align(), new_size);
            // SAFETY: `ptr` came from mimalloc; the heap is the block's
            // own, so a moved block stays with its objcg.
            let block = unsafe { heap_realloc(heap, ptr as *mut c_void, new_size, layout.align()) };
            if !block.is_null() {
                return block as *mut u8;
            }
            let (ptr, size, align, new_size) = thread::kept_hit_realloc();
            // SAFETY: the block is unchanged, charged `new_bytes` to its
            // heap's objcg; `size`, `align` and `new_size` are the
            // caller's (a valid layout, and a new size that, rounded up
            // to the alignment, fits `isize`).
            unsafe {
                realloc_failed_after_hit(
                    ptr,
                    Layout::from_size_align_unchecked(size, align),
                    Layout::from_size_align_unchecked(new_size, align),
                )
            }
        };
        // SAFETY: as in `dealloc_with_heap`: the block's heap is the
        // cookie of the objcg it is charged to (the main heap's null
        // and the fallback heap are no objcg's cookie), so a match
        // charges the growth to the block's objcg.
        let hit = unsafe {
            thread::grow_hit_and::<HIT_COOKIE_AT, _>(new_bytes - old_bytes, heap as usize, then)
        };
        if let Some(block) = hit {
            return block;
        }
        // SAFETY: forwarded contract; the growth missed `grow_hit_and`.
        unsafe { realloc_resolved(ptr, layout, new_layout, true) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hit path's placement of the size (an `asm!` on x86-64) keeps
    /// every small size as it is (fails with the move made 8 bits wide).
    #[test]
    fn small_size_in_call_register_keeps_every_small_size() {
        for size in 1..=SMALL_SIZE_MAX {
            let got = std::hint::black_box(small_size_in_call_register(std::hint::black_box(size)));
            assert_eq!(got, size);
            assert_eq!(charged_size(got), size as u64, "size {size}");
        }
    }

    /// Every small size, zeroed or not, through [`heap_alloc`]: word
    /// alignment (what `SMALL_ALIGN` promises), zeroed blocks zero, and an
    /// alignment above a word still honoured (the aligned entry point).
    #[test]
    fn small_blocks_are_word_aligned() {
        // SAFETY: FFI; the heap is kept (mimalloc frees heaps at exit).
        let heap = unsafe { mi_heap_new() };
        assert!(!heap.is_null());
        let mut blocks = Vec::new();
        for size in 1..=SMALL_SIZE_MAX {
            for (align, zeroed) in [(1, false), (SMALL_ALIGN, true), (16, false), (64, true)] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a live heap and a non-zero size.
                let p = unsafe { heap_alloc(heap, layout, zeroed) } as *mut u8;
                assert!(!p.is_null());
                assert_eq!(
                    p as usize % align.max(SMALL_ALIGN),
                    0,
                    "size {size} align {align}"
                );
                if zeroed {
                    // SAFETY: `size` bytes of a live block.
                    let bytes = unsafe { std::slice::from_raw_parts(p, size) };
                    assert!(bytes.iter().all(|&b| b == 0), "size {size} zeroed");
                }
                // SAFETY: dirty it for the next zeroed block of its class.
                unsafe { std::ptr::write_bytes(p, 0xA5, size) };
                blocks.push(p);
                if blocks.len() > 64 {
                    // SAFETY: a live block from mimalloc, freed once.
                    unsafe { mi_free(blocks.remove(0) as *mut c_void) };
                }
            }
        }
        for p in blocks {
            // SAFETY: as above.
            unsafe { mi_free(p as *mut c_void) };
        }
    }

    extern "C" {
        fn mi_usable_size(p: *const c_void) -> usize;
    }

    /// A size past the small entry points that is exactly a size class
    /// not a power of two (1,280 bytes), aligned to a word, comes from its
    /// own class through [`heap_alloc_sized`] (the plain heap entry point),
    /// in a fresh heap, every time; with the aligned entry point (as
    /// before), mimalloc 3 served it from the next class (see
    /// `PlainMimalloc`). Also every alignment up to 4 KiB is honoured for
    /// sizes around it, zeroed blocks are zero, and a resize through
    /// [`heap_realloc`] keeps the bytes and the alignment.
    #[test]
    fn a_large_exact_size_class_comes_from_its_class_and_alignments_hold() {
        // SAFETY: FFI; the heap is kept (mimalloc frees heaps at exit).
        let heap = unsafe { mi_heap_new() };
        assert!(!heap.is_null());
        // SAFETY: a live heap, a non-zero size; each block freed once.
        unsafe {
            let blocks: Vec<*mut c_void> = (0..1000)
                .map(|_| heap_alloc_sized(heap, 1280, 8, false))
                .collect();
            for &p in &blocks {
                assert_eq!(mi_usable_size(p), 1280);
            }
            for p in blocks {
                mi_free(p);
            }
        }
        for size in [1025usize, 1280, 1500, 4096, 5000, 70_000] {
            for align in [1usize, 8, 16, 32, 4096] {
                for zeroed in [false, true] {
                    // SAFETY: as above.
                    unsafe {
                        let p = heap_alloc_sized(heap, size, align, zeroed) as *mut u8;
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            let bytes = std::slice::from_raw_parts(p, size);
                            assert!(bytes.iter().all(|&b| b == 0), "size {size} zeroed");
                        }
                        std::ptr::write_bytes(p, 0x5A, size);
                        let q = heap_realloc(heap, p as *mut c_void, size * 3, align) as *mut u8;
                        assert!(!q.is_null());
                        assert_eq!(q as usize % align, 0, "grown {size} align {align}");
                        let bytes = std::slice::from_raw_parts(q, size);
                        assert!(bytes.iter().all(|&b| b == 0x5A), "grown {size}");
                        mi_free(q as *mut c_void);
                    }
                }
            }
        }
    }
}
