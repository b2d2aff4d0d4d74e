//! `Group::error_bound` against reality: real threads charge and free
//! through tasks while the main thread samples `memory.current − live` and
//! `statistics − live`, which must stay within the bound; and a crafted
//! state in which every page-stock slot is full shows the check can fail:
//! a bound without its page-stock term is exceeded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memcg::engine::Charge;
use memcg::{ChargeKind, Controller, ErrorBound, Group, Topology};

/// Largest object the workers charge.
const MAX_OBJECT_BYTES: u64 = 16 << 10;

fn ctrl_2x2() -> Controller {
    Controller::new(Topology::from_spec("2x2").expect("valid spec"))
}

/// The live bytes the group's statistics show (hierarchical).
fn stats_live_bytes(g: &Group) -> u64 {
    let s = g.stats().stat;
    s.alloc_bytes + s.runtime_bytes + s.reservation_bytes
}

/// A small deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the test knows of the group under watch (`t`): its live bytes as
/// counted by the workers, and how many operations completed.
///
/// A worker adds a charge's bytes after the charge returned and subtracts
/// them before it uncharges, then counts the operation. So at any instant
/// `live` is at most the bytes really charged to objects, and short of
/// them by at most one object per worker (its operation in flight); and
/// between two readings of `ops` that are equal, `live` moved by at most
/// one object per worker.
#[derive(Default)]
struct Truth {
    live: AtomicU64,
    ops: AtomicU64,
}

/// A charge and whether it is one of `t`'s subtree.
type Held = (Charge, bool);

struct Worker {
    id: u64,
    ctrl: Controller,
    home: Group,
    /// Whether `home` is in `t`'s subtree.
    home_in_t: bool,
    /// A group of `t`'s subtree that the worker sometimes enters.
    visit: Group,
    truth: Arc<Truth>,
    /// Charges any worker may free (frees on other threads and groups).
    pool: Arc<Mutex<Vec<Held>>>,
    ops: u64,
}

