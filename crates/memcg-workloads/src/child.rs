//! The measured programs: `workloads-mimalloc` and `workloads-memcg` run
//! the same code, differing only in their global allocator and in what
//! the memcg one does around the timed section (attach, checks, sampling).
//!
//! Each run prints one JSON line per workload ([`ChildReport`]) on stdout.
//! The memcg child exits with [`exit::CHECK_FAILED`] when a check fails.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use clap::Parser;
use memcg::{BuilderExt, Group};

use crate::monitor::{Gaps, Monitor, Snapshot};
use crate::workloads::{HeldEstimate, Workload};

/// Exit codes of the children and of the runner.
pub mod exit {
    /// Every workload ran and every check passed.
    pub const OK: i32 = 0;
    /// A correctness check of the memcg child failed (or a child did).
    pub const CHECK_FAILED: i32 = 1;
    /// Bad arguments, or a child could not be started or read.
    pub const USAGE: i32 = 2;
}

/// Which global allocator the binary was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// `memcg::PlainMimalloc` (bare mimalloc through its plain entry
    /// points), nothing attached.
    Mimalloc,
    /// `memcg::MemcgAlloc<memcg::PlainMimalloc>`, the workload's threads
    /// attached to a group of their own.
    Memcg,
    /// `memcg::MemcgMimalloc` (one mimalloc heap per objcg, no trailer),
    /// attached the same way.
    MemcgHeaps,
}

impl Flavor {
    /// Bytes the flavor's allocator adds to each block's charge.
    pub fn per_block_overhead_bytes(self) -> usize {
        match self {
            Flavor::Mimalloc | Flavor::MemcgHeaps => 0,
            Flavor::Memcg => memcg::TRAILER_BYTES,
        }
    }
}

/// Arguments of the two children.
#[derive(Debug, Parser)]
#[command(about = "Runs workloads once and prints one JSON line per workload")]
pub struct ChildArgs {
    /// Workloads to run (default: all), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workload: Vec<Workload>,
    /// Size factor (1.0: roughly 0.3–1.5 s per workload).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Tiny sizes (scale 0.02), for CI.
    #[arg(long)]
    pub quick: bool,
    /// memcg child: sample `memory.current` against the live bytes every
    /// millisecond during the workload (off for timed runs).
    #[arg(long)]
    pub sample: bool,
    /// Threads of the rayon pool (default: available parallelism).
    #[arg(long)]
    pub threads: Option<usize>,
    /// memcg children: run each workload in its group and report its time
    /// only, with no snapshot, walk of the held data or check (their
    /// instructions would count in `scripts/workloads-instructions.sh`,
    /// which runs the children under callgrind).
    #[arg(long, conflicts_with = "sample")]
    pub time_only: bool,
}

impl ChildArgs {
    /// The scale in effect (`--quick` wins).
    pub fn effective_scale(&self) -> f64 {
        if self.quick {
            QUICK_SCALE
        } else {
            self.scale
        }
    }
}

/// The scale of `--quick`.
pub const QUICK_SCALE: f64 = 0.02;

/// One correctness check of the memcg child.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub pass: bool,
    /// The numbers behind it.
    pub detail: String,
}

/// What the memcg child learned beyond the time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemcgReport {
    /// Charges that took the tasks' slow entry during the workload (every
    /// thread of the process; only the workload's run then): the
    /// allocations and growing `realloc`s that missed the allocator's hit
    /// path, which counts nothing itself
    /// (`memcg::engine::EngineCounters::task_charges`).
    pub charges: u64,
    /// Charges during the workload that needed more than a task's byte
    /// cache (`memcg::engine::EngineCounters::slow_charges`).
    pub slow_charges: u64,
    /// Read-modify-writes on counters shared by all CPUs during the
    /// workload (`memcg::engine::EngineCounters::shared_atomics`).
    pub shared_atomics: u64,
    /// Group live bytes before the workload (pool and thread state).
    pub baseline_live_bytes: u64,
    /// Group live bytes the held data accounts for (live before its drop
    /// minus live after).
    pub held_live_bytes: u64,
    /// The held data's bytes counted by walking it.
    pub held_estimate_bytes: u64,
    /// Whether `held_estimate_bytes` is exact.
    pub held_estimate_exact: bool,
    /// Live bytes left after the drop beyond the baseline; must be 0 (the
    /// workloads' crates keep nothing per thread once their values are
    /// dropped).
    pub residual_live_bytes: i64,
    /// `memory.peak` of the group.
    pub peak_bytes: u64,
    /// Sampling results (with `--sample`).
    pub accuracy: Option<Accuracy>,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

