//! The explicit-context accounting engine: no thread-locals, no real CPU
//! ids; the controller, the task and the CPU are arguments.

pub(crate) mod controller;
pub(crate) mod core;
pub(crate) mod group;
pub(crate) mod invariants;
pub(crate) mod memcg;
pub(crate) mod obj_cgroup;
pub(crate) mod page_counter;
pub(crate) mod reclaim;
pub(crate) mod reservation;
pub(crate) mod stats;
pub(crate) mod stock;
pub(crate) mod sys_alloc;
pub(crate) mod task;
pub(crate) mod topology;

pub use controller::{Config, Controller, EngineCounters, TaskCacheMode};
pub use group::{validate_name, Group, MAX_NAME_BYTES};
#[cfg(any(test, feature = "fault-injection"))]
pub use invariants::Fault;
pub use invariants::InvariantViolations;
pub use memcg::{ChargeKind, MemoryEvent};
pub use reclaim::{ReclaimReason, ReclaimRequest, ReclaimerHandle, MAX_CONCURRENT_RUNS};
pub use reservation::Reservation;
pub use stats::{Events, GroupStats, MemoryStat, NodeStat};
pub use stock::{MEMCG_CHARGE_BATCH, NR_MEMCG_STOCK, NR_OBJ_STOCK};
pub use task::{
    ActiveGuard, Charge, Task, TaskHandle, CURRENT_OBJCG_UPDATE_FLAG, TASK_CACHE_BOUND_BYTES,
};
pub use topology::{Topology, MAX_CPUS, MAX_NODES};

#[cfg(all(feature = "mimalloc", not(memcg_loom)))]
pub(crate) use obj_cgroup::alloc_cookie;
