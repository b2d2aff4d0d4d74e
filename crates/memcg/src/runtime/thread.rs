//! Threads as tasks: each thread's engine [`Task`] lives in thread-locals.
//!
//! Following the pattern of `reference/percpu.md` §4.3: the task and the
//! thread's state are `const`-initialised thread-locals without `Drop`
//! (plain `#[thread_local]` statics, readable in every TLS destructor), and
//! one `Drop` guard, registered lazily on the thread's first charge, runs
//! the seed's exit path. Charges after that (from other TLS destructors)
//! go to root and are still uncharged correctly.
//!
//! Two marks say "inside memcg": the `BUSY` flag of a slow path, and the
//! hit mark a hit path puts in the thread's hit cache pointer
//! ([`Local::hot`]). An allocation made while either is set (from the
//! engine itself, from a signal handler, from initialisation) takes a
//! lock-free bypass that charges root without touching the task. Reclaim
//! and kill callbacks never run inside an allocation: they run on the
//! controller's reclaimer thread, whose own charges the engine forces (the
//! kernel's `PF_MEMALLOC`).

use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;

pub(crate) use crate::engine::fast_path::HIT_ADDR_AT;
use crate::engine::fast_path::{ANY_KEY_HITS, HEAP_KEY_HITS};
use crate::engine::task_shared::{CacheSlot, TaskCache, HIT_MARK_BIT};
use crate::engine::{Charge, ChargeKind, Group, Task, TaskHandle};
use crate::error::{Error, Result};
use crate::runtime::global;
use crate::sync::{compiler_fence, fork_gate, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// The task's life, in bits 0–1 of [`Local::flags`]: no task yet.
const FRESH: u8 = 0;
/// The task exists and is in use.
const ACTIVE: u8 = 1;
/// The exit guard ran: no task any more.
const TORN_DOWN: u8 = 2;
/// Bits 0–1 of [`Local::flags`].
const LIFE: u8 = 3;
/// Bit 2 of [`Local::flags`]: inside memcg (an allocation now is re-entrant).
const BUSY: u8 = 4;

/// The thread's flags, hit-path cache pointer and task side by side in
/// one thread-local, so that every access finds them from one
/// thread-local address (an access to a thread-local of a library crate
/// costs an instruction for its offset, then the access), and so that the
/// fork handler reads a thread's flags and pointer through one registered
/// address ([`busy_at`]).
struct Local {
    /// The thread's state in one byte, for the slow paths (the hit paths
    /// read [`Local::hot`] instead): `LIFE` bits, `BUSY`.
    ///
    /// Its `LIFE` bits are a copy for the fast path; [`LIFE_OF_TASK`] is the
    /// truth. `BUSY` is set by a read-modify-write of this byte, and a
    /// signal handler that makes the thread's task between the read and the
    /// write (the thread's first allocation, interrupted) has its `ACTIVE`
    /// overwritten by the stale `FRESH`: the fast path then misses, and the
    /// slow path copies the truth back ([`sync_flags`]).
    ///
    /// An atomic, read and written by this thread with `Relaxed` loads and
    /// stores (plain moves on x86, as a `Cell` was) and ordered against
    /// its own signal handlers by compiler fences: a handler reading it is
    /// defined behaviour. The fork's prepare handler reads it from another
    /// thread (`runtime::fork`), through the address registered with the
    /// thread's task.
    flags: AtomicU8,
    /// The byte cache the allocator's hit paths use: the task's own while
    /// the life is `ACTIVE` and the thread is not inside memcg, else
    /// [`IDLE`], on which every hit path misses. So a hit path reads no
    /// flags: it loads this pointer, sets [`HIT_MARK_BIT`] in it for its
    /// duration (its busy mark: the pointer then names its slot's mark,
    /// [`CacheSlot`], on which a signal handler arriving meanwhile misses,
    /// and whose slow path sees the thread busy, [`is_busy`]) and puts the
    /// pointer back. Slow paths set it to [`IDLE`] with the
    /// `BUSY` flag and back when they leave ([`enter_busy`],
    /// [`leave_busy`]). Written only by this thread; the fork's prepare
    /// handler reads it ([`busy_at`]).
    ///
    /// The hit path's mark is not [`IDLE`]'s cache (it is [`IDLE`]'s slot's
    /// mark), so that a thread with no task yet (its pointer is [`IDLE`]'s
    /// cache) is seen busy inside a hit path too: a
    /// signal handler arriving then takes the re-entrant path instead of
    /// making the task, whose cache pointer the hit path would overwrite
    /// with the [`IDLE`] it loaded. A handler arriving before the mark
    /// may make the task; the hit path then puts [`IDLE`] back, and the
    /// thread's next allocation misses, takes the slow path, and leaves it
    /// with the task's cache ([`leave_busy`]).
    hot: AtomicPtr<TaskCache>,
    /// The thread's task, initialised while the life is `ACTIVE`.
    task: UnsafeCell<MaybeUninit<Task>>,
    /// The thread's copy of a word the allocator's free reads on its hit
    /// path ([`free_word`]): `MemcgMimalloc` keeps mimalloc's validated
    /// page map here (`mi_page_map::validated_map`), 0 until the thread's
    /// first free that finds it validated. A library crate's static costs
    /// the free two loads (its address from the GOT, then the value); a
    /// field of this thread-local, whose offset the hit path has in a
    /// register already, costs one. Written by this thread only, with a
    /// single store; a signal handler reads either value.
    #[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
    free_word: AtomicUsize,
    /// The byte count a hit path's `then` keeps across its call
    /// (`MemcgMimalloc`'s call of mimalloc, [`keep_hit_size`]), read back
    /// only when the call fails: a store here rather than a callee-saved
    /// register kept across the call (whose saving, restoring and the
    /// stack's alignment cost three instructions more per allocation).
    /// Written only inside a hit (the thread marked busy, its key armed),
    /// which no signal handler's hit path can be (it finds the mark and
    /// misses), so a handler never overwrites it between the store and
    /// the read.
    #[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
    hit_size: AtomicUsize,
    /// The block, and its layout's size and alignment, that a growth's hit
    /// keeps across its call (`MemcgMimalloc`'s `realloc`,
    /// [`keep_hit_realloc`]; the new size goes in `hit_size`), read back
    /// only when the call fails. Written and read as `hit_size` is.
    #[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
    hit_block: AtomicPtr<u8>,
    #[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
    hit_layout: [AtomicUsize; 2],
}

/// The cache of [`Local::hot`] while no hit path may hit (never written):
/// no task, or a slow path running. A slot, so that a hit path's mark
/// (`HIT_MARK_BIT` set in the pointer) names a cache on which every hit
/// misses here too.
static IDLE: CacheSlot = CacheSlot::idle();

/// [`IDLE`]'s cache's address, as [`Local::hot`] holds it.
#[inline(always)]
fn idle() -> *mut TaskCache {
    IDLE.cache_ptr()
}

/// Whether the cache pointer `c` is a hit path's mark (`HIT_MARK_BIT`
/// set; see [`CacheSlot`]).
#[inline(always)]
fn is_hit_mark(c: *const TaskCache) -> bool {
    c.addr() & HIT_MARK_BIT != 0
}

thread_local! {
    /// The thread's flags ([`Local::flags`]), hit-path cache
    /// ([`Local::hot`]) and task ([`Local::task`]).
    static LOCAL: Local = const {
        Local {
            flags: AtomicU8::new(FRESH),
            hot: AtomicPtr::new(IDLE.cache_ptr()),
            task: UnsafeCell::new(MaybeUninit::uninit()),
            free_word: AtomicUsize::new(0),
            hit_size: AtomicUsize::new(0),
            hit_block: AtomicPtr::new(std::ptr::null_mut()),
            hit_layout: [AtomicUsize::new(0), AtomicUsize::new(0)],
        }
    };
}

/// Keeps `size` in this thread's [`Local::hit_size`] (inside a hit's
/// `then`, before its call).
#[inline(always)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) fn keep_hit_size(size: usize) {
    LOCAL.with(|l| l.hit_size.store(size, Ordering::Relaxed));
}

