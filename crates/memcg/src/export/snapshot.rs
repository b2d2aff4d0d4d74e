//! The statistics of a whole group tree at one moment ([`TreeSnapshot`]):
//! what every export encodes.

use crate::engine::{Controller, GroupStats, Topology};

/// The statistics of a whole group tree at one moment: the controller's
/// topology and every group's [`GroupStats`], root first, depth first.
///
/// Groups are read one after the other, not atomically: a charge running
/// concurrently can show in a child and not yet in its parent.
///
/// With the `serde` feature it implements `serde::Serialize`, as the
/// engine's types do; in JSON (`to_json`, feature `json`):
///
/// ```text
/// {
///   "topology": {"nr_node_ids": 2, "cpus": [[0, 0], [1, 1]]},
///   "groups": [
///     {"path": "", "current_bytes": 8192, "peak_bytes": 8192,
///      "max": "Max", "high": "Max",
///      "stat": {"kernel_bytes": 8192, "alloc_bytes": 0, "runtime_bytes": 0, "reservation_bytes": 5000},
///      "stat_local": {…},
///      "numa": [{"node": 0, "hierarchical": {…}, "local": {…}}, …],
///      "events": {"high": 0, "max": 0, "oom": 0, "oom_kill": 0}, "events_local": {…}},
///     {"path": "a", …, "max": {"Bytes": 1048576}, …},
///     …
///   ]
/// }
/// ```
///
/// Groups come root first (path `""`), depth first, as
/// [`Controller::stats`] returns them. A [`Limit`](crate::Limit) is `"Max"`
/// or `{"Bytes": n}`. Every quantity is in bytes and says so in its key.
///
/// # Examples
/// ```
/// use memcg::{export::TreeSnapshot, Controller, Topology};
///
/// let ctrl = Controller::new(Topology::from_spec("2x1")?);
/// ctrl.create("a")?.create_child("b")?;
/// let snapshot = TreeSnapshot::capture(&ctrl);
/// let paths: Vec<&str> = snapshot.groups.iter().map(|g| g.path.as_str()).collect();
/// assert_eq!(paths, ["", "a", "a/b"]);
/// assert_eq!(snapshot.topology.nr_node_ids(), 2);
/// # Ok::<(), memcg::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct TreeSnapshot {
    /// The controller's machine layout.
    pub topology: Topology,
    /// Every group's statistics, root (path `""`) first, depth first.
    pub groups: Vec<GroupStats>,
}

impl TreeSnapshot {
    /// Reads the topology and every group's statistics from `ctrl`
    /// ([`Controller::stats`]).
    pub fn capture(ctrl: &Controller) -> TreeSnapshot {
        TreeSnapshot {
            topology: ctrl.topology().clone(),
            groups: ctrl.stats(),
        }
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn capture_nested_tree_lists_root_first_depth_first() {
        let ctrl = Controller::new(Topology::from_spec("2x1").unwrap());
        let a = ctrl.create("a").unwrap();
        a.create_child("x").unwrap().create_child("y").unwrap();
        a.create_child("z").unwrap();
        ctrl.create("b").unwrap();

        let snapshot = TreeSnapshot::capture(&ctrl);
        let paths: Vec<&str> = snapshot.groups.iter().map(|g| g.path.as_str()).collect();
        assert_eq!(paths, ["", "a", "a/x", "a/x/y", "a/z", "b"]);
        assert_eq!(snapshot.groups, ctrl.stats());
        assert_eq!(&snapshot.topology, ctrl.topology());
    }
}
