//! The whole group tree as JSON ([`to_json`], [`to_json_value`]; feature
//! `json`). The JSON shape is the serde shape of the engine's types,
//! documented on [`TreeSnapshot`].

use crate::engine::Controller;
use crate::export::TreeSnapshot;

impl TreeSnapshot {
    /// The snapshot as compact JSON text, keys in declaration order; see
    /// [`to_json`].
    pub fn to_json(&self) -> String {
        // Every field is a struct, a sequence, a string, an integer or a
        // unit enum variant: serde_json has nothing it could refuse (no
        // non-string map keys, no non-finite floats).
        serde_json::to_string(self).expect("a TreeSnapshot always serializes to JSON")
    }

    /// The snapshot as a [`serde_json::Value`]; see [`to_json_value`].
    pub fn to_json_value(&self) -> serde_json::Value {
        // As in `to_json`, nothing here can fail to serialize.
        serde_json::to_value(self).expect("a TreeSnapshot always serializes to JSON")
    }
}

/// The whole tree of `ctrl` as compact JSON text:
/// `{"topology": {...}, "groups": [GroupStats, ...]}`, groups root first,
/// depth first. See [`TreeSnapshot`] for the shape.
///
/// # Examples
/// ```
/// use memcg::{export, Controller, Topology};
///
/// let ctrl = Controller::new(Topology::from_spec("2x1")?);
/// ctrl.create("a")?;
/// let json = export::to_json(&ctrl);
/// assert!(json.starts_with(r#"{"topology":{"nr_node_ids":2,"cpus":[[0,0],[1,1]]},"groups":[{"path":"","#));
/// # Ok::<(), memcg::Error>(())
/// ```
pub fn to_json(ctrl: &Controller) -> String {
    TreeSnapshot::capture(ctrl).to_json()
}

/// The whole tree of `ctrl` as a [`serde_json::Value`]: the value
/// [`to_json`] prints, for reading fields without parsing text.
///
/// # Examples
/// ```
/// use memcg::{export, Controller, Topology};
///
/// let ctrl = Controller::new(Topology::from_spec("2x1")?);
/// let g = ctrl.create("a")?;
/// let _r = g.try_charge_on_node(1, 5000)?;
/// let v = export::to_json_value(&ctrl);
/// assert_eq!(v["groups"][1]["stat"]["reservation_bytes"], 5000);
/// assert_eq!(v["groups"][0]["max"], "Max");
/// # Ok::<(), memcg::Error>(())
/// ```
pub fn to_json_value(ctrl: &Controller) -> serde_json::Value {
    TreeSnapshot::capture(ctrl).to_json_value()
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;
    use crate::{Limit, Topology};

    fn two_node_controller() -> Controller {
        Controller::new(Topology::from_spec("2x1").unwrap())
    }

    #[test]
    fn to_json_reservation_on_node_shows_in_tree() {
        let ctrl = two_node_controller();
        let g = ctrl.create("a").unwrap();
        let _r = g.try_charge_on_node(1, 5000).unwrap();

        let v: serde_json::Value = serde_json::from_str(&to_json(&ctrl)).unwrap();
        let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["groups", "topology"]);
        assert_eq!(v["topology"]["nr_node_ids"], 2);
        assert_eq!(v["topology"]["cpus"], serde_json::json!([[0, 0], [1, 1]]));

        let groups = v["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0]["path"], "");
        assert_eq!(groups[1]["path"], "a");
        for group in groups {
            assert_eq!(group["stat"]["reservation_bytes"], 5000);
            assert_eq!(group["numa"][0]["hierarchical"]["reservation_bytes"], 0);
            assert_eq!(group["numa"][1]["node"], 1);
            assert_eq!(group["numa"][1]["hierarchical"]["reservation_bytes"], 5000);
        }
        assert_eq!(groups[0]["numa"][1]["local"]["reservation_bytes"], 0);
        assert_eq!(groups[1]["numa"][1]["local"]["reservation_bytes"], 5000);
        assert_eq!(groups[1]["current_bytes"], g.current_bytes());
    }

    #[test]
    fn to_json_text_keeps_declaration_order() {
        let ctrl = two_node_controller();
        let json = to_json(&ctrl);
        let topology = json.find(r#""topology":"#).unwrap();
        let groups = json.find(r#""groups":"#).unwrap();
        assert!(topology < groups, "{json}");
        assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
        assert!(!json.contains('\n'), "compact JSON has no newlines: {json}");
    }

    #[test]
    fn to_json_value_any_tree_equals_parsed_text() {
        let ctrl = two_node_controller();
        let a = ctrl.create("a").unwrap();
        a.create_child("b").unwrap();
        let _r = a.try_charge(10_000).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&to_json(&ctrl)).unwrap();
        assert_eq!(parsed, to_json_value(&ctrl));
    }

    #[test]
    fn to_json_limits_serialize_as_max_or_bytes() {
        let ctrl = two_node_controller();
        let g = ctrl.create("a").unwrap();
        g.set_max(Limit::Bytes(1 << 20)).unwrap();

        let v = to_json_value(&ctrl);
        assert_eq!(v["groups"][0]["max"], "Max");
        assert_eq!(v["groups"][0]["high"], "Max");
        assert_eq!(
            v["groups"][1]["max"],
            serde_json::json!({ "Bytes": 1 << 20 })
        );
        assert_eq!(v["groups"][1]["high"], "Max");
    }

    #[test]
    fn to_json_group_name_with_quote_and_backslash_round_trips() {
        let ctrl = two_node_controller();
        let name = "q\"uo\\te";
        ctrl.create(name).unwrap();
        let v: serde_json::Value = serde_json::from_str(&to_json(&ctrl)).unwrap();
        assert_eq!(v["groups"][1]["path"], name);
    }

    #[test]
    fn to_json_max_event_counts_in_events() {
        let ctrl = two_node_controller();
        let parent = ctrl.create("p").unwrap();
        let child = parent.create_child("c").unwrap();
        child.set_max(Limit::Bytes(4096)).unwrap();
        assert!(child.try_charge(1 << 20).is_err());

        let v = to_json_value(&ctrl);
        let child_events = child.events();
        assert!(child_events.max >= 1);
        assert_eq!(v["groups"][2]["path"], "p/c");
        assert_eq!(v["groups"][2]["events"]["max"], child_events.max);
        assert_eq!(v["groups"][2]["events_local"]["max"], child_events.max);
        assert_eq!(v["groups"][1]["events"]["max"], child_events.max);
        assert_eq!(v["groups"][1]["events_local"]["max"], 0);
    }
}
