//! A worker thread: rounds of random operations, each followed by the
//! quiescent point's barriers.
//!
//! Every worker stays attached to root between operations, so its
//! bookkeeping is charged to root. A tenant group is charged only by
//! blocks made in an operation's tenant context, which are allocated into
//! fixed arrays (no bookkeeping allocation inside that context) and then
//! recorded with their owner.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memcg::{FutureExt, Group, Reservation};

use crate::block::{Block, Obj};
use crate::cli::InjectFault;
use crate::exec::{block_on, yield_now};
use crate::fork::ForkOutcome;
use crate::model::{lock, Op, Shared, SOAK};
use crate::rng::Rng;

mod groups;

/// Reclaim callback runs and the bytes they freed (callbacks are
/// `'static`, so these live outside [`Shared`]).
pub static RECLAIM_RUNS: AtomicU64 = AtomicU64::new(0);
/// Bytes freed by reclaim callbacks.
pub static RECLAIM_FREED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Kill callbacks run.
pub static KILL_CALLBACKS: AtomicU64 = AtomicU64::new(0);

/// Most blocks in one group's reclaimable cache.
const CACHE_CAP: usize = 512;
/// Most blocks one worker keeps.
const LIVE_CAP: usize = 4000;
/// Most reservations one worker keeps.
const RESERVATIONS_CAP: usize = 6;
/// Deepest group below the soak group.
const MAX_DEPTH: u32 = 3;

struct Worker<'a> {
    sh: &'a Shared,
    idx: usize,
    rng: Rng,
    live: Vec<Obj>,
    live_bytes: u64,
    reservations: Vec<(Reservation, u32)>,
    /// Charged bytes the worker reports twice (`--inject-fault double-count`).
    double_counted: u64,
}

/// Runs worker `idx` until the coordinator stops the rounds.
pub fn run(sh: &Shared, idx: usize) {
    lock(&sh.handles)[idx] = memcg::current_thread().ok();
    let mut w = Worker {
        sh,
        idx,
        rng: Rng::new(sh.cfg.seed, idx as u64 + 1),
        live: Vec::with_capacity(LIVE_CAP + 8),
        live_bytes: 0,
        reservations: Vec::with_capacity(RESERVATIONS_CAP + 1),
        double_counted: 0,
    };
    if idx == 0 {
        w.inject();
    }
    loop {
        let attached = lock(&sh.attached_by_coordinator)[idx].take();
        if let Some(id) = attached {
            w.guarded(|w| w.burst_attached_by_coordinator(id));
        }
        for _ in 0..sh.cfg.check_every {
            if sh.stop.load(Ordering::SeqCst) {
                break;
            }
            if !w.guarded(Worker::step) {
                break;
            }
        }
        sh.barrier.wait();
        // Quiescent: nobody sends any more. Free what was handed over,
        // flush this thread's caches and statistics, report what is held.
        let inbox = std::mem::take(&mut *lock(&sh.inboxes[idx]));
        drop(inbox);
        memcg::flush_current();
        w.post_tally();
        sh.barrier.wait();
        // The coordinator checks.
        sh.barrier.wait();
        if sh.stop.load(Ordering::SeqCst) {
            break;
        }
    }
    w.live.clear();
    w.reservations.clear();
    drop(std::mem::take(&mut *lock(&sh.inboxes[idx])));
    memcg::flush_current();
}

