//! The task: a thread's per-node objcg cache (THE SEED) and its byte cache.
//!
//! # The seed protocol (`task->objcgs`)
//! [`TaskShared::objcgs`] is a tagged word: null, or a pointer to an array
//! of one atomic objcg pointer per node, with bit 0
//! ([`CURRENT_OBJCG_UPDATE_FLAG`]) meaning "stale, refresh before use".
//! - [`Task::new`] (`mem_cgroup_fork`): the array is allocated eagerly, from
//!   the system allocator (never through accounting), and tagged stale, so
//!   the first charge fills it and no refresh ever allocates. Exempt tasks
//!   (the kthread analogue) and failed allocations get null: they charge
//!   root.
//! - [`Task::obj_cgroup`] (`current_obj_cgroup`): an active override wins;
//!   otherwise read the word, refresh if flagged, return `objcgs[nid]`, or
//!   root's objcg of `nid` when the array or the entry is null.
//! - `refresh` (`current_objcg_update`): loop { read the word; clear the
//!   flag with a CAS (retry if it changed); if there is an array, exchange
//!   in a fresh reference for every node, found by walking up from the
//!   task's group to the first objcg that can be `tryget`, dropping the
//!   stale ones; finish when the flag is still clear, else repeat }.
//! - [`crate::Group::attach`] (`mem_cgroup_kmem_attach`), from any thread:
//!   publish the new group, then set the flag with one atomic OR.
//! - [`Task::exit`] (`mem_cgroup_exit`): drop every reference, free the
//!   array, store null; later charges go to root.
//!
//! Departure from the seed as posted: the patch reads the tagged word,
//! refreshes, and then compare-and-swaps *the word it read* to the
//! flag-free pointer. When the flag was already set on entry, an attach
//! that lands after the refresh read the group sets a bit that is already
//! set, the word does not change, the CAS succeeds, and that attach is
//! lost until the next one. Clearing the flag first (as the pre-seed
//! `xchg` did) and checking it again at the end closes the window: a flag
//! set after the clear survives to the next lookup. The loom model
//! `loom_task` checks this.
//!
//! # The byte cache (DESIGN §4.4 level 1)
//! Above the per-CPU stocks each task caches, for one objcg, pre-charged
//! bytes, reference credit and pending statistics. A hit (charge or
//! uncharge of an object of the cached objcg) touches only this task's
//! fields: no atomic read-modify-write, no shared cache line. The fields
//! are atomics written only by the owner with plain loads and stores, so
//! that the checkers on another thread can read them.
//!
//! # The pre-seed variant
//! With [`TaskCacheMode::Single`] the array has one entry, filled for the
//! node the task runs on when it refreshes, and refreshed only after an
//! attach: a task that moves to another node keeps charging its old
//! node's objcg.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::engine::core::{ChargeCtx, Core};
use crate::engine::memcg::{ChargeKind, MemCgroup, NR_KINDS};
use crate::engine::obj_cgroup::ObjCgroup;
use crate::engine::reservation::Reservation;
use crate::engine::sys_alloc::{SysArc, SysSlice};
use crate::engine::{Group, TaskCacheMode};
use crate::error::{Error, Result};
use crate::limit::PAGE_SIZE;
use crate::sync::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering,
};

/// Bit 0 of the task's tagged word: the cache is stale.
pub const CURRENT_OBJCG_UPDATE_FLAG: usize = 1;

/// References a task cache takes from its objcg at once.
const REF_BATCH: u64 = 64;
/// Bytes a task cache keeps before handing the rest to the CPU stock: 4
/// pages, so that alternating charges and frees of objects up to about 3
/// pages stay in the cache.
const CACHE_MAX_BYTES: u64 = 4 * PAGE_SIZE;
/// Pending statistics flushed when they exceed this many bytes.
const STAT_FLUSH_BYTES: i64 = 4 * PAGE_SIZE as i64;
/// A task's byte cache holds less than this many bytes at any time (part
/// of the error bound of `memory.current`).
pub const TASK_CACHE_BOUND_BYTES: u64 = CACHE_MAX_BYTES + PAGE_SIZE;
/// Largest single charge (keeps page arithmetic far from overflow).
pub(crate) const MAX_CHARGE_BYTES: u64 = 1 << 48;

/// A task's level-1 cache. Written only by the owning task.
#[derive(Debug)]
pub(crate) struct TaskCache {
    /// Id of the cached objcg, 0 for none. The cache holds one reference.
    pub(crate) objcg: AtomicU32,
    /// Address of the cached objcg (0 for none), so the hot paths compare
    /// pointers without touching the objcg's cache line.
    pub(crate) objcg_addr: AtomicUsize,
    pub(crate) bytes: AtomicU64,
    pub(crate) refs: AtomicU64,
    pub(crate) pending_bytes: [AtomicI64; NR_KINDS],
    /// Reference credit at the last statistics flush, adjusted whenever
    /// credit changes for a reason other than an object: every object
    /// charged from the cache takes one credit and every object returned
    /// gives one back, so `refs_base - refs` is the net number of objects
    /// charged since the flush (not yet in the objcg's `live_objects`).
    pub(crate) refs_base: AtomicI64,
    pub(crate) charges: AtomicU64,
    /// The key of the allocator's fast path ([`Task::charge_fast`]), 0 for
    /// none: while it is set, the cached objcg is the one the task charges
    /// for that key's node, with no override active. Cleared by everything
    /// that could change that: a refresh, a drain or switch of the cache,
    /// an override, exemption, and an attach from any thread (after it sets
    /// the update flag; see `Task::arm_fast_key`).
    pub(crate) fast_key: AtomicU64,
}

/// Adds `bytes` to the pending statistics of `kind` (single writer) and
/// returns the new value; no flush (see [`Task::charge_fast`]).
#[inline(always)]
fn add_pending(cache: &TaskCache, kind: ChargeKind, bytes: i64) -> i64 {
    let slot = &cache.pending_bytes[kind.index()];
    let v = slot.load(Ordering::Relaxed) + bytes;
    slot.store(v, Ordering::Relaxed);
    v
}

