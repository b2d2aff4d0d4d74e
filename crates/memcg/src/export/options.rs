//! The options of the Prometheus exports ([`MetricOptions`]): a metric-name
//! prefix and constant labels, validated when set ([`MetricOptionsError`]).

use std::fmt;

use super::families::SAMPLE_LABELS;

/// The metric-name prefix of the exports unless one is set: `memcg`.
pub const DEFAULT_METRIC_PREFIX: &str = "memcg";

/// How the Prometheus exports name their metrics: a prefix and constant
/// labels, for [`to_prometheus_with`](super::to_prometheus_with) and (with
/// the `prometheus-client` feature) `MemcgCollector`.
///
/// - The prefix comes before every metric name, joined by `_`:
///   `memcg_memory_current_bytes` with the default prefix
///   ([`DEFAULT_METRIC_PREFIX`]), `kv_memory_current_bytes` with `kv`,
///   `memory_current_bytes` with `""` (for a registry that adds its own).
/// - Constant labels come first on every sample, in the order they were
///   added: with `service="kv"`,
///   `memcg_memory_current_bytes{service="kv",group="a"} 8192`.
///
/// Both are checked when set, so an export never writes a name Prometheus
/// would refuse.
///
/// # Examples
/// ```
/// use memcg::export::{self, MetricOptions};
/// use memcg::{Controller, Topology};
///
/// let ctrl = Controller::new(Topology::from_spec("1x1")?);
/// ctrl.create("a")?;
/// let options = MetricOptions::new()
///     .with_prefix("cache")?
///     .with_const_label("service", "kv")?;
/// let text = export::to_prometheus_with(&ctrl, &options);
/// assert!(text
///     .lines()
///     .any(|l| l == r#"cache_memory_current_bytes{service="kv",group="a"} 0"#));
///
/// // Names Prometheus would refuse are typed errors.
/// assert!(MetricOptions::new().with_prefix("9lives").is_err());
/// assert!(MetricOptions::new().with_const_label("group", "x").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricOptions {
    prefix: String,
    const_labels: Vec<(String, String)>,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions::new()
    }
}

impl MetricOptions {
    /// The default options: prefix `memcg`, no constant labels.
    pub fn new() -> Self {
        MetricOptions {
            prefix: DEFAULT_METRIC_PREFIX.to_string(),
            const_labels: Vec::new(),
        }
    }

    /// These options with the metric-name prefix `prefix`: empty (no
    /// prefix), or a letter or `_` followed by letters, digits and `_`.
    ///
    /// # Errors
    /// [`MetricOptionsError::InvalidPrefix`] for any other string (colons
    /// included: Prometheus reserves them for recording rules).
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self, MetricOptionsError> {
        if let Err(reason) = check_prefix(prefix) {
            return Err(MetricOptionsError::InvalidPrefix {
                prefix: prefix.to_string(),
                reason,
            });
        }
        self.prefix = prefix.to_string();
        Ok(self)
    }

    /// These options with the constant label `name="value"` added after the
    /// ones already there. `value` may be any string (it is escaped).
    ///
    /// # Errors
    /// [`MetricOptionsError::InvalidLabelName`] when `name` is not a letter
    /// or `_` followed by letters, digits and `_`, starts with `__`
    /// (reserved), is one of the labels the exports set themselves
    /// (`group`, `node`, `kind`, `event`), or was added already.
    pub fn with_const_label(mut self, name: &str, value: &str) -> Result<Self, MetricOptionsError> {
        let reason = if let Err(reason) = check_label_name(name) {
            Some(reason)
        } else if SAMPLE_LABELS.contains(&name) {
            Some("the exports set this label on their samples")
        } else if self.const_labels.iter().any(|(n, _)| n == name) {
            Some("the label was added already")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(MetricOptionsError::InvalidLabelName {
                name: name.to_string(),
                reason,
            });
        }
        self.const_labels
            .push((name.to_string(), value.to_string()));
        Ok(self)
    }

