//! The virtual machine: engine tasks on virtual CPUs, the groups, the live
//! objects and reservations, and the simulator's exact model of live bytes
//! that the checks compare the engine against.
//!
//! Each simulated task is an engine [`Task`]; every operation passes the
//! task's virtual CPU to the engine. Nothing here accounts memory itself:
//! the model only remembers which objects are live and how large they are.
//!
//! # Reclaim and determinism
//! The engine runs reclaim callbacks on its reclaimer thread. A charge
//! over `memory.max` (and a `memory.max` lowered below usage) waits for the
//! passes it asks for, so while a callback runs the simulated step is
//! blocked in the engine: the order of events is the same on every run. To
//! keep it so on a loaded machine, the controller waits up to
//! [`RECLAIM_WAIT`] for reclaim (a pass takes microseconds; the default
//! 50 ms could run out under load and turn a reclaim into an OOM outcome),
//! and after every step the machine waits until the reclaimer is idle
//! (asynchronous work: reclaim over `memory.high`, kill notifications). A
//! wait that timed out anyway, or a callback that panicked, stops the run
//! with the `reclaimer` check rather than letting it go on
//! nondeterministically.
//!
//! # OOM outcomes
//! A charge over `memory.max` after reclaim takes the OOM policy of the
//! group that hit it: `fail` refuses it (counted, or a violation with
//! `on_oom = "fail"`), `force` lets it through (the group's limit is then
//! a threshold: the `limit` check skips groups whose subtree forces), and
//! `kill` lets it through and marks the group killed. The simulator plays
//! the application: it restarts a killed tenant at once, freeing every
//! object and reservation of the killed subtree and reviving the group,
//! and reports the kill.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memcg::engine::{Charge, Config, EngineCounters, Task};
use memcg::{
    ChargeKind, Controller, Group, GroupStats, Limit, OomPolicy, ReclaimerHandle, Reservation,
    Topology,
};

use crate::checks::{self, Violation};
pub use crate::metrics::Metrics;
use crate::ops::{Op, SimFault};
use crate::scenario::{OnOom, Scenario};
use crate::workload::{initial_cpu, task_layout};

/// Called after each step's operation, before the checks (tests use it to
/// inject the engine's own faults).
pub type Hook = Box<dyn FnMut(usize, &Machine) + Send>;

/// How long a charge may wait for reclaim, and how long a step waits for
/// the reclaimer thread to get idle (see "Reclaim and determinism").
pub const RECLAIM_WAIT: Duration = Duration::from_secs(30);

struct SimTask {
    task: Task,
    cpu: usize,
}

/// The objects a group's reclaim callback may free.
struct Pool {
    ctrl: Controller,
    cpu: Arc<AtomicUsize>,
    inner: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    charges: BTreeMap<u64, Charge>,
    freed: Vec<u64>,
}