/// What [`keep_hit_size`] kept (the same hit's `then`, after its call).
#[inline(always)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) fn kept_hit_size() -> usize {
    LOCAL.with(|l| l.hit_size.load(Ordering::Relaxed))
}

/// Keeps a growing block, its layout's size and alignment, and its new
/// size in this thread's [`Local::hit_block`], [`Local::hit_layout`] and
/// [`Local::hit_size`] (inside a growth's hit `then`, before its call).
#[inline(always)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) fn keep_hit_realloc(block: *mut u8, size: usize, align: usize, new_size: usize) {
    LOCAL.with(|l| {
        l.hit_block.store(block, Ordering::Relaxed);
        l.hit_layout[0].store(size, Ordering::Relaxed);
        l.hit_layout[1].store(align, Ordering::Relaxed);
        l.hit_size.store(new_size, Ordering::Relaxed);
    });
}

/// What [`keep_hit_realloc`] kept, in its order (the same hit's `then`,
/// after its call).
#[inline(always)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) fn kept_hit_realloc() -> (*mut u8, usize, usize, usize) {
    LOCAL.with(|l| {
        (
            l.hit_block.load(Ordering::Relaxed),
            l.hit_layout[0].load(Ordering::Relaxed),
            l.hit_layout[1].load(Ordering::Relaxed),
            l.hit_size.load(Ordering::Relaxed),
        )
    })
}

/// This thread's [`Local::free_word`].
#[inline(always)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) fn free_word() -> usize {
    LOCAL.with(|l| l.free_word.load(Ordering::Relaxed))
}

/// Writes this thread's [`Local::free_word`] (the allocator's cold path).
#[inline]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) fn set_free_word(word: usize) {
    LOCAL.with(|l| l.free_word.store(word, Ordering::Relaxed));
}

/// This thread's [`Local::hot`].
#[inline(always)]
fn hot() -> *mut TaskCache {
    LOCAL.with(|l| l.hot.load(Ordering::Relaxed))
}

/// Writes this thread's [`Local::hot`].
#[inline(always)]
fn set_hot(c: *mut TaskCache) {
    LOCAL.with(|l| l.hot.store(c, Ordering::Relaxed));
}

/// The cache a hit path uses, as [`enter_hit`] loaded it from
/// [`Local::hot`]: [`IDLE`]'s, a hit mark (when the thread may not hit;
/// every hit path misses on both), or the thread's task's. Kept as the
/// pointer, with its slot's provenance, for [`leave_hit`] to put back
/// (a hit of `MemcgMimalloc`'s allocation clears the mark in place
/// instead, [`unmark_hit`]).
#[derive(Clone, Copy)]
struct Hot(*mut TaskCache);

impl std::ops::Deref for Hot {
    type Target = TaskCache;

    #[inline(always)]
    fn deref(&self) -> &TaskCache {
        // SAFETY: `Local::hot` holds `IDLE`'s cache, a hit mark (the mark
        // of `IDLE`'s or of the task's slot: a signal handler's hit path
        // interrupting another) or the cache of this thread's active task,
        // which lives until its exit guard, which stores `IDLE` first; a
        // `Hot` lives only from `enter_hit` to `leave_hit`.
        unsafe { &*self.0 }
    }
}

/// Starts a hit path: returns the cache to use and marks the thread busy
/// by setting [`HIT_MARK_BIT`] in [`Local::hot`] (one `or` of memory),
/// which then names its slot's mark (see [`CacheSlot`]), then a compiler
/// fence, so that no access of the engine that follows is moved before
/// the mark.
#[inline(always)]
fn enter_hit() -> Hot {
    let c = hot();
    // The pointer is read again for the mark, so that the compiler makes
    // the mark one `or` of memory rather than a copy, an `or` and a store
    // (callgrind); nothing can write it in between but a signal handler,
    // which leaves it as it found it.
    set_hot(hot().map_addr(|a| a | HIT_MARK_BIT));
    compiler_fence(Ordering::SeqCst);
    Hot(c)
}

/// Ends a hit path begun by [`enter_hit`], which returned `c`.
#[inline(always)]
fn leave_hit(c: Hot) {
    compiler_fence(Ordering::SeqCst);
    set_hot(c.0);
}

/// Ends a hit path begun by [`enter_hit`] that hit: clears
/// [`HIT_MARK_BIT`] in [`Local::hot`] (one `and` of memory). A hit path
/// hits only on a task's cache, which `enter_hit` loaded unmarked (every
/// hit path misses on a mark and on [`IDLE`]), so this puts back what
/// [`leave_hit`] would, with no register kept for it across the hit's
/// call; a signal handler's hit path meanwhile found the mark, missed and
/// put the mark back.
#[inline(always)]
fn unmark_hit() {
    compiler_fence(Ordering::SeqCst);
    // Read again, as in `enter_hit`: one `and` of memory.
    set_hot(hot().map_addr(|a| a & !HIT_MARK_BIT));
}

/// Whether `c` is [`IDLE`]'s cache or a hit mark (not a task's cache).
#[inline(always)]
fn is_idle(c: Hot) -> bool {
    c.0 == idle() || is_hit_mark(c.0)
}

thread_local! {
    /// The task's life, written with plain stores only (never a
    /// read-modify-write), so nothing can put back a stale value.
    static LIFE_OF_TASK: Cell<u8> = const { Cell::new(FRESH) };
    /// Set while this thread checks the invariants: its allocations are
    /// then not accounted at all, so the check sees a still picture.
    static SUSPENDED: Cell<bool> = const { Cell::new(false) };
    static GUARD: ExitGuard = const { ExitGuard };
}

/// This thread's [`Local::flags`].
#[inline(always)]
fn flags() -> u8 {
    LOCAL.with(|l| l.flags.load(Ordering::Relaxed))
}

/// Writes this thread's [`Local::flags`].
#[inline(always)]
fn set_flags(v: u8) {
    LOCAL.with(|l| l.flags.store(v, Ordering::Relaxed));
}

