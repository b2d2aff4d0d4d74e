//! Spawning on tokio in the caller's group (feature `tokio`).
//!
//! `tokio::spawn` runs a task on whichever worker polls it, so a task
//! spawned from a request future of a tenant would charge that worker's
//! group (root), not the tenant. These functions spawn in the caller's
//! current group ([`crate::current_group`]: the scope or [`crate::InGroup`]
//! future it runs in, else its thread's attachment):
//!
//! ```
//! use memcg::FutureExt;
//! # let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
//! let tenant = memcg::controller().create("doc-tokio")?;
//! rt.block_on(
//!     async {
//!         // Both run in `doc-tokio`, whichever threads run them.
//!         let task = memcg::tokio::spawn(async { vec![0u8; 4096].len() });
//!         let blocking = memcg::tokio::spawn_blocking(|| vec![0u8; 4096].len());
//!         (task.await.unwrap(), blocking.await.unwrap())
//!     }
//!     .in_group(&tenant)?,
//! );
//! # tenant.remove()?;
//! # Ok::<(), memcg::Error>(())
//! ```
//!
//! For a `JoinSet` (or any spawner): `set.spawn(fut.in_current_group())`
//! ([`crate::FutureExt::in_current_group`]).
//!
//! Statistics of a worker thread are batched per thread (a few KiB) and
//! flushed by its next charges; a worker that goes idle keeps them until it
//! works again. Flush them when it parks:
//!
//! ```
//! let rt = tokio::runtime::Builder::new_multi_thread()
//!     .on_thread_park(memcg::flush_current)
//!     .build()
//!     .unwrap();
//! # drop(rt);
//! ```

use std::future::Future;

use crate::runtime::scope::{FutureExt, InGroup};
use crate::runtime::thread::current_group;

/// `tokio::spawn` of `future` in the caller's current group: every poll of
/// the task charges that group, on whichever worker it runs.
///
/// # Panics
/// As `tokio::spawn`: outside a tokio runtime.
#[track_caller]
pub fn spawn<F>(future: F) -> ::tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    ::tokio::spawn(future.in_current_group())
}

/// `tokio::task::spawn_blocking` of `f` in the caller's current group: `f`
/// runs inside that group's scope on the blocking thread.
///
/// # Panics
/// As `tokio::task::spawn_blocking`: outside a tokio runtime.
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> ::tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let group = current_group();
    ::tokio::task::spawn_blocking(move || {
        // A group removed meanwhile: `f` runs in the thread's own group.
        let _scope = group.as_ref().and_then(|g| g.enter().ok());
        f()
    })
}

/// The future `future` wrapped to run in the caller's current group, for
/// spawners other than `tokio::spawn` (`JoinSet::spawn`, `LocalSet`, ...).
pub fn in_current_group<F: Future>(future: F) -> InGroup<F> {
    future.in_current_group()
}
