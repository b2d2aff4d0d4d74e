//! The objcg table (`engine/obj_cgroup.rs`) under loom: its lock-free free
//! list, the generation check of a lookup by slot word, and the
//! publication of a new chunk.
//!
//! The first two models drive an [`ObjcgTable`] directly (no controller):
//! entries are installed for a bare group, released by their last `put`
//! and reused by `install`, which is exactly the table's protocol without
//! the hundreds of atomics of the charge path around it. The third one
//! races the creation of a group in a new chunk, and a charge through it,
//! with a drain and a lookup on another thread.

use std::sync::Arc;

use loom::thread;

use super::{assert_invariants, assert_stocks_empty, assert_usage_zero, model};
use crate::engine::memcg::MemCgroup;
use crate::engine::obj_cgroup::ObjcgTable;
use crate::{ChargeKind, Controller, Topology, PAGE_SIZE};

/// A table with `n` entries installed for one group (ids `1..=n`, one
/// reference each, generation 1), and the group.
fn table_with(n: u32) -> (Arc<ObjcgTable>, Arc<MemCgroup>) {
    let table = Arc::new(ObjcgTable::new(crate::sync::next_serial()));
    let origin = MemCgroup::new("g", None, 1);
    table.prepare(n as usize);
    for id in 1..=n {
        let objcg = table.install(&origin, 0, false).expect("room");
        assert_eq!(objcg.id(), id);
    }
    (table, origin)
}

/// Drops the last reference of entry `id`: it is released (pushed on the
/// free list).
fn release(table: &ObjcgTable, id: u32) {
    let objcg = table.get(id).expect("installed");
    let released = table.put(objcg, 1).expect("the last reference");
    assert_eq!(released.nr_pages, 0);
}

/// The free list (walked from its head), checked for cycles.
#[track_caller]
fn free_ids(table: &ObjcgTable) -> Vec<u32> {
    let (ids, truncated) = table.free_list(16);
    assert!(!truncated, "the free list has a cycle: {ids:?}");
    ids
}

/// Two threads each release an entry (the lock-free push of `release`)
/// while the main thread allocates one (`install`, whose pop runs under
/// the table's lock) with a third entry already on the free list. The
/// push publishes the entry's `next_free` (Release on the head; the pop
/// reads the head with Acquire, also when its CAS fails): a pop that read
/// a stale link would drop entries from the list or hand out one twice.
///
/// Checked: the allocated entry was free (one of the three) and now has
/// generation 2 and one reference; the free list holds exactly the other
/// two, each once; allocating twice more takes exactly those, and then a
/// new id.
#[test]
fn release_racing_allocation_keeps_the_free_list_exact() {
    model(|| {
        let (table, origin) = table_with(3);
        release(&table, 3);
        let releasers: Vec<_> = [1, 2]
            .into_iter()
            .map(|id| {
                let t = Arc::clone(&table);
                thread::spawn(move || release(&t, id))
            })
            .collect();
        let got = table.install(&origin, 0, false).expect("room").id();
        for r in releasers {
            r.join().expect("releaser");
        }

        assert!((1..=3).contains(&got), "installed a new id {got}");
        let objcg = table.get(got).expect("entry");
        assert_eq!(objcg.generation(), 2, "entry {got}");
        assert_eq!(objcg.refcnt(), 1, "entry {got}");
        let mut free = free_ids(&table);
        free.sort_unstable();
        let mut expected: Vec<u32> = (1..=3).filter(|&id| id != got).collect();
        expected.sort_unstable();
        assert_eq!(free, expected, "after allocating {got}");
        let mut again: Vec<u32> = (0..2)
            .map(|_| table.install(&origin, 0, false).expect("room").id())
            .collect();
        again.sort_unstable();
        assert_eq!(again, expected);
        assert!(free_ids(&table).is_empty());
        assert_eq!(table.install(&origin, 0, false).expect("room").id(), 4);
    });
}

