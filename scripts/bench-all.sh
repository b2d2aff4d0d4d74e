#!/usr/bin/env bash
# Regenerates every figure of BENCHMARKS.md (about 3 minutes on 2 cores):
#   docs/bench/machine.txt     lscpu, kernel, rustc
#   docs/bench/shootout.txt    the allocator shoot-out tables
#   docs/bench/*.svg           its plots
#   docs/bench/hitpath-time.txt  64-byte pairs through each allocator used
#                              as the global allocator, against bare mimalloc
#   docs/bench/workloads.txt   the real programs under MemcgAlloc<mimalloc>:
#                              wall time, peak RSS, accuracy against the
#                              documented bound
#   docs/bench/workloads-heaps.txt  the same under MemcgMimalloc
# Run it on a quiet machine: every figure is a ratio against a baseline
# measured in the same run, but noise still widens the min/max spread.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/bench
mkdir -p "$out"
{
    echo "# $(date -u +%Y-%m-%dT%H:%MZ)"
    lscpu
    echo
    echo "kernel: $(uname -r)"
    echo "rustc:  $(rustc -V)"
    echo "load:   $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out/machine.txt"
cargo run --release -q -p memcg-bench --bin shootout -- --svg-dir "$out" | tee "$out/shootout.txt"
cargo build --release -q -p memcg-bench --bins
./target/release/hitpath-time --rounds 9 | tee "$out/hitpath-time.txt"
cargo run --release -q -p memcg-workloads --bin workloads -- --reps 9 | tee "$out/workloads.txt"
cargo run --release -q -p memcg-workloads --bin workloads -- --reps 9 --memcg heaps | tee "$out/workloads-heaps.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"
