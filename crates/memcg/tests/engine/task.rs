use memcg::engine::TaskCacheMode;
use memcg::{ChargeKind, Controller, Error, Topology};

use super::util::{check, ctrl, settle};

/// Bytes of live allocator objects per node of `path` (hierarchical).
fn alloc_per_node(c: &Controller, path: &str) -> Vec<u64> {
    c.group(path)
        .unwrap()
        .stats()
        .numa
        .iter()
        .map(|n| n.hierarchical.alloc_bytes)
        .collect()
}

#[test]
fn task_moving_to_node1_charges_node1_with_per_node_cache_and_node0_with_single_cache() {
    for (mode, want) in [
        (TaskCacheMode::PerNode, vec![1000, 3000]),
        (TaskCacheMode::Single, vec![4000, 0]),
    ] {
        // CPU 0 on node 0, CPU 1 on node 1.
        let c = Controller::new(Topology::from_spec("2x1").unwrap());
        let g = c.create("g").unwrap();
        let t = c.new_task_with_mode(&g, mode).unwrap();
        assert_eq!(t.mode(), mode);
        let a = t.charge(0, 1000, ChargeKind::Alloc).unwrap();
        let b = t.charge(1, 3000, ChargeKind::Alloc).unwrap();
        t.flush(1).unwrap();
        assert_eq!(alloc_per_node(&c, "g"), want, "{mode:?}");
        assert_eq!(t.obj_cgroup(1).unwrap(), ("g".to_string(), want_node(mode)));
        t.uncharge(1, a).unwrap();
        t.uncharge(1, b).unwrap();
        settle(&c, &[&t]);
        assert_eq!(g.current_bytes(), 0);
    }
}

fn want_node(mode: TaskCacheMode) -> usize {
    match mode {
        TaskCacheMode::PerNode => 1,
        TaskCacheMode::Single => 0,
    }
}

