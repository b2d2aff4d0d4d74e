//! The task: a thread (or any sequential actor) of a controller, whose
//! charges go to its group through the seed's per-node objcg cache
//! (`objcg_cache.rs`) and its byte cache (`byte_cache.rs`), with the
//! allocator's hit path in `fast_path.rs`. This file holds the task's
//! life (`mem_cgroup_fork`, `mem_cgroup_exit`), the charge paths that
//! need more than the byte cache, overrides, fallible regions and spent
//! reservations.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::engine::byte_cache::CACHE_MAX_BYTES;
use crate::engine::core::{check_size, ChargeCtx, Core};
use crate::engine::group::Group;
use crate::engine::locked_vec;
use crate::engine::memcg::{ChargeKind, MemCgroup};
use crate::engine::obj_cgroup::ObjCgroup;
use crate::engine::reservation::{Reservation, Reserved};
use crate::engine::sys_alloc::{SysArc, SysSlice};
use crate::engine::task_shared::{
    get_u64, set_cache_bytes, set_u64, CacheSlot, TaskCache, TaskCacheMode, TaskHandle, TaskShared,
    CURRENT_OBJCG_UPDATE_FLAG,
};
use crate::error::{Error, Result};
use crate::limit::PAGE_SIZE;
use crate::sync::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Mutex, Ordering};

/// A charge of one object: which objcg it was charged to and how many
/// bytes. Uncharge it with [`Task::uncharge`] or
/// [`crate::Controller::uncharge`]; dropping it without uncharging leaks
/// the charge (like `mem::forget` of a guard).
#[derive(Debug)]
#[must_use = "a charge that is dropped stays charged; uncharge it"]
pub struct Charge {
    pub(crate) objcg: NonNull<ObjCgroup>,
    ctrl_serial: u64,
    pub(crate) bytes: u64,
    kind: ChargeKind,
}

// SAFETY: `objcg` points into the controller's type-stable objcg table,
// which is shared by all threads; a `Charge` only reads it through the
// controller that owns it (checked with `ctrl_serial`).
unsafe impl Send for Charge {}
// SAFETY: as above; `&Charge` gives access to plain data only.
unsafe impl Sync for Charge {}

impl Charge {
    /// Bytes charged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Kind of the charge.
    pub fn kind(&self) -> ChargeKind {
        self.kind
    }

    /// The objcg as an opaque word, to store beside an object (the
    /// allocator adapter's trailer). Rebuild with [`Charge::from_raw`].
    pub fn into_raw(self) -> usize {
        self.objcg.as_ptr() as usize
    }

    /// Rebuilds a charge from [`Charge::into_raw`].
    ///
    /// # Safety
    /// `raw` was returned by `into_raw` of a charge of `bytes` bytes of
    /// `kind` made by `controller`, which is still alive, and the charge
    /// is rebuilt at most once.
    pub unsafe fn from_raw(
        raw: usize,
        bytes: u64,
        kind: ChargeKind,
        controller: &crate::Controller,
    ) -> Charge {
        Charge {
            // SAFETY: `raw` came from a `NonNull` (caller's guarantee).
            objcg: unsafe { NonNull::new_unchecked(raw as *mut ObjCgroup) },
            ctrl_serial: controller.core().serial,
            bytes,
            kind,
        }
    }

    /// The objcg, once the caller checked the serial against a live
    /// controller (whose table the pointer is in).
    pub(crate) fn objcg<'a>(&self, core: &'a Core) -> Result<&'a ObjCgroup> {
        if self.ctrl_serial != core.serial {
            return Err(Error::ForeignController);
        }
        // SAFETY: the serial matches, so the pointer is into `core`'s
        // table, whose entries live as long as `core` (type-stable).
        Ok(unsafe { &*self.objcg.as_ptr() })
    }

    pub(crate) fn for_objcg(objcg: &ObjCgroup, bytes: u64, kind: ChargeKind) -> Charge {
        Charge::new(objcg, bytes, kind)
    }

    pub(crate) fn set_bytes(&mut self, bytes: u64) {
        self.bytes = bytes;
    }

    fn new(objcg: &ObjCgroup, bytes: u64, kind: ChargeKind) -> Charge {
        Charge {
            objcg: NonNull::from(objcg),
            ctrl_serial: objcg.ctrl_serial(),
            bytes,
            kind,
        }
    }
}

