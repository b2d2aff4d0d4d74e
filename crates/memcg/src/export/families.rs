//! The metric families of the Prometheus exports: their names, types,
//! labels and help texts, and the samples a tree's statistics give each.
//! Both encoders (the dependency-free text of [`super::to_prometheus`] and,
//! with the `prometheus-client` feature, `MemcgCollector`) walk these, so
//! they export the same series.

use std::fmt;

use crate::engine::{ChargeKind, GroupStats, MemoryEvent};
use crate::limit::Limit;

/// The type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MetricType {
    Gauge,
    Counter,
}

impl MetricType {
    /// The name the exposition formats give the type.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            MetricType::Gauge => "gauge",
            MetricType::Counter => "counter",
        }
    }
}

/// Which statistic a family exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Current,
    Peak,
    Max,
    High,
    Kernel,
    Live,
    Events,
    EventsLocal,
}

/// A metric family.
#[derive(Debug)]
pub(super) struct Family {
    /// The name after the prefix, without the unit or `_total`:
    /// `memory_current`.
    pub(super) base: &'static str,
    /// Whether the values are bytes: the name ends in `_bytes` (OpenMetrics
    /// unit `bytes`).
    pub(super) bytes: bool,
    /// The HELP text (no `\` or line feed: nothing to escape).
    pub(super) help: &'static str,
    /// The TYPE.
    pub(super) metric_type: MetricType,
    /// The names of each sample's own labels, in order (they follow the
    /// constant labels).
    pub(super) labels: &'static [&'static str],
    source: Source,
}

/// Every family, in the order they are exported.
pub(super) const FAMILIES: [Family; 8] = [
    Family {
        base: "memory_current",
        bytes: true,
        help: "Memory charged to the group and its descendants, in bytes (memory.current).",
        metric_type: MetricType::Gauge,
        labels: &["group"],
        source: Source::Current,
    },
    Family {
        base: "memory_peak",
        bytes: true,
        help: "Highest memory charged to the group and its descendants since creation or the last peak reset, in bytes (memory.peak).",
        metric_type: MetricType::Gauge,
        labels: &["group"],
        source: Source::Peak,
    },
    Family {
        base: "memory_max",
        bytes: true,
        help: "Hard limit of the group, in bytes, +Inf when unlimited (memory.max).",
        metric_type: MetricType::Gauge,
        labels: &["group"],
        source: Source::Max,
    },
    Family {
        base: "memory_high",
        bytes: true,
        help: "Soft limit of the group, in bytes, +Inf when unlimited (memory.high).",
        metric_type: MetricType::Gauge,
        labels: &["group"],
        source: Source::High,
    },
    Family {
        base: "kernel",
        bytes: true,
        help: "Pages charged on the node by the group and its descendants, in bytes (memory.numa_stat kernel).",
        metric_type: MetricType::Gauge,
        labels: &["group", "node"],
        source: Source::Kernel,
    },
    Family {
        base: "live",
        bytes: true,
        help: "Live bytes charged on the node by the group and its descendants, by kind (memory.numa_stat alloc, runtime, reservation).",
        metric_type: MetricType::Gauge,
        labels: &["group", "node", "kind"],
        source: Source::Live,
    },
    Family {
        base: "events",
        bytes: false,
        help: "Memory events in the group and its descendants (memory.events).",
        metric_type: MetricType::Counter,
        labels: &["group", "event"],
        source: Source::Events,
    },
    Family {
        base: "events_local",
        bytes: false,
        help: "Memory events in the group itself (memory.events.local).",
        metric_type: MetricType::Counter,
        labels: &["group", "event"],
        source: Source::EventsLocal,
    },
];

/// The label names the families set on their samples; constant labels may
/// not use them.
pub(super) const SAMPLE_LABELS: [&str; 4] = ["group", "node", "kind", "event"];

/// A sample value: an integer (bytes or a count), or a limit (`+Inf` for
/// `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Value {
    Int(u64),
    Limit(Limit),
}

impl fmt::Display for Value {
    /// The 0.0.4 text form: the integer, or `+Inf`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(n) | Value::Limit(Limit::Bytes(n)) => write!(f, "{n}"),
            Value::Limit(Limit::Max) => f.write_str("+Inf"),
        }
    }
}

