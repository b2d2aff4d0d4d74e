//! `alloc`+`dealloc` pairs through `MemcgAlloc` against the bare
//! allocators, measured in the same run (DESIGN §5: one thread at most
//! 1.3× bare mimalloc; two threads of one group at least 0.9× bare
//! throughput).
//!
//! The allocators are called directly (not installed as the global
//! allocator), so every measured call goes through exactly the allocator
//! named. Run: `cargo bench -p memcg --bench alloc`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use memcg::MemcgAlloc;
use mimalloc::MiMalloc;

static BARE_MI: MiMalloc = MiMalloc;
static MEMCG_MI: MemcgAlloc<MiMalloc> = MemcgAlloc::new(MiMalloc);
static MEMCG_SYS: MemcgAlloc<System> = MemcgAlloc::new(System);

const LAYOUT_64: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!("valid layout"),
};

#[inline(always)]
fn pair<A: GlobalAlloc>(a: &A) {
    // SAFETY: a non-zero layout; the block is freed with the same layout.
    unsafe {
        let p = a.alloc(LAYOUT_64);
        black_box(p);
        a.dealloc(p, LAYOUT_64);
    }
}

/// Runs `iters` pairs on each of `threads` threads (attached to one
/// group) and returns the wall time of the slowest.
fn threaded<A: GlobalAlloc + Sync>(a: &'static A, threads: usize, iters: u64) -> Duration {
    let group = memcg::controller()
        .group("bench")
        .unwrap_or_else(|_| memcg::controller().create("bench").expect("bench group"));
    let barrier = Barrier::new(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (group, barrier) = (&group, &barrier);
                s.spawn(move || {
                    group.attach_current().expect("attach");
                    pair(a); // warm the thread's task
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        pair(a);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn alloc_pairs(c: &mut Criterion) {
    let group = memcg::controller().create("bench").expect("bench group");
    group.attach_current().expect("attach");
    for threads in [1usize, 2] {
        let mut g = c.benchmark_group(format!("alloc/pair_64B/{threads}thread"));
        g.throughput(criterion::Throughput::Elements(threads as u64));
        g.bench_function("system", |b| {
            b.iter_custom(|n| threaded(&System, threads, n))
        });
        g.bench_function("mimalloc", |b| {
            b.iter_custom(|n| threaded(&BARE_MI, threads, n))
        });
        g.bench_function("memcg_mimalloc", |b| {
            b.iter_custom(|n| threaded(&MEMCG_MI, threads, n))
        });
        g.bench_function("memcg_system", |b| {
            b.iter_custom(|n| threaded(&MEMCG_SYS, threads, n))
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = alloc_pairs
}
criterion_main!(benches);
