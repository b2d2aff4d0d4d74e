//! A charge racing removal of its group (`mem_cgroup_css_offline` with
//! `memcg_reparent_objcgs` and `drain_all_stock`) under loom.
//!
//! Group `p/c` is removed while a charge to one of its objcgs is in
//! flight. The charge lands either on `c`'s chain before the removal or
//! on `p`'s after it (the objcg's owner moves up when `c` goes offline),
//! and its uncharge always goes to the current owner; hierarchical usage
//! makes both balance at `p` and root.
//!
//! Checked in every execution: removal succeeds (nothing pins `p/c`), the
//! invariants hold with the charge alive and after it is gone, and `p` and
//! root are back to zero once everything is uncharged and drained. One
//! more model races the pin handshake itself (attach vs remove).

use loom::thread;

use super::{assert_invariants, assert_stocks_empty, assert_usage_zero, model};
use crate::{ChargeKind, Controller, Group, Topology};

/// Bytes of the reservation: two pages, one of them partly used.
const RESERVATION_BYTES: u64 = 5000;

/// A controller on one node with one CPU and groups `p` and `p/c`.
fn setup() -> (Controller, Group, Group) {
    let ctrl = Controller::new(Topology::from_spec("1x1").expect("topology"));
    let p = ctrl.create("p").expect("create p");
    let c = p.create_child("c").expect("create p/c");
    (ctrl, p, c)
}

/// Drains and checks that `p` and root are balanced.
fn assert_balanced(ctrl: &Controller, p: &Group) {
    ctrl.drain_stocks();
    assert_stocks_empty(ctrl);
    assert_usage_zero(&[p, &ctrl.root()]);
    assert_invariants(ctrl);
}

/// Thread 1 reserves bytes in `p/c` (no stock: whole pages straight to
/// the page counters, the remainder to the objcg's pool) while the main
/// thread removes `p/c`. The reservation fails only with `Removed` (it
/// checked before the removal took `c` offline); otherwise it holds its
/// pages on `p`'s chain, whichever side of the removal it landed on, and
/// reports `p` as its group afterwards.
#[test]
fn try_charge_racing_remove_balances_ancestors() {
    model(|| {
        let (ctrl, p, c) = setup();
        let child = c.clone();
        let reserver = thread::spawn(move || child.try_charge(RESERVATION_BYTES));
        c.remove().expect("remove p/c");
        let reserved = reserver.join().expect("reserver");

        assert!(!c.is_online());
        match reserved {
            Ok(r) => {
                assert_eq!(r.group_path(), "p");
                assert_eq!(p.current_bytes(), 2 * crate::PAGE_SIZE);
                assert_eq!(ctrl.root().current_bytes(), 2 * crate::PAGE_SIZE);
                assert_invariants(&ctrl);
                drop(r);
            }
            Err(crate::Error::Removed { .. }) => {}
            Err(e) => panic!("reservation failed with {e}"),
        }
        assert_balanced(&ctrl, &p);
    });
}

/// A task forked in `p/c` charged there (its per-node entry and byte cache
/// hold `c`'s objcg) and was then moved to `p`, so `p/c` has no task. Its
/// owner charges again, which refreshes the cache to `p`'s objcg and
/// returns the byte cache of `c`'s objcg to the CPU stock, and then frees
/// the object charged in `c`; meanwhile the main thread removes `p/c`,
/// dropping the live reference and draining the stocks that cache `c`'s
/// objcg. Stock slots refilled after the drain keep the reparented objcg
/// (now owned by `p`) until the final drain.
#[test]
fn task_charge_racing_remove_balances_ancestors() {
    model(|| {
        let (ctrl, p, c) = setup();
        let task = ctrl.new_task(&c).expect("task");
        let in_c = task.charge(0, 1000, ChargeKind::Alloc).expect("charge");
        p.attach(&task.handle()).expect("attach to p");
        let owner = thread::spawn(move || {
            let in_p = task.charge(0, 1000, ChargeKind::Alloc).expect("charge");
            task.uncharge(0, in_c).expect("uncharge");
            (task, in_p)
        });
        c.remove().expect("remove p/c");
        let (task, in_p) = owner.join().expect("owner");

        assert_eq!(task.obj_cgroup(0).expect("lookup"), ("p".to_string(), 0));
        assert_invariants(&ctrl);
        task.uncharge(0, in_p).expect("uncharge");
        drop(task);
        assert_balanced(&ctrl, &p);
    });
}

