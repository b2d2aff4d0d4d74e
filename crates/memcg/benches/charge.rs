//! Charge-path benchmarks (DESIGN §4.4, §4.5, §5; STYLE R10).
//!
//! Every group holds an unaccounted baseline measured in the same run, so
//! results read as ratios. Each iteration is one charge + one uncharge (a
//! "pair"); criterion's time per iteration is the time per pair.
//!
//! - `charge/hit_pair`: 64 B through one task on one CPU, steady state
//!   (the task's byte cache hits), against two relaxed load+store pairs
//!   on a local counter and two `fetch_add` on a shared counter.
//! - `charge/miss_pair_4k`: 4096 B, two tasks of two groups alternating
//!   on one CPU. `two_tasks_4096B` uncharges through the task (each task's
//!   byte cache keeps one page, so this still hits); `stock_4096B`
//!   uncharges through the controller, so every charge misses the byte
//!   cache and uses the per-CPU obj stock (level 2), both objcgs sharing
//!   its slots.
//! - `refresh/attach_then_charge`: attach the task to the other of two
//!   groups, then charge + uncharge 64 B (the charge refreshes the
//!   per-node array: O(nodes)), for 1, 2, 8 and 64 nodes.
//! - `charge/cross_node_pair`: a task alternating CPUs of node 0 and node
//!   1, per-node cache (the seed) against the single-objcg cache.
//!
//! Before measuring, each scenario runs a few pairs and prints on stderr
//! how many of them took the slow path and refreshed, so a change in the
//! engine that moves a scenario off its intended path shows up.
//!
//! Defaults keep the whole run under about a minute; `--quick`,
//! `--warm-up-time` and `--measurement-time` override them, e.g.
//! `cargo bench -p memcg --bench charge -- --warm-up-time 1 --measurement-time 3`.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Bencher, BenchmarkId, Criterion};
use memcg::engine::{Task, TaskCacheMode};
use memcg::{ChargeKind, Controller, Topology};

/// Bytes of a small object (the hit path).
const SMALL_BYTES: u64 = 64;
/// Bytes of a page-sized object (past the byte cache).
const PAGE_BYTES: u64 = 4096;
/// Pairs run before measuring, to reach steady state and check the path.
const PROBE_PAIRS: u64 = 1000;

/// A counter other threads could see, for the `fetch_add` baseline.
static SHARED: AtomicU64 = AtomicU64::new(0);

/// One charge + uncharge of `bytes` through `task` on `cpu`.
#[inline(always)]
fn pair(task: &Task, cpu: usize, bytes: u64) {
    let charge = match task.charge(black_box(cpu), black_box(bytes), ChargeKind::Alloc) {
        Ok(c) => c,
        Err(e) => panic!("charge of {bytes} B on cpu {cpu} failed: {e}"),
    };
    // By reference: a by-value `black_box` copies the 32-byte `Charge`
    // with 16-byte moves that defeat store forwarding, a stall real
    // callers (`into_raw`) do not have.
    black_box(&charge);
    if let Err(e) = task.uncharge(black_box(cpu), charge) {
        panic!("uncharge of {bytes} B on cpu {cpu} failed: {e}");
    }
}

/// Runs `PROBE_PAIRS` iterations of `step` and reports, per iteration,
/// the slow charges, refreshes and shared atomics they caused.
fn probe(ctrl: &Controller, scenario: &str, step: &impl Fn(usize)) {
    let before = ctrl.counters();
    for i in 0..PROBE_PAIRS {
        step(i as usize);
    }
    let after = ctrl.counters();
    eprintln!(
        "path check {scenario}: {:.2} slow charges, {:.2} refreshes, {:.2} shared atomics per iteration",
        (after.slow_charges - before.slow_charges) as f64 / PROBE_PAIRS as f64,
        (after.refreshes - before.refreshes) as f64 / PROBE_PAIRS as f64,
        (after.shared_atomics - before.shared_atomics) as f64 / PROBE_PAIRS as f64,
    );
}

/// Times `step(i)` for `i` in `0..iters`, so that alternating scenarios
/// alternate on the loop index. Alternating on a flag kept in the
/// closure's environment (`flip = !flip` under `b.iter`) measured about
/// twice the hit pair's time for pairs that all hit the byte cache.
fn iter_indexed(b: &mut Bencher<'_>, step: &impl Fn(usize)) {
    b.iter_custom(|iters| {
        let start = Instant::now();
        for i in 0..iters {
            step(i as usize);
        }
        start.elapsed()
    });
}

/// Drops the tasks, drains the stocks and checks conservation: the bench
/// must not have leaked or double-counted anything.
fn finish(ctrl: &Controller, tasks: Vec<Task>) {
    drop(tasks);
    ctrl.drain_stocks();
    if let Err(v) = ctrl.check_invariants() {
        panic!("invariants broken after the bench: {v:?}");
    }
}

fn topology(spec: &str) -> Topology {
    Topology::from_spec(spec).unwrap_or_else(|e| panic!("topology {spec}: {e}"))
}

