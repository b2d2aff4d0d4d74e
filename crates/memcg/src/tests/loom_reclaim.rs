//! The reclaim hand-off (`engine/reclaim.rs`) and a charge racing a group
//! removal and the reuse of its objcg's table entry, under loom.
//!
//! The controllers have no reclaimer thread (`Config::reclaimer_thread`
//! false): a model thread plays the reclaimer by calling
//! `Controller::run_reclaimer` (`Reclaimd::serve_pending`), after
//! `Reclaimd::set_served(true)` so that chargers over `max` wait for it.
//! Under loom a charge's wait for a pass is one wait that releases the
//! queue's lock, yields and re-takes it (`sync::Condvar::wait_timeout`), and
//! its deadline allows that one wait (`sync::Deadline`), so the model
//! explores the reclaimer serving before, during and after the wait.
//!
//! Checked in every execution: the invariants (`check_invariants`, the
//! table's free list included) with the charges alive and after they are
//! gone, zero usage once everything is dropped and drained, and the
//! property each model names.

use std::sync::Arc;

use loom::sync::Mutex;
use loom::thread;

use super::{
    assert_invariants, assert_stocks_empty, assert_usage_zero, model, reservation_word, slot_word,
};
use crate::engine::{Charge, Config, Task};
use crate::sync::Ordering;
use crate::{
    ChargeKind, Controller, Error, Group, Limit, ReclaimerHandle, Reservation, Topology, PAGE_SIZE,
};

/// A controller on one node with one CPU and no reclaimer thread.
fn controller() -> Controller {
    Controller::with_config(
        Topology::from_spec("1x1").expect("topology"),
        Config::default().reclaimer_thread(false),
    )
}

/// Table id of a slot word.
fn id_of(word: u64) -> u32 {
    word as u32
}

/// Generation of a slot word.
fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// Bytes reserved in `p/c`: two pages, one of them partly used.
const C_BYTES: u64 = 5000;
/// Pages `C_BYTES` charges.
const C_PAGES: u64 = 2;
/// Bytes reserved in `p/d`: one page, partly used.
const D_BYTES: u64 = 100;

/// What the charger in `p/c` got: its reservation (or the error), with the
/// group path and objcg word it reported right after charging.
type CCharge = (Result<Reservation, Error>, Option<(String, u64)>);

/// Reserves `C_BYTES` in `c` and notes the path and objcg reported at once.
fn charge_c(c: &Group) -> CCharge {
    let r = c.try_charge(C_BYTES);
    let seen = r
        .as_ref()
        .ok()
        .map(|r| (r.group_path(), reservation_word(r)));
    (r, seen)
}

/// Checks the charger's outcome: it failed with `Removed`, or it charged
/// `c`'s objcg (reporting `p/c` at once only if it charged before the
/// removal) or `p`'s, never the objcg of a group made after the removal
/// (a reused entry); once the removal is done (`removed`) it reports `p`.
/// Returns the pages it holds.
#[track_caller]
fn check_c_charge(charged: &CCharge, c_word: u64, p_word: u64, removed: bool) -> u64 {
    match charged {
        (Ok(r), Some((path_then, word))) => {
            assert_eq!(reservation_word(r), *word);
            assert!(
                *word == c_word || *word == p_word,
                "the charge for p/c holds objcg {word:#x}, neither c's {c_word:#x} nor p's {p_word:#x}"
            );
            // `p/c` only while it was online, which needs `c`'s objcg.
            let expected_then: &[&str] = if *word == c_word {
                &["p/c", "p"]
            } else {
                &["p"]
            };
            assert!(
                expected_then.contains(&path_then.as_str()),
                "the charge reported {path_then:?} with objcg {word:#x}"
            );
            if removed {
                assert_eq!(r.group_path(), "p", "after the removal it is p's");
            }
            C_PAGES
        }
        (Err(Error::Removed { .. }), None) => 0,
        (Err(e), _) => panic!("the reservation in p/c failed with {e}"),
        (Ok(_), None) => unreachable!("a reservation's path is always noted"),
    }
}

