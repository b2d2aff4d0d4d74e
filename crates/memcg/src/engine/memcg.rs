//! The group tree node (the kernel's `struct mem_cgroup`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::page_counter::{CounterChain, PageCounter};
use crate::engine::reclaim::Reclaimer;
use crate::sync::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Mutex, Ordering};

/// Kinds of live bytes counted per group and node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryEvent {
    /// A charge found usage over `memory.high` (reclaim callbacks, if any,
    /// were asked to free the excess).
    High,
    /// A charge hit `memory.max` (counted once per charge attempt).
    Max,
    /// A charge failed after reclaim and retries (a group whose policy
    /// forces charges counts only `max`), or a `memory.max` write could
    /// not bring usage under the new limit.
    Oom,
}

impl MemoryEvent {
    /// Every event, in `memory.events` order.
    pub const ALL: [MemoryEvent; 3] = [MemoryEvent::High, MemoryEvent::Max, MemoryEvent::Oom];

    /// The `memory.events` key.
    pub fn key(self) -> &'static str {
        match self {
            MemoryEvent::High => "high",
            MemoryEvent::Max => "max",
            MemoryEvent::Oom => "oom",
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
    pub(crate) events_local: [AtomicU64; 3],
    pub(crate) events: [AtomicU64; 3],
    /// Online children by name.
    pub(crate) children: Mutex<BTreeMap<Box<str>, Arc<MemCgroup>>>,
    /// Removed children whose statistics still count here (their objcgs
    /// were reparented to this group).
    pub(crate) dead_children: Mutex<Vec<Arc<MemCgroup>>>,
    pub(crate) reclaimers: Mutex<Vec<Arc<Reclaimer>>>,
    /// Policy: force charges past `max` instead of failing them.
    pub(crate) force_over_max: AtomicBool,
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
    pub(crate) fn new(name: &str, parent: Option<Arc<MemCgroup>>, nr_node_ids: usize) -> Self {
        let path: Arc<str> = match &parent {
            None => Arc::from(""),
            Some(p) if p.path.is_empty() => Arc::from(name),
            Some(p) => Arc::from(format!("{}/{}", p.path, name)),
        };
        MemCgroup {
            name: name.into(),
            path,
            parent,
            counter: PageCounter::new(),
            online: AtomicBool::new(true),
            dying: AtomicBool::new(false),
            nr_tasks: AtomicUsize::new(0),
            nodeinfo: (0..nr_node_ids).map(|_| NodeInfo::new()).collect(),
            events_local: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            events: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            children: Mutex::new(BTreeMap::new()),
            dead_children: Mutex::new(Vec::new()),
            reclaimers: Mutex::new(Vec::new()),
            force_over_max: AtomicBool::new(false),
        }
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
        // Acquire: pairs with the Release store in `set_offline`.
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
            // as AcqRel).
            crate::sync::fence(Ordering::SeqCst);
            if !self.dying.load(Ordering::SeqCst) {
                return true;
            }
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
        let dead = self.dead_children.lock().clone();
        for d in dead {
            d.add_own_and_dead(nid, kernel, live);
        }
    }

    /// Online children, sorted by name.
    pub(crate) fn children_snapshot(&self) -> Vec<Arc<MemCgroup>> {
        self.children.lock().values().cloned().collect()
    }

    /// Folds dead children that nothing refers to any more into this
    /// group's own counters and forgets them, recursively.
    pub(crate) fn prune_dead(&self) {
        let mut dead = self.dead_children.lock();
        let mut i = 0;
        while i < dead.len() {
            dead[i].prune_dead();
            let d = &dead[i];
            // Only this list refers to it: no objcg can update it any more
            // (objcgs hold their origin, whose chain includes `d`).
            if Arc::strong_count(d) == 1 && d.dead_children.lock().is_empty() {
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
                dead.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}