    /// The metric-name prefix (`""` for none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The constant labels, `(name, value)`, in the order they were added.
    pub fn const_labels(&self) -> &[(String, String)] {
        &self.const_labels
    }
}

/// Why a [`MetricOptions`] setting was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricOptionsError {
    /// The prefix is not a metric-name start.
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The constant label's name cannot be used.
    InvalidLabelName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

impl fmt::Display for MetricOptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricOptionsError::InvalidPrefix { prefix, reason } => write!(
                f,
                "invalid metric prefix {prefix:?}: {reason}; use letters, digits and `_`, not starting with a digit"
            ),
            MetricOptionsError::InvalidLabelName { name, reason } => write!(
                f,
                "invalid constant label name {name:?}: {reason}; use letters, digits and `_`, not starting with a digit or `__`"
            ),
        }
    }
}

impl std::error::Error for MetricOptionsError {}

/// `""` or `[a-zA-Z_][a-zA-Z0-9_]*`.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.contains(':') {
        return Err("colons are reserved for recording rules");
    }
    if prefix.is_empty() {
        return Ok(());
    }
    check_identifier(prefix)
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`.
fn check_label_name(name: &str) -> Result<(), &'static str> {
    check_identifier(name)?;
    if name.starts_with("__") {
        return Err("names starting with `__` are reserved");
    }
    Ok(())
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`.
fn check_identifier(s: &str) -> Result<(), &'static str> {
    let mut chars = s.chars();
    match chars.next() {
        None => Err("must not be empty"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => Err("must start with a letter or `_`"),
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') => {
            Err("must contain only ASCII letters, digits and `_`")
        }
        _ => Ok(()),
    }
}

#[cfg(all(test, not(memcg_loom)))]
mod tests {
    use super::*;

    #[test]
    fn new_has_memcg_prefix_and_no_labels() {
        let o = MetricOptions::new();
        assert_eq!(o.prefix(), "memcg");
        assert!(o.const_labels().is_empty());
        assert_eq!(o, MetricOptions::default());
    }

    #[test]
    fn with_prefix_valid_names_are_kept() {
        for prefix in ["", "kv", "_x", "a1_b2", "Memcg"] {
            let o = MetricOptions::new().with_prefix(prefix).unwrap();
            assert_eq!(o.prefix(), prefix);
        }
    }

    #[test]
    fn with_prefix_invalid_names_are_typed_errors() {
        for prefix in ["1a", "a-b", "a b", "a:b", ":", "ñ", "a.b", "a\n"] {
            let err = MetricOptions::new().with_prefix(prefix).unwrap_err();
            let MetricOptionsError::InvalidPrefix { prefix: p, reason } = &err else {
                panic!("{prefix:?}: {err:?}");
            };
            assert_eq!(p, prefix);
            assert!(!reason.is_empty());
            assert!(err.to_string().contains("invalid metric prefix"), "{err}");
        }
    }

    #[test]
    fn with_const_label_keeps_order_and_any_value() {
        let o = MetricOptions::new()
            .with_const_label("service", "kv")
            .unwrap()
            .with_const_label("zone", "eu \"west\"\\\n1")
            .unwrap()
            .with_const_label("_a", "")
            .unwrap();
        let labels: Vec<(&str, &str)> = o
            .const_labels()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [("service", "kv"), ("zone", "eu \"west\"\\\n1"), ("_a", "")]
        );
    }

    #[test]
    fn with_const_label_invalid_names_are_typed_errors() {
        let base = MetricOptions::new()
            .with_const_label("service", "kv")
            .unwrap();
        for name in [
            "", "1a", "a-b", "a:b", "__name__", "__x", "group", "node", "kind", "event", "service",
            "é",
        ] {
            let err = base.clone().with_const_label(name, "v").unwrap_err();
            let MetricOptionsError::InvalidLabelName { name: n, reason } = &err else {
                panic!("{name:?}: {err:?}");
            };
            assert_eq!(n, name);
            assert!(!reason.is_empty());
            assert!(
                err.to_string().contains("invalid constant label name"),
                "{err}"
            );
        }
    }
}
