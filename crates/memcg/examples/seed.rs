//! The seed patch's point, on a virtual 2-node machine.
//!
//! Runs the same workload twice: with the per-node task cache (the seed)
//! and with the single cached objcg it replaces. Tasks of one group charge
//! and free small objects while the scheduler moves them between the CPUs
//! of node 0 and node 1, and two "ping-pong" tasks on different nodes free
//! each other's objects (the pattern behind the kernel's reported
//! regression). Prints where the bytes were charged and how hard the
//! per-CPU stocks had to work.
//!
//! Run: `cargo run --release -p memcg --example seed`

use memcg::engine::{Charge, Config, EngineCounters, TaskCacheMode};
use memcg::{ChargeKind, Controller, Topology};

const STEPS: usize = 200_000;

struct Outcome {
    wrong_node_bytes: u64,
    total_bytes: u64,
    counters: EngineCounters,
}

/// A small deterministic generator (xorshift), so runs are repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn run(mode: TaskCacheMode) -> Result<Outcome, memcg::Error> {
    // 2 nodes × 4 CPUs: CPUs 0-3 on node 0, 4-7 on node 1.
    let topo = Topology::from_spec("2x4")?;
    let ctrl = Controller::with_config(topo.clone(), Config::default().task_cache(mode));
    let group = ctrl.create("app")?;
    let tasks: Vec<_> = (0..4)
        .map(|_| ctrl.new_task(&group))
        .collect::<Result<_, _>>()?;
    let mut cpu_of: Vec<usize> = vec![0, 4, 1, 5];
    let mut live: Vec<Vec<(Charge, usize)>> = (0..tasks.len()).map(|_| Vec::new()).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total_bytes = 0;
    let mut wrong_node_bytes = 0;
    for step in 0..STEPS {
        let i = (rng.next() % tasks.len() as u64) as usize;
        // Tasks 2 and 3 migrate between nodes now and then.
        if i >= 2 && rng.next().is_multiple_of(1000) {
            cpu_of[i] = (cpu_of[i] + 4) % 8;
        }
        let cpu = cpu_of[i];
        let bytes = 16 + rng.next() % 512;
        let charge = tasks[i].charge(cpu, bytes, ChargeKind::Alloc)?;
        // Which node's objcg got it? Ask the task's cache.
        let node = tasks[i].obj_cgroup(topo.node_of(cpu)?)?.1;
        total_bytes += bytes;
        if node != topo.node_of(cpu)? {
            wrong_node_bytes += bytes;
        }
        live[i].push((charge, node));
        // Tasks 0 and 1 ping-pong: each frees the other's objects.
        let owner = if i < 2 { 1 - i } else { i };
        if live[owner].len() > 32 || step % 7 == 0 {
            if let Some((c, _)) = live[owner].pop() {
                tasks[i].uncharge(cpu, c)?;
            }
        }
    }
    for (i, l) in live.into_iter().enumerate() {
        for (c, _) in l {
            tasks[i].uncharge(cpu_of[i], c)?;
        }
    }
    let counters = ctrl.counters();
    drop(tasks);
    ctrl.drain_stocks();
    if let Err(v) = ctrl.check_invariants() {
        eprintln!("{v}");
        std::process::exit(1);
    }
    assert_eq!(group.current_bytes(), 0);
    Ok(Outcome {
        wrong_node_bytes,
        total_bytes,
        counters,
    })
}

fn main() -> Result<(), memcg::Error> {
    let per_node = run(TaskCacheMode::PerNode)?;
    let single = run(TaskCacheMode::Single)?;
    let per_k = |o: &Outcome, v: u64| 1000.0 * v as f64 / o.counters.task_charges.max(1) as f64;
    println!("{STEPS} charges on a virtual 2-node × 4-CPU machine\n");
    println!("{:<44} {:>12} {:>12}", "", "per-node", "single");
    let row = |name: &str, a: String, b: String| println!("{name:<44} {a:>12} {b:>12}");
    row(
        "bytes charged to another node's objcg",
        format!(
            "{:.1}%",
            100.0 * per_node.wrong_node_bytes as f64 / per_node.total_bytes as f64
        ),
        format!(
            "{:.1}%",
            100.0 * single.wrong_node_bytes as f64 / single.total_bytes as f64
        ),
    );
    for (name, f) in [
        (
            "byte-stock replacements per 1000 charges",
            (|c: &EngineCounters| c.obj_stock_replacements) as fn(&EngineCounters) -> u64,
        ),
        ("byte-stock drains per 1000 charges", |c| c.obj_stock_drains),
        ("shared-counter atomics per 1000 charges", |c| {
            c.shared_atomics
        }),
        ("charges past the task cache per 1000", |c| c.slow_charges),
    ] {
        row(
            name,
            format!("{:.2}", per_k(&per_node, f(&per_node.counters))),
            format!("{:.2}", per_k(&single, f(&single.counters))),
        );
    }
    row(
        "task cache refreshes",
        per_node.counters.refreshes.to_string(),
        single.counters.refreshes.to_string(),
    );
    println!("\nafter freeing everything and draining: usage 0, invariants hold (both runs)");
    Ok(())
}
