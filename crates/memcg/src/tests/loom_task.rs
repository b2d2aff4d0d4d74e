//! The seed protocol (`task->objcgs`, DESIGN §4.5) under loom.
//!
//! The owner thread charges, which runs `current_objcg_update` (the
//! refresh) when the update flag is set, while another thread runs
//! `mem_cgroup_kmem_attach` (`Group::attach`) or the owner exits
//! (`mem_cgroup_exit`). Two nodes with one CPU each, so both entries of the
//! per-node array are filled and dropped.
//!
//! Checked in every execution: no reference leaked or dropped twice
//! (`check_invariants` compares reference counts with their holders
//! exactly), both groups' task pins are balanced, and after the race the
//! task caches the objcgs of the group it ended in, for every node (root's
//! after exit).

use loom::thread;

use super::{assert_invariants, assert_stocks_empty, assert_usage_zero, live_objcg_refcnt, model};
use crate::engine::{Task, TaskCacheMode};
use crate::{ChargeKind, Controller, Group, Topology};

/// Number of nodes of the models' topology (`2x1`).
const NR_NODES: usize = 2;

/// A controller on 2 nodes × 1 CPU (CPU 0 on node 0, CPU 1 on node 1),
/// groups `a` and `b`, and a task forked in `a` with the per-node cache
/// (stale: its first lookup refreshes).
fn setup() -> (Controller, Group, Group, Task) {
    setup_with(TaskCacheMode::PerNode)
}

/// As [`setup`], with the task's cache in `mode`.
fn setup_with(mode: TaskCacheMode) -> (Controller, Group, Group, Task) {
    let ctrl = Controller::new(Topology::from_spec("2x1").expect("topology"));
    let a = ctrl.create("a").expect("create a");
    let b = ctrl.create("b").expect("create b");
    let task = ctrl.new_task_with_mode(&a, mode).expect("task");
    (ctrl, a, b, task)
}

/// Asserts that the task's lookup gives `path`'s objcg on every node.
#[track_caller]
fn assert_caches(task: &Task, path: &str) {
    for nid in 0..NR_NODES {
        let got = task.obj_cgroup(nid).expect("lookup");
        assert_eq!(got, (path.to_string(), nid), "node {nid}");
    }
    assert!(!task.is_stale(), "the lookup left the cache stale");
}

/// Checks the end state once every charge is gone and the task exited:
/// stocks drained, usage zero, only the live references left, no pins.
fn assert_quiescent(ctrl: &Controller, groups: &[&Group]) {
    ctrl.drain_stocks();
    assert_stocks_empty(ctrl);
    let root = ctrl.root();
    let mut all = groups.to_vec();
    all.push(&root);
    assert_usage_zero(&all);
    for g in groups {
        assert_eq!(g.nr_tasks(), 0, "group {:?} keeps a task pin", g.path());
        for nid in 0..NR_NODES {
            assert_eq!(
                live_objcg_refcnt(ctrl, g, nid),
                1,
                "group {:?} node {nid}: only the live reference may remain",
                g.path()
            );
        }
    }
    assert_invariants(ctrl);
}

/// The task is stale from fork when the race starts: the refresh clears
/// the flag, reads the group and fills both entries while the attach
/// publishes `b` and sets the flag. An attach whose flag lands after the
/// clear must survive to the next lookup (the window the seed as posted
/// leaves open), so after the owner charges once more it caches `b` on
/// every node.
#[test]
fn refresh_racing_attach_caches_attached_group() {
    model(|| {
        let (ctrl, a, b, task) = setup();
        let handle = task.handle();
        let owner = thread::spawn(move || {
            let charge = task.charge(0, 64, ChargeKind::Alloc).expect("charge");
            (task, charge)
        });
        b.attach(&handle).expect("attach");
        let (task, first) = owner.join().expect("owner");

        let second = task.charge(1, 64, ChargeKind::Alloc).expect("charge");
        assert_caches(&task, "b");
        assert_eq!(a.nr_tasks(), 0);
        assert_eq!(b.nr_tasks(), 1);
        assert_invariants(&ctrl);

        task.uncharge(0, first).expect("uncharge");
        task.uncharge(1, second).expect("uncharge");
        drop(task);
        assert_quiescent(&ctrl, &[&a, &b]);
    });
}

