//! The coordinator: starts the workers, runs the rounds and their
//! quiescent points, cleans up, and prints the summary.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::block::Flavor;
use crate::check::{self, CurrentMode};
use crate::cli::{Args, Config};
use crate::exit;
use crate::fork::ForkOutcome;
use crate::model::{lock, Failure, Shared, OP_NAMES, SOAK};
use crate::rng::Rng;
use crate::worker;

/// Runs the soak test for a binary built with `flavor`; returns the exit
/// code.
pub fn main(flavor: Flavor) -> u8 {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    let cfg = match Config::from_args(args, flavor) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memcg-soak: {e}");
            return exit::USAGE;
        }
    };
    run(cfg)
}

fn run(cfg: Config) -> u8 {
    if let Some(n) = cfg.max_heaps {
        memcg::MemcgMimalloc::set_max_heaps(n);
    }
    let mode = CurrentMode::detect();
    eprintln!(
        "memcg-soak: allocator {}, seed {}, {} threads, {}, check every {} ops per worker, fork {}, memory.current {} (rerun: --seed {})",
        cfg.flavor.name(),
        cfg.seed,
        cfg.threads,
        match (cfg.duration, cfg.ops) {
            (Some(d), _) => format!("{:.1} s", d.as_secs_f64()),
            (None, Some(n)) => format!("{n} ops"),
            (None, None) => unreachable!("validated"),
        },
        cfg.check_every,
        match (cfg.fork, cfg.worker_forks) {
            (false, _) => "off",
            (true, false) => "at quiescent points only",
            (true, true) => "on",
        },
        mode.name(),
        cfg.seed,
    );
    let root = memcg::controller().root();
    root.attach_current().expect("attach to root");
    let sh = match Shared::new(cfg) {
        Ok(sh) => sh,
        Err(e) => {
            eprintln!("memcg-soak: making the soak group: {e}");
            return exit::FAILED;
        }
    };
    let start = Instant::now();
    let mut rng = Rng::new(sh.cfg.seed, 0);
    let mut last_progress = Instant::now();
    std::thread::scope(|s| {
        for i in 0..sh.cfg.threads {
            let sh = &sh;
            std::thread::Builder::new()
                .name(format!("soak-{i}"))
                .spawn_scoped(s, move || worker::run(sh, i))
                .expect("spawn a worker");
        }
        let mut round = 0u64;
        loop {
            sh.barrier.wait(); // A: the round's operations are done
            sh.barrier.wait(); // B: inboxes drained, tallies posted
            if !sh.failed() {
                let inject = if round == 0 { sh.cfg.inject } else { None };
                match check::quiescent(&sh, mode, inject) {
                    Ok(n) => {
                        sh.counters.checks.fetch_add(n, Ordering::Relaxed);
                        sh.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(f) => sh.fail(f.check, format!("at quiescent point {round}: {}", f.detail)),
                }
            }
            lock(&sh.tally).clear();
            if sh.cfg.fork && !sh.failed() && rng.chance(25) {
                quiescent_fork(&sh, round);
            }
            round += 1;
            let done_time = sh.cfg.duration.is_some_and(|d| start.elapsed() >= d);
            let done_ops = sh.cfg.ops.is_some_and(|n| sh.counters.total_ops() >= n);
            if sh.failed() || done_time || done_ops {
                sh.stop.store(true, Ordering::SeqCst);
            } else {
                attach_a_worker(&sh, &mut rng);
            }
            if let Some(p) = sh.cfg.progress {
                if last_progress.elapsed() >= p {
                    last_progress = Instant::now();
                    eprintln!("memcg-soak: {}", progress(&sh, start.elapsed()));
                }
            }
            sh.barrier.wait(); // C: next round, or stop
            if sh.stop.load(Ordering::SeqCst) {
                break;
            }
        }
    });
    if !sh.failed() {
        if let Err(f) = cleanup(&sh) {
            sh.fail(f.check, format!("at the end: {}", f.detail));
        }
    }
    let elapsed = start.elapsed();
    let failure = lock(&sh.failure).clone();
    let summary = summary(&sh, elapsed, mode);
    match failure {
        None => {
            println!("memcg-soak: ok: {summary}");
            exit::OK
        }
        Some(Failure { check, detail }) => {
            eprintln!(
                "memcg-soak: FAILED check {check} (allocator {}, seed {}): {detail}",
                sh.cfg.flavor.name(),
                sh.cfg.seed
            );
            println!("memcg-soak: FAILED check {check}: {summary}");
            exit::FAILED
        }
    }
}

/// At a quiescent point (workers at the barrier, reclaimers idle): a fork
/// whose child must pass every check, the library's invariants included.
fn quiescent_fork(sh: &Shared, round: u64) {
    let n = sh.counters.quiescent_forks.fetch_add(1, Ordering::Relaxed) + 1;
    match crate::fork::run(
        sh.flavor(),
        sh.cfg.fork_timeout,
        n,
        sh.cfg.inject == Some(crate::cli::InjectFault::ForkHang),
    ) {
        Ok(ForkOutcome::Ok) => {}
        Ok(ForkOutcome::Invariants) => sh.fail(
            "fork-invariants",
            format!("quiescent fork #{n} at point {round}: the library's invariants failed in the child (rerun with MEMCG_SOAK_VERBOSE=1 to see them)"),
        ),
        Err(e) => sh.fail("fork", format!("quiescent fork at point {round}: {e}")),
    }
}

/// At a quiescent point: attach a random worker to a random group (by
/// its handle, from this thread); it allocates there first thing next
/// round, then attaches itself back to root.
fn attach_a_worker(sh: &Shared, rng: &mut Rng) {
    if !rng.chance(50) {
        return;
    }
    let w = rng.below(sh.cfg.threads as u64) as usize;
    let Some(handle) = lock(&sh.handles)[w].clone() else {
        return;
    };
    let (id, g) = {
        let m = sh.model();
        let id = m.live[rng.below(m.live.len() as u64) as usize];
        (id, m.groups[id as usize].group.clone().expect("online"))
    };
    if g.attach(&handle).is_ok() {
        lock(&sh.attached_by_coordinator)[w] = Some(id);
    }
}

/// After the workers have freed everything: free the caches, remove
/// every group, and check that the soak group is back to zero.
fn cleanup(sh: &Shared) -> Result<(), Failure> {
    let ctrl = memcg::controller();
    ctrl.wait_reclaim_idle(Duration::from_secs(10));
    let (mut groups, caches) = {
        let mut m = sh.model();
        let caches: Vec<_> = m
            .groups
            .iter()
            .map(|e| std::mem::take(&mut *lock(&e.cache)))
            .collect();
        let mut groups: Vec<_> = m
            .live
            .iter()
            .map(|&id| {
                (
                    m.groups[id as usize].depth,
                    id,
                    m.groups[id as usize].group.clone().expect("online"),
                )
            })
            .collect();
        for e in m.groups.iter_mut() {
            e.reclaimer = None;
            e.kill_cb = None;
        }
        groups.sort_by_key(|(d, id, _)| (std::cmp::Reverse(*d), *id));
        (groups, caches)
    };
    drop(caches);
    memcg::flush_current();
    let soak = groups.pop().map(|(_, id, g)| {
        assert_eq!(id, SOAK, "the soak group is the shallowest");
        g
    });
    for (_, _, g) in &groups {
        if let Err(e) = g.remove() {
            return Err(Failure {
                check: "final-zero",
                detail: format!("removing {}: {e}", g.path()),
            });
        }
    }
    let soak = soak.expect("the soak group");
    ctrl.drain_stocks();
    let s = soak.stats();
    if s.stat.alloc_bytes != 0 || s.stat.reservation_bytes != 0 || s.current_bytes != 0 {
        return Err(Failure {
            check: "final-zero",
            detail: format!(
                "everything freed and every tenant removed, but the soak group still has alloc {} reservation {} memory.current {}",
                s.stat.alloc_bytes, s.stat.reservation_bytes, s.current_bytes
            ),
        });
    }
    check::invariants()?;
    soak.remove().map_err(|e| Failure {
        check: "final-zero",
        detail: format!("removing the soak group: {e}"),
    })?;
    sh.counters.checks.fetch_add(2, Ordering::Relaxed);
    Ok(())
}

fn peak_rss_mib() -> f64 {
    // SAFETY: `getrusage` fills the struct we pass; zeroed is a valid
    // `rusage`.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    ru.ru_maxrss as f64 / 1024.0
}

/// Resident set now, MiB (`/proc/self/statm`).
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / f64::from(1 << 20)
}

