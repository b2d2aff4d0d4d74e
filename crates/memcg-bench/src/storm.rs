//! The cross-group free storm (issue 12, point 2): `threads` threads in a
//! ring, each allocating small blocks in batches and sending every batch
//! to the next thread, which frees it; so every block is freed by another
//! thread than the one that allocated it.
//!
//! Two placements: every thread in root, and the threads spread over 4
//! groups (thread `t` in group `t % 4`), so that a free uncharges another
//! group than the freeing thread's: the case per-object ownership exists
//! for. Four allocators, called directly (none is the global allocator),
//! in the same process, interleaved round-robin in every repetition:
//! `System`, `MemcgAlloc<System>`, bare mimalloc (through
//! [`memcg::PlainMimalloc`], mimalloc's plain entry points where its
//! alignment covers the layout, the rule `MemcgMimalloc` follows for its
//! heaps too) and `MemcgMimalloc`. Each
//! memcg allocator's ratio is its time over its bare allocator's in the
//! same repetition (above 1 is slower); the table gives the median time
//! and the min/median/max ratio over repetitions.
//!
//! Every allocator runs once untimed in each placement first (a tenth
//! of the allocations), so that first pages, heaps and tasks are made.
//!
//! A thread drains the batches it has received after each batch it sends
//! (so the blocks in flight stay few), and after its last batch frees what
//! is still coming until the previous thread hangs up.

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::sync::mpsc;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use clap::Parser;
use memcg::PlainMimalloc;
use memcg::{MemcgAlloc, MemcgMimalloc};

/// Command-line flags of `storm`.
#[derive(Parser, Debug, Clone)]
#[command(
    about = "cross-thread, cross-group frees: memcg's allocators against their bare allocator"
)]
pub struct Args {
    /// Threads in the ring.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
    /// Allocations in all, over all threads.
    #[arg(long, default_value_t = 10_000_000)]
    pub allocations: u64,
    /// Blocks per batch sent to the next thread.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Repetitions (each runs every allocator once in each placement).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// A short run (200,000 allocations, one repetition) for CI.
    #[arg(long)]
    pub quick: bool,
}

/// Groups the threads are spread over in the "groups" placement.
pub const GROUPS: usize = 4;

/// The allocators measured, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    System,
    MemcgSystem,
    Mimalloc,
    MemcgMimalloc,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::System,
        Kind::MemcgSystem,
        Kind::Mimalloc,
        Kind::MemcgMimalloc,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::System => "System",
            Kind::MemcgSystem => "MemcgAlloc<System>",
            Kind::Mimalloc => "mimalloc",
            Kind::MemcgMimalloc => "MemcgMimalloc",
        }
    }

    /// The bare allocator a memcg allocator is compared with.
    fn baseline(self) -> Option<Kind> {
        match self {
            Kind::MemcgSystem => Some(Kind::System),
            Kind::MemcgMimalloc => Some(Kind::Mimalloc),
            _ => None,
        }
    }
}

static MEMCG_SYSTEM: MemcgAlloc<System> = MemcgAlloc::new(System);
static MEMCG_MIMALLOC: MemcgMimalloc = MemcgMimalloc::new();
static MIMALLOC: PlainMimalloc = PlainMimalloc;

/// The size of the `i`-th block: 16 to 128 bytes in steps of 16.
fn size_of_block(i: u64) -> usize {
    16 + (i % 8) as usize * 16
}

fn layout_of_block(i: u64) -> Layout {
    Layout::from_size_align(size_of_block(i), 8).expect("layout")
}

/// A batch sent to the next thread: each block's address and index (its
/// index gives its layout).
type Batch = Vec<(usize, u64)>;

/// Frees a batch received from the previous thread.
fn free_batch<A: GlobalAlloc>(a: &A, batch: Batch) {
    for (p, i) in batch {
        // SAFETY: `p` was allocated by `a` with `layout_of_block(i)` by the
        // previous thread and sent here once.
        unsafe { a.dealloc(p as *mut u8, layout_of_block(i)) };
    }
}