/// Thread 1 looks up entry 1 by the slot word of its first incarnation
/// (`tryget_word`, as a charge that read a group's slot before the group
/// was removed) while the main thread drops that incarnation's last
/// reference and installs a new objcg for another group, which reuses the
/// entry (`install`: new generation and origin, then the count stored with
/// Release).
///
/// Checked: a lookup that succeeds holds the first incarnation (the entry
/// was not reused while it held it: still generation 1, origin `g`); a
/// lookup that got a reference on the second incarnation reports it as
/// such (`Err`) and reads the new origin `h` through it (the generation
/// check rejects the stale word: `generation()` and `origin()` Acquire,
/// the count's CAS Acquire, pairing with `install`'s Release). Every
/// reference is given back and the entry ends free or `h`'s.
#[test]
fn stale_word_lookup_racing_reuse_is_rejected() {
    model(|| {
        let (table, g) = table_with(1);
        let word = table.get(1).expect("entry").slot_word();
        assert_eq!(word, (1 << 32) | 1);
        let h = MemCgroup::new("h", None, 1);
        let lookup = {
            let t = Arc::clone(&table);
            let g = Arc::clone(&g);
            thread::spawn(move || match t.tryget_word(word) {
                None => 0,
                Some(Ok(objcg)) => {
                    assert_eq!(objcg.generation(), 1);
                    assert!(std::ptr::eq(objcg.origin(), &*g), "a stale origin");
                    let released = t.put(objcg, 1);
                    // It held the last reference of the first incarnation.
                    released.map_or(1, |_| 3)
                }
                Some(Err(objcg)) => {
                    assert_eq!(objcg.generation(), 2, "Err names a later incarnation");
                    assert_eq!(&*objcg.origin().name, "h", "the origin of the reuse");
                    assert!(t.put(objcg, 1).is_none(), "h's live reference remains");
                    2
                }
            })
        };
        let first = table.get(1).expect("entry");
        let reused = match table.put(first, 1) {
            // The lookup holds a reference; it releases the entry.
            None => false,
            Some(_) => {
                let second = table.install(&h, 0, false).expect("room");
                assert_eq!(second.id(), 1, "the freed entry is reused");
                true
            }
        };
        let outcome = lookup.join().expect("lookup");

        // 0: refused (count zero), 1: held the first incarnation and gave
        // it back before the main thread's put, 2: held the reuse, 3: held
        // the first incarnation across the main thread's put.
        match (reused, outcome) {
            (true, 0..=2) | (false, 3) => {}
            other => panic!("(reused, lookup outcome) = {other:?}"),
        }
        let entry = table.get(1).expect("entry");
        if reused {
            assert_eq!(entry.generation(), 2);
            assert_eq!(entry.refcnt(), 1, "h's live reference only");
            assert!(free_ids(&table).is_empty());
        } else {
            assert_eq!(entry.refcnt(), 0);
            assert_eq!(free_ids(&table), vec![1]);
        }
    });
}

/// Thread 1 creates group `c` in a new chunk of the table (chunk 0 is full
/// with root's, `p`'s and `q`'s objcgs: `prepare` publishes chunk 1, then
/// `install` and the slot word), makes a task in it, charges 1000 bytes on
/// CPU 0 and flushes (the page stock and the byte stock of CPU 0 now hold
/// slots naming entry 4), while the main thread drains every stock (it
/// may take those slots and must then find entry 4 in the table: the
/// drain learns the id from the stock word, not from the group) and looks
/// `c` up by path, reserving 100 bytes in it if it is there.
///
/// Checked: nothing is lost (conservation and references by
/// `check_invariants`, usage of `c` and root); a found `c` charges its own
/// objcg; once everything is given back, usage is zero and `c`'s objcg has
/// only its live reference.
#[test]
fn create_in_new_chunk_racing_drain_and_lookup_conserves_bytes() {
    model(|| {
        let ctrl = Controller::new(Topology::from_spec("1x1").expect("topology"));
        let p = ctrl.create("p").expect("create p");
        let q = ctrl.create("q").expect("create q");
        let creator = {
            let ctrl = ctrl.clone();
            thread::spawn(move || {
                let c = ctrl.create("c").expect("create c");
                let task = ctrl.new_task(&c).expect("task");
                let charge = task.charge(0, 1000, ChargeKind::Alloc).expect("charge");
                task.flush(0).expect("flush");
                (c, task, charge)
            })
        };
        ctrl.drain_stocks();
        let reserved = ctrl.group("c").ok().map(|c| {
            let r = c.try_charge(100).expect("reserve in c");
            assert_eq!(r.group_path(), "c");
            assert_eq!(
                super::reservation_word(&r),
                super::slot_word(&c),
                "the reservation holds c's objcg"
            );
            r
        });
        let (c, task, charge) = creator.join().expect("creator");

        assert_eq!(super::slot_word(&c) as u32, 4, "c's objcg is in chunk 1");
        assert_invariants(&ctrl);
        ctrl.drain_stocks();
        // 1000 or 1100 bytes live, the rest of the page in c's pool.
        assert_eq!(c.current_bytes(), PAGE_SIZE);
        drop(reserved);
        task.uncharge(0, charge).expect("uncharge");
        task.flush(0).expect("flush");
        drop(task);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_usage_zero(&[&p, &q, &c, &ctrl.root()]);
        assert_eq!(
            super::live_objcg_refcnt(&ctrl, &c, 0),
            1,
            "a reference leaked"
        );
        assert_invariants(&ctrl);
    });
}
