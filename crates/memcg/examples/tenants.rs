//! A multi-tenant key-value cache service on memcg, with the recommended
//! limit setup, and one tenant that over-commits and is killed.
//!
//! Every allocation of the process is charged through `MemcgAlloc`, and
//! every allocation is infallible (`String`, `Vec`, `HashMap`). Three
//! tenants, each a group under `tenants/` with a `max` limit and a `high`
//! limit at about 85% of it (the recommended setup: over `high` a charge
//! goes through and the controller's reclaimer thread evicts the excess,
//! so a well-behaved tenant never meets `max`, where allocations would
//! wait for reclaim):
//!
//! - each tenant has a cache (`HashMap` + LRU order) behind a
//!   `std::sync::Mutex`; a miss builds the value and inserts it while
//!   holding the lock, so the allocations happen under the lock;
//! - each tenant's reclaim callback takes that same lock, on the reclaimer
//!   thread, and evicts least recently used entries;
//! - requests come from one worker thread per tenant (each request in a
//!   `Group::enter` scope) and from two async clients per tenant on a tokio
//!   runtime (`fut.in_group(&g).killable()`);
//! - after a while the tenant `greedy` starts an import of big entries that
//!   it pins (its callback cannot evict them): it passes `high`, then
//!   `max`, and its OOM policy (the default, `kill`) forces the charge and
//!   kills the group. The kill callback (`on_oom_kill`) prints a line, its
//!   async clients end with `OomKilled`, its worker sees `is_killed()`; the
//!   service stops its work, frees its cache and removes its group, while
//!   `alpha` and `beta` keep serving.
//!
//! A table of per-tenant, per-node usage and events is printed every
//! 200 ms. At the end every tenant is removed, usage is back to zero and the
//! controller's invariants hold. The exit status is non-zero if anything
//! went wrong (a well-behaved tenant was killed, `greedy` was not, usage did
//! not return to zero, an invariant failed).
//!
//! Run: `cargo run --release -p memcg --example tenants --features tokio,prometheus-client,mimalloc`
//! On a one-node machine, try `MEMCG_TOPOLOGY=2x1` to see two nodes.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memcg::{FutureExt, Group, MemcgAlloc, OomKillHandle, ReclaimReason, ReclaimerHandle};

#[global_allocator]
static ALLOC: MemcgAlloc<memcg::PlainMimalloc> = MemcgAlloc::new(memcg::PlainMimalloc);

/// How long the well-behaved tenants serve.
const RUN_FOR: Duration = Duration::from_millis(2500);
/// When `greedy` starts its import.
const IMPORT_AT: Duration = Duration::from_millis(700);
/// How often the table is printed.
const TABLE_EVERY: Duration = Duration::from_millis(200);
/// A worker thread's pause between requests.
const WORKER_PAUSE: Duration = Duration::from_micros(100);
/// An async client's pause between requests.
const CLIENT_PAUSE: Duration = Duration::from_millis(1);
/// Size of one entry of `greedy`'s import.
const IMPORT_VALUE_BYTES: usize = 64 << 10;
/// What an entry costs beyond its key and value bytes (map slot, LRU index
/// node, allocator trailers): an estimate, for the bytes a callback reports.
const ENTRY_OVERHEAD_BYTES: u64 = 96;
/// The least a reclaim pass evicts: a charge batch (64 pages), so that one
/// pass makes room for more than the charge that asked for it.
const EVICT_AT_LEAST_BYTES: u64 = 256 << 10;

struct Spec {
    name: &'static str,
    max: &'static str,
    high: &'static str,
    /// Distinct keys its clients ask for (more than fit under `high`).
    keys: u64,
    /// Imports pinned entries from `IMPORT_AT` on.
    greedy: bool,
}