/// Worst sampled gaps against the documented bound.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Accuracy {
    /// Samples taken.
    pub samples: u64,
    /// Largest `memory.current − live` in one sample (may include a
    /// charge or free in flight).
    pub worst_over_bytes: u64,
    /// Largest `live − memory.current` in one sample.
    pub worst_under_bytes: u64,
    /// Largest `memory.current − live` held over three consecutive samples
    /// (see `monitor::Gaps::worst_held_over_bytes`): what the bound covers.
    pub worst_held_over_bytes: u64,
    /// The same for `live − memory.current`.
    pub worst_held_under_bytes: u64,
    /// The bound on `memory.current − live` when `live` is read from the
    /// statistics: [`memcg::ErrorBound::gap_bytes`] of the group.
    pub bound_bytes: u64,
    /// The bound on `live − memory.current` (only the statistics' lag can
    /// make it positive): [`memcg::ErrorBound::stats_lag_bytes`].
    pub bound_under_bytes: u64,
    /// `worst_held_over_bytes / bound_bytes`.
    pub worst_fraction_of_bound: f64,
    /// The bound's terms, as `name=bytes` pairs.
    pub bound_terms: String,
}

/// One line of a child's stdout.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChildReport {
    /// Workload name.
    pub workload: String,
    /// `mimalloc` or `memcg`.
    pub allocator: String,
    /// Scale used.
    pub scale: f64,
    /// Wall time of the workload alone, in nanoseconds.
    pub wall_ns: u64,
    /// User CPU time of the process (every thread) over the same span,
    /// in nanoseconds (`getrusage(RUSAGE_SELF)`): the program's and the
    /// allocator's own work, without the kernel's.
    #[serde(default)]
    pub user_ns: u64,
    /// System CPU time of the process over the same span, in nanoseconds:
    /// mostly the kernel zeroing the pages the process touches first,
    /// which swings from run to run on a shared host.
    #[serde(default)]
    pub sys_ns: u64,
    /// memcg child only.
    pub memcg: Option<MemcgReport>,
}

impl ChildReport {
    /// The report of a run of `w` at `scale` on `allocator` that took `t`.
    fn of_run(
        w: Workload,
        allocator: &str,
        scale: f64,
        t: Times,
        memcg: Option<MemcgReport>,
    ) -> ChildReport {
        ChildReport {
            workload: w.name().to_string(),
            allocator: allocator.to_string(),
            scale,
            wall_ns: t.wall_ns,
            user_ns: t.user_ns,
            sys_ns: t.sys_ns,
            memcg,
        }
    }

    /// Whether every check passed (true for the mimalloc child).
    pub fn pass(&self) -> bool {
        self.memcg
            .as_ref()
            .is_none_or(|m| m.checks.iter().all(|c| c.pass))
    }
}

/// The `main` of both children: parses the arguments, runs the
/// workloads, prints the reports; returns the exit code.
pub fn main(flavor: Flavor) -> i32 {
    let args = ChildArgs::parse();
    let workloads = if args.workload.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workload.clone()
    };
    let scale = args.effective_scale();
    if !(scale > 0.0 && scale.is_finite()) {
        eprintln!("workloads: --scale must be a positive number, got {scale}");
        return exit::USAGE;
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    crate::workloads::set_per_block_overhead_bytes(flavor.per_block_overhead_bytes());
    let mut code = exit::OK;
    for w in workloads {
        let report = match flavor {
            Flavor::Mimalloc => run_plain(w, scale, threads),
            Flavor::Memcg | Flavor::MemcgHeaps if args.time_only => {
                run_memcg_time_only(w, scale, threads)
            }
            Flavor::Memcg | Flavor::MemcgHeaps => run_memcg(w, scale, threads, args.sample),
        };
        if !report.pass() {
            code = exit::CHECK_FAILED;
            if let Some(m) = &report.memcg {
                for c in m.checks.iter().filter(|c| !c.pass) {
                    eprintln!(
                        "workloads-memcg: {}: check {} failed: {}",
                        report.workload, c.name, c.detail
                    );
                }
            }
        }
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("workloads: cannot serialize the report: {e}");
                return exit::USAGE;
            }
        }
    }
    code
}

/// The times of one run of a workload, in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Times {
    wall_ns: u64,
    user_ns: u64,
    sys_ns: u64,
}

