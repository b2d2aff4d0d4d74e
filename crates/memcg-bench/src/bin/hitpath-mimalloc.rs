//! `hitpath-mimalloc`: the hit-path program (see `memcg_bench::hitpath`)
//! with bare mimalloc as the global allocator (the baseline), through
//! `memcg::PlainMimalloc`, the binding `MemcgAlloc` runs over.

#[global_allocator]
static ALLOC: memcg::PlainMimalloc = memcg::PlainMimalloc;

fn main() {
    memcg_bench::hitpath::main(false);
}
