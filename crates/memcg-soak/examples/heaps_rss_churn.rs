//! Reproducer: resident memory of `MemcgMimalloc` under group churn.
//!
//! Each round makes a group, allocates 16 MiB in it (blocks of 1 KiB to
//! 1 MiB) on the main thread in the group's scope, frees it all, removes
//! the group and prints the process's resident set. Live bytes go back to
//! 0 every round; compare RSS with `--features` nothing else: run it with
//! `cargo run --release -p memcg-soak --example heaps_rss_churn [ROUNDS] [THREADS]`.
//! With THREADS > 1 the blocks are freed by other threads than the one
//! that allocated them.

use std::hint::black_box;

#[global_allocator]
static ALLOC: memcg::MemcgMimalloc = memcg::MemcgMimalloc::new();

fn rss_mib() -> f64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1 << 20) as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let ctrl = memcg::controller();
    println!("round  rss_mib  group_current_after_free");
    for round in 0..rounds {
        let g = ctrl.create(&format!("churn-{round}")).expect("group");
        let fill = |g: &memcg::Group| {
            let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(4096);
            let _scope = g.enter().expect("scope");
            let mut total = 0usize;
            let mut i = 0usize;
            while total < 16 << 20 {
                i += 1;
                let size = 1024 << (i % 11);
                let b = black_box(vec![1u8; size]);
                total += size;
                blocks.push(b);
            }
            blocks
        };
        // ALLOC_THREAD=1: a short-lived thread allocates (and exits).
        let mut blocks = if std::env::var_os("ALLOC_THREAD").is_some() {
            std::thread::scope(|s| s.spawn(|| fill(&g)).join().expect("thread"))
        } else {
            fill(&g)
        };
        if threads > 1 {
            let per = blocks.len().div_ceil(threads - 1);
            let mut parts = Vec::new();
            while !blocks.is_empty() {
                let n = per.min(blocks.len());
                parts.push(blocks.split_off(blocks.len() - n));
            }
            std::thread::scope(|s| {
                for p in parts {
                    s.spawn(move || drop(p));
                }
            });
        }
        drop(blocks);
        ctrl.drain_stocks();
        let after = g.current_bytes();
        g.remove().expect("remove");
        if round % (rounds / 10).max(1) == 0 || round + 1 == rounds {
            println!("{round:5}  {:7.1}  {after}", rss_mib());
        }
    }
}
