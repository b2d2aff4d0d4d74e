//! `workloads-mimalloc`: the workloads on bare mimalloc (the baseline),
//! through `memcg::PlainMimalloc`, the binding `MemcgAlloc` runs over
//! (`MemcgMimalloc` picks mimalloc's entry points by the same rule).

#[global_allocator]
static A: memcg::PlainMimalloc = memcg::PlainMimalloc;

fn main() {
    std::process::exit(memcg_workloads::child::main(
        memcg_workloads::child::Flavor::Mimalloc,
    ));
}
