//! In-process memory cgroups: know and bound how much memory each tenant,
//! query or task of a Rust program holds, on which NUMA node, with the
//! design the Linux kernel uses for its own memory.
//!
//! # Setup
//! One line makes every allocation of the program charged to the group of
//! the thread, scope or future that makes it, and every free uncharged
//! from the group that was charged, whichever thread frees it:
//! ```ignore
//! #[global_allocator]
//! static ALLOC: memcg::MemcgAlloc<std::alloc::System> = memcg::MemcgAlloc::new(std::alloc::System);
//! ```
//! ([`MemcgAlloc<A>`](MemcgAlloc) wraps any `GlobalAlloc` and keeps each
//! block's group in an 8-byte trailer; over mimalloc, wrap
//! `PlainMimalloc`, feature `mimalloc`. `MemcgMimalloc`, feature
//! `mimalloc`, gives each group and node a mimalloc heap of its own
//! instead.)
//!
//! # What a service uses
//! - **The controller and its groups**: [`controller()`] is the process's
//!   [`Controller`]; [`Controller::create`], [`Controller::create_all`]
//!   (`mkdir -p`) and [`Controller::group`] give [`Group`]s, a tree with
//!   `max`/`high` [`Limit`]s; [`Group::remove`] moves what a group still
//!   holds to its parent.
//! - **Who is charged**: [`Group::attach_current`] (a thread),
//!   [`Group::enter`] (a [`Scope`]: a region of code on this thread),
//!   [`FutureExt::in_group`] (an [`InGroup`] future: every poll, on any
//!   worker), [`FutureExt::in_current_group`] and [`spawn`] (work that
//!   follows the caller; with feature `tokio`, `memcg::tokio::spawn` and
//!   `spawn_blocking`); [`current_group`] says which group is charged now.
//! - **Limits** (see the README's "Limits, reclaim and OOM"): over `high`
//!   the charge goes through and the controller's reclaimer threads run the
//!   group's reclaim callbacks ([`Group::register_reclaimer`]) off the
//!   allocation path; at `max` a charge waits for them at most
//!   [`Controller::reclaim_wait`], then the group's [`OomPolicy`] decides:
//!   kill (the default: the allocation succeeds and the tenant is killed:
//!   [`Group::is_killed`], [`Group::killed`], [`Group::on_oom_kill`],
//!   [`InGroup::killable`]), fail, or force. [`fallible()`] regions and
//!   explicit [`Reservation`]s ([`Group::try_charge`]) fail with
//!   [`Error::Charge`] instead; [`Reservation::spend`] pays for what is
//!   built with a reservation, counted once.
//! - **Figures**: [`Group::stats`] ([`GroupStats`]: `memory.current`,
//!   `memory.stat`, `memory.numa_stat`, [`Events`]) in the cgroup v2 text
//!   formats, [`export`] (Prometheus text; a `prometheus-client` collector
//!   and JSON behind features), and how exact they are
//!   ([`Group::error_bound`]).
//! - **Errors**: every operation returns a typed [`Error`] that says what
//!   to do next, and changes nothing when it fails.
//!
//! Glossary, from these docs to the kernel's words: group = memory cgroup;
//! charge bucket = `obj_cgroup` (objcg), one per group and node, what a
//! charged object points to; removing a group = offlining and reparenting;
//! attaching = `mem_cgroup_kmem_attach`; scope = `set_active_memcg`;
//! reclaim callback = shrinker; killed = OOM kill; fallible region =
//! `__GFP_RETRY_MAYFAIL`. The project's `docs/kernel-mapping.md` maps each
//! kernel function to the item that implements it.
//!
//! # The engine
//! [`engine`] is the explicit-context core the runtime drives: tasks
//! ([`engine::Task`], the kernel's `task_struct` view with the per-node
//! cache of the patch this project implements), charges, the seed's
//! constants, configuration. It takes the CPU of every operation as an
//! argument and never reads thread-locals or the real CPU, so simulators,
//! loom models and embedders drive it on any virtual machine. A
//! [`Controller`] made with [`Controller::new`] is such a domain of its
//! own: the global allocator charges only [`controller()`].
//!
//! # Example (the engine, on a virtual machine)
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

pub mod engine;
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

pub use engine::{
    ChargeKind, Controller, ErrorBound, Events, Group, GroupStats, InvariantViolations, Killed,
    MemoryEvent, MemoryStat, NodeStat, OomKillHandle, OomKilled, OomPolicy, ReclaimReason,
    ReclaimRequest, ReclaimerHandle, Reservation, TaskHandle, Topology,
};
pub use error::{ChargeError, Error, Result};
pub use limit::{parse_size_bytes, Limit, PAGE_SIZE};
#[cfg(not(memcg_loom))]
pub use runtime::*;
