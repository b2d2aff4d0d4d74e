//! Allocator shoot-out: `alloc`+`dealloc` pair throughput of memcg's
//! [`memcg::MemcgAlloc`] against bare allocators and the accounting
//! wrappers users would pick instead (issue 5, item 1; DESIGN §5).
//!
//! Method:
//! - every allocator object is called directly (none is the global
//!   allocator), so each measured call goes through exactly the allocator
//!   named;
//! - every allocator over mimalloc's default heap (bare, `MemcgAlloc`, the
//!   peers) calls it through one binding, [`memcg::PlainMimalloc`]
//!   (mimalloc's plain entry points where its alignment covers the
//!   layout), and `MemcgMimalloc` calls its heaps by the same rule, so a
//!   ratio compares the accounting, not two bindings;
//! - all allocators run in the same process, interleaved: each repetition
//!   walks every size and every allocator once, round-robin, so machine
//!   drift hits them alike;
//! - one measurement: `threads` worker threads (attached to one memcg group
//!   and one tracking-allocator group, warmed up) start together at a
//!   barrier and run pairs of one size until the main thread raises a stop
//!   flag after `millis`; each thread reports its pairs and elapsed time;
//! - `ns/pair` is the mean time of one pair on one thread; `ratio` is the
//!   allocator's total throughput divided by bare mimalloc's in the same
//!   process, repetition, size and thread count (above 1 is faster);
//!   tables give min/median/max over repetitions;
//! - the pre-seed single task cache of memcg is chosen by
//!   `MEMCG_TASK_CACHE=single` once per process, so it is measured by a
//!   child process (this binary, re-run with that variable) once per
//!   repetition, interleaved with the parent's repetitions; the child
//!   measures bare mimalloc too and its ratio is against that in-child
//!   baseline.
//!
//! With `--svg-dir DIR` the summaries are also drawn as SVG charts into
//! `DIR` (see [`plot`]).

pub mod hitpath;
pub mod plot;
pub mod storm;

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use memcg::engine::TaskCacheMode;
use memcg::MemcgAlloc;
use memcg::PlainMimalloc;
use serde::{Deserialize, Serialize};
use tracking_allocator::{AllocationGroupId, AllocationGroupToken, AllocationRegistry};

/// Command-line flags of `shootout`.
#[derive(Parser, Debug, Clone)]
#[command(about = "alloc+dealloc pair throughput: memcg vs bare allocators and peer wrappers")]
pub struct Args {
    /// Thread counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Allocation sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,4096")]
    pub sizes: Vec<usize>,
    /// Repetitions (each one runs every allocator once per size and thread count).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Milliseconds per measurement.
    #[arg(long, default_value_t = 100)]
    pub millis: u64,
    /// Tiny run for CI (3 reps of 3 ms); catches breakage, not timings.
    #[arg(long)]
    pub quick: bool,
    /// Print JSON (samples and summaries) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write SVG charts of the summaries into this directory (created if
    /// missing): `shootout-<T>t.svg` (ratio) and `ns-<T>t.svg` per thread count.
    #[arg(long, value_name = "DIR")]
    pub svg_dir: Option<PathBuf>,
    /// Internal: run as the `MEMCG_TASK_CACHE=single` child and print raw samples as JSON.
    #[arg(long, hide = true)]
    pub child_single: bool,
}

/// One allocator of the shoot-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    System,
    Mimalloc,
    MemcgNode,
    MemcgSingle,
    MemcgHeaps,
    Cap,
    StatsAlloc,
    Tracking,
    Batched,
}

impl Kind {
    const PARENT: [Kind; 8] = [
        Kind::System,
        Kind::Mimalloc,
        Kind::MemcgNode,
        Kind::MemcgHeaps,
        Kind::Cap,
        Kind::StatsAlloc,
        Kind::Tracking,
        Kind::Batched,
    ];
    const CHILD: [Kind; 2] = [Kind::Mimalloc, Kind::MemcgSingle];
    const REPORT_ORDER: [Kind; 9] = [
        Kind::System,
        Kind::Mimalloc,
        Kind::MemcgNode,
        Kind::MemcgSingle,
        Kind::MemcgHeaps,
        Kind::Cap,
        Kind::StatsAlloc,
        Kind::Tracking,
        Kind::Batched,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::System => "System",
            Kind::Mimalloc => "mimalloc",
            Kind::MemcgNode => "MemcgAlloc<mimalloc> per-node",
            Kind::MemcgSingle => "MemcgAlloc<mimalloc> single",
            Kind::MemcgHeaps => "MemcgMimalloc (heap per objcg)",
            Kind::Cap => "cap::Cap<mimalloc>",
            Kind::StatsAlloc => "stats_alloc<mimalloc>",
            Kind::Tracking => "tracking_allocator<mimalloc>",
            Kind::Batched => "batched-4MiB<mimalloc>",
        }
    }
}

