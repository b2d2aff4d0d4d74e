//! Model-based property test of the engine (STYLE R9, "The proptest model").
//!
//! Random sequences of up to 60 operations ([`Op`]: create and remove
//! groups, new tasks, attach, charge and uncharge on any CPU through any
//! task or the controller, overrides, `max`/`high`/force limits, reclaim
//! callbacks, exempt and exited tasks, reservations, drains), in both task
//! cache modes, run against a real [`Controller`] ("2x2") and, step by
//! step, against [`Model`]: a plain sequential reference that knows only
//! the group tree (with removed flags), the tasks (group, exited, exempt),
//! and which charges and reservations are alive, with their origin group
//! and node. It knows nothing of stocks or caches.
//!
//! After every step:
//! - [`Controller::check_invariants`] is `Ok`;
//! - structural operations fail exactly when the model says, with the kind
//!   of error it predicts (bad or duplicate names, invalid or unknown
//!   paths, root, removal with tasks or children, removed groups, exited
//!   tasks, unknown CPUs and nodes);
//! - the online groups, their paths and lookups, task counts, task groups,
//!   limits, reservation owners and the objcg a task's cache gives match;
//! - usage covers the live bytes, peaks never fall, and a group over `max`
//!   never grows (unless a group of its subtree forces charges);
//! - a failed charge is justified: the refusing group is on the charged
//!   chain, carries the limit the model set and does not force, `usage +
//!   request > limit`, the request is the pages the bytes need, and the
//!   group counted one `oom` event.
//!
//! At `DrainAndCompare` steps and at the end of each case every task is
//! flushed and every stock drained; then each online group's usage and
//! per-node statistics equal the model's prediction exactly (see
//! [`Harness::compare_drained`]). Finally everything is released and root
//! must be back to zero.
//!
//! Reclaim callbacks share the model through a mutex: a callback frees
//! live charges owned by its group's subtree (uncharging them through the
//! controller) and removes them from the model itself, so the model learns
//! what reclaim freed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use memcg::{
    ChargeError, ChargeKind, Controller, Error, Group, Limit, ReclaimRequest, ReclaimerHandle,
    Reservation, Task, TaskCacheMode, Topology, PAGE_SIZE,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// The machine: 2 nodes × 2 CPUs; CPU `c` is on node `c / 2`.
const TOPOLOGY: &str = "2x2";
const NR_NODES: usize = 2;
const CPUS_PER_NODE: usize = 2;
const NR_CPUS: usize = NR_NODES * CPUS_PER_NODE;
/// At most this many tasks per case.
const MAX_TASKS: usize = 8;
/// Model id of root.
const ROOT: GroupId = 0;

fn node_of(cpu: usize) -> usize {
    cpu / CPUS_PER_NODE
}

/// Bytes of the whole pages that hold `bytes`.
fn page_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// A `Limit` as the engine stores it: whole pages.
fn rounded(limit: Limit) -> Limit {
    match limit {
        Limit::Bytes(b) => Limit::Bytes(b / PAGE_SIZE * PAGE_SIZE),
        Limit::Max => Limit::Max,
    }
}

fn kind_index(kind: ChargeKind) -> usize {
    match kind {
        ChargeKind::Alloc => 0,
        ChargeKind::Runtime => 1,
        ChargeKind::Reservation => 2,
    }
}

/// Group names: four good ones (so duplicates are frequent), bad ones
/// (empty, `.`, `..`, a `/`, a control character, 256 bytes), then good
/// ones of 255 bytes and non-ASCII.
const NR_NAMES: usize = 13;
fn name(i: usize) -> String {
    match i {
        0 => "a".into(),
        1 => "b".into(),
        2 => "c".into(),
        3 => "d".into(),
        4 => String::new(),
        5 => ".".into(),
        6 => "..".into(),
        7 => "x/y".into(),
        8 => "t\tab".into(),
        9 => "n".repeat(256),
        10 => "/".into(),
        11 => "m".repeat(255),
        _ => "ü-1".into(),
    }
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// Picks an element of whatever the state holds when the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pick(u16);

impl Pick {
    fn of(self, len: usize) -> Option<usize> {
        (len > 0).then(|| usize::from(self.0) % len)
    }
}

/// Picks a group among those the model has when the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GroupSel {
    /// Any group ever made (removed ones and root too).
    Any(Pick),
    /// An online group (root only as a parent).
    Online(Pick),
    /// A group the model says can be removed, else as `Online`.
    Removable(Pick),
    /// The group of a task that has not exited, else as `Online`.
    OfTask(Pick),
    /// The owner of a live charge, else as `Online`.
    OfCharge(Pick),
}

impl GroupSel {
    /// Group `id` of the model, whatever it is.
    fn id(id: u16) -> GroupSel {
        GroupSel::Any(Pick(id))
    }

    fn resolve(self, model: &Model, with_root: bool) -> GroupId {
        let first = if with_root { ROOT } else { ROOT + 1 };
        let among = |ok: &dyn Fn(GroupId) -> bool, pick: Pick| {
            let c: Vec<GroupId> = (first..model.groups.len()).filter(|&g| ok(g)).collect();
            pick.of(c.len()).map(|i| c[i])
        };
        let chosen = match self {
            GroupSel::Any(_) => None,
            GroupSel::Online(p) => among(&|g| model.online(g), p),
            GroupSel::Removable(p) => among(&|g| model.predict_remove(g).is_ok(), p)
                .or_else(|| among(&|g| model.online(g), p)),
            GroupSel::OfTask(p) => {
                let live: Vec<GroupId> = model
                    .tasks
                    .iter()
                    .filter(|t| !t.exited && (with_root || t.group != ROOT))
                    .map(|t| t.group)
                    .collect();
                p.of(live.len())
                    .map(|i| live[i])
                    .or_else(|| among(&|g| model.online(g), p))
            }
            GroupSel::OfCharge(p) => {
                let owners: Vec<GroupId> = model
                    .charges
                    .values()
                    .map(|c| model.owner(c.origin))
                    .filter(|&g| with_root || g != ROOT)
                    .collect();
                p.of(owners.len())
                    .map(|i| owners[i])
                    .or_else(|| among(&|g| model.online(g), p))
            }
        };
        let (GroupSel::Any(p)
        | GroupSel::Online(p)
        | GroupSel::Removable(p)
        | GroupSel::OfTask(p)
        | GroupSel::OfCharge(p)) = self;
        chosen.unwrap_or_else(|| p.of(model.groups.len()).unwrap_or(ROOT))
    }
}

/// Picks a task: usually one that has not exited, sometimes any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TaskSel {
    any: bool,
    pick: Pick,
}

impl TaskSel {
    /// Task `id` of the model, whatever it is.
    fn id(id: u16) -> TaskSel {
        TaskSel {
            any: true,
            pick: Pick(id),
        }
    }

    fn resolve(self, model: &Model) -> Option<usize> {
        if !self.any {
            let live: Vec<usize> = (0..model.tasks.len())
                .filter(|&t| !model.tasks[t].exited)
                .collect();
            if let Some(i) = self.pick.of(live.len()) {
                return Some(live[i]);
            }
        }
        self.pick.of(model.tasks.len())
    }
}

/// Through what an uncharge goes.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// The task that charged.
    Owner,
    /// Any task (possibly the owner, possibly exited).
    Task(Pick),
    /// The controller (a free on a thread without a task).
    Controller,
}

#[derive(Debug, Clone, Copy)]
enum LimitChoice {
    Max,
    Bytes(u64),
    /// This percentage of the pages the live bytes of the group's subtree
    /// need when the step runs (often below its usage).
    PercentOfLive(u64),
}

