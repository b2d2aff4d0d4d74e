//! Async: tasks of two groups interleave on the same tokio workers; each
//! group is charged exactly its own futures' allocations.

use memcg::{FutureExt, MemcgAlloc};

#[global_allocator]
static ALLOC: MemcgAlloc = MemcgAlloc::new(std::alloc::System);

fn charged(bytes: usize) -> u64 {
    (bytes + memcg::TRAILER_BYTES) as u64
}

#[test]
fn futures_of_two_groups_on_shared_workers_charge_their_own_group() {
    let ctrl = memcg::controller();
    let a = ctrl.create("async-a").unwrap();
    let b = ctrl.create("async-b").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    const TASKS: usize = 16;
    const BLOCK: usize = 1000;
    const BLOCKS: usize = 20;
    let kept = rt.block_on(async {
        let mut joins = Vec::new();
        for i in 0..TASKS {
            let group = if i % 2 == 0 { &a } else { &b };
            let size = BLOCK + i; // distinct sizes per task
            joins.push(tokio::spawn(
                async move {
                    let mut mine = Vec::new();
                    for _ in 0..BLOCKS {
                        let block = vec![i as u8; size];
                        tokio::task::yield_now().await;
                        mine.push(block);
                    }
                    // Hand the blocks out of the future as raw parts so
                    // the test, not the future's group, owns the outer Vec.
                    let blocks: Vec<Vec<u8>> = std::mem::take(&mut mine);
                    blocks
                }
                .in_group(group)
                .expect("a group of the global controller"),
            ));
        }
        let mut all = Vec::new();
        for j in joins {
            all.push(j.await.unwrap());
        }
        all
    });
    // Flush the workers' task caches by shutting the runtime down.
    drop(rt);
    ctrl.drain_stocks();
    let expect = |parity: usize| -> u64 {
        kept.iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .map(|(_, blocks)| {
                let outer = charged(blocks.capacity() * std::mem::size_of::<Vec<u8>>());
                outer + blocks.iter().map(|v| charged(v.capacity())).sum::<u64>()
            })
            .sum()
    };
    assert_eq!(a.stats().stat.alloc_bytes, expect(0));
    assert_eq!(b.stats().stat.alloc_bytes, expect(1));
    drop(kept);
    // This thread's frees of the blocks of `a` and `b` are gathered in its
    // task's foreign slot until it flushes.
    memcg::flush_current();
    ctrl.drain_stocks();
    assert_eq!(a.stats().stat.alloc_bytes, 0);
    assert_eq!(b.stats().stat.alloc_bytes, 0);
}
