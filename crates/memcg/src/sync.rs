//! The one place that names the synchronization primitives.
//!
//! Normal builds use `std`; model-checking builds (`--cfg memcg_loom`, tests
//! only) use `loom`, so every atomic of the engine is visible to the model
//! checker. The rest of the crate imports from here and never names
//! `std::sync::atomic` directly.

#[cfg(all(test, memcg_loom))]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
};

#[cfg(not(all(test, memcg_loom)))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize,
};

pub(crate) use std::sync::atomic::Ordering;

/// A compiler-only fence (orders a thread's accesses against its own
/// signal handlers: `signal_fence` in C).
pub(crate) use std::sync::atomic::compiler_fence;

/// A mutex that ignores poisoning (a panic while holding it cannot leave
/// engine state half-changed: no engine code panics while holding a lock).
#[derive(Debug, Default)]
pub(crate) struct Mutex<T> {
    #[cfg(all(test, memcg_loom))]
    inner: loom::sync::Mutex<T>,
    #[cfg(not(all(test, memcg_loom)))]
    inner: std::sync::Mutex<T>,
}

#[cfg(all(test, memcg_loom))]
type InnerGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
#[cfg(not(all(test, memcg_loom)))]
type InnerGuard<'a, T> = std::sync::MutexGuard<'a, T>;

/// A held engine lock. In debug builds it counts, per thread, how many
/// engine locks are held ([`engine_locks_held`]), so that the allocator can
/// report an engine allocation made under one (the engine's rule: no
/// allocation while an engine lock is held).
///
/// It holds an [`engine_alloc_scope`] too, taken before the lock and left
/// after the unlock: the thread is inside the fork gate and, with the
/// runtime, marked busy, so that an allocation made while the lock is held
/// (by a signal handler that interrupts the thread, say) takes the
/// runtime's lock-free root path and never tries to take an engine lock
/// the thread already holds.
pub(crate) struct MutexGuard<'a, T> {
    inner: Option<InnerGuard<'a, T>>,
    scope: Option<EngineAllocScope>,
}

impl<T> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.inner {
            Some(g) => g,
            // `inner` is only `None` inside `Condvar::wait_timeout`, which
            // owns the guard meanwhile.
            None => unreachable!("guard in use by a condvar wait"),
        }
    }
}

impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match &mut self.inner {
            Some(g) => g,
            None => unreachable!("guard in use by a condvar wait"),
        }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        if self.inner.take().is_some() {
            lock_count_add(-1);
        }
        // After the unlock: the busy mark and the fork gate.
        drop(self.scope.take());
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutexGuard").finish_non_exhaustive()
    }
}

#[cfg(all(debug_assertions, not(all(test, memcg_loom))))]
std::thread_local! {
    static LOCKS_HELD: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

#[inline(always)]
fn lock_count_add(_delta: i32) {
    #[cfg(all(debug_assertions, not(all(test, memcg_loom))))]
    {
        let _ = LOCKS_HELD.try_with(|c| c.set(c.get() + _delta));
    }
}

/// How many engine locks this thread holds (debug builds; 0 otherwise).
#[cfg_attr(not(debug_assertions), allow(dead_code))]
#[inline(always)]
pub(crate) fn engine_locks_held() -> i32 {
    #[cfg(all(debug_assertions, not(all(test, memcg_loom))))]
    {
        LOCKS_HELD.try_with(|c| c.get()).unwrap_or(0)
    }
    #[cfg(not(all(debug_assertions, not(all(test, memcg_loom)))))]
    {
        0
    }
}

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex {
            #[cfg(all(test, memcg_loom))]
            inner: loom::sync::Mutex::new(value),
            #[cfg(not(all(test, memcg_loom)))]
            inner: std::sync::Mutex::new(value),
        }
    }

    /// Takes the lock. Outside loom, the first lock a thread takes enters
    /// the fork gate first (waiting while a fork is being prepared), and the
    /// guard leaves it after unlocking: a fork never copies a held lock. See
    /// [`MutexGuard`] for the busy mark.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        let scope = engine_alloc_scope();
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        lock_count_add(1);
        MutexGuard {
            inner: Some(g),
            scope: Some(scope),
        }
    }

    /// Takes the lock without entering the fork gate: for a fork's prepare
    /// handler, which has closed the gate itself and holds the lock across
    /// the copy (see `runtime::fork`). Anyone else uses [`Mutex::lock`].
    #[cfg(not(all(test, memcg_loom)))]
    pub(crate) fn lock_in_fork_prepare(&self) -> MutexGuard<'_, T> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        lock_count_add(1);
        MutexGuard {
            inner: Some(g),
            scope: None,
        }
    }
}

