//! The group tree node (the kernel's `struct mem_cgroup`).

use std::sync::Arc;

use crate::engine::locked_vec;
use crate::engine::page_counter::{CounterChain, PageCounter};
use crate::engine::policy::{KillCallback, OomPolicy, Reclaimer};
use crate::sync::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Mutex, Ordering};

/// Kinds of live bytes counted per group and node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum ChargeKind {
    /// Heap objects charged by an allocator (`memory.stat` key `alloc`).
    Alloc,
    /// Memory the runtime charges on behalf of a task other than heap
    /// objects (`memory.stat` key `runtime`).
    Runtime,
    /// Explicit reservations made with `try_charge` (`memory.stat` key
    /// `reservation`).
    Reservation,
}

impl ChargeKind {
    /// Every kind, in `memory.stat` order.
    pub const ALL: [ChargeKind; NR_KINDS] = [
        ChargeKind::Alloc,
        ChargeKind::Runtime,
        ChargeKind::Reservation,
    ];

    /// The `memory.stat` key.
    pub fn key(self) -> &'static str {
        match self {
            ChargeKind::Alloc => "alloc",
            ChargeKind::Runtime => "runtime",
            ChargeKind::Reservation => "reservation",
        }
    }

    #[inline]
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Number of [`ChargeKind`]s.
pub(crate) const NR_KINDS: usize = 3;

/// Memory events (`memory.events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum MemoryEvent {
    /// A charge found usage over `memory.high` (reclaim callbacks, if any,
    /// were asked to free the excess).
    High,
    /// A charge hit `memory.max` (counted once per charge attempt).
    Max,
    /// A charge could not be met after reclaim and retries (a group whose
    /// policy forces charges counts only `max`), or a `memory.max` write
    /// could not bring usage under the new limit.
    Oom,
    /// The group was killed by its OOM policy ([`crate::OomPolicy::Kill`]).
    OomKill,
}

/// Number of [`MemoryEvent`]s.
pub(crate) const NR_EVENTS: usize = 4;

impl MemoryEvent {
    /// Every event, in `memory.events` order.
    pub const ALL: [MemoryEvent; NR_EVENTS] = [
        MemoryEvent::High,
        MemoryEvent::Max,
        MemoryEvent::Oom,
        MemoryEvent::OomKill,
    ];

    /// The `memory.events` key.
    pub fn key(self) -> &'static str {
        match self {
            MemoryEvent::High => "high",
            MemoryEvent::Max => "max",
            MemoryEvent::Oom => "oom",
            MemoryEvent::OomKill => "oom_kill",
        }
    }
}

/// Per (group, node) state (the kernel's `mem_cgroup_per_node`).
#[derive(Debug)]
pub(crate) struct NodeInfo {
    /// The live objcg's slot word (`generation << 32 | id`), 0 after offline.
    pub(crate) objcg: AtomicU64,
    /// Local `kernel` statistic: pages charged through objcgs whose owner
    /// was this group at the time, on this node.
    pub(crate) kernel_pages: AtomicI64,
    /// Local live bytes by kind.
    pub(crate) live_bytes: [AtomicI64; NR_KINDS],
}

impl NodeInfo {
    fn new() -> Self {
        NodeInfo {
            objcg: AtomicU64::new(0),
            kernel_pages: AtomicI64::new(0),
            live_bytes: [AtomicI64::new(0), AtomicI64::new(0), AtomicI64::new(0)],
        }
    }
}