/// Plain read-modify-write by the single writer.
#[inline(always)]
fn set_u64(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed)
}
#[inline(always)]
fn get_u64(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The part of a task other threads may touch (attach, checkers).
#[derive(Debug)]
pub(crate) struct TaskShared {
    /// The seed's tagged word (`task->objcgs`).
    pub(crate) objcgs: AtomicUsize,
    /// Entries of the array (node count, or 1 in single mode).
    pub(crate) nr_entries: usize,
    pub(crate) mode: TaskCacheMode,
    /// Exempt tasks charge root (the kthread analogue).
    pub(crate) exempt: AtomicBool,
    /// The attached group (`None` after exit).
    pub(crate) group: Mutex<Option<Arc<MemCgroup>>>,
    /// Written on every charge: on cache lines of its own, so two tasks'
    /// caches never share a line.
    pub(crate) cache: crossbeam_utils::CachePadded<TaskCache>,
    pub(crate) refreshes: AtomicU64,
    pub(crate) ctrl_serial: u64,
}

impl TaskShared {
    /// The array behind a tagged word.
    ///
    /// # Safety
    /// The array must stay allocated for `'a`: the caller is the owning
    /// task (only it frees the array, in `exit`), or holds the controller's
    /// task-list lock (which `exit` takes to free it).
    pub(crate) unsafe fn entries<'a>(&self, tagged: usize) -> Option<&'a [AtomicPtr<ObjCgroup>]> {
        let ptr = NonNull::new((tagged & !CURRENT_OBJCG_UPDATE_FLAG) as *mut AtomicPtr<ObjCgroup>)?;
        // SAFETY: non-null untagged words are arrays of `nr_entries` made by
        // `SysSlice::try_alloc` in `Task::new`; liveness is the caller's.
        Some(unsafe { SysSlice::as_slice(ptr, self.nr_entries) })
    }
}

/// A charge of one object: which objcg it was charged to and how many
/// bytes. Uncharge it with [`Task::uncharge`] or
/// [`crate::Controller::uncharge`]; dropping it without uncharging leaks
/// the charge (like `mem::forget` of a guard).
#[derive(Debug)]
#[must_use = "a charge that is dropped stays charged; uncharge it"]
pub struct Charge {
    objcg: NonNull<ObjCgroup>,
    ctrl_serial: u64,
    bytes: u64,
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
    shared: SysArc<TaskShared>,
    core: Arc<Core>,
    /// Whether `active` holds an override (a cheap check for the hot path).
    has_active: Cell<bool>,
    active: RefCell<Option<Arc<MemCgroup>>>,
    in_reclaim: Cell<bool>,
    exited: Cell<bool>,
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

/// A handle through which any thread can attach a task to a group.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    pub(crate) shared: SysArc<TaskShared>,
}

impl TaskHandle {
    /// Whether both handles name the same task.
    pub fn same_task(&self, other: &TaskHandle) -> bool {
        SysArc::ptr_eq(&self.shared, &other.shared)
    }
}

/// An objcg to charge, with or without a temporary reference.
struct Pinned<'a> {
    objcg: &'a ObjCgroup,
    temporary: bool,
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
            cache: crossbeam_utils::CachePadded::new(TaskCache {
                objcg: AtomicU32::new(0),
                objcg_addr: AtomicUsize::new(0),
                bytes: AtomicU64::new(0),
                refs: AtomicU64::new(0),
                pending_bytes: [AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0)],
                refs_base: AtomicI64::new(0),
                charges: AtomicU64::new(0),
                fast_key: AtomicU64::new(0),
            }),
            refreshes: AtomicU64::new(0),
            ctrl_serial: core.serial,
        });
        let Some(shared) = shared else {
            if let Some(p) = array {
                // SAFETY: made just above with this length, never shared.
                unsafe { SysSlice::free(p, nr_entries) };
            }
            group.unpin_task();
            return Err(Error::OutOfMemory { what: "a task" });
        };
        core.tasks.lock().push(shared.clone());
        Ok(Task {
            shared,
            core,
            has_active: Cell::new(false),
            active: RefCell::new(None),
            in_reclaim: Cell::new(false),
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
        self.shared
            .objcgs
            .fetch_or(CURRENT_OBJCG_UPDATE_FLAG, Ordering::AcqRel);
        self.clear_fast_key();
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

    /// The allocator's fast path: charges `bytes` of [`ChargeKind::Alloc`]
    /// from the byte cache when `key` is the cache's fast key (armed by
    /// [`Task::charge_keyed`], cleared by anything that could change the
    /// objcg charged, an attach included) and the cache holds enough;
    /// returns the charge as a raw word ([`Charge::into_raw`]). `None`
    /// means "take `charge_keyed`".
    ///
    /// A hit reads the key, the bytes and the reference credit, and writes
    /// the bytes, the credit, the pending statistics and the charge count:
    /// plain loads and stores of the task's own cache line and no atomic
    /// read-modify-write. The pending statistics are not
    /// range-checked here: between two calls that are not hits their sum
    /// with the cached bytes is constant, so they stay within
    /// `STAT_FLUSH_BYTES + TASK_CACHE_BOUND_BYTES` of zero, and the next
    /// slow call flushes them.
    #[inline(always)]
    pub(crate) fn charge_fast(&self, key: u64, bytes: u64) -> Option<usize> {
        let shared = &*self.shared;
        let cache = &shared.cache;
        // Relaxed: the key set means the cached objcg is still the entry
        // for the key's node (everything that could change it clears the
        // key, an attach from any thread included; see `arm_fast_key`); an
        // attach racing with this charge is seen by the next one, as in the
        // seed.
        if cache.fast_key.load(Ordering::Relaxed) != key {
            return None;
        }
        let have = get_u64(&cache.bytes);
        let refs = get_u64(&cache.refs);
        if have < bytes || refs == 0 {
            return None;
        }
        set_u64(&cache.bytes, have - bytes);
        set_u64(&cache.refs, refs - 1);
        set_u64(&cache.charges, get_u64(&cache.charges) + 1);
        // Written out rather than `add_pending`, which measured three
        // instructions more per alloc+free pair here (callgrind).
        let slot = &cache.pending_bytes[ChargeKind::Alloc.index()];
        slot.store(
            slot.load(Ordering::Relaxed) + bytes as i64,
            Ordering::Relaxed,
        );
        Some(cache.objcg_addr.load(Ordering::Relaxed))
    }

    /// [`Task::charge`] of `bytes` of [`ChargeKind::Alloc`] on `cpu`, which
    /// then arms the fast path for `key` when the byte cache holds the
    /// task's own objcg for `cpu`'s node (no override, clean word).
    ///
    /// `key` is any non-zero value the caller uses to name a set of CPUs
    /// of one node (the runtime uses the real CPU id plus 2, or 1 when the
    /// topology has a single node): [`Task::charge_fast`] with the same key
    /// then charges that node's objcg.
    ///
    /// # Errors
    /// As [`Task::charge`].
    pub(crate) fn charge_keyed(&self, key: u64, cpu: usize, bytes: u64) -> Result<Charge> {
        let charge = self.charge(cpu, bytes, ChargeKind::Alloc)?;
        if key != 0 && !self.has_active.get() && !self.exited.get() {
            let tagged = self.shared.objcgs.load(Ordering::Acquire);
            // `charge` succeeded, so `cpu` has a node.
            if let Some(nid) = self.core.topology.node_of_cpu(cpu) {
                let cached = self.shared.cache.objcg_addr.load(Ordering::Relaxed);
                if tagged & CURRENT_OBJCG_UPDATE_FLAG == 0
                    && cached != 0
                    && self.entry(tagged, nid) as usize == cached
                {
                    self.arm_fast_key(key, tagged);
                }
            }
        }
        Ok(charge)
    }

    /// Arms the fast path for `key` while the tagged word is still the
    /// clean `tagged`; an attach clears the key after setting the update
    /// flag, so the fast path need not read the word.
    ///
    /// The key is stored, then the word is compared-and-exchanged with
    /// itself. If that RMW comes first in the word's modification order,
    /// the attach's flag RMW reads from it (AcqRel both), so the key store
    /// happens before the attach's clear, which therefore wins. If the
    /// attach's RMW comes first, the exchange sees the flag and fails, and
    /// the key is cleared here. Either way no key stays armed with the flag
    /// set (loom: `loom_task::arming_racing_attach_leaves_no_stale_key`).
    #[cold]
    fn arm_fast_key(&self, key: u64, tagged: usize) {
        let shared = &*self.shared;
        if shared.cache.fast_key.load(Ordering::Relaxed) == key {
            return;
        }
        shared.cache.fast_key.store(key, Ordering::Relaxed);
        if shared
            .objcgs
            .compare_exchange(tagged, tagged, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.clear_fast_key();
        }
    }

    /// Disarms the allocator's fast path (see [`TaskCache::fast_key`]).
    #[inline]
    fn clear_fast_key(&self) {
        self.shared.cache.fast_key.store(0, Ordering::Relaxed);
    }

    /// Serves a charge of `bytes` of the cached objcg from the byte cache
    /// (bytes and one reference of credit) if it holds enough; the caller
    /// checked that the cache holds `objcg`.
    #[inline(always)]
    fn take_cached(&self, objcg: &ObjCgroup, bytes: u64, kind: ChargeKind) -> bool {
        let cache = &self.shared.cache;
        let have = get_u64(&cache.bytes);
        let refs = get_u64(&cache.refs);
        if have < bytes || refs == 0 {
            return false;
        }
        set_u64(&cache.bytes, have - bytes);
        set_u64(&cache.refs, refs - 1);
        set_u64(&cache.charges, get_u64(&cache.charges) + 1);
        self.pend(objcg, kind, bytes as i64);
        true
    }

    /// The allocator's fast path for a free: returns `bytes` of
    /// [`ChargeKind::Alloc`] named by the raw word `raw`
    /// ([`Charge::into_raw`] of a charge of this controller) to the byte
    /// cache when it caches that objcg and has room. `false` means "take
    /// [`Task::uncharge`]". Plain loads and stores only; the pending
    /// statistics are flushed by the next slow call (see
    /// [`Task::charge_fast`]). After [`Task::exit`] the cache holds no
    /// objcg, so this always returns `false`.
    ///
    /// # Safety
    /// `raw` comes from `Charge::into_raw` of a live charge of `bytes`
    /// bytes of `ChargeKind::Alloc` made by this task's controller, and is
    /// uncharged once (by this call if it returns `true`).
    #[inline(always)]
    pub(crate) unsafe fn uncharge_fast(&self, raw: usize, bytes: u64) -> bool {
        let cache = &self.shared.cache;
        if cache.objcg_addr.load(Ordering::Relaxed) != raw {
            return false;
        }
        let new_bytes = get_u64(&cache.bytes) + bytes;
        // Only the bytes are bounded here: every object is at least 8
        // bytes, so the credit gained before the bytes overflow is at most
        // `CACHE_MAX_BYTES / 8`; the slow path trims it to `REF_BATCH`.
        if new_bytes > CACHE_MAX_BYTES {
            return false;
        }
        set_u64(&cache.bytes, new_bytes);
        set_u64(&cache.refs, get_u64(&cache.refs) + 1);
        // Written out rather than `add_pending`, which measured three
        // instructions more per alloc+free pair here (callgrind).
        let slot = &cache.pending_bytes[ChargeKind::Alloc.index()];
        slot.store(
            slot.load(Ordering::Relaxed) - bytes as i64,
            Ordering::Relaxed,
        );
        true
    }

    /// The allocator's fast path for a `realloc`: moves the difference
    /// between `old_bytes` and `new_bytes` of the charge named by `raw`
    /// between the charge and the byte cache when the cache holds that
    /// objcg and has the bytes (growing) or the room (shrinking). The object
    /// count and references do not change. `false` means "take
    /// [`Task::resize`]"; plain loads and stores only, statistics as in
    /// [`Task::charge_fast`].
    ///
    /// # Safety
    /// `raw` comes from `Charge::into_raw` of a live charge of `old_bytes`
    /// bytes of `ChargeKind::Alloc` made by this task's controller; if this
    /// returns `true`, that charge is now of `new_bytes` bytes.
    #[inline(always)]
    pub(crate) unsafe fn resize_fast(&self, raw: usize, old_bytes: u64, new_bytes: u64) -> bool {
        let cache = &self.shared.cache;
        if cache.objcg_addr.load(Ordering::Relaxed) != raw {
            return false;
        }
        let have = get_u64(&cache.bytes);
        let left = if new_bytes >= old_bytes {
            match have.checked_sub(new_bytes - old_bytes) {
                Some(left) => left,
                None => return false,
            }
        } else {
            let left = have + (old_bytes - new_bytes);
            if left > CACHE_MAX_BYTES {
                return false;
            }
            left
        };
        set_u64(&cache.bytes, left);
        add_pending(cache, ChargeKind::Alloc, have as i64 - left as i64);
        true
    }

    /// `current_obj_cgroup()` for node `nid`: the active override's objcg
    /// if one is entered, else the cached objcg (refreshing a stale cache
    /// first), else root's. Returns the objcg's current `(group path,
    /// node)`.
    pub fn obj_cgroup(&self, nid: usize) -> Result<(String, usize)> {
        if nid >= self.core.topology.nr_node_ids() {
            return Err(Error::UnknownNode {
                node: nid,
                nr_node_ids: self.core.topology.nr_node_ids(),
            });
        }
        let p = self.pin(nid);
        let out = (p.objcg.memcg().path.to_string(), p.objcg.nid());
        self.unpin(p);
        Ok(out)
    }

    /// The objcg this task charges on `nid` now.
    #[inline]
    fn pin(&self, nid: usize) -> Pinned<'_> {
        if self.has_active.get() {
            return self.pin_active(nid);
        }
        Pinned {
            objcg: self.cached_objcg(nid),
            temporary: false,
        }
    }

    #[inline]
    fn unpin(&self, p: Pinned<'_>) {
        if p.temporary {
            self.core.objcg_put(p.objcg, 1);
        }
    }

    /// The seed's lookup through the per-node array.
    #[inline]
    fn cached_objcg(&self, nid: usize) -> &ObjCgroup {
        // Acquire: pairs with the AcqRel OR of an attach so that, if we see
        // the flag, the refresh sees the group published before it.
        let mut tagged = self.shared.objcgs.load(Ordering::Acquire);
        if tagged & CURRENT_OBJCG_UPDATE_FLAG != 0 {
            tagged = self.refresh(nid);
        }
        match NonNull::new(self.entry(tagged, nid)) {
            // SAFETY: entries point into the controller's type-stable table
            // and hold a reference (taken in `refresh`).
            Some(p) => unsafe { p.as_ref() },
            None => self.root_objcg(nid),
        }
    }

    /// The per-node array's entry for node `nid` behind the word `tagged`
    /// (entry 0 in single mode); null when there is none. Owner only.
    fn entry(&self, tagged: usize, nid: usize) -> *mut ObjCgroup {
        let idx = match self.shared.mode {
            TaskCacheMode::PerNode => nid,
            TaskCacheMode::Single => 0,
        };
        // SAFETY: we are the owning task; only our `exit` frees the array.
        unsafe { self.shared.entries(tagged) }
            .and_then(|entries| entries.get(idx))
            // Relaxed: entries are written only by this task.
            .map_or(std::ptr::null_mut(), |e| e.load(Ordering::Relaxed))
    }

    fn root_objcg(&self, nid: usize) -> &ObjCgroup {
        match self
            .core
            .root_objcg(nid)
            .or_else(|| self.core.root_objcg(0))
        {
            Some(o) => o,
            // The controller makes one root objcg per node at creation.
            None => std::process::abort(),
        }
    }

    /// The override path (`from_memcg`): the objcg of the active group on
    /// `nid`, walking up past removed groups. Uses the byte cache's
    /// reference when it already caches that objcg, else a temporary one.
    #[cold]
    fn pin_active(&self, nid: usize) -> Pinned<'_> {
        let active = self.active.borrow();
        let Some(memcg) = active.as_ref() else {
            return Pinned {
                objcg: self.cached_objcg(nid),
                temporary: false,
            };
        };
        let cached_id = self.shared.cache.objcg.load(Ordering::Relaxed);
        if cached_id != 0 {
            if let Some(info) = memcg.nodeinfo.get(nid) {
                let word = info.objcg.load(Ordering::Acquire);
                if word as u32 == cached_id {
                    if let Some(o) = self.core.table.get(cached_id) {
                        // The cache holds a reference, so this incarnation
                        // is alive; the generation tells it is the same one.
                        if o.generation() == (word >> 32) as u32 {
                            return Pinned {
                                objcg: o,
                                temporary: false,
                            };
                        }
                    }
                }
            }
        }
        match self.core.get_obj_cgroup_from_memcg(memcg, nid) {
            Some(o) => Pinned {
                objcg: o,
                temporary: !o.is_root(),
            },
            None => Pinned {
                objcg: self.root_objcg(nid),
                temporary: false,
            },
        }
    }

    /// `current_objcg_update`: refreshes every entry; returns the untagged
    /// word.
    #[cold]
    #[inline(never)]
    fn refresh(&self, nid: usize) -> usize {
        let shared = &*self.shared;
        self.clear_fast_key();
        shared.refreshes.store(
            shared.refreshes.load(Ordering::Relaxed) + 1,
            Ordering::Relaxed,
        );
        self.core.refreshes.fetch_add(1, Ordering::Relaxed);
        loop {
            let tagged = shared.objcgs.load(Ordering::Acquire);
            let untagged = tagged & !CURRENT_OBJCG_UPDATE_FLAG;
            if tagged & CURRENT_OBJCG_UPDATE_FLAG != 0
                && shared
                    .objcgs
                    // AcqRel: the Acquire pairs with the attach's OR (its
                    // group store is then visible to the read below).
                    .compare_exchange(tagged, untagged, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                continue;
            }
            // SAFETY: we are the owning task; only our `exit` frees it.
            if let Some(entries) = unsafe { shared.entries(untagged) } {
                let group = shared.group.lock().clone();
                let exempt = shared.exempt.load(Ordering::Relaxed);
                for (i, entry) in entries.iter().enumerate() {
                    let fresh = match (&group, exempt) {
                        (Some(g), false) => {
                            let node = match shared.mode {
                                TaskCacheMode::PerNode => i,
                                TaskCacheMode::Single => nid,
                            };
                            self.core
                                .get_obj_cgroup_from_memcg(g, node)
                                .map_or(std::ptr::null_mut(), |o| {
                                    o as *const ObjCgroup as *mut ObjCgroup
                                })
                        }
                        // Exited or exempt: drop the references, charge root.
                        _ => std::ptr::null_mut(),
                    };
                    let stale = entry.swap(fresh, Ordering::AcqRel);
                    if let Some(old) = NonNull::new(stale) {
                        // SAFETY: entries point into the type-stable table.
                        self.core.objcg_put(unsafe { old.as_ref() }, 1);
                    }
                }
            }
            // Acquire: pairs with the attach's OR; if it landed after our
            // clear, we either see it here and repeat, or it stays set for
            // the next lookup.
            if shared.objcgs.load(Ordering::Acquire) & CURRENT_OBJCG_UPDATE_FLAG == 0 {
                return untagged;
            }
        }
    }

    /// Charges `bytes` of `kind` on `cpu` to the task's group (or the
    /// active override), returning the charge to uncharge later.
    ///
    /// # Errors
    /// [`Error::UnknownCpu`], [`Error::InvalidSize`] for 0 or more than
    /// 2^48 bytes, [`Error::Charge`] when a `max` limit refuses after
    /// reclaim.
    #[inline(always)]
    pub fn charge(&self, cpu: usize, bytes: u64, kind: ChargeKind) -> Result<Charge> {
        let nid = self.node_of(cpu)?;
        check_size(bytes)?;
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

    fn ctx(&self, cpu: Option<usize>) -> ChargeCtx<'_> {
        ChargeCtx {
            cpu,
            forced: self.in_reclaim.get(),
            reclaim_flag: Some(&self.in_reclaim),
        }
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
        set_u64(&cache.charges, get_u64(&cache.charges) + 1);
        if self.exited.get() {
            core.obj_cgroup_charge(self.ctx(Some(cpu)), objcg, bytes, kind)?;
            return Ok(Charge::new(objcg, bytes, kind));
        }
        if cache.objcg.load(Ordering::Relaxed) != objcg.id() {
            self.switch_cache(Some(cpu), objcg);
        }
        // Reference credit: from the CPU stock if it has some, else in bulk.
        if get_u64(&cache.refs) == 0 {
            let got = core
                .stock(cpu)
                .and_then(|s| s.consume_obj(objcg.id(), 0, REF_BATCH))
                .map_or(0, |c| c.refs);
            let got = if got == 0 {
                objcg.get(REF_BATCH);
                REF_BATCH
            } else {
                got
            };
            set_u64(&cache.refs, got);
            self.rebase_refs(got as i64);
        }
        let have = get_u64(&cache.bytes);
        // A short cache refills from the CPU's stock in one take, keeping up
        // to `CACHE_MAX_BYTES` after this charge, so that a task allocating
        // what others free (a producer) does not come back for every
        // object.
        // It takes reference credit along, up to `2 * REF_BATCH`.
        let taken = || {
            let want_refs = (2 * REF_BATCH).saturating_sub(get_u64(&cache.refs));
            core.stock(cpu).and_then(|s| {
                s.take_obj(
                    objcg.id(),
                    bytes - have,
                    bytes - have + CACHE_MAX_BYTES,
                    want_refs,
                )
            })
        };
        if have >= bytes {
            set_u64(&cache.bytes, have - bytes);
        } else if let Some(t) = taken() {
            set_u64(&cache.bytes, have + t.bytes - bytes);
            set_u64(&cache.refs, get_u64(&cache.refs) + t.refs);
            self.rebase_refs(t.refs as i64);
        } else {
            let remainder = core.charge_pages_for_bytes(self.ctx(Some(cpu)), objcg, bytes)?;
            // The cache may have been switched by a reclaim callback that
            // charged through this task; put the remainder where it belongs.
            if cache.objcg.load(Ordering::Relaxed) == objcg.id() {
                set_u64(&cache.bytes, get_u64(&cache.bytes) + remainder);
            } else if remainder > 0 {
                core.refill_obj_stock(Some(cpu), objcg, remainder, 0, false);
            }
        }
        if cache.objcg.load(Ordering::Relaxed) == objcg.id() && get_u64(&cache.refs) > 0 {
            set_u64(&cache.refs, get_u64(&cache.refs) - 1);
            self.pend(objcg, kind, bytes as i64);
        } else {
            objcg.get(1);
            core.account(Some(cpu), objcg, kind, bytes as i64, 1);
        }
        Ok(Charge::new(objcg, bytes, kind))
    }

    /// Records statistics for the cached objcg, flushing when large.
    #[inline(always)]
    fn pend(&self, objcg: &ObjCgroup, kind: ChargeKind, bytes: i64) {
        let v = add_pending(&self.shared.cache, kind, bytes);
        if !(-STAT_FLUSH_BYTES..=STAT_FLUSH_BYTES).contains(&v) {
            self.flush_stats(objcg);
        }
    }

    /// Credit changed by `delta` without an object: keep
    /// `refs_base - refs` equal to the objects charged since the flush.
    #[inline]
    fn rebase_refs(&self, delta: i64) {
        let base = &self.shared.cache.refs_base;
        base.store(base.load(Ordering::Relaxed) + delta, Ordering::Relaxed);
    }

    /// Moves pending statistics to the objcg and its owner's counters.
    fn flush_stats(&self, objcg: &ObjCgroup) {
        let cache = &self.shared.cache;
        for kind in ChargeKind::ALL {
            let bytes = cache.pending_bytes[kind.index()].swap(0, Ordering::Relaxed);
            if bytes != 0 {
                self.core.account(None, objcg, kind, bytes, 0);
            }
        }
        let refs = get_u64(&cache.refs) as i64;
        let objects = cache.refs_base.load(Ordering::Relaxed) - refs;
        cache.refs_base.store(refs, Ordering::Relaxed);
        if objects != 0 {
            self.core
                .account(None, objcg, ChargeKind::Alloc, 0, objects);
        }
    }

    /// Empties the byte cache: bytes and references go to `cpu`'s stock
    /// (or, with no CPU, straight back to the objcg), statistics are
    /// flushed, and the cache's own reference is dropped.
    fn drain_cache(&self, cpu: Option<usize>) {
        self.clear_fast_key();
        let cache = &self.shared.cache;
        let id = cache.objcg.load(Ordering::Relaxed);
        let Some(old) = (id != 0).then(|| self.core.table.get(id)).flatten() else {
            return;
        };
        self.flush_stats(old);
        let bytes = get_u64(&cache.bytes);
        let refs = get_u64(&cache.refs);
        set_u64(&cache.bytes, 0);
        set_u64(&cache.refs, 0);
        cache.refs_base.store(0, Ordering::Relaxed);
        cache.objcg.store(0, Ordering::Relaxed);
        cache.objcg_addr.store(0, Ordering::Relaxed);
        match cpu {
            Some(_) => self.core.refill_obj_stock(cpu, old, bytes, refs + 1, true),
            None => {
                let pages = bytes / PAGE_SIZE;
                self.core.obj_cgroup_uncharge_pages(old, pages);
                self.core.uncharge_to_pool(old, bytes % PAGE_SIZE);
                self.core.objcg_put(old, refs + 1);
            }
        }
    }

    fn switch_cache(&self, cpu: Option<usize>, new: &ObjCgroup) {
        self.drain_cache(cpu);
        new.get(1);
        self.shared.cache.objcg.store(new.id(), Ordering::Relaxed);
        self.shared
            .cache
            .objcg_addr
            .store(new as *const ObjCgroup as usize, Ordering::Relaxed);
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
            let refs = get_u64(&cache.refs) + 1;
            set_u64(&cache.bytes, bytes);
            set_u64(&cache.refs, refs);
            self.pend(objcg, charge.kind, -(charge.bytes as i64));
            if bytes > CACHE_MAX_BYTES || refs > 2 * REF_BATCH {
                self.trim_cache(cpu, objcg);
            }
            return Ok(());
        }
        self.core
            .obj_cgroup_uncharge(Some(cpu), objcg, charge.bytes, charge.kind);
        Ok(())
    }

    /// Changes the size of a live charge to `new_bytes` (a `realloc`): only
    /// the difference is charged or uncharged, to the charge's own objcg,
    /// whichever group the task is in now. The object count and the
    /// object's reference do not change.
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
            let have = get_u64(&cache.bytes);
            if cached && have >= delta {
                set_u64(&cache.bytes, have - delta);
            } else {
                self.core.charge_bytes(self.ctx(Some(cpu)), objcg, delta)?;
            }
            self.account_delta(objcg, charge.kind, delta as i64);
        } else if new_bytes < old_bytes {
            let delta = old_bytes - new_bytes;
            self.account_delta(objcg, charge.kind, -(delta as i64));
            if cached {
                let bytes = get_u64(&cache.bytes) + delta;
                set_u64(&cache.bytes, bytes);
                if bytes > CACHE_MAX_BYTES {
                    self.trim_cache(cpu, objcg);
                }
            } else {
                self.core.refill_obj_stock(Some(cpu), objcg, delta, 0, true);
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
            self.core.account(None, objcg, kind, bytes, 0);
        }
    }

    /// Whether reclaim callbacks triggered by this task's charge are
    /// running (charges through the task are then forced).
    pub(crate) fn in_reclaim(&self) -> bool {
        self.in_reclaim.get()
    }

    /// Replaces the active override (for the runtime's scopes).
    pub(crate) fn swap_active(&self, group: Option<Arc<MemCgroup>>) -> Option<Arc<MemCgroup>> {
        self.clear_fast_key();
        self.has_active.set(group.is_some());
        self.active.replace(group)
    }

    /// Hands bytes above a page fraction and surplus references to the CPU
    /// stock (which returns whole pages above one page to the counters).
    #[cold]
    fn trim_cache(&self, cpu: usize, objcg: &ObjCgroup) {
        let cache = &self.shared.cache;
        let bytes = get_u64(&cache.bytes);
        let refs = get_u64(&cache.refs);
        let keep_bytes = if bytes > CACHE_MAX_BYTES {
            bytes % PAGE_SIZE
        } else {
            bytes
        };
        let keep_refs = refs.min(REF_BATCH);
        set_u64(&cache.bytes, keep_bytes);
        set_u64(&cache.refs, keep_refs);
        self.rebase_refs(keep_refs as i64 - refs as i64);
        self.core
            .refill_obj_stock(Some(cpu), objcg, bytes - keep_bytes, refs - keep_refs, true);
    }

    /// Reserves `bytes` for the task's group (or override) on `cpu`'s node;
    /// see [`Reservation`].
    ///
    /// # Errors
    /// As [`Task::charge`].
    pub fn try_charge(&self, cpu: usize, bytes: u64) -> Result<Reservation> {
        let nid = self.node_of(cpu)?;
        let pinned = self.pin(nid);
        let r = Reservation::new(Arc::clone(&self.core), pinned.objcg, bytes, self.ctx(None));
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

    /// `mem_cgroup_exit`: returns the byte cache, drops every per-node
    /// reference, frees the array and leaves null. Later charges through
    /// this task go to root. Idempotent.
    pub fn exit(&mut self) {
        if self.exited.get() {
            return;
        }
        self.drain_cache(None);
        self.exited.set(true);
        let shared = &*self.shared;
        {
            let mut tasks = self.core.tasks.lock();
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
                .fetch_add(get_u64(&shared.cache.charges), Ordering::Relaxed);
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

/// Attaches the task behind `shared` to `group` (`mem_cgroup_kmem_attach`).
pub(crate) fn attach(shared: &TaskShared, group: &Arc<MemCgroup>) -> Result<()> {
    if !group.try_pin_task() {
        return Err(Error::Removed {
            path: group.path.to_string(),
        });
    }
    let old = {
        let mut current = shared.group.lock();
        match current.as_mut() {
            None => {
                drop(current);
                group.unpin_task();
                return Err(Error::TaskExited);
            }
            Some(cur) => std::mem::replace(cur, Arc::clone(group)),
        }
    };
    // `set_bit(CURRENT_OBJCG_UPDATE_BIT)`: AcqRel pairs with the owner's
    // Acquire load and CAS in `refresh`, publishing the group store above,
    // and with the owner's CAS in `Task::arm_fast_key`.
    shared
        .objcgs
        .fetch_or(CURRENT_OBJCG_UPDATE_FLAG, Ordering::AcqRel);
    // Disarm the owner's allocator fast path (which does not read the
    // word); see `Task::arm_fast_key` for why this store wins any race
    // with the owner arming it.
    shared.cache.fast_key.store(0, Ordering::Release);
    old.unpin_task();
    Ok(())
}

/// Checks a charge size: `1..=MAX_CHARGE_BYTES`.
#[inline(always)]
pub(crate) fn check_size(bytes: u64) -> Result<()> {
    if bytes == 0 || bytes > MAX_CHARGE_BYTES {
        return Err(invalid_size(bytes));
    }
    Ok(())
}

#[cold]
#[inline(never)]
pub(crate) fn invalid_size(bytes: u64) -> Error {
    Error::InvalidSize {
        bytes,
        reason: if bytes == 0 {
            "a charge must be at least 1 byte"
        } else {
            "a charge must be at most 2^48 bytes"
        },
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod fast_path_tests {
    //! The allocator's fast path: `charge_keyed` arms a key, `charge_fast`
    //! hits only under that key, and everything that could change the
    //! objcg the task charges disarms it.

    use super::*;
    use crate::{Controller, Topology};

    fn setup(spec: &str) -> (Controller, Group, Task) {
        let ctrl = Controller::new(Topology::from_spec(spec).expect("topology"));
        let g = ctrl.create("g").expect("group");
        let task = ctrl.new_task(&g).expect("task");
        (ctrl, g, task)
    }

    /// Charges through the fast path if it hits, else `charge_keyed`.
    fn charge(ctrl: &Controller, task: &Task, key: u64, cpu: usize, bytes: u64) -> Charge {
        match task.charge_fast(key, bytes) {
            // SAFETY: a raw word of a charge of `bytes` Alloc bytes of
            // `ctrl`, rebuilt once.
            Some(raw) => unsafe { Charge::from_raw(raw, bytes, ChargeKind::Alloc, ctrl) },
            None => task.charge_keyed(key, cpu, bytes).expect("charge"),
        }
    }

    /// The armed key (0 for none).
    fn armed(task: &Task) -> u64 {
        task.shared.cache.fast_key.load(Ordering::Relaxed)
    }

    fn alloc_bytes(task: &Task, g: &Group) -> u64 {
        task.flush(0).expect("flush");
        g.stats().stat.alloc_bytes
    }

    #[test]
    fn keyed_charge_arms_the_key_and_only_that_key_hits() {
        let (_ctrl, g, task) = setup("2x1");
        assert!(task.charge_fast(2, 64).is_none(), "a new task has no key");
        let first = task.charge_keyed(2, 0, 64).expect("charge");
        let raw = task.charge_fast(2, 64).expect("armed key hits");
        assert_eq!(raw, first.objcg.as_ptr() as usize);
        assert!(task.charge_fast(3, 64).is_none(), "another key misses");
        assert!(task.charge_fast(0, 64).is_none(), "key 0 never hits");
        assert_eq!(alloc_bytes(&task, &g), 128);
    }

    #[test]
    fn fast_hits_and_frees_keep_the_invariants_and_statistics() {
        let (ctrl, g, task) = setup("1x2");
        let mut charges = Vec::new();
        for i in 0..1000u64 {
            charges.push(charge(&ctrl, &task, 1, (i % 2) as usize, 24 + i % 100));
        }
        let total: u64 = (0..1000u64).map(|i| 24 + i % 100).sum();
        ctrl.check_invariants()
            .expect("invariants with pending fast charges");
        assert_eq!(alloc_bytes(&task, &g), total);
        for c in charges {
            let bytes = c.bytes;
            let raw = c.into_raw();
            // SAFETY: each charge's raw word, uncharged once.
            if !unsafe { task.uncharge_fast(raw, bytes) } {
                // SAFETY: as above.
                let c = unsafe { Charge::from_raw(raw, bytes, ChargeKind::Alloc, &ctrl) };
                task.uncharge(0, c).expect("uncharge");
            }
        }
        ctrl.check_invariants()
            .expect("invariants after fast frees");
        assert_eq!(alloc_bytes(&task, &g), 0);
    }

    #[test]
    fn attach_makes_the_fast_path_miss_and_the_next_charge_goes_to_the_new_group() {
        let (ctrl, a, task) = setup("1x1");
        let b = ctrl.create("b").expect("group");
        let _first = charge(&ctrl, &task, 1, 0, 64);
        assert!(task.charge_fast(1, 8).is_some());
        b.attach(&task.handle()).expect("attach");
        assert!(task.charge_fast(1, 64).is_none(), "the update flag is set");
        let _second = task.charge_keyed(1, 0, 64).expect("charge");
        assert!(task.charge_fast(1, 32).is_some(), "re-armed for b");
        assert_eq!(alloc_bytes(&task, &a), 72);
        assert_eq!(alloc_bytes(&task, &b), 96);
    }

    #[test]
    fn overrides_flushes_and_exemption_disarm_the_key() {
        let (ctrl, _g, task) = setup("1x1");
        let other = ctrl.create("other").expect("group");
        let _c = charge(&ctrl, &task, 1, 0, 64);
        assert!(task.charge_fast(1, 8).is_some());
        {
            let _guard = task.enter(&other).expect("enter");
            assert!(task.charge_fast(1, 8).is_none(), "override entered");
            let _d = task.charge_keyed(1, 0, 8).expect("charge");
            assert_eq!(armed(&task), 0, "never armed under an override");
        }
        assert!(task.charge_fast(1, 8).is_none(), "override left");
        let _e = task.charge_keyed(1, 0, 8).expect("charge");
        // (The bytes may have come from the CPU stock, leaving the byte
        // cache empty: check the key, not a hit.)
        assert_eq!(armed(&task), 1);
        task.flush(0).expect("flush");
        assert!(task.charge_fast(1, 8).is_none(), "flushed");
        let _f = task.charge_keyed(1, 0, 8).expect("charge");
        assert_eq!(armed(&task), 1);
        task.set_exempt(true);
        assert!(task.charge_fast(1, 8).is_none(), "exempt");
    }

    #[test]
    fn a_charge_on_another_node_does_not_arm_the_first_nodes_key() {
        // Per-node cache, 2 nodes: key 2 is CPU 0 (node 0), key 3 CPU 1.
        let (ctrl, _g, task) = setup("2x1");
        let n0 = charge(&ctrl, &task, 2, 0, 64);
        let n1 = charge(&ctrl, &task, 3, 1, 64);
        assert_ne!(n0.objcg.as_ptr(), n1.objcg.as_ptr(), "one objcg per node");
        assert!(
            task.charge_fast(2, 8).is_none(),
            "the cache moved to node 1"
        );
        let raw = task.charge_fast(3, 8).expect("armed for node 1");
        assert_eq!(raw, n1.objcg.as_ptr() as usize);
    }

    #[test]
    fn a_refresh_outside_the_allocator_path_disarms_the_key() {
        // The lookup refreshes and leaves the word clean while the byte
        // cache still holds `a`: without the refresh's disarm, the fast
        // path would keep charging `a`.
        let (ctrl, a, task) = setup("1x1");
        let b = ctrl.create("b").expect("group");
        let _first = charge(&ctrl, &task, 1, 0, 64);
        assert_eq!(armed(&task), 1);
        b.attach(&task.handle()).expect("attach");
        assert_eq!(task.obj_cgroup(0).expect("lookup").0, "b");
        assert!(!task.is_stale());
        assert!(task.charge_fast(1, 8).is_none(), "refreshed: must miss");
        let _second = charge(&ctrl, &task, 1, 0, 64);
        assert_eq!(alloc_bytes(&task, &a), 64);
        assert_eq!(alloc_bytes(&task, &b), 64);
    }

    #[test]
    fn fast_resize_moves_only_the_difference_and_misses_other_objcgs() {
        let (ctrl, g, task) = setup("1x1");
        let other = ctrl.create("other").expect("group");
        let c = task.charge_keyed(1, 0, 100).expect("charge");
        let raw = c.into_raw();
        let resize = |raw: usize, old: u64, new: u64| {
            // SAFETY: each call names a live charge of `old` bytes (the
            // 100-byte charge as resized by the calls before, or the
            // other group's 64-byte one) and keeps track of its new size.
            unsafe { task.resize_fast(raw, old, new) }
        };
        assert!(resize(raw, 100, 300));
        assert!(resize(raw, 300, 40));
        assert!(resize(raw, 40, 200));
        // More than the byte cache can hold misses.
        let huge = 200 + TASK_CACHE_BOUND_BYTES;
        assert!(!resize(raw, 200, huge));
        assert_eq!(alloc_bytes(&task, &g), 200);
        // The flush emptied the byte cache: everything misses until the
        // next charge fills it.
        assert!(!resize(raw, 200, 100));
        // A charge of another objcg (made under an override) misses.
        let o = {
            let _guard = task.enter(&other).expect("enter");
            task.charge(0, 64, ChargeKind::Alloc).expect("charge")
        };
        let c = task.charge_keyed(1, 0, 8).expect("charge");
        let o_raw = o.into_raw();
        assert!(!resize(o_raw, 64, 32));
        assert_eq!(alloc_bytes(&task, &g), 208, "200 + 8");
        // SAFETY: the raw words of the live charges, rebuilt once.
        let (big, o) = unsafe {
            (
                Charge::from_raw(raw, 200, ChargeKind::Alloc, &ctrl),
                Charge::from_raw(o_raw, 64, ChargeKind::Alloc, &ctrl),
            )
        };
        for charge in [big, c, o] {
            task.uncharge(0, charge).expect("uncharge");
        }
        ctrl.check_invariants().expect("invariants");
        assert_eq!(alloc_bytes(&task, &g), 0);
        assert_eq!(alloc_bytes(&task, &other), 0);
    }

    #[test]
    fn a_short_cache_refills_from_the_stock_in_one_take() {
        // A task whose byte cache is empty takes all the bytes CPU 0's
        // stock holds for its objcg at once (up to the cache's limit), not
        // just the object's: a task allocating what other tasks free then
        // misses once per batch instead of once per object.
        let (ctrl, g, t) = setup("1x1");
        let first = t.charge(0, 64, ChargeKind::Alloc).expect("charge");
        let left = get_u64(&t.shared.cache.bytes);
        assert!(
            left >= 64 * 2,
            "the page charge left {left} bytes in the cache"
        );
        t.flush(0)
            .expect("flush: the cache's bytes go to CPU 0's stock");
        assert_eq!(get_u64(&t.shared.cache.bytes), 0);
        let second = t.charge(0, 64, ChargeKind::Alloc).expect("charge");
        assert_eq!(
            get_u64(&t.shared.cache.bytes),
            left - 64,
            "one take brought the stock's bytes into the cache"
        );
        let slow = ctrl.counters().slow_charges;
        let rest: Vec<Charge> = (0..(left - 64) / 64)
            .map(|_| t.charge(0, 64, ChargeKind::Alloc).expect("charge"))
            .collect();
        assert_eq!(
            ctrl.counters().slow_charges,
            slow,
            "all served by the cache"
        );
        for c in rest.into_iter().chain([first, second]) {
            t.uncharge(0, c).expect("uncharge");
        }
        drop(t);
        ctrl.drain_stocks();
        ctrl.check_invariants().expect("invariants");
        assert_eq!(g.current_bytes(), 0);
    }
}
