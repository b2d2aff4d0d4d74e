//! The controller: topology, root group, per-CPU stocks, tasks.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::core::{Core, DrainFilter};
use crate::engine::group::Group;
use crate::engine::stats::GroupStats;
use crate::engine::task::{Charge, Task};
use crate::engine::task_shared::TaskCacheMode;
use crate::engine::topology::Topology;
use crate::error::{Error, Result};
use crate::sync::Ordering;

/// Settings of a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The cache new tasks keep (each task may choose otherwise).
    pub task_cache: TaskCacheMode,
    /// Byte-stock slots per CPU, `1..=NR_OBJ_STOCK` (default
    /// [`crate::engine::NR_OBJ_STOCK`]). One slot is the kernel's obj stock before
    /// its multi-slot fix (6.16–7.0), for experiments.
    pub obj_stock_slots: usize,
    /// How long, in all, a charge over `max` waits for the reclaimer
    /// thread's passes before its group's OOM outcome (default
    /// [`DEFAULT_RECLAIM_WAIT`]); changeable later with
    /// [`Controller::set_reclaim_wait`].
    pub reclaim_wait: Duration,
    /// How many reclaimer threads the controller starts when the first
    /// reclaim or kill callback is registered (default
    /// [`DEFAULT_RECLAIMER_THREADS`], at most
    /// [`crate::engine::MAX_RECLAIMER_THREADS`]). Several, so that a callback that
    /// blocks (on a lock an allocating thread holds, say) does not hold up
    /// the other groups' reclaim; one group is served by one thread at a
    /// time and a callback never runs on two at once. 0: no thread; the
    /// embedder serves the queue with [`Controller::run_reclaimer`] (a
    /// simulator's deterministic steps), and charges do not wait.
    pub reclaimer_threads: usize,
}

/// Reclaimer threads of a controller by default.
pub const DEFAULT_RECLAIMER_THREADS: usize = 4;

/// How long a charge over `max` waits for reclaim by default: 50 ms in
/// all, enough for callbacks that evict from a cache, short enough that a
/// callback blocked on a lock the charging thread holds costs one short
/// stall before the OOM outcome.
pub const DEFAULT_RECLAIM_WAIT: Duration = Duration::from_millis(50);

impl Default for Config {
    fn default() -> Self {
        Config {
            task_cache: TaskCacheMode::default(),
            obj_stock_slots: crate::engine::NR_OBJ_STOCK,
            reclaim_wait: DEFAULT_RECLAIM_WAIT,
            reclaimer_threads: DEFAULT_RECLAIMER_THREADS,
        }
    }
}

impl Config {
    /// Sets the default task cache mode.
    pub fn task_cache(mut self, mode: TaskCacheMode) -> Self {
        self.task_cache = mode;
        self
    }

    /// Sets the byte-stock slots per CPU (clamped to `1..=NR_OBJ_STOCK`).
    pub fn obj_stock_slots(mut self, slots: usize) -> Self {
        self.obj_stock_slots = slots.clamp(1, crate::engine::NR_OBJ_STOCK);
        self
    }

    /// Sets how long a charge waits for reclaim in all.
    pub fn reclaim_wait(mut self, wait: Duration) -> Self {
        self.reclaim_wait = wait;
        self
    }

    /// Chooses whether reclaimer threads serve reclaim and kill callbacks
    /// (`true`: [`DEFAULT_RECLAIMER_THREADS`] of them, the default) or the
    /// embedder does, with [`Controller::run_reclaimer`] (`false`).
    pub fn reclaimer_thread(mut self, spawn: bool) -> Self {
        self.reclaimer_threads = if spawn { DEFAULT_RECLAIMER_THREADS } else { 0 };
        self
    }

    /// Sets the number of reclaimer threads (clamped to
    /// `0..=MAX_RECLAIMER_THREADS`; 0 as `reclaimer_thread(false)`).
    pub fn reclaimer_threads(mut self, n: usize) -> Self {
        self.reclaimer_threads = n.min(crate::engine::MAX_RECLAIMER_THREADS);
        self
    }
}

