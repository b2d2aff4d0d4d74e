//! The group tree as a `prometheus-client` collector ([`MemcgCollector`];
//! feature `prometheus-client`): encoded on every scrape, by whichever
//! encoder the registry is encoded with (OpenMetrics text with
//! `prometheus_client::encoding::text::encode`).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType as ClientMetricType;
use prometheus_client::registry::Unit;

use crate::engine::Controller;
use crate::export::families::{Family, MetricType, Value, FAMILIES};
use crate::export::{MetricOptions, TreeSnapshot};
use crate::limit::Limit;

/// A `prometheus_client::collector::Collector` for the group tree of one
/// controller: on every scrape it reads a [`TreeSnapshot`] and encodes the
/// families of [`to_prometheus`](super::to_prometheus), named by its
/// [`MetricOptions`] (prefix `memcg` and no constant labels unless set).
///
/// In OpenMetrics (`prometheus_client::encoding::text::encode`) a family
/// of bytes declares its unit (`# TYPE memcg_memory_current_bytes gauge`,
/// `# UNIT memcg_memory_current_bytes bytes`) and a counter family is
/// named without `_total` (`# TYPE memcg_events counter`); the samples
/// carry the names of the text export
/// (`memcg_memory_current_bytes{group="a"} 8192`,
/// `memcg_events_total{group="a",event="max"} 0`). An unlimited `max` or
/// `high` is `inf`, which OpenMetrics reads as +Inf.
///
/// Register it with `registry.register_collector(Box::new(collector))`.
/// A registry's own prefix and labels (`sub_registry_with_prefix`,
/// `Registry::with_labels`) are added to the collector's; OpenMetrics
/// wants every family once in an exposition, so register one collector
/// per prefix.
///
/// # Examples
/// ```
/// use memcg::export::{MemcgCollector, MetricOptions};
/// use memcg::{Controller, Topology};
/// use prometheus_client::encoding::text::encode;
/// use prometheus_client::registry::Registry;
///
/// let ctrl = Controller::new(Topology::from_spec("2x1")?);
/// let g = ctrl.create("a")?;
///
/// let mut registry = Registry::default();
/// let options = MetricOptions::new().with_const_label("service", "kv")?;
/// registry.register_collector(Box::new(MemcgCollector::with_options(&ctrl, options)));
///
/// let _r = g.try_charge_on_node(1, 5000)?; // after registration: seen at the scrape
/// let mut text = String::new();
/// encode(&mut text, &registry)?;
/// let lines: Vec<&str> = text.lines().collect();
/// assert!(lines.contains(&"# TYPE memcg_live_bytes gauge"));
/// assert!(lines.contains(&"# UNIT memcg_live_bytes bytes"));
/// assert!(lines.contains(
///     &r#"memcg_live_bytes{service="kv",group="a",node="1",kind="reservation"} 5000"#
/// ));
/// assert_eq!(lines.last(), Some(&"# EOF"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct MemcgCollector {
    ctrl: Controller,
    options: MetricOptions,
}

impl MemcgCollector {
    /// A collector for `ctrl`'s tree with the default [`MetricOptions`]
    /// (prefix `memcg`, no constant labels). For the process-wide
    /// controller: `MemcgCollector::new(memcg::controller())`.
    pub fn new(ctrl: &Controller) -> Self {
        MemcgCollector::with_options(ctrl, MetricOptions::new())
    }

    /// A collector for `ctrl`'s tree named by `options`.
    pub fn with_options(ctrl: &Controller, options: MetricOptions) -> Self {
        MemcgCollector {
            ctrl: ctrl.clone(),
            options,
        }
    }

    /// The options the collector names its metrics by.
    pub fn options(&self) -> &MetricOptions {
        &self.options
    }