/// The process's user and system CPU time so far (every thread), in
/// nanoseconds; zeros if `getrusage` fails (it cannot for `RUSAGE_SELF`
/// and a valid pointer).
fn cpu_ns() -> (u64, u64) {
    // SAFETY: `rusage` is a plain C struct of integers and `timeval`s, for
    // which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid and writable for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0, 0);
    }
    let ns =
        |t: libc::timeval| t.tv_sec.max(0) as u64 * 1_000_000_000 + t.tv_usec.max(0) as u64 * 1_000;
    (ns(usage.ru_utime), ns(usage.ru_stime))
}

/// Runs `f`, timing it: wall time, and the process's user and system CPU
/// time over the same span.
fn timed<R>(f: impl FnOnce() -> R) -> (R, Times) {
    let (user0, sys0) = cpu_ns();
    let t0 = Instant::now();
    let r = f();
    let wall_ns = t0.elapsed().as_nanos() as u64;
    let (user1, sys1) = cpu_ns();
    let times = Times {
        wall_ns,
        user_ns: user1.saturating_sub(user0),
        sys_ns: sys1.saturating_sub(sys0),
    };
    (r, times)
}

/// Starts the pool's workers, then runs the workload and drops what it
/// holds; returns the run's times (the drop not included).
fn timed_run(w: Workload, scale: f64, pool: &rayon::ThreadPool) -> Times {
    pool.broadcast(|_| ());
    let (held, times) = timed(|| w.run(scale, pool));
    drop(held);
    times
}

fn run_plain(w: Workload, scale: f64, threads: usize) -> ChildReport {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon builds its pool");
    let t = timed_run(w, scale, &pool);
    ChildReport::of_run(w, "mimalloc", scale, t, None)
}

/// The memcg child's run without its checks (`--time-only`): the same
/// group, attach and pool as [`run_memcg`], nothing measured but the time.
fn run_memcg_time_only(w: Workload, scale: f64, threads: usize) -> ChildReport {
    let ctrl = memcg::controller();
    let group: Group = ctrl
        .create(&format!("wl-{}", w.name()))
        .expect("a fresh group name");
    group
        .attach_current()
        .expect("the main thread attaches to its group");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .spawn_handler(|thread| {
            std::thread::Builder::new()
                .spawn_in_current_group(move || thread.run())
                .map(drop)
        })
        .build()
        .expect("rayon builds its pool");
    let t = timed_run(w, scale, &pool);
    drop(pool);
    ctrl.root()
        .attach_current()
        .expect("the main thread moves back to root");
    ChildReport::of_run(w, "memcg", scale, t, None)
}

/// Flushes every thread of the workload (the pool's workers, then this
/// one) and has the monitor drain and read the group. This thread does not
/// allocate between its flush and the snapshot.
fn flushed_snapshot(pool: &rayon::ThreadPool, monitor: &Monitor) -> Snapshot {
    pool.broadcast(|_| memcg::flush_current());
    memcg::flush_current();
    monitor.measure()
}

fn exact_check(name: &str, s: Snapshot) -> Check {
    Check {
        name: name.to_string(),
        pass: s.current_bytes == s.expected_bytes,
        detail: format!(
            "memory.current {} vs ceil(live {} / 4096 per objcg) = {}",
            s.current_bytes, s.live_bytes, s.expected_bytes
        ),
    }
}

