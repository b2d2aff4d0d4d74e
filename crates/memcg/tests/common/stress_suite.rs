// The real-thread stress test shared by `alloc_stress.rs` (`MemcgAlloc`)
// and `alloc_heaps_stress.rs` (`MemcgMimalloc`), included by both with
// `include!`. The including binary sets the global allocator, declares
// `mod common;` and defines `charged(size) -> u64`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::assert_invariants_settle;

const THREADS: usize = 6;
const OPS_PER_THREAD: usize = 30_000;
const TIME_LIMIT: Duration = Duration::from_secs(20);
const EXCHANGE_CAPACITY: usize = THREADS * OPS_PER_THREAD;

fn vec_charge<T>(v: &Vec<T>) -> u64 {
    if v.capacity() == 0 {
        0
    } else {
        charged(v.capacity() * std::mem::size_of::<T>())
    }
}

#[test]
fn threads_allocating_across_groups_end_balanced() {
    let ctrl = memcg::controller();
    let parent = ctrl.create("stress").unwrap();
    let groups: Vec<_> = (0..4)
        .map(|i| parent.create_child(&format!("g{i}")).unwrap())
        .collect();
    let doomed = parent.create_child("doomed").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = Arc::new(Mutex::new(Vec::with_capacity(THREADS)));
    // Blocks handed to another thread to free; never reallocated.
    let exchange: Arc<Mutex<Vec<Vec<u8>>>> =
        Arc::new(Mutex::new(Vec::with_capacity(EXCHANGE_CAPACITY)));
    let start = Instant::now();
    let mut workers = Vec::new();
    for t in 0..THREADS {
        let groups = groups.clone();
        let doomed = doomed.clone();
        let handles = Arc::clone(&handles);
        let exchange = Arc::clone(&exchange);
        let stop = Arc::clone(&stop);
        workers.push(std::thread::spawn(move || {
            let home = if t == 0 {
                &doomed
            } else {
                &groups[t % groups.len()]
            };
            home.attach_current().unwrap();
            handles
                .lock()
                .unwrap()
                .push(memcg::current_thread().unwrap());
            let mut live: Vec<Vec<u8>> = Vec::with_capacity(128);
            let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (t as u64 + 1);
            for i in 0..OPS_PER_THREAD {
                if stop.load(Ordering::Relaxed) || start.elapsed() > TIME_LIMIT {
                    break;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                live.push(vec![t as u8; 8 + (x % 3000) as usize]);
                if live.len() >= 100 {
                    let v = live.swap_remove((x >> 20) as usize % live.len());
                    if i % 3 == 0 {
                        // Freed later by whichever thread takes it.
                        let mut ex = exchange.lock().unwrap();
                        if ex.len() < ex.capacity() {
                            ex.push(v);
                        }
                    }
                }
                if i % 4 == 0 {
                    let taken = exchange.lock().unwrap().pop();
                    drop(taken);
                }
                if t == 0 && i == OPS_PER_THREAD / 2 {
                    // Leave the doomed group, with live objects in it.
                    groups[0].attach_current().unwrap();
                }
            }
            live.truncate(8);
            live
        }));
    }
    // The controller thread moves workers between groups meanwhile.
    let mut k = 0usize;
    while workers.iter().any(|w| !w.is_finished()) {
        let hs = handles.lock().unwrap().clone();
        if let Some(h) = hs.get(k % THREADS.max(1)) {
            if !h.same_task(&hs[0]) {
                let _ = groups[k % groups.len()].attach(h);
            }
        }
        if k.is_multiple_of(64) {
            parent.drain_stocks();
        }
        k += 1;
        std::thread::sleep(Duration::from_micros(200));
        if start.elapsed() > TIME_LIMIT + Duration::from_secs(10) {
            stop.store(true, Ordering::Relaxed);
        }
    }
    let kept: Vec<Vec<Vec<u8>>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    // Worker 0 left `doomed`: remove it with its live objects.
    doomed.remove().unwrap();
    ctrl.drain_stocks();

    let exchanged: u64 = exchange.lock().unwrap().iter().map(vec_charge).sum();
    let kept_bytes: u64 = kept
        .iter()
        .map(|k| vec_charge(k) + k.iter().map(vec_charge).sum::<u64>())
        .sum();
    assert_eq!(
        parent.stats().stat.alloc_bytes,
        exchanged + kept_bytes,
        "the subtree's live bytes are exactly the blocks still alive"
    );
    assert_invariants_settle();

    drop(kept);
    exchange.lock().unwrap().clear();
    // This thread's frees of the workers' blocks are gathered in its task's
    // foreign slot until it flushes.
    memcg::flush_current();
    ctrl.drain_stocks();
    assert_eq!(parent.stats().stat.alloc_bytes, 0);
    assert_eq!(parent.current_bytes(), 0, "usage back to zero");
    for g in &groups {
        assert_eq!(g.current_bytes(), 0, "{}", g.path());
    }
    assert_invariants_settle();
}
