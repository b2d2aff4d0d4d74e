//! `MemcgAlloc<PlainMimalloc>` (mimalloc through its plain entry points)
//! as the global allocator: the shared suite of `common/alloc_suite.rs`,
//! plus the block of a size that the trailer puts exactly on a mimalloc
//! size class that is not a power of two, which comes from that class
//! (with `mimalloc::MiMalloc` as the inner allocator it came from the next
//! one, through mimalloc's slow path: 768 bytes for 640).

use std::ffi::c_void;

use memcg::{MemcgAlloc, PlainMimalloc};

#[global_allocator]
static ALLOC: MemcgAlloc<PlainMimalloc> = MemcgAlloc::new(PlainMimalloc);

/// Bytes a block of `size` bytes is charged: its size and the trailer.
fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

mod common;

include!("common/alloc_suite.rs");

extern "C" {
    fn mi_usable_size(p: *const c_void) -> usize;
}

#[test]
fn a_block_whose_trailer_ends_on_a_size_class_stays_in_that_class() {
    let g = group("plain-exact-class");
    // 632 bytes (a `BTreeMap` leaf's size) plus the trailer: 640, a size
    // class of its own.
    let blocks: Vec<Box<[u64; 79]>> = (0..1000).map(|_| black_box(Box::new([7u64; 79]))).collect();
    for b in &blocks {
        // SAFETY: a live block of mimalloc (the inner block starts at the
        // caller's pointer: the trailer follows the caller's bytes).
        let usable = unsafe { mi_usable_size(b.as_ptr() as *const c_void) };
        assert_eq!(usable, 640);
    }
    assert_eq!(
        alloc_bytes(&g),
        1000 * charged(632) + charged(blocks.capacity() * std::mem::size_of::<Box<[u64; 79]>>())
    );
    assert!(blocks.iter().all(|b| b.iter().all(|&x| x == 7)));
    drop(blocks);
    leave(&g);
}
