//! `workloads`: the runner; see `memcg_workloads::runner`.
//!
//! Build all three binaries first (the runner starts the other two from
//! its own directory):
//! `cargo build --release -p memcg-workloads --bins && cargo run --release -p memcg-workloads --bin workloads`.

fn main() {
    std::process::exit(memcg_workloads::runner::main());
}