#[test]
fn new_task_starts_stale_and_refreshes_on_first_charge() {
    let c = ctrl("2x1");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    assert!(t.is_stale());
    assert_eq!(t.refreshes(), 0);
    let ch = t.charge(0, 8, ChargeKind::Alloc).unwrap();
    assert!(!t.is_stale());
    assert_eq!(t.refreshes(), 1);
    let ch2 = t.charge(1, 8, ChargeKind::Alloc).unwrap();
    assert_eq!(
        t.refreshes(),
        1,
        "moving node does not refresh the per-node cache"
    );
    t.uncharge(0, ch).unwrap();
    t.uncharge(0, ch2).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn attach_from_another_thread_marks_stale_and_next_charge_uses_new_group() {
    let c = ctrl("2x1");
    let a = c.create("a").unwrap();
    let b = c.create("b").unwrap();
    let t = c.new_task(&a).unwrap();
    let first = t.charge(0, 500, ChargeKind::Alloc).unwrap();
    let handle = t.handle();
    let b2 = b.clone();
    std::thread::spawn(move || b2.attach(&handle).unwrap())
        .join()
        .unwrap();
    assert!(t.is_stale());
    assert_eq!(a.nr_tasks(), 0);
    assert_eq!(b.nr_tasks(), 1);
    assert_eq!(t.group().unwrap(), b);
    let second = t.charge(1, 700, ChargeKind::Alloc).unwrap();
    assert_eq!(t.obj_cgroup(0).unwrap().0, "b");
    t.flush(0).unwrap();
    assert_eq!(a.stats().stat.alloc_bytes, 500);
    assert_eq!(b.stats().stat.alloc_bytes, 700);
    // The first object still uncharges its own group.
    t.uncharge(0, first).unwrap();
    t.uncharge(0, second).unwrap();
    settle(&c, &[&t]);
    assert_eq!(a.current_bytes(), 0);
    assert_eq!(b.current_bytes(), 0);
}

#[test]
fn exempt_task_charges_root() {
    let c = ctrl("2x1");
    let t = c.new_exempt_task().unwrap();
    assert!(t.is_exempt());
    assert!(!t.is_stale());
    let ch = t.charge(1, 64, ChargeKind::Alloc).unwrap();
    assert_eq!(t.obj_cgroup(1).unwrap(), (String::new(), 1));
    assert_eq!(c.root().stats().stat_local.alloc_bytes, 0);
    t.flush(1).unwrap();
    assert_eq!(c.root().stats().numa[1].local.alloc_bytes, 64);
    t.uncharge(1, ch).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn set_exempt_drops_cached_objcgs_and_charges_root() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    let a = t.charge(0, 10, ChargeKind::Alloc).unwrap();
    t.set_exempt(true);
    let b = t.charge(0, 10, ChargeKind::Alloc).unwrap();
    assert_eq!(t.obj_cgroup(0).unwrap().0, "");
    t.flush(0).unwrap();
    assert_eq!(g.stats().stat.alloc_bytes, 10);
    assert_eq!(c.root().stats().stat_local.alloc_bytes, 10);
    t.uncharge(0, a).unwrap();
    t.uncharge(0, b).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn exit_drops_references_and_later_charges_go_to_root() {
    let c = ctrl("2x1");
    let g = c.create("g").unwrap();
    let mut t = c.new_task(&g).unwrap();
    let live = t.charge(0, 300, ChargeKind::Alloc).unwrap();
    t.exit();
    assert!(t.has_exited());
    assert_eq!(g.nr_tasks(), 0);
    assert!(t.group().is_none());
    check(&c);
    let after = t.charge(1, 50, ChargeKind::Alloc).unwrap();
    assert_eq!(t.obj_cgroup(1).unwrap(), (String::new(), 1));
    assert_eq!(g.stats().stat.alloc_bytes, 300);
    assert_eq!(c.root().stats().stat_local.alloc_bytes, 50);
    assert_eq!(g.attach(&t.handle()).unwrap_err(), Error::TaskExited);
    // Frees after exit still uncharge the right objcg.
    t.uncharge(0, live).unwrap();
    t.uncharge(1, after).unwrap();
    t.exit();
    g.remove().unwrap();
    settle(&c, &[]);
    assert_eq!(c.root().current_bytes(), 0);
}

#[test]
fn enter_overrides_nest_and_restore() {
    let c = ctrl("1x1");
    let a = c.create("a").unwrap();
    let b = c.create("b").unwrap();
    let d = c.create("d").unwrap();
    let t = c.new_task(&a).unwrap();
    let mut charges = Vec::new();
    charges.push(t.charge(0, 1, ChargeKind::Alloc).unwrap());
    {
        let _outer = t.enter(&b).unwrap();
        charges.push(t.charge(0, 10, ChargeKind::Alloc).unwrap());
        {
            let _inner = t.enter(&d).unwrap();
            charges.push(t.charge(0, 100, ChargeKind::Alloc).unwrap());
        }
        charges.push(t.charge(0, 10, ChargeKind::Alloc).unwrap());
    }
    charges.push(t.charge(0, 1, ChargeKind::Alloc).unwrap());
    t.flush(0).unwrap();
    assert_eq!(a.stats().stat.alloc_bytes, 2);
    assert_eq!(b.stats().stat.alloc_bytes, 20);
    assert_eq!(d.stats().stat.alloc_bytes, 100);
    for ch in charges {
        t.uncharge(0, ch).unwrap();
    }
    settle(&c, &[&t]);
}

#[test]
fn override_of_group_removed_meanwhile_charges_parent() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let q = c.create("p/q").unwrap();
    let t = c.new_task(&c.root()).unwrap();
    let guard = t.enter(&q).unwrap();
    q.remove().unwrap();
    let ch = t.charge(0, 123, ChargeKind::Alloc).unwrap();
    drop(guard);
    t.flush(0).unwrap();
    assert_eq!(p.stats().stat_local.alloc_bytes, 123);
    t.uncharge(0, ch).unwrap();
    settle(&c, &[&t]);
    assert_eq!(p.current_bytes(), 0);
}

#[test]
fn reservation_through_task_charges_its_group_and_node() {
    let c = ctrl("2x1");
    let g = c.create("g").unwrap();
    let t = c.new_task(&g).unwrap();
    let r = t.try_charge(1, 10_000).unwrap();
    assert_eq!(r.group_path(), "g");
    let s = g.stats();
    assert_eq!(s.numa[1].hierarchical.reservation_bytes, 10_000);
    assert_eq!(s.numa[0].hierarchical.reservation_bytes, 0);
    assert_eq!(g.current_bytes(), 3 * 4096);
    drop(r);
    assert_eq!(g.current_bytes(), 0);
    settle(&c, &[&t]);
}

#[test]
fn obj_cgroup_unknown_node_returns_error() {
    let c = ctrl("2x1");
    let t = c.new_task(&c.root()).unwrap();
    assert_eq!(
        t.obj_cgroup(2).unwrap_err(),
        Error::UnknownNode {
            node: 2,
            nr_node_ids: 2
        }
    );
}

#[test]
fn many_tasks_on_many_threads_attach_and_charge_balanced() {
    let c = ctrl("2x2");
    let groups: Vec<_> = (0..3)
        .map(|i| c.create(&format!("g{i}")).unwrap())
        .collect();
    let mut handles = Vec::new();
    let mut joins = Vec::new();
    for i in 0..4 {
        let t = c.new_task(&groups[i % 3]).unwrap();
        handles.push(t.handle());
        let c2 = c.clone();
        joins.push(std::thread::spawn(move || {
            let mut live = Vec::new();
            for j in 0..2000usize {
                let cpu = (i + j / 100) % 4;
                live.push(
                    t.charge(cpu, 16 + (j % 13) as u64 * 40, ChargeKind::Alloc)
                        .unwrap(),
                );
                if live.len() > 50 {
                    let ch = live.swap_remove(j % live.len());
                    t.uncharge(cpu, ch).unwrap();
                }
            }
            for ch in live {
                c2.uncharge(i % 4, ch).unwrap();
            }
            drop(t);
        }));
    }
    for k in 0..200 {
        groups[k % 3].attach(&handles[k % 4]).ok();
        if k % 20 == 0 {
            groups[k % 3].drain_stocks();
        }
    }
    for j in joins {
        j.join().unwrap();
    }
    settle(&c, &[]);
    for g in &groups {
        assert_eq!(g.current_bytes(), 0, "{}", g.path());
    }
    assert_eq!(c.root().current_bytes(), 0);
}
