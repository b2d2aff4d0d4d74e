//! `node-full`: a fallback to another node is counted, not silent. A
//! thread of group `filler`, pinned to the last node with CPUs, allocates
//! 1 MiB blocks until it holds 64 MiB more than that node had free; the
//! kernel must put the excess elsewhere (the node arenas' policy is
//! *preferred*), and `MemcgMimalloc::node_fallback_bytes` must say so, close
//! to what `move_pages` finds.

use crate::kernel;
use crate::{Allocator, Report};

/// Bytes of one block.
const BLOCK_BYTES: usize = 1 << 20;
/// How far past the node's free memory the thread allocates.
const EXCESS_BYTES: u64 = 64 << 20;

/// `MemFree` of `node` in bytes (`/sys/devices/system/node/node<N>/meminfo`).
fn node_free_bytes(node: usize) -> Option<u64> {
    let text =
        std::fs::read_to_string(format!("/sys/devices/system/node/node{node}/meminfo")).ok()?;
    let line = text.lines().find(|l| l.contains("MemFree:"))?;
    let kib: u64 = line.split_whitespace().rev().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the check (heaps only; skipped without node-bound heaps).
pub fn run(allocator: Allocator, report: &mut Report) -> Result<(), String> {
    if allocator != Allocator::Heaps {
        println!("skip: node-full is a check of MemcgMimalloc's node-bound heaps");
        return Ok(());
    }
    let ctrl = memcg::controller();
    let targets = kernel::online_targets(ctrl.topology());
    let (Some(&(node, cpu)), true) = (targets.last(), targets.len() >= 2) else {
        println!("skip: node-full needs two nodes with CPUs");
        return Ok(());
    };
    let Some(free) = node_free_bytes(node) else {
        println!("skip: no meminfo for node {node}");
        return Ok(());
    };
    let goal = free + EXCESS_BYTES;
    let group = ctrl.create_all("filler").map_err(|e| e.to_string())?;
    let fallback_before = memcg::MemcgMimalloc::node_fallback_bytes();
    let blocks = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Vec<u8>>, String> {
            kernel::pin_to_cpu(cpu)?;
            group.attach_current().map_err(|e| e.to_string())?;
            let count = goal.div_ceil(BLOCK_BYTES as u64) as usize;
            let mut blocks = Vec::with_capacity(count);
            for i in 0..count {
                blocks.push(vec![i as u8 | 1; BLOCK_BYTES]);
            }
            memcg::flush_current();
            ctrl.root().attach_current().map_err(|e| e.to_string())?;
            Ok(blocks)
        })
        .join()
        .map_err(|_| "filling thread panicked".to_string())?
    })?;
    if memcg::MemcgMimalloc::node_arenas() == 0 {
        println!("skip: node-bound heaps are off (MEMCG_NODE_HEAPS=0?)");
        return Ok(());
    }
    // Where the blocks are: every page.
    let pages: Vec<usize> = blocks
        .iter()
        .flat_map(|b| kernel::pages_of(b.as_ptr() as usize, b.len()))
        .collect();
    let nodes = kernel::nodes_of_pages(&pages)?;
    let elsewhere_bytes = (nodes
        .iter()
        .filter(|&&n| n >= 0 && n as usize != node)
        .count()
        * kernel::PAGE_BYTES) as u64;
    let counted = memcg::MemcgMimalloc::node_fallback_bytes() - fallback_before;
    let charged = group.stats().numa[node].hierarchical.alloc_bytes;
    println!(
        "node-full node={node} free_bytes={free} charged_bytes={charged} elsewhere_bytes={elsewhere_bytes} node_fallback_bytes={counted}"
    );
    report.check(
        elsewhere_bytes > 0,
        format!("node {node}: {goal} bytes allocated past its free memory, none elsewhere"),
    );
    // The statistic samples the first page of each committed range: it
    // may be off by the ranges the node filled up in (a few MiB).
    let slack = elsewhere_bytes / 4 + (8 << 20);
    report.check(
        counted.abs_diff(elsewhere_bytes) <= slack,
        format!(
            "node {node}: node_fallback_bytes {counted} vs {elsewhere_bytes} bytes found elsewhere (slack {slack})"
        ),
    );
    drop(blocks);
    Ok(())
}