/// One node of the group tree.
pub(crate) struct MemCgroup {
    /// This group, weakly (to queue it for the reclaimer from a `&self`).
    pub(crate) self_ref: std::sync::Weak<MemCgroup>,
    pub(crate) name: Box<str>,
    /// Path from root, `""` for root, `"a/b"` below.
    pub(crate) path: Arc<str>,
    parent: Option<Arc<MemCgroup>>,
    pub(crate) counter: PageCounter,
    online: AtomicBool,
    /// Set while a removal decides; see `try_pin_task`.
    pub(crate) dying: AtomicBool,
    pub(crate) nr_tasks: AtomicUsize,
    pub(crate) nodeinfo: Box<[NodeInfo]>,
    pub(crate) events_local: [AtomicU64; NR_EVENTS],
    pub(crate) events: [AtomicU64; NR_EVENTS],
    /// Online children, sorted by name (changed without allocating under
    /// the lock: see `locked_vec`).
    pub(crate) children: Mutex<Vec<Arc<MemCgroup>>>,
    /// Removed children whose statistics still count here (their objcgs
    /// were reparented to this group).
    pub(crate) dead_children: Mutex<Vec<Arc<MemCgroup>>>,
    /// Reclaim callbacks registered on this group.
    pub(crate) reclaimers: Mutex<Vec<Reclaimer>>,
    /// Whether `reclaimers` count in `subtree_reclaimers` here and above
    /// (until removal); read and written under the `reclaimers` lock.
    reclaimers_counted: AtomicBool,
    /// Callbacks registered on this group, run when it is killed.
    pub(crate) kill_callbacks: Mutex<Vec<KillCallback>>,
    /// Wakers of futures waiting for this group (or a descendant) to be
    /// killed; woken by the reclaimer thread.
    pub(crate) kill_wakers: Mutex<Vec<(u64, std::task::Waker)>>,
    /// Reclaim callbacks registered in this group's subtree (lock-free
    /// "does anyone reclaim here").
    pub(crate) subtree_reclaimers: AtomicUsize,
    /// [`OomPolicy`] as `OomPolicy::to_u8`.
    oom_policy: AtomicU8,
    /// Killed by its OOM policy (until revived).
    killed: AtomicBool,
    /// The request the reclaimer thread serves for this group.
    pub(crate) reclaim: ReclaimState,
}

/// A group's pending work for the reclaimer thread, merged across
/// requesters (lock-free; the queue holds the group at most once).
#[derive(Debug, Default)]
pub(crate) struct ReclaimState {
    /// Largest number of bytes asked for since the last pass began.
    pub(crate) want_bytes: AtomicU64,
    /// Strongest [`crate::ReclaimReason`] asked for (`to_u8`), 0 for none.
    pub(crate) reason: AtomicU8,
    /// The group is in the reclaimer's queue for reclaim.
    pub(crate) queued: AtomicBool,
    /// The group is in the reclaimer's queue for kill notifications.
    pub(crate) kill_queued: AtomicBool,
    /// Reclaim passes completed for this group (waiters watch it).
    pub(crate) passes: AtomicU64,
    /// A reclaimer thread is serving the group (under the queue's lock).
    pub(crate) serving: AtomicBool,
    /// Another request came while it was served: serve it again (under
    /// the queue's lock).
    pub(crate) rerun: AtomicBool,
}

impl std::fmt::Debug for MemCgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemCgroup")
            .field("path", &self.path)
            .field("online", &self.is_online())
            .field("usage_pages", &self.counter.usage_pages())
            .finish_non_exhaustive()
    }
}

impl CounterChain for MemCgroup {
    fn counter(&self) -> &PageCounter {
        &self.counter
    }
    fn parent_level(&self) -> Option<&Self> {
        self.parent.as_deref()
    }
}

impl MemCgroup {
    pub(crate) fn new(name: &str, parent: Option<Arc<MemCgroup>>, nr_node_ids: usize) -> Arc<Self> {
        Arc::new_cyclic(|me| MemCgroup::with_self(me.clone(), name, parent, nr_node_ids))
    }

