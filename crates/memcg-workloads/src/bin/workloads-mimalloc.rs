//! `workloads-mimalloc`: the workloads on bare mimalloc (the baseline),
//! through `memcg::PlainMimalloc`, the binding `MemcgAlloc` runs over
//! (`MemcgMimalloc` calls mimalloc's plain entry points too).

#[global_allocator]
static A: memcg::PlainMimalloc = memcg::PlainMimalloc;

fn main() {
    std::process::exit(memcg_workloads::child::main(
        memcg_workloads::child::Flavor::Mimalloc,
    ));
}