#[derive(Debug, Clone)]
enum Op {
    /// `parent.create_child(name)`, or `ctrl.create("parent path/name")`.
    Create {
        parent: GroupSel,
        name: usize,
        via_path: bool,
        leading_slash: bool,
    },
    /// `group.remove()`, or `ctrl.remove(group's path)`.
    Remove {
        group: GroupSel,
        via_path: bool,
    },
    /// Attach the tasks of the group's subtree to its parent, then remove
    /// the subtree, leaves first (what a user does before `rmdir`).
    Evacuate {
        group: GroupSel,
        via_path: bool,
    },
    NewTask {
        group: GroupSel,
    },
    Attach {
        task: TaskSel,
        group: GroupSel,
    },
    Charge {
        task: TaskSel,
        cpu: usize,
        bytes: u64,
        kind: ChargeKind,
    },
    Uncharge {
        charge: Pick,
        cpu: usize,
        via: Via,
    },
    Flush {
        task: TaskSel,
        cpu: usize,
    },
    SetMax {
        group: GroupSel,
        limit: LimitChoice,
    },
    /// A callback that frees up to `budget` live charges owned by the
    /// group's subtree, uncharging them on `cpu`.
    RegisterReclaimer {
        group: GroupSel,
        budget: usize,
        cpu: usize,
    },
    DropReclaimer {
        which: Pick,
    },
    Exit {
        task: TaskSel,
    },
    /// `group.try_charge(bytes)` (on the first node).
    Reserve {
        group: GroupSel,
        bytes: u64,
    },
    /// `task.try_charge(cpu, bytes)`.
    TaskReserve {
        task: TaskSel,
        cpu: usize,
        bytes: u64,
    },
    Grow {
        reservation: Pick,
        bytes: u64,
    },
    Shrink {
        reservation: Pick,
        bytes: u64,
    },
    DropReservation {
        reservation: Pick,
    },
    /// `task.enter(group)`, charge, drop the guard (an override).
    ChargeEntered {
        task: TaskSel,
        group: GroupSel,
        cpu: usize,
        bytes: u64,
    },
    SetHigh {
        group: GroupSel,
        limit: LimitChoice,
    },
    SetForceOverMax {
        group: GroupSel,
        force: bool,
    },
    SetExempt {
        task: TaskSel,
        exempt: bool,
    },
    /// `task.obj_cgroup(node)`: which objcg the cache gives.
    QueryObjcg {
        task: TaskSel,
        node: usize,
    },
    /// `group.drain_stocks()`.
    DrainGroup {
        group: GroupSel,
    },
    /// `group.drain_node_stocks(node)`.
    DrainNode {
        group: GroupSel,
        node: usize,
    },
    DrainStocks,
    DrainAndCompare {
        cpu: usize,
    },
}

fn pick() -> impl Strategy<Value = Pick> {
    any::<u16>().prop_map(Pick)
}

fn task_sel() -> impl Strategy<Value = TaskSel> {
    (prop::bool::weighted(0.15), pick()).prop_map(|(any, pick)| TaskSel { any, pick })
}

fn group_sel() -> impl Strategy<Value = GroupSel> {
    prop_oneof![
        1 => pick().prop_map(GroupSel::Any),
        3 => pick().prop_map(GroupSel::Online),
        2 => pick().prop_map(GroupSel::OfTask),
        2 => pick().prop_map(GroupSel::OfCharge),
    ]
}

fn group_to_evacuate() -> impl Strategy<Value = GroupSel> {
    prop_oneof![
        1 => pick().prop_map(GroupSel::Any),
        1 => pick().prop_map(GroupSel::Online),
        3 => pick().prop_map(GroupSel::OfCharge),
    ]
}

fn group_to_remove() -> impl Strategy<Value = GroupSel> {
    prop_oneof![
        1 => pick().prop_map(GroupSel::Any),
        2 => pick().prop_map(GroupSel::Online),
        3 => pick().prop_map(GroupSel::Removable),
    ]
}

/// A CPU id, sometimes one the topology does not have.
fn any_cpu() -> impl Strategy<Value = usize> {
    prop_oneof![12 => valid_cpu(), 1 => Just(NR_CPUS)]
}

/// CPU 0 is favoured, so that its stocks see many objcgs (of both nodes,
/// through uncharges) and have to evict.
fn valid_cpu() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0), 2 => 0..NR_CPUS]
}

fn charge_bytes() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 1..=20_000u64, 1 => Just(PAGE_SIZE), 1 => Just(2 * PAGE_SIZE)]
}

fn op() -> impl Strategy<Value = Op> {
    let name = prop_oneof![10 => 0..4usize, 2 => 4..NR_NAMES];
    let kind = prop_oneof![
        6 => Just(ChargeKind::Alloc),
        2 => Just(ChargeKind::Runtime),
        1 => Just(ChargeKind::Reservation),
    ];
    let via = prop_oneof![
        Just(Via::Owner),
        pick().prop_map(Via::Task),
        Just(Via::Controller),
    ];
    let limit = prop_oneof![
        2 => Just(LimitChoice::Max),
        1 => (0..PAGE_SIZE).prop_map(LimitChoice::Bytes),
        2 => (PAGE_SIZE..48 * PAGE_SIZE).prop_map(LimitChoice::Bytes),
        1 => (48 * PAGE_SIZE..80 * PAGE_SIZE).prop_map(LimitChoice::Bytes),
        3 => (20..150u64).prop_map(LimitChoice::PercentOfLive),
    ];
    prop_oneof![
        8 => (group_sel(), name, any::<bool>(), any::<bool>()).prop_map(
            |(parent, name, via_path, leading_slash)| Op::Create {
                parent,
                name,
                via_path,
                leading_slash,
            }
        ),
        3 => (group_to_remove(), any::<bool>())
            .prop_map(|(group, via_path)| Op::Remove { group, via_path }),
        2 => (group_to_evacuate(), any::<bool>())
            .prop_map(|(group, via_path)| Op::Evacuate { group, via_path }),
        3 => group_sel().prop_map(|group| Op::NewTask { group }),
        4 => (task_sel(), group_sel()).prop_map(|(task, group)| Op::Attach { task, group }),
        24 => (task_sel(), any_cpu(), charge_bytes(), kind).prop_map(
            |(task, cpu, bytes, kind)| Op::Charge {
                task,
                cpu,
                bytes,
                kind,
            }
        ),
        14 => (pick(), valid_cpu(), via).prop_map(|(charge, cpu, via)| Op::Uncharge {
            charge,
            cpu,
            via
        }),
        2 => (task_sel(), any_cpu()).prop_map(|(task, cpu)| Op::Flush { task, cpu }),
        3 => (group_sel(), limit.clone()).prop_map(|(group, limit)| Op::SetMax { group, limit }),
        4 => (group_sel(), 1..5usize, valid_cpu()).prop_map(|(group, budget, cpu)| {
            Op::RegisterReclaimer { group, budget, cpu }
        }),
        1 => pick().prop_map(|which| Op::DropReclaimer { which }),
        1 => task_sel().prop_map(|task| Op::Exit { task }),
        2 => (group_sel(), 0..=20_000u64).prop_map(|(group, bytes)| Op::Reserve { group, bytes }),
        1 => (task_sel(), any_cpu(), 0..=20_000u64)
            .prop_map(|(task, cpu, bytes)| Op::TaskReserve { task, cpu, bytes }),
        1 => (pick(), 0..=20_000u64).prop_map(|(reservation, bytes)| Op::Grow {
            reservation,
            bytes
        }),
        1 => (pick(), 0..=20_000u64).prop_map(|(reservation, bytes)| Op::Shrink {
            reservation,
            bytes
        }),
        2 => pick().prop_map(|reservation| Op::DropReservation { reservation }),
        4 => (task_sel(), group_sel(), any_cpu(), charge_bytes()).prop_map(
            |(task, group, cpu, bytes)| Op::ChargeEntered {
                task,
                group,
                cpu,
                bytes,
            }
        ),
        1 => (group_sel(), limit.clone())
            .prop_map(|(group, limit)| Op::SetHigh { group, limit }),
        1 => (group_sel(), prop::bool::weighted(0.6))
            .prop_map(|(group, force)| Op::SetForceOverMax { group, force }),
        1 => (task_sel(), any::<bool>())
            .prop_map(|(task, exempt)| Op::SetExempt { task, exempt }),
        1 => (task_sel(), 0..=NR_NODES)
            .prop_map(|(task, node)| Op::QueryObjcg { task, node }),
        1 => group_sel().prop_map(|group| Op::DrainGroup { group }),
        1 => (group_sel(), 0..=NR_NODES)
            .prop_map(|(group, node)| Op::DrainNode { group, node }),
        1 => Just(Op::DrainStocks),
        1 => valid_cpu().prop_map(|cpu| Op::DrainAndCompare { cpu }),
    ]
}

/// A few groups and tasks to start from, so that most steps have groups
/// to work on (ordinary operations, which shrinking may drop).
fn setup() -> impl Strategy<Value = Vec<Op>> {
    let create = (pick(), 0..4usize).prop_map(|(p, name)| Op::Create {
        parent: GroupSel::Online(p),
        name,
        via_path: false,
        leading_slash: false,
    });
    let task = pick().prop_map(|p| Op::NewTask {
        group: GroupSel::Online(p),
    });
    (
        prop::collection::vec(create, 2..=8),
        prop::collection::vec(task, 1..=3),
    )
        .prop_map(|(mut groups, tasks)| {
            groups.extend(tasks);
            groups
        })
}

