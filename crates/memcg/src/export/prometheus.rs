//! The group tree as Prometheus text exposition format, version 0.0.4
//! ([`to_prometheus`], [`to_prometheus_with`]; the format and the metrics
//! are documented on [`to_prometheus`]).
//!
//! The encoding is written here rather than taken from a crate: the
//! `prometheus` crate (tikv) models live instruments in a registry, so a
//! snapshot we already hold would be copied into a throwaway registry on
//! every scrape for the sake of a few dozen lines of escaping and printing.
//! For a `prometheus-client` registry (OpenMetrics), the
//! `prometheus-client` feature adds `MemcgCollector`, which encodes the
//! same families.

use std::fmt::Write as _;

use crate::engine::Controller;
use crate::export::families::{nr_samples, Family, FAMILIES};
use crate::export::{MetricOptions, TreeSnapshot};

/// The HTTP `Content-Type` of [`to_prometheus`]'s text:
/// `text/plain; version=0.0.4; charset=utf-8`.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The whole tree of `ctrl` as Prometheus text exposition format 0.0.4
/// (serve it with [`PROMETHEUS_CONTENT_TYPE`]), with the default
/// [`MetricOptions`]: prefix `memcg`, no constant labels. See
/// [`to_prometheus_with`] to set them.
///
/// Each metric family is printed once, as `# HELP name text`, then
/// `# TYPE name gauge|counter`, then all its samples,
/// `name{label="value",...} value`, groups root first, depth first. Label
/// values escape `\` as `\\`, `"` as `\"` and a line feed as `\n`
/// (group names may contain `"` and `\`); HELP texts escape `\` and line
/// feeds. Values are integers, or `+Inf`. There are no timestamps,
/// comments or blank lines, and no series appears twice.
///
/// | metric | type | labels | value |
/// |---|---|---|---|
/// | `memcg_memory_current_bytes` | gauge | `group` | `memory.current` |
/// | `memcg_memory_peak_bytes` | gauge | `group` | `memory.peak` ([`Group::reset_peak`](crate::Group::reset_peak)) |
/// | `memcg_memory_max_bytes` | gauge | `group` | `memory.max`, `+Inf` for `max` |
/// | `memcg_memory_high_bytes` | gauge | `group` | `memory.high`, `+Inf` for `max` |
/// | `memcg_kernel_bytes` | gauge | `group`, `node` | `kernel` of `memory.numa_stat` |
/// | `memcg_live_bytes` | gauge | `group`, `node`, `kind` | `alloc`, `runtime`, `reservation` of `memory.numa_stat` |
/// | `memcg_events_total` | counter | `group`, `event` | `memory.events` |
/// | `memcg_events_local_total` | counter | `group`, `event` | `memory.events.local` |
///
/// - `group` is the group's path (`a/b`), and `/` for the root group
///   (whose path is `""`). Names cannot contain `/`, so `/` names no other
///   group and no two groups share a label.
/// - `node` is a node id, one sample for each id below
///   [`Topology::nr_node_ids`](crate::Topology::nr_node_ids), as in
///   `memory.numa_stat`.
/// - `kind` is [`ChargeKind::key`](crate::ChargeKind::key) (`alloc`,
///   `runtime`, `reservation`); `event` is
///   [`MemoryEvent::key`](crate::MemoryEvent::key) (`high`, `max`, `oom`,
///   `oom_kill`).
/// - Per-node values and `memcg_events_total` include descendants
///   (hierarchical); `memcg_events_local_total` counts the group's own.
/// - An unlimited `max` or `high` is exported as `+Inf` rather than
///   omitted, so the series never disappears and `current / max` reads 0.
///
/// # Examples
/// ```
/// use memcg::{export, Controller, Topology};
///
/// let ctrl = Controller::new(Topology::from_spec("2x1")?);
/// let g = ctrl.create("a")?;
/// let _r = g.try_charge_on_node(1, 5000)?;
/// let text = export::to_prometheus(&ctrl);
/// let lines: Vec<&str> = text.lines().collect();
/// assert!(lines.contains(&r#"memcg_live_bytes{group="a",node="1",kind="reservation"} 5000"#));
/// assert!(lines.contains(&r#"memcg_live_bytes{group="/",node="1",kind="reservation"} 5000"#));
/// assert!(lines.contains(&r#"memcg_memory_max_bytes{group="a"} +Inf"#));
/// assert!(lines.contains(&"# TYPE memcg_events_total counter"));
/// # Ok::<(), memcg::Error>(())
/// ```
pub fn to_prometheus(ctrl: &Controller) -> String {
    TreeSnapshot::capture(ctrl).to_prometheus()
}

