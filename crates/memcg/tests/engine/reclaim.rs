use std::sync::{Arc, Mutex};

use memcg::{ChargeKind, Limit, ReclaimReason, Reservation, PAGE_SIZE};

use super::util::{check, ctrl, settle};

#[test]
fn reclaimer_that_frees_enough_lets_the_charge_succeed() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(8 * PAGE_SIZE)).unwrap();
    let cache: Arc<Mutex<Vec<Reservation>>> = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..6 {
        cache.lock().unwrap().push(g.try_charge(PAGE_SIZE).unwrap());
    }
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (cache2, req2) = (Arc::clone(&cache), Arc::clone(&requests));
    let _h = g.register_reclaimer(move |req| {
        req2.lock().unwrap().push((req.wanted_bytes, req.reason));
        let mut freed = 0;
        let mut cache = cache2.lock().unwrap();
        while freed < req.wanted_bytes {
            let Some(r) = cache.pop() else { break };
            freed += r.bytes();
        }
        freed
    });
    let r = g.try_charge(4 * PAGE_SIZE).unwrap();
    // Reclaim asks for at least 32 pages (SWAP_CLUSTER_MAX).
    assert_eq!(
        *requests.lock().unwrap(),
        [(32 * PAGE_SIZE, ReclaimReason::Max)]
    );
    assert!(cache.lock().unwrap().len() <= 2);
    assert_eq!(g.events_local().max, 1);
    assert_eq!(g.events_local().oom, 0);
    drop(r);
    cache.lock().unwrap().clear();
    check(&c);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn reclaimers_run_largest_group_first() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let small = c.create("p/small").unwrap();
    let big = c.create("p/big").unwrap();
    p.set_max(Limit::Bytes(10 * PAGE_SIZE)).unwrap();
    let _s = small.try_charge(2 * PAGE_SIZE).unwrap();
    let big_r = Arc::new(Mutex::new(Some(big.try_charge(7 * PAGE_SIZE).unwrap())));
    let order = Arc::new(Mutex::new(Vec::new()));
    let o1 = Arc::clone(&order);
    let _h1 = small.register_reclaimer(move |_| {
        o1.lock().unwrap().push("small");
        0
    });
    let (o2, b2) = (Arc::clone(&order), Arc::clone(&big_r));
    let _h2 = big.register_reclaimer(move |_| {
        o2.lock().unwrap().push("big");
        b2.lock().unwrap().take().map_or(0, |r| r.bytes())
    });
    let _r = p.try_charge(3 * PAGE_SIZE).unwrap();
    // The big group first; it frees less than the 32 pages asked, so the
    // small one is asked next.
    assert_eq!(*order.lock().unwrap(), ["big", "small"]);
}

#[test]
fn reclaim_that_frees_nothing_fails_after_retries_and_counts_oom() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    let calls = Arc::new(Mutex::new(0u32));
    let calls2 = Arc::clone(&calls);
    let _h = g.register_reclaimer(move |_| {
        *calls2.lock().unwrap() += 1;
        0
    });
    assert!(g.try_charge(3 * PAGE_SIZE).is_err());
    // One reclaim per attempt: the first, the retry after the drain, and 16 retries.
    assert_eq!(*calls.lock().unwrap(), 18);
    assert_eq!(g.events_local().oom, 1);
    assert_eq!(g.events_local().max, 1);
}

#[test]
fn dropped_handle_unregisters_and_keep_leaves_registered() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(PAGE_SIZE)).unwrap();
    let calls = Arc::new(Mutex::new(0u32));
    let c1 = Arc::clone(&calls);
    drop(g.register_reclaimer(move |_| {
        *c1.lock().unwrap() += 1;
        0
    }));
    assert!(g.try_charge(2 * PAGE_SIZE).is_err());
    assert_eq!(*calls.lock().unwrap(), 0);
    let c2 = Arc::clone(&calls);
    g.register_reclaimer(move |_| {
        *c2.lock().unwrap() += 1;
        0
    })
    .keep();
    assert!(g.try_charge(2 * PAGE_SIZE).is_err());
    assert!(*calls.lock().unwrap() > 0);
}

