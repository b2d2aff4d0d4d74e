//! The controller's shared state and the charge paths that every front end
//! (tasks, reservations, group operations) goes through.
//!
//! Mirrors, in order of the kernel's call graph: `obj_cgroup_charge`
//! ([`Core::obj_cgroup_charge`]), `obj_cgroup_charge_pages`,
//! `try_charge_memcg` with `consume_stock`/`refill_stock`,
//! `obj_cgroup_uncharge` / `refill_obj_stock`, `drain_obj_stock`,
//! `drain_all_stock`, and `obj_cgroup_release`'s uncharge.

use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::engine::memcg::{ChargeKind, MemCgroup, MemoryEvent};
use crate::engine::obj_cgroup::{ObjCgroup, ObjcgTable, Released};
use crate::engine::page_counter;
use crate::engine::policy::{OomPolicy, ReclaimReason};
use crate::engine::reclaim::Reclaimd;
use crate::engine::stock::{CpuStock, ObjSlot, PageSlot, MEMCG_CHARGE_BATCH};
use crate::engine::sys_alloc::SysArc;
use crate::engine::task_shared::TaskCacheMode;
use crate::engine::task_shared::TaskShared;
use crate::engine::topology::Topology;
use crate::error::ChargeError;
use crate::limit::PAGE_SIZE;
use crate::sync::{AtomicU64, Deadline, Mutex, Ordering};

/// `MAX_RECLAIM_RETRIES`.
pub(crate) const MAX_RECLAIM_RETRIES: u32 = 16;
/// `SWAP_CLUSTER_MAX`: the least a reclaim pass asks for, in pages.
pub(crate) const SWAP_CLUSTER_MAX: u64 = 32;

/// Shared state of one controller.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) serial: u64,
    pub(crate) topology: Topology,
    pub(crate) task_cache: TaskCacheMode,
    pub(crate) root: Arc<MemCgroup>,
    pub(crate) table: ObjcgTable,
    pub(crate) stocks: Box<[CachePadded<CpuStock>]>,
    /// Serialises tree changes (create, remove).
    pub(crate) tree_lock: Mutex<()>,
    /// Live tasks, for the checkers and statistics.
    pub(crate) tasks: Mutex<Vec<SysArc<TaskShared>>>,
    /// Task-cache refreshes (seed protocol) across all tasks.
    pub(crate) refreshes: AtomicU64,
    /// Charges counted by tasks that have exited.
    pub(crate) exited_charges: AtomicU64,
    /// The reclaimer thread (reclaim callbacks, kill notifications).
    pub(crate) reclaimd: Arc<Reclaimd>,
}

impl Drop for Core {
    fn drop(&mut self) {
        self.reclaimd.shutdown();
    }
}

/// How a charge may proceed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChargeCtx {
    /// CPU whose stocks to use; `None` charges the page counters directly.
    pub(crate) cpu: Option<usize>,
    /// Charge past `max` without reclaim (root's lock-free path).
    pub(crate) forced: bool,
    /// The caller handles a refusal (explicit charges, fallible regions):
    /// over `max` after reclaim the charge fails under every OOM policy but
    /// `force`, and never kills.
    pub(crate) may_fail: bool,
}

impl ChargeCtx {
    /// An explicit charge from outside any task, through `cpu`'s stocks
    /// (or none): it may fail.
    pub(crate) fn direct(cpu: Option<usize>) -> Self {
        ChargeCtx {
            cpu,
            forced: false,
            may_fail: true,
        }
    }
}

