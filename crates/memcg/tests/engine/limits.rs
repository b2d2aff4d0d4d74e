use memcg::{ChargeKind, Error, Limit, OomPolicy, PAGE_SIZE};

use super::util::{check, ctrl, settle};

#[test]
fn set_limits_reads_back_in_cgroup_v2_forms() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    assert_eq!(g.max(), Limit::Max);
    assert_eq!(g.high(), Limit::Max);
    g.set_max("1G".parse().unwrap()).unwrap();
    g.set_high(Limit::parse("512M\n").unwrap()).unwrap();
    assert_eq!(g.max(), Limit::Bytes(1 << 30));
    assert_eq!(g.high(), Limit::Bytes(512 << 20));
    // Rounded down to whole pages, as the kernel does.
    g.set_max(Limit::Bytes(10_000)).unwrap();
    assert_eq!(g.max(), Limit::Bytes(8192));
    let s = g.stats();
    assert_eq!(s.memory_max(), "8192\n");
    assert_eq!(s.memory_high(), "536870912\n");
    g.set_max(Limit::Max).unwrap();
    assert_eq!(g.stats().memory_max(), "max\n");
}

#[test]
fn set_limit_on_root_returns_root_error() {
    let c = ctrl("1x1");
    assert_eq!(
        c.root().set_max(Limit::Bytes(4096)).unwrap_err(),
        Error::Root { operation: "limit" }
    );
    assert_eq!(
        c.root().set_high(Limit::Bytes(4096)).unwrap_err(),
        Error::Root { operation: "limit" }
    );
    assert_eq!(c.root().max(), Limit::Max);
}

#[test]
fn unparsable_limits_return_invalid_limit() {
    for bad in [
        "",
        "-1",
        "1.5G",
        "12Q",
        "maxx",
        "99999999999999999999",
        "1 G",
    ] {
        assert!(
            matches!(Limit::parse(bad), Err(Error::InvalidLimit { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn charge_over_ancestor_max_fails_with_typed_error_and_counts_events() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let child = c.create("p/c").unwrap();
    p.set_max(Limit::Bytes(64 * PAGE_SIZE)).unwrap();
    let r = child.try_charge(60 * PAGE_SIZE).unwrap();
    let err = match child.try_charge(8 * PAGE_SIZE) {
        Err(Error::Charge(e)) => e,
        other => panic!("expected a charge error, got {other:?}"),
    };
    assert_eq!(err.path(), "p");
    assert_eq!(err.limit_bytes(), 64 * PAGE_SIZE);
    assert_eq!(err.usage_bytes(), 60 * PAGE_SIZE);
    assert_eq!(err.requested_bytes(), 8 * PAGE_SIZE);
    assert!(err.to_string().contains("exceeds limit"));
    // Nothing changed.
    assert_eq!(child.current_bytes(), 60 * PAGE_SIZE);
    assert_eq!(p.events_local().max, 1);
    assert_eq!(p.events_local().oom, 1);
    assert_eq!(p.events().oom, 1);
    assert_eq!(child.events().oom, 0, "events propagate up, not down");
    assert_eq!(c.root().events().oom, 0, "root is excluded");
    drop(r);
    check(&c);
}

#[test]
fn charge_over_max_with_stocked_pages_drains_then_succeeds() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(66 * PAGE_SIZE)).unwrap();
    let t = c.new_task(&g).unwrap();
    // Pre-charges a batch of 64 pages, of which 1 is used.
    let a = t.charge(0, 100, ChargeKind::Alloc).unwrap();
    assert_eq!(g.current_bytes(), 64 * PAGE_SIZE);
    // A 10-page reservation goes around the stock; the drain makes room.
    let r = g.try_charge(10 * PAGE_SIZE).unwrap();
    assert_eq!(g.events_local().max, 1);
    assert_eq!(g.events_local().oom, 0);
    drop(r);
    t.uncharge(0, a).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn force_over_max_policy_charges_and_counts_max_not_oom() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(2 * PAGE_SIZE)).unwrap();
    g.set_oom_policy(OomPolicy::Force);
    assert_eq!(g.oom_policy(), OomPolicy::Force);
    let t = c.new_task(&g).unwrap();
    let x = t.charge(0, 5 * PAGE_SIZE, ChargeKind::Alloc).unwrap();
    assert!(g.current_bytes() >= 5 * PAGE_SIZE);
    assert_eq!(g.events_local().max, 1);
    assert_eq!(g.events_local().oom, 0);
    t.uncharge(0, x).unwrap();
    settle(&c, &[&t]);
}

#[test]
fn set_max_below_usage_is_accepted_and_counts_oom_without_reclaim() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let r = g.try_charge(10 * PAGE_SIZE).unwrap();
    g.set_max(Limit::Bytes(PAGE_SIZE)).unwrap();
    assert_eq!(g.max(), Limit::Bytes(PAGE_SIZE));
    assert_eq!(g.events_local().oom, 1);
    assert!(g.try_charge(1).is_err());
    drop(r);
    assert!(g.try_charge(1).is_ok());
}

#[test]
fn peak_tracks_highest_usage() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    let r = g.try_charge(7 * PAGE_SIZE).unwrap();
    drop(r);
    let _r = g.try_charge(PAGE_SIZE).unwrap();
    assert_eq!(g.peak_bytes(), 7 * PAGE_SIZE);
    assert_eq!(g.stats().memory_peak(), format!("{}\n", 7 * PAGE_SIZE));
    assert_eq!(c.root().peak_bytes(), 7 * PAGE_SIZE);
}

#[test]
fn reservation_grow_over_limit_fails_and_keeps_size() {
    let c = ctrl("1x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(4 * PAGE_SIZE)).unwrap();
    let mut r = g.try_charge(PAGE_SIZE).unwrap();
    assert!(matches!(r.grow(4 * PAGE_SIZE), Err(Error::Charge(_))));
    assert_eq!(r.bytes(), PAGE_SIZE);
    assert_eq!(g.current_bytes(), PAGE_SIZE);
    r.grow(3 * PAGE_SIZE).unwrap();
    r.shrink(u64::MAX);
    assert_eq!(r.bytes(), 0);
    assert_eq!(g.current_bytes(), 0);
    check(&c);
}
