//! A block's mimalloc heap without a call: mimalloc 3's page map, read
//! the way its own `mi_free` reads it.
//!
//! `mi_heap_of` costs about 28 instructions per free (a call, the bounds
//! checks of `_mi_safe_ptr_page`, a second call), a seventh of a
//! `MemcgMimalloc` pair. mimalloc 3 finds a block's page with two loads
//! (`_mi_unchecked_ptr_page`, `internal.h`): a two-level map indexed by
//! the block's 64 KiB slice, whose top level is the `_mi_page_map` symbol
//! (hidden in the shared library, linkable from the static one that
//! `libmimalloc-sys` builds), and the page's `heap` field is null for the
//! main heap. [`heap_of_block`] does the same inline.
//!
//! This reads mimalloc's internals, whose layout is not an API. So it is
//! used only once [`validate`] has compared it with `mi_heap_of` on
//! blocks of the main heap and of the first heap of our own, before any
//! block of an objcg's heap is freed. The verdict is final: the layout is
//! a property of the linked mimalloc, the same for every heap of the
//! process, so later heaps are not compared again, and a final verdict
//! is what lets each thread keep a copy of the map pointer
//! ([`validated_map`]). Until the verdict, and for ever after a
//! disagreement, frees call `mi_heap_of`. A `libmimalloc-sys` whose
//! mimalloc lays its pages out otherwise (a debug build, a new version)
//! costs the call again, never a wrong heap.

use std::ffi::c_void;

use crate::sync::{AtomicPtr, AtomicU8, Ordering};

/// mimalloc's page map: pointers to sub-maps of page pointers
/// (`_Atomic(mi_submap_t)* _mi_page_map`, `internal.h`).
type SubMap = *const *const u8;

extern "C" {
    #[allow(non_upper_case_globals)]
    static _mi_page_map: *const AtomicPtr<*const u8>;
    fn mi_heap_of(p: *const c_void) -> *mut c_void;
    fn mi_heap_malloc(heap: *mut c_void, size: usize) -> *mut c_void;
    fn mi_malloc(size: usize) -> *mut c_void;
    fn mi_free(p: *mut c_void);
}

/// `MI_ARENA_SLICE_SHIFT` (64 KiB slices on 64-bit targets).
const SLICE_SHIFT: u32 = 16;
/// `MI_PAGE_MAP_SUB_SHIFT`: 8,192 page pointers per sub-map.
const SUB_SHIFT: u32 = 13;
/// The offset of `heap` in `mi_page_t` (release builds: no free-list
/// keys), in bytes.
const PAGE_HEAP_OFFSET: usize = 64;

/// Whether [`heap_of_block`] may read the page map.
static STATE: AtomicU8 = AtomicU8::new(UNCHECKED);
/// `_mi_page_map` once the reading agreed ([`validate`]), null before and
/// after a disagreement; set once (the verdict is final), so a thread's
/// copy ([`validated_map`]) never goes stale. mimalloc makes the map
/// once, at its initialisation, and never moves it.
static MAP: AtomicPtr<AtomicPtr<*const u8>> = AtomicPtr::new(std::ptr::null_mut());
const UNCHECKED: u8 = 0;
const AGREES: u8 = 1;
const DISAGREES: u8 = 2;

/// mimalloc's page map if [`heap_from_map`] may read it (validated on
/// this process's mimalloc), else null: the process-wide value.
#[inline(always)]
fn shared_map() -> *const AtomicPtr<*const u8> {
    // Acquire: pairs with the Release store in `validate`. Either answer
    // is a correct choice (`mi_heap_of` is always right).
    MAP.load(Ordering::Acquire)
}

/// The calling thread's copy of the validated map (null until
/// [`refresh_validated_map`] found it validated): what the free's hit
/// path loads, one load from a thread-local it addresses anyway
/// (`thread::free_word`) instead of two for this crate's static (its
/// address from the GOT, then the value). Null means "call `mi_heap_of`
/// and refresh", never a wrong map: [`MAP`] is written once.
#[inline(always)]
pub(crate) fn validated_map() -> *const AtomicPtr<*const u8> {
    crate::runtime::thread::free_word() as *const AtomicPtr<*const u8>
}

/// Copies the validated map into the calling thread's copy (the free's
/// cold path, when the copy was null): a no-op until the verdict, or
/// after a disagreement.
#[inline]
pub(crate) fn refresh_validated_map() {
    let map = shared_map();
    if !map.is_null() {
        crate::runtime::thread::set_free_word(map as usize);
    }
}

/// The page map's reading of `p`'s heap (null for the main heap).
///
/// # Safety
/// `map` is [`validated_map`], not null; `p` is a live block of mimalloc
/// (its page is in the map).
#[inline(always)]
pub(crate) unsafe fn heap_from_map(map: *const AtomicPtr<*const u8>, p: *const u8) -> *mut c_void {
    let slice = p as usize >> SLICE_SHIFT;
    // SAFETY: the map is made by mimalloc's initialisation, before any
    // block; `p`'s slice has a sub-map and a page entry, since `p` is a
    // live block; a page's `heap` is set before its first block is handed
    // out and does not change (`const` in `mi_page_t`).
    unsafe {
        let sub = (*map.add(slice >> SUB_SHIFT)).load(Ordering::Relaxed) as SubMap;
        let page = *sub.add(slice & ((1 << SUB_SHIFT) - 1));
        *(page.add(PAGE_HEAP_OFFSET) as *const *mut c_void)
    }
}

