//! Exporting the statistics of a whole group tree.
//!
//! Every export starts from one [`TreeSnapshot`]: the controller's
//! [`Topology`](crate::Topology) and the [`GroupStats`](crate::GroupStats)
//! of every group, root first, depth first (as [`Controller::stats`]
//! returns them). Groups are read one after the other, not atomically: a
//! charge running concurrently can show in a child and not yet in its
//! parent.
//!
//! - [`TreeSnapshot`]: the tree as a serde value
//!   (`{"topology": …, "groups": […]}`), for any serde format;
//!   [`TreeSnapshot::capture`] takes one.
//! - [`to_json`], [`to_json_value`]: the snapshot as JSON text or as a
//!   [`serde_json::Value`].
//! - [`to_prometheus`]: the snapshot as Prometheus text exposition format
//!   0.0.4 (`memcg_memory_current_bytes{group="a"} 8192`, …), served with
//!   [`PROMETHEUS_CONTENT_TYPE`]; the metrics are listed in
//!   [`to_prometheus`].
//!
//! # Examples
//! ```
//! use memcg::{export, Controller, Topology};
//!
//! let ctrl = Controller::new(Topology::from_spec("2x1")?);
//! let g = ctrl.create("a")?;
//! let _r = g.try_charge_on_node(1, 5000)?;
//!
//! let text = export::to_prometheus(&ctrl);
//! assert!(text
//!     .lines()
//!     .any(|l| l == r#"memcg_live_bytes{group="a",node="1",kind="reservation"} 5000"#));
//!
//! let json = export::to_json_value(&ctrl);
//! assert_eq!(json["groups"][1]["path"], "a");
//! assert_eq!(json["groups"][1]["numa"][1]["hierarchical"]["reservation_bytes"], 5000);
//! # Ok::<(), memcg::Error>(())
//! ```
//!
//! [`Controller::stats`]: crate::Controller::stats

mod json;
mod prometheus;

pub use json::{to_json, to_json_value, TreeSnapshot};
pub use prometheus::{to_prometheus, PROMETHEUS_CONTENT_TYPE};
