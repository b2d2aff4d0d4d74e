//! Limits where they meet the program's code: fallible regions, spending a
//! reservation on this thread, and futures that stop when their group is
//! killed.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::engine::{Group, OomKilled, Reservation};
use crate::error::{Error, Result};
use crate::runtime::scope::InGroup;
use crate::runtime::thread::with_task;

/// Runs `f` in a fallible region: allocations of this thread that a group's
/// `max` refuses after reclaim fail (the allocator returns null, so
/// `Vec::try_reserve`, `Box::try_new` and friends see `Err`) whatever the
/// group's OOM policy, and the group counts `oom`, not
/// `oom_kill` (the kernel's may-fail allocations). Infallible allocations
/// inside the region abort on such a refusal, as for any allocation
/// failure: use it around code whose allocations are all fallible.
/// Regions nest.
///
/// # Examples
/// ```
/// let big = memcg::fallible(|| {
///     let mut v: Vec<u8> = Vec::new();
///     v.try_reserve(64 << 10).map(|()| v)
/// });
/// assert!(big.is_ok());
/// ```
pub fn fallible<R>(f: impl FnOnce() -> R) -> R {
    struct Region(Option<u32>);
    impl Drop for Region {
        fn drop(&mut self) {
            if let Some(previous) = self.0 {
                with_task(|t| t.set_fallible_depth(previous));
            }
        }
    }
    let _region = Region(with_task(|t| {
        let d = t.fallible_depth();
        t.set_fallible_depth(d + 1)
    }));
    f()
}

/// Pays the calling thread's allocations from a reservation until dropped;
/// made by [`Reservation::spend`]. Belongs to the thread that made it: it
/// is not `Send`, so it cannot be held across an `.await` in a future that
/// moves between worker threads; spend inside a synchronous section.
/// Guards nest: drop them in reverse order of creation (each restores the
/// reservation spent before it).
#[must_use = "spending ends when the guard is dropped"]
#[derive(Debug)]
pub struct Spend<'a> {
    previous: Option<crate::engine::sys_alloc::SysArc<crate::engine::reservation::Reserved>>,
    entered: bool,
    _reservation: PhantomData<&'a mut Reservation>,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Spend<'_> {
    fn drop(&mut self) {
        if self.entered {
            let previous = self.previous.take();
            // The reference dropped here is dropped outside any engine lock.
            let replaced = with_task(|t| t.swap_spend(previous));
            drop(replaced);
        }
    }
}

impl Reservation {
    /// Pays this thread's allocations from the reservation until the guard
    /// drops (DataFusion's "reserve, then build"): each allocation takes
    /// its bytes from the reservation while it has them, instead of being
    /// charged a second time, and `memory.stat` moves them from
    /// `reservation` to `alloc`. Frees uncharge as usual; when the
    /// reservation runs out, allocations charge normally.
    ///
    /// # Errors
    /// [`Error::ForeignController`] for a reservation of a controller other
    /// than [`crate::controller()`].
    ///
    /// # Examples
    /// ```
    /// let tenant = memcg::controller().create("doc-spend")?;
    /// let mut r = tenant.try_charge(1 << 20)?; // fails cleanly at the limit
    /// {
    ///     let _spend = r.spend()?;
    ///     let buf = vec![0u8; 512 << 10]; // paid from `r` (with `MemcgAlloc`)
    ///     drop(buf);
    /// }
    /// # drop(r);
    /// # tenant.remove()?;
    /// # Ok::<(), memcg::Error>(())
    /// ```
    pub fn spend(&mut self) -> Result<Spend<'_>> {
        let global = crate::runtime::global::controller();
        if self.inner.core().serial != global.core().serial {
            return Err(Error::ForeignController);
        }
        let inner = self.inner.clone();
        Ok(match with_task(|t| t.swap_spend(Some(inner))) {
            Some(previous) => Spend {
                previous,
                entered: true,
                _reservation: PhantomData,
                _not_send: PhantomData,
            },
            None => Spend {
                previous: None,
                entered: false,
                _reservation: PhantomData,
                _not_send: PhantomData,
            },
        })
    }
}

pin_project_lite::pin_project! {
    /// A future run in its group's scope that stops when the group (or an
    /// ancestor) is killed by its OOM policy: at its next poll it completes
    /// with `Err(OomKilled)` without polling the inner future again (which
    /// is dropped with it). A kill wakes it. Made by [`InGroup::killable`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless polled"]
    pub struct Killable<F> {
        group: Option<Group>,
        waker_id: u64,
        #[pin]
        inner: InGroup<F>,
    }

    impl<F> PinnedDrop for Killable<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(g) = this.group.as_ref() {
                g.deregister_kill_waker(*this.waker_id);
            }
        }
    }
}

impl<F: Future> Future for Killable<F> {
    type Output = std::result::Result<F::Output, OomKilled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(g) = this.group.as_ref() {
            if let Some(k) = g.register_kill_waker(this.waker_id, cx.waker()) {
                return Poll::Ready(Err(k));
            }
        }
        this.inner.poll(cx).map(Ok)
    }
}

impl<F: Future> InGroup<F> {
    /// Makes the future stop with `Err(OomKilled)` at its next poll once its
    /// group (or an ancestor) is killed; see [`Killable`]. (A future made by
    /// [`crate::FutureExt::in_current_group`] during the thread's teardown
    /// has no group: it is never killed.)
    pub fn killable(self) -> Killable<F> {
        Killable {
            group: self.group(),
            waker_id: 0,
            inner: self,
        }
    }
}
