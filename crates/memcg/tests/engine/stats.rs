use memcg::{ChargeKind, Limit, PAGE_SIZE};

use super::util::{ctrl, settle};

#[test]
fn text_formats_follow_cgroup_v2() {
    let c = ctrl("2x1");
    let g = c.create("g").unwrap();
    g.set_max(Limit::Bytes(1 << 20)).unwrap();
    let t = c.new_task(&g).unwrap();
    let a = t.charge(0, 100, ChargeKind::Alloc).unwrap();
    let b = t.charge(1, 5000, ChargeKind::Runtime).unwrap();
    let r = g.try_charge_on_node(1, 10).unwrap();
    settle(&c, &[&t]);
    let s = g.stats();
    assert_eq!(
        s.memory_stat(),
        format!(
            "kernel {}\nalloc 100\nruntime 5000\nreservation 10\n",
            3 * PAGE_SIZE
        )
    );
    assert_eq!(
        s.numa_stat(),
        format!(
            "kernel N0={} N1={}\nalloc N0=100 N1=0\nruntime N0=0 N1=5000\nreservation N0=0 N1=10\n",
            PAGE_SIZE,
            2 * PAGE_SIZE // 5000 + 10 bytes of one objcg: 2 pages
        )
    );
    assert_eq!(s.memory_current(), format!("{}\n", 3 * PAGE_SIZE));
    assert_eq!(s.events.to_text(), "high 0\nmax 0\noom 0\noom_kill 0\n");
    assert_eq!(s.memory_max(), "1048576\n");
    assert_eq!(s.memory_high(), "max\n");
    t.uncharge(0, a).unwrap();
    t.uncharge(1, b).unwrap();
    drop(r);
}

#[test]
fn hierarchical_and_local_values_differ_by_descendants() {
    let c = ctrl("1x1");
    let p = c.create("p").unwrap();
    let q = c.create("p/q").unwrap();
    let _rp = p.try_charge(100).unwrap();
    let _rq = q.try_charge(1000).unwrap();
    let s = p.stats();
    assert_eq!(s.stat.reservation_bytes, 1100);
    assert_eq!(s.stat_local.reservation_bytes, 100);
    assert_eq!(s.numa[0].hierarchical.reservation_bytes, 1100);
    assert_eq!(s.numa[0].local.reservation_bytes, 100);
    assert_eq!(s.current_bytes, 2 * PAGE_SIZE);
}

#[test]
#[cfg(feature = "serde")]
fn stats_serialize_to_json() {
    let c = ctrl("2x1");
    let g = c.create("g").unwrap();
    let _r = g.try_charge(10).unwrap();
    let json = serde_json::to_value(g.stats()).unwrap();
    assert_eq!(json["path"], "g");
    assert_eq!(json["stat"]["reservation_bytes"], 10);
    assert_eq!(json["numa"][1]["node"], 1);
    assert_eq!(json["max"], "Max");
    let all = serde_json::to_value(c.stats()).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["path"], "");
}
