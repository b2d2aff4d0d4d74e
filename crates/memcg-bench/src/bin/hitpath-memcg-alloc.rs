//! `hitpath-memcg-alloc`: the hit-path program (see `memcg_bench::hitpath`)
//! with `MemcgAlloc<memcg::PlainMimalloc>` as the global allocator.

#[global_allocator]
static ALLOC: memcg::MemcgAlloc<memcg::PlainMimalloc> =
    memcg::MemcgAlloc::new(memcg::PlainMimalloc);

fn main() {
    memcg_bench::hitpath::main(true);
}
