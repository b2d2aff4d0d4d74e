//! Node-bound heaps of `MemcgMimalloc` (`MEMCG_NODE_HEAPS=1` forces them on
//! a one-node machine: node 0's arena): accounting is unchanged, the arena
//! is made once, nothing falls back, and the pages of a group's objects are
//! on node 0. The multi-node placement is checked in the NUMA VMs
//! (`ci/vm.sh`). The test re-runs this binary as a child with the variable
//! set (the decision is taken at the first heap, before `main`'s tests).

use memcg::MemcgMimalloc;

mod common;

#[global_allocator]
static ALLOC: MemcgMimalloc = MemcgMimalloc::new();

const CHILD: &str = "MEMCG_TEST_NODE_BOUND_CHILD";

fn child() {
    let ctrl = memcg::controller();
    let group = ctrl.create("bound").unwrap();
    let task = std::thread::spawn({
        let group = group.clone();
        move || {
            group.attach_current().unwrap();
            let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 4000]).collect();
            let big = vec![7u8; 3 << 20];
            memcg::flush_current();
            (blocks, big)
        }
    });
    let (blocks, big) = task.join().unwrap();
    let charged = group.stats().stat.alloc_bytes;
    // 256 blocks of 4,000 bytes, 3 MiB, and the outer vector's buffer.
    let expected = 256 * 4000 + (3 << 20);
    assert!(
        charged >= expected && charged < expected + (16 << 10),
        "charged {charged}, expected about {expected}"
    );
    assert_eq!(MemcgMimalloc::node_arenas(), 1, "node 0's arena");
    assert_eq!(MemcgMimalloc::node_fallback_allocations(), 0);
    assert_eq!(MemcgMimalloc::node_fallback_bytes(), 0);
    // The pages are where the arena's policy says: node 0.
    let page = big.as_ptr() as usize & !4095;
    let address = page as *mut libc::c_void;
    let mut status: libc::c_int = -1;
    // SAFETY: one address and one status, live across the call; null
    // target nodes make it a query.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            1 as libc::c_ulong,
            &address as *const *mut libc::c_void,
            std::ptr::null::<libc::c_int>(),
            &mut status as *mut libc::c_int,
            0,
        )
    };
    if ret == 0 {
        assert_eq!(status, 0, "the page is on node 0");
    }
    drop((blocks, big));
    memcg::flush_current();
    ctrl.drain_stocks();
    assert_eq!(group.stats().stat.alloc_bytes, 0);
    println!("CHILD OK");
}

#[test]
fn node_bound_child() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
}

/// Runs the test `test` of this binary in a child process with node-bound
/// heaps forced on, the real topology and `env` (its switch among them),
/// and checks that it printed `CHILD OK`.
fn run_child(test: &str, env: &[(&str, &str)]) {
    let mut all = vec![("MEMCG_NODE_HEAPS", "1")];
    all.extend_from_slice(env);
    common::run_test_in_child(test, &all, &["MEMCG_TOPOLOGY"]);
}

#[test]
fn node_bound_heaps_account_as_before_and_never_fall_back() {
    run_child("node_bound_child", &[(CHILD, "1")]);
}

const FULL_CHILD: &str = "MEMCG_TEST_NODE_FULL_CHILD";

/// Small blocks past the full arena: 997 bytes (charged 997), half of
/// them zeroed. Allocated on the hit path, whose call of mimalloc then
/// fails and reads the kept size and charge back for the fallback.
const SMALL_PAST_FULL: usize = 10_000;

/// Blocks made before the arena fills, then each grown by a few bytes
/// into a size class with no page (1,000 bytes to 1,100: mimalloc's
/// 1,024-byte class to its 1,280-byte one).
const EARLY_BLOCKS: usize = 16;
const EARLY_BYTES: usize = 1000;
const GROWTH_IN_FULL_ARENA: usize = 100;

