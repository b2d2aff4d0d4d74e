//! The public handle on a group of the tree.

use std::sync::Arc;

use crate::engine::core::{ChargeCtx, Core, DrainFilter, MAX_RECLAIM_RETRIES};
use crate::engine::memcg::{MemCgroup, MemoryEvent};
use crate::engine::reclaim::{self, ReclaimReason, ReclaimRequest, Reclaimer, ReclaimerHandle};
use crate::engine::reservation::Reservation;
use crate::engine::stats::{pages_to_limit, Events, GroupStats};
use crate::engine::task::{self, TaskHandle};
use crate::error::{Error, Result};
use crate::limit::{Limit, PAGE_SIZE};
use crate::sync::Ordering;

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
        let found = self.memcg.children.lock().get(name).cloned();
        found
            .map(|m| Group::from_parts(Arc::clone(&self.core), m))
            .ok_or_else(|| Error::NotFound {
                path: join(&self.memcg.path, name),
            })
    }

    /// Number of tasks attached.
    pub fn nr_tasks(&self) -> usize {
        self.memcg.nr_tasks.load(Ordering::SeqCst)
    }

    /// Creates a child group called `name`.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::AlreadyExists`], [`Error::Removed`]
    /// (this group was removed), [`Error::TooManyGroups`].
    pub fn create_child(&self, name: &str) -> Result<Group> {
        validate_name(name)?;
        let _tree = self.core.tree_lock.lock();
        if !self.memcg.is_online() {
            return Err(Error::Removed {
                path: self.memcg.path.to_string(),
            });
        }
        if self.memcg.children.lock().contains_key(name) {
            return Err(Error::AlreadyExists {
                path: join(&self.memcg.path, name),
            });
        }
        let nr_nodes = self.core.topology.nr_node_ids();
        let child = Arc::new(MemCgroup::new(
            name,
            Some(Arc::clone(&self.memcg)),
            nr_nodes,
        ));
        let mut installed = Vec::with_capacity(nr_nodes);
        for nid in 0..nr_nodes {
            match self.core.table.install(&child, nid, false) {
                Some(objcg) => installed.push(objcg),
                None => {
                    for objcg in installed {
                        self.core.objcg_put(objcg, 1);
                    }
                    return Err(Error::TooManyGroups);
                }
            }
        }
        for (info, objcg) in child.nodeinfo.iter().zip(&installed) {
            // Release: pairs with the Acquire in `get_obj_cgroup_from_memcg`.
            info.objcg.store(objcg.slot_word(), Ordering::Release);
        }
        self.memcg
            .children
            .lock()
            .insert(name.into(), Arc::clone(&child));
        Ok(Group::from_parts(Arc::clone(&self.core), child))
    }

    /// Removes the group (`mem_cgroup_css_offline`): its objcgs are
    /// reparented to the parent, the stocks caching them are drained, and
    /// it leaves the tree. Objects charged to it stay charged, now to the
    /// parent chain, until they are uncharged.
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
        let _tree = self.core.tree_lock.lock();
        let m = &self.memcg;
        if !m.is_online() {
            return Err(Error::Removed {
                path: m.path.to_string(),
            });
        }
        let nr_children = m.children.lock().len();
        if nr_children > 0 {
            return Err(Error::HasChildren {
                path: m.path.to_string(),
                nr_children,
            });
        }
        // Handshake with `try_pin_task` (SeqCst on both sides).
        m.dying.store(true, Ordering::SeqCst);
        // Pairs with the fence in `try_pin_task`.
        crate::sync::fence(Ordering::SeqCst);
        let nr_tasks = m.nr_tasks.load(Ordering::SeqCst);
        if nr_tasks > 0 {
            m.dying.store(false, Ordering::SeqCst);
            return Err(Error::HasTasks {
                path: m.path.to_string(),
                nr_tasks,
            });
        }
        // memcg_reparent_objcgs, in the kernel's order: unpublish the
        // slots, re-point (owner resolution moves to the parent once the
        // group is offline), kill the live references.
        let words: Vec<u64> = m
            .nodeinfo
            .iter()
            .map(|info| info.objcg.swap(0, Ordering::AcqRel))
            .collect();
        m.set_offline();
        for word in words {
            if let Some(objcg) = self.core.table.get(word as u32) {
                self.core.objcg_put(objcg, 1);
            }
        }
        // drain_all_stock for the objcgs made here and below.
        self.core.drain_all_stock(DrainFilter::OriginIn(m));
        m.reclaimers.lock().clear();
        parent.children.lock().remove(&*m.name);
        parent.dead_children.lock().push(Arc::clone(m));
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
    /// up to 16 rounds of reclaim callbacks; if usage is still over, an
    /// `oom` event is counted.
    ///
    /// # Errors
    /// [`Error::Root`], [`Error::Removed`].
    pub fn set_max(&self, max: Limit) -> Result<()> {
        self.check_limitable()?;
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
        self.memcg.counter.set_high_pages(high.as_pages());
        self.reclaim_to(|c| c.high_pages());
        Ok(())
    }

    /// Drains once, then reclaims while usage is over `limit`; returns
    /// whether usage got to the limit.
    fn reclaim_to(&self, limit: fn(&crate::engine::page_counter::PageCounter) -> u64) -> bool {
        let c = &self.memcg.counter;
        if c.usage_pages() <= limit(c) {
            return true;
        }
        self.core.drain_all_stock(DrainFilter::OwnerIn(&self.memcg));
        let ctx = ChargeCtx::direct(None);
        for _ in 0..MAX_RECLAIM_RETRIES {
            let usage = c.usage_pages();
            let target = limit(c);
            if usage <= target || !reclaim::subtree_has_reclaimers(&self.memcg) {
                break;
            }
            let wanted = (usage - target) * PAGE_SIZE;
            self.core
                .run_reclaim(ctx, &self.memcg, wanted, ReclaimReason::LimitLowered);
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
    /// task, under [`crate::TASK_CACHE_BOUND_BYTES`] (5 pages) in its byte
    /// cache; per objcg, under 1 page in
    /// its sub-page pool between drains (a drain returns the rest). A drain
    /// ([`crate::Controller::drain_stocks`] after each task's
    /// [`crate::Task::flush`]) makes it exactly `ceil(live / 4096)` pages
    /// per objcg.
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
        task::attach(&task.shared, &self.memcg)
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
    /// would exceed a `max` (or usage exceeds `high`), it is asked to free
    /// `wanted_bytes` and returns how many bytes it freed. The callback
    /// stays registered while the handle lives.
    pub fn register_reclaimer<F>(&self, callback: F) -> ReclaimerHandle
    where
        F: Fn(&ReclaimRequest) -> u64 + Send + Sync + 'static,
    {
        let r = Arc::new(Reclaimer::new(Box::new(callback)));
        self.memcg.reclaimers.lock().push(Arc::clone(&r));
        ReclaimerHandle {
            group: Arc::downgrade(&self.memcg),
            reclaimer: Some(r),
        }
    }

    /// Policy at `max`: `true` forces charges past the limit instead of
    /// failing them (counted as `max` events, not `oom`).
    pub fn set_force_over_max(&self, force: bool) {
        self.memcg.force_over_max.store(force, Ordering::Relaxed);
    }

    /// Whether charges past `max` are forced; see
    /// [`Group::set_force_over_max`].
    pub fn force_over_max(&self) -> bool {
        self.memcg.force_over_max.load(Ordering::Relaxed)
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
        let word = info.objcg.load(Ordering::Acquire);
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