/// Counters of the engine's work, for the simulator and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct EngineCounters {
    /// Charges made through tasks' slow entry (`Task::charge`, and the
    /// allocator's charges that missed its hit path; the hit path itself
    /// does not count them).
    pub task_charges: u64,
    /// Charges that needed more than a task's byte cache.
    pub slow_charges: u64,
    /// Byte-stock slots taken over by another objcg.
    pub obj_stock_replacements: u64,
    /// Byte-stock slots drained (replacement, remote drain).
    pub obj_stock_drains: u64,
    /// Page-stock slots drained or taken over.
    pub page_stock_drains: u64,
    /// Read-modify-writes on counters shared by all CPUs.
    pub shared_atomics: u64,
    /// Task cache refreshes (after attach, or first use).
    pub refreshes: u64,
}

/// An accounting domain: a topology, a tree of groups rooted at `root`,
/// per-CPU stocks, and tasks. Several controllers can coexist; cloning
/// the handle is cheap.
///
/// The engine takes the CPU of every operation as an argument; it never
/// reads the real CPU or thread-locals, so tests and the simulator can
/// drive it on any virtual machine.
///
/// # Examples
/// ```
/// use memcg::{ChargeKind, Controller, Topology};
/// let ctrl = Controller::new(Topology::from_spec("2x2")?);
/// let g = ctrl.create("db")?;
/// let task = ctrl.new_task(&g)?;
/// let c = task.charge(3, 64, ChargeKind::Alloc)?; // on CPU 3 (node 1)
/// assert_eq!(g.current_bytes(), 64 * 4096);         // one batch of 64 pages
/// task.uncharge(3, c)?;
/// drop(task);
/// ctrl.drain_stocks();
/// assert_eq!(g.current_bytes(), 0);
/// assert!(ctrl.check_invariants().is_ok());
/// # Ok::<(), memcg::Error>(())
/// ```
#[derive(Clone)]
pub struct Controller {
    core: Arc<Core>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("topology", &self.core.topology)
            .field("task_cache", &self.core.task_cache)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A controller for `topology` with the default configuration: an
    /// accounting domain of its own, for simulators, tests and embedders of
    /// the engine. The global allocator charges only
    /// [`crate::controller()`]: groups of a controller made here are
    /// refused by [`Group::enter`], [`crate::FutureExt::in_group`] and
    /// [`Group::attach_current`] ([`Error::ForeignController`]).
    pub fn new(topology: Topology) -> Controller {
        Controller::with_config(topology, Config::default())
    }