/// `MemcgMimalloc`'s heaps and fallback allocations, for the heaps binary.
fn heaps_note(sh: &Shared) -> String {
    match sh.flavor() {
        Flavor::Alloc => String::new(),
        Flavor::Heaps => format!(
            ", objcg heaps {}, fallback allocations {}",
            memcg::MemcgMimalloc::objcg_heaps(),
            memcg::MemcgMimalloc::fallback_allocations()
        ),
    }
}

fn progress(sh: &Shared, elapsed: Duration) -> String {
    let c = &sh.counters;
    let bytes = sh
        .model()
        .groups
        .first()
        .and_then(|e| e.group.as_ref())
        .map_or(0, |g| g.current_bytes());
    format!(
        "{:.0} s: {} ops, {} quiescent points, {} live groups, {} forks (+{} quiescent), soak memory.current {:.1} MiB, RSS {:.1} MiB (peak {:.1}){}",
        elapsed.as_secs_f64(),
        c.total_ops(),
        c.checkpoints.load(Ordering::Relaxed),
        sh.model().live.len(),
        c.forks.load(Ordering::Relaxed) + c.fork_invariants.load(Ordering::Relaxed),
        c.quiescent_forks.load(Ordering::Relaxed),
        bytes as f64 / f64::from(1 << 20),
        rss_mib(),
        peak_rss_mib(),
        heaps_note(sh),
    )
}

