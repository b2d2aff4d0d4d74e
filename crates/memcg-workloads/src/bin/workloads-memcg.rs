//! `workloads-memcg`: the workloads on `MemcgAlloc<memcg::PlainMimalloc>`,
//! each in a group of its own, with correctness and accuracy checks.

#[global_allocator]
static A: memcg::MemcgAlloc<memcg::PlainMimalloc> = memcg::MemcgAlloc::new(memcg::PlainMimalloc);

fn main() {
    std::process::exit(memcg_workloads::child::main(
        memcg_workloads::child::Flavor::Memcg,
    ));
}
