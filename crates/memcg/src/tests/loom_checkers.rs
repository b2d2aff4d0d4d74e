//! `Controller::check_invariants` racing a task's exit, under loom.
//!
//! The checker walks the list of live tasks and reads each one's per-node
//! array (`task->objcgs`) under the task-list lock, which `Task::exit`
//! takes to swap the array out, put its references and free it. Here the
//! task's last per-node entry caches the objcg of a group that was
//! removed after the task moved away, so the exit's put is that objcg's
//! last reference: its release and the push on the free list race the
//! checker's walk of the table and the free list.
//!
//! Checked: the checker never panics, and since the task's byte cache was
//! flushed before (so exit moves no bytes outside the lock) it reports no
//! violation during the race; afterwards the invariants hold, `c`'s entry
//! is free and usage is zero.

use loom::thread;

use super::{assert_invariants, assert_usage_zero, model, slot_word};
use crate::{ChargeKind, Controller, Topology};

#[test]
fn exit_releasing_a_removed_objcg_racing_check_invariants() {
    model(|| {
        let ctrl = Controller::new(Topology::from_spec("1x1").expect("topology"));
        let p = ctrl.create("p").expect("create p");
        let c = p.create_child("c").expect("create p/c");
        let c_id = slot_word(&c) as u32;
        let task = ctrl.new_task(&c).expect("task");
        // Caches c's objcg in the task's entry for node 0.
        let charge = task.charge(0, 100, ChargeKind::Alloc).expect("charge");
        task.uncharge(0, charge).expect("uncharge");
        task.flush(0).expect("flush");
        p.attach(&task.handle()).expect("attach to p");
        c.remove().expect("remove p/c");
        ctrl.drain_stocks();
        // Only the task's entry holds c's objcg now.
        let objcg = ctrl.core().table.get(c_id).expect("entry");
        assert_eq!(objcg.refcnt(), 1, "the task's entry is the last holder");
        let exiting = thread::spawn(move || drop(task));
        let during = ctrl.check_invariants();
        exiting.join().expect("exit");

        if let Err(e) = during {
            panic!("racing the exit: {e}");
        }
        let (free, _) = ctrl.core().table.free_list(16);
        assert!(free.contains(&c_id), "c's entry {c_id} was not released");
        assert_usage_zero(&[&p, &ctrl.root()]);
        assert_invariants(&ctrl);
    });
}
