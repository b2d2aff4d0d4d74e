//! `workloads-memcg`: the workloads on `MemcgAlloc<mimalloc::MiMalloc>`,
//! each in a group of its own, with correctness and accuracy checks.

#[global_allocator]
static A: memcg::MemcgAlloc<mimalloc::MiMalloc> = memcg::MemcgAlloc::new(mimalloc::MiMalloc);

fn main() {
    std::process::exit(memcg_workloads::child::main(
        memcg_workloads::child::Flavor::Memcg,
    ));
}
