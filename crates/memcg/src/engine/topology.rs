//! NUMA topology: how many node ids a machine has and which node each CPU id
//! belongs to.
//!
//! A [`Topology`] is built once (from a count, a specification string or an
//! explicit map) and never changes. The hot path asks
//! `Topology::node_of_cpu` (crate-internal), one bounds-checked table load.
//!
//! Two specification forms are accepted by [`Topology::from_spec`]:
//!
//! * `NxC`, for example `2x4`: `N` nodes with `C` CPUs each, numbered
//!   consecutively (node 0 has CPUs `0..C`, node 1 has `C..2C`, ...).
//! * `node:cpulist` pairs separated by `;`, for example `0:0-3;2:4-5,8`.
//!   A cpulist uses the Linux list format (`0-3,8,10-11`). Node and CPU ids
//!   may be sparse. For convenience a new pair may also follow a `,`
//!   (`0:0-3,1:4-7` is `0:0-3;1:4-7`).
//!
//! [`Topology`]'s [`Display`](fmt::Display) prints the second form, which
//! [`Topology::from_spec`] parses back.

use std::fmt;

use crate::error::{Error, Result};

/// Number of node ids a [`Topology`] may have at most: node ids are below
/// `MAX_NODES`.
pub const MAX_NODES: usize = 1024;

/// Number of CPU ids a [`Topology`] may have at most: CPU ids are below
/// `MAX_CPUS`.
pub const MAX_CPUS: usize = 65536;

/// Table entry of a CPU id that is not present. Node ids are below
/// [`MAX_NODES`], so they never collide with it.
const NO_NODE: u16 = u16::MAX;

/// What [`Topology::from_spec`] accepts, for error messages.
const SPEC_FORMS: &str =
    "expected `NxC` (nodes x cpus per node, such as `2x4`) or `node:cpulist` pairs separated by `;` (such as `0:0-3;1:4-7`)";

/// A machine's NUMA layout: how many node ids there are and which node each
/// CPU id belongs to.
///
/// CPU ids and node ids may be sparse: `nr_cpu_ids` is the largest CPU id
/// plus one and `nr_node_ids` the largest node id plus one, as in Linux.
/// Every topology has at least one CPU.
///
/// Serializes as `{"nr_node_ids": N, "cpus": [[cpu, node], ...]}` with the
/// present CPUs in ascending order.
#[derive(Clone, PartialEq, Eq)]
pub struct Topology {
    /// Node of each CPU id, indexed by CPU id; [`NO_NODE`] if the id is not
    /// present. Its length is `nr_cpu_ids`: the last entry is present.
    cpu_to_node: Box<[u16]>,
    /// Number of present CPUs of each node id, indexed by node id. Its length
    /// is `nr_node_ids`: the last entry is non-zero, unless the topology was
    /// extended by [`Topology::with_nr_node_ids`] (nodes without CPUs, such
    /// as memory-only nodes, at the end).
    nr_cpus_of_node: Box<[u32]>,
    /// Number of present CPUs.
    nr_cpus: usize,
}

impl Topology {
    /// One node, node 0, with CPUs `0..nr_cpus`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopology`] if `nr_cpus` is zero or more than
    /// [`MAX_CPUS`].
    pub fn single_node(nr_cpus: usize) -> Result<Topology> {
        if nr_cpus == 0 {
            return Err(invalid("expected at least one cpu, got 0 cpus".to_string()));
        }
        Topology::uniform(1, nr_cpus)
    }

    /// `nr_nodes` nodes with `cpus_per_node` CPUs each: node `n` has CPUs
    /// `n * cpus_per_node .. (n + 1) * cpus_per_node`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopology`] if either count is zero, `nr_nodes` is
    /// more than [`MAX_NODES`], or there would be more than [`MAX_CPUS`] CPU
    /// ids.
    pub fn uniform(nr_nodes: usize, cpus_per_node: usize) -> Result<Topology> {
        if nr_nodes == 0 {
            return Err(invalid(
                "expected at least one node, got 0 nodes".to_string(),
            ));
        }
        if cpus_per_node == 0 {
            return Err(invalid(
                "expected at least one cpu per node, got 0 cpus per node".to_string(),
            ));
        }
        if nr_nodes > MAX_NODES {
            return Err(invalid(format!(
                "expected at most {MAX_NODES} nodes, got {nr_nodes}"
            )));
        }
        let nr_cpu_ids = match nr_nodes.checked_mul(cpus_per_node) {
            Some(n) if n <= MAX_CPUS => n,
            _ => {
                return Err(invalid(format!(
                    "expected at most {MAX_CPUS} cpus in all, got {nr_nodes} nodes x {cpus_per_node} cpus"
                )))
            }
        };
        let mut builder = Builder::with_capacity(nr_cpu_ids);
        let mut cpu = 0usize;
        for node in 0..nr_nodes {
            for _ in 0..cpus_per_node {
                builder.assign(cpu, node).map_err(invalid)?;
                cpu = cpu.saturating_add(1);
            }
        }
        builder.finish().map_err(invalid)
    }

