//! The checkers: conservation per objcg, reference counts, per-group and
//! per-node balance (DESIGN §4.3).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::engine::byte_cache::TASK_CACHE_BOUND_BYTES;
use crate::engine::memcg::MemCgroup;
use crate::engine::stock::{ObjSlot, PageSlot};
use crate::engine::task_shared::unfolded_hit_bytes;
use crate::engine::Controller;
use crate::limit::PAGE_SIZE;
use crate::sync::Ordering;

/// What [`Controller::check_invariants`] found wrong: one line per
/// violation, precise enough to find the bug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantViolations {
    /// The violations, one description each.
    pub violations: Vec<String>,
}

impl fmt::Display for InvariantViolations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} invariant violation(s):", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvariantViolations {}

/// What the holders of one objcg have, summed over stocks and tasks.
#[derive(Debug, Default)]
struct Held {
    refs: i64,
    stock_bytes: u64,
    stock_pages: u64,
    pending_bytes: i64,
}

/// A deliberate bug, for showing that the checkers catch bugs.
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// One byte appears in a root objcg's pool out of nowhere.
    LeakByte,
    /// A group's objcg loses a reference that someone still holds.
    DropReference,
    /// A group's page counter is charged one page that no objcg holds.
    StrayPage,
    /// A group's objcg is released twice while in use: its table entry is
    /// pushed on the free list twice, so that two later objcgs would share
    /// it (the bug a put without a reference makes).
    DoubleRelease,
}

impl Controller {
    /// Injects a deliberate accounting bug (tests and the simulator only).
    /// The controller is not fit for further use afterwards.
    #[cfg(any(test, feature = "fault-injection"))]
    pub fn inject_fault(&self, fault: Fault, group: &crate::Group) {
        let core = self.core();
        let nid = 0;
        let Some(objcg) = core.get_obj_cgroup_from_memcg(group.memcg(), nid) else {
            return;
        };
        match fault {
            Fault::LeakByte => {
                objcg.nr_charged_bytes.fetch_add(1, Ordering::Relaxed);
            }
            Fault::DropReference => {
                if !objcg.is_root() {
                    core.objcg_put(objcg, 1);
                }
            }
            Fault::StrayPage => {
                crate::engine::page_counter::charge(&**group.memcg(), 1);
            }
            Fault::DoubleRelease => {
                core.table.push_free_for_fault(objcg);
                core.table.push_free_for_fault(objcg);
            }
        }
        core.objcg_put(objcg, 1);
    }