/// Thread 1 reserves in `p/c` (an explicit reservation, kept until the
/// end) while the main thread removes `p/c`, creates `p/d` (which may get
/// `c`'s released table entry with a new generation) and reserves in it.
/// A charge that read `c`'s slot word before the removal must not keep a
/// reference on the entry's next incarnation (`tryget_word` checks the
/// generation): the reservation in `p/d` reports `p/d`, the one for `p/c`
/// reports `p`, `c`'s entry is reused only if the charger does not hold
/// it, and usage balances at `p` and root.
#[test]
fn charge_racing_removal_and_reuse_keeps_the_table_consistent() {
    model(|| {
        let ctrl = controller();
        let p = ctrl.create("p").expect("create p");
        let c = p.create_child("c").expect("create p/c");
        let (p_word, c_word) = (slot_word(&p), slot_word(&c));
        let child = c.clone();
        let charger = thread::spawn(move || charge_c(&child));
        c.remove().expect("remove p/c");
        let d = p.create_child("d").expect("create p/d");
        let in_d = d.try_charge(D_BYTES).expect("reserve in p/d");
        let in_c = charger.join().expect("charger");

        let c_pages = check_c_charge(&in_c, c_word, p_word, true);
        assert_eq!(in_d.group_path(), "p/d");
        let d_word = slot_word(&d);
        assert_eq!(reservation_word(&in_d), d_word);
        if let (Ok(r), _) = &in_c {
            if reservation_word(r) == c_word {
                assert_ne!(id_of(d_word), id_of(c_word), "p/d got an entry in use");
            }
        }
        if id_of(d_word) == id_of(c_word) {
            assert!(generation_of(d_word) > generation_of(c_word));
        }
        assert_eq!(d.current_bytes(), PAGE_SIZE);
        assert_eq!(p.current_bytes(), (c_pages + 1) * PAGE_SIZE);
        assert_eq!(ctrl.root().current_bytes(), (c_pages + 1) * PAGE_SIZE);
        assert_invariants(&ctrl);

        drop(in_c);
        drop(in_d);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_usage_zero(&[&p, &d, &ctrl.root()]);
        assert_invariants(&ctrl);
    });
}

/// As above, but the charger drops its reservation at once (the last
/// reference on `c`'s objcg may be its own) while the main thread creates
/// `p/d` and `p/e` after the removal; once both are done `p/f` is created.
/// `c`'s entry is released exactly once (the release's lock-free push
/// races the creations' pops) and is then certainly reused: by the end
/// it belongs to one of `p/d`, `p/e`, `p/f`, with a later generation, the
/// three groups hold three distinct entries, and the free list is empty.
#[test]
fn charge_racing_removal_and_definite_reuse_keeps_the_table_consistent() {
    model(|| {
        let ctrl = controller();
        let p = ctrl.create("p").expect("create p");
        let c = p.create_child("c").expect("create p/c");
        let (p_word, c_word) = (slot_word(&p), slot_word(&c));
        let child = c.clone();
        let charger = thread::spawn(move || {
            let charged = charge_c(&child);
            // Checked here, before the drop gives the entry back (the
            // removal may not be done yet).
            check_c_charge(&charged, c_word, p_word, false);
            drop(charged);
        });
        c.remove().expect("remove p/c");
        let d = p.create_child("d").expect("create p/d");
        let e = p.create_child("e").expect("create p/e");
        let in_d = d.try_charge(D_BYTES).expect("reserve in p/d");
        charger.join().expect("charger");
        let f = p.create_child("f").expect("create p/f");

        assert_eq!(in_d.group_path(), "p/d");
        let words = [slot_word(&d), slot_word(&e), slot_word(&f)];
        let reused: Vec<u64> = words
            .iter()
            .copied()
            .filter(|w| id_of(*w) == id_of(c_word))
            .collect();
        assert_eq!(
            reused.len(),
            1,
            "c's entry is not reused exactly once: {words:x?}"
        );
        assert!(generation_of(reused[0]) > generation_of(c_word));
        for (i, w) in words.iter().enumerate() {
            assert_ne!(id_of(*w), id_of(p_word));
            for v in &words[i + 1..] {
                assert_ne!(
                    id_of(*w),
                    id_of(*v),
                    "two groups share an entry: {words:x?}"
                );
            }
        }
        let (free, truncated) = ctrl.core().table.free_list(16);
        assert!(free.is_empty() && !truncated, "free list {free:?}");
        assert_eq!(p.current_bytes(), PAGE_SIZE);
        assert_invariants(&ctrl);

        drop(in_d);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_usage_zero(&[&p, &d, &e, &f, &ctrl.root()]);
        assert_invariants(&ctrl);
    });
}