/// Two-load/two-store and two-`fetch_add` baselines for a pair.
fn baselines(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.bench_function("baseline/two_relaxed_load_store", |b| {
        // A counter only this thread writes, updated like the byte cache:
        // load + store to charge, load + store to uncharge.
        let local = AtomicU64::new(0);
        let local = black_box(&local);
        b.iter(|| {
            local.store(
                local.load(Ordering::Relaxed) + SMALL_BYTES,
                Ordering::Relaxed,
            );
            local.store(
                local.load(Ordering::Relaxed) - SMALL_BYTES,
                Ordering::Relaxed,
            );
        });
        black_box(local.load(Ordering::Relaxed));
    });
    group.bench_function("baseline/two_fetch_add", |b| {
        let shared = black_box(&SHARED);
        b.iter(|| {
            black_box(shared.fetch_add(SMALL_BYTES, Ordering::Relaxed));
            black_box(shared.fetch_add(SMALL_BYTES.wrapping_neg(), Ordering::Relaxed));
        });
    });
}

fn charge_hit_pair(c: &mut Criterion) {
    let ctrl = Controller::new(topology("1x1"));
    let g = ctrl.create("a").expect("create a");
    let task = ctrl.new_task(&g).expect("new task");
    probe(&ctrl, "charge/hit_pair", &|_| pair(&task, 0, SMALL_BYTES));

    let mut group = c.benchmark_group("charge/hit_pair");
    group.bench_function("task_64B", |b| b.iter(|| pair(&task, 0, SMALL_BYTES)));
    baselines(&mut group);
    group.finish();
    finish(&ctrl, vec![task]);
}

fn charge_miss_pair_4k(c: &mut Criterion) {
    let ctrl = Controller::new(topology("1x1"));
    let ga = ctrl.create("a").expect("create a");
    let gb = ctrl.create("b").expect("create b");
    let ta = ctrl.new_task(&ga).expect("task of a");
    let tb = ctrl.new_task(&gb).expect("task of b");
    let mut group = c.benchmark_group("charge/miss_pair_4k");

    // Two tasks, one per group, alternating on CPU 0, each uncharging its
    // own charge. A task's byte cache keeps exactly one page, so once warm
    // both tasks hit their own caches (the path check shows it).
    let two_tasks = |i: usize| pair(if i & 1 == 0 { &ta } else { &tb }, 0, PAGE_BYTES);
    probe(&ctrl, "charge/miss_pair_4k/two_tasks_4096B", &two_tasks);
    group.bench_function("two_tasks_4096B", |b| iter_indexed(b, &two_tasks));

    // The same, but uncharged without a task (`Controller::uncharge`, a
    // free on another thread): every charge misses the byte cache and
    // takes bytes and a reference from CPU 0's obj stock, and every
    // uncharge refills it, with both groups' objcgs sharing the stock.
    let stock = |i: usize| {
        let task = if i & 1 == 0 { &ta } else { &tb };
        let charge = match task.charge(black_box(0), black_box(PAGE_BYTES), ChargeKind::Alloc) {
            Ok(c) => c,
            Err(e) => panic!("charge of {PAGE_BYTES} B failed: {e}"),
        };
        black_box(&charge);
        if let Err(e) = ctrl.uncharge(black_box(0), charge) {
            panic!("uncharge of {PAGE_BYTES} B failed: {e}");
        }
    };
    probe(&ctrl, "charge/miss_pair_4k/stock_4096B", &stock);
    group.bench_function("stock_4096B", |b| iter_indexed(b, &stock));

    baselines(&mut group);
    group.finish();
    finish(&ctrl, vec![ta, tb]);
}

fn refresh_attach_then_charge(c: &mut Criterion) {
    let mut group = c.benchmark_group("refresh/attach_then_charge");
    for nodes in [1usize, 2, 8, 64] {
        let topo = Topology::uniform(nodes, 1)
            .unwrap_or_else(|e| panic!("topology of {nodes} nodes: {e}"));
        let ctrl = Controller::new(topo);
        let groups = [
            ctrl.create("a").expect("create a"),
            ctrl.create("b").expect("create b"),
        ];
        let task = ctrl.new_task(&groups[0]).expect("new task");
        let handle = task.handle();
        // The group the task is in; each step attaches it to the other.
        let current = Cell::new(0usize);
        let step = |_: usize| {
            let next = current.get() ^ 1;
            groups[next]
                .attach(&handle)
                .unwrap_or_else(|e| panic!("attach: {e}"));
            current.set(next);
            pair(&task, 0, SMALL_BYTES);
        };
        probe(&ctrl, &format!("refresh/attach_then_charge/{nodes}"), &step);
        group.bench_with_input(BenchmarkId::new("nodes", nodes), &nodes, |b, _| {
            iter_indexed(b, &step)
        });
        finish(&ctrl, vec![task]);
    }
    baselines(&mut group);
    group.finish();
}

fn charge_cross_node_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("charge/cross_node_pair");
    for (name, mode) in [
        ("per_node", TaskCacheMode::PerNode),
        ("single", TaskCacheMode::Single),
    ] {
        let ctrl = Controller::new(topology("2x1"));
        let g = ctrl.create("a").expect("create a");
        let task = ctrl.new_task_with_mode(&g, mode).expect("new task");
        // CPU 0 is on node 0, CPU 1 on node 1.
        let step = |i: usize| pair(&task, i & 1, SMALL_BYTES);
        probe(&ctrl, &format!("charge/cross_node_pair/{name}"), &step);
        group.bench_function(name, |b| iter_indexed(b, &step));
        finish(&ctrl, vec![task]);
    }
    baselines(&mut group);
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = charge_hit_pair, charge_miss_pair_4k, refresh_attach_then_charge, charge_cross_node_pair
}
criterion_main!(benches);
