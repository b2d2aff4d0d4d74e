//! `MemcgAlloc<PlainMimalloc>` as the global allocator: the inner block of
//! a size that the trailer puts exactly on a mimalloc size class that is
//! not a power of two comes from that class (with `mimalloc::MiMalloc` as
//! the inner allocator it came from the next one, through mimalloc's slow
//! path), and charges, frees, reallocations and limits work as with any
//! inner allocator.

use std::collections::BTreeMap;
use std::ffi::c_void;

use memcg::{Limit, MemcgAlloc, PlainMimalloc, PAGE_SIZE};

#[global_allocator]
static ALLOC: MemcgAlloc<PlainMimalloc> = MemcgAlloc::new(PlainMimalloc);

extern "C" {
    fn mi_usable_size(p: *const c_void) -> usize;
}

fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

#[test]
fn plain_mimalloc_inner_keeps_exact_classes_and_charges_exactly() {
    let ctrl = memcg::controller();
    let g = ctrl.create("plain").unwrap();
    g.attach_current().unwrap();

    // 632 bytes plus the trailer: 640, a size class of its own.
    let blocks: Vec<Box<[u64; 79]>> = (0..1000).map(|_| Box::new([7u64; 79])).collect();
    for b in &blocks {
        // SAFETY: a live block of mimalloc (the inner block starts at the
        // caller's pointer: the trailer is after the caller's bytes).
        let usable = unsafe { mi_usable_size(b.as_ptr() as *const c_void) };
        assert_eq!(usable, 640);
    }
    let mut v: Vec<u8> = Vec::with_capacity(100);
    v.extend_from_slice(&[1; 100]);
    v.reserve_exact(10_000);
    let map: BTreeMap<u32, String> = (0..2000).map(|i| (i, i.to_string())).collect();
    // The boxes, the vector holding them, and `v`.
    let held = 1000 * charged(632) + charged(8 * blocks.capacity()) + charged(v.capacity());
    memcg::flush_current();
    assert!(g.stats().stat.alloc_bytes > held);
    drop(map);
    memcg::flush_current();
    assert_eq!(g.stats().stat.alloc_bytes, held);
    assert!(v[..100].iter().all(|&x| x == 1));
    assert!(blocks.iter().all(|b| b.iter().all(|&x| x == 7)));

    g.set_max(Limit::Bytes(32 * PAGE_SIZE)).unwrap();
    let mut big: Vec<u8> = Vec::new();
    assert!(memcg::fallible(|| big.try_reserve(1 << 20)).is_err());
    drop((v, blocks, big));
    ctrl.root().attach_current().unwrap();
    memcg::flush_current();
    ctrl.drain_stocks();
    assert_eq!(g.stats().stat.alloc_bytes, 0);
    assert_eq!(g.current_bytes(), 0);
}
