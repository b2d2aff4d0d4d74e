//! In-process memory cgroups: hierarchical, NUMA-aware memory accounting
//! and limits for the tenants, queries and tasks of one Rust process,
//! built on the design of the Linux kernel's per-node `obj_cgroup`
//! accounting.
//!
//! # Overview
//! - [`Controller`]: an accounting domain: a [`Topology`] (nodes and CPUs),
//!   a tree of [`Group`]s rooted at [`Controller::root`], per-CPU stocks,
//!   and [`Task`]s.
//! - [`Group`]: a node of the tree with `max`/`high` [`Limit`]s, usage,
//!   statistics ([`GroupStats`]) and events ([`Events`]); reclaim callbacks
//!   ([`Group::register_reclaimer`]); explicit [`Reservation`]s
//!   ([`Group::try_charge`]).
//! - [`Task`]: a thread's view: its per-node objcg cache (the seed patch's
//!   `task->objcgs`), charging ([`Task::charge`] → [`Charge`]), overrides
//!   ([`Task::enter`]); other threads move it with
//!   [`Group::attach`]`(&task.handle())`.
//! - Limits: over `high` a charge goes through and the controller's
//!   reclaimer thread runs the group's reclaim callbacks
//!   ([`Group::register_reclaimer`]) off the allocation path; at `max` a
//!   charge waits for them at most [`Controller::reclaim_wait`], then the
//!   group's [`OomPolicy`] decides: kill (the default: the allocation
//!   succeeds and the group is killed, see [`Group::is_killed`],
//!   [`Group::killed`], [`Group::on_oom_kill`], [`InGroup::killable`]),
//!   fail, or force.
//! - Fallible charges never kill: explicit charges and fallible regions
//!   ([`fallible()`], [`Task::enter_fallible`]) fail with [`Error::Charge`];
//!   a spent reservation ([`Reservation::spend`], [`Task::spend`]) pays for
//!   the allocations made with it, counted once.
//! - Checking: [`Controller::check_invariants`] verifies conservation and
//!   balance and returns [`InvariantViolations`].
//!
//! The engine takes the CPU of every operation as an argument and never
//! reads thread-locals or the real CPU, so tests, loom models and the
//! simulator drive it on any virtual machine.
//!
//! # Accounting a whole process
//! The runtime supplies the real values: one global controller
//! ([`controller()`]), a task per thread, scopes ([`Group::enter`]),
//! futures ([`FutureExt::in_group`]) and a global allocator that charges
//! every allocation to its thread's group:
//! - [`MemcgAlloc<A>`](MemcgAlloc) wraps any `GlobalAlloc` and keeps each
//!   block's objcg in an 8-byte trailer ([`TRAILER_BYTES`]);
//! - `MemcgMimalloc` (feature `mimalloc`) gives each objcg a mimalloc heap
//!   of its own and finds a freed block's objcg from its heap: no bytes per
//!   block, and within 1.10× of bare mimalloc on the real programs of the
//!   project's `BENCHMARKS.md`.
//!
//! # Example
//! ```
//! use memcg::{ChargeKind, Controller, Limit, Topology};
//!
//! let ctrl = Controller::new(Topology::from_spec("2x4")?); // 2 nodes × 4 CPUs
//! let tenant = ctrl.create("tenants")?.create_child("a")?;
//! tenant.set_max(Limit::parse("1M")?)?;
//!
//! let task = ctrl.new_task(&tenant)?;
//! let on_node0 = task.charge(0, 4096, ChargeKind::Alloc)?; // CPU 0, node 0
//! let on_node1 = task.charge(5, 4096, ChargeKind::Alloc)?; // CPU 5, node 1
//! task.flush(5)?; // statistics are batched per task; flush them
//! let numa = tenant.stats().numa;
//! assert_eq!(numa[0].hierarchical.alloc_bytes, 4096);
//! assert_eq!(numa[1].hierarchical.alloc_bytes, 4096);
//!
//! // Explicit reservations fail with a typed error at the limit.
//! let err = tenant.try_charge(2 << 20).unwrap_err();
//! assert!(err.to_string().contains("exceeds limit"));
//!
//! task.uncharge(0, on_node0)?;
//! task.uncharge(5, on_node1)?;
//! drop(task);
//! ctrl.drain_stocks();
//! assert_eq!(tenant.current_bytes(), 0);
//! assert!(ctrl.check_invariants().is_ok());
//! # Ok::<(), memcg::Error>(())
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![deny(unsafe_op_in_unsafe_fn)]
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(memcg_loom, allow(dead_code, unused_imports))]

mod engine;
mod error;
pub mod export;
mod heap_table;
mod limit;
#[cfg(not(memcg_loom))]
mod runtime;
mod sync;

#[cfg(all(test, memcg_loom))]
mod tests;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

pub use engine::*;
pub use error::{ChargeError, Error, Result};
pub use limit::{parse_size_bytes, Limit, PAGE_COUNTER_MAX, PAGE_SIZE};
#[cfg(not(memcg_loom))]
pub use runtime::*;