    fn with_self(
        self_ref: std::sync::Weak<MemCgroup>,
        name: &str,
        parent: Option<Arc<MemCgroup>>,
        nr_node_ids: usize,
    ) -> Self {
        let oom_policy = parent
            .as_ref()
            .map_or(OomPolicy::default(), |p| p.oom_policy());
        let path: Arc<str> = match &parent {
            None => Arc::from(""),
            Some(p) if p.path.is_empty() => Arc::from(name),
            Some(p) => Arc::from(format!("{}/{}", p.path, name)),
        };
        MemCgroup {
            self_ref,
            name: name.into(),
            path,
            parent,
            counter: PageCounter::new(),
            online: AtomicBool::new(true),
            dying: AtomicBool::new(false),
            nr_tasks: AtomicUsize::new(0),
            nodeinfo: (0..nr_node_ids).map(|_| NodeInfo::new()).collect(),
            events_local: std::array::from_fn(|_| AtomicU64::new(0)),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            children: Mutex::new(Vec::new()),
            dead_children: Mutex::new(Vec::new()),
            reclaimers: Mutex::new(Vec::new()),
            reclaimers_counted: AtomicBool::new(true),
            kill_callbacks: Mutex::new(Vec::new()),
            kill_wakers: Mutex::new(Vec::new()),
            subtree_reclaimers: AtomicUsize::new(0),
            oom_policy: AtomicU8::new(oom_policy.to_u8()),
            killed: AtomicBool::new(false),
            reclaim: ReclaimState::default(),
        }
    }

    /// The group's OOM policy.
    pub(crate) fn oom_policy(&self) -> OomPolicy {
        OomPolicy::from_u8(self.oom_policy.load(Ordering::Relaxed))
    }

    pub(crate) fn set_oom_policy(&self, policy: OomPolicy) {
        self.oom_policy.store(policy.to_u8(), Ordering::Relaxed);
    }

    /// Marks the group killed; returns whether it was alive until now.
    pub(crate) fn mark_killed(&self) -> bool {
        // SeqCst: a kill racing the first registration of a kill waiter
        // (which starts the reclaimer, then reads this mark): one of the
        // two sees the other (see `Reclaimd::request_kill_notify`). A
        // store-load handshake: beyond loom (SeqCst accesses are AcqRel to
        // it), and no model has reclaimer threads.
        !self.killed.swap(true, Ordering::SeqCst)
    }

    /// Clears the killed mark; returns whether it was set.
    pub(crate) fn revive(&self) -> bool {
        // AcqRel: ordered with the kill's swap (a revive racing a kill
        // either undoes it or is undone). No loom model revives.
        self.killed.swap(false, Ordering::AcqRel)
    }

    /// The nearest killed group on this group's ancestor chain (itself
    /// included), if any.
    pub(crate) fn killed_ancestor(&self) -> Option<&MemCgroup> {
        let mut m = Some(self);
        while let Some(g) = m {
            // SeqCst: the read side of `mark_killed`'s handshake.
            if g.killed.load(Ordering::SeqCst) {
                return Some(g);
            }
            m = g.parent();
        }
        None
    }

    /// Adds `delta` to the reclaim-callback counts of this group and its
    /// ancestors.
    pub(crate) fn add_subtree_reclaimers(&self, delta: isize) {
        let mut m = Some(self);
        // AcqRel (and the Acquire in `subtree_has_reclaimers`): a count
        // that decides whether a charge asks for reclaim; the callbacks it
        // counts are read under the reclaimers' lock. No loom model fails
        // without them (loom keeps read-modify-writes in execution order).
        while let Some(g) = m {
            if delta >= 0 {
                g.subtree_reclaimers
                    .fetch_add(delta as usize, Ordering::AcqRel);
            } else {
                g.subtree_reclaimers
                    .fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
            }
            m = g.parent();
        }
    }

    /// Registers a reclaim callback (no allocation under the lock).
    pub(crate) fn add_reclaimer(&self, r: Reclaimer) {
        loop {
            locked_vec::reserve_one(&self.reclaimers);
            let mut list = self.reclaimers.lock();
            if list.len() < list.capacity() {
                list.push(r);
                if self.reclaimers_counted.load(Ordering::Relaxed) {
                    self.add_subtree_reclaimers(1);
                }
                return;
            }
        }
    }

    /// Unregisters the callback `r`; returns it (to be dropped unlocked).
    pub(crate) fn remove_reclaimer(&self, r: &Reclaimer) -> Option<Reclaimer> {
        let mut list = self.reclaimers.lock();
        let i = list.iter().position(|x| Arc::ptr_eq(x, r))?;
        let out = list.remove(i);
        if self.reclaimers_counted.load(Ordering::Relaxed) {
            self.add_subtree_reclaimers(-1);
        }
        Some(out)
    }

