//! `hitpath-mimalloc`: the hit-path program (see `memcg_bench::hitpath`)
//! with bare mimalloc as the global allocator (the baseline).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    memcg_bench::hitpath::main(false);
}
