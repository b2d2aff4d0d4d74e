//! `memcg-vmcheck` with `MemcgAlloc<System>` (glibc's malloc, which memcg
//! does not control) as the global allocator.

#[global_allocator]
static ALLOC: memcg::MemcgAlloc<std::alloc::System> = memcg::MemcgAlloc::new(std::alloc::System);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(memcg_vmcheck::run(&args, memcg_vmcheck::Allocator::Alloc));
}
