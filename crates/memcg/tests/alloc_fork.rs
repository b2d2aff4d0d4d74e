//! fork() in a multithreaded process under `MemcgAlloc` (the suite is
//! `common/fork_suite.rs`).

use memcg::MemcgAlloc;

#[global_allocator]
static ALLOC: MemcgAlloc = MemcgAlloc::new(std::alloc::System);

mod common;

include!("common/fork_suite.rs");