/// Batch after which [`Batched`] flushes a thread's local count.
pub const BATCH_BYTES: i64 = 4 << 20;

thread_local! {
    static BATCHED_LOCAL: Cell<i64> = const { Cell::new(0) };
}

/// The per-thread-batched counter of ClickHouse's `MemoryTracker` and
/// Databend's `MemStat`, as a baseline: sizes add to a thread-local `i64`
/// that is flushed to one shared `AtomicI64` whenever it reaches ±4 MiB.
/// (The thread-local is per process, shared by all instances; one instance
/// exists here.)
#[derive(Debug, Default)]
pub struct Batched<A> {
    inner: A,
    shared: AtomicI64,
}

impl<A> Batched<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        Batched {
            inner,
            shared: AtomicI64::new(0),
        }
    }

    /// The shared count (exact only up to 4 MiB per thread).
    pub fn shared(&self) -> i64 {
        self.shared.load(Ordering::Relaxed)
    }

    #[inline(always)]
    fn add(&self, delta: i64) {
        let flushed = BATCHED_LOCAL.try_with(|c| {
            let v = c.get() + delta;
            if v >= BATCH_BYTES || v <= -BATCH_BYTES {
                self.shared.fetch_add(v, Ordering::Relaxed);
                c.set(0);
            } else {
                c.set(v);
            }
        });
        if flushed.is_err() {
            // Thread-local already destroyed (thread exit): count directly.
            self.shared.fetch_add(delta, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded to `inner` with the caller's layout and
// pointer unchanged; the counting never panics or unwinds.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Batched<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            self.add(layout.size() as i64);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.inner.dealloc(ptr, layout) };
        self.add(-(layout.size() as i64));
    }
}

/// tracking-allocator's minimal tracker (as in its docs): wrapped bytes
/// added to one shared counter.
static TRACKED_BYTES: AtomicU64 = AtomicU64::new(0);

struct CountingTracker;

impl tracking_allocator::AllocationTracker for CountingTracker {
    fn allocated(&self, _addr: usize, _object: usize, wrapped: usize, _group: AllocationGroupId) {
        TRACKED_BYTES.fetch_add(wrapped as u64, Ordering::Relaxed);
    }

    fn deallocated(
        &self,
        _addr: usize,
        _object: usize,
        wrapped: usize,
        _source: AllocationGroupId,
        _current: AllocationGroupId,
    ) {
        TRACKED_BYTES.fetch_sub(wrapped as u64, Ordering::Relaxed);
    }
}

/// All allocators, shared by the worker threads.
struct Allocators {
    mimalloc: PlainMimalloc,
    memcg: MemcgAlloc<PlainMimalloc>,
    heaps: memcg::MemcgMimalloc,
    cap: cap::Cap<PlainMimalloc>,
    stats: stats_alloc::StatsAlloc<PlainMimalloc>,
    tracking: tracking_allocator::Allocator<PlainMimalloc>,
    batched: Batched<PlainMimalloc>,
}

impl Allocators {
    fn new() -> Self {
        Allocators {
            mimalloc: PlainMimalloc,
            memcg: MemcgAlloc::new(PlainMimalloc),
            heaps: memcg::MemcgMimalloc::new(),
            cap: cap::Cap::new(PlainMimalloc, usize::MAX),
            stats: stats_alloc::StatsAlloc::new(PlainMimalloc),
            tracking: tracking_allocator::Allocator::from_allocator(PlainMimalloc),
            batched: Batched::new(PlainMimalloc),
        }
    }
}

/// Pairs run between two checks of the stop flag.
const INNER: u64 = 256;
/// Pairs each thread runs before the start barrier.
const WARMUP: u64 = 20_000;

#[inline(always)]
fn pairs<A: GlobalAlloc>(a: &A, layout: Layout, n: u64) {
    for _ in 0..n {
        // SAFETY: `layout` has a non-zero size (sizes are checked >= 1);
        // the block is checked non-null and freed once, by the same
        // allocator, with the same layout.
        unsafe {
            let p = a.alloc(layout);
            if p.is_null() {
                handle_alloc_error(layout);
            }
            black_box(p);
            a.dealloc(p, layout);
        }
    }
}

/// Runs pairs until `stop`; returns (pairs, elapsed).
#[inline(never)]
fn run_until<A: GlobalAlloc>(a: &A, layout: Layout, stop: &AtomicBool) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        pairs(a, layout, INNER);
        n += INNER;
    }
    (n, start.elapsed())
}

