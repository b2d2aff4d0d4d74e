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
pub(crate) struct MutexGuard<'a, T> {
    inner: Option<InnerGuard<'a, T>>,
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        lock_count_add(1);
        MutexGuard { inner: Some(g) }
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
            let _ = mutex;
            match timeout {
                None => self.inner.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    self.inner
                        .wait_timeout(g, t)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            }
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

/// How the runtime keeps the engine's own state off the caller's group: a
/// pair of functions that mark the calling thread "inside memcg" (its
/// allocations are then charged to root) and undo it. Installed once by
/// the runtime when the process's controller is made; none under loom and
/// for controllers outside a process with `MemcgAlloc`.
#[cfg(not(all(test, memcg_loom)))]
static ENGINE_ALLOC_HOOKS: std::sync::OnceLock<AllocHooks> = std::sync::OnceLock::new();

/// Enter (returns whether the thread was already inside) and leave.
type AllocHooks = (fn() -> bool, fn(bool));

/// Installs the runtime's hooks (see [`engine_alloc_scope`]).
#[cfg(not(all(test, memcg_loom)))]
pub(crate) fn set_engine_alloc_hooks(enter: fn() -> bool, leave: fn(bool)) {
    let _ = ENGINE_ALLOC_HOOKS.set((enter, leave));
}

/// Until dropped, allocations of the calling thread are the engine's own
/// (group state, callback lists, snapshots): with the runtime's allocator
/// they are charged to root, not to the group the caller runs in, so a
/// tenant is never charged for the engine's bookkeeping (which may outlive
/// the tenant's work, in a removed group's structures).
pub(crate) fn engine_alloc_scope() -> EngineAllocScope {
    #[cfg(not(all(test, memcg_loom)))]
    if let Some((enter, leave)) = ENGINE_ALLOC_HOOKS.get() {
        return EngineAllocScope(Some((enter(), *leave)));
    }
    EngineAllocScope(None)
}

/// See [`engine_alloc_scope`].
pub(crate) struct EngineAllocScope(Option<(bool, fn(bool))>);

impl Drop for EngineAllocScope {
    fn drop(&mut self) {
        if let Some((nested, leave)) = self.0.take() {
            leave(nested);
        }
    }
}