/// The task already caches `a` (flag clear, byte cache of `a` on node 0)
/// when the owner charges again while the attach runs: the charge either
/// hits the byte cache of `a` or refreshes and switches the byte cache to
/// `b`, dropping `a`'s references exactly once.
#[test]
fn charge_racing_attach_after_refresh_switches_to_attached_group() {
    model(|| {
        let (ctrl, a, b, task) = setup();
        let first = task.charge(0, 64, ChargeKind::Alloc).expect("charge");
        assert_caches(&task, "a");
        let handle = task.handle();
        let owner = thread::spawn(move || {
            let charge = task.charge(0, 64, ChargeKind::Alloc).expect("charge");
            (task, charge)
        });
        b.attach(&handle).expect("attach");
        let (task, second) = owner.join().expect("owner");

        let third = task.charge(1, 64, ChargeKind::Alloc).expect("charge");
        assert_caches(&task, "b");
        assert_invariants(&ctrl);

        for charge in [first, second, third] {
            task.uncharge(0, charge).expect("uncharge");
        }
        drop(task);
        assert_quiescent(&ctrl, &[&a, &b]);
    });
}

/// Two threads attach the task, to `b` and back to `a`, while the stale
/// owner charges (3 threads). Whichever attach publishes its group last
/// wins; after the owner charges once more, its cache holds that group's
/// objcgs on every node and every reference the refreshes replaced was
/// dropped exactly once.
#[test]
fn refresh_racing_two_attaches_caches_last_attached_group() {
    model(|| {
        let (ctrl, a, b, task) = setup();
        let handle = task.handle();
        let owner = thread::spawn(move || {
            let charge = task.charge(0, 64, ChargeKind::Alloc).expect("charge");
            (task, charge)
        });
        let to_b = {
            let (b, handle) = (b.clone(), handle.clone());
            thread::spawn(move || b.attach(&handle).expect("attach to b"))
        };
        a.attach(&handle).expect("attach to a");
        to_b.join().expect("attacher");
        let (task, first) = owner.join().expect("owner");

        let last = task.group().expect("attached");
        assert!(last == a || last == b);
        let second = task.charge(1, 64, ChargeKind::Alloc).expect("charge");
        assert_caches(&task, last.path());
        assert_eq!(a.nr_tasks() + b.nr_tasks(), 1);
        assert_eq!(last.nr_tasks(), 1);
        assert_invariants(&ctrl);

        task.uncharge(0, first).expect("uncharge");
        task.uncharge(1, second).expect("uncharge");
        drop(task);
        assert_quiescent(&ctrl, &[&a, &b]);
    });
}

/// The pre-seed cache (`TaskCacheMode::Single`: one entry, for the node
/// the task refreshed on) runs the same refresh: racing an attach, it
/// must not lose it either. After the owner charges once more, every
/// lookup gives `b`'s objcg (of whichever node the entry was filled for).
#[test]
fn refresh_racing_attach_in_single_mode_caches_attached_group() {
    model(|| {
        let (ctrl, a, b, task) = setup_with(TaskCacheMode::Single);
        let handle = task.handle();
        let owner = thread::spawn(move || {
            let charge = task.charge(0, 64, ChargeKind::Alloc).expect("charge");
            (task, charge)
        });
        b.attach(&handle).expect("attach");
        let (task, first) = owner.join().expect("owner");

        let second = task.charge(1, 64, ChargeKind::Alloc).expect("charge");
        for nid in 0..NR_NODES {
            let (path, _node) = task.obj_cgroup(nid).expect("lookup");
            assert_eq!(path, "b", "node {nid}");
        }
        assert!(!task.is_stale());
        assert_invariants(&ctrl);

        task.uncharge(0, first).expect("uncharge");
        task.uncharge(1, second).expect("uncharge");
        drop(task);
        assert_quiescent(&ctrl, &[&a, &b]);
    });
}

