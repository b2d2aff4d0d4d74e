//! `placement`: for each node with CPUs, a thread of group `probe` pinned
//! to one of its CPUs allocates known objects (128 buffers of 64 KiB and
//! 16,384 objects of 256 bytes, every byte written); then `move_pages`
//! says where their pages are. A page of live objects charged to node N
//! should be on node N.
//!
//! Two rounds: the first round's objects are freed (by the main thread)
//! before the second allocates, with the nodes in the other order, so the
//! second round reuses memory another node's thread freed: the case where
//! first-touch placement goes wrong.

use crate::kernel;
use crate::{Allocator, Report};
use std::collections::BTreeMap;

/// Buffers per node and their size.
const BUFFERS: usize = 128;
const BUFFER_BYTES: usize = 64 << 10;
/// Small objects per node and their size.
const SMALL_OBJECTS: usize = 16_384;
const SMALL_BYTES: usize = 256;

/// The objects one pinned thread allocated.
struct NodeObjects {
    node: usize,
    cpu: usize,
    buffers: Vec<Vec<u8>>,
    /// Separately allocated small objects (the point: one allocation each).
    #[allow(clippy::vec_box)]
    small: Vec<Box<[u8; SMALL_BYTES]>>,
}

/// Where the pages of one node's objects are.
#[derive(Debug, Default)]
pub struct Placement {
    /// Distinct pages of the objects.
    pub pages: usize,
    /// Pages on the node the objects are charged to.
    pub on_node: usize,
    /// Pages on each other node.
    pub elsewhere: BTreeMap<i32, usize>,
}

impl Placement {
    /// Percent of the pages on their node.
    pub fn percent(&self) -> f64 {
        if self.pages == 0 {
            100.0
        } else {
            100.0 * self.on_node as f64 / self.pages as f64
        }
    }
}

/// Allocates one node's objects on a thread pinned to `cpu`, charged to
/// `group`.
fn allocate_on(group: &memcg::Group, node: usize, cpu: usize) -> Result<NodeObjects, String> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<NodeObjects, String> {
            kernel::pin_to_cpu(cpu)?;
            group.attach_current().map_err(|e| e.to_string())?;
            let buffers = (0..BUFFERS)
                .map(|i| vec![i as u8 | 1; BUFFER_BYTES])
                .collect();
            let small = (0..SMALL_OBJECTS)
                .map(|i| Box::new([i as u8 | 1; SMALL_BYTES]))
                .collect();
            memcg::flush_current();
            memcg::controller()
                .root()
                .attach_current()
                .map_err(|e| e.to_string())?;
            Ok(NodeObjects {
                node,
                cpu,
                buffers,
                small,
            })
        })
        .join()
        .map_err(|_| "allocating thread panicked".to_string())?
    })
}

/// Where the pages of `objects` are.
fn measure(objects: &NodeObjects) -> Result<Placement, String> {
    let mut pages: Vec<usize> = objects
        .buffers
        .iter()
        .flat_map(|b| kernel::pages_of(b.as_ptr() as usize, b.len()))
        .chain(
            objects
                .small
                .iter()
                .flat_map(|o| kernel::pages_of(o.as_ptr() as usize, SMALL_BYTES)),
        )
        .collect();
    pages.sort_unstable();
    pages.dedup();
    let nodes = kernel::nodes_of_pages(&pages)?;
    let mut placement = Placement {
        pages: pages.len(),
        ..Placement::default()
    };
    for node in nodes {
        if node == objects.node as i32 {
            placement.on_node += 1;
        } else {
            *placement.elsewhere.entry(node).or_default() += 1;
        }
    }
    Ok(placement)
}

/// Runs the placement check; `--min-percent P` makes a node whose pages
/// are less than P% on it a failure.
pub fn run(args: &[String], allocator: Allocator, report: &mut Report) -> Result<(), String> {
    let min_percent: Option<f64> = match args {
        [] => None,
        [flag, value] if flag == "--min-percent" => Some(
            value
                .parse()
                .map_err(|_| format!("bad percent {value:?}"))?,
        ),
        _ => return Err("placement [--min-percent P]".to_string()),
    };
    let ctrl = memcg::controller();
    let topology = ctrl.topology();
    let targets = kernel::online_targets(topology);
    let group = ctrl.create_all("probe").map_err(|e| e.to_string())?;
    let mut worst = 100.0f64;
    for round in 0..2 {
        let mut order = targets.clone();
        if round == 1 {
            order.reverse();
        }
        let before = group.stats();
        let mut all = Vec::new();
        for &(node, cpu) in &order {
            all.push(allocate_on(&group, node, cpu)?);
        }
        let after = group.stats();
        for objects in &all {
            let charged = after.numa[objects.node].hierarchical.alloc_bytes
                - before
                    .numa
                    .get(objects.node)
                    .map_or(0, |n| n.hierarchical.alloc_bytes);
            let placement = measure(objects)?;
            let percent = placement.percent();
            worst = worst.min(percent);
            println!(
                "placement allocator={} round={} node={} cpu={} charged_bytes={} pages={} on_node={} percent={:.2} elsewhere={:?}",
                allocator.name(),
                round + 1,
                objects.node,
                objects.cpu,
                charged,
                placement.pages,
                placement.on_node,
                percent,
                placement.elsewhere
            );
            if let Some(min) = min_percent {
                report.check(
                    percent >= min,
                    format!(
                        "node {}: {percent:.2}% of pages on node, want >= {min}%",
                        objects.node
                    ),
                );
            }
        }
        drop(all);
    }
    println!(
        "placement allocator={} worst_percent={worst:.2}{}",
        allocator.name(),
        node_fallback_note(allocator)
    );
    Ok(())
}

/// The node-fallback statistic of the allocator, for the report.
fn node_fallback_note(allocator: Allocator) -> String {
    match allocator {
        Allocator::Heaps => format!(
            " node_arenas={} node_fallback_allocations={} node_fallback_bytes={} fallback_allocations={}",
            memcg::MemcgMimalloc::node_arenas(),
            memcg::MemcgMimalloc::node_fallback_allocations(),
            memcg::MemcgMimalloc::node_fallback_bytes(),
            memcg::MemcgMimalloc::fallback_allocations()
        ),
        Allocator::Alloc => String::new(),
    }
}