/// Marks the thread busy (`f` is [`flags`], not busy, the life
/// `ACTIVE`): the flag and [`Local::hot`], then a compiler fence, so that
/// no access of the engine that follows is moved before the mark (a
/// signal handler arriving in between sees the thread busy and takes the
/// re-entrant path).
#[inline(always)]
fn mark_busy(f: u8) {
    set_flags(f | BUSY);
    set_hot(idle());
    compiler_fence(Ordering::SeqCst);
}

/// Undoes [`mark_busy`] (the life still `ACTIVE`, `task` the thread's):
/// the engine's accesses stay before the stores.
#[inline(always)]
fn unmark_busy(f: u8, task: &Task) {
    compiler_fence(Ordering::SeqCst);
    set_hot(task.cache_ptr());
    set_flags(f);
}

/// The task's life (`FRESH`, `ACTIVE`, `TORN_DOWN`).
#[inline(always)]
fn life() -> u8 {
    LIFE_OF_TASK.get()
}

/// Sets the task's life (and its copy in [`Local::flags`]).
fn set_life(life: u8) {
    LIFE_OF_TASK.set(life);
    set_flags((flags() & BUSY) | life);
}

/// Copies the task's life back into [`Local::flags`] if a stale write replaced
/// it (see [`Local::flags`]). Slow paths only. A signal handler interrupting this
/// leaves the flags as it found it (its own busy marks are undone and the
/// life can no longer change from `ACTIVE`), so the write is not stale.
#[inline]
fn sync_flags() {
    let f = flags();
    let bits = life();
    if f & LIFE != bits {
        set_flags((f & BUSY) | bits);
    }
}

/// Marks the thread busy (inside memcg); returns whether it already was
/// (or a hit path it interrupted was: [`is_busy`]).
#[inline(always)]
fn enter_busy() -> bool {
    if is_busy() {
        // Nested: the outer section (or hit path) undoes its own mark.
        return true;
    }
    set_flags(flags() | BUSY);
    set_hot(idle());
    compiler_fence(Ordering::SeqCst);
    false
}

/// Whether the thread is busy (inside memcg) now: the `BUSY` flag, or a
/// hit path's mark ([`HIT_MARK_BIT`] set in [`Local::hot`]).
#[inline(always)]
fn is_busy() -> bool {
    flags() & BUSY != 0 || is_hit_mark(hot())
}

/// [`is_busy`] for the fork handlers.
pub(crate) fn is_busy_now() -> bool {
    is_busy()
}

/// Whether the thread whose [`Local`] is at `addr` (registered with its
/// task, `Task::set_owner`) is busy: its `BUSY` flag or a hit path's mark
/// ([`HIT_MARK_BIT`] set in [`Local::hot`]). For the fork's prepare handler, on
/// another thread.
///
/// # Safety
/// `addr` is the registered address of a live thread's [`Local`].
pub(crate) unsafe fn busy_at(addr: usize) -> bool {
    // SAFETY: the caller's guarantee; both fields are atomics.
    let local = unsafe { &*(addr as *const Local) };
    local.flags.load(Ordering::Relaxed) & BUSY != 0
        || is_hit_mark(local.hot.load(Ordering::Relaxed))
}

/// The address of this thread's task as registered with the engine
/// (`Task::set_owner`), 0 when it has none.
pub(crate) fn current_task_addr() -> usize {
    if life() != ACTIVE {
        return 0;
    }
    LOCAL.with(|l| l.task.get() as usize)
}

/// Undoes [`enter_busy`] (`nested` is what it returned): the hit paths
/// get the task's cache back if the life is (still, or now) `ACTIVE`.
#[inline(always)]
fn leave_busy(nested: bool) {
    if !nested {
        compiler_fence(Ordering::SeqCst);
        if life() == ACTIVE {
            // SAFETY: the life is ACTIVE.
            let task = unsafe { task_unchecked() };
            set_hot(task.cache_ptr());
        }
        set_flags(flags() & !BUSY);
    }
}

/// [`enter_busy`] for the engine's own allocations and locks
/// (`sync::engine_alloc_scope`, which enters the fork gate before): they
/// then take the root path.
pub(crate) fn enter_busy_hook() -> bool {
    enter_busy()
}

/// [`leave_busy`] for `sync::engine_alloc_scope`.
pub(crate) fn leave_busy_hook(nested: bool) {
    leave_busy(nested)
}

/// Runs `f` busy, inside the fork gate when not nested (gate first, then
/// the busy mark: a thread never waits at the gate while marked busy).
#[inline]
fn busy_in_gate<R>(f: impl FnOnce(bool) -> R) -> R {
    let _gate = if is_busy() {
        None
    } else {
        Some(fork_gate::enter())
    };
    let nested = enter_busy();
    let r = f(nested);
    leave_busy(nested);
    r
}

/// Runs the seed's exit path when the thread's TLS is destroyed.
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let gate = fork_gate::enter();
        enter_busy();
        // The hit paths lose the task's cache for good (`enter_busy` leaves
        // it in place when the thread was busy already).
        set_hot(idle());
        if life() == ACTIVE {
            set_life(TORN_DOWN);
            let p = LOCAL.with(|l| l.task.get());
            // SAFETY: the life was ACTIVE, so `Local::task` holds an initialised
            // task (written in `init_thread`), dropped exactly once here;
            // the life is TORN_DOWN first, so nothing reads it afterwards.
            unsafe { (*p).assume_init_drop() };
        }
        set_life(TORN_DOWN);
        leave_busy(false);
        // The thread stays in the gate until its pthread key destructors,
        // the inner allocator's thread teardown among them, have run.
        crate::runtime::fork::begin_exit_span(gate);
    }
}

/// The trailer word of an allocation the allocator must refuse (objcg
/// addresses are aligned, so no charge is ever 1).
pub(crate) const REFUSED: usize = 1;

/// The task of this thread, if it has one and is not torn down.
#[inline(always)]
fn active_task() -> Option<&'static Task> {
    if life() != ACTIVE {
        return None;
    }
    // SAFETY: the life is ACTIVE.
    Some(unsafe { task_unchecked() })
}

/// This thread's task.
///
/// # Safety
/// The life is `ACTIVE`.
#[inline(always)]
unsafe fn task_unchecked() -> &'static Task {
    let p = LOCAL.with(|l| l.task.get());
    // SAFETY: ACTIVE means `Local::task` holds an initialised task, which lives
    // until this thread's `ExitGuard` runs; thread-local memory outlives
    // every use on this thread. `'static` is a lie only towards other
    // threads, and the reference never leaves this one.
    unsafe { (*p).assume_init_ref() }
}

/// Makes this thread's task (in root). Called with `BUSY` set.
#[cold]
#[inline(never)]
fn init_thread() -> Option<&'static Task> {
    if life() != FRESH {
        return active_task();
    }
    let ctrl = global::controller_or_init()?;
    let task = ctrl.new_task(&ctrl.root()).ok()?;
    let p = LOCAL.with(|l| l.task.get());
    // SAFETY: FRESH means `Local::task` is uninitialised; it is written once here.
    let task = unsafe { (*p).write(task) };
    // For the fork handlers: where this thread's `Local` (its flags and hit
    // cache, `busy_at`) and task are.
    let local_addr = LOCAL.with(|l| l as *const Local as usize);
    task.set_owner(local_addr, task as *const Task as usize);
    set_life(ACTIVE);
    // Registers the exit guard (may allocate: `BUSY` is set, so those
    // allocations take the bypass).
    // `try_with`: never panics, even if this runs during TLS destruction.
    let _ = GUARD.try_with(|_| {});
    active_task()
}

