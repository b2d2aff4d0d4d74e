//! The reclaimer thread: where reclaim callbacks ("shrinkers") and kill
//! notifications run, never inside an allocation and never under an engine
//! lock.
//!
//! A charge that finds its group over `max` (or a charge that took it over
//! `high`, or a `memory.max` write below usage) does not run user code: it
//! records what it wants in the over-limit group's [`ReclaimState`]
//! (merged with other requesters, lock-free), queues the group once, and
//! for `max` waits a bounded time for the reclaimer thread to complete a
//! pass over that group, holding no engine lock while it waits (the wait
//! releases the queue's lock). A callback that blocks on a lock the waiting
//! thread holds therefore only delays that thread until its deadline; the
//! charge then takes its group's OOM outcome.
//!
//! The reclaimer threads (`Config::reclaimer_threads` per controller, 4 by
//! default, named `memcg-reclaim`, started when the first callback or kill
//! waiter is registered) serve the queue in order: for a reclaim request a
//! thread asks the callbacks of the group's subtree, largest group first,
//! until the wanted bytes were freed; for a kill it runs the kill callbacks
//! of the killed subtree and wakes the futures waiting for the kill. One
//! group is served by one thread at a time (a request that comes while it
//! is served is served by that thread next), and a callback never runs on
//! two threads at once (a pass of an overlapping subtree skips it), so a
//! callback that blocks holds up its own group and one thread, not the
//! other groups. The threads' own charges (those of the callbacks) are
//! forced past `max`, the kernel's `PF_MEMALLOC`, so reclaim never waits
//! for itself. A callback that panics is caught and skipped.
//!
//! The queue's storage is made when the controller is made and never grows:
//! pushing never allocates. When it is full a request is not lost: the
//! group's `queued` flag stays set and the reclaimer scans the tree for
//! flagged groups.
//!
//! # Orderings and the loom models
//! The hand-off itself (queue, pass counts, waits) runs under the queue's
//! lock. The flags and request words of [`ReclaimState`] are read-modify-
//! writes whose AcqRel orders a requester's `want_bytes`/`reason` before
//! the server's swap of `queued`, and a callback's effects before the next
//! run of it on another thread (`running`). loom keeps every atomic's
//! modification order in execution order and does not see the callbacks'
//! own data, so no model fails with one of these weakened
//! (`scripts/loom-mutations.py`); `loom_reclaim` checks the hand-off's
//! outcomes. `started` pairs SeqCst with a group's kill mark (a store-load
//! handshake, beyond loom, which treats SeqCst accesses as AcqRel), and the
//! models have no reclaimer threads, so its paths are not reached.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::engine::locked_vec;
use crate::engine::memcg::{MemCgroup, ReclaimState};
use crate::engine::policy::{KillCallback, OomKilled, ReclaimReason, ReclaimRequest, Reclaimer};
use crate::limit::PAGE_SIZE;
use crate::sync::{AtomicBool, AtomicU64, Condvar, Deadline, Mutex, Ordering};

/// Entries of the reclaimer's queue, made at start (never grown).
const QUEUE_CAPACITY: usize = 1024;

/// Most reclaimer threads a controller can have.
pub const MAX_RECLAIMER_THREADS: usize = 8;

/// Keeps a reclaim callback registered; dropping it unregisters the
/// callback (use [`ReclaimerHandle::keep`] to leave it registered for the
/// group's lifetime).
#[must_use = "dropping the handle unregisters the callback at once"]
pub struct ReclaimerHandle {
    pub(crate) group: Weak<MemCgroup>,
    pub(crate) reclaimer: Option<Reclaimer>,
}

impl std::fmt::Debug for ReclaimerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReclaimerHandle").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OomKillHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OomKillHandle").finish_non_exhaustive()
    }
}

impl ReclaimerHandle {
    /// Leaves the callback registered until the group is removed.
    pub fn keep(mut self) {
        self.reclaimer = None;
    }
}

impl Drop for ReclaimerHandle {
    fn drop(&mut self) {
        let (Some(group), Some(r)) = (self.group.upgrade(), self.reclaimer.take()) else {
            return;
        };
        drop(group.remove_reclaimer(&r));
    }
}

/// Keeps a kill callback registered ([`crate::Group::on_oom_kill`]);
/// dropping it unregisters the callback, [`OomKillHandle::keep`] leaves it
/// registered for the group's lifetime.
#[must_use = "dropping the handle unregisters the callback at once"]
pub struct OomKillHandle {
    pub(crate) group: Weak<MemCgroup>,
    pub(crate) callback: Option<KillCallback>,
}