#[test]
fn charges_inside_reclaim_through_the_task_are_forced_without_recursion() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(PAGE_SIZE)).unwrap();
    let t = Arc::new(OneThread(c.new_task(&g).unwrap()));
    // The callback charges through the same task while reclaim runs, as an
    // allocation made by the callback on the charging thread would.
    let inner = Arc::new(Mutex::new(Vec::new()));
    let depth = Arc::new(Mutex::new(0u32));
    let (t2, inner2, depth2) = (Arc::clone(&t), Arc::clone(&inner), Arc::clone(&depth));
    let _h = g.register_reclaimer(move |_| {
        *depth2.lock().unwrap() += 1;
        inner2.lock().unwrap().push(
            t2.0.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc)
                .expect("forced"),
        );
        0
    });
    let t = &t.0;
    assert!(t.charge(0, 2 * PAGE_SIZE, ChargeKind::Alloc).is_err());
    assert!(*depth.lock().unwrap() >= 1);
    assert!(!inner.lock().unwrap().is_empty());
    assert!(g.current_bytes() > PAGE_SIZE, "forced charges go past max");
    for ch in inner.lock().unwrap().drain(..) {
        t.uncharge(0, ch).unwrap();
    }
    settle(&c, &[t]);
    assert_eq!(g.current_bytes(), 0);
}

/// Lets a reclaim callback reach the task of the thread that runs it.
struct OneThread(memcg::Task);
// SAFETY: the test uses the task from the main thread only: the callback
// runs synchronously inside `charge` on that same thread.
unsafe impl Sync for OneThread {}
// SAFETY: as above; the wrapper is dropped on the main thread.
unsafe impl Send for OneThread {}

#[test]
fn reclaimer_is_never_reentered_by_its_own_charges() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(PAGE_SIZE)).unwrap();
    let depth = Arc::new(Mutex::new((0u32, 0u32)));
    let (g2, d2) = (g.clone(), Arc::clone(&depth));
    let _h = g.register_reclaimer(move |_| {
        {
            let mut d = d2.lock().unwrap();
            d.0 += 1;
            d.1 = d.1.max(d.0);
        }
        // A task-less charge from inside the callback: it skips this
        // (running) callback instead of recursing.
        let _ = g2.try_charge(4 * PAGE_SIZE);
        d2.lock().unwrap().0 -= 1;
        0
    });
    assert!(g.try_charge(2 * PAGE_SIZE).is_err());
    assert_eq!(depth.lock().unwrap().1, 1);
}

#[test]
fn over_high_counts_high_and_reclaims_excess() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_high(Limit::Bytes(4 * PAGE_SIZE)).unwrap();
    let wanted = Arc::new(Mutex::new(Vec::new()));
    let w2 = Arc::clone(&wanted);
    let _h = g.register_reclaimer(move |req| {
        w2.lock().unwrap().push((req.wanted_bytes, req.reason));
        0
    });
    let _r = g.try_charge(6 * PAGE_SIZE).unwrap();
    assert_eq!(g.events_local().high, 1);
    assert_eq!(
        *wanted.lock().unwrap(),
        [(2 * PAGE_SIZE, ReclaimReason::High)]
    );
}

#[test]
fn lowering_max_below_usage_runs_reclaim_until_under() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let held = Arc::new(Mutex::new(
        (0..8)
            .map(|_| g.try_charge(PAGE_SIZE).unwrap())
            .collect::<Vec<_>>(),
    ));
    let h2 = Arc::clone(&held);
    let _h = g.register_reclaimer(move |req| {
        assert_eq!(req.reason, ReclaimReason::LimitLowered);
        h2.lock().unwrap().pop().map_or(0, |r| r.bytes())
    });
    g.set_max(Limit::Bytes(5 * PAGE_SIZE)).unwrap();
    assert_eq!(held.lock().unwrap().len(), 5);
    assert_eq!(g.events_local().oom, 0);
}
