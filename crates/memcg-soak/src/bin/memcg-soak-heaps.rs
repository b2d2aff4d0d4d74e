//! `memcg-soak-heaps`: the soak test over `MemcgMimalloc` (one mimalloc
//! heap per objcg); everything else is in the library.

#[global_allocator]
static ALLOC: memcg::MemcgMimalloc = memcg::MemcgMimalloc::new();

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(memcg_soak::main(memcg_soak::Flavor::Heaps))
}
