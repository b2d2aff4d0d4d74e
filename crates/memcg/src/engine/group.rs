//! The public handle on a group of the tree.

use std::sync::Arc;

use crate::engine::core::{ChargeCtx, Core, DrainFilter, MAX_RECLAIM_RETRIES};
use crate::engine::locked_vec;
use crate::engine::memcg::{MemCgroup, MemoryEvent};
use crate::engine::policy::{OomKilled, OomPolicy, ReclaimReason, ReclaimRequest};
use crate::engine::reclaim::{OomKillHandle, ReclaimerHandle};
use crate::engine::reservation::Reservation;
use crate::engine::stats::{pages_to_limit, Events, GroupStats};
use crate::engine::task_shared::{self, TaskHandle};
use crate::error::{Error, Result};
use crate::limit::{Limit, PAGE_SIZE};
use crate::sync::{Deadline, Ordering};

/// Longest group name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// A group: a node of a controller's tree with limits, usage, statistics
/// and events. Cloning the handle is cheap; the group itself lives until it
/// is removed and nothing refers to it.
///
/// # Examples
/// ```
/// use memcg::{Controller, Limit, Topology};
/// let ctrl = Controller::new(Topology::from_spec("2x2")?);
/// let tenants = ctrl.create("tenants")?;
/// let a = tenants.create_child("a")?;
/// a.set_max("64M".parse()?)?;
/// assert_eq!(a.path(), "tenants/a");
/// assert_eq!(a.max(), Limit::Bytes(64 << 20));
/// assert_eq!(ctrl.group("tenants/a")?.path(), "tenants/a");
/// a.remove()?;
/// assert!(ctrl.group("tenants/a").is_err());
/// # Ok::<(), memcg::Error>(())
/// ```
#[derive(Clone)]
pub struct Group {
    core: Arc<Core>,
    memcg: Arc<MemCgroup>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("path", &self.memcg.path)
            .field("online", &self.memcg.is_online())
            .finish()
    }
}

impl PartialEq for Group {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.memcg, &other.memcg)
    }
}
impl Eq for Group {}

/// Why a tree change was refused (decided under the tree lock; the error,
/// which allocates, is built after it).
enum Refusal {
    /// The room made before the lock was used by another change: retry.
    Retry,
    Removed,
    Exists,
    Full,
    HasChildren(usize),
    HasTasks(usize),
}

