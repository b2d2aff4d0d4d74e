//! `hitpath-memcg-mimalloc`: the hit-path program (see
//! `memcg_bench::hitpath`) with `MemcgMimalloc` as the global allocator.

#[global_allocator]
static ALLOC: memcg::MemcgMimalloc = memcg::MemcgMimalloc;

fn main() {
    memcg_bench::hitpath::main(true);
}