/// Which stock slots a drain empties.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DrainFilter<'a> {
    /// Every slot.
    All,
    /// Slots whose objcg is currently owned by this group or a descendant
    /// (`drain_all_stock(memcg)` under limit pressure).
    OwnerIn(&'a MemCgroup),
    /// Slots whose objcg was made for this group or a descendant (offline).
    OriginIn(&'a MemCgroup),
    /// Slots caching one objcg.
    Objcg(u32),
}

impl Core {
    pub(crate) fn new(
        topology: Topology,
        task_cache: TaskCacheMode,
        obj_stock_slots: usize,
        reclaim_wait: std::time::Duration,
        reclaimer_threads: usize,
    ) -> Option<Self> {
        let serial = crate::sync::next_serial();
        let nr_nodes = topology.nr_node_ids();
        let root = MemCgroup::new("", None, nr_nodes);
        let reclaimd = Arc::new(Reclaimd::new(&root, reclaim_wait, reclaimer_threads));
        let table = ObjcgTable::new(serial);
        table.prepare(nr_nodes);
        for nid in 0..nr_nodes {
            let objcg = table.install(&root, nid, true)?;
            root.nodeinfo
                .get(nid)?
                .objcg
                // Relaxed: the controller has not reached another thread.
                .store(objcg.slot_word(), Ordering::Relaxed);
        }
        let stocks = (0..topology.nr_cpu_ids())
            .map(|_| CachePadded::new(CpuStock::with_obj_slots(obj_stock_slots)))
            .collect();
        Some(Core {
            serial,
            topology,
            task_cache,
            root,
            table,
            stocks,
            tree_lock: Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            refreshes: AtomicU64::new(0),
            exited_charges: AtomicU64::new(0),
            reclaimd,
        })
    }

    #[inline]
    pub(crate) fn stock(&self, cpu: usize) -> Option<&CpuStock> {
        self.stocks.get(cpu).map(|s| &**s)
    }

    fn count_shared(&self, cpu: Option<usize>, nr: u64) {
        let stock = cpu
            .and_then(|c| self.stock(c))
            .or_else(|| self.stocks.first().map(|s| &**s));
        if let Some(s) = stock {
            s.counters.shared_atomics.fetch_add(nr, Ordering::Relaxed);
        }
    }

    /// The root objcg of `nid` (never released).
    #[inline]
    pub(crate) fn root_objcg(&self, nid: usize) -> Option<&ObjCgroup> {
        let word = self.root.nodeinfo.get(nid)?.objcg.load(Ordering::Relaxed);
        self.table.get(word as u32)
    }

    /// `__get_obj_cgroup_from_memcg(memcg, nid)`: walks from `memcg` towards
    /// root and returns the first objcg of `nid` that can be `tryget`, with
    /// a reference (root objcgs need none and always succeed).
    pub(crate) fn get_obj_cgroup_from_memcg(
        &self,
        memcg: &MemCgroup,
        nid: usize,
    ) -> Option<&ObjCgroup> {
        let mut m = Some(memcg);
        while let Some(g) = m {
            if let Some(info) = g.nodeinfo.get(nid) {
                // Acquire: pairs with the Release publishing the slot word
                // (see `Group::create_locked` for why no loom model fails
                // without the pair).
                let word = info.objcg.load(Ordering::Acquire);
                match self.table.tryget_word(word) {
                    Some(Ok(objcg)) => return Some(objcg),
                    // A later incarnation: give back the reference just
                    // taken (a last put finishes that one's release).
                    Some(Err(later)) => self.objcg_put(later, 1),
                    None => {}
                }
            }
            m = g.parent();
        }
        self.root_objcg(nid)
    }

    /// `obj_cgroup_put`, finishing a release when it was the last reference.
    pub(crate) fn objcg_put(&self, objcg: &ObjCgroup, nr: u64) {
        if let Some(released) = self.table.put(objcg, nr) {
            self.finish_release(released);
        }
    }

    /// The uncharge part of `obj_cgroup_release`: leftover whole pages go
    /// back to the current owner's counters directly (not to a stock).
    fn finish_release(&self, released: Released) {
        let Released {
            origin,
            nid,
            nr_pages,
        } = released;
        if nr_pages > 0 {
            let owner = nearest_online(&origin);
            page_counter::uncharge(owner, nr_pages);
            owner.mod_kernel_pages(nid, -(nr_pages as i64));
            self.count_shared(None, 2);
        }
    }

    /// `obj_cgroup_charge_pages`.
    pub(crate) fn obj_cgroup_charge_pages(
        &self,
        ctx: ChargeCtx,
        objcg: &ObjCgroup,
        nr_pages: u64,
    ) -> Result<(), ChargeError> {
        // The group charged: the objcg's owner, read again after any wait
        // (the group may have been removed meanwhile).
        let memcg = self.try_charge_memcg(ctx, objcg, nr_pages)?;
        self.note_charged_pages(ctx.cpu, memcg, objcg, nr_pages);
        Ok(())
    }

    /// Records `nr_pages` pages just charged to `memcg` (the owner of
    /// `objcg`) for `objcg`: its owner's kernel pages on `objcg`'s node
    /// and the objcg's charged pages.
    fn note_charged_pages(
        &self,
        cpu: Option<usize>,
        memcg: &MemCgroup,
        objcg: &ObjCgroup,
        nr_pages: u64,
    ) {
        memcg.mod_kernel_pages(objcg.nid(), nr_pages as i64);
        objcg
            .charged_pages
            .fetch_add(nr_pages as i64, Ordering::Relaxed);
        self.count_shared(cpu, 2);
    }

    /// Takes `nr_pages` pages already charged to `objcg`'s owner chain from
    /// `cpu`'s page stock, with their bytes' references, if the stock holds
    /// that many for it: no page counter is touched, so no limit, reclaim
    /// or OOM outcome applies (the pages were charged with the stock's
    /// batch). `false`, with nothing done, otherwise.
    pub(crate) fn charge_pages_from_stock(
        &self,
        cpu: usize,
        objcg: &ObjCgroup,
        nr_pages: u64,
    ) -> bool {
        let Some(stock) = self.stock(cpu) else {
            return false;
        };
        // Not within a batch of a `max` anywhere up the chain: a charge
        // over the limit drains the CPU stocks (`drain_all_stock`) but not
        // the tasks' caches, so near a limit the pages stay in the stock.
        if nr_pages == 0 || page_counter::margin_below(objcg.memcg(), MEMCG_CHARGE_BATCH) {
            return false;
        }
        if !stock.consume_pages(objcg.id(), nr_pages) {
            return false;
        }
        self.note_charged_pages(Some(cpu), objcg.memcg(), objcg, nr_pages);
        objcg.get(nr_pages * PAGE_SIZE);
        self.count_shared(Some(cpu), 1);
        true
    }

    /// `obj_cgroup_uncharge_pages` (direct to the counters, as since 6.15).
    pub(crate) fn obj_cgroup_uncharge_pages(&self, objcg: &ObjCgroup, nr_pages: u64) {
        if nr_pages == 0 {
            return;
        }
        let memcg = objcg.memcg();
        page_counter::uncharge(memcg, nr_pages);
        memcg.mod_kernel_pages(objcg.nid(), -(nr_pages as i64));
        objcg
            .charged_pages
            .fetch_sub(nr_pages as i64, Ordering::Relaxed);
        self.count_shared(None, 3);
    }

    /// `try_charge_memcg`: charges `nr_pages` to `memcg`'s chain, through
    /// the page stock of `ctx.cpu`, in batches of 64 pages. Over `max`: one
    /// drain of the over-limit subtree's stocks, then up to 16 reclaim
    /// passes of the reclaimer thread (waited for in all at most the
    /// controller's reclaim wait, holding no engine lock), then the OOM
    /// outcome of the over-limit group's policy. No user code runs here.
    fn try_charge_memcg<'a>(
        &self,
        ctx: ChargeCtx,
        objcg: &'a ObjCgroup,
        nr_pages: u64,
    ) -> Result<&'a MemCgroup, ChargeError> {
        let mut memcg = objcg.memcg();
        let stock = ctx.cpu.and_then(|c| self.stock(c));
        if let Some(s) = stock {
            if s.consume_pages(objcg.id(), nr_pages) {
                return Ok(memcg);
            }
        }
        let mut batch = if stock.is_some() {
            nr_pages.max(MEMCG_CHARGE_BATCH)
        } else {
            nr_pages
        };
        let mut retries = MAX_RECLAIM_RETRIES;
        let mut drained = false;
        let mut raised_max = false;
        let mut deadline: Option<Deadline> = None;
        loop {
            self.count_shared(ctx.cpu, 1);
            let over = match page_counter::try_charge(memcg, batch) {
                Ok(()) => {
                    if batch > nr_pages {
                        self.refill_page_stock(ctx.cpu, objcg, batch - nr_pages);
                    }
                    if !ctx.forced {
                        self.handle_high(memcg);
                    }
                    return Ok(memcg);
                }
                Err(over) => over,
            };
            if batch > nr_pages {
                batch = nr_pages;
                continue;
            }
            if !raised_max {
                over.memory_event(MemoryEvent::Max);
                raised_max = true;
            }
            // PF_MEMALLOC: the reclaimer's own allocations are forced, and
            // its explicit charges never wait for it.
            let on_reclaimer = self.reclaimd.is_current_thread();
            if ctx.forced || (on_reclaimer && !ctx.may_fail) {
                break;
            }
            // A killed subtree's allocations are forced at once, as the
            // kernel forces a dying task's charges.
            if !ctx.may_fail && memcg.killed_ancestor().is_some() {
                break;
            }
            if !drained {
                self.drain_all_stock(DrainFilter::OwnerIn(over));
                drained = true;
                continue;
            }
            if retries > 0 && !on_reclaimer && over.subtree_has_reclaimers() {
                // Ask for at least SWAP_CLUSTER_MAX pages, as the kernel's
                // try_to_free_mem_cgroup_pages does, so that concurrent
                // chargers do not each win back only their own request.
                let wanted_bytes = nr_pages.max(SWAP_CLUSTER_MAX) * PAGE_SIZE;
                let seen = self.reclaimd.passes(over);
                self.reclaimd
                    .request_reclaim(over, wanted_bytes, ReclaimReason::Max);
                if !self.reclaimd.is_served() {
                    // Queued for the embedder's `run_reclaimer`; nobody to
                    // wait for now.
                    retries = 0;
                    continue;
                }
                retries -= 1;
                let d = deadline.get_or_insert_with(|| Deadline::after(self.reclaimd.wait()));
                if !self.reclaimd.wait_for_pass(over, seen, d) {
                    // Out of time: one more try, then the OOM outcome.
                    retries = 0;
                }
                // The callbacks may have removed the group: charge its
                // objcg's owner now.
                memcg = objcg.memcg();
                continue;
            }
            // The OOM outcome. A charge that may fail (explicit, or in a
            // fallible region) fails whatever the policy; an allocation
            // takes the over-limit group's policy.
            let policy = over.oom_policy();
            if !ctx.may_fail && policy == OomPolicy::Force {
                // Counted as `max` only.
                break;
            }
            over.memory_event(MemoryEvent::Oom);
            if !ctx.may_fail && policy == OomPolicy::Kill {
                self.kill(over);
                break;
            }
            return Err(ChargeError {
                path: Arc::clone(&over.path),
                limit_bytes: over.counter.max_pages().saturating_mul(PAGE_SIZE),
                usage_bytes: over.counter.usage_pages().saturating_mul(PAGE_SIZE),
                requested_bytes: nr_pages.saturating_mul(PAGE_SIZE),
            });
        }
        // Forced: charge exactly `nr_pages`, ignoring max.
        page_counter::charge(memcg, nr_pages);
        Ok(memcg)
    }

    /// The OOM kill of `over` (policy [`OomPolicy::Kill`]): marks it
    /// killed, counts `oom_kill`, and queues its notifications for the
    /// reclaimer thread. Idempotent while the group stays killed.
    pub(crate) fn kill(&self, over: &MemCgroup) {
        if over.mark_killed() {
            over.memory_event(MemoryEvent::OomKill);
            self.reclaimd.request_kill_notify(over);
        }
    }

    /// After a successful batch charge: every level over `memory.high`
    /// (root excluded) counts a `high` event and, if its subtree has
    /// reclaim callbacks, asks the reclaimer thread for the excess without
    /// waiting (the kernel defers high reclaim to a safe point too).
    fn handle_high(&self, memcg: &MemCgroup) {
        let mut m = Some(memcg);
        while let Some(g) = m {
            if g.is_root() {
                break;
            }
            let usage = g.counter.usage_pages();
            let high = g.counter.high_pages();
            if usage > high {
                g.memory_event(MemoryEvent::High);
                if g.subtree_has_reclaimers() {
                    self.reclaimd.request_reclaim(
                        g,
                        (usage - high) * PAGE_SIZE,
                        ReclaimReason::High,
                    );
                }
            }
            m = g.parent();
        }
    }

    /// `refill_stock`.
    fn refill_page_stock(&self, cpu: Option<usize>, objcg: &ObjCgroup, nr_pages: u64) {
        let Some(stock) = cpu.and_then(|c| self.stock(c)) else {
            page_counter::uncharge(objcg.memcg(), nr_pages);
            return;
        };
        // The slot's own reference is taken before the slot can be seen,
        // so a concurrent drain never puts a reference not yet taken.
        objcg.get(1);
        self.count_shared(cpu, 1);
        let out = stock.refill_pages(objcg.id(), nr_pages);
        if !out.installed {
            // Not needed; the caller's reference keeps this from being last.
            self.objcg_put(objcg, 1);
        }
        if out.uncharge_pages > 0 {
            page_counter::uncharge(objcg.memcg(), out.uncharge_pages);
            self.count_shared(cpu, 1);
        }
        if let Some(word) = out.evicted {
            self.drain_page_word(word);
        }
    }

    /// Returns a page-stock slot's contents: its pages to its objcg's
    /// owner chain, and the slot's reference.
    fn drain_page_word(&self, word: u64) {
        let s = PageSlot::unpack(word);
        let Some(objcg) = self.table.get(s.id) else {
            return;
        };
        if s.pages > 0 {
            page_counter::uncharge(objcg.memcg(), s.pages);
        }
        self.objcg_put(objcg, 1);
        self.count_shared(None, 2);
    }

    /// `refill_obj_stock`: deposits `bytes` of `objcg`, with their
    /// references, in `cpu`'s byte stock (with no stock: into the pool,
    /// their references put). A slot installed for `objcg` adopts its pool
    /// ([`Core::adopt_pool`]).
    pub(crate) fn refill_obj_stock(
        &self,
        cpu: Option<usize>,
        objcg: &ObjCgroup,
        bytes: u64,
        allow_uncharge: bool,
    ) {
        if bytes == 0 {
            return;
        }
        let Some(stock) = cpu.and_then(|c| self.stock(c)) else {
            self.uncharge_bytes(objcg, bytes);
            return;
        };
        let out = stock.refill_obj(objcg.id(), bytes, allow_uncharge, || self.adopt_pool(objcg));
        if out.uncharge_pages > 0 {
            // Their bytes left the slot with their references, which keep
            // the objcg until they are put, after the uncharge.
            self.obj_cgroup_uncharge_pages(objcg, out.uncharge_pages);
            self.objcg_put(objcg, out.uncharge_pages * PAGE_SIZE);
        }
        if let Some(word) = out.evicted {
            self.drain_obj_word(word);
        }
    }

    /// Empties `objcg`'s pool for a byte-stock slot being installed, taking
    /// the references of the bytes adopted (the caller's own bytes, not yet
    /// in the slot, keep the objcg meanwhile); the pool is read first, so
    /// that an empty one's shared line is not dirtied.
    fn adopt_pool(&self, objcg: &ObjCgroup) -> u64 {
        // Relaxed: the bytes carry no data; the swap, a read-modify-write,
        // takes the latest value.
        if objcg.nr_charged_bytes.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let adopted = objcg.nr_charged_bytes.swap(0, Ordering::Relaxed);
        objcg.get(adopted);
        self.count_shared(None, 2);
        adopted
    }

    /// `drain_obj_stock` for one slot word taken out of a stock.
    pub(crate) fn drain_obj_word(&self, word: u64) {
        let s = ObjSlot::unpack(word);
        if s.bytes == 0 {
            // Pins nothing; its id may be a released entry's.
            return;
        }
        let Some(objcg) = self.table.get(s.id) else {
            return;
        };
        self.uncharge_bytes(objcg, s.bytes);
    }

    /// Returns `bytes` of `objcg` held outside its pool and the page
    /// counters (with their references, which keep the objcg until this
    /// puts them last): whole pages to the counters, the remainder to the
    /// pool.
    pub(crate) fn uncharge_bytes(&self, objcg: &ObjCgroup, bytes: u64) {
        let pages = bytes / PAGE_SIZE;
        let rem = bytes % PAGE_SIZE;
        if pages > 0 {
            self.obj_cgroup_uncharge_pages(objcg, pages);
        }
        if rem > 0 {
            // Unlike the kernel, whole pages that the remainders add up to
            // in the pool are returned at once, so that a drain under
            // limit pressure frees everything stocks and pools hold.
            self.uncharge_to_pool(objcg, rem);
        }
        self.objcg_put(objcg, bytes);
    }

    /// The task-less uncharge fallback: bytes go to the central pool, and
    /// whole pages of the pool are uncharged.
    pub(crate) fn uncharge_to_pool(&self, objcg: &ObjCgroup, bytes: u64) {
        if bytes > 0 {
            objcg.nr_charged_bytes.fetch_add(bytes, Ordering::Relaxed);
            self.count_shared(None, 1);
        }
        self.trim_pool(objcg);
    }

    /// Uncharges the whole pages sitting in `objcg`'s pool.
    pub(crate) fn trim_pool(&self, objcg: &ObjCgroup) {
        let mut cur = objcg.nr_charged_bytes.load(Ordering::Relaxed);
        loop {
            let pages = cur / PAGE_SIZE;
            if pages == 0 {
                return;
            }
            match objcg.nr_charged_bytes.compare_exchange_weak(
                cur,
                cur % PAGE_SIZE,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.obj_cgroup_uncharge_pages(objcg, pages);
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// `obj_cgroup_charge` for a charge not served by a task cache: the
    /// byte stock of `ctx.cpu`, else whole pages with the remainder put in
    /// the stock. The object's bytes come with their references; the
    /// statistics are updated directly.
    pub(crate) fn obj_cgroup_charge(
        &self,
        ctx: ChargeCtx,
        objcg: &ObjCgroup,
        bytes: u64,
        kind: ChargeKind,
    ) -> Result<(), ChargeError> {
        self.charge_bytes(ctx, objcg, bytes)?;
        self.account(ctx.cpu, objcg, kind, bytes as i64);
        Ok(())
    }

    /// Charges `bytes` to `objcg`, with their references, without
    /// statistics (a size change of a live object, or an object's charge
    /// before its statistics): from `ctx.cpu`'s byte stock, else whole
    /// pages with the remainder deposited.
    pub(crate) fn charge_bytes(
        &self,
        ctx: ChargeCtx,
        objcg: &ObjCgroup,
        bytes: u64,
    ) -> Result<(), ChargeError> {
        let stock = ctx.cpu.and_then(|c| self.stock(c));
        if stock.is_some_and(|s| s.consume_obj(objcg.id(), bytes)) {
            return Ok(());
        }
        let remainder = self.charge_pages_for_bytes(ctx, objcg, bytes)?;
        self.refill_obj_stock(ctx.cpu, objcg, remainder, false);
        Ok(())
    }

    /// Charges `ceil(bytes / PAGE_SIZE)` pages and takes the references of
    /// all their bytes; returns the remainder (the pages' bytes beyond
    /// `bytes`), which the caller deposits with its references.
    pub(crate) fn charge_pages_for_bytes(
        &self,
        ctx: ChargeCtx,
        objcg: &ObjCgroup,
        bytes: u64,
    ) -> Result<u64, ChargeError> {
        let nr_pages = bytes.div_ceil(PAGE_SIZE);
        self.obj_cgroup_charge_pages(ctx, objcg, nr_pages)?;
        objcg.get(nr_pages * PAGE_SIZE);
        self.count_shared(ctx.cpu, 1);
        let remainder = nr_pages * PAGE_SIZE - bytes;
        Ok(remainder)
    }

    /// `obj_cgroup_uncharge` for an object not returned to a task cache:
    /// its bytes, with their references, go to `cpu`'s byte stock.
    pub(crate) fn obj_cgroup_uncharge(
        &self,
        cpu: Option<usize>,
        objcg: &ObjCgroup,
        bytes: u64,
        kind: ChargeKind,
    ) {
        self.account(cpu, objcg, kind, -(bytes as i64));
        self.refill_obj_stock(cpu, objcg, bytes, true);
    }

    /// Applies a live-byte delta to the objcg and to its owner's per-node
    /// statistics.
    pub(crate) fn account(
        &self,
        cpu: Option<usize>,
        objcg: &ObjCgroup,
        kind: ChargeKind,
        bytes: i64,
    ) {
        if bytes != 0 {
            objcg.live_bytes.fetch_add(bytes, Ordering::Relaxed);
            objcg.memcg().mod_live_bytes(objcg.nid(), kind, bytes);
            self.count_shared(cpu, 2);
        }
    }

    /// `drain_all_stock`: empties the matching slots of every CPU's stocks.
    /// Safe against concurrent charging: each slot is taken with one atomic
    /// operation, and whoever takes a word owns its contents.
    pub(crate) fn drain_all_stock(&self, filter: DrainFilter<'_>) {
        let _gate = crate::sync::fork_gate_enter();
        let matches = |id: u32| self.drain_matches(filter, id);
        for stock in self.stocks.iter() {
            stock.take_obj_slots(matches, |w| self.drain_obj_word(w));
            stock.take_page_slots(matches, |w| self.drain_page_word(w));
        }
    }

    fn drain_matches(&self, filter: DrainFilter<'_>, id: u32) -> bool {
        match filter {
            DrainFilter::All => true,
            DrainFilter::Objcg(want) => id == want,
            DrainFilter::OwnerIn(g) | DrainFilter::OriginIn(g) => {
                let Some(objcg) = self.table.get(id) else {
                    return false;
                };
                // A reference makes the origin safe to read; the slot may
                // have been emptied meanwhile, then the CAS that follows fails.
                if !objcg.tryget() {
                    return false;
                }
                let m = match filter {
                    DrainFilter::OwnerIn(_) => objcg.memcg().is_descendant_of(g),
                    _ => objcg.origin().is_descendant_of(g),
                };
                self.objcg_put(objcg, 1);
                m
            }
        }
    }
}

/// The nearest online group on `m`'s ancestor chain (itself if online).
pub(crate) fn nearest_online(m: &MemCgroup) -> &MemCgroup {
    let mut g = m;
    while !g.is_online() {
        match g.parent() {
            Some(p) => g = p,
            None => break,
        }
    }
    g
}

/// Largest single charge (keeps page arithmetic far from overflow).
pub(crate) const MAX_CHARGE_BYTES: u64 = 1 << 48;

/// Checks a charge size: `1..=MAX_CHARGE_BYTES`.
#[inline(always)]
pub(crate) fn check_size(bytes: u64) -> crate::error::Result<()> {
    if bytes == 0 || bytes > MAX_CHARGE_BYTES {
        return Err(invalid_size(bytes));
    }
    Ok(())
}

#[cold]
#[inline(never)]
pub(crate) fn invalid_size(bytes: u64) -> crate::error::Error {
    crate::error::Error::InvalidSize {
        bytes,
        reason: if bytes == 0 {
            "a charge must be at least 1 byte"
        } else {
            "a charge must be at most 2^48 bytes"
        },
    }
}

/// Checks a size that may be 0 (a reservation): at most `MAX_CHARGE_BYTES`.
pub(crate) fn check_size_or_zero(bytes: u64) -> crate::error::Result<()> {
    if bytes > MAX_CHARGE_BYTES {
        return Err(invalid_size(bytes));
    }
    Ok(())
}
