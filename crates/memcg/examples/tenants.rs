//! A small multi-tenant service on memcg.
//!
//! Every allocation of the process is charged through `MemcgAlloc`. Three
//! tenants, each a group with a `max` limit, keep a cache (a `HashMap`)
//! filled by a pool of worker threads; each tenant registers a reclaim
//! callback that evicts cache entries when the tenant reaches its limit.
//! An async part on tokio runs per-tenant request futures with
//! `in_group`. A table of per-tenant, per-node usage is printed while it
//! runs; at the end the tenants are removed and their usage returns to
//! zero.
//!
//! Run: `cargo run --release -p memcg --example tenants`
//! On a one-node machine, try `MEMCG_TOPOLOGY=2x1` to see two nodes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memcg::{FutureExt, Group, Limit, MemcgAlloc};

#[global_allocator]
static ALLOC: MemcgAlloc<mimalloc::MiMalloc> = MemcgAlloc::new(mimalloc::MiMalloc);

type Cache = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

const CACHE_CAPACITY: usize = 8192;

struct Tenant {
    group: Group,
    cache: Cache,
    refused: AtomicU64,
    _reclaimer: memcg::ReclaimerHandle,
}

fn tenant(name: &str, max: &str) -> Result<Tenant, memcg::Error> {
    let group = memcg::controller().create(&format!("tenants/{name}"))?;
    group.set_max(Limit::parse(max)?)?;
    // Made in root with its full capacity, so inserting never allocates
    // while the lock is held (a reclaim callback takes the same lock).
    let cache: Cache = Arc::new(Mutex::new(HashMap::with_capacity(CACHE_CAPACITY)));
    let evict_from = Arc::clone(&cache);
    // Runs when a charge would take the tenant over `max`: evict entries
    // until enough bytes are freed.
    let reclaimer = group.register_reclaimer(move |req| {
        let Ok(mut cache) = evict_from.lock() else {
            return 0;
        };
        let mut freed = 0u64;
        while freed < req.wanted_bytes {
            let Some(&k) = cache.keys().next() else { break };
            if let Some(v) = cache.remove(&k) {
                freed += v.capacity() as u64;
            }
        }
        freed
    });
    Ok(Tenant {
        group,
        cache,
        refused: AtomicU64::new(0),
        _reclaimer: reclaimer,
    })
}

fn print_table(tenants: &[Tenant], elapsed: Duration) {
    let nodes = memcg::controller().topology().nr_node_ids();
    let mut header = format!(
        "{:>6.1}s  {:<10} {:>10} {:>10}",
        elapsed.as_secs_f64(),
        "tenant",
        "current",
        "max"
    );
    for n in 0..nodes {
        header.push_str(&format!(" {:>11}", format!("alloc N{n}")));
    }
    header.push_str(&format!(" {:>8} {:>8} {:>6}", "entries", "refused", "oom"));
    println!("{header}");
    for t in tenants {
        let s = t.group.stats();
        let mut line = format!(
            "         {:<10} {:>10} {:>10}",
            t.group.name(),
            s.current_bytes,
            s.max.to_string()
        );
        for n in &s.numa {
            line.push_str(&format!(" {:>11}", n.hierarchical.alloc_bytes));
        }
        let entries = t.cache.lock().map(|c| c.len()).unwrap_or(0);
        line.push_str(&format!(
            " {:>8} {:>8} {:>6}",
            entries,
            t.refused.load(Ordering::Relaxed),
            s.events.oom
        ));
        println!("{line}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctrl = memcg::controller();
    println!("topology: {}", ctrl.topology());
    ctrl.create("tenants")?;
    let tenants = Arc::new(vec![
        tenant("alpha", "4M")?,
        tenant("beta", "8M")?,
        tenant("gamma", "16M")?,
    ]);
    let start = Instant::now();
    let run_for = Duration::from_secs(3);

    // Worker pool: each worker serves every tenant in turn, entering the
    // tenant's group for the duration of the request.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let tenants = Arc::clone(&tenants);
            std::thread::spawn(move || {
                let mut key = w as u64 * 1_000_000;
                while start.elapsed() < run_for {
                    for t in tenants.iter() {
                        let _scope = t.group.enter().expect("tenant is online");
                        key += 1;
                        // Fallible: at its limit (after reclaim evicted what
                        // it could) a tenant's request is refused, not the
                        // process aborted.
                        let mut value = Vec::new();
                        if value
                            .try_reserve_exact(1024 + (key % 16) as usize * 512)
                            .is_err()
                        {
                            t.refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        value.resize(value.capacity(), (key % 251) as u8);
                        if let Ok(mut cache) = t.cache.lock() {
                            if cache.len() >= CACHE_CAPACITY / 2 {
                                let first = cache.keys().next().copied();
                                if let Some(k) = first {
                                    cache.remove(&k);
                                }
                            }
                            cache.insert(key, value);
                        }
                    }
                }
            })
        })
        .collect();

    // The async part: request futures of every tenant on shared workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let async_tenants = Arc::clone(&tenants);
    let requests = rt.spawn(async move {
        let mut handles = Vec::new();
        for i in 0..300u64 {
            let t = &async_tenants[(i % 3) as usize];
            let group = t.group.clone();
            handles.push(tokio::spawn(
                async move {
                    let mut body = Vec::new();
                    for chunk in 0..8 {
                        if body.try_reserve(2048).is_err() {
                            return 0;
                        }
                        body.extend_from_slice(&[chunk as u8; 2048]);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    body.len()
                }
                .in_group(&group),
            ));
        }
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap_or(0);
        }
        total
    });

    while start.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(750));
        print_table(&tenants, start.elapsed());
    }
    for w in workers {
        w.join().expect("worker");
    }
    let served = rt.block_on(requests)?;
    drop(rt);
    println!("async requests served: {served} bytes of bodies");

    // Tear down: empty the caches, remove the tenants, show usage is back.
    for t in tenants.iter() {
        t.cache.lock().map(|mut c| c.clear()).ok();
    }
    ctrl.drain_stocks();
    print_table(&tenants, start.elapsed());
    let tenants = Arc::try_unwrap(tenants).map_err(|_| "tenants still shared")?;
    let parent = ctrl.group("tenants")?;
    for t in tenants {
        let name = t.group.name().to_string();
        drop(t.cache);
        t.group.remove()?;
        println!("removed tenants/{name}");
    }
    memcg::flush_current();
    ctrl.drain_stocks();
    println!(
        "tenants memory.current after removal: {}",
        parent.current_bytes()
    );
    println!("tenants memory.stat:\n{}", parent.stats().memory_stat());
    Ok(())
}