const SPECS: [Spec; 3] = [
    Spec {
        name: "alpha",
        max: "24M",
        high: "20M",
        keys: 4_500,
        greedy: false,
    },
    Spec {
        name: "beta",
        max: "32M",
        high: "27M",
        keys: 6_000,
        greedy: false,
    },
    Spec {
        name: "greedy",
        max: "16M",
        high: "14M",
        keys: 3_000,
        greedy: true,
    },
];

// ---------------------------------------------------------------------------
// The cache: a map with an LRU order; pinned entries are not in the order,
// so eviction never takes them.

struct Entry {
    value: Vec<u8>,
    /// Position in the LRU order; `None` for a pinned entry.
    tick: Option<u64>,
}

#[derive(Default)]
struct Lru {
    map: HashMap<String, Entry>,
    order: BTreeMap<u64, String>,
    next_tick: u64,
}

fn entry_bytes(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64 + ENTRY_OVERHEAD_BYTES
}

impl Lru {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// A copy of the value (the response), marking the entry recently used.
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        let tick = self.tick();
        let entry = self.map.get_mut(key)?;
        if let Some(old) = entry.tick {
            entry.tick = Some(tick);
            if let Some(k) = self.order.remove(&old) {
                self.order.insert(tick, k);
            }
        }
        Some(entry.value.clone())
    }

    fn insert(&mut self, key: String, value: Vec<u8>, pinned: bool) {
        let tick = (!pinned).then(|| self.tick());
        if let Some(t) = tick {
            self.order.insert(t, key.clone());
        }
        if let Some(old) = self.map.insert(key, Entry { value, tick }) {
            if let Some(t) = old.tick {
                self.order.remove(&t);
            }
        }
    }

    /// Evicts least recently used entries until `want_bytes` are freed (or
    /// only pinned entries are left); returns the bytes freed.
    fn evict(&mut self, want_bytes: u64) -> u64 {
        let mut freed = 0;
        while freed < want_bytes {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&key) {
                freed += entry_bytes(&key, &e.value);
            }
        }
        freed
    }

    fn clear(&mut self) {
        *self = Lru::default();
    }
}

#[derive(Default)]
struct Cache(Mutex<Lru>);

impl Cache {
    fn lock(&self) -> MutexGuard<'_, Lru> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// ---------------------------------------------------------------------------
// Tenants.

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    hits: AtomicU64,
    imported: AtomicU64,
    high_passes: AtomicU64,
    max_passes: AtomicU64,
    evicted_bytes: AtomicU64,
    kill_callbacks: AtomicU64,
}

struct Tenant {
    spec: &'static Spec,
    group: Group,
    cache: Cache,
    counters: Counters,
    start: Instant,
}

/// Keeps a tenant's callbacks registered.
struct Callbacks {
    _reclaim: ReclaimerHandle,
    _kill: OomKillHandle,
}