fn dispatch(all: &Allocators, kind: Kind, layout: Layout, stop: &AtomicBool) -> (u64, Duration) {
    match kind {
        Kind::System => run_until(&System, layout, stop),
        Kind::Mimalloc => run_until(&all.mimalloc, layout, stop),
        Kind::MemcgNode | Kind::MemcgSingle => run_until(&all.memcg, layout, stop),
        Kind::MemcgHeaps => run_until(&all.heaps, layout, stop),
        Kind::Cap => run_until(&all.cap, layout, stop),
        Kind::StatsAlloc => run_until(&all.stats, layout, stop),
        Kind::Tracking => run_until(&all.tracking, layout, stop),
        Kind::Batched => run_until(&all.batched, layout, stop),
    }
}

fn warm(all: &Allocators, kinds: &[Kind], sizes: &[usize]) {
    for &size in sizes {
        let layout = layout_of(size);
        for &k in kinds {
            match k {
                Kind::System => pairs(&System, layout, WARMUP),
                Kind::Mimalloc => pairs(&all.mimalloc, layout, WARMUP),
                Kind::MemcgNode | Kind::MemcgSingle => pairs(&all.memcg, layout, WARMUP),
                Kind::MemcgHeaps => pairs(&all.heaps, layout, WARMUP),
                Kind::Cap => pairs(&all.cap, layout, WARMUP),
                Kind::StatsAlloc => pairs(&all.stats, layout, WARMUP),
                Kind::Tracking => pairs(&all.tracking, layout, WARMUP),
                Kind::Batched => pairs(&all.batched, layout, WARMUP),
            }
        }
    }
}

fn layout_of(size: usize) -> Layout {
    Layout::from_size_align(size.max(1), 8).expect("valid layout")
}

/// One measurement.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Sample {
    /// Allocator name.
    pub allocator: String,
    /// Bytes per allocation.
    pub size: usize,
    /// Worker threads.
    pub threads: usize,
    /// Repetition index.
    pub rep: usize,
    /// Mean ns of one pair on one thread.
    pub ns_per_pair: f64,
    /// Total pairs per second over all threads.
    pub pairs_per_sec: f64,
    /// `pairs_per_sec` over bare mimalloc's in the same process, rep, size, threads.
    pub ratio: f64,
    /// Which process measured it (`parent`, or `child` for the single cache).
    pub process: String,
}

/// A `tracking-allocator` group for the calling worker. Registration is
/// serialized: `AllocationGroupToken::register` (0.4) takes an id with one
/// atomic and checks it against the highest one with another, so a
/// thread that loses the race between the two gets `None` although ids
/// remain (the workers register at once: a CI run's shoot-out panicked
/// here, and the other workers then waited at the barrier for ever).
fn register_tracking_group() -> AllocationGroupToken {
    static REGISTER: Mutex<()> = Mutex::new(());
    let _serial = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
    AllocationGroupToken::register().expect("tracking-allocator group ids exhausted")
}

fn memcg_group() -> memcg::Group {
    let ctrl = memcg::controller();
    ctrl.group("bench")
        .or_else(|_| ctrl.create("bench"))
        .expect("memcg bench group")
}