impl Pool {
    /// Runs on the engine's reclaimer thread while the step that asked
    /// waits for it (or, for asynchronous requests, before the step ends:
    /// see "Reclaim and determinism"); frees on that step's CPU.
    fn reclaim(&self, wanted_bytes: u64) -> u64 {
        let mut inner = lock(&self.inner);
        let mut freed_bytes = 0;
        while freed_bytes < wanted_bytes {
            let Some((obj, charge)) = inner.charges.pop_first() else {
                break;
            };
            freed_bytes += charge.bytes();
            let _ = self.ctrl.uncharge(self.cpu.load(Ordering::Relaxed), charge);
            inner.freed.push(obj);
        }
        freed_bytes
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct GroupEntry {
    path: String,
    group: Group,
    parent: Option<usize>,
    online: bool,
    merged_into: Option<usize>,
    /// Exact live bytes charged to this group's objcgs (moved to the
    /// parent when the group is removed).
    live_bytes: u64,
    max_bytes: Option<u64>,
    ceiling_bytes: u64,
    /// The OOM policy the scenario gave it (or its parent's when made).
    policy: OomPolicy,
    pool: Option<Arc<Pool>>,
    reclaimer: Option<ReclaimerHandle>,
}

struct Obj {
    /// `None` while the group's reclaim pool holds the charge.
    charge: Option<Charge>,
    bytes: u64,
    group: usize,
    pool: Option<usize>,
}

/// A virtual machine running one scenario.
pub struct Machine {
    ctrl: Controller,
    topo: Topology,
    on_oom: OnOom,
    tasks: Vec<SimTask>,
    groups: Vec<GroupEntry>,
    by_path: BTreeMap<String, usize>,
    objects: BTreeMap<u64, Obj>,
    reservations: BTreeMap<u64, (Reservation, usize)>,
    cpu_now: Arc<AtomicUsize>,
    metrics: Metrics,
    invariants_every: u64,
    /// A reclaim callback was registered (the reclaimer thread runs).
    has_reclaimers: bool,
    /// Kills by group path.
    kills: BTreeMap<String, u64>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("topology", &self.topo)
            .field("tasks", &self.tasks.len())
            .field("objects", &self.objects.len())
            .finish_non_exhaustive()
    }
}

/// Why a step did nothing or stopped the run.
enum StepError {
    Skip,
    Stop(Violation),
}

impl From<Violation> for StepError {
    fn from(v: Violation) -> Self {
        StepError::Stop(v)
    }
}

impl Machine {
    /// The charge of the removed object `id` (its `charge` and `pool`
    /// fields): its own, or the one its group's reclaim pool holds (`None`
    /// if the pool gave it up).
    fn take_charge(&self, id: u64, charge: Option<Charge>, pool: Option<usize>) -> Option<Charge> {
        match (charge, pool) {
            (Some(c), _) => Some(c),
            (None, Some(p)) => self.groups[p]
                .pool
                .as_ref()
                .and_then(|pool| lock(&pool.inner).charges.remove(&id)),
            (None, None) => None,
        }
    }

    /// Builds the machine of `scenario`: its topology, its groups (with
    /// limits and reclaimers) and its tasks on their first CPUs.
    ///
    /// # Errors
    /// Engine errors (invalid topology or group path), which validated
    /// scenarios do not have.
    pub fn new(scenario: &Scenario) -> memcg::Result<Machine> {
        let topo = Topology::from_spec(&scenario.machine.topology)?;
        let ctrl = Controller::with_config(
            topo.clone(),
            Config::default()
                .task_cache(scenario.machine.task_cache.into())
                .obj_stock_slots(scenario.machine.obj_stock_slots)
                .reclaim_wait(RECLAIM_WAIT),
        );
        let mut m = Machine {
            ctrl: ctrl.clone(),
            topo: topo.clone(),
            on_oom: scenario.run.on_oom,
            tasks: Vec::new(),
            groups: Vec::new(),
            by_path: BTreeMap::new(),
            objects: BTreeMap::new(),
            reservations: BTreeMap::new(),
            cpu_now: Arc::new(AtomicUsize::new(0)),
            metrics: Metrics::default(),
            invariants_every: 1,
            has_reclaimers: false,
            kills: BTreeMap::new(),
        };
        m.add_group(String::new(), ctrl.root(), None);
        for g in &scenario.groups {
            let group = ctrl.create(&g.path)?;
            let parent = m.by_path.get(parent_path(&g.path)).copied();
            let idx = m.add_group(g.path.clone(), group.clone(), parent);
            if let Some(policy) = g.oom_policy {
                group.set_oom_policy(policy);
                m.groups[idx].policy = policy;
            }
            if let Some(max) = g.max_bytes {
                group.set_max(Limit::Bytes(max))?;
                m.groups[idx].max_bytes = Some(max);
                m.groups[idx].ceiling_bytes = max.saturating_add(m.bound_bytes());
            }
            if g.reclaimer {
                let pool = Arc::new(Pool {
                    ctrl: ctrl.clone(),
                    cpu: Arc::clone(&m.cpu_now),
                    inner: Mutex::new(PoolInner::default()),
                });
                let p = Arc::clone(&pool);
                let handle = group.register_reclaimer(move |req| p.reclaim(req.wanted_bytes));
                m.groups[idx].pool = Some(pool);
                m.groups[idx].reclaimer = Some(handle);
                m.has_reclaimers = true;
            }
        }
        for (spec, replica) in task_layout(scenario) {
            let s = &scenario.tasks[spec];
            let group = ctrl.group(&s.group)?;
            let task = ctrl.new_task(&group)?;
            let cpu = initial_cpu(&topo, s.start_cpu.unwrap_or(s.cpu), replica);
            m.tasks.push(SimTask { task, cpu });
        }
        Ok(m)
    }