impl OomKillHandle {
    /// Leaves the callback registered until the group is removed.
    pub fn keep(mut self) {
        self.callback = None;
    }
}

impl Drop for OomKillHandle {
    fn drop(&mut self) {
        let (Some(group), Some(c)) = (self.group.upgrade(), self.callback.take()) else {
            return;
        };
        drop(locked_vec::take_where(&group.kill_callbacks, |x| {
            Arc::ptr_eq(x, &c)
        }));
    }
}

/// Work for the reclaimer thread.
#[derive(Debug)]
enum Work {
    Reclaim(Arc<MemCgroup>),
    Kill(Arc<MemCgroup>),
    /// The queue overflowed: serve every flagged group of the tree.
    Scan,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Work>,
    overflow: bool,
    /// Items being served now.
    busy: usize,
    shutdown: bool,
}

/// The queue lock of the process's controller while a fork is made (see
/// [`Reclaimd::hold_for_fork`]).
#[cfg(not(all(test, memcg_loom)))]
struct ForkHeld(std::cell::UnsafeCell<Option<crate::sync::MutexGuard<'static, Queue>>>);

// SAFETY: the slot is used only by the thread that holds the runtime's fork
// lock, from a fork's prepare handler to its parent or child handler, and
// the guard is dropped by that same thread (in the parent, or as the only
// thread of the child).
#[cfg(not(all(test, memcg_loom)))]
unsafe impl Sync for ForkHeld {}

#[cfg(not(all(test, memcg_loom)))]
static FORK_HELD: ForkHeld = ForkHeld(std::cell::UnsafeCell::new(None));

/// The reclaimer of one controller: its queue, and who serves it.
#[derive(Debug)]
pub(crate) struct Reclaimd {
    queue: Mutex<Queue>,
    /// The reclaimer waits here for work.
    work: Condvar,
    /// Waiters wait here for passes (and for idleness).
    done: Condvar,
    /// The threads serving the queue ([`crate::sync::current_thread_token`]),
    /// 0 for none.
    servers: [AtomicU64; MAX_RECLAIMER_THREADS],
    /// Someone serves the queue (the thread was started, or a model or
    /// embedder serves it): only then do chargers wait.
    served: AtomicBool,
    /// The threads were started (once).
    started: AtomicBool,
    /// The root group, for overflow scans.
    root: Weak<MemCgroup>,
    /// How long a charge waits for reclaim in all, in nanoseconds.
    wait_nanos: AtomicU64,
    /// Threads to start on first need (0: the embedder serves the queue).
    nr_threads: usize,
    /// Counters for tests and statistics.
    pub(crate) counters: ReclaimCounters,
}

/// What the reclaimer did.
#[derive(Debug, Default)]
pub(crate) struct ReclaimCounters {
    /// Reclaim passes served.
    pub(crate) passes: AtomicU64,
    /// Waits for a pass that ended at the deadline.
    pub(crate) wait_timeouts: AtomicU64,
    /// Callbacks that panicked (caught).
    pub(crate) panics: AtomicU64,
}

impl Reclaimd {
    pub(crate) fn new(root: &Arc<MemCgroup>, wait: Duration, nr_threads: usize) -> Self {
        Reclaimd {
            queue: Mutex::new(Queue {
                items: VecDeque::with_capacity(QUEUE_CAPACITY),
                overflow: false,
                busy: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            servers: std::array::from_fn(|_| AtomicU64::new(0)),
            served: AtomicBool::new(false),
            started: AtomicBool::new(false),
            root: Arc::downgrade(root),
            wait_nanos: AtomicU64::new(duration_nanos(wait)),
            nr_threads: nr_threads.min(MAX_RECLAIMER_THREADS),
            counters: ReclaimCounters::default(),
        }
    }

    /// How long a charge waits for reclaim in all.
    pub(crate) fn wait(&self) -> Duration {
        Duration::from_nanos(self.wait_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn set_wait(&self, wait: Duration) {
        self.wait_nanos
            .store(duration_nanos(wait), Ordering::Relaxed);
    }

    /// Whether the calling thread is the one serving the queue (its
    /// charges are forced: reclaim must not wait for itself).
    pub(crate) fn is_current_thread(&self) -> bool {
        let mut me = 0;
        self.servers.iter().any(|s| {
            // Relaxed: only compared with this thread's token, which only
            // this thread stores (its own store is always visible to it;
            // no other slot ever holds it).
            let s = s.load(Ordering::Relaxed);
            if s == 0 {
                return false;
            }
            if me == 0 {
                me = crate::sync::current_thread_token();
            }
            s == me
        })
    }

    /// Whether anyone serves the queue (chargers wait only then).
    pub(crate) fn is_served(&self) -> bool {
        // Acquire: pairs with the Release stores of `served`. A hint: a
        // charge that misses a change does not wait, or waits and times
        // out; the hand-off is under the queue's lock (module doc).
        self.served.load(Ordering::Acquire)
    }

    /// Marks the queue as served by the embedder (manual mode, models).
    #[cfg_attr(not(all(test, memcg_loom)), allow(dead_code))]
    pub(crate) fn set_served(&self, served: bool) {
        self.served.store(served, Ordering::Release);
    }

    /// Starts the reclaimer thread if the controller has one and it is not
    /// running yet. Called from registration paths (never from inside an
    /// allocation).
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        // SeqCst: pairs with `request_kill_notify` (a kill racing the first
        // registration: one of the two sees the other).
        if self.nr_threads == 0 || self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        // Served from now on: a charge that meets `max` after this waits
        // for the threads, which serve whatever is queued when they start.
        self.served.store(true, Ordering::Release);
        #[cfg(not(all(test, memcg_loom)))]
        {
            let mut spawned = 0;
            for slot in 0..self.nr_threads {
                let me = Arc::clone(self);
                if crate::sync::spawn_named("memcg-reclaim", move || me.run(slot)).is_ok() {
                    spawned += 1;
                }
            }
            if spawned == 0 {
                // Release, as the store of `served` above: a charge that
                // reads `false` with Acquire waits for no thread.
                self.served.store(false, Ordering::Release);
                self.started.store(false, Ordering::Release);
            }
        }
    }

    /// Asks for a reclaim pass over `group` (merged with pending requests).
    pub(crate) fn request_reclaim(
        &self,
        group: &MemCgroup,
        want_bytes: u64,
        reason: ReclaimReason,
    ) {
        let st: &ReclaimState = &group.reclaim;
        // AcqRel (these three): ordered before the server's swaps (module
        // doc: orderings and loom).
        st.want_bytes.fetch_max(want_bytes, Ordering::AcqRel);
        st.reason.fetch_max(reason.to_u8(), Ordering::AcqRel);
        if st.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        match group.arc() {
            Some(g) => self.push(Work::Reclaim(g)),
            None => st.queued.store(false, Ordering::Release),
        }
    }

    /// Queues the kill notification of `group`. Not queued when the
    /// controller's thread was never started: nothing was registered to
    /// notify (registering a kill callback or waiter starts it).
    pub(crate) fn request_kill_notify(&self, group: &MemCgroup) {
        // SeqCst: after the kill's SeqCst mark; pairs with `ensure_started`.
        if self.nr_threads > 0 && !self.started.load(Ordering::SeqCst) {
            return;
        }
        // AcqRel: as `queued` in `request_reclaim` (module doc).
        if group.reclaim.kill_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        match group.arc() {
            Some(g) => self.push(Work::Kill(g)),
            None => group.reclaim.kill_queued.store(false, Ordering::Release),
        }
    }

    fn push(&self, w: Work) {
        let mut q = self.queue.lock();
        if q.items.len() < q.items.capacity() {
            // No allocation: the room was made with the queue.
            q.items.push_back(w);
        } else {
            q.overflow = true;
            // `w`'s Arc is dropped after the lock (below); its group stays
            // flagged, so the scan finds it.
        }
        drop(q);
        self.work.notify_all();
    }

    /// The number of passes completed for `group` so far; pass it to
    /// [`Reclaimd::wait_for_pass`].
    pub(crate) fn passes(&self, group: &MemCgroup) -> u64 {
        // Acquire: pairs with the pass's AcqRel increment; the wait
        // compares it again under the queue's lock (module doc).
        group.reclaim.passes.load(Ordering::Acquire)
    }

    /// Waits until a pass over `group` completes after `seen` passes, or
    /// the deadline. Holds no engine lock while it sleeps. Returns whether
    /// a pass completed.
    pub(crate) fn wait_for_pass(
        &self,
        group: &MemCgroup,
        seen: u64,
        deadline: &mut Deadline,
    ) -> bool {
        if !self.is_served() || self.is_current_thread() {
            return false;
        }
        let mut q = self.queue.lock();
        loop {
            // Under the queue's lock, as the increment (module doc).
            if group.reclaim.passes.load(Ordering::Acquire) != seen {
                return true;
            }
            if q.shutdown {
                return false;
            }
            let Some(left) = deadline.remaining() else {
                self.counters.wait_timeouts.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            self.done.wait_timeout(&self.queue, &mut q, Some(left));
        }
    }

    /// Waits until the queue is empty and the reclaimer idle, or `timeout`;
    /// returns whether it got idle.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let mut deadline = Deadline::after(timeout);
        let mut q = self.queue.lock();
        loop {
            if q.items.is_empty() && !q.overflow && q.busy == 0 {
                return true;
            }
            if q.shutdown || !self.is_served() {
                return false;
            }
            let Some(left) = deadline.remaining() else {
                return false;
            };
            self.done.wait_timeout(&self.queue, &mut q, Some(left));
        }
    }

    /// In a forked child (one thread, the fork's): the reclaimer threads
    /// did not survive. Forgets them (no server, not started, nothing
    /// busy), clears the serving marks of the groups they were serving and
    /// asks for a scan, so that the next start serves every queued group;
    /// returns whether threads had been started (the runtime starts them
    /// again on the next library call made outside an allocation).
    /// Allocates nothing.
    #[cfg(not(all(test, memcg_loom)))]
    pub(crate) fn reset_in_child(&self) -> bool {
        for s in &self.servers {
            s.store(0, Ordering::Relaxed);
        }
        let was_started = self.started.swap(false, Ordering::SeqCst);
        if was_started {
            self.served.store(false, Ordering::Release);
        }
        let mut q = self.queue.lock();
        q.busy = 0;
        q.overflow = true;
        drop(q);
        if let Some(root) = self.root.upgrade() {
            clear_serving(&root);
        }
        was_started
    }

    /// A fork's prepare handler, with the fork gate closed: takes the queue
    /// lock and keeps it until [`Reclaimd::release_after_fork`] (parent or
    /// child). The queue lock is the one the condvars wait with; a waiter
    /// re-takes it before the gate, so the gate alone cannot keep it from
    /// being copied held. Allocates nothing.
    #[cfg(not(all(test, memcg_loom)))]
    pub(crate) fn hold_for_fork(&'static self) {
        let g = self.queue.lock_in_fork_prepare();
        // SAFETY: only the thread that holds the runtime's fork lock
        // (`runtime::fork`'s FORKING, from its prepare handler to its
        // parent or child handler) touches the slot.
        unsafe { *FORK_HELD.0.get() = Some(g) };
    }

    /// A fork's parent or child handler: lets the lock taken by
    /// [`Reclaimd::hold_for_fork`] go (in the child, the forking thread is
    /// the only thread and the guard's owner). Allocates nothing.
    #[cfg(not(all(test, memcg_loom)))]
    pub(crate) fn release_after_fork() {
        // SAFETY: as in `hold_for_fork`.
        drop(unsafe { (*FORK_HELD.0.get()).take() });
    }

    /// Stops the reclaimer thread (the controller is going away).
    pub(crate) fn shutdown(&self) {
        let mut q = self.queue.lock();
        q.shutdown = true;
        let items = std::mem::take(&mut q.items);
        drop(q);
        drop(items);
        self.work.notify_all();
        self.done.notify_all();
    }

    /// A reclaimer thread's loop (`slot`: its entry in `servers`).
    #[cfg(not(all(test, memcg_loom)))]
    fn run(&self, slot: usize) {
        let Some(token) = self.servers.get(slot) else {
            return;
        };
        // Relaxed (here and below): see `is_current_thread`.
        token.store(crate::sync::current_thread_token(), Ordering::Relaxed);
        let mut finished = false;
        while let Some(w) = self.next(true, finished) {
            self.serve(w);
            finished = true;
        }
        token.store(0, Ordering::Relaxed);
    }

    /// Serves everything queued now on the calling thread, without
    /// waiting for more (manual mode, models). Charges of the callbacks
    /// are forced meanwhile. Does nothing when the controller's reclaimer
    /// threads serve the queue.
    pub(crate) fn serve_pending(&self) {
        if self.nr_threads > 0 && self.started.load(Ordering::Acquire) {
            return;
        }
        // A free server slot marks this thread as a reclaimer meanwhile
        // (several embedder threads may serve at once, as threads do).
        let me = crate::sync::current_thread_token();
        // Relaxed (the claim and the release below): the slot only tells
        // `is_current_thread` which thread serves; nothing is published.
        let Some(slot) = self.servers.iter().find(|s| {
            s.compare_exchange(0, me, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        }) else {
            return;
        };
        let mut finished = false;
        while let Some(w) = self.next(false, finished) {
            self.serve(w);
            finished = true;
        }
        slot.store(0, Ordering::Relaxed);
    }

    /// The next work item (counted busy until the next call, with
    /// `finished` set), waiting for one when `block`; `None` at shutdown
    /// or, without `block`, when empty. A group that another thread serves
    /// is not served twice at once: its item is dropped and that thread
    /// serves it again when its pass ends.
    fn next(&self, block: bool, finished: bool) -> Option<Work> {
        let mut q = self.queue.lock();
        if finished {
            q.busy = q.busy.saturating_sub(1);
        }
        loop {
            if q.shutdown {
                drop(q);
                self.done.notify_all();
                return None;
            }
            if let Some(w) = q.items.pop_front() {
                if let Work::Reclaim(g) = &w {
                    if g.reclaim.serving.load(Ordering::Relaxed) {
                        g.reclaim.rerun.store(true, Ordering::Relaxed);
                        // The serving thread holds the group too: this
                        // drop frees nothing.
                        drop(w);
                        continue;
                    }
                    g.reclaim.serving.store(true, Ordering::Relaxed);
                }
                q.busy += 1;
                return Some(w);
            }
            if std::mem::take(&mut q.overflow) {
                q.busy += 1;
                return Some(Work::Scan);
            }
            // Idle: tell `wait_idle`.
            if q.busy == 0 {
                self.done.notify_all();
            }
            if !block {
                return None;
            }
            self.work.wait_timeout(&self.queue, &mut q, None);
        }
    }

    fn serve(&self, w: Work) {
        match w {
            Work::Reclaim(g) => self.serve_reclaim(&g),
            Work::Kill(g) => serve_kill(&g),
            Work::Scan => {
                if let Some(root) = self.root.upgrade() {
                    self.scan(&root);
                }
            }
        }
    }

    fn scan(&self, g: &Arc<MemCgroup>) {
        // Acquire (both flags): pairs with the requesters' swaps (module
        // doc); a flag missed here is served by the next scan or push.
        if g.reclaim.queued.load(Ordering::Acquire) {
            let claimed = {
                let _q = self.queue.lock();
                let serving = g.reclaim.serving.swap(true, Ordering::Relaxed);
                if serving {
                    // The serving thread runs it again when its pass ends.
                    g.reclaim.rerun.store(true, Ordering::Relaxed);
                }
                !serving
            };
            if claimed {
                self.serve_reclaim(g);
            }
        }
        // Acquire: pairs with the AcqRel swap that queued the kill, so the
        // kill's mark on the group is seen before its callbacks run.
        if g.reclaim.kill_queued.load(Ordering::Acquire) {
            serve_kill(g);
        }
        // Removed children too: a request that overflowed may be theirs.
        let dead = locked_vec::snapshot(&g.dead_children);
        for c in g.children_snapshot().iter().chain(dead.iter()) {
            self.scan(c);
        }
    }

    /// Serves reclaim passes for `g`, which this thread claimed
    /// (`serving`), until no request came meanwhile.
    fn serve_reclaim(&self, g: &MemCgroup) {
        let st = &g.reclaim;
        loop {
            // Cleared before the pass, so that a request made during it
            // queues the group again. A read-modify-write: ordered with
            // the requesters' swaps, and acquiring what they asked for
            // (their `want_bytes`) before it is read below.
            // (module doc: orderings and loom)
            st.queued.swap(false, Ordering::AcqRel);
            let asked = st.want_bytes.swap(0, Ordering::AcqRel);
            let reason = ReclaimReason::from_u8(st.reason.swap(0, Ordering::AcqRel));
            let want = match reason {
                // The excess now, not when it was asked.
                Some(ReclaimReason::High) => {
                    let (usage, high) = (g.counter.usage_pages(), g.counter.high_pages());
                    usage.saturating_sub(high).saturating_mul(PAGE_SIZE)
                }
                _ => asked,
            };
            if let (Some(reason), true) = (reason, want > 0) {
                reclaim_subtree(self, g, want, reason);
                crate::sync::after_user_callbacks();
            }
            self.counters.passes.fetch_add(1, Ordering::Relaxed);
            let again = {
                let _q = self.queue.lock();
                // AcqRel, under the queue's lock like its readers (module
                // doc): the pass's work is ordered before a waiter's return.
                st.passes.fetch_add(1, Ordering::AcqRel);
                // Again if a request came during the pass: its item was
                // dropped for this thread (`rerun`), or it was not queued at
                // all (the queue was full, and an overflow scan found the
                // group being served).
                let again =
                    st.rerun.swap(false, Ordering::Relaxed) | st.queued.load(Ordering::Acquire);
                if !again {
                    st.serving.store(false, Ordering::Relaxed);
                }
                again
            };
            self.done.notify_all();
            if !again {
                return;
            }
        }
    }
}

impl MemCgroup {
    /// A strong reference to this group (`None` only while it is being
    /// dropped, when nobody can ask for reclaim on it).
    pub(crate) fn arc(&self) -> Option<Arc<MemCgroup>> {
        self.self_ref.upgrade()
    }
}

/// Clears the serving marks in `g`'s subtree, removed children included
/// (a forked child's reset; no allocation: the lists are walked under
/// their locks, which nobody else can hold in a one-thread child).
#[cfg(not(all(test, memcg_loom)))]
fn clear_serving(g: &MemCgroup) {
    g.reclaim.serving.store(false, Ordering::Relaxed);
    g.reclaim.rerun.store(false, Ordering::Relaxed);
    for list in [&g.children, &g.dead_children] {
        let children = list.lock();
        for c in children.iter() {
            clear_serving(c);
        }
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs `f`, catching a panic (a user callback must not end the
/// reclaimer). Returns `None` if it panicked.
fn catching<R>(d: &Reclaimd, f: impl FnOnce() -> R) -> Option<R> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(_) => {
            d.counters.panics.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Asks the callbacks of `over`'s subtree, largest usage first, until
/// `wanted_bytes` were freed; returns the bytes they reported.
fn reclaim_subtree(
    d: &Reclaimd,
    over: &MemCgroup,
    wanted_bytes: u64,
    reason: ReclaimReason,
) -> u64 {
    let mut candidates: Vec<(u64, Reclaimer)> = Vec::new();
    collect(over, &mut candidates);
    candidates.sort_by_key(|c| std::cmp::Reverse(c.0));
    let mut freed = 0u64;
    for (_, r) in candidates {
        if freed >= wanted_bytes {
            break;
        }
        let request = ReclaimRequest {
            wanted_bytes: wanted_bytes - freed,
            reason,
        };
        // A callback runs on one thread at a time: a pass of an
        // overlapping subtree on another thread skips it meanwhile. AcqRel
        // and the Release below order the callback's own data between
        // runs on different threads (module doc).
        if r.running.swap(true, Ordering::AcqRel) {
            continue;
        }
        let n = catching(d, || (r.callback)(&request));
        r.running.store(false, Ordering::Release);
        if let Some(n) = n {
            freed = freed.saturating_add(n);
        }
    }
    freed
}

/// The callbacks of `group`'s subtree with their group's usage (copied
/// out of the locks before anything runs).
fn collect(group: &MemCgroup, out: &mut Vec<(u64, Reclaimer)>) {
    if !group.subtree_has_reclaimers() {
        return;
    }
    let usage = group.counter.usage_pages();
    for r in locked_vec::snapshot(&group.reclaimers) {
        out.push((usage, r));
    }
    for child in group.children_snapshot() {
        collect(&child, out);
    }
}

/// Runs the kill callbacks of the killed `group`'s subtree and wakes the
/// futures waiting there.
fn serve_kill(group: &MemCgroup) {
    // AcqRel: as `queued` in `serve_reclaim` (module doc).
    group.reclaim.kill_queued.swap(false, Ordering::AcqRel);
    let info = OomKilled {
        path: group.path.to_string(),
        limit_bytes: group.counter.max_pages().saturating_mul(PAGE_SIZE),
    };
    notify_subtree(group, &info);
    crate::sync::after_user_callbacks();
}

fn notify_subtree(g: &MemCgroup, info: &OomKilled) {
    for cb in locked_vec::snapshot(&g.kill_callbacks) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(info)));
    }
    for (_, w) in locked_vec::take_where(&g.kill_wakers, |_| true) {
        w.wake();
    }
    // Removed children too: a future of a removed group is killed with
    // the group its charges now go to.
    let dead = locked_vec::snapshot(&g.dead_children);
    for c in g.children_snapshot().iter().chain(dead.iter()) {
        notify_subtree(c, info);
    }
}
