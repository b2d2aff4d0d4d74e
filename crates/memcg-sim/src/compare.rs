//! `compare`: the seed's experiment. The same workload (same seed, same
//! step list) runs twice on one virtual machine: with the per-node task
//! cache and with the pre-seed single-objcg cache.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use crate::cli::CompareArgs;
use crate::exit;
use crate::scenario::{CacheMode, FreeBy, GroupSpec, Machine, OnOom, Run, Scenario, TaskSpec};
use crate::sim::{run_ops, RunOptions, RunReport};
use crate::svg;

/// The figures of one run, as the table shows them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Figures {
    /// Share of charged bytes that went to another node's objcg, in %.
    pub wrong_node_percent: f64,
    /// Byte-stock slots taken over by another objcg, per 1,000 charges.
    pub obj_stock_replacements_per_1k: f64,
    /// Byte-stock slots drained, per 1,000 charges.
    pub obj_stock_drains_per_1k: f64,
    /// Page-stock slots drained or taken over, per 1,000 charges.
    pub page_stock_drains_per_1k: f64,
    /// Read-modify-writes on counters shared by all CPUs, per 1,000 charges.
    pub shared_atomics_per_1k: f64,
    /// Charges that needed more than the task's byte cache, per 1,000.
    pub slow_charges_per_1k: f64,
    /// Task cache refreshes.
    pub refreshes: u64,
    /// Largest `|root memory.current − exact live bytes|` after a step,
    /// in KiB.
    pub worst_error_kib: f64,
    /// Task charges counted by the engine (the denominator).
    pub task_charges: u64,
}

impl Figures {
    fn of(r: &RunReport) -> Figures {
        let c = &r.counters;
        let per_1k = |v: u64| 1000.0 * v as f64 / c.task_charges.max(1) as f64;
        Figures {
            wrong_node_percent: r.metrics.wrong_node_percent(),
            obj_stock_replacements_per_1k: per_1k(c.obj_stock_replacements),
            obj_stock_drains_per_1k: per_1k(c.obj_stock_drains),
            page_stock_drains_per_1k: per_1k(c.page_stock_drains),
            shared_atomics_per_1k: per_1k(c.shared_atomics),
            slow_charges_per_1k: per_1k(c.slow_charges),
            refreshes: c.refreshes,
            worst_error_kib: r.metrics.worst_error_bytes as f64 / 1024.0,
            task_charges: c.task_charges,
        }
    }
}

/// Ping-pong pairs switching on CPU 0 in the default workload.
pub const SWITCH_PAIRS: usize = 3;