    /// Checks `check_invariants` only every `n` steps (1 = every step;
    /// the model checks always run every step).
    pub fn set_invariants_every(&mut self, n: u64) {
        self.invariants_every = n.max(1);
    }

    /// The engine controller.
    pub fn controller(&self) -> &Controller {
        &self.ctrl
    }

    /// The online group at `path`.
    pub fn group(&self, path: &str) -> Option<Group> {
        self.by_path
            .get(path)
            .map(|&i| self.groups[i].group.clone())
    }

    /// Metrics so far.
    pub fn metrics(&self) -> Metrics {
        self.metrics
    }

    /// The engine's work counters so far.
    pub fn counters(&self) -> EngineCounters {
        self.ctrl.counters()
    }

    /// The groups killed by their OOM policy so far, with how many times,
    /// by path.
    pub fn kills(&self) -> Vec<(String, u64)> {
        self.kills.iter().map(|(p, &n)| (p.clone(), n)).collect()
    }

    /// A new group starts with its parent's policy, as in the engine.
    fn add_group(&mut self, path: String, group: Group, parent: Option<usize>) -> usize {
        let idx = self.groups.len();
        let policy = parent.map_or(OomPolicy::default(), |p| self.groups[p].policy);
        self.by_path.insert(path.clone(), idx);
        self.groups.push(GroupEntry {
            path,
            group,
            parent,
            online: true,
            merged_into: None,
            live_bytes: 0,
            max_bytes: None,
            ceiling_bytes: u64::MAX,
            policy,
            pool: None,
            reclaimer: None,
        });
        idx
    }

    /// Whether online group `x` is `k` or below it.
    fn in_subtree(&self, mut x: usize, k: usize) -> bool {
        loop {
            if x == k {
                return true;
            }
            match self.groups[x].parent {
                Some(p) => x = self.resolve(p),
                None => return false,
            }
        }
    }

    /// The stock error bound for the machine as it is now.
    pub fn bound_bytes(&self) -> u64 {
        checks::stock_bound_bytes(
            self.topo.nr_cpus() as u64,
            self.tasks.len() as u64,
            (self.groups.len() * self.topo.nr_node_ids()) as u64,
        )
    }

    fn resolve(&self, mut g: usize) -> usize {
        while let Some(p) = self.groups[g].merged_into {
            g = p;
        }
        g
    }

    fn node_of(&self, cpu: usize) -> usize {
        self.topo.node_of(cpu).unwrap_or(0)
    }

    fn engine_error(&self, what: &str, e: memcg::Error) -> StepError {
        StepError::Stop(Violation {
            check: "engine-error",
            details: format!("{what}: unexpected engine error: {e}"),
        })
    }

    fn oom(&mut self, e: &memcg::Error) -> StepError {
        self.metrics.ooms += 1;
        match self.on_oom {
            OnOom::Count => StepError::Skip,
            OnOom::Fail => StepError::Stop(Violation {
                check: "oom",
                details: format!("{e} (set `run.on_oom = \"count\"` to allow refusals)"),
            }),
        }
    }

    /// After an allocation through `task` that killed a group: counts the
    /// kill and restarts the tenant (frees every object and reservation of
    /// the killed subtree, revives the group), as an application does
    /// when it is told of a kill.
    fn restart_killed(&mut self, task: usize) -> Result<(), StepError> {
        let Some(kill) = self.tasks[task].task.group().and_then(|g| g.killed_by()) else {
            return Ok(());
        };
        self.metrics.kills += 1;
        *self.kills.entry(kill.path.clone()).or_default() += 1;
        if self.on_oom == OnOom::Fail {
            return Err(StepError::Stop(Violation {
                check: "oom",
                details: format!("{kill} (set `run.on_oom = \"count\"` to allow OOM outcomes)"),
            }));
        }
        let Some(&k) = self.by_path.get(&kill.path) else {
            return Err(StepError::Stop(Violation {
                check: "engine-error",
                details: format!("killed group {:?} is not online", kill.path),
            }));
        };
        // Objects a reclaim pass freed in this step are gone already.
        self.collect_reclaimed();
        let cpu = self.tasks[task].cpu;
        let doomed: Vec<u64> = self
            .objects
            .iter()
            .filter(|(_, o)| self.in_subtree(self.resolve(o.group), k))
            .map(|(&id, _)| id)
            .collect();
        for id in doomed {
            let Some(o) = self.objects.remove(&id) else {
                continue;
            };
            let charge = self.take_charge(id, o.charge, o.pool);
            if let Some(c) = charge {
                if let Err(e) = self.tasks[task].task.uncharge(cpu, c) {
                    return Err(self.engine_error("uncharge of a killed tenant", e));
                }
            }
            let g = self.resolve(o.group);
            self.groups[g].live_bytes -= o.bytes;
            self.metrics.killed_objects += 1;
        }
        let doomed: Vec<u64> = self
            .reservations
            .iter()
            .filter(|(_, (_, g))| self.in_subtree(self.resolve(*g), k))
            .map(|(&id, _)| id)
            .collect();
        for id in doomed {
            if let Some((r, g)) = self.reservations.remove(&id) {
                let g = self.resolve(g);
                self.groups[g].live_bytes -= r.bytes();
                self.metrics.killed_objects += 1;
            }
        }
        self.groups[k].group.revive();
        Ok(())
    }