/// Runs `f` with this thread's task, making it if needed; `None` when the
/// thread has none (torn down, or the controller is being made).
pub(crate) fn with_task<R>(f: impl FnOnce(&Task) -> R) -> Option<R> {
    if !is_busy() {
        crate::runtime::fork::restart_reclaimers_if_needed();
    }
    busy_in_gate(|nested| {
        let task = match active_task() {
            Some(t) => Some(t),
            None if !nested => init_thread(),
            None => None,
        };
        task.map(f)
    })
}

/// The hit path of [`charge_alloc`]: `Some(raw)` when this thread's task
/// charged `bytes` from its byte cache under its fast key, else `None`
/// with nothing done (the caller then takes [`charge_alloc`]). It makes no
/// call: the allocators inline it next to their own hit path and move
/// every miss into one cold function, so that the hit pair saves no
/// registers for the slow paths.
///
/// The steps: the thread's hit cache ([`Local::hot`]; the idle cache,
/// which never hits, when the thread has no active task or is inside
/// memcg), its busy mark around the engine's accesses (a signal handler
/// arriving meanwhile takes the re-entrant path), and no check of the
/// fork gate (a fork being prepared clears every fast key after marking
/// its start; see `runtime::fork`).
#[inline(always)]
pub(crate) fn charge_hit(bytes: u64) -> Option<usize> {
    charge_hit_and::<ANY_KEY_HITS, _>(bytes, |hit| hit.raw())
}

/// [`charge_hit`], then `then(hit)` with the thread still marked busy, as
/// [`charge_alloc_and`] does (`MemcgMimalloc` calls mimalloc there); `None`
/// with nothing done on a miss.
///
/// `then` also gets the thread's charge word source, [`HitCharge`]: after
/// a call it makes, the charge's word can be read again
/// ([`HitCharge::raw_again`], through the thread's cache pointer) rather
/// than kept in a register across the call (the thread is still marked
/// busy, so the cache has not changed). A hit with
/// `fast_path::HEAP_KEY_HITS` ends with the mark cleared in place
/// ([`unmark_hit`]), any other hit or miss with the pointer put back
/// ([`leave_hit`]). `KEYS` says which armed keys hit
/// (`TaskCache::charge_fast_here`): with `fast_path::HEAP_KEY_HITS`, only
/// a key armed with the objcg's heap, and [`HitCharge::heap`] is that
/// heap.
#[inline(always)]
pub(crate) fn charge_hit_and<const KEYS: u8, R>(
    bytes: u64,
    then: impl FnOnce(HitCharge<'_>) -> R,
) -> Option<R> {
    #[cfg(debug_assertions)]
    note_engine_lock_alloc();
    // No flags: the hit cache is `IDLE` (no key armed) unless the thread
    // has an active task and is not busy.
    let cache = enter_hit();
    // The key needs the CPU only when the armed key is not `ONE_KEY`.
    if cache.charge_fast_here::<KEYS>(bytes, global::fast_key_of_cpu_inline) {
        // `then` loads the charge's word if it needs it (a Relaxed atomic
        // load is not removed when unused).
        let r = then(HitCharge(&cache));
        // The hit path whose `then` calls out (`MemcgMimalloc`'s) clears
        // the mark in place, so that no register keeps the pointer across
        // the call; the others (no call: `MemcgAlloc`'s) store back the
        // pointer they hold, the same count of instructions and faster:
        // an `and` of memory a few instructions after the mark's `or`
        // waits on it (7.9 against 7.5 ns per pair, `hitpath-memcg-alloc
        // --time`, seven runs each).
        if KEYS == HEAP_KEY_HITS {
            unmark_hit();
        } else {
            leave_hit(cache);
        }
        Some(r)
    } else {
        leave_hit(cache);
        None
    }
}

/// The cache a hit of [`charge_hit_and`] charged, while the thread is
/// still marked busy.
#[derive(Clone, Copy)]
pub(crate) struct HitCharge<'a>(&'a TaskCache);

impl HitCharge<'_> {
    /// The charge's raw word, read again: the cache's objcg, which only
    /// this thread's slow paths change, and none runs while the thread is
    /// marked busy.
    #[inline(always)]
    pub(crate) fn raw(self) -> usize {
        self.0.objcg_addr.load(Ordering::Relaxed)
    }

    /// [`HitCharge::raw`] through [`Local::hot`] rather than the cache
    /// this holds, for a `then` after its call: the hit's cache is the
    /// marked pointer's with [`HIT_MARK_BIT`] cleared (see
    /// [`unmark_hit`]), so no register keeps it across the call.
    #[inline(always)]
    #[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
    pub(crate) fn raw_again(self) -> usize {
        let c = hot().map_addr(|a| a & !HIT_MARK_BIT);
        // SAFETY: inside a hit the pointer is the hit's cache, marked
        // (nothing but a signal handler writes it, and a handler puts
        // back what it found), and the cache lives while its task's
        // thread runs; the same field `raw` reads.
        unsafe { &*c }.objcg_addr.load(Ordering::Relaxed)
    }

    /// The charged objcg's heap (`TaskCache::alloc_heap`), for a hit of
    /// [`charge_hit_and`] with `fast_path::HEAP_KEY_HITS`: its key was
    /// armed with the heap, so this is the cached objcg's allocator
    /// cookie, which names a heap. (For another hit, any value: do not
    /// use it.)
    #[inline(always)]
    #[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
    pub(crate) fn heap(self) -> usize {
        self.0.alloc_heap.load(Ordering::Relaxed)
    }
}

/// The hit path of [`uncharge_alloc`]: `true` when this thread's task took
/// the charge `raw` of `bytes` back into its byte cache, else `false` with
/// nothing done (the caller then takes [`uncharge_alloc`]). No call, as
/// for [`charge_hit`]. A `raw` of 0 (a block not accounted) always
/// misses: no task's `hit_addr` is 0, and the foreign slot rejects 0 too.
///
/// # Safety
/// `raw` is a trailer word written by `charge_alloc` (or [`charge_hit`])
/// for a block of `bytes` bytes, and uncharged once: by this call if it
/// returns `true`.
#[inline(always)]
pub(crate) unsafe fn uncharge_hit(raw: usize, bytes: u64) -> bool {
    let cache = enter_hit();
    // `uncharge_fast` misses on `IDLE` (its `hit_addr` is no block's
    // word) and while a fork is being prepared (see `runtime::fork`).
    // SAFETY: the caller's guarantee: the block's charge, of `bytes` bytes
    // of the global controller (the only one whose tasks' caches
    // `Local::hot` holds), uncharged once.
    let done = unsafe { cache.uncharge_fast(raw, bytes) };
    leave_hit(cache);
    done
}

