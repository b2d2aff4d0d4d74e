//! Reproducer: resident memory of `MemcgMimalloc` with many groups live at
//! once. THREADS threads each keep up to 2,000 blocks (1 B to 64 KiB,
//! charged to one of GROUPS groups through a scope) and replace a random
//! one at each step; live bytes stay about constant (printed), so should
//! the resident set once every (heap, thread, size class) has its pages.
//!
//! `cargo run --release -p memcg-soak --example heaps_rss_mixed [GROUPS] [THREADS] [SECONDS]`

use std::hint::black_box;
use std::time::{Duration, Instant};

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
    let groups: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let ctrl = memcg::controller();
    let gs: Vec<memcg::Group> = (0..groups)
        .map(|i| ctrl.create(&format!("mixed-{i}")).expect("group"))
        .collect();
    let soak = ctrl.root();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let gs = &gs;
            s.spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                let mut live: Vec<Option<Vec<u8>>> = (0..2000).map(|_| None).collect();
                while start.elapsed() < Duration::from_secs(secs) {
                    for _ in 0..10_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let g = &gs[(x >> 8) as usize % gs.len()];
                        let size = 1 + (x >> 20) as usize % (64 << 10);
                        let b = {
                            let _scope = g.enter().expect("scope");
                            black_box(vec![1u8; size])
                        };
                        live[(x >> 40) as usize % 2000] = Some(b);
                    }
                }
            });
        }
        while start.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_secs(5));
            println!(
                "{:4.0} s  RSS {:8.1} MiB  charged {:7.1} MiB  heaps {}",
                start.elapsed().as_secs_f64(),
                rss_mib(),
                soak.current_bytes() as f64 / (1 << 20) as f64,
                memcg::MemcgMimalloc::objcg_heaps()
            );
        }
    });
}
