//! `PlainMimalloc`: mimalloc through its plain entry points, the inner
//! allocator for `MemcgAlloc` over mimalloc.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

// The C symbols come from the static library of `libmimalloc-sys` (the
// same one the `mimalloc` crate links).
use libmimalloc_sys as _;

extern "C" {
    fn mi_malloc(size: usize) -> *mut c_void;
    fn mi_zalloc(size: usize) -> *mut c_void;
    fn mi_realloc(p: *mut c_void, newsize: usize) -> *mut c_void;
    fn mi_malloc_aligned(size: usize, alignment: usize) -> *mut c_void;
    fn mi_zalloc_aligned(size: usize, alignment: usize) -> *mut c_void;
    fn mi_realloc_aligned(p: *mut c_void, newsize: usize, alignment: usize) -> *mut c_void;
    fn mi_free(p: *mut c_void);
}

/// The largest alignment mimalloc's plain entry points give a block whose
/// requested size is a multiple of it (`MI_MAX_ALIGN_SIZE`, fixed at 16 in
/// mimalloc's `types.h` on every target).
///
/// Why it holds, from mimalloc 3's sources: every size class is a
/// multiple of 16 bytes except the smallest (8 bytes on 64-bit targets; 4
/// and 8 bytes on 32-bit ones), and every page's block area starts
/// aligned to 16 (the page info is rounded up to `MI_MAX_ALIGN_SIZE`;
/// singleton pages included). So a block is aligned to 16, or, in one of
/// the smallest classes, to its class size, which is at least the largest
/// power of two dividing the requested size. A debug build of
/// mimalloc with guarded sampling on (`MIMALLOC_GUARDED_SAMPLE_RATE`)
/// places a sampled block right before a guard page, at an address
/// aligned only to the lowest set bit of `size`: hence the size asked of
/// the plain entry points is rounded up to the alignment
/// ([`plain_size`]).
pub(crate) const MIMALLOC_PLAIN_ALIGN: usize = 16;

/// The size to ask mimalloc's plain entry points for a block of `size`
/// bytes aligned to `align` (a power of two), if they can serve it: when
/// `align` is at most [`MIMALLOC_PLAIN_ALIGN`], `size` rounded up to
/// `align` (no overflow: a `Layout`'s size rounded up to its alignment
/// fits `isize`). The rounding costs no memory: every size class past 8
/// bytes is a multiple of 16, and a size below the alignment (8 bytes
/// aligned to 16) needs the larger class anyway.
#[inline(always)]
pub(crate) fn plain_size(size: usize, align: usize) -> Option<usize> {
    (align <= MIMALLOC_PLAIN_ALIGN).then(|| (size + align - 1) & !(align - 1))
}

/// The size to ask mimalloc's plain `realloc` for a resize to `newsize`
/// bytes of a block aligned to `align`, if it can serve it: `newsize`
/// itself for an alignment up to a word (what mimalloc's aligned
/// `realloc` does itself for those: every block is word-aligned; one
/// compare for the common alignments), else as [`plain_size`].
#[inline(always)]
pub(crate) fn plain_realloc_size(newsize: usize, align: usize) -> Option<usize> {
    if align <= std::mem::size_of::<usize>() {
        Some(newsize)
    } else {
        plain_size(newsize, align)
    }
}

/// mimalloc as a `GlobalAlloc`, through its plain entry points (`mi_malloc`,
/// `mi_zalloc`, `mi_realloc`) whenever mimalloc's own alignment covers the
/// layout, and its aligned ones otherwise: the inner allocator to give
/// [`crate::MemcgAlloc`] over mimalloc (feature `mimalloc`).
///
/// ```ignore
/// #[global_allocator]
/// static ALLOC: memcg::MemcgAlloc<memcg::PlainMimalloc> =
///     memcg::MemcgAlloc::new(memcg::PlainMimalloc);
/// ```
/// (Not compiled here: a doc test cannot replace its own global
/// allocator; `crates/memcg-workloads/src/bin/workloads-memcg.rs` is a
/// program that does.)
///
/// **Why not `mimalloc::MiMalloc`.** That crate's `GlobalAlloc` calls
/// `mi_malloc_aligned` for every layout. mimalloc 3's aligned entry pops
/// a block from its size class's free list when the list has one; when it
/// is empty it takes a generic path which, for a size whose class is not
/// a power of two, allocates `max(size, 16) + align - 1` bytes. For an
/// alignment of 2 or more and a size that is exactly such a class (48,
/// 80, 96, 640, 1,280 bytes...), that is the next class, up to a third
/// larger (48 → 64). The aligned entry never calls the generic path of
/// the exact class, the one that makes its page and puts freed blocks
/// back on its free list; so once that list is empty (or from the start,
/// when nothing else made the page), every allocation of that size takes
/// the slow path into the larger class. [`crate::MemcgAlloc`] adds its
/// 8-byte trailer to every size, which moves common Rust sizes onto such
/// classes: a `BTreeMap` leaf of 632 bytes becomes 640. Measured on the
/// `json` program of `memcg-workloads` at scale 0.2 (serde_json `Value`s,
/// whose maps are `BTreeMap`s; a `perf` probe on mimalloc's
/// over-allocating function): 108,684 allocations took that path with
/// `mimalloc::MiMalloc` inside `MemcgAlloc`, and none with this type; at
/// scale 1 the program's peak RSS fell from 323 to 312 MiB. The plain
/// entry points also skip the aligned one's layer: about 10 instructions
/// fewer per alloc+free pair. Bare `mimalloc::MiMalloc`
/// pays it too, on other sizes (63,265 blocks of 48 bytes in the `regex`
/// program, 43,115 of 96 in `maps`).
///
/// The plain entry points serve every layout aligned to at most 16, asked
/// for its size rounded up to the alignment (see `MIMALLOC_PLAIN_ALIGN`
/// for why mimalloc's blocks then have it); larger alignments go to the
/// aligned entry points. Blocks are freed with `mi_free` either way.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainMimalloc;