fn elapsed(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

impl Tenant {
    fn new(
        parent: &Group,
        spec: &'static Spec,
        start: Instant,
    ) -> Result<(Arc<Tenant>, Callbacks), memcg::Error> {
        let group = parent.create_child(spec.name)?;
        group.set_max(spec.max.parse()?)?;
        group.set_high(spec.high.parse()?)?;
        let tenant = Arc::new(Tenant {
            spec,
            group,
            cache: Cache::default(),
            counters: Counters::default(),
            start,
        });
        // On the reclaimer thread: take the lock that inserts allocate
        // under, and evict. A charge waiting for this callback holds no
        // engine lock, so the worst a busy lock does is delay that charge.
        let t = Arc::clone(&tenant);
        let reclaim = tenant.group.register_reclaimer(move |req| {
            let passes = match req.reason {
                ReclaimReason::Max => &t.counters.max_passes,
                _ => &t.counters.high_passes,
            };
            passes.fetch_add(1, Ordering::Relaxed);
            let freed = t
                .cache
                .lock()
                .evict(req.wanted_bytes.max(EVICT_AT_LEAST_BYTES));
            t.counters.evicted_bytes.fetch_add(freed, Ordering::Relaxed);
            freed
        });
        // Also on the reclaimer thread, once, when the group is killed.
        let t = Arc::clone(&tenant);
        let kill = tenant.group.on_oom_kill(move |k| {
            t.counters.kill_callbacks.fetch_add(1, Ordering::Relaxed);
            println!(
                "{:>6.2}s  on_oom_kill({}): {k}",
                elapsed(t.start),
                t.spec.name
            );
        });
        Ok((
            tenant,
            Callbacks {
                _reclaim: reclaim,
                _kill: kill,
            },
        ))
    }

    fn importing(&self) -> bool {
        self.spec.greedy && self.start.elapsed() >= IMPORT_AT
    }

    /// One request, in the tenant's group: a lookup, and on a miss the
    /// value is built and inserted while the cache's lock is held. While
    /// importing, `greedy` inserts a big pinned entry every few requests.
    fn request(&self, rng: &mut Rng, n: u64, import_every: u64) {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if self.importing() && n.is_multiple_of(import_every) {
            let id = self.counters.imported.fetch_add(1, Ordering::Relaxed);
            let mut cache = self.cache.lock();
            let key = format!("{}:import:{id}", self.spec.name);
            let value = vec![(id % 251) as u8; IMPORT_VALUE_BYTES];
            cache.insert(key, value, true);
            return;
        }
        let k = rng.below(self.spec.keys);
        let mut cache = self.cache.lock();
        let key = format!("{}:{k}", self.spec.name);
        match cache.get(&key) {
            Some(response) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                drop(response);
            }
            None => {
                let len = 2048 + (k.wrapping_mul(0x9e37_79b9) % 8) as usize * 2048;
                let value = vec![(k % 251) as u8; len];
                cache.insert(key, value, false);
            }
        }
    }
}

/// xorshift64*: a small deterministic generator for request keys.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)
    }

    /// A generator for a spawned request, advancing this one.
    fn fork(&mut self) -> Rng {
        Rng::new(self.below(u64::MAX))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The service stopped it (end of the run).
    Stopped,
    /// Its group was killed.
    Killed,
}

/// A worker thread: serves the tenant's requests, each in a scope of its
/// group, until the run ends or the group is killed.
fn worker(t: Arc<Tenant>, stop: Arc<AtomicBool>, seed: u64) -> (Ended, u64) {
    let mut rng = Rng::new(seed);
    let mut n = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return (Ended::Stopped, n);
        }
        // A cooperative tenant checks at each request: once killed, its
        // allocations are forced past `max`, so it must stop on its own.
        if t.group.is_killed() {
            println!(
                "{:>6.2}s  {} worker thread: is_killed() after {n} requests, stopping",
                elapsed(t.start),
                t.spec.name
            );
            return (Ended::Killed, n);
        }
        {
            let Ok(_scope) = t.group.enter() else {
                return (Ended::Stopped, n);
            };
            t.request(&mut rng, n, 8);
        }
        n += 1;
        std::thread::sleep(WORKER_PAUSE);
    }
}

/// An async client: requests with a pause between them. Run inside
/// `in_group(..).killable()`, so it also stops at its first poll after a
/// kill.
async fn client(t: Arc<Tenant>, stop: Arc<AtomicBool>, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        // Each request runs as a task of its own: `memcg::tokio::spawn`
        // keeps it in this client's tenant (a plain `tokio::spawn` would
        // charge the worker's group, root).
        let (t2, mut r) = (Arc::clone(&t), rng.fork());
        match memcg::tokio::spawn(async move { t2.request(&mut r, n, 4) }).await {
            Ok(()) => {}
            Err(_) => break,
        }
        n += 1;
        tokio::time::sleep(CLIENT_PAUSE).await;
    }
    n
}

// ---------------------------------------------------------------------------
// Output.

fn mib(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / (1 << 20) as f64)
}