    /// Parses a specification: `NxC` (for example `2x4`, also `2X4`) as
    /// [`Topology::uniform`], or `node:cpulist` pairs separated by `;` (for
    /// example `0:0-3;2:4-5,8`; node ids may be sparse).
    ///
    /// Surrounding whitespace, and whitespace around separators, is ignored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopology`], saying what was expected, if the string is
    /// empty, a number is malformed or too large, a range is reversed, a node
    /// or CPU is listed twice, or a count is zero.
    pub fn from_spec(spec: &str) -> Result<Topology> {
        let trimmed = spec.trim();
        if trimmed.is_empty() {
            return Err(invalid(format!("{SPEC_FORMS}, got an empty specification")));
        }
        let parsed = if trimmed.contains(':') {
            parse_list(trimmed)
        } else {
            parse_uniform(trimmed)
        };
        parsed.map_err(|reason| invalid(format!("{reason} (in {spec:?})")))
    }

    /// Builds a topology from explicit `(cpu id, node id)` pairs, in any
    /// order. CPU and node ids may be sparse: CPUs 0, 2, 4 and 6 on nodes 0
    /// and 2 give `nr_cpu_ids` 7 and `nr_node_ids` 3.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopology`] if `pairs` is empty, a CPU is listed twice,
    /// a CPU id is not below [`MAX_CPUS`] or a node id is not below
    /// [`MAX_NODES`].
    pub fn from_map(pairs: &[(usize, usize)]) -> Result<Topology> {
        if pairs.is_empty() {
            return Err(invalid(
                "expected at least one (cpu, node) pair, got none".to_string(),
            ));
        }
        let mut builder = Builder::with_capacity(0);
        for &(cpu, node) in pairs {
            builder.assign(cpu, node).map_err(invalid)?;
        }
        builder.finish().map_err(invalid)
    }

    /// This topology with `nr_node_ids` node ids, at least its own: the ids
    /// past its largest node with CPUs are nodes without CPUs. That is how
    /// the runtime covers the nodes Linux reports that no CPU belongs to,
    /// memory-only nodes (CXL memory expanders, nodes whose CPUs are all
    /// offline), so that per-node figures have an entry for them and match
    /// the kernel's `nr_node_ids`. Such nodes are no CPU's node: they are not
    /// in [`Topology::nodes`] and [`Topology::has_node`] is false for them.
    /// [`Display`](fmt::Display) writes the CPUs' map only, so the extension
    /// does not survive [`Topology::from_spec`].
    ///
    /// ```
    /// # use memcg::Topology;
    /// let t = Topology::from_spec("0:0-1;1:2-3")?.with_nr_node_ids(3)?;
    /// assert_eq!(t.nr_node_ids(), 3);
    /// assert_eq!(t.nodes().collect::<Vec<_>>(), [0, 1]);
    /// # Ok::<(), memcg::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTopology`] if `nr_node_ids` is more than
    /// [`MAX_NODES`].
    pub fn with_nr_node_ids(mut self, nr_node_ids: usize) -> Result<Topology> {
        if nr_node_ids > MAX_NODES {
            return Err(invalid(format!(
                "expected at most {MAX_NODES} nodes, got {nr_node_ids}"
            )));
        }
        if nr_node_ids > self.nr_cpus_of_node.len() {
            let mut counts = self.nr_cpus_of_node.into_vec();
            counts.resize(nr_node_ids, 0);
            self.nr_cpus_of_node = counts.into_boxed_slice();
        }
        Ok(self)
    }

    /// Number of node ids: the largest node id plus one. Node ids below it
    /// may have no CPUs (see [`Topology::nodes`]).
    pub fn nr_node_ids(&self) -> usize {
        self.nr_cpus_of_node.len()
    }

    /// Number of CPU ids: the largest CPU id plus one. CPU ids below it may
    /// be absent (see [`Topology::cpus`]).
    pub fn nr_cpu_ids(&self) -> usize {
        self.cpu_to_node.len()
    }

    /// Number of CPUs present (at most [`Topology::nr_cpu_ids`]).
    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    /// The node of CPU id `cpu`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownCpu`] if `cpu` is not below
    /// [`Topology::nr_cpu_ids`] or is an absent id of a sparse topology.
    pub fn node_of(&self, cpu: usize) -> Result<usize> {
        self.node_of_cpu(cpu).ok_or(Error::UnknownCpu {
            cpu,
            nr_cpu_ids: self.nr_cpu_ids(),
        })
    }

    /// The node of CPU id `cpu`, or `None` if the id is absent or out of
    /// range. One bounds-checked table load: for the hot path.
    #[inline]
    pub(crate) fn node_of_cpu(&self, cpu: usize) -> Option<usize> {
        match self.cpu_to_node.get(cpu) {
            Some(&node) if node != NO_NODE => Some(usize::from(node)),
            _ => None,
        }
    }