    /// Waits until the reclaimer thread is idle; a wait for reclaim that
    /// timed out, or a callback that panicked, stops the run (see
    /// "Reclaim and determinism").
    fn settle(&self) -> Result<(), Violation> {
        let idle = !self.has_reclaimers || self.ctrl.wait_reclaim_idle(RECLAIM_WAIT);
        let (_, timeouts, panics) = self.ctrl.reclaimer_counters();
        checks::reclaimer(idle, timeouts, panics, RECLAIM_WAIT)
    }

    /// Runs one operation, then the per-step checks.
    ///
    /// # Errors
    /// The first [`Violation`] found.
    pub fn step(&mut self, index: u64, op: &Op) -> Result<(), Violation> {
        self.metrics.steps += 1;
        match self.apply(op) {
            Ok(()) => {}
            Err(StepError::Skip) => self.metrics.skipped_steps += 1,
            Err(StepError::Stop(v)) => return Err(v),
        }
        self.settle()?;
        self.collect_reclaimed();
        self.check(index)
    }

    fn apply(&mut self, op: &Op) -> Result<(), StepError> {
        match op {
            Op::Alloc {
                task,
                bytes,
                obj,
                cache,
                fallible,
                spend,
            } => self.alloc(*task, *bytes, *obj, *cache, *fallible, *spend),
            Op::Free { task, obj } => {
                let t = self.tasks.get(*task).ok_or(StepError::Skip)?;
                let o = self.objects.remove(obj).ok_or(StepError::Skip)?;
                let charge = self
                    .take_charge(*obj, o.charge, o.pool)
                    .ok_or(StepError::Skip)?;
                self.cpu_now.store(t.cpu, Ordering::Relaxed);
                if let Err(e) = t.task.uncharge(t.cpu, charge) {
                    return Err(self.engine_error("uncharge", e));
                }
                let g = self.resolve(o.group);
                self.groups[g].live_bytes -= o.bytes;
                Ok(())
            }
            Op::Migrate { task, cpu } => {
                if self.topo.node_of(*cpu).is_err() {
                    return Err(StepError::Skip);
                }
                self.tasks.get_mut(*task).ok_or(StepError::Skip)?.cpu = *cpu;
                Ok(())
            }
            Op::Attach { task, group } => {
                let t = self.tasks.get(*task).ok_or(StepError::Skip)?;
                let &g = self.by_path.get(group.as_str()).ok_or(StepError::Skip)?;
                self.groups[g]
                    .group
                    .attach(&t.task.handle())
                    .map_err(|_| StepError::Skip)
            }
            Op::CreateGroup { path } => {
                if self.by_path.contains_key(path.as_str()) {
                    return Err(StepError::Skip);
                }
                let parent = *self.by_path.get(parent_path(path)).ok_or(StepError::Skip)?;
                let group = self.ctrl.create(path).map_err(|_| StepError::Skip)?;
                self.add_group(path.clone(), group, Some(parent));
                Ok(())
            }
            Op::RemoveGroup { path } => {
                let &g = self.by_path.get(path.as_str()).ok_or(StepError::Skip)?;
                self.groups[g].group.remove().map_err(|_| StepError::Skip)?;
                self.mark_removed(g);
                Ok(())
            }
            Op::Reserve { group, bytes, res } => {
                if self.reservations.contains_key(res) {
                    return Err(StepError::Skip);
                }
                let &g = self.by_path.get(group.as_str()).ok_or(StepError::Skip)?;
                match self.groups[g].group.try_charge(*bytes) {
                    Ok(r) => {
                        self.reservations.insert(*res, (r, g));
                        self.groups[g].live_bytes += bytes;
                        Ok(())
                    }
                    Err(e @ memcg::Error::Charge(_)) => Err(self.oom(&e)),
                    Err(memcg::Error::Removed { .. }) => Err(StepError::Skip),
                    Err(e) => Err(self.engine_error("try_charge", e)),
                }
            }
            Op::ResizeReservation { res, bytes } => {
                let (r, g) = self.reservations.get_mut(res).ok_or(StepError::Skip)?;
                let old = r.bytes();
                let g = *g;
                if *bytes > old {
                    if let Err(e) = r.grow(bytes - old) {
                        return Err(match e {
                            memcg::Error::Charge(_) => self.oom(&e),
                            e => self.engine_error("grow", e),
                        });
                    }
                    let g = self.resolve(g);
                    self.groups[g].live_bytes += bytes - old;
                } else {
                    r.shrink(old - bytes);
                    let g = self.resolve(g);
                    self.groups[g].live_bytes -= old - bytes;
                }
                Ok(())
            }
            Op::Release { res } => {
                let (r, g) = self.reservations.remove(res).ok_or(StepError::Skip)?;
                let bytes = r.bytes();
                drop(r);
                let g = self.resolve(g);
                self.groups[g].live_bytes -= bytes;
                Ok(())
            }
            Op::Flush { task } => {
                let t = self.tasks.get(*task).ok_or(StepError::Skip)?;
                t.task
                    .flush(t.cpu)
                    .map_err(|e| self.engine_error("flush", e))
            }
            Op::SetMax { group, max_bytes } => {
                let &g = self.by_path.get(group.as_str()).ok_or(StepError::Skip)?;
                if g == 0 {
                    return Err(StepError::Skip);
                }
                let limit = max_bytes.map_or(Limit::Max, Limit::Bytes);
                let e = &self.groups[g];
                e.group.set_max(limit).map_err(|_| StepError::Skip)?;
                let current = e.group.current_bytes();
                let bound = self.bound_bytes();
                let e = &mut self.groups[g];
                e.max_bytes = *max_bytes;
                e.ceiling_bytes = match max_bytes {
                    Some(m) => m.saturating_add(bound).max(current),
                    None => u64::MAX,
                };
                Ok(())
            }
            Op::Fault { kind, group } => self.fault(*kind, group.as_deref()),
        }
    }

