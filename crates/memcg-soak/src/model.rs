//! What the soak knows: its groups (created, removed, limited), every
//! worker's inbox, the counters, and the first failure.
//!
//! Exactness rests on one rule: every thread stays attached to root, so
//! the soak's own bookkeeping (vectors, locks, names, stats) is charged to
//! root, and a tenant group is charged only through the operations that
//! make tracked blocks (an attach burst, a scope, an `InGroup` future, a
//! reservation being spent, a thread attached to it). Root's own usage is
//! therefore not predicted; every other group's is, to the byte.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, RwLock};

use memcg::{Group, OomKillHandle, ReclaimerHandle};

use crate::block::{Flavor, Obj};
use crate::cli::Config;

/// Model id of the soak group (the parent of every tenant; never limited,
/// never removed).
pub const SOAK: u32 = 0;

/// One group the soak made.
#[derive(Debug)]
pub struct GroupEntry {
    /// The group while it is online; `None` once removed.
    pub group: Option<Group>,
    /// Model id of its parent (`None` for the soak group).
    pub parent: Option<u32>,
    /// Depth below the soak group.
    pub depth: u32,
    /// Set before the first `set_max`/`set_high` with a byte limit: a
    /// refusal or a kill needs a limit somewhere in the chain.
    pub ever_limited: bool,
    /// Set before the policy is first made `Fail`.
    pub ever_fail: bool,
    /// Objects charged to the group that its reclaim callback may free.
    pub cache: Arc<Mutex<Vec<Obj>>>,
    /// The registered reclaim callback, if any (dropped at removal).
    pub reclaimer: Option<ReclaimerHandle>,
    /// The registered kill callback, if any (dropped at removal).
    pub kill_cb: Option<OomKillHandle>,
}

/// The soak's groups, by model id (ids are never reused).
#[derive(Debug, Default)]
pub struct Model {
    /// Every group ever made, by id.
    pub groups: Vec<GroupEntry>,
    /// Ids of the groups online now.
    pub live: Vec<u32>,
}

impl Model {
    /// The group charged now for objects charged to `id`: `id` itself, or
    /// its nearest ancestor still online (the reparenting of removal).
    pub fn resolve(&self, mut id: u32) -> u32 {
        while self.groups[id as usize].group.is_none() {
            match self.groups[id as usize].parent {
                Some(p) => id = p,
                None => break,
            }
        }
        id
    }

    /// Whether some group from `id` up (removed ones included) ever had a
    /// byte limit, and whether one ever had the `Fail` policy.
    pub fn chain_flags(&self, mut id: u32) -> (bool, bool) {
        let (mut limited, mut fail) = (false, false);
        loop {
            let e = &self.groups[id as usize];
            limited |= e.ever_limited;
            fail |= e.ever_fail;
            match e.parent {
                Some(p) => id = p,
                None => return (limited, fail),
            }
        }
    }
}

/// Operation kinds, counted in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Op {
    /// Allocate with the thread attached to a tenant (a burst).
    AllocAttached,
    /// Allocate in a scope (sometimes nested).
    AllocScope,
    /// Allocate in an `InGroup` future (killable), polled twice.
    Future,
    /// Free one of the worker's blocks.
    Free,
    /// Hand a block to another worker, who frees or adopts it.
    HandOff,
    /// Grow or shrink a block (sometimes in another group's scope).
    Realloc,
    /// Make a group.
    Create,
    /// Remove a group (its live objects move to the parent).
    Remove,
    /// Change `max` or `high`.
    Limit,
    /// Change the OOM policy.
    Policy,
    /// A large allocation in a fallible region.
    Fallible,
    /// An explicit charge (a reservation), or drop/grow/shrink one.
    Reserve,
    /// Allocate paid from a reservation.
    Spend,
    /// Put a block in a group's reclaimable cache.
    CacheInsert,
    /// Free a block of a cache (as an eviction would).
    CacheFree,
    /// Free a killed group's blocks and revive it.
    Revive,
    /// Start a thread in a group that allocates, hands back and exits.
    Thread,
    /// Fork a child that makes a group, allocates in a thread, checks.
    Fork,
}

/// Number of [`Op`] kinds.
pub const NR_OPS: usize = 18;

/// Names of the [`Op`] kinds, in order.
pub const OP_NAMES: [&str; NR_OPS] = [
    "alloc", "scope", "future", "free", "handoff", "realloc", "create", "remove", "limit",
    "policy", "fallible", "reserve", "spend", "cache", "evict", "revive", "thread", "fork",
];