    /// Checks the accounting invariants and returns every violation.
    ///
    /// Exact when nothing charges concurrently (tests, the simulator
    /// between steps), also across a racing task exit once that task's
    /// byte cache is flushed (the loom model `loom_checkers`); under
    /// concurrent charging it may report transient differences, but it is
    /// always memory-safe.
    ///
    /// Checked:
    /// - per objcg: `charged pages × 4096 == live bytes + bytes held in
    ///   stocks and task caches + nr_charged_bytes` (conservation);
    /// - per objcg: reference count == holders (the live reference, task
    ///   entries, task caches, page-stock slots, reservations: 1 each) +
    ///   the bytes of its charge outside its pool and the page counters
    ///   (live bytes, and bytes held in stocks and task caches);
    /// - per online group: usage == pages charged through the objcgs it
    ///   owns (with descendants) + pages in page stocks for them;
    /// - per online group and node: `kernel` == pages charged through its
    ///   objcgs of that node; live bytes == the objcgs' live bytes;
    /// - no page counter underflow, no reference dropped twice, no release
    ///   with a partial page left;
    /// - the table's free list: no cycle, no entry twice, only released
    ///   entries, and every released entry on it;
    /// - every task's byte cache and foreign slot together under
    ///   `TASK_CACHE_BOUND_BYTES` (part of the error bound), and a foreign
    ///   slot in use holding bytes (which keep its objcg);
    /// - every task's cache slot's hit mark as made (never written: the
    ///   allocator's hit paths miss on it only while it is).
    ///
    /// # Errors
    /// [`InvariantViolations`] listing what is wrong.
    pub fn check_invariants(&self) -> Result<(), InvariantViolations> {
        let core = &**self.core();
        let tree = core.tree_lock.lock();
        let mut pruned = Vec::new();
        core.root.prune_dead(&mut pruned);
        let mut v = Vec::new();
        let mut held: HashMap<u32, Held> = HashMap::new();

        // Relaxed reads of stock and slot words (ids and counts only): the
        // check is exact only when nothing runs concurrently, and then the
        // locks and joins that made it so order every write before it;
        // under concurrency it promises memory safety only, which `get`'s
        // own Acquire gives for any id.
        for stock in core.stocks.iter() {
            for slot in &stock.obj {
                let s = ObjSlot::unpack(slot.load(Ordering::Relaxed));
                // A slot with no bytes holds nothing (its id may be a
                // released entry's).
                if s.id != 0 && s.bytes != 0 {
                    let h = held.entry(s.id).or_default();
                    h.stock_bytes = h.stock_bytes.saturating_add(s.bytes);
                }
            }
            for slot in &stock.pages {
                let s = PageSlot::unpack(slot.load(Ordering::Relaxed));
                if s.id != 0 {
                    let h = held.entry(s.id).or_default();
                    h.refs += 1;
                    h.stock_pages += s.pages;
                }
            }
        }
        // Held until every reference count is read: `Task::exit` puts its
        // per-node references under this lock, so an exit racing the check
        // is seen whole (before the task scan or after the counts), never
        // with the task's holds counted and its puts already done (a false
        // "free but held" or a count below its holders).
        let tasks = core.tasks.lock();
        {
            for t in tasks.iter() {
                // Acquire (also on the entries below): pairs with the
                // owner's AcqRel swaps and CAS, ordering the objcg behind a
                // pointer (read through `&*p` below) before its use here.
                // No loom model fails without them: loom does not track the
                // plain fields read through the pointer, and the array
                // itself is ordered by the task-list lock (`Task::new`
                // publishes it under that lock, `exit` frees it under it).
                let tagged = t.objcgs.load(Ordering::Acquire);
                // SAFETY: we hold the task-list lock, which `Task::exit`
                // takes before it frees the array.
                if let Some(entries) = unsafe { t.entries(tagged) } {
                    for e in entries {
                        let p = e.load(Ordering::Acquire);
                        if !p.is_null() {
                            // SAFETY: entries point into the type-stable table.
                            let id = unsafe { &*p }.id();
                            held.entry(id).or_default().refs += 1;
                        }
                    }
                }
                let c = &t.cache;
                // Loom builds have no allocator hit path (and no mark at
                // the bit's offset).
                #[cfg(not(memcg_loom))]
                if !c.mark_is_idle() {
                    v.push(
                        "a task's hit mark was written: the allocator's hit paths could hit on it"
                            .to_string(),
                    );
                }
                let id = c.objcg.load(Ordering::Relaxed);
                // Part of the error bound (`engine/bound.rs`): a charge
                // refills the cache to at most `CACHE_MAX_BYTES` plus a
                // page's remainder, an uncharge trims it above
                // `CACHE_MAX_BYTES`, and no reclaim or user code runs
                // between a charge's page charge and its refill.
                let cached = c.bytes.load(Ordering::Relaxed);
                let foreign_id = c.foreign_objcg.load(Ordering::Relaxed);
                let foreign = c.foreign_bytes.load(Ordering::Relaxed);
                // Saturating: a hit path that missed holds the wrapped
                // difference for a few instructions (`fast_path.rs`), which
                // a check racing with it reports as a transient excess.
                if cached.saturating_add(foreign) >= TASK_CACHE_BOUND_BYTES {
                    v.push(format!(
                        "a task's byte cache holds {cached} bytes (objcg {id}) and its foreign slot {foreign} (objcg {foreign_id}), over their bound of {TASK_CACHE_BOUND_BYTES}"
                    ));
                }
                if foreign_id != 0 {
                    // The slot's objects are still in the objcg's live
                    // bytes; their pre-charged bytes, with their
                    // references, are the slot's.
                    if foreign == 0 {
                        v.push(format!(
                            "a task's foreign slot holds objcg {foreign_id} without bytes, which alone keep it"
                        ));
                    }
                    let h = held.entry(foreign_id).or_default();
                    // Saturating: another task's cache may have been read
                    // with a miss's wrapped bytes (see `cached` above).
                    h.stock_bytes = h.stock_bytes.saturating_add(foreign);
                    h.pending_bytes -= foreign as i64;
                }
                if id != 0 {
                    let h = held.entry(id).or_default();
                    h.refs += 1;
                    h.stock_bytes = h.stock_bytes.saturating_add(cached);
                    // The hit path's bytes not yet folded are pending
                    // statistics too.
                    h.pending_bytes += c
                        .pending_bytes
                        .iter()
                        .map(|p| p.load(Ordering::Relaxed))
                        .sum::<i64>()
                        + unfolded_hit_bytes(c);
                }
            }
        }
        let mut groups = Vec::new();
        collect_online(&core.root, &mut groups);
        for g in &groups {
            for info in g.nodeinfo.iter() {
                // Relaxed: slot words change only under the tree lock,
                // which this check holds.
                let word = info.objcg.load(Ordering::Relaxed);
                if word != 0 {
                    held.entry(word as u32).or_default().refs += 1;
                }
            }
        }

        // Per objcg.
        struct Owned {
            owner: *const MemCgroup,
            nid: usize,
            charged_pages: i64,
            live_bytes: i64,
            stock_pages: u64,
        }
        let mut owned = Vec::new();
        let ids: Vec<u32> = core.table.entries().map(|o| o.id()).collect();
        check_free_list(core, &ids, &mut v);
        for id in ids {
            let Some(objcg) = core.table.get(id) else {
                continue;
            };
            let refcnt = objcg.refcnt();
            let h = held.remove(&id).unwrap_or_default();
            if refcnt <= 0 {
                if h.refs != 0 || h.stock_bytes != 0 {
                    v.push(format!(
                        "objcg {id}: free but {} holder reference(s) and {} byte(s) in stocks and caches remain",
                        h.refs, h.stock_bytes
                    ));
                }
                continue;
            }
            if !objcg.tryget() {
                continue;
            }
            let owner = objcg.memcg();
            // Made only for a violation (the check runs after every step
            // of the simulator).
            let name = || {
                format!(
                    "objcg {id} (group {:?}, node {})",
                    objcg.origin().path,
                    objcg.nid()
                )
            };
            let charged = objcg.charged_pages.load(Ordering::Relaxed);
            let live = objcg.live_bytes.load(Ordering::Relaxed) + h.pending_bytes;
            let reservations = objcg.live_reservations.load(Ordering::Relaxed);
            let pool = objcg.nr_charged_bytes.load(Ordering::Relaxed);
            let lhs = i128::from(charged) * i128::from(PAGE_SIZE);
            let rhs = i128::from(live) + i128::from(h.stock_bytes) + i128::from(pool);
            if lhs != rhs {
                v.push(format!(
                    "{}: conservation broken: {charged} pages × 4096 = {lhs} != live {live} + stocks {} + pool {pool} = {rhs}",
                    name(),
                    h.stock_bytes
                ));
            }
            if live < 0 || reservations < 0 {
                v.push(format!(
                    "{}: negative live bytes {live} or reservations {reservations}",
                    name()
                ));
            }
            if !objcg.is_root() {
                // `refcnt` was read before the `tryget` above. In i128: a
                // racing read may see a miss's wrapped bytes.
                let expected = i128::from(h.refs)
                    + i128::from(reservations)
                    + i128::from(live)
                    + i128::from(h.stock_bytes);
                if i128::from(refcnt) != expected {
                    v.push(format!(
                        "{}: reference count {refcnt} != holders {} + reservations {reservations} + live bytes {live} + bytes in stocks and caches {}",
                        name(),
                        h.refs,
                        h.stock_bytes
                    ));
                }
            }
            owned.push(Owned {
                owner,
                nid: objcg.nid(),
                charged_pages: charged,
                live_bytes: objcg.live_bytes.load(Ordering::Relaxed),
                stock_pages: h.stock_pages,
            });
            core.objcg_put(objcg, 1);
        }
        drop(tasks);
        for (id, h) in held {
            v.push(format!(
                "objcg {id}: not in the table but held {} time(s)",
                h.refs
            ));
        }

        // Per online group: what its subtree's objcgs hold (each objcg
        // added to its owner and every ancestor), and its hierarchical
        // statistics (its own plus its children's, bottom-up).
        let nr_nodes = core.topology.nr_node_ids();
        let mut want: HashMap<*const MemCgroup, Want> = HashMap::new();
        for o in &owned {
            // SAFETY: owners are online groups on the chains of live
            // objcgs; we hold the tree lock, so none is removed or freed.
            let mut m = Some(unsafe { &*o.owner });
            while let Some(g) = m {
                let w = want
                    .entry(g as *const MemCgroup)
                    .or_insert_with(|| Want::new(nr_nodes));
                w.pages += o.charged_pages + o.stock_pages as i64;
                if let (Some(k), Some(l)) = (w.kernel.get_mut(o.nid), w.live.get_mut(o.nid)) {
                    *k += o.charged_pages;
                    *l += o.live_bytes;
                }
                m = g.parent();
            }
        }
        let mut hier_stats: HashMap<*const MemCgroup, (Vec<i64>, Vec<i64>)> = HashMap::new();
        // `groups` is in pre-order: children after their parent.
        for g in groups.iter().rev() {
            let mut kernel = vec![0i64; nr_nodes];
            let mut live = vec![0i64; nr_nodes];
            for nid in 0..nr_nodes {
                let (k, l) = g.local_node_stats(nid);
                kernel[nid] += k;
                live[nid] += l.iter().sum::<i64>();
            }
            for c in g.children_snapshot() {
                if let Some((ck, cl)) = hier_stats.get(&Arc::as_ptr(&c)) {
                    for nid in 0..nr_nodes {
                        kernel[nid] += ck[nid];
                        live[nid] += cl[nid];
                    }
                }
            }
            hier_stats.insert(Arc::as_ptr(g), (kernel, live));
        }
        let empty = Want::new(nr_nodes);
        for g in &groups {
            let g: &MemCgroup = g;
            let w = want.get(&(g as *const MemCgroup)).unwrap_or(&empty);
            let want_pages = w.pages;
            let usage = g.counter.usage_pages() as i64;
            if usage != want_pages {
                v.push(format!(
                    "group {:?}: usage {usage} pages != {want_pages} pages charged through its objcgs and page stocks",
                    g.path
                ));
            }
            if g.counter.underflows() > 0 {
                v.push(format!(
                    "group {:?}: page counter underflowed {} time(s)",
                    g.path,
                    g.counter.underflows()
                ));
            }
            let Some((kernel, live)) = hier_stats.get(&(g as *const MemCgroup)) else {
                continue;
            };
            for nid in 0..nr_nodes {
                let (kernel, live_sum) = (kernel[nid], live[nid]);
                let want_kernel = w.kernel[nid];
                if kernel != want_kernel {
                    v.push(format!(
                        "group {:?} node {nid}: kernel {kernel} pages != {want_kernel} pages charged through its objcgs",
                        g.path
                    ));
                }
                let want_live = w.live[nid];
                if live_sum != want_live {
                    v.push(format!(
                        "group {:?} node {nid}: live bytes {live_sum} != {want_live} held by its objcgs",
                        g.path
                    ));
                }
            }
        }
        let f = &core.table.faults;
        let double = f.refcount_underflows.load(Ordering::Relaxed);
        if double > 0 {
            v.push(format!(
                "{double} reference(s) dropped more times than taken"
            ));
        }
        let unaligned = f.unaligned_releases.load(Ordering::Relaxed);
        if unaligned > 0 {
            v.push(format!("{unaligned} objcg release(s) left a partial page"));
        }
        drop(tree);
        // Forgotten groups (and the callbacks they kept) go after the lock.
        drop(pruned);
        if v.is_empty() {
            Ok(())
        } else {
            Err(InvariantViolations { violations: v })
        }
    }
}