/// What [`uncharge_hit_with`] returns when it did not uncharge: the
/// charge's word was not resolved (the thread was not on its hit path).
pub(crate) const UNRESOLVED: usize = usize::MAX;

/// [`uncharge_hit`] for an allocator that finds a block's charge while
/// the thread is marked busy: `resolve` runs inside the busy mark and
/// returns the charge's raw word, or [`UNRESOLVED`] when it has none to
/// give (never 0). `None` when the charge of `bytes` went back into the
/// task's byte cache; else `Some(raw)` with nothing uncharged, `raw` being
/// what `resolve` returned, or [`UNRESOLVED`] when it did not run. No
/// call of its own besides `resolve`'s.
///
/// # Safety
/// A word `resolve` returns other than [`UNRESOLVED`] is the raw word (not
/// 0) of the live charge of `bytes` bytes of the block being freed (of the
/// global controller), uncharged once: by this call if it returns `None`.
#[inline(always)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) unsafe fn uncharge_hit_with(
    bytes: u64,
    resolve: impl FnOnce() -> usize,
) -> Option<usize> {
    let cache = enter_hit();
    // `resolve` runs only on the thread's own hit path (it may use
    // thread-locals that only a busy thread touches).
    let r = if is_idle(cache) {
        Some(UNRESOLVED)
    } else {
        let raw = resolve();
        // `uncharge_fast` misses while a fork is being prepared (the
        // task's `hit_addr`; see `runtime::fork`), and on `UNRESOLVED`,
        // which is no objcg's address.
        // SAFETY: the caller's guarantee: the block's charge, of `bytes`
        // bytes of the global controller, uncharged once.
        if unsafe { cache.uncharge_fast(raw, bytes) } {
            None
        } else {
            Some(raw)
        }
    };
    leave_hit(cache);
    r
}

/// [`uncharge_hit_with`] for an allocator that knows a block's objcg by
/// its allocator cookie (`MemcgMimalloc`: the block's heap): the cookie
/// compared with the cached objcg's first, and only when they differ,
/// `resolve` and the usual hit path (which includes the foreign slot), all
/// inside one busy mark. Returns as [`uncharge_hit_with`].
///
/// # Safety
/// As [`uncharge_hit_with`], and: `cookie` is the allocator cookie of the
/// objcg of the block's live charge of `bytes` bytes (or a value no
/// cookie has).
#[inline(always)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) unsafe fn uncharge_hit_cached_or(
    bytes: u64,
    cookie: usize,
    resolve: impl FnOnce() -> usize,
) -> Option<usize> {
    let cache = enter_hit();
    // SAFETY: the caller's guarantees, passed on; each path uncharges the
    // block's charge at most once and says so. (`IDLE`'s cookie is no
    // block's.)
    let r = if unsafe { cache.uncharge_fast_cookie(bytes, cookie) } {
        None
    } else if is_idle(cache) {
        // `resolve` runs only on the thread's own hit path.
        Some(UNRESOLVED)
    } else {
        let raw = resolve();
        // SAFETY: as in `uncharge_hit_with`: `raw` is what `resolve`
        // returned, the block's charge or `UNRESOLVED` (never an objcg's
        // address, so the call misses).
        if unsafe { cache.uncharge_fast(raw, bytes) } {
            if raw == cache.hit_addr.load(Ordering::Relaxed) {
                // The cached objcg's block, but not its cookie: the cache
                // took the objcg before the allocator gave it one. The
                // caller refreshes it, off the hit path
                // (`refresh_hit_cookie`).
                Some(COOKIE_STALE)
            } else {
                None
            }
        } else {
            Some(raw)
        }
    };
    leave_hit(cache);
    r
}

/// The allocator's hit path for a block that grows by `bytes` of charge
/// (`realloc`): `true` when the task's byte cache paid for the growth
/// (`TaskCache::grow_fast_at`), all inside one busy mark; `word` is the
/// block's charge word (`AT` = [`HIT_ADDR_AT`]) or its objcg's allocator
/// cookie (`AT` =
/// [`HIT_COOKIE_AT`](crate::engine::fast_path::HIT_COOKIE_AT)). `false`
/// with nothing charged: the caller takes [`resize_alloc_slow`].
///
/// # Safety
/// As `TaskCache::grow_fast_at`, for a charge of the global controller;
/// on `true` the caller's block is charged `bytes` more.
#[inline(always)]
pub(crate) unsafe fn grow_hit<const AT: usize>(bytes: u64, word: usize) -> bool {
    // SAFETY: the caller's guarantee.
    unsafe { grow_hit_and::<AT, _>(bytes, word, || ()) }.is_some()
}

/// [`grow_hit`], then `then()` with the thread still marked busy, as
/// [`charge_hit_and`] does: `MemcgMimalloc`'s `realloc` calls mimalloc
/// there, keeping what a failed call needs in memory
/// ([`keep_hit_realloc`]) rather than in registers across the call. A
/// growth by cookie ([`HIT_COOKIE_AT`](crate::engine::fast_path::HIT_COOKIE_AT))
/// ends with the mark cleared in place ([`unmark_hit`]), one by charge
/// word with the pointer put back ([`leave_hit`]), as in
/// [`charge_hit_and`]. `None` with nothing done on a miss.
///
/// A fork meanwhile waits for the mark, so for mimalloc's copy of a
/// block that moves, as it waits for an allocation's call of mimalloc.
/// `then`'s own failure path runs under the mark too: the slow paths it
/// reaches see the thread busy and take the re-entrant way, which enters
/// no fork gate and takes no engine lock (a growth given back goes to the
/// CPU's stock rather than the task's byte cache).
///
/// # Safety
/// As [`grow_hit`].
#[inline(always)]
pub(crate) unsafe fn grow_hit_and<const AT: usize, R>(
    bytes: u64,
    word: usize,
    then: impl FnOnce() -> R,
) -> Option<R> {
    // Counted here, as `resize_alloc` counts a growth: a miss then takes
    // `resize_alloc_slow`, which does not count, or (`MemcgAlloc`'s
    // `realloc_cold`) `resize_alloc`, which counts it again (a count of
    // violations, which the tests hold at 0).
    #[cfg(debug_assertions)]
    note_engine_lock_alloc();
    let cache = enter_hit();
    // SAFETY: the caller's guarantee. A mark's and `IDLE`'s words and
    // cookies are no block's, so the call misses on them.
    if unsafe { cache.grow_fast_at::<AT>(bytes, word) } {
        let r = then();
        if AT == HIT_ADDR_AT {
            leave_hit(cache);
        } else {
            unmark_hit();
        }
        Some(r)
    } else {
        leave_hit(cache);
        None
    }
}

/// What [`uncharge_hit_cached_or`] returns when it did uncharge the block,
/// through the cached objcg's address rather than its cookie: the caller
/// then calls [`refresh_hit_cookie`]. No charge word is this value.
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) const COOKIE_STALE: usize = usize::MAX - 1;

