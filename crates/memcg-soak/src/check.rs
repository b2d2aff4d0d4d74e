//! The quiescent point's checks, run by the coordinator while every
//! worker waits at the barrier: exact usage per group, reservations,
//! `memory.current` against the whole pages the live bytes need,
//! conservation between parents and children, and the library's
//! invariant checker.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use memcg::{Group, GroupStats, PAGE_SIZE};

use crate::block::Obj;
use crate::cli::InjectFault;
use crate::model::{lock, Failure, Shared};

/// How exact the `current-bound` check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CurrentMode {
    /// One node: one objcg per group, whose live bytes the soak knows, so
    /// `memory.current` must be exactly `Σ ceil(live / 4096)` pages over the
    /// objcgs of the subtree (its own and its removed descendants').
    Exact,
    /// Several nodes: which node's objcg a block was charged to depends on
    /// the CPU, so `memory.current` must lie in `[live, live + objcgs ×
    /// 4096)`, each objcg holding less than a page in its pool after a drain.
    Bound,
}

impl CurrentMode {
    /// For the process's controller.
    pub fn detect() -> CurrentMode {
        if memcg::controller().topology().nodes().count() == 1 {
            CurrentMode::Exact
        } else {
            CurrentMode::Bound
        }
    }

    /// For the summary.
    pub fn name(self) -> &'static str {
        match self {
            CurrentMode::Exact => "exact (1 node)",
            CurrentMode::Bound => "bounded (several nodes)",
        }
    }
}

fn fail<T>(check: &'static str, detail: String) -> Result<T, Failure> {
    Err(Failure { check, detail })
}