    /// At removal: this group's callbacks stop counting for its ancestors.
    pub(crate) fn uncount_reclaimers(&self) {
        let list = self.reclaimers.lock();
        if self.reclaimers_counted.swap(false, Ordering::Relaxed) && !list.is_empty() {
            self.add_subtree_reclaimers(-(list.len() as isize));
        }
    }

    /// Whether any reclaim callback is registered in this subtree.
    pub(crate) fn subtree_has_reclaimers(&self) -> bool {
        self.subtree_reclaimers.load(Ordering::Acquire) > 0
    }

    #[inline]
    pub(crate) fn parent(&self) -> Option<&MemCgroup> {
        self.parent.as_deref()
    }

    pub(crate) fn parent_arc(&self) -> Option<&Arc<MemCgroup>> {
        self.parent.as_ref()
    }

    #[inline]
    pub(crate) fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    #[inline]
    pub(crate) fn is_online(&self) -> bool {
        // Acquire: pairs with the Release store in `set_offline`, ordering
        // the removal's unpublishing of the slot words (AcqRel swaps) before
        // an owner walk that sees the group offline. No loom model fails
        // without the pair (`loom_reparent`, `loom_reuse` race charges with
        // removals): a lookup learns of the removal from the slot word
        // itself (0, or a generation check), and an owner walk that reads a
        // stale `true` charges the group's chain, which holds its parent.
        self.online.load(Ordering::Acquire)
    }

    pub(crate) fn set_offline(&self) {
        self.online.store(false, Ordering::Release);
    }

    /// Whether `self` is `ancestor` or below it.
    pub(crate) fn is_descendant_of(&self, ancestor: &MemCgroup) -> bool {
        let mut m = Some(self);
        while let Some(g) = m {
            if std::ptr::eq(g, ancestor) {
                return true;
            }
            m = g.parent();
        }
        false
    }

    /// `memcg_memory_event`: counts `event` locally, and hierarchically on
    /// this group and every ancestor except root.
    pub(crate) fn memory_event(&self, event: MemoryEvent) {
        debug_assert!((event as usize) < NR_EVENTS);
        let i = event as usize;
        self.events_local[i].fetch_add(1, Ordering::Relaxed);
        let mut m = Some(self);
        while let Some(g) = m {
            if g.is_root() {
                break;
            }
            g.events[i].fetch_add(1, Ordering::Relaxed);
            m = g.parent();
        }
    }

    /// Adds `delta_pages` to this group's local `kernel` statistic on `nid`.
    pub(crate) fn mod_kernel_pages(&self, nid: usize, delta_pages: i64) {
        if let Some(n) = self.nodeinfo.get(nid) {
            n.kernel_pages.fetch_add(delta_pages, Ordering::Relaxed);
        }
    }

    /// Adds `delta_bytes` to this group's local live bytes of `kind` on `nid`.
    pub(crate) fn mod_live_bytes(&self, nid: usize, kind: ChargeKind, delta_bytes: i64) {
        if let Some(n) = self.nodeinfo.get(nid) {
            n.live_bytes[kind.index()].fetch_add(delta_bytes, Ordering::Relaxed);
        }
    }

    /// Registers an attached task unless the group is removed or being
    /// removed. Pairs with the check in removal: both sides use SeqCst, so
    /// either the removal sees the task or the task sees `dying`.
    pub(crate) fn try_pin_task(&self) -> bool {
        loop {
            self.nr_tasks.fetch_add(1, Ordering::SeqCst);
            // Store-load ordering against `Group::remove` (which stores
            // `dying`, then loads `nr_tasks`): SeqCst on both accesses
            // already forbids both sides missing each other; the fence
            // states it in a form loom models (it treats SeqCst accesses
            // as AcqRel). The two fences alone forbid it too (a SeqCst
            // fence between each side's store and load), so no loom model
            // fails with any of these accesses weakened, even to Relaxed,
            // while removing or weakening either fence fails
            // `loom_reparent::attach_racing_remove_lets_exactly_one_succeed`.
            crate::sync::fence(Ordering::SeqCst);
            if !self.dying.load(Ordering::SeqCst) {
                return true;
            }
            // SeqCst: as the add (see above); no data is published.
            self.nr_tasks.fetch_sub(1, Ordering::SeqCst);
            if !self.is_online() {
                return false;
            }
            // A removal is deciding; it either fails (and clears `dying`)
            // or takes the group offline. Wait for the outcome.
            crate::sync::spin_yield();
        }
    }