/// Refreshes the calling thread's cookie (`TaskCache::hit_cookie`) from
/// its cached objcg, inside the fork gate, where no fork's prepare
/// handler can be stopping the hit path (it writes the cookie too),
/// without waiting at the gate: if a fork is being prepared, or the
/// thread is busy, nothing is done, and a later miss does it.
#[cold]
#[inline(never)]
#[cfg_attr(not(feature = "mimalloc"), allow(dead_code))]
pub(crate) fn refresh_hit_cookie() {
    if is_busy() || life() != ACTIVE {
        return;
    }
    if let Some(_gate) = fork_gate::try_enter(false) {
        // Marked busy, as every slow write of the cache: a signal handler
        // arriving between the refresh's read of the cached objcg and its
        // write of the cookie would otherwise be free to switch or drain
        // the cache, and the write would pair the new objcg with the old
        // one's heap.
        let nested = enter_busy();
        if !nested {
            // SAFETY: the life is ACTIVE.
            let task = unsafe { task_unchecked() };
            task.cache().refresh_hit_cookie();
        }
        leave_busy(nested);
    }
}

/// Charges `bytes` for an allocation on this thread: returns the trailer
/// word (the charge's raw word, 0 when not accounted, [`REFUSED`]).
#[inline(always)]
pub(crate) fn charge_alloc(bytes: u64) -> usize {
    charge_alloc_and::<ANY_KEY_HITS, _>(bytes, |raw| raw)
}

/// [`charge_alloc`], then `then(raw)` with the thread still marked busy
/// (and, off the hit path, still inside the fork gate): `MemcgMimalloc`
/// calls mimalloc there, so that a fork never copies mimalloc half-way
/// through making a heap or a thread's part of one for a thread that
/// memcg knows (the fork waits for busy threads; see `runtime::fork`). An
/// allocation inside `then` takes the re-entrant path.
///
/// `KEYS` as in [`charge_hit_and`]: an allocator whose hit path needs
/// the key armed with the objcg's heap passes
/// `fast_path::COOKIE_KEY_HITS`, so that a key armed before the objcg's
/// cookie was set misses here too and the slow path arms it again, with
/// the heap once the objcg has one (else its hit path would miss for
/// ever), while an objcg with no heap (the fallback's) still hits here.
#[inline(always)]
pub(crate) fn charge_alloc_and<const KEYS: u8, R>(bytes: u64, then: impl FnOnce(usize) -> R) -> R {
    #[cfg(debug_assertions)]
    note_engine_lock_alloc();
    let f = flags();
    // The fast path: an active task, not re-entered (nor interrupting a
    // hit path: no hit mark; `unmark_busy` then leaves the task's cache as
    // the hit cache). A fork being prepared clears every fast key after
    // marking its start, so this path needs no check of its own (see
    // `runtime::fork`).
    if f == ACTIVE && !is_hit_mark(hot()) {
        mark_busy(f);
        // SAFETY: the life is ACTIVE.
        let task = unsafe { task_unchecked() };
        let raw = match task.charge_fast_here::<KEYS>(bytes, global::fast_key_of_cpu) {
            Some(raw) => raw,
            None => charge_task_slow_busy(task, bytes, f),
        };
        let r = then(raw);
        unmark_busy(f, task);
        return r;
    }
    charge_alloc_other_and(bytes, then)
}

/// [`charge_alloc_and`] off its fast path: a re-entrant call charges root
/// lock-free; otherwise the thread enters the fork gate, marked busy.
#[cold]
#[inline(never)]
fn charge_alloc_other_and<R>(bytes: u64, then: impl FnOnce(usize) -> R) -> R {
    sync_flags();
    if is_busy() {
        return then(charge_reentrant(bytes));
    }
    busy_in_gate(|_| {
        let raw = match active_task() {
            Some(task) => charge_task(task, bytes),
            None => charge_slow(bytes),
        };
        then(raw)
    })
}

/// Debug builds: allocations made while the thread held an engine lock
/// (the engine's rule is that there are none; the checker's own, made with
/// accounting suspended, do not count).
#[cfg(debug_assertions)]
static ENGINE_LOCK_ALLOCS: crate::sync::AtomicU64 = crate::sync::AtomicU64::new(0);

/// Counts an allocation (or a growth) made while this thread holds an
/// engine lock, unless accounting is suspended (debug builds).
#[cfg(debug_assertions)]
#[inline(always)]
fn note_engine_lock_alloc() {
    if crate::sync::engine_locks_held() > 0 && !SUSPENDED.get() {
        ENGINE_LOCK_ALLOCS.fetch_add(1, crate::sync::Ordering::Relaxed);
    }
}

/// How many allocations this process made while one of its threads held
/// one of the engine's locks (debug builds; always 0 in release builds,
/// which do not count). The engine never allocates under its locks (an
/// allocation there could be charged and wait for the reclaimer thread,
/// which may need the lock): tests assert this is 0.
pub fn allocations_under_engine_locks() -> u64 {
    #[cfg(debug_assertions)]
    {
        ENGINE_LOCK_ALLOCS.load(crate::sync::Ordering::Relaxed)
    }
    #[cfg(not(debug_assertions))]
    {
        0
    }
}

#[inline(always)]
fn charge_task(task: &Task, bytes: u64) -> usize {
    if let Some(raw) = task.charge_fast(global::fast_key(), bytes) {
        return raw;
    }
    charge_task_slow(task, bytes)
}

/// [`charge_task_slow`] from the hit path, which marked the thread busy
/// (its flags were `f`) before it could enter the fork gate: enters it
/// without waiting, and if a fork is being prepared, unmarks the thread,
/// waits for the fork and marks it again.
#[cold]
#[inline(never)]
fn charge_task_slow_busy(task: &Task, bytes: u64, f: u8) -> usize {
    loop {
        if let Some(_gate) = fork_gate::try_enter(false) {
            return charge_task_slow(task, bytes);
        }
        unmark_busy(f, task);
        fork_gate::wait_while_pending();
        mark_busy(f);
    }
}

#[cold]
#[inline(never)]
fn charge_task_slow(task: &Task, bytes: u64) -> usize {
    // One CPU read for both: the key must name the node charged.
    let (cpu, key) = global::current_cpu_and_key();
    match task.charge_keyed(key, cpu, bytes) {
        Ok(c) => c.into_raw(),
        Err(_) => REFUSED,
    }
}

#[cold]
#[inline(never)]
fn charge_slow(bytes: u64) -> usize {
    match life() {
        FRESH => match init_thread() {
            Some(task) => charge_task(task, bytes),
            None => charge_root(bytes),
        },
        _ => charge_root(bytes),
    }
}

/// Re-entrant charge (an allocation made by the engine itself, a signal
/// handler or initialisation): the lock-free root path.
#[cold]
#[inline(never)]
fn charge_reentrant(bytes: u64) -> usize {
    if SUSPENDED.get() {
        return 0;
    }
    charge_root(bytes)
}

fn charge_root(bytes: u64) -> usize {
    let Some(ctrl) = global::try_controller() else {
        return 0;
    };
    match ctrl.charge_root(global::current_cpu(), bytes, ChargeKind::Alloc) {
        Ok(c) => c.into_raw(),
        Err(_) => 0,
    }
}

