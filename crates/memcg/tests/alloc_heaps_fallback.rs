//! `MemcgMimalloc` past its heap cap: the objcgs that get no mimalloc heap
//! of their own stay charged, through the shared fallback heap, and are
//! counted (`MemcgMimalloc::fallback_allocations`).
//!
//! The cap is lowered with `MemcgMimalloc::set_max_heaps` rather than
//! reached: making the real 32,768 heaps took 40 s and 9 GiB of resident
//! memory here (mimalloc keeps about 280 KiB per heap that allocated).
//! Without the `mimalloc` feature this binary is empty (the `[[test]]`
//! entries of `Cargo.toml` list the other `alloc_heaps*` binaries under
//! `required-features`; this cfg does the same).
#![cfg(feature = "mimalloc")]

use std::hint::black_box;
use std::sync::Mutex;

use memcg::{Limit, MemcgMimalloc, OomPolicy, MAX_OBJCG_HEAPS};

#[global_allocator]
static ALLOC: MemcgMimalloc = MemcgMimalloc::new();

mod common;

/// The tests change the process-wide heap limit: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Bytes a block of `size` bytes is charged, with a heap or without: its
/// size (a fallback block's trailer is not charged).
fn charged(size: usize) -> u64 {
    size.max(1) as u64
}

/// A fresh group, made from root (the calling thread stays in root).
fn group(name: &str) -> memcg::Group {
    let ctrl = memcg::controller();
    ctrl.root().attach_current().expect("attach root");
    ctrl.create(name).expect("unique test group")
}

fn alloc_bytes(g: &memcg::Group) -> u64 {
    memcg::flush_current();
    g.stats().stat.alloc_bytes
}

/// Everything of `g` was freed: no live bytes, and after a drain no pages.
fn assert_empty(g: &memcg::Group) {
    assert_eq!(alloc_bytes(g), 0, "{}: live bytes", g.path());
    memcg::controller().drain_stocks();
    assert_eq!(g.current_bytes(), 0, "{}: memory.current", g.path());
}

#[test]
fn objcgs_past_the_heap_limit_are_charged_through_the_fallback_heap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let groups: Vec<memcg::Group> = (0..8)
        .map(|i| group(&format!("fallback-limit-{i}")))
        .collect();
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(groups.len());
    let base = MemcgMimalloc::objcg_heaps();
    assert_eq!(MemcgMimalloc::set_max_heaps(base + 3), base + 3);
    let fallbacks = MemcgMimalloc::fallback_allocations();
    // One allocation per group, each the first of its objcg: three get a
    // heap, five do not.
    for (i, g) in groups.iter().enumerate() {
        let _scope = g.enter().expect("enter");
        held.push(black_box(vec![i as u8; 1000 + i]));
    }
    MemcgMimalloc::set_max_heaps(MAX_OBJCG_HEAPS);
    assert_eq!(MemcgMimalloc::objcg_heaps(), base + 3, "the limit held");
    assert_eq!(
        MemcgMimalloc::fallback_allocations() - fallbacks,
        5,
        "five groups allocated in the fallback heap, once each"
    );
    assert_eq!(MemcgMimalloc::unaccounted_fallbacks(), 0);
    for (i, g) in groups.iter().enumerate() {
        assert_eq!(alloc_bytes(g), charged(1000 + i), "group {i} is charged");
    }
    for (i, v) in held.iter().enumerate() {
        assert!(v.iter().all(|&b| b == i as u8), "block {i} intact");
    }
    // Freed on another thread: each block uncharges its own group.
    std::thread::spawn(move || drop(black_box(held)))
        .join()
        .expect("freeing thread");
    for g in &groups {
        assert_empty(g);
    }
    // Exact only while no other thread charges (the harness's may).
    common::assert_invariants_settle();
}

