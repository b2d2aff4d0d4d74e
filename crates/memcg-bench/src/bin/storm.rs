//! `storm`: the cross-group free storm, see `memcg_bench::storm`.
//!
//! Run: `cargo run --release -p memcg-bench --bin storm [-- --quick|--reps 5|--threads 8]`.

use clap::Parser;

fn main() {
    let args = memcg_bench::storm::Args::parse();
    if let Err(e) = memcg_bench::storm::run(args) {
        eprintln!("storm: {e}");
        std::process::exit(2);
    }
}