/// What a group's subtree's objcgs hold: pages (with page stocks), and per
/// node the pages charged and the live bytes.
struct Want {
    pages: i64,
    kernel: Vec<i64>,
    live: Vec<i64>,
}

impl Want {
    fn new(nr_nodes: usize) -> Self {
        Want {
            pages: 0,
            kernel: vec![0; nr_nodes],
            live: vec![0; nr_nodes],
        }
    }
}

/// The free list of the objcg table: no cycle (an entry pushed twice makes
/// one), only released entries, every released entry on it.
fn check_free_list(core: &crate::engine::core::Core, ids: &[u32], v: &mut Vec<String>) {
    let (list, cyclic) = core.table.free_list(ids.len() + 1);
    if cyclic {
        let repeat = list.last().copied().unwrap_or(0);
        v.push(format!(
            "free list: cycle or repeated entry after {} entries (objcg {repeat} released twice?)",
            list.len()
        ));
    }
    for &id in &list {
        if let Some(o) = core.table.get(id) {
            let refcnt = o.refcnt();
            if refcnt > 0 {
                v.push(format!(
                    "free list: objcg {id} is on the free list but in use (reference count {refcnt})"
                ));
            }
        }
    }
    if !cyclic {
        let on_list: std::collections::HashSet<u32> = list.iter().copied().collect();
        for &id in ids {
            let Some(o) = core.table.get(id) else {
                continue;
            };
            if o.refcnt() <= 0 && !o.is_root() && !on_list.contains(&id) {
                v.push(format!(
                    "free list: objcg {id} is released but not on the free list (a lost entry)"
                ));
            }
        }
    }
}

