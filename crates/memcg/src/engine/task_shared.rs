//! The part of a task other threads touch: the seed's tagged word
//! (`task->objcgs`), the attached group, the byte cache's counters (read by
//! the checkers), and the attach operation (`mem_cgroup_kmem_attach`).
//!
//! Below the charge path (`core.rs` keeps the list of live tasks) and
//! above nothing but groups, objcgs and the byte cache.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::engine::memcg::MemCgroup;
use crate::engine::memcg::{ChargeKind, NR_KINDS};
use crate::engine::obj_cgroup::ObjCgroup;
use crate::engine::sys_alloc::SysArc;
use crate::engine::sys_alloc::SysSlice;
use crate::error::{Error, Result};
use crate::sync::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering,
};

/// Bit 0 of the task's tagged word: the cache is stale.
pub const CURRENT_OBJCG_UPDATE_FLAG: usize = 1;

/// A task's level-1 cache. Written by the owning task, but for its
/// `fast_key`, which an attach, a group's removal and a fork's prepare
/// handler clear from other threads, and its `hit_addr` and cookie, which
/// the prepare handler writes (see each field).
#[derive(Debug)]
pub(crate) struct TaskCache {
    /// Id of the cached objcg, 0 for none. The cache holds one reference.
    pub(crate) objcg: AtomicU32,
    /// Address of the cached objcg (0 for none), so the hot paths compare
    /// pointers without touching the objcg's cache line.
    pub(crate) objcg_addr: AtomicUsize,
    /// Pre-charged bytes of the cached objcg. The allocator's hit path
    /// changes them without recording statistics: the bytes it took or
    /// gave back since the slow path last wrote them are `synced_bytes -
    /// bytes`, statistics of [`ChargeKind::Alloc`] not yet pending
    /// ([`fold_hits`]). The slow path writes them only through
    /// [`set_cache_bytes`].
    pub(crate) bytes: AtomicU64,
    /// `bytes` as the slow path last wrote it (see `bytes`).
    pub(crate) synced_bytes: AtomicU64,
    /// Statistics of the cached objcg not yet flushed, per kind.
    pub(crate) pending_bytes: [AtomicI64; NR_KINDS],
    /// The key of the allocator's fast path ([`Task::charge_fast`]), 0 for
    /// none: while it is set, the cached objcg is the one the task charges
    /// for that key's node (its own, or the active override's). Cleared by
    /// everything that could change that: a refresh, a drain or switch of
    /// the cache, entering or leaving an override, exemption, an attach
    /// from any thread (after it sets the update flag; see
    /// `Task::arm_fast_key`), and the removal of the override's group, from
    /// the removing thread (`Task::recheck_override_key`). The armed value may
    /// carry a cookie bit (`fast_path::HEAP_KEY`, `NO_HEAP_KEY`), which
    /// says what the cached objcg's allocator cookie was when armed; key
    /// compares that read no cookie ignore it.
    pub(crate) fast_key: AtomicU64,
    /// What the allocator's hit path for frees and resizes compares a
    /// block's charge word with: the cached objcg's address
    /// (`objcg_addr`), [`NO_HIT_ADDR`] when the cache holds none, or
    /// [`HITS_STOPPED`] while a fork's prepare handler (another thread)
    /// makes the copy: the frees then miss and take the slow path, which
    /// waits at the fork gate (see `runtime::fork`). The handler writes it
    /// only while the gate is closed, when the owner runs no slow path
    /// (the only code that writes it otherwise), and puts it back before
    /// it opens the gate. Neither value is an objcg's address (they are
    /// aligned) nor a charge word a block holds (0 or an address), so one
    /// compare rejects a stopped cache, an empty one, another objcg and
    /// an unaccounted block.
    pub(crate) hit_addr: AtomicUsize,
    /// The cached objcg's allocator cookie (`ObjCgroup::alloc_cookie`:
    /// `MemcgMimalloc`'s heap) as the allocator's free hit path compares
    /// a block's with it, or [`NO_HIT_COOKIE`] when the cache holds no
    /// objcg, the objcg had no cookie yet when last looked at, or a fork
    /// stopped the hit path. Written like `hit_addr`: by the owner's slow
    /// paths (a switch, a drain, and each arming of the fast key, which
    /// picks up a cookie set since the switch) and by the fork handlers
    /// with the gate closed. An objcg keeps its cookie while a cache holds
    /// it (only the reuse of an entry for another node resets it).
    pub(crate) hit_cookie: AtomicUsize,
    /// The heap `MemcgMimalloc`'s allocation hit path allocates from: the
    /// cached objcg's allocator cookie when the fast key was last armed
    /// with [`HEAP_KEY`] (a key so armed means this word holds the cached
    /// objcg's cookie, which names a heap), so that the hit path needs no
    /// test of its own. Written only by the owner's slow path, before it
    /// arms such a key (`Task::charge_keyed`); never by the fork handlers,
    /// which stop `hit_cookie` (an allocation that read its key before a
    /// handler's stop may read this word after it, and still finds the
    /// heap). Not cleared when the cache drains (the drain disarms the
    /// key): under any other key it may hold a heap of an objcg the task
    /// cached before (heaps live as long as the process), or 0, and is
    /// not read.
    ///
    /// [`HEAP_KEY`]: crate::engine::fast_path::HEAP_KEY
    pub(crate) alloc_heap: AtomicUsize,
    /// The foreign slot (`byte_cache.rs`): frees of objects of one objcg
    /// other than the cached one, not yet returned. Its objcg's id (0 for
    /// none) and address; the bytes freed, pre-charged and not yet given
    /// to a stock (with their references: at least one object's while the
    /// slot is in use, which keeps the objcg alive). The objcg's live
    /// bytes still count them until the slot is flushed.
    pub(crate) foreign_objcg: AtomicU32,
    pub(crate) foreign_addr: AtomicUsize,
    pub(crate) foreign_bytes: AtomicU64,
}

