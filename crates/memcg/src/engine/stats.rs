//! Statistics and events of a group, as structs (`serde::Serialize` with
//! the `serde` feature) and in the cgroup v2 text formats (`memory.stat`,
//! `memory.numa_stat`, `memory.events`).

use std::fmt::Write as _;

use crate::engine::memcg::{ChargeKind, MemCgroup, MemoryEvent, NR_KINDS};
use crate::limit::{Limit, PAGE_SIZE};
use crate::sync::Ordering;

/// One set of `memory.stat` values, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MemoryStat {
    /// `kernel`: pages charged through objcgs, in bytes (includes the
    /// sub-page remainders cached in stocks and pools).
    pub kernel_bytes: u64,
    /// `alloc`: exact live bytes of allocator objects.
    pub alloc_bytes: u64,
    /// `runtime`: exact live bytes the runtime charged for tasks.
    pub runtime_bytes: u64,
    /// `reservation`: exact live bytes of explicit reservations.
    pub reservation_bytes: u64,
}

impl MemoryStat {
    fn from_raw(kernel_pages: i64, live: &[i64; NR_KINDS]) -> Self {
        let clamp = |v: i64| v.max(0) as u64;
        MemoryStat {
            kernel_bytes: clamp(kernel_pages).saturating_mul(PAGE_SIZE),
            alloc_bytes: clamp(live[ChargeKind::Alloc.index()]),
            runtime_bytes: clamp(live[ChargeKind::Runtime.index()]),
            reservation_bytes: clamp(live[ChargeKind::Reservation.index()]),
        }
    }

    /// The value of one `memory.stat` key (`kernel`, `alloc`, `runtime`,
    /// `reservation`).
    pub fn get(&self, key: &str) -> Option<u64> {
        Some(match key {
            "kernel" => self.kernel_bytes,
            "alloc" => self.alloc_bytes,
            "runtime" => self.runtime_bytes,
            "reservation" => self.reservation_bytes,
            _ => return None,
        })
    }

    /// Live bytes of one kind.
    pub fn live_bytes(&self, kind: ChargeKind) -> u64 {
        match kind {
            ChargeKind::Alloc => self.alloc_bytes,
            ChargeKind::Runtime => self.runtime_bytes,
            ChargeKind::Reservation => self.reservation_bytes,
        }
    }

    /// Keys in `memory.stat` order.
    pub const KEYS: [&'static str; 4] = ["kernel", "alloc", "runtime", "reservation"];
}

/// `memory.events` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Events {
    /// Charges that found usage over `memory.high`.
    pub high: u64,
    /// Charges that hit `memory.max`.
    pub max: u64,
    /// Charges that could not be met after reclaim, and `memory.max`
    /// writes that could not bring usage under the new limit.
    pub oom: u64,
    /// Kills by the OOM policy ([`crate::OomPolicy::Kill`]).
    pub oom_kill: u64,
}

impl Events {
    fn read(counters: &[crate::sync::AtomicU64; crate::engine::memcg::NR_EVENTS]) -> Self {
        let get = |e: MemoryEvent| counters[e as usize].load(Ordering::Relaxed);
        Events {
            high: get(MemoryEvent::High),
            max: get(MemoryEvent::Max),
            oom: get(MemoryEvent::Oom),
            oom_kill: get(MemoryEvent::OomKill),
        }
    }

    /// The count of one event.
    pub fn get(&self, event: MemoryEvent) -> u64 {
        match event {
            MemoryEvent::High => self.high,
            MemoryEvent::Max => self.max,
            MemoryEvent::Oom => self.oom,
            MemoryEvent::OomKill => self.oom_kill,
        }
    }

    /// The `memory.events` text: `high N`, `max N`, `oom N`, `oom_kill N`,
    /// one per line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for e in MemoryEvent::ALL {
            let _ = writeln!(s, "{} {}", e.key(), self.get(e));
        }
        s
    }
}

/// Statistics of one node of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct NodeStat {
    /// Node id.
    pub node: usize,
    /// Values including descendants.
    pub hierarchical: MemoryStat,
    /// Values of the group alone (with removed children folded in).
    pub local: MemoryStat,
}

/// Everything the cgroup v2 files of one group show.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct GroupStats {
    /// Group path (`""` for root).
    pub path: String,
    /// `memory.current` in bytes.
    pub current_bytes: u64,
    /// `memory.peak` in bytes.
    pub peak_bytes: u64,
    /// `memory.max`.
    pub max: Limit,
    /// `memory.high`.
    pub high: Limit,
    /// `memory.stat` (hierarchical).
    pub stat: MemoryStat,
    /// `memory.stat` of the group alone.
    pub stat_local: MemoryStat,
    /// `memory.numa_stat`, one entry per node id.
    pub numa: Vec<NodeStat>,
    /// `memory.events` (hierarchical).
    pub events: Events,
    /// `memory.events.local`.
    pub events_local: Events,
}

