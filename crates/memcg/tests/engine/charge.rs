use memcg::{ChargeKind, Error, PAGE_SIZE};

use super::util::{check, ctrl, settle};

const BATCH_BYTES: u64 = 64 * PAGE_SIZE;

#[test]
fn charge_miss_charges_a_batch_of_64_pages() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    let ch = t.charge(0, 100, ChargeKind::Alloc).unwrap();
    assert_eq!(ch.bytes(), 100);
    assert_eq!(ch.kind(), ChargeKind::Alloc);
    // One page for the object and three more topping up the task's byte
    // cache to its 4 pages, all through the objcg; 60 pre-charged in the
    // page stock.
    assert_eq!(g.current_bytes(), BATCH_BYTES);
    assert_eq!(c.root().current_bytes(), BATCH_BYTES);
    assert_eq!(g.stats().stat.kernel_bytes, 4 * PAGE_SIZE);
    check(&c);
    settle(&c, &[&t]);
    // After draining: ceil(100 / 4096) pages.
    assert_eq!(g.current_bytes(), PAGE_SIZE);
    assert_eq!(g.stats().stat.alloc_bytes, 100);
    t.uncharge(0, ch).unwrap();
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
    assert_eq!(g.stats().stat.alloc_bytes, 0);
    assert_eq!(g.peak_bytes(), BATCH_BYTES);
}