/// Checks a group name: not empty, not `.` or `..`, no `/`, no control
/// characters, at most 255 bytes.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a name must not be empty"
    } else if name == "." || name == ".." {
        "`.` and `..` are not names"
    } else if name.contains('/') {
        "a name must not contain `/` (create the parent first, then the child)"
    } else if name.chars().any(char::is_control) {
        "a name must not contain control characters"
    } else if name.len() > MAX_NAME_BYTES {
        "a name must be at most 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

impl Group {
    pub(crate) fn from_parts(core: Arc<Core>, memcg: Arc<MemCgroup>) -> Self {
        Group { core, memcg }
    }

    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub(crate) fn memcg(&self) -> &Arc<MemCgroup> {
        &self.memcg
    }

    /// Path from the root, components joined by `/`; `""` for root.
    pub fn path(&self) -> &str {
        &self.memcg.path
    }

    /// The last path component; `""` for root.
    pub fn name(&self) -> &str {
        &self.memcg.name
    }

    /// Whether this is the root group.
    pub fn is_root(&self) -> bool {
        self.memcg.is_root()
    }

    /// Whether the group is in the tree (not removed).
    pub fn is_online(&self) -> bool {
        self.memcg.is_online()
    }

    /// The parent group (`None` for root).
    pub fn parent(&self) -> Option<Group> {
        let p = self.memcg.parent_arc()?;
        Some(Group::from_parts(Arc::clone(&self.core), Arc::clone(p)))
    }

    /// Online children, sorted by name.
    pub fn children(&self) -> Vec<Group> {
        self.memcg
            .children_snapshot()
            .into_iter()
            .map(|m| Group::from_parts(Arc::clone(&self.core), m))
            .collect()
    }

    /// The child called `name`.
    ///
    /// # Errors
    /// [`Error::NotFound`].
    pub fn child(&self, name: &str) -> Result<Group> {
        self.memcg
            .child(name)
            .map(|m| Group::from_parts(Arc::clone(&self.core), m))
            .ok_or_else(|| Error::NotFound {
                path: join(&self.memcg.path, name),
            })
    }

    /// Number of tasks attached.
    pub fn nr_tasks(&self) -> usize {
        // SeqCst: a snapshot for the caller; no model can tell it from
        // Relaxed (nothing is published through the count).
        self.memcg.nr_tasks.load(Ordering::SeqCst)
    }

    /// Creates a child group called `name`.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::AlreadyExists`], [`Error::Removed`]
    /// (this group was removed), [`Error::TooManyGroups`].
    pub fn create_child(&self, name: &str) -> Result<Group> {
        validate_name(name)?;
        // The group's own structures are the engine's: charged to root,
        // not to the group the caller runs in.
        let _root = crate::sync::engine_alloc_scope();
        // Made before the tree lock is taken: nothing allocates under an
        // engine lock (errors are built after it is released).
        let nr_nodes = self.core.topology.nr_node_ids();
        let child = MemCgroup::new(name, Some(Arc::clone(&self.memcg)), nr_nodes);
        let mut installed = Vec::with_capacity(nr_nodes);
        let refused = loop {
            locked_vec::reserve_one(&self.memcg.children);
            self.core.table.prepare(nr_nodes);
            match self.create_locked(&child, &mut installed) {
                // Another creation used the room made: make it again.
                Some(Refusal::Retry) => continue,
                other => break other,
            }
        };
        if let Some(refusal) = refused {
            for objcg in installed {
                self.core.objcg_put(objcg, 1);
            }
            return Err(match refusal {
                Refusal::Removed => Error::Removed {
                    path: self.memcg.path.to_string(),
                },
                Refusal::Exists => Error::AlreadyExists {
                    path: child.path.to_string(),
                },
                _ => Error::TooManyGroups,
            });
        }
        Ok(Group::from_parts(Arc::clone(&self.core), child))
    }

    /// The part of `create_child` under the tree lock: installs `child`'s
    /// objcgs (into `installed`, which has the room) and links it. Does not
    /// allocate.
    fn create_locked<'c>(
        &'c self,
        child: &Arc<MemCgroup>,
        installed: &mut Vec<&'c crate::engine::obj_cgroup::ObjCgroup>,
    ) -> Option<Refusal> {
        let _tree = self.core.tree_lock.lock();
        if !self.memcg.is_online() {
            return Some(Refusal::Removed);
        }
        if self.memcg.child(&child.name).is_some() {
            return Some(Refusal::Exists);
        }
        let room = {
            let children = self.memcg.children.lock();
            children.len() < children.capacity()
        };
        if !room || !self.core.table.is_prepared(child.nodeinfo.len()) {
            return Some(Refusal::Retry);
        }
        for nid in 0..child.nodeinfo.len() {
            match self.core.table.install(child, nid, false) {
                // No allocation: `installed` has the room.
                Some(objcg) => installed.push(objcg),
                None => return Some(Refusal::Full),
            }
        }
        for (info, objcg) in child.nodeinfo.iter().zip(installed.iter()) {
            // Release: pairs with the Acquire in `get_obj_cgroup_from_memcg`.
            // No loom model fails without the pair: a group reaches other
            // threads only after this (linked under the children lock, or
            // its handle handed over), which already orders the store.
            info.objcg.store(objcg.slot_word(), Ordering::Release);
        }
        if self.memcg.insert_child(Arc::clone(child)).is_err() {
            // Unreachable under the tree lock (checked above); so no model
            // reaches this Release.
            for info in child.nodeinfo.iter() {
                info.objcg.store(0, Ordering::Release);
            }
            return Some(Refusal::Exists);
        }
        None
    }

    /// Creates the child called `name`, or returns it if it exists (the
    /// `mkdir -p` of one level).
    ///
    /// # Errors
    /// As [`Group::create_child`], except [`Error::AlreadyExists`].
    pub fn child_or_create(&self, name: &str) -> Result<Group> {
        match self.create_child(name) {
            Err(Error::AlreadyExists { .. }) => self.child(name),
            other => other,
        }
    }

    /// Removes the group (`mem_cgroup_css_offline`): its objcgs are
    /// reparented to the parent, the stocks caching them are drained, it
    /// leaves the tree, and no task's allocator fast path charges its
    /// objcgs any more (a task in a scope of the group charges the nearest
    /// online ancestor from then on). Objects charged to it stay charged,
    /// now to the parent chain, until they are uncharged.
    ///
    /// The disarming reads every task's byte cache under the task list's
    /// lock, which making and ending a task also take: a removal costs a
    /// few nanoseconds per task of the controller.
    ///
    /// # Errors
    /// [`Error::Root`], [`Error::Removed`] (already removed),
    /// [`Error::HasTasks`], [`Error::HasChildren`].
    pub fn remove(&self) -> Result<()> {
        let Some(parent) = self.memcg.parent_arc() else {
            return Err(Error::Root {
                operation: "remove",
            });
        };
        // Inside the fork gate to the end, as `create_child`: a fork
        // between the slots' emptying and the disarming below would leave
        // the child a key armed for the removed group. The removal's own
        // allocations are the engine's, charged to root.
        let _gate = crate::sync::engine_alloc_scope();
        // Room made before the tree lock: nothing below allocates under it
        // (checked under the lock; made again if another removal used it).
        let mut removed = Vec::with_capacity(1);
        let m = &self.memcg;
        let tree = loop {
            locked_vec::reserve_one(&parent.dead_children);
            let tree = self.core.tree_lock.lock();
            let room = {
                let dead = parent.dead_children.lock();
                dead.len() < dead.capacity()
            };
            if room {
                break tree;
            }
        };
        // Errors are built after the lock is released (they allocate).
        let refusal = if !m.is_online() {
            Some(Refusal::Removed)
        } else {
            let nr_children = m.nr_children();
            if nr_children > 0 {
                Some(Refusal::HasChildren(nr_children))
            } else {
                // Handshake with `try_pin_task` (SeqCst on both sides; the
                // fences carry it, see there, and are what loom checks).
                m.dying.store(true, Ordering::SeqCst);
                // Pairs with the fence in `try_pin_task`.
                crate::sync::fence(Ordering::SeqCst);
                let nr_tasks = m.nr_tasks.load(Ordering::SeqCst);
                if nr_tasks > 0 {
                    m.dying.store(false, Ordering::SeqCst);
                    Some(Refusal::HasTasks(nr_tasks))
                } else {
                    None
                }
            }
        };
        if let Some(refusal) = refusal {
            drop(tree);
            let path = m.path.to_string();
            return Err(match refusal {
                Refusal::HasChildren(nr_children) => Error::HasChildren { path, nr_children },
                Refusal::HasTasks(nr_tasks) => Error::HasTasks { path, nr_tasks },
                _ => Error::Removed { path },
            });
        }
        // memcg_reparent_objcgs, in the kernel's order: unpublish the
        // slots, re-point (owner resolution moves to the parent once the
        // group is offline), kill the live references.
        let words: [u64; crate::engine::topology::MAX_NODES] = {
            let mut w = [0u64; crate::engine::topology::MAX_NODES];
            for (slot, info) in w.iter_mut().zip(m.nodeinfo.iter()) {
                // AcqRel: the Release half pairs with lock-free lookups
                // (`get_obj_cgroup_from_memcg`), the Acquire half with the
                // create. No loom model fails without them: both sides run
                // under the tree lock here, and a lookup only needs the
                // value (0, or a word whose objcg `tryget` and the
                // generation check vet).
                *slot = info.objcg.swap(0, Ordering::AcqRel);
            }
            w
        };
        m.set_offline();
        for word in words.iter().take(m.nodeinfo.len()) {
            if let Some(objcg) = self.core.table.get(*word as u32) {
                self.core.objcg_put(objcg, 1);
            }
        }
        // drain_all_stock for the objcgs made here and below.
        self.core.drain_all_stock(DrainFilter::OriginIn(m));
        // Its callbacks stop counting for its ancestors (they stay listed
        // until their handles drop; nothing asks an offline group).
        m.uncount_reclaimers();
        {
            let mut children = parent.children.lock();
            if let Some(i) = children.iter().position(|c| Arc::ptr_eq(c, m)) {
                removed.push(children.remove(i));
            }
        }
        locked_vec::push(&parent.dead_children, Arc::clone(m));
        drop(tree);
        // No fast key stands for the group's objcgs any more: a task in a
        // scope of the group could have armed one (the other half of this
        // handshake, and why it holds: `Task::recheck_override_key`). Its
        // scope's charges then go to the nearest online ancestor's objcg,
        // as the slow path sends them.
        crate::sync::fence(Ordering::SeqCst);
        self.core.disarm_keys_caching(&words[..m.nodeinfo.len()]);
        // Dropped (and freed) after every lock.
        drop(removed);
        Ok(())
    }

    /// `memory.max`.
    pub fn max(&self) -> Limit {
        pages_to_limit(self.memcg.counter.max_pages())
    }

    /// `memory.high`.
    pub fn high(&self) -> Limit {
        pages_to_limit(self.memcg.counter.high_pages())
    }

    fn check_limitable(&self) -> Result<()> {
        if self.memcg.is_root() {
            return Err(Error::Root { operation: "limit" });
        }
        if !self.memcg.is_online() {
            return Err(Error::Removed {
                path: self.memcg.path.to_string(),
            });
        }
        Ok(())
    }

    /// Sets `memory.max` (rounded down to whole pages). A limit below
    /// usage is accepted; reclaim then runs: one drain of the stocks, then
    /// up to 16 passes of the reclaim callbacks on the reclaimer thread
    /// (this call waits for them, at most the controller's reclaim wait in
    /// all); if usage is still over, an `oom` event is counted. Charges
    /// over the new limit meet it at once.
    ///
    /// # Errors
    /// [`Error::Root`], [`Error::Removed`].
    pub fn set_max(&self, max: Limit) -> Result<()> {
        self.check_limitable()?;
        let _gate = crate::sync::fork_gate_enter();
        self.memcg.counter.set_max_pages(max.as_pages());
        if !self.reclaim_to(|c| c.max_pages()) {
            self.memcg.memory_event(MemoryEvent::Oom);
        }
        Ok(())
    }

    /// Sets `memory.high` (rounded down to whole pages); reclaims the
    /// excess as [`Group::set_max`] does, without `oom`.
    ///
    /// # Errors
    /// [`Error::Root`], [`Error::Removed`].
    pub fn set_high(&self, high: Limit) -> Result<()> {
        self.check_limitable()?;
        let _gate = crate::sync::fork_gate_enter();
        self.memcg.counter.set_high_pages(high.as_pages());
        self.reclaim_to(|c| c.high_pages());
        Ok(())
    }

    /// Drains once, then has the reclaimer thread reclaim while usage is
    /// over `limit`; returns whether usage got to the limit.
    fn reclaim_to(&self, limit: fn(&crate::engine::page_counter::PageCounter) -> u64) -> bool {
        let c = &self.memcg.counter;
        // SeqCst read after the limit's SeqCst store: a concurrent charge
        // either met the new limit or is counted here.
        if c.usage_pages_after_set_max() <= limit(c) {
            return true;
        }
        self.core.drain_all_stock(DrainFilter::OwnerIn(&self.memcg));
        let reclaimd = &self.core.reclaimd;
        let mut deadline = Deadline::after(reclaimd.wait());
        for _ in 0..MAX_RECLAIM_RETRIES {
            let usage = c.usage_pages();
            let target = limit(c);
            if usage <= target || !self.memcg.subtree_has_reclaimers() {
                break;
            }
            let seen = reclaimd.passes(&self.memcg);
            reclaimd.request_reclaim(
                &self.memcg,
                (usage - target) * PAGE_SIZE,
                ReclaimReason::LimitLowered,
            );
            if !reclaimd.wait_for_pass(&self.memcg, seen, &mut deadline) {
                break;
            }
        }
        c.usage_pages() <= limit(c)
    }

    /// `memory.current` in bytes: pages charged to the group and below,
    /// including what per-CPU stocks hold for them.
    ///
    /// # Error bound
    /// Beyond the whole pages its live bytes need, `current` includes at
    /// most, for the objcgs of the subtree: per CPU, 7 page-stock slots of
    /// up to 64 pages and 5 byte-stock slots of under 64 KiB each; per
    /// task, under [`crate::engine::TASK_CACHE_BOUND_BYTES`] (6 pages) in its byte
    /// cache and foreign slot; per objcg, under 1 page in
    /// its sub-page pool between drains (a drain returns the rest). A drain
    /// ([`crate::Controller::drain_stocks`] after each task's
    /// [`crate::engine::Task::flush`]) makes it exactly `ceil(live / 4096)` pages
    /// per objcg. [`Group::error_bound`] computes the bound for this
    /// controller's topology and tasks.
    pub fn current_bytes(&self) -> u64 {
        self.memcg.counter.usage_pages().saturating_mul(PAGE_SIZE)
    }

    /// `memory.peak` in bytes.
    pub fn peak_bytes(&self) -> u64 {
        self.memcg
            .counter
            .watermark_pages()
            .saturating_mul(PAGE_SIZE)
    }

    /// Resets `memory.peak` to the group's current usage: from now on
    /// [`peak_bytes`](Self::peak_bytes) (and the `peak_bytes` of
    /// [`stats`](Self::stats) and the exports) is the highest usage since
    /// this call, starting at [`current_bytes`](Self::current_bytes). For
    /// per-request or per-query peaks: reset, run, read `peak_bytes`.
    ///
    /// As in cgroup v2 since Linux 6.12, where writing to `memory.peak`
    /// resets it to the current usage. The watermark is hierarchical like
    /// the usage (it counts descendants' charges), but the reset is this
    /// group's alone: the parent's and the children's peaks are unchanged.
    /// Unlike the kernel, which keeps the reset per open file (other
    /// readers of `memory.peak` still see the peak since creation), the
    /// group has one peak: every reader sees the reset. A charge running
    /// concurrently is counted either in the usage the peak is reset to or
    /// in the peak after it.
    ///
    /// # Examples
    /// ```
    /// use memcg::{Controller, Topology};
    ///
    /// let ctrl = Controller::new(Topology::from_spec("1x1")?);
    /// let tenant = ctrl.create("tenant")?;
    /// let big = tenant.try_charge(1 << 20)?;
    /// drop(big);
    /// assert!(tenant.peak_bytes() >= 1 << 20);
    ///
    /// tenant.reset_peak();
    /// assert_eq!(tenant.peak_bytes(), tenant.current_bytes());
    /// let small = tenant.try_charge(8192)?;
    /// assert!(tenant.peak_bytes() >= 8192 && tenant.peak_bytes() < 1 << 20);
    /// // The parent's peak was not reset.
    /// assert!(ctrl.root().peak_bytes() >= 1 << 20);
    /// # drop(small);
    /// # Ok::<(), memcg::Error>(())
    /// ```
    pub fn reset_peak(&self) {
        self.memcg.counter.reset_watermark();
    }

    /// Everything the group's cgroup v2 files show.
    pub fn stats(&self) -> GroupStats {
        GroupStats::collect(&self.memcg, self.core.topology.nr_node_ids())
    }

    /// `memory.events`.
    pub fn events(&self) -> Events {
        self.stats().events
    }

    /// `memory.events.local`.
    pub fn events_local(&self) -> Events {
        self.stats().events_local
    }

    /// Moves a task to this group (`mem_cgroup_kmem_attach`); callable
    /// from any thread. The task refreshes its cache at its next charge.
    ///
    /// # Errors
    /// [`Error::ForeignController`], [`Error::Removed`],
    /// [`Error::TaskExited`].
    pub fn attach(&self, task: &TaskHandle) -> Result<()> {
        if task.shared.ctrl_serial != self.core.serial {
            return Err(Error::ForeignController);
        }
        task_shared::attach(&task.shared, &self.memcg)
    }

    /// Reserves `bytes` for this group, on its first node; see
    /// [`Reservation`]. Reclaim runs if a limit is in the way.
    ///
    /// # Errors
    /// [`Error::Removed`], [`Error::Charge`] (with the refusing group's
    /// path, limit and usage), [`Error::InvalidSize`].
    pub fn try_charge(&self, bytes: u64) -> Result<Reservation> {
        let nid = self.core.topology.nodes().next().unwrap_or(0);
        self.try_charge_on_node(nid, bytes)
    }

    /// Reserves `bytes` for this group on node `nid`.
    ///
    /// # Errors
    /// As [`Group::try_charge`], and [`Error::UnknownNode`].
    pub fn try_charge_on_node(&self, nid: usize, bytes: u64) -> Result<Reservation> {
        // The objcg reference and the charge: a fork copies neither half
        // done.
        let _gate = crate::sync::fork_gate_enter();
        let nr_node_ids = self.core.topology.nr_node_ids();
        if nid >= nr_node_ids {
            return Err(Error::UnknownNode {
                node: nid,
                nr_node_ids,
            });
        }
        if !self.memcg.is_online() {
            return Err(Error::Removed {
                path: self.memcg.path.to_string(),
            });
        }
        let Some(objcg) = self.core.get_obj_cgroup_from_memcg(&self.memcg, nid) else {
            return Err(Error::UnknownNode {
                node: nid,
                nr_node_ids,
            });
        };
        let ctx = ChargeCtx::direct(None);
        let r = Reservation::new(Arc::clone(&self.core), objcg, bytes, ctx);
        self.core.objcg_put(objcg, 1);
        r
    }

    /// Registers a reclaim callback: when a charge in this group's subtree
    /// would exceed a `max` (or usage exceeds `high`, or a limit is set
    /// below usage), the controller's reclaimer thread asks it to free
    /// `wanted_bytes`; it returns how many bytes it freed (an estimate; the
    /// engine re-reads usage). The callback stays registered while the
    /// handle lives.
    ///
    /// The callback runs on the reclaimer thread only (started by the
    /// first registration), never inside an allocation and never while the
    /// engine holds a lock: it may take the application's locks, allocate
    /// (its charges are forced past `max`) and call the library, removing
    /// groups included. A charge waits for it at most the controller's
    /// reclaim wait ([`crate::Controller::set_reclaim_wait`]); a callback
    /// blocked on a lock the charging thread holds only delays that charge
    /// until then. A group's pass runs the callbacks of its subtree in
    /// order, largest group first; other groups are served by the other
    /// reclaimer threads meanwhile ([`crate::engine::Config::reclaimer_threads`]);
    /// a callback never runs on two threads at once, and one that panics
    /// is skipped.
    pub fn register_reclaimer<F>(&self, callback: F) -> ReclaimerHandle
    where
        F: Fn(&ReclaimRequest) -> u64 + Send + Sync + 'static,
    {
        let _root = crate::sync::engine_alloc_scope();
        let r: crate::engine::policy::Reclaimer = Arc::new(crate::engine::policy::ReclaimerEntry {
            callback: Box::new(callback),
            running: crate::sync::AtomicBool::new(false),
        });
        // Started first, so that no charge sees the callback counted and
        // nobody to ask.
        self.core.reclaimd.ensure_started();
        self.memcg.add_reclaimer(Arc::clone(&r));
        ReclaimerHandle {
            group: Arc::downgrade(&self.memcg),
            reclaimer: Some(r),
        }
    }

    /// The group's OOM policy: what happens when a charge would take it
    /// over `max` and reclaim could not make room. New groups start with
    /// their parent's; root's is [`OomPolicy::Kill`].
    pub fn oom_policy(&self) -> OomPolicy {
        self.memcg.oom_policy()
    }

    /// Sets the group's OOM policy (any time; charges from then on use it).
    /// Children made later start with it; existing children keep theirs.
    pub fn set_oom_policy(&self, policy: OomPolicy) {
        self.memcg.set_oom_policy(policy);
    }

    /// Whether this group, or an ancestor, was killed by its OOM policy
    /// and not revived: its work should stop. Its allocations are forced
    /// meanwhile (they never fail and never wait for reclaim); explicit
    /// charges and fallible regions still fail at `max`.
    pub fn is_killed(&self) -> bool {
        self.memcg.killed_ancestor().is_some()
    }

    /// The kill that affects this group (its own or an ancestor's), if any.
    pub fn killed_by(&self) -> Option<OomKilled> {
        let k = self.memcg.killed_ancestor()?;
        Some(OomKilled {
            path: k.path.to_string(),
            limit_bytes: k.counter.max_pages().saturating_mul(PAGE_SIZE),
        })
    }

    /// Clears this group's kill mark (after the application stopped the
    /// work and freed memory, or raised `max`): its charges meet `max`
    /// again. Returns whether it was killed. An ancestor's kill is the
    /// ancestor's to revive.
    pub fn revive(&self) -> bool {
        self.memcg.revive()
    }

    /// Registers a callback run on the reclaimer thread when this group or
    /// an ancestor is killed by its OOM policy (after the registration: an
    /// earlier kill is read with [`Group::killed_by`]), with the kill's
    /// details.
    /// It may take locks, allocate and call the library. It stays
    /// registered while the handle lives.
    pub fn on_oom_kill<F>(&self, callback: F) -> OomKillHandle
    where
        F: Fn(&OomKilled) + Send + Sync + 'static,
    {
        let _root = crate::sync::engine_alloc_scope();
        let c: crate::engine::policy::KillCallback = Arc::new(callback);
        locked_vec::push(&self.memcg.kill_callbacks, Arc::clone(&c));
        self.core.reclaimd.ensure_started();
        OomKillHandle {
            group: Arc::downgrade(&self.memcg),
            callback: Some(c),
        }
    }

    /// A future that completes when this group (or an ancestor) is killed
    /// by its OOM policy, with the kill's details. Woken by the reclaimer
    /// thread.
    pub fn killed(&self) -> Killed {
        Killed {
            group: self.clone(),
            waker_id: 0,
        }
    }

    /// Registers `waker` under the id `*slot` (0: a new id is given) to be
    /// woken when this group or an ancestor is killed; returns the kill if
    /// it already happened. The waker is cloned and dropped outside the
    /// engine's locks (waker code is user code).
    pub(crate) fn register_kill_waker(
        &self,
        slot: &mut u64,
        waker: &std::task::Waker,
    ) -> Option<OomKilled> {
        if let Some(k) = self.killed_by() {
            return Some(k);
        }
        self.core.reclaimd.ensure_started();
        let fresh = {
            let wakers = self.memcg.kill_wakers.lock();
            *slot == 0
                || !wakers
                    .iter()
                    .any(|(id, w)| *id == *slot && w.will_wake(waker))
        };
        if fresh {
            self.deregister_kill_waker(*slot);
            *slot = next_waker_id();
            locked_vec::push(&self.memcg.kill_wakers, (*slot, waker.clone()));
        }
        // A kill between the check and the registration: its notification
        // may have run before the waker was there.
        self.killed_by()
    }

    /// Removes the waker registered under `id` (dropped unlocked).
    pub(crate) fn deregister_kill_waker(&self, id: u64) {
        if id != 0 {
            drop(locked_vec::take_where(&self.memcg.kill_wakers, |(i, _)| {
                *i == id
            }));
        }
    }

    /// Drains the per-CPU stocks caching objcgs of this subtree (the
    /// kernel's `drain_all_stock(memcg)`).
    pub fn drain_stocks(&self) {
        self.core.drain_all_stock(DrainFilter::OwnerIn(&self.memcg));
    }

    /// Drains the per-CPU stocks caching this group's objcg of node `nid`
    /// only (a drain of one objcg).
    ///
    /// # Errors
    /// [`Error::UnknownNode`].
    pub fn drain_node_stocks(&self, nid: usize) -> Result<()> {
        let nr_node_ids = self.core.topology.nr_node_ids();
        let info = self.memcg.nodeinfo.get(nid).ok_or(Error::UnknownNode {
            node: nid,
            nr_node_ids,
        })?;
        // Relaxed: only an id to filter on (no model calls this).
        let word = info.objcg.load(Ordering::Relaxed);
        if word != 0 {
            self.core.drain_all_stock(DrainFilter::Objcg(word as u32));
        }
        Ok(())
    }
}

pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn next_waker_id() -> u64 {
    crate::sync::next_serial()
}

/// A future that completes when a group (or an ancestor) is killed by its
/// OOM policy; made by [`Group::killed`]. Woken by the reclaimer thread.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Killed {
    group: Group,
    waker_id: u64,
}

impl std::future::Future for Killed {
    type Output = OomKilled;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<OomKilled> {
        let this = self.get_mut();
        match this
            .group
            .register_kill_waker(&mut this.waker_id, cx.waker())
        {
            Some(k) => std::task::Poll::Ready(k),
            None => std::task::Poll::Pending,
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.group.deregister_kill_waker(self.waker_id);
    }
}
