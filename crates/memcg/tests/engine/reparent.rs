use memcg::{ChargeKind, PAGE_SIZE};

use super::util::{check, ctrl, settle};

#[test]
fn remove_with_live_objects_keeps_them_charged_to_parent_until_freed() {
    let c = ctrl("2x1");
    let p = c.create("p").unwrap();
    let child = c.create("p/c").unwrap();
    let t = c.new_task(&child).unwrap();
    let objs: Vec<_> = (0..10)
        .map(|i| t.charge(i % 2, 1000, ChargeKind::Alloc).unwrap())
        .collect();
    t.flush(0).unwrap();
    p.attach(&t.handle()).unwrap();
    child.remove().unwrap();
    check(&c);
    // The stocks caching the child's objcgs were drained: what remains is
    // exactly the pages of the live objects, now owned by the parent.
    let s = p.stats();
    assert_eq!(s.stat.alloc_bytes, 10_000);
    assert_eq!(
        s.stat_local.alloc_bytes, 10_000,
        "reparented stats fold into the parent"
    );
    settle(&c, &[&t]);
    assert_eq!(p.current_bytes(), 4 * PAGE_SIZE); // ceil(5000/4096) on each node
    for (i, o) in objs.into_iter().enumerate() {
        t.uncharge(i % 2, o).unwrap();
    }
    settle(&c, &[&t]);
    assert_eq!(p.current_bytes(), 0);
    assert_eq!(c.root().current_bytes(), 0);
    assert_eq!(p.stats().stat.alloc_bytes, 0);
}

#[test]
fn reservation_survives_group_removal_and_uncharges_parent() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let child = c.create("p/c").unwrap();
    let mut r = child.try_charge(5000).unwrap();
    assert_eq!(p.current_bytes(), 2 * PAGE_SIZE);
    child.remove().unwrap();
    assert_eq!(r.group_path(), "p");
    r.grow(4000).unwrap();
    assert_eq!(p.current_bytes(), 3 * PAGE_SIZE);
    r.shrink(8000);
    assert_eq!(p.current_bytes(), PAGE_SIZE);
    drop(r);
    assert_eq!(p.current_bytes(), 0);
    check(&c);
}

#[test]
fn nested_removals_move_objcgs_up_one_level_at_a_time() {
    let c = ctrl("1x1");
    let a = c.create("a").unwrap();
    let b = c.create("a/b").unwrap();
    let cc = c.create("a/b/c").unwrap();
    let rc = cc.try_charge(100).unwrap();
    let rb = b.try_charge(200).unwrap();
    cc.remove().unwrap();
    assert_eq!(rc.group_path(), "a/b");
    b.remove().unwrap();
    assert_eq!(rc.group_path(), "a");
    assert_eq!(rb.group_path(), "a");
    assert_eq!(a.stats().stat_local.reservation_bytes, 300);
    check(&c);
    drop(rc);
    drop(rb);
    assert_eq!(a.current_bytes(), 0);
    check(&c);
}

#[test]
fn stale_task_cache_of_removed_group_charges_parent_after_refresh() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let child = c.create("p/c").unwrap();
    let t = c.new_task(&child).unwrap();
    let x = t.charge(0, 10, ChargeKind::Alloc).unwrap();
    p.attach(&t.handle()).unwrap();
    child.remove().unwrap();
    let y = t.charge(0, 20, ChargeKind::Alloc).unwrap();
    assert_eq!(t.obj_cgroup(0).unwrap().0, "p");
    t.flush(0).unwrap();
    assert_eq!(p.stats().stat_local.alloc_bytes, 30);
    t.uncharge(0, x).unwrap();
    t.uncharge(0, y).unwrap();
    settle(&c, &[&t]);
    assert_eq!(p.current_bytes(), 0);
}

/// A task of another group frees some of a group's objects, which wait in
/// its foreign slot; the group is removed meanwhile. The slot keeps the
/// removed group's objcg alive, and when it returns the frees they leave
/// the parent, to which the objcg was reparented; nothing is left over.
#[test]
fn foreign_slot_holding_a_removed_groups_objects_returns_them_to_the_parent() {
    let c = ctrl("2x1");
    let p = c.create("p").unwrap();
    let child = c.create("p/c").unwrap();
    let other = c.create("other").unwrap();
    let owner = c.new_task(&child).unwrap();
    let freer = c.new_task(&other).unwrap();
    let mut objs: Vec<_> = (0..20)
        .map(|_| owner.charge(0, 100, ChargeKind::Alloc).unwrap())
        .collect();
    owner.flush(0).unwrap();
    // Ten of them freed by `freer`: gathered in its slot (1,000 bytes).
    for o in objs.drain(..10) {
        freer.uncharge(0, o).unwrap();
    }
    check(&c);
    assert_eq!(
        child.stats().stat.alloc_bytes,
        2000,
        "the slot still holds them"
    );
    p.attach(&owner.handle()).unwrap();
    child.remove().unwrap();
    check(&c);
    // Returned: they leave the parent, which now owns the objcg.
    freer.flush(0).unwrap();
    check(&c);
    assert_eq!(p.stats().stat.alloc_bytes, 1000);
    for o in objs {
        freer.uncharge(0, o).unwrap();
    }
    settle(&c, &[&owner, &freer]);
    assert_eq!(p.stats().stat.alloc_bytes, 0);
    assert_eq!(p.current_bytes(), 0);
    assert_eq!(other.current_bytes(), 0);
}