/// A task of a controller: a thread (or any sequential actor) whose
/// charges go to its group, through its per-node objcg cache.
///
/// A `Task` is driven by one thread at a time (it is `Send`, not `Sync`);
/// other threads move it between groups through its [`TaskHandle`].
/// Every charging method takes the CPU the task runs on, explicitly.
pub struct Task {
    pub(crate) shared: SysArc<TaskShared>,
    pub(crate) core: Arc<Core>,
    /// Whether `active` holds an override (a cheap check for the hot path).
    pub(crate) has_active: Cell<bool>,
    pub(crate) active: RefCell<Option<Arc<MemCgroup>>>,
    /// Nesting depth of fallible regions ([`Task::enter_fallible`]).
    fallible_depth: Cell<u32>,
    /// Whether `spend` holds a reservation (a cheap check).
    pub(crate) spending: Cell<bool>,
    /// The reservation this task's allocations are paid from.
    spend: RefCell<Option<SysArc<Reserved>>>,
    pub(crate) exited: Cell<bool>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("mode", &self.shared.mode)
            .field("exempt", &self.is_exempt())
            .field("exited", &self.exited.get())
            .finish_non_exhaustive()
    }
}

impl Task {
    /// `mem_cgroup_fork`.
    pub(crate) fn new(
        core: Arc<Core>,
        group: &Arc<MemCgroup>,
        mode: TaskCacheMode,
        exempt: bool,
    ) -> Result<Task> {
        if !group.try_pin_task() {
            return Err(Error::Removed {
                path: group.path.to_string(),
            });
        }
        let nr_entries = match mode {
            TaskCacheMode::PerNode => core.topology.nr_node_ids(),
            TaskCacheMode::Single => 1,
        };
        let array = if exempt {
            None
        } else {
            SysSlice::try_alloc(nr_entries, || {
                AtomicPtr::<ObjCgroup>::new(std::ptr::null_mut())
            })
        };
        let word = array.map_or(0, |p| p.as_ptr() as usize | CURRENT_OBJCG_UPDATE_FLAG);
        let shared = SysArc::try_new(TaskShared {
            objcgs: AtomicUsize::new(word),
            nr_entries,
            mode,
            exempt: AtomicBool::new(exempt),
            group: Mutex::new(Some(Arc::clone(group))),
            cache: CacheSlot::new(TaskCache::new_empty()),
            charges: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            ctrl_serial: core.serial,
            owner_state: AtomicUsize::new(0),
            owner_task: AtomicUsize::new(0),
        });
        let Some(shared) = shared else {
            if let Some(p) = array {
                // SAFETY: made just above with this length, never shared.
                unsafe { SysSlice::free(p, nr_entries) };
            }
            group.unpin_task();
            return Err(Error::OutOfMemory { what: "a task" });
        };
        locked_vec::push(&core.tasks, shared.clone());
        Ok(Task {
            shared,
            core,
            has_active: Cell::new(false),
            active: RefCell::new(None),
            fallible_depth: Cell::new(0),
            spending: Cell::new(false),
            spend: RefCell::new(None),
            exited: Cell::new(false),
        })
    }

    /// A handle other threads use to attach this task to a group.
    pub fn handle(&self) -> TaskHandle {
        TaskHandle {
            shared: self.shared.clone(),
        }
    }

    /// The task's cache mode.
    pub fn mode(&self) -> TaskCacheMode {
        self.shared.mode
    }

    /// Whether the task is exempt (charges root, like a kernel thread).
    pub fn is_exempt(&self) -> bool {
        self.shared.exempt.load(Ordering::Relaxed)
    }

    /// Whether [`Task::exit`] ran.
    pub fn has_exited(&self) -> bool {
        self.exited.get()
    }

    /// Marks the task exempt (or not): its next charge refreshes the cache,
    /// and while exempt it charges root. A task made exempt with
    /// [`crate::Controller::new_exempt_task`] has no per-node array (like a
    /// kernel thread), so it keeps charging root even after
    /// `set_exempt(false)`.
    pub fn set_exempt(&self, exempt: bool) {
        self.shared.exempt.store(exempt, Ordering::Relaxed);
        // AcqRel: as an attach's OR (`objcg_cache` module doc; no loom
        // model changes exemption).
        self.shared
            .objcgs
            .fetch_or(CURRENT_OBJCG_UPDATE_FLAG, Ordering::AcqRel);
        self.clear_fast_key();
    }