/// Event counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Operations by kind.
    pub ops: [AtomicU64; NR_OPS],
    /// Allocations the allocator refused (null).
    pub refused: AtomicU64,
    /// Explicit charges refused.
    pub charge_refused: AtomicU64,
    /// Killable futures that ended with `OomKilled`.
    pub futures_killed: AtomicU64,
    /// Groups revived.
    pub revived: AtomicU64,
    /// Groups made / removed / removals refused.
    pub created: AtomicU64,
    /// Groups removed.
    pub removed: AtomicU64,
    /// Removals refused (tasks attached, children).
    pub remove_refused: AtomicU64,
    /// Reclaim callback runs, and bytes they freed.
    pub reclaim_runs: AtomicU64,
    /// Bytes freed by reclaim callbacks.
    pub reclaim_freed_bytes: AtomicU64,
    /// Kill callbacks run.
    pub kill_callbacks: AtomicU64,
    /// Forks whose child passed.
    pub forks: AtomicU64,
    /// Forks from a running worker whose child found the library's
    /// invariants violated (its own group exact).
    pub fork_invariants: AtomicU64,
    /// Forks at quiescent points (every check of the child must pass).
    pub quiescent_forks: AtomicU64,
    /// Threads started.
    pub threads: AtomicU64,
    /// Quiescent points passed.
    pub checkpoints: AtomicU64,
    /// Individual checks passed.
    pub checks: AtomicU64,
}

impl Counters {
    /// Counts one operation.
    pub fn op(&self, op: Op) {
        self.ops[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Operations in all.
    pub fn total_ops(&self) -> u64 {
        self.ops.iter().map(|o| o.load(Ordering::Relaxed)).sum()
    }
}

/// A failed check: its name and what was seen.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The check (`exact-usage`, `invariants`, ...).
    pub check: &'static str,
    /// What was wrong.
    pub detail: String,
}

/// Everything the workers and the coordinator share.
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub cfg: Config,
    /// The root group (every thread's attachment).
    pub root: Group,
    /// The groups.
    pub model: Mutex<Model>,
    /// Blocks handed to each worker.
    pub inboxes: Vec<Mutex<Vec<Obj>>>,
    /// Each worker's task, for attaches made by the coordinator.
    pub handles: Mutex<Vec<Option<memcg::TaskHandle>>>,
    /// Group each worker must allocate in at the start of the next round
    /// (the coordinator attached it there), by model id.
    pub attached_by_coordinator: Mutex<Vec<Option<u32>>>,
    /// Per raw model id: live alloc bytes and reservation bytes the workers
    /// hold (filled at each quiescent point).
    pub tally: Mutex<Vec<(u64, u64)>>,
    /// The counters.
    pub counters: Counters,
    /// The first failure.
    pub failure: Mutex<Option<Failure>>,
    /// Set when the workers must stop after this round.
    pub stop: AtomicBool,
    /// The round barrier (workers and the coordinator).
    pub barrier: Barrier,
    /// Held for writing by a removal, for reading around nested scopes.
    pub removal: RwLock<()>,
}

impl Shared {
    /// Shared state for `cfg`, with the soak group made.
    ///
    /// # Errors
    /// The library's error making the soak group.
    pub fn new(cfg: Config) -> Result<Shared, memcg::Error> {
        let ctrl = memcg::controller();
        let root = ctrl.root();
        let soak = ctrl.create("soak")?;
        let model = Model {
            groups: vec![GroupEntry {
                group: Some(soak),
                parent: None,
                depth: 0,
                ever_limited: false,
                ever_fail: false,
                cache: Arc::default(),
                reclaimer: None,
                kill_cb: None,
            }],
            live: vec![SOAK],
        };
        let n = cfg.threads;
        Ok(Shared {
            root,
            model: Mutex::new(model),
            inboxes: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            handles: Mutex::new(vec![None; n]),
            attached_by_coordinator: Mutex::new(vec![None; n]),
            tally: Mutex::new(Vec::new()),
            counters: Counters::default(),
            failure: Mutex::new(None),
            stop: AtomicBool::new(false),
            barrier: Barrier::new(n + 1),
            removal: RwLock::new(()),
            cfg,
        })
    }

    /// The flavor.
    pub fn flavor(&self) -> Flavor {
        self.cfg.flavor
    }

    /// Locks the model.
    pub fn model(&self) -> MutexGuard<'_, Model> {
        lock(&self.model)
    }

    /// Records a failure (the first one wins) and asks everyone to stop.
    pub fn fail(&self, check: &'static str, detail: String) {
        let mut f = lock(&self.failure);
        if f.is_none() {
            *f = Some(Failure { check, detail });
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether a check failed.
    pub fn failed(&self) -> bool {
        lock(&self.failure).is_some()
    }
}

/// Locks `m`, ignoring poisoning (a panicking worker is reported as such).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
