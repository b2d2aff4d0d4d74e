//! Object cgroups: the refcounted, reparentable charge buckets.
//!
//! An [`ObjCgroup`] (the kernel's `struct obj_cgroup`) exists per
//! (group, node). Charged objects, stock slots and task caches point to an
//! objcg, never to the group, so a removed group's objects keep pointing to
//! a live bucket whose *owner* is now an ancestor.
//!
//! # Owner resolution (`obj_cgroup_memcg`)
//! The kernel re-points every objcg of a dying memcg (its own and those it
//! inherited, kept on `objcg_list`) at the parent under `objcg_lock`. Here
//! each objcg keeps its *origin* group, and its current owner is the nearest
//! online group on the origin's ancestor chain. Marking a group offline
//! therefore re-points all its objcgs (own and inherited) at the parent in
//! one store, with no list and no lock. This gives the same owner as the
//! kernel at every instant because, as in the kernel, a group with children
//! cannot be removed, so objcgs only ever move one level up at a time.
//! The origin is kept alive by the objcg (an `Arc`), which keeps the whole
//! ancestor chain alive, so resolving the owner never touches freed memory.
//!
//! # Storage (type-stable, as `SLAB_TYPESAFE_BY_RCU`)
//! Objcgs live in an [`ObjcgTable`] of chunks that are never freed while the
//! controller lives; a released objcg's entry is reused for a later one with
//! a new generation. A 32-bit id names an entry, so stock slots can pack
//! (id, bytes, references) in one atomic word, and a reader that loads an id
//! from a group's slot can `tryget` it without RCU: the memory is always an
//! objcg, and the generation tells whether it is still the one meant.
//!
//! # References (`percpu_ref`), counted in bytes
//! `refcnt` counts holders and charged bytes: one reference per holder (the
//! group's slot, the live reference, dropped at offline as by
//! `percpu_ref_kill`; task cache entries and a task's byte cache; page
//! stock slots; a reservation) and one per byte of its charge held outside
//! its pool and the page counters: the bytes of live objects and
//! reservations, and the pre-charged bytes of task caches, foreign slots
//! and byte-stock slots. The kernel takes one reference per slab object;
//! here a byte carries its reference wherever it goes, so that handing a
//! cache's bytes to an object, and an object's back, moves references
//! without counting objects: the allocator's hit path touches no
//! reference count (issue 12). References are taken when bytes leave the
//! page counters (a page charge: all its bytes, the object's and the
//! remainder's) or the pool (a stock slot adopting it), and put when bytes
//! go back to either. [`ObjCgroup::tryget`] succeeds while the count is
//! above zero, even after the live reference was dropped. The last `put`
//! releases: `nr_charged_bytes` must then be a whole number of pages,
//! which are uncharged from the current owner (`obj_cgroup_release`).
//! Root objcgs are never released; their get and put do nothing.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::engine::memcg::MemCgroup;
use crate::limit::PAGE_SIZE;
use crate::sync::{
    AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering,
};

/// Entries per chunk of the table.
#[cfg(not(all(test, memcg_loom)))]
const CHUNK_LEN: usize = 64;
#[cfg(all(test, memcg_loom))]
const CHUNK_LEN: usize = 4;

/// Most chunks a table can have (so at most `CHUNK_LEN * MAX_CHUNKS - 1`
/// objcgs alive at once; id 0 is never used).
#[cfg(not(all(test, memcg_loom)))]
const MAX_CHUNKS: usize = 1 << 16;
#[cfg(all(test, memcg_loom))]
const MAX_CHUNKS: usize = 8;

/// One (group, node) charge bucket.
#[derive(Debug)]
pub(crate) struct ObjCgroup {
    /// Index in the table; never changes.
    id: u32,
    /// Serial of the controller whose table holds this entry.
    ctrl_serial: u64,
    /// Bumped each time the entry is reused.
    generation: AtomicU32,
    /// Reference count; 0 while the entry is free.
    refcnt: AtomicI64,
    /// `Arc::into_raw` of the origin group; null only before the first use.
    origin: AtomicPtr<MemCgroup>,
    /// NUMA node of this objcg.
    nid: AtomicU32,
    /// Root objcgs are never released and ignore get/put.
    is_root: AtomicBool,
    /// Sub-page remainders already charged as pages (the central pool).
    pub(crate) nr_charged_bytes: AtomicU64,
    /// Pages currently charged through this objcg (for the invariants).
    pub(crate) charged_pages: AtomicI64,
    /// Bytes of live charged objects and reservations (flushed values).
    pub(crate) live_bytes: AtomicI64,
    /// Number of live reservations, each holding a reference of its own
    /// (for the invariants: the checker cannot enumerate them).
    pub(crate) live_reservations: AtomicI64,
    /// Next free id while on the free list.
    next_free: AtomicU32,
    /// An opaque word owned by the runtime's allocator (the mimalloc heap
    /// of `MemcgMimalloc`), 0 until it sets one. It survives the reuse of
    /// the entry for the same node: every object of an incarnation is gone
    /// before the entry is freed (each of its bytes holds a reference), so the next one
    /// can reuse it. Reuse for another node resets it to 0 (the heap may be
    /// bound to the old node's memory).
    pub(crate) alloc_cookie: AtomicUsize,
}

