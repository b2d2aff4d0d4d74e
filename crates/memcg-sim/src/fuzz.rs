//! `fuzz`: random scenarios, run with every check; on a violation the step
//! list is shrunk to a minimal one that still fails the same check, and
//! written as a scenario file.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::Context as _;

use crate::cli::FuzzArgs;
use crate::exit;
use crate::ops::Op;
use crate::progress::Progress;
use crate::rng::Rng;
use crate::scenario::{
    AttachChurn, CacheMode, FreeBy, GroupChurn, GroupSpec, Machine, OnOom, Run, Scenario, TaskSpec,
};
use crate::sim::{run_ops, Failure, RunOptions};

/// A random scenario for `seed` with `steps` steps: 1–3 nodes × 1–4 CPUs,
/// either cache mode, up to three groups (nested, some limited, some with
/// reclaimers, each with an OOM policy or its parent's), up to four task
/// kinds with random sizes, lifetimes, free patterns, migration,
/// reservations (sometimes spent on allocations), fallible allocations
/// and cache objects, sometimes attach churn and group churn. Refusals at
/// `max` and kills are counted, not failures.
pub fn random_scenario(seed: u64, steps: u64) -> Scenario {
    let mut r = Rng::new(seed ^ 0xf022_5eed);
    let nodes = r.range(1, 3);
    let cpus = r.range(1, 4);
    let group = |path: &str| GroupSpec {
        path: path.into(),
        max_bytes: None,
        reclaimer: false,
        oom_policy: None,
    };
    let mut groups = vec![group("a")];
    if r.chance(0.6) {
        groups.push(group("a/x"));
    }
    if r.chance(0.6) {
        groups.push(group("b"));
    }
    for g in &mut groups {
        if r.chance(0.4) {
            g.max_bytes = Some(r.range(64, 4096) * 4096);
            g.reclaimer = r.chance(0.6);
        }
        // Unset inherits (root's is `kill`).
        g.oom_policy = [
            None,
            Some(memcg::OomPolicy::Kill),
            Some(memcg::OomPolicy::Fail),
            Some(memcg::OomPolicy::Force),
        ][r.index(4)];
    }
    let nr_specs = r.range(1, 4) as usize;
    let names: Vec<String> = (0..nr_specs).map(|i| format!("t{i}")).collect();
    let mut tasks = Vec::new();
    for name in &names {
        let min = r.range(1, 256);
        let max = if r.chance(0.1) {
            r.range(min, 256 << 10)
        } else {
            r.range(min, 2048)
        };
        let free_by = match r.below(3) {
            0 => FreeBy::Own,
            1 => FreeBy::Peer,
            _ => FreeBy::Any,
        };
        tasks.push(TaskSpec {
            name: name.clone(),
            group: groups[r.index(groups.len())].path.clone(),
            count: r.range(1, 3),
            cpu: r.below(nodes * cpus),
            start_cpu: r.chance(0.2).then(|| r.below(nodes * cpus)),
            weight: r.range(1, 4) as f64,
            alloc_min_bytes: min,
            alloc_max_bytes: max,
            lifetime_ops: r.range(2, 200) as f64,
            free_by,
            peer: (free_by == FreeBy::Peer).then(|| names[r.index(names.len())].clone()),
            migrate_rate: [0.0, 0.001, 0.01, 0.1][r.index(4)],
            cross_node_share: r.unit(),
            reserve_rate: [0.0, 0.0, 0.005, 0.05][r.index(4)],
            reserve_max_bytes: r.range(1, 256 << 10),
            cache_share: [0.0, 0.3, 0.9][r.index(3)],
            flush_rate: [0.0, 0.001, 0.02][r.index(3)],
            fallible_share: [0.0, 0.0, 0.1, 0.5][r.index(4)],
            spend_share: [0.0, 0.3, 0.8][r.index(3)],
        });
    }
    let mut attach_churn = Vec::new();
    if groups.len() > 1 && r.chance(0.5) {
        attach_churn.push(AttachChurn {
            task: names[r.index(names.len())].clone(),
            groups: groups.iter().map(|g| g.path.clone()).collect(),
            every_steps: r.range(20, 2000),
        });
    }
    let mut group_churn = Vec::new();
    if r.chance(0.5) {
        group_churn.push(GroupChurn {
            parent: groups[r.index(groups.len())].path.clone(),
            task: names[r.index(names.len())].clone(),
            every_steps: r.range(20, 3000),
        });
    }
    Scenario {
        machine: Machine {
            topology: format!("{nodes}x{cpus}"),
            task_cache: if r.chance(0.5) {
                CacheMode::PerNode
            } else {
                CacheMode::Single
            },
            obj_stock_slots: 1 + r.index(memcg::engine::NR_OBJ_STOCK),
        },
        run: Run {
            steps,
            seed,
            on_oom: OnOom::Count,
        },
        groups,
        tasks,
        attach_churn,
        group_churn,
        steps: Vec::new(),
    }
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// Charges made.
    pub charges: u64,
    /// Refusals at `max` counted.
    pub ooms: u64,
    /// Groups killed by their OOM policy.
    pub kills: u64,
    /// Allocations paid from spent reservations.
    pub spent_charges: u64,
    /// The failure, with the scenario and steps that produced it.
    pub failure: Option<(Failure, Scenario, Vec<Op>)>,
}

/// Runs one seed.
///
/// # Errors
/// Engine errors building the machine.
pub fn run_seed(
    seed: u64,
    steps: u64,
    invariants_every: u64,
    inject: Option<&(u64, Op)>,
) -> memcg::Result<SeedResult> {
    let scenario = random_scenario(seed, steps);
    let mut ops = crate::workload::generate(&scenario)?;
    crate::inject(&mut ops, inject);
    let r = run_ops(
        &scenario,
        &ops,
        RunOptions {
            invariants_every,
            ..RunOptions::default()
        },
    )?;
    Ok(SeedResult {
        seed,
        charges: r.metrics.charges,
        ooms: r.metrics.ooms,
        kills: r.metrics.kills,
        spent_charges: r.metrics.spent_charges,
        failure: r.failure.map(|f| (f, scenario, ops)),
    })
}

