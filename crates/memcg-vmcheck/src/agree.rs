//! `kernel-agree`: memcg against the kernel's own memcg. With this process
//! in a cgroup v2 group, a tenant allocates known amounts on a thread
//! pinned to each node; the change of the kernel's `memory.numa_stat`
//! `anon` per node must match the change of memcg's per-node `alloc`
//! figure for the tenant within [`tolerance_bytes`].

use crate::kernel;
use crate::{Allocator, Report};
use std::time::Duration;

/// Bytes of one buffer (64 KiB: below glibc's mmap threshold, so
/// `MemcgAlloc<System>` takes them from the thread's malloc arena).
const BUFFER_BYTES: usize = 64 << 10;

/// What the `i`-th node's tenant thread allocates: 16 MiB more per node,
/// so that a figure on the wrong node cannot pass for the right one.
fn planned_bytes(i: usize) -> usize {
    (16 << 20) * (i + 1)
}

/// Bytes of a transparent huge page (x86-64).
const HUGE_PAGE_BYTES: u64 = 2 << 20;

/// Partly used huge pages a node's allocations can leave, at most: one per
/// region the allocator fills. For `MemcgMimalloc`: the pages of small
/// objects (the outer vector), the pages of 64 KiB objects (another kind of
/// mimalloc page, elsewhere in the node's arena) and the thread heap's own
/// metadata (also in the arena); the arena's metadata extent has no huge
/// pages (`MADV_NOHUGEPAGE`). For glibc: the thread's arena, one.
const PARTLY_USED_HUGE_PAGES: u64 = 3;

/// Whether transparent huge pages may back anonymous memory (`always` or
/// `madvise`; mimalloc and glibc do not ask, but `always` needs no asking).
pub fn transparent_huge_pages() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]"))
}

/// How far the kernel's per-node `anon` change may be from memcg's per-node
/// `alloc` change for one node's allocations, and why:
///
/// - **huge-page granularity, 3 × 2 MiB with THP `always`** (Debian's
///   default), else 0: the kernel backs a 2 MiB-aligned extent of an
///   anonymous mapping with one huge page at its first touch, so each
///   region the allocator fills ends in a partly used huge page
///   (`PARTLY_USED_HUGE_PAGES` regions). Measured in the VMs: at most
///   4.6 MiB over for `MemcgMimalloc` with THP (2 huge pages and
///   metadata), 0.4–0.7 MiB with `transparent_hugepage=never`.
/// - **allocator pages and metadata, 1 MiB**: memory the allocator touched
///   that holds no live object: mimalloc's arena bitmaps, page headers,
///   the partly filled last page of each size class in the heap and its
///   thread-local state (0.4–0.7 MiB measured without THP); glibc's chunk
///   headers (16 bytes per 64 KiB buffer: 4 KiB per 16 MiB) and top chunk.
/// - **the thread, 256 KiB**: the tenant thread's stack and TLS pages,
///   touched where it ran; the kernel counts them, memcg does not charge
///   them (they are not heap allocations).
/// - **page granularity**: whole pages against bytes: at most one partly
///   used page per region, inside the figures above.
/// - **the kernel's statistics lag**: none: both readings wait 2.5 s, past
///   the 2 s periodic flush of memcg statistics (`flush_memcg_stats_dwork`),
///   so `memory.numa_stat` is exact when read.
///
/// In all 7.25 MiB per node with THP (1.25 MiB without), against 16 MiB
/// or more allocated per node: a node's allocations counted on the other
/// node cannot pass.
pub fn tolerance_bytes(thp: bool) -> u64 {
    let huge = if thp {
        PARTLY_USED_HUGE_PAGES * HUGE_PAGE_BYTES
    } else {
        0
    };
    huge + (1 << 20) + (256 << 10)
}

/// Runs the agreement check (skipped when this process is in no cgroup v2
/// group with `memory.numa_stat`).
pub fn run(allocator: Allocator, report: &mut Report) -> Result<(), String> {
    let Some(dir) = kernel::own_cgroup_dir() else {
        println!(
            "skip: kernel-agree needs this process in a cgroup v2 group with memory.numa_stat"
        );
        return Ok(());
    };
    let ctrl = memcg::controller();
    let topology = ctrl.topology();
    let targets = kernel::online_targets(topology);
    let tenant = ctrl.create_all("tenant").map_err(|e| e.to_string())?;
    let settle = Duration::from_millis(2500);

    std::thread::sleep(settle);
    let kernel_before = kernel::numa_stat(&dir, "anon")?;
    let ours_before = tenant.stats();
    let mut held: Vec<Vec<Vec<u8>>> = Vec::new();
    for (i, &(_, cpu)) in targets.iter().enumerate() {
        let tenant = &tenant;
        let buffers = std::thread::scope(|s| {
            s.spawn(move || -> Result<Vec<Vec<u8>>, String> {
                kernel::pin_to_cpu(cpu)?;
                tenant.attach_current().map_err(|e| e.to_string())?;
                let buffers: Vec<Vec<u8>> = (0..planned_bytes(i) / BUFFER_BYTES)
                    .map(|j| vec![j as u8 | 1; BUFFER_BYTES])
                    .collect();
                memcg::flush_current();
                memcg::controller()
                    .root()
                    .attach_current()
                    .map_err(|e| e.to_string())?;
                Ok(buffers)
            })
            .join()
            .map_err(|_| "tenant thread panicked".to_string())?
        })?;
        held.push(buffers);
    }
    std::thread::sleep(settle);
    let kernel_after = kernel::numa_stat(&dir, "anon")?;
    let ours_after = tenant.stats();

    let tolerance = tolerance_bytes(transparent_huge_pages());
    let mut worst = 0i64;
    for &(node, _) in &targets {
        let kernel_delta = kernel_after.get(&node).copied().unwrap_or(0) as i64
            - kernel_before.get(&node).copied().unwrap_or(0) as i64;
        let ours_delta = ours_after.numa[node].hierarchical.alloc_bytes as i64
            - ours_before
                .numa
                .get(node)
                .map_or(0, |n| n.hierarchical.alloc_bytes) as i64;
        let diff = kernel_delta - ours_delta;
        worst = worst.max(diff.abs());
        println!(
            "kernel-agree allocator={} node={node} kernel_anon_delta={kernel_delta} memcg_alloc_delta={ours_delta} diff={diff} tolerance={tolerance}",
            allocator.name()
        );
        report.check(
            diff.unsigned_abs() <= tolerance,
            format!("node {node}: kernel anon changed by {kernel_delta}, memcg by {ours_delta} (|diff| > {tolerance})"),
        );
    }
    // Nodes without CPUs (memory-only): nothing charged there, and the
    // kernel should have put nothing there either.
    for node in 0..topology.nr_node_ids() {
        if targets.iter().any(|&(n, _)| n == node) {
            continue;
        }
        let kernel_delta = kernel_after.get(&node).copied().unwrap_or(0) as i64
            - kernel_before.get(&node).copied().unwrap_or(0) as i64;
        println!(
            "kernel-agree allocator={} node={node} (no CPUs) kernel_anon_delta={kernel_delta}",
            allocator.name()
        );
        report.check(
            kernel_delta.unsigned_abs() <= tolerance,
            format!("node {node} without CPUs: kernel anon changed by {kernel_delta}"),
        );
    }
    println!(
        "kernel-agree allocator={} worst_diff={worst} tolerance={tolerance}",
        allocator.name()
    );
    drop(held);
    Ok(())
}