    /// The group this task's charges go to now: the active override
    /// ([`Task::enter`]) if one is entered, else the attached group
    /// (`None` after exit).
    pub fn current_group(&self) -> Option<Group> {
        if let Some(m) = self.active.borrow().as_ref() {
            return Some(Group::from_parts(Arc::clone(&self.core), Arc::clone(m)));
        }
        self.group()
    }

    /// The group the task is attached to (`None` after exit).
    pub fn group(&self) -> Option<Group> {
        let g = self.shared.group.lock().clone()?;
        Some(Group::from_parts(Arc::clone(&self.core), g))
    }

    /// How many times this task refreshed its cache.
    pub fn refreshes(&self) -> u64 {
        self.shared.refreshes.load(Ordering::Relaxed)
    }

    /// Whether the seed's update flag is set (the cache is stale).
    pub fn is_stale(&self) -> bool {
        self.shared.objcgs.load(Ordering::Relaxed) & CURRENT_OBJCG_UPDATE_FLAG != 0
    }

    #[inline(always)]
    fn node_of(&self, cpu: usize) -> Result<usize> {
        match self.core.topology.node_of_cpu(cpu) {
            Some(nid) => Ok(nid),
            None => Err(self.unknown_cpu(cpu)),
        }
    }

    #[cold]
    fn unknown_cpu(&self, cpu: usize) -> Error {
        Error::UnknownCpu {
            cpu,
            nr_cpu_ids: self.core.topology.nr_cpu_ids(),
        }
    }

    /// Charges `bytes` of `kind` on `cpu` to the task's group (or the
    /// active override, or the reservation being spent), returning the
    /// charge to uncharge later. This is what an allocation does: over
    /// `max`, after reclaim, the outcome is the over-limit group's
    /// [`crate::OomPolicy`] (the default kills the group and lets the charge
    /// through), unless the task is in a fallible region
    /// ([`Task::enter_fallible`]), where it fails.
    ///
    /// # Errors
    /// [`Error::UnknownCpu`], [`Error::InvalidSize`] for 0 or more than
    /// 2^48 bytes, [`Error::Charge`] when a `max` limit refuses after
    /// reclaim (policy `fail`, or a fallible region).
    #[inline(always)]
    pub fn charge(&self, cpu: usize, bytes: u64, kind: ChargeKind) -> Result<Charge> {
        let nid = self.node_of(cpu)?;
        check_size(bytes)?;
        if self.spending.get() {
            if let Some(c) = self.charge_spent(cpu, bytes, kind) {
                return c;
            }
        }
        let pinned = self.pin(nid);
        let objcg = pinned.objcg;
        if self.shared.cache.objcg.load(Ordering::Relaxed) == objcg.id()
            && self.take_cached(objcg, bytes, kind)
        {
            self.unpin(pinned);
            return Ok(Charge::new(objcg, bytes, kind));
        }
        let result = self.charge_slow(cpu, objcg, bytes, kind);
        self.unpin(pinned);
        result
    }

    fn ctx(&self, cpu: Option<usize>) -> ChargeCtx {
        ChargeCtx {
            cpu,
            forced: false,
            may_fail: self.fallible_depth.get() > 0,
        }
    }

    /// A charge paid from the reservation being spent: what it has left,
    /// and the rest charged to the same objcg. `None` when it is spent out
    /// (or `kind` is not an allocation).
    #[cold]
    fn charge_spent(&self, cpu: usize, bytes: u64, kind: ChargeKind) -> Option<Result<Charge>> {
        if kind != ChargeKind::Alloc {
            return None;
        }
        let spend = self.spend.borrow();
        let r = spend.as_ref()?;
        let taken = r.take_up_to(bytes);
        if taken == 0 {
            return None;
        }
        let objcg = r.objcg();
        if taken < bytes {
            let rest = bytes - taken;
            if let Err(e) = self.core.charge_bytes(self.ctx(Some(cpu)), objcg, rest) {
                r.give_back(taken);
                return Some(Err(e.into()));
            }
            self.core.account(None, objcg, kind, rest as i64);
        }
        // The reservation's bytes came with their references.
        Some(Ok(Charge::new(objcg, bytes, kind)))
    }