/// Uncharges an allocation's charge on this thread (`raw` is not 0).
#[inline(always)]
pub(crate) fn uncharge_alloc(raw: usize, bytes: u64) {
    // SAFETY: `raw` is a trailer word written by `charge_alloc` for a block
    // of `bytes` bytes of the global controller (the one every thread task
    // belongs to), not 0, uncharged once, by the deallocation of that block.
    if !unsafe { uncharge_hit(raw, bytes) } {
        uncharge_alloc_slow(raw, bytes);
    }
}

/// [`uncharge_alloc`] after its hit path missed for this `raw` and
/// `bytes` ([`uncharge_hit`] or [`uncharge_hit_with`] returned "not
/// done"): straight to the slow path, which would miss again.
#[inline]
pub(crate) fn uncharge_alloc_missed(raw: usize, bytes: u64) {
    uncharge_alloc_slow(raw, bytes);
}

#[cold]
#[inline(never)]
fn uncharge_alloc_slow(raw: usize, bytes: u64) {
    sync_flags();
    let Some(ctrl) = global::try_controller() else {
        return;
    };
    // SAFETY: `raw` is a trailer word written by `charge_alloc` for a block
    // of `bytes` bytes of `ctrl` (the only controller the allocator uses),
    // read once by the deallocation of that block.
    let charge = unsafe { Charge::from_raw(raw, bytes, ChargeKind::Alloc, ctrl) };
    busy_in_gate(|nested| {
        let cpu = global::current_cpu();
        let _ = match (nested, active_task()) {
            (false, Some(task)) => task.uncharge(cpu, charge),
            _ => ctrl.uncharge(cpu, charge),
        };
    });
}

/// Resizes an allocation's charge (`realloc`); returns the new raw word,
/// or `None` when growing is refused.
#[inline]
pub(crate) fn resize_alloc(raw: usize, old_bytes: u64, new_bytes: u64) -> Option<usize> {
    #[cfg(debug_assertions)]
    if new_bytes > old_bytes {
        note_engine_lock_alloc();
    }
    let cache = enter_hit();
    // `resize_fast` misses while a fork is being prepared.
    let done = !is_idle(cache) && {
        // SAFETY: the hit cache is the task's, so the life is ACTIVE.
        let task = unsafe { task_unchecked() };
        // SAFETY: `raw` is a trailer word written by `charge_alloc` (or an
        // earlier resize) for a block of `old_bytes` bytes of the global
        // controller; if the resize succeeds the caller writes the same
        // word for the block of `new_bytes` bytes.
        unsafe { task.resize_fast(raw, old_bytes, new_bytes) }
    };
    leave_hit(cache);
    if done {
        return Some(raw);
    }
    resize_alloc_slow(raw, old_bytes, new_bytes)
}

/// [`resize_alloc`] off its hit path (for a caller that tried its own hit
/// path first, such as [`grow_hit`]).
#[cold]
#[inline(never)]
pub(crate) fn resize_alloc_slow(raw: usize, old_bytes: u64, new_bytes: u64) -> Option<usize> {
    let ctrl = global::try_controller()?;
    // SAFETY: as in `uncharge_alloc`; the charge is rebuilt once and turned
    // back into a raw word for the new trailer.
    let mut charge = unsafe { Charge::from_raw(raw, old_bytes, ChargeKind::Alloc, ctrl) };
    let r = busy_in_gate(|nested| {
        let cpu = global::current_cpu();
        match (nested, active_task()) {
            (false, Some(task)) => task.resize(cpu, &mut charge, new_bytes),
            _ => ctrl.resize(cpu, &mut charge, new_bytes),
        }
    });
    let raw = charge.into_raw();
    r.ok().map(|()| raw)
}

/// [`crate::Controller::check_invariants`] on [`crate::controller()`], with
/// this thread's own allocations left unaccounted during the check (the
/// check allocates; charging those would change what it measures). Exact
/// when no other thread charges meanwhile.
///
/// # Errors
/// The violations found.
pub fn check_invariants() -> std::result::Result<(), crate::InvariantViolations> {
    let ctrl = global::controller();
    busy_in_gate(|_| {
        SUSPENDED.set(true);
        let r = ctrl.check_invariants();
        SUSPENDED.set(false);
        r
    })
}

/// A handle on the calling thread's task, which any thread can pass to
/// [`Group::attach`] (the seed's `kmem_attach`).
///
/// # Errors
/// [`Error::TaskExited`] during thread teardown.
pub fn current_thread() -> Result<TaskHandle> {
    with_task(|t| t.handle()).ok_or(Error::TaskExited)
}

impl Group {
    /// Attaches the calling thread to this group.
    ///
    /// # Errors
    /// As [`Group::attach`], and [`Error::ForeignController`] for groups of
    /// controllers other than [`crate::controller()`].
    pub fn attach_current(&self) -> Result<()> {
        self.attach(&current_thread()?)
    }
}

/// Marks the calling thread exempt (its allocations are charged to root,
/// like a kernel thread's) or not.
pub fn set_current_exempt(exempt: bool) {
    with_task(|t| t.set_exempt(exempt));
}

/// The group the calling thread's charges go to now: the innermost active
/// scope ([`Group::enter`], or the group of the [`crate::InGroup`] future
/// being polled), else the thread's attachment (root for a new thread).
/// `None` only during the thread's teardown.
///
/// Spawning in the current group: [`crate::FutureExt::in_current_group`]
/// for a future, [`crate::spawn`] for a thread, and with the `tokio`
/// feature `memcg::tokio::spawn` / `spawn_blocking`.
pub fn current_group() -> Option<Group> {
    with_task(|t| t.current_group()).flatten()
}

/// The group the calling thread is attached to, ignoring scopes (root for
/// a new thread).
pub fn attached_group() -> Option<Group> {
    with_task(|t| t.group()).flatten()
}

/// Flushes the calling thread's byte cache and statistics to the per-CPU
/// stocks and counters (statistics then include this thread's last
/// charges).
pub fn flush_current() {
    with_task(|t| t.flush(global::current_cpu()));
}

/// [`flush_current`] for a thread that already has a task (never makes
/// one, nor the controller): the reclaimer thread's hook after its
/// callbacks (`sync::after_user_callbacks`).
pub(crate) fn flush_current_if_active() {
    if is_busy() || life() != ACTIVE {
        return;
    }
    busy_in_gate(|_| {
        if let Some(t) = active_task() {
            let _ = t.flush(global::current_cpu());
        }
    });
}

/// Spawns a thread that starts in the calling thread's current group
/// ([`current_group`]: its scope's, or its attachment; plain
/// `std::thread::spawn` threads start in root).
///
/// # Errors
/// The error of [`std::thread::Builder::spawn`] when the OS refuses.
pub fn spawn<F, T>(f: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().spawn_in_current_group(f)
}

