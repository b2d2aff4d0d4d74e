//! `memcg-vmcheck` with `MemcgMimalloc` (a mimalloc heap per group and node)
//! as the global allocator.

#[global_allocator]
static ALLOC: memcg::MemcgMimalloc = memcg::MemcgMimalloc::new();

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(memcg_vmcheck::run(&args, memcg_vmcheck::Allocator::Heaps));
}
