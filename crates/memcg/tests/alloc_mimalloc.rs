//! `MemcgAlloc<MiMalloc>` as the global allocator.

use memcg::{Limit, MemcgAlloc, PAGE_SIZE};
use mimalloc::MiMalloc;

#[global_allocator]
static ALLOC: MemcgAlloc<MiMalloc> = MemcgAlloc::new(MiMalloc);

fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

#[test]
fn mimalloc_inner_charges_frees_reallocs_and_refuses_over_max() {
    let ctrl = memcg::controller();
    let g = ctrl.create("mi").unwrap();
    g.attach_current().unwrap();
    let mut v: Vec<u8> = Vec::with_capacity(100);
    v.extend_from_slice(&[1; 100]);
    v.reserve_exact(10_000);
    let b = Box::new([3u32; 1000]);
    std::hint::black_box(&b);
    memcg::flush_current();
    assert_eq!(
        g.stats().stat.alloc_bytes,
        charged(v.capacity()) + charged(4000)
    );
    assert!(v[..100].iter().all(|&x| x == 1));
    g.set_max(Limit::Bytes(32 * PAGE_SIZE)).unwrap();
    let mut big: Vec<u8> = Vec::new();
    assert!(memcg::fallible(|| big.try_reserve(1 << 20)).is_err());
    drop((v, b, big));
    ctrl.root().attach_current().unwrap();
    memcg::flush_current();
    ctrl.drain_stocks();
    assert_eq!(g.stats().stat.alloc_bytes, 0);
    assert_eq!(g.current_bytes(), 0);
}