/// Runs every check at a quiescent point; returns how many passed, or the
/// first failure. `inject` is applied after the drain, before the checks.
///
/// # Errors
/// The failed check.
pub fn quiescent(
    sh: &Shared,
    mode: CurrentMode,
    inject: Option<InjectFault>,
) -> Result<u64, Failure> {
    let ctrl = memcg::controller();
    if !ctrl.wait_reclaim_idle(Duration::from_secs(10)) {
        return fail(
            "reclaim-idle",
            "the reclaimer threads were still busy after 10 s at a quiescent point".into(),
        );
    }
    let model = sh.model();
    // Callbacks free from the caches: holding every cache's lock keeps
    // them out while we count (a callback flushes before it unlocks).
    let caches: Vec<Arc<Mutex<Vec<Obj>>>> =
        model.groups.iter().map(|e| Arc::clone(&e.cache)).collect();
    let guards: Vec<MutexGuard<'_, Vec<Obj>>> = caches.iter().map(|c| lock(c)).collect();
    ctrl.drain_stocks();
    memcg::flush_current();
    let soak = model.groups[0]
        .group
        .clone()
        .expect("the soak group is online");
    match inject {
        Some(InjectFault::LeakByte) => ctrl.inject_fault(memcg::engine::Fault::LeakByte, &soak),
        Some(InjectFault::StrayPage) => ctrl.inject_fault(memcg::engine::Fault::StrayPage, &soak),
        _ => {}
    }

    // Bytes per raw id: (alloc, reservation).
    let flavor = sh.flavor();
    let n = model.groups.len();
    let mut raw = lock(&sh.tally).clone();
    raw.resize(n, (0, 0));
    for g in &guards {
        for o in g.iter() {
            raw[o.owner as usize].0 += flavor.charged_bytes(o.block.size_bytes());
        }
    }
    // Expected per online group: local and hierarchical alloc and
    // reservation bytes, and the exact pages of the objcgs of the subtree.
    let mut local = vec![(0u64, 0u64); n];
    let mut hier = vec![(0u64, 0u64); n];
    let mut pages = vec![0u64; n];
    for (r, &(a, res)) in raw.iter().enumerate() {
        let t = model.resolve(r as u32) as usize;
        local[t].0 += a;
        local[t].1 += res;
        let p = (a + res).div_ceil(PAGE_SIZE);
        let mut up = Some(t as u32);
        while let Some(u) = up {
            let u = u as usize;
            hier[u].0 += a;
            hier[u].1 += res;
            pages[u] += p;
            up = model.groups[u].parent;
        }
    }

    let mut passed = 0u64;
    let mut stats: Vec<(u32, Group, GroupStats)> = Vec::with_capacity(model.live.len());
    for &id in &model.live {
        let g = model.groups[id as usize].group.clone().expect("online");
        let s = g.stats();
        stats.push((id, g, s));
    }
    for (id, g, s) in &stats {
        let i = *id as usize;
        let path = g.path();
        if s.stat_local.alloc_bytes != local[i].0 || s.stat.alloc_bytes != hier[i].0 {
            return fail(
                "exact-usage",
                format!(
                    "group {path}: memory.stat alloc {} (local {}) but the soak holds {} (local {}) bytes charged to it",
                    s.stat.alloc_bytes, s.stat_local.alloc_bytes, hier[i].0, local[i].0
                ),
            );
        }
        passed += 1;
        if s.stat_local.reservation_bytes != local[i].1 || s.stat.reservation_bytes != hier[i].1 {
            return fail(
                "reservations",
                format!(
                    "group {path}: memory.stat reservation {} (local {}) but the soak holds reservations of {} (local {}) bytes",
                    s.stat.reservation_bytes, s.stat_local.reservation_bytes, hier[i].1, local[i].1
                ),
            );
        }
        passed += 1;
        let live = s.stat.alloc_bytes + s.stat.reservation_bytes + s.stat.runtime_bytes;
        match mode {
            CurrentMode::Exact => {
                let want = pages[i] * PAGE_SIZE;
                if s.current_bytes != want {
                    return fail(
                        "current-bound",
                        format!(
                            "group {path}: memory.current {} after a drain, but its objcgs' live bytes need exactly {want} ({} pages; live {live})",
                            s.current_bytes, pages[i]
                        ),
                    );
                }
            }
            CurrentMode::Bound => {
                let objcgs = g.error_bound().nr_objcgs;
                if s.current_bytes < live || s.current_bytes >= live + objcgs * PAGE_SIZE {
                    return fail(
                        "current-bound",
                        format!(
                            "group {path}: memory.current {} after a drain, outside [live {live}, live + {objcgs} objcgs × 4096)",
                            s.current_bytes
                        ),
                    );
                }
            }
        }
        passed += 1;
    }
    // Conservation: a group's hierarchical figures are its own plus its
    // online children's (removed children are folded into its own).
    for (id, g, s) in &stats {
        let children: Vec<&GroupStats> = stats
            .iter()
            .filter(|(c, _, _)| model.groups[*c as usize].parent == Some(*id))
            .map(|(_, _, cs)| cs)
            .collect();
        conserve(g.path(), s, &children)?;
        passed += 1;
    }
    drop(stats);
    drop(guards);
    drop(model);
    // Root: its own usage is the soak's bookkeeping, not predicted; it must
    // still be its own plus its children's. The coordinator's own
    // allocations between the reads may move it: retried.
    let root = ctrl.root();
    let mut last = None;
    for _ in 0..5 {
        let rs = root.stats();
        let children: Vec<GroupStats> = root.children().iter().map(Group::stats).collect();
        let refs: Vec<&GroupStats> = children.iter().collect();
        match conserve("root", &rs, &refs) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(f) => last = Some(f),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(f) = last {
        return Err(f);
    }
    passed += 1;
    invariants()?;
    passed += 1;
    // Debug builds of the library count allocations made under its locks
    // (release builds always report 0).
    let under_locks = memcg::allocations_under_engine_locks();
    if under_locks != 0 {
        return fail(
            "engine-lock-allocs",
            format!("{under_locks} allocations were made while an engine lock was held"),
        );
    }
    passed += 1;
    Ok(passed)
}

fn conserve(path: &str, s: &GroupStats, children: &[&GroupStats]) -> Result<(), Failure> {
    let sum = |f: fn(&GroupStats) -> u64| children.iter().map(|c| f(c)).sum::<u64>();
    let alloc = sum(|c| c.stat.alloc_bytes);
    let res = sum(|c| c.stat.reservation_bytes);
    let current = sum(|c| c.current_bytes);
    let path = if path.is_empty() { "root" } else { path };
    if s.stat.alloc_bytes != s.stat_local.alloc_bytes + alloc
        || s.stat.reservation_bytes != s.stat_local.reservation_bytes + res
        || s.current_bytes < current
    {
        return fail(
            "conservation",
            format!(
                "group {path}: alloc {} != local {} + children {alloc}, or reservation {} != local {} + children {res}, or memory.current {} < children's {current}",
                s.stat.alloc_bytes,
                s.stat_local.alloc_bytes,
                s.stat.reservation_bytes,
                s.stat_local.reservation_bytes,
                s.current_bytes
            ),
        );
    }
    Ok(())
}

/// The library's checker, retried a few times (a reclaimer thread may be
/// finishing a callback's last charge).
///
/// # Errors
/// The violations, if they persist.
pub fn invariants() -> Result<(), Failure> {
    let mut last = None;
    for _ in 0..5 {
        match memcg::check_invariants() {
            Ok(()) => return Ok(()),
            Err(v) => last = Some(v),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match last {
        Some(v) => fail("invariants", v.to_string().trim_end().to_string()),
        None => Ok(()),
    }
}