/// Another thread attaches a task of `p` to `p/c` while the main thread
/// removes `p/c`: the pin handshake (`nr_tasks` and `dying`) lets exactly
/// one of them succeed, so a task never ends up attached to a removed
/// group. The loser fails with `Removed` or `HasTasks`.
///
/// Loom models SeqCst accesses as AcqRel (loom README, tokio-rs/loom#180),
/// so this store-buffering handshake (`try_pin_task`: add to `nr_tasks`,
/// load `dying`; `remove`: store `dying`, load `nr_tasks`) carries an
/// explicit `fence(SeqCst)` on both sides, which loom does model.
#[test]
fn attach_racing_remove_lets_exactly_one_succeed() {
    model(|| {
        let (ctrl, p, c) = setup();
        let task = ctrl.new_task(&p).expect("task");
        let (child, handle) = (c.clone(), task.handle());
        let attacher = thread::spawn(move || child.attach(&handle));
        let removed = c.remove();
        let attached = attacher.join().expect("attacher");

        match (&attached, &removed) {
            (Ok(()), Err(crate::Error::HasTasks { .. })) => {
                assert!(c.is_online());
                assert_eq!(c.nr_tasks(), 1);
                assert_eq!(p.nr_tasks(), 0);
            }
            (Err(crate::Error::Removed { .. }), Ok(())) => {
                assert!(!c.is_online());
                assert_eq!(p.nr_tasks(), 1);
                assert_eq!(c.nr_tasks(), 0);
            }
            other => panic!("attach and remove: {other:?}"),
        }
        let charge = task.charge(0, 64, ChargeKind::Alloc).expect("charge");
        let want = if attached.is_ok() { "p/c" } else { "p" };
        assert_eq!(task.obj_cgroup(0).expect("lookup"), (want.to_string(), 0));
        task.uncharge(0, charge).expect("uncharge");
        drop(task);
        assert_balanced(&ctrl, &p);
    });
}

/// A task of `p` charges under an override of `p/c` (`Task::enter`, the
/// kernel's `set_active_memcg`) while the main thread removes `p/c`. The
/// override either fails with `Removed` or charges `c`'s objcg (through a
/// temporary reference, then the byte cache's) or, after the removal
/// unpublished it, `p`'s. Nothing pins `c`, so the removal always succeeds.
#[test]
fn charge_in_override_racing_remove_balances_ancestors() {
    model(|| {
        let (ctrl, p, c) = setup();
        let task = ctrl.new_task(&p).expect("task");
        let child = c.clone();
        let owner = thread::spawn(move || {
            let charge = match task.enter(&child) {
                Ok(_guard) => Some(task.charge(0, 1000, ChargeKind::Alloc).expect("charge")),
                Err(crate::Error::Removed { .. }) => None,
                Err(e) => panic!("enter failed with {e}"),
            };
            (task, charge)
        });
        c.remove().expect("remove p/c");
        let (task, charge) = owner.join().expect("owner");

        assert_invariants(&ctrl);
        if let Some(charge) = charge {
            task.uncharge(0, charge).expect("uncharge");
        }
        drop(task);
        assert_balanced(&ctrl, &p);
    });
}

/// `p/c` was removed while a reservation held its objcg, so the
/// reservation holds the last reference. Dropping it (uncharging its bytes
/// through the objcg's pool and releasing the objcg) races a
/// `Controller::drain_stocks`, which takes a temporary reference on every
/// live objcg to trim its pool. Whichever put is last releases the objcg
/// exactly once, with a whole number of pages left, uncharged from `p`.
#[test]
fn reservation_drop_racing_drain_releases_objcg_once() {
    model(|| {
        let (ctrl, p, c) = setup();
        let word = c.memcg().nodeinfo[0]
            .objcg
            .load(crate::sync::Ordering::Relaxed);
        let reservation = c.try_charge(RESERVATION_BYTES).expect("reserve");
        c.remove().expect("remove p/c");
        assert_eq!(reservation.group_path(), "p");
        let dropper = thread::spawn(move || drop(reservation));
        ctrl.drain_stocks();
        dropper.join().expect("dropper");

        let objcg = ctrl.core().table.get(word as u32).expect("entry");
        assert_eq!(objcg.refcnt(), 0, "the objcg of p/c was not released");
        assert_balanced(&ctrl, &p);
    });
}