impl Worker {
    fn run(self) {
        let task = self.ctrl.new_task(&self.home).expect("task");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (self.id + 1));
        let mut held: Vec<Held> = Vec::new();
        for _ in 0..self.ops {
            // Any CPU: the task migrates between CPUs and nodes.
            let cpu = rng.below(4) as usize;
            match rng.below(100) {
                0..=54 => {
                    let bytes = 8 + rng.below(MAX_OBJECT_BYTES - 8);
                    let kind = if rng.below(8) == 0 {
                        ChargeKind::Runtime
                    } else {
                        ChargeKind::Alloc
                    };
                    // Now and then in a scope of `t`'s subtree.
                    let scoped = rng.below(10) == 0;
                    let guard = scoped.then(|| task.enter(&self.visit).expect("enter"));
                    let in_t = scoped || self.home_in_t;
                    if let Ok(c) = task.charge(cpu, bytes, kind) {
                        if in_t {
                            self.truth.live.fetch_add(bytes, Ordering::SeqCst);
                        }
                        held.push((c, in_t));
                    }
                    drop(guard);
                }
                55..=89 => {
                    if !held.is_empty() {
                        let i = rng.below(held.len() as u64) as usize;
                        let (c, in_t) = held.swap_remove(i);
                        uncharge(&task, cpu, c, in_t, &self.truth);
                    }
                }
                90..=94 => {
                    if let Some(h) = held.pop() {
                        self.pool.lock().expect("pool").push(h);
                    }
                }
                95..=98 => {
                    let h = self.pool.lock().expect("pool").pop();
                    if let Some((c, in_t)) = h {
                        uncharge(&task, cpu, c, in_t, &self.truth);
                    }
                }
                _ => task.flush(cpu).expect("flush"),
            }
            self.truth.ops.fetch_add(1, Ordering::SeqCst);
        }
        for (c, in_t) in held {
            uncharge(&task, 0, c, in_t, &self.truth);
            self.truth.ops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn uncharge(task: &memcg::engine::Task, cpu: usize, c: Charge, in_t: bool, truth: &Truth) {
    if in_t {
        truth.live.fetch_sub(c.bytes(), Ordering::SeqCst);
    }
    task.uncharge(cpu, c).expect("uncharge");
}

/// Makes short-lived children of `t` whose objects outlive them (they are
/// reparented into `t`, and the removed groups' objcgs count in the bound),
/// until `stop`.
fn churn_children(
    ctrl: Controller,
    t: Group,
    truth: Arc<Truth>,
    pool: Arc<Mutex<Vec<Held>>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let child = t.create_child(&format!("c{i}")).expect("child");
        let task = ctrl.new_task(&child).expect("task");
        for k in 0..4u64 {
            let bytes = 64 + 1000 * k;
            let c = task
                .charge((i + k) as usize % 4, bytes, ChargeKind::Alloc)
                .expect("charge");
            truth.live.fetch_add(bytes, Ordering::SeqCst);
            pool.lock().expect("pool").push((c, true));
            truth.ops.fetch_add(1, Ordering::SeqCst);
        }
        drop(task);
        child.remove().expect("remove");
        truth.ops.fetch_add(1, Ordering::SeqCst);
        i += 1;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The wider of two bounds taken around a sample (tasks and groups come
/// and go meanwhile).
fn wider(a: ErrorBound, b: ErrorBound) -> ErrorBound {
    let mut w = a;
    w.current_bytes = a.current_bytes.max(b.current_bytes);
    w.stats_lag_bytes = a.stats_lag_bytes.max(b.stats_lag_bytes);
    w.nr_objcgs = a.nr_objcgs.min(b.nr_objcgs);
    w
}

#[test]
fn current_and_statistics_stay_within_the_error_bound_while_threads_charge() {
    let ctrl = ctrl_2x2();
    let t = ctrl.create("t").expect("t");
    let a = t.create_child("a").expect("a");
    let b = t.create_child("b").expect("b");
    let outside = ctrl.create("u").expect("u");
    let truth = Arc::new(Truth::default());
    let pool: Arc<Mutex<Vec<Held>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // A removed child whose object lives to the end: its objcgs, now
    // owned by `t`, count in every bound below.
    let kept = {
        let child = t.create_child("kept").expect("kept");
        let task = ctrl.new_task(&child).expect("task");
        let c = task.charge(3, 3000, ChargeKind::Alloc).expect("charge");
        truth.live.fetch_add(3000, Ordering::SeqCst);
        drop(task);
        child.remove().expect("remove");
        c
    };
    let workers: Vec<_> = [(&a, true), (&a, true), (&b, true), (&outside, false)]
        .into_iter()
        .enumerate()
        .map(|(id, (home, home_in_t))| {
            let w = Worker {
                id: id as u64,
                ctrl: ctrl.clone(),
                home: home.clone(),
                home_in_t,
                visit: if id % 2 == 0 { b.clone() } else { a.clone() },
                truth: Arc::clone(&truth),
                pool: Arc::clone(&pool),
                ops: 50_000,
            };
            std::thread::spawn(move || w.run())
        })
        .collect();
    let churn = {
        let (ctrl, t, truth, pool, stop) = (
            ctrl.clone(),
            t.clone(),
            Arc::clone(&truth),
            Arc::clone(&pool),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || churn_children(ctrl, t, truth, pool, stop))
    };
    // Workers and the churner: each has at most one object in flight.
    let threads = workers.len() as u64 + 1;

    let (mut samples, mut skipped) = (0u64, 0u64);
    let (mut worst_over, mut worst_under, mut worst_lag) = (0u64, 0u64, 0u64);
    let mut last_bound = t.error_bound();
    while workers.iter().any(|w| !w.is_finished()) {
        for with_stats in [false, true] {
            let before = t.error_bound();
            let o1 = truth.ops.load(Ordering::SeqCst);
            let l1 = truth.live.load(Ordering::SeqCst);
            let current = t.current_bytes();
            let stats = with_stats.then(|| stats_live_bytes(&t));
            let o2 = truth.ops.load(Ordering::SeqCst);
            let bound = wider(before, t.error_bound());
            last_bound = bound;
            // t, a, b and the removed `kept`, on two nodes.
            assert!(bound.nr_objcgs >= 8, "removed children count: {bound:?}");
            // Operations completed meanwhile, and the one in flight on
            // each thread, each moved `live` by at most one object.
            let moved = o2 - o1;
            if moved > 16 {
                skipped += 1;
                continue;
            }
            let slack = (moved + 2 * threads) * MAX_OBJECT_BYTES;
            samples += 1;
            let over = current.saturating_sub(l1);
            let under = l1.saturating_sub(current);
            worst_over = worst_over.max(over);
            worst_under = worst_under.max(under);
            assert!(
                over <= bound.current_bytes + slack,
                "memory.current {current} exceeds live {l1} by {over} > bound {} + slack {slack}: {bound:?}",
                bound.current_bytes
            );
            assert!(
                under <= slack,
                "memory.current {current} is below live {l1} by {under} > slack {slack}"
            );
            if let Some(stats) = stats {
                let lag = stats.abs_diff(l1);
                worst_lag = worst_lag.max(lag);
                assert!(
                    lag <= bound.stats_lag_bytes + slack,
                    "statistics {stats} are {lag} from live {l1} > bound {} + slack {slack}",
                    bound.stats_lag_bytes
                );
                // What a monitor without the truth checks: `current`
                // against the statistics.
                assert!(
                    current.saturating_sub(stats) <= bound.gap_bytes() + slack
                        && stats.saturating_sub(current) <= bound.stats_lag_bytes + slack,
                    "current {current} and statistics {stats} outside {bound:?} + slack {slack}"
                );
            }
        }
    }
    for w in workers {
        w.join().expect("worker");
    }
    stop.store(true, Ordering::SeqCst);
    churn.join().expect("churner");
    eprintln!(
        "{samples} samples ({skipped} skipped): worst current-live {worst_over}, live-current \
         {worst_under}, |stats-live| {worst_lag}; last bound {last_bound:?}"
    );
    assert!(
        samples >= 100,
        "enough samples: {samples} ({skipped} skipped)"
    );

    // Everything left is in the pool: free it, then the bound's caches
    // drain to nothing.
    let task = ctrl.new_task(&ctrl.root()).expect("task");
    uncharge(&task, 0, kept, true, &truth);
    for (c, in_t) in pool.lock().expect("pool").drain(..) {
        uncharge(&task, 0, c, in_t, &truth);
    }
    assert_eq!(truth.live.load(Ordering::SeqCst), 0);
    task.flush(0).expect("flush");
    drop(task);
    ctrl.drain_stocks();
    assert_eq!(t.current_bytes(), 0);
    assert_eq!(stats_live_bytes(&t), 0);
    if let Err(v) = ctrl.check_invariants() {
        panic!("{v}");
    }
}

#[test]
fn a_bound_without_its_page_stock_term_is_exceeded_when_every_page_stock_slot_is_full() {
    let ctrl = ctrl_2x2();
    let t = ctrl.create("t").expect("t");
    let groups: Vec<Group> = (0..memcg::engine::NR_MEMCG_STOCK)
        .map(|i| t.create_child(&format!("g{i}")).expect("group"))
        .collect();
    let tasks: Vec<memcg::engine::Task> = groups
        .iter()
        .map(|g| ctrl.new_task(g).expect("task"))
        .collect();
    // One charge per (group, CPU), each larger than a task's byte cache
    // ever keeps (4 pages, topped up from the page stock after a page
    // charge): every charge takes a batch of pages, and each CPU's page
    // stock keeps the rest (less the cache's top-up), one slot per (group,
    // node) objcg: all 7 slots of all 4 CPUs.
    let bytes = 4 * 4096 + 5000;
    let mut charges = Vec::new();
    for cpu in 0..4 {
        for task in &tasks {
            charges.push((
                cpu,
                task.charge(cpu, bytes, ChargeKind::Alloc).expect("charge"),
            ));
        }
    }
    let live = bytes * charges.len() as u64;
    let current = t.current_bytes();
    let gap = current - live;
    let bound = t.error_bound();
    assert!(gap <= bound.current_bytes, "gap {gap} within {bound:?}");
    // Most: each slot's batch less the charge's pages and its first
    // top-up of the cache (about 89 % measured).
    assert!(
        gap * 10 >= bound.page_stocks_bytes * 8,
        "the page stocks hold most of their bound: gap {gap}, term {}",
        bound.page_stocks_bytes
    );
    let mut smaller = bound;
    smaller.current_bytes -= smaller.page_stocks_bytes;
    smaller.page_stocks_bytes = 0;
    assert!(
        gap > smaller.current_bytes,
        "without the page-stock term the bound ({}) is exceeded by the gap {gap}",
        smaller.current_bytes
    );
    assert!(bound.covers(current, live) && !smaller.covers(current, live));

    for (cpu, c) in charges {
        tasks[0].uncharge(cpu, c).expect("uncharge");
    }
    for task in &tasks {
        task.flush(0).expect("flush");
    }
    ctrl.drain_stocks();
    assert_eq!(t.current_bytes(), 0);
    if let Err(v) = ctrl.check_invariants() {
        panic!("{v}");
    }
}
