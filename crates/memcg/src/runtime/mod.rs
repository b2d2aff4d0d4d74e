//! The ambient layer: the real process. One global controller, the real
//! topology and CPU, a task per thread, scopes and futures, and the
//! `GlobalAlloc` adapter.
//!
//! After `#[global_allocator] static A: memcg::MemcgAlloc = memcg::MemcgAlloc::new(std::alloc::System);`
//! every allocation of the process is charged to the group of the thread
//! (or of its active [`Scope`]) that makes it.

pub(crate) mod alloc;
pub(crate) mod cpu;
pub(crate) mod fork;
pub(crate) mod global;
pub(crate) mod limits;
#[cfg(feature = "mimalloc")]
pub(crate) mod mi_page_map;
#[cfg(feature = "mimalloc")]
pub(crate) mod mimalloc;
#[cfg(feature = "mimalloc")]
pub(crate) mod node_arena;
#[cfg(feature = "mimalloc")]
pub(crate) mod plain_mimalloc;
pub(crate) mod scope;
pub(crate) mod thread;
#[cfg(feature = "tokio")]
pub mod tokio;
pub(crate) mod topology;

pub use alloc::{MemcgAlloc, TRAILER_BYTES};
pub use fork::tasks_retired_after_fork;
pub use global::{controller, cpu_id_source, current_cpu_id, current_node_id};
pub use limits::{fallible, Killable, Spend};
#[cfg(feature = "mimalloc")]
pub use mimalloc::{MemcgMimalloc, MAX_OBJCG_HEAPS};
#[cfg(feature = "mimalloc")]
pub use node_arena::NODE_ARENA_BYTES;
#[cfg(feature = "mimalloc")]
pub use plain_mimalloc::PlainMimalloc;
pub use scope::{FutureExt, InGroup, Scope};
pub use thread::{
    allocations_under_engine_locks, attached_group, check_invariants, current_group,
    current_thread, flush_current, set_current_exempt, spawn, BuilderExt,
};