/// A cache mode and up to ~60 operations.
fn case() -> impl Strategy<Value = (TaskCacheMode, Vec<Op>)> {
    let mode = prop_oneof![3 => Just(TaskCacheMode::PerNode), 1 => Just(TaskCacheMode::Single)];
    (mode, setup(), prop::collection::vec(op(), 1..=49)).prop_map(|(mode, mut ops, more)| {
        ops.extend(more);
        (mode, ops)
    })
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// Index into [`Model::groups`]; never reused.
type GroupId = usize;

#[derive(Debug, Clone)]
struct MGroup {
    name: String,
    parent: Option<GroupId>,
    removed: bool,
    max: Limit,
    high: Limit,
    /// `force_over_max`: charges past `max` are forced, not refused.
    force: bool,
}

#[derive(Debug, Clone)]
struct MTask {
    group: GroupId,
    exited: bool,
    exempt: bool,
    /// Single-cache mode: the node of the one cached objcg, chosen at the
    /// first lookup after creation, an attach or a change of exemption.
    single_node: Option<usize>,
}

/// A live charge: charged to the objcg made for `origin` on `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MCharge {
    task: usize,
    origin: GroupId,
    node: usize,
    bytes: u64,
    kind: ChargeKind,
}

/// A live reservation (kind `Reservation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MReservation {
    origin: GroupId,
    node: usize,
    bytes: u64,
}

/// What a structural operation is expected to return.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    InvalidName,
    InvalidPath,
    AlreadyExists(String),
    NotFound,
    Root,
    Removed(String),
    HasTasks(String, usize),
    HasChildren(String, usize),
    TaskExited,
    UnknownCpu(usize),
    UnknownNode(usize),
    Charge,
    Other(String),
}

fn classify(e: &Error) -> Expect {
    match e {
        Error::InvalidName { .. } => Expect::InvalidName,
        Error::InvalidPath { .. } => Expect::InvalidPath,
        Error::AlreadyExists { path } => Expect::AlreadyExists(path.clone()),
        Error::NotFound { .. } => Expect::NotFound,
        Error::Root { .. } => Expect::Root,
        Error::Removed { path } => Expect::Removed(path.clone()),
        Error::HasTasks { path, nr_tasks } => Expect::HasTasks(path.clone(), *nr_tasks),
        Error::HasChildren { path, nr_children } => Expect::HasChildren(path.clone(), *nr_children),
        Error::TaskExited => Expect::TaskExited,
        Error::UnknownCpu { cpu, .. } => Expect::UnknownCpu(*cpu),
        Error::UnknownNode { node, .. } => Expect::UnknownNode(*node),
        Error::Charge(_) => Expect::Charge,
        other => Expect::Other(format!("{other:?}")),
    }
}

/// Checks an outcome against the prediction: both `Ok`, or both `Err` of
/// the predicted kind.
fn check_outcome<T: std::fmt::Debug>(
    predicted: &Result<(), Expect>,
    actual: &Result<T, Error>,
) -> Result<(), String> {
    match (predicted, actual) {
        (Ok(()), Ok(_)) => Ok(()),
        (Err(want), Err(got)) if *want == classify(got) => Ok(()),
        (Ok(()), Err(got)) => Err(format!("model predicted success, engine returned {got:?}")),
        (Err(want), Ok(v)) => Err(format!(
            "model predicted {want:?}, engine returned Ok({v:?})"
        )),
        (Err(want), Err(got)) => Err(format!("model predicted {want:?}, engine returned {got:?}")),
    }
}

fn validate_name(name: &str) -> Result<(), Expect> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(char::is_control)
        || name.len() > 255;
    if bad {
        Err(Expect::InvalidName)
    } else {
        Ok(())
    }
}

/// A path's names: one leading and one trailing `/` are ignored; empty
/// components are an invalid path; every name must be valid.
fn components(path: &str) -> Result<Vec<&str>, Expect> {
    let t = path.strip_prefix('/').unwrap_or(path);
    let t = t.strip_suffix('/').unwrap_or(t);
    if t.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = t.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Expect::InvalidPath);
    }
    for p in &parts {
        validate_name(p)?;
    }
    Ok(parts)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// What a drained engine must show for one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Expected {
    usage_bytes: u64,
    /// Per node: kernel bytes, and live bytes by kind.
    kernel_bytes: [u64; NR_NODES],
    live: [[u64; 3]; NR_NODES],
}

#[derive(Debug, Clone)]
struct Model {
    mode: TaskCacheMode,
    groups: Vec<MGroup>,
    tasks: Vec<MTask>,
    charges: BTreeMap<u64, MCharge>,
    reservations: BTreeMap<u64, MReservation>,
    next_id: u64,
}

impl Model {
    fn new(mode: TaskCacheMode) -> Model {
        Model {
            mode,
            groups: vec![MGroup {
                name: String::new(),
                parent: None,
                removed: false,
                max: Limit::Max,
                high: Limit::Max,
                force: false,
            }],
            tasks: Vec::new(),
            charges: BTreeMap::new(),
            reservations: BTreeMap::new(),
            next_id: 0,
        }
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn path(&self, g: GroupId) -> String {
        match self.groups[g].parent {
            None => String::new(),
            Some(p) => join(&self.path(p), &self.groups[g].name),
        }
    }

    fn online(&self, g: GroupId) -> bool {
        !self.groups[g].removed
    }

    /// Online children, sorted by name.
    fn children(&self, g: GroupId) -> Vec<GroupId> {
        let mut c: Vec<GroupId> = (0..self.groups.len())
            .filter(|&c| self.groups[c].parent == Some(g) && self.online(c))
            .collect();
        c.sort_by(|&x, &y| self.groups[x].name.cmp(&self.groups[y].name));
        c
    }

    fn child_named(&self, g: GroupId, name: &str) -> Option<GroupId> {
        self.children(g)
            .into_iter()
            .find(|&c| self.groups[c].name == name)
    }

    /// The current owner of objcgs made for `g`: the nearest online group
    /// on its ancestor chain.
    fn owner(&self, mut g: GroupId) -> GroupId {
        while self.groups[g].removed {
            g = self.groups[g].parent.unwrap_or(ROOT);
        }
        g
    }

    /// Whether `x` is `g` or below it.
    fn in_subtree(&self, mut x: GroupId, g: GroupId) -> bool {
        loop {
            if x == g {
                return true;
            }
            match self.groups[x].parent {
                Some(p) => x = p,
                None => return false,
            }
        }
    }

    fn nr_tasks(&self, g: GroupId) -> usize {
        self.tasks
            .iter()
            .filter(|t| !t.exited && t.group == g)
            .count()
    }

    /// Paths of the online groups, root first, depth first, children by
    /// name (the order of `Controller::stats`).
    fn dfs_paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![ROOT];
        while let Some(g) = stack.pop() {
            out.push(self.path(g));
            let mut c = self.children(g);
            c.reverse();
            stack.extend(c);
        }
        out
    }

    fn predict_create_child(&self, g: GroupId, name: &str) -> Result<(), Expect> {
        validate_name(name)?;
        if !self.online(g) {
            return Err(Expect::Removed(self.path(g)));
        }
        if self.child_named(g, name).is_some() {
            return Err(Expect::AlreadyExists(join(&self.path(g), name)));
        }
        Ok(())
    }

    /// `Controller::create(path)`: the parent and the new name.
    fn predict_create_path(&self, path: &str) -> Result<(GroupId, String), Expect> {
        let parts = components(path)?;
        let Some((last, parents)) = parts.split_last() else {
            return Err(Expect::AlreadyExists(String::new()));
        };
        let mut g = ROOT;
        for name in parents {
            g = self.child_named(g, name).ok_or(Expect::NotFound)?;
        }
        self.predict_create_child(g, last)?;
        Ok((g, last.to_string()))
    }

    fn predict_remove(&self, g: GroupId) -> Result<(), Expect> {
        if g == ROOT {
            return Err(Expect::Root);
        }
        if !self.online(g) {
            return Err(Expect::Removed(self.path(g)));
        }
        let children = self.children(g).len();
        if children > 0 {
            return Err(Expect::HasChildren(self.path(g), children));
        }
        let tasks = self.nr_tasks(g);
        if tasks > 0 {
            return Err(Expect::HasTasks(self.path(g), tasks));
        }
        Ok(())
    }

    /// `Controller::remove(path)`: the group that goes.
    fn predict_remove_path(&self, path: &str) -> Result<GroupId, Expect> {
        let parts = components(path)?;
        if parts.is_empty() {
            return Err(Expect::Root);
        }
        let mut g = ROOT;
        for name in parts {
            g = self.child_named(g, name).ok_or(Expect::NotFound)?;
        }
        self.predict_remove(g)?;
        Ok(g)
    }