fn run_memcg(w: Workload, scale: f64, threads: usize, sample: bool) -> ChildReport {
    let ctrl = memcg::controller();
    let group: Group = ctrl
        .create(&format!("wl-{}", w.name()))
        .expect("a fresh group name");
    // Started from root: the monitor's allocations stay out of the group.
    let monitor = Monitor::start(group.clone());
    group
        .attach_current()
        .expect("the main thread attaches to its group");
    // The workers start in the group (`spawn_in_current_group` from this
    // attached thread); their join handles let the teardown wait until
    // they have exited, task exit path included.
    let workers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
    let pool = {
        let workers = Arc::clone(&workers);
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .spawn_handler(move |thread| {
                let handle =
                    std::thread::Builder::new().spawn_in_current_group(move || thread.run())?;
                workers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(handle);
                Ok(())
            })
            .build()
            .expect("rayon builds its pool")
    };
    // Everything up to the last snapshot keeps only `Copy` values: a
    // check's strings, allocated by this attached thread, would be live
    // bytes of the group between two snapshots.
    let base = flushed_snapshot(&pool, &monitor);
    // The documented bound, from memcg itself (`Group::error_bound`): its
    // counts (tasks, groups) are those of now, with the pool's workers and
    // the monitor running.
    let bound = group.error_bound();
    let counters0 = ctrl.counters();

    if sample {
        monitor.start_sampling();
    }
    let (held, t) = timed(|| w.run(scale, &pool));
    let gaps: Option<Gaps> = sample.then(|| monitor.stop_sampling());
    let counters1 = ctrl.counters();
    let charges = counters1
        .task_charges
        .saturating_sub(counters0.task_charges);
    let slow_charges = counters1
        .slow_charges
        .saturating_sub(counters0.slow_charges);
    let shared_atomics = counters1
        .shared_atomics
        .saturating_sub(counters0.shared_atomics);

    let estimate: HeldEstimate = held.estimate();
    let with_held = flushed_snapshot(&pool, &monitor);
    drop(held);
    let after = flushed_snapshot(&pool, &monitor);
    let mut checks = vec![
        exact_check("baseline-current-equals-live-pages", base),
        exact_check("held-current-equals-live-pages", with_held),
        exact_check("dropped-current-equals-live-pages", after),
    ];

    let held_live = with_held.live_bytes.saturating_sub(after.live_bytes);
    checks.push(Check {
        name: if estimate.exact {
            "held-live-equals-counted".to_string()
        } else {
            "held-live-at-least-counted".to_string()
        },
        pass: if estimate.exact {
            held_live == estimate.bytes
        } else {
            held_live >= estimate.bytes
        },
        detail: format!(
            "live bytes freed by dropping the held data {held_live}, counted by walking it {} ({})",
            estimate.bytes,
            if estimate.exact {
                "exact"
            } else {
                "lower bound"
            }
        ),
    });
    let residual = after.live_bytes as i64 - base.live_bytes as i64;
    checks.push(Check {
        name: "dropped-live-back-to-baseline".to_string(),
        pass: residual == 0,
        detail: format!(
            "live after drop {} vs baseline {} (residual {residual})",
            after.live_bytes, base.live_bytes
        ),
    });

    let accuracy = gaps.map(|g| Accuracy {
        samples: g.samples,
        worst_over_bytes: g.worst_over_bytes,
        worst_under_bytes: g.worst_under_bytes,
        worst_held_over_bytes: g.worst_held_over_bytes,
        worst_held_under_bytes: g.worst_held_under_bytes,
        bound_bytes: bound.gap_bytes(),
        bound_under_bytes: bound.stats_lag_bytes,
        worst_fraction_of_bound: g.worst_held_over_bytes as f64 / bound.gap_bytes() as f64,
        bound_terms: format!(
            "cpus={} tasks={} objcgs={} page_stocks={} byte_stocks={} task_caches={} objcg_pools={} stats_lag={}",
            bound.nr_cpus,
            bound.nr_tasks,
            bound.nr_objcgs,
            bound.page_stocks_bytes,
            bound.byte_stocks_bytes,
            bound.task_caches_bytes,
            bound.objcg_pools_bytes,
            bound.stats_lag_bytes
        ),
    });
    if let Some(a) = &accuracy {
        checks.push(Check {
            name: "sampled-gap-within-bound".to_string(),
            pass: a.worst_held_over_bytes <= a.bound_bytes
                && a.worst_held_under_bytes <= a.bound_under_bytes,
            detail: format!(
                "worst current-live held over three samples {} (in one sample {}), live-current {} \
                 (in one sample {}) over {} samples; bound {} ({})",
                a.worst_held_over_bytes,
                a.worst_over_bytes,
                a.worst_held_under_bytes,
                a.worst_under_bytes,
                a.samples,
                a.bound_bytes,
                a.bound_terms
            ),
        });
    }
    let peak_bytes = group.peak_bytes();

    // Tear down: the pool's workers exit (their tasks flush) and are
    // joined, the main thread goes back to root, the monitor stops; with
    // no other thread charging, the whole controller must check out
    // (`check_invariants` is exact only then).
    drop(pool);
    let handles = std::mem::take(&mut *workers.lock().unwrap_or_else(|e| e.into_inner()));
    for h in handles {
        h.join().expect("a rayon worker exits cleanly");
    }
    ctrl.root()
        .attach_current()
        .expect("the main thread moves back to root");
    drop(monitor);
    let invariants = memcg::check_invariants();
    checks.push(Check {
        name: "check-invariants".to_string(),
        pass: invariants.is_ok(),
        detail: match &invariants {
            Ok(()) => "ok".to_string(),
            Err(v) => format!("{v:?}"),
        },
    });

    ChildReport::of_run(
        w,
        "memcg",
        scale,
        t,
        Some(MemcgReport {
            charges,
            slow_charges,
            shared_atomics,
            baseline_live_bytes: base.live_bytes,
            held_live_bytes: held_live,
            held_estimate_bytes: estimate.bytes,
            held_estimate_exact: estimate.exact,
            residual_live_bytes: residual,
            peak_bytes,
            accuracy,
            checks,
        }),
    )
}
