//! `memcg-sim`: deterministic virtual NUMA machines that drive the memcg
//! engine (never a copy of it), check its invariants after every step, and
//! run the seed's experiment.
//!
//! # Index
//! - [`cli`]: the command line (clap, raw layer).
//! - [`scenario`]: scenario files: parsing with `file:line:column` errors,
//!   validation, [`scenario::Scenario`].
//! - [`parse`]: the raw layer of scenario files and its validation.
//! - [`metrics`]: the simulator's counts of a run.
//! - [`ops`]: the steps of a run ([`ops::Op`]) and simulator faults.
//! - [`workload`]: the seeded scheduler and workload generator.
//! - [`machine`]: the virtual machine: engine tasks on virtual CPUs, the
//!   exact model of live bytes.
//! - [`checks`]: the per-step and end-of-run checks and the stock bound.
//! - [`sim`]: one run of a scenario.
//! - [`report`]: `run`'s output (cgroup v2 text or JSON).
//! - [`compare`]: the per-node vs single-cache experiment.
//! - [`svg`]: the chart `compare` writes.
//! - [`fuzz`]: random scenarios and shrinking.
//! - [`rng`], [`progress`], [`exit`]: helpers.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod checks;
pub mod cli;
pub mod compare;
pub mod exit;
pub mod fuzz;
pub mod machine;
pub mod metrics;
pub mod ops;
pub mod parse;
pub mod progress;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod svg;
pub mod workload;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser as _;

/// A usage or input error (exit code 2), as opposed to an I/O failure.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Runs the command line `args` (program name first) and returns the exit
/// code ([`exit`]).
///
/// # Errors
/// I/O errors and usage errors; [`error_exit_code`] maps them to a code.
pub fn run<I, T>(args: I) -> anyhow::Result<u8>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            e.print().context("cannot print the usage message")?;
            return Ok(code);
        }
    };
    match cli.command {
        None => compare::command(&default_compare_args()),
        Some(cli::Command::Compare(a)) => compare::command(&a),
        Some(cli::Command::Run(a)) => report::command(&a),
        Some(cli::Command::Fuzz(a)) => fuzz::command(&a),
    }
}

fn default_compare_args() -> cli::CompareArgs {
    match cli::Cli::try_parse_from(["memcg-sim", "compare"]) {
        Ok(cli::Cli {
            command: Some(cli::Command::Compare(a)),
        }) => a,
        // The defaults above always parse.
        _ => unreachable!("`memcg-sim compare` parses"),
    }
}

/// The exit code for an error returned by [`run`]: 0 for a broken pipe
/// (the reader went away), 2 for everything else (bad input, I/O).
pub fn error_exit_code(err: &anyhow::Error) -> u8 {
    let broken_pipe = err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if broken_pipe {
        exit::OK
    } else {
        exit::USAGE
    }
}

/// Where generated files go by default: `$CARGO_TARGET_DIR/memcg-sim`, or
/// `./target/memcg-sim`.
pub fn default_out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("memcg-sim")
}

/// Parses the hidden `--inject FAULT@STEP[:GROUP]` flag into a step index
/// and the operation to insert there.
///
/// # Errors
/// [`UsageError`] for a malformed value.
pub fn parse_inject(value: &str) -> anyhow::Result<(u64, ops::Op)> {
    let bad = || {
        UsageError(format!(
            "--inject {value:?}: expected FAULT@STEP[:GROUP] with FAULT one of lose-charge, leak-charge, force-over-max"
        ))
    };
    let (kind, rest) = value.split_once('@').ok_or_else(bad)?;
    let kind = ops::SimFault::parse(kind).ok_or_else(bad)?;
    let (step, group) = match rest.split_once(':') {
        Some((s, g)) => (s, Some(g.to_string())),
        None => (rest, None),
    };
    let step = step.parse().map_err(|_| bad())?;
    Ok((step, ops::Op::Fault { kind, group }))
}

/// Inserts an injected fault into a step list (at most at its end).
pub fn inject(ops: &mut Vec<ops::Op>, injected: Option<&(u64, ops::Op)>) {
    if let Some((step, op)) = injected {
        let at = (*step as usize).min(ops.len());
        ops.insert(at, op.clone());
    }
}