/// The whole tree of `ctrl` as Prometheus text exposition format 0.0.4,
/// named by `options`: every metric name starts with
/// [`MetricOptions::prefix`] (and `_`) instead of `memcg_`, and every
/// sample starts with the [`MetricOptions::const_labels`], in their order.
/// The families, labels and values are those of [`to_prometheus`].
///
/// # Examples
/// ```
/// use memcg::export::{self, MetricOptions};
/// use memcg::{Controller, Topology};
///
/// let ctrl = Controller::new(Topology::from_spec("2x1")?);
/// let g = ctrl.create("a")?;
/// let _r = g.try_charge_on_node(1, 5000)?;
/// let options = MetricOptions::new()
///     .with_prefix("kv")?
///     .with_const_label("service", "kv")?
///     .with_const_label("zone", "eu-1")?;
/// let text = export::to_prometheus_with(&ctrl, &options);
/// let lines: Vec<&str> = text.lines().collect();
/// assert!(lines.contains(
///     &r#"kv_live_bytes{service="kv",zone="eu-1",group="a",node="1",kind="reservation"} 5000"#
/// ));
/// assert!(lines.contains(&"# TYPE kv_events_total counter"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn to_prometheus_with(ctrl: &Controller, options: &MetricOptions) -> String {
    TreeSnapshot::capture(ctrl).to_prometheus_with(options)
}

impl TreeSnapshot {
    /// The snapshot as Prometheus text exposition format 0.0.4; see
    /// [`to_prometheus`] for the metrics and labels.
    pub fn to_prometheus(&self) -> String {
        self.to_prometheus_with(&MetricOptions::new())
    }

    /// The snapshot as Prometheus text exposition format 0.0.4 named by
    /// `options`; see [`to_prometheus_with`].
    pub fn to_prometheus_with(&self, options: &MetricOptions) -> String {
        encode(&self.groups, options)
    }
}

/// Encodes every family for `groups`.
fn encode(groups: &[crate::GroupStats], options: &MetricOptions) -> String {
    // The constant labels, escaped once: `k="v",` each.
    let mut constants = String::new();
    for (name, value) in options.const_labels() {
        constants.push_str(name);
        constants.push_str("=\"");
        push_escaped(&mut constants, value, true);
        constants.push_str("\",");
    }
    // About 70 bytes a sample, plus the constant labels: sizes the string
    // once for typical trees.
    let samples = nr_samples(groups);
    let mut out = String::with_capacity(2048 + samples * (70 + constants.len()));
    for family in &FAMILIES {
        write_family(&mut out, family, options.prefix(), &constants, groups);
    }
    out
}

/// Writes one family: its HELP and TYPE lines, then its samples,
/// `name{constants,k="v",...} value`.
fn write_family(
    out: &mut String,
    family: &Family,
    prefix: &str,
    constants: &str,
    groups: &[crate::GroupStats],
) {
    let name = family.sample_name(prefix);
    out.push_str("# HELP ");
    out.push_str(&name);
    out.push(' ');
    push_escaped(out, family.help, false);
    out.push_str("\n# TYPE ");
    out.push_str(&name);
    out.push(' ');
    out.push_str(family.metric_type.as_str());
    out.push('\n');
    let written: Result<(), std::convert::Infallible> =
        family.for_each_sample(groups, |values, value| {
            out.push_str(&name);
            out.push('{');
            out.push_str(constants);
            for (i, (key, val)) in family.labels.iter().zip(values).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(key);
                out.push_str("=\"");
                push_escaped(out, val, true);
                out.push('"');
            }
            out.push('}');
            // Writing to a `String` cannot fail.
            let _ = writeln!(out, " {value}");
            Ok(())
        });
    let Ok(()) = written;
}

