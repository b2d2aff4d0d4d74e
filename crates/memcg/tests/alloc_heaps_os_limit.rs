//! `MemcgMimalloc` when mimalloc runs out of memory (not node-bound heaps):
//! a growth whose `realloc` call fails leaves the block as it was and gives
//! its charge back, exactly, on the hit path too (the growth is paid from
//! the task's byte cache before mimalloc is called, and given back with
//! the thread still marked busy when the call fails). The test re-runs
//! this binary as a child with mimalloc limited to a 128 MiB reservation
//! (`MIMALLOC_LIMIT_OS_ALLOC`, `MIMALLOC_RESERVE_OS_MEMORY`), which it
//! reads when it starts.

use memcg::MemcgMimalloc;

mod common;

#[global_allocator]
static ALLOC: MemcgMimalloc = MemcgMimalloc::new();

const CHILD: &str = "MEMCG_TEST_OS_LIMIT_CHILD";

/// Blocks made before mimalloc's memory runs out, each then grown by
/// [`GROWTH_BYTES`] into a size class with no page (1,000 bytes to 1,100:
/// mimalloc's 1,024-byte class to its 1,280-byte one).
const EARLY_BLOCKS: usize = 64;
const EARLY_BYTES: usize = 1000;
const GROWTH_BYTES: usize = 100;

fn child() {
    let ctrl = memcg::controller();
    let group = ctrl.create("os-limit").unwrap();
    let worker = std::thread::spawn({
        let group = group.clone();
        move || {
            group.attach_current().unwrap();
            let mut early: Vec<Vec<u8>> = Vec::new();
            early.try_reserve_exact(EARLY_BLOCKS).unwrap();
            for i in 0..EARLY_BLOCKS {
                let mut v = Vec::new();
                v.try_reserve_exact(EARLY_BYTES).unwrap();
                v.resize(EARLY_BYTES, i as u8);
                early.push(v);
            }
            // Every MiB mimalloc can still give, then small blocks of the
            // growth's class until none is left either.
            let mut hog: Vec<Vec<u8>> = Vec::new();
            hog.try_reserve_exact(4096).unwrap();
            let mut smalls: Vec<Vec<u8>> = Vec::new();
            smalls.try_reserve_exact(200_000).unwrap();
            while hog.len() < hog.capacity() {
                let mut v: Vec<u8> = Vec::new();
                if v.try_reserve_exact(1 << 20).is_err() {
                    break;
                }
                v.resize(1 << 20, 1);
                hog.push(v);
            }
            while smalls.len() < smalls.capacity() {
                let mut v: Vec<u8> = Vec::new();
                if v.try_reserve_exact(EARLY_BYTES + GROWTH_BYTES).is_err() {
                    break;
                }
                smalls.push(v);
            }
            // No assertion while memory is out: a panic's message and
            // backtrace need memory. What each growth did is noted in
            // place and checked once the hogs are gone.
            let mut failed = 0;
            let mut wrong = None;
            for (i, b) in early.iter_mut().enumerate() {
                if b.try_reserve_exact(GROWTH_BYTES).is_err() {
                    failed += 1;
                    if b.capacity() != EARLY_BYTES {
                        wrong = wrong.or(Some(i));
                    }
                } else {
                    b.resize(EARLY_BYTES + GROWTH_BYTES, 0xEE);
                }
                if !b[..EARLY_BYTES].iter().all(|&x| x == i as u8) {
                    wrong = wrong.or(Some(i));
                }
            }
            drop((hog, smalls));
            assert_eq!(wrong, None, "a block changed its capacity or its contents");
            drop(early);
            memcg::flush_current();
            failed
        }
    });
    let failed = worker.join().unwrap();
    memcg::flush_current();
    ctrl.drain_stocks();
    assert!(
        failed > 0,
        "no growth failed: mimalloc's memory did not run out"
    );
    assert_eq!(
        group.stats().stat.alloc_bytes,
        0,
        "the failed growths gave their charge back ({failed} failed)"
    );
    memcg::check_invariants().unwrap();
    println!("CHILD OK");
}

#[test]
fn os_limit_child() {
    if std::env::var_os(CHILD).is_some() {
        child();
    }
}

#[test]
fn failed_growths_give_their_charge_back() {
    common::run_test_in_child(
        "os_limit_child",
        &[
            (CHILD, "1"),
            ("MIMALLOC_LIMIT_OS_ALLOC", "1"),
            ("MIMALLOC_RESERVE_OS_MEMORY", "128MiB"),
            ("MEMCG_NODE_HEAPS", "0"),
            ("RUST_BACKTRACE", "0"),
        ],
        &[],
    );
}
