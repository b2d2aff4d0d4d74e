//! The real-thread stress test of `alloc_stress.rs` over `MemcgMimalloc`
//! (one mimalloc heap per objcg): allocation and free across groups and
//! threads, attaches while allocations run, group removal with live
//! objects; live bytes exact, usage back to zero, invariants holding.

use memcg::MemcgMimalloc;

#[global_allocator]
static ALLOC: MemcgMimalloc = MemcgMimalloc::new();

mod common;

/// Bytes a block of `bytes` is charged (its size).
fn charged(bytes: usize) -> u64 {
    bytes.max(1) as u64
}

include!("common/stress_suite.rs");
