//! Real threads over `MemcgAlloc<System>`: allocation and free across
//! groups and threads, attaches from a controller thread while allocations
//! run, group removal with live objects. Bounded in time and count; ends
//! with the live bytes of every group equal to what is still alive, usage
//! back to zero once everything is freed, and the invariants holding.
//!
//! The only blocks the workers allocate are the payloads the test counts
//! and the vectors holding them (the exchange between threads and the
//! handle list are allocated up front by the main thread, in root).

use memcg::MemcgAlloc;

#[global_allocator]
static ALLOC: MemcgAlloc = MemcgAlloc::new(std::alloc::System);

mod common;

/// Bytes a block of `bytes` is charged (its size plus the trailer).
fn charged(bytes: usize) -> u64 {
    (bytes + memcg::TRAILER_BYTES) as u64
}

include!("common/stress_suite.rs");
