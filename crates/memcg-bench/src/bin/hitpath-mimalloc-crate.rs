//! `hitpath-mimalloc-crate`: the hit-path program (see
//! `memcg_bench::hitpath`) with bare mimalloc through the `mimalloc`
//! crate's binding (`mimalloc::MiMalloc`, which calls mimalloc's aligned
//! entry points for every layout): the baseline of issue 12's figures,
//! kept beside the plain binding's.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    memcg_bench::hitpath::main(false);
}