    /// A controller for `topology` with `config`.
    pub fn with_config(topology: Topology, config: Config) -> Controller {
        match Core::new(
            topology,
            config.task_cache,
            config.obj_stock_slots,
            config.reclaim_wait,
            config.reclaimer_threads,
        ) {
            Some(core) => Controller {
                core: Arc::new(core),
            },
            // A topology has at most 1024 nodes, far below the table's
            // capacity; only a failed chunk allocation (which aborts
            // anyway) could get here.
            None => std::process::abort(),
        }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The machine layout.
    pub fn topology(&self) -> &Topology {
        &self.core.topology
    }

    /// The default task cache mode.
    pub fn task_cache_mode(&self) -> TaskCacheMode {
        self.core.task_cache
    }

    /// The root group (never limited, never removed; its usage is the
    /// total of everything accounted).
    pub fn root(&self) -> Group {
        Group::from_parts(Arc::clone(&self.core), Arc::clone(&self.core.root))
    }

    /// The group at `path` (`"tenants/a"`; `""` or `"/"` is root; a leading
    /// `/` is allowed).
    ///
    /// # Errors
    /// [`Error::InvalidPath`], [`Error::NotFound`].
    pub fn group(&self, path: &str) -> Result<Group> {
        let mut g = self.root();
        for name in components(path)? {
            g = g.child(name).map_err(|_| Error::NotFound {
                path: path.trim_matches('/').to_string(),
            })?;
        }
        Ok(g)
    }

    /// Creates the group at `path`; its parent must exist.
    ///
    /// # Errors
    /// [`Error::InvalidPath`], [`Error::NotFound`] (parent), and the errors
    /// of [`Group::create_child`].
    pub fn create(&self, path: &str) -> Result<Group> {
        let parts = components(path)?;
        let Some((last, parents)) = parts.split_last() else {
            return Err(Error::AlreadyExists {
                path: String::new(),
            });
        };
        let mut g = self.root();
        for name in parents {
            g = g.child(name)?;
        }
        g.create_child(last)
    }

    /// Creates every missing group on `path` and returns the last one, like
    /// `mkdir -p`: groups that exist already are used as they are (no
    /// error), so calling it twice returns the same group. `""` or `"/"` is
    /// root.
    ///
    /// Every name on the path is checked before anything is created, so a
    /// bad name creates nothing. If another thread removes a group on the
    /// path while this runs, the creation below it fails with
    /// [`Error::Removed`] naming that group (the groups created above it
    /// stay).
    ///
    /// # Errors
    /// [`Error::InvalidPath`] (an empty component, `a//b`),
    /// [`Error::InvalidName`] (a component [`validate_name`] refuses),
    /// [`Error::Removed`] (a group on the path was removed concurrently),
    /// [`Error::TooManyGroups`].
    ///
    /// # Examples
    /// ```
    /// use memcg::{Controller, Error, Topology};
    ///
    /// let ctrl = Controller::new(Topology::from_spec("1x1")?);
    /// let a = ctrl.create("tenants")?;
    /// let g = ctrl.create_all("tenants/kv/queries")?;
    /// assert_eq!(g.path(), "tenants/kv/queries");
    /// assert_eq!(ctrl.group("tenants/kv")?.children().len(), 1);
    ///
    /// // Existing groups are fine, and it is the same group again.
    /// let again = ctrl.create_all("/tenants/kv/queries/")?;
    /// assert_eq!(again.path(), g.path());
    /// assert_eq!(a.children().len(), 1);
    /// assert!(ctrl.create_all("")?.is_root());
    ///
    /// // A bad name anywhere on the path creates nothing.
    /// let err = ctrl.create_all("tenants/new/..").unwrap_err();
    /// assert!(matches!(err, Error::InvalidName { .. }));
    /// assert!(matches!(ctrl.group("tenants/new"), Err(Error::NotFound { .. })));
    /// let err = ctrl.create_all("tenants//x").unwrap_err();
    /// assert!(matches!(err, Error::InvalidPath { .. }));
    /// # Ok::<(), memcg::Error>(())
    /// ```
    ///
    /// [`validate_name`]: super::group::validate_name
    pub fn create_all(&self, path: &str) -> Result<Group> {
        let mut g = self.root();
        for name in components(path)? {
            g = loop {
                match g.create_child(name) {
                    Err(Error::AlreadyExists { .. }) => match g.child(name) {
                        Ok(child) => break child,
                        // Removed between the two calls: create it again.
                        Err(Error::NotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    },
                    other => break other?,
                }
            };
        }
        Ok(g)
    }

    /// Removes the group at `path`; see [`Group::remove`].
    ///
    /// # Errors
    /// As [`Controller::group`] and [`Group::remove`].
    pub fn remove(&self, path: &str) -> Result<()> {
        if components(path)?.is_empty() {
            return Err(Error::Root {
                operation: "remove",
            });
        }
        self.group(path)?.remove()
    }

    /// A new task attached to `group`, with the controller's cache mode.
    ///
    /// # Errors
    /// [`Error::ForeignController`], [`Error::Removed`],
    /// [`Error::OutOfMemory`].
    pub fn new_task(&self, group: &Group) -> Result<Task> {
        self.new_task_with_mode(group, self.core.task_cache)
    }

    /// A new task attached to `group` with the given cache mode.
    ///
    /// # Errors
    /// As [`Controller::new_task`].
    pub fn new_task_with_mode(
        &self,
        group: &Group,
        mode: crate::engine::TaskCacheMode,
    ) -> Result<Task> {
        if group.core().serial != self.core.serial {
            return Err(Error::ForeignController);
        }
        Task::new(Arc::clone(&self.core), group.memcg(), mode, false)
    }

    /// A new exempt task (the kernel-thread analogue): no cache, charges
    /// root.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`].
    pub fn new_exempt_task(&self) -> Result<Task> {
        Task::new(
            Arc::clone(&self.core),
            &self.core.root,
            self.core.task_cache,
            true,
        )
    }

    /// Uncharges a charge on `cpu` without a task (a free on a thread that
    /// has none): the bytes, with their references, go to `cpu`'s stock.
    ///
    /// # Errors
    /// [`Error::UnknownCpu`], [`Error::ForeignController`].
    pub fn uncharge(&self, cpu: usize, charge: Charge) -> Result<()> {
        self.core.topology.node_of(cpu)?;
        let objcg = charge.objcg(&self.core)?;
        self.core
            .obj_cgroup_uncharge(Some(cpu), objcg, charge.bytes(), charge.kind());
        Ok(())
    }

    /// Charges `bytes` to root's objcg of `cpu`'s node through `cpu`'s
    /// stocks, without a task. Lock-free (root is never limited, so no
    /// reclaim runs): the path for allocations that cannot use a task
    /// (re-entrant, before a thread's task exists, after it exited).
    ///
    /// # Errors
    /// [`Error::UnknownCpu`], [`Error::InvalidSize`].
    pub fn charge_root(&self, cpu: usize, bytes: u64, kind: crate::ChargeKind) -> Result<Charge> {
        let nid = self.core.topology.node_of(cpu)?;
        crate::engine::core::check_size(bytes)?;
        let Some(root) = self.core.root_objcg(nid) else {
            return Err(Error::UnknownCpu {
                cpu,
                nr_cpu_ids: self.core.topology.nr_cpu_ids(),
            });
        };
        let ctx = crate::engine::core::ChargeCtx {
            cpu: Some(cpu),
            forced: true,
            may_fail: false,
        };
        self.core.obj_cgroup_charge(ctx, root, bytes, kind)?;
        Ok(Charge::for_objcg(root, bytes, kind))
    }

    /// Changes the size of a live charge without a task; see
    /// [`Task::resize`].
    ///
    /// # Errors
    /// As [`Task::resize`].
    pub fn resize(&self, cpu: usize, charge: &mut Charge, new_bytes: u64) -> Result<()> {
        self.core.topology.node_of(cpu)?;
        crate::engine::core::check_size(new_bytes)?;
        let objcg = charge.objcg(&self.core)?;
        let old_bytes = charge.bytes();
        let ctx = crate::engine::core::ChargeCtx::direct(Some(cpu));
        if new_bytes > old_bytes {
            let delta = new_bytes - old_bytes;
            self.core.charge_bytes(ctx, objcg, delta)?;
            self.core
                .account(Some(cpu), objcg, charge.kind(), delta as i64);
        } else if new_bytes < old_bytes {
            let delta = old_bytes - new_bytes;
            self.core
                .account(Some(cpu), objcg, charge.kind(), -(delta as i64));
            self.core.refill_obj_stock(Some(cpu), objcg, delta, true);
        }
        charge.set_bytes(new_bytes);
        Ok(())
    }

    /// Drains every per-CPU stock and returns the whole pages held in the
    /// objcgs' sub-page pools. Each objcg then keeps less than a page in its
    /// pool, so a group's usage is exactly `ceil(live bytes / 4096)` pages
    /// per objcg, except for what task caches hold (each task drains its
    /// own, see [`Task::flush`]). Safe while other threads charge.
    pub fn drain_stocks(&self) {
        self.core.drain_all_stock(DrainFilter::All);
        let ids: Vec<u32> = self.core.table.entries().map(|o| o.id()).collect();
        for id in ids {
            let Some(objcg) = self.core.table.get(id) else {
                continue;
            };
            if objcg.tryget() {
                self.core.trim_pool(objcg);
                self.core.objcg_put(objcg, 1);
            }
        }
    }

    /// How long a charge over `max` waits for reclaim in all.
    pub fn reclaim_wait(&self) -> Duration {
        self.core.reclaimd.wait()
    }

    /// Sets how long a charge over `max` waits for the reclaimer thread in
    /// all before its group's OOM outcome (0: never wait). A callback that
    /// blocks on a lock the charging thread holds delays that charge by at
    /// most this.
    pub fn set_reclaim_wait(&self, wait: Duration) {
        self.core.reclaimd.set_wait(wait);
    }

    /// Waits until the reclaimer thread has served every queued request
    /// (reclaim passes and kill notifications) and is idle, or `timeout`;
    /// returns whether it got there. With no reclaimer thread, returns
    /// whether the queue is empty. For tests, and for a shutdown that wants
    /// the last notifications delivered.
    pub fn wait_reclaim_idle(&self, timeout: Duration) -> bool {
        self.core.reclaimd.wait_idle(timeout)
    }

    /// Serves every queued reclaim request and kill notification on the
    /// calling thread, and returns (for controllers made without a
    /// reclaimer thread, [`Config::reclaimer_thread`]`(false)`). Charges
    /// the callbacks make meanwhile are forced, as on the reclaimer thread.
    pub fn run_reclaimer(&self) {
        self.core.reclaimd.serve_pending();
    }

    /// Reclaimer statistics: `(passes served, charge waits that ended at
    /// their deadline, callbacks that panicked)`.
    pub fn reclaimer_counters(&self) -> (u64, u64, u64) {
        let c = &self.core.reclaimd.counters;
        (
            c.passes.load(Ordering::Relaxed),
            c.wait_timeouts.load(Ordering::Relaxed),
            c.panics.load(Ordering::Relaxed),
        )
    }

    /// Statistics of every group, root first, depth first.
    pub fn stats(&self) -> Vec<GroupStats> {
        let mut out = Vec::new();
        let mut stack = vec![self.root()];
        while let Some(g) = stack.pop() {
            out.push(g.stats());
            let mut children = g.children();
            children.reverse();
            stack.extend(children);
        }
        out
    }

    /// Counters of the engine's work so far.
    pub fn counters(&self) -> EngineCounters {
        let mut c = EngineCounters {
            refreshes: self.core.refreshes.load(Ordering::Relaxed),
            task_charges: self.core.exited_charges.load(Ordering::Relaxed),
            ..EngineCounters::default()
        };
        for s in self.core.stocks.iter() {
            let k = &s.counters;
            c.slow_charges += k.slow_charges.load(Ordering::Relaxed);
            c.obj_stock_replacements += k.obj_replacements.load(Ordering::Relaxed);
            c.obj_stock_drains += k.obj_drains.load(Ordering::Relaxed);
            c.page_stock_drains += k.page_drains.load(Ordering::Relaxed);
            c.shared_atomics += k.shared_atomics.load(Ordering::Relaxed);
        }
        for t in self.core.tasks.lock().iter() {
            c.task_charges += t.charges.load(Ordering::Relaxed);
        }
        c
    }
}

/// Splits a path into names, checking each.
fn components(path: &str) -> Result<Vec<&str>> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::InvalidPath {
            path: path.to_string(),
            reason: "a path must not contain empty components (`a//b`)",
        });
    }
    for p in &parts {
        crate::engine::group::validate_name(p)?;
    }
    Ok(parts)
}
