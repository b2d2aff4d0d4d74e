//! Typed errors of the public API.
//!
//! Every fallible operation returns [`Error`]; a refused charge returns
//! [`ChargeError`], which is also carried by [`Error::Charge`]. Messages are
//! lowercase, carry the numbers, and say what to do next.

use std::fmt;
use std::sync::Arc;

/// What went wrong with a request to the controller.
///
/// Every variant leaves the controller unchanged: an operation that fails
/// has no effect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A group name is not acceptable (empty, `.`, `..`, contains `/` or a
    /// control character, or is longer than 255 bytes).
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A path is not acceptable (empty component, for example `a//b`).
    InvalidPath {
        /// The rejected path.
        path: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A sibling with this name already exists.
    AlreadyExists {
        /// Path of the existing group.
        path: String,
    },
    /// No group has this path.
    NotFound {
        /// The path that was looked up.
        path: String,
    },
    /// The root group cannot be removed, renamed or limited.
    Root {
        /// What was attempted on root.
        operation: &'static str,
    },
    /// The group was removed; it accepts no new tasks, children or charges.
    Removed {
        /// Path the group had.
        path: String,
    },
    /// Removal refused: tasks are attached to the group.
    HasTasks {
        /// Path of the group.
        path: String,
        /// Number of attached tasks.
        nr_tasks: usize,
    },
    /// Removal refused: the group has child groups.
    HasChildren {
        /// Path of the group.
        path: String,
        /// Number of children.
        nr_children: usize,
    },
    /// A limit or size string could not be parsed.
    InvalidLimit {
        /// The rejected input.
        input: String,
        /// What was expected.
        reason: &'static str,
    },
    /// A topology specification or map is not acceptable.
    InvalidTopology {
        /// What is wrong with it.
        reason: String,
    },
    /// A CPU id that the controller's topology does not have.
    UnknownCpu {
        /// The CPU id.
        cpu: usize,
        /// Number of possible CPU ids (the largest valid id + 1).
        nr_cpu_ids: usize,
    },
    /// A node id that the controller's topology does not have.
    UnknownNode {
        /// The node id.
        node: usize,
        /// Number of node ids (the largest valid id + 1).
        nr_node_ids: usize,
    },
    /// An object, task or group of another controller was passed in.
    ForeignController,
    /// A size is zero where a positive size is required, or too large.
    InvalidSize {
        /// The rejected size in bytes.
        bytes: u64,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A task that already exited was used.
    TaskExited,
    /// The system allocator could not provide memory for engine state.
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
    },
    /// The controller has no room for more objcgs (groups × nodes).
    TooManyGroups,
    /// An OOM policy string is not `kill`, `fail` or `force`.
    InvalidPolicy {
        /// The rejected input.
        value: String,
    },
    /// A charge was refused by a limit.
    Charge(ChargeError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName { name, reason } => {
                write!(f, "invalid group name {name:?}: {reason}")
            }
            Error::InvalidPath { path, reason } => {
                write!(f, "invalid group path {path:?}: {reason}")
            }
            Error::AlreadyExists { path } => {
                write!(f, "group {path:?} already exists; pick another name or look it up")
            }
            Error::NotFound { path } => {
                write!(f, "no group {path:?}; create it first or check the path")
            }
            Error::Root { operation } => write!(f, "cannot {operation} the root group"),
            Error::Removed { path } => {
                write!(f, "group {path:?} was removed; create a new group")
            }
            Error::HasTasks { path, nr_tasks } => write!(
                f,
                "group {path:?} still has {nr_tasks} attached task(s); move them to another group first"
            ),
            Error::HasChildren { path, nr_children } => write!(
                f,
                "group {path:?} still has {nr_children} child group(s); remove them first"
            ),
            Error::InvalidLimit { input, reason } => {
                write!(f, "invalid limit {input:?}: {reason}")
            }
            Error::InvalidTopology { reason } => write!(f, "invalid topology: {reason}"),
            Error::UnknownCpu { cpu, nr_cpu_ids } => write!(
                f,
                "cpu {cpu} is not in the topology (cpu ids below {nr_cpu_ids} with a node)"
            ),
            Error::UnknownNode { node, nr_node_ids } => {
                write!(f, "node {node} is not in the topology (node ids below {nr_node_ids})")
            }
            Error::ForeignController => {
                write!(f, "the object belongs to another controller; use the controller that made it")
            }
            Error::InvalidSize { bytes, reason } => write!(f, "invalid size {bytes} bytes: {reason}"),
            Error::TaskExited => write!(f, "the task has exited; create a new task"),
            Error::OutOfMemory { what } => write!(f, "out of memory allocating {what}"),
            Error::TooManyGroups => write!(f, "too many groups in this controller; remove unused groups"),
            Error::InvalidPolicy { value } => {
                write!(f, "invalid oom policy {value:?}: expected `kill`, `fail` or `force`")
            }
            Error::Charge(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Charge(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ChargeError> for Error {
    fn from(e: ChargeError) -> Self {
        Error::Charge(e)
    }
}

/// A charge refused because a group is at its `max` limit.
///
/// Carries the group that refused (which may be an ancestor of the group
/// charged), its limit and usage at the time, and the request. Creating one
/// does not allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeError {
    pub(crate) path: Arc<str>,
    pub(crate) limit_bytes: u64,
    pub(crate) usage_bytes: u64,
    pub(crate) requested_bytes: u64,
}

impl ChargeError {
    /// Path of the group whose `max` refused the charge (`""` is root).
    pub fn path(&self) -> &str {
        &self.path
    }
    /// That group's `max` limit in bytes when the charge failed.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }
    /// That group's usage in bytes when the charge failed.
    pub fn usage_bytes(&self) -> u64 {
        self.usage_bytes
    }
    /// The number of bytes requested.
    pub fn requested_bytes(&self) -> u64 {
        self.requested_bytes
    }
}

impl fmt::Display for ChargeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path: &str = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(
            f,
            "charge of {} bytes exceeds limit {} of group {:?} (usage {}); free memory, register a reclaimer or raise memory.max",
            self.requested_bytes, self.limit_bytes, path, self.usage_bytes
        )
    }
}

impl std::error::Error for ChargeError {}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