fn fails(scenario: &Scenario, ops: &[Op], check: &str) -> Option<Failure> {
    let r = run_ops(scenario, ops, RunOptions::default()).ok()?;
    r.failure.filter(|f| f.check() == check)
}

/// Shrinks `ops` to a short list that still fails `failure`'s check:
/// truncates after the failing step, then removes ever smaller chunks
/// (delta debugging) while the check still fails, within `max_trials`
/// runs. Returns the steps and the failure they produce.
pub fn shrink(
    scenario: &Scenario,
    ops: Vec<Op>,
    failure: Failure,
    max_trials: usize,
) -> (Vec<Op>, Failure) {
    let check = failure.check();
    let truncate = |mut ops: Vec<Op>, f: &Failure| {
        if let Some(step) = f.step {
            ops.truncate(step as usize + 1);
        }
        ops
    };
    let mut best = truncate(ops, &failure);
    let mut best_failure = failure;
    let mut trials = 0;
    let mut chunk = best.len().div_ceil(2).max(1);
    loop {
        let mut removed_any = false;
        let mut i = 0;
        while i < best.len() && trials < max_trials {
            let end = (i + chunk).min(best.len());
            let mut candidate = best.clone();
            candidate.drain(i..end);
            trials += 1;
            if let Some(f) = fails(scenario, &candidate, check) {
                best = truncate(candidate, &f);
                best_failure = f;
                removed_any = true;
            } else {
                i = end;
            }
        }
        if trials >= max_trials || (chunk == 1 && !removed_any) {
            break;
        }
        if !removed_any {
            chunk = chunk.div_ceil(2);
        }
    }
    (best, best_failure)
}

/// `memcg-sim fuzz`.
///
/// # Errors
/// Bad options (exit 2), I/O errors.
pub fn command(args: &FuzzArgs) -> anyhow::Result<u8> {
    if args.steps == 0 || args.seeds == 0 {
        return Err(crate::UsageError("--seeds and --steps must be at least 1".into()).into());
    }
    let inject = args
        .inject
        .inject
        .as_deref()
        .map(crate::parse_inject)
        .transpose()?;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 64);
    let seeds: Vec<u64> = (0..args.seeds).map(|i| args.first_seed + i).collect();
    let mut results: Vec<Option<SeedResult>> = vec![None; seeds.len()];
    let mut progress = Progress::new(seeds.len() as u64, "seeds");
    let mut error = None;
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for w in 0..jobs {
            let tx = tx.clone();
            let seeds = &seeds;
            let inject = inject.as_ref();
            scope.spawn(move || {
                for (i, &seed) in seeds.iter().enumerate().skip(w).step_by(jobs) {
                    let r = run_seed(seed, args.steps, args.invariants_every, inject);
                    if tx.send((i, r)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            match r {
                Ok(r) => results[i] = Some(r),
                Err(e) => error = Some(e),
            }
            progress.inc(1);
        }
    });
    progress.finish();
    if let Some(e) = error {
        return Err(e.into());
    }
    let results: Vec<SeedResult> = results.into_iter().flatten().collect();
    let charges: u64 = results.iter().map(|r| r.charges).sum();
    let ooms: u64 = results.iter().map(|r| r.ooms).sum();
    let kills: u64 = results.iter().map(|r| r.kills).sum();
    let spent: u64 = results.iter().map(|r| r.spent_charges).sum();
    let mut out = std::io::stdout().lock();
    let Some(first) = results.iter().find(|r| r.failure.is_some()) else {
        writeln!(
            out,
            "fuzz: {} seeds ({}..{}) × {} steps: no violation ({charges} charges, {ooms} refusals at max and {kills} OOM kills counted, {spent} charges paid from reservations)",
            args.seeds,
            args.first_seed,
            args.first_seed + args.seeds - 1,
            args.steps
        )?;
        return Ok(exit::OK);
    };
    let Some((failure, scenario, ops)) = first.failure.clone() else {
        return Ok(exit::OK);
    };
    let nr_failed = results.iter().filter(|r| r.failure.is_some()).count();
    writeln!(
        out,
        "fuzz: {nr_failed} of {} seeds failed; first: {}",
        args.seeds,
        crate::report::failure_message(first.seed, &failure)
    )?;
    let original = ops.len();
    let (steps, shrunk_failure) = shrink(&scenario, ops, failure, 4000);
    let mut repro = scenario;
    repro.run.steps = steps.len() as u64;
    repro.steps = steps;
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| crate::default_out_dir().join("fuzz"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path: PathBuf = dir.join(format!("repro-seed-{}.toml", first.seed));
    let header = format!(
        "# memcg-sim fuzz reproducer: seed {}, shrunk from {original} to {} steps\n# fails: {}\n# run: memcg-sim run {}\n\n",
        first.seed,
        repro.steps.len(),
        crate::report::failure_message(first.seed, &shrunk_failure).replace('\n', "\n# "),
        path.display()
    );
    std::fs::write(&path, header + &repro.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(
        out,
        "minimal reproducer ({} steps): {}",
        repro.steps.len(),
        path.display()
    )?;
    out.flush()?;
    eprintln!(
        "memcg-sim: {}",
        crate::report::failure_message(first.seed, &failure_first_line(&shrunk_failure))
    );
    Ok(exit::VIOLATION)
}

fn failure_first_line(f: &Failure) -> Failure {
    f.clone()
}