impl<'a> Worker<'a> {
    /// Runs `f`, turning a panic into a `worker-panic` failure; returns
    /// whether it returned normally.
    fn guarded(&mut self, f: impl FnOnce(&mut Self)) -> bool {
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(()) => true,
            Err(e) => {
                let msg = e
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| e.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                self.sh.fail(
                    "worker-panic",
                    format!("worker {} panicked: {msg}", self.idx),
                );
                false
            }
        }
    }

    /// `--inject-fault` faults made by a worker (worker 0, before its first
    /// operation).
    fn inject(&mut self) {
        match self.sh.cfg.inject {
            Some(InjectFault::Mistrack) => {
                let soak = self.group_of(SOAK).expect("the soak group is online");
                soak.attach_current().expect("attach to the soak group");
                let leaked = Block::alloc(1000, 8, false);
                self.attach_root();
                std::mem::forget(leaked);
            }
            Some(InjectFault::DoubleCount) => {
                let soak = self.group_of(SOAK).expect("the soak group is online");
                let b = {
                    let _s = soak.enter().expect("enter the soak group");
                    Block::alloc(1000, 8, false)
                };
                let b = b.expect("an unlimited group never refuses");
                self.double_counted = self.sh.flavor().charged_bytes(b.size_bytes());
                self.keep(b, SOAK);
            }
            _ => {}
        }
    }

    fn step(&mut self) {
        let cfg = &self.sh.cfg;
        if cfg.worker_forks && self.rng.below(cfg.fork_every) == 0 {
            return self.fork();
        }
        if self.rng.below(2000) == 0 {
            return self.thread();
        }
        if self.rng.chance(5) {
            self.process_inbox();
        }
        let full = self.live_bytes > cfg.max_live_bytes || self.live.len() >= LIVE_CAP;
        let r = self.rng.below(1000);
        match r {
            _ if full && r < 600 => self.free(),
            0..=179 => self.alloc_attached(),
            180..=299 => self.alloc_scope(),
            300..=349 => self.alloc_future(),
            350..=499 => self.free(),
            500..=579 => self.hand_off(),
            580..=669 => self.realloc(),
            670..=689 => self.create(),
            690..=699 => self.remove(),
            700..=729 => self.limit(),
            730..=739 => self.policy(),
            740..=769 => self.fallible(),
            770..=809 => self.reserve(),
            810..=849 => self.spend(),
            850..=919 => self.cache_insert(),
            920..=949 => self.cache_free(),
            950..=969 => self.revive(),
            _ => self.free(),
        }
    }

    // ----- helpers -----

    /// Holds off removals. A block allocated in a scope (or `InGroup`
    /// future) of a group removed meanwhile is charged to the parent's
    /// objcg, not the group's: its group would still resolve right, but
    /// the exact `memory.current` check counts pages per objcg.
    fn no_removal(&self) -> std::sync::RwLockReadGuard<'a, ()> {
        self.sh.removal.read().unwrap_or_else(|e| e.into_inner())
    }

    fn attach_root(&self) {
        self.sh
            .root
            .attach_current()
            .expect("attaching to root never fails");
    }

    fn group_of(&self, id: u32) -> Option<Group> {
        self.sh.model().groups[id as usize].group.clone()
    }

    /// A random online group (the soak group included if `soak`).
    fn pick(&mut self, soak: bool) -> Option<(u32, Group)> {
        let m = self.sh.model();
        let n = m.live.len() as u64;
        let first = if soak { 0 } else { 1 };
        if n <= first {
            return None;
        }
        // `live[0]` is the soak group.
        let id = m.live[(first + self.rng.below(n - first)) as usize];
        Some((id, m.groups[id as usize].group.clone()?))
    }

    /// A block size: mostly small, some medium, a few large and huge.
    fn size(&mut self) -> usize {
        let r = self.rng.below(1000);
        (match r {
            0..=599 => self.rng.range(1, 256),
            600..=849 => self.rng.range(257, 4096),
            850..=969 => self.rng.range(4097, 64 << 10),
            970..=997 => self.rng.range((64 << 10) + 1, 1 << 20),
            _ => self.rng.range(1 << 20, 4 << 20),
        }) as usize
    }

    fn align(&mut self) -> usize {
        match self.rng.below(100) {
            0..=39 => 1,
            40..=79 => 8,
            80..=89 => 16,
            90..=97 => 64,
            _ => 4096,
        }
    }

    fn new_block(&mut self) -> (usize, usize, bool) {
        let (s, a) = (self.size(), self.align());
        (s, a, self.rng.chance(20))
    }

    fn keep(&mut self, block: Block, owner: u32) {
        self.live_bytes += self.sh.flavor().charged_bytes(block.size_bytes());
        self.live.push(Obj { block, owner });
    }

    /// Records blocks made for `owner`; a `None` is a refusal.
    fn keep_all<const N: usize>(&mut self, got: [Option<Block>; N], tried: usize, owner: u32) {
        for b in got.into_iter().take(tried) {
            match b {
                Some(b) => self.keep(b, owner),
                None => self.refused(owner, false, "allocation"),
            }
        }
    }

    fn take_live(&mut self, i: usize) -> Obj {
        let o = self.live.swap_remove(i);
        self.live_bytes -= self.sh.flavor().charged_bytes(o.block.size_bytes());
        o
    }

    /// An allocation (or growth, or explicit charge) charged to `owner` was
    /// refused: that needs a byte limit in the chain, and the `Fail` policy
    /// or a fallible region (or an explicit charge).
    fn refused(&self, owner: u32, fallible: bool, what: &str) {
        self.sh.counters.refused.fetch_add(1, Ordering::Relaxed);
        let (limited, fail) = self.sh.model().chain_flags(owner);
        if !limited || !(fail || fallible) {
            let path = self.sh.model().groups[owner as usize]
                .group
                .as_ref()
                .map_or_else(|| format!("(removed g{owner})"), |g| g.path().to_string());
            self.sh.fail(
                "refusal",
                format!(
                    "{what} charged to {path} refused without a cause (limit ever set in the chain: {limited}, fail policy ever: {fail}, fallible region: {fallible})"
                ),
            );
        }
    }

    // ----- operations -----

    /// Attach to a group, allocate a burst, attach back to root.
    fn alloc_attached(&mut self) {
        self.sh.counters.op(Op::AllocAttached);
        let Some((id, g)) = self.pick(true) else {
            return;
        };
        let n = self.rng.range(1, 4) as usize;
        let spec: [(usize, usize, bool); 4] = std::array::from_fn(|_| self.new_block());
        self.live.reserve(4);
        if g.attach_current().is_err() {
            return; // removed meanwhile
        }
        let mut got: [Option<Block>; 4] = Default::default();
        for (slot, &(s, a, z)) in got.iter_mut().zip(&spec).take(n) {
            *slot = Block::alloc(s, a, z);
        }
        // A free while attached to a tenant uncharges the block's own
        // group (removing from `live` does not allocate).
        if !self.live.is_empty() && self.rng.chance(30) {
            let i = self.rng.below(self.live.len() as u64) as usize;
            drop(self.take_live(i));
        }
        self.attach_root();
        self.keep_all(got, n, id);
    }

    /// The coordinator attached this worker to `id` at the quiescent point:
    /// allocate there, then attach back to root.
    fn burst_attached_by_coordinator(&mut self, id: u32) {
        let spec: [(usize, usize, bool); 3] = std::array::from_fn(|_| self.new_block());
        let mut got: [Option<Block>; 3] = Default::default();
        for (slot, &(s, a, z)) in got.iter_mut().zip(&spec) {
            *slot = Block::alloc(s, a, z);
        }
        self.attach_root();
        self.keep_all(got, 3, id);
    }

    /// Allocate in a scope, sometimes with a nested scope of another group.
    fn alloc_scope(&mut self) {
        self.sh.counters.op(Op::AllocScope);
        let nested = self.rng.chance(30);
        let (outer_spec, inner_spec) = (self.new_block(), self.new_block());
        self.live.reserve(2);
        // No removal while the scopes are entered (see `no_removal`); the
        // inner `enter` then cannot fail inside the outer scope either (its
        // error would be allocated there).
        let _no_removal = self.no_removal();
        let Some((id, g)) = self.pick(true) else {
            return;
        };
        let inner = if nested { self.pick(true) } else { None };
        let Ok(scope) = g.enter() else {
            return;
        };
        let mut inner_block = None;
        if let Some((_, g2)) = &inner {
            if let Ok(s2) = g2.enter() {
                let (s, a, z) = inner_spec;
                inner_block = Some(Block::alloc(s, a, z));
                drop(s2);
            }
        }
        let (s, a, z) = outer_spec;
        let outer_block = Block::alloc(s, a, z);
        drop(scope);
        self.keep_all([outer_block], 1, id);
        if let (Some((id2, _)), Some(b)) = (inner, inner_block) {
            self.keep_all([b], 1, id2);
        }
    }

    /// Allocate in a killable `InGroup` future that yields once between
    /// its two allocations.
    fn alloc_future(&mut self) {
        self.sh.counters.op(Op::Future);
        let _no_removal = self.no_removal();
        let Some((id, g)) = self.pick(true) else {
            return;
        };
        let ((s1, a1, z1), (s2, a2, z2)) = (self.new_block(), self.new_block());
        self.live.reserve(2);
        let fut = async move {
            let a = Block::alloc(s1, a1, z1);
            yield_now().await;
            let b = Block::alloc(s2, a2, z2);
            [a, b]
        };
        let Ok(fut) = fut.in_group(&g) else {
            return;
        };
        let fut = fut.killable();
        let result = if self.rng.chance(30) {
            // First poll here (it stops at the yield), the rest on another
            // thread: each poll charges the group wherever it runs.
            let mut fut = Box::pin(fut);
            match fut
                .as_mut()
                .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
            {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => {
                    let finish = move || {
                        let r = block_on(fut);
                        // Statistics reach the group before the scope
                        // returns (not only at the thread's exit).
                        memcg::flush_current();
                        r
                    };
                    match std::thread::scope(|s| s.spawn(finish).join()) {
                        Ok(r) => r,
                        Err(_) => {
                            return self
                                .sh
                                .fail("worker-panic", "a future's polling thread panicked".into())
                        }
                    }
                }
            }
        } else {
            block_on(fut)
        };
        match result {
            Ok(got) => self.keep_all(got, 2, id),
            Err(killed) => {
                self.sh
                    .counters
                    .futures_killed
                    .fetch_add(1, Ordering::Relaxed);
                let (limited, _) = self.sh.model().chain_flags(id);
                if !limited {
                    self.sh.fail(
                        "kill",
                        format!(
                            "future in {} ended with `{killed}` but no limit was ever set in its chain",
                            g.path()
                        ),
                    );
                }
            }
        }
    }

    fn free(&mut self) {
        self.sh.counters.op(Op::Free);
        if !self.live.is_empty() {
            let i = self.rng.below(self.live.len() as u64) as usize;
            drop(self.take_live(i));
        }
    }

    /// Hand a block to another worker (who frees or adopts it).
    fn hand_off(&mut self) {
        self.sh.counters.op(Op::HandOff);
        if self.live.is_empty() {
            return;
        }
        let i = self.rng.below(self.live.len() as u64) as usize;
        let o = self.take_live(i);
        let n = self.sh.cfg.threads;
        let to = (self.idx + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        lock(&self.sh.inboxes[to]).push(o);
    }

    /// Free half of what was handed over (often in another group's scope:
    /// a free uncharges the block's group whoever frees it), adopt the
    /// rest.
    fn process_inbox(&mut self) {
        let inbox = std::mem::take(&mut *lock(&self.sh.inboxes[self.idx]));
        self.live.reserve(inbox.len());
        let mut freed: Vec<Obj> = Vec::with_capacity(inbox.len());
        for o in inbox {
            if self.rng.chance(50) {
                freed.push(o);
            } else {
                self.keep(o.block, o.owner);
            }
        }
        let scope = if self.rng.chance(60) {
            self.pick(true).and_then(|(_, g)| g.enter().ok())
        } else {
            None
        };
        // Dropping the blocks frees; the vector's own buffer (root's) is
        // freed too, which allocates nothing.
        drop(freed);
        drop(scope);
    }

    /// Grow or shrink a block, plainly, in another group's scope (the block
    /// keeps its group) or in a fallible region.
    fn realloc(&mut self) {
        self.sh.counters.op(Op::Realloc);
        if self.live.is_empty() {
            return;
        }
        let i = self.rng.below(self.live.len() as u64) as usize;
        let old = self.live[i].block.size_bytes();
        let new = if self.rng.chance(50) {
            (old * self.rng.range(2, 4) as usize).min(2 << 20) + self.rng.below(64) as usize
        } else {
            (old / self.rng.range(2, 4) as usize).max(1)
        };
        let how = self.rng.below(100);
        let scope_group = if (70..85).contains(&how) {
            self.pick(true)
        } else {
            None
        };
        let flavor = self.sh.flavor();
        let before = flavor.charged_bytes(old);
        let owner = self.live[i].owner;
        let block = &mut self.live[i].block;
        let ok = match (how, scope_group) {
            (85.., _) => memcg::fallible(|| block.realloc(new)),
            (_, Some((_, g))) => match g.enter() {
                Ok(_s) => block.realloc(new),
                Err(_) => block.realloc(new),
            },
            _ => block.realloc(new),
        };
        let after = flavor.charged_bytes(block.size_bytes());
        self.live_bytes = self.live_bytes - before + after;
        if !ok {
            self.refused(owner, how >= 85, "realloc");
        }
    }

    /// A (often large) allocation in a fallible region in a group's scope.
    fn fallible(&mut self) {
        self.sh.counters.op(Op::Fallible);
        let _no_removal = self.no_removal();
        let Some((id, g)) = self.pick(true) else {
            return;
        };
        let size = if self.rng.chance(50) {
            self.size()
        } else {
            self.rng.range(256 << 10, 4 << 20) as usize
        };
        self.live.reserve(1);
        let Ok(scope) = g.enter() else {
            return;
        };
        let b = memcg::fallible(|| Block::alloc(size, 8, false));
        drop(scope);
        match b {
            Some(b) => self.keep(b, id),
            None => self.refused(id, true, "fallible allocation"),
        }
    }

    /// Allocate paid from a reservation: only while it has bytes left, so
    /// each block is charged to the reservation's objcg (a block made once
    /// it is spent out would be charged to the thread's group, root).
    fn spend(&mut self) {
        self.sh.counters.op(Op::Spend);
        if self.reservations.is_empty() {
            return;
        }
        let i = self.rng.below(self.reservations.len() as u64) as usize;
        let n = self.rng.range(1, 3) as usize;
        let spec: [(usize, usize, bool); 3] = std::array::from_fn(|_| self.new_block());
        self.live.reserve(3);
        let flavor = self.sh.flavor();
        let (res, owner) = &mut self.reservations[i];
        let owner = *owner;
        let mut left = res.bytes();
        let mut got: [Option<Block>; 3] = Default::default();
        let mut tried = 0;
        {
            let Ok(_spend) = res.spend() else {
                return;
            };
            for (slot, &(s, a, z)) in got.iter_mut().zip(&spec).take(n) {
                if left == 0 {
                    break;
                }
                *slot = Block::alloc(s, a, z);
                tried += 1;
                left = left.saturating_sub(flavor.charged_bytes(s));
            }
        }
        self.keep_all(got, tried, owner);
    }

    /// Put a block in a group's reclaimable cache (its reclaim callback, if
    /// any, frees from there).
    fn cache_insert(&mut self) {
        self.sh.counters.op(Op::CacheInsert);
        let _no_removal = self.no_removal();
        let Some((id, g)) = self.pick(false) else {
            return;
        };
        let cache = Arc::clone(&self.sh.model().groups[id as usize].cache);
        let size = self.rng.range(16, 32 << 10) as usize;
        let Ok(scope) = g.enter() else {
            return;
        };
        let b = Block::alloc(size, 8, false);
        drop(scope);
        let Some(b) = b else {
            return self.refused(id, false, "cache allocation");
        };
        let evicted = {
            let mut c = lock(&cache);
            let evicted = (c.len() >= CACHE_CAP).then(|| c.swap_remove(0));
            c.push(Obj {
                block: b,
                owner: id,
            });
            evicted
        };
        drop(evicted);
    }

    /// Free a block of some group's cache, as an eviction would.
    fn cache_free(&mut self) {
        self.sh.counters.op(Op::CacheFree);
        let cache = {
            let m = self.sh.model();
            let id = m.live[self.rng.below(m.live.len() as u64) as usize];
            Arc::clone(&m.groups[id as usize].cache)
        };
        let o = lock(&cache).pop();
        drop(o);
    }

    /// Start a thread that attaches to a group, allocates, hands a block to
    /// a worker, gives the rest back and exits.
    fn thread(&mut self) {
        self.sh.counters.op(Op::Thread);
        let Some((id, g)) = self.pick(true) else {
            return;
        };
        let spec: [(usize, usize, bool); 3] = std::array::from_fn(|_| self.new_block());
        let n = self.sh.cfg.threads;
        let to = self.rng.below(n as u64) as usize;
        let sh = self.sh;
        let got = std::thread::scope(|s| {
            let h = s.spawn(|| {
                // A plain thread starts in root.
                let mut got: [Option<Block>; 3] = Default::default();
                if g.attach_current().is_err() {
                    return (got, 0, false);
                }
                for (slot, &(s, a, z)) in got.iter_mut().zip(&spec) {
                    *slot = Block::alloc(s, a, z);
                }
                sh.root.attach_current().expect("attach to root");
                let handed = got[0].take().map(|b| {
                    lock(&sh.inboxes[to]).push(Obj {
                        block: b,
                        owner: id,
                    });
                });
                // Statistics reach the group before the scope returns.
                memcg::flush_current();
                (got, 3, handed.is_some())
            });
            h.join()
        });
        self.sh.counters.threads.fetch_add(1, Ordering::Relaxed);
        match got {
            Ok((got, tried, handed)) => {
                self.live.reserve(3);
                let got: [Option<Block>; 3] = got;
                for (k, b) in got.into_iter().enumerate().take(tried) {
                    match b {
                        Some(b) => self.keep(b, id),
                        None if k == 0 && handed => {}
                        None => self.refused(id, false, "allocation on a new thread"),
                    }
                }
            }
            Err(_) => self
                .sh
                .fail("worker-panic", "a started thread panicked".into()),
        }
    }

    fn fork(&mut self) {
        self.sh.counters.op(Op::Fork);
        let n = self.sh.counters.ops[Op::Fork as usize].load(Ordering::Relaxed);
        match crate::fork::run(
            self.sh.flavor(),
            self.sh.cfg.fork_timeout,
            n,
            self.sh.cfg.inject == Some(InjectFault::ForkHang),
        ) {
            Ok(ForkOutcome::Ok) => {
                self.sh.counters.forks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(ForkOutcome::Invariants) => {
                self.sh
                    .counters
                    .fork_invariants
                    .fetch_add(1, Ordering::Relaxed);
                if self.sh.cfg.strict_fork {
                    self.sh.fail(
                        "fork-invariants",
                        format!("fork #{n} from a running worker: the library's invariants failed in the child (rerun with MEMCG_SOAK_VERBOSE=1 to see them)"),
                    );
                }
            }
            Err(e) => self.sh.fail("fork", e),
        }
    }

    /// Adds this worker's blocks and reservations to the tally, by owner.
    fn post_tally(&mut self) {
        let flavor = self.sh.flavor();
        let mut t = lock(&self.sh.tally);
        let len = self.sh.model().groups.len();
        if t.len() < len {
            t.resize(len, (0, 0));
        }
        for o in &self.live {
            t[o.owner as usize].0 += flavor.charged_bytes(o.block.size_bytes());
        }
        for (r, owner) in &self.reservations {
            t[*owner as usize].1 += r.bytes();
        }
        t[SOAK as usize].0 += self.double_counted;
    }
}
