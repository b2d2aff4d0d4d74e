//! Parsing scenario files: the raw layer (serde with source spans) and its
//! validation into [`Scenario`]. Every error carries `file:line:column`.

use std::collections::BTreeSet;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use crate::ops::Op;
use crate::scenario::{
    AttachChurn, CacheMode, FreeBy, GroupChurn, GroupSpec, Machine, OnOom, Run, Scenario, TaskSpec,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    machine: RawMachine,
    #[serde(default)]
    run: Option<RawRun>,
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    task: Vec<RawTask>,
    #[serde(default)]
    attach_churn: Vec<RawAttachChurn>,
    #[serde(default)]
    group_churn: Vec<RawGroupChurn>,
    #[serde(default)]
    step: Vec<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    topology: Spanned<String>,
    #[serde(default)]
    task_cache: CacheMode,
    #[serde(default = "default_obj_stock_slots")]
    obj_stock_slots: Spanned<usize>,
}

fn default_obj_stock_slots() -> Spanned<usize> {
    Spanned::new(0..0, memcg::engine::NR_OBJ_STOCK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    steps: Option<Spanned<u64>>,
    seed: Option<u64>,
    #[serde(default)]
    on_oom: OnOom,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    path: Spanned<String>,
    max_bytes: Option<Spanned<toml::Value>>,
    #[serde(default)]
    reclaimer: bool,
    oom_policy: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Spanned<String>,
    group: Spanned<String>,
    count: Option<Spanned<u64>>,
    cpu: Option<Spanned<u64>>,
    start_cpu: Option<Spanned<u64>>,
    weight: Option<Spanned<f64>>,
    alloc_min_bytes: Option<Spanned<u64>>,
    alloc_max_bytes: Option<Spanned<u64>>,
    lifetime_ops: Option<Spanned<f64>>,
    #[serde(default)]
    free_by: FreeBy,
    peer: Option<Spanned<String>>,
    migrate_rate: Option<Spanned<f64>>,
    cross_node_share: Option<Spanned<f64>>,
    reserve_rate: Option<Spanned<f64>>,
    reserve_max_bytes: Option<Spanned<u64>>,
    cache_share: Option<Spanned<f64>>,
    flush_rate: Option<Spanned<f64>>,
    fallible_share: Option<Spanned<f64>>,
    spend_share: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttachChurn {
    task: Spanned<String>,
    groups: Vec<Spanned<String>>,
    every_steps: Spanned<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroupChurn {
    parent: Spanned<String>,
    task: Spanned<String>,
    every_steps: Spanned<u64>,
}

/// A scenario error at a position of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// File name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong and what is expected.
    pub message: String,
}

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ScenarioError {}

/// 1-based line and column of byte `offset` of `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text
        .get(line_start..offset)
        .map_or(1, |s| s.chars().count() + 1);
    (line, column)
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ScenarioError {
        let (line, column) = line_column(self.text, span.start);
        ScenarioError {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    fn rate(
        &self,
        v: &Option<Spanned<f64>>,
        key: &str,
        default: f64,
    ) -> Result<f64, ScenarioError> {
        let Some(v) = v else { return Ok(default) };
        let x = *v.get_ref();
        if !(0.0..=1.0).contains(&x) {
            return Err(self.err(
                v.span(),
                format!("`{key}` must be a probability between 0 and 1, got {x}"),
            ));
        }
        Ok(x)
    }

    fn positive(
        &self,
        v: &Option<Spanned<f64>>,
        key: &str,
        default: f64,
    ) -> Result<f64, ScenarioError> {
        let Some(v) = v else { return Ok(default) };
        let x = *v.get_ref();
        if !(x.is_finite() && x > 0.0) {
            return Err(self.err(
                v.span(),
                format!("`{key}` must be a positive number, got {x}"),
            ));
        }
        Ok(x)
    }
}

/// Largest object or reservation a scenario may ask for (1 GiB).
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Parses and validates the scenario in `text`, read from `file`.
///
/// # Errors
/// [`ScenarioError`] at the first problem: TOML syntax, a wrong type, an
/// unknown key, an unknown group or task name, a rate outside `[0, 1]`, a
/// CPU the machine lacks.
pub fn parse(file: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let cx = Ctx { file, text };
    let raw: RawScenario = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        cx.err(span, e.message().trim_end().replace('\n', " "))
    })?;

    let topo_span = raw.machine.topology.span();
    let topology = raw.machine.topology.into_inner();
    let topo = memcg::Topology::from_spec(&topology).map_err(|e| {
        cx.err(
            topo_span.clone(),
            format!("`topology` must be like \"2x4\" (nodes x CPUs per node): {e}"),
        )
    })?;
    let slots = &raw.machine.obj_stock_slots;
    if !(1..=memcg::engine::NR_OBJ_STOCK).contains(slots.get_ref()) {
        return Err(cx.err(
            slots.span(),
            format!(
                "`obj_stock_slots` must be from 1 to {} (byte-stock slots per CPU)",
                memcg::engine::NR_OBJ_STOCK
            ),
        ));
    }
    let machine = Machine {
        topology,
        task_cache: raw.machine.task_cache,
        obj_stock_slots: *slots.get_ref(),
    };

    let raw_run = raw.run.unwrap_or(RawRun {
        steps: None,
        seed: None,
        on_oom: OnOom::Fail,
    });
    let steps = match &raw_run.steps {
        Some(s) if *s.get_ref() == 0 => {
            return Err(cx.err(s.span(), "`steps` must be at least 1"));
        }
        Some(s) => *s.get_ref(),
        None => 10_000,
    };
    let run = Run {
        steps,
        seed: raw_run.seed.unwrap_or(1),
        on_oom: raw_run.on_oom,
    };

    let mut known: BTreeSet<String> = BTreeSet::new();
    known.insert(String::new());
    let mut groups = Vec::new();
    for g in raw.group {
        let span = g.path.span();
        let path = g.path.into_inner().trim_matches('/').to_string();
        if path.is_empty() {
            return Err(cx.err(span, "`path` must name a group below the root"));
        }
        if path
            .split('/')
            .any(|c| memcg::engine::validate_name(c).is_err())
        {
            return Err(cx.err(span, format!("`path` {path:?} is not a valid group path")));
        }
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        if !known.contains(parent) {
            return Err(cx.err(
                span,
                format!("parent {parent:?} of group {path:?} must be listed before it"),
            ));
        }
        if !known.insert(path.clone()) {
            return Err(cx.err(span, format!("group {path:?} is listed twice")));
        }
        let max_bytes =
            match g.max_bytes {
                None => None,
                Some(v) => {
                    let span = v.span();
                    let parsed = match v.into_inner() {
                        toml::Value::Integer(i) if i > 0 => Some(i as u64),
                        toml::Value::String(s) => memcg::parse_size_bytes(&s).ok(),
                        _ => None,
                    };
                    match parsed {
                        Some(b) if b > 0 => Some(b),
                        _ => return Err(cx.err(
                            span,
                            "`max_bytes` must be a positive integer or a size string like \"64M\"",
                        )),
                    }
                }
            };
        let oom_policy = match g.oom_policy {
            None => None,
            Some(v) => match v.get_ref().parse::<memcg::OomPolicy>() {
                Ok(p) => Some(p),
                Err(_) => {
                    return Err(cx.err(
                        v.span(),
                        format!(
                            "`oom_policy` must be \"kill\", \"fail\" or \"force\", got {:?}",
                            v.get_ref()
                        ),
                    ))
                }
            },
        };
        groups.push(GroupSpec {
            path,
            max_bytes,
            reclaimer: g.reclaimer,
            oom_policy,
        });
    }

    if raw.task.is_empty() {
        return Err(cx.err(0..0, "a scenario needs at least one `[[task]]`"));
    }
    let task_names: BTreeSet<String> = raw.task.iter().map(|t| t.name.get_ref().clone()).collect();
    let nr_cpu_ids = topo.nr_cpu_ids() as u64;
    let mut tasks = Vec::new();
    let mut seen = BTreeSet::new();
    for t in raw.task {
        if !seen.insert(t.name.get_ref().clone()) {
            return Err(cx.err(
                t.name.span(),
                format!("task name {:?} is used twice", t.name.get_ref()),
            ));
        }
        let group = t.group.get_ref().trim_matches('/').to_string();
        if !known.contains(&group) {
            return Err(cx.err(
                t.group.span(),
                format!("unknown group {group:?}: expected a path listed in a `[[group]]`"),
            ));
        }
        let count = match &t.count {
            Some(c) if *c.get_ref() == 0 || *c.get_ref() > 256 => {
                return Err(cx.err(c.span(), "`count` must be between 1 and 256"));
            }
            Some(c) => *c.get_ref(),
            None => 1,
        };
        // A CPU key, if given, must name a CPU of the machine.
        let cpu_key = |v: &Option<Spanned<u64>>, key: &str| match v {
            Some(c) if topo.node_of(*c.get_ref() as usize).is_err() => Err(cx.err(
                c.span(),
                format!(
                    "`{key}` {} is not a CPU of the machine (CPUs 0..{nr_cpu_ids})",
                    c.get_ref()
                ),
            )),
            Some(c) => Ok(Some(*c.get_ref())),
            None => Ok(None),
        };
        let cpu = cpu_key(&t.cpu, "cpu")?.unwrap_or(0);
        let start_cpu = cpu_key(&t.start_cpu, "start_cpu")?;
        let size = |v: &Option<Spanned<u64>>, key: &str, default: u64| match v {
            Some(s) if *s.get_ref() == 0 || *s.get_ref() > MAX_OBJECT_BYTES => Err(cx.err(
                s.span(),
                format!("`{key}` must be between 1 and {MAX_OBJECT_BYTES}"),
            )),
            Some(s) => Ok(*s.get_ref()),
            None => Ok(default),
        };
        let alloc_min_bytes = size(&t.alloc_min_bytes, "alloc_min_bytes", 16)?;
        let alloc_max_bytes = size(
            &t.alloc_max_bytes,
            "alloc_max_bytes",
            512.max(alloc_min_bytes),
        )?;
        if alloc_max_bytes < alloc_min_bytes {
            let span = t.alloc_max_bytes.as_ref().map_or(0..0, |s| s.span());
            return Err(cx.err(span, "`alloc_max_bytes` must be at least `alloc_min_bytes`"));
        }
        let peer = match (&t.free_by, &t.peer) {
            (FreeBy::Peer, None) => {
                return Err(cx.err(
                    t.name.span(),
                    "`free_by = \"peer\"` needs `peer`, the name of the freeing task",
                ))
            }
            (_, Some(p)) if !task_names.contains(p.get_ref()) => {
                return Err(cx.err(
                    p.span(),
                    format!("unknown task {:?} in `peer`", p.get_ref()),
                ));
            }
            (_, p) => p.as_ref().map(|p| p.get_ref().clone()),
        };
        tasks.push(TaskSpec {
            name: t.name.into_inner(),
            group,
            count,
            cpu,
            start_cpu,
            weight: cx.positive(&t.weight, "weight", 1.0)?,
            alloc_min_bytes,
            alloc_max_bytes,
            lifetime_ops: cx.positive(&t.lifetime_ops, "lifetime_ops", 32.0)?,
            free_by: t.free_by,
            peer,
            migrate_rate: cx.rate(&t.migrate_rate, "migrate_rate", 0.0)?,
            cross_node_share: cx.rate(&t.cross_node_share, "cross_node_share", 0.5)?,
            reserve_rate: cx.rate(&t.reserve_rate, "reserve_rate", 0.0)?,
            reserve_max_bytes: size(&t.reserve_max_bytes, "reserve_max_bytes", 64 << 10)?,
            cache_share: cx.rate(&t.cache_share, "cache_share", 0.0)?,
            flush_rate: cx.rate(&t.flush_rate, "flush_rate", 0.0)?,
            fallible_share: cx.rate(&t.fallible_share, "fallible_share", 0.0)?,
            spend_share: cx.rate(&t.spend_share, "spend_share", 0.0)?,
        });
    }

    let mut attach_churn = Vec::new();
    for c in raw.attach_churn {
        if !task_names.contains(c.task.get_ref()) {
            return Err(cx.err(
                c.task.span(),
                format!("unknown task {:?}", c.task.get_ref()),
            ));
        }
        if c.groups.is_empty() {
            return Err(cx.err(c.task.span(), "`groups` must list at least one group"));
        }
        let mut gs = Vec::new();
        for g in c.groups {
            let p = g.get_ref().trim_matches('/').to_string();
            if !known.contains(&p) {
                return Err(cx.err(
                    g.span(),
                    format!("unknown group {p:?}: expected a path listed in a `[[group]]`"),
                ));
            }
            gs.push(p);
        }
        if *c.every_steps.get_ref() == 0 {
            return Err(cx.err(c.every_steps.span(), "`every_steps` must be at least 1"));
        }
        attach_churn.push(AttachChurn {
            task: c.task.into_inner(),
            groups: gs,
            every_steps: c.every_steps.into_inner(),
        });
    }
    let mut group_churn = Vec::new();
    for c in raw.group_churn {
        let p = c.parent.get_ref().trim_matches('/').to_string();
        if !known.contains(&p) {
            return Err(cx.err(
                c.parent.span(),
                format!("unknown group {p:?}: expected a path listed in a `[[group]]`"),
            ));
        }
        if !task_names.contains(c.task.get_ref()) {
            return Err(cx.err(
                c.task.span(),
                format!("unknown task {:?}", c.task.get_ref()),
            ));
        }
        if *c.every_steps.get_ref() < 2 {
            return Err(cx.err(c.every_steps.span(), "`every_steps` must be at least 2"));
        }
        group_churn.push(GroupChurn {
            parent: p,
            task: c.task.into_inner(),
            every_steps: c.every_steps.into_inner(),
        });
    }

    let nr_tasks: u64 = tasks.iter().map(|t| t.count).sum();
    let mut steps_out = Vec::new();
    for s in raw.step {
        let span = s.span();
        let op: Op = s.into_inner().try_into().map_err(|e: toml::de::Error| {
            cx.err(
                span.clone(),
                format!("bad step: {}", e.message().trim_end()),
            )
        })?;
        let (task, cpu) = match &op {
            Op::Alloc { task, .. }
            | Op::Free { task, .. }
            | Op::Flush { task }
            | Op::Attach { task, .. } => (Some(*task), None),
            Op::Migrate { task, cpu } => (Some(*task), Some(*cpu)),
            _ => (None, None),
        };
        if task.is_some_and(|t| t as u64 >= nr_tasks) {
            return Err(cx.err(
                span,
                format!("bad step: task index must be below {nr_tasks}"),
            ));
        }
        if cpu.is_some_and(|c| topo.node_of(c).is_err()) {
            return Err(cx.err(
                span,
                format!("bad step: cpu must be a CPU of the machine (0..{nr_cpu_ids})"),
            ));
        }
        if let Op::Alloc { bytes, .. }
        | Op::Reserve { bytes, .. }
        | Op::ResizeReservation { bytes, .. } = &op
        {
            if *bytes == 0 || *bytes > MAX_OBJECT_BYTES {
                return Err(cx.err(
                    span,
                    format!("bad step: bytes must be between 1 and {MAX_OBJECT_BYTES}"),
                ));
            }
        }
        steps_out.push(op);
    }

    Ok(Scenario {
        machine,
        run,
        groups,
        tasks,
        attach_churn,
        group_churn,
        steps: steps_out,
    })
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
