//! Exporting the statistics of a whole group tree.
//!
//! Every export starts from one [`TreeSnapshot`]: the controller's
//! [`Topology`](crate::Topology) and the [`GroupStats`](crate::GroupStats)
//! of every group, root first, depth first (as [`Controller::stats`]
//! returns them). Groups are read one after the other, not atomically: a
//! charge running concurrently can show in a child and not yet in its
//! parent.
//!
//! - [`to_prometheus`]: the snapshot as Prometheus text exposition format
//!   0.0.4 (`memcg_memory_current_bytes{group="a"} 8192`, …), served with
//!   [`PROMETHEUS_CONTENT_TYPE`]; the metrics are listed in
//!   [`to_prometheus`]. No dependency.
//! - [`to_prometheus_with`] and [`MetricOptions`]: the same with another
//!   metric-name prefix (`memcg` unless set) and constant labels
//!   (`service="kv"`), both validated ([`MetricOptionsError`]).
//! - `MemcgCollector` (feature `prometheus-client`): a
//!   `prometheus_client::collector::Collector` that encodes the same
//!   families, named by the same [`MetricOptions`], on every scrape of the
//!   registry it is registered with (OpenMetrics text with that crate's
//!   encoder).
//! - [`TreeSnapshot`] implements `serde::Serialize` with the feature
//!   `serde` (`{"topology": …, "groups": […]}`), for any serde format.
//! - `to_json`, `to_json_value` (feature `json`, which brings `serde_json`):
//!   the snapshot as JSON text or as a `serde_json::Value`.
//!
//! # Features
//! | feature | what it adds | dependencies it brings |
//! |---|---|---|
//! | (none) | [`to_prometheus`], [`to_prometheus_with`], [`TreeSnapshot`] | none |
//! | `serde` | `Serialize` on the statistics, [`Limit`](crate::Limit) (and `Deserialize`), [`Topology`](crate::Topology), [`TreeSnapshot`] | `serde` |
//! | `json` | `to_json`, `to_json_value`, `TreeSnapshot::to_json` (implies `serde`) | `serde`, `serde_json` |
//! | `prometheus-client` | `MemcgCollector` | `prometheus-client` |
//!
//! None is on by default. `serde_json` in particular stays out of a
//! default build: its impls (such as `PartialEq<Value> for u8`) would make
//! integer comparisons in the code of every crate that depends on memcg
//! ambiguous (errors E0282/E0283).
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
//! let snapshot = export::TreeSnapshot::capture(&ctrl);
//! assert_eq!(snapshot.groups[1].path, "a");
//! assert_eq!(snapshot.groups[1].numa[1].hierarchical.reservation_bytes, 5000);
//! # Ok::<(), memcg::Error>(())
//! ```
//!
//! [`Controller::stats`]: crate::Controller::stats

#[cfg(feature = "prometheus-client")]
mod collector;
mod families;
#[cfg(feature = "json")]
mod json;
mod options;
mod prometheus;
mod snapshot;

#[cfg(feature = "prometheus-client")]
pub use collector::MemcgCollector;
#[cfg(feature = "json")]
pub use json::{to_json, to_json_value};
pub use options::{MetricOptions, MetricOptionsError, DEFAULT_METRIC_PREFIX};
pub use prometheus::{to_prometheus, to_prometheus_with, PROMETHEUS_CONTENT_TYPE};
pub use snapshot::TreeSnapshot;