fn print_header() {
    println!();
    println!(
        "{:51}{:<23}{:<29}cache",
        "", "memory.numa_stat", "memory.events"
    );
    println!(
        "{:>7}  {:<7} {:<8} {:>7} {:>7} {:>7}  {:<4} {:>7} {:>7} | {:>6} {:>5} {:>4} {:>8} | {:>7} {:>8}",
        "time", "tenant", "state", "current", "high", "max", "node", "kernel", "alloc", "high",
        "max", "oom", "oom_kill", "entries", "evicted"
    );
}

fn print_table(tenants: &[Arc<Tenant>], removed: &[bool], start: Instant) {
    println!();
    let time = format!("{:.2}s", elapsed(start));
    for (i, t) in tenants.iter().enumerate() {
        let time = if i == 0 { time.as_str() } else { "" };
        if removed[i] {
            println!("{time:>7}  {:<7} removed", t.spec.name);
            continue;
        }
        let s = t.group.stats();
        let state = if t.group.is_killed() {
            "KILLED"
        } else if t.importing() {
            "import"
        } else {
            "serving"
        };
        let limit = |l: memcg::Limit| l.to_bytes().map_or("max".to_string(), mib);
        let entries = t.cache.lock().map.len();
        for (n, node) in s.numa.iter().enumerate() {
            let node_cols = format!(
                "{:<4} {:>7} {:>7}",
                format!("N{}", node.node),
                mib(node.hierarchical.kernel_bytes),
                mib(node.hierarchical.alloc_bytes)
            );
            if n == 0 {
                println!(
                    "{time:>7}  {:<7} {:<8} {:>7} {:>7} {:>7}  {node_cols} | {:>6} {:>5} {:>4} {:>8} | {:>7} {:>8}",
                    t.spec.name,
                    state,
                    mib(s.current_bytes),
                    limit(s.high),
                    limit(s.max),
                    s.events.high,
                    s.events.max,
                    s.events.oom,
                    s.events.oom_kill,
                    entries,
                    mib(t.counters.evicted_bytes.load(Ordering::Relaxed)),
                );
            } else {
                println!(
                    "{:>7}  {:<7} {:<8} {:>7} {:>7} {:>7}  {node_cols} |",
                    "", "", "", "", "", ""
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------

fn main() -> ExitCode {
    match run() {
        Ok(problems) if problems.is_empty() => {
            println!("\nok");
            ExitCode::SUCCESS
        }
        Ok(problems) => {
            for p in &problems {
                eprintln!("tenants: {p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("tenants: {e}");
            ExitCode::FAILURE
        }
    }
}

type ClientHandle = tokio::task::JoinHandle<Result<u64, memcg::OomKilled>>;

/// A tenant's work: its worker thread and its async clients.
struct Work {
    worker: Option<JoinHandle<(Ended, u64)>>,
    clients: Vec<ClientHandle>,
}

/// Waits for a tenant's work to end; returns how the worker and each
/// client ended.
fn finish(
    rt: &tokio::runtime::Runtime,
    t: &Tenant,
    work: &mut Work,
) -> (Option<Ended>, Vec<Result<u64, memcg::OomKilled>>) {
    let worker = work
        .worker
        .take()
        .and_then(|h| h.join().ok())
        .map(|(e, _)| e);
    let clients = std::mem::take(&mut work.clients);
    let name = t.spec.name;
    let clients = rt.block_on(async move {
        let mut out = Vec::new();
        for (i, h) in clients.into_iter().enumerate() {
            match h.await {
                Ok(r) => out.push(r),
                Err(e) => println!("{name} client {i}: {e}"),
            }
        }
        out
    });
    (worker, clients)
}

fn run() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let ctrl = memcg::controller();
    let start = Instant::now();
    println!(
        "topology: {} · reclaim wait {:?} · every allocation charged by MemcgAlloc",
        ctrl.topology(),
        ctrl.reclaim_wait()
    );
    let parent = ctrl.create("tenants")?;
    let mut tenants = Vec::new();
    let mut callbacks = Vec::new();
    for spec in &SPECS {
        let (t, c) = Tenant::new(&parent, spec, start)?;
        println!(
            "tenants/{:<6} max {:>4}  high {:>4}  oom policy {}{}",
            spec.name,
            spec.max,
            spec.high,
            t.group.oom_policy().name(),
            if spec.greedy {
                "  (imports pinned entries from 0.7 s on)"
            } else {
                ""
            }
        );
        tenants.push(t);
        callbacks.push(Some(c));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut work = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        let (tw, sw) = (Arc::clone(t), Arc::clone(&stop));
        let worker = std::thread::Builder::new()
            .name(format!("{}-worker", t.spec.name))
            .spawn(move || worker(tw, sw, 1 + i as u64))?;
        let mut clients = Vec::new();
        for c in 0..2u64 {
            let fut = client(Arc::clone(t), Arc::clone(&stop), 100 + 10 * i as u64 + c)
                .in_group(&t.group)?
                .killable();
            let (name, start) = (t.spec.name, start);
            clients.push(rt.spawn(async move {
                let r = fut.await;
                if let Err(k) = &r {
                    println!(
                        "{:>6.2}s  {name} async client {c}: ended with OomKilled ({})",
                        elapsed(start),
                        k.path
                    );
                }
                r
            }));
        }
        work.push(Work {
            worker: Some(worker),
            clients,
        });
    }

    let mut problems = Vec::new();
    let mut removed = vec![false; tenants.len()];
    let mut next_table = start + TABLE_EVERY;
    let mut killed_events = vec![memcg::Events::default(); tenants.len()];
    print_header();
    loop {
        let now = Instant::now();
        if next_table > now {
            std::thread::sleep(next_table - now);
        }
        next_table += TABLE_EVERY;
        if start.elapsed() >= RUN_FOR {
            break;
        }
        print_table(&tenants, &removed, start);

        // A killed tenant: stop its work, free its memory, remove it.
        for (i, t) in tenants.iter().enumerate() {
            if removed[i] || !t.group.is_killed() {
                continue;
            }
            let max = t.group.max().to_bytes().unwrap_or(u64::MAX);
            println!(
                "\n{:>6.2}s  {} is killed: {}",
                elapsed(start),
                t.spec.name,
                t.group
                    .killed_by()
                    .map(|k| k.to_string())
                    .unwrap_or_default()
            );
            let (worker, clients) = finish(&rt, t, &mut work[i]);
            let oom_killed = clients.iter().filter(|r| r.is_err()).count();
            if worker != Some(Ended::Killed) || oom_killed == 0 {
                problems.push(format!(
                    "{}: its work did not stop on the kill (worker {worker:?}, {oom_killed} clients ended with OomKilled)",
                    t.spec.name
                ));
            }
            let peak = t.group.peak_bytes();
            println!(
                "{:>6.2}s  {}: work stopped ({oom_killed} async clients ended with OomKilled); peak {} KiB, max {} KiB: {} KiB past max before it stopped",
                elapsed(start),
                t.spec.name,
                peak >> 10,
                max >> 10,
                peak.saturating_sub(max) >> 10
            );
            t.cache.lock().clear();
            callbacks[i] = None;
            killed_events[i] = t.group.events();
            t.group.remove()?;
            removed[i] = true;
            println!(
                "{:>6.2}s  {}: cache freed, group removed; tenants/ memory.current now {}",
                elapsed(start),
                t.spec.name,
                mib(parent.current_bytes())
            );
        }
    }

    // The end of the run: stop the others and check how their work ended.
    stop.store(true, Ordering::Relaxed);
    for (i, t) in tenants.iter().enumerate() {
        if removed[i] {
            continue;
        }
        let (worker, clients) = finish(&rt, t, &mut work[i]);
        if worker != Some(Ended::Stopped) || clients.iter().any(|r| r.is_err()) {
            problems.push(format!(
                "{}: its work did not end normally (worker {worker:?}, clients {clients:?})",
                t.spec.name
            ));
        }
    }
    drop(rt);
    println!("\nwork stopped:");
    print_table(&tenants, &removed, start);
    println!();
    print_scrape(ctrl)?;
    for t in &tenants {
        let c = &t.counters;
        println!(
            "{:<7} {:>6} requests, {:>5} hits, {:>4} imported, reclaim passes: {:>4} high, {:>3} max; {} evicted",
            t.spec.name,
            c.requests.load(Ordering::Relaxed),
            c.hits.load(Ordering::Relaxed),
            c.imported.load(Ordering::Relaxed),
            c.high_passes.load(Ordering::Relaxed),
            c.max_passes.load(Ordering::Relaxed),
            mib(c.evicted_bytes.load(Ordering::Relaxed)),
        );
    }

    // Every kill notification delivered before the callbacks go.
    ctrl.wait_reclaim_idle(Duration::from_secs(1));
    for (i, t) in tenants.iter().enumerate() {
        let events = if removed[i] {
            killed_events[i]
        } else {
            t.group.events()
        };
        let kill_callbacks = t.counters.kill_callbacks.load(Ordering::Relaxed);
        if t.spec.greedy {
            if !removed[i] || events.oom_kill == 0 || kill_callbacks == 0 {
                problems.push(format!(
                    "{} was not killed as expected (oom_kill {}, kill callbacks {kill_callbacks})",
                    t.spec.name, events.oom_kill
                ));
            }
        } else if events.oom_kill != 0 || kill_callbacks != 0 || t.group.is_killed() {
            problems.push(format!(
                "{} behaved and was killed anyway (oom_kill {}, max events {})",
                t.spec.name, events.oom_kill, events.max
            ));
        }
    }

    // Tear down: empty the caches, remove the tenants, show usage is back.
    for (i, t) in tenants.iter().enumerate() {
        t.cache.lock().clear();
        callbacks[i] = None;
        if !removed[i] {
            t.group.remove()?;
            removed[i] = true;
            println!("removed tenants/{}", t.spec.name);
        }
    }
    memcg::flush_current();
    ctrl.drain_stocks();
    let left = parent.current_bytes();
    println!("tenants memory.current after removal: {left}");
    print!("tenants memory.stat:\n{}", parent.stats().memory_stat());
    print!("tenants memory.events:\n{}", parent.events().to_text());
    if left != 0 {
        problems.push(format!("{left} bytes still charged to tenants/"));
    }
    match memcg::check_invariants() {
        Ok(()) => println!("check_invariants: ok"),
        Err(v) => problems.push(format!("invariants: {v}")),
    }
    // Counted in debug builds (the engine must never allocate under its
    // locks: such an allocation could wait for the reclaimer thread).
    let under_locks = memcg::allocations_under_engine_locks();
    println!("allocations under engine locks: {under_locks}");
    if under_locks != 0 {
        problems.push(format!("{under_locks} allocations under engine locks"));
    }
    let (_, _, panics) = ctrl.reclaimer_counters();
    if panics != 0 {
        problems.push(format!("{panics} reclaim callbacks panicked"));
    }
    parent.remove()?;
    Ok(problems)
}

/// One scrape of the service's metrics registry, with the controller's
/// collector registered beside the service's own metrics (feature
/// `prometheus-client`): the tenants' `memory.current` lines.
fn print_scrape(ctrl: &memcg::Controller) -> Result<(), Box<dyn std::error::Error>> {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;
    let mut registry = Registry::default();
    let options = memcg::export::MetricOptions::new().with_const_label("service", "tenants")?;
    registry.register_collector(Box::new(memcg::export::MemcgCollector::with_options(
        ctrl, options,
    )));
    let mut text = String::new();
    encode(&mut text, &registry)?;
    println!("a scrape of the service's registry (memory.current of the tenants):");
    for line in text
        .lines()
        .filter(|l| l.starts_with("memcg_memory_current_bytes") && l.contains("tenants/"))
    {
        println!("  {line}");
    }
    println!();
    Ok(())
}