impl Family {
    /// The family's name after `prefix` (`""` for none): `{prefix}_{base}`.
    /// OpenMetrics names a family so and adds the unit and `_total` to it.
    pub(super) fn name(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            self.base.to_string()
        } else {
            format!("{prefix}_{}", self.base)
        }
    }

    /// The name of the samples: [`Family::name`], then `_bytes` for bytes
    /// and `_total` for counters (the 0.0.4 family name too).
    pub(super) fn sample_name(&self, prefix: &str) -> String {
        let mut name = self.name(prefix);
        if self.bytes {
            name.push_str("_bytes");
        }
        if self.metric_type == MetricType::Counter {
            name.push_str("_total");
        }
        name
    }

    /// Calls `sample` with the label values (in the order of
    /// [`Family::labels`]) and the value of each of the family's samples,
    /// groups in the order given, then nodes, then kinds or events; stops at
    /// the first error.
    pub(super) fn for_each_sample<E>(
        &self,
        groups: &[GroupStats],
        mut sample: impl FnMut(&[&str], Value) -> Result<(), E>,
    ) -> Result<(), E> {
        for g in groups {
            let group = group_label(g);
            match self.source {
                Source::Current => sample(&[group], Value::Int(g.current_bytes))?,
                Source::Peak => sample(&[group], Value::Int(g.peak_bytes))?,
                Source::Max => sample(&[group], Value::Limit(g.max))?,
                Source::High => sample(&[group], Value::Limit(g.high))?,
                Source::Kernel => {
                    for n in &g.numa {
                        let node = n.node.to_string();
                        sample(&[group, &node], Value::Int(n.hierarchical.kernel_bytes))?;
                    }
                }
                Source::Live => {
                    for n in &g.numa {
                        let node = n.node.to_string();
                        for kind in ChargeKind::ALL {
                            sample(
                                &[group, &node, kind.key()],
                                Value::Int(n.hierarchical.live_bytes(kind)),
                            )?;
                        }
                    }
                }
                Source::Events | Source::EventsLocal => {
                    let events = if self.source == Source::Events {
                        g.events
                    } else {
                        g.events_local
                    };
                    for event in MemoryEvent::ALL {
                        sample(&[group, event.key()], Value::Int(events.get(event)))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The `group` label of a group: its path, `/` for root.
pub(super) fn group_label(g: &GroupStats) -> &str {
    if g.path.is_empty() {
        "/"
    } else {
        &g.path
    }
}

/// About how many samples `groups` give, to size buffers.
pub(super) fn nr_samples(groups: &[GroupStats]) -> usize {
    let nr_nodes = groups.first().map_or(0, |g| g.numa.len());
    groups.len() * (4 + nr_nodes * (1 + ChargeKind::ALL.len()) + 2 * MemoryEvent::ALL.len())
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn sample_labels_are_every_family_label() {
        let mut used: Vec<&str> = FAMILIES.iter().flat_map(|f| f.labels).copied().collect();
        used.sort_unstable();
        used.dedup();
        let mut listed = SAMPLE_LABELS.to_vec();
        listed.sort_unstable();
        assert_eq!(used, listed);
    }

    #[test]
    fn families_have_at_most_three_labels_of_their_own() {
        // `MemcgCollector` encodes a sample's own labels from a 3-slot array.
        assert!(FAMILIES.iter().all(|f| f.labels.len() <= 3));
    }

    #[test]
    fn sample_name_adds_unit_and_total_after_prefix() {
        let names: Vec<String> = FAMILIES.iter().map(|f| f.sample_name("memcg")).collect();
        assert_eq!(
            names,
            [
                "memcg_memory_current_bytes",
                "memcg_memory_peak_bytes",
                "memcg_memory_max_bytes",
                "memcg_memory_high_bytes",
                "memcg_kernel_bytes",
                "memcg_live_bytes",
                "memcg_events_total",
                "memcg_events_local_total",
            ]
        );
        assert_eq!(FAMILIES[0].sample_name(""), "memory_current_bytes");
        assert_eq!(FAMILIES[6].name("kv"), "kv_events");
        assert_eq!(FAMILIES[6].name(""), "events");
    }
}

/// Tests of both encoders: every sample they wrote for the tree equals
/// `stats`. `samples` gives a family's samples (label values → value) by
/// its base name (`memory_current_bytes`, ..., `events`, `events_local`).
#[cfg(all(test, not(memcg_loom)))]
pub(super) fn assert_samples_match_stats<'a>(
    stats: &[GroupStats],
    samples: impl Fn(&str) -> std::collections::BTreeMap<Vec<&'a str>, f64>,
) {
    let current = samples("memory_current_bytes");
    let peak = samples("memory_peak_bytes");
    let max = samples("memory_max_bytes");
    let high = samples("memory_high_bytes");
    let kernel = samples("kernel_bytes");
    let live = samples("live_bytes");
    let events = samples("events");
    let events_local = samples("events_local");
    let limit = |l: Limit| l.to_bytes().map_or(f64::INFINITY, |b| b as f64);
    for g in stats {
        let group = if g.path.is_empty() { "/" } else { &g.path };
        assert_eq!(current[&vec![group]], g.current_bytes as f64, "{group}");
        assert_eq!(peak[&vec![group]], g.peak_bytes as f64, "{group}");
        assert_eq!(max[&vec![group]], limit(g.max), "{group}");
        assert_eq!(high[&vec![group]], limit(g.high), "{group}");
        for n in &g.numa {
            let node = n.node.to_string();
            let key = vec![group, node.as_str()];
            assert_eq!(kernel[&key], n.hierarchical.kernel_bytes as f64);
            for kind in ChargeKind::ALL {
                let key = vec![group, node.as_str(), kind.key()];
                assert_eq!(live[&key], n.hierarchical.live_bytes(kind) as f64);
            }
        }
        for event in MemoryEvent::ALL {
            let key = vec![group, event.key()];
            assert_eq!(events[&key], g.events.get(event) as f64);
            assert_eq!(events_local[&key], g.events_local.get(event) as f64);
        }
    }
}