    #[cold]
    #[inline(never)]
    fn charge_slow(
        &self,
        cpu: usize,
        objcg: &ObjCgroup,
        bytes: u64,
        kind: ChargeKind,
    ) -> Result<Charge> {
        let core = &*self.core;
        let cache = &self.shared.cache;
        if let Some(s) = core.stock(cpu) {
            s.counters.slow_charges.fetch_add(1, Ordering::Relaxed);
        }
        set_u64(&self.shared.charges, get_u64(&self.shared.charges) + 1);
        if self.exited.get() {
            core.obj_cgroup_charge(self.ctx(Some(cpu)), objcg, bytes, kind)?;
            return Ok(Charge::new(objcg, bytes, kind));
        }
        if cache.objcg.load(Ordering::Relaxed) != objcg.id() {
            self.switch_cache(Some(cpu), objcg);
        }
        let have = get_u64(&cache.bytes);
        // A short cache refills from the CPU's stock in one take, keeping up
        // to `CACHE_MAX_BYTES` after this charge, so that a task allocating
        // what others free (a producer) does not come back for every
        // object.
        let taken = || {
            core.stock(cpu)
                .and_then(|s| s.take_obj(objcg.id(), bytes - have, bytes - have + CACHE_MAX_BYTES))
        };
        if have >= bytes {
            set_cache_bytes(cache, have - bytes);
        } else if let Some(t) = taken() {
            set_cache_bytes(cache, have + t.bytes - bytes);
        } else {
            // A reference of our own across the page charge, which may
            // drain stocks and wait for the reclaimer (the cache's entry
            // holds one too; this one does not depend on it).
            objcg.get(1);
            let charged = core.charge_pages_for_bytes(self.ctx(Some(cpu)), objcg, bytes);
            core.objcg_put(objcg, 1);
            let remainder = charged?;
            // No user code runs inside a charge, so the cache still holds
            // `objcg`; checked all the same, since a stale remainder in the
            // cache would be charged to the wrong objcg.
            if cache.objcg.load(Ordering::Relaxed) == objcg.id() {
                let mut cached = get_u64(&cache.bytes) + remainder;
                // Topped up to `CACHE_MAX_BYTES` with whole pages from the
                // CPU's page stock when it has them: pages its batch
                // already charged (no limit applies to them), so that a
                // task whose memory grows in small objects comes back once
                // per few pages, not once per page. Only for an object
                // smaller than a page: a task that allocates and frees
                // large blocks in turn would move the extra pages into
                // its cache and, at the free, back to the counters, for
                // each block (`scripts/workloads-instructions.sh`, regex
                // under `MemcgMimalloc`: 1.026x bare mimalloc with the
                // top-up for every size, 1.003x without it or with it for
                // small objects only). Nor near a limit
                // (`Core::charge_pages_from_stock`).
                let room_pages = CACHE_MAX_BYTES.saturating_sub(cached) / PAGE_SIZE;
                if bytes < PAGE_SIZE && core.charge_pages_from_stock(cpu, objcg, room_pages) {
                    cached += room_pages * PAGE_SIZE;
                }
                set_cache_bytes(cache, cached);
                // The cache held up to `CACHE_MAX_BYTES` before (it is
                // short of this charge, not empty): two page charges in a
                // row would otherwise pile up their remainders past
                // `TASK_CACHE_BOUND_BYTES` (the fuzzer's check found 20,605
                // bytes after an alloc of 107,418).
                if cached > CACHE_MAX_BYTES {
                    self.trim_cache(cpu, objcg);
                }
            } else {
                core.refill_obj_stock(Some(cpu), objcg, remainder, false);
            }
        }
        // The object's bytes came with their references.
        if cache.objcg.load(Ordering::Relaxed) == objcg.id() {
            self.pend(objcg, kind, bytes as i64);
        } else {
            core.account(Some(cpu), objcg, kind, bytes as i64);
        }
        Ok(Charge::new(objcg, bytes, kind))
    }

    /// Returns the byte cache to `cpu`'s stock and flushes statistics (a
    /// drain of this task's level-1 cache; tasks drain only themselves).
    ///
    /// # Errors
    /// [`Error::UnknownCpu`].
    pub fn flush(&self, cpu: usize) -> Result<()> {
        self.node_of(cpu)?;
        self.drain_cache(Some(cpu));
        Ok(())
    }