/// Appends `text` with `\` and line feeds escaped, and `"` too when
/// `quote` (label values; HELP texts keep their quotes).
fn push_escaped(out: &mut String, text: &str, quote: bool) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            '"' if quote => out.push_str(r#"\""#),
            c => out.push(c),
        }
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;
    use crate::{Controller, Limit, Reservation, Topology};

    /// One parsed family.
    #[derive(Debug)]
    struct ParsedFamily {
        name: String,
        help: String,
        metric_type: String,
        samples: Vec<ParsedSample>,
    }

    /// One parsed sample: labels in their order, unescaped, and the value.
    #[derive(Debug)]
    struct ParsedSample {
        labels: Vec<(String, String)>,
        value: f64,
    }

    impl ParsedSample {
        fn label(&self, key: &str) -> &str {
            self.labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no label {key} in {self:?}"))
        }
    }

    /// Parses exposition text against the 0.0.4 grammar, restricted to
    /// what `encode` promises: every family has exactly one HELP and one
    /// TYPE line (gauge or counter), both before its samples; a family's
    /// lines are contiguous; samples are named after their family; no
    /// comments, blank lines or timestamps; no series twice. Label values
    /// are unescaped (`\\`, `\"`, `\n`; any other escape is an error, as in
    /// Prometheus's own parser).
    fn parse(text: &str) -> Result<Vec<ParsedFamily>, String> {
        if !text.ends_with('\n') {
            return Err("the text must end with a line feed".to_string());
        }
        let mut families: Vec<ParsedFamily> = Vec::new();
        let mut seen_series = HashSet::new();
        for (i, line) in text.split_terminator('\n').enumerate() {
            let line_no = i + 1;
            let at = |msg: &str| format!("line {line_no}: {msg}: {line:?}");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                check_metric_name(name).map_err(|e| at(&e))?;
                let family = open_family(&mut families, name).map_err(|e| at(&e))?;
                if !family.help.is_empty() {
                    return Err(at("second HELP line for the family"));
                }
                family.help = unescape(help, false).map_err(|e| at(&e))?;
                if family.help.is_empty() {
                    return Err(at("empty HELP text"));
                }
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let Some((name, metric_type)) = rest.split_once(' ') else {
                    return Err(at("TYPE line without a type"));
                };
                check_metric_name(name).map_err(|e| at(&e))?;
                if !matches!(metric_type, "gauge" | "counter") {
                    return Err(at("type must be gauge or counter"));
                }
                let family = open_family(&mut families, name).map_err(|e| at(&e))?;
                if !family.metric_type.is_empty() {
                    return Err(at("second TYPE line for the family"));
                }
                family.metric_type = metric_type.to_string();
            } else if line.starts_with('#') {
                return Err(at("comment lines are not emitted"));
            } else if line.is_empty() {
                return Err(at("blank lines are not emitted"));
            } else {
                let (name, sample) = parse_sample(line).map_err(|e| at(&e))?;
                let Some(family) = families.last_mut() else {
                    return Err(at("sample before any HELP/TYPE"));
                };
                if family.name != name {
                    return Err(at(&format!("sample outside its family {}", family.name)));
                }
                if family.help.is_empty() || family.metric_type.is_empty() {
                    return Err(at("sample before its family's HELP and TYPE"));
                }
                let mut key = sample.labels.clone();
                key.sort();
                if !seen_series.insert((name.to_string(), key)) {
                    return Err(at("duplicate series"));
                }
                family.samples.push(sample);
            }
        }
        if let Some(f) = families.iter().find(|f| f.samples.is_empty()) {
            return Err(format!("family {} has no samples", f.name));
        }
        Ok(families)
    }

    /// The family `name`: the open one, or a new one if `name` was never
    /// seen; an error if `name` was closed or the open one has samples.
    fn open_family<'f>(
        families: &'f mut Vec<ParsedFamily>,
        name: &str,
    ) -> Result<&'f mut ParsedFamily, String> {
        let is_open = families.last().is_some_and(|f| f.name == name);
        if is_open {
            let family = families.last_mut().unwrap();
            if !family.samples.is_empty() {
                return Err("HELP/TYPE after the family's samples".to_string());
            }
            return Ok(family);
        }
        if families.iter().any(|f| f.name == name) {
            return Err(format!("family {name} is not contiguous"));
        }
        families.push(ParsedFamily {
            name: name.to_string(),
            help: String::new(),
            metric_type: String::new(),
            samples: Vec::new(),
        });
        Ok(families.last_mut().unwrap())
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    fn check_metric_name(name: &str) -> Result<(), String> {
        let mut chars = name.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if ok {
            Ok(())
        } else {
            Err(format!("bad metric name {name:?}"))
        }
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
    fn check_label_name(name: &str) -> Result<(), String> {
        let mut chars = name.chars();
        let ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with("__");
        if ok {
            Ok(())
        } else {
            Err(format!("bad label name {name:?}"))
        }
    }

    /// Undoes `push_escaped`: `\\`, `\n`, and `\"` when `quote`.
    fn unescape(text: &str, quote: bool) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if quote => out.push('"'),
                other => return Err(format!("invalid escape \\{other:?}")),
            }
        }
        Ok(out)
    }

    /// `name{k="v",...} value`: the name, the unescaped labels, the value.
    fn parse_sample(line: &str) -> Result<(&str, ParsedSample), String> {
        let name_end = line.find(['{', ' ']).ok_or("no value")?;
        let name = &line[..name_end];
        check_metric_name(name)?;
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after_brace) = rest.strip_prefix('{') {
            rest = after_brace;
            loop {
                let (key, after_key) = rest.split_once("=\"").ok_or("label without =\"")?;
                check_label_name(key)?;
                if labels.iter().any(|(k, _)| k == key) {
                    return Err(format!("label {key} twice"));
                }
                // The value ends at the first `"` not escaped.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after_key.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        '\n' => return Err("raw line feed in a label value".to_string()),
                        _ => {}
                    }
                }
                let end = end.ok_or("unterminated label value")?;
                labels.push((key.to_string(), unescape(&after_key[..end], true)?));
                rest = &after_key[end + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                } else {
                    return Err("expected , or } after a label value".to_string());
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or("expected one space before the value")?;
        if value.contains(' ') {
            return Err("timestamps are not emitted".to_string());
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) => {
                v.parse().map_err(|e| format!("{e}"))?
            }
            v => return Err(format!("value {v:?} is neither an integer nor +Inf")),
        };
        Ok((name, ParsedSample { labels, value }))
    }

    /// The samples of `family`, keyed by their label values in order.
    fn samples_of<'p>(families: &'p [ParsedFamily], family: &str) -> BTreeMap<Vec<&'p str>, f64> {
        let f = families
            .iter()
            .find(|f| f.name == family)
            .unwrap_or_else(|| panic!("no family {family}"));
        f.samples
            .iter()
            .map(|s| (s.labels.iter().map(|(_, v)| v.as_str()).collect(), s.value))
            .collect()
    }

    fn two_node_controller() -> Controller {
        Controller::new(Topology::from_spec("2x1").unwrap())
    }

    /// A tree with nesting, limits, charges of every kind on both nodes,
    /// `max` events, and names that need escaping; the reservations
    /// must be held while the tree is read.
    fn busy_controller() -> (Controller, Vec<Reservation>) {
        let ctrl = two_node_controller();
        let a = ctrl.create("a").unwrap();
        let b = a.create_child("b").unwrap();
        let weird = ctrl.create("q\"uo\\te, x=y}{ ñ").unwrap();
        weird.create_child("in\"ner").unwrap();
        b.set_max(Limit::Bytes(1 << 20)).unwrap();
        a.set_high(Limit::Bytes(4 << 20)).unwrap();
        assert!(b.try_charge(2 << 20).is_err());

        let task = ctrl.new_task(&b).unwrap();
        let c0 = task.charge(0, 100, crate::ChargeKind::Alloc).unwrap();
        let c1 = task.charge(1, 300, crate::ChargeKind::Runtime).unwrap();
        task.flush(1).unwrap();
        // Charges are plain tokens: the bytes stay charged.
        let _ = (c0, c1);
        let held = vec![
            weird.try_charge_on_node(0, 7000).unwrap(),
            a.try_charge_on_node(1, 5000).unwrap(),
        ];
        (ctrl, held)
    }

    #[test]
    fn to_prometheus_reservation_on_node_emits_exact_lines() {
        let ctrl = two_node_controller();
        let g = ctrl.create("a").unwrap();
        let _r = g.try_charge_on_node(1, 5000).unwrap();

        let text = to_prometheus(&ctrl);
        let lines: Vec<&str> = text.lines().collect();
        let stats = g.stats();
        let expected = [
            r#"memcg_live_bytes{group="a",node="1",kind="reservation"} 5000"#.to_string(),
            r#"memcg_live_bytes{group="a",node="0",kind="reservation"} 0"#.to_string(),
            r#"memcg_live_bytes{group="/",node="1",kind="reservation"} 5000"#.to_string(),
            r#"memcg_live_bytes{group="a",node="1",kind="alloc"} 0"#.to_string(),
            format!(
                r#"memcg_memory_current_bytes{{group="a"}} {}"#,
                stats.current_bytes
            ),
            format!(
                r#"memcg_memory_peak_bytes{{group="a"}} {}"#,
                stats.peak_bytes
            ),
            format!(
                r#"memcg_kernel_bytes{{group="a",node="1"}} {}"#,
                stats.numa[1].hierarchical.kernel_bytes
            ),
            r#"memcg_memory_max_bytes{group="a"} +Inf"#.to_string(),
            r#"memcg_memory_high_bytes{group="/"} +Inf"#.to_string(),
            r#"memcg_events_total{group="a",event="max"} 0"#.to_string(),
            r#"memcg_events_local_total{group="a",event="oom"} 0"#.to_string(),
        ];
        for line in &expected {
            assert!(lines.contains(&line.as_str()), "{line} not in\n{text}");
        }
        assert!(stats.current_bytes >= 5000);
        assert!(stats.numa[1].hierarchical.kernel_bytes >= 5000);
    }

    #[test]
    fn to_prometheus_busy_tree_parses_against_grammar() {
        let (ctrl, _held) = busy_controller();
        let text = to_prometheus(&ctrl);
        let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

        let summary: Vec<(&str, &str)> = families
            .iter()
            .map(|f| (f.name.as_str(), f.metric_type.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                ("memcg_memory_current_bytes", "gauge"),
                ("memcg_memory_peak_bytes", "gauge"),
                ("memcg_memory_max_bytes", "gauge"),
                ("memcg_memory_high_bytes", "gauge"),
                ("memcg_kernel_bytes", "gauge"),
                ("memcg_live_bytes", "gauge"),
                ("memcg_events_total", "counter"),
                ("memcg_events_local_total", "counter"),
            ]
        );
        let nr_groups = ctrl.stats().len();
        assert_eq!(nr_groups, 5);
        let counts: Vec<usize> = families.iter().map(|f| f.samples.len()).collect();
        let (nodes, kinds, events) = (2, 3, 4);
        let per_group = [1, 1, 1, 1, nodes, nodes * kinds, events, events];
        let expected: Vec<usize> = per_group.iter().map(|n| n * nr_groups).collect();
        assert_eq!(counts, expected);
        let label_names: [&[&str]; 8] = [
            &["group"],
            &["group"],
            &["group"],
            &["group"],
            &["group", "node"],
            &["group", "node", "kind"],
            &["group", "event"],
            &["group", "event"],
        ];
        for ((f, names), constant) in families.iter().zip(label_names).zip(&FAMILIES) {
            assert_eq!(f.name, constant.sample_name("memcg"));
            assert_eq!(constant.labels, names);
            assert_eq!(f.help, constant.help);
            for sample in &f.samples {
                let keys: Vec<&str> = sample.labels.iter().map(|(k, _)| k.as_str()).collect();
                assert_eq!(keys, names, "{}", f.name);
            }
        }
    }

    #[test]
    fn to_prometheus_busy_tree_values_match_group_stats() {
        let (ctrl, _held) = busy_controller();
        let families = parse(&to_prometheus(&ctrl)).unwrap();
        let stats = ctrl.stats();

        // The text format names counters with `_total`.
        let name = |base: &str| match base {
            "events" | "events_local" => format!("memcg_{base}_total"),
            _ => format!("memcg_{base}"),
        };
        crate::export::families::assert_samples_match_stats(&stats, |base| {
            samples_of(&families, &name(base))
        });
        let live = samples_of(&families, "memcg_live_bytes");
        let max = samples_of(&families, "memcg_memory_max_bytes");
        let high = samples_of(&families, "memcg_memory_high_bytes");
        // The charges made are visible, hierarchically.
        assert_eq!(live[&vec!["a/b", "0", "alloc"]], 100.0);
        assert_eq!(live[&vec!["a", "1", "runtime"]], 300.0);
        assert_eq!(live[&vec!["/", "1", "reservation"]], 5000.0);
        assert_eq!(live[&vec!["/", "0", "reservation"]], 7000.0);
        assert_eq!(max[&vec!["a/b"]], (1 << 20) as f64);
        assert_eq!(high[&vec!["a"]], (4 << 20) as f64);
        assert_eq!(max[&vec!["/"]], f64::INFINITY);
    }

    #[test]
    fn to_prometheus_quote_and_backslash_in_name_round_trips() {
        let ctrl = two_node_controller();
        let names = ["q\"u\\o", "\\", "\"", "\\\"n", "a,b=c}{ d", "ünï"];
        for name in names {
            crate::engine::validate_name(name).unwrap();
            ctrl.create(name).unwrap();
        }
        ctrl.create("q\"u\\o/in\\ner\"").unwrap();

        let text = to_prometheus(&ctrl);
        assert!(
            text.lines()
                .any(|l| l == r#"memcg_memory_current_bytes{group="q\"u\\o"} 0"#),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == r#"memcg_memory_current_bytes{group="q\"u\\o/in\\ner\""} 0"#),
            "{text}"
        );
        let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let stats = ctrl.stats();
        let expected: HashSet<&str> = stats
            .iter()
            .map(|g| {
                if g.path.is_empty() {
                    "/"
                } else {
                    g.path.as_str()
                }
            })
            .collect();
        assert_eq!(expected.len(), names.len() + 2);
        for f in &families {
            let groups: HashSet<&str> = f.samples.iter().map(|s| s.label("group")).collect();
            assert_eq!(groups, expected, "{}", f.name);
        }
    }

    #[test]
    fn to_prometheus_limits_emit_bytes_or_plus_inf() {
        let ctrl = two_node_controller();
        let g = ctrl.create("a").unwrap();
        g.set_max(Limit::Bytes(1 << 20)).unwrap();
        g.set_high(Limit::Bytes(3 * 4096 + 1)).unwrap();
        let text = to_prometheus(&ctrl);
        for line in [
            r#"memcg_memory_max_bytes{group="a"} 1048576"#,
            r#"memcg_memory_high_bytes{group="a"} 12288"#,
            r#"memcg_memory_max_bytes{group="/"} +Inf"#,
            r#"memcg_memory_high_bytes{group="/"} +Inf"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        g.set_max(Limit::Max).unwrap();
        let text = to_prometheus(&ctrl);
        assert!(text
            .lines()
            .any(|l| l == r#"memcg_memory_max_bytes{group="a"} +Inf"#));
    }

    #[test]
    fn to_prometheus_max_event_counts_hierarchical_and_local() {
        let ctrl = two_node_controller();
        let parent = ctrl.create("p").unwrap();
        let child = parent.create_child("c").unwrap();
        child.set_max(Limit::Bytes(4096)).unwrap();
        assert!(child.try_charge(1 << 20).is_err());
        let n = child.events().max;
        assert!(n >= 1);

        let text = to_prometheus(&ctrl);
        for line in [
            format!(r#"memcg_events_total{{group="p/c",event="max"}} {n}"#),
            format!(r#"memcg_events_local_total{{group="p/c",event="max"}} {n}"#),
            format!(r#"memcg_events_total{{group="p",event="max"}} {n}"#),
            r#"memcg_events_local_total{group="p",event="max"} 0"#.to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn to_prometheus_sparse_nodes_label_every_node_id() {
        let ctrl = Controller::new(Topology::from_spec("0:0;2:1").unwrap());
        let g = ctrl.create("a").unwrap();
        let _r = g.try_charge_on_node(2, 4096).unwrap();
        let families = parse(&to_prometheus(&ctrl)).unwrap();
        let kernel = samples_of(&families, "memcg_kernel_bytes");
        let nodes: Vec<&str> = kernel
            .keys()
            .filter(|k| k[0] == "a")
            .map(|k| k[1])
            .collect();
        assert_eq!(nodes, ["0", "1", "2"]);
        let live = samples_of(&families, "memcg_live_bytes");
        assert_eq!(live[&vec!["a", "2", "reservation"]], 4096.0);
    }

    #[test]
    fn to_prometheus_snapshot_equals_controller_output() {
        let (ctrl, _held) = busy_controller();
        assert_eq!(
            TreeSnapshot::capture(&ctrl).to_prometheus(),
            to_prometheus(&ctrl)
        );
    }

    #[test]
    fn to_prometheus_with_prefix_and_const_labels_names_every_sample() {
        let (ctrl, _held) = busy_controller();
        let options = MetricOptions::new()
            .with_prefix("kv_cache")
            .unwrap()
            .with_const_label("service", "kv")
            .unwrap()
            .with_const_label("zone", "eu \"1\"\\\n")
            .unwrap();
        let text = to_prometheus_with(&ctrl, &options);
        assert!(
            text.lines().any(|l| l
                == r#"kv_cache_memory_max_bytes{service="kv",zone="eu \"1\"\\\n",group="a/b"} 1048576"#),
            "{text}"
        );
        let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let default = parse(&to_prometheus(&ctrl)).unwrap();
        assert_eq!(families.len(), default.len());
        for (f, d) in families.iter().zip(&default) {
            let base = d.name.strip_prefix("memcg_").unwrap();
            assert_eq!(f.name, format!("kv_cache_{base}"));
            assert_eq!((&f.help, &f.metric_type), (&d.help, &d.metric_type));
            assert_eq!(f.samples.len(), d.samples.len());
            for (s, ds) in f.samples.iter().zip(&d.samples) {
                let constants: Vec<(&str, &str)> = s.labels[..2]
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(constants, [("service", "kv"), ("zone", "eu \"1\"\\\n")]);
                assert_eq!(s.labels[2..], ds.labels[..]);
                assert_eq!(s.value, ds.value);
            }
        }
    }

    #[test]
    fn to_prometheus_with_empty_prefix_names_without_prefix() {
        let ctrl = two_node_controller();
        ctrl.create("a").unwrap();
        let options = MetricOptions::new().with_prefix("").unwrap();
        let text = to_prometheus_with(&ctrl, &options);
        let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        let expected: Vec<String> = FAMILIES.iter().map(|f| f.sample_name("")).collect();
        assert_eq!(names, expected);
        assert!(text
            .lines()
            .any(|l| l == r#"memory_current_bytes{group="a"} 0"#));
        assert_eq!(
            TreeSnapshot::capture(&ctrl).to_prometheus_with(&MetricOptions::new()),
            to_prometheus(&ctrl)
        );
    }

    #[test]
    fn to_prometheus_peak_after_reset_peak_is_current() {
        let ctrl = two_node_controller();
        let g = ctrl.create("a").unwrap();
        let big = g.try_charge(1 << 20).unwrap();
        drop(big);
        ctrl.drain_stocks();
        let peak = |ctrl: &Controller, group: &str| {
            let families = parse(&to_prometheus(ctrl)).unwrap();
            samples_of(&families, "memcg_memory_peak_bytes")[&vec![group]]
        };
        assert!(peak(&ctrl, "a") >= (1 << 20) as f64);
        g.reset_peak();
        assert_eq!(peak(&ctrl, "a"), g.current_bytes() as f64);
        assert!(peak(&ctrl, "/") >= (1 << 20) as f64);
    }

    #[test]
    fn push_escaped_label_value_escapes_backslash_quote_newline() {
        let mut out = String::new();
        push_escaped(&mut out, "a\\b\"c\nd", true);
        assert_eq!(out, r#"a\\b\"c\nd"#);
        assert_eq!(unescape(&out, true).unwrap(), "a\\b\"c\nd");
    }

    #[test]
    fn push_escaped_help_keeps_quotes() {
        let mut out = String::new();
        push_escaped(&mut out, "say \"hi\"\\\n", false);
        assert_eq!(out, r#"say "hi"\\\n"#);
        assert_eq!(unescape(&out, false).unwrap(), "say \"hi\"\\\n");
    }

    #[test]
    fn content_type_names_version_0_0_4() {
        assert_eq!(
            PROMETHEUS_CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    // --- the checker itself catches malformed text ---

    const HEADER: &str = "# HELP m Help.\n# TYPE m gauge\n";

    #[test]
    fn parse_well_formed_text_returns_families() {
        let text = format!("{HEADER}m{{a=\"x\\\"y\",b=\"\"}} 1\nm{{a=\"z\"}} +Inf\n");
        let families = parse(&text).unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].samples[0].label("a"), "x\"y");
        assert_eq!(families[0].samples[1].value, f64::INFINITY);
    }

    #[test]
    fn parse_malformed_text_returns_err() {
        let bad = [
            ("no final newline", format!("{HEADER}m 1")),
            ("unescaped quote", format!("{HEADER}m{{a=\"x\"y\"}} 1\n")),
            ("unknown escape", format!("{HEADER}m{{a=\"x\\ty\"}} 1\n")),
            (
                "duplicate series",
                format!("{HEADER}m{{a=\"x\"}} 1\nm{{a=\"x\"}} 2\n"),
            ),
            ("second HELP", format!("{HEADER}# HELP m Again.\nm 1\n")),
            (
                "TYPE after samples",
                format!("{HEADER}m 1\n# TYPE m gauge\n"),
            ),
            ("no TYPE", "# HELP m Help.\nm 1\n".to_string()),
            ("wrong family", format!("{HEADER}n 1\n")),
            (
                "split family",
                format!("{HEADER}m 1\n# HELP n N.\n# TYPE n gauge\nn 1\n{HEADER}m{{a=\"b\"}} 1\n"),
            ),
            (
                "bad type",
                "# HELP m Help.\n# TYPE m histogram\nm 1\n".to_string(),
            ),
            ("bad label name", format!("{HEADER}m{{1a=\"x\"}} 1\n")),
            ("reserved label name", format!("{HEADER}m{{__a=\"x\"}} 1\n")),
            ("label twice", format!("{HEADER}m{{a=\"x\",a=\"y\"}} 1\n")),
            ("bad value", format!("{HEADER}m 1.5.2\n")),
            ("max as value", format!("{HEADER}m max\n")),
            ("timestamp", format!("{HEADER}m 1 1700000000\n")),
            ("two spaces", format!("{HEADER}m  1\n")),
            ("blank line", format!("{HEADER}m 1\n\n")),
            ("no samples", HEADER.to_string()),
        ];
        for (what, text) in bad {
            assert!(parse(&text).is_err(), "{what} accepted:\n{text}");
        }
    }
}