    fn alloc(
        &mut self,
        task: usize,
        bytes: u64,
        obj: u64,
        cache: bool,
        fallible: bool,
        spend: Option<u64>,
    ) -> Result<(), StepError> {
        if self.objects.contains_key(&obj) {
            return Err(StepError::Skip);
        }
        let t = self.tasks.get(task).ok_or(StepError::Skip)?;
        let cpu = t.cpu;
        self.cpu_now.store(cpu, Ordering::Relaxed);
        let root_before = self.ctrl.root().current_bytes();
        let charge = |task: &Task| {
            let region = fallible.then(|| task.enter_fallible());
            let result = task.charge(cpu, bytes, ChargeKind::Alloc);
            drop(region);
            result
        };
        // With `spend`: the reservation's bytes before and after, and its
        // group.
        let (result, spent) = match spend.and_then(|res| self.reservations.get_mut(&res)) {
            Some((r, g)) => {
                let before = r.bytes();
                let result = match t.task.spend(r) {
                    Ok(guard) => {
                        let result = charge(&t.task);
                        drop(guard);
                        result
                    }
                    Err(e) => Err(e),
                };
                (result, Some((before, r.bytes(), *g)))
            }
            None => (charge(&t.task), None),
        };
        // The group whose reservation paid (in part or in full), and how
        // much it took.
        let paid_by = match spent {
            Some((before, after, g)) => {
                let taken = checks::spend(
                    spend.unwrap_or(0),
                    bytes,
                    (before, after),
                    (root_before, self.ctrl.root().current_bytes()),
                    result.is_ok(),
                )?;
                (taken > 0).then(|| (self.resolve(g), taken))
            }
            None => None,
        };
        let charge = match result {
            Ok(c) => c,
            Err(e @ memcg::Error::Charge(_)) => return Err(self.oom(&e)),
            Err(e) => return Err(self.engine_error("charge", e)),
        };
        self.metrics.charges += 1;
        self.metrics.charged_bytes += bytes;
        let g = match paid_by {
            // The object is the reservation's, on its node: the bytes taken
            // move from the reservation to the object, the rest is charged.
            Some((g, taken)) => {
                self.metrics.spent_charges += 1;
                self.groups[g].live_bytes += bytes - taken;
                g
            }
            None => {
                let nid = self.node_of(cpu);
                let (path, node) = match self.tasks[task].task.obj_cgroup(nid) {
                    Ok(x) => x,
                    Err(e) => return Err(self.engine_error("obj_cgroup", e)),
                };
                if node != nid {
                    self.metrics.wrong_node_bytes += bytes;
                }
                let g = self.by_path.get(path.as_str()).copied().unwrap_or(0);
                self.groups[g].live_bytes += bytes;
                g
            }
        };
        let (charge, pool) = match (&self.groups[g].pool, cache) {
            (Some(p), true) => {
                lock(&p.inner).charges.insert(obj, charge);
                (None, Some(g))
            }
            _ => (Some(charge), None),
        };
        self.objects.insert(
            obj,
            Obj {
                charge,
                bytes,
                group: g,
                pool,
            },
        );
        if self.tasks[task].task.is_killed() {
            self.restart_killed(task)?;
        }
        Ok(())
    }