/// Adds `bytes` to the pending statistics of `kind` (single writer) and
/// returns the new value; no flush (see [`Task::charge_fast`]).
#[inline(always)]
pub(crate) fn add_pending(cache: &TaskCache, kind: ChargeKind, bytes: i64) -> i64 {
    let slot = &cache.pending_bytes[kind.index()];
    let v = slot.load(Ordering::Relaxed) + bytes;
    slot.store(v, Ordering::Relaxed);
    v
}

/// [`TaskCache::hit_addr`] when the cache holds no objcg.
pub(crate) const NO_HIT_ADDR: usize = 1;
/// [`TaskCache::hit_addr`] while a fork is being prepared.
pub(crate) const HITS_STOPPED: usize = 3;
/// [`TaskCache::hit_cookie`] when it matches no block: neither a heap's
/// address nor 0 (the main heap's blocks read as 0).
pub(crate) const NO_HIT_COOKIE: usize = 3;

/// [`TaskCache::hit_cookie`] for an objcg whose cookie is `cookie`: the
/// cookie if it names something (above the allocator's markers, 0 and
/// 1), else [`NO_HIT_COOKIE`].
#[inline]
pub(crate) fn hit_cookie_of(cookie: usize) -> usize {
    if cookie > NO_HIT_COOKIE {
        cookie
    } else {
        NO_HIT_COOKIE
    }
}

/// An empty [`TaskCache`] whose `hit_addr` is `$hit_addr` (a macro so that
/// the same literal serves the `const` idle cache and, under loom, whose
/// atomics are not `const`, a task's new cache).
macro_rules! empty_task_cache {
    ($hit_addr:expr) => {
        TaskCache {
            objcg: AtomicU32::new(0),
            objcg_addr: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            synced_bytes: AtomicU64::new(0),
            pending_bytes: [AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0)],
            fast_key: AtomicU64::new(0),
            hit_addr: AtomicUsize::new($hit_addr),
            hit_cookie: AtomicUsize::new(NO_HIT_COOKIE),
            alloc_heap: AtomicUsize::new(0),
            foreign_objcg: AtomicU32::new(0),
            foreign_addr: AtomicUsize::new(0),
            foreign_bytes: AtomicU64::new(0),
        }
    };
}