    /// Uncharges a charge made by any task of this controller, on `cpu`.
    ///
    /// # Errors
    /// [`Error::UnknownCpu`]; [`Error::ForeignController`] when the charge
    /// came from another controller (it is then returned untouched by
    /// dropping it, which leaks it).
    #[inline(always)]
    pub fn uncharge(&self, cpu: usize, charge: Charge) -> Result<()> {
        self.node_of(cpu)?;
        let objcg = charge.objcg(&self.core)?;
        let cache = &self.shared.cache;
        if !self.exited.get() && cache.objcg.load(Ordering::Relaxed) == objcg.id() {
            let bytes = get_u64(&cache.bytes) + charge.bytes;
            set_cache_bytes(cache, bytes);
            self.pend(objcg, charge.kind, -(charge.bytes as i64));
            if bytes > CACHE_MAX_BYTES {
                self.trim_cache(cpu, objcg);
            }
            return Ok(());
        }
        if !self.exited.get() && charge.kind == ChargeKind::Alloc {
            self.uncharge_foreign(cpu, objcg, charge.bytes);
            return Ok(());
        }
        self.core
            .obj_cgroup_uncharge(Some(cpu), objcg, charge.bytes, charge.kind);
        Ok(())
    }

    /// Changes the size of a live charge to `new_bytes` (a `realloc`): only
    /// the difference is charged or uncharged, to the charge's own objcg,
    /// whichever group the task is in now, the bytes with their
    /// references.
    ///
    /// # Errors
    /// [`Error::UnknownCpu`], [`Error::InvalidSize`],
    /// [`Error::ForeignController`], [`Error::Charge`] when growing is
    /// refused (the charge keeps its size).
    pub fn resize(&self, cpu: usize, charge: &mut Charge, new_bytes: u64) -> Result<()> {
        self.node_of(cpu)?;
        check_size(new_bytes)?;
        let objcg = charge.objcg(&self.core)?;
        let old_bytes = charge.bytes;
        let cache = &self.shared.cache;
        let cached = !self.exited.get() && cache.objcg.load(Ordering::Relaxed) == objcg.id();
        if new_bytes > old_bytes {
            let delta = new_bytes - old_bytes;
            if self.spending.get() {
                if let Some(r) = self.resize_spent(cpu, objcg, charge.kind, delta) {
                    r?;
                    charge.bytes = new_bytes;
                    return Ok(());
                }
            }
            let have = get_u64(&cache.bytes);
            if cached && have >= delta {
                set_cache_bytes(cache, have - delta);
            } else {
                self.core.charge_bytes(self.ctx(Some(cpu)), objcg, delta)?;
            }
            self.account_delta(objcg, charge.kind, delta as i64);
        } else if new_bytes < old_bytes {
            let delta = old_bytes - new_bytes;
            self.account_delta(objcg, charge.kind, -(delta as i64));
            if cached {
                let bytes = get_u64(&cache.bytes) + delta;
                set_cache_bytes(cache, bytes);
                if bytes > CACHE_MAX_BYTES {
                    self.trim_cache(cpu, objcg);
                }
            } else {
                self.core.refill_obj_stock(Some(cpu), objcg, delta, true);
            }
        }
        charge.bytes = new_bytes;
        Ok(())
    }

    /// Live-byte delta for `objcg`: batched when it is the cached objcg.
    fn account_delta(&self, objcg: &ObjCgroup, kind: ChargeKind, bytes: i64) {
        if !self.exited.get() && self.shared.cache.objcg.load(Ordering::Relaxed) == objcg.id() {
            self.pend(objcg, kind, bytes);
        } else {
            self.core.account(None, objcg, kind, bytes);
        }
    }

    /// Growth of a live charge of `objcg` paid from the reservation being
    /// spent, when it is that objcg's: what it has left, the rest charged.
    /// `None` when it does not apply (another objcg, spent out).
    #[cold]
    fn resize_spent(
        &self,
        cpu: usize,
        objcg: &ObjCgroup,
        kind: ChargeKind,
        delta: u64,
    ) -> Option<Result<()>> {
        if kind != ChargeKind::Alloc {
            return None;
        }
        let spend = self.spend.borrow();
        let r = spend.as_ref().filter(|r| std::ptr::eq(r.objcg(), objcg))?;
        let taken = r.take_up_to(delta);
        if taken == 0 {
            return None;
        }
        if taken < delta {
            let rest = delta - taken;
            if let Err(e) = self.core.charge_bytes(self.ctx(Some(cpu)), objcg, rest) {
                r.give_back(taken);
                return Some(Err(e.into()));
            }
            self.core.account(None, objcg, kind, rest as i64);
        }
        Some(Ok(()))
    }