    /// The objcg a task charges on `cpu` (a valid CPU): `(origin, node)`.
    /// Exited and exempt tasks charge root; in single-cache mode the first
    /// lookup after an attach fixes the node.
    fn charge_target(&mut self, t: usize, cpu: usize) -> (GroupId, usize) {
        let mode = self.mode;
        let task = &mut self.tasks[t];
        if task.exited || task.exempt {
            return (ROOT, node_of(cpu));
        }
        match mode {
            TaskCacheMode::Single => {
                let node = *task.single_node.get_or_insert(node_of(cpu));
                (task.group, node)
            }
            _ => (task.group, node_of(cpu)),
        }
    }

    /// Live bytes by kind of every objcg, keyed by `(origin, node)`.
    fn objcg_live(&self) -> BTreeMap<(GroupId, usize), [u64; 3]> {
        let mut out: BTreeMap<(GroupId, usize), [u64; 3]> = BTreeMap::new();
        for c in self.charges.values() {
            out.entry((c.origin, c.node)).or_default()[kind_index(c.kind)] += c.bytes;
        }
        for r in self.reservations.values() {
            out.entry((r.origin, r.node)).or_default()[2] += r.bytes;
        }
        out
    }

    /// What group `g` shows once every cache and stock is drained: each
    /// objcg it owns (with its subtree) holds exactly the pages its live
    /// bytes need.
    fn expected(&self, g: GroupId) -> Expected {
        let mut e = Expected::default();
        for ((origin, node), live) in self.objcg_live() {
            if !self.in_subtree(self.owner(origin), g) {
                continue;
            }
            let bytes = page_bytes(live.iter().sum());
            e.usage_bytes += bytes;
            e.kernel_bytes[node] += bytes;
            for (acc, v) in e.live[node].iter_mut().zip(live) {
                *acc += v;
            }
        }
        e
    }

    /// The groups that may refuse a charge to an objcg of `origin`: its
    /// owner and the owner's ancestors, with a byte limit.
    fn limited_chain(&self, origin: GroupId) -> Vec<GroupId> {
        let mut out = Vec::new();
        let mut g = Some(self.owner(origin));
        while let Some(x) = g {
            if matches!(self.groups[x].max, Limit::Bytes(_)) {
                out.push(x);
            }
            g = self.groups[x].parent;
        }
        out
    }
}

/// The usage figures of a refused charge must show that it did not fit.
fn check_charge_justified(usage: u64, requested: u64, limit: u64) -> Result<(), String> {
    if usage.saturating_add(requested) > limit {
        Ok(())
    } else {
        Err(format!(
            "unjustified charge failure: usage {usage} + request {requested} <= limit {limit}"
        ))
    }
}

/// A refused charge of `bytes` to an objcg of `origin`: justified, refused
/// by a limited group on the charged chain with the model's limit, for the
/// pages the bytes need.
fn check_charge_error(
    model: &Model,
    e: &ChargeError,
    origin: GroupId,
    bytes: u64,
) -> Result<(), String> {
    check_charge_justified(e.usage_bytes(), e.requested_bytes(), e.limit_bytes())?;
    if e.requested_bytes() != page_bytes(bytes) {
        return Err(format!(
            "charge of {bytes} bytes refused for {} requested bytes, expected {}",
            e.requested_bytes(),
            page_bytes(bytes)
        ));
    }
    let chain = model.limited_chain(origin);
    let Some(&g) = chain.iter().find(|&&g| model.path(g) == e.path()) else {
        return Err(format!(
            "charge to objcg of {:?} refused by {:?}, which is not a limited group on its chain {:?}",
            model.path(origin),
            e.path(),
            chain.iter().map(|&g| model.path(g)).collect::<Vec<_>>()
        ));
    };
    if model.groups[g].force {
        return Err(format!(
            "charge refused by {:?}, which forces charges past max",
            e.path()
        ));
    }
    let want = rounded(model.groups[g].max);
    if Limit::Bytes(e.limit_bytes()) != want {
        return Err(format!(
            "charge refused by {:?} with limit {} bytes, model has {want:?}",
            e.path(),
            e.limit_bytes()
        ));
    }
    Ok(())
}

