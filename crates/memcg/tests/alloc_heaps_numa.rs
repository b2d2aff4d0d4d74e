//! NUMA attribution over `MemcgMimalloc` (one mimalloc heap per objcg, so
//! one per group and node) with real threads on a virtual 2-node machine
//! (`MEMCG_TOPOLOGY=2x1`); each case re-runs this binary as a child with
//! the variable set (the suite is `common/numa_suite.rs`).

use memcg::MemcgMimalloc;

#[global_allocator]
static ALLOC: MemcgMimalloc = MemcgMimalloc::new();

/// Bytes a block of `size` bytes is charged: its size.
fn charged(size: usize) -> u64 {
    size.max(1) as u64
}

include!("common/numa_suite.rs");
