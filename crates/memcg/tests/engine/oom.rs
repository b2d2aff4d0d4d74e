//! OOM policies, kills, fallible regions, spent reservations, and the
//! reclaimer thread's hand-off (the issue on limits).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memcg::{ChargeKind, Error, Limit, OomPolicy, PAGE_SIZE};

use super::util::{check, ctrl, settle};

/// Generous bound that turns a hang into a failure (never a timing claim).
const HANG: Duration = Duration::from_secs(20);

#[test]
fn kill_policy_forces_the_charge_kills_the_group_and_spares_its_sibling() {
    let c = ctrl("1x1");
    let a = c.create("a").unwrap();
    let b = c.create("b").unwrap();
    a.set_max(Limit::Bytes(4 * PAGE_SIZE)).unwrap();
    b.set_max(Limit::Bytes(64 * PAGE_SIZE)).unwrap();
    assert_eq!(a.oom_policy(), OomPolicy::Kill, "the default");
    let ta = c.new_task(&a).unwrap();
    let tb = c.new_task(&b).unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(ta.charge(0, PAGE_SIZE, ChargeKind::Alloc).expect("forced"));
    }
    assert!(a.is_killed());
    assert!(ta.is_killed());
    assert_eq!(a.killed_by().unwrap().path, "a");
    assert_eq!(a.killed_by().unwrap().limit_bytes, 4 * PAGE_SIZE);
    let ev = a.events_local();
    assert_eq!(ev.oom_kill, 1, "one kill, later charges forced silently");
    assert_eq!(ev.oom, 1);
    assert!(a.current_bytes() >= 16 * PAGE_SIZE);
    // The sibling is untouched.
    let x = tb.charge(0, 8 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    assert!(!b.is_killed());
    assert_eq!(b.events_local().oom_kill, 0);
    assert_eq!(c.root().events().oom_kill, 0, "root is excluded");
    tb.uncharge(0, x).unwrap();
    for h in held {
        ta.uncharge(0, h).unwrap();
    }
    settle(&c, &[&ta, &tb]);
    assert_eq!(a.current_bytes(), 0);
    // Revived, the limit applies again (and kills again when hit).
    assert!(a.revive());
    assert!(!a.is_killed());
    let _ok = ta.charge(0, PAGE_SIZE, ChargeKind::Alloc).unwrap();
    assert!(!a.is_killed());
}

#[test]
fn a_kill_of_the_parent_covers_its_children() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let child = c.create("p/c").unwrap();
    p.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    let t = c.new_task(&child).unwrap();
    let x = t.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    assert!(p.is_killed());
    assert!(child.is_killed(), "an ancestor's kill covers the subtree");
    assert_eq!(child.killed_by().unwrap().path, "p");
    assert_eq!(p.events_local().oom_kill, 1);
    assert_eq!(child.events_local().oom_kill, 0);
    assert!(!child.revive(), "the kill is the parent's to revive");
    t.uncharge(0, x).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn fail_policy_refuses_and_counts_oom_without_a_kill() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    g.set_oom_policy(OomPolicy::Fail);
    let t = c.new_task(&g).unwrap();
    let Err(Error::Charge(e)) = t.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc) else {
        panic!("policy fail refuses");
    };
    assert_eq!(e.path(), "g");
    assert_eq!(e.limit_bytes(), 2 * PAGE_SIZE);
    assert!(!g.is_killed());
    assert_eq!(g.events_local().oom, 1);
    assert_eq!(g.events_local().oom_kill, 0);
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0, "a refused charge changes nothing");
}

