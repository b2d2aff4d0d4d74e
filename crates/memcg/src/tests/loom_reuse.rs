//! Reuse of a removed group's table entry racing a charge and a
//! reservation on that group, under loom.
//!
//! `p/c` holds a reservation. Thread 1 reserves in `p/c` (`try_charge`: a
//! lookup by `c`'s slot word, `tryget_word` and its generation check) and
//! then drops the held reservation (its put may be the last reference of
//! `c`'s objcg, so the release and the lock-free push on the free list run
//! on thread 1), while the main thread removes `p/c` and creates `p/d`,
//! whose objcg reuses `c`'s entry (with the next generation) whenever the
//! release came first. (Two threads: a third one for the drop multiplies
//! the executions by ten for little more.)
//!
//! Checked: the reserver failed with `Removed` or holds `c`'s objcg (first
//! generation, reporting `p/c` or `p`) or `p`'s, never `d`'s incarnation;
//! `d` gets `c`'s entry only if nobody held `c`'s objcg any more, and then
//! with a later generation; conservation and references
//! (`check_invariants`); usage of `p` is the reserver's pages plus `d`'s;
//! once everything is dropped and drained usage is zero and the free list
//! is consistent.

use loom::thread;

use super::{
    assert_invariants, assert_stocks_empty, assert_usage_zero, model, reservation_word, slot_word,
};
use crate::engine::Config;
use crate::{Controller, Error, Topology, PAGE_SIZE};

/// Bytes of the reservation made in `p/c` before the race.
const HELD_BYTES: u64 = 3000;
/// Bytes the racing reservation asks for in `p/c`.
const RACING_BYTES: u64 = 5000;
/// Pages `RACING_BYTES` charges.
const RACING_PAGES: u64 = 2;
/// Bytes reserved in `p/d`.
const D_BYTES: u64 = 100;

#[test]
fn reuse_racing_reservation_drop_and_charge_on_removed_group() {
    model(|| {
        let ctrl = Controller::with_config(
            Topology::from_spec("1x1").expect("topology"),
            Config::default().reclaimer_thread(false),
        );
        let p = ctrl.create("p").expect("create p");
        let c = p.create_child("c").expect("create p/c");
        let (p_word, c_word) = (slot_word(&p), slot_word(&c));
        let held = c.try_charge(HELD_BYTES).expect("reserve in p/c");
        let child = c.clone();
        let racer = thread::spawn(move || {
            let r = child.try_charge(RACING_BYTES);
            let seen = r
                .as_ref()
                .ok()
                .map(|r| (r.group_path(), reservation_word(r)));
            drop(held);
            (r, seen)
        });
        c.remove().expect("remove p/c");
        let d = p.create_child("d").expect("create p/d");
        let in_d = d.try_charge(D_BYTES).expect("reserve in p/d");
        let d_word = slot_word(&d);
        let (in_c, seen) = racer.join().expect("racer");

        let c_pages = match (&in_c, &seen) {
            (Ok(r), Some((path, word))) => {
                assert_eq!(reservation_word(r), *word);
                assert!(
                    *word == c_word || *word == p_word,
                    "the reservation in p/c holds {word:#x}: neither c's {c_word:#x} \
                     nor p's {p_word:#x} (d's is {d_word:#x})"
                );
                let expected: &[&str] = if *word == c_word {
                    &["p/c", "p"]
                } else {
                    &["p"]
                };
                assert!(expected.contains(&path.as_str()), "reported {path:?}");
                assert_eq!(r.group_path(), "p", "after the removal it is p's");
                if *word == c_word {
                    assert_ne!(d_word as u32, c_word as u32, "d got an entry in use");
                }
                RACING_PAGES
            }
            (Err(Error::Removed { .. }), None) => 0,
            (Err(e), _) => panic!("the reservation in p/c failed with {e}"),
            (Ok(_), None) => unreachable!("a reservation's path is always noted"),
        };
        assert_eq!(in_d.group_path(), "p/d");
        assert_eq!(reservation_word(&in_d), d_word);
        if d_word as u32 == c_word as u32 {
            assert!(
                d_word >> 32 > c_word >> 32,
                "reuse without a new generation"
            );
        }
        assert_eq!(d.current_bytes(), PAGE_SIZE);
        assert_eq!(p.current_bytes(), (c_pages + 1) * PAGE_SIZE);
        assert_invariants(&ctrl);

        drop(in_c);
        drop(in_d);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_usage_zero(&[&p, &d, &ctrl.root()]);
        let (free, truncated) = ctrl.core().table.free_list(16);
        assert!(!truncated, "free list {free:?}");
        if d_word as u32 != c_word as u32 {
            assert!(
                free.contains(&(c_word as u32)),
                "c's entry was not released"
            );
        }
        assert_invariants(&ctrl);
    });
}