/// Spawning threads in the spawner's group.
pub trait BuilderExt {
    /// Like [`std::thread::Builder::spawn`], but the new thread is attached
    /// to the calling thread's group before `f` runs.
    ///
    /// # Errors
    /// The error of [`std::thread::Builder::spawn`].
    fn spawn_in_current_group<F, T>(self, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;
}

impl BuilderExt for std::thread::Builder {
    fn spawn_in_current_group<F, T>(self, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let group = current_group();
        self.spawn(move || {
            if let Some(g) = group {
                // A group removed meanwhile leaves the thread in root.
                let _ = g.attach_current();
            }
            f()
        })
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;
    use crate::engine::fast_path::COOKIE_KEY_HITS;

    #[test]
    fn a_stale_busy_write_over_a_fresh_life_does_not_make_a_second_task() {
        // Made first (another test may be making it: `current_thread`
        // would then have no task to give).
        let _ = crate::controller();
        std::thread::spawn(|| {
            // The thread's first allocation reads the flags (FRESH)...
            let f = flags();
            assert_eq!(f, FRESH);
            // ...a signal handler interrupts it and makes the task...
            let first = current_thread().expect("task");
            assert_eq!(life(), ACTIVE);
            // ...then the interrupted write of `f | BUSY` lands.
            set_flags(f | BUSY);
            leave_busy(false);
            assert_eq!(flags(), FRESH, "the stale write replaced ACTIVE");
            // The next allocation misses the fast path; the slow path must
            // keep the task (not make a second one over it) and repair the flags.
            let raw = charge_alloc(64);
            assert_ne!(raw, REFUSED);
            let again = current_thread().expect("task");
            assert!(first.same_task(&again), "a second task was made");
            assert_eq!(flags() & LIFE, ACTIVE, "flags repaired");
            uncharge_alloc(raw, 64);
        })
        .join()
        .expect("thread");
    }

    /// The hit cache pointer of this thread's task.
    fn task_cache_ptr() -> *mut TaskCache {
        assert_eq!(life(), ACTIVE);
        // SAFETY: the life is ACTIVE.
        let task = unsafe { task_unchecked() };
        task.cache_ptr()
    }

    #[test]
    fn a_hit_path_inside_a_hit_path_misses_on_the_mark_and_leaves_it_set() {
        let _ = crate::controller();
        std::thread::spawn(|| {
            let raw = charge_alloc(64);
            let task_cache = task_cache_ptr();
            assert_eq!(hot(), task_cache);
            // A hit path begins: the pointer names the slot's mark.
            let outer = enter_hit();
            assert_eq!(outer.0, task_cache);
            assert!(!is_idle(outer) && is_busy());
            assert_eq!(hot(), task_cache.map_addr(|a| a | HIT_MARK_BIT));
            // A signal handler's hit path: it finds the mark, an idle
            // cache on which every hit misses, and marking it again
            // changes nothing.
            let inner = enter_hit();
            assert!(is_idle(inner));
            assert_eq!(hot(), inner.0);
            let no_cpu = || -> u64 { panic!("no key is armed on the mark") };
            assert!(!inner.charge_fast_here::<ANY_KEY_HITS>(64, no_cpu));
            assert!(!inner.charge_fast_here::<HEAP_KEY_HITS>(64, no_cpu));
            assert!(!inner.charge_fast_here::<COOKIE_KEY_HITS>(64, no_cpu));
            // SAFETY: 64 bytes that nothing charged to the mark's objcg
            // (it has none): the free misses, as the test asserts.
            assert!(!unsafe { inner.uncharge_fast(raw, 64) });
            leave_hit(inner);
            assert!(is_busy(), "the outer hit path is still marked");
            leave_hit(outer);
            assert!(!is_busy());
            assert_eq!(hot(), task_cache);
            uncharge_alloc(raw, 64);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_hits_end_clears_the_mark_and_reads_back_what_it_kept_after_a_handler() {
        let _ = crate::controller();
        std::thread::spawn(|| {
            let raw = charge_alloc(64);
            assert_ne!(raw, 0);
            let task_cache = task_cache_ptr();
            // A hit's `then` keeps its size, then calls out...
            let outer = enter_hit();
            assert_eq!(outer.0, task_cache);
            keep_hit_size(72);
            // ...and a signal handler's hit path runs meanwhile: it misses
            // on the mark, puts the mark back, and keeps nothing.
            let inner = enter_hit();
            assert!(is_idle(inner));
            let no_cpu = || -> u64 { panic!("no key is armed on the mark") };
            assert!(!inner.charge_fast_here::<HEAP_KEY_HITS>(64, no_cpu));
            assert!(!inner.charge_fast_here::<ANY_KEY_HITS>(64, no_cpu));
            leave_hit(inner);
            // After the call: the size and the charge's word read back
            // through the marked pointer, then the mark cleared in place.
            assert_eq!(kept_hit_size(), 72);
            assert_eq!(HitCharge(&outer).raw_again(), raw);
            assert!(is_busy());
            unmark_hit();
            assert!(!is_busy());
            assert_eq!(hot(), task_cache, "the pointer the hit began with");
            uncharge_alloc(raw, 64);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_handler_inside_a_fresh_threads_hit_path_does_not_make_the_task() {
        let _ = crate::controller();
        std::thread::spawn(|| {
            // A new thread's first hit path (it misses: no task)...
            let c = enter_hit();
            assert!(is_idle(c));
            // ...is interrupted by a signal handler that allocates: the
            // thread is busy, so the handler charges root and makes no task
            // (it used to make one, and the hit path then put the idle
            // cache back over the task's: the thread stayed busy for good,
            // and every fork waited for it).
            assert!(is_busy());
            let raw = charge_alloc(64);
            assert_eq!(life(), FRESH, "the handler made the task");
            uncharge_alloc(raw, 64);
            leave_hit(c);
            assert!(!is_busy());
            // The next allocation makes the task and leaves its cache as
            // the hit cache.
            let raw = charge_alloc(64);
            assert_eq!(hot(), task_cache_ptr());
            assert!(!is_busy());
            uncharge_alloc(raw, 64);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn a_handler_just_before_a_fresh_threads_hit_mark_leaves_a_thread_that_recovers() {
        let _ = crate::controller();
        std::thread::spawn(|| {
            // The hit path loads the idle cache...
            let c = hot();
            assert_eq!(c, idle());
            // ...a signal handler makes the task before the mark...
            let raw = charge_alloc(64);
            assert_eq!(hot(), task_cache_ptr());
            // ...then the hit path marks (the pointer read again: the
            // task's cache, marked), misses and puts back what it loaded:
            // the idle cache, over the task's.
            set_hot(hot().map_addr(|a| a | HIT_MARK_BIT));
            assert!(is_busy());
            leave_hit(Hot(c));
            assert_eq!(hot(), idle());
            assert!(!is_busy(), "the thread is not left busy");
            // The next allocation misses the hit path and its slow path
            // restores the task's cache.
            let raw2 = charge_alloc(64);
            assert_eq!(hot(), task_cache_ptr());
            assert!(!is_busy());
            uncharge_alloc(raw, 64);
            uncharge_alloc(raw2, 64);
        })
        .join()
        .expect("thread");
    }
}