    fn fault(&mut self, kind: SimFault, group: Option<&str>) -> Result<(), StepError> {
        match kind {
            SimFault::LoseCharge => {
                let cpu = self.tasks.first().map_or(0, |t| t.cpu);
                let Some(o) = self
                    .objects
                    .values_mut()
                    .filter(|o| o.charge.is_some())
                    .max_by_key(|o| o.bytes)
                else {
                    return Err(StepError::Skip);
                };
                if let Some(c) = o.charge.as_mut() {
                    let _ = self.ctrl.resize(cpu, c, 1);
                }
                Ok(())
            }
            SimFault::LeakCharge => {
                let Some((&id, _)) = self.objects.iter().find(|(_, o)| o.charge.is_some()) else {
                    return Err(StepError::Skip);
                };
                if let Some(o) = self.objects.remove(&id) {
                    // Turning the charge into its raw word and never
                    // rebuilding it leaks the charge.
                    let _leaked = o.charge.map(Charge::into_raw);
                    let g = self.resolve(o.group);
                    self.groups[g].live_bytes -= o.bytes;
                }
                Ok(())
            }
            SimFault::ForceOverMax => {
                let g = group.and_then(|p| self.group(p)).ok_or(StepError::Skip)?;
                g.set_oom_policy(memcg::OomPolicy::Force);
                Ok(())
            }
        }
    }

    fn mark_removed(&mut self, g: usize) {
        self.by_path.remove(&self.groups[g].path);
        let parent = self.groups[g].parent.unwrap_or(0);
        let parent = self.resolve(parent);
        let bytes = std::mem::take(&mut self.groups[g].live_bytes);
        self.groups[parent].live_bytes += bytes;
        let e = &mut self.groups[g];
        e.online = false;
        e.merged_into = Some(parent);
        e.reclaimer = None;
    }

    fn collect_reclaimed(&mut self) {
        for g in 0..self.groups.len() {
            let Some(pool) = self.groups[g].pool.clone() else {
                continue;
            };
            let freed = std::mem::take(&mut lock(&pool.inner).freed);
            for obj in freed {
                if let Some(o) = self.objects.remove(&obj) {
                    let g = self.resolve(o.group);
                    self.groups[g].live_bytes -= o.bytes;
                    self.metrics.reclaimed_objects += 1;
                }
            }
        }
    }

    /// Live bytes of every online group's subtree, by group index.
    fn subtree_live_bytes(&self) -> Vec<u64> {
        let mut sums = vec![0u64; self.groups.len()];
        for (i, e) in self.groups.iter().enumerate() {
            if !e.online || e.live_bytes == 0 {
                continue;
            }
            let mut g = Some(i);
            while let Some(j) = g {
                sums[j] += e.live_bytes;
                g = self.groups[j].parent.map(|p| self.resolve(p));
            }
        }
        sums
    }