/// Thread 1 reserves in `p/c` while the main thread removes `p/c`, creates
/// `p/d` (which may take `c`'s released entry), removes `p/d` again and
/// creates `p/e`. A charge that read `c`'s slot word before the removal
/// may `tryget` the entry while it is `d`'s, and its put after the
/// generation check may then be the last reference of `d`'s objcg, so that
/// the release (and the push on the free list) happens inside the stale
/// lookup, racing the creation of `p/e`. The entry must be released
/// exactly once and end up either free or `e`'s (the free-list check of
/// `check_invariants`), and the charger still lands on `p`.
#[test]
fn stale_lookup_releasing_the_reused_entry_keeps_the_table_consistent() {
    model(|| {
        let ctrl = controller();
        let p = ctrl.create("p").expect("create p");
        let c = p.create_child("c").expect("create p/c");
        let (p_word, c_word) = (slot_word(&p), slot_word(&c));
        let child = c.clone();
        let charger = thread::spawn(move || charge_c(&child));
        c.remove().expect("remove p/c");
        let d = p.create_child("d").expect("create p/d");
        let d_word = slot_word(&d);
        d.remove().expect("remove p/d");
        let e = p.create_child("e").expect("create p/e");
        let in_e = e.try_charge(D_BYTES).expect("reserve in p/e");
        let in_c = charger.join().expect("charger");

        let c_pages = check_c_charge(&in_c, c_word, p_word, true);
        assert_eq!(in_e.group_path(), "p/e");
        let e_word = slot_word(&e);
        assert_ne!(e_word, d_word);
        let (free, truncated) = ctrl.core().table.free_list(16);
        assert!(!truncated, "free list {free:?}");
        if id_of(e_word) != id_of(d_word) {
            assert!(free.contains(&id_of(d_word)), "d's entry was not released");
        }
        assert_eq!(p.current_bytes(), (c_pages + 1) * PAGE_SIZE);
        assert_invariants(&ctrl);

        drop(in_c);
        drop(in_e);
        ctrl.drain_stocks();
        assert_stocks_empty(&ctrl);
        assert_usage_zero(&[&p, &e, &ctrl.root()]);
        assert_invariants(&ctrl);
    });
}

/// `max` of the limited group, in pages.
const MAX_PAGES: u64 = 4;
/// Bytes the cache holds (a reservation its reclaim callback frees).
const CACHED_BYTES: u64 = 3 * PAGE_SIZE;
/// Bytes the task charges: with the cache full, over `max`.
const CHARGE_BYTES: u64 = 2 * PAGE_SIZE;
/// Times the reclaimer thread serves the queue before it stops.
const SERVE_ROUNDS: usize = 2;

/// An application cache: a reservation behind the "cache lock".
type Cache = Arc<Mutex<Option<Reservation>>>;

/// A limited group `g` whose cache holds `CACHED_BYTES`, with a reclaim
/// callback that takes the cache lock and frees the cache.
struct Limited {
    ctrl: Controller,
    g: Group,
    cache: Cache,
    handle: ReclaimerHandle,
}

/// A [`Limited`] group and a task in it. The queue is marked served, so
/// the task's charges over `max` wait for a pass.
fn limited() -> (Limited, Task) {
    let ctrl = controller();
    let g = ctrl.create("g").expect("create g");
    g.set_max(Limit::Bytes(MAX_PAGES * PAGE_SIZE))
        .expect("set max");
    let cache: Cache = Arc::new(Mutex::new(Some(
        g.try_charge(CACHED_BYTES).expect("fill the cache"),
    )));
    let handle = {
        let cache = Arc::clone(&cache);
        g.register_reclaimer(move |_request| evict(&cache))
    };
    ctrl.core().reclaimd.set_served(true);
    let task = ctrl.new_task(&g).expect("task");
    let l = Limited {
        ctrl,
        g,
        cache,
        handle,
    };
    (l, task)
}

/// The reclaim callback: empties the cache (under its lock) and returns
/// the bytes freed.
fn evict(cache: &Cache) -> u64 {
    let taken = cache.lock().expect("cache lock").take();
    taken.map_or(0, |r| {
        let bytes = r.bytes();
        drop(r);
        bytes
    })
}