/// A group whose usage is over its `max` must not grow.
fn check_max_respected(path: &str, usage: u64, max: Limit, previous: u64) -> Result<(), String> {
    match max {
        Limit::Bytes(m) if usage > m && usage > previous => Err(format!(
            "group {path:?}: usage grew from {previous} to {usage} bytes past max {m}"
        )),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The harness: engine + model
// ---------------------------------------------------------------------------

/// What the harness and the reclaim callbacks share.
#[derive(Debug)]
struct Shared {
    model: Model,
    /// The engine's charges, by model id.
    live: BTreeMap<u64, memcg::Charge>,
    /// Problems seen inside callbacks, reported after the step.
    errors: Vec<String>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A reclaim callback registered on `group`: frees up to `budget` live
/// charges owned by `group`'s subtree (oldest first) until `wanted_bytes`
/// are freed, uncharging them through the controller on `cpu`.
fn reclaim(
    shared: &Mutex<Shared>,
    ctrl: &Controller,
    group: GroupId,
    budget: usize,
    cpu: usize,
    req: &ReclaimRequest,
) -> u64 {
    let taken = {
        let mut s = match shared.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                panic!("harness bug: a reclaim callback ran while the harness held the model")
            }
        };
        if s.model.groups[group].removed {
            let path = s.model.path(group);
            s.errors
                .push(format!("the reclaimer of removed group {path:?} ran"));
            return 0;
        }
        let m = &s.model;
        let ids: Vec<u64> = m
            .charges
            .iter()
            .filter(|(_, c)| m.in_subtree(m.owner(c.origin), group))
            .map(|(&id, _)| id)
            .collect();
        let mut freed = 0;
        let mut taken = Vec::new();
        for id in ids {
            if taken.len() >= budget || freed >= req.wanted_bytes {
                break;
            }
            let c = s.model.charges.remove(&id).map(|c| c.bytes);
            let real = s.live.remove(&id);
            if let (Some(bytes), Some(real)) = (c, real) {
                freed += bytes;
                taken.push(real);
            }
        }
        taken
    };
    let mut freed = 0;
    for c in taken {
        freed += c.bytes();
        if let Err(e) = ctrl.uncharge(cpu, c) {
            lock(shared)
                .errors
                .push(format!("uncharge in a reclaim callback failed: {e}"));
        }
    }
    freed
}

struct Harness {
    ctrl: Controller,
    shared: Arc<Mutex<Shared>>,
    /// Engine handles, by model id (removed groups included).
    groups: Vec<Group>,
    tasks: Vec<Task>,
    reservations: BTreeMap<u64, Reservation>,
    reclaimers: Vec<ReclaimerHandle>,
    /// Usage of every group after the previous step.
    last_usage: Vec<u64>,
    /// Peak of every group after the previous step.
    last_peak: Vec<u64>,
    /// `oom` events of every group before the current charge.
    oom_before: Vec<u64>,
}

impl Harness {
    fn new(mode: TaskCacheMode) -> Harness {
        let topology = Topology::from_spec(TOPOLOGY).expect("valid topology");
        for cpu in 0..NR_CPUS {
            assert_eq!(topology.node_of(cpu).ok(), Some(node_of(cpu)));
        }
        let ctrl = Controller::new(topology);
        let root = ctrl.root();
        // The reference model predicts refusals at `max` (policy `fail`,
        // inherited by every group made below root).
        root.set_oom_policy(memcg::OomPolicy::Fail);
        Harness {
            ctrl,
            shared: Arc::new(Mutex::new(Shared {
                model: Model::new(mode),
                live: BTreeMap::new(),
                errors: Vec::new(),
            })),
            groups: vec![root],
            tasks: Vec::new(),
            reservations: BTreeMap::new(),
            reclaimers: Vec::new(),
            last_usage: vec![0],
            last_peak: vec![0],
            oom_before: Vec::new(),
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// A copy of the model (never hold the lock across engine calls: a
    /// reclaim callback may need it).
    fn model(&self) -> Model {
        self.shared().model.clone()
    }

    fn add_group(&mut self, parent: GroupId, name: String, group: Group) -> Result<(), String> {
        let mut s = self.shared();
        s.model.groups.push(MGroup {
            name,
            parent: Some(parent),
            removed: false,
            max: Limit::Max,
            high: Limit::Max,
            force: false,
        });
        let id = s.model.groups.len() - 1;
        let want = s.model.path(id);
        drop(s);
        if group.path() != want || !group.is_online() {
            return Err(format!(
                "new group has path {:?} (online {}), model expects {want:?}",
                group.path(),
                group.is_online()
            ));
        }
        self.groups.push(group);
        self.last_usage.push(0);
        self.last_peak.push(0);
        Ok(())
    }

    fn record_charge(&mut self, m: MCharge, c: memcg::Charge) -> Result<(), String> {
        if c.bytes() != m.bytes || c.kind() != m.kind {
            return Err(format!("charge {c:?} does not match the request {m:?}"));
        }
        let mut s = self.shared();
        let id = s.model.fresh_id();
        s.model.charges.insert(id, m);
        s.live.insert(id, c);
        Ok(())
    }

    /// Runs one operation and checks its outcome.
    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let model = self.model();
        if matches!(
            op,
            Op::Charge { .. }
                | Op::ChargeEntered { .. }
                | Op::Reserve { .. }
                | Op::TaskReserve { .. }
                | Op::Grow { .. }
        ) {
            self.oom_before = self.oom_counts(&model);
        }
        match *op {
            Op::Create {
                parent,
                name: n,
                via_path,
                leading_slash,
            } => {
                let p = parent.resolve(&model, true);
                let name = name(n);
                if via_path {
                    let mut path = join(&model.path(p), &name);
                    if leading_slash {
                        path.insert(0, '/');
                    }
                    let predicted = model.predict_create_path(&path);
                    let actual = self.ctrl.create(&path);
                    check_outcome(&predicted.clone().map(|_| ()), &actual)?;
                    if let (Ok((parent, name)), Ok(group)) = (predicted, actual) {
                        self.add_group(parent, name, group)?;
                    }
                } else {
                    let predicted = model.predict_create_child(p, &name);
                    let actual = self.groups[p].create_child(&name);
                    check_outcome(&predicted, &actual)?;
                    if let Ok(group) = actual {
                        self.add_group(p, name, group)?;
                    }
                }
            }
            Op::Remove { group, via_path } => {
                let g = group.resolve(&model, false);
                let (predicted, actual) = if via_path {
                    let path = model.path(g);
                    (model.predict_remove_path(&path), self.ctrl.remove(&path))
                } else {
                    (model.predict_remove(g).map(|()| g), self.groups[g].remove())
                };
                check_outcome(&predicted.clone().map(|_| ()), &actual)?;
                if let (Ok(g), Ok(())) = (predicted, actual) {
                    self.shared().model.groups[g].removed = true;
                }
            }
            Op::Evacuate { group, via_path } => {
                let g = group.resolve(&model, false);
                let parent = match model.groups[g].parent {
                    Some(parent) if model.online(g) => parent,
                    // Root or removed: the removal's error is the point.
                    _ => {
                        return self.apply(&Op::Remove {
                            group: GroupSel::id(g as u16),
                            via_path,
                        })
                    }
                };
                let subtree: Vec<GroupId> = (0..model.groups.len())
                    .filter(|&d| model.online(d) && model.in_subtree(d, g))
                    .collect();
                for (t, task) in model.tasks.iter().enumerate() {
                    if !task.exited && subtree.contains(&task.group) {
                        self.apply(&Op::Attach {
                            task: TaskSel::id(t as u16),
                            group: GroupSel::id(parent as u16),
                        })?;
                    }
                }
                // Children are made after their parents: newest first.
                for &d in subtree.iter().rev() {
                    self.apply(&Op::Remove {
                        group: GroupSel::id(d as u16),
                        via_path,
                    })?;
                }
                // `g` itself goes last.
            }
            Op::NewTask { group } => {
                if self.tasks.len() >= MAX_TASKS {
                    return Ok(());
                }
                let g = group.resolve(&model, false);
                let predicted = if model.online(g) {
                    Ok(())
                } else {
                    Err(Expect::Removed(model.path(g)))
                };
                let actual = self.ctrl.new_task_with_mode(&self.groups[g], model.mode);
                check_outcome(&predicted, &actual)?;
                if let Ok(task) = actual {
                    self.tasks.push(task);
                    self.shared().model.tasks.push(MTask {
                        group: g,
                        exited: false,
                        exempt: false,
                        single_node: None,
                    });
                }
            }
            Op::Attach { task, group } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                let g = group.resolve(&model, false);
                let predicted = if !model.online(g) {
                    Err(Expect::Removed(model.path(g)))
                } else if model.tasks[t].exited {
                    Err(Expect::TaskExited)
                } else {
                    Ok(())
                };
                let actual = self.groups[g].attach(&self.tasks[t].handle());
                check_outcome(&predicted, &actual)?;
                if actual.is_ok() {
                    let mut s = self.shared();
                    s.model.tasks[t].group = g;
                    s.model.tasks[t].single_node = None;
                }
            }
            Op::Charge {
                task,
                cpu,
                bytes,
                kind,
            } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                if cpu >= NR_CPUS {
                    let actual = self.tasks[t].charge(cpu, bytes, kind);
                    return check_outcome(&Err(Expect::UnknownCpu(cpu)), &actual);
                }
                let (origin, node) = self.shared().model.charge_target(t, cpu);
                match self.tasks[t].charge(cpu, bytes, kind) {
                    Ok(c) => {
                        let m = MCharge {
                            task: t,
                            origin,
                            node,
                            bytes,
                            kind,
                        };
                        self.record_charge(m, c)?;
                    }
                    Err(Error::Charge(e)) => {
                        self.check_refused(&e, origin, bytes)?;
                    }
                    Err(e) => return Err(format!("charge failed unexpectedly: {e:?}")),
                }
            }
            Op::Uncharge { charge, cpu, via } => {
                let (m, c) = {
                    let mut s = self.shared();
                    let ids: Vec<u64> = s.model.charges.keys().copied().collect();
                    let Some(i) = charge.of(ids.len()) else {
                        return Ok(());
                    };
                    let id = ids[i];
                    let m = s.model.charges.remove(&id);
                    let c = s.live.remove(&id);
                    match (m, c) {
                        (Some(m), Some(c)) => (m, c),
                        _ => return Err(format!("harness bug: charge {id} not in both maps")),
                    }
                };
                let result = match via {
                    Via::Owner => self.tasks[m.task].uncharge(cpu, c),
                    Via::Task(p) => {
                        let t = p.of(self.tasks.len()).unwrap_or(m.task);
                        self.tasks[t].uncharge(cpu, c)
                    }
                    Via::Controller => self.ctrl.uncharge(cpu, c),
                };
                check_outcome(&Ok(()), &result)?;
            }
            Op::Flush { task, cpu } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                let predicted = if cpu < NR_CPUS {
                    Ok(())
                } else {
                    Err(Expect::UnknownCpu(cpu))
                };
                check_outcome(&predicted, &self.tasks[t].flush(cpu))?;
            }
            Op::SetMax { group, limit } | Op::SetHigh { group, limit } => {
                let g = group.resolve(&model, false);
                let limit = match limit {
                    LimitChoice::Max => Limit::Max,
                    LimitChoice::Bytes(b) => Limit::Bytes(b),
                    LimitChoice::PercentOfLive(p) => {
                        Limit::Bytes(model.expected(g).usage_bytes * p / 100)
                    }
                };
                let predicted = if g == ROOT {
                    Err(Expect::Root)
                } else if !model.online(g) {
                    Err(Expect::Removed(model.path(g)))
                } else {
                    Ok(())
                };
                let is_max = matches!(op, Op::SetMax { .. });
                let actual = if is_max {
                    self.groups[g].set_max(limit)
                } else {
                    self.groups[g].set_high(limit)
                };
                check_outcome(&predicted, &actual)?;
                if actual.is_ok() {
                    let m = &mut self.shared().model.groups[g];
                    if is_max {
                        m.max = limit;
                    } else {
                        m.high = limit;
                    }
                }
            }
            Op::SetForceOverMax { group, force } => {
                let g = group.resolve(&model, false);
                let policy = if force {
                    memcg::OomPolicy::Force
                } else {
                    memcg::OomPolicy::Fail
                };
                self.groups[g].set_oom_policy(policy);
                self.shared().model.groups[g].force = force;
                if self.groups[g].oom_policy() != policy {
                    return Err("force_over_max does not read back".into());
                }
            }
            Op::SetExempt { task, exempt } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                self.tasks[t].set_exempt(exempt);
                let mut s = self.shared();
                s.model.tasks[t].exempt = exempt;
                s.model.tasks[t].single_node = None;
            }
            Op::QueryObjcg { task, node } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                let actual = self.tasks[t].obj_cgroup(node);
                if node >= NR_NODES {
                    return check_outcome(&Err(Expect::UnknownNode(node)), &actual);
                }
                let want = {
                    let mut s = self.shared();
                    let m = &mut s.model;
                    let task = &mut m.tasks[t];
                    if task.exited || task.exempt {
                        (ROOT, node)
                    } else if m.mode == TaskCacheMode::Single {
                        (task.group, *task.single_node.get_or_insert(node))
                    } else {
                        (task.group, node)
                    }
                };
                let want = (model.path(model.owner(want.0)), want.1);
                if actual.as_ref() != Ok(&want) {
                    return Err(format!("obj_cgroup({node}) is {actual:?}, model {want:?}"));
                }
            }
            Op::ChargeEntered {
                task,
                group,
                cpu,
                bytes,
            } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                let g = group.resolve(&model, true);
                let result = match self.tasks[t].enter(&self.groups[g]) {
                    Ok(guard) => {
                        let r = self.tasks[t].charge(cpu, bytes, ChargeKind::Alloc);
                        drop(guard);
                        Ok(r)
                    }
                    Err(e) => Err(e),
                };
                let predicted = if model.online(g) {
                    Ok(())
                } else {
                    Err(Expect::Removed(model.path(g)))
                };
                check_outcome(&predicted, &result)?;
                let Ok(result) = result else {
                    return Ok(());
                };
                if cpu >= NR_CPUS {
                    return check_outcome(&Err(Expect::UnknownCpu(cpu)), &result);
                }
                let m = MCharge {
                    task: t,
                    origin: g,
                    node: node_of(cpu),
                    bytes,
                    kind: ChargeKind::Alloc,
                };
                match result {
                    Ok(c) => self.record_charge(m, c)?,
                    Err(Error::Charge(e)) => self.check_refused(&e, g, bytes)?,
                    Err(e) => return Err(format!("charge failed unexpectedly: {e:?}")),
                }
            }
            Op::DrainGroup { group } => {
                let g = group.resolve(&model, true);
                self.groups[g].drain_stocks();
            }
            Op::DrainNode { group, node } => {
                let g = group.resolve(&model, true);
                let predicted = if node < NR_NODES {
                    Ok(())
                } else {
                    Err(Expect::UnknownNode(node))
                };
                check_outcome(&predicted, &self.groups[g].drain_node_stocks(node))?;
            }
            Op::RegisterReclaimer { group, budget, cpu } => {
                let g = group.resolve(&model, false);
                let shared = Arc::clone(&self.shared);
                let ctrl = self.ctrl.clone();
                let handle = self.groups[g]
                    .register_reclaimer(move |req| reclaim(&shared, &ctrl, g, budget, cpu, req));
                self.reclaimers.push(handle);
            }
            Op::DropReclaimer { which } => {
                if let Some(i) = which.of(self.reclaimers.len()) {
                    drop(self.reclaimers.remove(i));
                }
            }
            Op::Exit { task } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                self.tasks[t].exit();
                if !self.tasks[t].has_exited() {
                    return Err("task not exited after exit()".into());
                }
                self.shared().model.tasks[t].exited = true;
            }
            Op::Reserve { group, bytes } => {
                let g = group.resolve(&model, false);
                let actual = self.groups[g].try_charge(bytes);
                if !model.online(g) {
                    return check_outcome(&Err(Expect::Removed(model.path(g))), &actual);
                }
                let m = MReservation {
                    origin: g,
                    node: 0,
                    bytes,
                };
                self.record_reservation(m, actual)?;
            }
            Op::TaskReserve { task, cpu, bytes } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                if cpu >= NR_CPUS {
                    let actual = self.tasks[t].try_charge(cpu, bytes);
                    return check_outcome(&Err(Expect::UnknownCpu(cpu)), &actual);
                }
                let (origin, node) = self.shared().model.charge_target(t, cpu);
                let actual = self.tasks[t].try_charge(cpu, bytes);
                self.record_reservation(
                    MReservation {
                        origin,
                        node,
                        bytes,
                    },
                    actual,
                )?;
            }
            Op::Grow { reservation, bytes } => {
                let ids: Vec<u64> = model.reservations.keys().copied().collect();
                let Some(i) = reservation.of(ids.len()) else {
                    return Ok(());
                };
                let id = ids[i];
                let origin = model.reservations[&id].origin;
                let r = self
                    .reservations
                    .get_mut(&id)
                    .ok_or("harness bug: reservation missing")?;
                match r.grow(bytes) {
                    Ok(()) => {
                        let total = r.bytes();
                        let mut s = self.shared();
                        let m = s
                            .model
                            .reservations
                            .get_mut(&id)
                            .ok_or("harness bug: reservation missing")?;
                        m.bytes += bytes;
                        if total != m.bytes {
                            return Err(format!(
                                "reservation has {total} bytes, model {}",
                                m.bytes
                            ));
                        }
                    }
                    Err(Error::Charge(e)) => self.check_refused(&e, origin, bytes)?,
                    Err(e) => return Err(format!("grow failed unexpectedly: {e:?}")),
                }
            }
            Op::Shrink { reservation, bytes } => {
                let ids: Vec<u64> = model.reservations.keys().copied().collect();
                let Some(i) = reservation.of(ids.len()) else {
                    return Ok(());
                };
                let id = ids[i];
                let r = self
                    .reservations
                    .get_mut(&id)
                    .ok_or("harness bug: reservation missing")?;
                r.shrink(bytes);
                let total = r.bytes();
                let mut s = self.shared();
                let m = s
                    .model
                    .reservations
                    .get_mut(&id)
                    .ok_or("harness bug: reservation missing")?;
                m.bytes -= bytes.min(m.bytes);
                if total != m.bytes {
                    return Err(format!("reservation has {total} bytes, model {}", m.bytes));
                }
            }
            Op::DropReservation { reservation } => {
                let ids: Vec<u64> = model.reservations.keys().copied().collect();
                let Some(i) = reservation.of(ids.len()) else {
                    return Ok(());
                };
                let id = ids[i];
                self.shared().model.reservations.remove(&id);
                drop(self.reservations.remove(&id));
            }
            Op::DrainStocks => self.ctrl.drain_stocks(),
            Op::DrainAndCompare { cpu } => {
                // Live bytes are exact once the tasks' pending statistics
                // are flushed, whatever the stocks hold.
                self.flush_tasks(cpu)?;
                self.compare_live(&self.model())?;
                self.drain(cpu)?;
                self.compare_drained(&self.model())?;
            }
        }
        Ok(())
    }

    /// Local `oom` events of every group (by model id).
    fn oom_counts(&self, model: &Model) -> Vec<u64> {
        (0..model.groups.len())
            .map(|g| self.groups[g].events_local().oom)
            .collect()
    }

    /// A refused charge: [`check_charge_error`], and exactly one `oom`
    /// event counted locally by the refusing group.
    fn check_refused(&self, e: &ChargeError, origin: GroupId, bytes: u64) -> Result<(), String> {
        let model = self.model();
        check_charge_error(&model, e, origin, bytes)?;
        let g = (0..model.groups.len())
            .find(|&g| model.online(g) && model.path(g) == e.path())
            .ok_or_else(|| format!("refused by unknown group {:?}", e.path()))?;
        let before = self.oom_before.get(g).copied().unwrap_or(0);
        let after = self.groups[g].events_local().oom;
        if after != before + 1 {
            return Err(format!(
                "refused by {:?}: local oom events went from {before} to {after}",
                e.path()
            ));
        }
        Ok(())
    }

    fn record_reservation(
        &mut self,
        m: MReservation,
        actual: Result<Reservation, Error>,
    ) -> Result<(), String> {
        match actual {
            Ok(r) => {
                if r.bytes() != m.bytes {
                    return Err(format!(
                        "reservation {r:?} does not match the request {m:?}"
                    ));
                }
                let mut s = self.shared();
                let id = s.model.fresh_id();
                s.model.reservations.insert(id, m);
                drop(s);
                self.reservations.insert(id, r);
                Ok(())
            }
            Err(Error::Charge(e)) => self.check_refused(&e, m.origin, m.bytes),
            Err(e) => Err(format!("reservation failed unexpectedly: {e:?}")),
        }
    }

    /// Flushes every live task's cache on `cpu`.
    fn flush_tasks(&self, cpu: usize) -> Result<(), String> {
        for t in &self.tasks {
            if !t.has_exited() {
                t.flush(cpu).map_err(|e| format!("flush failed: {e}"))?;
            }
        }
        Ok(())
    }

    /// Flushes every live task's cache on `cpu` and drains every stock.
    fn drain(&mut self, cpu: usize) -> Result<(), String> {
        self.flush_tasks(cpu)?;
        self.ctrl.drain_stocks();
        Ok(())
    }

    /// After [`Harness::flush_tasks`]: every online group's per-node live
    /// bytes by kind equal the model's (stocks do not matter).
    fn compare_live(&self, model: &Model) -> Result<(), String> {
        let mut bad = Vec::new();
        for g in (0..model.groups.len()).filter(|&g| model.online(g)) {
            let want = model.expected(g);
            let stats = self.groups[g].stats();
            for node in 0..NR_NODES {
                let h = stats.numa[node].hierarchical;
                let got = [h.alloc_bytes, h.runtime_bytes, h.reservation_bytes];
                if got != want.live[node] {
                    bad.push(format!(
                        "group {:?} node {node}: live bytes {got:?}, model {:?}",
                        model.path(g),
                        want.live[node]
                    ));
                }
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "flushed statistics differ from the model:\n  {}",
                bad.join("\n  ")
            ))
        }
    }

    /// After [`Harness::drain`]: every online group's usage, per-node
    /// `kernel` and per-node live bytes by kind equal the model's.
    fn compare_drained(&self, model: &Model) -> Result<(), String> {
        let mut bad = Vec::new();
        for (g, m) in model.groups.iter().enumerate() {
            if m.removed {
                continue;
            }
            let want = model.expected(g);
            let group = &self.groups[g];
            let path = group.path();
            let usage = group.current_bytes();
            if usage != want.usage_bytes {
                bad.push(format!(
                    "group {path:?}: current {usage} bytes, model {}",
                    want.usage_bytes
                ));
            }
            let stats = group.stats();
            for node in 0..NR_NODES {
                let h = stats.numa[node].hierarchical;
                let got = [h.alloc_bytes, h.runtime_bytes, h.reservation_bytes];
                if got != want.live[node] {
                    bad.push(format!(
                        "group {path:?} node {node}: live bytes [alloc, runtime, reservation] {got:?}, model {:?}",
                        want.live[node]
                    ));
                }
                if h.alloc_bytes + h.reservation_bytes != want.live[node][0] + want.live[node][2] {
                    bad.push(format!(
                        "group {path:?} node {node}: alloc + reservation {}, model {}",
                        h.alloc_bytes + h.reservation_bytes,
                        want.live[node][0] + want.live[node][2]
                    ));
                }
                if h.kernel_bytes != want.kernel_bytes[node] {
                    bad.push(format!(
                        "group {path:?} node {node}: kernel {} bytes, model {}",
                        h.kernel_bytes, want.kernel_bytes[node]
                    ));
                }
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "drained state differs from the model:\n  {}",
                bad.join("\n  ")
            ))
        }
    }

    /// The checks that hold after every step.
    fn check_step(&mut self) -> Result<(), String> {
        if let Err(v) = self.ctrl.check_invariants() {
            return Err(format!("check_invariants: {v}"));
        }
        let errors = std::mem::take(&mut self.shared().errors);
        if !errors.is_empty() {
            return Err(errors.join("\n"));
        }
        let model = self.model();
        let paths: Vec<String> = self.ctrl.stats().into_iter().map(|s| s.path).collect();
        if paths != model.dfs_paths() {
            return Err(format!("groups {paths:?}, model {:?}", model.dfs_paths()));
        }
        for (t, m) in model.tasks.iter().enumerate() {
            let task = &self.tasks[t];
            let group = task.group();
            let want = (!m.exited).then(|| &self.groups[m.group]);
            if group.as_ref() != want || task.has_exited() != m.exited {
                return Err(format!(
                    "task {t}: group {group:?} exited {}, model {want:?} exited {}",
                    task.has_exited(),
                    m.exited
                ));
            }
            if !m.exited && task.is_exempt() != m.exempt {
                return Err(format!(
                    "task {t}: exempt {}, model {}",
                    task.is_exempt(),
                    m.exempt
                ));
            }
        }
        for (id, r) in &self.reservations {
            let origin = model.reservations[id].origin;
            let want = model.path(model.owner(origin));
            if r.group_path() != want {
                return Err(format!(
                    "reservation {r:?} charges {:?}, model {want:?}",
                    r.group_path()
                ));
            }
        }
        for (g, m) in model.groups.iter().enumerate() {
            let group = &self.groups[g];
            let path = group.path();
            let found = self.ctrl.group(path);
            let reused = (0..model.groups.len()).any(|o| model.online(o) && model.path(o) == path);
            let lookup_ok = match (&found, m.removed) {
                (Ok(f), false) => f == group,
                (Ok(f), true) => reused && f != group,
                (Err(Error::NotFound { .. }), true) => !reused,
                _ => false,
            };
            if !lookup_ok {
                return Err(format!(
                    "group({path:?}) is {found:?}; model: removed {}, path reused {reused}",
                    m.removed
                ));
            }
            if group.is_online() == m.removed {
                return Err(format!(
                    "group {path:?}: online {}, model removed {}",
                    group.is_online(),
                    m.removed
                ));
            }
            let usage = group.current_bytes();
            let previous = std::mem::replace(&mut self.last_usage[g], usage);
            let peak = group.peak_bytes();
            let previous_peak = std::mem::replace(&mut self.last_peak[g], peak);
            if peak < usage || peak < previous_peak {
                return Err(format!(
                    "group {path:?}: peak {peak} bytes (before {previous_peak}) with usage {usage}"
                ));
            }
            if m.removed {
                continue;
            }
            if group.nr_tasks() != model.nr_tasks(g) {
                return Err(format!(
                    "group {path:?}: {} tasks, model {}",
                    group.nr_tasks(),
                    model.nr_tasks(g)
                ));
            }
            if group.max() != rounded(m.max) || group.high() != rounded(m.high) {
                return Err(format!(
                    "group {path:?}: max {:?} high {:?}, model {:?} {:?}",
                    group.max(),
                    group.high(),
                    rounded(m.max),
                    rounded(m.high)
                ));
            }
            let least = model.expected(g).usage_bytes;
            if usage < least {
                return Err(format!(
                    "group {path:?}: usage {usage} bytes below the {least} its live bytes need"
                ));
            }
            // A forced charge in the subtree may take it past max.
            let forced = (0..model.groups.len())
                .any(|d| model.online(d) && model.groups[d].force && model.in_subtree(d, g));
            if !forced {
                check_max_respected(path, usage, rounded(m.max), previous)?;
            }
        }
        Ok(())
    }

    /// End of a case: compare once drained, then release everything and
    /// remove every group; all usage must go back to zero.
    fn finish(&mut self) -> Result<(), String> {
        self.drain(0)?;
        self.compare_drained(&self.model())?;
        for t in &mut self.tasks {
            t.exit();
        }
        let live = {
            let mut s = self.shared();
            for t in &mut s.model.tasks {
                t.exited = true;
            }
            s.model.charges.clear();
            s.model.reservations.clear();
            std::mem::take(&mut s.live)
        };
        for (i, (_, c)) in live.into_iter().enumerate() {
            self.ctrl
                .uncharge(i % NR_CPUS, c)
                .map_err(|e| format!("final uncharge failed: {e}"))?;
        }
        self.reservations.clear();
        self.reclaimers.clear();
        self.check_step()?;
        // Children were created after their parents: newest first removes
        // leaves first.
        let model = self.model();
        for g in (1..model.groups.len()).rev() {
            if model.groups[g].removed {
                continue;
            }
            self.groups[g]
                .remove()
                .map_err(|e| format!("final removal of {:?} failed: {e}", model.path(g)))?;
            self.shared().model.groups[g].removed = true;
        }
        self.drain(0)?;
        self.check_step()?;
        self.compare_drained(&self.model())?;
        let root = self.ctrl.root();
        if root.current_bytes() != 0 {
            return Err(format!(
                "root usage {} bytes after everything was released",
                root.current_bytes()
            ));
        }
        Ok(())
    }
}

