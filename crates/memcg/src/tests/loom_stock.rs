//! Per-CPU stocks (`consume_obj_stock`, `refill_obj_stock`, `consume_stock`)
//! racing a remote drain (`drain_all_stock`) under loom.
//!
//! One node with one CPU: the task charges and uncharges on CPU 0 through
//! its byte cache, the byte stock and the page stock, while another thread
//! empties the stocks. Every slot operation is one CAS or swap of the whole
//! word, so whoever takes a word owns its bytes, pages and references.
//!
//! Checked in every execution: conservation and reference counts right
//! after the race (stocks possibly full), and, once everything is
//! uncharged and drained, zero usage and only the live reference left.

use loom::thread;

use super::{assert_invariants, assert_stocks_empty, assert_usage_zero, live_objcg_refcnt, model};
use crate::engine::{Charge, Task};
use crate::{ChargeKind, Controller, Group, Topology};

/// Bytes per charge: well under a page, so charges leave remainders.
const CHARGE_BYTES: u64 = 1000;

/// A controller on one node with one CPU, a group `g` and a task in `g`
/// that charged once and flushed its byte cache, so that CPU 0's byte
/// stock holds `g`'s remainder (with its bytes' references) and its page stock
/// holds the rest of the first batch.
fn setup() -> (Controller, Group, Task, Charge) {
    let ctrl = Controller::new(Topology::from_spec("1x1").expect("topology"));
    let g = ctrl.create("g").expect("create g");
    let task = ctrl.new_task(&g).expect("task");
    let charge = task
        .charge(0, CHARGE_BYTES, ChargeKind::Alloc)
        .expect("charge");
    task.flush(0).expect("flush");
    (ctrl, g, task, charge)
}

/// Uncharges `charges`, drops the task, drains, and checks the end state.
fn finish(ctrl: &Controller, g: &Group, task: Task, charges: Vec<Charge>) {
    for charge in charges {
        task.uncharge(0, charge).expect("uncharge");
    }
    task.flush(0).expect("flush");
    drop(task);
    ctrl.drain_stocks();
    assert_stocks_empty(ctrl);
    assert_usage_zero(&[g, &ctrl.root()]);
    assert_eq!(live_objcg_refcnt(ctrl, g, 0), 1, "a reference leaked");
    assert_invariants(ctrl);
}

/// Thread 1 charges through an empty byte cache (taking bytes, with their
/// references, from the byte stock, else pages from the page stock, else the
/// page counters) and gives the object back task-less
/// (`Controller::uncharge` refills the byte stock), while the main thread
/// drains every stock.
#[test]
fn consume_refill_racing_drain_all_conserves_bytes() {
    model(|| {
        let (ctrl, g, task, first) = setup();
        let remote = ctrl.clone();
        let charger = thread::spawn(move || {
            let charge = task
                .charge(0, CHARGE_BYTES, ChargeKind::Alloc)
                .expect("charge");
            remote.uncharge(0, charge).expect("uncharge");
            task
        });
        ctrl.drain_stocks();
        let task = charger.join().expect("charger");

        assert_invariants(&ctrl);
        finish(&ctrl, &g, task, vec![first]);
    });
}

/// Thread 1 returns an object task-less (a refill merging into the slot
/// of `g`, or installing a new one and adopting the objcg's pool when the
/// slot was drained) while the main thread drains the stocks of `g`'s
/// subtree (`drain_all_stock(memcg)`, which takes a temporary reference on
/// each slot's objcg to find its owner).
#[test]
fn refill_racing_group_drain_conserves_bytes() {
    model(|| {
        let (ctrl, g, task, first) = setup();
        let second = task
            .charge(0, CHARGE_BYTES, ChargeKind::Alloc)
            .expect("charge");
        task.flush(0).expect("flush");
        let remote = ctrl.clone();
        let refiller = thread::spawn(move || {
            remote.uncharge(0, first).expect("uncharge");
        });
        g.drain_stocks();
        refiller.join().expect("refiller");

        assert_invariants(&ctrl);
        finish(&ctrl, &g, task, vec![second]);
    });
}

/// Three threads on the one CPU's stocks (in userspace a thread can be
/// preempted or migrate between reading its CPU id and touching a slot,
/// so two threads may work on one CPU's stock at once): the task charges
/// (consuming bytes and their references), a task-less uncharge refills the same
/// slot, and the main thread drains every stock.
#[test]
fn consume_racing_refill_on_same_cpu_and_drain_conserves_bytes() {
    model(|| {
        let (ctrl, g, task, first) = setup();
        let remote = ctrl.clone();
        let refiller = thread::spawn(move || {
            remote.uncharge(0, first).expect("uncharge");
        });
        let charger = thread::spawn(move || {
            let charge = task
                .charge(0, CHARGE_BYTES, ChargeKind::Alloc)
                .expect("charge");
            (task, charge)
        });
        ctrl.drain_stocks();
        refiller.join().expect("refiller");
        let (task, second) = charger.join().expect("charger");

        assert_invariants(&ctrl);
        finish(&ctrl, &g, task, vec![second]);
    });
}

/// Every byte-stock slot of CPU 0 caches another group's objcg
/// (`NR_OBJ_STOCK` groups), so a refill for one more objcg evicts a
/// victim slot with a swap and drains it, while the main thread drains
/// every stock with CASes. Each word is drained exactly once, by whoever
/// took it.
#[test]
fn refill_evicting_racing_drain_all_conserves_bytes() {
    model(|| {
        let ctrl = Controller::new(Topology::from_spec("1x1").expect("topology"));
        let mut groups = Vec::new();
        let mut charges = Vec::new();
        for i in 0..=crate::engine::NR_OBJ_STOCK {
            let g = ctrl.create(&format!("g{i}")).expect("create");
            let task = ctrl.new_task(&g).expect("task");
            charges.push(
                task.charge(0, CHARGE_BYTES, ChargeKind::Alloc)
                    .expect("charge"),
            );
            if i < crate::engine::NR_OBJ_STOCK {
                // Installs `g{i}`'s slot in the byte stock.
                task.flush(0).expect("flush");
            }
            groups.push((g, task));
        }
        let stock = &ctrl.core().stocks[0];
        assert!(stock
            .obj
            .iter()
            .all(|s| s.load(crate::sync::Ordering::Relaxed) != 0));
        let (last_group, last_task) = groups.pop().expect("one more group");
        let evicter = thread::spawn(move || {
            last_task.flush(0).expect("flush");
            last_task
        });
        ctrl.drain_stocks();
        let last_task = evicter.join().expect("evicter");
        groups.push((last_group, last_task));

        assert_invariants(&ctrl);
        for ((_, task), charge) in groups.iter().zip(charges) {
            task.uncharge(0, charge).expect("uncharge");
            task.flush(0).expect("flush");
        }
        let groups: Vec<Group> = groups.into_iter().map(|(g, _task)| g).collect();
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        let root = ctrl.root();
        let mut all: Vec<&Group> = groups.iter().collect();
        all.push(&root);
        assert_usage_zero(&all);
        for g in &groups {
            assert_eq!(live_objcg_refcnt(&ctrl, g, 0), 1, "{:?} leaked", g.path());
        }
        assert_invariants(&ctrl);
    });
}