    /// Starts a fallible region: until the guard drops, charges through
    /// this task that a `max` refuses after reclaim fail with
    /// [`Error::Charge`] (the allocator returns null) whatever the group's
    /// OOM policy, and count `oom`, not `oom_kill` (the
    /// kernel's may-fail allocations). Regions nest.
    pub fn enter_fallible(&self) -> FallibleGuard<'_> {
        self.fallible_depth.set(self.fallible_depth.get() + 1);
        FallibleGuard { task: self }
    }

    /// Whether the task is in a fallible region.
    pub fn is_fallible(&self) -> bool {
        self.fallible_depth.get() > 0
    }

    pub(crate) fn fallible_depth(&self) -> u32 {
        self.fallible_depth.get()
    }

    pub(crate) fn set_fallible_depth(&self, depth: u32) -> u32 {
        self.fallible_depth.replace(depth)
    }

    /// Pays this task's allocations from `reservation` until the guard
    /// drops: a charge of [`ChargeKind::Alloc`] takes its bytes from the
    /// reservation while it has them (see [`Reservation`]'s "Spending"),
    /// and so does the growth of an object charged that way. Guards nest;
    /// each restores the reservation spent before it.
    ///
    /// # Errors
    /// [`Error::ForeignController`].
    pub fn spend<'a>(&'a self, reservation: &'a mut Reservation) -> Result<SpendGuard<'a>> {
        if reservation.inner.core().serial != self.core.serial {
            return Err(Error::ForeignController);
        }
        let previous = self.swap_spend(Some(reservation.inner.clone()));
        Ok(SpendGuard {
            task: self,
            previous,
            _reservation: std::marker::PhantomData,
        })
    }

    /// Replaces the reservation spent (for the runtime's guards).
    pub(crate) fn swap_spend(&self, r: Option<SysArc<Reserved>>) -> Option<SysArc<Reserved>> {
        self.clear_fast_key();
        self.spending.set(r.is_some());
        self.spend.replace(r)
    }

    /// Replaces the active override (for the runtime's scopes).
    pub(crate) fn swap_active(&self, group: Option<Arc<MemCgroup>>) -> Option<Arc<MemCgroup>> {
        self.clear_fast_key();
        self.has_active.set(group.is_some());
        self.active.replace(group)
    }

    /// Reserves `bytes` for the task's group (or override) on `cpu`'s node;
    /// see [`Reservation`].
    ///
    /// # Errors
    /// As [`Task::charge`].
    pub fn try_charge(&self, cpu: usize, bytes: u64) -> Result<Reservation> {
        let nid = self.node_of(cpu)?;
        let pinned = self.pin(nid);
        let ctx = ChargeCtx::direct(None);
        let r = Reservation::new(Arc::clone(&self.core), pinned.objcg, bytes, ctx);
        self.unpin(pinned);
        r
    }

    /// Makes `group` the active group of this task until the guard drops
    /// (the kernel's `set_active_memcg`). Guards nest; each restores the
    /// group active before it. Drop them in reverse order of creation.
    ///
    /// # Errors
    /// [`Error::ForeignController`], [`Error::Removed`].
    pub fn enter(&self, group: &Group) -> Result<ActiveGuard<'_>> {
        if group.core().serial != self.core.serial {
            return Err(Error::ForeignController);
        }
        if !group.memcg().is_online() {
            return Err(Error::Removed {
                path: group.path().to_string(),
            });
        }
        let previous = self.active.replace(Some(Arc::clone(group.memcg())));
        self.clear_fast_key();
        self.has_active.set(true);
        Ok(ActiveGuard {
            task: self,
            previous,
        })
    }

    /// Whether this task's charges would be forced now because its group
    /// (or the override's) or an ancestor was killed.
    pub fn is_killed(&self) -> bool {
        let active = self.active.borrow();
        if let Some(m) = active.as_ref() {
            return m.killed_ancestor().is_some();
        }
        drop(active);
        self.shared
            .group
            .lock()
            .as_ref()
            .is_some_and(|g| g.killed_ancestor().is_some())
    }

    /// Records where the runtime keeps this task (its thread's state, read
    /// by `runtime::thread::busy_at`, and the task's own address), for the
    /// fork handlers.
    pub(crate) fn set_owner(&self, state_addr: usize, task_addr: usize) {
        // Release: the fork handlers read them under the task-list lock,
        // which orders them anyway; Release documents the publication.
        self.shared.owner_state.store(state_addr, Ordering::Release);
        self.shared.owner_task.store(task_addr, Ordering::Release);
    }

    /// In a forked child, for a task whose thread did not survive the
    /// fork: ends its scope override and exits it (its caches go back, its
    /// references and its group's pin are dropped, it leaves the task
    /// list), as the thread's exit would have.
    pub(crate) fn retire_in_child(&mut self) {
        drop(self.active.replace(None));
        self.has_active.set(false);
        self.exit();
    }

    /// `mem_cgroup_exit`: returns the byte cache, drops every per-node
    /// reference, frees the array and leaves null. Later charges through
    /// this task go to root. Idempotent.
    pub fn exit(&mut self) {
        if self.exited.get() {
            return;
        }
        self.drain_cache(None);
        drop(self.swap_spend(None));
        self.exited.set(true);
        let shared = &*self.shared;
        {
            let mut tasks = self.core.tasks.lock();
            // AcqRel (and the entries' swaps below): see `objcg_cache`'s
            // module doc (orderings and loom).
            let tagged = shared.objcgs.swap(0, Ordering::AcqRel);
            let untagged = tagged & !CURRENT_OBJCG_UPDATE_FLAG;
            // SAFETY: we are the owning task and hold the task-list lock.
            if let Some(entries) = unsafe { shared.entries(untagged) } {
                for e in entries {
                    if let Some(o) = NonNull::new(e.swap(std::ptr::null_mut(), Ordering::AcqRel)) {
                        // SAFETY: entries point into the type-stable table.
                        self.core.objcg_put(unsafe { o.as_ref() }, 1);
                    }
                }
                if let Some(p) = NonNull::new(untagged as *mut AtomicPtr<ObjCgroup>) {
                    // SAFETY: the array was made in `new` with `nr_entries`
                    // entries; the word is now 0, so nobody reaches it again.
                    unsafe { SysSlice::free(p, shared.nr_entries) };
                }
            }
            tasks.retain(|t| !SysArc::ptr_eq(t, &self.shared));
            self.core
                .exited_charges
                .fetch_add(get_u64(&shared.charges), Ordering::Relaxed);
        }
        if let Some(g) = shared.group.lock().take() {
            g.unpin_task();
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.exit();
    }
}