#[test]
fn force_policy_charges_past_max_and_counts_only_max() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    g.set_oom_policy(OomPolicy::Force);
    let t = c.new_task(&g).unwrap();
    let x = t.charge(0, 5 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    let y = t.charge(0, 5 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    assert!(g.current_bytes() >= 10 * PAGE_SIZE);
    let ev = g.events_local();
    assert!(ev.max >= 2);
    assert_eq!((ev.oom, ev.oom_kill), (0, 0));
    assert!(!g.is_killed());
    // A fallible region and an explicit charge still meet `max`: they can
    // handle the refusal (DESIGN §4.7: "whatever the policy").
    {
        let _f = t.enter_fallible();
        assert!(matches!(
            t.charge(0, PAGE_SIZE, ChargeKind::Alloc),
            Err(Error::Charge(_))
        ));
    }
    assert!(matches!(g.try_charge(PAGE_SIZE), Err(Error::Charge(_))));
    assert_eq!(g.events_local().oom, 2);
    assert_eq!(g.events_local().oom_kill, 0);
    t.uncharge(0, x).unwrap();
    t.uncharge(0, y).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn fallible_regions_and_explicit_charges_fail_under_kill_and_never_kill() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    let t = c.new_task(&g).unwrap();
    {
        let _outer = t.enter_fallible();
        {
            let _nested = t.enter_fallible();
            assert!(t.is_fallible());
        }
        assert!(t.is_fallible(), "regions nest");
        assert!(matches!(
            t.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc),
            Err(Error::Charge(_))
        ));
    }
    assert!(!t.is_fallible());
    assert!(matches!(g.try_charge(3 * PAGE_SIZE), Err(Error::Charge(_))));
    assert!(matches!(
        t.try_charge(0, 3 * PAGE_SIZE),
        Err(Error::Charge(_))
    ));
    let mut r = g.try_charge(PAGE_SIZE).unwrap();
    assert!(matches!(r.grow(2 * PAGE_SIZE), Err(Error::Charge(_))));
    assert!(!g.is_killed());
    assert_eq!(g.events_local().oom, 4);
    assert_eq!(g.events_local().oom_kill, 0);
    drop(r);
    settle(&c, &[&t]);
}

#[test]
fn policy_is_copied_from_the_parent_at_creation_and_settable_any_time() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    p.set_oom_policy(OomPolicy::Fail);
    let a = c.create("p/a").unwrap();
    assert_eq!(a.oom_policy(), OomPolicy::Fail);
    p.set_oom_policy(OomPolicy::Force);
    assert_eq!(
        a.oom_policy(),
        OomPolicy::Fail,
        "existing children keep theirs"
    );
    let b = c.create("p/b").unwrap();
    assert_eq!(b.oom_policy(), OomPolicy::Force);
    a.set_oom_policy(OomPolicy::Kill);
    assert_eq!(a.oom_policy(), OomPolicy::Kill);
    assert_eq!("force".parse::<OomPolicy>().unwrap(), OomPolicy::Force);
    assert!(matches!(
        "killl".parse::<OomPolicy>(),
        Err(Error::InvalidPolicy { .. })
    ));
}