/// The reclaimer thread: serves the queue `SERVE_ROUNDS` times, stopping
/// after the first round that completed a reclaim pass. Returns the
/// number of waits that had timed out right after that pass, if one ran.
fn spawn_reclaimer(ctrl: &Controller) -> thread::JoinHandle<Option<u64>> {
    let ctrl = ctrl.clone();
    thread::spawn(move || {
        for _ in 0..SERVE_ROUNDS {
            ctrl.run_reclaimer();
            let (passes, wait_timeouts, _) = ctrl.reclaimer_counters();
            if passes > 0 {
                return Some(wait_timeouts);
            }
            thread::yield_now();
        }
        None
    })
}

/// Serves what is left, empties the cache, uncharges and checks the end
/// state.
fn finish(l: Limited, task: Task, charge: Charge) {
    let Limited {
        ctrl,
        g,
        cache,
        handle,
    } = l;
    ctrl.run_reclaimer();
    drop(cache.lock().expect("cache lock").take());
    drop(handle);
    task.uncharge(0, charge).expect("uncharge");
    task.flush(0).expect("flush");
    drop(task);
    ctrl.drain_stocks();
    assert_stocks_empty(&ctrl);
    assert_usage_zero(&[&g, &ctrl.root()]);
    assert_invariants(&ctrl);
}

/// Thread 1 holds the cache lock while its task charges over `max`
/// (default policy Kill); the reclaim callback needs that lock, so the
/// pass the charge asks for cannot complete before the charge returns.
/// Thread 2 is the reclaimer. The charge must not hang (loom reports a
/// deadlock if any interleaving does): its one wait times out, and the
/// charge is forced with `g` killed, `oom_kill == 1`, the cache untouched
/// while the lock was held. (The other outcome the design allows, a charge
/// that succeeds after the callback freed memory, needs the lock free; the
/// next model has it.)
#[test]
fn waiter_times_out_while_the_callback_blocks() {
    model(|| {
        let (l, task) = limited();
        let reclaimer = spawn_reclaimer(&l.ctrl);
        let cache = Arc::clone(&l.cache);
        let charger = thread::spawn(move || {
            let guard = cache.lock().expect("cache lock");
            let charge = task.charge(0, CHARGE_BYTES, ChargeKind::Alloc);
            let cached = guard.is_some();
            drop(guard);
            (task, charge, cached)
        });
        let (task, charge, cached) = charger.join().expect("charger");
        reclaimer.join().expect("reclaimer");

        let charge = charge.expect("policy Kill forces the charge");
        assert!(
            cached,
            "the callback freed the cache under the charger's lock"
        );
        let events = l.g.events();
        assert!(l.g.is_killed(), "the charge over max did not kill");
        assert_eq!(events.oom_kill, 1);
        assert_eq!(events.oom, 1);
        let (_passes, wait_timeouts, panics) = l.ctrl.reclaimer_counters();
        assert_eq!(wait_timeouts, 1, "the charge did not wait exactly once");
        assert_eq!(panics, 0);
        let still_cached = l.cache.lock().expect("cache lock").is_some();
        let cached_pages = if still_cached {
            CACHED_BYTES / PAGE_SIZE
        } else {
            0
        };
        assert_eq!(
            l.g.current_bytes(),
            (cached_pages + CHARGE_BYTES / PAGE_SIZE) * PAGE_SIZE
        );
        assert_invariants(&l.ctrl);
        finish(l, task, charge);
    });
}