    /// The present CPU ids, ascending.
    pub fn cpus(&self) -> impl Iterator<Item = usize> + '_ {
        self.cpu_to_node
            .iter()
            .enumerate()
            .filter(|&(_, &node)| node != NO_NODE)
            .map(|(cpu, _)| cpu)
    }

    /// The CPU ids of node `node`, ascending. Empty if the node has no CPUs
    /// or is out of range.
    pub fn cpus_of_node(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        self.cpu_to_node
            .iter()
            .enumerate()
            .filter(move |&(_, &n)| n != NO_NODE && usize::from(n) == node)
            .map(|(cpu, _)| cpu)
    }

    /// The node ids below [`Topology::nr_node_ids`] that have at least one
    /// CPU, ascending. With sparse node ids this skips the ids without CPUs,
    /// so it can yield fewer than `nr_node_ids` ids.
    pub fn nodes(&self) -> impl Iterator<Item = usize> + '_ {
        self.nr_cpus_of_node
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .map(|(node, _)| node)
    }

    /// Whether node id `node` has at least one CPU (the ids that
    /// [`Topology::nodes`] yields).
    pub fn has_node(&self, node: usize) -> bool {
        self.nr_cpus_of_node
            .get(node)
            .is_some_and(|&count| count > 0)
    }

    /// Checks that node id `node` has at least one CPU.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownNode`] if it has none (see [`Topology::has_node`]).
    pub fn check_node(&self, node: usize) -> Result<()> {
        if self.has_node(node) {
            Ok(())
        } else {
            Err(Error::UnknownNode {
                node,
                nr_node_ids: self.nr_node_ids(),
            })
        }
    }

    /// The present `(cpu, node)` pairs, ascending by CPU id.
    fn cpu_node_pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.cpu_to_node
            .iter()
            .enumerate()
            .filter(|&(_, &node)| node != NO_NODE)
            .map(|(cpu, &node)| (cpu, usize::from(node)))
    }
}

impl fmt::Display for Topology {
    /// Writes the explicit form, nodes ascending, runs of CPU ids compressed
    /// into ranges: `0:0-3;1:4-7`, `0:0,2;2:4-6`. [`Topology::from_spec`]
    /// parses it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pairs: Vec<(usize, usize)> = self
            .cpu_node_pairs()
            .map(|(cpu, node)| (node, cpu))
            .collect();
        pairs.sort_unstable();
        // The run being written: (node, first cpu, last cpu).
        let mut run: Option<(usize, usize, usize)> = None;
        for (node, cpu) in pairs {
            match run {
                Some((run_node, first, last))
                    if run_node == node && last.checked_add(1) == Some(cpu) =>
                {
                    run = Some((run_node, first, cpu));
                }
                Some((run_node, first, last)) => {
                    write_run(f, first, last)?;
                    if run_node == node {
                        f.write_str(",")?;
                    } else {
                        write!(f, ";{node}:")?;
                    }
                    run = Some((node, cpu, cpu));
                }
                None => {
                    write!(f, "{node}:")?;
                    run = Some((node, cpu, cpu));
                }
            }
        }
        if let Some((_, first, last)) = run {
            write_run(f, first, last)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("nr_node_ids", &self.nr_node_ids())
            .field("nr_cpu_ids", &self.nr_cpu_ids())
            .field("nr_cpus", &self.nr_cpus)
            .field("map", &format_args!("{self}"))
            .finish()
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Topology {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut state = serializer.serialize_struct("Topology", 2)?;
        state.serialize_field("nr_node_ids", &self.nr_node_ids())?;
        state.serialize_field("cpus", &CpuNodePairs(self))?;
        state.end()
    }
}

/// Serializes the present `(cpu, node)` pairs of a topology as a sequence of
/// two-element sequences.
#[cfg(feature = "serde")]
struct CpuNodePairs<'a>(&'a Topology);

#[cfg(feature = "serde")]
impl serde::Serialize for CpuNodePairs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.cpu_node_pairs())
    }
}

/// Writes `first` or `first-last`.
fn write_run(f: &mut fmt::Formatter<'_>, first: usize, last: usize) -> fmt::Result {
    if first == last {
        write!(f, "{first}")
    } else {
        write!(f, "{first}-{last}")
    }
}

/// An [`Error::InvalidTopology`] with this reason.
fn invalid(reason: String) -> Error {
    Error::InvalidTopology { reason }
}

/// Collects `(cpu, node)` assignments, checking ids and duplicates.
struct Builder {
    /// Node of each CPU id so far; [`NO_NODE`] if not assigned.
    table: Vec<u16>,
}

impl Builder {
    fn with_capacity(nr_cpu_ids: usize) -> Builder {
        Builder {
            table: Vec::with_capacity(nr_cpu_ids.min(MAX_CPUS)),
        }
    }

    /// Puts CPU `cpu` on node `node`; the error is a reason.
    fn assign(&mut self, cpu: usize, node: usize) -> Result<(), String> {
        if cpu >= MAX_CPUS {
            return Err(format!("expected cpu ids below {MAX_CPUS}, got cpu {cpu}"));
        }
        if node >= MAX_NODES {
            return Err(format!(
                "expected node ids below {MAX_NODES}, got node {node}"
            ));
        }
        let node_id = u16::try_from(node)
            .map_err(|_| format!("expected node ids below {MAX_NODES}, got node {node}"))?;
        if cpu >= self.table.len() {
            let len = cpu
                .checked_add(1)
                .ok_or_else(|| format!("expected cpu ids below {MAX_CPUS}, got cpu {cpu}"))?;
            self.table.resize(len, NO_NODE);
        }
        match self.table.get_mut(cpu) {
            Some(slot) if *slot == NO_NODE => {
                *slot = node_id;
                Ok(())
            }
            Some(slot) => Err(format!(
                "expected each cpu on one node, got cpu {cpu} twice (on node {} and node {node})",
                *slot
            )),
            None => Err(format!("expected cpu ids below {MAX_CPUS}, got cpu {cpu}")),
        }
    }