fn collect_online(m: &Arc<MemCgroup>, out: &mut Vec<Arc<MemCgroup>>) {
    out.push(Arc::clone(m));
    for c in m.children_snapshot() {
        collect_online(&c, out);
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::Fault;
    use crate::sync::Ordering;
    use crate::{ChargeKind, Controller, Topology};

    fn setup() -> (
        Controller,
        crate::Group,
        crate::engine::Task,
        crate::engine::Charge,
    ) {
        let c = Controller::new(Topology::from_spec("2x1").unwrap());
        let g = c.create("g").unwrap();
        let t = c.new_task(&g).unwrap();
        let ch = t.charge(0, 100, ChargeKind::Alloc).unwrap();
        assert_eq!(c.check_invariants(), Ok(()));
        (c, g, t, ch)
    }

    fn violations(c: &Controller) -> String {
        c.check_invariants()
            .expect_err("the fault must be caught")
            .to_string()
    }

    #[test]
    fn check_invariants_reports_bytes_held_for_a_released_objcg() {
        let c = Controller::new(Topology::from_spec("1x1").unwrap());
        let g = c.create("g").unwrap();
        let t = c.new_task(&g).unwrap();
        let ch = t.charge(0, 100, ChargeKind::Alloc).unwrap();
        let id = t.shared.cache.objcg.load(Ordering::Relaxed);
        t.uncharge(0, ch).unwrap();
        drop(t);
        c.remove("g").unwrap();
        c.drain_stocks();
        assert_eq!(c.check_invariants(), Ok(()));
        let objcg = c.core().table.get(id).expect("the entry");
        assert_eq!(objcg.refcnt(), 0, "released");
        // A byte-stock slot that still held bytes of the released objcg.
        let slot = &c.core().stock(0).expect("CPU 0").obj[0];
        let made = slot.load(Ordering::Relaxed);
        slot.store(
            crate::engine::stock::ObjSlot { id, bytes: 64 }.pack(),
            Ordering::Relaxed,
        );
        let v = violations(&c);
        assert!(
            v.contains("free but 0 holder reference(s) and 64 byte(s)"),
            "{v}"
        );
        slot.store(made, Ordering::Relaxed);
        assert_eq!(c.check_invariants(), Ok(()));
    }

    #[test]
    fn check_invariants_counts_a_caches_bytes_as_references() {
        let (c, _g, t, _ch) = setup();
        let cache = &t.shared.cache;
        let id = cache.objcg.load(Ordering::Relaxed);
        let objcg = c.core().table.get(id).expect("the cached objcg");
        // A byte of the cache handed back to the pool without its
        // reference put: conservation holds, the reference count is one
        // above what the bytes outside the pool account for.
        let bytes = cache.bytes.load(Ordering::Relaxed);
        assert!(bytes > 0, "the charge left bytes in the cache");
        crate::engine::task_shared::set_cache_bytes(cache, bytes - 1);
        objcg.nr_charged_bytes.fetch_add(1, Ordering::Relaxed);
        let v = violations(&c);
        assert!(v.contains("reference count"), "{v}");
        assert!(!v.contains("conservation"), "{v}");
        objcg.nr_charged_bytes.fetch_sub(1, Ordering::Relaxed);
        crate::engine::task_shared::set_cache_bytes(cache, bytes);
        assert_eq!(c.check_invariants(), Ok(()));
    }

    #[test]
    fn check_invariants_reports_a_written_hit_mark() {
        let (c, _g, t, _ch) = setup();
        let mark = t.shared.cache.mark_for_test();
        // Each word a hit path reads before it misses on the mark, and the
        // heap one reads after a hit (defensive: it misses before), written
        // with a value that could hit, then put back.
        let one = crate::engine::fast_path::armed_word(crate::engine::fast_path::ONE_KEY, 0);
        mark.fast_key.store(one, Ordering::Relaxed);
        let v = violations(&c);
        assert!(v.contains("hit mark was written"), "{v}");
        mark.fast_key.store(0, Ordering::Relaxed);
        assert_eq!(c.check_invariants(), Ok(()));
        let addr = t.shared.cache.objcg_addr.load(Ordering::Relaxed);
        for word in [&mark.hit_addr, &mark.hit_cookie, &mark.alloc_heap] {
            let made = word.load(Ordering::Relaxed);
            word.store(addr, Ordering::Relaxed);
            let v = violations(&c);
            assert!(v.contains("hit mark was written"), "{v}");
            word.store(made, Ordering::Relaxed);
            assert_eq!(c.check_invariants(), Ok(()));
        }
        // And a field no hit path reads.
        mark.synced_bytes.store(1, Ordering::Relaxed);
        assert!(violations(&c).contains("hit mark was written"));
        mark.synced_bytes.store(0, Ordering::Relaxed);
        assert_eq!(c.check_invariants(), Ok(()));
    }

    #[test]
    fn check_invariants_overfull_task_cache_reports_the_bound() {
        let (c, _g, t, _ch) = setup();
        let cache = &t.shared.cache;
        let bytes = cache.bytes.load(Ordering::Relaxed);
        cache
            .bytes
            .store(crate::engine::TASK_CACHE_BOUND_BYTES, Ordering::Relaxed);
        let v = violations(&c);
        assert!(v.contains("over their bound"), "{v}");
        cache.bytes.store(bytes, Ordering::Relaxed);
        assert_eq!(c.check_invariants(), Ok(()));
    }

    /// Frees of another group's objects gather in the freeing task's
    /// foreign slot; the checker counts the slot (exact while it holds
    /// them, and after it returns them), and catches a slot in use with no
    /// bytes or over the bound. (A slot's bytes are on both sides of the
    /// conservation and reference equations, as they are still the objcg's
    /// live bytes: a miscount there shows once the slot is returned, as a
    /// byte no object holds.)
    #[test]
    fn check_invariants_counts_the_foreign_slot_and_catches_its_faults() {
        let c = Controller::new(Topology::from_spec("1x1").unwrap());
        let a = c.create("a").unwrap();
        let b = c.create("b").unwrap();
        let ta = c.new_task(&a).unwrap();
        let tb = c.new_task(&b).unwrap();
        let charges: Vec<_> = (0..20)
            .map(|_| ta.charge(0, 64, ChargeKind::Alloc).unwrap())
            .collect();
        ta.flush(0).unwrap();
        assert_eq!(a.stats().stat.alloc_bytes, 20 * 64);
        let cache = &tb.shared.cache;
        for ch in charges {
            tb.uncharge(0, ch).unwrap();
            assert_eq!(c.check_invariants(), Ok(()));
        }
        assert_eq!(cache.foreign_bytes.load(Ordering::Relaxed), 20 * 64);
        // Still counted live until the slot returns them.
        assert_eq!(a.stats().stat.alloc_bytes, 20 * 64);

        cache.foreign_bytes.store(0, Ordering::Relaxed);
        assert!(violations(&c).contains("without bytes"));
        cache
            .foreign_bytes
            .store(crate::engine::TASK_CACHE_BOUND_BYTES, Ordering::Relaxed);
        assert!(violations(&c).contains("foreign slot"));
        cache.foreign_bytes.store(20 * 64, Ordering::Relaxed);
        assert_eq!(c.check_invariants(), Ok(()));

        tb.flush(0).unwrap();
        assert_eq!(cache.foreign_objcg.load(Ordering::Relaxed), 0);
        assert_eq!(a.stats().stat.alloc_bytes, 0);
        assert_eq!(c.check_invariants(), Ok(()));
    }

    /// Page charges in a row, each short of the cache's bytes, used to
    /// add up their remainders past the bound (found by the simulator's
    /// fuzzer once the checker looked at the bound).
    #[test]
    fn page_charges_in_a_row_keep_the_task_cache_under_its_bound() {
        let c = Controller::new(Topology::from_spec("1x1").unwrap());
        let g = c.create("g").unwrap();
        let t = c.new_task(&g).unwrap();
        // 4 pages charged, freed: the cache holds 16,384 bytes (its max).
        let first = t.charge(0, 16_000, ChargeKind::Alloc).unwrap();
        t.uncharge(0, first).unwrap();
        let mut held = Vec::new();
        // Each is more than the cache holds: pages, and a remainder.
        for bytes in [20_000, 16_865, 20_481] {
            held.push(t.charge(0, bytes, ChargeKind::Alloc).unwrap());
            assert_eq!(c.check_invariants(), Ok(()), "after a charge of {bytes}");
        }
        for ch in held {
            t.uncharge(0, ch).unwrap();
        }
        assert_eq!(c.check_invariants(), Ok(()));
    }

    #[test]
    fn check_invariants_leaked_byte_reports_conservation() {
        let (c, g, _t, _ch) = setup();
        c.inject_fault(Fault::LeakByte, &g);
        let v = violations(&c);
        assert!(v.contains("conservation broken"), "{v}");
        assert!(v.contains("group \"g\", node 0"), "{v}");
    }

    #[test]
    fn check_invariants_dropped_reference_reports_refcount() {
        let (c, g, _t, _ch) = setup();
        c.inject_fault(Fault::DropReference, &g);
        let v = violations(&c);
        assert!(v.contains("reference count"), "{v}");
    }

    #[test]
    fn check_invariants_stray_page_reports_usage_mismatch() {
        let (c, g, _t, _ch) = setup();
        c.inject_fault(Fault::StrayPage, &g);
        let v = violations(&c);
        assert!(v.contains("group \"g\": usage"), "{v}");
        assert!(v.contains("group \"\": usage"), "the root sees it too: {v}");
    }

    #[test]
    fn check_invariants_reference_dropped_twice_is_counted() {
        let (c, g, mut t, ch) = setup();
        c.inject_fault(Fault::DropReference, &g);
        t.uncharge(0, ch).unwrap();
        t.exit();
        g.remove().unwrap();
        c.drain_stocks();
        let v = violations(&c);
        assert!(v.contains("dropped more times than taken"), "{v}");
    }

    #[test]
    fn check_invariants_page_counter_underflow_is_reported() {
        let (c, g, _t, _ch) = setup();
        crate::engine::page_counter::uncharge(&**g.memcg(), 1_000_000);
        let v = violations(&c);
        assert!(v.contains("underflowed"), "{v}");
    }

    #[test]
    fn check_invariants_double_release_reports_the_free_list() {
        let (c, g, _t, _ch) = setup();
        assert!(c.check_invariants().is_ok());
        c.inject_fault(Fault::DoubleRelease, &g);
        let v = violations(&c);
        assert!(v.contains("free list: cycle or repeated entry"), "{v}");
        assert!(v.contains("is on the free list but in use"), "{v}");
    }

    #[test]
    fn check_invariants_free_list_is_clean_after_removal_and_reuse() {
        let (c, g, mut t, ch) = setup();
        t.uncharge(0, ch).unwrap();
        t.exit();
        g.remove().unwrap();
        c.drain_stocks();
        // The removed group's objcgs were released onto the free list and
        // are reused by the next groups.
        let a = c.create("a").unwrap();
        let b = c.create("b").unwrap();
        assert!(c.check_invariants().is_ok());
        a.remove().unwrap();
        b.remove().unwrap();
        c.drain_stocks();
        if let Err(v) = c.check_invariants() {
            panic!("{v}");
        }
    }
}