    pub(crate) fn unpin_task(&self) {
        // SeqCst for symmetry with `try_pin_task`; the handshake is carried
        // by the fences, and a removal racing this decrement may miss it
        // whatever the ordering (it then refuses, as if it ran first).
        self.nr_tasks.fetch_sub(1, Ordering::SeqCst);
    }

    /// Local statistic sums over this group and its dead descendants, which
    /// are folded here. Returns (kernel pages, live bytes by kind) per node.
    pub(crate) fn local_node_stats(&self, nid: usize) -> (i64, [i64; NR_KINDS]) {
        let mut kernel = 0;
        let mut live = [0; NR_KINDS];
        self.add_own_and_dead(nid, &mut kernel, &mut live);
        (kernel, live)
    }

    fn add_own_and_dead(&self, nid: usize, kernel: &mut i64, live: &mut [i64; NR_KINDS]) {
        if let Some(n) = self.nodeinfo.get(nid) {
            *kernel += n.kernel_pages.load(Ordering::Relaxed);
            for (acc, v) in live.iter_mut().zip(n.live_bytes.iter()) {
                *acc += v.load(Ordering::Relaxed);
            }
        }
        let dead = locked_vec::snapshot(&self.dead_children);
        for d in dead {
            d.add_own_and_dead(nid, kernel, live);
        }
    }

    /// Online children, sorted by name.
    pub(crate) fn children_snapshot(&self) -> Vec<Arc<MemCgroup>> {
        locked_vec::snapshot(&self.children)
    }

    /// The online child called `name`.
    pub(crate) fn child(&self, name: &str) -> Option<Arc<MemCgroup>> {
        let children = self.children.lock();
        let i = children.binary_search_by(|c| (*c.name).cmp(name)).ok()?;
        children.get(i).cloned()
    }

    /// Number of online children.
    pub(crate) fn nr_children(&self) -> usize {
        self.children.lock().len()
    }

    /// Adds an online child (in name order); hands it back if a child of
    /// that name exists.
    pub(crate) fn insert_child(&self, child: Arc<MemCgroup>) -> Result<(), Arc<MemCgroup>> {
        let name = Arc::clone(&child);
        locked_vec::insert_with(&self.children, child, |v| {
            v.binary_search_by(|c| (*c.name).cmp(&name.name)).err()
        })
    }

    /// Folds dead children that nothing refers to any more into this
    /// group's own counters and forgets them, recursively.
    ///
    /// The forgotten groups are moved to `out` for the caller to drop once
    /// it holds no engine lock (dropping one drops its callbacks: user
    /// code).
    pub(crate) fn prune_dead(&self, out: &mut Vec<Arc<MemCgroup>>) {
        let snap = locked_vec::snapshot(&self.dead_children);
        for d in &snap {
            d.prune_dead(out);
        }
        let mut pruned = Vec::with_capacity(snap.len());
        drop(snap);
        {
            let mut dead = self.dead_children.lock();
            let mut i = 0;
            while i < dead.len() {
                let d = &dead[i];
                // Only this list refers to it: no objcg can update it any
                // more (objcgs hold their origin, whose chain includes `d`).
                let prunable = Arc::strong_count(d) == 1 && d.dead_children.lock().is_empty();
                if !prunable || pruned.len() == pruned.capacity() {
                    i += 1;
                    continue;
                }
                for (nid, n) in d.nodeinfo.iter().enumerate() {
                    self.mod_kernel_pages(nid, n.kernel_pages.load(Ordering::Relaxed));
                    for kind in ChargeKind::ALL {
                        self.mod_live_bytes(
                            nid,
                            kind,
                            n.live_bytes[kind.index()].load(Ordering::Relaxed),
                        );
                    }
                }
                // No allocation: `pruned` has the room.
                pruned.push(dead.swap_remove(i));
            }
        }
        out.extend(pruned);
    }
}