impl TaskCache {
    /// A new task's cache: empty, holding no objcg.
    pub(crate) fn new_empty() -> Self {
        empty_task_cache!(NO_HIT_ADDR)
    }

    /// A cache on which every hit path misses (no key armed, frees
    /// stopped), never written: what the allocator's hit path finds
    /// through a thread's pointer while it must not hit (no task, or the
    /// thread inside memcg; see `runtime::thread`).
    #[cfg(not(memcg_loom))]
    pub(crate) const fn idle() -> Self {
        empty_task_cache!(HITS_STOPPED)
    }

    /// [`TaskCache::idle`] where loom builds need one too (a
    /// [`CacheSlot`]'s mark).
    fn new_mark() -> Self {
        empty_task_cache!(HITS_STOPPED)
    }

    /// [`TaskCache::hit_addr`] for a cache holding the objcg at `addr` (0
    /// for none).
    #[inline]
    pub(crate) fn hit_addr_of(addr: usize) -> usize {
        if addr == 0 {
            NO_HIT_ADDR
        } else {
            addr
        }
    }

    /// Stops the allocator's hit path for frees and resizes (a fork's
    /// prepare handler, with the fork gate closed; see
    /// [`TaskCache::hit_addr`]).
    pub(crate) fn stop_hits(&self) {
        self.hit_addr.store(HITS_STOPPED, Ordering::Relaxed);
        self.hit_cookie.store(NO_HIT_COOKIE, Ordering::Relaxed);
    }

    /// Undoes [`TaskCache::stop_hits`] (before the fork gate opens).
    pub(crate) fn resume_hits(&self) {
        let addr = self.objcg_addr.load(Ordering::Relaxed);
        self.hit_addr
            .store(Self::hit_addr_of(addr), Ordering::Relaxed);
        self.refresh_hit_cookie();
    }

    /// Sets [`TaskCache::hit_cookie`] from the cached objcg's cookie (the
    /// owner's slow path, or the fork handlers with the gate closed), and
    /// returns the cookie as read (0 when the cache holds no objcg), for
    /// the fast key's arming (`Task::charge_keyed`).
    pub(crate) fn refresh_hit_cookie(&self) -> usize {
        let addr = self.objcg_addr.load(Ordering::Relaxed);
        let cookie = if addr == 0 {
            0
        } else {
            // SAFETY: a cached objcg's address is that of a live entry of
            // the type-stable table (the cache holds a reference).
            // Acquire: pairs with the allocator's publication of the
            // cookie (`MemcgMimalloc::new_heap`'s AcqRel exchange).
            unsafe { crate::engine::obj_cgroup::alloc_cookie(addr) }.load(Ordering::Acquire)
        };
        let hit = hit_cookie_of(cookie);
        if self.hit_cookie.load(Ordering::Relaxed) != hit {
            self.hit_cookie.store(hit, Ordering::Relaxed);
        }
        cookie
    }
}

/// Moves what the allocator's hit path did to the byte cache since the
/// slow path last wrote its bytes into the pending statistics of
/// [`ChargeKind::Alloc`] (the owner only). Returns the bytes.
#[inline]
pub(crate) fn fold_hits(cache: &TaskCache) -> u64 {
    let bytes = get_u64(&cache.bytes);
    let synced = get_u64(&cache.synced_bytes);
    if synced != bytes {
        add_pending(cache, ChargeKind::Alloc, synced.wrapping_sub(bytes) as i64);
        set_u64(&cache.synced_bytes, bytes);
    }
    bytes
}

/// The slow path's write of the byte cache's bytes (the owner only): the
/// hit path's changes are folded into the statistics first, so that they
/// are not lost, and the new value is the synced one.
#[inline]
pub(crate) fn set_cache_bytes(cache: &TaskCache, bytes: u64) {
    fold_hits(cache);
    set_u64(&cache.bytes, bytes);
    set_u64(&cache.synced_bytes, bytes);
}

