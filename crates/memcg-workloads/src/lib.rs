//! Real programs under memcg's `MemcgAlloc<memcg::PlainMimalloc>` against
//! bare mimalloc (issue 5, items 2 and 3), with correctness and accuracy
//! checks of the groups' accounting.
//!
//! # Overview
//! - [`workloads`]: the four programs ([`workloads::Workload`]: `json`,
//!   `regex`, `maps`, `rayon`) and what each keeps alive
//!   ([`workloads::Held`]).
//! - [`child`]: the `main` of the two measured binaries,
//!   `workloads-mimalloc` and `workloads-memcg`, which differ only in
//!   their `#[global_allocator]` ([`child::Flavor`]).
//! - [`monitor`]: the memcg child's unaccounted monitor thread: exact
//!   snapshots after flush and drain ([`monitor::Snapshot`]), sampling of
//!   `memory.current − live` ([`monitor::Gaps`]) against the documented
//!   bound (`memcg::Group::error_bound`).
//! - [`runner`]: the `workloads` binary: interleaved child runs, wall
//!   and CPU time and peak RSS, ratios, table and JSON.
//!
//! # Usage
//! ```text
//! cargo build --release -p memcg-workloads --bins
//! cargo run --release -p memcg-workloads --bin workloads -- [--reps 5] [--scale 1.0] [--quick] [--json]
//! ```

pub mod child;
pub mod monitor;
pub mod runner;
pub mod workloads;