    /// The topology of the assignments; the error is a reason.
    fn finish(mut self) -> Result<Topology, String> {
        while self.table.last() == Some(&NO_NODE) {
            self.table.pop();
        }
        let mut nr_node_ids = 0usize;
        let mut nr_cpus = 0usize;
        for &node in self.table.iter().filter(|&&node| node != NO_NODE) {
            nr_node_ids = nr_node_ids.max(usize::from(node).saturating_add(1));
            nr_cpus = nr_cpus.saturating_add(1);
        }
        if nr_cpus == 0 {
            return Err("expected at least one cpu, got none".to_string());
        }
        let mut nr_cpus_of_node = vec![0u32; nr_node_ids];
        for &node in self.table.iter().filter(|&&node| node != NO_NODE) {
            if let Some(count) = nr_cpus_of_node.get_mut(usize::from(node)) {
                *count = count.saturating_add(1);
            }
        }
        Ok(Topology {
            cpu_to_node: self.table.into_boxed_slice(),
            nr_cpus_of_node: nr_cpus_of_node.into_boxed_slice(),
            nr_cpus,
        })
    }
}

/// Parses `NxC`; the error is a reason.
fn parse_uniform(spec: &str) -> Result<Topology, String> {
    let Some((nodes_text, cpus_text)) = spec.split_once(['x', 'X']) else {
        return Err(format!("{SPEC_FORMS}, got {spec:?}"));
    };
    let nr_nodes = parse_number(nodes_text, "number of nodes before `x`")?;
    let cpus_per_node = parse_number(cpus_text, "number of cpus per node after `x`")?;
    Topology::uniform(nr_nodes, cpus_per_node).map_err(|e| match e {
        Error::InvalidTopology { reason } => reason,
        other => other.to_string(),
    })
}

/// Parses `node:cpulist` pairs; the error is a reason.
fn parse_list(spec: &str) -> Result<Topology, String> {
    let mut builder = Builder::with_capacity(0);
    let mut seen_nodes = vec![false; MAX_NODES];
    for entry in spec.split(';') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(
                "expected a `node:cpulist` pair between `;` separators, got nothing".to_string(),
            );
        }
        let mut node: Option<usize> = None;
        for item in entry.split(',') {
            let item = item.trim();
            let (item_node, cpus_text) = match (item.split_once(':'), node) {
                (Some((node_text, cpus_text)), _) => {
                    let new_node = parse_number(node_text, "node id before `:`")?;
                    if new_node >= MAX_NODES {
                        return Err(format!(
                            "expected node ids below {MAX_NODES}, got node {new_node}"
                        ));
                    }
                    match seen_nodes.get_mut(new_node) {
                        Some(seen) if *seen => {
                            return Err(format!(
                                "expected each node once, got node {new_node} twice (list all its cpus in one cpulist)"
                            ))
                        }
                        Some(seen) => *seen = true,
                        None => {
                            return Err(format!(
                                "expected node ids below {MAX_NODES}, got node {new_node}"
                            ))
                        }
                    }
                    (new_node, cpus_text)
                }
                (None, Some(current)) => (current, item),
                (None, None) => {
                    return Err(format!(
                        "expected `node:cpulist` (such as `0:0-3`), got {item:?}"
                    ))
                }
            };
            node = Some(item_node);
            let (first, last) = parse_cpu_range(cpus_text, item_node)?;
            for cpu in first..=last {
                builder.assign(cpu, item_node)?;
            }
        }
    }
    builder.finish()
}

/// Parses a cpulist element `a` or `a-b` of node `node`; the error is a
/// reason.
fn parse_cpu_range(text: &str, node: usize) -> Result<(usize, usize), String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!(
            "expected a cpu id or range such as `0-3` for node {node}, got nothing"
        ));
    }
    let (first, last) = match text.split_once('-') {
        Some((first_text, last_text)) => (
            parse_number(first_text, "first cpu id of a range")?,
            parse_number(last_text, "last cpu id of a range")?,
        ),
        None => {
            let cpu = parse_number(text, "cpu id")?;
            (cpu, cpu)
        }
    };
    if first > last {
        return Err(format!(
            "expected ranges as `low-high`, got reversed range {first}-{last}"
        ));
    }
    if last >= MAX_CPUS {
        return Err(format!("expected cpu ids below {MAX_CPUS}, got cpu {last}"));
    }
    Ok((first, last))
}

