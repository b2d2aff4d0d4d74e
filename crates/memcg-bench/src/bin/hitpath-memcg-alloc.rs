//! `hitpath-memcg-alloc`: the hit-path program (see `memcg_bench::hitpath`)
//! with `MemcgAlloc<mimalloc::MiMalloc>` as the global allocator.

#[global_allocator]
static ALLOC: memcg::MemcgAlloc<mimalloc::MiMalloc> = memcg::MemcgAlloc::new(mimalloc::MiMalloc);

fn main() {
    memcg_bench::hitpath::main(true);
}
