//! `memcg-soak`: the soak test over `MemcgAlloc<System>` (8-byte trailer
//! per block); everything else is in the library.

#[global_allocator]
static ALLOC: memcg::MemcgAlloc = memcg::MemcgAlloc::new(std::alloc::System);

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(memcg_soak::main(memcg_soak::Flavor::Alloc))
}
