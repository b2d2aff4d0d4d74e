//! A fork while other threads are inside the allocator must leave the
//! child's accounting consistent.
//!
//! Two threads allocate and free in a group's scope in a loop; the main thread
//! forks 200 times; each child runs `memcg::check_invariants()` and exits
//! 0 (clean), 1 (violations) or is killed after 5 s (hung). Before the
//! library's fork handlers, some children found a page counter charged
//! for a page that no stock, pool or object holds, and objcg references
//! no holder owns: the half-done charges of threads that do not exist in
//! the child (28 of 200 in one run). The handlers stop every thread at a
//! safe point before the copy: all 200 children are clean.
//!
//! `cargo run --release -p memcg-soak --example fork_in_flight`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: memcg::MemcgAlloc = memcg::MemcgAlloc::new(std::alloc::System);

fn main() {
    let ctrl = memcg::controller();
    let g = ctrl.create("busy").expect("group");
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let (g, stop) = (g.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                // In a scope: each charge takes the task's full path (it
                // pins the objcg), not the attached thread's fast path.
                let _scope = g.enter().expect("scope");
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let v = black_box(vec![t as u8; 16 + (i * 7919) % 20_000]);
                    drop(v);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let (mut clean, mut violated, mut hung) = (0, 0, 0);
    for _ in 0..200 {
        // SAFETY: the child only checks the invariants and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = match memcg::check_invariants() {
                Ok(()) => 0,
                Err(v) => {
                    eprintln!("{v}");
                    1
                }
            };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let start = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: `pid` is our child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    clean += 1;
                } else {
                    violated += 1;
                }
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                // SAFETY: `pid` is our child, not yet reaped.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                hung += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    println!("200 forks while 2 threads allocate: {clean} clean children, {violated} with invariant violations, {hung} hung");
    if violated + hung > 0 {
        std::process::exit(1);
    }
}
