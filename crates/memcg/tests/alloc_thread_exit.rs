//! Thread exit: allocations and frees in other thread-local destructors,
//! after memcg's exit guard ran, are accounted to root and leave every
//! counter balanced (`MemcgAlloc`; the suite is `common/thread_exit_suite.rs`).

use memcg::MemcgAlloc;

#[global_allocator]
static ALLOC: MemcgAlloc = MemcgAlloc::new(std::alloc::System);

mod common;

/// Bytes a block of `size` bytes is charged: its size plus the trailer.
fn charged(size: usize) -> u64 {
    (size + memcg::TRAILER_BYTES) as u64
}

include!("common/thread_exit_suite.rs");
