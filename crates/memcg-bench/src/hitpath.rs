//! The hit-path program counted by `ci/hitpath-budget.sh`: `N` pairs of a
//! 64-byte allocation and its free through the process's global allocator.
//!
//! A global allocator is chosen per binary, so each allocator has a binary
//! of its own (`hitpath-mimalloc` and `hitpath-mimalloc-crate` for bare
//! mimalloc through two bindings, `hitpath-trailer-only` for a wrapper
//! with `MemcgAlloc`'s owner word and no accounting, `hitpath-memcg-alloc`,
//! `hitpath-memcg-mimalloc`), all running [`main`]. The script runs each
//! one under `valgrind --tool=callgrind` with two pair counts and divides
//! the difference of the instruction totals by the difference of the
//! counts, so that start-up and the first allocations (the thread's task,
//! the group, the objcg's first page) cancel out. Instruction counts do
//! not depend on the machine's load, so the figure is deterministic.
//!
//! The program attaches its thread to a group first (the allocators' hit
//! path is the same for root, but a group is what a service runs in), or
//! with [`SCOPE_FLAG`] enters a scope of it, then runs the pairs with
//! [`std::alloc::alloc`] and [`std::alloc::dealloc`], the block passed
//! through [`std::hint::black_box`] so that the optimizer cannot elide the
//! pair.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::hint::black_box;

/// Bytes of each block.
pub const BLOCK_BYTES: usize = 64;

/// `N` pairs of a [`BLOCK_BYTES`]-byte allocation and free through the
/// global allocator.
#[inline(never)]
pub fn run_pairs(n: u64) {
    let layout = Layout::from_size_align(BLOCK_BYTES, 8).expect("layout");
    for _ in 0..n {
        // SAFETY: the layout has a non-zero size; the block is checked
        // non-null and freed once, with the same layout.
        unsafe {
            let p = alloc(layout);
            if p.is_null() {
                handle_alloc_error(layout);
            }
            dealloc(black_box(p), layout);
        }
    }
}

/// Pairs run before a timed run ([`TIME_FLAG`]), so that the first
/// allocations (the task, the group's objcg, mimalloc's first page) and a
/// cold cache are not timed.
pub const WARM_UP_PAIRS: u64 = 1_000_000;

/// The flag, after the pair count, that makes a binary time its pairs
/// (after [`WARM_UP_PAIRS`]) and print the mean nanoseconds per pair on
/// stdout (`hitpath-time` runs them so).
pub const TIME_FLAG: &str = "--time";

/// The flag, after the pair count, that runs the pairs inside a scope of
/// the group ([`memcg::Group::enter`], as the runtime's scopes and a
/// `Future` wrapped in its group do), the thread itself staying in root:
/// `ci/hitpath-budget.sh` holds a budget on that path too. A memcg
/// binary only.
pub const SCOPE_FLAG: &str = "--scope";

/// The binaries' `main`: `argv[1]` is the number of pairs (default
/// 1,000,000), then optionally [`TIME_FLAG`] and [`SCOPE_FLAG`], in any
/// order; `memcg` says whether the global allocator is one of memcg's,
/// whose thread is then attached to a group before the pairs (or, with
/// [`SCOPE_FLAG`], enters a scope of it).
pub fn main(memcg: bool) {
    // The arguments are parsed and dropped before the pairs: a block left
    // live in a size class changes the allocator's path (a page that never
    // empties), and with it the instruction count.
    let (n, timed, scoped) = {
        let mut args = std::env::args().skip(1);
        let n: u64 = match args.next() {
            Some(s) => s.parse().unwrap_or_else(|_| {
                eprintln!("hitpath: the argument is a number of pairs, not {s:?}");
                std::process::exit(2)
            }),
            None => 1_000_000,
        };
        let (mut timed, mut scoped) = (false, false);
        for s in args {
            match s.as_str() {
                TIME_FLAG => timed = true,
                SCOPE_FLAG if memcg => scoped = true,
                _ => {
                    let flags = if memcg {
                        format!("{TIME_FLAG} or {SCOPE_FLAG}")
                    } else {
                        TIME_FLAG.to_string()
                    };
                    eprintln!("hitpath: after the pair count, only {flags}, not {s:?}");
                    std::process::exit(2)
                }
            }
        }
        (n, timed, scoped)
    };
    let _scope = if memcg {
        let group = memcg::controller()
            .create("hitpath")
            .expect("create the group");
        if scoped {
            Some(group.enter().expect("enter a scope of the group"))
        } else {
            group.attach_current().expect("attach");
            None
        }
    } else {
        None
    };
    if !timed {
        run_pairs(n);
        return;
    }
    run_pairs(WARM_UP_PAIRS);
    let start = std::time::Instant::now();
    run_pairs(n);
    let ns = start.elapsed().as_nanos() as f64;
    println!("{:.4}", ns / n.max(1) as f64);
}
