//! fork() in a multithreaded process under `MemcgMimalloc` (the suite is
//! `common/fork_suite.rs`).

use memcg::MemcgMimalloc;

#[global_allocator]
static ALLOC: MemcgMimalloc = MemcgMimalloc::new();

mod common;

include!("common/fork_suite.rs");