/// A condition variable for [`Mutex`] (std or loom).
#[derive(Debug, Default)]
pub(crate) struct Condvar {
    #[cfg(all(test, memcg_loom))]
    inner: loom::sync::Condvar,
    #[cfg(not(all(test, memcg_loom)))]
    inner: std::sync::Condvar,
}

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar {
            #[cfg(all(test, memcg_loom))]
            inner: loom::sync::Condvar::new(),
            #[cfg(not(all(test, memcg_loom)))]
            inner: std::sync::Condvar::new(),
        }
    }

    /// Releases the lock behind `guard` (a guard of `mutex`) and waits for
    /// a notification or `timeout`; the lock is held again on return.
    /// Spurious wake-ups happen; callers re-check their condition. Under
    /// loom, which does not model time, a finite wait releases the lock,
    /// yields and re-takes it (the waiter's view of a timeout: the model
    /// explores the waiter giving up before the other side acts); only
    /// `None` (no timeout) blocks.
    pub(crate) fn wait_timeout<'a, T>(
        &self,
        mutex: &'a Mutex<T>,
        guard: &mut MutexGuard<'a, T>,
        timeout: Option<std::time::Duration>,
    ) {
        let Some(g) = guard.inner.take() else {
            return;
        };
        #[cfg(all(test, memcg_loom))]
        let g = match timeout {
            None => self.inner.wait(g).unwrap_or_else(|e| e.into_inner()),
            Some(_) => {
                drop(g);
                loom::thread::yield_now();
                mutex.inner.lock().unwrap_or_else(|e| e.into_inner())
            }
        };
        #[cfg(not(all(test, memcg_loom)))]
        let g = {
            // A thread that holds only this lock is at rest while it waits:
            // it leaves the fork gate and its busy mark meanwhile (an idle
            // reclaimer thread must not hold up a fork), and takes them
            // again with the lock held again, or, if a fork is pending,
            // lets the lock go until the fork is done (a spurious wake-up
            // for the caller). The wait re-takes the lock before the gate
            // (std's condvar does): a fork's prepare handler therefore takes
            // every lock a condvar waits with (`lock_in_fork_prepare`) and
            // holds it across the copy, so that a waiter woken in between
            // blocks on the lock instead of being copied holding it.
            let at_rest = fork_gate::depth() == 1;
            if at_rest {
                drop(guard.scope.take());
            }
            let mut g = match timeout {
                None => self.inner.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    self.inner
                        .wait_timeout(g, t)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            if at_rest {
                loop {
                    if let Some(scope) = try_engine_alloc_scope() {
                        guard.scope = Some(scope);
                        break;
                    }
                    drop(g);
                    fork_gate::wait_while_pending();
                    g = mutex.inner.lock().unwrap_or_else(|e| e.into_inner());
                }
            }
            g
        };
        guard.inner = Some(g);
    }

    pub(crate) fn notify_all(&self) {
        self.inner.notify_all();
    }
}

/// A deadline (the only clock the engine reads). Under loom, which does
/// not model time, a deadline allows one wait and then is past.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    #[cfg(not(all(test, memcg_loom)))]
    at: Option<std::time::Instant>,
    #[cfg(all(test, memcg_loom))]
    waits_left: u32,
}

impl Deadline {
    /// `timeout` from now.
    pub(crate) fn after(timeout: std::time::Duration) -> Self {
        #[cfg(all(test, memcg_loom))]
        {
            Deadline {
                waits_left: u32::from(!timeout.is_zero()),
            }
        }
        #[cfg(not(all(test, memcg_loom)))]
        {
            Deadline {
                at: std::time::Instant::now().checked_add(timeout),
            }
        }
    }

