//! The command line: raw options (clap) and the validated [`Config`].

use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::block::Flavor;

/// A deliberate bug, to show that a check fails when it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InjectFault {
    /// One block allocated in a tenant group and leaked untracked: the
    /// `exact-usage` check fails.
    Mistrack,
    /// The engine's `Fault::LeakByte` (a byte in a root objcg's pool out of
    /// nowhere): the `invariants` check fails.
    LeakByte,
    /// The engine's `Fault::StrayPage` (a page charged to the soak group
    /// that no objcg holds): the `current-bound` check fails.
    StrayPage,
    /// A tracked object counted twice by the soak: the `exact-usage` check
    /// fails (the soak's own bookkeeping, not the library, is wrong).
    DoubleCount,
    /// The soak forgets that it set byte limits: the first refused
    /// allocation or charge fails the `refusal` check (or a future ended
    /// by a kill fails `kill`, whichever comes first).
    ForgetLimits,
    /// Every forked child sleeps instead of exiting: the `fork` check
    /// fails when the watchdog kills it (use a short
    /// `--fork-timeout-secs`).
    ForkHang,
}

/// The allocator named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AllocatorArg {
    /// `MemcgAlloc<System>` (the `memcg-soak` binary).
    Alloc,
    /// `MemcgMimalloc` (the `memcg-soak-heaps` binary).
    Heaps,
}

/// A soak test of memcg's global allocators: worker threads run random
/// operations (allocate, free on another thread, realloc, attach, scopes,
/// futures, groups created and removed, limits, OOM policies, reclaim
/// callbacks, reservations, threads, fork), and every `--check-every`
/// operations per worker all threads stop and the exact usage of every
/// group, conservation and the library's invariants are checked.
#[derive(Debug, Parser)]
#[command(name = "memcg-soak", version)]
pub struct Args {
    /// Seed of the operations (each worker draws from its own stream);
    /// default: from the clock, printed so a failure can be rerun.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run for this many seconds (default 10 unless `--ops` is given).
    #[arg(long)]
    pub duration_secs: Option<f64>,
    /// Stop after this many operations in all (rounded up to whole rounds).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// The allocator this binary was built with (checked; each binary has
    /// one: `memcg-soak` is `alloc`, `memcg-soak-heaps` is `heaps`).
    #[arg(long, value_enum)]
    pub allocator: Option<AllocatorArg>,
    /// Skip the fork operation.
    #[arg(long)]
    pub no_fork: bool,
    /// Fork only at quiescent points (no thread inside the library), not
    /// from running workers: the forks that cannot catch another thread
    /// holding a lock of the library (see the README's "Fork").
    #[arg(long, conflicts_with = "no_fork")]
    pub quiescent_forks_only: bool,
    /// Operations per worker between quiescent checks.
    #[arg(long, default_value_t = 2000)]
    pub check_every: u64,
    /// A forked child that has not exited after this many seconds is
    /// killed and reported as hung.
    #[arg(long, default_value_t = 10.0)]
    pub fork_timeout_secs: f64,
    /// Fail when the library's invariants are violated in the child of a
    /// fork made by a running worker (by default counted and reported:
    /// other threads were caught mid-operation; forks at quiescent points
    /// always fail on it).
    #[arg(long)]
    pub strict_fork: bool,
    /// About one fork per this many operations of a worker.
    #[arg(long, default_value_t = 4000)]
    pub fork_every: u64,
    /// Most live groups at once (the soak group included).
    #[arg(long, default_value_t = 24)]
    pub max_groups: usize,
    /// Most bytes one worker keeps live (charged bytes).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_live_bytes: u64,
    /// `memcg-soak-heaps` only: `MemcgMimalloc::set_max_heaps` (objcgs past
    /// it allocate from the shared fallback heap). Each heap keeps pages
    /// per thread and size class that allocated from it, so with many
    /// groups the resident set grows by megabytes per heap (README).
    #[arg(long)]
    pub max_heaps: Option<usize>,
    /// Inject a deliberate bug at the first quiescent point (the run must
    /// then fail with the named check).
    #[arg(long, value_enum)]
    pub inject_fault: Option<InjectFault>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 10.0)]
    pub progress_secs: f64,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The allocator of this binary.
    pub flavor: Flavor,
    /// The seed.
    pub seed: u64,
    /// Time limit.
    pub duration: Option<Duration>,
    /// Operation limit (all workers).
    pub ops: Option<u64>,
    /// Worker threads.
    pub threads: usize,
    /// Whether the fork operation runs.
    pub fork: bool,
    /// Whether running workers fork too (not only quiescent points).
    pub worker_forks: bool,
    /// Operations per worker per round.
    pub check_every: u64,
    /// See `Args::strict_fork`.
    pub strict_fork: bool,
    /// Watchdog of a forked child.
    pub fork_timeout: Duration,
    /// One fork per this many worker operations, about.
    pub fork_every: u64,
    /// Most live groups.
    pub max_groups: usize,
    /// Most charged bytes a worker keeps live.
    pub max_live_bytes: u64,
    /// `MemcgMimalloc::set_max_heaps`, if given.
    pub max_heaps: Option<usize>,
    /// The fault to inject, if any.
    pub inject: Option<InjectFault>,
    /// Progress period.
    pub progress: Option<Duration>,
}

impl Config {
    /// Validates `args` for a binary built with `flavor`.
    ///
    /// # Errors
    /// A message for the user (exit code 2).
    pub fn from_args(args: Args, flavor: Flavor) -> Result<Config, String> {
        if let Some(a) = args.allocator {
            let named = match a {
                AllocatorArg::Alloc => Flavor::Alloc,
                AllocatorArg::Heaps => Flavor::Heaps,
            };
            if named != flavor {
                let bin = match named {
                    Flavor::Alloc => "memcg-soak",
                    Flavor::Heaps => "memcg-soak-heaps",
                };
                return Err(format!(
                    "this binary runs the {} allocator; --allocator {} is the {bin} binary",
                    flavor.name(),
                    named.name()
                ));
            }
        }
        if args.threads < 2 {
            return Err("--threads must be at least 2 (hand-offs need a peer)".into());
        }
        if args.check_every == 0 || args.fork_every == 0 {
            return Err("--check-every and --fork-every must be positive".into());
        }
        if args.max_groups < 2 {
            return Err("--max-groups must be at least 2".into());
        }
        if args.max_heaps.is_some() && flavor != Flavor::Heaps {
            return Err("--max-heaps is for memcg-soak-heaps (MemcgMimalloc)".into());
        }
        let secs = |v: f64, what: &str| {
            Duration::try_from_secs_f64(v).map_err(|_| format!("{what}: not a duration: {v}"))
        };
        let duration = match (args.duration_secs, args.ops) {
            (Some(d), _) => Some(secs(d, "--duration-secs")?),
            (None, None) => Some(Duration::from_secs(10)),
            (None, Some(_)) => None,
        };
        let seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        Ok(Config {
            flavor,
            seed,
            duration,
            ops: args.ops,
            threads: args.threads,
            fork: !args.no_fork,
            worker_forks: !args.no_fork && !args.quiescent_forks_only,
            strict_fork: args.strict_fork,
            check_every: args.check_every,
            fork_timeout: secs(args.fork_timeout_secs, "--fork-timeout-secs")?,
            fork_every: args.fork_every,
            max_groups: args.max_groups,
            max_live_bytes: args.max_live_bytes,
            max_heaps: args.max_heaps,
            inject: args.inject_fault,
            progress: (args.progress_secs > 0.0)
                .then(|| secs(args.progress_secs, "--progress-secs"))
                .transpose()?,
        })
    }
}
