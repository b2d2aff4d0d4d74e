//! Thread exit over `MemcgMimalloc`: allocations and frees in thread-local
//! destructors that run after memcg's exit guard (and around mimalloc's
//! own thread teardown) are accounted to root and leave every counter
//! balanced (the suite is `common/thread_exit_suite.rs`).

use memcg::MemcgMimalloc;

#[global_allocator]
static ALLOC: MemcgMimalloc = MemcgMimalloc::new();

mod common;

/// Bytes a block of `size` bytes is charged: its size.
fn charged(size: usize) -> u64 {
    size.max(1) as u64
}

include!("common/thread_exit_suite.rs");
