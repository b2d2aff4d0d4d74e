//! `shootout`: allocator shoot-out, see the library docs of `memcg_bench`.
//!
//! Run: `cargo run --release -p memcg-bench --bin shootout [-- --quick|--json|--threads 1,2,4|--svg-dir DIR]`.

use clap::Parser;

fn main() {
    let args = memcg_bench::Args::parse();
    if let Err(e) = memcg_bench::run(args) {
        eprintln!("shootout: {e}");
        std::process::exit(1);
    }
}
