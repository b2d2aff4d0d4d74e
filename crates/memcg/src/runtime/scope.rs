//! Scopes and async: charging a region of code, or a future's polls, to a
//! group.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::engine::memcg::MemCgroup;
use crate::engine::Group;
use crate::error::{Error, Result};
use crate::runtime::thread::with_task;

/// Until dropped, allocations of this thread are charged to a group (the
/// kernel's `set_active_memcg`). Scopes nest; each restores the group that
/// was active before it. Made by [`Group::enter`].
///
/// A scope belongs to its thread: it is not `Send`, so it cannot be held
/// across an `.await` in a future that moves between worker threads (the
/// compiler says "`*const ()` cannot be sent between threads safely").
/// For async code use [`FutureExt::in_group`], which enters the group
/// around every poll, wherever the future is polled. (Where a future need
/// not be `Send` — `block_on`, a current-thread runtime — a scope held
/// across `.await` compiles, and then also covers whatever else the
/// thread runs while the future waits.) Drop nested scopes in reverse
/// order of creation.
#[must_use = "the scope ends when the guard is dropped"]
#[derive(Debug)]
pub struct Scope {
    previous: Option<Arc<MemCgroup>>,
    entered: bool,
    /// A scope belongs to the thread that entered it.
    _not_send: PhantomData<*const ()>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if self.entered {
            let previous = self.previous.take();
            with_task(|t| t.swap_active(previous));
        }
    }
}

fn check_global(group: &Group) -> Result<()> {
    if group.core().serial != crate::runtime::global::controller().core().serial {
        return Err(Error::ForeignController);
    }
    Ok(())
}

fn enter_memcg(memcg: Arc<MemCgroup>) -> Scope {
    match with_task(|t| t.swap_active(Some(memcg))) {
        Some(previous) => Scope {
            previous,
            entered: true,
            _not_send: PhantomData,
        },
        None => Scope {
            previous: None,
            entered: false,
            _not_send: PhantomData,
        },
    }
}

impl Group {
    /// Charges this thread's allocations to this group until the returned
    /// guard drops.
    ///
    /// # Errors
    /// [`Error::ForeignController`] for a group not of
    /// [`crate::controller()`], [`Error::Removed`].
    ///
    /// # Examples
    /// ```
    /// let tenant = memcg::controller().create("doc-scope")?;
    /// {
    ///     let _scope = tenant.enter()?;
    ///     // allocations here are charged to `doc-scope`
    ///     // (when `MemcgAlloc` is the global allocator)
    /// }
    /// # Ok::<(), memcg::Error>(())
    /// ```
    pub fn enter(&self) -> Result<Scope> {
        check_global(self)?;
        if !self.is_online() {
            return Err(Error::Removed {
                path: self.path().to_string(),
            });
        }
        Ok(enter_memcg(Arc::clone(self.memcg())))
    }
}

pin_project_lite::pin_project! {
    /// A future whose every `poll` runs inside its group's scope, so its
    /// allocations are charged to the group whichever worker thread polls
    /// it. Made by [`FutureExt::in_group`]. If the group is removed while
    /// the future runs, its charges go to the nearest remaining ancestor.
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct InGroup<F> {
        memcg: Option<Arc<MemCgroup>>,
        #[pin]
        future: F,
    }
}

impl<F> InGroup<F> {
    /// The group, if it belongs to [`crate::controller()`].
    pub(crate) fn group(&self) -> Option<Group> {
        let m = self.memcg.as_ref()?;
        let ctrl = crate::runtime::global::controller();
        Some(Group::from_parts(Arc::clone(ctrl.core()), Arc::clone(m)))
    }
}

impl<F: Future> Future for InGroup<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _scope = this.memcg.as_ref().map(|m| enter_memcg(Arc::clone(m)));
        this.future.poll(cx)
    }
}

/// Runs futures inside a group's scope.
pub trait FutureExt: Future + Sized {
    /// Wraps the future so that each `poll` charges `group`, whichever
    /// worker thread polls it (tasks it spawns start in no group of their
    /// own: spawn them with [`FutureExt::in_current_group`], or the `tokio`
    /// feature's `memcg::tokio::spawn`, to keep them in it).
    ///
    /// # Errors
    /// [`Error::ForeignController`] for a group of another controller than
    /// [`crate::controller()`] (the allocator charges that one only).
    fn in_group(self, group: &Group) -> Result<InGroup<Self>> {
        check_global(group)?;
        Ok(InGroup {
            memcg: Some(Arc::clone(group.memcg())),
            future: self,
        })
    }

    /// Wraps the future so that each `poll` charges the group the calling
    /// thread's charges go to now ([`crate::current_group`]: its scope's,
    /// the polled future's, or its attachment). For spawning: a task
    /// spawned from inside an [`InGroup`] future stays in that group.
    ///
    /// ```
    /// use memcg::FutureExt;
    /// let tenant = memcg::controller().create("doc-current")?;
    /// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// rt.block_on(
    ///     async {
    ///         // Spawned work follows the request into its tenant.
    ///         let child = tokio::spawn(async { memcg::current_group() }.in_current_group());
    ///         child.await.unwrap()
    ///     }
    ///     .in_group(&tenant)?,
    /// )
    /// .map(|g| assert_eq!(g.path(), "doc-current"));
    /// # tenant.remove()?;
    /// # Ok::<(), memcg::Error>(())
    /// ```
    fn in_current_group(self) -> InGroup<Self> {
        InGroup {
            memcg: crate::runtime::thread::current_group().map(|g| Arc::clone(g.memcg())),
            future: self,
        }
    }
}

impl<F: Future> FutureExt for F {}