/// A block of `layout` from mimalloc's default heap, zeroed or not: the
/// plain entry point where [`plain_size`] gives a size, else the aligned
/// one. A layout whose size is a multiple of its alignment (the layout of
/// every type), aligned to at most 16, takes the plain entry point inline
/// with no rounding; the rest go through [`plain_alloc_unusual`], out of
/// line, so that the common case pays one test of the size, not the
/// rounding (2 instructions per pair).
///
/// # Safety
/// `layout` has a non-zero size.
#[inline(always)]
pub(crate) unsafe fn plain_alloc(layout: Layout, zeroed: bool) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    if align <= MIMALLOC_PLAIN_ALIGN && size & (align - 1) == 0 {
        // SAFETY: FFI calls with a size that fits `isize`, a multiple of
        // an alignment of at most 16 (so `plain_size(size, align)` is
        // `size` itself).
        return unsafe {
            if zeroed {
                mi_zalloc(size) as *mut u8
            } else {
                mi_malloc(size) as *mut u8
            }
        };
    }
    // SAFETY: the caller's guarantee.
    unsafe { plain_alloc_unusual(size, align, zeroed) }
}

/// [`plain_alloc`] for a layout whose size is not a multiple of its
/// alignment, or aligned past 16.
///
/// # Safety
/// `size` is not 0 and, rounded up to `align` (a power of two), fits
/// `isize`.
#[inline(never)]
unsafe fn plain_alloc_unusual(size: usize, align: usize, zeroed: bool) -> *mut u8 {
    // SAFETY: FFI calls with a size that fits `isize` and, for the aligned
    // ones, a power-of-two alignment.
    unsafe {
        match (plain_size(size, align), zeroed) {
            (Some(plain), false) => mi_malloc(plain) as *mut u8,
            (Some(plain), true) => mi_zalloc(plain) as *mut u8,
            (None, false) => mi_malloc_aligned(size, align) as *mut u8,
            (None, true) => mi_zalloc_aligned(size, align) as *mut u8,
        }
    }
}