#[test]
fn charge_remainder_serves_later_charges_without_new_pages() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    let mut charges = Vec::new();
    for _ in 0..64 {
        charges.push(t.charge(0, 64, ChargeKind::Alloc).unwrap());
    }
    // 64 × 64 bytes = exactly one page, from one ceil'd charge and the
    // cache's top-up (three pages more, served from the page stock).
    assert_eq!(g.stats().stat.kernel_bytes, 4 * PAGE_SIZE);
    let slow = c.counters().slow_charges;
    assert!(
        slow <= 2,
        "the remainder should serve the rest: {slow} slow charges"
    );
    for ch in charges {
        t.uncharge(0, ch).unwrap();
    }
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn charge_large_object_ceils_to_pages() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    let ch = t.charge(0, 3 * PAGE_SIZE + 1, ChargeKind::Alloc).unwrap();
    settle(&c, &[&t]);
    // Once the task's cache and the stocks are drained, what the objcg
    // holds is the object's 4 pages.
    assert_eq!(g.stats().stat.kernel_bytes, 4 * PAGE_SIZE);
    assert_eq!(g.current_bytes(), 4 * PAGE_SIZE);
    c.uncharge(0, ch).unwrap();
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn uncharge_through_cpu_stock_returns_whole_pages_above_one_page() {
    let c = ctrl("1x2");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    let ch = t.charge(0, 3 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    t.flush(0).unwrap();
    assert_eq!(g.stats().stat.kernel_bytes, 3 * PAGE_SIZE);
    // Freed on another CPU without a task: bytes go to CPU 1's stock, which
    // keeps at most a page and returns the rest.
    c.uncharge(1, ch).unwrap();
    assert!(g.stats().stat.kernel_bytes <= PAGE_SIZE);
    check(&c);
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn free_on_other_cpu_and_task_keeps_counters_balanced() {
    let c = ctrl("2x2");
    let g = c.create("g").unwrap();
    let producer = c.new_task(&g).unwrap();
    let consumer = c.new_task(&c.root()).unwrap();
    let mut live = Vec::new();
    for i in 0..200u64 {
        live.push(
            producer
                .charge((i % 4) as usize, 24 + i * 7, ChargeKind::Alloc)
                .unwrap(),
        );
    }
    check(&c);
    for (i, ch) in live.into_iter().enumerate() {
        consumer.uncharge(3 - i % 4, ch).unwrap();
        if i % 50 == 0 {
            check(&c);
        }
    }
    settle(&c, &[&producer, &consumer]);
    assert_eq!(g.current_bytes(), 0);
    assert_eq!(c.root().current_bytes(), 0);
}

#[test]
fn several_objcgs_share_a_cpu_without_evicting_each_other() {
    let c = ctrl("1x1");
    let exempt = c.new_exempt_task().unwrap();
    let mut tasks = Vec::new();
    for i in 0..memcg::engine::NR_OBJ_STOCK {
        let g = c.create(&format!("g{i}")).unwrap();
        tasks.push(c.new_task(&g).unwrap());
    }
    // Every task frees through the CPU stock (the exempt task caches none
    // of their objcgs), round robin.
    for _ in 0..20 {
        for t in &tasks {
            let ch = t.charge(0, 100, ChargeKind::Alloc).unwrap();
            exempt.uncharge(0, ch).unwrap();
        }
    }
    assert_eq!(c.counters().obj_stock_replacements, 0);
    // One more objcg than slots: now slots get replaced.
    let extra = c.create("extra").unwrap();
    let te = c.new_task(&extra).unwrap();
    for _ in 0..3 {
        for t in tasks.iter().chain([&te]) {
            let ch = t.charge(0, 100, ChargeKind::Alloc).unwrap();
            exempt.uncharge(0, ch).unwrap();
        }
    }
    assert!(c.counters().obj_stock_replacements > 0);
    check(&c);
}

#[test]
fn charge_bad_sizes_and_cpus_return_typed_errors() {
    let c = ctrl("1x2");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    assert!(matches!(
        t.charge(0, 0, ChargeKind::Alloc),
        Err(Error::InvalidSize { bytes: 0, .. })
    ));
    assert!(matches!(
        t.charge(0, u64::MAX, ChargeKind::Alloc),
        Err(Error::InvalidSize { .. })
    ));
    assert_eq!(
        t.charge(7, 8, ChargeKind::Alloc).unwrap_err(),
        Error::UnknownCpu {
            cpu: 7,
            nr_cpu_ids: 2
        }
    );
    let ch = t.charge(1, 8, ChargeKind::Alloc).unwrap();
    let ch = match t.uncharge(9, ch) {
        Err(Error::UnknownCpu { cpu: 9, .. }) => t.charge(1, 8, ChargeKind::Alloc).unwrap(),
        other => panic!("expected UnknownCpu, got {other:?}"),
    };
    t.uncharge(1, ch).unwrap();
    assert!(matches!(
        g.try_charge(u64::MAX),
        Err(Error::InvalidSize { .. })
    ));
    assert!(matches!(
        g.try_charge_on_node(3, 1),
        Err(Error::UnknownNode { node: 3, .. })
    ));
    check(&c);
}

#[test]
fn charge_raw_roundtrip_uncharges_the_same_objcg() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    let raw = t.charge(0, 4000, ChargeKind::Alloc).unwrap().into_raw();
    // SAFETY: `raw` comes from `into_raw` of a 4000-byte Alloc charge of
    // `c`, which is alive, and is rebuilt once.
    let back = unsafe { memcg::engine::Charge::from_raw(raw, 4000, ChargeKind::Alloc, &c) };
    c.uncharge(0, back).unwrap();
    settle(&c, &[&t]);
    assert_eq!(g.current_bytes(), 0);
}

#[test]
fn drain_node_stocks_drains_one_objcg_only() {
    let c = ctrl("1x1");
    let a = c.create("a").unwrap();
    let b = c.create("b").unwrap();
    let ta = c.new_task(&a).unwrap();
    let tb = c.new_task(&b).unwrap();
    let x = ta.charge(0, 10, ChargeKind::Alloc).unwrap();
    let y = tb.charge(0, 10, ChargeKind::Alloc).unwrap();
    ta.flush(0).unwrap();
    tb.flush(0).unwrap();
    let (a_before, b_before) = (a.current_bytes(), b.current_bytes());
    assert!(
        b_before > 32 * PAGE_SIZE,
        "b's page stock holds most of its batch"
    );
    a.drain_node_stocks(0).unwrap();
    assert!(a.current_bytes() < a_before);
    assert!(
        a.current_bytes() <= 2 * PAGE_SIZE,
        "a keeps its object's page and the pool"
    );
    assert_eq!(b.current_bytes(), b_before);
    assert!(matches!(
        a.drain_node_stocks(5),
        Err(Error::UnknownNode { .. })
    ));
    ta.uncharge(0, x).unwrap();
    tb.uncharge(0, y).unwrap();
    settle(&c, &[&ta, &tb]);
}

#[test]
fn resize_charges_only_the_difference_to_the_same_objcg() {
    let c = ctrl("1x2");
    let a = c.create("a").unwrap();
    let b = c.create("b").unwrap();
    let t = c.new_task(&a).unwrap();
    let mut ch = t.charge(0, 1000, ChargeKind::Alloc).unwrap();
    // The task moves; the object's growth still belongs to `a`.
    b.attach(&t.handle()).unwrap();
    t.resize(0, &mut ch, 9000).unwrap();
    assert_eq!(ch.bytes(), 9000);
    t.flush(0).unwrap();
    assert_eq!(a.stats().stat.alloc_bytes, 9000);
    assert_eq!(b.stats().stat.alloc_bytes, 0);
    c.resize(1, &mut ch, 10).unwrap();
    t.flush(0).unwrap();
    assert_eq!(a.stats().stat.alloc_bytes, 10);
    assert!(matches!(
        t.resize(0, &mut ch, 0),
        Err(Error::InvalidSize { .. })
    ));
    a.set_max(memcg::Limit::Bytes(PAGE_SIZE)).unwrap();
    {
        // A growth a fallible region would see refused (the default OOM
        // policy would let it through and kill `a`).
        let _fallible = t.enter_fallible();
        assert!(matches!(
            t.resize(0, &mut ch, 10 * PAGE_SIZE),
            Err(Error::Charge(_))
        ));
    }
    assert_eq!(ch.bytes(), 10);
    assert!(!a.is_killed());
    t.uncharge(0, ch).unwrap();
    settle(&c, &[&t]);
    assert_eq!(a.current_bytes(), 0);
}

#[test]
fn charge_root_without_task_is_accounted_to_root() {
    let c = ctrl("2x1");
    let ch = c.charge_root(1, 500, ChargeKind::Runtime).unwrap();
    let s = c.root().stats();
    assert_eq!(s.numa[1].local.runtime_bytes, 500);
    assert!(matches!(
        c.charge_root(2, 1, ChargeKind::Alloc),
        Err(Error::UnknownCpu { .. })
    ));
    c.uncharge(0, ch).unwrap();
    settle(&c, &[]);
    assert_eq!(c.root().current_bytes(), 0);
}
