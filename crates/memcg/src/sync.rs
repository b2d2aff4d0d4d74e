//! The one place that names the synchronization primitives.
//!
//! Normal builds use `std`; model-checking builds (`--cfg memcg_loom`, tests
//! only) use `loom`, so every atomic of the engine is visible to the model
//! checker. The rest of the crate imports from here and never names
//! `std::sync::atomic` directly.

#[cfg(all(test, memcg_loom))]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
};

#[cfg(not(all(test, memcg_loom)))]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize,
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
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
#[cfg(not(all(test, memcg_loom)))]
pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

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
        #[cfg(all(test, memcg_loom))]
        {
            self.inner.lock().unwrap_or_else(|e| e.into_inner())
        }
        #[cfg(not(all(test, memcg_loom)))]
        {
            self.inner.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
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
