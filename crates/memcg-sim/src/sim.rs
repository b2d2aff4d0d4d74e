//! One run of a scenario: build the machine, execute the steps with the
//! checks after each, take the statistics, tear down with the end checks.

use memcg::engine::EngineCounters;
use memcg::GroupStats;

use crate::checks::Violation;
use crate::machine::{Hook, Machine, Metrics};
use crate::ops::Op;
use crate::progress::Progress;
use crate::scenario::Scenario;

/// How a run is done.
#[derive(Default)]
pub struct RunOptions {
    /// `check_invariants` every this many steps (0 or 1: every step).
    pub invariants_every: u64,
    /// Called after each step's operation, before its checks.
    pub hook: Option<Hook>,
    /// Show a progress bar (if stderr is a terminal and the run is long).
    pub progress: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("invariants_every", &self.invariants_every)
            .field("hook", &self.hook.is_some())
            .field("progress", &self.progress)
            .finish()
    }
}

/// Where and how a run failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Step index (0-based), `None` for the end-of-run checks.
    pub step: Option<u64>,
    /// The step's operation (or `"end of run"`).
    pub op: String,
    /// The failed check.
    pub violation: Violation,
}

impl Failure {
    /// The check's name.
    pub fn check(&self) -> &'static str {
        self.violation.check
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Metrics of the steps run.
    pub metrics: Metrics,
    /// Engine counters after the last step.
    pub counters: EngineCounters,
    /// Statistics after the last step (task caches flushed), root first.
    pub stats: Vec<GroupStats>,
    /// The stock error bound at the end.
    pub bound_bytes: u64,
    /// Groups killed by their OOM policy, with how many times, by path.
    pub kills: Vec<(String, u64)>,
    /// The first failed check, if any.
    pub failure: Option<Failure>,
}

/// Runs `ops` on the machine of `scenario`.
///
/// # Errors
/// Engine errors while building the machine (not for validated scenarios).
pub fn run_ops(
    scenario: &Scenario,
    ops: &[Op],
    mut options: RunOptions,
) -> memcg::Result<RunReport> {
    let mut m = Machine::new(scenario)?;
    m.set_invariants_every(options.invariants_every);
    let mut progress = options
        .progress
        .then(|| Progress::new(ops.len() as u64, "steps"));
    let mut failure = None;
    for (i, op) in ops.iter().enumerate() {
        let result = m.step(i as u64, op).and_then(|()| {
            if let Some(hook) = options.hook.as_mut() {
                hook(i, &m);
                // The hook may have broken something: check again.
                m.recheck(i as u64)?;
            }
            Ok(())
        });
        if let Err(violation) = result {
            failure = Some(Failure {
                step: Some(i as u64),
                op: op.to_string(),
                violation,
            });
            break;
        }
        if let Some(p) = progress.as_mut() {
            p.inc(1);
        }
    }
    if let Some(p) = &progress {
        p.finish();
    }
    let counters = m.counters();
    let metrics = m.metrics();
    let bound_bytes = m.bound_bytes();
    let kills = m.kills();
    let stats = m.snapshot();
    if failure.is_none() {
        if let Err(violation) = m.finish() {
            failure = Some(Failure {
                step: None,
                op: "end of run".to_string(),
                violation,
            });
        }
    }
    Ok(RunReport {
        metrics,
        counters,
        stats,
        bound_bytes,
        kills,
        failure,
    })
}