/// Parses a decimal number (ASCII digits only, surrounding whitespace
/// ignored); `what` names it in the error, which is a reason.
fn parse_number(text: &str, what: &str) -> Result<usize, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("expected a decimal {what}, got nothing"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("expected a decimal {what}, got {text:?}"));
    }
    text.parse::<usize>()
        .map_err(|_| format!("expected a smaller {what}, got {text} which is too large"))
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    fn reason_of(result: Result<Topology>) -> String {
        match result {
            Err(Error::InvalidTopology { reason }) => reason,
            other => panic!("expected InvalidTopology, got {other:?}"),
        }
    }

    fn pairs_of(topology: &Topology) -> Vec<(usize, usize)> {
        topology.cpu_node_pairs().collect()
    }

    // --- single_node ---

    #[test]
    fn single_node_four_cpus_maps_all_to_node_zero() {
        let t = Topology::single_node(4).unwrap();
        assert_eq!(t.nr_node_ids(), 1);
        assert_eq!(t.nr_cpu_ids(), 4);
        assert_eq!(t.nr_cpus(), 4);
        assert_eq!(pairs_of(&t), vec![(0, 0), (1, 0), (2, 0), (3, 0)]);
    }

    #[test]
    fn single_node_zero_cpus_is_rejected() {
        let reason = reason_of(Topology::single_node(0));
        assert!(reason.contains("at least one cpu"), "{reason}");
    }

    #[test]
    fn single_node_max_cpus_is_accepted() {
        let t = Topology::single_node(MAX_CPUS).unwrap();
        assert_eq!(t.nr_cpu_ids(), MAX_CPUS);
        assert_eq!(t.node_of(MAX_CPUS - 1), Ok(0));
    }

    #[test]
    fn single_node_too_many_cpus_is_rejected() {
        let reason = reason_of(Topology::single_node(MAX_CPUS + 1));
        assert!(reason.contains("at most 65536 cpus"), "{reason}");
    }

    // --- uniform ---

    #[test]
    fn uniform_two_by_four_assigns_consecutive_blocks() {
        let t = Topology::uniform(2, 4).unwrap();
        assert_eq!(t.nr_node_ids(), 2);
        assert_eq!(t.nr_cpu_ids(), 8);
        assert_eq!(t.nr_cpus(), 8);
        for cpu in 0..4 {
            assert_eq!(t.node_of(cpu), Ok(0));
        }
        for cpu in 4..8 {
            assert_eq!(t.node_of(cpu), Ok(1));
        }
    }

    #[test]
    fn uniform_zero_nodes_is_rejected() {
        let reason = reason_of(Topology::uniform(0, 4));
        assert!(reason.contains("at least one node"), "{reason}");
    }

    #[test]
    fn uniform_zero_cpus_per_node_is_rejected() {
        let reason = reason_of(Topology::uniform(2, 0));
        assert!(reason.contains("at least one cpu per node"), "{reason}");
    }

    #[test]
    fn uniform_max_nodes_is_accepted() {
        let t = Topology::uniform(MAX_NODES, 1).unwrap();
        assert_eq!(t.nr_node_ids(), MAX_NODES);
        assert_eq!(t.node_of(MAX_NODES - 1), Ok(MAX_NODES - 1));
    }

    #[test]
    fn uniform_too_many_nodes_is_rejected() {
        let reason = reason_of(Topology::uniform(MAX_NODES + 1, 1));
        assert!(reason.contains("at most 1024 nodes"), "{reason}");
    }

    #[test]
    fn uniform_too_many_cpus_is_rejected() {
        let reason = reason_of(Topology::uniform(2, MAX_CPUS / 2 + 1));
        assert!(reason.contains("at most 65536 cpus"), "{reason}");
    }

    #[test]
    fn uniform_multiplication_overflow_is_rejected() {
        let reason = reason_of(Topology::uniform(2, usize::MAX));
        assert!(reason.contains("at most 65536 cpus"), "{reason}");
    }

    // --- from_map ---

    #[test]
    fn from_map_sparse_ids_counts_largest_plus_one() {
        let t = Topology::from_map(&[(0, 0), (2, 0), (4, 2), (6, 2)]).unwrap();
        assert_eq!(t.nr_node_ids(), 3);
        assert_eq!(t.nr_cpu_ids(), 7);
        assert_eq!(t.nr_cpus(), 4);
        assert_eq!(t.cpus().collect::<Vec<_>>(), vec![0, 2, 4, 6]);
        assert_eq!(t.nodes().collect::<Vec<_>>(), vec![0, 2]);
        assert!(t.has_node(0));
        assert!(!t.has_node(1));
        assert!(t.has_node(2));
        assert!(!t.has_node(3));
    }

    #[test]
    fn from_map_unordered_pairs_sorts_by_cpu() {
        let t = Topology::from_map(&[(3, 1), (0, 0), (2, 1), (1, 0)]).unwrap();
        assert_eq!(pairs_of(&t), vec![(0, 0), (1, 0), (2, 1), (3, 1)]);
    }

    #[test]
    fn from_map_empty_is_rejected() {
        let reason = reason_of(Topology::from_map(&[]));
        assert!(reason.contains("at least one (cpu, node) pair"), "{reason}");
    }

    #[test]
    fn from_map_duplicate_cpu_is_rejected() {
        let reason = reason_of(Topology::from_map(&[(0, 0), (1, 0), (1, 1)]));
        assert!(reason.contains("cpu 1 twice"), "{reason}");
        assert!(reason.contains("node 0 and node 1"), "{reason}");
    }

    #[test]
    fn from_map_duplicate_cpu_same_node_is_rejected() {
        let reason = reason_of(Topology::from_map(&[(5, 0), (5, 0)]));
        assert!(reason.contains("cpu 5 twice"), "{reason}");
    }

    #[test]
    fn from_map_cpu_id_at_max_is_rejected() {
        let reason = reason_of(Topology::from_map(&[(MAX_CPUS, 0)]));
        assert!(reason.contains("cpu ids below 65536"), "{reason}");
    }

    #[test]
    fn from_map_node_id_at_max_is_rejected() {
        let reason = reason_of(Topology::from_map(&[(0, MAX_NODES)]));
        assert!(reason.contains("node ids below 1024"), "{reason}");
    }

    #[test]
    fn from_map_huge_ids_are_rejected() {
        reason_of(Topology::from_map(&[(usize::MAX, 0)]));
        reason_of(Topology::from_map(&[(0, usize::MAX)]));
        reason_of(Topology::from_map(&[(0, usize::from(NO_NODE))]));
    }

    #[test]
    fn from_map_largest_ids_are_accepted() {
        let t = Topology::from_map(&[(MAX_CPUS - 1, MAX_NODES - 1)]).unwrap();
        assert_eq!(t.nr_cpu_ids(), MAX_CPUS);
        assert_eq!(t.nr_node_ids(), MAX_NODES);
        assert_eq!(t.nr_cpus(), 1);
        assert_eq!(t.node_of(MAX_CPUS - 1), Ok(MAX_NODES - 1));
    }

    // --- node_of / node_of_cpu ---

    #[test]
    fn node_of_out_of_range_cpu_returns_unknown_cpu() {
        let t = Topology::uniform(2, 2).unwrap();
        assert_eq!(
            t.node_of(4),
            Err(Error::UnknownCpu {
                cpu: 4,
                nr_cpu_ids: 4
            })
        );
        assert_eq!(
            t.node_of(usize::MAX),
            Err(Error::UnknownCpu {
                cpu: usize::MAX,
                nr_cpu_ids: 4
            })
        );
    }

    #[test]
    fn node_of_absent_sparse_cpu_returns_unknown_cpu() {
        let t = Topology::from_map(&[(0, 0), (2, 1)]).unwrap();
        assert_eq!(
            t.node_of(1),
            Err(Error::UnknownCpu {
                cpu: 1,
                nr_cpu_ids: 3
            })
        );
        assert_eq!(t.node_of(2), Ok(1));
    }

    #[test]
    fn node_of_cpu_agrees_with_node_of() {
        let t = Topology::from_map(&[(0, 0), (2, 3), (5, 1)]).unwrap();
        for cpu in 0..10 {
            assert_eq!(t.node_of_cpu(cpu), t.node_of(cpu).ok(), "cpu {cpu}");
        }
        assert_eq!(t.node_of_cpu(usize::MAX), None);
    }

    // --- iterators ---

    #[test]
    fn cpus_of_node_sparse_returns_ascending_cpus() {
        let t = Topology::from_spec("0:0-1,6;2:2-5,7").unwrap();
        assert_eq!(t.cpus_of_node(0).collect::<Vec<_>>(), vec![0, 1, 6]);
        assert_eq!(t.cpus_of_node(1).count(), 0);
        assert_eq!(t.cpus_of_node(2).collect::<Vec<_>>(), vec![2, 3, 4, 5, 7]);
    }

    #[test]
    fn cpus_of_node_out_of_range_is_empty() {
        let t = Topology::from_map(&[(0, 0), (1, 0)]).unwrap();
        let mut absent = t.clone();
        // A node id equal to the absent marker never matches absent CPUs.
        absent.cpu_to_node = vec![0, NO_NODE, 0].into_boxed_slice();
        assert_eq!(absent.cpus_of_node(usize::from(NO_NODE)).count(), 0);
        assert_eq!(t.cpus_of_node(1).count(), 0);
        assert_eq!(t.cpus_of_node(usize::MAX).count(), 0);
    }

    #[test]
    fn nodes_uniform_yields_every_node() {
        let t = Topology::uniform(3, 2).unwrap();
        assert_eq!(t.nodes().collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn has_node_out_of_range_is_false() {
        let t = Topology::uniform(2, 1).unwrap();
        assert!(t.has_node(1));
        assert!(!t.has_node(2));
        assert!(!t.has_node(usize::MAX));
    }

    #[test]
    fn check_node_without_cpus_returns_unknown_node() {
        let t = Topology::from_map(&[(0, 0), (1, 2)]).unwrap();
        assert_eq!(t.check_node(0), Ok(()));
        assert_eq!(t.check_node(2), Ok(()));
        assert_eq!(
            t.check_node(1),
            Err(Error::UnknownNode {
                node: 1,
                nr_node_ids: 3
            })
        );
        assert_eq!(
            t.check_node(3),
            Err(Error::UnknownNode {
                node: 3,
                nr_node_ids: 3
            })
        );
    }

    // --- from_spec: NxC ---

    #[test]
    fn from_spec_nxc_equals_uniform() {
        assert_eq!(
            Topology::from_spec("2x4").unwrap(),
            Topology::uniform(2, 4).unwrap()
        );
    }

    #[test]
    fn from_spec_uppercase_x_and_whitespace_is_accepted() {
        assert_eq!(
            Topology::from_spec("  2X4\n").unwrap(),
            Topology::uniform(2, 4).unwrap()
        );
        assert_eq!(
            Topology::from_spec("2 x 4").unwrap(),
            Topology::uniform(2, 4).unwrap()
        );
    }

    #[test]
    fn from_spec_nxc_zero_nodes_is_rejected() {
        let reason = reason_of(Topology::from_spec("0x4"));
        assert!(reason.contains("at least one node"), "{reason}");
        assert!(reason.contains("\"0x4\""), "{reason}");
    }

    #[test]
    fn from_spec_nxc_zero_cpus_is_rejected() {
        let reason = reason_of(Topology::from_spec("2x0"));
        assert!(reason.contains("at least one cpu per node"), "{reason}");
    }

    #[test]
    fn from_spec_nxc_bad_numbers_are_rejected() {
        for spec in [
            "ax4", "2xb", "x4", "2x", "-2x4", "+2x4", "2x4x1", "2.5x4", "2x٣",
        ] {
            let reason = reason_of(Topology::from_spec(spec));
            assert!(reason.starts_with("expected a decimal"), "{spec}: {reason}");
        }
    }

    #[test]
    fn from_spec_nxc_overflowing_number_is_rejected() {
        let reason = reason_of(Topology::from_spec("99999999999999999999999x1"));
        assert!(reason.contains("too large"), "{reason}");
    }

    #[test]
    fn from_spec_nxc_too_many_is_rejected() {
        let reason = reason_of(Topology::from_spec("1025x1"));
        assert!(reason.contains("at most 1024 nodes"), "{reason}");
        let reason = reason_of(Topology::from_spec("1024x65"));
        assert!(reason.contains("at most 65536 cpus"), "{reason}");
    }

    #[test]
    fn from_spec_empty_is_rejected() {
        for spec in ["", "   ", "\n"] {
            let reason = reason_of(Topology::from_spec(spec));
            assert!(reason.contains("empty specification"), "{spec:?}: {reason}");
            assert!(reason.contains("expected `NxC`"), "{reason}");
        }
    }

    #[test]
    fn from_spec_bare_word_is_rejected() {
        let reason = reason_of(Topology::from_spec("eight"));
        assert!(reason.contains("expected `NxC`"), "{reason}");
        let reason = reason_of(Topology::from_spec("8"));
        assert!(reason.contains("expected `NxC`"), "{reason}");
    }

    // --- from_spec: node:cpulist ---

    #[test]
    fn from_spec_list_sparse_nodes_builds_map() {
        let t = Topology::from_spec("0:0-3;2:4-5,8").unwrap();
        assert_eq!(t.nr_node_ids(), 3);
        assert_eq!(t.nr_cpu_ids(), 9);
        assert_eq!(t.nr_cpus(), 7);
        assert_eq!(t.cpus_of_node(0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(t.cpus_of_node(2).collect::<Vec<_>>(), vec![4, 5, 8]);
        assert_eq!(
            t.node_of(6),
            Err(Error::UnknownCpu {
                cpu: 6,
                nr_cpu_ids: 9
            })
        );
    }

    #[test]
    fn from_spec_list_comma_separated_pairs_equals_semicolons() {
        assert_eq!(
            Topology::from_spec("0:0-3,1:4-7").unwrap(),
            Topology::from_spec("0:0-3;1:4-7").unwrap()
        );
        assert_eq!(
            Topology::from_spec("0:0-3;1:4-7").unwrap(),
            Topology::uniform(2, 4).unwrap()
        );
    }

    #[test]
    fn from_spec_list_whitespace_is_accepted() {
        assert_eq!(
            Topology::from_spec(" 0 : 0 - 1 , 3 ; 1 : 2 \n").unwrap(),
            Topology::from_map(&[(0, 0), (1, 0), (3, 0), (2, 1)]).unwrap()
        );
    }

    #[test]
    fn from_spec_list_unordered_nodes_is_accepted() {
        assert_eq!(
            Topology::from_spec("1:0-1;0:2-3").unwrap(),
            Topology::from_map(&[(0, 1), (1, 1), (2, 0), (3, 0)]).unwrap()
        );
    }

    #[test]
    fn from_spec_list_reversed_range_is_rejected() {
        let reason = reason_of(Topology::from_spec("0:3-0"));
        assert!(reason.contains("reversed range 3-0"), "{reason}");
    }

    #[test]
    fn from_spec_list_duplicate_cpu_is_rejected() {
        let reason = reason_of(Topology::from_spec("0:0-3;1:3-4"));
        assert!(reason.contains("cpu 3 twice"), "{reason}");
        let reason = reason_of(Topology::from_spec("0:0-3,2"));
        assert!(reason.contains("cpu 2 twice"), "{reason}");
    }

    #[test]
    fn from_spec_list_duplicate_node_is_rejected() {
        let reason = reason_of(Topology::from_spec("0:0-1;0:2-3"));
        assert!(reason.contains("node 0 twice"), "{reason}");
        let reason = reason_of(Topology::from_spec("0:0-1,0:2-3"));
        assert!(reason.contains("node 0 twice"), "{reason}");
    }

    #[test]
    fn from_spec_list_empty_parts_are_rejected() {
        let cases = [
            ("0:", "got nothing"),
            ("0:0-1;", "between `;` separators"),
            (";0:0-1", "between `;` separators"),
            ("0:0-1;;1:2", "between `;` separators"),
            ("0:0-1,", "got nothing"),
            ("0:0-1,,2", "got nothing"),
            (":0-3", "decimal node id"),
            ("0:-3", "first cpu id"),
            ("0:1-", "last cpu id"),
        ];
        for (spec, expected) in cases {
            let reason = reason_of(Topology::from_spec(spec));
            assert!(reason.contains(expected), "{spec:?}: {reason}");
        }
    }

    #[test]
    fn from_spec_list_entry_without_node_is_rejected() {
        let reason = reason_of(Topology::from_spec("0:0-1;2-3"));
        assert!(reason.contains("expected `node:cpulist`"), "{reason}");
    }

    #[test]
    fn from_spec_list_bad_numbers_are_rejected() {
        let cases = [
            "a:0-3", "0:a-3", "0:0-b", "0:0-3:2", "0:1:2", "0:-1", "0:0--3", "-1:0", "0:+3",
            "0:0x2", "0:1.5",
        ];
        for spec in cases {
            let reason = reason_of(Topology::from_spec(spec));
            assert!(
                reason.starts_with("expected a decimal"),
                "{spec:?}: {reason}"
            );
            assert!(reason.contains(&format!("{spec:?}")), "{spec:?}: {reason}");
        }
    }

    #[test]
    fn from_spec_list_ids_over_maxima_are_rejected() {
        let reason = reason_of(Topology::from_spec("1024:0"));
        assert!(reason.contains("node ids below 1024"), "{reason}");
        let reason = reason_of(Topology::from_spec("0:65536"));
        assert!(reason.contains("cpu ids below 65536"), "{reason}");
        let reason = reason_of(Topology::from_spec("0:0-99999999999"));
        assert!(reason.contains("cpu ids below 65536"), "{reason}");
        let reason = reason_of(Topology::from_spec("0:99999999999999999999999"));
        assert!(reason.contains("too large"), "{reason}");
    }

    #[test]
    fn from_spec_list_largest_ids_are_accepted() {
        let t = Topology::from_spec("1023:65535").unwrap();
        assert_eq!(t.nr_node_ids(), MAX_NODES);
        assert_eq!(t.nr_cpu_ids(), MAX_CPUS);
        assert_eq!(t.node_of(65535), Ok(1023));
    }

    // --- Display ---

    #[test]
    fn display_uniform_prints_ranges() {
        assert_eq!(Topology::uniform(2, 4).unwrap().to_string(), "0:0-3;1:4-7");
        assert_eq!(Topology::single_node(1).unwrap().to_string(), "0:0");
    }

    #[test]
    fn display_sparse_compresses_runs() {
        let t = Topology::from_spec("0:0-3;2:4-5,8").unwrap();
        assert_eq!(t.to_string(), "0:0-3;2:4-5,8");
        let t = Topology::from_map(&[(0, 0), (2, 0), (4, 2), (6, 2)]).unwrap();
        assert_eq!(t.to_string(), "0:0,2;2:4,6");
        let t = Topology::from_map(&[(0, 1), (1, 0), (2, 1), (3, 1), (4, 0)]).unwrap();
        assert_eq!(t.to_string(), "0:1,4;1:0,2-3");
    }

    #[test]
    fn display_then_from_spec_round_trips() {
        let topologies = [
            Topology::single_node(1).unwrap(),
            Topology::uniform(4, 3).unwrap(),
            Topology::from_spec("0:0-3;2:4-5,8").unwrap(),
            Topology::from_map(&[(0, 1), (1, 0), (2, 1), (3, 1), (4, 0)]).unwrap(),
            Topology::from_map(&[(MAX_CPUS - 1, MAX_NODES - 1), (0, 0)]).unwrap(),
        ];
        for t in topologies {
            let text = t.to_string();
            assert_eq!(Topology::from_spec(&text).as_ref(), Ok(&t), "{text}");
        }
    }

    #[test]
    fn debug_prints_summary_and_map() {
        let text = format!("{:?}", Topology::uniform(2, 2).unwrap());
        assert_eq!(
            text,
            "Topology { nr_node_ids: 2, nr_cpu_ids: 4, nr_cpus: 4, map: 0:0-1;1:2-3 }"
        );
    }

    // --- Serialize ---

    #[test]
    #[cfg(feature = "serde")]
    fn serialize_sparse_emits_node_ids_and_pairs() {
        let t = Topology::from_map(&[(0, 0), (2, 2)]).unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"nr_node_ids":3,"cpus":[[0,0],[2,2]]}"#
        );
    }

    // --- properties ---

    proptest::proptest! {
        #[test]
        fn from_map_any_distinct_cpus_round_trips_through_display(
            map in proptest::collection::btree_map(0usize..200, 0usize..8, 1..50)
        ) {
            let pairs: Vec<(usize, usize)> = map.into_iter().collect();
            let t = Topology::from_map(&pairs).unwrap();
            proptest::prop_assert_eq!(pairs_of(&t), pairs.clone());
            let reparsed = Topology::from_spec(&t.to_string()).unwrap();
            proptest::prop_assert_eq!(&reparsed, &t);
            let nr_cpu_ids = pairs.iter().map(|&(cpu, _)| cpu + 1).max().unwrap();
            let nr_node_ids = pairs.iter().map(|&(_, node)| node + 1).max().unwrap();
            proptest::prop_assert_eq!(t.nr_cpu_ids(), nr_cpu_ids);
            proptest::prop_assert_eq!(t.nr_node_ids(), nr_node_ids);
            proptest::prop_assert_eq!(t.nr_cpus(), pairs.len());
            let from_nodes: usize = t.nodes().map(|node| t.cpus_of_node(node).count()).sum();
            proptest::prop_assert_eq!(from_nodes, pairs.len());
        }

        #[test]
        fn from_spec_arbitrary_input_never_panics(spec in "[0-9x:;, \\-]{0,24}") {
            let _ = Topology::from_spec(&spec);
        }
    }
}