// SAFETY: every block comes from mimalloc with at least the layout's size
// and alignment (the plain entry points only where their alignment covers
// it, see `plain_size`), `dealloc` and `realloc` take blocks of this
// allocator only (the `GlobalAlloc` contract), and nothing here unwinds.
unsafe impl GlobalAlloc for PlainMimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: `layout` has a non-zero size (the caller's contract).
        unsafe { plain_alloc(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { plain_alloc(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` is a live block of mimalloc (the caller's
        // contract: it came from this allocator).
        unsafe { mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live block of mimalloc; the new size fits
        // `isize` when rounded up to the alignment (the caller's contract).
        unsafe {
            if let Some(plain) = plain_realloc_size(new_size, layout.align()) {
                mi_realloc(ptr as *mut c_void, plain) as *mut u8
            } else {
                mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    /// Every size up to 4 KiB and a little past, then sizes of mimalloc's
    /// medium, large and singleton pages, with every alignment up to 64:
    /// the block has the layout's alignment (the plain entry points'
    /// guarantee that `plain_size` relies on), holds its bytes, comes
    /// zeroed from `alloc_zeroed`, and keeps its contents through a growth
    /// and a shrink. A few blocks of each layout stay live while the next
    /// ones are made, so that blocks come from the middle of pages too.
    #[test]
    fn blocks_have_the_layouts_alignment_and_keep_their_bytes() {
        let a = PlainMimalloc;
        let large = [12 << 10, (100 << 10) + 16, 600 << 10, (4 << 20) + 16];
        for size in (1..=4200usize).chain(large) {
            let live: Vec<(*mut u8, Layout)> = [8usize, 16]
                .iter()
                .flat_map(|&align| {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    // SAFETY: a non-zero size; freed below with its layout.
                    (0..3).map(move |_| (unsafe { a.alloc(layout) }, layout))
                })
                .collect();
            for &(p, layout) in &live {
                assert!(!p.is_null());
                assert_eq!(p as usize % layout.align(), 0, "live {size}");
            }
            for align in [1usize, 2, 4, 8, 16, 32, 64] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; each block is freed with its
                // layout below.
                unsafe {
                    let p = a.alloc_zeroed(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    assert!((0..size).all(|i| *p.add(i) == 0), "size {size} not zeroed");
                    for i in 0..size {
                        *p.add(i) = i as u8;
                    }
                    let grown = a.realloc(p, layout, size * 2 + 1);
                    assert!(!grown.is_null());
                    assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                    assert!((0..size).all(|i| *grown.add(i) == i as u8));
                    let grown_layout = Layout::from_size_align(size * 2 + 1, align).unwrap();
                    let new_size = size.div_ceil(2);
                    let shrunk = a.realloc(grown, grown_layout, new_size);
                    assert!(!shrunk.is_null());
                    assert_eq!(shrunk as usize % align, 0, "shrunk {size} align {align}");
                    assert!((0..new_size).all(|i| *shrunk.add(i) == i as u8));
                    a.dealloc(shrunk, Layout::from_size_align(new_size, align).unwrap());
                    let q = a.alloc(layout);
                    assert_eq!(q as usize % align, 0, "size {size} align {align}");
                    a.dealloc(q, layout);
                }
            }
            for (p, layout) in live {
                // SAFETY: a live block of `layout`, freed once.
                unsafe { a.dealloc(p, layout) };
            }
        }
    }

    extern "C" {
        fn mi_usable_size(p: *const c_void) -> usize;
        fn mi_good_size(size: usize) -> usize;
    }

    /// The usable sizes of 1,000 blocks of `layout` from `a`, allocated on
    /// a thread of their own (a fresh mimalloc heap: no page of any size
    /// class yet), all live at once, then freed.
    fn usable_sizes<A: GlobalAlloc + Sync>(a: &A, layout: Layout) -> Vec<usize> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a non-zero size; each block is checked non-null
                // and freed once with its layout.
                unsafe {
                    let blocks: Vec<*mut u8> = (0..1000).map(|_| a.alloc(layout)).collect();
                    assert!(blocks.iter().all(|p| !p.is_null()));
                    let sizes = blocks
                        .iter()
                        .map(|&p| mi_usable_size(p as *const c_void))
                        .collect();
                    for p in blocks {
                        a.dealloc(p, layout);
                    }
                    sizes
                }
            })
            .join()
            .unwrap()
        })
    }

    /// What the type's docs claim of mimalloc 3: a 640-byte block (a
    /// 632-byte `BTreeMap` leaf plus `MemcgAlloc`'s trailer), aligned to
    /// 8, is served from the 640-byte class through the plain entry point,
    /// and from a larger class through the aligned one that
    /// `mimalloc::MiMalloc` calls (its page of the exact class never
    /// made). If a mimalloc upgrade changes the second half, the docs of
    /// `PlainMimalloc` and `MemcgAlloc` need revisiting.
    #[test]
    fn an_exact_size_class_is_served_from_its_class_not_the_next() {
        let layout = Layout::from_size_align(640, 8).unwrap();
        // The size of the class 640 bytes fall in (640 itself; mimalloc's
        // own figure, so that the check follows its table of classes).
        // SAFETY: FFI, a pure function of the size.
        let class = unsafe { mi_good_size(640) };
        let plain = usable_sizes(&PlainMimalloc, layout);
        assert!(plain.iter().all(|&s| s == class), "{:?}", &plain[..8]);
        let aligned = usable_sizes(&mimalloc::MiMalloc, layout);
        let larger = aligned.iter().filter(|&&s| s > class).count();
        assert!(larger >= 900, "{larger} of 1000 blocks above {class} bytes");
        // The same with an alignment of 16 (a type holding a `u128`): 48
        // bytes (40 rounded up to the alignment) from the 48-byte class.
        let layout = Layout::from_size_align(40, 16).unwrap();
        // SAFETY: as above.
        let class = unsafe { mi_good_size(48) };
        let plain = usable_sizes(&PlainMimalloc, layout);
        assert!(plain.iter().all(|&s| s == class), "{:?}", &plain[..8]);
        let aligned = usable_sizes(
            &mimalloc::MiMalloc,
            Layout::from_size_align(48, 16).unwrap(),
        );
        let larger = aligned.iter().filter(|&&s| s > class).count();
        assert!(larger >= 900, "{larger} of 1000 blocks above {class} bytes");
    }

    #[test]
    fn plain_sizes_are_rounded_up_to_alignments_up_to_16() {
        assert_eq!(plain_size(1, 1), Some(1));
        assert_eq!(plain_size(8, 8), Some(8));
        assert_eq!(plain_size(13, 8), Some(16));
        assert_eq!(plain_size(640, 8), Some(640));
        assert_eq!(plain_size(8, 16), Some(16));
        assert_eq!(plain_size(40, 16), Some(48));
        assert_eq!(plain_size(64, 32), None);
        assert_eq!(plain_realloc_size(13, 8), Some(13));
        assert_eq!(plain_realloc_size(40, 16), Some(48));
        assert_eq!(plain_realloc_size(64, 32), None);
    }
}