/// The default workload of `compare` on `nodes × cpus` with `tasks`
/// tasks: group `app` holds `ping` on CPU 0 and `pong` on the first CPU
/// of the last node, which free each other's objects (16–512 bytes, mean
/// lifetime 16 steps) and never leave their CPUs; the other `tasks − 2`
/// are workers, two per group `app/w<k>`, that allocate 16–512 bytes
/// (mean lifetime 32 steps), free their own objects, and migrate at 0.2%
/// of their steps, half of the time to another node. Besides, three
/// switch pairs (`switch-a<k>`, `switch-b<k>` in `app/s<k>`) ping-pong on
/// CPU 0, freeing each other's objects; `switch-b<k>` made its first
/// charge on the first CPU of the last node before moving there: the
/// context-switch pattern behind the kernel's reported regression.
pub fn workload(
    nodes: usize,
    cpus: usize,
    tasks: usize,
    steps: u64,
    seed: u64,
    obj_stock_slots: usize,
) -> Scenario {
    let pong_cpu = ((nodes - 1) * cpus) as u64;
    let base = TaskSpec {
        name: String::new(),
        group: "app".into(),
        count: 1,
        cpu: 0,
        start_cpu: None,
        weight: 1.0,
        alloc_min_bytes: 16,
        alloc_max_bytes: 512,
        lifetime_ops: 16.0,
        free_by: FreeBy::Peer,
        peer: None,
        migrate_rate: 0.0,
        cross_node_share: 0.5,
        reserve_rate: 0.0,
        reserve_max_bytes: 64 << 10,
        cache_share: 0.0,
        flush_rate: 0.0,
        fallible_share: 0.0,
        spend_share: 0.0,
    };
    let mut task_specs = vec![
        TaskSpec {
            name: "ping".into(),
            peer: Some("pong".into()),
            ..base.clone()
        },
        TaskSpec {
            name: "pong".into(),
            cpu: pong_cpu,
            peer: Some("ping".into()),
            ..base.clone()
        },
    ];
    let mut groups = vec![GroupSpec {
        path: "app".into(),
        max_bytes: None,
        reclaimer: false,
        oom_policy: None,
    }];
    for k in 0..SWITCH_PAIRS {
        let group = format!("app/s{k}");
        groups.push(GroupSpec {
            path: group.clone(),
            max_bytes: None,
            reclaimer: false,
            oom_policy: None,
        });
        for (me, peer, start_cpu) in [("a", "b", None), ("b", "a", Some(pong_cpu))] {
            task_specs.push(TaskSpec {
                name: format!("switch-{me}{k}"),
                group: group.clone(),
                start_cpu,
                peer: Some(format!("switch-{peer}{k}")),
                ..base.clone()
            });
        }
    }
    // Workers come in pairs, each pair in its own group under `app`, so a
    // CPU's byte stock sees more objcgs than it has slots once tasks
    // migrate.
    let nr_workers = tasks.saturating_sub(2);
    for k in 0..nr_workers.div_ceil(2) {
        let path = format!("app/w{k}");
        groups.push(GroupSpec {
            path: path.clone(),
            max_bytes: None,
            reclaimer: false,
            oom_policy: None,
        });
        task_specs.push(TaskSpec {
            name: format!("worker{k}"),
            group: path,
            count: (nr_workers - 2 * k).min(2) as u64,
            cpu: (1 + 2 * k as u64) % (nodes * cpus) as u64,
            lifetime_ops: 32.0,
            free_by: FreeBy::Own,
            migrate_rate: 0.002,
            ..base.clone()
        });
    }
    Scenario {
        machine: Machine {
            topology: format!("{nodes}x{cpus}"),
            task_cache: CacheMode::PerNode,
            obj_stock_slots,
        },
        run: Run {
            steps,
            seed,
            on_oom: OnOom::Fail,
        },
        groups,
        tasks: task_specs,
        attach_churn: Vec::new(),
        group_churn: Vec::new(),
        steps: Vec::new(),
    }
}

/// Both runs of a comparison.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The workload.
    pub scenario: Scenario,
    /// The per-node run.
    pub per_node: RunReport,
    /// The single-cache run.
    pub single: RunReport,
}

/// Runs `scenario` with both cache modes.
///
/// # Errors
/// Engine errors building the machine.
pub fn compare(scenario: &Scenario, progress: bool) -> memcg::Result<Comparison> {
    let ops = crate::workload::generate(scenario)?;
    let mut runs = Vec::new();
    for mode in [CacheMode::PerNode, CacheMode::Single] {
        let mut s = scenario.clone();
        s.machine.task_cache = mode;
        runs.push(run_ops(
            &s,
            &ops,
            RunOptions {
                invariants_every: 1,
                hook: None,
                progress,
            },
        )?);
    }
    let single = runs.pop().unwrap_or_else(|| unreachable!());
    let per_node = runs.pop().unwrap_or_else(|| unreachable!());
    Ok(Comparison {
        scenario: scenario.clone(),
        per_node,
        single,
    })
}

/// The table rows: label, per-node value, single value, unit.
pub fn rows(a: &Figures, b: &Figures) -> Vec<svg::Row> {
    let row = |label: &str, x: f64, y: f64, unit| svg::Row {
        label: label.to_string(),
        per_node: x,
        single: y,
        unit,
    };
    vec![
        row(
            "bytes charged to another node's objcg",
            a.wrong_node_percent,
            b.wrong_node_percent,
            "%",
        ),
        row(
            "byte-stock replacements per 1,000 charges",
            a.obj_stock_replacements_per_1k,
            b.obj_stock_replacements_per_1k,
            "",
        ),
        row(
            "byte-stock drains per 1,000 charges",
            a.obj_stock_drains_per_1k,
            b.obj_stock_drains_per_1k,
            "",
        ),
        row(
            "page-stock drains per 1,000 charges",
            a.page_stock_drains_per_1k,
            b.page_stock_drains_per_1k,
            "",
        ),
        row(
            "shared-counter atomics per 1,000 charges",
            a.shared_atomics_per_1k,
            b.shared_atomics_per_1k,
            "",
        ),
        row(
            "charges past the task cache per 1,000",
            a.slow_charges_per_1k,
            b.slow_charges_per_1k,
            "",
        ),
        row(
            "task-cache refreshes",
            a.refreshes as f64,
            b.refreshes as f64,
            "",
        ),
        row(
            "worst |memory.current - live| (KiB)",
            a.worst_error_kib,
            b.worst_error_kib,
            "",
        ),
    ]
}