    /// Time left for the next wait, `None` once past.
    pub(crate) fn remaining(&mut self) -> Option<std::time::Duration> {
        #[cfg(all(test, memcg_loom))]
        {
            self.waits_left = self.waits_left.checked_sub(1)?;
            Some(std::time::Duration::from_millis(1))
        }
        #[cfg(not(all(test, memcg_loom)))]
        {
            match self.at {
                None => Some(std::time::Duration::from_secs(3600)),
                Some(d) => d
                    .checked_duration_since(std::time::Instant::now())
                    .filter(|r| !r.is_zero()),
            }
        }
    }
}

/// A number naming the calling thread (the kernel thread id; loom's thread
/// id under loom), to recognise the reclaimer thread.
pub(crate) fn current_thread_token() -> u64 {
    #[cfg(all(test, memcg_loom))]
    {
        // Loom thread ids print as `ThreadId(n)`; hash them.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        loom::thread::current().id().hash(&mut h);
        h.finish() | 1
    }
    #[cfg(not(all(test, memcg_loom)))]
    {
        // SAFETY: `gettid` has no arguments and cannot fail.
        (unsafe { libc::gettid() }) as u64
    }
}

/// Starts a named OS thread (the reclaimer thread). Not under loom: models
/// drive the reclaimer's work from their own threads.
#[cfg(not(all(test, memcg_loom)))]
pub(crate) fn spawn_named(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map(drop)
}

/// Tells the scheduler (or loom) that this thread is waiting for another.
pub(crate) fn spin_yield() {
    #[cfg(all(test, memcg_loom))]
    loom::thread::yield_now();
    #[cfg(not(all(test, memcg_loom)))]
    std::thread::yield_now();
}

