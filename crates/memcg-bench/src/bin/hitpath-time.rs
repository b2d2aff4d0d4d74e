//! `hitpath-time`: the time of the hit-path programs (see
//! `memcg_bench::hitpath`), 64-byte alloc+free pairs through each allocator
//! used as the global allocator, against bare mimalloc in the same rounds.
//!
//! `ci/hitpath-budget.sh` counts the same programs' instructions, which do
//! not depend on the machine's load; this binary measures what those
//! instructions cost in time on this machine. Each round runs the
//! binaries (siblings of this one, built with it: `cargo build --release
//! -p memcg-bench --bins`) one after the other as child processes, in an
//! order that rotates from round to round, each timing its pairs after a
//! warm-up; a ratio is an allocator's time over bare mimalloc's in the same
//! round. Prints, per allocator, the median, minimum and maximum ns per
//! pair and the median, minimum and maximum ratio.
//!
//! Run: `cargo build --release -p memcg-bench --bins && target/release/hitpath-time
//! [--rounds 7] [--pairs 20000000]`.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use memcg_bench::hitpath::TIME_FLAG;

/// Time of the hit-path programs against bare mimalloc, in the same rounds.
#[derive(Parser, Debug)]
struct Args {
    /// Rounds; each runs every allocator's program once.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Pairs each program times (after its warm-up).
    #[arg(long, default_value_t = 20_000_000)]
    pairs: u64,
}

/// The programs: name in the table, binary. Bare mimalloc (the baseline)
/// and `MemcgAlloc`'s inner go through `memcg::PlainMimalloc`; the
/// `mimalloc` crate's binding is timed beside them, and so is the
/// reference wrapper with `MemcgAlloc`'s owner word and no accounting
/// (`hitpath-trailer-only`).
const PROGRAMS: [(&str, &str); 5] = [
    ("bare mimalloc", "hitpath-mimalloc"),
    ("bare, mimalloc crate", "hitpath-mimalloc-crate"),
    ("trailer, no accounting", "hitpath-trailer-only"),
    ("MemcgAlloc<mimalloc>", "hitpath-memcg-alloc"),
    ("MemcgMimalloc", "hitpath-memcg-mimalloc"),
];

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with `cargo build --release -p memcg-bench --bins`",
            path.display()
        ))
    }
}

/// Runs `path pairs --time`; returns its ns per pair.
fn run(path: &Path, pairs: u64) -> Result<f64, String> {
    let out = Command::new(path)
        .arg(pairs.to_string())
        .arg(TIME_FLAG)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|_| format!("{} printed {text:?}, not a time", path.display()))
}

/// Median, minimum and maximum of `v` (not empty).
fn summary(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let args = Args::parse();
    if let Err(e) = measure(&args) {
        eprintln!("hitpath-time: {e}");
        std::process::exit(2);
    }
}

fn measure(args: &Args) -> Result<(), String> {
    if args.rounds == 0 || args.pairs == 0 {
        return Err("--rounds and --pairs must be at least 1".into());
    }
    let paths = PROGRAMS
        .iter()
        .map(|(_, bin)| sibling(bin))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ns = vec![Vec::new(); PROGRAMS.len()];
    let mut ratios = vec![Vec::new(); PROGRAMS.len()];
    for round in 0..args.rounds {
        let mut this = [0.0; PROGRAMS.len()];
        for k in 0..PROGRAMS.len() {
            let i = (round + k) % PROGRAMS.len();
            this[i] = run(&paths[i], args.pairs)?;
        }
        for i in 0..PROGRAMS.len() {
            ns[i].push(this[i]);
            ratios[i].push(this[i] / this[0]);
        }
    }
    println!(
        "hit-path programs as the global allocator: {} pairs of 64 bytes timed after a warm-up, {} rounds",
        args.pairs, args.rounds
    );
    println!("ratio = time / bare mimalloc's in the same round; median (min-max)");
    println!("{:<22} {:>22} {:>22}", "allocator", "ns/pair", "ratio");
    for (i, (name, _)) in PROGRAMS.iter().enumerate() {
        let (m, lo, hi) = summary(&mut ns[i]);
        let (rm, rlo, rhi) = summary(&mut ratios[i]);
        println!(
            "{name:<22} {:>22} {:>22}",
            format!("{m:.2} ({lo:.2}-{hi:.2})"),
            format!("{rm:.3} ({rlo:.3}-{rhi:.3})")
        );
    }
    Ok(())
}
