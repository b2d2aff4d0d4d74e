//! `MemcgMimalloc` (one mimalloc heap per objcg, no trailer) as the
//! global allocator: the shared suite of `common/alloc_suite.rs`, plus
//! frees on other threads and many groups.

use memcg::MemcgMimalloc;

#[global_allocator]
static ALLOC: MemcgMimalloc = MemcgMimalloc::new();

/// Bytes a block of `size` bytes is charged: its size, nothing else.
fn charged(size: usize) -> u64 {
    size.max(1) as u64
}

mod common;

include!("common/alloc_suite.rs");

#[test]
fn blocks_freed_on_other_threads_uncharge_their_own_group() {
    let a = group("heaps-cross-a");
    // A heap was made (for `a`'s objcg at the latest): frees read the page
    // map inline on this build (release or debug, the layout checked
    // against `mi_heap_of` when the heap was made); every free below, on
    // this thread or another, goes through it.
    drop(vec![0u8; 64]);
    assert!(MemcgMimalloc::frees_read_page_map());
    let blocks: Vec<Vec<u8>> = (0..1000).map(|i| vec![1u8; 10 + i % 300]).collect();
    let expected: u64 = blocks.iter().map(|b| charged(b.capacity())).sum::<u64>()
        + charged(blocks.capacity() * std::mem::size_of::<Vec<u8>>());
    assert_eq!(alloc_bytes(&a), expected);
    // Another thread, in another group, frees them (the thread is made
    // from root, so its own structures are not charged to `a`).
    memcg::controller().root().attach_current().unwrap();
    let b = memcg::controller().create("heaps-cross-b").unwrap();
    let b2 = b.clone();
    std::thread::spawn(move || {
        b2.attach_current().unwrap();
        drop(blocks);
        memcg::flush_current();
    })
    .join()
    .unwrap();
    assert_eq!(alloc_bytes(&a), 0);
    assert_eq!(alloc_bytes(&b), 0);
    leave(&a);
    leave(&b);
}

#[test]
fn many_groups_each_get_their_own_heap_and_balance() {
    let groups: Vec<memcg::Group> = (0..64)
        .map(|i| {
            memcg::controller()
                .create(&format!("heaps-many-{i}"))
                .unwrap()
        })
        .collect();
    let mut held = Vec::with_capacity(groups.len());
    for (i, g) in groups.iter().enumerate() {
        g.attach_current().unwrap();
        held.push(vec![i as u8; 100 + i]);
    }
    memcg::controller().root().attach_current().unwrap();
    for (i, g) in groups.iter().enumerate() {
        assert_eq!(alloc_bytes(g), charged(100 + i), "group {i}");
    }
    drop(held);
    for g in &groups {
        leave(g);
    }
}
