//! Work that follows its group on tokio (feature `tokio`), with
//! `MemcgAlloc` as the global allocator: spawned tasks and blocking work,
//! `current_group()` in scopes, futures and spawned tasks, the foreign
//! group error, and parked workers' statistics.

use std::hint::black_box;
use std::time::{Duration, Instant};

use memcg::{Error, FutureExt, Group, MemcgAlloc};

#[global_allocator]
static ALLOC: MemcgAlloc = MemcgAlloc::new(std::alloc::System);

/// Bytes a block of `size` bytes is charged: its size plus the trailer.
fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

fn tenant(name: &str) -> Group {
    memcg::controller().root().attach_current().unwrap();
    memcg::controller().create(name).expect("unique test group")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        // The documented one-liner: a parking worker flushes its batched
        // statistics.
        .on_thread_park(memcg::flush_current)
        .build()
        .unwrap()
}

/// Polls `cond` until it holds or a generous deadline passes (a hang guard,
/// not a timing claim).
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

const BLOCK_BYTES: usize = 256 << 10;

#[test]
fn a_request_that_spawns_tasks_and_blocking_work_keeps_its_bytes_in_its_tenant() {
    let g = tenant("tokio-request");
    let rt = runtime();
    let blocks = rt.block_on(
        async {
            let mut handles = Vec::new();
            for i in 0..4u8 {
                handles.push(memcg::tokio::spawn(async move {
                    tokio::task::yield_now().await;
                    black_box(vec![i; BLOCK_BYTES])
                }));
            }
            let blocking = memcg::tokio::spawn_blocking(|| black_box(vec![9u8; BLOCK_BYTES]));
            let mut set = tokio::task::JoinSet::new();
            set.spawn(async { black_box(vec![7u8; BLOCK_BYTES]) }.in_current_group());
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out.push(blocking.await.unwrap());
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
            out
        }
        .in_group(&g)
        .unwrap(),
    );
    assert_eq!(blocks.len(), 6);
    // Every block was charged to the tenant, wherever it was allocated.
    let held = 6 * charged(BLOCK_BYTES);
    assert!(
        eventually(|| g.stats().stat.alloc_bytes >= held),
        "alloc {} < {held}",
        g.stats().stat.alloc_bytes
    );
    assert!(g.current_bytes() >= held);
    drop(blocks);
    drop(rt);
    memcg::controller().root().attach_current().unwrap();
}

#[test]
fn current_group_answers_the_scope_the_future_and_the_spawned_task() {
    let g = tenant("tokio-current");
    let root = memcg::controller().root();
    assert_eq!(memcg::current_group().unwrap(), root);
    {
        let _scope = g.enter().unwrap();
        assert_eq!(memcg::current_group().unwrap(), g);
        assert_eq!(memcg::attached_group().unwrap(), root, "the attachment");
    }
    assert_eq!(memcg::current_group().unwrap(), root);
    let rt = runtime();
    let (in_future, spawned, blocking, plain) = rt.block_on(
        async {
            let in_future = memcg::current_group();
            let spawned = memcg::tokio::spawn(async { memcg::current_group() });
            let blocking = memcg::tokio::spawn_blocking(memcg::current_group);
            // A plain `tokio::spawn` runs in the worker's own group.
            let plain = tokio::spawn(async { memcg::current_group() });
            (
                in_future,
                spawned.await.unwrap(),
                blocking.await.unwrap(),
                plain.await.unwrap(),
            )
        }
        .in_group(&g)
        .unwrap(),
    );
    assert_eq!(in_future.unwrap(), g);
    assert_eq!(spawned.unwrap(), g);
    assert_eq!(blocking.unwrap(), g);
    assert_eq!(plain.unwrap(), root);
}

#[test]
fn a_group_of_another_controller_is_refused_by_in_group_and_enter() {
    let other = memcg::Controller::new(memcg::Topology::from_spec("1x1").unwrap());
    let foreign = other.create("foreign").unwrap();
    assert!(matches!(
        async {}.in_group(&foreign),
        Err(Error::ForeignController)
    ));
    assert!(matches!(foreign.enter(), Err(Error::ForeignController)));
}

#[test]
fn a_parked_workers_statistics_reach_its_group() {
    const SMALL_BYTES: usize = 32;
    // Few enough that the worker's batched statistics (under
    // `STAT_FLUSH_BYTES`) are not flushed by its own charges.
    const COUNT: usize = 150;
    let g = tenant("tokio-park");
    let rt = runtime();
    // On a worker thread (not the thread in `block_on`): small blocks
    // charged from the worker's byte cache, their statistics batched there.
    let held = rt.block_on(async {
        let work = async {
            let v: Vec<Box<[u8; SMALL_BYTES]>> = (0..COUNT)
                .map(|i| black_box(Box::new([i as u8; SMALL_BYTES])))
                .collect();
            v
        };
        tokio::spawn(work.in_group(&g).unwrap()).await.unwrap()
    });
    // The worker parks once the task is done, and flushes.
    let want = COUNT as u64 * charged(SMALL_BYTES);
    assert!(
        eventually(|| g.stats().stat.alloc_bytes >= want),
        "alloc {} < {want}",
        g.stats().stat.alloc_bytes
    );
    drop(held);
    drop(rt);
}
