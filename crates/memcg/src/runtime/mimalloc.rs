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
//!   (`mi_heap_malloc_aligned`), so all blocks of a page belong to one
//!   objcg, like a kernel slab page of one memcg's cache;
//! - a free asks mimalloc for the block's heap (`mi_heap_of`, which reads
//!   the page's metadata, not the block) and finds the objcg in a
//!   lock-free table from heap to objcg.
//!
//! Allocations that are not accounted (before the controller exists, and
//! when every heap slot is taken) come from mimalloc's main heap, whose
//! blocks are not in the table, so their frees uncharge nothing.
//!
//! A group's heaps are not NUMA-bound: with a real multi-node topology,
//! `mi_heap_set_numa_affinity` could place each per-node objcg's pages on
//! its node; that is left for when the runtime has a machine to test it on.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use crate::heap_table::HeapTable;
use crate::runtime::thread::{self, REFUSED};
use crate::sync::{AtomicUsize, Ordering};

// The C symbols come from the static library of `libmimalloc-sys` (the
// same one the `mimalloc` crate links); heaps and `mi_heap_of` are part of
// mimalloc 3's public API (`mimalloc.h`).
use libmimalloc_sys as _;

extern "C" {
    fn mi_malloc_aligned(size: usize, alignment: usize) -> *mut c_void;
    fn mi_zalloc_aligned(size: usize, alignment: usize) -> *mut c_void;
    fn mi_realloc_aligned(p: *mut c_void, newsize: usize, alignment: usize) -> *mut c_void;
    fn mi_free(p: *mut c_void);
    fn mi_heap_new() -> *mut c_void;
    fn mi_heap_of(p: *const c_void) -> *mut c_void;
    fn mi_heap_malloc_aligned(heap: *mut c_void, size: usize, alignment: usize) -> *mut c_void;
    fn mi_heap_zalloc_aligned(heap: *mut c_void, size: usize, alignment: usize) -> *mut c_void;
    fn mi_heap_realloc_aligned(
        heap: *mut c_void,
        p: *mut c_void,
        newsize: usize,
        alignment: usize,
    ) -> *mut c_void;
}

/// Heaps the process may create: one per objcg table entry that ever
/// allocated, up to this many (each costs mimalloc a few KiB per thread
/// that uses it). Past it, allocations of new objcgs are not accounted.
/// mimalloc 3 gives every heap a dynamic thread-local slot and has fewer
/// than 65,535 of them; half of that leaves room for the process's own.
pub const MAX_OBJCG_HEAPS: usize = 1 << 15;

/// The cookie of an objcg table entry that could not get a heap (the table
/// was full or mimalloc refused): later allocations do not try again.
const NO_HEAP: usize = 1;

/// Slots of the heap → objcg table (open addressing, load ≤ 1/2).
const TABLE_SLOTS: usize = 2 * MAX_OBJCG_HEAPS;

static TABLE: HeapTable<TABLE_SLOTS> = HeapTable::new();

/// The heap of the objcg whose raw word is `raw`, creating it on first
/// use; null when no heap can be had (the caller then does not account).
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
    let heap = if TABLE.reserve() {
        // SAFETY: plain FFI call; mimalloc allocates the heap from the OS,
        // not through the Rust global allocator.
        let heap = unsafe { mi_heap_new() };
        if heap.is_null() {
            TABLE.unreserve();
        } else {
            TABLE.insert_reserved(heap as usize, raw);
        }
        heap
    } else {
        std::ptr::null_mut()
    };
    if heap.is_null() {
        // No heap, now or later: this entry's allocations are not
        // accounted (latched, so they do not retry).
        return match cookie.compare_exchange(0, NO_HEAP, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) | Err(NO_HEAP) => std::ptr::null_mut(),
            Err(winner) => winner as *mut c_void,
        };
    }
    // AcqRel: publishes the table entry before the cookie; on a lost race
    // the winner's heap is used and ours stays empty in the table, still
    // mapping to the same objcg.
    match cookie.compare_exchange(0, heap as usize, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => heap,
        Err(winner) => winner as *mut c_void,
    }
}