/// Thread 1's task charges over `max` with the cache lock free; thread 2
/// is the reclaimer, whose callback frees the cache. In every
/// interleaving:
/// - a charge that did not kill succeeded within `max` after the callback
///   freed the cache;
/// - a kill comes only after the charge's wait timed out;
/// - a wait that did not time out saw a pass, so the charge did not kill;
/// - if the reclaimer completed its pass before any wait had timed out
///   (it reads the timeout counter right after the pass, under the
///   queue's lock order), the waiter sees that pass: no timeout, no kill.
///
/// The last one fails if the pass counter is not incremented
/// (`serve_reclaim`) or `wait_for_pass` does not re-check it after its
/// wait.
#[test]
fn reclaim_pass_is_seen_by_the_waiter() {
    model(|| {
        let (l, task) = limited();
        let reclaimer = spawn_reclaimer(&l.ctrl);
        let charger = thread::spawn(move || {
            let charge = task.charge(0, CHARGE_BYTES, ChargeKind::Alloc);
            (task, charge)
        });
        let (task, charge) = charger.join().expect("charger");
        let timeouts_after_pass = reclaimer.join().expect("reclaimer");

        let charge = charge.expect("policy Kill forces the charge");
        let killed = l.g.is_killed();
        let events = l.g.events();
        let (_passes, wait_timeouts, panics) = l.ctrl.reclaimer_counters();
        let freed = l.cache.lock().expect("cache lock").is_none();
        assert_eq!(panics, 0);
        assert_eq!(events.oom_kill, u64::from(killed));
        if killed {
            assert_eq!(wait_timeouts, 1, "killed without a timed-out wait");
        } else {
            assert!(freed, "a charge over max succeeded without reclaim");
            assert_eq!(l.g.current_bytes(), CHARGE_BYTES);
            assert!(l.g.current_bytes() <= MAX_PAGES * PAGE_SIZE);
        }
        if wait_timeouts == 0 {
            assert!(!killed, "the wait saw a pass, yet the charge killed");
        }
        if timeouts_after_pass == Some(0) {
            assert_eq!(
                wait_timeouts, 0,
                "the pass completed before the deadline, yet the wait timed out"
            );
            assert!(!killed);
        }
        assert_invariants(&l.ctrl);
        finish(l, task, charge);
    });
}

/// Two reclaimer threads serving one group's requests: a callback never
/// runs on two threads at once, a request that comes while the group is
/// served is served by the serving thread next (not dropped), and the
/// queue ends idle with no group left claimed.
#[test]
fn two_reclaimers_serve_one_group_one_at_a_time_and_lose_no_request() {
    model(|| {
        let ctrl = controller();
        let g = ctrl.create("g").expect("group");
        let reclaimd = Arc::clone(&ctrl.core().reclaimd);
        reclaimd.set_served(true);
        let running = Arc::new(crate::sync::AtomicUsize::new(0));
        let calls = Arc::new(crate::sync::AtomicUsize::new(0));
        let (r2, c2) = (Arc::clone(&running), Arc::clone(&calls));
        let _h = g.register_reclaimer(move |_| {
            assert_eq!(r2.fetch_add(1, Ordering::AcqRel), 0, "ran on two threads");
            c2.fetch_add(1, Ordering::Relaxed);
            r2.fetch_sub(1, Ordering::AcqRel);
            0
        });
        let memcg = Arc::clone(g.memcg());
        reclaimd.request_reclaim(&memcg, PAGE_SIZE, crate::ReclaimReason::Max);
        let servers: Vec<_> = (0..2)
            .map(|_| {
                let c = ctrl.clone();
                thread::spawn(move || c.run_reclaimer())
            })
            .collect();
        // A second request, racing the servers' passes.
        reclaimd.request_reclaim(&memcg, PAGE_SIZE, crate::ReclaimReason::Max);
        for s in servers {
            s.join().expect("server");
        }
        // What the servers left (a request after their last look).
        ctrl.run_reclaimer();
        let st = &memcg.reclaim;
        assert!(
            !st.queued.load(Ordering::Acquire),
            "a request was lost: passes {} calls {} serving {} rerun {} idle {}",
            st.passes.load(Ordering::Acquire),
            calls.load(Ordering::Relaxed),
            st.serving.load(Ordering::Relaxed),
            st.rerun.load(Ordering::Relaxed),
            reclaimd.wait_idle(std::time::Duration::ZERO)
        );
        assert!(!st.serving.load(Ordering::Relaxed));
        assert!(!st.rerun.load(Ordering::Relaxed));
        assert!(calls.load(Ordering::Relaxed) >= 1);
        // A pass whose request was merged into the one before has nothing
        // left to ask for and runs no callback.
        assert!(st.passes.load(Ordering::Acquire) >= calls.load(Ordering::Relaxed) as u64);
        assert!(
            reclaimd.wait_idle(std::time::Duration::ZERO),
            "the queue is idle"
        );
    });
}