    /// Which online groups have a group with policy `force` in their
    /// subtree (a forced charge there may take them past `memory.max`), by
    /// group index, as the scenario set the policies.
    fn forcing_subtrees(&self) -> Vec<bool> {
        let mut out = vec![false; self.groups.len()];
        for (i, e) in self.groups.iter().enumerate() {
            if !e.online || e.policy != OomPolicy::Force {
                continue;
            }
            let mut g = Some(i);
            while let Some(j) = g {
                out[j] = true;
                g = self.groups[j].parent.map(|p| self.resolve(p));
            }
        }
        out
    }

    /// Runs every per-step check now, `check_invariants` included.
    ///
    /// # Errors
    /// The first [`Violation`] found.
    pub fn recheck(&mut self, index: u64) -> Result<(), Violation> {
        let every = std::mem::replace(&mut self.invariants_every, 1);
        let r = self.check(index);
        self.invariants_every = every;
        r
    }

    fn check(&mut self, index: u64) -> Result<(), Violation> {
        if (index + 1).is_multiple_of(self.invariants_every) {
            checks::engine(&self.ctrl, "engine")?;
        }
        let live = self.subtree_live_bytes();
        let forcing = self.forcing_subtrees();
        let bound = self.bound_bytes();
        for (i, e) in self.groups.iter_mut().enumerate() {
            if !e.online {
                continue;
            }
            let current = e.group.current_bytes();
            checks::usage_floor(&e.path, current, live[i])?;
            if let Some(max) = e.max_bytes {
                if !forcing[i] {
                    checks::limit(&e.path, current, max, e.ceiling_bytes)?;
                }
                e.ceiling_bytes = max.saturating_add(bound).max(e.ceiling_bytes.min(current));
            }
            if i == 0 {
                self.metrics.worst_error_bytes = self
                    .metrics
                    .worst_error_bytes
                    .max(current.abs_diff(live[0]));
                self.metrics.peak_live_bytes = self.metrics.peak_live_bytes.max(live[0]);
            }
        }
        Ok(())
    }

    /// Flushes every task's byte cache (so statistics are exact) and
    /// returns every group's statistics, root first.
    pub fn snapshot(&self) -> Vec<GroupStats> {
        for t in &self.tasks {
            let _ = t.task.flush(t.cpu);
        }
        self.ctrl.stats()
    }

    /// Ends the run: frees everything, exits every task, drains, removes
    /// every group, and runs the end checks (see [`crate::checks`]).
    ///
    /// # Errors
    /// The first end check that fails.
    pub fn finish(mut self) -> Result<(), Violation> {
        let nr_tasks = self.tasks.len().max(1);
        let objects = std::mem::take(&mut self.objects);
        for (id, o) in objects {
            let t = &self.tasks[(id as usize) % nr_tasks];
            let charge = self.take_charge(id, o.charge, o.pool);
            if let Some(c) = charge {
                t.task.uncharge(t.cpu, c).map_err(|e| Violation {
                    check: "engine-error",
                    details: format!("uncharge at the end: {e}"),
                })?;
            }
        }
        self.reservations.clear();
        for t in &mut self.tasks {
            t.task.exit();
        }
        for e in &mut self.groups {
            e.reclaimer = None;
        }
        self.ctrl.drain_stocks();
        checks::engine(&self.ctrl, "end-engine")?;
        for e in self.groups.iter().filter(|e| e.online) {
            checks::usage_zero(&e.path, e.group.current_bytes())?;
        }
        let mut online: Vec<usize> = (1..self.groups.len())
            .filter(|&i| self.groups[i].online)
            .collect();
        online.sort_by_key(|&i| std::cmp::Reverse(self.groups[i].path.matches('/').count()));
        for i in online {
            self.groups[i].group.remove().map_err(|e| Violation {
                check: "end-remove",
                details: format!("group {:?} cannot be removed: {e}", self.groups[i].path),
            })?;
        }
        self.ctrl.drain_stocks();
        checks::engine(&self.ctrl, "end-leak")?;
        checks::usage_zero("", self.ctrl.root().current_bytes()).map_err(|mut v| {
            v.check = "end-leak";
            v
        })?;
        Ok(())
    }
}

fn parent_path(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}