/// Restores the previously active group when dropped; see [`Task::enter`].
#[must_use = "the override ends when the guard is dropped"]
pub struct ActiveGuard<'a> {
    task: &'a Task,
    previous: Option<Arc<MemCgroup>>,
}

impl std::fmt::Debug for ActiveGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveGuard").finish_non_exhaustive()
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        self.task.clear_fast_key();
        self.task.has_active.set(previous.is_some());
        self.task.active.replace(previous);
    }
}

/// Ends a fallible region when dropped; see [`Task::enter_fallible`].
#[must_use = "the fallible region ends when the guard is dropped"]
pub struct FallibleGuard<'a> {
    task: &'a Task,
}

impl std::fmt::Debug for FallibleGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallibleGuard").finish_non_exhaustive()
    }
}

impl Drop for FallibleGuard<'_> {
    fn drop(&mut self) {
        let d = self.task.fallible_depth.get();
        self.task.fallible_depth.set(d.saturating_sub(1));
    }
}

/// Stops paying allocations from a reservation when dropped; see
/// [`Task::spend`].
#[must_use = "spending ends when the guard is dropped"]
pub struct SpendGuard<'a> {
    task: &'a Task,
    previous: Option<SysArc<Reserved>>,
    _reservation: std::marker::PhantomData<&'a mut Reservation>,
}

impl std::fmt::Debug for SpendGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpendGuard").finish_non_exhaustive()
    }
}

impl Drop for SpendGuard<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        drop(self.task.swap_spend(previous));
    }
}
