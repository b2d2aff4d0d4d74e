//! NUMA attribution with real threads on a virtual 2-node machine
//! (`MEMCG_TOPOLOGY=2x1`: CPU 0 on node 0, CPU 1 on node 1). The controller
//! reads the variable at the first allocation, before `main`, so each case
//! re-runs this test binary as a child process with the variable set.

use memcg::MemcgAlloc;

#[global_allocator]
static ALLOC: MemcgAlloc = MemcgAlloc::new(std::alloc::System);

/// Bytes a block of `size` bytes is charged: its size plus the trailer.
fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

include!("common/numa_suite.rs");