/// With a 64 MiB node arena: allocations past it fall back (counted) and
/// stay charged, small ones from the hit path included; a `realloc` the
/// full arena cannot serve, on its hit path or off it, moves the block to
/// the fallback heap with its contents and its objcg.
fn full_child() {
    let ctrl = memcg::controller();
    let group = ctrl.create("full").unwrap();
    let worker = std::thread::spawn({
        let group = group.clone();
        move || {
            group.attach_current().unwrap();
            let small: Vec<u8> = (0..100u8).collect();
            let mut early: Vec<Vec<u8>> = (0..EARLY_BLOCKS)
                .map(|i| vec![i as u8; EARLY_BYTES])
                .collect();
            let blocks: Vec<Vec<u8>> = (0..96).map(|i| vec![i as u8; 1 << 20]).collect();
            let before = MemcgMimalloc::node_fallback_allocations();
            let mut grown = small;
            grown.reserve_exact(8 << 20);
            grown.extend(std::iter::repeat_n(1u8, 8 << 20));
            assert!(
                grown.iter().take(100).copied().eq(0..100u8),
                "contents kept"
            );
            let before_small = MemcgMimalloc::node_fallback_allocations();
            let smalls: Vec<Vec<u8>> = (0..SMALL_PAST_FULL)
                .map(|i| vec![(i % 2) as u8 * 7; 997])
                .collect();
            let small_fallbacks = MemcgMimalloc::node_fallback_allocations() - before_small;
            assert!(
                small_fallbacks >= SMALL_PAST_FULL as u64 / 2,
                "the full arena's small blocks fell back: {small_fallbacks}"
            );
            for (i, v) in smalls.iter().enumerate() {
                assert!(v.iter().all(|&b| b == (i % 2) as u8 * 7), "contents of {i}");
            }
            // The early blocks are in the arena: growing each by a few
            // bytes hits the byte cache, and mimalloc's call, made on the
            // hit path, fails (their new size class has no page, and the
            // full arena gives none); the kept block and layouts are read
            // back and the block moves to the fallback heap, charged its
            // new size.
            let before_grow = MemcgMimalloc::node_fallback_allocations();
            for (i, b) in early.iter_mut().enumerate() {
                b.reserve_exact(GROWTH_IN_FULL_ARENA);
                b.extend(std::iter::repeat_n(0xEEu8, GROWTH_IN_FULL_ARENA));
                assert!(
                    b[..EARLY_BYTES].iter().all(|&x| x == i as u8),
                    "contents of {i}"
                );
            }
            let moved = MemcgMimalloc::node_fallback_allocations() - before_grow;
            assert_eq!(
                moved, EARLY_BLOCKS as u64,
                "the grown blocks moved to the fallback heap"
            );
            memcg::flush_current();
            (blocks, grown, smalls, early, before)
        }
    });
    let (blocks, grown, smalls, early, before_realloc) = worker.join().unwrap();
    assert_eq!(MemcgMimalloc::node_arenas(), 1);
    let fallbacks = MemcgMimalloc::node_fallback_allocations();
    assert!(fallbacks > 0, "96 MiB in a 64 MiB arena: some fell back");
    assert!(fallbacks > before_realloc, "the grown block moved too");
    let charged = group.stats().stat.alloc_bytes;
    // The small blocks and the vector holding them.
    let smalls_bytes = SMALL_PAST_FULL * 997 + smalls.capacity() * size_of::<Vec<u8>>();
    let expected = 96 * (1 << 20)
        + (EARLY_BLOCKS * (EARLY_BYTES + GROWTH_IN_FULL_ARENA)) as u64
        + (early.capacity() * size_of::<Vec<u8>>()) as u64
        + grown.capacity() as u64
        + smalls_bytes as u64;
    assert!(
        charged >= expected && charged < expected + (64 << 10),
        "charged {charged}, expected about {expected}"
    );
    drop((blocks, grown, smalls, early));
    memcg::flush_current();
    ctrl.drain_stocks();
    assert_eq!(
        group.stats().stat.alloc_bytes,
        0,
        "fallback blocks uncharge"
    );
    println!("CHILD OK");
}

#[test]
fn node_full_child() {
    if std::env::var_os(FULL_CHILD).is_some() {
        full_child();
    }
}

#[test]
fn full_node_arena_falls_back_counted_and_charged() {
    run_child(
        "node_full_child",
        &[(FULL_CHILD, "1"), ("MEMCG_NODE_ARENA_BYTES", "64M")],
    );
}
