//! Checks memcg's per-node figures against the machine they run on.
//!
//! - `topology`: the runtime's topology ([`memcg::controller`]) against
//!   sysfs, and its CPU id source against `getcpu` on every online CPU.
//! - `placement`: a thread of group `probe` pinned to each node allocates
//!   known objects; where their pages are (`move_pages`) against the node
//!   they are charged to.
//! - `kernel-agree`: inside a cgroup v2 group, the change of the kernel's
//!   `memory.numa_stat` `anon` per node against the change of memcg's
//!   per-node figures for the same allocations, within a derived tolerance.
//! - `node-full`: past a node's free memory, the kernel's fallback to
//!   another node is counted by `MemcgMimalloc::node_fallback_bytes`.
//!
//! Built twice: `memcg-vmcheck-heaps` (`MemcgMimalloc`) and
//! `memcg-vmcheck-alloc` (`MemcgAlloc<System>`). `scripts/vm/run.sh` runs
//! them in NUMA VMs; on a one-node host they check what they can and say
//! what they skip. Exit status: [`exit::OK`], [`exit::FAILED`],
//! [`exit::USAGE`].

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod agree;
pub mod kernel;
pub mod node_full;
pub mod placement;
pub mod topology;

/// Exit statuses.
pub mod exit {
    /// Every check passed (or was skipped, with a `skip:` line saying why).
    pub const OK: i32 = 0;
    /// A check failed.
    pub const FAILED: i32 = 1;
    /// Bad arguments, or the machine could not be read.
    pub const USAGE: i32 = 2;
}

/// The global allocator the binary was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// `MemcgMimalloc`: a mimalloc heap per (group, node) objcg.
    Heaps,
    /// `MemcgAlloc<System>`: glibc's malloc with a trailer per block.
    Alloc,
}

impl Allocator {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Allocator::Heaps => "heaps",
            Allocator::Alloc => "alloc",
        }
    }
}

/// What a check found: lines to print and whether it passed.
#[derive(Debug, Default)]
pub struct Report {
    /// Failed checks, one line each.
    pub failures: Vec<String>,
}

impl Report {
    /// Records `ok`, printing `what` as a failure if false.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            let what = what.into();
            println!("FAIL: {what}");
            self.failures.push(what);
        }
    }
}

const USAGE: &str = "usage: memcg-vmcheck-{heaps,alloc} topology | placement [--min-percent P] | kernel-agree | node-full | all";

/// Runs the subcommand in `args` and returns the exit status.
pub fn run(args: &[String], allocator: Allocator) -> i32 {
    let mut report = Report::default();
    let result = match args.first().map(String::as_str) {
        Some("topology") => topology::run(&mut report),
        Some("placement") => placement::run(&args[1..], allocator, &mut report),
        Some("kernel-agree") => agree::run(allocator, &mut report),
        Some("node-full") => node_full::run(allocator, &mut report),
        // The kernel agreement first, while the process has freed nothing
        // (memory freed earlier and reused would hide in both deltas).
        Some("all") => agree::run(allocator, &mut report)
            .and_then(|()| topology::run(&mut report))
            .and_then(|()| placement::run(&args[1..], allocator, &mut report)),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Err(error) => {
            eprintln!("memcg-vmcheck: {error}");
            exit::USAGE
        }
        Ok(()) if report.failures.is_empty() => exit::OK,
        Ok(()) => {
            println!("{} check(s) failed", report.failures.len());
            exit::FAILED
        }
    }
}
