//! Two CPUs' stocks holding slots of one objcg, racing the removal of its
//! group (whose `drain_all_stock(OriginIn)` sweeps both CPUs) and
//! task-less uncharges that refill both stocks, under loom.
//!
//! A removed group's objcg lives on while stock slots, charged objects or
//! reservations hold references (one per byte they hold; see
//! `obj_cgroup.rs`). The objcg must be released exactly once, by whoever
//! drops the last reference, whichever CPU's slot that was, and its entry
//! then sits on the free list once.
//!
//! Checked: conservation and references (`check_invariants`) right after
//! the race, with stocks possibly full; `p`'s usage is exactly what the
//! stocks and pools hold for `c`'s objcg; once every stock is drained the
//! usage of `p` and root is zero and `c`'s entry is on the free list.

use loom::thread;

use super::{assert_invariants, assert_stocks_empty, assert_usage_zero, model, slot_word};
use crate::{ChargeKind, Controller, Topology};

/// Bytes per charge: under a page, so each CPU's byte stock keeps a
/// remainder.
const CHARGE_BYTES: u64 = 1000;

/// Thread 1 returns a charge task-less on CPU 1 and then one on CPU 0
/// (each a refill that merges into the CPU's slot of `c`'s objcg, or
/// installs a new one when the removal drained it), while the main thread
/// removes `p/c`. Before the race a task of `c` charged once on each CPU
/// and flushed, so both CPUs' byte and page stocks hold slots of `c`'s
/// objcg, and then exited.
#[test]
fn two_cpu_stocks_racing_removal_release_the_objcg_once() {
    model(|| {
        let ctrl = Controller::new(Topology::from_spec("1x2").expect("topology"));
        let p = ctrl.create("p").expect("create p");
        let c = p.create_child("c").expect("create p/c");
        let c_id = slot_word(&c) as u32;
        let task = ctrl.new_task(&c).expect("task");
        let on_cpu0 = task
            .charge(0, CHARGE_BYTES, ChargeKind::Alloc)
            .expect("charge");
        task.flush(0).expect("flush");
        let on_cpu1 = task
            .charge(1, CHARGE_BYTES, ChargeKind::Alloc)
            .expect("charge");
        task.flush(1).expect("flush");
        drop(task);
        let remote = ctrl.clone();
        let uncharger = thread::spawn(move || {
            remote.uncharge(1, on_cpu1).expect("uncharge");
            remote.uncharge(0, on_cpu0).expect("uncharge");
        });
        c.remove().expect("remove p/c");
        uncharger.join().expect("uncharger");

        assert_invariants(&ctrl);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_usage_zero(&[&p, &ctrl.root()]);
        let (free, truncated) = ctrl.core().table.free_list(16);
        assert!(!truncated, "free list {free:?}");
        assert_eq!(
            free.iter().filter(|&&id| id == c_id).count(),
            1,
            "c's entry {c_id} is not free exactly once: {free:?}"
        );
        assert_invariants(&ctrl);
    });
}

/// Thread 1 charges on CPU 1 (consuming that CPU's stocks) and returns
/// the object task-less on CPU 0, while the main thread drains every
/// stock of both CPUs. Before the race `g`'s task charged on both CPUs
/// and flushed. Whoever takes a slot word owns its bytes and references,
/// on either CPU.
#[test]
fn charge_on_one_cpu_refill_on_other_racing_drain_all_conserves_bytes() {
    model(|| {
        let ctrl = Controller::new(Topology::from_spec("1x2").expect("topology"));
        let g = ctrl.create("g").expect("create g");
        let task = ctrl.new_task(&g).expect("task");
        let first = task
            .charge(0, CHARGE_BYTES, ChargeKind::Alloc)
            .expect("charge");
        task.flush(0).expect("flush");
        let second = task
            .charge(1, CHARGE_BYTES, ChargeKind::Alloc)
            .expect("charge");
        task.flush(1).expect("flush");
        let remote = ctrl.clone();
        let charger = thread::spawn(move || {
            let third = task
                .charge(1, CHARGE_BYTES, ChargeKind::Alloc)
                .expect("charge");
            task.flush(1).expect("flush");
            remote.uncharge(0, third).expect("uncharge");
            task
        });
        ctrl.drain_stocks();
        let task = charger.join().expect("charger");

        assert_invariants(&ctrl);
        task.uncharge(0, first).expect("uncharge");
        task.uncharge(1, second).expect("uncharge");
        task.flush(0).expect("flush");
        drop(task);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_usage_zero(&[&g, &ctrl.root()]);
        assert_eq!(
            super::live_objcg_refcnt(&ctrl, &g, 0),
            1,
            "a reference leaked"
        );
        assert_invariants(&ctrl);
    });
}
