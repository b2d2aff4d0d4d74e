//! `workloads-mimalloc`: the workloads on bare mimalloc (the baseline).

#[global_allocator]
static A: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(memcg_workloads::child::main(
        memcg_workloads::child::Flavor::Mimalloc,
    ));
}