/// The hit path's statistics not yet folded ([`fold_hits`]), for a reader
/// on another thread (the checkers), which sees the owner at rest.
pub(crate) fn unfolded_hit_bytes(cache: &TaskCache) -> i64 {
    get_u64(&cache.synced_bytes).wrapping_sub(get_u64(&cache.bytes)) as i64
}

/// Plain read-modify-write by the single writer.
#[inline(always)]
pub(crate) fn set_u64(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed)
}
#[inline(always)]
pub(crate) fn get_u64(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Which objcg cache a task keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
pub enum TaskCacheMode {
    /// One objcg per node, indexed by the node the task runs on (the seed).
    #[default]
    PerNode,
    /// One objcg, for the node the task ran on when it last refreshed,
    /// refreshed only after an attach (before the seed).
    Single,
}

/// The bit that turns the address of a [`CacheSlot`]'s cache into its
/// hit mark's: the allocator's hit path marks its thread busy by setting
/// it in the thread's cache pointer (one `or` of memory; see
/// `runtime::thread`).
#[cfg(not(memcg_loom))]
pub(crate) const HIT_MARK_BIT: usize = 128;

/// A [`TaskCache`] on 128 bytes of its own, so that the [`CacheSlot`]'s
/// mark is [`HIT_MARK_BIT`] past its cache.
#[derive(Debug)]
#[repr(C, align(128))]
pub(crate) struct Padded128(pub(crate) TaskCache);

/// A task's byte cache and, [`HIT_MARK_BIT`] bytes past it, its *hit
/// mark*: a cache on which every hit path misses ([`TaskCache::idle`]),
/// never written. The allocator's hit path reaches the cache through a
/// thread-local pointer and marks the thread busy by setting
/// [`HIT_MARK_BIT`] in that pointer, which then names the mark: a signal
/// handler's hit path arriving meanwhile misses on it, and its slow path
/// sees the bit (`runtime::thread`). Aligned to twice the bit, so the
/// cache's address never has it, and setting it again (a handler inside
/// a handler) names the same mark.
///
/// Dereferences to the cache.
#[derive(Debug)]
#[repr(C, align(256))]
pub(crate) struct CacheSlot {
    cache: Padded128,
    #[cfg_attr(memcg_loom, allow(dead_code))]
    mark: Padded128,
}

// The mark is where the bit puts it (the cache fits 128 bytes). Loom's
// atomics are larger, and loom builds have no allocator hit path.
#[cfg(not(memcg_loom))]
const _: () = {
    assert!(std::mem::offset_of!(CacheSlot, mark) == HIT_MARK_BIT);
    assert!(std::mem::align_of::<CacheSlot>() == 2 * HIT_MARK_BIT);
};

impl CacheSlot {
    /// A slot holding `cache`, with its mark.
    pub(crate) fn new(cache: TaskCache) -> Self {
        CacheSlot {
            cache: Padded128(cache),
            mark: Padded128(TaskCache::new_mark()),
        }
    }

    /// A slot whose cache is idle too (never written; see
    /// [`TaskCache::idle`]).
    #[cfg(not(memcg_loom))]
    pub(crate) const fn idle() -> Self {
        CacheSlot {
            cache: Padded128(TaskCache::idle()),
            mark: Padded128(TaskCache::idle()),
        }
    }

    /// The cache's address with the provenance of the whole slot, as the
    /// allocator's thread-local pointer holds it (so that the address with
    /// [`HIT_MARK_BIT`] set, the mark's, may be read through it).
    #[cfg(not(memcg_loom))]
    #[inline(always)]
    pub(crate) const fn cache_ptr(&self) -> *mut TaskCache {
        // The cache is at offset 0 (`repr(C)`).
        self as *const CacheSlot as *mut TaskCache
    }
}

impl CacheSlot {
    /// Whether the slot's mark is still as made ([`TaskCache::idle`]'s
    /// values: no key armed, frees stopped, no cookie, nothing cached or
    /// pending). Every hit path misses on it only while it stays so;
    /// nothing writes it (the checker verifies this). Every field is
    /// named, so a field added to `TaskCache` must be added here.
    #[cfg(not(memcg_loom))]
    pub(crate) fn mark_is_idle(&self) -> bool {
        let TaskCache {
            objcg,
            objcg_addr,
            bytes,
            synced_bytes,
            pending_bytes,
            fast_key,
            hit_addr,
            hit_cookie,
            alloc_heap,
            foreign_objcg,
            foreign_addr,
            foreign_bytes,
        } = &self.mark.0;
        let zero_u64 = |a: &AtomicU64| a.load(Ordering::Relaxed) == 0;
        let zero_i64 = |a: &AtomicI64| a.load(Ordering::Relaxed) == 0;
        objcg.load(Ordering::Relaxed) == 0
            && objcg_addr.load(Ordering::Relaxed) == 0
            && zero_u64(bytes)
            && zero_u64(synced_bytes)
            && pending_bytes.iter().all(zero_i64)
            && zero_u64(fast_key)
            && hit_addr.load(Ordering::Relaxed) == HITS_STOPPED
            && hit_cookie.load(Ordering::Relaxed) == NO_HIT_COOKIE
            && alloc_heap.load(Ordering::Relaxed) == 0
            && foreign_objcg.load(Ordering::Relaxed) == 0
            && foreign_addr.load(Ordering::Relaxed) == 0
            && zero_u64(foreign_bytes)
    }

    /// The slot's mark, for a test that writes it to show the checker
    /// catches that.
    #[cfg(all(test, not(memcg_loom)))]
    pub(crate) fn mark_for_test(&self) -> &TaskCache {
        &self.mark.0
    }
}

impl std::ops::Deref for CacheSlot {
    type Target = TaskCache;

    #[inline(always)]
    fn deref(&self) -> &TaskCache {
        &self.cache.0
    }
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
    pub(crate) cache: CacheSlot,
    /// Charges the task made through its slow entry ([`Task::charge`] and
    /// the allocator's misses); the allocator's hit path does not count
    /// (an instruction per allocation saved). Written by the owner only,
    /// outside the byte cache's 128 bytes, which the hit path's words fill.
    ///
    /// [`Task::charge`]: crate::engine::task::Task::charge
    pub(crate) charges: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) ctrl_serial: u64,
    /// Where the runtime keeps this task, for its fork handlers: the
    /// address of the owning thread's state (its flags and hit-path cache
    /// pointer, `runtime::thread::busy_at`) and of the `Task` itself
    /// (both thread-locals of that thread); 0 for tasks the runtime did not
    /// make. Written once by the owning thread, read under the task-list
    /// lock by a thread preparing a fork and by the child after it.
    pub(crate) owner_state: AtomicUsize,
    pub(crate) owner_task: AtomicUsize,
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

/// Attaches the task behind `shared` to `group` (`mem_cgroup_kmem_attach`).
pub(crate) fn attach(shared: &TaskShared, group: &Arc<MemCgroup>) -> Result<()> {
    // Pins and the swap are several steps: a fork copies none half done.
    let _gate = crate::sync::fork_gate_enter();
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
    // and with the owner's CAS in `Task::arm_fast_key` (its Release half is
    // what `loom_task::arming_racing_attach_leaves_no_stale_key` checks;
    // for the rest see `objcg_cache`'s module doc).
    shared
        .objcgs
        .fetch_or(CURRENT_OBJCG_UPDATE_FLAG, Ordering::AcqRel);
    // Disarm the owner's allocator fast path (which does not read the
    // word); see `Task::arm_fast_key` for why this store wins any race
    // with the owner arming it.
    // Relaxed: the owner reads the key Relaxed, and the race with its
    // arming is decided by the OR above and its CAS (`arm_fast_key`).
    shared.cache.fast_key.store(0, Ordering::Relaxed);
    old.unpin_task();
    Ok(())
}