fn cell(v: f64, unit: &str) -> String {
    if unit == "%" {
        format!("{v:.1}%")
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// `memcg-sim compare`.
///
/// # Errors
/// Bad options (exit 2), I/O errors.
pub fn command(args: &CompareArgs) -> anyhow::Result<u8> {
    let usage = |m: &str| anyhow::Error::new(crate::UsageError(m.to_string()));
    if args.nodes == 0 || args.cpus == 0 {
        return Err(usage("--nodes and --cpus must be at least 1"));
    }
    if args.tasks < 2 || args.tasks > 256 {
        return Err(usage(
            "--tasks must be between 2 and 256 (two ping-pong tasks, the rest workers)",
        ));
    }
    if args.steps == 0 {
        return Err(usage("--steps must be at least 1"));
    }
    let scenario = workload(
        args.nodes,
        args.cpus,
        args.tasks,
        args.steps,
        args.seed,
        usize::from(args.obj_stock_slots),
    );
    memcg::Topology::from_spec(&scenario.machine.topology)
        .map_err(|e| usage(&format!("--nodes {} --cpus {}: {e}", args.nodes, args.cpus)))?;
    if let Some(path) = &args.dump_scenario {
        std::fs::write(path, scenario.to_toml())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
        return Ok(exit::OK);
    }
    let c = compare(&scenario, true)?;
    let (a, b) = (Figures::of(&c.per_node), Figures::of(&c.single));
    let rows = rows(&a, &b);
    let failures: Vec<(&str, &crate::sim::Failure)> =
        [("per-node", &c.per_node), ("single", &c.single)]
            .into_iter()
            .filter_map(|(n, r)| r.failure.as_ref().map(|f| (n, f)))
            .collect();
    let svg_path = if args.no_svg {
        None
    } else {
        let path = args
            .svg
            .clone()
            .unwrap_or_else(|| crate::default_out_dir().join("compare.svg"));
        write_svg(&path, args, &rows)?;
        Some(path)
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "topology": scenario.machine.topology,
            "tasks": args.tasks,
            "steps": args.steps,
            "seed": args.seed,
            "per_node": a,
            "single": b,
            "checks_ok": failures.is_empty(),
            "svg": svg_path.as_ref().map(|p| p.display().to_string()),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "{} steps, {} tasks and {} switch pairs on a virtual {} × {}-CPU machine, seed {} ({} charges per run)\n",
            args.steps, args.tasks, SWITCH_PAIRS, args.nodes, args.cpus, args.seed, a.task_charges
        )?;
        writeln!(out, "{:<44} {:>12} {:>12}", "", "per-node", "single")?;
        for r in &rows {
            writeln!(
                out,
                "{:<44} {:>12} {:>12}",
                r.label,
                cell(r.per_node, r.unit),
                cell(r.single, r.unit)
            )?;
        }
        let status = if failures.is_empty() { "ok" } else { "FAILED" };
        writeln!(
            out,
            "{:<44} {:>12} {:>12}",
            "invariant checks (every step, and at the end)",
            if c.per_node.failure.is_some() {
                "FAILED"
            } else {
                "ok"
            },
            if c.single.failure.is_some() {
                "FAILED"
            } else {
                status
            }
        )?;
        if let Some(p) = &svg_path {
            writeln!(out, "\nchart: {}", p.display())?;
        }
    }
    out.flush()?;
    for (name, f) in &failures {
        eprintln!(
            "memcg-sim: {name} run: {}",
            crate::report::failure_message(args.seed, f)
        );
    }
    Ok(if failures.is_empty() {
        exit::OK
    } else {
        exit::VIOLATION
    })
}

fn write_svg(path: &PathBuf, args: &CompareArgs, rows: &[svg::Row]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let doc = svg::chart(
        "memcg-sim compare: per-node vs single task cache",
        &format!(
            "{} nodes × {} CPUs, {} tasks (ping-pong pair + migrating workers) + {} switch pairs, {} steps, seed {}",
            args.nodes, args.cpus, args.tasks, SWITCH_PAIRS, args.steps, args.seed
        ),
        rows,
    );
    std::fs::write(path, doc).with_context(|| format!("cannot write {}", path.display()))
}