/// The node of the objcg whose raw charge word is `raw`.
///
/// # Safety
/// As [`alloc_cookie`].
#[cfg_attr(any(not(feature = "mimalloc"), memcg_loom), allow(dead_code))]
#[inline]
pub(crate) unsafe fn objcg_nid(raw: usize) -> usize {
    // SAFETY: by the caller's guarantee `raw` points to a live entry.
    unsafe { (*(raw as *const ObjCgroup)).nid() }
}

/// The `alloc_cookie` of the objcg whose raw charge word is `raw`.
///
/// # Safety
/// `raw` is [`crate::engine::Charge::into_raw`] of a charge made by a controller
/// that is still alive (the address of an entry of its type-stable table).
#[cfg_attr(any(not(feature = "mimalloc"), memcg_loom), allow(dead_code))]
#[inline(always)]
pub(crate) unsafe fn alloc_cookie<'a>(raw: usize) -> &'a AtomicUsize {
    // SAFETY: by the caller's guarantee `raw` points to a live entry.
    unsafe { &(*(raw as *const ObjCgroup)).alloc_cookie }
}

impl ObjCgroup {
    fn vacant(id: u32, ctrl_serial: u64) -> Self {
        ObjCgroup {
            id,
            ctrl_serial,
            generation: AtomicU32::new(0),
            refcnt: AtomicI64::new(0),
            origin: AtomicPtr::new(std::ptr::null_mut()),
            nid: AtomicU32::new(0),
            is_root: AtomicBool::new(false),
            nr_charged_bytes: AtomicU64::new(0),
            charged_pages: AtomicI64::new(0),
            live_bytes: AtomicI64::new(0),
            live_reservations: AtomicI64::new(0),
            next_free: AtomicU32::new(0),
            alloc_cookie: AtomicUsize::new(0),
        }
    }

