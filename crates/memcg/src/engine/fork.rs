//! What the runtime's fork handlers need of the engine (`runtime::fork`):
//! the tasks' registered owners, before the fork and in the child, and the
//! reclaimer's reset in the child. The engine itself knows nothing of
//! threads; the runtime registers each thread's task with
//! [`Task::set_owner`].

use crate::engine::task::Task;
use crate::engine::task_shared::TaskShared;
use crate::engine::Controller;
use crate::sync::Ordering;

impl Controller {
    /// Calls `f` on every task with a registered owner other than
    /// `me_task` (the address of the calling thread's task, or 0), under
    /// the task-list lock. `f` must not allocate or take engine locks.
    pub(crate) fn for_each_other_owned_task(&self, me_task: usize, mut f: impl FnMut(&TaskShared)) {
        let tasks = self.core().tasks.lock();
        for t in tasks.iter() {
            let owner = t.owner_task.load(Ordering::Acquire);
            if owner != 0 && owner != me_task {
                f(t);
            }
        }
    }

    /// In a forked child: retires the tasks of the threads that did not
    /// survive the fork (every registered task but `me_task`), one at a
    /// time, with [`Task::retire_in_child`]. Returns how many it retired.
    ///
    /// # Safety
    /// Called in a child process right after `fork`, on its only thread,
    /// before any other thread starts; every registered owner address other
    /// than `me_task` is a live `Task` of a thread of the parent (the
    /// runtime's thread-locals, copied into the child and never touched
    /// again by their thread, which does not exist here).
    pub(crate) unsafe fn retire_orphans_in_child(&self, me_task: usize) -> usize {
        let mut retired = 0;
        loop {
            let mut next = 0;
            self.for_each_other_owned_task(me_task, |t| {
                if next == 0 {
                    next = t.owner_task.load(Ordering::Acquire);
                    // Never again, whatever happens to the exit below.
                    t.owner_task.store(0, Ordering::Release);
                }
            });
            if next == 0 {
                return retired;
            }
            // SAFETY: the caller's contract: `next` is a `Task` of a thread
            // that no longer exists, so nothing else uses it; it is exited
            // once (its owner word was cleared above).
            unsafe { (*(next as *mut Task)).retire_in_child() };
            retired += 1;
        }
    }

    /// In a forked child: forgets the reclaimer threads (see
    /// `Reclaimd::reset_in_child`); returns whether they had been started.
    pub(crate) fn reset_reclaimers_in_child(&self) -> bool {
        self.core().reclaimd.reset_in_child()
    }

    /// A fork's prepare handler: holds the reclaimer's queue lock across
    /// the copy (see `Reclaimd::hold_for_fork`).
    pub(crate) fn hold_reclaimer_for_fork(&'static self) {
        let core: &'static crate::engine::core::Core = self.core();
        core.reclaimd.hold_for_fork();
    }

    /// A fork's parent or child handler: releases what
    /// [`Controller::hold_reclaimer_for_fork`] took.
    pub(crate) fn release_reclaimer_after_fork() {
        crate::engine::reclaim::Reclaimd::release_after_fork();
    }

    /// Starts the reclaimer threads (again, in a forked child).
    pub(crate) fn restart_reclaimers(&self) {
        self.core().reclaimd.ensure_started();
    }
}