/// A process-wide unique number (controller identities). Not a model-checked
/// atomic: it only hands out distinct values.
pub(crate) fn next_serial() -> u64 {
    #[allow(clippy::disallowed_types)]
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The runtime's hooks, installed once when the process's controller is
/// made; none under loom and for controllers outside a process with
/// `MemcgAlloc`.
#[cfg(not(all(test, memcg_loom)))]
static RUNTIME_HOOKS: std::sync::OnceLock<RuntimeHooks> = std::sync::OnceLock::new();

/// What the engine asks of the runtime.
#[cfg(not(all(test, memcg_loom)))]
#[derive(Clone, Copy)]
pub(crate) struct RuntimeHooks {
    /// Marks the calling thread "inside memcg", so that its allocations
    /// are charged to root and the engine's own state stays off the
    /// caller's group (see [`engine_alloc_scope`]); returns whether it
    /// already was.
    pub(crate) enter_busy: fn() -> bool,
    /// Undoes `enter_busy` (given what it returned).
    pub(crate) leave_busy: fn(bool),
    /// Run by the reclaimer thread after a pass of callbacks (see
    /// [`after_user_callbacks`]).
    pub(crate) after_callbacks: fn(),
}

/// Installs the runtime's hooks.
#[cfg(not(all(test, memcg_loom)))]
pub(crate) fn set_runtime_hooks(hooks: RuntimeHooks) {
    let _ = RUNTIME_HOOKS.set(hooks);
}

/// Called by the reclaimer thread after a pass of reclaim or kill
/// callbacks: with the runtime's allocator, the thread's own task returns
/// what it gathered meanwhile (the callbacks free the groups' memory, and
/// a task keeps frees of another group's objects in its foreign slot
/// until it flushes), so that the memory the callbacks freed leaves the
/// groups' usage at the end of the pass, not at the thread's next flush.
pub(crate) fn after_user_callbacks() {
    #[cfg(not(all(test, memcg_loom)))]
    if let Some(hooks) = RUNTIME_HOOKS.get() {
        (hooks.after_callbacks)();
    }
}

/// Until dropped, allocations of the calling thread are the engine's own
/// (group state, callback lists, snapshots): with the runtime's allocator
/// they are charged to root, not to the group the caller runs in, so a
/// tenant is never charged for the engine's bookkeeping (which may outlive
/// the tenant's work, in a removed group's structures).
///
/// The scope enters the fork gate first (see [`fork_gate`]; a thread
/// never waits at the gate while marked busy, since a fork waits for busy
/// threads), then marks the thread.
pub(crate) fn engine_alloc_scope() -> EngineAllocScope {
    #[cfg(not(all(test, memcg_loom)))]
    {
        let gate = fork_gate::enter();
        with_gate(gate)
    }
    #[cfg(all(test, memcg_loom))]
    EngineAllocScope { hook: None }
}

/// [`engine_alloc_scope`] that does not wait: `None` while a fork is
/// being prepared (outermost entries only).
#[cfg(not(all(test, memcg_loom)))]
fn try_engine_alloc_scope() -> Option<EngineAllocScope> {
    fork_gate::try_enter(false).map(with_gate)
}

#[cfg(not(all(test, memcg_loom)))]
fn with_gate(gate: fork_gate::Entered) -> EngineAllocScope {
    let hook = RUNTIME_HOOKS
        .get()
        .map(|h| ((h.enter_busy)(), h.leave_busy));
    EngineAllocScope {
        hook,
        _gate: Some(gate),
    }
}

/// See [`engine_alloc_scope`]. Leaves the busy mark, then the gate.
pub(crate) struct EngineAllocScope {
    hook: Option<(bool, fn(bool))>,
    #[cfg(not(all(test, memcg_loom)))]
    _gate: Option<fork_gate::Entered>,
}

impl Drop for EngineAllocScope {
    fn drop(&mut self) {
        if let Some((nested, leave)) = self.hook.take() {
            leave(nested);
        }
        // `_gate` drops after this body: the gate is left last.
    }
}

/// The fork gate: how `fork()` finds the engine at rest (no lock held, no
/// multi-step update half done), so that the child inherits consistent
/// state and free locks (`runtime::fork`).
///
/// Every engine lock acquisition and every slow path of the runtime
/// *enters* the gate (the outermost entry of a thread increments one of
/// [`GATE_STRIPES`] counters; nested entries only count in a thread-local
/// depth). The fork's prepare handler *closes* it: it sets `PENDING`, after
/// which outermost entries back off and wait, and waits until every counter
/// is zero. Both sides use `SeqCst` (a Dekker pair: an entry either is
/// seen by the closer or sees `PENDING`). The allocator's hit path does not
/// enter the gate: `runtime::fork` stops it separately (fast keys cleared,
/// the tasks' frees stopped, `membarrier`, each task's busy marks).
///
/// Not under loom (no fork there): entering is free.
#[cfg(not(all(test, memcg_loom)))]
pub(crate) mod fork_gate {
    use super::Ordering;
    #[allow(clippy::disallowed_types)]
    use std::sync::atomic::{AtomicBool, AtomicU64};

    /// Counters of outermost entries, on cache lines of their own so that
    /// threads entering at once rarely share one.
    const GATE_STRIPES: usize = 16;

    #[allow(clippy::disallowed_types)]
    static STRIPES: [crossbeam_utils::CachePadded<AtomicU64>; GATE_STRIPES] =
        [const { crossbeam_utils::CachePadded::new(AtomicU64::new(0)) }; GATE_STRIPES];

    /// Set while a fork is being prepared.
    #[allow(clippy::disallowed_types)]
    static PENDING: AtomicBool = AtomicBool::new(false);

    std::thread_local! {
        /// This thread's nesting depth in the gate, and its stripe + 1
        /// (0: not chosen yet). No destructor: usable in TLS teardown.
        static DEPTH: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
    }

    fn state() -> (u32, u32) {
        DEPTH.try_with(|d| d.get()).unwrap_or((0, 0))
    }

    fn set_state(s: (u32, u32)) {
        let _ = DEPTH.try_with(|d| d.set(s));
    }

    fn stripe(s: (u32, u32)) -> (usize, (u32, u32)) {
        if s.1 != 0 {
            return ((s.1 - 1) as usize, s);
        }
        // SAFETY: `gettid` has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        let i = tid % GATE_STRIPES as u32;
        (i as usize, (s.0, i + 1))
    }

    /// Enters the gate, waiting while a fork is prepared unless `wait` is
    /// false (then returns `None` instead). Nested entries never wait.
    pub(crate) fn try_enter(wait: bool) -> Option<Entered> {
        let s = state();
        if s.0 > 0 {
            set_state((s.0 + 1, s.1));
            return Some(Entered(()));
        }
        let (i, s) = stripe(s);
        loop {
            // SeqCst both: the Dekker pair with `close`.
            STRIPES[i].fetch_add(1, Ordering::SeqCst);
            if !PENDING.load(Ordering::SeqCst) {
                set_state((1, s.1));
                return Some(Entered(()));
            }
            STRIPES[i].fetch_sub(1, Ordering::SeqCst);
            if !wait {
                set_state(s);
                return None;
            }
            while PENDING.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
        }
    }

    /// [`try_enter`] that waits.
    #[inline]
    pub(crate) fn enter() -> Entered {
        match try_enter(true) {
            Some(e) => e,
            None => Entered(()),
        }
    }

    /// Leaves the gate (the outermost exit decrements the counter).
    fn leave() {
        let s = state();
        match s.0 {
            0 => {}
            1 => {
                set_state((0, s.1));
                STRIPES[(s.1.max(1) - 1) as usize].fetch_sub(1, Ordering::SeqCst);
            }
            d => set_state((d - 1, s.1)),
        }
    }

    /// The thread's depth in the gate.
    pub(crate) fn depth() -> u32 {
        state().0
    }

    /// Waits until no fork is being prepared.
    pub(crate) fn wait_while_pending() {
        while PENDING.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
    }

    /// One entry into the gate; leaves on drop.
    #[must_use]
    pub(crate) struct Entered(());

    impl Entered {
        /// Keeps this thread inside the gate past the entry's scope, until
        /// [`leave_kept`]: a fork waits for it, and the thread's own
        /// entries meanwhile are nested, so they never wait.
        pub(crate) fn keep(self) {
            std::mem::forget(self);
        }
    }

    /// Ends an entry kept by [`Entered::keep`] (on the same thread).
    pub(crate) fn leave_kept() {
        leave();
    }

    impl Drop for Entered {
        fn drop(&mut self) {
            leave();
        }
    }

    /// Closes the gate: sets `PENDING` and waits until no thread is inside
    /// (the calling thread must not be inside itself). Afterwards the
    /// calling thread may still take engine locks: it counts as nested.
    pub(crate) fn close() {
        PENDING.store(true, Ordering::SeqCst);
        loop {
            let inside: u64 = STRIPES.iter().map(|c| c.load(Ordering::SeqCst)).sum();
            if inside == 0 {
                break;
            }
            std::thread::yield_now();
        }
        let s = state();
        set_state((s.0 + 1, s.1));
    }

    /// Opens the gate closed by [`close`] (parent and child).
    pub(crate) fn open() {
        let s = state();
        set_state((s.0.saturating_sub(1), s.1));
        PENDING.store(false, Ordering::SeqCst);
    }

    /// In the child: the threads that were inside the gate do not exist;
    /// [`close`] waited for all of them, so the counters are zero. The
    /// closer's own depth is restored by [`open`].
    pub(crate) fn reset_in_child() {
        for c in &STRIPES {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Enters the fork gate for an engine operation that users call directly
/// (not from inside an allocation) and that updates several counters
/// without a lock: reservations, limit writes, stock drains. Nested inside
/// another entry (a lock, a runtime slow path) it only counts depth.
/// Nothing under loom.
#[must_use]
pub(crate) fn fork_gate_enter() -> ForkGateEntry {
    #[cfg(not(all(test, memcg_loom)))]
    {
        ForkGateEntry {
            _entry: Some(fork_gate::enter()),
        }
    }
    #[cfg(all(test, memcg_loom))]
    {
        ForkGateEntry { _entry: None }
    }
}

/// See [`fork_gate_enter`]; leaves on drop.
pub(crate) struct ForkGateEntry {
    #[cfg(not(all(test, memcg_loom)))]
    _entry: Option<fork_gate::Entered>,
    #[cfg(all(test, memcg_loom))]
    _entry: Option<()>,
}