/// The stale owner charges (refreshing), returns the charge and exits
/// while another thread attaches the task to `b`: the attach either lands
/// before the exit (which then unpins `b`) or finds the task gone
/// (`TaskExited`, nothing pinned). The refresh and the exit drop every
/// per-node reference once; afterwards the task charges root on every
/// node, and both groups can be removed.
#[test]
fn exit_racing_attach_releases_every_reference() {
    model(|| {
        let (ctrl, a, b, task) = setup();
        let handle = task.handle();
        let owner = thread::spawn(move || {
            let mut task = task;
            let first = task.charge(1, 64, ChargeKind::Alloc).expect("charge");
            task.uncharge(1, first).expect("uncharge");
            task.exit();
            task
        });
        let attached = b.attach(&handle);
        let task = owner.join().expect("owner");

        match attached {
            Ok(()) | Err(crate::Error::TaskExited) => {}
            Err(e) => panic!("attach failed with {e}"),
        }
        assert!(task.has_exited());
        assert!(task.group().is_none());
        let late = task.charge(1, 64, ChargeKind::Alloc).expect("charge");
        assert_caches(&task, "");
        assert_invariants(&ctrl);
        task.uncharge(1, late).expect("uncharge");
        drop(task);
        drop(handle);

        assert_quiescent(&ctrl, &[&a, &b]);
        a.remove().expect("remove a");
        b.remove().expect("remove b");
        assert_invariants(&ctrl);
    });
}

/// The path of the group whose objcg `charge` charged.
fn path_of(ctrl: &Controller, charge: &crate::engine::Charge) -> String {
    charge
        .objcg(ctrl.core())
        .expect("objcg")
        .memcg()
        .path
        .to_string()
}

/// Whether `charge` is of a root objcg itself (a removed group's objcg,
/// reparented to root, has root's path but is not one).
fn is_root_objcg(charge: &crate::engine::Charge) -> bool {
    // SAFETY: the charge holds a reference on its objcg.
    unsafe { charge.objcg.as_ref() }.is_root()
}

/// After a group's removal raced a charge under a scope of it: a hit under
/// `key` (on `cpu`) may charge root's own objcg (the charge came after
/// the removal, which armed the key for it), never the removed group's.
fn assert_no_key_for_a_removed_group(ctrl: &Controller, task: &Task, key: u64, cpu: usize) {
    if let Some(raw) = task.charge_fast(key, 8) {
        // SAFETY: the raw word of an 8-byte Alloc charge of `ctrl`,
        // rebuilt once.
        let hit = unsafe { crate::engine::Charge::from_raw(raw, 8, ChargeKind::Alloc, ctrl) };
        let root = is_root_objcg(&hit);
        task.uncharge(cpu, hit).expect("uncharge");
        assert!(root, "a key stands for the removed group's objcg");
    }
}

/// Charges 64 bytes on CPU 0 the allocator's way: the fast path under key
/// 2 (CPU 0), else `charge_keyed`, which arms it.
fn fast_or_keyed(ctrl: &Controller, task: &Task) -> crate::engine::Charge {
    match task.charge_fast(2, 64) {
        // SAFETY: the raw word of a 64-byte Alloc charge of `ctrl`, rebuilt
        // once.
        Some(raw) => unsafe { crate::engine::Charge::from_raw(raw, 64, ChargeKind::Alloc, ctrl) },
        None => task.charge_keyed(2, 0, 64).expect("charge"),
    }
}

/// The allocator's fast path is armed for `a` when an attach to `b`
/// races with the owner's next charge: that charge may still hit `a`'s
/// byte cache (the seed's "seen by the next charge"), but once the attach
/// is over, the next charge misses the fast path and goes to `b`, and
/// every reference the switch dropped is dropped exactly once.
#[test]
fn fast_charge_racing_attach_moves_to_attached_group() {
    model(|| {
        let (ctrl, a, b, task) = setup();
        let first = task.charge_keyed(2, 0, 64).expect("charge");
        assert_eq!(path_of(&ctrl, &first), "a");
        let handle = task.handle();
        let owner = thread::spawn(move || {
            let raw = task.charge_fast(2, 64);
            (task, raw)
        });
        b.attach(&handle).expect("attach");
        let (task, raw) = owner.join().expect("owner");
        let second = match raw {
            // SAFETY: as in `fast_or_keyed`.
            Some(raw) => unsafe {
                crate::engine::Charge::from_raw(raw, 64, ChargeKind::Alloc, &ctrl)
            },
            None => task.charge_keyed(2, 0, 64).expect("charge"),
        };

        let third = fast_or_keyed(&ctrl, &task);
        assert_eq!(path_of(&ctrl, &third), "b");
        assert_invariants(&ctrl);

        for charge in [first, second, third] {
            task.uncharge(0, charge).expect("uncharge");
        }
        drop(task);
        assert_quiescent(&ctrl, &[&a, &b]);
    });
}

