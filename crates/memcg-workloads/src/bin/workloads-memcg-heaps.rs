//! `workloads-memcg-heaps`: the workloads on `memcg::MemcgMimalloc` (one
//! mimalloc heap per objcg, no per-block trailer), each in a group of its
//! own, with correctness and accuracy checks.

#[global_allocator]
static A: memcg::MemcgMimalloc = memcg::MemcgMimalloc::new();

fn main() {
    std::process::exit(memcg_workloads::child::main(
        memcg_workloads::child::Flavor::MemcgHeaps,
    ));
}