/// A group past the heap limit still charges from its thread's byte
/// cache: the slow path arms the thread's key with the objcg's no-heap
/// cookie (`NO_HEAP_KEY`), which the allocation's slow entry accepts, so
/// its allocations do not all take the slow charge (they did when the key
/// was armed only for a heap).
#[test]
fn a_group_without_a_heap_charges_from_the_byte_cache() {
    const PAIRS: u64 = 20_000;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = group("fallback-hits");
    let base = MemcgMimalloc::objcg_heaps();
    assert_eq!(MemcgMimalloc::set_max_heaps(base), base);
    let (slow, fallbacks) = std::thread::spawn({
        let g = g.clone();
        move || {
            g.attach_current().expect("attach");
            // The objcg's first allocations: its cookie is set (no heap).
            drop(black_box(vec![1u8; 64]));
            drop(black_box(vec![1u8; 64]));
            let ctrl = memcg::controller();
            let before = ctrl.counters().task_charges;
            let fallbacks = MemcgMimalloc::fallback_allocations();
            for i in 0..PAIRS {
                drop(black_box(vec![i as u8; 64]));
            }
            (
                ctrl.counters().task_charges - before,
                MemcgMimalloc::fallback_allocations() - fallbacks,
            )
        }
    })
    .join()
    .expect("allocating thread");
    MemcgMimalloc::set_max_heaps(MAX_OBJCG_HEAPS);
    assert_eq!(MemcgMimalloc::objcg_heaps(), base, "the group got no heap");
    assert_eq!(fallbacks, PAIRS, "every block from the fallback heap");
    // Other threads of the harness may charge meanwhile: a bound, not 0.
    assert!(
        slow < PAIRS / 4,
        "{slow} slow charges for {PAIRS} allocations of a group without a heap"
    );
    assert_empty(&g);
    common::assert_invariants_settle();
}

#[test]
fn fallback_blocks_keep_contents_alignment_and_their_group_through_realloc() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = group("fallback-blocks");
    MemcgMimalloc::set_max_heaps(0);
    let fallbacks = MemcgMimalloc::fallback_allocations();
    let (mut v, z, p, big) = {
        let _scope = g.enter().expect("enter");
        let mut v: Vec<u8> = black_box(Vec::with_capacity(13));
        v.extend_from_slice(&[0xAB; 13]);
        let z = black_box(vec![0u8; 100_000]);
        let p = black_box(Box::new(Page([7; 4096])));
        let big = black_box(vec![0xFFu8; 3 << 20]);
        (v, z, p, big)
    };
    MemcgMimalloc::set_max_heaps(MAX_OBJCG_HEAPS);
    assert_eq!(
        MemcgMimalloc::fallback_allocations() - fallbacks,
        4,
        "every allocation of the group was a fallback"
    );
    assert_eq!(
        alloc_bytes(&g),
        charged(13) + charged(100_000) + charged(4096) + charged(3 << 20)
    );
    assert!(z.iter().all(|&b| b == 0), "zeroed");
    assert_eq!(&*p as *const Page as usize % 4096, 0, "over-aligned");
    assert!(p.0.iter().all(|&b| b == 7));
    assert!(big.iter().all(|&b| b == 0xFF));

    // Grown and shrunk from root: the charge follows the block, the
    // trailer moves with it.
    v.reserve_exact(50_000);
    assert!(v.capacity() >= 50_013);
    let others = charged(100_000) + charged(4096) + charged(3 << 20);
    assert_eq!(alloc_bytes(&g), charged(v.capacity()) + others);
    v.shrink_to(20);
    assert_eq!(alloc_bytes(&g), charged(v.capacity()) + others);
    assert_eq!(&v[..], &[0xAB; 13][..], "contents survive the moves");
    drop((z, p));
    assert_eq!(alloc_bytes(&g), charged(v.capacity()) + charged(3 << 20));
    std::thread::spawn(move || drop(black_box((v, big))))
        .join()
        .expect("freeing thread");
    assert_empty(&g);
    // Exact only while no other thread charges (the harness's may).
    common::assert_invariants_settle();
}

#[test]
fn a_group_without_heaps_is_held_to_its_limit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = group("fallback-limit-max");
    g.set_max(Limit::from_bytes(1 << 20)).expect("set max");
    g.set_oom_policy(OomPolicy::Fail);
    MemcgMimalloc::set_max_heaps(0);
    let (held, refused) = {
        let _scope = g.enter().expect("enter");
        let held = black_box(vec![1u8; 900 << 10]);
        // Before the fallback, the 900 KiB were uncharged at once and this
        // went through.
        let mut more: Vec<u8> = Vec::new();
        let refused = more.try_reserve_exact(200 << 10).is_err();
        (held, refused)
    };
    MemcgMimalloc::set_max_heaps(MAX_OBJCG_HEAPS);
    assert!(refused, "the fallback bytes count against max");
    assert_eq!(alloc_bytes(&g), charged(900 << 10));
    drop(held);
    assert_empty(&g);
}

#[test]
fn set_max_heaps_clamps_to_the_cap() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(MemcgMimalloc::set_max_heaps(usize::MAX), MAX_OBJCG_HEAPS);
    assert!(MemcgMimalloc::objcg_heaps() <= MAX_OBJCG_HEAPS);
}