impl GroupStats {
    pub(crate) fn collect(memcg: &MemCgroup, nr_node_ids: usize) -> Self {
        let mut pruned = Vec::new();
        memcg.prune_dead(&mut pruned);
        drop(pruned);
        let numa: Vec<NodeStat> = (0..nr_node_ids)
            .map(|nid| {
                let (k, l) = memcg.local_node_stats(nid);
                let (hk, hl) = hierarchical_node_stats(memcg, nid);
                NodeStat {
                    node: nid,
                    hierarchical: MemoryStat::from_raw(hk, &hl),
                    local: MemoryStat::from_raw(k, &l),
                }
            })
            .collect();
        let sum = |f: fn(&NodeStat) -> MemoryStat| {
            numa.iter().fold(MemoryStat::default(), |acc, n| {
                let s = f(n);
                MemoryStat {
                    kernel_bytes: acc.kernel_bytes + s.kernel_bytes,
                    alloc_bytes: acc.alloc_bytes + s.alloc_bytes,
                    runtime_bytes: acc.runtime_bytes + s.runtime_bytes,
                    reservation_bytes: acc.reservation_bytes + s.reservation_bytes,
                }
            })
        };
        GroupStats {
            path: memcg.path.to_string(),
            current_bytes: memcg.counter.usage_pages().saturating_mul(PAGE_SIZE),
            peak_bytes: memcg.counter.watermark_pages().saturating_mul(PAGE_SIZE),
            max: pages_to_limit(memcg.counter.max_pages()),
            high: pages_to_limit(memcg.counter.high_pages()),
            stat: sum(|n| n.hierarchical),
            stat_local: sum(|n| n.local),
            numa,
            events: Events::read(&memcg.events),
            events_local: Events::read(&memcg.events_local),
        }
    }

    /// The `memory.stat` text: `key value` lines in bytes.
    pub fn memory_stat(&self) -> String {
        let mut s = String::new();
        for key in MemoryStat::KEYS {
            let _ = writeln!(s, "{key} {}", self.stat.get(key).unwrap_or(0));
        }
        s
    }

    /// The `memory.numa_stat` text: `key N0=v N1=v …` lines in bytes.
    /// Unlike the kernel's file it includes `kernel`: per-node kernel
    /// memory is what this project adds.
    pub fn numa_stat(&self) -> String {
        let mut s = String::new();
        for key in MemoryStat::KEYS {
            s.push_str(key);
            for n in &self.numa {
                let _ = write!(s, " N{}={}", n.node, n.hierarchical.get(key).unwrap_or(0));
            }
            s.push('\n');
        }
        s
    }

    /// The `memory.current` text.
    pub fn memory_current(&self) -> String {
        format!("{}\n", self.current_bytes)
    }

    /// The `memory.peak` text.
    pub fn memory_peak(&self) -> String {
        format!("{}\n", self.peak_bytes)
    }

    /// The `memory.max` text (`max` or bytes).
    pub fn memory_max(&self) -> String {
        format!("{}\n", self.max)
    }

    /// The `memory.high` text (`max` or bytes).
    pub fn memory_high(&self) -> String {
        format!("{}\n", self.high)
    }
}

/// The limit a page count stands for, printed as the kernel prints it
/// (`pages × PAGE_SIZE`, or `max`).
pub(crate) fn pages_to_limit(pages: u64) -> Limit {
    if pages >= crate::limit::PAGE_COUNTER_MAX {
        Limit::Max
    } else {
        Limit::Bytes(pages * PAGE_SIZE)
    }
}

fn hierarchical_node_stats(memcg: &MemCgroup, nid: usize) -> (i64, [i64; NR_KINDS]) {
    let (mut k, mut l) = memcg.local_node_stats(nid);
    for child in memcg.children_snapshot() {
        let (ck, cl) = hierarchical_node_stats(&child, nid);
        k += ck;
        for (a, b) in l.iter_mut().zip(cl) {
            *a += b;
        }
    }
    (k, l)
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use crate::{Controller, Topology};

    #[test]
    fn peak_after_reset_peak_is_current_usage_of_this_group_only() {
        let ctrl = Controller::new(Topology::from_spec("1x1").unwrap());
        let parent = ctrl.create("p").unwrap();
        let child = parent.create_child("c").unwrap();
        let big = child.try_charge(1 << 20).unwrap();
        let kept = child.try_charge(3 * 4096).unwrap();
        drop(big);
        ctrl.drain_stocks();
        let peak_before = child.stats().peak_bytes;
        assert!(peak_before >= (1 << 20) + 3 * 4096);

        // Resetting the parent leaves the child's peak alone.
        parent.reset_peak();
        let p = parent.stats();
        assert_eq!(p.peak_bytes, p.current_bytes);
        assert_eq!(child.stats().peak_bytes, peak_before);

        child.reset_peak();
        let c = child.stats();
        assert_eq!(c.current_bytes, 3 * 4096);
        assert_eq!(c.peak_bytes, 3 * 4096);
        assert_eq!(c.memory_peak(), format!("{}\n", 3 * 4096));
        assert_eq!(child.peak_bytes(), 3 * 4096);
        // Root was not reset.
        assert!(ctrl.root().peak_bytes() >= peak_before);

        // The peak rises again with the usage, and stays when it falls.
        let more = child.try_charge(5 * 4096).unwrap();
        drop(more);
        ctrl.drain_stocks();
        assert_eq!(child.current_bytes(), 3 * 4096);
        assert_eq!(child.stats().peak_bytes, 8 * 4096);
        drop(kept);
    }

    #[test]
    fn reset_peak_on_root_and_removed_group_is_harmless() {
        let ctrl = Controller::new(Topology::from_spec("1x1").unwrap());
        let g = ctrl.create("g").unwrap();
        let r = g.try_charge(1 << 16).unwrap();
        drop(r);
        ctrl.drain_stocks();
        ctrl.root().reset_peak();
        assert_eq!(ctrl.root().peak_bytes(), ctrl.root().current_bytes());
        g.remove().unwrap();
        g.reset_peak();
        assert_eq!(g.peak_bytes(), g.current_bytes());
        assert!(ctrl.check_invariants().is_ok());
    }
}