fn summary(sh: &Shared, elapsed: Duration, mode: CurrentMode) -> String {
    let c = &sh.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut ops = String::new();
    for (i, name) in OP_NAMES.iter().enumerate() {
        let _ = write!(
            ops,
            "{}{name} {}",
            if i == 0 { "" } else { ", " },
            get(&c.ops[i])
        );
    }
    let (passes, timeouts, panics) = memcg::controller().reclaimer_counters();
    format!(
        "allocator {}, seed {}, {} threads, {:.1} s, {} ops ({ops}); {} quiescent points, {} checks passed, memory.current {}; groups created {} removed {} (removals refused {}); forks {} (from running workers {}, of which {} children found the invariants violated; at quiescent points {}), threads {}; refused allocations {}, refused charges {}, killed futures {}, revived {}, kill callbacks {}; reclaim callbacks {} freed {} bytes (reclaimer passes {passes}, wait timeouts {timeouts}, panics {panics}); peak RSS {:.1} MiB{}",
        sh.cfg.flavor.name(),
        sh.cfg.seed,
        sh.cfg.threads,
        elapsed.as_secs_f64(),
        c.total_ops(),
        get(&c.checkpoints),
        get(&c.checks),
        mode.name(),
        get(&c.created),
        get(&c.removed),
        get(&c.remove_refused),
        get(&c.forks) + get(&c.fork_invariants) + get(&c.quiescent_forks),
        get(&c.forks) + get(&c.fork_invariants),
        get(&c.fork_invariants),
        get(&c.quiescent_forks),
        get(&c.threads),
        get(&c.refused),
        get(&c.charge_refused),
        get(&c.futures_killed),
        get(&c.revived),
        worker::KILL_CALLBACKS.load(Ordering::Relaxed),
        worker::RECLAIM_RUNS.load(Ordering::Relaxed),
        worker::RECLAIM_FREED_BYTES.load(Ordering::Relaxed),
        peak_rss_mib(),
        heaps_note(sh),
    )
}
