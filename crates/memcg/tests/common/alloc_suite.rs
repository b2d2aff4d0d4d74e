// The allocator tests shared by `alloc_basic.rs` (`MemcgAlloc`),
// `alloc_plain_mimalloc.rs` (`MemcgAlloc<PlainMimalloc>`) and
// `alloc_heaps.rs` (`MemcgMimalloc`), included by each with `include!`.
// The including binary sets the global allocator and defines
// `charged(size) -> u64`, the bytes that allocator charges for a block of
// `size` bytes. Allocations go through `black_box`: in release builds the
// optimizer may remove an allocation nothing reads.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use memcg::{Limit, PAGE_SIZE};

/// A fresh group under a per-test name, with the current thread in it.
fn group(name: &str) -> memcg::Group {
    // Made from root, so the group's own structures are not charged to
    // the group the thread was in.
    memcg::controller()
        .root()
        .attach_current()
        .expect("attach root");
    let g = memcg::controller().create(name).expect("unique test group");
    g.attach_current().expect("attach");
    g
}

fn alloc_bytes(g: &memcg::Group) -> u64 {
    memcg::flush_current();
    g.stats().stat.alloc_bytes
}

fn leave(g: &memcg::Group) {
    memcg::controller().root().attach_current().unwrap();
    memcg::controller().drain_stocks();
    assert_eq!(alloc_bytes(g), 0, "{}: everything freed", g.path());
}

#[test]
fn allocations_of_an_attached_thread_are_charged_to_its_group() {
    let g = group("basic-attach");
    let v: Vec<u8> = black_box(Vec::with_capacity(1000));
    let b = black_box(Box::new([0u64; 100]));
    assert_eq!(alloc_bytes(&g), charged(1000) + charged(800));
    drop(v);
    drop(b);
    assert_eq!(alloc_bytes(&g), 0);
    leave(&g);
}

#[test]
fn realloc_moves_the_charge_with_the_block() {
    let g = group("basic-realloc");
    let mut v: Vec<u8> = Vec::with_capacity(10);
    assert_eq!(alloc_bytes(&g), charged(10));
    v.reserve_exact(5000);
    assert_eq!(alloc_bytes(&g), charged(v.capacity()));
    // The block keeps its group when the thread moves.
    let other = group("basic-realloc-other");
    v.reserve_exact(20_000);
    assert_eq!(alloc_bytes(&g), charged(v.capacity()));
    assert_eq!(alloc_bytes(&other), 0);
    v.shrink_to(100);
    assert_eq!(alloc_bytes(&g), charged(v.capacity()));
    drop(v);
    assert_eq!(alloc_bytes(&g), 0);
    leave(&g);
    leave(&other);
}

/// A block that grows on the thread that made it (the `realloc` hit path:
/// its growth from the task's byte cache) while a reservation is spent is
/// paid from the reservation, not charged again; once spending ends, the
/// next growth is the byte cache's again, and a shrink goes back to it.
#[test]
fn a_block_grown_while_a_reservation_is_spent_is_paid_from_it() {
    let g = group("basic-realloc-spend");
    let mut v: Vec<u8> = black_box(Vec::with_capacity(64));
    // A second small block: the hit path is armed and the cache holds bytes.
    let w: Vec<u8> = black_box(Vec::with_capacity(64));
    let mut r = g.try_charge(64 << 10).expect("reservation");
    let reserved = r.bytes();
    {
        let _spend = r.spend().expect("spend");
        // A growth the byte cache could pay for (it holds the rest of the
        // page the first two blocks charged).
        v.reserve_exact(512);
    }
    let growth = charged(v.capacity()) - charged(64);
    assert_eq!(r.bytes(), reserved - growth, "the growth came from the reservation");
    assert_eq!(alloc_bytes(&g), charged(v.capacity()) + charged(64));
    v.reserve_exact(64 << 10);
    assert_eq!(r.bytes(), reserved - growth, "not spending: the reservation is left alone");
    assert_eq!(alloc_bytes(&g), charged(v.capacity()) + charged(64));
    v.shrink_to(100);
    assert_eq!(alloc_bytes(&g), charged(v.capacity()) + charged(64));
    drop((v, w, r));
    leave(&g);
}

#[test]
fn zeroed_and_over_aligned_blocks_keep_their_contents_and_alignment() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let g = group("basic-align");
    let z = black_box(vec![0u8; 100_000]);
    assert!(z.iter().all(|&b| b == 0));
    let p = black_box(Box::new(Page([7; 4096])));
    assert_eq!(&*p as *const Page as usize % 4096, 0);
    assert!(p.0.iter().all(|&b| b == 7));
    assert_eq!(alloc_bytes(&g), charged(100_000) + charged(4096));
    drop((z, p));
    leave(&g);
}

