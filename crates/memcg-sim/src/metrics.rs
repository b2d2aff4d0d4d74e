//! What the work of a run looked like, as the simulator counts it.

/// What the work of a run looked like.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Steps executed.
    pub steps: u64,
    /// Successful object charges.
    pub charges: u64,
    /// Bytes charged in them.
    pub charged_bytes: u64,
    /// Of those, bytes charged to an objcg of a node other than the
    /// charging CPU's.
    pub wrong_node_bytes: u64,
    /// Charges and reservations refused at `memory.max`.
    pub ooms: u64,
    /// Groups killed by their OOM policy (`kill`); each kill restarts the
    /// tenant (see the README's "OOM policies").
    pub kills: u64,
    /// Objects and reservations freed by those restarts.
    pub killed_objects: u64,
    /// Allocations paid (in full or in part) from a spent reservation
    /// (also in `charges`).
    pub spent_charges: u64,
    /// Steps whose target was gone (freed object, removed group, ...).
    pub skipped_steps: u64,
    /// Objects freed by reclaim callbacks.
    pub reclaimed_objects: u64,
    /// Largest `|root memory.current − exact live bytes|` after a step.
    pub worst_error_bytes: u64,
    /// Largest exact live bytes after a step.
    pub peak_live_bytes: u64,
}

impl Metrics {
    /// Share of charged bytes that went to another node's objcg, in %.
    pub fn wrong_node_percent(&self) -> f64 {
        if self.charged_bytes == 0 {
            return 0.0;
        }
        100.0 * self.wrong_node_bytes as f64 / self.charged_bytes as f64
    }
}