/// Measures `kinds` x `sizes` on `threads` workers for one repetition,
/// round-robin, and returns the samples (ratios filled in).
fn measure_rep(
    all: &Allocators,
    kinds: &[Kind],
    sizes: &[usize],
    threads: usize,
    rep: usize,
    millis: u64,
    process: &str,
) -> Vec<Sample> {
    let group = memcg_group();
    let barrier = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(u64, Duration)>> = Mutex::new(Vec::new());
    let mut samples = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (group, barrier, stop, results) = (&group, &barrier, &stop, &results);
            s.spawn(move || {
                group.attach_current().expect("memcg attach");
                let mut token = register_tracking_group();
                let _guard = token.enter();
                warm(all, kinds, sizes);
                for &size in sizes {
                    let layout = layout_of(size);
                    for &k in kinds {
                        barrier.wait(); // start
                        let r = dispatch(all, k, layout, stop);
                        results.lock().expect("results").push(r);
                        barrier.wait(); // done
                    }
                }
            });
        }
        for &size in sizes {
            let mut base = None;
            let mut row = Vec::new();
            for &k in kinds {
                barrier.wait();
                std::thread::sleep(Duration::from_millis(millis));
                stop.store(true, Ordering::Relaxed);
                barrier.wait();
                stop.store(false, Ordering::Relaxed);
                let rs = std::mem::take(&mut *results.lock().expect("results"));
                let total: u64 = rs.iter().map(|r| r.0).sum();
                let busy: f64 = rs.iter().map(|r| r.1.as_secs_f64()).sum();
                let pps: f64 = rs
                    .iter()
                    .map(|r| r.0 as f64 / r.1.as_secs_f64().max(1e-9))
                    .sum();
                let ns = busy * 1e9 / (total.max(1) as f64);
                if k == Kind::Mimalloc {
                    base = Some(pps);
                }
                row.push((k, ns, pps));
            }
            let base = base.expect("bare mimalloc is always measured");
            for (k, ns, pps) in row {
                samples.push(Sample {
                    allocator: k.name().to_string(),
                    size,
                    threads,
                    rep,
                    ns_per_pair: ns,
                    pairs_per_sec: pps,
                    ratio: pps / base,
                    process: process.to_string(),
                });
            }
        }
    });
    samples
}

fn run_child(args: &Args, threads: usize, rep: usize) -> Result<Vec<Sample>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let join = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let out = Command::new(exe)
        .env("MEMCG_TASK_CACHE", "single")
        .arg("--child-single")
        .args(["--threads", &threads.to_string()])
        .args(["--sizes", &join(&args.sizes)])
        .args(["--millis", &args.millis.to_string()])
        .args(["--reps", "1"])
        .output()
        .map_err(|e| format!("spawning child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "child failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut v: Vec<Sample> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("child output: {e}"))?;
    for s in &mut v {
        s.rep = rep;
    }
    Ok(v)
}

fn setup_tracking() {
    // A second call (none here) would fail harmlessly: the tracker is global.
    let _ = AllocationRegistry::set_global_tracker(CountingTracker);
    AllocationRegistry::enable_tracking();
}

/// min, median, max.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], med, v[n - 1])
}

/// Summary of one allocator at one (size, threads).
#[derive(Serialize, Debug)]
pub struct Summary {
    /// Allocator name.
    pub allocator: String,
    /// Bytes per allocation.
    pub size: usize,
    /// Worker threads.
    pub threads: usize,
    /// ns per pair per thread: min, median, max over repetitions.
    pub ns_per_pair: [f64; 3],
    /// Throughput ratio to bare mimalloc: min, median, max.
    pub ratio: [f64; 3],
}

fn summarize(samples: &[Sample], sizes: &[usize], threads: &[usize]) -> Vec<Summary> {
    let mut out = Vec::new();
    for &t in threads {
        for &size in sizes {
            for k in Kind::REPORT_ORDER {
                let mine: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.allocator == k.name() && s.size == size && s.threads == t)
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                let (a, b, c) = stats(mine.iter().map(|s| s.ns_per_pair).collect());
                let (d, e, f) = stats(mine.iter().map(|s| s.ratio).collect());
                out.push(Summary {
                    allocator: k.name().to_string(),
                    size,
                    threads: t,
                    ns_per_pair: [a, b, c],
                    ratio: [d, e, f],
                });
            }
        }
    }
    out
}

/// Bytes `MemcgAlloc` asks of the inner allocator (and charges) for `size`.
pub fn memcg_charged_bytes(size: usize) -> usize {
    size + memcg::TRAILER_BYTES
}

