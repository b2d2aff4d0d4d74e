//! Model-based property test of the engine (STYLE R9, "The proptest model").
//!
//! Random sequences of up to 60 operations ([`Op`]: create and remove
//! groups, new tasks, attach, charge and uncharge on any CPU through any
//! task or the controller, overrides, fallible regions, spent
//! reservations, `max`/`high` limits, OOM policies and revivals, reclaim
//! callbacks, exempt and exited tasks, reservations, drains), in both task
//! cache modes, run against a real [`Controller`] ("2x2") and, step by
//! step, against [`Model`]: a plain sequential reference that knows only
//! the group tree (with removed flags, limits, OOM policies and kill
//! marks), the tasks (group, exited, exempt), and which charges and
//! reservations are alive, with their origin group and node. It knows
//! nothing of stocks or caches.
//!
//! After every step:
//! - [`Controller::check_invariants`] is `Ok`;
//! - structural operations fail exactly when the model says, with the kind
//!   of error it predicts (bad or duplicate names, invalid or unknown
//!   paths, root, removal with tasks or children, removed groups, exited
//!   tasks, unknown CPUs and nodes);
//! - the online groups, their paths and lookups, task counts, task groups,
//!   limits, OOM policies, kill marks (`is_killed`, `killed_by`),
//!   reservation owners and the objcg a task's cache gives match;
//! - usage covers the live bytes, peaks never fall, and a group over `max`
//!   never grows (unless a group of its subtree forces charges: policy
//!   `force`, or a kill);
//! - a charge's outcome follows the OOM policy of the group that refused
//!   or killed ([`check_charge_error`], [`check_charge_events`]): a refusal
//!   is justified (the refusing group is on the charged chain, carries the
//!   limit the model set, `usage + request > limit`, the request is the
//!   pages the bytes need), comes, for an allocation, from a group whose
//!   policy is `fail` outside a killed subtree (explicit charges and
//!   fallible regions meet `max` whatever the policy), and counts exactly
//!   one local `oom` there; a successful allocation kills at
//!   most one group, a `kill` group on its chain whose peak went past its
//!   `max`, counting `oom` and `oom_kill` once there (and `oom_kill` in the
//!   hierarchical events of it and its ancestors), and counts no `oom`
//!   otherwise (`force` counts `max` only); explicit charges and fallible
//!   regions never kill; an allocation in a killed subtree succeeds without
//!   asking for reclaim;
//! - a kill is reported to the kill callbacks of every group of the killed
//!   subtree (removed ones too: the harness keeps every group's handle, so
//!   none is pruned), once, on the reclaimer thread;
//! - an allocation made while a reservation is spent ([`Task::spend`])
//!   takes what the reservation has, up to its size ([`check_spent`]): if
//!   that is all of it, no group's usage changes, the reservation shrinks
//!   by the bytes and its group's `reservation` statistic moves to
//!   `alloc`; if the reservation has less (but some), it is emptied and the
//!   rest is charged to the reservation's group and node as an allocation
//!   (which the policy may refuse, giving the reservation back, or kill
//!   for); a reservation spent out, or a charge of another kind, leaves it
//!   untouched and charges as usual.
//!
//! At `DrainAndCompare` steps and at the end of each case every task is
//! flushed and every stock drained; then each online group's usage and
//! per-node statistics equal the model's prediction exactly (see
//! [`Harness::compare_drained`]). Finally everything is released and root
//! must be back to zero.
//!
//! # Reclaim on the reclaimer thread
//! Reclaim callbacks and kill callbacks run on the controller's reclaimer
//! thread. A reclaim callback shares the model through a mutex: it frees
//! live charges owned by its group's subtree (uncharging them through the
//! controller) and removes them from the model itself, so the model learns
//! what reclaim freed. The harness keeps this deterministic:
//! - it never holds the model's lock across an engine call (a charge over
//!   `max` waits for a reclaim pass, whose callback needs the lock);
//! - the controller waits up to [`RECLAIM_WAIT`] for reclaim, so a pass
//!   never times out on a loaded machine (a timeout fails the step);
//! - a step holds a gate for its whole operation; a callback asked to
//!   reclaim over `high` (asynchronous: the charge does not wait) takes the
//!   gate first, so it sees the model as the step left it, never half of
//!   it; callbacks for `max` and lowered limits run while the step's
//!   thread waits for them, so they skip the gate;
//! - after every operation the harness waits until the reclaimer is idle
//!   ([`Controller::wait_reclaim_idle`]) before it compares anything.
//!
//! One race is left, in the engine: a pass for `high` reads the group's
//! usage when it starts, which may be before the charging call has
//! finished its last stock deposit (an eviction or a pool trim can still
//! uncharge a page then). It changes how much a `high` pass asks for, never
//! what the checks accept.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use memcg::engine::{Config, Task, TaskCacheMode};
use memcg::{
    ChargeError, ChargeKind, Controller, Error, Events, Group, Limit, MemoryStat, OomPolicy,
    ReclaimReason, ReclaimRequest, ReclaimerHandle, Reservation, Topology, PAGE_SIZE,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// How long a charge may wait for reclaim, and how long a step waits for
/// the reclaimer to get idle: long enough that a loaded machine never
/// times out (a pass takes microseconds).
const RECLAIM_WAIT: Duration = Duration::from_secs(30);
/// The name of the controller's reclaimer thread.
const RECLAIMER_THREAD: &str = "memcg-reclaim";

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
    /// A group the model says is killed, else as `Online`.
    Killed(Pick),
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
            GroupSel::Killed(p) => {
                among(&|g| model.groups[g].killed, p).or_else(|| among(&|g| model.online(g), p))
            }
        };
        let (GroupSel::Any(p)
        | GroupSel::Online(p)
        | GroupSel::Removable(p)
        | GroupSel::OfTask(p)
        | GroupSel::OfCharge(p)
        | GroupSel::Killed(p)) = self;
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
    /// `group.set_oom_policy(policy)` (root and removed groups too).
    SetOomPolicy {
        group: GroupSel,
        policy: OomPolicy,
    },
    /// `group.revive()`: returns whether the group itself was killed.
    Revive {
        group: GroupSel,
    },
    /// `task.enter_fallible()`, charge, drop the guard.
    ChargeFallible {
        task: TaskSel,
        cpu: usize,
        bytes: u64,
        kind: ChargeKind,
    },
    /// `task.spend(&mut reservation)`, charge, drop the guard.
    ChargeSpent {
        task: TaskSel,
        reservation: Pick,
        cpu: usize,
        bytes: u64,
        kind: ChargeKind,
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

fn oom_policy() -> impl Strategy<Value = OomPolicy> {
    prop_oneof![
        2 => Just(OomPolicy::Kill),
        2 => Just(OomPolicy::Fail),
        1 => Just(OomPolicy::Force),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let name = prop_oneof![10 => 0..4usize, 2 => 4..NR_NAMES];
    let kind = prop_oneof![
        6 => Just(ChargeKind::Alloc),
        2 => Just(ChargeKind::Runtime),
        1 => Just(ChargeKind::Reservation),
    ];
    let alloc_kind = prop_oneof![
        6 => Just(ChargeKind::Alloc),
        1 => Just(ChargeKind::Runtime),
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
        24 => (task_sel(), any_cpu(), charge_bytes(), kind.clone()).prop_map(
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
        5 => (group_sel(), limit.clone()).prop_map(|(group, limit)| Op::SetMax { group, limit }),
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
        2 => (group_sel(), oom_policy())
            .prop_map(|(group, policy)| Op::SetOomPolicy { group, policy }),
        2 => prop_oneof![
            1 => group_sel(),
            3 => pick().prop_map(GroupSel::Killed),
        ]
        .prop_map(|group| Op::Revive { group }),
        4 => (task_sel(), any_cpu(), charge_bytes(), kind.clone()).prop_map(
            |(task, cpu, bytes, kind)| Op::ChargeFallible {
                task,
                cpu,
                bytes,
                kind,
            }
        ),
        4 => (
            task_sel(),
            pick(),
            any_cpu(),
            prop_oneof![2 => 1..=3_000u64, 1 => charge_bytes()],
            alloc_kind,
        )
            .prop_map(|(task, reservation, cpu, bytes, kind)| Op::ChargeSpent {
                task,
                reservation,
                cpu,
                bytes,
                kind,
            }),
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

/// Root's OOM policy (which the groups made below it inherit), then a few
/// groups and tasks to start from, so that most steps have groups to work
/// on (ordinary operations, which shrinking may drop).
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
    let root_policy = oom_policy().prop_map(|policy| Op::SetOomPolicy {
        group: GroupSel::id(ROOT as u16),
        policy,
    });
    (
        root_policy,
        prop::collection::vec(create, 2..=8),
        prop::collection::vec(task, 1..=3),
    )
        .prop_map(|(policy, groups, tasks)| {
            let mut ops = vec![policy];
            ops.extend(groups);
            ops.extend(tasks);
            ops
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
    /// What a charge meets when this group is over `max` after reclaim.
    policy: OomPolicy,
    /// Killed by its policy and not revived (kept for removed groups: the
    /// engine's mark stays with them).
    killed: bool,
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
                policy: OomPolicy::default(),
                killed: false,
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

    /// The nearest killed group on `g`'s ancestor chain (itself included).
    fn killed_ancestor(&self, g: GroupId) -> Option<GroupId> {
        let mut x = Some(g);
        while let Some(c) = x {
            if self.groups[c].killed {
                return Some(c);
            }
            x = self.groups[c].parent;
        }
        None
    }

    /// Whether an allocation to an objcg of `origin` is forced past every
    /// `max` at once: its owner is in a killed subtree.
    fn allocation_forced_by_kill(&self, origin: GroupId) -> bool {
        self.killed_ancestor(self.owner(origin)).is_some()
    }

    /// Whether a charge may take `g` past its `max` (so its usage may grow
    /// there): an online group of its subtree forces charges (policy
    /// `force`) or is in a killed subtree.
    fn may_force_past_max(&self, g: GroupId) -> bool {
        (0..self.groups.len()).any(|d| {
            self.online(d)
                && self.in_subtree(d, g)
                && (self.groups[d].policy == OomPolicy::Force || self.killed_ancestor(d).is_some())
        })
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

/// What kind of charge it is, which decides its outcome over `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// An allocation through a task: the over-limit group's policy
    /// decides (`kill`, `fail`, `force`); forced at once in a killed
    /// subtree.
    Alloc,
    /// An allocation in a fallible region: refused whatever the policy;
    /// never kills.
    Fallible,
    /// An explicit charge (reservations): as `Fallible`.
    Explicit,
}

/// A refused charge of `bytes` to an objcg of `origin`: justified, refused
/// by a limited group on the charged chain with the model's limit, for the
/// pages the bytes need; an allocation only by a group whose policy is
/// `fail` and outside a killed subtree (where allocations are forced),
/// while a charge that may fail (explicit, fallible) meets `max` whatever
/// the policy.
fn check_charge_error(
    model: &Model,
    e: &ChargeError,
    origin: GroupId,
    bytes: u64,
    mode: Mode,
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
    let policy = model.groups[g].policy;
    match mode {
        Mode::Alloc if policy != OomPolicy::Fail => {
            return Err(format!(
                "allocation refused by {:?}, whose policy is {}: only `fail` refuses an allocation",
                e.path(),
                policy.name()
            ));
        }
        Mode::Alloc => {
            if let Some(k) = model.killed_ancestor(model.owner(origin)) {
                return Err(format!(
                    "allocation refused by {:?} in the subtree of killed {:?}: it must be forced",
                    e.path(),
                    model.path(k)
                ));
            }
        }
        Mode::Fallible | Mode::Explicit => {}
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

/// Every group's events (by model id, removed groups too), local and
/// hierarchical.
#[derive(Debug, Clone, Default)]
struct EventsSnapshot {
    local: Vec<Events>,
    hierarchical: Vec<Events>,
}

/// The events a charge of `mode` to an objcg of `origin` counted (from
/// `before` to `after`), given its outcome (`refused_by`: the path in its
/// error), and the groups' peaks after it. Returns the group it killed.
///
/// A refusal counts one local `oom` at the refusing group, nothing else.
/// A success counts no `oom` unless it kills: then exactly one group, a
/// `kill` group on the charged chain, counts one `oom` and one `oom_kill`
/// locally, `oom_kill` once in the hierarchical events of it and each
/// ancestor below root, and its peak is past its `max` (the forced
/// charge). Only an allocation outside a killed subtree kills.
fn check_charge_events(
    model: &Model,
    origin: GroupId,
    mode: Mode,
    refused_by: Option<&str>,
    before: &EventsSnapshot,
    after: &EventsSnapshot,
    peaks_bytes: &[u64],
) -> Result<Option<GroupId>, String> {
    let mut ooms = Vec::new();
    let mut kills = Vec::new();
    for g in 0..model.groups.len() {
        let (b, a) = (before.local[g], after.local[g]);
        if a.oom < b.oom || a.oom_kill < b.oom_kill {
            return Err(format!(
                "group {:?}: local events went down from {b:?} to {a:?}",
                model.path(g)
            ));
        }
        if a.oom > b.oom {
            ooms.push((g, a.oom - b.oom));
        }
        if a.oom_kill > b.oom_kill {
            kills.push((g, a.oom_kill - b.oom_kill));
        }
    }
    let paths = |v: &[(GroupId, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|&(g, n)| (model.path(g), n)).collect()
    };
    if let Some(path) = refused_by {
        if !kills.is_empty() {
            return Err(format!(
                "a refused charge counted oom_kill at {:?}",
                paths(&kills)
            ));
        }
        let refuser = (0..model.groups.len()).find(|&g| model.online(g) && model.path(g) == path);
        return match (refuser, ooms.as_slice()) {
            (Some(r), &[(g, 1)]) if g == r => Ok(None),
            _ => Err(format!(
                "charge refused by {path:?}: local oom events counted at {:?}, expected one there",
                paths(&ooms)
            )),
        };
    }
    let &[(k, 1)] = kills.as_slice() else {
        if kills.is_empty() && !ooms.is_empty() {
            return Err(format!(
                "a successful charge that killed nobody counted oom at {:?}",
                paths(&ooms)
            ));
        }
        if kills.is_empty() {
            return Ok(None);
        }
        return Err(format!(
            "one charge counted oom_kill at {:?}, expected at most one kill",
            paths(&kills)
        ));
    };
    let name = model.path(k);
    if ooms.as_slice() != [(k, 1)] {
        return Err(format!(
            "the kill of {name:?} counted oom at {:?}, expected once there",
            paths(&ooms)
        ));
    }
    if mode != Mode::Alloc {
        return Err(format!(
            "{mode:?} charge killed {name:?}: explicit charges and fallible regions never kill"
        ));
    }
    if !model.limited_chain(origin).contains(&k) {
        return Err(format!(
            "charge to objcg of {:?} killed {name:?}, which is not a limited group on its chain",
            model.path(origin)
        ));
    }
    if model.groups[k].policy != OomPolicy::Kill {
        return Err(format!(
            "charge killed {name:?}, whose policy is {}",
            model.groups[k].policy.name()
        ));
    }
    if let Some(x) = model.killed_ancestor(model.owner(origin)) {
        return Err(format!(
            "allocation in the subtree of killed {:?} killed {name:?}: it must be forced",
            model.path(x)
        ));
    }
    if let Limit::Bytes(max) = rounded(model.groups[k].max) {
        if peaks_bytes[k] <= max {
            return Err(format!(
                "killed {name:?} at max {max} bytes, but its peak is {} bytes",
                peaks_bytes[k]
            ));
        }
    }
    for g in 0..model.groups.len() {
        let want = u64::from(g != ROOT && model.in_subtree(k, g));
        let (b, a) = (before.hierarchical[g], after.hierarchical[g]);
        if a.oom_kill.checked_sub(b.oom_kill) != Some(want) {
            return Err(format!(
                "the kill of {name:?}: hierarchical oom_kill of {:?} went from {} to {}, expected +{want}",
                model.path(g),
                b.oom_kill,
                a.oom_kill
            ));
        }
    }
    Ok(Some(k))
}

/// What a spent reservation's charge may change, read before and after it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpendView {
    /// `current` of every group (by model id).
    usage_bytes: Vec<u64>,
    /// The reservation's bytes.
    reservation_bytes: u64,
    /// The local statistics of the reservation's group on its node.
    stat: MemoryStat,
}

/// A charge made while a reservation was spent that took `taken_bytes`
/// from it and charged `charged_bytes` more to its objcg (an allocation of
/// `taken + charged` bytes): the reservation shrank by `taken_bytes`, its
/// group's statistics moved `taken_bytes` from `reservation` to `alloc`
/// and added `charged_bytes` to `alloc`, `runtime` unchanged. With
/// `pages_untouched` (nothing was charged, no stock drained), no group's
/// usage and no `kernel` figure changed either. Refused charges give back
/// what they took: 0 and 0.
fn check_spent(
    before: &SpendView,
    after: &SpendView,
    taken_bytes: u64,
    charged_bytes: u64,
    pages_untouched: bool,
) -> Result<(), String> {
    if pages_untouched && before.usage_bytes != after.usage_bytes {
        return Err(format!(
            "a charge paid from a reservation changed usage from {:?} to {:?}",
            before.usage_bytes, after.usage_bytes
        ));
    }
    if before.reservation_bytes.checked_sub(taken_bytes) != Some(after.reservation_bytes) {
        return Err(format!(
            "a charge that took {taken_bytes} bytes from a reservation of {} bytes left {}",
            before.reservation_bytes, after.reservation_bytes
        ));
    }
    let (b, a) = (&before.stat, &after.stat);
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let moved = stat_moved(
        b.alloc_bytes,
        a.alloc_bytes,
        as_i64(taken_bytes.saturating_add(charged_bytes)),
    ) && stat_moved(
        b.reservation_bytes,
        a.reservation_bytes,
        -as_i64(taken_bytes),
    ) && stat_moved(b.runtime_bytes, a.runtime_bytes, 0)
        && (!pages_untouched || stat_moved(b.kernel_bytes, a.kernel_bytes, 0));
    if !moved {
        return Err(format!(
            "a charge that took {taken_bytes} bytes from a reservation and charged {charged_bytes}: \
             statistics went from {b:?} to {a:?}"
        ));
    }
    Ok(())
}

/// A charge made while a reservation without bytes left (or a charge of
/// another kind than `Alloc`) was spent: the reservation is untouched.
fn check_not_spent(before: &SpendView, after: &SpendView) -> Result<(), String> {
    if before.reservation_bytes != after.reservation_bytes {
        return Err(format!(
            "a charge not paid from the spent reservation changed it from {} to {} bytes",
            before.reservation_bytes, after.reservation_bytes
        ));
    }
    Ok(())
}

/// Whether a `memory.stat` figure moved by `delta` bytes. A figure is a
/// counter clamped at 0 when read, and until the tasks flush their pending
/// statistics a counter may be below 0 (a task pends its charge, another
/// frees the object directly): a figure above 0 is exact, a figure of 0
/// is only bounded.
fn stat_moved(before: u64, after: u64, delta: i64) -> bool {
    let before_i = i64::try_from(before).unwrap_or(i64::MAX);
    let after_i = i64::try_from(after).unwrap_or(i64::MAX);
    if before > 0 {
        after_i == before_i.saturating_add(delta).max(0)
    } else {
        after_i <= delta.max(0)
    }
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

/// What the harness and the callbacks share.
#[derive(Debug)]
struct Shared {
    model: Model,
    /// The engine's charges, by model id.
    live: BTreeMap<u64, memcg::engine::Charge>,
    /// Problems seen inside callbacks, reported after the step.
    errors: Vec<String>,
    /// The reclaim callbacks that ran during the step: group, reason.
    reclaim_calls: Vec<(GroupId, ReclaimReason)>,
    /// The kill notifications of the step: the group whose callback ran,
    /// and the killed group's path it was told.
    kills_notified: Vec<(GroupId, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether the calling thread is the controller's reclaimer thread.
fn on_reclaimer_thread() -> bool {
    std::thread::current().name() == Some(RECLAIMER_THREAD)
}

/// A reclaim callback registered on `group`: frees up to `budget` live
/// charges owned by `group`'s subtree (oldest first) until `wanted_bytes`
/// are freed, uncharging them through the controller on `cpu`.
///
/// A request for `high` is served while the step that made it may still
/// run: the callback waits for the step's `gate` first (see the module
/// doc). Requests for `max` and lowered limits come while the step's
/// thread waits for this pass, holding the gate: they must not take it.
fn reclaim(
    shared: &Mutex<Shared>,
    gate: &Mutex<()>,
    ctrl: &Controller,
    group: GroupId,
    budget: usize,
    cpu: usize,
    req: &ReclaimRequest,
) -> u64 {
    let _gate = (req.reason == ReclaimReason::High).then(|| lock(gate));
    let taken = {
        let mut s = lock(shared);
        if !on_reclaimer_thread() {
            let thread = std::thread::current().name().map(str::to_string);
            s.errors.push(format!(
                "a reclaim callback ran on thread {thread:?}, not on the reclaimer thread"
            ));
        }
        s.reclaim_calls.push((group, req.reason));
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

/// Whether `op` charges (and so may ask for reclaim over `max` or `high`).
fn charges(op: &Op) -> bool {
    matches!(
        op,
        Op::Charge { .. }
            | Op::ChargeEntered { .. }
            | Op::ChargeFallible { .. }
            | Op::ChargeSpent { .. }
            | Op::Reserve { .. }
            | Op::TaskReserve { .. }
            | Op::Grow { .. }
    )
}

struct Harness {
    ctrl: Controller,
    shared: Arc<Mutex<Shared>>,
    /// Held by a step for its whole operation; see [`reclaim`].
    gate: Arc<Mutex<()>>,
    /// Engine handles, by model id (removed groups included).
    groups: Vec<Group>,
    tasks: Vec<Task>,
    reservations: BTreeMap<u64, Reservation>,
    reclaimers: Vec<ReclaimerHandle>,
    /// Usage of every group after the previous step.
    last_usage: Vec<u64>,
    /// Peak of every group after the previous step.
    last_peak: Vec<u64>,
    /// Groups the current step killed.
    killed_now: Vec<GroupId>,
    /// The current step made an allocation in a killed subtree (which
    /// must not wait for reclaim).
    forced_by_kill: bool,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The callbacks hold the controller: unregister them so that it
        // (and its reclaimer thread) goes away with the harness.
        self.reclaimers.clear();
    }
}

impl Harness {
    fn new(mode: TaskCacheMode) -> Harness {
        let topology = Topology::from_spec(TOPOLOGY).expect("valid topology");
        for cpu in 0..NR_CPUS {
            assert_eq!(topology.node_of(cpu).ok(), Some(node_of(cpu)));
        }
        let ctrl = Controller::with_config(topology, Config::default().reclaim_wait(RECLAIM_WAIT));
        let root = ctrl.root();
        let h = Harness {
            ctrl,
            shared: Arc::new(Mutex::new(Shared {
                model: Model::new(mode),
                live: BTreeMap::new(),
                errors: Vec::new(),
                reclaim_calls: Vec::new(),
                kills_notified: Vec::new(),
            })),
            gate: Arc::new(Mutex::new(())),
            groups: vec![root],
            tasks: Vec::new(),
            reservations: BTreeMap::new(),
            reclaimers: Vec::new(),
            last_usage: vec![0],
            last_peak: vec![0],
            killed_now: Vec::new(),
            forced_by_kill: false,
        };
        // Also starts the reclaimer thread: charges always have someone to
        // wait for.
        h.watch_kills(ROOT);
        h
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    /// A copy of the model (never hold the lock across engine calls: a
    /// reclaim callback may need it).
    fn model(&self) -> Model {
        self.shared().model.clone()
    }

    /// Registers a kill callback on group `g` that records what it is told.
    fn watch_kills(&self, g: GroupId) {
        let shared = Arc::clone(&self.shared);
        self.groups[g]
            .on_oom_kill(move |k| {
                let mut s = lock(&shared);
                if !on_reclaimer_thread() {
                    s.errors
                        .push("a kill callback ran off the reclaimer thread".into());
                }
                s.kills_notified.push((g, k.path.clone()));
            })
            .keep();
    }

    fn add_group(&mut self, parent: GroupId, name: String, group: Group) -> Result<(), String> {
        let mut s = self.shared();
        // A new group starts with its parent's policy.
        let policy = s.model.groups[parent].policy;
        s.model.groups.push(MGroup {
            name,
            parent: Some(parent),
            removed: false,
            max: Limit::Max,
            high: Limit::Max,
            policy,
            killed: false,
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
        self.watch_kills(id);
        Ok(())
    }

    fn record_charge(&mut self, m: MCharge, c: memcg::engine::Charge) -> Result<(), String> {
        if c.bytes() != m.bytes || c.kind() != m.kind {
            return Err(format!("charge {c:?} does not match the request {m:?}"));
        }
        let mut s = self.shared();
        let id = s.model.fresh_id();
        s.model.charges.insert(id, m);
        s.live.insert(id, c);
        Ok(())
    }

    /// Runs one operation with its checks (the step's own and those that
    /// need the reclaimer idle), holding the gate while the operation
    /// runs.
    fn step(&mut self, op: &Op) -> Result<(), String> {
        {
            let mut s = self.shared();
            s.reclaim_calls.clear();
            s.kills_notified.clear();
        }
        self.killed_now.clear();
        self.forced_by_kill = false;
        let gate = Arc::clone(&self.gate);
        let guard = lock(&gate);
        let applied = self.apply(op);
        drop(guard);
        let settled = self.settle();
        applied?;
        settled?;
        self.check_callbacks(op)?;
        self.check_step()
    }

    /// Waits until the reclaimer has served everything (asynchronous
    /// reclaim over `high`, kill notifications); no wait may have timed
    /// out and no callback may have panicked.
    fn settle(&self) -> Result<(), String> {
        if !self.ctrl.wait_reclaim_idle(RECLAIM_WAIT) {
            return Err(format!(
                "the reclaimer did not get idle within {RECLAIM_WAIT:?}"
            ));
        }
        let (_, timeouts, panics) = self.ctrl.reclaimer_counters();
        if timeouts > 0 || panics > 0 {
            return Err(format!(
                "{timeouts} waits for reclaim timed out, {panics} callbacks panicked"
            ));
        }
        Ok(())
    }

    /// The callbacks of the step: reclaim for `max` or `high` only while
    /// charging (never for an allocation in a killed subtree, which is
    /// forced at once), for a lowered limit only while setting one; kill
    /// callbacks exactly once on every group of each killed subtree, told
    /// the killed group's path.
    fn check_callbacks(&self, op: &Op) -> Result<(), String> {
        let (calls, mut notified) = {
            let mut s = self.shared();
            (
                std::mem::take(&mut s.reclaim_calls),
                std::mem::take(&mut s.kills_notified),
            )
        };
        let model = self.model();
        for &(g, reason) in &calls {
            let expected = match reason {
                ReclaimReason::Max => charges(op) && !self.forced_by_kill,
                ReclaimReason::High => charges(op),
                ReclaimReason::LimitLowered => {
                    matches!(op, Op::SetMax { .. } | Op::SetHigh { .. })
                }
                _ => false,
            };
            if !expected {
                return Err(format!(
                    "the reclaimer of {:?} was asked for {reason:?} (calls {calls:?})",
                    model.path(g)
                ));
            }
        }
        let mut want = Vec::new();
        for &k in &self.killed_now {
            // Removed groups too: the harness holds every group's handle,
            // so none is pruned from its parent's dead children.
            for g in (0..model.groups.len()).filter(|&g| model.in_subtree(g, k)) {
                want.push((g, model.path(k)));
            }
        }
        want.sort();
        notified.sort();
        if notified != want {
            return Err(format!(
                "kill callbacks told {notified:?}, expected {want:?} (group, killed path)"
            ));
        }
        Ok(())
    }

    /// Runs one operation and checks its outcome.
    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let model = self.model();
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
                let before = self.events_snapshot();
                let result = self.tasks[t].charge(cpu, bytes, kind);
                let m = MCharge {
                    task: t,
                    origin,
                    node,
                    bytes,
                    kind,
                };
                self.finish_task_charge(&model, &before, m, Mode::Alloc, result)?;
            }
            Op::ChargeFallible {
                task,
                cpu,
                bytes,
                kind,
            } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                let charge = |task: &Task| {
                    let guard = task.enter_fallible();
                    let inside = task.is_fallible();
                    let result = task.charge(cpu, bytes, kind);
                    drop(guard);
                    (inside && !task.is_fallible(), result)
                };
                if cpu >= NR_CPUS {
                    let (_, actual) = charge(&self.tasks[t]);
                    return check_outcome(&Err(Expect::UnknownCpu(cpu)), &actual);
                }
                let (origin, node) = self.shared().model.charge_target(t, cpu);
                let before = self.events_snapshot();
                let (region_ok, result) = charge(&self.tasks[t]);
                if !region_ok {
                    return Err("is_fallible() is not true exactly inside the region".into());
                }
                let m = MCharge {
                    task: t,
                    origin,
                    node,
                    bytes,
                    kind,
                };
                self.finish_task_charge(&model, &before, m, Mode::Fallible, result)?;
            }
            Op::ChargeSpent {
                task,
                reservation,
                cpu,
                bytes,
                kind,
            } => {
                let Some(t) = task.resolve(&model) else {
                    return Ok(());
                };
                let ids: Vec<u64> = model.reservations.keys().copied().collect();
                let Some(i) = reservation.of(ids.len()) else {
                    return Ok(());
                };
                let id = ids[i];
                let spent = model.reservations[&id];
                if cpu >= NR_CPUS {
                    let actual = self.charge_spending(t, id, cpu, bytes, kind)?;
                    return check_outcome(&Err(Expect::UnknownCpu(cpu)), &actual);
                }
                // An allocation takes what the reservation has (up to its
                // size) and charges the rest to the reservation's objcg;
                // spent out, or another kind, it charges as usual (the
                // task's cache is not looked at otherwise).
                let taken = if kind == ChargeKind::Alloc {
                    spent.bytes.min(bytes)
                } else {
                    0
                };
                let rest = bytes - taken;
                let (origin, node) = if taken > 0 {
                    (spent.origin, spent.node)
                } else {
                    self.shared().model.charge_target(t, cpu)
                };
                let view_before = self.spend_view(&model, id)?;
                let before = self.events_snapshot();
                let result = self.charge_spending(t, id, cpu, bytes, kind)?;
                let view_after = self.spend_view(&model, id)?;
                // A reclaim pass for `max` during the charge may free
                // objects of the reservation's objcg (the statistics move).
                let reclaimed = !self.shared().reclaim_calls.is_empty();
                let m = MCharge {
                    task: t,
                    origin,
                    node,
                    bytes,
                    kind,
                };
                match (taken, &result) {
                    (0, _) => check_not_spent(&view_before, &view_after)?,
                    (_, Ok(_)) if !reclaimed => {
                        check_spent(&view_before, &view_after, taken, rest, rest == 0)?;
                    }
                    (_, Ok(_)) => {
                        if view_after.reservation_bytes != view_before.reservation_bytes - taken {
                            return Err(format!(
                                "a charge that took {taken} bytes from a reservation of {} bytes left {}",
                                view_before.reservation_bytes, view_after.reservation_bytes
                            ));
                        }
                    }
                    (_, Err(_)) if !reclaimed => {
                        check_spent(&view_before, &view_after, 0, 0, false)?;
                    }
                    (_, Err(_)) => check_not_spent(&view_before, &view_after)?,
                }
                if taken == 0 {
                    self.finish_task_charge(&model, &before, m, Mode::Alloc, result)?;
                } else {
                    // The charge the policy sees is the rest's.
                    let refusal = match &result {
                        Err(Error::Charge(e)) => Some(e),
                        _ => None,
                    };
                    self.check_charge_outcome(&model, &before, origin, rest, Mode::Alloc, refusal)?;
                    match result {
                        Ok(c) => {
                            if let Some(r) = self.shared().model.reservations.get_mut(&id) {
                                r.bytes -= taken;
                            }
                            self.record_charge(m, c)?;
                        }
                        Err(Error::Charge(_)) => {}
                        Err(e) => return Err(format!("spent charge failed unexpectedly: {e:?}")),
                    }
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
            Op::SetOomPolicy { group, policy } => {
                let g = group.resolve(&model, true);
                self.groups[g].set_oom_policy(policy);
                self.shared().model.groups[g].policy = policy;
                if self.groups[g].oom_policy() != policy {
                    return Err(format!(
                        "oom_policy() is {:?} after set_oom_policy({policy:?})",
                        self.groups[g].oom_policy()
                    ));
                }
            }
            Op::Revive { group } => {
                let g = group.resolve(&model, true);
                let was_killed = self.groups[g].revive();
                if was_killed != model.groups[g].killed {
                    return Err(format!(
                        "revive() of {:?} returned {was_killed}, model killed {}",
                        model.path(g),
                        model.groups[g].killed
                    ));
                }
                self.shared().model.groups[g].killed = false;
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
                let before = self.events_snapshot();
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
                self.finish_task_charge(&model, &before, m, Mode::Alloc, result)?;
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
                let gate = Arc::clone(&self.gate);
                let ctrl = self.ctrl.clone();
                let handle = self.groups[g].register_reclaimer(move |req| {
                    reclaim(&shared, &gate, &ctrl, g, budget, cpu, req)
                });
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
                let before = self.events_snapshot();
                let actual = self.groups[g].try_charge(bytes);
                if !model.online(g) {
                    return check_outcome(&Err(Expect::Removed(model.path(g))), &actual);
                }
                let m = MReservation {
                    origin: g,
                    node: 0,
                    bytes,
                };
                self.record_reservation(&model, &before, m, actual)?;
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
                let before = self.events_snapshot();
                let actual = self.tasks[t].try_charge(cpu, bytes);
                self.record_reservation(
                    &model,
                    &before,
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
                let before = self.events_snapshot();
                let r = self
                    .reservations
                    .get_mut(&id)
                    .ok_or("harness bug: reservation missing")?;
                let grown = r.grow(bytes);
                let total = r.bytes();
                let refusal = match &grown {
                    Err(Error::Charge(e)) => Some(e),
                    _ => None,
                };
                self.check_charge_outcome(&model, &before, origin, bytes, Mode::Explicit, refusal)?;
                match grown {
                    Ok(()) => {
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
                    Err(Error::Charge(_)) => {
                        if total != model.reservations[&id].bytes {
                            return Err(format!(
                                "a refused grow changed the reservation to {total} bytes"
                            ));
                        }
                    }
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

    /// Every group's events, before a charge.
    fn events_snapshot(&self) -> EventsSnapshot {
        EventsSnapshot {
            local: self.groups.iter().map(Group::events_local).collect(),
            hierarchical: self.groups.iter().map(Group::events).collect(),
        }
    }

    /// After a charge of `mode` of `bytes` to an objcg of `origin` (refused
    /// with `refusal`, or not): [`check_charge_error`] and
    /// [`check_charge_events`] against `model` (the model before the
    /// charge) and the events `before` it; a kill is recorded in the model.
    fn check_charge_outcome(
        &mut self,
        model: &Model,
        before: &EventsSnapshot,
        origin: GroupId,
        bytes: u64,
        mode: Mode,
        refusal: Option<&ChargeError>,
    ) -> Result<(), String> {
        if let Some(e) = refusal {
            check_charge_error(model, e, origin, bytes, mode)?;
        }
        let after = self.events_snapshot();
        let peaks: Vec<u64> = self.groups.iter().map(Group::peak_bytes).collect();
        let refused_by = refusal.map(ChargeError::path);
        let killed = check_charge_events(model, origin, mode, refused_by, before, &after, &peaks)?;
        if mode == Mode::Alloc && model.allocation_forced_by_kill(origin) {
            self.forced_by_kill = true;
        }
        if let Some(k) = killed {
            self.shared().model.groups[k].killed = true;
            self.killed_now.push(k);
        }
        Ok(())
    }

    /// A charge through a task: its outcome checked, and recorded if it
    /// succeeded.
    fn finish_task_charge(
        &mut self,
        model: &Model,
        before: &EventsSnapshot,
        m: MCharge,
        mode: Mode,
        result: Result<memcg::engine::Charge, Error>,
    ) -> Result<(), String> {
        match result {
            Ok(c) => {
                self.check_charge_outcome(model, before, m.origin, m.bytes, mode, None)?;
                self.record_charge(m, c)
            }
            Err(Error::Charge(e)) => {
                self.check_charge_outcome(model, before, m.origin, m.bytes, mode, Some(&e))
            }
            Err(e) => Err(format!("{mode:?} charge failed unexpectedly: {e:?}")),
        }
    }

    /// Task `t` charges while it spends reservation `id`.
    fn charge_spending(
        &mut self,
        t: usize,
        id: u64,
        cpu: usize,
        bytes: u64,
        kind: ChargeKind,
    ) -> Result<Result<memcg::engine::Charge, Error>, String> {
        let task = &self.tasks[t];
        let r = self
            .reservations
            .get_mut(&id)
            .ok_or("harness bug: reservation missing")?;
        let guard = task.spend(r).map_err(|e| format!("spend failed: {e}"))?;
        let result = task.charge(cpu, bytes, kind);
        drop(guard);
        Ok(result)
    }

    /// What a charge paid from reservation `id` may change.
    fn spend_view(&self, model: &Model, id: u64) -> Result<SpendView, String> {
        let r = self
            .reservations
            .get(&id)
            .ok_or("harness bug: reservation missing")?;
        let m = model.reservations[&id];
        let owner = model.owner(m.origin);
        Ok(SpendView {
            usage_bytes: self.groups.iter().map(Group::current_bytes).collect(),
            reservation_bytes: r.bytes(),
            stat: self.groups[owner].stats().numa[m.node].local,
        })
    }

    fn record_reservation(
        &mut self,
        model: &Model,
        before: &EventsSnapshot,
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
                self.check_charge_outcome(model, before, m.origin, m.bytes, Mode::Explicit, None)?;
                let mut s = self.shared();
                let id = s.model.fresh_id();
                s.model.reservations.insert(id, m);
                drop(s);
                self.reservations.insert(id, r);
                Ok(())
            }
            Err(Error::Charge(e)) => self.check_charge_outcome(
                model,
                before,
                m.origin,
                m.bytes,
                Mode::Explicit,
                Some(&e),
            ),
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
            if group.oom_policy() != m.policy {
                return Err(format!(
                    "group {path:?}: OOM policy {:?}, model {:?}",
                    group.oom_policy(),
                    m.policy
                ));
            }
            let killer = model.killed_ancestor(g).map(|k| model.path(k));
            let killed_by = group.killed_by().map(|k| k.path);
            if group.is_killed() != killer.is_some() || killed_by != killer {
                return Err(format!(
                    "group {path:?}: is_killed {} killed_by {killed_by:?}, model killed by {killer:?}",
                    group.is_killed()
                ));
            }
            // A forced charge in the subtree may take it past max.
            if !model.may_force_past_max(g) {
                check_max_respected(path, usage, rounded(m.max), previous)?;
            }
        }
        Ok(())
    }

    /// End of a case: compare once drained, then release everything and
    /// remove every group; all usage must go back to zero.
    fn finish(&mut self) -> Result<(), String> {
        self.settle()?;
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
        h.step(op).map_err(|e| format!("step {i} {op:?}: {e}"))?;
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
        if let Err(e) = h.step(op) {
            panic!("{op:?}: {e}");
        }
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
    // A real refusal: `a` (policy fail) limited to one page, a two-page
    // charge.
    let mut h = drained_harness(&[
        Op::SetOomPolicy {
            group: GroupSel::id(1),
            policy: OomPolicy::Fail,
        },
        Op::SetMax {
            group: GroupSel::id(1),
            limit: LimitChoice::Bytes(PAGE_SIZE),
        },
    ]);
    let Err(Error::Charge(e)) = h.tasks[0].charge(0, 2 * PAGE_SIZE, ChargeKind::Alloc) else {
        panic!("the charge must be refused");
    };
    let model = h.model();
    assert!(check_charge_error(&model, &e, 1, 2 * PAGE_SIZE, Mode::Alloc).is_ok());
    // Wrong size, a model without the limit, a limit of another value.
    assert!(check_charge_error(&model, &e, 1, 3 * PAGE_SIZE, Mode::Alloc).is_err());
    let mut unlimited = model.clone();
    unlimited.groups[1].max = Limit::Max;
    assert!(check_charge_error(&unlimited, &e, 1, 2 * PAGE_SIZE, Mode::Alloc).is_err());
    let mut other = model.clone();
    other.groups[1].max = Limit::Bytes(2 * PAGE_SIZE);
    assert!(check_charge_error(&other, &e, 1, 2 * PAGE_SIZE, Mode::Alloc).is_err());
    // A model whose policy does not refuse an allocation (kill, force),
    // or where the group is killed (its allocations are forced); a charge
    // that may fail meets max whatever the policy.
    let mut killed = model.clone();
    killed.groups[1].killed = true;
    assert!(check_charge_error(&killed, &e, 1, 2 * PAGE_SIZE, Mode::Alloc).is_err());
    for policy in [OomPolicy::Kill, OomPolicy::Force] {
        let mut m = model.clone();
        m.groups[1].policy = policy;
        let err = check_charge_error(&m, &e, 1, 2 * PAGE_SIZE, Mode::Alloc).unwrap_err();
        assert!(err.contains("only `fail`"), "{err}");
        for mode in [Mode::Fallible, Mode::Explicit] {
            assert!(check_charge_error(&m, &e, 1, 2 * PAGE_SIZE, mode).is_ok());
            assert!(check_charge_error(&m, &e, 1, 3 * PAGE_SIZE, mode).is_err());
        }
    }
    h.check_step().unwrap();
}

/// Root → `a` (max one page, policy kill) with one task; its two-page
/// allocation, made by hand, with the events before and after it.
fn killing_charge() -> (Harness, Model, EventsSnapshot, EventsSnapshot, Vec<u64>) {
    let h = drained_harness(&[
        Op::SetOomPolicy {
            group: GroupSel::id(1),
            policy: OomPolicy::Kill,
        },
        Op::SetMax {
            group: GroupSel::id(1),
            limit: LimitChoice::Bytes(PAGE_SIZE),
        },
    ]);
    let model = h.model();
    let before = h.events_snapshot();
    let c = h.tasks[0]
        .charge(0, 2 * PAGE_SIZE, ChargeKind::Alloc)
        .expect("a kill lets the allocation through");
    assert!(h.groups[1].is_killed());
    let after = h.events_snapshot();
    let peaks = h.groups.iter().map(Group::peak_bytes).collect();
    h.tasks[0].uncharge(0, c).unwrap();
    (h, model, before, after, peaks)
}

#[test]
fn kill_check_wrong_policy_mode_or_counts_are_rejected() {
    let (_h, model, before, after, peaks) = killing_charge();
    let check = |m: &Model, mode, refused_by, after: &EventsSnapshot, peaks: &[u64]| {
        check_charge_events(m, 1, mode, refused_by, &before, after, peaks)
    };
    assert_eq!(
        check(&model, Mode::Alloc, None, &after, &peaks),
        Ok(Some(1))
    );
    // A model whose policy does not kill, where the group was killed
    // already (the charge is forced), or a fallible or explicit charge.
    for policy in [OomPolicy::Fail, OomPolicy::Force] {
        let mut m = model.clone();
        m.groups[1].policy = policy;
        let err = check(&m, Mode::Alloc, None, &after, &peaks).unwrap_err();
        assert!(err.contains("policy"), "{err}");
    }
    let mut killed = model.clone();
    killed.groups[1].killed = true;
    assert!(check(&killed, Mode::Alloc, None, &after, &peaks).is_err());
    for mode in [Mode::Fallible, Mode::Explicit] {
        let err = check(&model, mode, None, &after, &peaks).unwrap_err();
        assert!(err.contains("never kill"), "{err}");
    }
    // A model without the limit: not on the limited chain.
    let mut unlimited = model.clone();
    unlimited.groups[1].max = Limit::Max;
    assert!(check(&unlimited, Mode::Alloc, None, &after, &peaks).is_err());
    // A charge reported as refused.
    assert!(check(&model, Mode::Alloc, Some("a"), &after, &peaks).is_err());
    // oom_kill counted twice, oom not counted, oom_kill not propagated,
    // a kill counted where the peak stayed within max.
    let mut twice = after.clone();
    twice.local[1].oom_kill += 1;
    assert!(check(&model, Mode::Alloc, None, &twice, &peaks).is_err());
    let mut no_oom = after.clone();
    no_oom.local[1].oom = before.local[1].oom;
    assert!(check(&model, Mode::Alloc, None, &no_oom, &peaks).is_err());
    let mut not_propagated = after.clone();
    not_propagated.hierarchical[1].oom_kill = before.hierarchical[1].oom_kill;
    assert!(check(&model, Mode::Alloc, None, &not_propagated, &peaks).is_err());
    let mut low_peak = peaks.clone();
    low_peak[1] = PAGE_SIZE;
    let err = check(&model, Mode::Alloc, None, &after, &low_peak).unwrap_err();
    assert!(err.contains("peak"), "{err}");
    // Without events this check sees no kill (the kill marks themselves
    // are compared by `check_step`).
    assert_eq!(check(&model, Mode::Alloc, None, &before, &peaks), Ok(None));
    // An oom without a kill after a successful charge (what `force` must
    // not count).
    let mut oom_only = before.clone();
    oom_only.local[1].oom += 1;
    assert!(check(&model, Mode::Alloc, None, &oom_only, &peaks).is_err());
}

#[test]
fn kill_through_steps_marks_group_forces_later_allocations_and_notifies() {
    let mut h = drained_harness(&[
        Op::SetOomPolicy {
            group: GroupSel::id(1),
            policy: OomPolicy::Kill,
        },
        Op::Create {
            parent: GroupSel::id(1),
            name: 1,
            via_path: false,
            leading_slash: false,
        },
        Op::SetMax {
            group: GroupSel::id(1),
            limit: LimitChoice::Bytes(PAGE_SIZE),
        },
    ]);
    h.step(&charge_op(0, 0, 2 * PAGE_SIZE)).unwrap();
    assert_eq!(h.killed_now, vec![1]);
    let model = h.model();
    assert!(model.groups[1].killed && !model.groups[2].killed);
    assert!(h.groups[2].is_killed(), "a descendant of a killed group");
    assert_eq!(h.groups[1].events_local().oom_kill, 1);
    // Later allocations are forced: no event, no kill; a fallible one is
    // refused (with an oom, not a kill); an explicit one too.
    h.step(&charge_op(0, 1, 9 * PAGE_SIZE)).unwrap();
    assert!(h.killed_now.is_empty() && h.forced_by_kill);
    let fallible = Op::ChargeFallible {
        task: TaskSel::id(0),
        cpu: 0,
        bytes: 80 * PAGE_SIZE,
        kind: ChargeKind::Alloc,
    };
    h.step(&fallible).unwrap();
    h.step(&Op::Reserve {
        group: GroupSel::id(2),
        bytes: 80 * PAGE_SIZE,
    })
    .unwrap();
    let events = h.groups[1].events_local();
    assert_eq!((events.oom, events.oom_kill), (3, 1), "{events:?}");
    // A model that missed the kill disagrees at once.
    h.shared().model.groups[1].killed = false;
    let err = h.check_step().unwrap_err();
    assert!(err.contains("killed"), "{err}");
    h.shared().model.groups[1].killed = true;
    // A model that expects no kill notification, or one more.
    h.killed_now.clear();
    h.shared().kills_notified.push((1, "a".into()));
    let err = h.check_callbacks(&charge_op(0, 0, 1)).unwrap_err();
    assert!(err.contains("kill callbacks"), "{err}");
    // Revive: the next over-max allocation kills again.
    h.step(&Op::Revive {
        group: GroupSel::id(1),
    })
    .unwrap();
    h.step(&charge_op(0, 0, 2 * PAGE_SIZE)).unwrap();
    assert_eq!(h.killed_now, vec![1]);
    assert_eq!(h.groups[1].events_local().oom_kill, 2);
    h.finish().unwrap();
}

#[test]
fn spent_check_wrong_payment_is_rejected() {
    // `a` has 5,000 live alloc bytes on node 0 (so the figure is exact)
    // and reserves 10,000 bytes there; its task spends 3,000 of them.
    let mut h = drained_harness(&[
        charge_op(0, 0, 5_000),
        Op::Reserve {
            group: GroupSel::id(1),
            bytes: 10_000,
        },
    ]);
    let model = h.model();
    let id = *model.reservations.keys().next().unwrap();
    let before = h.spend_view(&model, id).unwrap();
    assert_eq!(before.stat.alloc_bytes, 5_000);
    let paid = h
        .charge_spending(0, id, 2, 3_000, ChargeKind::Alloc)
        .unwrap()
        .unwrap();
    let after = h.spend_view(&model, id).unwrap();
    assert_eq!(check_spent(&before, &after, 3_000, 0, true), Ok(()));
    // The wrong amount taken or charged, a model that expects an ordinary
    // charge, usage or statistics that moved.
    assert!(check_spent(&before, &after, 2_999, 0, true).is_err());
    let err = check_spent(&before, &after, 3_000, 1, true).unwrap_err();
    assert!(err.contains("statistics"), "{err}");
    let err = check_not_spent(&before, &after).unwrap_err();
    assert!(err.contains("not paid"), "{err}");
    let mut usage = after.clone();
    usage.usage_bytes[1] += PAGE_SIZE;
    assert!(check_spent(&before, &usage, 3_000, 0, true).is_err());
    let mut stat = after.clone();
    stat.stat.reservation_bytes += 3_000;
    assert!(check_spent(&before, &stat, 3_000, 0, true).is_err());
    let mut stat = after.clone();
    stat.stat.kernel_bytes += PAGE_SIZE;
    assert!(check_spent(&before, &stat, 3_000, 0, true).is_err());
    // A figure of 0 (perhaps a negative counter, clamped) is bounded.
    assert!(stat_moved(0, 3_000, 3_000) && stat_moved(0, 0, 3_000));
    assert!(!stat_moved(0, 3_001, 3_000) && !stat_moved(0, 1, -3_000));
    assert!(stat_moved(2_000, 0, -3_000) && !stat_moved(2_000, 1, -3_000));
    // 8,000 bytes with 7,000 left: all of it taken, 1,000 charged on top
    // (a page: usage moves).
    let before = after;
    let partial = h
        .charge_spending(0, id, 2, 8_000, ChargeKind::Alloc)
        .unwrap()
        .unwrap();
    let after = h.spend_view(&model, id).unwrap();
    assert_eq!(after.reservation_bytes, 0);
    assert_eq!(check_spent(&before, &after, 7_000, 1_000, false), Ok(()));
    assert!(check_spent(&before, &after, 7_000, 1_000, true).is_err());
    assert!(check_spent(&before, &after, 7_000, 0, false).is_err());
    assert!(check_spent(&before, &after, 0, 0, false).is_err());
    assert!(check_not_spent(&before, &after).is_err());
    // Spent out: an ordinary charge.
    let before = after;
    let ordinary = h
        .charge_spending(0, id, 2, 500, ChargeKind::Alloc)
        .unwrap()
        .unwrap();
    let after = h.spend_view(&model, id).unwrap();
    assert_eq!(check_not_spent(&before, &after), Ok(()));
    for c in [paid, partial, ordinary] {
        h.tasks[0].uncharge(2, c).unwrap();
    }
}

#[test]
fn spent_charges_through_steps_match_model() {
    let spend = |bytes, kind| Op::ChargeSpent {
        task: TaskSel::id(0),
        reservation: Pick(0),
        cpu: 3,
        bytes,
        kind,
    };
    let mut h = drained_harness(&[
        Op::TaskReserve {
            task: TaskSel::id(0),
            cpu: 1,
            bytes: 10_000,
        },
        spend(4_000, ChargeKind::Alloc),
        spend(4_000, ChargeKind::Runtime),
        spend(4_000, ChargeKind::Alloc),
        spend(4_000, ChargeKind::Alloc),
        spend(2_000, ChargeKind::Alloc),
        spend(1, ChargeKind::Alloc),
    ]);
    let model = h.model();
    let r = model.reservations.values().next().unwrap();
    assert_eq!(r.bytes, 0);
    // Two paid and one paid in part (2,000 bytes left, 2,000 charged) on
    // node 0 (the reservation's), three ordinary ones on node 1 (the
    // CPU's).
    let paid = model.charges.values().filter(|c| c.node == 0).count();
    assert_eq!((paid, model.charges.len()), (3, 6));
    h.finish().unwrap();
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
    h.step(&Op::Remove {
        group: GroupSel::id(2),
        via_path: true,
    })
    .unwrap();
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
        if let Err(e) = h.step(op) {
            panic!("step {i} {op:?}: {e}");
        }
    }
    h
}

#[test]
fn spent_charge_with_negative_pending_statistics_matches_model() {
    // The task pends a 1-byte charge; the controller frees it directly, so
    // `a`'s alloc counter is -1 (read as 0) until the task flushes. A
    // spend of 1 byte then moves it to 0: still read as 0.
    let ops = [
        Op::Create {
            parent: GroupSel::id(0),
            name: 0,
            via_path: false,
            leading_slash: false,
        },
        Op::NewTask {
            group: GroupSel::id(1),
        },
        charge_op(0, 0, 1),
        Op::Uncharge {
            charge: Pick(0),
            cpu: 0,
            via: Via::Controller,
        },
        Op::Reserve {
            group: GroupSel::id(1),
            bytes: 1890,
        },
        Op::ChargeSpent {
            task: TaskSel::id(0),
            reservation: Pick(0),
            cpu: 0,
            bytes: 1,
            kind: ChargeKind::Alloc,
        },
    ];
    let mut h = run_harness(TaskCacheMode::Single, &ops);
    assert_eq!(h.model().charges.len(), 1);
    h.finish().unwrap();
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