/// The owner's first charge arms the fast path (after refreshing to `a`)
/// while an attach to `b` runs: the attach sets the update flag and clears
/// the key, the owner stores the key and re-checks the word. Once both are
/// done, no key is left armed for `a`: the fast path (which does not read
/// the word) misses, and the next charge goes to `b`.
#[test]
fn arming_racing_attach_leaves_no_stale_key() {
    model(|| {
        let (ctrl, a, b, task) = setup();
        let handle = task.handle();
        let owner = thread::spawn(move || {
            let charge = task.charge_keyed(2, 0, 64).expect("charge");
            (task, charge)
        });
        b.attach(&handle).expect("attach");
        let (task, first) = owner.join().expect("owner");

        if let Some(raw) = task.charge_fast(2, 8) {
            // SAFETY: the raw word of an 8-byte Alloc charge of `ctrl`,
            // rebuilt once.
            let hit = unsafe { crate::engine::Charge::from_raw(raw, 8, ChargeKind::Alloc, &ctrl) };
            let path = path_of(&ctrl, &hit);
            task.uncharge(0, hit).expect("uncharge");
            assert_eq!(path, "b", "a key armed for a survived the attach");
        }
        let next = fast_or_keyed(&ctrl, &task);
        assert_eq!(path_of(&ctrl, &next), "b");
        assert_invariants(&ctrl);

        for charge in [first, next] {
            task.uncharge(0, charge).expect("uncharge");
        }
        drop(task);
        assert_quiescent(&ctrl, &[&a, &b]);
    });
}

/// A task in a scope of `a` (attached to root, on one node) arms its fast
/// key for `a`'s objcg while another thread removes `a`: the owner stores
/// the key, fences and reads `a`'s slot again; the removal empties the
/// slot, fences and disarms every task whose byte cache holds `a`'s objcg
/// (`Task::recheck_override_key`). Once both are done, no key stands for
/// the removed group: the fast path misses or charges root's objcg (the
/// nearest online ancestor's, for which a charge made after the removal
/// arms it), and so does the scope's next charge. Fails with either side's
/// half removed.
#[test]
fn arming_under_a_scope_racing_its_groups_removal_leaves_no_key() {
    model(|| {
        let ctrl = Controller::new(Topology::from_spec("1x1").expect("topology"));
        let a = ctrl.create("a").expect("create a");
        let task = ctrl.new_task(&ctrl.root()).expect("task");
        let guard = task.enter(&a).expect("enter");
        let remover = thread::spawn({
            let a = a.clone();
            move || a.remove().expect("remove")
        });
        let first = task.charge_keyed(1, 0, 64).expect("charge");
        remover.join().expect("remover");

        assert_no_key_for_a_removed_group(&ctrl, &task, 1, 0);
        let next = task.charge_keyed(1, 0, 64).expect("charge");
        assert!(is_root_objcg(&next), "the scope's charge goes to root");
        drop(guard);
        task.uncharge(0, first).expect("uncharge");
        task.uncharge(0, next).expect("uncharge");
        drop(task);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_invariants(&ctrl);
    });
}

/// As [`arming_under_a_scope_racing_its_groups_removal_leaves_no_key`],
/// on two nodes with the per-node cache and the key of node 1's CPU, the
/// task attached to `a` in a scope of `b`, and the key already armed for
/// `b` when the race starts: the owner's second charge finds it armed
/// (`arm_fast_key` returns early) and still reads the slot again after its
/// fence.
#[test]
fn rearming_under_a_scope_racing_its_groups_removal_on_node_1_leaves_no_key() {
    model(|| {
        let (ctrl, _a, b, task) = setup();
        // Key 3: CPU 1 (node 1).
        let guard = task.enter(&b).expect("enter");
        let first = task.charge_keyed(3, 1, 64).expect("charge");
        assert!(task.charge_fast(3, 8).is_some_and(|raw| {
            // SAFETY: the raw word of an 8-byte Alloc charge of `ctrl`,
            // rebuilt once.
            let hit = unsafe { crate::engine::Charge::from_raw(raw, 8, ChargeKind::Alloc, &ctrl) };
            task.uncharge(1, hit).is_ok()
        }));
        let remover = thread::spawn({
            let b = b.clone();
            move || b.remove().expect("remove")
        });
        let second = task.charge_keyed(3, 1, 64).expect("charge");
        remover.join().expect("remover");

        assert_no_key_for_a_removed_group(&ctrl, &task, 3, 1);
        drop(guard);
        task.uncharge(1, first).expect("uncharge");
        task.uncharge(1, second).expect("uncharge");
        drop(task);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_invariants(&ctrl);
    });
}
