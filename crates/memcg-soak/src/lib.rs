//! `memcg-soak`: a soak test of memcg's real global allocators
//! (`MemcgAlloc<System>` in the `memcg-soak` binary, `MemcgMimalloc` in
//! `memcg-soak-heaps`).
//!
//! Worker threads run random operations drawn from the seed (each worker
//! its own stream): allocations of various sizes and alignments with the
//! thread attached to a group, in scopes (nested), in killable `InGroup`
//! futures, from reservations being spent and in fallible regions; frees,
//! also on other threads (hand-offs between workers); reallocs; groups
//! made and removed with live objects; limits (`max`, `high`, below usage)
//! and OOM policies; reclaim callbacks that free the tenant's cache; kill
//! callbacks; reservations; threads started and exited; and forks.
//! Every `--check-every` operations per worker, all threads stop at a
//! barrier and the coordinator checks (see [`check`]).
//!
//! - [`cli`]: options and their validation;
//! - [`model`]: what the soak knows (groups, inboxes, counters);
//! - [`worker`]: the operations;
//! - [`check`]: the quiescent point's checks;
//! - [`fork`]: the fork operation and its watchdog;
//! - [`block`], [`exec`], [`rng`]: tracked blocks, a tiny executor, the
//!   generator.
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod block;
pub mod check;
pub mod cli;
pub mod exec;
pub mod fork;
pub mod model;
pub mod rng;
mod run;
pub mod worker;

pub use block::Flavor;
pub use run::main;

/// Exit codes.
pub mod exit {
    /// Every check passed.
    pub const OK: u8 = 0;
    /// A check failed (named on stderr and in the summary).
    pub const FAILED: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
}
