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
    /// Wraps the future so that each `poll` charges `group`. A group of
    /// another controller than [`crate::controller()`] is ignored (the
    /// polls charge the polling thread's group).
    fn in_group(self, group: &Group) -> InGroup<Self> {
        InGroup {
            memcg: check_global(group).ok().map(|()| Arc::clone(group.memcg())),
            future: self,
        }
    }
}

impl<F: Future> FutureExt for F {}