/// Runs a case: every step, its checks, and the final comparison.
fn run(mode: TaskCacheMode, ops: &[Op]) -> Result<(), String> {
    let mut h = Harness::new(mode);
    for (i, op) in ops.iter().enumerate() {
        h.apply(op)
            .and_then(|()| h.check_step())
            .map_err(|e| format!("step {i} {op:?}: {e}"))?;
    }
    h.finish().map_err(|e| format!("at the end: {e}"))
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Integration tests have no `lib.rs` beside them for proptest's
        // default; keep failures in `proptest-regressions/` (STYLE R9).
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/model.txt",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_operations_match_reference_model((mode, ops) in case()) {
        if let Err(e) = run(mode, &ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// ---------------------------------------------------------------------------
// Each check can fail
// ---------------------------------------------------------------------------

fn charge_op(task: u16, cpu: usize, bytes: u64) -> Op {
    Op::Charge {
        task: TaskSel::id(task),
        cpu,
        bytes,
        kind: ChargeKind::Alloc,
    }
}

/// Root → `a`, one task in `a`, the given ops, then drained.
fn drained_harness(ops: &[Op]) -> Harness {
    let mut h = Harness::new(TaskCacheMode::PerNode);
    let setup = [
        Op::Create {
            parent: GroupSel::id(0),
            name: 0,
            via_path: false,
            leading_slash: false,
        },
        Op::NewTask {
            group: GroupSel::id(1),
        },
    ];
    for op in setup.iter().chain(ops) {
        h.apply(op).unwrap();
        h.check_step().unwrap();
    }
    h.drain(0).unwrap();
    h.compare_drained(&h.model()).unwrap();
    h
}

#[test]
fn comparison_model_forgets_charge_reports_usage_mismatch() {
    let h = drained_harness(&[charge_op(0, 0, 5000), charge_op(0, 1, 300)]);
    let mut model = h.model();
    let first = *model.charges.keys().next().unwrap();
    model.charges.remove(&first);
    let err = h.compare_drained(&model).unwrap_err();
    assert!(err.contains("current"), "{err}");
    assert!(err.contains("live bytes"), "{err}");
}

#[test]
fn comparison_model_wrong_node_reports_numa_mismatch() {
    // One page on node 0; a model that puts it on node 1 agrees on usage
    // but must disagree on the per-node figures.
    let h = drained_harness(&[charge_op(0, 0, PAGE_SIZE)]);
    let mut model = h.model();
    for c in model.charges.values_mut() {
        c.node = 1;
    }
    let err = h.compare_drained(&model).unwrap_err();
    assert!(!err.contains("current"), "{err}");
    assert!(err.contains("node 0") && err.contains("node 1"), "{err}");
    assert!(err.contains("kernel"), "{err}");
}

#[test]
fn comparison_model_reparents_to_wrong_group_reports_usage_mismatch() {
    // `a/b` charged, then `b` removed: its objcg now belongs to `a`. A
    // model that reparents it elsewhere (here: as if `b` had been a child
    // of root) must disagree about `a`.
    let h = drained_harness(&[
        Op::Create {
            parent: GroupSel::id(1),
            name: 1,
            via_path: true,
            leading_slash: true,
        },
        Op::Attach {
            task: TaskSel::id(0),
            group: GroupSel::id(2),
        },
        charge_op(0, 2, 9000),
        Op::Attach {
            task: TaskSel::id(0),
            group: GroupSel::id(1),
        },
        Op::Remove {
            group: GroupSel::id(2),
            via_path: false,
        },
    ]);
    let mut model = h.model();
    assert!(model.groups[2].removed);
    assert_eq!(model.expected(1).usage_bytes, 3 * PAGE_SIZE);
    model.groups[2].parent = Some(ROOT);
    let err = h.compare_drained(&model).unwrap_err();
    assert!(err.contains("group \"a\""), "{err}");
}

#[test]
fn structural_check_wrong_error_kind_reports_mismatch() {
    let ctrl = Controller::new(Topology::from_spec(TOPOLOGY).unwrap());
    ctrl.create("a").unwrap();
    let actual = ctrl.create("a");
    assert!(check_outcome(&Err(Expect::AlreadyExists("a".into())), &actual).is_ok());
    assert!(check_outcome(&Err(Expect::AlreadyExists("b".into())), &actual).is_err());
    assert!(check_outcome(&Err(Expect::NotFound), &actual).is_err());
    assert!(check_outcome(&Ok(()), &actual).is_err());
    let ok = ctrl.create("b");
    assert!(check_outcome(&Err(Expect::InvalidName), &ok).is_err());
}

#[test]
fn failed_charge_check_unjustified_or_misattributed_error_is_rejected() {
    assert!(check_charge_justified(8192, 4096, 8192).is_ok());
    assert!(check_charge_justified(4096, 4096, 8192).is_err());
    // A real refusal: `a` limited to one page, a two-page charge.
    let mut h = drained_harness(&[Op::SetMax {
        group: GroupSel::id(1),
        limit: LimitChoice::Bytes(PAGE_SIZE),
    }]);
    let Err(Error::Charge(e)) = h.tasks[0].charge(0, 2 * PAGE_SIZE, ChargeKind::Alloc) else {
        panic!("the charge must be refused");
    };
    let model = h.model();
    assert!(check_charge_error(&model, &e, 1, 2 * PAGE_SIZE).is_ok());
    // Wrong size, a model without the limit, a limit of another value.
    assert!(check_charge_error(&model, &e, 1, 3 * PAGE_SIZE).is_err());
    let mut unlimited = model.clone();
    unlimited.groups[1].max = Limit::Max;
    assert!(check_charge_error(&unlimited, &e, 1, 2 * PAGE_SIZE).is_err());
    let mut other = model.clone();
    other.groups[1].max = Limit::Bytes(2 * PAGE_SIZE);
    assert!(check_charge_error(&other, &e, 1, 2 * PAGE_SIZE).is_err());
    h.check_step().unwrap();
}

#[test]
fn max_check_usage_growing_past_max_is_rejected() {
    let max = Limit::Bytes(8192);
    assert!(check_max_respected("a", 8192, max, 0).is_ok());
    assert!(check_max_respected("a", 12288, max, 16384).is_ok());
    assert!(check_max_respected("a", 12288, max, 8192).is_err());
    assert!(check_max_respected("a", 1 << 30, Limit::Max, 0).is_ok());
}

#[test]
fn step_check_model_with_task_in_wrong_group_reports_mismatch() {
    let mut h = drained_harness(&[]);
    h.check_step().unwrap();
    h.shared().model.tasks[0].group = ROOT;
    let err = h.check_step().unwrap_err();
    assert!(err.contains("task 0"), "{err}");
}

#[test]
fn step_check_model_forgets_removal_reports_mismatch() {
    let mut h = drained_harness(&[Op::Create {
        parent: GroupSel::id(1),
        name: 2,
        via_path: false,
        leading_slash: false,
    }]);
    h.apply(&Op::Remove {
        group: GroupSel::id(2),
        via_path: true,
    })
    .unwrap();
    h.check_step().unwrap();
    h.shared().model.groups[2].removed = false;
    let err = h.check_step().unwrap_err();
    assert!(err.contains("a/c"), "{err}");
}

// ---------------------------------------------------------------------------
// Deterministic scenarios the generator rarely reaches
// ---------------------------------------------------------------------------

/// Runs `ops` with the step checks (panicking with the step on failure).
fn run_harness(mode: TaskCacheMode, ops: &[Op]) -> Harness {
    let mut h = Harness::new(mode);
    for (i, op) in ops.iter().enumerate() {
        if let Err(e) = h.apply(op).and_then(|()| h.check_step()) {
            panic!("step {i} {op:?}: {e}");
        }
    }
    h
}

#[test]
fn charges_to_many_objcgs_on_one_cpu_evict_stock_slots_and_match_model() {
    // Eight groups (a..d and a/a..a/d), one task visiting each and
    // charging on CPU 0 (node 0) and CPU 2 (node 1), then every charge
    // uncharged on CPU 0: more objcgs than CPU 0 has byte-stock (5) and
    // page-stock (7) slots.
    let create = |parent: u16, name: usize| Op::Create {
        parent: GroupSel::id(parent),
        name,
        via_path: false,
        leading_slash: false,
    };
    let mut ops: Vec<Op> = (0..4).map(|n| create(0, n)).collect();
    ops.extend((0..4).map(|n| create(1, n)));
    ops.push(Op::NewTask {
        group: GroupSel::id(1),
    });
    for g in 1..9 {
        ops.push(Op::Attach {
            task: TaskSel::id(0),
            group: GroupSel::id(g),
        });
        ops.push(charge_op(0, 0, 100 * u64::from(g)));
        ops.push(charge_op(0, 2, 5000));
    }
    ops.extend((0..16).map(|_| Op::Uncharge {
        charge: Pick(0),
        cpu: 0,
        via: Via::Controller,
    }));
    let mut h = run_harness(TaskCacheMode::PerNode, &ops);
    let c = h.ctrl.counters();
    assert!(c.obj_stock_replacements > 0, "{c:?}");
    assert!(c.page_stock_drains > 0, "{c:?}");
    h.finish().unwrap();
}