/// Every alignment from 1 to 64, at sizes around a word's: the caller's
/// bytes keep their alignment and contents through a growing and a
/// shrinking `realloc`, and the charge follows the size exactly.
#[test]
fn every_alignment_keeps_its_bytes_alignment_and_charge_through_realloc() {
    use std::alloc::{alloc, dealloc, realloc, Layout};
    let g = group("basic-every-align");
    let fill = |p: *mut u8, from: usize, to: usize| {
        for i in from..to {
            // SAFETY: `p` has at least `to` bytes (each caller's layout).
            unsafe { p.add(i).write(i as u8 ^ 0x5a) };
        }
    };
    let check = |p: *const u8, to: usize, what: &str| {
        for i in 0..to {
            // SAFETY: as in `fill`.
            assert_eq!(unsafe { p.add(i).read() }, i as u8 ^ 0x5a, "{what}: byte {i}");
        }
    };
    for align in [1usize, 2, 4, 8, 16, 32, 64] {
        for size in [1usize, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000] {
            let what = format!("align {align}, size {size}");
            let layout = Layout::from_size_align(size, align).unwrap();
            let before = alloc_bytes(&g);
            // SAFETY: each layout has a non-zero size; every pointer is
            // reallocated and freed with the layout it has then.
            unsafe {
                let p = alloc(layout);
                assert!(!p.is_null(), "{what}");
                assert_eq!(p as usize % align, 0, "{what}");
                fill(p, 0, size);
                assert_eq!(alloc_bytes(&g), before + charged(size), "{what}");
                let grown = size * 3 + 5;
                let q = realloc(p, layout, grown);
                assert!(!q.is_null(), "{what}");
                assert_eq!(q as usize % align, 0, "{what}: grown");
                check(q, size, &what);
                fill(q, size, grown);
                assert_eq!(alloc_bytes(&g), before + charged(grown), "{what}: grown");
                let shrunk = size.div_ceil(2);
                let r = realloc(q, Layout::from_size_align(grown, align).unwrap(), shrunk);
                assert!(!r.is_null(), "{what}");
                assert_eq!(r as usize % align, 0, "{what}: shrunk");
                check(r, shrunk, &what);
                assert_eq!(alloc_bytes(&g), before + charged(shrunk), "{what}: shrunk");
                dealloc(r, Layout::from_size_align(shrunk, align).unwrap());
            }
            assert_eq!(alloc_bytes(&g), before, "{what}: freed");
        }
    }
    leave(&g);
}

#[test]
fn try_reserve_over_max_fails_and_leaves_nothing_charged() {
    let g = group("basic-limit");
    g.set_max(Limit::Bytes(256 * PAGE_SIZE)).unwrap();
    let mut v: Vec<u8> = Vec::new();
    // In a fallible region the allocator refuses (the group's default OOM
    // policy would let the allocation through and kill the group).
    assert!(memcg::fallible(|| v.try_reserve(2 << 20)).is_err());
    assert_eq!(alloc_bytes(&g), 0);
    assert!(memcg::fallible(|| v.try_reserve(100_000)).is_ok());
    assert!(g.events_local().oom >= 1);
    assert_eq!(g.events_local().oom_kill, 0);
    assert!(!g.is_killed());
    // Explicit reservations fail with the typed error.
    match g.try_charge(4 << 20) {
        Err(memcg::Error::Charge(e)) => assert_eq!(e.path(), "basic-limit"),
        other => panic!("expected a charge error, got {other:?}"),
    }
    drop(v);
    leave(&g);
}

#[test]
fn an_infallible_allocation_over_max_succeeds_and_kills_the_group() {
    let g = group("basic-kill");
    g.set_max(Limit::Bytes(64 * PAGE_SIZE)).unwrap();
    let v = black_box(vec![3u8; 1 << 20]);
    assert!(v.iter().all(|&b| b == 3), "the allocation succeeded");
    assert!(g.is_killed());
    assert_eq!(g.events_local().oom_kill, 1);
    assert!(g.events_local().oom >= 1);
    // Killed: later allocations are forced, and count no more kills.
    let w = black_box(vec![4u8; 1 << 20]);
    assert_eq!(g.events_local().oom_kill, 1);
    assert!(g.revive());
    assert!(!g.is_killed());
    drop((v, w));
    leave(&g);
}

#[test]
fn reclaim_callback_that_frees_a_cache_lets_the_allocation_succeed() {
    let g = group("basic-reclaim");
    g.set_max(Limit::Bytes(64 * PAGE_SIZE)).unwrap();
    // The cache's bookkeeping and the callback live in root; its entries
    // are charged to the group.
    let root = memcg::controller().root();
    root.attach_current().unwrap();
    let cache: Arc<Mutex<Vec<Vec<u8>>>> = Arc::new(Mutex::new(Vec::with_capacity(10)));
    let cache2 = Arc::clone(&cache);
    let h = g.register_reclaimer(move |req| {
        let mut freed = 0;
        let mut c = cache2.lock().unwrap();
        while freed < req.wanted_bytes {
            match c.pop() {
                Some(v) => freed += v.capacity() as u64,
                None => break,
            }
        }
        freed
    });
    g.attach_current().unwrap();
    for _ in 0..10 {
        let entry = black_box(vec![1u8; 20_000]);
        cache.lock().unwrap().push(entry);
    }
    let big = black_box(vec![2u8; 100_000]);
    assert!(
        cache.lock().unwrap().len() < 10,
        "the callback evicted entries"
    );
    assert_eq!(g.events_local().oom, 0);
    drop(big);
    cache.lock().unwrap().clear();
    root.attach_current().unwrap();
    drop(h);
    leave(&g);
}

