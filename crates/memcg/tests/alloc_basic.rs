//! `MemcgAlloc<System>` as the global allocator: charging, freeing,
//! realloc, limits, reclaim, forced charges (the shared suite,
//! `common/alloc_suite.rs`).

use memcg::MemcgAlloc;

#[global_allocator]
static ALLOC: MemcgAlloc = MemcgAlloc::new(std::alloc::System);

/// Bytes a block of `size` bytes is charged: its size plus the trailer.
fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

mod common;

include!("common/alloc_suite.rs");
