//! The command line, raw layer (clap derive). `lib.rs` validates it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Deterministic virtual NUMA machines driving the memcg engine.
///
/// Without a subcommand, runs `compare` with its defaults.
#[derive(Debug, Parser)]
#[command(name = "memcg-sim", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the same workload with the per-node task cache and with the
    /// pre-seed single-objcg cache, and compare them side by side.
    ///
    /// The workload: two ping-pong tasks of one group on two nodes that
    /// free each other's objects (the pattern behind the kernel's reported
    /// regression) and worker tasks that migrate between CPUs and nodes.
    /// Prints a table (wrong-node bytes, stock slot replacements and
    /// drains, shared atomics, refreshes, worst accounting error) and
    /// writes an SVG chart of the same figures. Exits 1 if any invariant
    /// check fails in either run.
    Compare(CompareArgs),
    /// Run a scenario file with the invariant checks after every step and
    /// print per-group, per-node statistics in the cgroup v2 formats.
    ///
    /// Exits 1 on a violation (printing seed, step and operation), 2 on a
    /// malformed scenario (printing file:line:column).
    Run(RunArgs),
    /// Run random scenarios; on a violation, shrink the step list to a
    /// minimal reproducing scenario, write it as TOML, print its path and
    /// exit 1.
    Fuzz(FuzzArgs),
}

/// `compare` options.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// NUMA nodes of the virtual machine.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// CPUs per node.
    #[arg(long, default_value_t = 4)]
    pub cpus: usize,
    /// Tasks (two ping-pong tasks, the rest migrating workers); at least 2.
    /// Three switch pairs (ping-pong on CPU 0, one of each pair started on
    /// the last node) come on top.
    #[arg(long, default_value_t = 8)]
    pub tasks: usize,
    /// Steps of each run.
    #[arg(long, default_value_t = 200_000)]
    pub steps: u64,
    /// Seed of the scheduler and workload (both runs use it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Byte-stock slots per CPU (1 to 5): 1 is the kernel's obj stock
    /// before its multi-slot fix, where the seed's stock effect shows.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub obj_stock_slots: u8,
    /// Where to write the SVG chart [default: $CARGO_TARGET_DIR or
    /// ./target, then memcg-sim/compare.svg].
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Do not write the SVG chart.
    #[arg(long, conflicts_with = "svg")]
    pub no_svg: bool,
    /// Print the figures as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the workload as a scenario file (TOML) and exit.
    #[arg(long, value_name = "PATH")]
    pub dump_scenario: Option<PathBuf>,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file (TOML; see crates/memcg-sim/README.md).
    pub scenario: PathBuf,
    /// Print machine-readable JSON instead of the cgroup v2 text files.
    #[arg(long)]
    pub json: bool,
    /// Override `run.seed`.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override `run.steps`.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Run `check_invariants` every N steps instead of every step.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub invariants_every: u64,
    /// Hidden fault injection (tests).
    #[command(flatten)]
    pub inject: InjectArg,
}

/// `fuzz` options.
#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Number of random scenarios (seeds first-seed .. first-seed+K).
    #[arg(long, default_value_t = 200)]
    pub seeds: u64,
    /// Steps per scenario.
    #[arg(long, default_value_t = 20_000)]
    pub steps: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Directory for reproducers [default: $CARGO_TARGET_DIR or ./target,
    /// then memcg-sim/fuzz].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Worker threads [default: available parallelism]; output does not
    /// depend on it.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run `check_invariants` every N steps instead of every step.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub invariants_every: u64,
    /// Hidden fault injection (tests).
    #[command(flatten)]
    pub inject: InjectArg,
}

/// The hidden fault-injection flag (tests only).
#[derive(Debug, Args)]
pub struct InjectArg {
    /// Inject a simulator fault before step STEP:
    /// `lose-charge@STEP`, `leak-charge@STEP` or `force-over-max@STEP:GROUP`.
    #[arg(long, hide = true, value_name = "FAULT@STEP[:GROUP]")]
    pub inject: Option<String>,
}