/// The heap of a live mimalloc block: the page map's reading when it was
/// validated, else `mi_heap_of`'s. Null or mimalloc's main heap for a
/// block of the main heap (callers treat both as "no objcg").
///
/// # Safety
/// `p` is a live block of mimalloc.
#[inline(always)]
pub(crate) unsafe fn heap_of_block(p: *const u8) -> *mut c_void {
    let map = shared_map();
    if !map.is_null() {
        // SAFETY: the caller's guarantee; `map` is the validated map.
        unsafe { heap_from_map(map, p) }
    } else {
        // SAFETY: the caller's guarantee; `mi_heap_of` reads the page map
        // and the page's metadata, not the block.
        unsafe { mi_heap_of(p as *const c_void) }
    }
}

/// Compares the page map's reading with `mi_heap_of` on a block of `heap`
/// (a heap just made, from which nothing was freed yet) and on a block of
/// the main heap; on agreement frees may read the map, on a disagreement
/// they never will. The first verdict is final (see the module's
/// documentation): later calls return at once. Cold: called for each
/// heap made. Allocates from mimalloc directly, not through the global
/// allocator.
pub(crate) fn validate(heap: *mut c_void) {
    if heap.is_null() || STATE.load(Ordering::Relaxed) != UNCHECKED {
        return;
    }
    // SAFETY: reads mimalloc's map pointer, made at its initialisation
    // (before the heap given here).
    let map = unsafe { _mi_page_map };
    // SAFETY: plain FFI calls; each block is freed once, after the
    // comparisons; `heap_from_map` is given live blocks only.
    let agrees = unsafe {
        let mine = mi_heap_malloc(heap, 16) as *const u8;
        let main = mi_malloc(16) as *const u8;
        let ok = !mine.is_null()
            && !main.is_null()
            && !map.is_null()
            && heap_from_map(map, mine) == heap
            && heap_from_map(map, mine) == mi_heap_of(mine as *const c_void)
            && matches!(heap_from_map(map, main), m if m.is_null() || m == mi_heap_of(main as *const c_void));
        if !mine.is_null() {
            mi_free(mine as *mut c_void);
        }
        if !main.is_null() {
            mi_free(main as *mut c_void);
        }
        if mine.is_null() || main.is_null() {
            // Out of memory: no verdict this time.
            return;
        }
        ok
    };
    if agrees {
        if STATE
            .compare_exchange(UNCHECKED, AGREES, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // Release: pairs with `validated_map`'s Acquire.
            MAP.store(map as *mut AtomicPtr<*const u8>, Ordering::Release);
        }
    } else {
        // Only from UNCHECKED: an agreement another thread reached
        // meanwhile stands (MAP is written once).
        let _ = STATE.compare_exchange(UNCHECKED, DISAGREES, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Whether frees read the page map.
pub(crate) fn page_map_in_use() -> bool {
    !shared_map().is_null()
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        fn mi_heap_new() -> *mut c_void;
    }

    #[test]
    fn the_page_map_agrees_with_mi_heap_of_on_this_build() {
        // SAFETY: FFI; the heap is kept (mimalloc frees heaps at exit).
        let heap = unsafe { mi_heap_new() };
        assert!(!heap.is_null());
        validate(heap);
        assert!(
            page_map_in_use(),
            "the layout constants match the linked mimalloc"
        );
        // SAFETY: live blocks of `heap`, of several size classes, freed once.
        unsafe {
            for size in [8usize, 64, 1000, 40_000, 300_000, 5 << 20] {
                let p = mi_heap_malloc(heap, size) as *const u8;
                assert!(!p.is_null());
                assert_eq!(heap_of_block(p), heap, "size {size}");
                assert_eq!(heap_of_block(p), mi_heap_of(p as *const c_void));
                mi_free(p as *mut c_void);
            }
        }
    }

    #[test]
    fn a_thread_takes_its_copy_of_the_validated_map_at_its_first_refresh() {
        // SAFETY: FFI; the heap is kept (mimalloc frees heaps at exit).
        let heap = unsafe { mi_heap_new() };
        assert!(!heap.is_null());
        validate(heap);
        assert!(page_map_in_use());
        // A new thread starts without a copy (its frees call `mi_heap_of`
        // through the cold path), which takes the copy; the copy is the
        // process's validated map, and a later validation (verdict final)
        // changes neither.
        std::thread::spawn(move || {
            assert!(validated_map().is_null());
            refresh_validated_map();
            assert_eq!(validated_map(), shared_map());
            // SAFETY: as above.
            let other = unsafe { mi_heap_new() };
            validate(other);
            assert_eq!(validated_map(), shared_map());
            assert!(!validated_map().is_null());
        })
        .join()
        .unwrap();
    }
}
