//! Scenario files: the TOML a user writes (raw, with source spans) and the
//! validated [`Scenario`] the simulator runs (STYLE R8's two layers).
//!
//! Every error, syntactic or semantic, is reported as
//! `FILE:LINE:COLUMN: message` before anything runs. Serializing a
//! [`Scenario`] gives a file that parses back to the same scenario (the
//! fuzzer writes its reproducers that way).

use serde::{Deserialize, Serialize};

use crate::ops::Op;

/// Which task cache the tasks keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// One objcg per node (the seed).
    #[default]
    PerNode,
    /// One objcg, refreshed only on attach (before the seed).
    Single,
}

impl From<CacheMode> for memcg::engine::TaskCacheMode {
    fn from(m: CacheMode) -> Self {
        match m {
            CacheMode::PerNode => memcg::engine::TaskCacheMode::PerNode,
            CacheMode::Single => memcg::engine::TaskCacheMode::Single,
        }
    }
}

/// What an OOM outcome (a charge refused at `memory.max`, or a group
/// killed by its OOM policy) means for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnOom {
    /// The run fails (exit 1), like an invariant violation.
    #[default]
    Fail,
    /// The refusal or kill is counted and the run goes on
    /// (limit-pressure workloads, the fuzzer).
    Count,
}

/// Who frees a task's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FreeBy {
    /// The allocating task.
    #[default]
    #[serde(rename = "self")]
    Own,
    /// The task named by `peer` (ping-pong).
    Peer,
    /// Any task, at random.
    Any,
}

/// `[machine]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// Engine topology spec: `"2x4"` (nodes × CPUs per node) or an
    /// explicit CPU list per node as `memcg::Topology::from_spec` takes it.
    pub topology: String,
    /// Task cache mode.
    pub task_cache: CacheMode,
    /// Byte-stock slots per CPU (`1..=memcg::engine::NR_OBJ_STOCK`); 1 is the
    /// kernel's obj stock before its multi-slot fix.
    pub obj_stock_slots: usize,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Steps to generate (ignored when `[[step]]`s are given).
    pub steps: u64,
    /// Seed of the scheduler and the workload.
    pub seed: u64,
    /// What a refused charge means.
    pub on_oom: OnOom,
}

/// `[[group]]`: a group that exists from the start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupSpec {
    /// Path (`"tenants/a"`); parents are listed first.
    pub path: String,
    /// `memory.max` in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Whether the group registers a reclaim callback that frees its
    /// `cache` objects.
    pub reclaimer: bool,
    /// What a charge meets when the group is over `memory.max` after
    /// reclaim (`kill`, `fail`, `force`); unset: the parent's (root's is
    /// `kill`). See the README's "OOM policies".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_policy: Option<memcg::OomPolicy>,
}

/// `[[task]]`: `count` simulated tasks with one behaviour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSpec {
    /// Name (for `peer` and churn entries).
    pub name: String,
    /// Home group.
    pub group: String,
    /// Number of tasks.
    pub count: u64,
    /// First CPU; replicas take the following CPUs.
    pub cpu: u64,
    /// Where the task makes its first charge before moving to `cpu` for
    /// good (replicas likewise take the following CPUs): a task that
    /// started on another node, as in the regression's ping-pong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_cpu: Option<u64>,
    /// Relative share of the steps.
    pub weight: f64,
    /// Smallest object.
    pub alloc_min_bytes: u64,
    /// Largest object.
    pub alloc_max_bytes: u64,
    /// Mean lifetime of an object, in steps of the freeing task.
    pub lifetime_ops: f64,
    /// Who frees.
    pub free_by: FreeBy,
    /// Task name that frees (with `free_by = "peer"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// Probability per step of moving to another CPU.
    pub migrate_rate: f64,
    /// Share of migrations that go to another node.
    pub cross_node_share: f64,
    /// Probability per step of a reservation operation.
    pub reserve_rate: f64,
    /// Largest reservation.
    pub reserve_max_bytes: u64,
    /// Share of objects that are reclaimable cache.
    pub cache_share: f64,
    /// Probability per step of flushing the byte cache.
    pub flush_rate: f64,
    /// Share of allocations made in a fallible region (refused at
    /// `memory.max` under `kill` and `fail`, never a kill).
    pub fallible_share: f64,
    /// Share of allocations paid from one of the task's reservations
    /// while it is spent (when the task has one).
    pub spend_share: f64,
}

/// `[[attach_churn]]`: tasks moved between groups by a controller.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttachChurn {
    /// Task name (all its replicas move).
    pub task: String,
    /// Groups visited in turn.
    pub groups: Vec<String>,
    /// Period in steps.
    pub every_steps: u64,
}

/// `[[group_churn]]`: a child of `parent` is created, `task` is moved into
/// it and allocates, then moves back and the child is removed with live
/// objects (which are reparented).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupChurn {
    /// Parent of the short-lived groups.
    pub parent: String,
    /// Task name that lives in them for a while.
    pub task: String,
    /// Period in steps (the group lives half of it).
    pub every_steps: u64,
}

/// A validated scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    /// `[machine]`.
    pub machine: Machine,
    /// `[run]`.
    pub run: Run,
    /// `[[group]]`.
    #[serde(rename = "group")]
    pub groups: Vec<GroupSpec>,
    /// `[[task]]`.
    #[serde(rename = "task")]
    pub tasks: Vec<TaskSpec>,
    /// `[[attach_churn]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attach_churn: Vec<AttachChurn>,
    /// `[[group_churn]]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_churn: Vec<GroupChurn>,
    /// `[[step]]`: an explicit step list replacing the generated one.
    #[serde(rename = "step", skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Op>,
}

impl Scenario {
    /// Total number of simulated tasks.
    pub fn nr_tasks(&self) -> usize {
        self.tasks.iter().map(|t| t.count as usize).sum()
    }

    /// The scenario as a TOML file that [`parse`] accepts.
    pub fn to_toml(&self) -> String {
        match toml::to_string(self) {
            Ok(s) => s,
            // Every field is a plain value, table or array of tables.
            Err(e) => format!("# cannot serialize: {e}\n"),
        }
    }
}

pub use crate::parse::{line_column, parse, ScenarioError, MAX_OBJECT_BYTES};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_toml_policies_fallible_and_spend_parse_back_the_same() {
        let text = r#"
[machine]
topology = "2x2"
[[group]]
path = "a"
oom_policy = "fail"
[[group]]
path = "a/b"
max_bytes = "1M"
oom_policy = "force"
[[task]]
name = "t"
group = "a/b"
fallible_share = 0.25
spend_share = 0.5
reserve_rate = 0.1
[[step]]
op = "reserve"
group = "a/b"
bytes = 4096
res = 0
[[step]]
op = "alloc"
task = 0
bytes = 100
obj = 0
fallible = true
spend = 0
"#;
        let s = parse("x.toml", text).expect("valid");
        assert_eq!(s.groups[0].oom_policy, Some(memcg::OomPolicy::Fail));
        assert_eq!(s.groups[1].oom_policy, Some(memcg::OomPolicy::Force));
        assert_eq!(
            s.steps[1],
            Op::Alloc {
                task: 0,
                bytes: 100,
                obj: 0,
                cache: false,
                fallible: true,
                spend: Some(0),
            }
        );
        let again = parse("y.toml", &s.to_toml()).expect("round trip");
        assert_eq!(again, s);
    }
}
