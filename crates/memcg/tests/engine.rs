//! Integration tests of the explicit-context engine, one module per concept.

mod engine {
    pub(crate) mod charge;
    pub(crate) mod groups;
    pub(crate) mod limits;
    pub(crate) mod oom;
    pub(crate) mod reclaim;
    pub(crate) mod reparent;
    pub(crate) mod stats;
    pub(crate) mod task;
    pub(crate) mod util;
}