    /// The table index (never 0 for an allocated objcg).
    #[inline]
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// The generation of the current incarnation.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        // Relaxed: an Acquire here would pair with nothing (the generation
        // is bumped by a Relaxed RMW). The holder's reference orders the
        // bump before this load: `tryget`'s Acquire CAS on `refcnt` reads
        // from `install`'s Release store (or an RMW after it), which
        // follows the bump; the installing thread reads its own bump. The
        // loom model `loom_table::stale_word_lookup_racing_reuse_is_rejected`
        // fails when that count pairing is weakened.
        self.generation.load(Ordering::Relaxed)
    }

    /// Slot word naming this incarnation: `generation << 32 | id`.
    #[inline]
    pub(crate) fn slot_word(&self) -> u64 {
        (u64::from(self.generation()) << 32) | u64::from(self.id)
    }

    #[inline]
    pub(crate) fn ctrl_serial(&self) -> u64 {
        self.ctrl_serial
    }

    /// The node this objcg charges.
    #[inline]
    pub(crate) fn nid(&self) -> usize {
        self.nid.load(Ordering::Relaxed) as usize
    }

    #[inline]
    pub(crate) fn is_root(&self) -> bool {
        self.is_root.load(Ordering::Relaxed)
    }

    /// Current reference count (a snapshot).
    pub(crate) fn refcnt(&self) -> i64 {
        self.refcnt.load(Ordering::Relaxed)
    }

    /// The group this objcg was made for. The caller holds a reference.
    pub(crate) fn origin(&self) -> &MemCgroup {
        // Acquire: pairs with the AcqRel swap in `install`. No loom model
        // fails without it, and none can: every holder's reference is
        // ordered after `install` by the count (`tryget`'s Acquire CAS
        // reading `install`'s Release store, or the installing thread
        // itself), and that already orders the swap before this load. Kept
        // because this load guards the dereference below.
        let p = self.origin.load(Ordering::Acquire);
        // SAFETY:
        // - the caller holds a reference, so the entry is in use and `origin`
        //   holds the `Arc::into_raw` pointer stored by `install` (Acquire
        //   pairs with its AcqRel swap); it is never null once installed;
        // - that `Arc` is only given back when the entry is reused for a new
        //   objcg, which needs the count to reach zero first, so the group
        //   outlives the borrow of `self`.
        unsafe { &*p }
    }

    /// `obj_cgroup_memcg`: the group charged now, the nearest online group
    /// on the origin's ancestor chain. The caller holds a reference.
    pub(crate) fn memcg(&self) -> &MemCgroup {
        let mut m = self.origin();
        while !m.is_online() {
            match m.parent() {
                Some(p) => m = p,
                None => break,
            }
        }
        m
    }

    /// `obj_cgroup_get` (by `nr` references): the caller already holds one.
    #[inline]
    pub(crate) fn get(&self, nr: u64) {
        if self.is_root() || nr == 0 {
            return;
        }
        // Relaxed: new references are made from an existing one.
        self.refcnt.fetch_add(nr as i64, Ordering::Relaxed);
    }

    /// `obj_cgroup_tryget`: takes a reference if the count is above zero
    /// (even after the live reference was dropped).
    pub(crate) fn tryget(&self) -> bool {
        if self.is_root() {
            // Relaxed: root entries are installed in `Core::new`, before
            // the controller can reach another thread, and never released.
            return self.refcnt.load(Ordering::Relaxed) > 0;
        }
        let mut cur = self.refcnt.load(Ordering::Relaxed);
        loop {
            if cur <= 0 {
                return false;
            }
            // Acquire: pairs with the Release in `install` (entry contents)
            // and with the AcqRel decrements of other holders.
            match self.refcnt.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Faults the checkers look for, counted where they happen.
#[derive(Debug, Default)]
pub(crate) struct FaultCounters {
    /// Puts that took a count below zero (a reference dropped twice).
    pub(crate) refcount_underflows: AtomicU64,
    /// Releases that found `nr_charged_bytes` not a whole number of pages.
    pub(crate) unaligned_releases: AtomicU64,
}

/// The controller's type-stable store of objcgs.
#[derive(Debug)]
pub(crate) struct ObjcgTable {
    ctrl_serial: u64,
    chunks: Box<[AtomicPtr<ObjCgroup>]>,
    /// Serialises allocation (the only popper of the free list).
    alloc_lock: Mutex<AllocState>,
    /// Lock-free free list: `tag << 32 | id`, id 0 = empty.
    free_head: AtomicU64,
    pub(crate) faults: FaultCounters,
}

#[derive(Debug, Default)]
struct AllocState {
    /// Ids below this have been handed out at least once.
    next_unused: u32,
}

impl ObjcgTable {
    pub(crate) fn new(ctrl_serial: u64) -> Self {
        ObjcgTable {
            ctrl_serial,
            chunks: (0..MAX_CHUNKS)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            // Id 0 is reserved: a zero slot word means "empty".
            alloc_lock: Mutex::new(AllocState { next_unused: 1 }),
            free_head: AtomicU64::new(0),
            faults: FaultCounters::default(),
        }
    }

    /// The entry with this id, if its chunk exists.
    #[inline]
    pub(crate) fn get(&self, id: u32) -> Option<&ObjCgroup> {
        let id = id as usize;
        let chunk = self.chunks.get(id / CHUNK_LEN)?;
        // Acquire: pairs with the Release store publishing the chunk
        // (`prepare`, `install`), so that `get` is safe for an id read from
        // anywhere. No loom model fails without this pair: every caller
        // learns its id through a path that already orders the chunk's
        // publication before it (a slot word stored after `install`, a
        // stock or task word taken with AcqRel from a holder, the table's
        // lock in `entries`), including a drain on another thread of a
        // stock slot naming a new chunk (`loom_table::create_in_new_chunk_
        // racing_drain_and_lookup_conserves_bytes`). Kept: the unsafe
        // dereference below must not depend on how callers got the id.
        let base = NonNull::new(chunk.load(Ordering::Acquire))?;
        // SAFETY:
        // - a published chunk holds `CHUNK_LEN` initialised entries and is
        //   freed only when the table drops, which `&self` prevents;
        // - `id % CHUNK_LEN < CHUNK_LEN`.
        Some(unsafe { &*base.as_ptr().add(id % CHUNK_LEN) })
    }

    /// Every entry ever handed out (in use or free), for the checkers.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &ObjCgroup> + '_ {
        let end = self.alloc_lock.lock().next_unused;
        (1..end).filter_map(move |id| self.get(id))
    }

    /// Makes sure the chunks for the next `n` new entries exist, allocating
    /// them outside the table's lock, so that the `install`s that follow
    /// (under the tree lock) do not allocate.
    pub(crate) fn prepare(&self, n: usize) {
        let first = self.alloc_lock.lock().next_unused as usize;
        let last = first + n.saturating_sub(1);
        for chunk in first / CHUNK_LEN..=last / CHUNK_LEN {
            let Some(slot) = self.chunks.get(chunk) else {
                return;
            };
            // Relaxed: only compared with null (a chunk is never
            // unpublished); a stale null makes a spare chunk that the
            // check under the lock below discards. Entries are read
            // through `get`, which acquires.
            if !slot.load(Ordering::Relaxed).is_null() {
                continue;
            }
            let raw = make_chunk(chunk, self.ctrl_serial);
            let spare = {
                let _state = self.alloc_lock.lock();
                if slot.load(Ordering::Relaxed).is_null() {
                    // Release: publishes the initialised entries to `get`
                    // (see there for why no loom model fails without it).
                    slot.store(raw, Ordering::Release);
                    None
                } else {
                    Some(raw)
                }
            };
            if let Some(raw) = spare {
                // SAFETY: made by `make_chunk` just above, never published.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(raw, CHUNK_LEN)) });
            }
        }
    }

    /// Whether the next `n` new entries have their chunks (`prepare` was
    /// not undone by a concurrent install): then `install` does not
    /// allocate.
    pub(crate) fn is_prepared(&self, n: usize) -> bool {
        let first = self.alloc_lock.lock().next_unused as usize;
        let last = first + n.saturating_sub(1);
        // Relaxed: only compared with null; a stale null refuses the
        // creation, which prepares and retries.
        (first / CHUNK_LEN..=last / CHUNK_LEN).all(|chunk| {
            self.chunks
                .get(chunk)
                .is_none_or(|slot| !slot.load(Ordering::Relaxed).is_null())
        })
    }

    /// The ids of the free list, in order, as far as it can be walked: ends
    /// at the first id seen twice (a cycle) or after `limit` steps.
    pub(crate) fn free_list(&self, limit: usize) -> (Vec<u32>, bool) {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Acquire: pairs with the Release CAS of `push_free`, so that the
        // first link is the pushed one. No loom model fails without it: the
        // checkers call this under the tree and task-list locks, and a push
        // racing it (a holder's last put elsewhere) only makes the walk
        // transient, which the checkers allow under concurrency.
        let mut id = self.free_head.load(Ordering::Acquire) as u32;
        while id != 0 {
            if out.len() >= limit || !seen.insert(id) {
                out.push(id);
                return (out, true);
            }
            out.push(id);
            let Some(o) = self.get(id) else {
                break;
            };
            id = o.next_free.load(Ordering::Relaxed);
        }
        (out, false)
    }

    /// Pushes `objcg` on the free list without a release (a deliberate
    /// double release, for the checkers' tests).
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) fn push_free_for_fault(&self, objcg: &ObjCgroup) {
        self.push_free(objcg);
    }

    /// Makes a new objcg for `origin` on `nid` with one reference (the live
    /// reference of the group's slot). `None` when the table is full or
    /// memory for a new chunk cannot be had.
    pub(crate) fn install(
        &self,
        origin: &Arc<MemCgroup>,
        nid: usize,
        is_root: bool,
    ) -> Option<&ObjCgroup> {
        let mut state = self.alloc_lock.lock();
        let objcg = match self.pop_free() {
            Some(o) => o,
            None => {
                let id = state.next_unused;
                let chunk = id as usize / CHUNK_LEN;
                let slot = self.chunks.get(chunk)?;
                if slot.load(Ordering::Relaxed).is_null() {
                    // Only without `prepare` before (every caller prepares;
                    // a full table fails below): allocates under the lock.
                    // Release: publishes the initialised entries to `get`
                    // (see there for why no loom model fails without it).
                    slot.store(make_chunk(chunk, self.ctrl_serial), Ordering::Release);
                }
                state.next_unused = id.checked_add(1)?;
                self.get(id)?
            }
        };
        objcg.generation.fetch_add(1, Ordering::Relaxed);
        // The allocator's cookie is per node (`MemcgMimalloc` binds a heap
        // to its node's memory): an entry reused for another node starts
        // without one. Relaxed: the entry is not published yet (below).
        if objcg.nid.swap(nid as u32, Ordering::Relaxed) != nid as u32 {
            objcg.alloc_cookie.store(0, Ordering::Relaxed);
        }
        objcg.is_root.store(is_root, Ordering::Relaxed);
        objcg.nr_charged_bytes.store(0, Ordering::Relaxed);
        objcg.charged_pages.store(0, Ordering::Relaxed);
        objcg.live_bytes.store(0, Ordering::Relaxed);
        objcg.live_reservations.store(0, Ordering::Relaxed);
        let raw = Arc::into_raw(Arc::clone(origin)) as *mut MemCgroup;
        // AcqRel: the Release half pairs with `origin()`'s Acquire, the
        // Acquire half with `release`'s read of the previous pointer. No
        // loom model fails without either: the Release store of `refcnt`
        // below already publishes this swap to every later holder, and the
        // previous incarnation's accesses happen before this pop (its last
        // put, the Release push and the Acquire pop). Kept, as `origin()`'s
        // load, for the unsafe pointer it carries.
        let previous = objcg.origin.swap(raw, Ordering::AcqRel);
        if !previous.is_null() {
            // SAFETY: the previous incarnation's `Arc::into_raw`, kept past
            // its release (see `release`) and given back exactly once, here.
            drop(unsafe { Arc::from_raw(previous as *const MemCgroup) });
        }
        // Release: pairs with the Acquire of `tryget`/`generation`, making
        // the fields above visible to whoever takes a reference.
        objcg.refcnt.store(1, Ordering::Release);
        Some(objcg)
    }

    /// Pops a free entry; only called under `alloc_lock`, so there is one
    /// popper and the classic ABA of a Treiber stack cannot happen (pushers
    /// only ever change the head, which makes a stale CAS fail).
    fn pop_free(&self) -> Option<&ObjCgroup> {
        // Acquire: pairs with the Release CAS of `push_free`, so that the
        // head's `next_free` read below is the pushed one. No loom model
        // fails with this load alone weakened (loom did not produce the
        // stale link read in `loom_table::release_racing_allocation_keeps_
        // the_free_list_exact`); the same pairing on the CAS's failure path
        // below, which feeds the same read, is killed by that model.
        let mut head = self.free_head.load(Ordering::Acquire);
        loop {
            let id = head as u32;
            let objcg = self.get(id).filter(|_| id != 0)?;
            let next = objcg.next_free.load(Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(next);
            // Success Relaxed: it reads the same head as the Acquire load
            // or failed CAS before it (every push and pop bumps the tag, so
            // an equal value is the same store), which already acquired the
            // pushed `next_free` and the released entry's stores.
            // Failure Acquire: pairs with the Release push of the new head,
            // whose `next_free` the next iteration reads (the loom model
            // `loom_table::release_racing_allocation_keeps_the_free_list_
            // exact` fails without it).
            match self
                .free_head
                .compare_exchange(head, new, Ordering::Relaxed, Ordering::Acquire)
            {
                Ok(_) => return Some(objcg),
                Err(actual) => head = actual,
            }
        }
    }

    /// Pushes a released entry; lock-free, callable from any context.
    fn push_free(&self, objcg: &ObjCgroup) {
        let mut head = self.free_head.load(Ordering::Relaxed);
        loop {
            objcg.next_free.store(head as u32, Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(objcg.id);
            // Release: publishes `next_free` and the release's stores to the popper.
            match self.free_head.compare_exchange_weak(
                head,
                new,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Takes a reference on the objcg named by a group slot word
    /// (`generation << 32 | id`), if it is still that incarnation and alive.
    ///
    /// Returns `Err(objcg)` with the reference taken when the entry holds a
    /// later incarnation: the caller gives it back with `Core::objcg_put`,
    /// which finishes the release if it was the last one.
    pub(crate) fn tryget_word(&self, word: u64) -> Option<Result<&ObjCgroup, &ObjCgroup>> {
        if word == 0 {
            return None;
        }
        let objcg = self.get(word as u32)?;
        if !objcg.tryget() {
            return None;
        }
        if objcg.generation() != (word >> 32) as u32 {
            return Some(Err(objcg));
        }
        Some(Ok(objcg))
    }

    /// `obj_cgroup_put` (by `nr` references). The last put releases the
    /// objcg through `release`, which uncharges its leftover pages.
    pub(crate) fn put(&self, objcg: &ObjCgroup, nr: u64) -> Option<Released> {
        if objcg.is_root() || nr == 0 {
            return None;
        }
        let nr = nr as i64;
        // AcqRel: the Release orders this holder's updates before the free;
        // the Acquire on the last put sees every other holder's updates
        // (the loom models of entry reuse in `loom_reclaim` fail with
        // either half missing).
        let old = objcg.refcnt.fetch_sub(nr, Ordering::AcqRel);
        if old > nr {
            return None;
        }
        if old < nr {
            self.faults
                .refcount_underflows
                .fetch_add(1, Ordering::Relaxed);
            objcg.refcnt.fetch_add(nr - old.max(0), Ordering::Relaxed);
            return None;
        }
        Some(self.release(objcg))
    }

    /// `obj_cgroup_release`: the entry goes back to the free list; returns
    /// what the caller must uncharge (the leftover pages and the group).
    fn release(&self, objcg: &ObjCgroup) -> Released {
        // Relaxed: the last put's AcqRel already orders every holder's
        // pool updates before this, and the swap, a read-modify-write,
        // takes the latest value anyway; nothing is published through the
        // pool (the free list's Release push orders the swap before reuse).
        let bytes = objcg.nr_charged_bytes.swap(0, Ordering::Relaxed);
        if !bytes.is_multiple_of(PAGE_SIZE) {
            self.faults
                .unaligned_releases
                .fetch_add(1, Ordering::Relaxed);
        }
        // The entry keeps its origin until it is reused, so that even a use
        // after release (a reference-count bug, which the checkers report)
        // reads a live group instead of freed memory.
        // Acquire: pairs with `install`'s swap; redundant with the last
        // put's Acquire (which reads `install`'s Release store of the count
        // through its release sequence), so no loom model fails without it;
        // kept for the unsafe pointer it carries, as in `origin()`.
        let raw = objcg.origin.load(Ordering::Acquire) as *const MemCgroup;
        // SAFETY: `raw` came from `Arc::into_raw` in `install` and the entry
        // still owns that reference; `ManuallyDrop` leaves it owned while we
        // take a second one.
        let origin = Arc::clone(&std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(raw) }));
        let released = Released {
            origin,
            nid: objcg.nid(),
            nr_pages: bytes / PAGE_SIZE,
        };
        objcg.charged_pages.store(0, Ordering::Relaxed);
        self.push_free(objcg);
        released
    }
}

/// A new chunk of vacant entries (the `chunk`-th), as a raw pointer.
fn make_chunk(chunk: usize, ctrl_serial: u64) -> *mut ObjCgroup {
    let base = chunk * CHUNK_LEN;
    let entries: Box<[ObjCgroup]> = (0..CHUNK_LEN)
        .map(|i| ObjCgroup::vacant((base + i) as u32, ctrl_serial))
        .collect();
    Box::into_raw(entries) as *mut ObjCgroup
}

/// What a released objcg leaves behind: its leftover pages, still charged
/// to the owner chain of `origin`, which the caller uncharges.
#[derive(Debug)]
pub(crate) struct Released {
    pub(crate) origin: Arc<MemCgroup>,
    pub(crate) nid: usize,
    pub(crate) nr_pages: u64,
}

impl Drop for ObjcgTable {
    fn drop(&mut self) {
        // Relaxed throughout: `&mut self`, nothing else can touch the table.
        for chunk in self.chunks.iter() {
            let raw = chunk.load(Ordering::Relaxed);
            if raw.is_null() {
                continue;
            }
            // SAFETY: `raw` was made by `Box::into_raw` of a boxed slice of
            // `CHUNK_LEN` entries in `install`; `&mut self` means no reader.
            let entries =
                unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(raw, CHUNK_LEN)) };
            for e in entries.iter() {
                let origin = e.origin.swap(std::ptr::null_mut(), Ordering::Relaxed);
                if !origin.is_null() {
                    // SAFETY: an entry still in use owns this `Arc`; the
                    // table is going away, so nothing can use it again.
                    drop(unsafe { Arc::from_raw(origin as *const MemCgroup) });
                }
            }
        }
    }
}