/// Bytes charged for a block of `layout`: its size rounded up to 8 (no
/// trailer: the objcg is found from the block's heap).
#[inline(always)]
fn charged_bytes(layout: Layout) -> u64 {
    (layout.size().max(1) as u64).next_multiple_of(8)
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
/// A block is charged `round_up(size, 8)` bytes. Limits, reclaim, scopes,
/// `realloc` (the difference is charged to the block's own objcg, and a
/// moved block stays in its heap) and the re-entrancy rules are those of
/// `MemcgAlloc`. At most [`MAX_OBJCG_HEAPS`] objcg table entries get a
/// heap; allocations of objcgs past that are not accounted.
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

    #[inline(always)]
    unsafe fn alloc_with(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let bytes = charged_bytes(layout);
        let mut raw = thread::charge_alloc(bytes);
        if raw == REFUSED {
            return std::ptr::null_mut();
        }
        let heap = if raw == 0 {
            std::ptr::null_mut()
        } else {
            heap_of_objcg(raw)
        };
        if heap.is_null() && raw != 0 {
            thread::uncharge_alloc(raw, bytes);
            raw = 0;
        }
        // SAFETY: FFI calls with a valid size and power-of-two alignment
        // (from `layout`) and, if non-null, a heap made by `mi_heap_new`.
        let block = unsafe {
            match (heap.is_null(), zeroed) {
                (true, false) => mi_malloc_aligned(layout.size(), layout.align()),
                (true, true) => mi_zalloc_aligned(layout.size(), layout.align()),
                (false, false) => mi_heap_malloc_aligned(heap, layout.size(), layout.align()),
                (false, true) => mi_heap_zalloc_aligned(heap, layout.size(), layout.align()),
            }
        };
        if block.is_null() && raw != 0 {
            thread::uncharge_alloc(raw, bytes);
        }
        block as *mut u8
    }
}

/// The heap of a block and the objcg raw word of that heap (0: not
/// accounted).
#[inline(always)]
fn heap_and_objcg_of_block(ptr: *const u8) -> (*mut c_void, usize) {
    // SAFETY: `ptr` is a live block from mimalloc; `mi_heap_of` reads
    // mimalloc's page map and the page's metadata, not the block.
    let heap = unsafe { mi_heap_of(ptr as *const c_void) };
    if heap.is_null() {
        return (heap, 0);
    }
    (heap, TABLE.objcg_of(heap as usize))
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
        let (_, raw) = heap_and_objcg_of_block(ptr);
        if raw != 0 {
            thread::uncharge_alloc(raw, charged_bytes(layout));
        }
        // SAFETY: `ptr` came from mimalloc (one of the calls in
        // `alloc_with` or `realloc`).
        unsafe { mi_free(ptr as *mut c_void) };
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let (old_bytes, new_bytes) = (charged_bytes(layout), charged_bytes(new_layout));
        let (heap, raw) = heap_and_objcg_of_block(ptr);
        // Grow: charge first, so a refusal leaves the block untouched.
        if raw != 0
            && new_bytes > old_bytes
            && thread::resize_alloc(raw, old_bytes, new_bytes).is_none()
        {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from mimalloc; the heap (when accounted) is the
        // block's own, so a moved block stays with its objcg.
        let block = unsafe {
            if raw != 0 {
                mi_heap_realloc_aligned(heap, ptr as *mut c_void, new_size, layout.align())
            } else {
                mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align())
            }
        };
        if block.is_null() {
            if raw != 0 && new_bytes > old_bytes {
                let _ = thread::resize_alloc(raw, new_bytes, old_bytes);
            }
            return std::ptr::null_mut();
        }
        if raw != 0 && new_bytes < old_bytes {
            let _ = thread::resize_alloc(raw, old_bytes, new_bytes);
        }
        block as *mut u8
    }
}