#[test]
fn a_callback_blocked_on_the_waiters_lock_only_delays_the_charge() {
    // The natural cache: insert allocates while holding the cache's lock,
    // and the reclaim callback takes the same lock to evict.
    let c = ctrl("1x1");
    c.set_reclaim_wait(Duration::from_millis(100));
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(8 * PAGE_SIZE)).unwrap();
    let cache = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..6 {
        cache.lock().unwrap().push(g.try_charge(PAGE_SIZE).unwrap());
    }
    let cache2 = Arc::clone(&cache);
    let evicted = Arc::new(Mutex::new(0u64));
    let evicted2 = Arc::clone(&evicted);
    let _h = g.register_reclaimer(move |req| {
        let mut entries = cache2.lock().unwrap();
        let mut freed = 0;
        while freed < req.wanted_bytes {
            match entries.pop() {
                Some(r) => freed += r.bytes(),
                None => break,
            }
        }
        *evicted2.lock().unwrap() += freed;
        freed
    });
    let t = c.new_task(&g).unwrap();
    let start = Instant::now();
    let x = {
        let _locked = cache.lock().unwrap();
        // Over max with the lock held: the callback blocks on it; the
        // charge waits at most the reclaim wait, then the group's policy
        // (kill) lets it through.
        t.charge(0, 4 * PAGE_SIZE, ChargeKind::Alloc)
            .expect("forced")
    };
    assert!(start.elapsed() < HANG);
    assert!(g.is_killed());
    assert_eq!(g.events_local().oom_kill, 1);
    let (_, timeouts, _) = c.reclaimer_counters();
    assert!(timeouts >= 1, "the wait ended at its deadline");
    // Once the lock is free, the callback runs and evicts.
    assert!(c.wait_reclaim_idle(HANG));
    assert!(*evicted.lock().unwrap() > 0);
    t.uncharge(0, x).unwrap();
    cache.lock().unwrap().clear();
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn a_killed_subtree_charges_without_waiting_for_reclaim() {
    let c = ctrl("1x1");
    c.set_reclaim_wait(Duration::from_secs(60));
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    let calls = Arc::new(Mutex::new(0u32));
    let calls2 = Arc::clone(&calls);
    let _h = g.register_reclaimer(move |_| {
        *calls2.lock().unwrap() += 1;
        0
    });
    let t = c.new_task(&g).unwrap();
    // 16 passes that free nothing, then the kill.
    let x = t.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    assert!(g.is_killed());
    let after_kill = *calls.lock().unwrap();
    assert_eq!(after_kill, 16);
    let y = t.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    assert_eq!(*calls.lock().unwrap(), after_kill, "no reclaim asked");
    t.uncharge(0, x).unwrap();
    t.uncharge(0, y).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn kill_callbacks_and_the_killed_future_run_off_the_allocation_path() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let g = c.create("p/g").unwrap();
    g.set_max(Limit::Bytes(PAGE_SIZE)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let _k = g.on_oom_kill(move |k| {
        let name = std::thread::current().name().map(str::to_string);
        seen2.lock().unwrap().push((k.path.clone(), name));
    });
    let seen_parent = Arc::new(Mutex::new(0u32));
    let sp = Arc::clone(&seen_parent);
    let _kp = p.on_oom_kill(move |_| *sp.lock().unwrap() += 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let g2 = g.clone();
    let waiter = std::thread::spawn(move || rt.block_on(g2.killed()));
    let t = c.new_task(&g).unwrap();
    let x = t.charge(0, 2 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    let killed = waiter.join().unwrap();
    assert_eq!(killed.path, "p/g");
    assert!(c.wait_reclaim_idle(HANG));
    assert_eq!(
        *seen.lock().unwrap(),
        [("p/g".to_string(), Some("memcg-reclaim".to_string()))]
    );
    assert_eq!(*seen_parent.lock().unwrap(), 0, "only the killed subtree");
    t.uncharge(0, x).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn a_spent_reservation_pays_for_allocations_once() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(10 * PAGE_SIZE)).unwrap();
    let t = c.new_task(&g).unwrap();
    let mut r = g.try_charge(8 * PAGE_SIZE).unwrap();
    let usage = g.current_bytes();
    assert_eq!(usage, 8 * PAGE_SIZE);
    let (mut paid, extra) = {
        let _spend = t.spend(&mut r).unwrap();
        let paid: Vec<_> = (0..6)
            .map(|_| t.charge(0, PAGE_SIZE, ChargeKind::Alloc).unwrap())
            .collect();
        assert_eq!(g.current_bytes(), usage, "counted once");
        // Runtime charges are not paid from it.
        let rt = t.charge(0, 100, ChargeKind::Runtime).unwrap();
        // Growth of a paid object is paid too.
        let mut grown = t.charge(0, PAGE_SIZE, ChargeKind::Alloc).unwrap();
        t.resize(0, &mut grown, 2 * PAGE_SIZE).unwrap();
        // The reservation is spent out: this charges normally.
        let normal = t.charge(0, PAGE_SIZE, ChargeKind::Alloc).unwrap();
        let mut paid = paid;
        paid.push(grown);
        (paid, vec![rt, normal])
    };
    assert_eq!(r.bytes(), 0);
    assert!(!g.is_killed());
    t.flush(0).unwrap();
    let s = g.stats().stat;
    assert_eq!(s.reservation_bytes, 0);
    assert_eq!(s.alloc_bytes, 9 * PAGE_SIZE);
    check(&c);
    for x in paid.drain(..).chain(extra) {
        t.uncharge(0, x).unwrap();
    }
    drop(r);
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn spending_another_controllers_reservation_is_refused() {
    let c1 = ctrl("1x1");
    let c2 = ctrl("1x1");
    let g1 = c1.create("g").unwrap();
    let g2 = c2.create("g").unwrap();
    let t = c1.new_task(&g1).unwrap();
    let mut r = g2.try_charge(PAGE_SIZE).unwrap();
    assert!(matches!(t.spend(&mut r), Err(Error::ForeignController)));
}

#[test]
fn a_callback_that_removes_the_group_under_a_waiting_charge_keeps_the_table_consistent() {
    // The charge waits for the reclaimer; the callback removes the
    // over-limit group and creates a sibling (which may reuse its table
    // entry) and reserves in it.
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let g = c.create("p/c").unwrap();
    g.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    let made = Arc::new(Mutex::new(Vec::new()));
    let (c2, made2) = (c.clone(), Arc::clone(&made));
    let _h = g.register_reclaimer(move |_| {
        let mut made = made2.lock().unwrap();
        if made.is_empty() && c2.remove("p/c").is_ok() {
            let d = c2.create("p/d").unwrap();
            made.push(d.try_charge(PAGE_SIZE).unwrap());
        }
        0
    });
    let first = g.try_charge(PAGE_SIZE).unwrap();
    let second = g.try_charge(2 * PAGE_SIZE);
    assert!(c.wait_reclaim_idle(HANG));
    let made = std::mem::take(&mut *made.lock().unwrap());
    assert_eq!(made.len(), 1, "the callback removed c and reserved in d");
    assert_eq!(made[0].group_path(), "p/d");
    assert_eq!(first.group_path(), "p", "reparented");
    if let Ok(r) = &second {
        assert_eq!(r.group_path(), "p");
    }
    check(&c);
    drop((first, second, made));
    c.drain_stocks();
    check(&c);
    assert_eq!(p.current_bytes(), 0);
}

#[test]
fn an_allocation_larger_than_what_is_left_takes_the_rest_and_charges_the_difference() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    let mut r = g.try_charge(6000).unwrap();
    let (a, mut b) = {
        let _spend = t.spend(&mut r).unwrap();
        let a = t.charge(0, 4000, ChargeKind::Alloc).unwrap();
        // 2000 bytes left: taken, and 3000 more charged to the same group.
        let b = t.charge(0, 5000, ChargeKind::Alloc).unwrap();
        (a, b)
    };
    assert_eq!(r.bytes(), 0);
    // Growth of `b` after spending ended is charged normally.
    t.resize(0, &mut b, 6000).unwrap();
    t.flush(0).unwrap();
    let s = g.stats().stat;
    assert_eq!(s.reservation_bytes, 0);
    assert_eq!(s.alloc_bytes, 10_000);
    check(&c);
    t.uncharge(0, a).unwrap();
    t.uncharge(0, b).unwrap();
    drop(r);
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn a_blocked_callback_of_one_tenant_does_not_hold_up_anothers_reclaim() {
    let c = ctrl("1x1");
    c.set_reclaim_wait(Duration::from_secs(10));
    let a = c.create("a").unwrap();
    let b = c.create("b").unwrap();
    a.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    b.set_max(Limit::Bytes(4 * PAGE_SIZE)).unwrap();
    // `a`'s callback blocks until the test lets it go.
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let gate2 = Arc::clone(&gate);
    let _ha = a.register_reclaimer(move |_| {
        drop(gate2.lock().unwrap());
        0
    });
    let cache = Arc::new(Mutex::new(vec![b.try_charge(3 * PAGE_SIZE).unwrap()]));
    let cache2 = Arc::clone(&cache);
    let _hb = b.register_reclaimer(move |_| cache2.lock().unwrap().pop().map_or(0, |r| r.bytes()));
    // A charge of `a` over max: its callback blocks one reclaimer thread.
    let ta_ctrl = c.clone();
    let a2 = a.clone();
    let waiting = std::thread::spawn(move || {
        let t = ta_ctrl.new_task(&a2).unwrap();
        let x = t.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
        t.uncharge(0, x).unwrap();
    });
    // Meanwhile `b` meets its max; another thread serves its callback.
    let tb = c.new_task(&b).unwrap();
    let y = tb.charge(0, 2 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    assert!(!b.is_killed(), "b's reclaim ran while a's callback blocked");
    assert!(cache.lock().unwrap().is_empty());
    drop(held);
    waiting.join().unwrap();
    tb.uncharge(0, y).unwrap();
    settle(&c, &[&tb]);
}

/// A callback that blocks on its first call until `release` is set.
fn blocking_once(
    calls: Arc<std::sync::atomic::AtomicU64>,
    entered: Arc<std::sync::atomic::AtomicBool>,
    release: Arc<std::sync::atomic::AtomicBool>,
) -> impl Fn(&memcg::ReclaimRequest) -> u64 + Send + Sync {
    use std::sync::atomic::Ordering::SeqCst;
    move |_| {
        if calls.fetch_add(1, SeqCst) == 0 {
            entered.store(true, SeqCst);
            while !release.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        0
    }
}

#[test]
fn a_request_that_overflows_the_queue_while_its_group_is_served_is_not_lost() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    let wait = |f: &AtomicBool| {
        let start = Instant::now();
        while !f.load(SeqCst) && start.elapsed() < HANG {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let c = memcg::Controller::with_config(
        memcg::Topology::from_spec("1x1").unwrap(),
        memcg::engine::Config::default().reclaimer_threads(2),
    );
    let over_high = |name: &str| {
        let g = c.create(name).unwrap();
        g.set_high(Limit::Bytes(0)).unwrap();
        g
    };
    let (g, h) = (over_high("g"), over_high("h"));
    let flags = || {
        (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        )
    };
    let (g_calls, g_in, g_go) = flags();
    let (h_calls, h_in, h_go) = flags();
    let _hg = g.register_reclaimer(blocking_once(
        Arc::clone(&g_calls),
        Arc::clone(&g_in),
        Arc::clone(&g_go),
    ));
    let _hh = h.register_reclaimer(blocking_once(
        Arc::clone(&h_calls),
        Arc::clone(&h_in),
        Arc::clone(&h_go),
    ));
    // Both reclaimer threads block: one in g's pass, one in h's.
    let mut keep = vec![g.try_charge(PAGE_SIZE).unwrap()];
    wait(&g_in);
    keep.push(h.try_charge(PAGE_SIZE).unwrap());
    wait(&h_in);
    // Fill the queue (1024 entries) so that g's next request overflows.
    let fillers: Vec<_> = (0..1100)
        .map(|i| {
            let f = over_high(&format!("f{i}"));
            let handle = f.register_reclaimer(|_| 0);
            (f, handle)
        })
        .collect();
    for (f, _) in &fillers {
        keep.push(f.try_charge(PAGE_SIZE).unwrap());
    }
    keep.push(g.try_charge(PAGE_SIZE).unwrap());
    // h's thread serves the queue and the overflow scan, which finds g
    // being served; then g's pass ends.
    h_go.store(true, SeqCst);
    let start = Instant::now();
    // h's pass and the 1100 fillers' (some through the scan) are served.
    while c.reclaimer_counters().0 < 1101 && start.elapsed() < HANG {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(c.reclaimer_counters().0 >= 1101);
    g_go.store(true, SeqCst);
    assert!(c.wait_reclaim_idle(HANG));
    let after_first = g_calls.load(SeqCst);
    assert!(after_first >= 2, "the overflowed request was served again");
    // And g's later requests are heard.
    keep.push(g.try_charge(PAGE_SIZE).unwrap());
    assert!(c.wait_reclaim_idle(HANG));
    assert!(
        g_calls.load(SeqCst) > after_first,
        "g's requests still reach its callback"
    );
    drop(keep);
    let _ = h_calls;
}
