//! The explicit-context engine, for simulators, tests and embedders: no
//! thread-locals, no real CPU ids; the controller, the task and the CPU
//! are arguments.
//!
//! A service uses the crate root ([`crate::controller()`], groups, the
//! allocators, scopes and futures); the runtime drives this engine for
//! it. Here are the parts the runtime hides: [`Task`] (a thread's view:
//! the per-node cache of the kernel patch this project implements, its
//! byte cache, charging with an explicit CPU: [`Task::charge`] →
//! [`Charge`]), overrides and fallible regions as guards
//! ([`ActiveGuard`], [`FallibleGuard`], [`SpendGuard`]), the controller's
//! [`Config`], counters of the engine's work ([`EngineCounters`]), and the
//! kernel's constants ([`NR_OBJ_STOCK`], [`MEMCG_CHARGE_BATCH`], ...).
//! The crate docs' example drives it on a virtual 2-node machine.
//!
//! Layers, imports running downward only: topology, page counters, stocks,
//! `locked_vec`, `policy` → the group tree (`memcg`) → objcgs
//! (`obj_cgroup`) and the reclaimer thread (`reclaim`) → the task's shared
//! part (`task_shared`: the seed's tagged word, the byte cache's counters,
//! attach, task handles) → the charge path (`core`) → reservations → group
//! handles (`group`) → the task layer (`task`, with its `impl` blocks split
//! by concept: the seed's cache in `objcg_cache`, the byte cache in
//! `byte_cache`, the allocator's hit path in `fast_path`) → the controller
//! → the checkers (`invariants`). `stats` reads the tree only.

pub(crate) mod bound;
pub(crate) mod byte_cache;
pub(crate) mod controller;
pub(crate) mod core;
pub(crate) mod fast_path;
#[cfg(not(memcg_loom))]
pub(crate) mod fork;
pub(crate) mod group;
pub(crate) mod invariants;
pub(crate) mod locked_vec;
pub(crate) mod memcg;
pub(crate) mod obj_cgroup;
pub(crate) mod objcg_cache;
pub(crate) mod page_counter;
pub(crate) mod policy;
pub(crate) mod reclaim;
pub(crate) mod reservation;
pub(crate) mod stats;
pub(crate) mod stock;
pub(crate) mod sys_alloc;
pub(crate) mod task;
pub(crate) mod task_shared;
pub(crate) mod topology;

pub use bound::ErrorBound;
pub use byte_cache::TASK_CACHE_BOUND_BYTES;
pub use controller::{
    Config, Controller, EngineCounters, DEFAULT_RECLAIMER_THREADS, DEFAULT_RECLAIM_WAIT,
};
pub use group::{validate_name, Group, Killed, MAX_NAME_BYTES};
#[cfg(any(test, feature = "fault-injection"))]
pub use invariants::Fault;
pub use invariants::InvariantViolations;
pub use memcg::{ChargeKind, MemoryEvent};
pub use policy::{OomKilled, OomPolicy, ReclaimReason, ReclaimRequest};
pub use reclaim::{OomKillHandle, ReclaimerHandle, MAX_RECLAIMER_THREADS};
pub use reservation::Reservation;
pub use stats::{Events, GroupStats, MemoryStat, NodeStat};
pub use stock::{MEMCG_CHARGE_BATCH, NR_MEMCG_STOCK, NR_OBJ_STOCK};
pub use task::{ActiveGuard, Charge, FallibleGuard, SpendGuard, Task};
pub use task_shared::{TaskCacheMode, TaskHandle, CURRENT_OBJCG_UPDATE_FLAG};
pub use topology::{Topology, MAX_CPUS, MAX_NODES};

pub use crate::limit::PAGE_COUNTER_MAX;

#[cfg(all(feature = "mimalloc", not(memcg_loom)))]
pub(crate) use obj_cgroup::{alloc_cookie, objcg_nid};