    /// Encodes `snapshot` into `encoder`.
    fn encode_snapshot(
        &self,
        snapshot: &TreeSnapshot,
        mut encoder: DescriptorEncoder<'_>,
    ) -> fmt::Result {
        let constants: Vec<(&str, &str)> = self
            .options
            .const_labels()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        for family in &FAMILIES {
            encode_family(
                &mut encoder,
                family,
                self.options.prefix(),
                &constants,
                snapshot,
            )?;
        }
        Ok(())
    }
}

impl Collector for MemcgCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        self.encode_snapshot(&TreeSnapshot::capture(&self.ctrl), encoder)
    }
}

/// Encodes one family: its descriptor, then one sample per label set.
fn encode_family(
    encoder: &mut DescriptorEncoder<'_>,
    family: &Family,
    prefix: &str,
    constants: &[(&str, &str)],
    snapshot: &TreeSnapshot,
) -> fmt::Result {
    let name = family.name(prefix);
    let unit = family.bytes.then_some(&Unit::Bytes);
    let metric_type = match family.metric_type {
        MetricType::Gauge => ClientMetricType::Gauge,
        MetricType::Counter => ClientMetricType::Counter,
    };
    let mut metric = encoder.encode_descriptor(&name, family.help, unit, metric_type)?;
    family.for_each_sample(&snapshot.groups, |values, value| {
        // A family has at most 3 labels of its own.
        let mut own = [("", ""); 3];
        let nr_own = family.labels.len().min(values.len()).min(own.len());
        for (slot, label) in own.iter_mut().zip(family.labels.iter().zip(values)) {
            *slot = (label.0, label.1);
        }
        let labels = (constants, &own[..nr_own]);
        let mut sample = metric.encode_family(&labels)?;
        match (family.metric_type, value) {
            (MetricType::Counter, Value::Int(n)) => {
                sample.encode_counter::<NoLabelSet, u64, u64>(&n, None)
            }
            (MetricType::Gauge, Value::Int(n) | Value::Limit(Limit::Bytes(n))) => {
                sample.encode_gauge(&n)
            }
            (MetricType::Gauge, Value::Limit(Limit::Max)) => sample.encode_gauge(&f64::INFINITY),
            // No counter family holds a limit.
            (MetricType::Counter, Value::Limit(_)) => Err(fmt::Error),
        }
    })
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::{ChargeKind, GroupStats, MemoryEvent, Reservation, Topology};

    /// A sample's labels, `(name, value)` in order, unescaped.
    type Labels = Vec<(String, String)>;

    /// A parsed sample: its name, labels and value.
    type OmSample = (String, Labels, f64);

    /// One parsed OpenMetrics family.
    #[derive(Debug)]
    struct OmFamily {
        name: String,
        metric_type: String,
        unit: Option<String>,
        help: String,
        /// `(sample name, labels in order, value)`.
        samples: Vec<OmSample>,
    }

    /// Parses OpenMetrics text (the subset a collector of gauges and
    /// counters gives) line by line against the format:
    /// - the exposition ends with `# EOF` and a line feed, and nothing
    ///   follows it;
    /// - each family starts with `# HELP`, `# TYPE` (gauge or counter) and,
    ///   for a unit, `# UNIT name unit` where the family name ends in
    ///   `_unit`, before its samples; a family appears once and its lines
    ///   are contiguous;
    /// - a gauge's samples are named after the family, a counter's after it
    ///   with `_total`;
    /// - `name{k="v",...} value`: label names `[a-zA-Z_][a-zA-Z0-9_]*`,
    ///   never twice in a sample, values escaped with `\\`, `\"`, `\n`
    ///   only; the value an integer, a float, or (case-insensitive)
    ///   `[+-]inf`/`infinity`/`nan`; no timestamps or exemplars; no label
    ///   set twice in a family.
    fn parse_openmetrics(text: &str) -> Result<Vec<OmFamily>, String> {
        let body = text
            .strip_suffix("# EOF\n")
            .ok_or("the exposition must end with `# EOF` and a line feed")?;
        let mut families: Vec<OmFamily> = Vec::new();
        let mut seen = HashSet::new();
        for (i, line) in body.split_terminator('\n').enumerate() {
            let at = |msg: &str| format!("line {}: {msg}: {line:?}", i + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').ok_or_else(|| at("no help"))?;
                check_name(name).map_err(|e| at(&e))?;
                if families.iter().any(|f| f.name == name) {
                    return Err(at("family seen before"));
                }
                families.push(OmFamily {
                    name: name.to_string(),
                    metric_type: String::new(),
                    unit: None,
                    help: help.to_string(),
                    samples: Vec::new(),
                });
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let f = families.last_mut().ok_or_else(|| at("TYPE before HELP"))?;
                let (name, ty) = rest.split_once(' ').ok_or_else(|| at("no type"))?;
                if name != f.name || !f.metric_type.is_empty() || !f.samples.is_empty() {
                    return Err(at("TYPE out of place"));
                }
                if !matches!(ty, "gauge" | "counter") {
                    return Err(at("type must be gauge or counter"));
                }
                if ty == "counter" && name.ends_with("_total") {
                    return Err(at("a counter family name must not end in _total"));
                }
                f.metric_type = ty.to_string();
            } else if let Some(rest) = line.strip_prefix("# UNIT ") {
                let f = families.last_mut().ok_or_else(|| at("UNIT before HELP"))?;
                let (name, unit) = rest.split_once(' ').ok_or_else(|| at("no unit"))?;
                if f.metric_type.is_empty() || !f.samples.is_empty() || f.unit.is_some() {
                    return Err(at("UNIT out of place"));
                }
                if name != f.name || !name.ends_with(&format!("_{unit}")) {
                    return Err(at("the family name must end in _<unit>"));
                }
                f.unit = Some(unit.to_string());
            } else if line.starts_with('#') {
                return Err(at("unexpected comment line"));
            } else {
                let f = families
                    .last_mut()
                    .ok_or_else(|| at("sample before HELP"))?;
                if f.metric_type.is_empty() {
                    return Err(at("sample before TYPE"));
                }
                let (name, labels, value) = parse_om_sample(line).map_err(|e| at(&e))?;
                let expected = match f.metric_type.as_str() {
                    "counter" => format!("{}_total", f.name),
                    _ => f.name.clone(),
                };
                if name != expected {
                    return Err(at(&format!("sample not named {expected}")));
                }
                let mut key = labels.clone();
                key.sort();
                if !seen.insert((name.clone(), key)) {
                    return Err(at("label set twice"));
                }
                f.samples.push((name, labels, value));
            }
        }
        if let Some(f) = families.iter().find(|f| f.samples.is_empty()) {
            return Err(format!("family {} has no samples", f.name));
        }
        Ok(families)
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    fn check_name(name: &str) -> Result<(), String> {
        let mut chars = name.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        ok.then_some(()).ok_or(format!("bad metric name {name:?}"))
    }

    /// `name{k="v",...} value`.
    fn parse_om_sample(line: &str) -> Result<OmSample, String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        check_name(name)?;
        let mut rest = &line[name_end..];
        let mut labels: Labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
                let mut chars = key.chars();
                let key_ok = chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !key_ok || labels.iter().any(|(k, _)| k == key) {
                    return Err(format!("bad or repeated label name {key:?}"));
                }
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().ok_or("unterminated label value")? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => return Err(format!("invalid escape {other:?}")),
                        },
                        (_, c) => value.push(c),
                    }
                };
                labels.push((key.to_string(), value));
                rest = &after[end + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                } else {
                    return Err("expected , or }".to_string());
                }
            }
        }
        let value = rest.strip_prefix(' ').ok_or("expected one space")?;
        if value.contains(' ') {
            return Err("timestamps and exemplars are not emitted".to_string());
        }
        let lower = value.to_ascii_lowercase();
        let parsed = match lower.trim_start_matches(['+', '-']) {
            "inf" | "infinity" if lower.starts_with('-') => f64::NEG_INFINITY,
            "inf" | "infinity" => f64::INFINITY,
            "nan" if lower == "nan" => f64::NAN,
            _ if value
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
                && value.chars().any(|c| c.is_ascii_digit()) =>
            {
                value.parse::<f64>().map_err(|e| format!("{e}: {value}"))?
            }
            _ => return Err(format!("bad value {value:?}")),
        };
        Ok((name.to_string(), labels, parsed))
    }

    fn two_node_controller() -> Controller {
        Controller::new(Topology::from_spec("2x1").unwrap())
    }

    /// A tree with nesting, limits, charges of every kind on both nodes,
    /// `max` events, and names that need escaping; the reservations must be
    /// held while the tree is read.
    fn busy_controller() -> (Controller, Vec<Reservation>) {
        let ctrl = two_node_controller();
        let a = ctrl.create("a").unwrap();
        let b = a.create_child("b").unwrap();
        let weird = ctrl.create("q\"uo\\te, x=y}{ ñ").unwrap();
        weird.create_child("in\"ner").unwrap();
        b.set_max(crate::Limit::Bytes(1 << 20)).unwrap();
        a.set_high(crate::Limit::Bytes(4 << 20)).unwrap();
        assert!(b.try_charge(2 << 20).is_err());
        let task = ctrl.new_task(&b).unwrap();
        let c0 = task.charge(0, 100, ChargeKind::Alloc).unwrap();
        let c1 = task.charge(1, 300, ChargeKind::Runtime).unwrap();
        task.flush(1).unwrap();
        // Charges are plain tokens: the bytes stay charged.
        let _ = (c0, c1);
        let held = vec![
            weird.try_charge_on_node(0, 7000).unwrap(),
            a.try_charge_on_node(1, 5000).unwrap(),
        ];
        (ctrl, held)
    }

    /// `registry` encoded as OpenMetrics text.
    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    /// The samples of `family`, keyed by their label values in order.
    fn samples_of<'f>(families: &'f [OmFamily], family: &str) -> BTreeMap<Vec<&'f str>, f64> {
        let f = families
            .iter()
            .find(|f| f.name == family)
            .unwrap_or_else(|| panic!("no family {family}"));
        f.samples
            .iter()
            .map(|(_, labels, v)| (labels.iter().map(|(_, v)| v.as_str()).collect(), *v))
            .collect()
    }

    /// The OpenMetrics family name of `f`: its name with the unit, without
    /// `_total`.
    fn om_name(f: &Family, prefix: &str) -> String {
        let name = f.name(prefix);
        if f.bytes {
            name + "_bytes"
        } else {
            name
        }
    }

    /// `(family, type, unit, label names)` of every family, in order.
    fn expected_shape(
        prefix: &str,
        constants: &[&str],
    ) -> Vec<(String, String, Option<String>, Vec<String>)> {
        FAMILIES
            .iter()
            .map(|f| {
                let labels = constants
                    .iter()
                    .chain(f.labels)
                    .map(|s| s.to_string())
                    .collect();
                (
                    om_name(f, prefix),
                    f.metric_type.as_str().to_string(),
                    f.bytes.then(|| "bytes".to_string()),
                    labels,
                )
            })
            .collect()
    }

    #[test]
    fn collector_busy_tree_parses_with_families_of_group_stats() {
        let (ctrl, _held) = busy_controller();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MemcgCollector::new(&ctrl)));
        let text = scrape(&registry);
        let families = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let shape: Vec<_> = families
            .iter()
            .map(|f| {
                let names = f.samples[0].1.iter().map(|(k, _)| k.clone()).collect();
                (f.name.clone(), f.metric_type.clone(), f.unit.clone(), names)
            })
            .collect();
        assert_eq!(shape, expected_shape("memcg", &[]));
        for (f, expected) in families.iter().zip(&FAMILIES) {
            assert_eq!(f.help, expected.help);
            for (_, labels, _) in &f.samples {
                let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(names, expected.labels, "{}", f.name);
            }
        }
        let stats = ctrl.stats();
        assert_eq!(stats.len(), 5);
        let (nodes, kinds, events) = (2, ChargeKind::ALL.len(), MemoryEvent::ALL.len());
        let per_group = [1, 1, 1, 1, nodes, nodes * kinds, events, events];
        let counts: Vec<usize> = families.iter().map(|f| f.samples.len()).collect();
        let expected: Vec<usize> = per_group.iter().map(|n| n * stats.len()).collect();
        assert_eq!(counts, expected);
        check_values(&families, "memcg", &stats);
    }

    /// Every sample of `families` (named with `prefix`) equals `stats`.
    fn check_values(families: &[OmFamily], prefix: &str, stats: &[GroupStats]) {
        crate::export::families::assert_samples_match_stats(stats, |base| {
            samples_of(families, &format!("{prefix}_{base}"))
        });
    }

    /// The families with the first `n` labels (the constants) dropped
    /// from each sample's key.
    fn without_constants(families: &mut [OmFamily], constants: &[(&str, &str)]) {
        for f in families {
            for (_, labels, _) in &mut f.samples {
                let given: Vec<(&str, &str)> = labels[..constants.len()]
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(given, constants, "{}", f.name);
                labels.drain(..constants.len());
            }
        }
    }

    #[test]
    fn collector_prefix_and_const_labels_name_every_sample() {
        let (ctrl, _held) = busy_controller();
        let constants = [("service", "kv"), ("zone", "eu \"1\"\\\n")];
        let mut options = MetricOptions::new().with_prefix("cache").unwrap();
        for (k, v) in constants {
            options = options.with_const_label(k, v).unwrap();
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MemcgCollector::with_options(&ctrl, options)));
        let text = scrape(&registry);
        assert!(
            text.lines().any(|l| l
                == r#"cache_memory_max_bytes{service="kv",zone="eu \"1\"\\\n",group="a/b"} 1048576"#),
            "{text}"
        );
        let mut families = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        let expected: Vec<String> = FAMILIES.iter().map(|f| om_name(f, "cache")).collect();
        assert_eq!(names, expected);
        without_constants(&mut families, &constants);
        check_values(&families, "cache", &ctrl.stats());
    }

    #[test]
    fn collector_empty_prefix_in_prefixed_sub_registry_takes_registry_prefix() {
        let ctrl = two_node_controller();
        ctrl.create("a").unwrap();
        let mut registry = Registry::default();
        let options = MetricOptions::new().with_prefix("").unwrap();
        registry
            .sub_registry_with_prefix("app")
            .register_collector(Box::new(MemcgCollector::with_options(&ctrl, options)));
        let text = scrape(&registry);
        let families = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        let expected: Vec<String> = FAMILIES.iter().map(|f| om_name(f, "app")).collect();
        assert_eq!(names, expected);
        check_values(&families, "app", &ctrl.stats());
    }

    #[test]
    fn collector_encodes_on_every_scrape() {
        let ctrl = two_node_controller();
        let g = ctrl.create("a").unwrap();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MemcgCollector::new(&ctrl)));

        let before = parse_openmetrics(&scrape(&registry)).unwrap();
        assert!(!samples_of(&before, "memcg_memory_current_bytes").contains_key(&vec!["a/late"]));
        let r = g.try_charge_on_node(1, 5000).unwrap();
        g.create_child("late").unwrap();
        let after = parse_openmetrics(&scrape(&registry)).unwrap();
        let live = samples_of(&after, "memcg_live_bytes");
        assert_eq!(live[&vec!["a", "1", "reservation"]], 5000.0);
        assert_eq!(
            samples_of(&after, "memcg_memory_current_bytes")[&vec!["a/late"]],
            0.0
        );
        drop(r);
        let again = parse_openmetrics(&scrape(&registry)).unwrap();
        assert_eq!(
            samples_of(&again, "memcg_live_bytes")[&vec!["a", "1", "reservation"]],
            0.0
        );
    }

    #[test]
    fn collector_series_equal_text_export_series() {
        let (ctrl, _held) = busy_controller();
        let options = MetricOptions::new()
            .with_const_label("service", "kv")
            .unwrap();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MemcgCollector::with_options(
            &ctrl,
            options.clone(),
        )));
        let collected = parse_openmetrics(&scrape(&registry)).unwrap();
        let om: BTreeMap<(String, Vec<(String, String)>), String> = collected
            .iter()
            .flat_map(|f| &f.samples)
            .map(|(n, l, v)| ((n.clone(), l.clone()), v.to_string()))
            .collect();

        // The 0.0.4 text: sample lines `name{labels} value`.
        let text = super::super::to_prometheus_with(&ctrl, &options);
        let mut plain = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, labels, value) = parse_om_sample(line).unwrap();
            plain.insert((name, labels), value.to_string());
        }
        assert_eq!(om, plain);
    }

    #[test]
    fn collector_unlimited_is_inf_and_limit_is_bytes() {
        let ctrl = two_node_controller();
        let g = ctrl.create("a").unwrap();
        g.set_max(crate::Limit::Bytes(3 << 20)).unwrap();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MemcgCollector::new(&ctrl)));
        let text = scrape(&registry);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.contains(&r#"memcg_memory_max_bytes{group="a"} 3145728"#),
            "{text}"
        );
        let high = lines
            .iter()
            .find(|l| l.starts_with(r#"memcg_memory_high_bytes{group="a"} "#))
            .unwrap();
        let value = high.rsplit(' ').next().unwrap();
        assert!(
            ["inf", "+inf", "infinity", "+infinity"].contains(&value.to_ascii_lowercase().as_str()),
            "{high}"
        );
    }

    #[test]
    fn parse_openmetrics_malformed_text_returns_err() {
        let head = "# HELP m_bytes H.\n# TYPE m_bytes gauge\n# UNIT m_bytes bytes\n";
        let counter = "# HELP c H.\n# TYPE c counter\n";
        let bad = [
            ("no EOF", format!("{head}m_bytes 1\n")),
            ("after EOF", format!("{head}m_bytes 1\n# EOF\nm_bytes 2\n")),
            (
                "unit mismatch",
                "# HELP m H.\n# TYPE m gauge\n# UNIT m bytes\nm 1\n# EOF\n".to_string(),
            ),
            ("counter without _total", format!("{counter}c 1\n# EOF\n")),
            (
                "counter family _total",
                "# HELP c_total H.\n# TYPE c_total counter\nc_total_total 1\n# EOF\n".to_string(),
            ),
            ("wrong family", format!("{head}n 1\n# EOF\n")),
            (
                "twice",
                format!("{head}m_bytes{{a=\"x\"}} 1\nm_bytes{{a=\"x\"}} 2\n# EOF\n"),
            ),
            (
                "bad escape",
                format!("{head}m_bytes{{a=\"\\t\"}} 1\n# EOF\n"),
            ),
            ("bad value", format!("{head}m_bytes max\n# EOF\n")),
            ("timestamp", format!("{head}m_bytes 1 2\n# EOF\n")),
            ("no samples", format!("{head}# EOF\n")),
            (
                "family repeated",
                format!("{head}m_bytes 1\n{counter}c_total 1\n{head}m_bytes{{a=\"b\"}} 1\n# EOF\n"),
            ),
        ];
        for (what, text) in bad {
            assert!(
                parse_openmetrics(&text).is_err(),
                "{what} accepted:\n{text}"
            );
        }
        let good = format!(
            "{head}m_bytes{{a=\"x\\\"\\n\"}} 1\nm_bytes 2.5\n{counter}c_total +Inf\n# EOF\n"
        );
        let families = parse_openmetrics(&good).unwrap();
        assert_eq!(families[0].samples[0].1[0].1, "x\"\n");
        assert_eq!(families[1].samples[0].2, f64::INFINITY);
    }
}