/// One run: returns the wall time from the start barrier to the last
/// thread's end.
fn storm<A: GlobalAlloc + Sync>(a: &A, args: &Args, groups: Option<&[memcg::Group]>) -> Duration {
    let n = args.threads.max(1);
    let per_thread = args.allocations / n as u64;
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel::<Batch>()).unzip();
    // Thread `t` sends to `t + 1`: it gets the sender of channel `t + 1`.
    let mut senders: Vec<Option<mpsc::Sender<Batch>>> = senders.into_iter().map(Some).collect();
    senders.rotate_left(1);
    let barrier = Barrier::new(n + 1);
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (t, (tx, rx)) in senders.iter_mut().zip(receivers).enumerate() {
            let tx = tx.take().expect("sender");
            let barrier = &barrier;
            let group = groups.map(|g| g[t % g.len()].clone());
            handles.push(s.spawn(move || {
                match group {
                    Some(g) => g.attach_current().expect("attach"),
                    None => memcg::controller()
                        .root()
                        .attach_current()
                        .expect("attach to root"),
                }
                barrier.wait();
                let mut i = 0u64;
                while i < per_thread {
                    let end = (i + args.batch as u64).min(per_thread);
                    let mut batch = Vec::with_capacity((end - i) as usize);
                    for k in i..end {
                        let layout = layout_of_block(k);
                        // SAFETY: a non-zero size.
                        let p = unsafe { a.alloc(layout) };
                        if p.is_null() {
                            handle_alloc_error(layout);
                        }
                        batch.push((p as usize, k));
                    }
                    i = end;
                    tx.send(batch).expect("the next thread is alive");
                    while let Ok(b) = rx.try_recv() {
                        free_batch(a, b);
                    }
                }
                drop(tx);
                // The previous thread hangs up after its last batch.
                for b in rx {
                    free_batch(a, b);
                }
            }));
        }
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("storm thread");
        }
        start.elapsed()
    })
}

fn run_kind(kind: Kind, args: &Args, groups: Option<&[memcg::Group]>) -> Duration {
    match kind {
        Kind::System => storm(&System, args, groups),
        Kind::MemcgSystem => storm(&MEMCG_SYSTEM, args, groups),
        Kind::Mimalloc => storm(&MIMALLOC, args, groups),
        Kind::MemcgMimalloc => storm(&MEMCG_MIMALLOC, args, groups),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the storm and prints the table.
///
/// # Errors
/// A message for flags that make no run.
pub fn run(mut args: Args) -> Result<(), String> {
    if args.quick {
        args.allocations = 200_000;
        args.reps = 1;
    }
    if args.threads < 2 || args.batch == 0 || args.reps == 0 {
        return Err("need --threads >= 2, --batch >= 1 and --reps >= 1".into());
    }
    let ctrl = memcg::controller();
    let groups: Vec<memcg::Group> = (0..GROUPS)
        .map(|g| ctrl.create_all(&format!("storm/g{g}")))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("creating the groups: {e}"))?;
    let placements: [(&str, Option<&[memcg::Group]>); 2] =
        [("root", None), ("4 groups", Some(groups.as_slice()))];
    println!(
        "storm: {} threads, {} allocations of 16-128 bytes, batches of {}, {} repetitions",
        args.threads, args.allocations, args.batch, args.reps
    );
    // Warm-up, untimed: every allocator's first pages, heaps and tasks.
    let warm = Args {
        allocations: (args.allocations / 10).clamp(10_000, 1_000_000),
        ..args.clone()
    };
    for (_, groups) in &placements {
        for &kind in &Kind::ALL {
            run_kind(kind, &warm, *groups);
        }
    }
    // times[placement][kind][rep]
    let mut times = vec![vec![Vec::new(); Kind::ALL.len()]; placements.len()];
    for _ in 0..args.reps {
        for (p, (_, groups)) in placements.iter().enumerate() {
            for (k, &kind) in Kind::ALL.iter().enumerate() {
                times[p][k].push(run_kind(kind, &args, *groups).as_secs_f64());
            }
        }
    }
    println!(
        "{:<10} {:<20} {:>12} {:>24}",
        "placement", "allocator", "median ms", "ratio min/median/max"
    );
    for (p, (name, _)) in placements.iter().enumerate() {
        for (k, &kind) in Kind::ALL.iter().enumerate() {
            let mut t = times[p][k].clone();
            let ms = median(&mut t) * 1e3;
            let ratio = match kind.baseline() {
                Some(base) => {
                    let b = Kind::ALL.iter().position(|&x| x == base).expect("baseline");
                    let mut r: Vec<f64> = times[p][k]
                        .iter()
                        .zip(&times[p][b])
                        .map(|(m, b)| m / b)
                        .collect();
                    let med = median(&mut r);
                    format!("{:.2}/{:.2}/{:.2}", r[0], med, r[r.len() - 1])
                }
                None => "-".into(),
            };
            println!(
                "{:<10} {:<20} {:>12.1} {:>24}",
                name,
                kind.name(),
                ms,
                ratio
            );
        }
    }
    Ok(())
}