fn print_overhead(sizes: &[usize]) {
    println!(
        "\nMemory overhead per allocation (MemcgAlloc): a {}-byte trailer (memcg::TRAILER_BYTES)",
        memcg::TRAILER_BYTES
    );
    println!("right after the caller's bytes; the inner request and the charge are size + 8.");
    println!("{:>8}  {:>18}  {:>14}", "size", "size+8", "extra bytes");
    for &s in sizes {
        let c = memcg_charged_bytes(s);
        println!("{:>8}  {:>18}  {:>14}", s, c, c - s);
    }
    println!("MemcgMimalloc adds no bytes: the block comes from its objcg's mimalloc heap and is");
    println!("charged its size.");
    println!("(tracking-allocator adds an 8-byte header per block too; cap, stats_alloc and the");
    println!(" batched counter add none, but cannot charge a free to the allocating group.)");
}

fn print_tables(sum: &[Summary], args: &Args) {
    println!(
        "alloc+dealloc pairs, direct calls, interleaved; {} reps x {} ms per measurement",
        args.reps, args.millis
    );
    println!("ns = mean ns of one pair on one thread; ratio = throughput / bare mimalloc's");
    println!("(same process and repetition; >1 is faster); min / median / max over reps.");
    let mut key = None;
    for s in sum {
        if key != Some((s.size, s.threads)) {
            key = Some((s.size, s.threads));
            println!(
                "\n## {} B, {} thread{}",
                s.size,
                s.threads,
                if s.threads == 1 { "" } else { "s" }
            );
            println!(
                "{:<30} {:>24}   {:>20}",
                "allocator", "ns/pair min/med/max", "ratio min/med/max"
            );
        }
        println!(
            "{:<30} {:>7.2} {:>7.2} {:>7.2}   {:>6.3} {:>6.3} {:>6.3}",
            s.allocator,
            s.ns_per_pair[0],
            s.ns_per_pair[1],
            s.ns_per_pair[2],
            s.ratio[0],
            s.ratio[1],
            s.ratio[2]
        );
    }
}

/// Runs the shoot-out with `args`; returns a message on failure.
pub fn run(mut args: Args) -> Result<(), String> {
    if args.quick {
        args.reps = args.reps.min(3);
        args.millis = 3;
    }
    if args.reps == 0 || args.threads.contains(&0) || args.sizes.contains(&0) {
        return Err("--reps, --threads and --sizes must be at least 1".into());
    }
    let mode = memcg::controller().task_cache_mode();
    setup_tracking();
    let all = Allocators::new();
    if args.child_single {
        if mode != TaskCacheMode::Single {
            return Err("child: MEMCG_TASK_CACHE=single was not honoured".into());
        }
        let mut samples = Vec::new();
        for &t in &args.threads {
            samples.extend(measure_rep(
                &all,
                &Kind::CHILD,
                &args.sizes,
                t,
                0,
                args.millis,
                "child",
            ));
        }
        println!(
            "{}",
            serde_json::to_string(&samples).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    if mode != TaskCacheMode::PerNode {
        return Err("unset MEMCG_TASK_CACHE: the parent measures the per-node cache".into());
    }
    let mut samples = Vec::new();
    for rep in 0..args.reps {
        for &t in &args.threads {
            samples.extend(measure_rep(
                &all,
                &Kind::PARENT,
                &args.sizes,
                t,
                rep,
                args.millis,
                "parent",
            ));
            samples.extend(run_child(&args, t, rep)?);
        }
    }
    let sum = summarize(&samples, &args.sizes, &args.threads);
    if let Some(dir) = &args.svg_dir {
        // Before the tables, so a plotting failure exits non-zero with no
        // half-printed output; the file list goes to stderr, keeping stdout
        // the tables (or the JSON) alone.
        for path in plot::write_svgs(dir, &sum)? {
            eprintln!("shootout: wrote {}", path.display());
        }
    }
    if args.json {
        let overhead: Vec<_> = args
            .sizes
            .iter()
            .map(|&s| serde_json::json!({"size": s, "memcg_inner_bytes": memcg_charged_bytes(s)}))
            .collect();
        let doc = serde_json::json!({
            "reps": args.reps,
            "millis": args.millis,
            "trailer_bytes": memcg::TRAILER_BYTES,
            "overhead": overhead,
            "summaries": sum,
            "samples": samples,
        });
        println!("{doc:#}");
    } else {
        print_tables(&sum, &args);
        print_overhead(&args.sizes);
    }
    // Keep the counters observable so no wrapper's work is optimised out.
    black_box((
        all.cap.allocated(),
        all.stats.stats(),
        all.batched.shared(),
        TRACKED_BYTES.load(Ordering::Relaxed),
    ));
    Ok(())
}
