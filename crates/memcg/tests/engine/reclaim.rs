use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use memcg::{ChargeKind, Limit, OomPolicy, ReclaimReason, Reservation, PAGE_SIZE};

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
    // One drain, then one reclaimer pass per retry: 16 passes.
    assert_eq!(*calls.lock().unwrap(), 16);
    assert_eq!(g.events_local().oom, 1);
    assert_eq!(g.events_local().max, 1);
    assert_eq!(
        g.events_local().oom_kill,
        0,
        "an explicit charge never kills"
    );
    assert!(!g.is_killed());
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
fn callbacks_run_on_the_reclaimer_thread_and_their_charges_are_forced() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(PAGE_SIZE)).unwrap();
    g.set_oom_policy(OomPolicy::Fail);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c2, g2, seen2) = (c.clone(), g.clone(), Arc::clone(&seen));
    let _h = g.register_reclaimer(move |_| {
        let name = std::thread::current().name().map(str::to_string);
        // A charge the callback makes through a task of the over-limit
        // group: forced past `max` (PF_MEMALLOC), never waiting for itself.
        let task = c2.new_task(&g2).expect("task");
        let forced = task.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc);
        let ok = forced.is_ok();
        if let Ok(ch) = forced {
            task.uncharge(0, ch).unwrap();
        }
        seen2.lock().unwrap().push((name, ok));
        0
    });
    let t = c.new_task(&g).unwrap();
    assert!(t.charge(0, 2 * PAGE_SIZE, ChargeKind::Alloc).is_err());
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    for (name, ok) in seen.iter() {
        assert_eq!(name.as_deref(), Some("memcg-reclaim"));
        assert!(ok, "the callback's charge was refused");
    }
    drop(seen);
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn a_callback_charging_its_own_group_does_not_wait_for_itself() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(PAGE_SIZE)).unwrap();
    // Long enough that a callback waiting for itself would show.
    c.set_reclaim_wait(Duration::from_secs(30));
    let depth = Arc::new(Mutex::new((0u32, 0u32)));
    let (g2, d2) = (g.clone(), Arc::clone(&depth));
    let _h = g.register_reclaimer(move |_| {
        {
            let mut d = d2.lock().unwrap();
            d.0 += 1;
            d.1 = d.1.max(d.0);
        }
        // An explicit charge from inside the callback: a typed error at
        // once (the reclaimer does not wait for its own passes).
        let r = g2.try_charge(4 * PAGE_SIZE);
        assert!(r.is_err());
        d2.lock().unwrap().0 -= 1;
        0
    });
    let start = Instant::now();
    assert!(g.try_charge(2 * PAGE_SIZE).is_err());
    assert!(start.elapsed() < Duration::from_secs(20));
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
    // High reclaim is asked for, not waited for: it runs on the reclaimer
    // thread after the charge returned.
    assert!(c.wait_reclaim_idle(Duration::from_secs(10)));
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
