//! `run`: one scenario file, its checks, and its statistics in the cgroup
//! v2 text formats or as JSON.

use std::io::Write as _;

use anyhow::Context as _;

use crate::cli::RunArgs;
use crate::exit;
use crate::scenario::Scenario;
use crate::sim::{run_ops, Failure, RunOptions, RunReport};

/// Loads and validates a scenario file.
///
/// # Errors
/// Unreadable file; [`crate::scenario::ScenarioError`] with the position.
pub fn load(path: &std::path::Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read scenario {}", path.display()))?;
    Ok(crate::scenario::parse(&path.display().to_string(), &text)?)
}

/// The violation message: seed, step, operation and the failed check.
pub fn failure_message(seed: u64, f: &Failure) -> String {
    match f.step {
        Some(step) => format!(
            "violation: seed {seed}, step {step}, operation `{}`: {}",
            f.op, f.violation
        ),
        None => format!(
            "violation: seed {seed}, at the end of the run: {}",
            f.violation
        ),
    }
}

/// `memcg-sim run`.
///
/// # Errors
/// Bad scenario (exit 2), I/O errors.
pub fn command(args: &RunArgs) -> anyhow::Result<u8> {
    let mut scenario = load(&args.scenario)?;
    if let Some(seed) = args.seed {
        scenario.run.seed = seed;
    }
    if let Some(steps) = args.steps {
        if steps == 0 {
            return Err(crate::UsageError("--steps must be at least 1".into()).into());
        }
        scenario.run.steps = steps;
    }
    let injected = args
        .inject
        .inject
        .as_deref()
        .map(crate::parse_inject)
        .transpose()?;
    let mut ops = crate::workload::generate(&scenario)?;
    crate::inject(&mut ops, injected.as_ref());
    let report = run_ops(
        &scenario,
        &ops,
        RunOptions {
            invariants_every: args.invariants_every,
            hook: None,
            progress: true,
        },
    )?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = json(&args.scenario.display().to_string(), &scenario, &report);
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        write_text(
            &mut out,
            &args.scenario.display().to_string(),
            &scenario,
            &report,
        )?;
    }
    out.flush()?;
    if let Some(f) = &report.failure {
        eprintln!("memcg-sim: {}", failure_message(scenario.run.seed, f));
        return Ok(exit::VIOLATION);
    }
    Ok(exit::OK)
}

/// The JSON document of a run.
pub fn json(name: &str, scenario: &Scenario, r: &RunReport) -> serde_json::Value {
    serde_json::json!({
        "scenario": name,
        "seed": scenario.run.seed,
        "topology": scenario.machine.topology,
        "task_cache": scenario.machine.task_cache,
        "steps": r.metrics.steps,
        "checks": match &r.failure {
            None => serde_json::json!({"ok": true}),
            Some(f) => serde_json::json!({
                "ok": false,
                "step": f.step,
                "operation": f.op,
                "check": f.violation.check,
                "details": f.violation.details,
            }),
        },
        "stock_bound_bytes": r.bound_bytes,
        "metrics": r.metrics,
        "killed": r
            .kills
            .iter()
            .map(|(path, kills)| serde_json::json!({"path": path, "kills": kills}))
            .collect::<Vec<_>>(),
        "counters": r.counters,
        "groups": r.stats,
    })
}

/// `"a" (2), "b/c" (1)`, or `none`.
fn killed_groups(kills: &[(String, u64)]) -> String {
    if kills.is_empty() {
        return "none".into();
    }
    let list: Vec<String> = kills.iter().map(|(p, n)| format!("{p:?} ({n})")).collect();
    list.join(", ")
}

/// The text report: a summary, then each group's cgroup v2 files.
///
/// # Errors
/// I/O errors of `out`.
pub fn write_text(
    out: &mut dyn std::io::Write,
    name: &str,
    scenario: &Scenario,
    r: &RunReport,
) -> std::io::Result<()> {
    let m = &r.metrics;
    writeln!(
        out,
        "scenario {name}: machine {} ({} cache), {} tasks, seed {}, {} steps",
        scenario.machine.topology,
        match scenario.machine.task_cache {
            crate::scenario::CacheMode::PerNode => "per-node",
            crate::scenario::CacheMode::Single => "single",
        },
        scenario.nr_tasks(),
        scenario.run.seed,
        m.steps
    )?;
    let status = match &r.failure {
        None => "ok".to_string(),
        Some(f) => format!("FAILED ({})", f.check()),
    };
    writeln!(
        out,
        "checks: {status} (stock bound {} bytes)",
        r.bound_bytes
    )?;
    writeln!(
        out,
        "charges {} ({} bytes, {:.2}% to another node's objcg), refused {}, reclaimed objects {}, skipped steps {}",
        m.charges,
        m.charged_bytes,
        m.wrong_node_percent(),
        m.ooms,
        m.reclaimed_objects,
        m.skipped_steps
    )?;
    writeln!(
        out,
        "oom kills {} (objects and reservations freed by restarts {}), killed groups: {}; charges paid from reservations {}",
        m.kills,
        m.killed_objects,
        killed_groups(&r.kills),
        m.spent_charges
    )?;
    writeln!(
        out,
        "worst |memory.current - live bytes| {} bytes, peak live {} bytes",
        m.worst_error_bytes, m.peak_live_bytes
    )?;
    let c = &r.counters;
    writeln!(
        out,
        "engine: task_charges {} slow_charges {} obj_stock_replacements {} obj_stock_drains {} page_stock_drains {} shared_atomics {} refreshes {}",
        c.task_charges,
        c.slow_charges,
        c.obj_stock_replacements,
        c.obj_stock_drains,
        c.page_stock_drains,
        c.shared_atomics,
        c.refreshes
    )?;
    for g in &r.stats {
        let path = if g.path.is_empty() { "/" } else { &g.path };
        writeln!(out, "\n== {path} ==")?;
        writeln!(out, "memory.current {}", g.current_bytes)?;
        writeln!(out, "memory.peak {}", g.peak_bytes)?;
        writeln!(out, "memory.max {}", g.max)?;
        writeln!(out, "-- memory.stat")?;
        out.write_all(g.memory_stat().as_bytes())?;
        writeln!(out, "-- memory.numa_stat")?;
        out.write_all(g.numa_stat().as_bytes())?;
        writeln!(out, "-- memory.events")?;
        out.write_all(g.events.to_text().as_bytes())?;
    }
    Ok(())
}