#[test]
fn forced_group_goes_over_max_and_counts_max_events() {
    let g = group("basic-force");
    g.set_max(Limit::Bytes(16 * PAGE_SIZE)).unwrap();
    g.set_oom_policy(memcg::OomPolicy::Force);
    let v = black_box(vec![0u8; 200_000]);
    assert!(g.current_bytes() > 16 * PAGE_SIZE);
    assert!(g.events_local().max >= 1);
    assert_eq!(g.events_local().oom, 0);
    drop(v);
    leave(&g);
}

#[test]
fn scope_charges_its_group_and_restores() {
    let scoped = memcg::controller().create("basic-scope").unwrap();
    let home = group("basic-scope-home");
    let a = {
        let _s = scoped.enter().unwrap();
        black_box(vec![0u8; 3000])
    };
    let b = black_box(vec![0u8; 500]);
    assert_eq!(alloc_bytes(&scoped), charged(3000));
    assert_eq!(alloc_bytes(&home), charged(500));
    drop((a, b));
    leave(&home);
    leave(&scoped);
}

/// Set in the child that [`allocations_in_a_scope_take_the_hit_path`]
/// runs (the engine's counters are the process's: other tests of this
/// binary would add to them).
const SCOPE_HITS_CHILD: &str = "MEMCG_TEST_SCOPE_HITS_CHILD";

/// Allocations made in a scope (and so in a `Future` wrapped in its
/// group, which enters the group around each poll) are served by the hit
/// path, the scope's objcg in the byte cache: an allocation that misses it
/// counts as a task charge (`EngineCounters::task_charges`), a hit does
/// not. 1,000 held 64-byte blocks take a few refills of the cache.
#[test]
fn scope_hits_child() {
    if std::env::var_os(SCOPE_HITS_CHILD).is_none() {
        return;
    }
    let ctrl = memcg::controller();
    let scoped = ctrl.create("scope-hits").unwrap();
    let home = group("scope-hits-home");
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(1000);
    let (misses, scoped_bytes) = {
        let _s = scoped.enter().unwrap();
        // The scope's first allocations put its objcg in the byte cache.
        drop(black_box(vec![0u8; 64]));
        drop(black_box(vec![0u8; 64]));
        let before = ctrl.counters().task_charges;
        for i in 0..1000 {
            blocks.push(black_box(vec![i as u8; 64]));
        }
        (ctrl.counters().task_charges - before, alloc_bytes(&scoped))
    };
    assert_eq!(scoped_bytes, 1000 * charged(64), "charged to the scope");
    assert!(
        misses < 100,
        "{misses} of 1,000 allocations in a scope missed the hit path"
    );
    drop(blocks);
    leave(&home);
    leave(&scoped);
    println!("CHILD OK");
}

#[test]
fn allocations_in_a_scope_take_the_hit_path() {
    common::run_test_in_child("scope_hits_child", &[(SCOPE_HITS_CHILD, "1")], &[]);
}

#[test]
fn spawn_helper_starts_the_thread_in_the_spawners_group() {
    let g = group("basic-spawn");
    let child = memcg::spawn(|| memcg::current_group().unwrap().path().to_string()).unwrap();
    assert_eq!(child.join().unwrap(), "basic-spawn");
    let plain = std::thread::spawn(|| memcg::current_group().unwrap().path().to_string());
    assert_eq!(plain.join().unwrap(), "");
    leave(&g);
}

#[test]
fn exempt_thread_charges_root() {
    let g = group("basic-exempt");
    memcg::set_current_exempt(true);
    let v = black_box(vec![0u8; 5000]);
    assert_eq!(alloc_bytes(&g), 0);
    memcg::set_current_exempt(false);
    drop(v);
    leave(&g);
}

/// No `black_box` here on purpose: the allocation, its use and its free
/// sit in one function the optimizer sees whole, with the allocator's
/// code inlined (release builds). A trailer read that looked out of
/// bounds to the optimizer compiled to a trap after the free; this test
/// then dies with SIGILL instead of passing.
#[test]
fn blocks_the_optimizer_sees_whole_are_freed_normally() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let g = group("basic-inlined");
    let z = vec![0u8; 100_000];
    assert!(z.iter().all(|&b| b == 0));
    let p = Box::new(Page([7; 4096]));
    assert_eq!(&*p as *const Page as usize % 4096, 0);
    assert!(p.0.iter().all(|&b| b == 7));
    // Whichever blocks the optimizer kept, their charge is what is live.
    let live = alloc_bytes(&g);
    let (a, b) = (charged(100_000), charged(4096));
    assert!([0, a, b, a + b].contains(&live), "{live}");
    drop((z, p));
    assert_eq!(alloc_bytes(&g), 0);
    leave(&g);
}
